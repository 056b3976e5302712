//! Restoring a backup (into an empty database, or over one with `force`) and verifying one
//! without restoring it.

use std::path::PathBuf;
use std::sync::Arc;

use keel_store::backups::{self};
use object_store::ObjectStore;

use crate::files::storage::Storage;

use super::archive::{BlockingRead, open_archive, read_archive, read_manifest};
use super::{BackupError, Backups, Manifest, Progress, RestoreReport, RestoreTarget, scratch_beside, with_database};

impl Backups {
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
