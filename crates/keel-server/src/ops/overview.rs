//! `GET /api/v1/admin/overview` (superuser): one instance's state at a glance, for the
//! console's first screen and for people with `curl`: the readiness checks, the last hour
//! of API traffic by minute (from the windows the alerts keep, so no Prometheus is needed),
//! the pool, the queues, the response cache, memory and disk, and the alerts that fire.

use std::sync::atomic::Ordering;

use chrono::Utc;
use serde_json::{Value, json};

use crate::http::error::ApiResult;
use crate::http::state::AppState;

/// Minutes of traffic the overview shows (the alerts keep one hour).
const MINUTES: usize = 60;

pub async fn overview(state: &AppState) -> ApiResult<Value> {
    let now = Utc::now();
    let (_, ready) = crate::ops::health::readiness(state).await;
    let minutes = state.alerts.traffic.minutes(now, MINUTES);
    let requests: u64 = minutes.iter().map(|m| m.requests).sum();
    let errors: u64 = minutes.iter().map(|m| m.errors).sum();
    let pool = state.db.pool_state();
    let queues: Vec<Value> = crate::jobs::queue_stats(state)
        .await?
        .into_iter()
        .map(|q| {
            json!({
                "name": q.name,
                "paused": q.paused,
                "depth": q.depth,
                "oldest_available_seconds": q.oldest_available_seconds,
            })
        })
        .collect();
    let (hits, misses) = (
        state.cache.hits.load(Ordering::Relaxed),
        state.cache.misses.load(Ordering::Relaxed),
    );
    let disk = crate::ops::system::disk(&state.config.app.data_dir);
    let firing: Vec<_> = state
        .alerts
        .states()
        .into_iter()
        .filter(|rule| rule.state == "firing")
        .collect();
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "backend": format!("{:?}", state.db.dialect()).to_lowercase(),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "readiness": ready,
        "traffic": {
            "minutes": minutes,
            "requests": requests,
            "errors": errors,
            "error_rate": (requests > 0).then(|| errors as f64 / requests as f64),
        },
        "pool": { "in_use": pool.in_use, "idle": pool.idle, "waiting": pool.waiting, "max": pool.max },
        "queues": queues,
        "leader": state.jobs.is_leader(),
        "cache": {
            "hits": hits,
            "misses": misses,
            "hit_ratio": (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
        },
        "memory": {
            "resident_bytes": crate::ops::system::resident_memory(),
            "limit_bytes": crate::ops::system::memory_limit(),
        },
        "disk": disk.map(|d| json!({ "total_bytes": d.total, "available_bytes": d.available, "used_ratio": d.used_ratio() })),
        "alerts_firing": firing,
    }))
}
