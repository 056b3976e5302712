//! `keel import`: a file into a collection through the same import as the API (as the
//! superuser), with a progress bar on standard error and the report on standard output.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keel_server::AppState;
use keel_server::http::extract::Params;
use keel_server::import::{self, Counts, Mode};

pub struct Request {
    pub collection: String,
    pub file: PathBuf,
    pub org: Option<String>,
    pub format: Option<String>,
    pub mode: String,
    pub map: Option<String>,
    pub delimiter: String,
    pub quiet: bool,
}

/// Counts the bytes read, for the progress bar.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

pub async fn run(state: &AppState, request: Request) -> anyhow::Result<()> {
    let stdin = request.file.as_os_str() == "-";
    let format = request.format.clone().unwrap_or_else(|| {
        let extension = request.file.extension().and_then(|e| e.to_str()).unwrap_or("");
        match extension.to_ascii_lowercase().as_str() {
            "ndjson" | "jsonl" => "ndjson".into(),
            _ => "csv".into(),
        }
    });
    let mut params = vec![
        ("format".to_string(), format),
        ("mode".to_string(), request.mode.clone()),
        ("delimiter".to_string(), request.delimiter.clone()),
    ];
    if let Some(map) = &request.map {
        params.push(("map".to_string(), map.clone()));
    }
    let params = Params(params.into_iter().collect());
    let options =
        import::options(&params, &Default::default()).map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))?;
    let read = Arc::new(AtomicU64::new(0));
    let (input, total): (Box<dyn Read + Send>, Option<u64>) = if stdin {
        (Box::new(std::io::stdin()), None)
    } else {
        let file = std::fs::File::open(&request.file)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", request.file.display()))?;
        let length = file.metadata().ok().map(|m| m.len());
        (Box::new(file), length)
    };
    let input = Counting {
        inner: input,
        read: read.clone(),
    };
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")
                .expect("a valid template"),
        ),
        None => ProgressBar::new_spinner()
            .with_style(ProgressStyle::with_template("{spinner} {bytes} {msg}").expect("a valid template")),
    };
    if request.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let ticker = {
        let bar = bar.clone();
        let read = read.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(read.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let message_bar = bar.clone();
    let mut progress = move |counts: Counts| {
        message_bar.set_message(format!(
            "{} read, {} written, {} rejected",
            counts.read, counts.written, counts.rejected
        ));
    };
    let operator = keel_server::records::export::operator();
    let result = import::import_stream(
        state,
        &operator,
        request.org.as_deref(),
        &request.collection,
        options,
        input,
        &mut progress,
    )
    .await;
    ticker.abort();
    bar.set_position(read.load(Ordering::Relaxed));
    bar.finish_and_clear();
    let report = result.map_err(|e| {
        let details = e.details.as_ref().map(|d| format!("\n{d:#}")).unwrap_or_default();
        anyhow::anyhow!("{}: {}{details}", e.code, e.message)
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.mode == Mode::Atomic && !report.committed && report.counts.rejected > 0 {
        anyhow::bail!(
            "{} of {} rows are invalid; nothing was written",
            report.counts.rejected,
            report.counts.read
        );
    }
    Ok(())
}
