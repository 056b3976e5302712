//! Configuration: defaults → config file → `KEEL_SECTION__KEY` environment → CLI flags,
//! each later layer winning; then `validate()` turns raw settings into the config in use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A secret string (a database URL may hold a password): `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Config {
    pub app: AppSection,
    pub server: ServerSection,
    pub database: DatabaseSection,
    pub auth: AuthSection,
    pub limits: LimitsSection,
    pub log: LogSection,
    pub redis: RedisSection,
    pub jobs: JobsSection,
    pub smtp: SmtpSection,
    pub files: FilesSection,
    pub backup: BackupSection,
    pub errors: ErrorsSection,
    pub alerts: AlertsSection,
}

/// Where alert notifications go (the rules are in the spec, `[alerts.*]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// Webhooks (Slack-compatible JSON) told when an alert fires or resolves.
    pub webhook_urls: Vec<Secret>,
    /// Addresses emailed when an alert fires or resolves (through `[smtp]`).
    pub email_to: Vec<String>,
    pub evaluate_seconds: u64,
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            webhook_urls: vec![],
            email_to: vec![],
            evaluate_seconds: 15,
        }
    }
}

/// Error tracking (O6).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorsSection {
    /// A Sentry-compatible DSN (`https://KEY@HOST/PROJECT`): error groups are sent there too.
    pub sentry_dsn: Option<Secret>,
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSection {
    /// Run in-process workers on this instance.
    pub workers: bool,
    /// Take part in the leader election (cron and the rescuer).
    pub leader: bool,
    pub lease_seconds: u64,
    pub poll_interval_ms: u64,
    pub claim_batch: u32,
    pub shutdown_grace_seconds: u64,
    pub http_timeout_seconds: u64,
    /// How long an external worker's claim may wait for a job.
    pub max_claim_wait_ms: u64,
}

