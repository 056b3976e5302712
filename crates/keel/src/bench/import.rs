//! `keel bench import` (P1, P6): N rows of the pms `tasks` collection imported from a CSV
//! file through Keel's import (the same code as `POST …/import` and `keel import`), with the
//! process's peak RSS; the database's own bulk path measured in the same run on a fresh
//! database (raw `COPY … FORMAT csv` on PostgreSQL, a prepared-insert loop in one transaction
//! on SQLite); then a 100,000-row import batch deleted in one call.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use keel_query::SqlValue;
use keel_server::http::extract::Params;
use keel_server::import::{self, Mode};
use keel_store::Db;
use uuid::Uuid;

use super::harness::AnonSampler;
use crate::demo::{self, GenOptions};
use crate::examples;

#[derive(clap::Args)]
pub struct ImportArgs {
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// PostgreSQL URL; without it the bench runs on embedded SQLite.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Rows of the import batch that is then deleted.
    #[arg(long, default_value_t = 100_000)]
    pub delete_rows: u64,
    /// Concurrent exports of the whole collection (memory under concurrent exports).
    #[arg(long, default_value_t = 16)]
    pub exports: usize,
}

const STATUSES: [&str; 5] = ["backlog", "todo", "in_progress", "in_review", "done"];
const PRIORITIES: [&str; 4] = ["low", "medium", "high", "urgent"];

/// A fresh database with the pms app, one org and 40 projects.
struct Setup {
    config: keel_server::Config,
    schema: keel_query::Schema,
    db: Db,
    org: Uuid,
    slug: String,
    /// (id, name) of each project.
    projects: Vec<(Uuid, String)>,
}

async fn setup(dir: &Path, database_url: &Option<String>, name: &str) -> Result<Setup> {
    let spec = examples::spec("pms").expect("pms example");
    let schema = keel_server::load_schema(spec).map_err(|p| anyhow::anyhow!(p.join("\n")))?;
    let data_dir = dir.join(name);
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir)?;
    let spec_path = data_dir.join("keel.toml");
    std::fs::write(&spec_path, spec)?;
    let mut config = keel_server::Config::default();
    config.app.spec = spec_path;
    config.app.data_dir = data_dir;
    config.app.migrate_on_start = true;
    if let Some(url) = database_url {
        super::harness::fresh_pg_schema(&mut config, url, &format!("keel_bench_{name}")).await?;
    }
    let db = keel_server::open_database(&config, &schema).await?;
    let options = GenOptions {
        orgs: 1,
        users_per_org: 4,
        scale: 1.0,
        counts: HashMap::from([("projects".to_string(), 40), ("tasks".to_string(), 0)]),
        seed: 7,
        activity: false,
        activity_target: 0,
    };
    demo::generate(&db, &schema, &options).await?;
    let org = db
        .query_one(&db.portable("SELECT id, slug FROM keel_orgs LIMIT 1", vec![]))
        .await?
        .context("an org")?;
    let (org, slug) = (
        org[0].uuid().context("org id")?,
        org[1].text().unwrap_or("").to_string(),
    );
    let projects = db
        .query(&db.portable(
            "SELECT id, name FROM projects WHERE org = $1 ORDER BY name",
            vec![SqlValue::Uuid(org)],
        ))
        .await?
        .into_iter()
        .filter_map(|row| Some((row[0].uuid()?, row[1].text()?.to_string())))
        .collect();
    Ok(Setup {
        config,
        schema,
        db,
        org,
        slug,
        projects,
    })
}

/// The i-th task's fields: title, project, status, priority, position, estimate, due date,
/// description.
fn task(i: u64, projects: &[(Uuid, String)]) -> (String, usize, &'static str, &'static str, u64, f64, String, String) {
    let project = (i as usize * 7919) % projects.len();
    (
        format!("Task {i}: review the quarterly plan"),
        project,
        STATUSES[(i % 5) as usize],
        PRIORITIES[(i % 4) as usize],
        i % 100_000,
        ((i % 40) as f64) * 0.5,
        format!("2027-{:02}-{:02}", 1 + i % 12, 1 + i % 28),
        format!("Imported task number {i}, with a short description."),
    )
}

/// A CSV field in quotes.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// The import file: a header and `rows` tasks naming their project.
fn write_csv(path: &Path, rows: u64, offset: u64, projects: &[(Uuid, String)]) -> Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    writeln!(
        out,
        "title,project,status,priority,position,estimate_hours,due_date,description"
    )?;
    for i in offset..offset + rows {
        let (title, project, status, priority, position, estimate, due, description) = task(i, projects);
        writeln!(
            out,
            "{title},{},{status},{priority},{position},{estimate},{due},{}",
            quoted(&projects[project].1),
            quoted(&description)
        )?;
    }
    out.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// The same tasks as every column of the table, for the database's own bulk path.
