//! `keel bench limits`: what rate limiting costs (S4), and what the response cache gives (C1).
//!
//! First the limiter itself: decisions per second of the in-process table and, with
//! `--redis-url`, of the shared Redis script, each decision counting one request against three
//! limits (IP, user, org) as an API request does; Redis's against a bare `PING` round trip in
//! the same run. Then list throughput over HTTP through one `keel serve` of the pms example:
//! limits off, on in-process, and on through Redis, with limits high enough never to refuse,
//! so every request pays for the check and none is turned away; then with the tasks in the
//! response cache (`cache = "1m"`), in-process and with its stamps in Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use keel_server::config::{RedisSection, Secret};
use keel_server::http::shared::{LocalLimits, RateKey, Shared};

use super::harness::{Summary, demo_login, load, load_tasks, serve, tempdir};
use crate::examples;

#[derive(clap::Args)]
pub struct LimitsArgs {
    /// Redis for the shared limiter (`redis://…`); without it only the in-process one runs.
    #[arg(long)]
    redis_url: Option<String>,
    /// Limiter decisions per phase.
    #[arg(long, default_value_t = 200_000)]
    decisions: u64,
    /// Concurrent tasks or HTTP connections.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per HTTP phase.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Tasks in the listed collection.
    #[arg(long, default_value_t = 10_000)]
    rows: u64,
    /// HTTP rounds: each round runs every mode once, in turn; the median round is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// The three limits of an API request by client `n` (of 10,000 distinct clients).
fn keys(n: u64) -> Vec<RateKey> {
    let client = n % 10_000;
    let key = |scope: &str, who: String| RateKey {
        key: format!("api:{scope}:60000:{who}"),
        limit: 1_000_000,
        period: Duration::from_secs(60),
    };
    vec![
        key("ip", format!("10.0.{}.{}", client / 256, client % 256)),
        key("user", format!("u{client}")),
        key("org", format!("org-{}", client % 100)),
    ]
}

/// An HTTP mode: its name, its spec, and its environment.
type Mode<'a> = (&'a str, &'a std::path::Path, Vec<(&'a str, String)>);

struct Phase {
    decisions: u64,
    seconds: f64,
    histogram: Histogram<u64>,
}

impl Phase {
    fn line(&self, name: &str) -> String {
        let us = |q: f64| self.histogram.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "| {name} | {:.0} | {:.1} | {:.1} |",
            self.decisions as f64 / self.seconds,
            us(0.5),
            us(0.99)
        )
    }
}

/// `decisions` limiter calls spread over `concurrency` tasks; latency in nanoseconds.
async fn decide(shared: Arc<Shared>, local: Arc<LocalLimits>, decisions: u64, concurrency: usize) -> Result<Phase> {
    let started = Instant::now();
    let per_task = decisions / concurrency as u64;
    let mut tasks = vec![];
    for task in 0..concurrency as u64 {
        let (shared, local) = (shared.clone(), local.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("histogram");
            for i in 0..per_task {
                let keys = keys(task * per_task + i);
                let sent = Instant::now();
                let decision = shared.gcra_many(&local, &keys).await;
                histogram.record(sent.elapsed().as_nanos() as u64).ok();
                anyhow::ensure!(decision.allowed, "a decision refused: {decision:?}");
            }
            Ok(histogram)
        }));
    }
    let mut histogram = Histogram::<u64>::new(3)?;
    for task in tasks {
        histogram.add(task.await??)?;
    }
    Ok(Phase {
        decisions: per_task * concurrency as u64,
        seconds: started.elapsed().as_secs_f64(),
        histogram,
    })
}

/// `samples` sequential PINGs: the floor of any Redis round trip.
async fn pings(shared: &Shared, samples: u64) -> Result<Phase> {
    let mut histogram = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for _ in 0..samples {
        let latency = shared.ping().await.context("redis")?.map_err(|e| anyhow::anyhow!(e))?;
        histogram.record(latency.as_nanos() as u64)?;
    }
    Ok(Phase {
        decisions: samples,
        seconds: started.elapsed().as_secs_f64(),
        histogram,
    })
}

