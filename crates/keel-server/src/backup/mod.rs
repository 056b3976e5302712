//! Backups (O5, S13): one archive per backup holding a consistent snapshot of the database,
//! every stored file its `keel_files` rows name, and a manifest; compressed with zstd and
//! encrypted with age; kept in a local folder or an S3-compatible bucket, pruned
//! grandfather-father-son, restored and verified.
//!
//! An archive is `<app>-<YYYYMMDDTHHMMSSZ>-<id>.tar.zst.age`: an age file (X25519, to the
//! configured identity) of a zstd stream of a tar with, in order,
//! - `manifest.json` ([`Manifest`]: versions, row counts per table, the database entry's
//!   size and SHA-256, the files' count and bytes),
//! - `files.ndjson` (one `{"key", "size", "sha256"}` per file),
//! - `database.sqlite` (a page copy by SQLite's online backup API) or `database.pgdump`
//!   (`pg_dump --format=custom` of the app's schema, from an exported snapshot whose row
//!   counts are the manifest's),
//! - `files/<key>` for every file,
//! - `missing.json` (files the snapshot named but storage did not have; normally `[]`).
//!
//! So an operator without Keel can still read one: `age -d -i key.txt F | zstd -d | tar x`.
//! Everything streams: memory stays flat in the size of the database and the files.

pub mod admin;
mod archive;
mod job;
mod restore;
pub mod retention;
pub mod settings;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use keel_store::Db;
use keel_store::StoreError;
use keel_store::backups::{self, Contents};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::files::storage::Storage;

use archive::{BlockingWrite, hash_file, write_archive};
pub use job::job_handler;
pub use retention::Retention;

pub const EXTENSION: &str = ".tar.zst.age";
/// The archive layout's version; a restore refuses a newer one.
pub const FORMAT: u32 = 1;
const MANIFEST_MAX_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no backup key: set backup.key or backup.key_file to an age identity (`keel backup keygen` makes one)")]
    NoKey,
    #[error("the backup key cannot decrypt this backup: it was encrypted to another key")]
    WrongKey,
    #[error("another backup is running")]
    Busy,
    #[error("no backup named {0}")]
    NotFound(String),
    #[error("the restore target is not empty ({0}); pass --force to replace it")]
    NotEmpty(String),
    #[error("the backup is damaged: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Incompatible(String),
    #[error("backup storage: {0}")]
    Storage(#[from] object_store::Error),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Failed(String),
}

impl From<std::io::Error> for BackupError {
    fn from(error: std::io::Error) -> BackupError {
        BackupError::Failed(error.to_string())
    }
}

/// Reads an age X25519 identity, from a key file's text or the bare key (comment lines and
/// blank lines are skipped).
pub fn parse_identity(text: &str) -> Result<age::x25519::Identity, String> {
    let key = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .ok_or("is empty")?;
    key.parse::<age::x25519::Identity>()
        .map_err(|_| "is not an age identity (AGE-SECRET-KEY-1…)".to_string())
}

/// A new identity: its secret and its public recipient.
pub fn generate_identity() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    (
        identity.to_string().expose_secret().to_string(),
        identity.to_public().to_string(),
    )
}

/// What a backup holds, written first into its archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub keel_version: String,
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// `sqlite` or `postgres`.
    pub backend: String,
    pub database: DatabaseEntry,
    pub contents: Contents,
    pub files: FilesSummary,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabaseEntry {
    pub entry: String,
    pub bytes: u64,
    pub sha256: String,
    /// PostgreSQL: the schema dumped, and the server's version.
    pub schema: Option<String>,
    pub server_version: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FilesSummary {
    pub count: u64,
    pub bytes: u64,
}

/// A backup in the target.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Listed {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub name: String,
    pub bytes: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub missing_files: Vec<String>,
    pub tables: usize,
    pub rows: i64,
    pub seconds: f64,
    pub pruned: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub manifest: Manifest,
    pub files: u64,
    pub missing_files: Vec<String>,
    pub seconds: f64,
}

/// Where a restore goes: a database and the file storage beside it.
pub enum RestoreTarget {
    Sqlite(PathBuf),
    Postgres { url: String, schema: String },
}

