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

pub mod retention;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use keel_store::Db;
use keel_store::StoreError;
use keel_store::backups::{self, Contents, FileEntry};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::hex;
use crate::storage::Storage;

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
                crate::storage::s3_store(&config.files, section.s3_bucket.as_deref().unwrap_or_default())?,
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

    /// Restores a backup into `target` (which must hold no tables unless `force`), its files
    /// into `storage`, and checks the restored row counts against the manifest.
    pub async fn restore(
        &self,
        name: &str,
        target: &RestoreTarget,
        storage: Arc<Storage>,
        force: bool,
        progress: Progress,
    ) -> Result<RestoreReport, BackupError> {
        let started = std::time::Instant::now();
        let identity = self.identity()?.clone();
        if let Some(contents) = target.contents().await? {
            let rows: i64 = contents.tables.values().sum();
            let holds = format!("{} tables, {rows} rows", contents.tables.len());
            if !force {
                return Err(BackupError::NotEmpty(holds));
            }
            tracing::warn!(target = %holds, "replacing a non-empty restore target (--force)");
        }
        let (size, stream) = match self.store.get(&self.path(name)).await {
            Ok(result) => (result.meta.size, result.into_stream()),
            Err(object_store::Error::NotFound { .. }) => return Err(BackupError::NotFound(name.to_string())),
            Err(error) => return Err(error.into()),
        };
        let scratch_dir = scratch_beside(target);
        std::fs::create_dir_all(&scratch_dir)?;
        let scratch = tempfile::Builder::new()
            .prefix(".keel-restore-")
            .tempdir_in(&scratch_dir)?;
        let reader = BlockingRead::new(stream, tokio::runtime::Handle::current(), Some((progress, size)));
        let scratch_path = scratch.path().to_path_buf();
        let backend = target.backend();
        let unpacked =
            tokio::task::spawn_blocking(move || read_archive(reader, &identity, &scratch_path, &storage, backend))
                .await
                .map_err(|e| BackupError::Failed(e.to_string()))??;
        let manifest = unpacked.manifest;
        match target {
            RestoreTarget::Sqlite(path) => {
                for suffix in ["-wal", "-shm"] {
                    let side = PathBuf::from(format!("{}{suffix}", path.display()));
                    if side.exists() {
                        std::fs::remove_file(&side)?;
                    }
                }
                std::fs::rename(&unpacked.database, path)?;
            }
            RestoreTarget::Postgres { url, schema } => {
                let dumped = manifest.database.schema.clone().unwrap_or_else(|| "public".into());
                if &dumped != schema {
                    return Err(BackupError::Incompatible(format!(
                        "the backup holds schema {dumped}; the target is schema {schema} (set database.schema = \"{dumped}\")"
                    )));
                }
                let quoted = format!("\"{}\"", schema.replace('"', "\"\""));
                backups::pg_execute(url, &[format!("DROP SCHEMA IF EXISTS {quoted} CASCADE")]).await?;
                let output = self
                    .pg_tool("pg_restore")
                    .args([
                        "--no-owner",
                        "--no-privileges",
                        "--exit-on-error",
                        "--single-transaction",
                    ])
                    .arg(format!("--dbname={url}"))
                    .arg(&unpacked.database)
                    .output()
                    .await
                    .map_err(|e| BackupError::Failed(format!("cannot run pg_restore: {e} (set backup.pg_bin_dir)")))?;
                if !output.status.success() {
                    return Err(BackupError::Failed(format!(
                        "pg_restore failed: {}",
                        String::from_utf8_lossy(&output.stderr).trim()
                    )));
                }
            }
        }
        drop(scratch);
        let restored = target.contents().await?.unwrap_or_default();
        if restored.tables != manifest.contents.tables {
            let differences: Vec<String> = manifest
                .contents
                .tables
                .iter()
                .filter(|(table, rows)| restored.tables.get(*table) != Some(rows))
                .map(|(table, rows)| {
                    format!(
                        "{table}: {rows} in the backup, {:?} restored",
                        restored.tables.get(table)
                    )
                })
                .collect();
            return Err(BackupError::Corrupt(format!(
                "the restored tables differ from the manifest: {}",
                differences.join("; ")
            )));
        }
        Ok(RestoreReport {
            manifest,
            files: unpacked.files,
            missing_files: unpacked.missing,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Restores a backup into a scratch database and scratch file storage, compares it with
    /// its manifest and every file with its SHA-256, and drops the scratch copies.
    pub async fn verify(&self, name: &str, progress: Progress) -> Result<RestoreReport, BackupError> {
        let scratch = tempfile::Builder::new()
            .prefix(".keel-verify-")
            .tempdir_in(&self.scratch)?;
        let storage = Arc::new(Storage::local(&scratch.path().join("files")));
        match &self.database_url {
            Some(url) if url.starts_with("postgres") => {
                let database = format!("keel_verify_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
                let scratch_url = with_database(url, &database)?;
                backups::pg_execute(url, &[format!("CREATE DATABASE {database}")]).await?;
                // The schema the backup holds: read from its manifest by the restore itself.
                let schema = self.manifest_schema(name).await?;
                let target = RestoreTarget::Postgres {
                    url: scratch_url,
                    schema,
                };
                let outcome = self.restore(name, &target, storage, false, progress).await;
                let dropped =
                    backups::pg_execute(url, &[format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")]).await;
                if let Err(error) = dropped {
                    tracing::warn!(%error, database, "could not drop the verification database");
                }
                outcome
            }
            _ => {
                let target = RestoreTarget::Sqlite(scratch.path().join("keel.db"));
                self.restore(name, &target, storage, false, progress).await
            }
        }
    }

    /// Reads only the manifest of a backup (the first entry of its archive).
    pub async fn manifest(&self, name: &str) -> Result<Manifest, BackupError> {
        let identity = self.identity()?.clone();
        let stream = match self.store.get(&self.path(name)).await {
            Ok(result) => result.into_stream(),
            Err(object_store::Error::NotFound { .. }) => return Err(BackupError::NotFound(name.to_string())),
            Err(error) => return Err(error.into()),
        };
        let reader = BlockingRead::new(stream, tokio::runtime::Handle::current(), None);
        tokio::task::spawn_blocking(move || {
            let mut archive = open_archive(reader, &identity)?;
            let mut entries = archive.entries()?;
            match entries.next() {
                Some(entry) => read_manifest(entry?),
                None => Err(BackupError::Corrupt("the archive is empty".into())),
            }
        })
        .await
        .map_err(|e| BackupError::Failed(e.to_string()))?
    }

    async fn manifest_schema(&self, name: &str) -> Result<String, BackupError> {
        let manifest = self.manifest(name).await?;
        if manifest.backend != "postgres" {
            return Err(BackupError::Incompatible(format!(
                "this is a {} backup; verify it with a {} configuration",
                manifest.backend, manifest.backend
            )));
        }
        Ok(manifest.database.schema.unwrap_or_else(|| "public".into()))
    }
}

/// The scheduled `keel_backup` job: a backup, then retention. A run that finds another
/// backup running retries later; a missing key fails at once (and the backup alert fires).
pub fn job_handler(
    config: Config,
    app: keel_spec::App,
    storage: Arc<Storage>,
    metrics: Arc<crate::state::Metrics>,
) -> keel_jobs::HandlerFn {
    let config = Arc::new(config);
    let app = Arc::new(app);
    Arc::new(move |context: keel_jobs::JobContext| {
        let (config, app, storage, metrics) = (config.clone(), app.clone(), storage.clone(), metrics.clone());
        Box::pin(async move {
            let backups = Backups::new(&config, &app.backup, &app.name)
                .map_err(|e| keel_jobs::JobFailure::permanent(e.to_string()))?;
            let outcome = backups.run(&context.db, storage, "schedule").await;
            let result = if outcome.is_ok() { "succeeded" } else { "failed" };
            metrics.counter("keel_backup_runs_total", &[("result", result.to_string())], 1);
            match outcome {
                Ok(report) => {
                    tracing::info!(name = %report.name, bytes = report.bytes, seconds = report.seconds, pruned = report.pruned.len(), "backup taken");
                    Ok(Some(serde_json::to_value(&report).expect("a report serialises")))
                }
                Err(error @ (BackupError::NoKey | BackupError::Incompatible(_))) => {
                    tracing::error!(%error, "backup failed");
                    Err(keel_jobs::JobFailure::permanent(error.to_string()))
                }
                Err(error) => {
                    tracing::error!(%error, "backup failed");
                    Err(keel_jobs::JobFailure::retry(error.to_string()))
                }
            }
        })
    })
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

async fn hash_file(path: &Path) -> Result<(u64, String), BackupError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let bytes = std::io::copy(&mut file, &mut hasher)?;
        Ok((bytes, hex(&hasher.finalize())))
    })
    .await
    .map_err(|e| BackupError::Failed(e.to_string()))?
}

/// Writes into an object-store upload from a blocking thread.
struct BlockingWrite {
    upload: Arc<Mutex<Option<WriteMultipart>>>,
    handle: tokio::runtime::Handle,
    written: u64,
}

impl Write for BlockingWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut guard = self.upload.lock().expect("upload lock");
        let upload = guard
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the upload has ended"))?;
        self.handle
            .block_on(upload.wait_for_capacity(4))
            .map_err(std::io::Error::other)?;
        upload.write(buf);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads an object's byte stream from a blocking thread.
struct BlockingRead {
    stream: BoxStream<'static, Result<Bytes, object_store::Error>>,
    chunk: Bytes,
    handle: tokio::runtime::Handle,
    progress: Option<(Progress, u64)>,
    read: u64,
}

impl BlockingRead {
    fn new(
        stream: BoxStream<'static, Result<Bytes, object_store::Error>>,
        handle: tokio::runtime::Handle,
        progress: Option<(Progress, u64)>,
    ) -> BlockingRead {
        BlockingRead {
            stream,
            chunk: Bytes::new(),
            handle,
            progress,
            read: 0,
        }
    }
}

impl Read for BlockingRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                Some(Ok(chunk)) => {
                    self.read += chunk.len() as u64;
                    if let Some((progress, total)) = &self.progress {
                        progress(self.read, *total);
                    }
                    self.chunk = chunk;
                }
                Some(Err(error)) => return Err(std::io::Error::other(error)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

fn header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(Utc::now().timestamp().max(0) as u64);
    header
}

/// Writes the archive (blocking): returns its size and the files storage did not have.
fn write_archive(
    output: BlockingWrite,
    recipient: &age::x25519::Recipient,
    level: i32,
    manifest: &Manifest,
    database: &Path,
    files: &[FileEntry],
    storage: &Storage,
) -> Result<(u64, Vec<String>), BackupError> {
    let handle = output.handle.clone();
    let encryptor = age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
        .map_err(|e| BackupError::Failed(format!("cannot encrypt: {e}")))?;
    let encrypted = encryptor.wrap_output(output)?;
    let compressed = zstd::stream::write::Encoder::new(encrypted, level)?;
    let mut tar = tar::Builder::new(compressed);
    let manifest_json = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
    tar.append_data(
        &mut header(manifest_json.len() as u64),
        "manifest.json",
        manifest_json.as_slice(),
    )?;
    let mut list = Vec::with_capacity(files.len() * 128);
    for file in files {
        serde_json::to_writer(
            &mut list,
            &serde_json::json!({"key": file.key, "size": file.size, "sha256": file.sha256}),
        )
        .expect("a file entry serialises");
        list.push(b'\n');
    }
    tar.append_data(&mut header(list.len() as u64), "files.ndjson", list.as_slice())?;
    drop(list);
    let mut database_file = std::fs::File::open(database)?;
    let size = database_file.metadata()?.len();
    tar.append_data(&mut header(size), &manifest.database.entry, &mut database_file)?;
    let mut missing = vec![];
    for file in files {
        match handle.block_on(storage.get(&file.key)) {
            Ok((size, stream)) => {
                let reader = BlockingRead::new(stream, handle.clone(), None);
                tar.append_data(&mut header(size), format!("files/{}", file.key), reader)?;
            }
            Err(object_store::Error::NotFound { .. }) => missing.push(file.key.clone()),
            Err(error) => return Err(error.into()),
        }
    }
    let missing_json = serde_json::to_vec(&missing).expect("keys serialise");
    tar.append_data(
        &mut header(missing_json.len() as u64),
        "missing.json",
        missing_json.as_slice(),
    )?;
    let compressed = tar.into_inner()?;
    let encrypted = compressed.finish()?;
    let output = encrypted.finish()?;
    Ok((output.written, missing))
}

type ArchiveReader = tar::Archive<
    zstd::stream::read::Decoder<
        'static,
        std::io::BufReader<age::stream::StreamReader<std::io::BufReader<BlockingRead>>>,
    >,
>;

fn open_archive(reader: BlockingRead, identity: &age::x25519::Identity) -> Result<ArchiveReader, BackupError> {
    let decryptor = age::Decryptor::new_buffered(std::io::BufReader::with_capacity(1 << 16, reader))
        .map_err(|e| BackupError::Corrupt(format!("not an age file: {e}")))?;
    let decrypted = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|error| match error {
            age::DecryptError::NoMatchingKeys => BackupError::WrongKey,
            other => BackupError::Corrupt(other.to_string()),
        })?;
    Ok(tar::Archive::new(zstd::stream::read::Decoder::new(decrypted)?))
}

fn read_manifest(entry: tar::Entry<'_, impl Read>) -> Result<Manifest, BackupError> {
    if entry.path()?.to_str() != Some("manifest.json") {
        return Err(BackupError::Corrupt(
            "the archive does not start with manifest.json".into(),
        ));
    }
    let mut text = Vec::new();
    entry.take(MANIFEST_MAX_BYTES).read_to_end(&mut text)?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| BackupError::Corrupt(format!("manifest.json: {e}")))?;
    if manifest.format > FORMAT {
        return Err(BackupError::Incompatible(format!(
            "the backup has format {} from Keel {}; this Keel reads format {FORMAT} and older",
            manifest.format, manifest.keel_version
        )));
    }
    Ok(manifest)
}

struct Unpacked {
    manifest: Manifest,
    database: PathBuf,
    files: u64,
    missing: Vec<String>,
}

/// Reads an archive (blocking): the database into `scratch`, the files into `storage`, each
/// checked against its SHA-256.
fn read_archive(
    reader: BlockingRead,
    identity: &age::x25519::Identity,
    scratch: &Path,
    storage: &Storage,
    backend: &str,
) -> Result<Unpacked, BackupError> {
    let handle = reader.handle.clone();
    let mut archive = open_archive(reader, identity)?;
    let mut entries = archive.entries()?;
    let manifest = match entries.next() {
        Some(entry) => read_manifest(entry?)?,
        None => return Err(BackupError::Corrupt("the archive is empty".into())),
    };
    if manifest.backend != backend {
        return Err(BackupError::Incompatible(format!(
            "this is a {} backup; the target database is {backend}",
            manifest.backend
        )));
    }
    let mut expected: HashMap<String, (i64, String)> = HashMap::new();
    let mut database = None;
    let mut files = 0u64;
    let mut missing = None;
    for entry in entries {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path == "files.ndjson" {
            for line in std::io::BufRead::lines(std::io::BufReader::new(&mut entry)) {
                let line = line?;
                let file: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| BackupError::Corrupt(format!("files.ndjson: {e}")))?;
                let key = file["key"].as_str().unwrap_or_default().to_string();
                let size = file["size"].as_i64().unwrap_or(-1);
                let sha256 = file["sha256"].as_str().unwrap_or_default().to_string();
                expected.insert(key, (size, sha256));
            }
        } else if path == manifest.database.entry {
            let target = scratch.join(&manifest.database.entry);
            let mut file = std::fs::File::create(&target)?;
            let mut hashing = HashingWriter::new(&mut file);
            std::io::copy(&mut entry, &mut hashing)?;
            let (bytes, sha256) = hashing.finish();
            file.sync_all()?;
            if bytes != manifest.database.bytes || sha256 != manifest.database.sha256 {
                return Err(BackupError::Corrupt(format!(
                    "{} does not match its checksum",
                    manifest.database.entry
                )));
            }
            database = Some(target);
        } else if let Some(key) = path.strip_prefix("files/") {
            let Some((size, sha256)) = expected.get(key) else {
                return Err(BackupError::Corrupt(format!("{path} is not in files.ndjson")));
            };
            let mut writer = handle.block_on(storage.writer(key))?;
            let mut hasher = Sha256::new();
            let mut bytes = 0u64;
            let mut buffer = vec![0u8; 256 << 10];
            loop {
                let n = entry.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buffer[..n]);
                bytes += n as u64;
                handle.block_on(writer.wait_for_capacity(4))?;
                writer.write(&buffer[..n]);
            }
            if hex(&hasher.finalize()) != *sha256 || bytes as i64 != *size {
                handle.block_on(writer.abort())?;
                return Err(BackupError::Corrupt(format!("{path} does not match its checksum")));
            }
            handle.block_on(writer.finish())?;
            files += 1;
        } else if path == "missing.json" {
            let mut text = Vec::new();
            (&mut entry).take(MANIFEST_MAX_BYTES).read_to_end(&mut text)?;
            missing = Some(
                serde_json::from_slice::<Vec<String>>(&text)
                    .map_err(|e| BackupError::Corrupt(format!("missing.json: {e}")))?,
            );
        } else {
            return Err(BackupError::Corrupt(format!("unexpected entry {path}")));
        }
    }
    let database = database.ok_or_else(|| BackupError::Corrupt(format!("{} is missing", manifest.database.entry)))?;
    // The end marker is written last: without it the archive was cut short.
    let missing = missing.ok_or_else(|| BackupError::Corrupt("the archive is incomplete (no missing.json)".into()))?;
    if files + missing.len() as u64 != manifest.files.count {
        return Err(BackupError::Corrupt(format!(
            "{files} files restored and {} missing, of {} in the manifest",
            missing.len(),
            manifest.files.count
        )));
    }
    Ok(Unpacked {
        manifest,
        database,
        files,
        missing,
    })
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    fn finish(self) -> (u64, String) {
        (self.bytes, hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
