//! Health and gauges: the readiness checks (each bounded, the whole within 2 s) and the
//! gauges set at each scrape of `/metrics`.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;

use crate::http::state::AppState;

/// How long one check may take, and the whole answer.
const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// One dependency's state: `ok`, `degraded` or `failing`, with its latency and details.
struct Check {
    name: &'static str,
    status: &'static str,
    required: bool,
    latency_ms: f64,
    details: serde_json::Map<String, serde_json::Value>,
}

impl Check {
    fn json(&self) -> serde_json::Value {
        let mut object = self.details.clone();
        object.insert("status".into(), json!(self.status));
        object.insert("required".into(), json!(self.required));
        object.insert("latency_ms".into(), json!((self.latency_ms * 1000.0).round() / 1000.0));
        serde_json::Value::Object(object)
    }
}

/// Runs a check under `CHECK_TIMEOUT`; an error or a timeout is `failing`.
async fn timed<F>(name: &'static str, required: bool, check: F) -> Check
where
    F: Future<Output = Result<(&'static str, serde_json::Map<String, serde_json::Value>), String>>,
{
    let started = Instant::now();
    let outcome = tokio::time::timeout(CHECK_TIMEOUT, check).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (status, details) = match outcome {
        Ok(Ok((status, details))) => (status, details),
        Ok(Err(error)) => ("failing", details_of(json!({ "error": error }))),
        Err(_) => (
            "failing",
            details_of(json!({ "error": format!("no answer within {} ms", CHECK_TIMEOUT.as_millis()) })),
        ),
    };
    if status == "failing" {
        tracing::warn!(check = name, details = %serde_json::Value::Object(details.clone()), "readiness check failing");
    }
    Check {
        name,
        status,
        required,
        latency_ms,
        details,
    }
}

fn details_of(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// The data directory's disk: failing with less than 1% or 64 MiB free (SQLite and local
/// files cannot write), degraded above `server.ready_disk_used_ratio`.
pub fn disk_status(disk: &crate::ops::system::Disk, degraded_above: f64) -> &'static str {
    let floor = (disk.total / 100).min(64 << 20);
    if disk.available < floor {
        "failing"
    } else if disk.used_ratio() > degraded_above {
        "degraded"
    } else {
        "ok"
    }
}

/// Checks every dependency in use at once, each within a bound and the whole within 2 s:
/// the database (required), the disk of the data directory (required when nearly full),
/// file storage, Redis, replicas and queue lag (optional). 503 when a required check fails
/// or the instance is draining; 200 with `degraded` when an optional one does.
pub async fn readiness(state: &AppState) -> (StatusCode, serde_json::Value) {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "draining", "checks": {} }),
        );
    }
    let checks = tokio::time::timeout(READY_TIMEOUT, run_checks(state)).await;
    let checks = match checks {
        Ok(checks) => checks,
        Err(_) => {
            let body = json!({ "status": "failing", "checks": {}, "error": "the checks did not finish within 2 s" });
            return (StatusCode::SERVICE_UNAVAILABLE, body);
        }
    };
    let required_failing = checks.iter().any(|c| c.required && c.status == "failing");
    let degraded = checks.iter().any(|c| c.status != "ok");
    let overall = if required_failing {
        "failing"
    } else if degraded {
        "degraded"
    } else {
        "ok"
    };
    let mut body_checks = serde_json::Map::new();
    for check in &checks {
        body_checks.insert(check.name.to_string(), check.json());
    }
    let status = if required_failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, json!({ "status": overall, "checks": body_checks }))
}

