//! `keel bench`: load scenarios measured over loopback against a real `keel serve` process.
//!
//! `keel bench records` loads N tasks into the pms example (one org), then measures the
//! filtered first page and a page deep in the cursor chain (sequential latency), and list and
//! create throughput with latency percentiles at a given concurrency.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use keel_query::{SqlValue, encode_cursor, parse_sort};
use tokio::sync::Mutex;

use crate::demo::{self, DEMO_PASSWORD, GenOptions};
use crate::examples;
use crate::http_client::Connection;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(clap::Subcommand)]
pub enum Scenario {
    /// Read throughput through one instance and through two behind a proxy, on PostgreSQL,
    /// with CPU per request, then requests per second while the instances restart one by one.
    Scaleout {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        redis_url: Option<String>,
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// The job queue (P5): bulk enqueue, no-op jobs worked at each concurrency, pickup latency.
    Jobs(crate::bench_jobs::JobsArgs),
    /// Import (P1): N pms tasks from CSV against the database's own bulk path, peak RSS, and
    /// a batch delete (P6).
    Import(crate::bench_import::ImportArgs),
    /// A large file (1 GiB) uploaded and downloaded through the file routes: MiB/s and peak heap.
    Upload(crate::bench_upload::UploadArgs),
    /// The cost of rate limiting: limiter decisions per second (in-process and Redis), and
    /// list throughput with limits off and on.
    Limits(crate::bench_limits::LimitsArgs),
    /// Backup and restore of seed 000's year-2 data and files (O5), against pg_dump/pg_restore
    /// or a file copy.
    Backup(crate::bench_backup::BackupArgs),
    /// List and create on the pms `tasks` collection with N rows.
    Records {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// PostgreSQL URL; without it the bench runs on embedded SQLite.
        #[arg(long)]
        database_url: Option<String>,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds per throughput phase.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Sequential requests per latency phase.
        #[arg(long, default_value_t = 300)]
        samples: u64,
        /// Where the SQLite file goes (default: a temporary directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

pub(crate) struct Summary {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    pub(crate) histogram: Histogram<u64>,
}

impl Summary {
    pub(crate) fn line(&self, name: &str) -> String {
        let h = &self.histogram;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} / {} |",
            self.requests as f64 / self.seconds,
            ms(0.50),
            ms(0.95),
            ms(0.99),
            self.errors,
            self.requests
        )
    }
}

pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

pub(crate) async fn wait_ready(address: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(mut connection) = Connection::connect(address).await
            && let Ok((200, _)) = connection.send("GET", "/health/ready", None, None).await
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server did not become ready at {address}")
}

async fn sequential(address: SocketAddr, token: &str, path: &str, samples: u64) -> Result<Summary> {
    let mut connection = Connection::connect(address).await?;
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    let started = Instant::now();
    for _ in 0..samples {
        let sent = Instant::now();
        let (status, _) = connection.send("GET", path, Some(token), None).await?;
        histogram.record(sent.elapsed().as_micros() as u64)?;
        if status != 200 {
            errors += 1;
        }
    }
    Ok(Summary {
        requests: samples,
        errors,
        seconds: started.elapsed().as_secs_f64(),
        histogram,
    })
}

/// Runs `concurrency` connections for `duration`, each sending what `request` builds. A
/// connection the server closed (an instance going away) is reopened and the request retried
/// once, as HTTP clients do with stale keep-alive connections; a second failure is an error.
pub(crate) async fn load<F>(
    address: SocketAddr,
    token: &str,
    concurrency: usize,
    duration: Duration,
    request: F,
) -> Result<Summary>
where
    F: Fn(u64) -> (&'static str, String, Option<Vec<u8>>) + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let totals = Arc::new(Mutex::new((0u64, 0u64)));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = vec![];
    for worker in 0..concurrency {
        let request = request.clone();
        let histogram = histogram.clone();
        let totals = totals.clone();
        let token = token.to_string();
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            let (mut requests, mut errors) = (0u64, 0u64);
            let mut connection = Connection::connect(address).await?;
            let mut n = worker as u64 * 1_000_000;
            while Instant::now() < deadline {
                n += 1;
                let (method, path, body) = request(n);
                let sent = Instant::now();
                let status = match connection.send(method, &path, Some(&token), body.as_deref()).await {
                    Ok((status, _)) => status,
                    Err(_) => match Connection::connect(address).await {
                        Ok(fresh) => {
                            connection = fresh;
                            match connection.send(method, &path, Some(&token), body.as_deref()).await {
                                Ok((status, _)) => status,
                                Err(_) => 0,
                            }
                        }
                        Err(_) => 0,
                    },
                };
                local.record(sent.elapsed().as_micros() as u64).ok();
                requests += 1;
                if status == 0 || status >= 400 {
                    errors += 1;
                }
            }
            histogram.lock().await.add(&local).ok();
            let mut t = totals.lock().await;
            t.0 += requests;
            t.1 += errors;
            anyhow::Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (requests, errors) = *totals.lock().await;
    let histogram = Arc::try_unwrap(histogram)
        .map_err(|_| anyhow::anyhow!("histogram still shared"))?
        .into_inner();
    Ok(Summary {
        requests,
        errors,
        seconds,
        histogram,
    })
}

pub async fn run(args: BenchArgs) -> Result<()> {
    match args.scenario {
        Scenario::Jobs(args) => crate::bench_jobs::run(args).await,
        Scenario::Import(args) => crate::bench_import::run(args).await,
        Scenario::Upload(args) => crate::bench_upload::run(args).await,
        Scenario::Limits(args) => crate::bench_limits::run(args).await,
        Scenario::Backup(args) => crate::bench_backup::run(args).await,
        Scenario::Records {
            rows,
            database_url,
            concurrency,
            duration,
            samples,
            data_dir,
        } => {
            records(
                rows,
                database_url,
                concurrency,
                Duration::from_secs(duration),
                samples,
                data_dir,
            )
            .await
        }
        Scenario::Scaleout {
            database_url,
            redis_url,
            rows,
            concurrency,
            duration,
        } => {
            crate::scaleout::run(
                database_url,
                redis_url,
                rows,
                concurrency,
                Duration::from_secs(duration),
            )
            .await
        }
    }
}

async fn records(
    rows: u64,
    database_url: Option<String>,
    concurrency: usize,
    duration: Duration,
    samples: u64,
    data_dir: Option<PathBuf>,
) -> Result<()> {
    let temporary = tempdir()?;
    let data_dir = data_dir.unwrap_or_else(|| temporary.clone());
    std::fs::create_dir_all(&data_dir)?;
    let spec_path = data_dir.join("keel.toml");
    std::fs::write(&spec_path, examples::spec("pms").expect("pms example"))?;
    let schema = keel_server::load_schema(examples::spec("pms").expect("pms example"))
        .map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    let mut config = keel_server::Config::default();
    config.app.spec = spec_path.clone();
    config.app.data_dir = data_dir.clone();
    config.app.migrate_on_start = true;
    let backend = if let Some(url) = &database_url {
        fresh_pg_schema(&mut config, url, "keel_bench").await?;
        "PostgreSQL"
    } else {
        let _ = std::fs::remove_file(data_dir.join("keel.db"));
        "SQLite"
    };
    let db = keel_server::open_database(&config, &schema).await?;
    eprintln!("bench records ({backend}): loading {rows} tasks");
    let started = Instant::now();
    load_tasks(&db, &schema, rows).await?;
    let load_seconds = started.elapsed().as_secs_f64();
    if let keel_store::Db::Postgres(_) = &db {
        let mut tx = db.begin().await?;
        tx.execute_script("ANALYZE").await?;
        tx.commit().await?;
    }
    // A cursor deep in the chain: the key of the row halfway down the filtered list.
    let tasks = schema.app.collection("tasks").expect("pms has tasks");
    let sort = parse_sort(tasks, None).map_err(|e| anyhow::anyhow!(e.message))?;
    let deep = db
        .query_one(&db.portable(
            "SELECT id FROM tasks WHERE status = $1 ORDER BY id DESC LIMIT 1 OFFSET $2",
            vec![SqlValue::Text("todo".into()), SqlValue::Int((rows / 6) as i64)],
        ))
        .await?
        .and_then(|r| r[0].uuid())
        .context("no deep row")?;
    let cursor = encode_cursor(&sort, &format!("[\"{deep}\"]"));
    let project = db
        .query_one(&db.portable("SELECT id FROM projects LIMIT 1", vec![]))
        .await?
        .and_then(|r| r[0].uuid())
        .context("no project")?;
    db.close().await;
    drop(db);

    // One client address sends thousands of requests a second: throughput is measured with
    // rate limits off (`keel bench limits` measures their cost).
    let env = [("KEEL_SERVER__RATE_LIMITS", "false".to_string())];
    let (mut server, address) = serve(&spec_path, &data_dir, database_url.as_deref(), &env).await?;
    let token = demo_login(address).await?;
    let filter = "filter=status%20%3D%20%22todo%22&limit=50";
    let first_path = format!("/api/v1/orgs/org-001/tasks?{filter}");
    let deep_path = format!("/api/v1/orgs/org-001/tasks?{filter}&after={cursor}");
    // Warm up caches and prepared statements.
    sequential(address, &token, &first_path, 50).await?;
    sequential(address, &token, &deep_path, 50).await?;
    let first = sequential(address, &token, &first_path, samples).await?;
    let deep_page = sequential(address, &token, &deep_path, samples).await?;
    let list_path = first_path.clone();
    let list = load(address, &token, concurrency, duration, move |_| {
        ("GET", list_path.clone(), None)
    })
    .await?;
    let create = load(address, &token, concurrency, duration, move |n| {
        let body = format!("{{\"project\":\"{project}\",\"title\":\"bench task {n}\",\"status\":\"todo\"}}");
        (
            "POST",
            "/api/v1/orgs/org-001/tasks".to_string(),
            Some(body.into_bytes()),
        )
    })
    .await?;
    let _ = server.kill().await;
    let p50 = |s: &Summary| s.histogram.value_at_quantile(0.5) as f64 / 1000.0;
    println!(
        "\n## keel bench records: {backend}, {rows} tasks, {concurrency} connections, {} s per phase\n",
        duration.as_secs()
    );
    println!(
        "load: {rows} rows in {load_seconds:.1} s ({:.0} rows/s)\n",
        rows as f64 / load_seconds
    );
    println!("| phase | req/s | p50 ms | p95 ms | p99 ms | errors / requests |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    println!("{}", first.line("first page, sequential"));
    println!(
        "{}",
        deep_page.line(&format!("page ~{} deep, sequential", rows / 6 / 50))
    );
    println!("{}", list.line(&format!("list, {concurrency} connections")));
    println!("{}", create.line(&format!("create, {concurrency} connections")));
    println!(
        "\ndeep page / first page p50 ratio: {:.2}",
        p50(&deep_page) / p50(&first).max(0.001)
    );
    if temporary.exists() {
        let _ = std::fs::remove_dir_all(&temporary);
    }
    Ok(())
}

/// Starts `keel serve` on a free port with extra environment, and waits until it is ready.
pub(crate) async fn serve(
    spec_path: &std::path::Path,
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    env: &[(&str, String)],
) -> Result<(tokio::process::Child, SocketAddr)> {
    let port = free_port()?;
    let address: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .args(["serve", "--spec"])
        .arg(spec_path)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--port", &port.to_string()])
        .env("KEEL_LOG__LEVEL", "error")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .kill_on_drop(true);
    if let Some(url) = database_url {
        command
            .args(["--database-url", url])
            .env("KEEL_DATABASE__SCHEMA", "keel_bench");
        command.env("KEEL_DATABASE__MAX_CONNECTIONS", "32");
    }
    let server = command.spawn().context("starting keel serve")?;
    wait_ready(address).await?;
    Ok((server, address))
}

/// Logs in as the benchmark org's owner; returns the token.
pub(crate) async fn demo_login(address: SocketAddr) -> Result<String> {
    let mut connection = Connection::connect(address).await?;
    let login = format!("{{\"email\":\"owner@org-001.demo.keel\",\"password\":\"{DEMO_PASSWORD}\"}}");
    let (status, body) = connection
        .send("POST", "/api/v1/auth/login", None, Some(login.as_bytes()))
        .await?;
    if status != 200 {
        bail!("login failed: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice::<serde_json::Value>(&body)?["token"]
        .as_str()
        .context("token")?
        .to_string())
}

/// The benchmark data: one org (owner `owner@org-001.demo.keel`), 200 projects and `rows`
/// tasks of the pms example.
pub(crate) async fn load_tasks(db: &keel_store::Db, schema: &keel_query::Schema, rows: u64) -> Result<()> {
    let options = GenOptions {
        orgs: 1,
        users_per_org: 4,
        scale: 1.0,
        counts: HashMap::from([("projects".to_string(), 200), ("tasks".to_string(), rows)]),
        seed: 7,
        activity: false,
        activity_target: 0,
    };
    demo::generate(db, schema, &options).await?;
    Ok(())
}

/// Points `config` at a new, empty PostgreSQL schema `schema` (dropped first if it exists).
pub(crate) async fn fresh_pg_schema(config: &mut keel_server::Config, url: &str, schema: &str) -> Result<()> {
    config.database.url = Some(keel_server::config::Secret(url.to_string()));
    config.database.schema = Some(schema.to_string());
    let admin = keel_store::Db::connect(
        &keel_store::Location::Postgres {
            url: url.to_string(),
            schema: None,
            replicas: vec![],
        },
        &config.pool(),
    )
    .await?;
    let mut tx = admin.begin().await?;
    tx.execute_script(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ))
    .await?;
    tx.commit().await?;
    admin.close().await;
    Ok(())
}

pub(crate) fn tempdir() -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("keel-bench-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&path)?;
    Ok(path)
}