impl Default for JobsSection {
    fn default() -> Self {
        JobsSection {
            workers: true,
            leader: true,
            lease_seconds: 30,
            poll_interval_ms: 1_000,
            claim_batch: 500,
            shutdown_grace_seconds: 25,
            http_timeout_seconds: 30,
            max_claim_wait_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSection {
    /// Unset: email jobs fail with a clear error.
    pub host: Option<String>,
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    pub tls: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: String,
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            host: None,
            port: 587,
            tls: "starttls".into(),
            username: None,
            password: None,
            from: "keel@localhost".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppSection {
    /// The app spec.
    pub spec: PathBuf,
    /// Where the SQLite file (and later, files and backups) live.
    pub data_dir: PathBuf,
    /// Apply pending migrations at start instead of refusing to start.
    pub migrate_on_start: bool,
    /// Allow destructive migrations at start (only with `migrate_on_start`).
    pub allow_destructive: bool,
    /// `production` or `development` (which allows `*` in `server.cors_origins`).
    pub environment: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub host: String,
    pub port: u16,
    /// A request that takes longer is answered 503 `request_timeout`.
    pub request_timeout_ms: u64,
    /// The largest JSON body accepted.
    pub body_limit_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace_seconds: u64,
    /// After SIGTERM, how long Keel keeps serving with readiness failing before it stops
    /// accepting (time for a load balancer to notice).
    pub drain_ms: u64,
    /// Enforce the spec's `[rate_limits]` (S4). Off only for benchmarks and emergencies.
    pub rate_limits: bool,
    /// Proxies (CIDRs) whose `X-Forwarded-For` names the client; any other peer is the client.
    pub trusted_proxies: Vec<String>,
    /// When not empty, only clients in these CIDRs reach the API and /metrics.
    pub allow_ips: Vec<String>,
    /// Clients in these CIDRs are refused (403 `ip_blocked`).
    pub deny_ips: Vec<String>,
    /// The request timeout of uploads and imports, which stream large bodies.
    pub upload_timeout_ms: u64,
    /// Origins (`https://app.example.com`) whose pages may call the API from a browser.
    pub cors_origins: Vec<String>,
    /// `Strict-Transport-Security` max-age, sent on requests that came over HTTPS through a
    /// trusted proxy (0: never).
    pub hsts_max_age_seconds: u64,
    /// `/health/ready` says `degraded` when a queue's oldest runnable job has waited longer.
    pub ready_queue_lag_seconds: u64,
    /// `/health/ready` says `degraded` above this share of the data directory's disk in use.
    pub ready_disk_used_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// `postgres://…` for PostgreSQL; empty for the embedded SQLite file `<data_dir>/keel.db`.
    pub url: Option<Secret>,
    /// PostgreSQL schema (search_path); tests use one schema per test.
    pub schema: Option<String>,
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout_ms: u64,
    pub idle_timeout_seconds: u64,
    pub max_lifetime_seconds: u64,
    pub statement_timeout_ms: u64,
    /// The statement timeout of writes (statement_timeout_ms is the reads').
    pub write_statement_timeout_ms: u64,
    /// Statements taking at least this long are logged as slow queries.
    pub slow_query_ms: u64,
    /// PostgreSQL read replicas; reads go to a healthy one.
    pub replica_urls: Vec<Secret>,
    /// A replica further behind than this is skipped.
    pub replica_max_lag_ms: u64,
    /// After a client writes, its reads go to the primary for this long (read-your-writes).
    pub read_your_writes_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Whether anyone may sign up (otherwise users are created with `keel users create`).
    pub signup: bool,
    pub session_ttl_hours: u64,
    pub min_password_length: usize,
    /// argon2id memory cost in KiB (OWASP: at least 19456).
    pub argon2_memory_kib: u32,
    /// argon2id iterations (OWASP: at least 2 with 19 MiB).
    pub argon2_iterations: u32,
    /// Failed logins for one account (within `lockout_window_seconds`) before it is locked.
    pub lockout_failures: u32,
    /// Failed logins from one address before it may not log in.
    pub lockout_ip_failures: u32,
    /// The first lock's length; each further failure doubles it, up to `lockout_max_seconds`.
    pub lockout_seconds: u64,
    pub lockout_max_seconds: u64,
    /// Failures older than this are forgotten.
    pub lockout_window_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub default_page_size: u32,
    pub max_page_size: u32,
    /// `count=estimate` counts at most this many rows.
    pub estimate_count_cap: u64,
    pub max_expand: usize,
    pub max_aggregate_groups: u32,
    /// The largest file an import accepts, in bytes.
    pub import_max_bytes: u64,
    /// A larger import (or one of unknown length) is spooled and run as a background job.
    pub import_sync_max_bytes: u64,
    /// The longest row (CSV record or NDJSON line) an import reads; longer rows are rejected.
    pub import_max_row_bytes: usize,
    /// Rejected rows an import report lists (all are counted).
    pub import_max_errors: usize,
    /// Records deleted per statement by a bulk delete.
    pub bulk_delete_chunk: u32,
    /// The response cache's bound in bytes (entries, keys and headers).
    pub cache_max_bytes: u64,
    /// Answers larger than this are not cached.
    pub cache_max_entry_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// `redis://host:port/db`; unset runs without shared state (one instance).
    pub url: Option<Secret>,
    /// Every Redis call gives up after this long and Keel falls back to the database.
    pub timeout_ms: u64,
    /// How long a token lookup stays cached (at most the token's own lifetime).
    pub session_cache_seconds: u64,
    /// Prefix of every key Keel writes.
    pub key_prefix: String,
}

impl Default for RedisSection {
    fn default() -> Self {
        RedisSection {
            url: None,
            timeout_ms: 100,
            session_cache_seconds: 60,
            key_prefix: "keel".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `json` (one object per line) or `pretty`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `keel_server=debug,info`.
    pub level: String,
}

impl Default for AppSection {
    fn default() -> Self {
        AppSection {
            spec: PathBuf::from("keel.toml"),
            data_dir: PathBuf::from("keel-data"),
            migrate_on_start: false,
            allow_destructive: false,
            environment: "production".into(),
        }
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            host: "127.0.0.1".into(),
            port: 8080,
            request_timeout_ms: 30_000,
            body_limit_bytes: 1024 * 1024,
            shutdown_grace_seconds: 30,
            drain_ms: 0,
            rate_limits: true,
            trusted_proxies: vec![],
            allow_ips: vec![],
            deny_ips: vec![],
            upload_timeout_ms: 600_000,
            cors_origins: vec![],
            hsts_max_age_seconds: 31_536_000,
            ready_queue_lag_seconds: 600,
            ready_disk_used_ratio: 0.9,
        }
    }
}

impl Default for DatabaseSection {
    fn default() -> Self {
        let pool = keel_store::PoolConfig::default();
        DatabaseSection {
            url: None,
            schema: None,
            max_connections: 0,
            min_connections: pool.min_connections,
            acquire_timeout_ms: pool.acquire_timeout.as_millis() as u64,
            idle_timeout_seconds: pool.idle_timeout.as_secs(),
            max_lifetime_seconds: pool.max_lifetime.as_secs(),
            statement_timeout_ms: pool.statement_timeout.as_millis() as u64,
            write_statement_timeout_ms: pool.write_statement_timeout.as_millis() as u64,
            slow_query_ms: pool.slow_query.as_millis() as u64,
            replica_urls: vec![],
            replica_max_lag_ms: pool.replica_max_lag.as_millis() as u64,
            read_your_writes_ms: 5_000,
        }
    }
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            signup: true,
            session_ttl_hours: 24 * 30,
            min_password_length: 10,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            lockout_failures: 5,
            lockout_ip_failures: 20,
            lockout_seconds: 60,
            lockout_max_seconds: 3_600,
            lockout_window_seconds: 900,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            default_page_size: 50,
            max_page_size: 500,
            estimate_count_cap: 100_000,
            max_expand: 8,
            max_aggregate_groups: 1_000,
            import_max_bytes: 1 << 30,
            import_sync_max_bytes: 16 << 20,
            import_max_row_bytes: 1 << 20,
            import_max_errors: 1_000,
            bulk_delete_chunk: 20_000,
            cache_max_bytes: 64 << 20,
            cache_max_entry_bytes: 1 << 20,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    File { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Merges `overlay` into `base` recursively (tables merge, other values replace).
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => merge(existing, incoming),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Parses an environment value as TOML (numbers, bools, arrays), falling back to a string.
fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

impl Config {
    /// Builds the config from its layers. `env` is the process environment (tests pass their own);
    /// `overrides` are `section.key = value` pairs from CLI flags.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: Vec<(String, toml::Value)>,
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::try_from(Config::default()).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            let overlay: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            merge(&mut table, overlay);
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("KEEL_") else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            if section.starts_with("TEST") {
                continue;
            }
            let mut overlay = toml::Table::new();
            let mut inner = toml::Table::new();
            inner.insert(key.to_lowercase(), env_value(&raw));
            overlay.insert(section.to_lowercase(), toml::Value::Table(inner));
            merge(&mut table, overlay);
        }
        for (path, value) in overrides {
            let (section, key) = path
                .split_once('.')
                .ok_or_else(|| ConfigError::Invalid(format!("override '{path}' is not section.key")))?;
            let mut overlay = toml::Table::new();
            let mut inner = toml::Table::new();
            inner.insert(key.to_string(), value);
            overlay.insert(section.to_string(), toml::Value::Table(inner));
            merge(&mut table, overlay);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that serde cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, message: &str| Err(ConfigError::Invalid(format!("{key}: {message}")));
        if self.jobs.lease_seconds < 1 || self.jobs.lease_seconds > 3600 {
            return fail("jobs.lease_seconds", "must be between 1 and 3600");
        }
        if self.jobs.poll_interval_ms < 10 {
            return fail("jobs.poll_interval_ms", "must be at least 10");
        }
        if self.jobs.claim_batch == 0 || self.jobs.claim_batch > 10_000 {
            return fail("jobs.claim_batch", "must be between 1 and 10000");
        }
        if self.jobs.max_claim_wait_ms > 120_000 {
            return fail("jobs.max_claim_wait_ms", "must be at most 120000");
        }
        match self.files.backend.as_str() {
            "local" => {}
            "s3" if self.files.s3_bucket.as_deref().is_some_and(|b| !b.is_empty()) => {
                if let Err(error) = crate::storage::Storage::s3(&self.files) {
                    return fail("files", &format!("the S3 settings are not usable: {error}"));
                }
            }
            "s3" => return fail("files.s3_bucket", "is required with files.backend = \"s3\""),
            _ => return fail("files.backend", "must be local or s3"),
        }
        match self.backup.backend.as_str() {
            "local" => {}
            "s3" if self.backup.s3_bucket.as_deref().is_some_and(|b| !b.is_empty()) => {}
            "s3" => return fail("backup.s3_bucket", "is required with backup.backend = \"s3\""),
            _ => return fail("backup.backend", "must be local or s3"),
        }
        if self.backup.key.is_some() && self.backup.key_file.is_some() {
            return fail("backup.key", "give backup.key or backup.key_file, not both");
        }
        if let Some(key) = &self.backup.key
            && let Err(error) = crate::backup::parse_identity(&key.0)
        {
            return fail("backup.key", &error);
        }
        if let Some(dsn) = &self.errors.sentry_dsn
            && let Err(error) = crate::tracking::parse_dsn(&dsn.0)
        {
            return fail("errors.sentry_dsn", &error);
        }
        if self.alerts.evaluate_seconds == 0 || self.alerts.evaluate_seconds > 3600 {
            return fail("alerts.evaluate_seconds", "must be between 1 and 3600");
        }
        for url in &self.alerts.webhook_urls {
            if !(url.0.starts_with("http://") || url.0.starts_with("https://")) {
                return fail("alerts.webhook_urls", "each must be an http:// or https:// URL");
            }
        }
        if !(0.0..=1.0).contains(&self.server.ready_disk_used_ratio) {
            return fail("server.ready_disk_used_ratio", "must be between 0 and 1");
        }
        if !(1..=19).contains(&self.backup.zstd_level) {
            return fail("backup.zstd_level", "must be between 1 and 19");
        }
        if !["none", "starttls", "tls"].contains(&self.smtp.tls.as_str()) {
            return fail("smtp.tls", "must be one of: none, starttls, tls");
        }
        if self.limits.max_page_size == 0 || self.limits.max_page_size > 10_000 {
            return fail("limits.max_page_size", "must be between 1 and 10000");
        }
        if self.limits.default_page_size == 0 || self.limits.default_page_size > self.limits.max_page_size {
            return fail("limits.default_page_size", "must be between 1 and limits.max_page_size");
        }
        if self.database.max_connections != 0 && self.database.min_connections > self.database.max_connections {
            return fail("database.min_connections", "must not exceed database.max_connections");
        }
        for (key, list) in [
            ("server.trusted_proxies", &self.server.trusted_proxies),
            ("server.allow_ips", &self.server.allow_ips),
            ("server.deny_ips", &self.server.deny_ips),
        ] {
            if let Err(error) = crate::protect::parse_cidrs(list) {
                return fail(key, &error);
            }
        }
        if !matches!(self.app.environment.as_str(), "production" | "development") {
            return fail("app.environment", "must be production or development");
        }
        if let Err(error) =
            crate::browser::check_origins(&self.server.cors_origins, self.app.environment == "production")
        {
            return fail("server.cors_origins", &error);
        }
        if self.server.request_timeout_ms == 0 || self.server.upload_timeout_ms == 0 {
            return fail("server.request_timeout_ms", "timeouts must be at least 1 ms");
        }
        if self.server.body_limit_bytes < 1024 {
            return fail("server.body_limit_bytes", "must be at least 1024");
        }
        if !matches!(self.log.format.as_str(), "json" | "pretty") {
            return fail("log.format", "must be json or pretty");
        }
        if self.auth.argon2_memory_kib < 64 || self.auth.argon2_iterations == 0 {
            return fail(
                "auth.argon2_memory_kib",
                "must be at least 64 KiB with at least 1 iteration",
            );
        }
        if self.auth.lockout_failures == 0 || self.auth.lockout_ip_failures == 0 {
            return fail("auth.lockout_failures", "lockouts need at least 1 failure");
        }
        if self.auth.lockout_seconds == 0 || self.auth.lockout_max_seconds < self.auth.lockout_seconds {
            return fail(
                "auth.lockout_seconds",
                "must be at least 1 and at most auth.lockout_max_seconds",
            );
        }
        if self.auth.min_password_length < 8 {
            return fail("auth.min_password_length", "must be at least 8");
        }
        if let Some(url) = &self.redis.url
            && !url.0.is_empty()
            && !(url.0.starts_with("redis://") || url.0.starts_with("rediss://"))
        {
            return fail("redis.url", "must start with redis:// or rediss://");
        }
        if self.redis.timeout_ms == 0 {
            return fail("redis.timeout_ms", "must be at least 1");
        }
        if self.database.statement_timeout_ms == 0 || self.database.write_statement_timeout_ms == 0 {
            return fail("database.statement_timeout_ms", "timeouts must be at least 1 ms");
        }
        if self.database.replica_urls.iter().any(|u| !u.0.starts_with("postgres")) {
            return fail(
                "database.replica_urls",
                "each must start with postgres:// or postgresql://",
            );
        }
        if let Some(url) = &self.database.url
            && !url.0.is_empty()
            && !(url.0.starts_with("postgres://") || url.0.starts_with("postgresql://") || url.0.starts_with("sqlite:"))
        {
            return fail("database.url", "must start with postgres://, postgresql:// or sqlite:");
        }
        Ok(())
    }

    /// Where the data lives, derived from `database.url` and `app.data_dir`.
    pub fn location(&self) -> keel_store::Location {
        match self.database.url.as_ref().map(|s| s.0.as_str()) {
            Some(url) if url.starts_with("postgres") => keel_store::Location::Postgres {
                url: url.to_string(),
                schema: self.database.schema.clone(),
                replicas: self.database.replica_urls.iter().map(|u| u.0.clone()).collect(),
            },
            Some(url) if url.starts_with("sqlite:") => keel_store::Location::Sqlite(PathBuf::from(
                url.trim_start_matches("sqlite://").trim_start_matches("sqlite:"),
            )),
            _ => keel_store::Location::Sqlite(self.app.data_dir.join("keel.db")),
        }
    }

    pub fn pool(&self) -> keel_store::PoolConfig {
        keel_store::PoolConfig {
            max_connections: match self.database.max_connections {
                // Sized for the machine: four connections per core, between 8 and 64.
                0 => std::thread::available_parallelism()
                    .map(|n| n.get() as u32 * 4)
                    .unwrap_or(8)
                    .clamp(8, 64),
                n => n,
            },
            min_connections: self.database.min_connections,
            acquire_timeout: Duration::from_millis(self.database.acquire_timeout_ms),
            idle_timeout: Duration::from_secs(self.database.idle_timeout_seconds),
            max_lifetime: Duration::from_secs(self.database.max_lifetime_seconds),
            statement_timeout: Duration::from_millis(self.database.statement_timeout_ms),
            write_statement_timeout: Duration::from_millis(self.database.write_statement_timeout_ms),
            slow_query: Duration::from_millis(self.database.slow_query_ms),
            replica_max_lag: Duration::from_millis(self.database.replica_max_lag_ms),
        }
    }

    /// The job runtime's settings.
    pub fn jobs(&self) -> keel_jobs::JobsConfig {
        keel_jobs::JobsConfig {
            workers: self.jobs.workers,
            lease: Duration::from_secs(self.jobs.lease_seconds),
            poll_interval: Duration::from_millis(self.jobs.poll_interval_ms),
            claim_batch: self.jobs.claim_batch,
            shutdown_grace: Duration::from_secs(self.jobs.shutdown_grace_seconds),
            leader: self.jobs.leader,
            http_timeout: Duration::from_secs(self.jobs.http_timeout_seconds),
            smtp: self.smtp.host.as_ref().map(|host| keel_jobs::SmtpConfig {
                host: host.clone(),
                port: self.smtp.port,
                tls: match self.smtp.tls.as_str() {
                    "none" => keel_jobs::SmtpTls::None,
                    "tls" => keel_jobs::SmtpTls::Tls,
                    _ => keel_jobs::SmtpTls::StartTls,
                },
                username: self.smtp.username.clone(),
                password: self.smtp.password.as_ref().map(|p| p.0.clone()),
                from: self.smtp.from.clone(),
            }),
        }
    }

    /// The default configuration as a documented TOML file (`keel config print-default`).
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Config::default()).expect("the default config serialises")
    }
}

/// One line per configuration key: `docs/CONFIG.md` is generated from it and from the
/// defaults, and a test fails when a key has no description.
pub const DESCRIPTIONS: &[(&str, &str)] = &[
    ("app.spec", "The app spec file."),
    ("app.data_dir", "Where the embedded SQLite file `keel.db` lives."),
    (
        "app.migrate_on_start",
        "Apply pending migrations at start instead of refusing to start.",
    ),
    (
        "app.allow_destructive",
        "With `migrate_on_start`, also apply destructive steps (drops, narrowing).",
    ),
    (
        "app.environment",
        "`production` or `development`; development allows `*` in `server.cors_origins`.",
    ),
    ("server.host", "The address to listen on."),
    ("server.port", "The port to listen on (0 picks a free one)."),
    (
        "server.request_timeout_ms",
        "A request running longer is answered 503 `request_timeout`.",
    ),
    (
        "server.body_limit_bytes",
        "The largest request body accepted (413 `payload_too_large` above).",
    ),
    (
        "server.shutdown_grace_seconds",
        "On SIGTERM, how long in-flight requests may take to finish.",
    ),
    (
        "server.drain_ms",
        "After SIGTERM, keep serving this long with /health/ready answering 503 `draining`, so load balancers move away first.",
    ),
    (
        "server.rate_limits",
        "Enforce the spec's `[rate_limits]` (429 `rate_limited`). Turn off only for benchmarks or in an emergency.",
    ),
    (
        "server.trusted_proxies",
        "CIDRs of reverse proxies and load balancers: from these peers the client is the last untrusted address of `X-Forwarded-For`; from any other peer the header is ignored.",
    ),
    (
        "server.allow_ips",
        "When not empty, only clients in these CIDRs reach the API and /metrics (others get 403 `ip_blocked`); health checks stay open.",
    ),
    (
        "server.deny_ips",
        "Clients in these CIDRs get 403 `ip_blocked` on the API and /metrics.",
    ),
    (
        "server.cors_origins",
        "Origins (`scheme://host[:port]`) whose pages may call the API from a browser, with credentials; empty allows none. `*` allows any origin without credentials, and only with `app.environment = \"development\"`.",
    ),
    (
        "server.ready_queue_lag_seconds",
        "`/health/ready` reports `degraded` (still 200) while a queue's oldest runnable job has waited longer than this.",
    ),
    (
        "server.ready_disk_used_ratio",
        "`/health/ready` reports `degraded` above this share of the data directory's disk in use; below 1% or 64 MiB free it fails (503).",
    ),
    (
        "server.hsts_max_age_seconds",
        "`Strict-Transport-Security: max-age=…; includeSubDomains` on requests that reached a trusted proxy over HTTPS (`X-Forwarded-Proto: https`); 0 never sends it.",
    ),
    (
        "server.upload_timeout_ms",
        "The request timeout of file uploads and imports (their bodies stream for longer than other requests).",
    ),
    (
        "database.url",
        "`postgres://…` selects PostgreSQL; unset uses the embedded SQLite file.",
    ),
    (
        "database.schema",
        "PostgreSQL schema (search_path) holding Keel's tables.",
    ),
    (
        "database.max_connections",
        "Pool size (PostgreSQL connections; SQLite reader connections); 0 sizes it for the machine: 4 per core, 8 to 64.",
    ),
    (
        "database.min_connections",
        "Connections kept open when idle (PostgreSQL).",
    ),
    (
        "database.acquire_timeout_ms",
        "How long a request waits for a connection before 503 `database_busy`.",
    ),
    (
        "database.idle_timeout_seconds",
        "Idle connections above the minimum close after this long.",
    ),
    (
        "database.max_lifetime_seconds",
        "Connections are recycled after this long.",
    ),
    (
        "database.statement_timeout_ms",
        "A statement running longer is cancelled (503 `database_timeout`).",
    ),
    (
        "database.slow_query_ms",
        "Statements taking at least this long are logged (`slow query`, with the SQL, route and request id).",
    ),
    (
        "database.replica_urls",
        "PostgreSQL streaming replicas (`[\"postgres://…\"]`); reads go to a healthy one unless the client wrote recently.",
    ),
    (
        "database.write_statement_timeout_ms",
        "The statement timeout inside write transactions (`statement_timeout_ms` applies to reads).",
    ),
    (
        "database.replica_max_lag_ms",
        "A replica further behind than this (or down) is skipped; reads go to the primary.",
    ),
    (
        "database.read_your_writes_ms",
        "After a client's write, its reads go to the primary for this long (shared through Redis across instances).",
    ),
    ("auth.signup", "Whether anyone may sign up through the API."),
    ("auth.session_ttl_hours", "How long a session token lives."),
    ("auth.min_password_length", "The shortest password accepted."),
    ("auth.argon2_memory_kib", "argon2id memory cost in KiB."),
    ("auth.argon2_iterations", "argon2id iterations."),
    (
        "auth.lockout_failures",
        "Failed logins for one account within `auth.lockout_window_seconds` before logins to it are refused (429 `login_locked`) for `auth.lockout_seconds`.",
    ),
    (
        "auth.lockout_ip_failures",
        "Failed logins from one client address (any accounts) before its logins are refused the same way.",
    ),
    (
        "auth.lockout_seconds",
        "The first lock's length; every further failure doubles it (backoff), up to `auth.lockout_max_seconds`.",
    ),
    ("auth.lockout_max_seconds", "The longest lock."),
    (
        "auth.lockout_window_seconds",
        "Failures older than this (with no lock running) are forgotten; a successful login forgets the account's.",
    ),
    ("limits.default_page_size", "Page size when `limit` is not given."),
    (
        "limits.max_page_size",
        "The largest `limit` accepted (a larger one is 400 `limit_too_large`).",
    ),
    (
        "limits.estimate_count_cap",
        "`count=estimate` counts at most this many rows.",
    ),
    ("limits.max_expand", "The most relations one request may expand."),
    ("limits.max_aggregate_groups", "The most groups an aggregate returns."),
    (
        "limits.import_max_bytes",
        "The largest file an import accepts, in bytes (413 `payload_too_large` above).",
    ),
    (
        "limits.import_max_row_bytes",
        "The longest row (CSV record or NDJSON line) an import reads; a longer row is rejected and skipped.",
    ),
    (
        "limits.import_sync_max_bytes",
        "An import larger than this (or of unknown length) is stored and run as a background job, answering 202 with the job; `?background=false` runs it in the request anyway.",
    ),
    (
        "limits.import_max_errors",
        "Rejected rows an import report lists (all are counted).",
    ),
    (
        "limits.bulk_delete_chunk",
        "Records a bulk delete removes per statement (all in one transaction).",
    ),
    (
        "limits.cache_max_bytes",
        "The response cache's bound in bytes (answers, keys and headers of collections with `cache`); past it the least useful entries go (S3-FIFO).",
    ),
    (
        "limits.cache_max_entry_bytes",
        "Answers larger than this are served but not cached.",
    ),
    (
        "redis.url",
        "`redis://host:port/db` turns on shared state across instances (the token cache); unset: none.",
    ),
    (
        "redis.timeout_ms",
        "Each Redis call gives up after this long; Keel then uses the database and reports Redis as degraded.",
    ),
    (
        "redis.session_cache_seconds",
        "How long a token lookup stays cached in Redis (never past the token's expiry).",
    ),
    ("redis.key_prefix", "Prefix of every Redis key Keel writes."),
    (
        "jobs.workers",
        "Run in-process job workers on this instance (false: it only serves HTTP and enqueues).",
    ),
    (
        "jobs.leader",
        "Take part in the election of the instance that runs cron and rescues expired leases.",
    ),
    (
        "jobs.lease_seconds",
        "How long a claimed job is held without a heartbeat; workers extend it every third of it, and the rescuer returns jobs whose lease ran out.",
    ),
    (
        "jobs.poll_interval_ms",
        "How often idle workers look for jobs when no enqueue notification came (PostgreSQL LISTEN and in-process wake-ups come first).",
    ),
    ("jobs.claim_batch", "The most jobs one claim takes."),
    (
        "jobs.shutdown_grace_seconds",
        "On shutdown, how long in-flight jobs may run before they are handed back to the queue.",
    ),
    (
        "jobs.http_timeout_seconds",
        "Outbound requests of the http handler give up after this long.",
    ),
    (
        "jobs.max_claim_wait_ms",
        "The longest an external worker's claim waits for a job (long poll).",
    ),
    (
        "smtp.host",
        "The SMTP server for email jobs; unset, email jobs fail with a clear error.",
    ),
    ("smtp.port", "The SMTP server's port."),
    ("smtp.tls", "`none`, `starttls` or `tls` (implicit TLS)."),
    ("smtp.username", "SMTP login, if the server needs one."),
    ("smtp.password", "SMTP password."),
    ("smtp.from", "The sender address of email jobs."),
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
    (
        "errors.sentry_dsn",
        "A Sentry-compatible DSN (`https://KEY@HOST/PROJECT`, Sentry, GlitchTip, Bugsink…): unexpected errors and panics are sent there as well as counted in `keel_errors` (`GET /api/v1/admin/errors`).",
    ),
    (
        "alerts.webhook_urls",
        "Webhooks told when an alert fires or resolves: a POST of Slack-compatible JSON (`text`, plus `alert`, `severity`, `state`, `value`, `threshold`, `unit`, `summary`, `at`).",
    ),
    (
        "alerts.email_to",
        "Addresses emailed when an alert fires or resolves, through the `[smtp]` server.",
    ),
    (
        "alerts.evaluate_seconds",
        "How often each instance evaluates the alert rules (docs/OPERATIONS.md, Alerts).",
    ),
    (
        "log.format",
        "`json` (one object per line, with the request id) or `pretty`.",
    ),
    (
        "log.level",
        "A tracing filter such as `info` or `keel_server=debug,info`.",
    ),
];

/// `docs/CONFIG.md`, generated from the defaults and [`DESCRIPTIONS`].
pub fn config_markdown() -> String {
    let defaults = toml::Table::try_from(Config::default()).expect("defaults serialise");
    let mut out = String::from(
        "# Configuration\n\nSettings come from, in order (later wins): the defaults below, a TOML file given with `--config FILE`, environment variables `KEEL_<SECTION>__<KEY>` (e.g. `KEEL_DATABASE__URL`), and command-line flags.\nUnknown keys are refused with the key's name.\n`keel config print-default` prints the defaults as a TOML file.\nThis file is generated from `crates/keel-server/src/config.rs` (a test fails when it is stale).\n\n| key | environment | default | meaning |\n| --- | --- | --- | --- |\n",
    );
    for (key, description) in DESCRIPTIONS {
        let (section, name) = key.split_once('.').expect("section.key");
        let default = defaults
            .get(section)
            .and_then(|s| s.get(name))
            .map(|v| format!("`{v}`"))
            .unwrap_or_else(|| "(unset)".into());
        let env = format!("KEEL_{}__{}", section.to_uppercase(), name.to_uppercase());
        out.push_str(&format!("| `{key}` | `{env}` | {default} | {description} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_described() {
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let mut keys = vec![];
        for (section, table) in &defaults {
            for key in table.as_table().unwrap().keys() {
                keys.push(format!("{section}.{key}"));
            }
        }
        // Optional keys are absent from the defaults but must still be described.
        keys.push("database.url".into());
        keys.push("database.schema".into());
        keys.push("redis.url".into());
        keys.push("smtp.host".into());
        keys.push("smtp.username".into());
        keys.push("smtp.password".into());
        for key in ["s3_bucket", "s3_endpoint", "s3_access_key_id", "s3_secret_access_key"] {
            keys.push(format!("files.{key}"));
        }
        for key in ["s3_bucket", "key", "key_file", "pg_bin_dir"] {
            keys.push(format!("backup.{key}"));
        }
        keys.push("errors.sentry_dsn".into());
        for key in keys {
            assert!(DESCRIPTIONS.iter().any(|(k, _)| *k == key), "{key} has no description");
        }
    }

    #[test]
    fn layers_apply_in_order_and_unknown_keys_fail() {
        let dir = std::env::temp_dir().join(format!("keel-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keel.config.toml");
        std::fs::write(&file, "[server]\nport = 9000\nhost = \"0.0.0.0\"\n").unwrap();
        let env = vec![
            ("KEEL_SERVER__PORT".to_string(), "9100".to_string()),
            ("KEEL_LOG__FORMAT".to_string(), "pretty".to_string()),
        ];
        let config = Config::load(
            Some(&file),
            env.clone(),
            vec![("server.port".into(), toml::Value::Integer(9200))],
        )
        .unwrap();
        assert_eq!(config.server.port, 9200, "flags beat the environment");
        assert_eq!(config.server.host, "0.0.0.0", "the file beats the defaults");
        assert_eq!(config.log.format, "pretty");
        let config = Config::load(Some(&file), env, vec![]).unwrap();
        assert_eq!(config.server.port, 9100, "the environment beats the file");
        let error = Config::load(None, vec![("KEEL_SERVER__PROT".into(), "1".into())], vec![]).unwrap_err();
        assert!(error.to_string().contains("prot"), "{error}");
        let error = Config::load(None, vec![("KEEL_LIMITS__MAX_PAGE_SIZE".into(), "0".into())], vec![]).unwrap_err();
        assert!(error.to_string().contains("limits.max_page_size"), "{error}");
        let secret = format!("{:?}", Secret("postgres://u:hunter2@h/db".into()));
        assert!(!secret.contains("hunter2"));
    }
}
