//! `keel bench backup` (O5): seed 000's year-2 data (360 orgs, 7,200 drivers, 12,240
//! vehicles, 75,000 issues, 225,000 activity rows) plus stored files, backed up and restored
//! through `keel_server::backup`; time, size and peak RSS, with the database's own tools
//! measured in the same run as the baseline (a file copy of the SQLite database; `pg_dump
//! --format=custom` and `pg_restore` on PostgreSQL).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use keel_server::backup::{Backups, RestoreTarget};
use keel_server::files::storage::Storage;
use rand::{RngCore, SeedableRng};

use crate::demo::{self, GenOptions};
use crate::examples;

#[derive(clap::Args)]
pub struct BackupArgs {
    /// PostgreSQL URL; without it the bench runs on embedded SQLite.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Multiplies seed 000's year-1 counts (3 = year 2).
    #[arg(long, default_value_t = 3.0)]
    pub scale: f64,
    /// Stored files (incompressible, like PDFs and photos), each `--file-kib` KiB.
    #[arg(long, default_value_t = 2_000)]
    pub files: u64,
    #[arg(long, default_value_t = 100)]
    pub file_kib: u64,
    /// Backups and restores measured (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// The peak of the process's anonymous resident memory (its heap) during a phase, sampled
/// every 5 ms. File pages SQLite maps (`mmap_size`) are left out: they are the page cache.
struct HeapSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl HeapSampler {
    fn start() -> HeapSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0f64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(super::harness::anon_rss_mib());
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peak
        });
        HeapSampler { stop, thread }
    }

    fn stop(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0.0)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub async fn run(args: BackupArgs) -> Result<()> {
    let dir = super::harness::tempdir()?;
    let spec = examples::spec("fleet-compliance").expect("fleet example");
    let schema = keel_server::load_schema(spec).map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    let mut config = keel_server::Config::default();
    let spec_path = dir.join("keel.toml");
    std::fs::write(&spec_path, spec)?;
    config.app.spec = spec_path;
    config.app.data_dir = dir.join("data");
    config.app.migrate_on_start = true;
    config.backup.key = Some(keel_server::config::Secret(keel_server::backup::generate_identity().0));
    if let Some(url) = &args.database_url {
        super::harness::fresh_pg_schema(&mut config, url, "keel_bench_backup").await?;
    }
    let db = keel_server::open_database(&config, &schema).await?;
    let started = Instant::now();
    let options = GenOptions {
        orgs: (120.0 * args.scale).round() as u32,
        users_per_org: 3,
        scale: args.scale,
        counts: HashMap::new(),
        seed: 42,
        activity: true,
        activity_target: (75_000.0 * args.scale).round() as u64,
    };
    demo::generate(&db, &schema, &options).await?;
    let storage = Arc::new(Storage::new(&config.files, &config.app.data_dir)?);
    let file_bytes = write_files(&db, &storage, args.files, args.file_kib).await?;
    let rows = |table: &str| {
        let sql = db.portable(&format!("SELECT count(*) FROM {table}"), vec![]);
        let db = &db;
        async move { Ok::<i64, anyhow::Error>(db.query_one(&sql).await?.and_then(|row| row[0].int()).unwrap_or(0)) }
    };
    eprintln!(
        "loaded in {:.1} s: {} orgs, {} drivers, {} vehicles, {} issues, {} activity rows, {} files ({} MiB)",
        started.elapsed().as_secs_f64(),
        rows("keel_orgs").await?,
        rows("drivers").await?,
        rows("vehicles").await?,
        rows("issues").await?,
        rows("keel_activity").await?,
        args.files,
        file_bytes >> 20
    );
    let database_bytes = database_size(&db).await?;
    let backups = Backups::new(&config, &schema.app.backup, &schema.app.name)?;
    let backend = if args.database_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };

    let before = super::harness::anon_rss_mib();
    let (mut backup_peak, mut restore_peak) = (0f64, 0f64);
    let mut backup_seconds = vec![];
    let mut restore_seconds = vec![];
    let mut baseline_dump = vec![];
    let mut baseline_restore = vec![];
    let mut size = 0;
    let mut baseline_size = 0;
    for round in 0..args.rounds.max(1) {
        // The database's own tools first, then Keel's, so each pair sees the same cache.
        let (dump_seconds, dump_size, dump_restore_seconds) = baseline(&config, &dir, round).await?;
        baseline_dump.push(dump_seconds);
        baseline_restore.push(dump_restore_seconds);
        baseline_size = dump_size;
        let sampler = HeapSampler::start();
        let report = backups.run(&db, storage.clone(), "manual").await?;
        backup_peak = backup_peak.max(sampler.stop());
        backup_seconds.push(report.seconds);
        size = report.bytes;
        let target = scratch_target(&config, &dir, round).await?;
        let sampler = HeapSampler::start();
        let restore_storage = Arc::new(Storage::local(&dir.join(format!("restored-files-{round}"))));
        let restored = backups
            .restore(&report.name, &target, restore_storage, false, Arc::new(|_, _| {}))
            .await?;
        restore_peak = restore_peak.max(sampler.stop());
        restore_seconds.push(restored.seconds);
        drop_target(&config, &target).await;
        let _ = std::fs::remove_dir_all(dir.join(format!("restored-files-{round}")));
    }
    let (backup, restore) = (median(backup_seconds), median(restore_seconds));
    let (dump, dump_restore) = (median(baseline_dump), median(baseline_restore));
    println!("## Backup and restore, seed 000 year 2, {backend}\n");
    println!(
        "Database {:.1} MiB, files {:.1} MiB ({} files); median of {} rounds.\n",
        database_bytes as f64 / 1048576.0,
        file_bytes as f64 / 1048576.0,
        args.files,
        args.rounds.max(1)
    );
    println!("| | seconds | size (MiB) | ratio to baseline |");
    println!("| --- | ---: | ---: | ---: |");
    let base_name = if args.database_url.is_some() {
        ("pg_dump -Fc (database only)", "pg_restore (database only)")
    } else {
        ("file copy of the database", "file copy back")
    };
    println!(
        "| {} | {dump:.2} | {:.1} | 1.00 |",
        base_name.0,
        baseline_size as f64 / 1048576.0
    );
    println!(
        "| keel backup (database + files, zstd, age) | {backup:.2} | {:.1} | {:.2} |",
        size as f64 / 1048576.0,
        backup / dump
    );
    println!("| {} | {dump_restore:.2} | | 1.00 |", base_name.1);
    println!(
        "| keel restore (database + files, checked) | {restore:.2} | | {:.2} |",
        restore / dump_restore
    );
    println!(
        "\nheap (anonymous RSS) at most {:.0} MiB above its level before (the data generator's {before:.0} MiB) backing up, {:.0} MiB restoring; backup throughput {:.0} MiB/s of input",
        backup_peak - before,
        restore_peak - before,
        (database_bytes + file_bytes) as f64 / 1048576.0 / backup
    );
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Stored files as uploads leave them: an object plus its `keel_files` row, spread over the
/// drivers' `documents` field.
async fn write_files(db: &keel_store::Db, storage: &Storage, count: u64, kib: u64) -> Result<u64> {
    let drivers = db
        .query(&db.portable("SELECT id, org FROM drivers ORDER BY id LIMIT 10000", vec![]))
        .await?;
    if drivers.is_empty() && count > 0 {
        bail!("no drivers to attach files to");
    }
    let mut random = rand::rngs::StdRng::seed_from_u64(7);
    let mut body = vec![0u8; (kib * 1024) as usize];
    let mut total = 0;
    let mut tx = db.begin().await?;
    for i in 0..count {
        let row = &drivers[i as usize % drivers.len()];
        let (record, org) = (row[0].uuid().context("id")?, row[1].uuid().context("org")?);
        let id = uuid::Uuid::now_v7();
        let key = format!("org-{org}/drivers/{record}/documents/{id}");
        random.fill_bytes(&mut body);
        let mut writer = storage.writer(&key).await?;
        writer.write(&body);
        writer.finish().await?;
        let sha256 = keel_server::hex(&<sha2::Sha256 as sha2::Digest>::digest(&body));
        keel_store::files::file_insert(
            &mut tx,
            &keel_store::files::StoredFile {
                id,
                org: Some(org),
                collection: "drivers".into(),
                record,
                field: "documents".into(),
                object_key: key,
                name: format!("document-{i}.pdf"),
                content_type: "application/pdf".into(),
                size: body.len() as i64,
                sha256,
                uploaded_by: None,
                created_at: chrono::Utc::now(),
            },
        )
        .await?;
        total += body.len() as u64;
    }
    tx.commit().await?;
    Ok(total)
}

