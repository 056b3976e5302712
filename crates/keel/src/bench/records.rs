//! `keel bench records`: N tasks in the pms example (one org), then the filtered first page
//! and a page deep in the cursor chain (sequential latency), and list and create throughput
//! with latency percentiles at a given concurrency.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use keel_query::{SqlValue, encode_cursor, parse_sort};

use super::harness::*;
use crate::examples;
use crate::http_client::Connection;

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

/// Loads `rows` tasks, then measures the pages and the throughput.
pub(super) async fn run(
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
