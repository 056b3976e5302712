//! `keel bench realtime` (R3): N subscribers, each a user of its own with a session, hold a
//! collection stream on one `keel serve` while a writer creates records at a steady rate;
//! every create reaches every subscriber. Reports events delivered per second, the latency
//! from the write to each subscriber's event (p50/p99), the server's CPU and memory per
//! 1,000 streams, and the rule statements per change.
//!
//! The subscribers are raw HTTP/1.0 connections (the response body is the bare event
//! stream, no chunked framing), read by one task each; an event's latency comes from the
//! writer's clock in the record's title, so the client does no JSON work per event.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::harness::{serve, tempdir};
use crate::http_client::Connection;

#[derive(clap::Args)]
pub struct RealtimeArgs {
    /// Streams held open, each by a user of its own.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Records created per second while they listen.
    #[arg(long, default_value_t = 5)]
    rate: u64,
    /// Seconds of writes.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// PostgreSQL URL; without it the bench runs on embedded SQLite.
    #[arg(long)]
    database_url: Option<String>,
}

const SPEC: &str = r#"
[app]
name = "realtime-bench"

[roles]
order = ["owner", "admin", "member"]

[collections.tasks]
fields.title = { type = "text", required = true, max = 100 }
fields.status = { type = "select", values = ["todo", "doing", "done"], default = "todo" }
fields.assignee = { type = "relation", to = "users" }
rules.list = "role >= member || assignee = @user"
rules.view = "role >= member || assignee = @user"
"#;

/// Microseconds since the epoch on this machine's clock (the writer's stamp in each title).
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A process's CPU seconds (user + system) and resident MiB, from /proc.
fn process_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .unwrap_or(0.0);
    (ticks / 100.0, rss / 1024.0)
}

