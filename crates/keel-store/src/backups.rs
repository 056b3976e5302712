//! Backups (system version 5): the record of backup runs, the objects whose deletion waits
//! for a running backup, and consistent snapshots of both backends.
//!
//! A backup copies the database as of one instant and then every object its `keel_files`
//! rows name. An object whose row is removed after that instant must still be there when the
//! backup copies it, so while a backup runs, objects are not deleted but deferred
//! (`keel_deferred_deletes`); the cleanup job deletes them once no backup runs. The protocol
//! holds because the backup's `running` row commits before its snapshot starts, and a
//! deleter checks for it only after the transaction that removed the file's row committed:
//! either the deleter sees the row (and defers), or the snapshot started after the removal
//! (and does not name the object).

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use keel_query::{Dialect, SqlValue};

use crate::Db;
use crate::error::StoreError;

pub fn tables(dialect: Dialect) -> Vec<String> {
    let (ts, bigint) = match dialect {
        Dialect::Sqlite => ("TEXT", "INTEGER"),
        Dialect::Postgres => ("timestamptz", "bigint"),
    };
    vec![
        format!(
            "CREATE TABLE keel_backups (id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, trigger TEXT NOT NULL, started_at {ts} NOT NULL, lease_until {ts} NOT NULL, finished_at {ts}, size_bytes {bigint}, files {bigint}, error TEXT)"
        ),
        // At most one backup runs at a time, on any instance.
        "CREATE UNIQUE INDEX keel_backups_running ON keel_backups (state) WHERE state = 'running'".to_string(),
        "CREATE INDEX keel_backups_time ON keel_backups (started_at)".to_string(),
        format!("CREATE TABLE keel_deferred_deletes (key TEXT PRIMARY KEY, deferred_at {ts} NOT NULL)"),
    ]
}

/// One backup run, as recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BackupRun {
    pub id: String,
    pub name: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// `schedule` or `manual`.
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub size_bytes: Option<i64>,
    pub files: Option<i64>,
    pub error: Option<String>,
}

/// Records a new running backup, unless one is running already (then `false`). A running
/// backup whose lease has expired (its process died) is marked failed first.
pub async fn backup_begin(
    db: &Db,
    id: &str,
    name: &str,
    trigger: &str,
    now: DateTime<Utc>,
    lease: chrono::Duration,
) -> Result<bool, StoreError> {
    let abandon = db.portable(
        "UPDATE keel_backups SET state = 'failed', finished_at = $1, error = 'abandoned: its process stopped renewing the lease' \
         WHERE state = 'running' AND lease_until < $1",
        vec![SqlValue::Datetime(now)],
    );
    db.write(&abandon).await?;
    let insert = db.portable(
        "INSERT INTO keel_backups (id, name, state, trigger, started_at, lease_until) VALUES ($1, $2, 'running', $3, $4, $5) \
         ON CONFLICT DO NOTHING RETURNING id",
        vec![
            SqlValue::Text(id.to_string()),
            SqlValue::Text(name.to_string()),
            SqlValue::Text(trigger.to_string()),
            SqlValue::Datetime(now),
            SqlValue::Datetime(now + lease),
        ],
    );
    Ok(!db.write(&insert).await?.is_empty())
}

/// Extends a running backup's lease.
pub async fn backup_heartbeat(db: &Db, id: &str, lease_until: DateTime<Utc>) -> Result<(), StoreError> {
    let sql = db.portable(
        "UPDATE keel_backups SET lease_until = $2 WHERE id = $1 AND state = 'running'",
        vec![SqlValue::Text(id.to_string()), SqlValue::Datetime(lease_until)],
    );
    db.write(&sql).await.map(drop)
}

/// How a backup ended.
pub struct BackupOutcome<'a> {
    pub succeeded: bool,
    pub size_bytes: Option<i64>,
    pub files: Option<i64>,
    pub error: Option<&'a str>,
}