impl RestoreTarget {
    pub fn of(config: &Config) -> RestoreTarget {
        match config.location() {
            keel_store::Location::Sqlite(path) => RestoreTarget::Sqlite(path),
            keel_store::Location::Postgres { url, schema, .. } => RestoreTarget::Postgres {
                url,
                schema: schema.unwrap_or_else(|| "public".into()),
            },
        }
    }

    fn backend(&self) -> &'static str {
        match self {
            RestoreTarget::Sqlite(_) => "sqlite",
            RestoreTarget::Postgres { .. } => "postgres",
        }
    }

    /// What the target holds now (`None` when it holds no tables).
    async fn contents(&self) -> Result<Option<Contents>, BackupError> {
        let contents = match self {
            RestoreTarget::Sqlite(path) => {
                if !path.exists() {
                    return Ok(None);
                }
                let path = path.clone();
                tokio::task::spawn_blocking(move || backups::sqlite_contents(&path))
                    .await
                    .map_err(|e| BackupError::Failed(e.to_string()))??
            }
            RestoreTarget::Postgres { url, schema } => backups::pg_contents_at(url, schema).await?,
        };
        Ok((!contents.tables.is_empty()).then_some(contents))
    }
}

/// Progress of a restore: archive bytes read, of the total.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// The backup target, the key, and the settings a run needs.
pub struct Backups {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    identity: Option<age::x25519::Identity>,
    level: i32,
    pg_bin_dir: Option<PathBuf>,
    database_url: Option<String>,
    /// Where the database copy waits before it goes into the archive.
    scratch: PathBuf,
    pub retention: Retention,
    app: String,
}

