//! The archive format: a tar of the manifest, the file list, the database and the files,
//! through zstd and age, written and read on blocking threads fed by async streams.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use chrono::Utc;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use keel_store::backups::FileEntry;
use object_store::WriteMultipart;
use sha2::{Digest, Sha256};

use crate::files::storage::Storage;
use crate::hex;

use super::{BackupError, FORMAT, MANIFEST_MAX_BYTES, Manifest, Progress};

pub(super) async fn hash_file(path: &Path) -> Result<(u64, String), BackupError> {
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
pub(super) struct BlockingWrite {
    pub(super) upload: Arc<Mutex<Option<WriteMultipart>>>,
    pub(super) handle: tokio::runtime::Handle,
    pub(super) written: u64,
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
pub(super) struct BlockingRead {
    pub(super) stream: BoxStream<'static, Result<Bytes, object_store::Error>>,
    pub(super) chunk: Bytes,
    pub(super) handle: tokio::runtime::Handle,
    pub(super) progress: Option<(Progress, u64)>,
    pub(super) read: u64,
}

impl BlockingRead {
    pub(super) fn new(
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

pub(super) fn header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(Utc::now().timestamp().max(0) as u64);
    header
}

/// Writes the archive (blocking): returns its size and the files storage did not have.
pub(super) fn write_archive(
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

pub(super) type ArchiveReader = tar::Archive<
    zstd::stream::read::Decoder<
        'static,
        std::io::BufReader<age::stream::StreamReader<std::io::BufReader<BlockingRead>>>,
    >,
>;

pub(super) fn open_archive(
    reader: BlockingRead,
    identity: &age::x25519::Identity,
) -> Result<ArchiveReader, BackupError> {
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

pub(super) fn read_manifest(entry: tar::Entry<'_, impl Read>) -> Result<Manifest, BackupError> {
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

pub(super) struct Unpacked {
    pub(super) manifest: Manifest,
    pub(super) database: PathBuf,
    pub(super) files: u64,
    pub(super) missing: Vec<String>,
}

/// Reads an archive (blocking): the database into `scratch`, the files into `storage`, each
/// checked against its SHA-256.
pub(super) fn read_archive(
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

pub(super) struct HashingWriter<W> {
    pub(super) inner: W,
    pub(super) hasher: Sha256,
    pub(super) bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(super) fn new(inner: W) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub(super) fn finish(self) -> (u64, String) {
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
