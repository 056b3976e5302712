//! `keel bench jobs` (P5): the job runtime on no-op jobs, in this process, on SQLite or
//! PostgreSQL.
//!
//! 1. Enqueue N jobs in bulk: jobs per second.
//! 2. Work them at concurrency C: jobs per second from the first start to the last
//!    completion committed (the runtime reports a completion after its statement commits).
//! 3. Pickup latency: jobs enqueued one at a time (one autocommit statement each, as the API does) at about 200 per
//!    second into idle workers; the time from the enqueue's commit to the handler's start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use keel_store::jobs::{self, NewJob};
use keel_store::{Db, Location};
use serde_json::json;

#[derive(clap::Args)]
pub struct JobsArgs {
    /// PostgreSQL URL; without it the bench runs on embedded SQLite.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Jobs per throughput run.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: usize,
    /// Concurrencies to measure, comma-separated.
    #[arg(long, default_value = "10,50", value_delimiter = ',')]
    pub concurrency: Vec<u32>,
    /// Jobs each instance holds claimed at once (the queue's `prefetch`).
    #[arg(long, default_value_t = 500)]
    pub prefetch: u32,
    /// Jobs in the pickup-latency run.
    #[arg(long, default_value_t = 1_000)]
    pub pickup: usize,
}

fn spec(concurrency: u32, prefetch: u32) -> String {
    format!(
        r#"
[app]
name = "jobbench"
[roles]
order = ["owner"]
[queues.bench]
concurrency = {concurrency}
prefetch = {prefetch}
[jobs.nothing]
queue = "bench"
handler = "noop"
attempts = 1
[jobs.pickup]
queue = "bench"
attempts = 1
[collections.notes]
fields.title = {{ type = "text" }}
"#
    )
}

/// Counts finished jobs and remembers the first start and the last completion.
struct Clock {
    epoch: Instant,
    first_start: AtomicU64,
    last_finish: AtomicU64,
    finished: AtomicU64,
}