pub async fn backup_finish(
    db: &Db,
    id: &str,
    outcome: BackupOutcome<'_>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    // Two statements, not NULL parameters: a bound NULL is typed text on PostgreSQL, and a
    // prepared statement keeps its first parameter types (an integer sent later to a
    // parameter typed text reads as text with NUL bytes).
    let mut params = vec![SqlValue::Text(id.to_string()), SqlValue::Datetime(now)];
    let text = if outcome.succeeded {
        params.push(SqlValue::Int(outcome.size_bytes.unwrap_or(0)));
        params.push(SqlValue::Int(outcome.files.unwrap_or(0)));
        "UPDATE keel_backups SET state = 'succeeded', finished_at = $2, size_bytes = $3, files = $4, error = NULL WHERE id = $1"
    } else {
        // PostgreSQL text cannot hold NUL (tool output may).
        let error: String = outcome
            .error
            .unwrap_or("failed")
            .chars()
            .take(2000)
            .map(|c| if c == '\0' { '\u{fffd}' } else { c })
            .collect();
        params.push(SqlValue::Text(error));
        "UPDATE keel_backups SET state = 'failed', finished_at = $2, size_bytes = NULL, files = NULL, error = $3 WHERE id = $1"
    };
    db.write(&db.portable(text, params)).await.map(drop)
}

/// Whether a backup is running now (its lease not expired), read on the primary.
pub async fn backup_running(db: &Db, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let sql = db.portable(
        "SELECT 1 FROM keel_backups WHERE state = 'running' AND lease_until >= $1",
        vec![SqlValue::Datetime(now)],
    );
    Ok(!db.query_primary(&sql).await?.is_empty())
}

/// The latest runs, newest first.
pub async fn backup_history(db: &Db, limit: i64) -> Result<Vec<BackupRun>, StoreError> {
    let sql = db.portable(
        &format!("SELECT {RUN_COLUMNS} FROM keel_backups ORDER BY started_at DESC, id DESC LIMIT $1"),
        vec![SqlValue::Int(limit)],
    );
    Ok(db.query_primary(&sql).await?.into_iter().filter_map(run_of).collect())
}

const RUN_COLUMNS: &str = "id, name, state, trigger, started_at, finished_at, size_bytes, files, error";

fn run_of(row: crate::Row) -> Option<BackupRun> {
    let mut cells = row.into_iter();
    Some(BackupRun {
        id: cells.next()?.into_text()?,
        name: cells.next()?.into_text()?,
        state: cells.next()?.into_text()?,
        trigger: cells.next()?.into_text()?,
        started_at: cells.next()?.datetime()?,
        finished_at: cells.next()?.datetime(),
        size_bytes: cells.next()?.int(),
        files: cells.next()?.int(),
        error: cells.next()?.into_text(),
    })
}

/// The latest successful run and the latest finished run (which may be the same).
pub async fn backup_status(db: &Db) -> Result<(Option<BackupRun>, Option<BackupRun>), StoreError> {
    let latest = |state: &str| {
        db.portable(
            &format!(
                "SELECT {RUN_COLUMNS} FROM keel_backups WHERE state {state} ORDER BY started_at DESC, id DESC LIMIT 1"
            ),
            vec![],
        )
    };
    let mut found = vec![];
    for sql in [latest("= 'succeeded'"), latest("<> 'running'")] {
        found.push(db.query_primary(&sql).await?.into_iter().next().and_then(run_of));
    }
    let last = found.pop().flatten();
    Ok((found.pop().flatten(), last))
}

/// Forgets all but the newest `keep` runs.
pub async fn backup_history_prune(db: &Db, keep: i64) -> Result<u64, StoreError> {
    let sql = db.portable(
        "DELETE FROM keel_backups WHERE state <> 'running' AND id NOT IN \
         (SELECT id FROM keel_backups ORDER BY started_at DESC, id DESC LIMIT $1) RETURNING id",
        vec![SqlValue::Int(keep)],
    );
    Ok(db.write(&sql).await?.len() as u64)
}

/// Records objects to delete once no backup runs.
pub async fn defer_deletes(db: &Db, keys: &[String], now: DateTime<Utc>) -> Result<(), StoreError> {
    for chunk in keys.chunks(200) {
        let mut params = vec![SqlValue::Datetime(now)];
        let mut values = vec![];
        for key in chunk {
            params.push(SqlValue::Text(key.clone()));
            values.push(format!("(${}, $1)", params.len()));
        }
        let sql = db.portable(
            &format!(
                "INSERT INTO keel_deferred_deletes (key, deferred_at) VALUES {} ON CONFLICT DO NOTHING",
                values.join(", ")
            ),
            params,
        );
        db.write(&sql).await?;
    }
    Ok(())
}

