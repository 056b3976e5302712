//! `keel bench scaleout`: read throughput through one instance and through two behind a
//! round-robin proxy (PostgreSQL; Redis optional), the CPU each request costs the Keel
//! processes, and the request rate while the instances restart one at a time.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use super::harness::{free_port, load, tempdir, wait_ready};
use crate::demo::DEMO_PASSWORD;
use crate::examples;
use crate::http_client::Connection;

const SCHEMA: &str = "keel_bench_scaleout";

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the stat line; 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

struct Instance {
    child: Child,
    address: SocketAddr,
}

async fn start(spec: &std::path::Path, env: &[(String, String)], port: u16) -> Result<Instance> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["serve", "--spec"])
        .arg(spec)
        .args(["--port", &port.to_string()])
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let child = command.spawn().context("starting keel serve")?;
    let address: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_ready(address).await?;
    Ok(Instance { child, address })
}

impl Instance {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn stop(mut self) -> Result<()> {
        let pid = self.pid();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        if !status.success() {
            bail!("instance {pid} exited with {status}");
        }
        Ok(())
    }
}

/// A round-robin TCP proxy that routes new connections to backends whose `/health/ready`
/// answered 200 in the last 50 ms poll.
async fn proxy(backends: Vec<SocketAddr>, stop: Arc<AtomicBool>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let ready = Arc::new(std::sync::Mutex::new(vec![true; backends.len()]));
    {
        let (ready, backends, stop) = (ready.clone(), backends.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (i, backend) in backends.iter().enumerate() {
                    let up = match Connection::connect(*backend).await {
                        Ok(mut c) => matches!(c.send("GET", "/health/ready", None, None).await, Ok((200, _))),
                        Err(_) => false,
                    };
                    ready.lock().expect("lock")[i] = up;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (ready, backends, next) = (ready.clone(), backends.clone(), next.clone());
            tokio::spawn(async move {
                let first = next.fetch_add(1, Ordering::Relaxed);
                for attempt in 0..backends.len() * 2 {
                    let i = (first + attempt) % backends.len();
                    if attempt < backends.len() && !ready.lock().expect("lock")[i] {
                        continue;
                    }
                    if let Ok(mut upstream) = TcpStream::connect(backends[i]).await {
                        let _ = upstream.set_nodelay(true);
                        let _ = client.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        return;
                    }
                }
            });
        }
    });
    Ok(address)
}

fn row(summary: &super::harness::Summary, name: &str, cpu_ms: Option<f64>) -> String {
    let ms = |q: f64| summary.histogram.value_at_quantile(q) as f64 / 1000.0;
    let cpu = cpu_ms.map(|c| format!("{c:.3}")).unwrap_or_else(|| "–".into());
    format!(
        "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} / {} | {cpu} |",
        summary.requests as f64 / summary.seconds,
        ms(0.50),
        ms(0.95),
        ms(0.99),
        summary.errors,
        summary.requests
    )
}