async fn run_checks(state: &AppState) -> Vec<Check> {
    let database = timed("database", true, async {
        state.db.ping().await.map_err(|e| e.to_string())?;
        let backend = format!("{:?}", state.db.dialect()).to_lowercase();
        Ok(("ok", details_of(json!({ "backend": backend }))))
    });
    let disk = timed("disk", true, async {
        let data_dir = &state.config.app.data_dir;
        let Some(disk) = crate::ops::system::disk(data_dir) else {
            return Ok(("ok", details_of(json!({ "note": "not measurable on this platform" }))));
        };
        let status = disk_status(&disk, state.config.server.ready_disk_used_ratio);
        Ok((
            status,
            details_of(json!({
                "used_ratio": (disk.used_ratio() * 1000.0).round() / 1000.0,
                "available_bytes": disk.available,
            })),
        ))
    });
    let storage = timed("storage", false, async {
        state.storage.probe().await.map_err(|e| e.to_string())?;
        Ok(("ok", details_of(json!({ "backend": state.config.files.backend }))))
    });
    let queues = timed("queues", false, async {
        let stats = crate::jobs::queue_stats(state).await.map_err(|e| e.to_string())?;
        let (queue, lag) = stats
            .iter()
            .map(|q| (q.name.as_str(), q.oldest_available_seconds))
            .fold(("", 0.0f64), |best, q| if q.1 > best.1 { q } else { best });
        let bound = state.config.server.ready_queue_lag_seconds as f64;
        let status = if lag > bound { "degraded" } else { "ok" };
        Ok((
            status,
            details_of(json!({ "oldest_available_seconds": lag, "queue": queue, "bound_seconds": bound })),
        ))
    });
    let (database, disk, storage, queues) = tokio::join!(database, disk, storage, queues);
    let mut checks = vec![database, disk, storage, queues];
    // Redis is optional: when it fails Keel serves from the database and says "degraded".
    if state.shared.enabled() {
        checks.push(
            timed("redis", false, async {
                match state.shared.ping().await {
                    Some(Ok(_)) => Ok(("ok", details_of(json!({ "rate_limits": "shared" })))),
                    // While Redis fails, each instance rate-limits on its own.
                    Some(Err(error)) => Ok((
                        "failing",
                        details_of(json!({ "error": error, "rate_limits": "per instance" })),
                    )),
                    None => Ok(("ok", serde_json::Map::new())),
                }
            })
            .await,
        );
    }
    // Replicas are optional too: reads fall back to the primary.
    let replicas = state.db.replica_states();
    if !replicas.is_empty() {
        let healthy = replicas.iter().all(|r| r.healthy);
        let list: Vec<serde_json::Value> = replicas
            .iter()
            .map(|r| json!({ "name": r.name, "status": if r.healthy { "ok" } else { "failing" }, "lag_ms": r.lag_ms }))
            .collect();
        checks.push(Check {
            name: "replicas",
            status: if healthy { "ok" } else { "failing" },
            required: false,
            latency_ms: 0.0,
            details: details_of(json!({ "replicas": list })),
        });
    }
    checks
}

/// Queue depth by state, the oldest runnable job's wait, and jobs running here (J11). The
/// depth query is bounded by a timeout: a slow database leaves the last values in place.
async fn queue_gauges(state: &AppState) {
    let stats = tokio::time::timeout(std::time::Duration::from_secs(2), crate::jobs::queue_stats(state)).await;
    if let Ok(Ok(stats)) = stats {
        for queue in stats {
            for (job_state, count) in &queue.depth {
                let labels = [("queue", queue.name.clone()), ("state", job_state.to_string())];
                state.metrics.gauge("keel_jobs_depth", &labels, *count as f64);
            }
            let labels = [("queue", queue.name.clone())];
            state.metrics.gauge(
                "keel_jobs_oldest_available_seconds",
                &labels,
                queue.oldest_available_seconds,
            );
            state
                .metrics
                .gauge("keel_jobs_paused", &labels, if queue.paused { 1.0 } else { 0.0 });
        }
    }
    let running = state.jobs.running();
    for queue in &state.schema.app.jobs.queues {
        let labels = [("queue", queue.name.clone())];
        let count = running.get(&queue.name).copied().unwrap_or(0);
        state.metrics.gauge("keel_jobs_running_here", &labels, count as f64);
    }
    state
        .metrics
        .gauge("keel_jobs_leader", &[], if state.jobs.is_leader() { 1.0 } else { 0.0 });
}