/// Up to `limit` deferred objects, oldest first.
pub async fn deferred_deletes(db: &Db, limit: i64) -> Result<Vec<String>, StoreError> {
    let sql = db.portable(
        "SELECT key FROM keel_deferred_deletes ORDER BY deferred_at, key LIMIT $1",
        vec![SqlValue::Int(limit)],
    );
    Ok(db
        .query_primary(&sql)
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next()?.into_text())
        .collect())
}

/// Forgets deferred objects once deleted.
pub async fn deferred_forget(db: &Db, keys: &[String]) -> Result<(), StoreError> {
    for chunk in keys.chunks(200) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = db.portable(
            &format!(
                "DELETE FROM keel_deferred_deletes WHERE key IN ({})",
                placeholders.join(", ")
            ),
            chunk.iter().map(|k| SqlValue::Text(k.clone())).collect(),
        );
        db.write(&sql).await?;
    }
    Ok(())
}

/// What a snapshot holds: row counts per table, the stored objects its `keel_files` names,
/// and the versions of the app and of Keel's tables.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Contents {
    pub tables: BTreeMap<String, i64>,
    pub migration_version: i64,
    pub system_version: i64,
    /// The app name recorded by the latest migration.
    pub app: String,
    #[serde(skip)]
    pub files: Vec<FileEntry>,
}

/// An object a snapshot refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEntry {
    pub key: String,
    pub size: i64,
    pub sha256: String,
}

const FILES_SQL: &str = "SELECT object_key, size, sha256 FROM keel_files ORDER BY object_key";
const VERSION_SQL: &str = "SELECT version, app FROM keel_migrations ORDER BY version DESC LIMIT 1";
const SYSTEM_SQL: &str = "SELECT version FROM keel_system WHERE id = 1";

fn app_name(app_json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(app_json)
        .ok()
        .and_then(|app| app.get("name")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Copies a live SQLite database page by page into `dest` (the online backup API, in one
/// step, so the copy is one read transaction: consistent while writers go on, and with the
/// same rowids). Blocking.
pub fn sqlite_copy(source: &Path, dest: &Path) -> Result<(), StoreError> {
    use rusqlite::{Connection, OpenFlags};
    let failed = |e: rusqlite::Error| StoreError::Other(format!("SQLite backup failed: {e}"));
    let from = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(failed)?;
    from.busy_timeout(std::time::Duration::from_secs(30)).map_err(failed)?;
    let mut to = Connection::open(dest).map_err(failed)?;
    {
        use rusqlite::backup::StepResult;
        let backup = rusqlite::backup::Backup::new(&from, &mut to).map_err(failed)?;
        // Every page in one step (-1): one read transaction. Busy or locked only while
        // another connection checkpoints; then wait and try again, for at most 30 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match backup.step(-1).map_err(failed)? {
                StepResult::Done => break,
                StepResult::More => continue,
                _ if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(50)),
                _ => return Err(StoreError::Busy),
            }
        }
    }
    // The copy is a plain file of its own: no WAL beside it.
    to.pragma_update(None, "journal_mode", "DELETE").map_err(failed)?;
    Ok(())
}

/// What a SQLite database file holds. Blocking.
pub fn sqlite_contents(path: &Path) -> Result<Contents, StoreError> {
    use rusqlite::{Connection, OpenFlags};
    let failed = |e: rusqlite::Error| StoreError::Other(format!("reading {}: {e}", path.display()));
    let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(failed)?;
    let mut contents = Contents::default();
    let names: Vec<String> = connection
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND sql NOT LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name",
        )
        .and_then(|mut statement| statement.query_map([], |row| row.get(0))?.collect())
        .map_err(failed)?;
    for name in names {
        let count: i64 = connection
            .query_row(
                &format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\"")),
                [],
                |row| row.get(0),
            )
            .map_err(failed)?;
        contents.tables.insert(name, count);
    }
    if contents.tables.contains_key("keel_migrations") {
        use rusqlite::OptionalExtension as _;
        let latest = connection
            .query_row(VERSION_SQL, [], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
            .optional()
            .map_err(failed)?;
        if let Some((version, app)) = latest {
            contents.migration_version = version;
            contents.app = app_name(&app);
        }
    }
    if contents.tables.contains_key("keel_system") {
        contents.system_version = connection.query_row(SYSTEM_SQL, [], |row| row.get(0)).map_err(failed)?;
    }
    if contents.tables.contains_key("keel_files") {
        contents.files = connection
            .prepare(FILES_SQL)
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| {
                        Ok(FileEntry {
                            key: row.get(0)?,
                            size: row.get(1)?,
                            sha256: row.get(2)?,
                        })
                    })?
                    .collect()
            })
            .map_err(failed)?;
    }
    Ok(contents)
}

