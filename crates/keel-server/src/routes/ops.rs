//! Operations endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

pub async fn live() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Checks the database within a bound; 503 when it fails or the instance is draining.
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining", "checks": {} })),
        )
            .into_response();
    }
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(2), state.db.ping()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (ok, error) = match outcome {
        Ok(Ok(())) => (true, None),
        Ok(Err(e)) => (false, Some(e.to_string())),
        Err(_) => (false, Some("timed out after 2 s".to_string())),
    };
    if let Some(error) = &error {
        tracing::warn!(error = %error, "readiness: database check failed");
    }
    let mut checks = json!({
        "database": {
            "status": if ok { "ok" } else { "failing" },
            "required": true,
            "latency_ms": latency_ms,
            "backend": format!("{:?}", state.db.dialect()).to_lowercase(),
        }
    });
    // Redis is optional: when it fails Keel serves from the database and says "degraded".
    let mut degraded = false;
    if let Some(outcome) = state.shared.ping().await {
        degraded = outcome.is_err();
        // While Redis fails, each instance rate-limits on its own: limits hold per instance.
        checks["redis"] = match outcome {
            Ok(latency) => json!({
                "status": "ok",
                "required": false,
                "latency_ms": latency.as_secs_f64() * 1000.0,
                "rate_limits": "shared",
            }),
            Err(error) => {
                json!({ "status": "failing", "required": false, "error": error, "rate_limits": "per instance" })
            }
        };
    }
    // Replicas are optional too: reads fall back to the primary.
    let replicas = state.db.replica_states();
    if !replicas.is_empty() {
        degraded |= replicas.iter().any(|r| !r.healthy);
        checks["replicas"] = json!(replicas
            .iter()
            .map(|r| json!({ "name": r.name, "status": if r.healthy { "ok" } else { "failing" }, "required": false, "lag_ms": r.lag_ms }))
            .collect::<Vec<_>>());
    }
    let overall = match (ok, degraded) {
        (false, _) => "failing",
        (true, true) => "degraded",
        (true, false) => "ok",
    };
    let body = json!({ "status": overall, "checks": checks });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Queue depth by state, the oldest runnable job's wait, and jobs running here (J11). The
/// depth query is bounded by a timeout: a slow database leaves the last values in place.
async fn queue_gauges(state: &AppState) {
    let stats = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        crate::routes::jobs::queue_stats(state),
    )
    .await;
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
    if let Some(disk) = crate::system::disk(&state.config.app.data_dir) {
        metrics.gauge("keel_disk_total_bytes", &[], disk.total as f64);
        metrics.gauge("keel_disk_available_bytes", &[], disk.available as f64);
    }
    if let Some(limit) = crate::system::memory_limit() {
        metrics.gauge("keel_memory_limit_bytes", &[], limit as f64);
    }
    let size = tokio::time::timeout(Duration::from_secs(2), crate::system::database_size(&state.db)).await;
    if let Ok(Ok(bytes)) = size {
        metrics.gauge("keel_db_size_bytes", &[], bytes as f64);
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
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
    }
    queue_gauges(&state).await;
    backup_gauges(&state).await;
    system_gauges(&state).await;
    let mut text = state.metrics.render();
    crate::system::process_metrics(&mut text);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

pub async fn openapi(State(state): State<AppState>) -> Response {
    Json(crate::openapi::document(&state.schema.app)).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::new("route_not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new("method_not_allowed", "this route does not take this method")
}