pub async fn run(
    database_url: String,
    redis_url: Option<String>,
    rows: u64,
    concurrency: usize,
    duration: Duration,
) -> Result<()> {
    let dir = tempdir()?;
    let spec = dir.join("keel.toml");
    let source = examples::spec("pms").expect("pms example");
    std::fs::write(&spec, source)?;
    let schema = keel_server::load_schema(source).map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    let admin = keel_store::Db::connect(
        &keel_store::Location::Postgres {
            url: database_url.clone(),
            schema: None,
            replicas: vec![],
        },
        &keel_store::PoolConfig::default(),
    )
    .await?;
    let mut tx = admin.begin().await?;
    tx.execute_script(&format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}"
    ))
    .await?;
    tx.commit().await?;
    admin.close().await;
    let mut config = keel_server::Config::default();
    config.app.spec = spec.clone();
    config.app.migrate_on_start = true;
    config.database.url = Some(keel_server::config::Secret(database_url.clone()));
    config.database.schema = Some(SCHEMA.into());
    let db = keel_server::open_database(&config, &schema).await?;
    eprintln!("bench scaleout: loading {rows} tasks");
    super::harness::load_tasks(&db, &schema, rows).await?;
    let mut tx = db.begin().await?;
    tx.execute_script("ANALYZE").await?;
    tx.commit().await?;
    db.close().await;

    let mut env = vec![
        ("KEEL_DATABASE__URL".to_string(), database_url),
        ("KEEL_DATABASE__SCHEMA".to_string(), SCHEMA.to_string()),
        ("KEEL_DATABASE__MAX_CONNECTIONS".to_string(), "16".to_string()),
        ("KEEL_SERVER__DRAIN_MS".to_string(), "300".to_string()),
        ("KEEL_LOG__LEVEL".to_string(), "error".to_string()),
        // The load comes from one address; throughput is measured with rate limits off.
        ("KEEL_SERVER__RATE_LIMITS".to_string(), "false".to_string()),
    ];
    if let Some(url) = redis_url {
        env.push(("KEEL_REDIS__URL".to_string(), url));
    }
    let ports = [free_port()?, free_port()?];
    let mut instances = vec![start(&spec, &env, ports[0]).await?, start(&spec, &env, ports[1]).await?];
    let mut connection = Connection::connect(instances[0].address).await?;
    let login = format!("{{\"email\":\"owner@org-001.demo.keel\",\"password\":\"{DEMO_PASSWORD}\"}}");
    let (status, body) = connection
        .send("POST", "/api/v1/auth/login", None, Some(login.as_bytes()))
        .await?;
    if status != 200 {
        bail!("login failed: {status}");
    }
    let token = serde_json::from_slice::<serde_json::Value>(&body)?["token"]
        .as_str()
        .context("token")?
        .to_string();
    let path = "/api/v1/orgs/org-001/tasks?filter=status%20%3D%20%22todo%22&limit=10".to_string();
    let request = {
        let path = path.clone();
        move |_| ("GET", path.clone(), None)
    };
    let cpu = |instances: &[Instance]| instances.iter().map(|i| cpu_seconds(i.pid())).sum::<f64>();

    // Warm up both, then one instance directly.
    load(
        instances[0].address,
        &token,
        concurrency,
        Duration::from_secs(2),
        request.clone(),
    )
    .await?;
    load(
        instances[1].address,
        &token,
        concurrency,
        Duration::from_secs(2),
        request.clone(),
    )
    .await?;
    let before = cpu(&instances);
    let one = load(instances[0].address, &token, concurrency, duration, request.clone()).await?;
    let one_cpu = (cpu(&instances) - before) / one.requests.max(1) as f64 * 1000.0;

    let stop = Arc::new(AtomicBool::new(false));
    let balanced = proxy(instances.iter().map(|i| i.address).collect(), stop.clone()).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu(&instances);
    let two = load(balanced, &token, concurrency, duration, request.clone()).await?;
    let two_cpu = (cpu(&instances) - before) / two.requests.max(1) as f64 * 1000.0;

    // Rolling restart under load: stop and restart each instance while the load runs.
    let restart_load = {
        let (token, request) = (token.clone(), request.clone());
        tokio::spawn(async move { load(balanced, &token, concurrency, duration, request).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, port) in ports.iter().enumerate() {
        let old = instances.remove(i);
        old.stop().await?;
        instances.insert(i, start(&spec, &env, *port).await?);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let restarting = restart_load.await??;
    stop.store(true, Ordering::Relaxed);

    println!(
        "\n## keel bench scaleout: PostgreSQL, {rows} tasks, {concurrency} connections, {} s per phase\n",
        duration.as_secs()
    );
    println!("| phase | req/s | p50 ms | p95 ms | p99 ms | errors / requests | Keel CPU ms per request |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!("{}", row(&one, "one instance", Some(one_cpu)));
    println!("{}", row(&two, "two instances behind the proxy", Some(two_cpu)));
    println!("{}", row(&restarting, "two instances, each restarted under load", None));
    for instance in instances {
        instance.stop().await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
