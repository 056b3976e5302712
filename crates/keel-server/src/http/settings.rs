//! The core's settings: `[app]`, `[server]`, `[database]`, `[limits]`, `[redis]` and `[log]`,
//! each with its defaults, its checks and its lines of `docs/CONFIG.md`; and what every
//! feature's settings use: [`Secret`] and [`Invalid`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::HeaderValue;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A secret string (a database URL may hold a password): `Debug` never shows it, and
/// [`redacted`] serialises it as `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

thread_local! {
    static REDACT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if REDACT.with(|r| r.get()) {
            serializer.serialize_str("***")
        } else {
            serializer.serialize_str(&self.0)
        }
    }
}

/// Serialises `value` with every [`Secret`] in it shown as `***` (whatever its key is
/// called: the type, not the name, marks a secret).
pub fn redacted<T: Serialize>(value: &T) -> serde_json::Value {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            REDACT.with(|r| r.set(false));
        }
    }
    REDACT.with(|r| r.set(true));
    let _reset = Reset;
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A setting its section refuses: the key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: &'static str,
    pub message: String,
}

/// What a section's `validate` answers.
pub type Checked = Result<(), Invalid>;

/// Refuses `key` with `message`.
pub fn invalid(key: &'static str, message: impl Into<String>) -> Checked {
    Err(Invalid {
        key,
        message: message.into(),
    })
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

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

impl AppSection {
    pub fn validate(&self) -> Checked {
        if !matches!(self.environment.as_str(), "production" | "development") {
            return invalid("app.environment", "must be production or development");
        }
        Ok(())
    }
}

impl ServerSection {
    /// `production` refuses `*` in `cors_origins`.
    pub fn validate(&self, production: bool) -> Checked {
        if !(0.0..=1.0).contains(&self.ready_disk_used_ratio) {
            return invalid("server.ready_disk_used_ratio", "must be between 0 and 1");
        }
        for (key, list) in [
            ("server.trusted_proxies", &self.trusted_proxies),
            ("server.allow_ips", &self.allow_ips),
            ("server.deny_ips", &self.deny_ips),
        ] {
            if let Err(error) = parse_cidrs(list) {
                return invalid(key, error);
            }
        }
        if let Err(error) = check_origins(&self.cors_origins, production) {
            return invalid("server.cors_origins", error);
        }
        if self.request_timeout_ms == 0 || self.upload_timeout_ms == 0 {
            return invalid("server.request_timeout_ms", "timeouts must be at least 1 ms");
        }
        if self.body_limit_bytes < 1024 {
            return invalid("server.body_limit_bytes", "must be at least 1024");
        }
        Ok(())
    }
}

impl DatabaseSection {
    pub fn validate(&self) -> Checked {
        if self.max_connections != 0 && self.min_connections > self.max_connections {
            return invalid("database.min_connections", "must not exceed database.max_connections");
        }
        if self.statement_timeout_ms == 0 || self.write_statement_timeout_ms == 0 {
            return invalid("database.statement_timeout_ms", "timeouts must be at least 1 ms");
        }
        if self.replica_urls.iter().any(|u| !u.0.starts_with("postgres")) {
            return invalid(
                "database.replica_urls",
                "each must start with postgres:// or postgresql://",
            );
        }
        if let Some(url) = &self.url
            && !url.0.is_empty()
            && !(url.0.starts_with("postgres://") || url.0.starts_with("postgresql://") || url.0.starts_with("sqlite:"))
        {
            return invalid("database.url", "must start with postgres://, postgresql:// or sqlite:");
        }
        Ok(())
    }

    /// Where the data lives: `url`, or the embedded SQLite file in `data_dir`.
    pub fn location(&self, data_dir: &Path) -> keel_store::Location {
        match self.url.as_ref().map(|s| s.0.as_str()) {
            Some(url) if url.starts_with("postgres") => keel_store::Location::Postgres {
                url: url.to_string(),
                schema: self.schema.clone(),
                replicas: self.replica_urls.iter().map(|u| u.0.clone()).collect(),
            },
            Some(url) if url.starts_with("sqlite:") => keel_store::Location::Sqlite(PathBuf::from(
                url.trim_start_matches("sqlite://").trim_start_matches("sqlite:"),
            )),
            _ => keel_store::Location::Sqlite(data_dir.join("keel.db")),
        }
    }

    pub fn pool(&self) -> keel_store::PoolConfig {
        keel_store::PoolConfig {
            max_connections: match self.max_connections {
                // Sized for the machine: four connections per core, between 8 and 64.
                0 => std::thread::available_parallelism()
                    .map(|n| n.get() as u32 * 4)
                    .unwrap_or(8)
                    .clamp(8, 64),
                n => n,
            },
            min_connections: self.min_connections,
            acquire_timeout: Duration::from_millis(self.acquire_timeout_ms),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            max_lifetime: Duration::from_secs(self.max_lifetime_seconds),
            statement_timeout: Duration::from_millis(self.statement_timeout_ms),
            write_statement_timeout: Duration::from_millis(self.write_statement_timeout_ms),
            slow_query: Duration::from_millis(self.slow_query_ms),
            replica_max_lag: Duration::from_millis(self.replica_max_lag_ms),
        }
    }
}

impl LimitsSection {
    pub fn validate(&self) -> Checked {
        if self.max_page_size == 0 || self.max_page_size > 10_000 {
            return invalid("limits.max_page_size", "must be between 1 and 10000");
        }
        if self.default_page_size == 0 || self.default_page_size > self.max_page_size {
            return invalid("limits.default_page_size", "must be between 1 and limits.max_page_size");
        }
        Ok(())
    }
}

impl RedisSection {
    pub fn validate(&self) -> Checked {
        if let Some(url) = &self.url
            && !url.0.is_empty()
            && !(url.0.starts_with("redis://") || url.0.starts_with("rediss://"))
        {
            return invalid("redis.url", "must start with redis:// or rediss://");
        }
        if self.timeout_ms == 0 {
            return invalid("redis.timeout_ms", "must be at least 1");
        }
        Ok(())
    }
}

impl LogSection {
    pub fn validate(&self) -> Checked {
        if !matches!(self.format.as_str(), "json" | "pretty") {
            return invalid("log.format", "must be json or pretty");
        }
        Ok(())
    }
}

/// Parses CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses (`192.0.2.7`).
pub fn parse_cidrs(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| format!("'{text}' is not an IP address or CIDR (e.g. 10.0.0.0/8)"))
        })
        .collect()
}

