//! Every metric `/metrics` serves (O2): name, type, labels and meaning. `Metrics::new`
//! describes each (the `# HELP` lines), `keel docs` writes `docs/METRICS.md` from it, and a
//! test fails when `/metrics` shows a metric that is not here.
//!
//! Labels are bounded: routes are templates (`/api/v1/orgs/{org}/{collection}`), never raw
//! paths; collections, queues, kinds and classes come from the spec; codes from `CODES`.

pub struct MetricDoc {
    pub name: &'static str,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn m(name: &'static str, kind: &'static str, labels: &'static [&'static str], help: &'static str) -> MetricDoc {
    MetricDoc {
        name,
        kind,
        labels,
        help,
    }
}

pub const METRICS: &[MetricDoc] = &[
    m(
        "keel_http_requests_total",
        "counter",
        &["method", "route", "status"],
        "HTTP requests answered, by the matched route template.",
    ),
    m(
        "keel_http_request_duration_seconds",
        "histogram",
        &["method", "route", "status"],
        "Time to answer a request (0.5 ms to 10 s buckets); p50/p95/p99 come from histogram_quantile.",
    ),
    m(
        "keel_http_errors_total",
        "counter",
        &["code"],
        "Error answers by their stable error code (docs/ERRORS.md).",
    ),
    m(
        "keel_unexpected_errors_total",
        "counter",
        &[],
        "Unexpected errors and caught panics (500 internal); grouped by fingerprint at GET /api/v1/admin/errors.",
    ),
    m(
        "keel_db_statements_total",
        "counter",
        &["route"],
        "SQL statements run by requests, by route.",
    ),
    m(
        "keel_db_query_duration_seconds",
        "histogram",
        &["route"],
        "Database time of one request (all its statements).",
    ),
    m(
        "keel_db_pool_acquire_seconds",
        "histogram",
        &["route"],
        "Time one request waited for database connections.",
    ),
    m(
        "keel_db_pool_connections",
        "gauge",
        &["state"],
        "Connections of the pool: in_use, idle, and callers waiting for one.",
    ),
    m(
        "keel_db_pool_max_connections",
        "gauge",
        &[],
        "The pool's maximum size (the readers on SQLite).",
    ),
    m(
        "keel_db_size_bytes",
        "gauge",
        &[],
        "The database's size on disk (the SQLite file with its WAL; the app schema's tables and indexes on PostgreSQL).",
    ),
    m(
        "keel_db_replica_up",
        "gauge",
        &["replica"],
        "1 while a read replica is healthy and within the lag bound.",
    ),
    m(
        "keel_db_replica_lag_seconds",
        "gauge",
        &["replica"],
        "A read replica's replay lag.",
    ),
    m(
        "keel_redis_up",
        "gauge",
        &[],
        "1 while Redis answers (only with redis.url).",
    ),
    m(
        "keel_token_cache_total",
        "counter",
        &["result"],
        "Token lookups answered from the session cache (hit) or the database (miss).",
    ),
    m(
        "keel_jobs_enqueued_total",
        "counter",
        &["queue", "kind"],
        "Jobs enqueued by this instance.",
    ),
    m(
        "keel_jobs_finished_total",
        "counter",
        &["queue", "kind", "outcome"],
        "Jobs this instance ran, by outcome (completed, retry, dead, cancelled, …).",
    ),
    m(
        "keel_jobs_queue_wait_seconds",
        "histogram",
        &["queue", "kind"],
        "Time from a job becoming runnable to its claim.",
    ),
    m(
        "keel_jobs_run_seconds",
        "histogram",
        &["queue", "kind"],
        "Time a job's handler ran.",
    ),
    m(
        "keel_jobs_rescued_total",
        "counter",
        &["queue"],
        "Jobs whose lease expired and were made runnable again by the leader.",
    ),
    m(
        "keel_jobs_depth",
        "gauge",
        &["queue", "state"],
        "Jobs per queue and state (available, scheduled, running, retryable, dead, …).",
    ),
    m(
        "keel_jobs_oldest_available_seconds",
        "gauge",
        &["queue"],
        "How long the oldest runnable job of a queue has waited (queue lag).",
    ),
    m("keel_jobs_paused", "gauge", &["queue"], "1 while a queue is paused."),
    m(
        "keel_jobs_running_here",
        "gauge",
        &["queue"],
        "Jobs running on this instance.",
    ),
    m(
        "keel_jobs_leader",
        "gauge",
        &[],
        "1 on the instance that runs cron and the rescuer.",
    ),
    m(
        "keel_cache_requests_total",
        "counter",
        &["collection", "result"],
        "Cacheable reads answered from the response cache (hit) or not (miss, bypass).",
    ),
    m("keel_cache_bytes", "gauge", &[], "Bytes held by the response cache."),
    m(
        "keel_cache_entries",
        "gauge",
        &[],
        "Answers held by the response cache.",
    ),
    m(
        "keel_cache_evictions_total",
        "counter",
        &[],
        "Answers the response cache evicted to stay within limits.cache_max_bytes.",
    ),
    m(
        "keel_realtime_streams",
        "gauge",
        &[],
        "Realtime streams (SSE) open on this instance.",
    ),
    m(
        "keel_realtime_events_sent_total",
        "counter",
        &[],
        "Events queued to realtime streams.",
    ),
    m(
        "keel_realtime_events_dropped_total",
        "counter",
        &[],
        "Events a slow client's full buffer could not take; the client got `lost` and was disconnected.",
    ),
    m(
        "keel_realtime_delivery_seconds",
        "histogram",
        &[],
        "From a change's commit to its event being queued to the streams that see it.",
    ),
    m(
        "keel_realtime_rule_statements_total",
        "counter",
        &[],
        "Statements that decided which streams see a batch of changes (one per batch and shape, whatever the number of subscribers).",
    ),
    m(
        "keel_rate_limited_total",
        "counter",
        &["class", "store"],
        "Requests refused by a rate limit, by route class and where the count lives (redis, local).",
    ),
    m(
        "keel_rate_limit_shared",
        "gauge",
        &[],
        "1 while rate limits are counted in Redis for every instance, 0 while each instance counts alone.",
    ),
    m(
        "keel_login_lockouts_total",
        "counter",
        &["scope"],
        "Logins refused because the account or the address is locked.",
    ),
    m(
        "keel_account_emails_total",
        "counter",
        &["purpose", "result"],
        "Account emails asked for (verify, change_email, reset): `queued`, or `throttled` by `auth.account_emails_per_hour`.",
    ),
    m(
        "keel_account_tokens_used_total",
        "counter",
        &["purpose"],
        "Verification, email-change and reset links used successfully.",
    ),
    m(
        "keel_oidc_signins_total",
        "counter",
        &["provider", "result"],
        "Sign-ins with a provider by how they ended: `signed_in`, `linked`, or an error code (`oidc_unavailable`, `oidc_rejected`, `invalid_state`, `oidc_email_unverified`, …).",
    ),
    m(
        "keel_backup_runs_total",
        "counter",
        &["result"],
        "Scheduled backups this instance ran, by result (succeeded, failed).",
    ),
    m(
        "keel_backup_last_success_timestamp_seconds",
        "gauge",
        &[],
        "When the latest successful backup finished (Unix time; absent before the first).",
    ),
    m(
        "keel_backup_last_size_bytes",
        "gauge",
        &[],
        "The latest successful backup's size.",
    ),
    m(
        "keel_backup_last_duration_seconds",
        "gauge",
        &[],
        "How long the latest successful backup took.",
    ),
    m(
        "keel_backup_last_failed",
        "gauge",
        &[],
        "1 when the latest finished backup failed.",
    ),
    m(
        "keel_alerts_firing",
        "gauge",
        &["alert", "severity"],
        "1 while a built-in alert fires (docs/OPERATIONS.md, Alerts).",
    ),
    m(
        "keel_alert_notifications_total",
        "counter",
        &["channel", "result"],
        "Alert notifications sent (webhook, email), by result (sent, failed).",
    ),
    m(
        "keel_uptime_seconds",
        "gauge",
        &[],
        "Seconds since this instance started.",
    ),
    m(
        "keel_memory_limit_bytes",
        "gauge",
        &[],
        "The memory this process may use: its cgroup's limit, else the machine's memory.",
    ),
    m(
        "keel_disk_total_bytes",
        "gauge",
        &[],
        "Size of the filesystem holding app.data_dir.",
    ),
    m(
        "keel_disk_available_bytes",
        "gauge",
        &[],
        "Bytes available to Keel on the filesystem holding app.data_dir.",
    ),
    m(
        "process_cpu_seconds_total",
        "counter",
        &[],
        "CPU time (user and system) this process used.",
    ),
    m(
        "process_resident_memory_bytes",
        "gauge",
        &[],
        "Resident memory of this process.",
    ),
    m(
        "process_virtual_memory_bytes",
        "gauge",
        &[],
        "Virtual memory of this process.",
    ),
    m(
        "process_open_fds",
        "gauge",
        &[],
        "Open file descriptors (sockets included).",
    ),
    m("process_max_fds", "gauge", &[], "The limit on open file descriptors."),
    m(
        "process_start_time_seconds",
        "gauge",
        &[],
        "When this process started (Unix time).",
    ),
];

pub fn find(name: &str) -> Option<&'static MetricDoc> {
    METRICS.iter().find(|m| m.name == name)
}

/// `docs/METRICS.md`, generated from [`METRICS`].
pub fn metrics_markdown() -> String {
    let mut out = String::from(
        "# Metrics\n\n`GET /metrics` serves these in the Prometheus text format (every metric has its `# HELP`).\nThis file is generated from `crates/keel-server/src/http/catalogue.rs` by `keel docs`; a test fails when it is stale or when `/metrics` shows a metric missing here.\nMetrics are per instance, as Prometheus expects, except the `keel_jobs_depth`, `keel_jobs_oldest_available_seconds` and `keel_backup_last_*` gauges, which every instance reads from the shared database.\nLabels are bounded: `route` is the matched template (`/api/v1/orgs/{org}/{collection}`), never a raw path; collections, queues, kinds and classes come from the spec; `code` from docs/ERRORS.md.\n\n| metric | type | labels | meaning |\n| --- | --- | --- | --- |\n",
    );
    for metric in METRICS {
        let labels = if metric.labels.is_empty() {
            "".to_string()
        } else {
            metric
                .labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {labels} | {} |\n",
            metric.name, metric.kind, metric.help
        ));
    }
    out
}