/// What the PostgreSQL schema a connection's `search_path` points at holds, read in the
/// connection's current transaction.
pub(crate) async fn pg_contents(connection: &mut sqlx::PgConnection) -> Result<Contents, StoreError> {
    use sqlx::Row as _;
    let mut contents = Contents::default();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1",
    )
    .fetch_all(&mut *connection)
    .await?;
    for name in names {
        let sql = format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\""));
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *connection)
            .await?;
        contents.tables.insert(name, count);
    }
    if contents.tables.contains_key("keel_migrations")
        && let Some(row) = sqlx::query(VERSION_SQL).fetch_optional(&mut *connection).await?
    {
        contents.migration_version = row.try_get(0)?;
        contents.app = app_name(&row.try_get::<String, _>(1)?);
    }
    if contents.tables.contains_key("keel_system") {
        contents.system_version = sqlx::query_scalar::<_, i32>(SYSTEM_SQL)
            .fetch_one(&mut *connection)
            .await? as i64;
    }
    if contents.tables.contains_key("keel_files") {
        contents.files = sqlx::query(FILES_SQL)
            .fetch_all(&mut *connection)
            .await?
            .into_iter()
            .map(|row| {
                Ok(FileEntry {
                    key: row.try_get(0)?,
                    size: row.try_get(1)?,
                    sha256: row.try_get(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
    }
    Ok(contents)
}

/// A PostgreSQL snapshot held open: a repeatable-read transaction whose snapshot is exported,
/// so `pg_dump --snapshot` dumps exactly what `contents` counted.
pub struct PgSnapshot {
    transaction: sqlx::Transaction<'static, sqlx::Postgres>,
    pub id: String,
    pub schema: String,
    pub server_version: String,
}

impl PgSnapshot {
    pub async fn contents(&mut self) -> Result<Contents, StoreError> {
        pg_contents(&mut self.transaction).await
    }

    /// Ends the transaction (after `pg_dump` has taken the snapshot).
    pub async fn end(self) -> Result<(), StoreError> {
        self.transaction.rollback().await.map_err(StoreError::from)
    }
}

impl Db {
    /// Opens a snapshot of the PostgreSQL database (`None` on SQLite, which copies its file).
    pub async fn pg_snapshot(&self) -> Result<Option<PgSnapshot>, StoreError> {
        let Db::Postgres(db) = self else {
            return Ok(None);
        };
        let mut transaction = db
            .pool()
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        sqlx::raw_sql("SET LOCAL statement_timeout = 0")
            .execute(&mut *transaction)
            .await?;
        let (id, schema, server_version): (String, String, String) =
            sqlx::query_as("SELECT pg_export_snapshot(), current_schema()::text, current_setting('server_version')")
                .fetch_one(&mut *transaction)
                .await?;
        Ok(Some(PgSnapshot {
            transaction,
            id,
            schema,
            server_version,
        }))
    }

    /// The SQLite file, when this is SQLite.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Db::Sqlite(db) => Some(db.path()),
            Db::Postgres(_) => None,
        }
    }
}

/// Administrative statements on a PostgreSQL server, outside any pool (create and drop the
/// scratch database of a verification, empty a schema before a restore).
pub async fn pg_execute(url: &str, statements: &[String]) -> Result<(), StoreError> {
    use sqlx::Connection as _;
    let mut connection = sqlx::PgConnection::connect(url).await?;
    for statement in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
            .execute(&mut connection)
            .await?;
    }
    connection.close().await.map_err(StoreError::from)
}

/// What a PostgreSQL schema holds (for checking a restore), on a connection of its own.
pub async fn pg_contents_at(url: &str, schema: &str) -> Result<Contents, StoreError> {
    use sqlx::Connection as _;
    let mut connection = sqlx::PgConnection::connect(url).await?;
    let set = format!("SET search_path TO \"{}\"", schema.replace('"', "\"\""));
    sqlx::raw_sql(sqlx::AssertSqlSafe(set)).execute(&mut connection).await?;
    let contents = pg_contents(&mut connection).await;
    let _ = connection.close().await;
    contents
}