/// Checks `server.cors_origins`: exact origins (`https://app.example.com`), or `*` outside
/// production.
pub fn check_origins(origins: &[String], production: bool) -> Result<(), String> {
    for origin in origins {
        if origin == "*" {
            if production {
                return Err("'*' (any origin) is refused in production; list the origins".into());
            }
            continue;
        }
        let valid = (origin.starts_with("https://") || origin.starts_with("http://"))
            && !origin.ends_with('/')
            && origin.split("://").nth(1).is_some_and(|rest| {
                !rest.is_empty() && !rest.contains('/') && !rest.contains('*') && !rest.contains(' ')
            })
            && HeaderValue::from_str(origin).is_ok();
        if !valid {
            return Err(format!(
                "'{origin}' is not an origin (scheme://host[:port], no path, e.g. https://app.example.com)"
            ));
        }
    }
    Ok(())
}

/// One line per key of `[app]`, for `docs/CONFIG.md`.
pub const APP_KEYS: &[(&str, &str)] = &[
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
];

/// One line per key of `[server]`, for `docs/CONFIG.md`.
pub const SERVER_KEYS: &[(&str, &str)] = &[
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
];

/// One line per key of `[database]`, for `docs/CONFIG.md`.
pub const DATABASE_KEYS: &[(&str, &str)] = &[
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
];

/// One line per key of `[limits]`, for `docs/CONFIG.md`.
pub const LIMITS_KEYS: &[(&str, &str)] = &[
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
];

/// One line per key of `[redis]`, for `docs/CONFIG.md`.
pub const REDIS_KEYS: &[(&str, &str)] = &[
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
];

/// One line per key of `[log]`, for `docs/CONFIG.md`.
pub const LOG_KEYS: &[(&str, &str)] = &[
    (
        "log.format",
        "`json` (one object per line, with the request id) or `pretty`.",
    ),
    (
        "log.level",
        "A tracing filter such as `info` or `keel_server=debug,info`.",
    ),
];
