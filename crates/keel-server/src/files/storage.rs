//! Where uploaded files live: an `object_store` store (the local disk under `files.dir`, or
//! an S3-compatible bucket), with every key under one prefix. Keys are laid out as
//! `org-<org>/<collection>/<record>/<field>/<file id>` (`global/…` for global collections).

use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use futures_util::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, WriteMultipart};

use super::settings::FilesSection;

pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// Prepended to every key (the directory, for the local store).
    prefix: String,
}

pub type StorageError = object_store::Error;

impl Storage {
    /// Files on the local disk under `dir` (created on first write).
    pub fn local(dir: &Path) -> Storage {
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let prefix = absolute
            .to_string_lossy()
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        Storage {
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            prefix,
        }
    }

    /// The store `[files]` configures (a relative `files.dir` is under `data_dir`).
    pub fn new(files: &FilesSection, data_dir: &Path) -> Result<Storage, StorageError> {
        match files.backend.as_str() {
            "s3" => Storage::s3(files),
            _ => {
                let dir = if files.dir.is_absolute() {
                    files.dir.clone()
                } else {
                    data_dir.join(&files.dir)
                };
                Ok(Storage::local(&dir))
            }
        }
    }

    /// Files in an S3-compatible bucket.
    pub fn s3(files: &FilesSection) -> Result<Storage, StorageError> {
        Ok(Storage {
            store: files.s3_store(files.s3_bucket.as_deref().unwrap_or_default())?,
            prefix: files.s3_prefix.trim_matches('/').to_string(),
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    /// A writer for a new object: parts are written as they fill; `finish` makes the object
    /// visible, `abort` drops what was written.
    pub async fn writer(&self, key: &str) -> Result<WriteMultipart, StorageError> {
        let upload = self.store.put_multipart(&self.path(key)).await?;
        Ok(WriteMultipart::new_with_chunk_size(upload, 5 << 20))
    }

    /// An object's size and its bytes as a stream. A file on the local disk is read 256 KiB
    /// at a time (`object_store`'s own stream reads 8 KiB per blocking hop, which caps a
    /// download at a quarter of the disk's speed).
    pub async fn get(&self, key: &str) -> Result<(u64, BoxStream<'static, Result<Bytes, StorageError>>), StorageError> {
        let result = self.store.get(&self.path(key)).await?;
        let size = result.meta.size;
        match result.payload {
            object_store::GetResultPayload::File(file, path) => Ok((size, file_stream(file, path, size))),
            object_store::GetResultPayload::Stream(stream) => Ok((size, stream)),
        }
    }

    /// Asks the store about an object that does not exist: an answer (found or not) means
    /// the store is reachable; readiness uses it.
    pub async fn probe(&self) -> Result<(), StorageError> {
        match self.store.head(&self.path(".keel-probe")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Deletes an object; one that is already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Deletes objects after the transaction that dropped them committed. While a backup
    /// runs, they are deferred instead (the backup may still copy them; see
    /// `keel_store::backups`), and the cleanup job deletes them later.
    pub async fn delete_after_commit(&self, db: &keel_store::Db, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let now = chrono::Utc::now();
        match keel_store::backups::backup_running(db, now).await {
            Ok(false) => self.delete_all(keys).await,
            // Running, or unknown: deferring is always safe.
            outcome => {
                if let Err(error) = &outcome {
                    tracing::warn!(%error, "could not tell whether a backup runs; deferring file deletes");
                }
                if let Err(error) = keel_store::backups::defer_deletes(db, keys, now).await {
                    tracing::warn!(%error, files = keys.len(), "could not defer file deletes; the files stay as orphans");
                }
            }
        }
    }

    /// Deletes objects; failures are logged (the object is then an orphan on disk, not a
    /// dangling reference).
    pub async fn delete_all(&self, keys: &[String]) {
        for key in keys {
            if let Err(error) = self.delete(key).await {
                tracing::warn!(key = %key, error = %error, "could not delete a stored file");
            }
        }
    }
}

/// The bytes a local file read at most per blocking hop of a download.
const FILE_CHUNK: u64 = 256 << 10;

/// The first `size` bytes of a local file, `FILE_CHUNK` at a time, each read on the
/// blocking pool; a read that fails ends the stream with the error.
fn file_stream(
    file: std::fs::File,
    path: std::path::PathBuf,
    size: u64,
) -> BoxStream<'static, Result<Bytes, StorageError>> {
    use futures_util::StreamExt as _;
    let path = Arc::new(path);
    futures_util::stream::try_unfold((file, size), move |(mut file, remaining)| {
        let path = path.clone();
        async move {
            if remaining == 0 {
                return Ok(None);
            }
            let read = tokio::task::spawn_blocking(move || {
                use std::io::Read as _;
                let mut buffer = Vec::with_capacity(remaining.min(FILE_CHUNK) as usize);
                let result = (&mut file).take(FILE_CHUNK.min(remaining)).read_to_end(&mut buffer);
                (file, buffer, result)
            })
            .await;
            let unreadable = |source: std::io::Error| object_store::Error::Generic {
                store: "LocalFileSystem",
                source: format!("cannot read {}: {source}", path.display()).into(),
            };
            let (file, buffer, result) = read.map_err(|e| unreadable(std::io::Error::other(e)))?;
            result.map_err(unreadable)?;
            if buffer.is_empty() {
                return Err(unreadable(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)));
            }
            let left = remaining - buffer.len() as u64;
            Ok(Some((Bytes::from(buffer), (file, left))))
        }
    })
    .boxed()
}