impl Clock {
    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

impl keel_jobs::Observer for Clock {
    fn claimed(&self, _queue: &str, _kind: &str, _waited: Duration) {
        let now = self.micros();
        let _ = self
            .first_start
            .compare_exchange(u64::MAX, now, Ordering::SeqCst, Ordering::SeqCst);
    }
    fn finished(&self, _queue: &str, _kind: &str, outcome: keel_jobs::Outcome, _ran: Duration) {
        if outcome == keel_jobs::Outcome::Completed {
            self.last_finish.fetch_max(self.micros(), Ordering::SeqCst);
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn fresh_database(url: &Option<String>, dir: &std::path::Path) -> Result<(Location, &'static str)> {
    Ok(match url {
        None => {
            let path = dir.join("jobs.db");
            let _ = std::fs::remove_file(&path);
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(dir.join(format!("jobs.db{suffix}")));
            }
            (Location::Sqlite(path), "sqlite")
        }
        Some(url) => {
            let admin = Db::connect(
                &Location::Postgres {
                    url: url.clone(),
                    schema: None,
                    replicas: vec![],
                },
                &keel_store::PoolConfig::default(),
            )
            .await?;
            let mut tx = admin.begin().await?;
            tx.execute_script("DROP SCHEMA IF EXISTS keel_bench_jobs CASCADE; CREATE SCHEMA keel_bench_jobs")
                .await?;
            tx.commit().await?;
            admin.close().await;
            (
                Location::Postgres {
                    url: url.clone(),
                    schema: Some("keel_bench_jobs".into()),
                    replicas: vec![],
                },
                "postgres",
            )
        }
    })
}

async fn open(location: &Location, spec: &str) -> Result<(Arc<Db>, Arc<keel_query::Schema>)> {
    let schema = keel_server::load_schema(spec).map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    let pool = keel_store::PoolConfig {
        max_connections: 8,
        ..keel_store::PoolConfig::default()
    };
    let db = Db::connect(location, &pool).await?;
    keel_store::migrate::apply(&db, &schema, false).await?;
    Ok((Arc::new(db), Arc::new(schema)))
}

fn config() -> keel_jobs::JobsConfig {
    keel_jobs::JobsConfig {
        poll_interval: Duration::from_millis(200),
        ..keel_jobs::JobsConfig::default()
    }
}

pub async fn run(args: JobsArgs) -> Result<()> {
    let dir = tempfile_dir()?;
    let mut backend = "sqlite";
    println!("| run | jobs | enqueue jobs/s | work jobs/s | seconds |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for &concurrency in &args.concurrency {
        let (location, name) = fresh_database(&args.database_url, &dir).await?;
        backend = name;
        let (db, schema) = open(&location, &spec(concurrency, args.prefetch.max(concurrency))).await?;
        let batch: Vec<NewJob> = (0..args.jobs)
            .map(|i| NewJob {
                queue: "bench".into(),
                kind: "nothing".into(),
                org_id: None,
                created_by: None,
                payload: json!({ "i": i }),
                priority: 0,
                max_attempts: 1,
                delay: Duration::ZERO,
                unique_key: None,
                concurrency_key: None,
            })
            .collect();
        let started = Instant::now();
        let inserted = jobs::job_insert_many(&db, &batch).await.context("bulk enqueue")?;
        let enqueue_seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(inserted as usize == args.jobs, "enqueued {inserted} of {}", args.jobs);

        let clock = Arc::new(Clock {
            epoch: Instant::now(),
            first_start: AtomicU64::new(u64::MAX),
            last_finish: AtomicU64::new(0),
            finished: AtomicU64::new(0),
        });
        let patterns = Arc::new(keel_query::Patterns::new(&schema.app.collections));
        let runtime = keel_jobs::Jobs::with_observer(db.clone(), schema.clone(), patterns, config(), clock.clone());
        runtime.start();
        let deadline = Instant::now() + Duration::from_secs(600);
        while clock.finished.load(Ordering::SeqCst) < args.jobs as u64 {
            anyhow::ensure!(Instant::now() < deadline, "the jobs did not finish in 10 minutes");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let work_seconds =
            (clock.last_finish.load(Ordering::SeqCst) - clock.first_start.load(Ordering::SeqCst)) as f64 / 1e6;
        runtime.shutdown().await;
        let stats = jobs::queue_stats(&db).await?;
        let completed = stats
            .iter()
            .find(|q| q.name == "bench")
            .map(|q| q.depth["completed"])
            .unwrap_or(0);
        anyhow::ensure!(
            completed as usize == args.jobs,
            "{completed} of {} completed in the database",
            args.jobs
        );
        println!(
            "| {name} C={concurrency} | {} | {:.0} | {:.0} | {:.2} |",
            args.jobs,
            args.jobs as f64 / enqueue_seconds,
            args.jobs as f64 / work_seconds,
            work_seconds
        );
        db.close().await;
    }
    pickup(&args, &dir, true).await?;
    if args.database_url.is_some() {
        // Another instance's enqueue: only PostgreSQL's NOTIFY wakes the workers.
        pickup(&args, &dir, false).await?;
    }
    println!("(backend: {backend}; completions counted after their statement committed)");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn pickup(args: &JobsArgs, dir: &std::path::Path, local_wake: bool) -> Result<()> {
    let (location, name) = fresh_database(&args.database_url, dir).await?;
    let (db, schema) = open(&location, &spec(10, 10)).await?;
    let epoch = Instant::now();
    let histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let from_commit = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let committed_at: Arc<std::sync::Mutex<std::collections::HashMap<i64, u64>>> = Arc::default();
    let (commits, since_commit) = (committed_at.clone(), from_commit.clone());
    let runtime = keel_jobs::Jobs::new(db.clone(), schema.clone(), config());
    let (recorded, seen) = (histogram.clone(), Arc::new(AtomicU64::new(0)));
    let counter = seen.clone();
    runtime.register(
        "pickup",
        Arc::new(move |context| {
            let started = epoch.elapsed().as_micros() as u64;
            let enqueued = context.payload_value()["enqueued_us"].as_u64().unwrap_or(started);
            let _ = recorded
                .lock()
                .expect("histogram")
                .record(started.saturating_sub(enqueued).max(1));
            if let Some(committed) = commits.lock().expect("commits").get(&context.id) {
                let _ = since_commit
                    .lock()
                    .expect("histogram")
                    .record(started.saturating_sub(*committed).max(1));
            }
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(None) })
        }),
    );
    runtime.start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..args.pickup {
        // The payload carries the time the enqueue started (before BEGIN): the whole enqueue
        // is counted, as a caller waits for it. The time its COMMIT returned is kept too.
        let enqueued_us = epoch.elapsed().as_micros() as u64;
        let job = NewJob {
            queue: "bench".into(),
            kind: "pickup".into(),
            org_id: None,
            created_by: None,
            payload: json!({ "i": i, "enqueued_us": enqueued_us }),
            priority: 0,
            max_attempts: 1,
            delay: Duration::ZERO,
            unique_key: None,
            concurrency_key: None,
        };
        let enqueued = jobs::job_enqueue(&db, &job).await?;
        committed_at
            .lock()
            .expect("commits")
            .insert(enqueued.id, epoch.elapsed().as_micros() as u64);
        if local_wake {
            runtime.wake("bench");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::SeqCst) < args.pickup as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    runtime.shutdown().await;
    let how = if local_wake { "same instance" } else { "woken by NOTIFY" };
    for (what, h) in [("enqueue call → start", &histogram), ("commit → start", &from_commit)] {
        let h = h.lock().expect("histogram");
        println!(
            "| {name} pickup ({how}), {what} | {} enqueued one at a time, ~200/s | p50 {:.3} ms | p99 {:.3} ms | max {:.3} ms |",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    }
    db.close().await;
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("keel-bench-jobs-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