async fn database_size(db: &keel_store::Db) -> Result<u64> {
    if let Some(path) = db.sqlite_path() {
        return Ok(std::fs::metadata(path)?.len());
    }
    let sql = db.portable(
        "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')",
        vec![],
    );
    Ok(db.query_one(&sql).await?.and_then(|row| row[0].int()).unwrap_or(0) as u64)
}

/// The database's own tools: seconds to dump, the dump's size, seconds to restore.
async fn baseline(config: &keel_server::Config, dir: &std::path::Path, round: usize) -> Result<(f64, u64, f64)> {
    match config.location() {
        keel_store::Location::Sqlite(path) => {
            // A plain file copy is the floor for SQLite (it is not consistent under writes).
            let copy = dir.join(format!("baseline-{round}.db"));
            let started = Instant::now();
            std::fs::copy(&path, &copy)?;
            let dump = started.elapsed().as_secs_f64();
            let size = std::fs::metadata(&copy)?.len();
            let back = dir.join(format!("baseline-back-{round}.db"));
            let started = Instant::now();
            std::fs::copy(&copy, &back)?;
            let restore = started.elapsed().as_secs_f64();
            let _ = std::fs::remove_file(copy);
            let _ = std::fs::remove_file(back);
            Ok((dump, size, restore))
        }
        keel_store::Location::Postgres { url, schema, .. } => {
            let schema = schema.unwrap_or_else(|| "public".into());
            let file = dir.join(format!("baseline-{round}.pgdump"));
            let started = Instant::now();
            let status = tokio::process::Command::new("pg_dump")
                .args(["--format=custom", "--no-owner", "--no-privileges"])
                .arg(format!("--schema={schema}"))
                .arg(format!("--file={}", file.display()))
                .arg(format!("--dbname={url}"))
                .status()
                .await?;
            anyhow::ensure!(status.success(), "pg_dump failed");
            let dump = started.elapsed().as_secs_f64();
            let size = std::fs::metadata(&file)?.len();
            let database = format!("keel_bench_baseline_{round}");
            let target = scratch_url(&url, &database)?;
            keel_store::backups::pg_execute(
                &url,
                &[
                    format!("DROP DATABASE IF EXISTS {database}"),
                    format!("CREATE DATABASE {database}"),
                ],
            )
            .await?;
            let started = Instant::now();
            let status = tokio::process::Command::new("pg_restore")
                .args([
                    "--no-owner",
                    "--no-privileges",
                    "--exit-on-error",
                    "--single-transaction",
                ])
                .arg(format!("--dbname={target}"))
                .arg(&file)
                .status()
                .await?;
            anyhow::ensure!(status.success(), "pg_restore failed");
            let restore = started.elapsed().as_secs_f64();
            keel_store::backups::pg_execute(&url, &[format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")])
                .await?;
            let _ = std::fs::remove_file(file);
            Ok((dump, size, restore))
        }
    }
}

fn scratch_url(url: &str, database: &str) -> Result<String> {
    Ok(keel_server::backup::with_database(url, database)?)
}

async fn scratch_target(config: &keel_server::Config, dir: &std::path::Path, round: usize) -> Result<RestoreTarget> {
    match config.location() {
        keel_store::Location::Sqlite(_) => Ok(RestoreTarget::Sqlite(dir.join(format!("restored-{round}.db")))),
        keel_store::Location::Postgres { url, schema, .. } => {
            let database = format!("keel_bench_restore_{round}");
            keel_store::backups::pg_execute(
                &url,
                &[
                    format!("DROP DATABASE IF EXISTS {database}"),
                    format!("CREATE DATABASE {database}"),
                ],
            )
            .await?;
            Ok(RestoreTarget::Postgres {
                url: scratch_url(&url, &database)?,
                schema: schema.unwrap_or_else(|| "public".into()),
            })
        }
    }
}

async fn drop_target(config: &keel_server::Config, target: &RestoreTarget) {
    match target {
        RestoreTarget::Sqlite(path) => {
            let _ = std::fs::remove_file(path);
        }
        RestoreTarget::Postgres { url, .. } => {
            let database = url.rsplit('/').next().unwrap_or_default().to_string();
            if let keel_store::Location::Postgres { url: admin, .. } = config.location() {
                let _ = keel_store::backups::pg_execute(
                    &admin,
                    &[format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")],
                )
                .await;
            }
        }
    }
}