/// The latest backups, from the table every instance shares (the run itself happens on one
/// instance): when the last one succeeded, its size and duration, and whether the latest
/// finished run failed.
async fn backup_gauges(state: &AppState) {
    let status = tokio::time::timeout(Duration::from_secs(2), keel_store::backups::backup_status(&state.db)).await;
    let Ok(Ok((success, last))) = status else {
        return;
    };
    let metrics = &state.metrics;
    if let Some(run) = success {
        let finished = run.finished_at.unwrap_or(run.started_at);
        metrics.gauge(
            "keel_backup_last_success_timestamp_seconds",
            &[],
            finished.timestamp_micros() as f64 / 1e6,
        );
        metrics.gauge("keel_backup_last_size_bytes", &[], run.size_bytes.unwrap_or(0) as f64);
        metrics.gauge(
            "keel_backup_last_duration_seconds",
            &[],
            (finished - run.started_at).num_milliseconds() as f64 / 1000.0,
        );
    }
    if let Some(run) = last {
        metrics.gauge(
            "keel_backup_last_failed",
            &[],
            if run.state == "failed" { 1.0 } else { 0.0 },
        );
    }
}

/// Disk, memory limit and database size (O2): the inputs of the disk and memory alerts.
async fn system_gauges(state: &AppState) {
    let metrics = &state.metrics;
    if let Some(disk) = crate::ops::system::disk(&state.config.app.data_dir) {
        metrics.gauge("keel_disk_total_bytes", &[], disk.total as f64);
        metrics.gauge("keel_disk_available_bytes", &[], disk.available as f64);
    }
    if let Some(limit) = crate::ops::system::memory_limit() {
        metrics.gauge("keel_memory_limit_bytes", &[], limit as f64);
    }
    let size = tokio::time::timeout(Duration::from_secs(2), crate::ops::system::database_size(&state.db)).await;
    if let Ok(Ok(bytes)) = size {
        metrics.gauge("keel_db_size_bytes", &[], bytes as f64);
    }
}

/// Sets the gauges read at a scrape and renders every metric in the Prometheus text format.
pub async fn scrape(state: &AppState) -> String {
    let pool = state.db.pool_state();
    for (name, value) in [("in_use", pool.in_use), ("idle", pool.idle), ("waiting", pool.waiting)] {
        state
            .metrics
            .gauge("keel_db_pool_connections", &[("state", name.into())], value as f64);
    }
    state
        .metrics
        .gauge("keel_db_pool_max_connections", &[], pool.max as f64);
    state
        .metrics
        .gauge("keel_uptime_seconds", &[], state.started.elapsed().as_secs_f64());
    for replica in state.db.replica_states() {
        let labels = [("replica", replica.name.clone())];
        state
            .metrics
            .gauge("keel_db_replica_up", &labels, if replica.healthy { 1.0 } else { 0.0 });
        state
            .metrics
            .gauge("keel_db_replica_lag_seconds", &labels, replica.lag_ms as f64 / 1000.0);
    }
    if state.shared.enabled() {
        state
            .metrics
            .gauge("keel_redis_up", &[], if state.shared.healthy() { 1.0 } else { 0.0 });
        if state.config.server.rate_limits {
            // 0 while Redis is down and each instance limits on its own (set here, at the
            // scrape, rather than on every limited request).
            state.metrics.gauge(
                "keel_rate_limit_shared",
                &[],
                if state.shared.healthy() { 1.0 } else { 0.0 },
            );
        }
    }
    queue_gauges(state).await;
    backup_gauges(state).await;
    system_gauges(state).await;
    let mut text = state.metrics.render();
    crate::ops::system::process_metrics(&mut text);
    text
}
