//! What every `keel bench` scenario shares: temporary folders and PostgreSQL schemas, a
//! served `keel` process, the demo login, bulk task loading, the closed-loop load generator
//! with its latency summary, and memory sampling. Scenarios use this module, never each other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

use crate::demo::{self, DEMO_PASSWORD, GenOptions};
use crate::http_client::Connection;

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

/// Runs `concurrency` connections for `duration`; each repeats `op` (with its connection and a
/// counter) and the time of each call is recorded. `op` hands the connection back with
/// `Some(ok)`, or `None` when it has nothing more to do (that connection stops early).
pub(crate) async fn drive<F, Fut>(address: SocketAddr, concurrency: usize, duration: Duration, op: F) -> Result<Summary>
where
    F: Fn(Connection, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (Connection, Option<bool>)> + Send,
{
    let op = Arc::new(op);
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let totals = Arc::new(Mutex::new((0u64, 0u64)));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = vec![];
    for worker in 0..concurrency {
        let (op, histogram, totals) = (op.clone(), histogram.clone(), totals.clone());
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            let (mut requests, mut errors) = (0u64, 0u64);
            let mut connection = Connection::connect(address).await?;
            let mut n = worker as u64 * 1_000_000;
            while Instant::now() < deadline {
                n += 1;
                let sent = Instant::now();
                let (back, outcome) = op(connection, n).await;
                connection = back;
                let Some(ok) = outcome else { break };
                local.record(sent.elapsed().as_micros() as u64).ok();
                requests += 1;
                errors += u64::from(!ok);
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
    let token: Arc<str> = Arc::from(token);
    drive(address, concurrency, duration, move |mut connection, n| {
        let (request, token) = (request.clone(), token.clone());
        async move {
            let (method, path, body) = request(n);
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
            (connection, Some(status != 0 && status < 400))
        }
    })
    .await
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

/// The process's anonymous resident memory (heap, not file pages mapped by SQLite), in MiB.
pub(crate) fn anon_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Samples the anonymous resident memory every 10 ms until dropped; `peak` is the largest seen.
pub(crate) struct AnonSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl AnonSampler {
    pub(crate) fn start() -> AnonSampler {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                let kib = (anon_rss_mib() * 1024.0) as u64;
                seen.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
        AnonSampler { peak, task }
    }

    /// The peak in MiB, and stops sampling.
    pub(crate) fn stop(self) -> f64 {
        self.task.abort();
        self.peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }
}