/// One metric's value from `/metrics`.
async fn metric(address: SocketAddr, name: &str) -> Result<f64> {
    let mut connection = Connection::connect(address).await?;
    let (_, body) = connection.send("GET", "/metrics", None, None).await?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

struct Tally {
    events: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

/// Opens one stream and counts its `created` events until the connection ends.
async fn subscribe(address: SocketAddr, token: String, tally: Arc<Tally>, ready: Arc<AtomicU64>) -> Result<()> {
    let mut stream = TcpStream::connect(address).await?;
    let request =
        format!("GET /api/v1/orgs/bench/tasks/events HTTP/1.0\r\nhost: keel\r\nauthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    if !line.contains(" 200 ") {
        bail!("stream refused: {}", line.trim());
    }
    // Headers, then events.
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if line.starts_with("event: ready") {
            ready.fetch_add(1, Ordering::Relaxed);
        }
        if !line.starts_with("data: {\"id\"") {
            continue;
        }
        let Some(at) = line.find("\"title\":\"w") else { continue };
        let digits: String = line[at + 10..].chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(sent) = digits.parse::<u64>() {
            let latency = now_micros().saturating_sub(sent).max(1);
            let _ = tally.latency.lock().expect("lock").record(latency);
            tally.events.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub async fn run(args: RealtimeArgs) -> Result<()> {
    let data_dir = tempdir()?;
    let spec_path = data_dir.join("keel.toml");
    std::fs::write(&spec_path, SPEC)?;
    let schema = keel_server::load_schema(SPEC).map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    let mut config = keel_server::Config::default();
    config.app.spec = spec_path.clone();
    config.app.data_dir = data_dir.clone();
    config.app.migrate_on_start = true;
    let backend = if let Some(url) = &args.database_url {
        super::harness::fresh_pg_schema(&mut config, url, "keel_bench").await?;
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let db = keel_server::open_database(&config, &schema).await?;
    eprintln!("bench realtime ({backend}): {} users with a session each", args.subscribers);
    let hash = keel_server::auth::hash_password(&config.auth, "bench realtime passphrase".to_string())
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let writer = keel_store::system::user_insert(
        &db,
        keel_store::system::NewUser {
            email: "writer@bench.keel",
            name: None,
            password_hash: &hash,
            superuser: false,
            email_verified: true,
        },
    )
    .await?;
    let org = keel_store::system::org_insert(&db, "bench", "bench", Some(writer.id), "owner").await?;
    let expires = chrono::Utc::now() + chrono::Duration::hours(2);
    let mint = |user: uuid::Uuid| {
        let db = &db;
        async move {
            let token = keel_server::auth::session::new_token("ks_");
            let hash = keel_server::http::extract::token_hash(&token);
            keel_store::system::session_insert(db, user, &hash, expires, &Default::default()).await?;
            anyhow::Ok(token)
        }
    };
    let writer_token = mint(writer.id).await?;
    let mut tokens = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let user = keel_store::system::user_insert(
            &db,
            keel_store::system::NewUser {
                email: &format!("s{i}@bench.keel"),
                name: None,
                password_hash: &hash,
                superuser: false,
                email_verified: true,
            },
        )
        .await?;
        keel_store::system::member_insert(&db, org.id, user.id, "member").await?;
        tokens.push(mint(user.id).await?);
    }
    db.close().await;
    drop(db);

    let limit = (args.subscribers + 100).to_string();
    let env = [
        ("KEEL_SERVER__RATE_LIMITS", "false".to_string()),
        ("KEEL_REALTIME__MAX_STREAMS", limit.clone()),
        ("KEEL_REALTIME__MAX_STREAMS_PER_IP", limit),
        ("KEEL_DATABASE__MAX_CONNECTIONS", "16".to_string()),
    ];
    let (mut server, address) = serve(&spec_path, &data_dir, args.database_url.as_deref(), &env).await?;
    let pid = server.id().context("the server's pid")?;
    let (_, rss_before) = process_usage(pid);

    let tally = Arc::new(Tally {
        events: AtomicU64::new(0),
        latency: Mutex::new(Histogram::<u64>::new(3)?),
    });
    let ready = Arc::new(AtomicU64::new(0));
    let opening = Instant::now();
    let mut readers = Vec::with_capacity(tokens.len());
    for token in tokens {
        readers.push(tokio::spawn(subscribe(address, token, tally.clone(), ready.clone())));
        // Open in waves so the listen backlog never overflows.
        if readers.len() % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while (ready.load(Ordering::Relaxed) as usize) < args.subscribers {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} streams opened",
                ready.load(Ordering::Relaxed),
                args.subscribers
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened_in = opening.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu_idle_start, rss_held) = process_usage(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (cpu_idle_end, _) = process_usage(pid);
    eprintln!(
        "  {} streams open in {opened_in:.1} s; writing {} records/s for {} s",
        args.subscribers, args.rate, args.duration
    );

    let statements_before = metric(address, "keel_realtime_rule_statements_total").await?;
    let (cpu_start, _) = process_usage(pid);
    let started = Instant::now();
    let mut connection = Connection::connect(address).await?;
    let interval = Duration::from_micros(1_000_000 / args.rate.max(1));
    let mut writes = 0u64;
    let mut failed = 0u64;
    let mut next = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(args.duration) {
        tokio::time::sleep_until(next).await;
        next += interval;
        let body = format!("{{\"title\":\"w{}\"}}", now_micros());
        let (status, _) = connection
            .send("POST", "/api/v1/orgs/bench/tasks", Some(&writer_token), Some(body.as_bytes()))
            .await?;
        if status == 201 {
            writes += 1;
        } else {
            failed += 1;
        }
    }
    // Let the last events arrive.
    let expected = writes * args.subscribers as u64;
    let drain = Instant::now() + Duration::from_secs(30);
    while tally.events.load(Ordering::Relaxed) < expected && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (cpu_end, rss_peak) = process_usage(pid);
    let statements = metric(address, "keel_realtime_rule_statements_total").await? - statements_before;
    server.kill().await.ok();
    for reader in readers {
        reader.abort();
    }
    let _ = std::fs::remove_dir_all(&data_dir);

    let delivered = tally.events.load(Ordering::Relaxed);
    let latency = tally.latency.lock().expect("lock").clone();
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let per_thousand = args.subscribers as f64 / 1000.0;
    println!(
        "\n{backend}: {} subscribers (one user and session each, one org), {} creates/s for {} s\n",
        args.subscribers, args.rate, args.duration
    );
    println!("| figure | value |");
    println!("| --- | ---: |");
    println!("| streams opened | {} in {opened_in:.1} s |", args.subscribers);
    println!("| writes (failed) | {writes} ({failed}) |");
    println!(
        "| events delivered / expected | {delivered} / {expected} ({:.2} %) |",
        100.0 * delivered as f64 / expected.max(1) as f64
    );
    println!("| events per second | {:.0} |", delivered as f64 / seconds);
    println!(
        "| write → event p50 / p99 / max ms | {:.1} / {:.1} / {:.1} |",
        ms(0.5),
        ms(0.99),
        latency.max() as f64 / 1000.0
    );
    println!("| rule statements per change | {:.2} |", statements / writes.max(1) as f64);
    println!(
        "| server CPU while writing | {:.0} % of a core ({:.1} ms per change) |",
        100.0 * (cpu_end - cpu_start) / seconds,
        1000.0 * (cpu_end - cpu_start) / writes.max(1) as f64
    );
    println!(
        "| server CPU idle, per 1,000 streams | {:.2} % of a core |",
        100.0 * (cpu_idle_end - cpu_idle_start) / 5.0 / per_thousand
    );
    println!(
        "| server RSS: before / holding streams / peak | {rss_before:.0} / {rss_held:.0} / {rss_peak:.0} MiB |"
    );
    println!(
        "| RSS per 1,000 streams | {:.1} MiB |",
        (rss_held - rss_before) / per_thousand
    );
    Ok(())
}