pub async fn run(args: LimitsArgs) -> Result<()> {
    let local_shared = Arc::new(Shared::none());
    let table = Arc::new(LocalLimits::default());
    // Warm the table to its working size (30,000 keys), then measure.
    decide(local_shared.clone(), table.clone(), 30_000, 1).await?;
    let local_one = decide(local_shared.clone(), table.clone(), args.decisions, 1).await?;
    let local_many = decide(local_shared.clone(), table.clone(), args.decisions, args.concurrency).await?;
    let mut redis_rows = vec![];
    if let Some(url) = &args.redis_url {
        let config = RedisSection {
            url: Some(Secret(url.clone())),
            key_prefix: format!("keel-bench-{}", std::process::id()),
            ..RedisSection::default()
        };
        let shared = Arc::new(Shared::connect(&config).map_err(|e| anyhow::anyhow!(e))?);
        let samples = (args.decisions / 20).max(1_000);
        pings(&shared, 200).await?;
        let ping = pings(&shared, samples).await?;
        let one = decide(shared.clone(), table.clone(), samples, 1).await?;
        let many = decide(shared.clone(), table.clone(), args.decisions, args.concurrency).await?;
        let p50 = |p: &Phase| p.histogram.value_at_quantile(0.5) as f64;
        redis_rows.push(ping.line("Redis PING (baseline), sequential"));
        redis_rows.push(one.line("Redis script, sequential"));
        redis_rows.push(many.line(&format!("Redis script, {} tasks", args.concurrency)));
        redis_rows.push(format!(
            "\nRedis decision / PING p50: {:.2}",
            p50(&one) / p50(&ping).max(1.0)
        ));
    }

    // HTTP: one server at a time on the same SQLite file.
    let dir = tempdir()?;
    let source = examples::spec("pms").expect("pms example");
    let mut spec: toml::Table = toml::from_str(source)?;
    let high = "1000000/s";
    let mut limits = toml::Table::new();
    for class in ["api", "auth", "upload", "status"] {
        let mut table = toml::Table::new();
        for scope in ["per_ip", "per_user", "per_org"] {
            table.insert(scope.into(), high.into());
        }
        limits.insert(class.into(), table.into());
    }
    spec.insert("rate_limits".into(), limits.into());
    let spec_text = toml::to_string(&spec)?;
    // The same app with its tasks in the response cache (C1).
    if let Some(tasks) = spec
        .get_mut("collections")
        .and_then(|c| c.get_mut("tasks"))
        .and_then(|t| t.as_table_mut())
    {
        tasks.insert("cache".into(), "1m".into());
    }
    let cached_text = toml::to_string(&spec)?;
    let spec_path = dir.join("keel.toml");
    let cached_path = dir.join("keel-cached.toml");
    std::fs::write(&spec_path, &spec_text)?;
    std::fs::write(&cached_path, &cached_text)?;
    let schema = keel_server::load_schema(&spec_text).map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    let mut config = keel_server::Config::default();
    config.app.spec = spec_path.clone();
    config.app.data_dir = dir.clone();
    config.app.migrate_on_start = true;
    let db = keel_server::open_database(&config, &schema).await?;
    eprintln!("bench limits: loading {} tasks", args.rows);
    load_tasks(&db, &schema, args.rows).await?;
    db.close().await;
    drop(db);

    let off = ("KEEL_SERVER__RATE_LIMITS", "false".to_string());
    let mut modes: Vec<Mode> = vec![
        ("limits off", &spec_path, vec![off.clone()]),
        ("limits on, in-process", &spec_path, vec![]),
        ("cached (limits off), in-process", &cached_path, vec![off.clone()]),
    ];
    if let Some(url) = &args.redis_url {
        modes.push(("limits on, Redis", &spec_path, vec![("KEEL_REDIS__URL", url.clone())]));
        modes.push((
            "cached (limits off), Redis",
            &cached_path,
            vec![off.clone(), ("KEEL_REDIS__URL", url.clone())],
        ));
    }
    let duration = Duration::from_secs(args.duration);
    // Modes take turns, so drift on a shared machine touches each alike.
    let mut runs: Vec<Vec<Summary>> = modes.iter().map(|_| vec![]).collect();
    for _ in 0..args.rounds.max(1) {
        for (i, (_, spec, env)) in modes.iter().enumerate() {
            let (mut server, address) = serve(spec, &dir, None, env).await?;
            let token = demo_login(address).await?;
            let path = "/api/v1/orgs/org-001/tasks?filter=status%20%3D%20%22todo%22&limit=50".to_string();
            let warm = path.clone();
            load(address, &token, args.concurrency, Duration::from_secs(1), move |_| {
                ("GET", warm.clone(), None)
            })
            .await?;
            let summary = load(address, &token, args.concurrency, duration, move |_| {
                ("GET", path.clone(), None)
            })
            .await?;
            let _ = server.kill().await;
            runs[i].push(summary);
        }
    }
    let rate = |s: &Summary| s.requests as f64 / s.seconds;
    let mut http: Vec<(String, Summary)> = vec![];
    for ((name, _, _), mut summaries) in modes.iter().zip(runs) {
        summaries.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
        let median = summaries.swap_remove(summaries.len() / 2);
        http.push((format!("list, {name}"), median));
    }

    println!(
        "\n## keel bench limits: {} decisions, {} tasks / connections\n",
        args.decisions, args.concurrency
    );
    println!("Limiter decisions (three limits each: IP, user, org):\n");
    println!("| limiter | decisions/s | p50 µs | p99 µs |");
    println!("| --- | ---: | ---: | ---: |");
    println!("{}", local_one.line("in-process, sequential"));
    println!(
        "{}",
        local_many.line(&format!("in-process, {} tasks", args.concurrency))
    );
    for row in &redis_rows {
        println!("{row}");
    }
    println!(
        "\nList throughput over HTTP (SQLite, {} tasks, {} connections, {} s; the median of {} interleaved rounds):\n",
        args.rows, args.concurrency, args.duration, args.rounds
    );
    println!("| phase | req/s | p50 ms | p95 ms | p99 ms | errors / requests |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, summary) in &http {
        println!("{}", summary.line(name));
    }
    for (name, summary) in http.iter().skip(1) {
        println!(
            "\n{name} / limits off: {:.3}",
            rate(summary) / rate(&http[0].1).max(1.0)
        );
    }
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
