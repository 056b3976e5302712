//! `keel bench upload` (F2): one large file (1 GiB by default) uploaded through Keel's upload
//! path (the same function as `POST …/files/{field}`: hashed, typed, measured, written to
//! storage as it arrives) and downloaded back, with throughput and the process's peak heap.
//! The body is generated as it is sent, so the only memory in play is Keel's.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use keel_server::http::extract::Params;

const SPEC: &str = r#"
[app]
name = "uploadbench"

[roles]
order = ["owner"]

[collections.blobs]
fields.name = { type = "text" }
fields.data = { type = "file", max_size = "8GB" }
"#;

#[derive(clap::Args)]
pub struct UploadArgs {
    /// The file's size in MiB.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
    /// PostgreSQL URL; without it the bench runs on embedded SQLite (the file goes to the
    /// local disk either way).
    #[arg(long)]
    pub database_url: Option<String>,
    /// An S3-compatible endpoint (e.g. http://127.0.0.1:4568); without it the file goes to
    /// the local disk.
    #[arg(long, requires = "s3_bucket")]
    pub s3_endpoint: Option<String>,
    /// The bucket, which must exist.
    #[arg(long)]
    pub s3_bucket: Option<String>,
    #[arg(long, env = "AWS_ACCESS_KEY_ID", default_value = "S3RVER")]
    pub s3_access_key_id: String,
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        default_value = "S3RVER",
        hide_env_values = true
    )]
    pub s3_secret_access_key: String,
}

pub async fn run(args: UploadArgs) -> Result<()> {
    let dir = super::harness::tempdir()?;
    let schema = keel_server::load_schema(SPEC).map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    let spec_path = dir.join("keel.toml");
    std::fs::write(&spec_path, SPEC)?;
    let mut config = keel_server::Config::default();
    config.app.spec = spec_path;
    config.app.data_dir = dir.clone();
    config.app.migrate_on_start = true;
    if let Some(endpoint) = &args.s3_endpoint {
        config.files.backend = "s3".into();
        config.files.s3_endpoint = Some(endpoint.clone());
        config.files.s3_bucket = args.s3_bucket.clone();
        config.files.s3_access_key_id = Some(args.s3_access_key_id.clone());
        config.files.s3_secret_access_key = Some(keel_server::config::Secret(args.s3_secret_access_key.clone()));
        config.files.s3_allow_http = endpoint.starts_with("http://");
        config.files.s3_prefix = format!("keel-bench-{}", uuid::Uuid::now_v7());
    }
    if let Some(url) = &args.database_url {
        super::harness::fresh_pg_schema(&mut config, url, "keel_bench_upload").await?;
    }
    let db = keel_server::open_database(&config, &schema).await?;
    let state = keel_server::state(config, schema, db);
    keel_store::system::org_insert(&state.db, "bench", "Bench", None, "owner").await?;
    let operator = keel_server::records::export::operator();
    let created = keel_server::records::create(
        &state,
        &operator,
        Some("bench"),
        "blobs",
        serde_json::json!({ "name": "big" }),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}: {} {:?}", e.code, e.message, e.cause))?;
    let body = axum::body::to_bytes(created.into_body(), 1 << 20).await?;
    let record: serde_json::Value = serde_json::from_slice(&body)?;
    let id = record["id"].as_str().context("a record id")?.to_string();

    let size = args.mib << 20;
    let chunk = Bytes::from(vec![b'k'; 64 * 1024]);
    let chunks = size / chunk.len() as u64;
    let stream = futures_util::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("content-type", "application/octet-stream".parse()?);
    headers.insert("content-length", size.to_string().parse()?);
    let params = Params(HashMap::from([("name".to_string(), "big.bin".to_string())]));
    let before = super::harness::anon_rss_mib();
    let sampler = super::harness::AnonSampler::start();
    let started = Instant::now();
    let response = keel_server::files::upload(
        &state,
        &operator,
        Some("bench"),
        "blobs",
        &id,
        "data",
        params,
        headers,
        Body::from_stream(stream),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{}: {} {:?}", e.code, e.message, e.cause))?;
    let upload_seconds = started.elapsed().as_secs_f64();
    let upload_peak = sampler.stop();
    anyhow::ensure!(response.status() == 201, "the upload answered {}", response.status());
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    anyhow::ensure!(
        answer["file"]["size"] == size,
        "stored {} of {size} bytes",
        answer["file"]["size"]
    );
    let file = answer["file"]["id"].as_str().context("a file id")?.to_string();

    let sampler = super::harness::AnonSampler::start();
    let started = Instant::now();
    let response = keel_server::files::download(&state, &operator, Some("bench"), "blobs", &id, "data", &file)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))?;
    let mut stream = response.into_body().into_data_stream();
    let mut received: u64 = 0;
    while let Some(chunk) = stream.next().await {
        received += chunk?.len() as u64;
    }
    let download_seconds = started.elapsed().as_secs_f64();
    let download_peak = sampler.stop();
    anyhow::ensure!(received == size, "downloaded {received} of {size} bytes");

    let backend = if args.database_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let store = if args.s3_endpoint.is_some() { "S3" } else { "local disk" };
    println!("| {backend}, {store} | size | seconds | MiB/s | peak heap (RssAnon) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| upload (hashed, typed, written as it arrives) | {} MiB | {upload_seconds:.2} | {:.0} | {upload_peak:.0} MiB (before: {before:.0} MiB) |",
        args.mib,
        args.mib as f64 / upload_seconds
    );
    println!(
        "| download (streamed) | {} MiB | {download_seconds:.2} | {:.0} | {download_peak:.0} MiB |",
        args.mib,
        args.mib as f64 / download_seconds
    );
    state.db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