impl Backups {
    pub fn new(config: &Config, spec: &keel_spec::BackupSpec, app: &str) -> Result<Backups, BackupError> {
        let section = &config.backup;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match section.backend.as_str() {
            "s3" => (
                config
                    .files
                    .s3_store(section.s3_bucket.as_deref().unwrap_or_default())?,
                section.s3_prefix.trim_matches('/').to_string(),
            ),
            _ => {
                let dir = if section.dir.is_absolute() {
                    section.dir.clone()
                } else {
                    config.app.data_dir.join(&section.dir)
                };
                std::fs::create_dir_all(&dir)
                    .map_err(|e| BackupError::Failed(format!("cannot create {}: {e}", dir.display())))?;
                (
                    Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dir)?),
                    String::new(),
                )
            }
        };
        let identity = match (&section.key, &section.key_file) {
            (Some(key), _) => Some(parse_identity(&key.0).map_err(|e| BackupError::Failed(format!("backup.key {e}")))?),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| BackupError::Failed(format!("backup.key_file {}: {e}", file.display())))?;
                Some(parse_identity(&text).map_err(|e| BackupError::Failed(format!("backup.key_file {e}")))?)
            }
            (None, None) => None,
        };
        let scratch = scratch_beside(&RestoreTarget::of(config));
        Ok(Backups {
            store,
            prefix,
            identity,
            level: section.zstd_level,
            pg_bin_dir: section.pg_bin_dir.clone(),
            database_url: config.database.url.as_ref().map(|u| u.0.clone()),
            scratch,
            retention: Retention {
                daily: spec.keep_daily,
                weekly: spec.keep_weekly,
                monthly: spec.keep_monthly,
            },
            app: app.to_string(),
        })
    }

    fn path(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    fn identity(&self) -> Result<&age::x25519::Identity, BackupError> {
        self.identity.as_ref().ok_or(BackupError::NoKey)
    }

    /// The app's backups in the target, newest first.
    pub async fn list(&self) -> Result<Vec<Listed>, BackupError> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let mut listing = self.store.list(prefix.as_ref());
        let mut found = vec![];
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            let Some(name) = meta.location.filename() else {
                continue;
            };
            if let Some(created_at) = parse_name(name, &self.app) {
                found.push(Listed {
                    name: name.to_string(),
                    created_at,
                    size: meta.size,
                });
            }
        }
        found.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.name.cmp(&a.name)));
        Ok(found)
    }

    /// Deletes the backups retention does not keep; returns their names.
    pub async fn prune(&self) -> Result<Vec<String>, BackupError> {
        let listed = self.list().await?;
        let times: Vec<DateTime<Utc>> = listed.iter().map(|l| l.created_at).collect();
        let keep = self.retention.keep(&times);
        let mut deleted = vec![];
        for (index, backup) in listed.iter().enumerate() {
            if !keep.contains(&index) {
                self.store.delete(&self.path(&backup.name)).await?;
                deleted.push(backup.name.clone());
            }
        }
        Ok(deleted)
    }

    /// Takes a backup of `db` and the files in `storage` while they serve, then prunes.
    /// At most one backup runs at a time (`BackupError::Busy`), recorded in `keel_backups`.
    pub async fn run(&self, db: &Db, storage: Arc<Storage>, trigger: &str) -> Result<BackupReport, BackupError> {
        let recipient = self.identity()?.to_public();
        let started = std::time::Instant::now();
        let now = Utc::now();
        let id = uuid::Uuid::now_v7().simple().to_string();
        // The random tail of the v7 id: names of backups taken in one second still differ.
        let name = format!("{}-{}-{}{EXTENSION}", self.app, now.format("%Y%m%dT%H%M%SZ"), &id[20..]);
        let lease = chrono::Duration::seconds(120);
        let step = |what: &'static str| move |e: StoreError| BackupError::Failed(format!("{what}: {e}"));
        if !backups::backup_begin(db, &id, &name, trigger, now, lease)
            .await
            .map_err(step("recording the backup's start"))?
        {
            return Err(BackupError::Busy);
        }
        // The lease is renewed while the backup runs, so file deletes stay deferred until it
        // ends (or until its process dies and the lease runs out).
        let take = self.take(db, storage, recipient, &id, &name, now);
        tokio::pin!(take);
        let outcome = loop {
            tokio::select! {
                outcome = &mut take => break outcome,
                _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {
                    if let Err(error) = backups::backup_heartbeat(db, &id, Utc::now() + lease).await {
                        tracing::warn!(%error, "could not renew the backup's lease");
                    }
                }
            }
        };
        let error_text = outcome.as_ref().err().map(ToString::to_string);
        let record = backups::BackupOutcome {
            succeeded: outcome.is_ok(),
            size_bytes: outcome.as_ref().ok().map(|r| r.bytes as i64),
            files: outcome.as_ref().ok().map(|r| r.files as i64),
            error: error_text.as_deref(),
        };
        backups::backup_finish(db, &id, record, Utc::now())
            .await
            .map_err(step("recording the backup's end"))?;
        let mut report = outcome?;
        report.pruned = self.prune().await?;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    async fn take(
        &self,
        db: &Db,
        storage: Arc<Storage>,
        recipient: age::x25519::Recipient,
        id: &str,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<BackupReport, BackupError> {
        let scratch = tempfile::Builder::new()
            .prefix(".keel-backup-")
            .tempdir_in(&self.scratch)
            .map_err(|e| {
                BackupError::Failed(format!(
                    "cannot make a scratch folder in {}: {e}",
                    self.scratch.display()
                ))
            })?;
        let (entry, database_file, mut contents, schema, server_version) = match db.sqlite_path() {
            Some(source) => {
                let source = source.to_path_buf();
                let copy = scratch.path().join("database.sqlite");
                let target = copy.clone();
                let contents = tokio::task::spawn_blocking(move || {
                    backups::sqlite_copy(&source, &target)?;
                    backups::sqlite_contents(&target)
                })
                .await
                .map_err(|e| BackupError::Failed(e.to_string()))??;
                ("database.sqlite", copy, contents, None, None)
            }
            None => {
                let failed = |what: &'static str| move |e: StoreError| BackupError::Failed(format!("{what}: {e}"));
                let mut snapshot = db
                    .pg_snapshot()
                    .await
                    .map_err(failed("opening the snapshot"))?
                    .expect("not SQLite, so PostgreSQL");
                let contents = snapshot
                    .contents()
                    .await
                    .map_err(failed("counting the snapshot's rows"))?;
                let dump = scratch.path().join("database.pgdump");
                let url = self.database_url.clone().unwrap_or_default();
                let status = self
                    .pg_tool("pg_dump")
                    .arg(format!("--snapshot={}", snapshot.id))
                    .args(["--format=custom", "--compress=0", "--no-owner", "--no-privileges"])
                    .arg(format!("--schema={}", snapshot.schema))
                    .arg(format!("--file={}", dump.display()))
                    .arg(format!("--dbname={url}"))
                    .output()
                    .await
                    .map_err(|e| BackupError::Failed(format!("cannot run pg_dump: {e} (set backup.pg_bin_dir)")))?;
                let schema = snapshot.schema.clone();
                let server_version = snapshot.server_version.clone();
                snapshot.end().await.map_err(failed("closing the snapshot"))?;
                if !status.status.success() {
                    return Err(BackupError::Failed(format!(
                        "pg_dump failed: {}",
                        String::from_utf8_lossy(&status.stderr).trim()
                    )));
                }
                ("database.pgdump", dump, contents, Some(schema), Some(server_version))
            }
        };
        let (bytes, sha256) = hash_file(&database_file).await?;
        let files = std::mem::take(&mut contents.files);
        let manifest = Manifest {
            format: FORMAT,
            keel_version: env!("CARGO_PKG_VERSION").to_string(),
            id: id.to_string(),
            name: name.to_string(),
            created_at: now,
            backend: match db.dialect() {
                keel_query::Dialect::Sqlite => "sqlite",
                keel_query::Dialect::Postgres => "postgres",
            }
            .to_string(),
            database: DatabaseEntry {
                entry: entry.to_string(),
                bytes,
                sha256,
                schema,
                server_version,
            },
            files: FilesSummary {
                count: files.len() as u64,
                bytes: files.iter().map(|f| f.size.max(0) as u64).sum(),
            },
            contents,
        };
        let upload = self.store.put_multipart(&self.path(name)).await?;
        let output = Arc::new(Mutex::new(Some(WriteMultipart::new_with_chunk_size(upload, 8 << 20))));
        let writer = BlockingWrite {
            upload: output.clone(),
            handle: tokio::runtime::Handle::current(),
            written: 0,
        };
        let level = self.level;
        let archive_manifest = manifest.clone();
        let written = tokio::task::spawn_blocking(move || {
            write_archive(
                writer,
                &recipient,
                level,
                &archive_manifest,
                &database_file,
                &files,
                &storage,
            )
        })
        .await
        .map_err(|e| BackupError::Failed(e.to_string()))?;
        let upload = output.lock().expect("upload lock").take();
        let (bytes, missing) = match written {
            Ok(written) => written,
            Err(error) => {
                if let Some(upload) = upload {
                    let _ = upload.abort().await;
                }
                return Err(error);
            }
        };
        upload.expect("the archive's upload is finished here").finish().await?;
        drop(scratch);
        let rows = manifest.contents.tables.values().sum();
        if !missing.is_empty() {
            tracing::warn!(missing = missing.len(), backup = %name, "files named by the database were missing from storage");
        }
        Ok(BackupReport {
            name: name.to_string(),
            bytes,
            files: manifest.files.count - missing.len() as u64,
            file_bytes: manifest.files.bytes,
            missing_files: missing,
            tables: manifest.contents.tables.len(),
            rows,
            seconds: 0.0,
            pruned: vec![],
        })
    }

    fn pg_tool(&self, program: &str) -> tokio::process::Command {
        let path = match &self.pg_bin_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        let mut command = tokio::process::Command::new(path);
        command.kill_on_drop(true).stdin(std::process::Stdio::null());
        command
    }
}

/// Where a database copy waits: beside the SQLite file (same filesystem, so the restore
/// can rename it into place), or the temporary directory for PostgreSQL.
fn scratch_beside(target: &RestoreTarget) -> PathBuf {
    match target {
        RestoreTarget::Sqlite(path) => path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        RestoreTarget::Postgres { .. } => std::env::temp_dir(),
    }
}

/// The time a backup's name records, if it is one of `app`'s.
pub fn parse_name(name: &str, app: &str) -> Option<DateTime<Utc>> {
    let stem = name.strip_suffix(EXTENSION)?.strip_prefix(app)?.strip_prefix('-')?;
    let (time, id) = stem.split_once('-')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// The same server URL with another database.
pub fn with_database(url: &str, database: &str) -> Result<String, BackupError> {
    let mut parsed = url::Url::parse(url).map_err(|e| BackupError::Failed(format!("database.url: {e}")))?;
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.to_string())
}
