//! `[files]`: where uploaded files are stored.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::http::settings::{Checked, Secret, invalid};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesSection {
    /// `local` (a directory) or `s3` (any S3-compatible store).
    pub backend: String,
    /// Where uploaded files are kept with `local` (a relative path is under `app.data_dir`).
    pub dir: PathBuf,
    pub s3_bucket: Option<String>,
    /// The store's URL for S3-compatible servers other than AWS (MinIO, Garage, R2, …).
    pub s3_endpoint: Option<String>,
    pub s3_region: String,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<Secret>,
    /// Prepended to every key in the bucket.
    pub s3_prefix: String,
    /// Allow an `http://` endpoint (local test servers).
    pub s3_allow_http: bool,
}

impl Default for FilesSection {
    fn default() -> Self {
        FilesSection {
            backend: "local".into(),
            dir: "files".into(),
            s3_bucket: None,
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_prefix: String::new(),
            s3_allow_http: false,
        }
    }
}

impl FilesSection {
    pub fn validate(&self) -> Checked {
        match self.backend.as_str() {
            "local" => {}
            "s3" if self.s3_bucket.as_deref().is_some_and(|b| !b.is_empty()) => {
                if let Err(error) = self.s3_store(self.s3_bucket.as_deref().unwrap_or_default()) {
                    return invalid("files", format!("the S3 settings are not usable: {error}"));
                }
            }
            "s3" => return invalid("files.s3_bucket", "is required with files.backend = \"s3\""),
            _ => return invalid("files.backend", "must be local or s3"),
        }
        Ok(())
    }

    /// A client for an S3-compatible bucket with the endpoint, region and credentials of
    /// `[files]` (backups use it with their own bucket).
    pub fn s3_store(&self, bucket: &str) -> object_store::Result<Arc<dyn ObjectStore>> {
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(self.s3_region.clone())
            .with_allow_http(self.s3_allow_http)
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_allow_http(self.s3_allow_http)
                    .with_connect_timeout(std::time::Duration::from_secs(5))
                    .with_timeout(std::time::Duration::from_secs(300)),
            );
        if let Some(endpoint) = &self.s3_endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if let Some(key) = &self.s3_access_key_id {
            builder = builder.with_access_key_id(key.clone());
        }
        if let Some(secret) = &self.s3_secret_access_key {
            builder = builder.with_secret_access_key(secret.0.clone());
        }
        Ok(Arc::new(builder.build()?))
    }
}

/// One line per key of `[files]`, for `docs/CONFIG.md`.
pub const KEYS: &[(&str, &str)] = &[
    (
        "files.backend",
        "`local` (files under `files.dir`) or `s3` (an S3-compatible bucket).",
    ),
    ("files.s3_bucket", "The bucket, with `files.backend = \"s3\"`."),
    (
        "files.s3_endpoint",
        "The endpoint of an S3-compatible store other than AWS (e.g. `http://127.0.0.1:9000`); unset for AWS.",
    ),
    ("files.s3_region", "The bucket's region."),
    (
        "files.s3_access_key_id",
        "Credentials; unset uses the environment's (`AWS_ACCESS_KEY_ID`, instance roles).",
    ),
    (
        "files.s3_secret_access_key",
        "The secret key for `files.s3_access_key_id`.",
    ),
    (
        "files.s3_prefix",
        "Prepended to every key in the bucket (share a bucket between apps).",
    ),
    (
        "files.s3_allow_http",
        "Allow a plain `http://` endpoint (local test servers only).",
    ),
    (
        "files.dir",
        "Where uploaded files are kept, laid out as `org-<org>/<collection>/<record>/<field>/<file>`; a relative path is under `app.data_dir`.",
    ),
];