fn raw_row(i: u64, setup: &Setup, batch: Uuid, now: chrono::DateTime<chrono::Utc>) -> Vec<SqlValue> {
    let (title, project, status, priority, position, estimate, due, description) = task(i, &setup.projects);
    let tasks = setup.schema.app.collection("tasks").expect("pms has tasks");
    let mut values = vec![
        SqlValue::Uuid(Uuid::now_v7()),
        SqlValue::Uuid(setup.org),
        SqlValue::Datetime(now),
        SqlValue::Datetime(now),
        SqlValue::Int(1),
        SqlValue::Uuid(batch),
    ];
    for field in &tasks.fields {
        values.push(match field.name.as_str() {
            "project" => SqlValue::Uuid(setup.projects[project].0),
            "title" => SqlValue::Text(title.clone()),
            "description" => SqlValue::Text(description.clone()),
            "status" => SqlValue::Text(status.into()),
            "priority" => SqlValue::Text(priority.into()),
            "due_date" => SqlValue::Date(chrono::NaiveDate::parse_from_str(&due, "%Y-%m-%d").expect("a date")),
            "estimate_hours" => SqlValue::Float(estimate),
            "position" => SqlValue::Int(position as i64),
            _ => SqlValue::Null,
        });
    }
    values
}

fn columns(setup: &Setup) -> Vec<String> {
    let tasks = setup.schema.app.collection("tasks").expect("pms has tasks");
    let mut columns: Vec<String> = ["id", "org", "created_at", "updated_at", "version", "batch"]
        .map(String::from)
        .to_vec();
    columns.extend(tasks.fields.iter().map(|f| f.name.clone()));
    columns
}

/// The rows as a file in `COPY`'s CSV format, every column already resolved.
fn write_raw_csv(path: &Path, setup: &Setup, rows: u64, batch: Uuid, now: chrono::DateTime<chrono::Utc>) -> Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for i in 0..rows {
        let values = raw_row(i, setup, batch, now);
        let cells: Vec<String> = values
            .iter()
            .map(|v| match v {
                SqlValue::Null => String::new(),
                SqlValue::Int(n) => n.to_string(),
                SqlValue::Float(f) => f.to_string(),
                SqlValue::Text(s) => quoted(s),
                SqlValue::Uuid(u) => u.to_string(),
                SqlValue::Date(d) => d.to_string(),
                SqlValue::Datetime(d) => keel_query::value::format_datetime(d),
                other => format!("{other:?}"),
            })
            .collect();
        writeln!(out, "{}", cells.join(","))?;
    }
    out.flush()?;
    Ok(())
}

fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads the rows, every column resolved, into `table` (PostgreSQL: `COPY … FORMAT csv`;
/// SQLite: a prepared-insert loop) in one transaction; seconds.
async fn load_raw(setup: &Setup, table: &str, rows: u64, dir: &Path, batch: Uuid) -> Result<f64> {
    let now = keel_query::value::truncate_micros(chrono::Utc::now());
    let columns = columns(setup);
    match &setup.db {
        Db::Postgres(_) => {
            let path = dir.join("raw.csv");
            write_raw_csv(&path, setup, rows, batch, now)?;
            let data = std::fs::read(&path)?;
            let statement = format!("COPY {table} ({}) FROM STDIN WITH (FORMAT csv)", column_list(&columns));
            let started = Instant::now();
            let mut tx = setup.db.begin().await?;
            if let keel_store::Tx::Postgres(pg, _) = &mut tx {
                pg.execute_script("SET LOCAL statement_timeout = 0").await?;
                pg.copy_in(&statement, &data).await?;
            }
            tx.commit().await?;
            Ok(started.elapsed().as_secs_f64())
        }
        Db::Sqlite(_) => {
            let started = Instant::now();
            let mut tx = setup.db.begin().await?;
            let mut i = 0;
            while i < rows {
                let chunk: Vec<Vec<SqlValue>> = (i..(i + 10_000).min(rows))
                    .map(|n| raw_row(n, setup, batch, now))
                    .collect();
                let failures = keel_store::bulk::insert_rows_one_by_one(&mut tx, table, &columns, &chunk).await?;
                anyhow::ensure!(
                    failures.is_empty(),
                    "the baseline insert failed: {:?}",
                    failures.first()
                );
                i += 10_000;
            }
            tx.commit().await?;
            Ok(started.elapsed().as_secs_f64())
        }
    }
}

/// The database's own bulk path on a fresh database: seconds for `rows` rows.
async fn baseline(setup: &Setup, rows: u64, dir: &Path) -> Result<f64> {
    load_raw(setup, "tasks", rows, dir, Uuid::now_v7()).await
}

/// The engine's floor on a fresh database: the same rows, already inside the database in a
/// table with no index, moved into `tasks` by one `INSERT … SELECT` in one transaction. No
/// client, protocol or parsing cost is left: this is what the table's indexes, search and
/// foreign keys cost the database itself, which no import can beat (short of running the
/// database on more cores).
async fn engine_floor(setup: &Setup, rows: u64, delete_rows: u64, dir: &Path) -> Result<(f64, f64)> {
    let columns = column_list(&columns(setup));
    let copy = format!("INSERT INTO tasks ({columns}) SELECT {columns} FROM keel_bench_staging");
    let mut tx = setup.db.begin().await?;
    tx.execute_script("CREATE TABLE keel_bench_staging AS SELECT * FROM tasks WHERE 1 = 0")
        .await?;
    tx.commit().await?;
    load_raw(setup, "keel_bench_staging", rows, dir, Uuid::now_v7()).await?;
    let started = Instant::now();
    let mut tx = setup.db.begin().await?;
    no_statement_timeout(&mut tx).await?;
    tx.execute_script(&copy).await?;
    tx.commit().await?;
    let insert_seconds = started.elapsed().as_secs_f64();

    // The delete floor: one `DELETE … WHERE batch = ?` of `delete_rows` more rows, no chunks,
    // no rule, nothing returned.
    let batch = Uuid::now_v7();
    let mut tx = setup.db.begin().await?;
    tx.execute_script("DELETE FROM keel_bench_staging").await?;
    tx.commit().await?;
    load_raw(setup, "keel_bench_staging", delete_rows, dir, batch).await?;
    let mut tx = setup.db.begin().await?;
    no_statement_timeout(&mut tx).await?;
    tx.execute_script(&copy).await?;
    tx.commit().await?;
    let mut delete = keel_query::Sql::new(setup.db.dialect());
    delete
        .push("DELETE FROM tasks WHERE \"batch\" = ")
        .bind(SqlValue::Uuid(batch));
    // The delete starts, as Keel's does, on a database whose WAL is copied in (on SQLite the
    // load's checkpoint would otherwise run beside it).
    setup.db.checkpoint().await?;
    let started = Instant::now();
    let mut tx = setup.db.begin().await?;
    no_statement_timeout(&mut tx).await?;
    let deleted = tx.execute(&delete).await?;
    tx.commit().await?;
    let delete_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        deleted == delete_rows,
        "the floor deleted {deleted} rows, not {delete_rows}"
    );
    Ok((insert_seconds, delete_seconds))
}

async fn no_statement_timeout(tx: &mut keel_store::Tx) -> Result<()> {
    if let keel_store::Tx::Postgres(pg, _) = tx {
        pg.execute_script("SET LOCAL statement_timeout = 0").await?;
    }
    Ok(())
}

/// The process's peak resident set (VmHWM), in MiB.
pub(crate) fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Resets the peak resident set to the current one (Linux `clear_refs`), so the peak after
/// the import is the import's.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn import_file(slug: &str, state: &keel_server::AppState, path: &Path) -> Result<keel_server::import::Report> {
    let params = Params(HashMap::from([("format".to_string(), "csv".to_string())]));
    let options = import::options(&params, &Default::default()).map_err(|e| anyhow::anyhow!(e.message))?;
    let file = std::fs::File::open(path)?;
    let operator = keel_server::records::export::operator();
    let report = import::import_stream(state, &operator, Some(slug), "tasks", options, file, &mut |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("{}: {} {:?}", e.code, e.message, e.details))?;
    anyhow::ensure!(
        report.mode == Mode::Atomic && report.committed && report.counts.rejected == 0,
        "the import failed: {:?}",
        report.errors.first()
    );
    Ok(report)
}

