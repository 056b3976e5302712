//! `[backup]`: where backups go and the key that encrypts them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::http::settings::{Checked, Secret, invalid};

/// Where backups go and the key that encrypts them (O5, S13).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSection {
    /// `local` (a directory) or `s3` (a bucket on the store `[files]` describes).
    pub backend: String,
    /// Where backups are kept with `local` (a relative path is under `app.data_dir`).
    pub dir: PathBuf,
    pub s3_bucket: Option<String>,
    pub s3_prefix: String,
    /// An age X25519 identity (`AGE-SECRET-KEY-1…`): backups are encrypted to it.
    pub key: Option<Secret>,
    /// A file holding the identity instead (as `age-keygen` writes it).
    pub key_file: Option<PathBuf>,
    /// Where `pg_dump` and `pg_restore` are; unset searches `PATH`.
    pub pg_bin_dir: Option<PathBuf>,
    /// zstd level, 1 (fastest) to 19.
    pub zstd_level: i32,
}

impl Default for BackupSection {
    fn default() -> Self {
        BackupSection {
            backend: "local".into(),
            dir: "backups".into(),
            s3_bucket: None,
            s3_prefix: "keel-backups".into(),
            key: None,
            key_file: None,
            pg_bin_dir: None,
            zstd_level: 3,
        }
    }
}

impl BackupSection {
    pub fn validate(&self) -> Checked {
        match self.backend.as_str() {
            "local" => {}
            "s3" if self.s3_bucket.as_deref().is_some_and(|b| !b.is_empty()) => {}
            "s3" => return invalid("backup.s3_bucket", "is required with backup.backend = \"s3\""),
            _ => return invalid("backup.backend", "must be local or s3"),
        }
        if self.key.is_some() && self.key_file.is_some() {
            return invalid("backup.key", "give backup.key or backup.key_file, not both");
        }
        if let Some(key) = &self.key
            && let Err(error) = super::parse_identity(&key.0)
        {
            return invalid("backup.key", error);
        }
        if !(1..=19).contains(&self.zstd_level) {
            return invalid("backup.zstd_level", "must be between 1 and 19");
        }
        Ok(())
    }
}

/// One line per key of `[backup]`, for `docs/CONFIG.md`.
pub const KEYS: &[(&str, &str)] = &[
    (
        "backup.backend",
        "`local` (backups under `backup.dir`) or `s3` (a bucket on the S3-compatible store of `[files]`: its endpoint, region and credentials).",
    ),
    (
        "backup.dir",
        "Where backups are kept with `local`; a relative path is under `app.data_dir`.",
    ),
    ("backup.s3_bucket", "The bucket, with `backup.backend = \"s3\"`."),
    ("backup.s3_prefix", "Prepended to every backup's name in the bucket."),
    (
        "backup.key",
        "The age identity (`AGE-SECRET-KEY-1…`, from `keel backup keygen` or `age-keygen`) that backups are encrypted to and restored with; without it (or `backup.key_file`) no backup is taken.",
    ),
    (
        "backup.key_file",
        "A file holding the identity instead of `backup.key` (lines starting with `#` are ignored).",
    ),
    (
        "backup.pg_bin_dir",
        "The directory of `pg_dump` and `pg_restore` (PostgreSQL); unset searches `PATH`. They must be at least the server's version.",
    ),
    ("backup.zstd_level", "The zstd compression level, 1 (fastest) to 19."),
];