pub async fn run(args: ImportArgs) -> Result<()> {
    let dir: PathBuf = super::harness::tempdir()?;
    let backend = if args.database_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let Setup {
        config,
        schema,
        db,
        slug,
        projects,
        ..
    } = setup(&dir, &args.database_url, "import").await?;
    let csv = dir.join("tasks.csv");
    let bytes = write_csv(&csv, args.rows, 0, &projects)?;
    eprintln!(
        "bench import ({backend}): {} rows, {:.0} MB of CSV",
        args.rows,
        bytes as f64 / 1e6
    );
    let state = keel_server::state(config, schema, db);
    let before = peak_rss_mib();
    reset_peak_rss();
    let sampler = AnonSampler::start();
    let started = Instant::now();
    let report = import_file(&slug, &state, &csv).await?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss_mib();
    let import_anon = sampler.stop();
    eprintln!("  keel import: {seconds:.2} s, peak RSS {peak:.0} MiB");
    // On SQLite the import's pages are copied from the WAL into the database by the
    // checkpoint thread after it answers: measured here, so the figures show all the work.
    let started = Instant::now();
    state.db.checkpoint().await?;
    let checkpoint_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.counts.written == args.rows,
        "wrote {} of {}",
        report.counts.written,
        args.rows
    );

    // Exports of the whole collection: one, then `exports` at once (B5: memory stays flat).
    let mut export_lines = vec![];
    for concurrent in [1, args.exports] {
        reset_peak_rss();
        let sampler = AnonSampler::start();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrent {
            let state = state.clone();
            let slug = slug.clone();
            tasks.spawn(async move {
                keel_server::records::export::export_to(
                    &state,
                    Some(&slug),
                    "tasks",
                    vec![("format".to_string(), "csv".to_string())],
                    tokio::io::sink(),
                )
                .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done?.map_err(|e| anyhow::anyhow!("{}: {} {:?}", e.code, e.message, e.cause))?;
        }
        let export_seconds = started.elapsed().as_secs_f64();
        let anon = sampler.stop();
        export_lines.push(format!(
            "| {concurrent} concurrent export(s) of all {} rows (CSV) | {export_seconds:.2} s | {:.0} rows/s | {anon:.0} MiB | {:.0} MiB |",
            args.rows,
            (concurrent as u64 * args.rows) as f64 / export_seconds,
            peak_rss_mib()
        ));
    }

    let fresh = setup_baseline(&dir, &args.database_url).await?;
    let base_seconds = baseline(&fresh, args.rows, &dir).await.context("the baseline")?;
    eprintln!("  baseline: {base_seconds:.2} s");
    fresh.db.close().await;
    let fresh = setup(&dir, &args.database_url, "floor").await?;
    let (floor_seconds, floor_delete_seconds) = engine_floor(&fresh, args.rows, args.delete_rows, &dir)
        .await
        .context("the engine floor")?;
    eprintln!("  engine floor: insert {floor_seconds:.2} s, delete {floor_delete_seconds:.3} s");
    fresh.db.close().await;

    // A batch of `delete_rows` rows, deleted in one call.
    let small = dir.join("batch.csv");
    write_csv(&small, args.delete_rows, args.rows, &projects)?;
    let batch = import_file(&slug, &state, &small).await?.batch;
    state.db.checkpoint().await?;
    let operator = keel_server::records::export::operator();
    let started = Instant::now();
    let response = keel_server::records::delete_many(&state, &operator, Some(&slug), "tasks", None, Some(batch))
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let delete_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(response.status() == 200, "the batch delete failed");

    let base_name = match backend {
        "PostgreSQL" => "raw COPY (FORMAT csv, ids resolved)",
        _ => "prepared-insert loop, one transaction",
    };
    println!("| {backend} | rows | seconds | rows/s | peak RSS |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| Keel import (CSV, validated, project by name) | {} | {seconds:.2} | {:.0} | {peak:.0} MiB (heap {import_anon:.0} MiB; before: {before:.0} MiB) |",
        args.rows,
        args.rows as f64 / seconds
    );
    if backend == "SQLite" {
        println!(
            "| the import's WAL checkpoint, after it answered (background thread) | | {checkpoint_seconds:.2} | | |"
        );
    }
    println!(
        "| {base_name} | {} | {base_seconds:.2} | {:.0} | |",
        args.rows,
        args.rows as f64 / base_seconds
    );
    println!("| Keel / baseline time | | {:.2}× | | |", seconds / base_seconds);
    println!(
        "| engine floor: INSERT … SELECT from an unindexed table in the same database | {} | {floor_seconds:.2} | {:.0} | |",
        args.rows,
        args.rows as f64 / floor_seconds
    );
    println!("| Keel / engine floor time | | {:.2}× | | |", seconds / floor_seconds);
    println!(
        "| delete one import batch | {} | {delete_seconds:.3} | {:.0} | |",
        args.delete_rows,
        args.delete_rows as f64 / delete_seconds
    );
    println!(
        "| engine floor: one DELETE … WHERE batch = ? | {} | {floor_delete_seconds:.3} | {:.0} | |",
        args.delete_rows,
        args.delete_rows as f64 / floor_delete_seconds
    );
    println!(
        "| Keel / engine floor time (delete) | | {:.2}× | | |",
        delete_seconds / floor_delete_seconds
    );
    println!();
    println!("| exports | time | rows/s | peak heap (RssAnon) | peak RSS (with mapped file pages) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for line in export_lines {
        println!("{line}");
    }
    state.db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn setup_baseline(dir: &Path, database_url: &Option<String>) -> Result<Setup> {
    setup(dir, database_url, "baseline").await
}
