//! The jobs API's logic: checking and inserting enqueued jobs, who may see a job, list
//! filters, queue statistics (the named interface alerts and health read), and worker leases.

pub mod settings;

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use keel_store::jobs::{self, Job, JobFilter, JobState, NewJob};
use keel_store::system::Principal;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::roles::{is_superuser, require_manager};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Params, org_access};
use crate::http::state::AppState;
/// The longest unique key and the largest payload accepted.
pub(crate) const MAX_UNIQUE_KEY: usize = 200;
pub(crate) const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// The most jobs a list or a claim returns.
pub(crate) const MAX_LIST: u32 = 500;
pub(crate) const MAX_CLAIM: u32 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody {
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) payload: Option<Value>,
    #[serde(default)]
    pub(crate) priority: Option<i32>,
    /// Run no earlier than this many milliseconds from now.
    #[serde(default)]
    pub(crate) delay_ms: Option<u64>,
    #[serde(default)]
    pub(crate) unique_key: Option<String>,
}

/// Checks an enqueue request and turns it into a job of its kind.
pub(crate) fn new_job(state: &AppState, body: EnqueueBody, org: Option<Uuid>, user: Option<Uuid>) -> ApiResult<NewJob> {
    let kind = state
        .schema
        .app
        .jobs
        .kind(&body.kind)
        .ok_or_else(|| ApiError::new("unknown_job_kind", format!("no job kind '{}' is declared", body.kind)))?;
    let payload = body.payload.unwrap_or_else(|| json!({}));
    if !payload.is_object() {
        return Err(ApiError::new("invalid_json", "'payload' must be a JSON object"));
    }
    if payload.to_string().len() > MAX_PAYLOAD_BYTES {
        return Err(ApiError::new("payload_too_large", "the payload is larger than 256 KiB"));
    }
    let mut job = NewJob::of_kind(kind, payload, org, user);
    if let Some(priority) = body.priority {
        if !(-1_000..=1_000).contains(&priority) {
            return Err(ApiError::new(
                "invalid_json",
                "'priority' must be between -1000 and 1000",
            ));
        }
        job.priority = priority;
    }
    if let Some(delay) = body.delay_ms {
        if delay > 366 * 86_400_000 {
            return Err(ApiError::new("invalid_json", "'delay_ms' must be at most a year"));
        }
        job.delay = Duration::from_millis(delay);
    }
    if let Some(key) = body.unique_key {
        if key.is_empty() || key.len() > MAX_UNIQUE_KEY {
            return Err(ApiError::new("invalid_json", "'unique_key' must be 1 to 200 bytes"));
        }
        job.unique_key = Some(key);
    }
    Ok(job)
}

/// Inserts a job in a transaction of its own and, unless its unique key was taken, counts it
/// and wakes this instance's workers.
pub(crate) async fn insert(state: &AppState, job: &NewJob) -> Result<jobs::Enqueued, keel_store::StoreError> {
    let enqueued = jobs::job_enqueue(&state.db, job).await?;
    if !enqueued.duplicate {
        keel_jobs::Observer::enqueued(state.metrics.as_ref(), &job.queue, &job.kind, 1);
        state.jobs.wake(&job.queue);
    }
    Ok(enqueued)
}

/// [`insert`], answered as the enqueue routes answer: 201, or 200 for a duplicate.
pub(crate) async fn enqueue(state: &AppState, job: NewJob) -> ApiResult<impl IntoResponse + use<>> {
    let enqueued = insert(state, &job).await?;
    let status = if enqueued.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = json!({
        "id": enqueued.id,
        "kind": job.kind,
        "queue": job.queue,
        "state": enqueued.state,
        "duplicate": enqueued.duplicate,
    });
    Ok((status, Json(body)))
}

pub(crate) fn user_of(principal: &Principal) -> Option<Uuid> {
    match principal {
        Principal::User { user, .. } => Some(user.id),
        Principal::ApiKey(_) => None,
    }
}
/// Whether the caller may see (and cancel) a job: whoever enqueued it, the org's managers,
/// the superuser.
pub(crate) async fn visible(state: &AppState, principal: &Principal, job: &Job) -> ApiResult<bool> {
    if is_superuser(principal) || (job.created_by.is_some() && job.created_by == user_of(principal)) {
        return Ok(true);
    }
    let Some(org_id) = job.org_id else { return Ok(false) };
    let slug = match keel_store::system::org_by_id(&state.db, org_id).await? {
        Some(org) => org.slug,
        None => return Ok(false),
    };
    match org_access(state, principal, &slug).await {
        Ok((_, role)) => Ok(require_manager(state, principal, &role).is_ok()),
        Err(_) => Ok(false),
    }
}

pub(crate) fn parse_job_id(id: &str) -> ApiResult<i64> {
    id.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(ApiError::not_found)
}
pub(crate) fn state_conflict(job: &Job, wanted: &str) -> ApiError {
    ApiError::new(
        "job_state_conflict",
        format!("a {} job cannot be {wanted}", job.state.as_str()),
    )
    .with_details(json!({ "state": job.state }))
}

pub(crate) fn filter_of(params: &Params) -> ApiResult<JobFilter> {
    let state = match params.get("state") {
        Some(text) => Some(JobState::parse(text).ok_or_else(|| {
            ApiError::new(
                "invalid_query",
                "'state' is one of: available, scheduled, running, retryable, completed, cancelled, dead",
            )
        })?),
        None => None,
    };
    let limit = match params.get("limit") {
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIST).contains(n))
            .ok_or_else(|| ApiError::new("limit_too_large", "'limit' is between 1 and 500"))?,
        None => 50,
    };
    let before = match params.get("before") {
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| ApiError::new("invalid_cursor", "'before' is a job id"))?,
        ),
        None => None,
    };
    Ok(JobFilter {
        queue: params.get("queue").map(str::to_string),
        state,
        kind: params.get("kind").map(str::to_string),
        org_id: None,
        before,
        limit,
    })
}

pub(crate) fn page(items: Vec<Job>, limit: u32) -> Value {
    let next = (items.len() as u32 == limit)
        .then(|| items.last().map(|j| j.id.to_string()))
        .flatten();
    json!({ "items": items, "next": next })
}
pub(crate) use crate::auth::roles::require_superuser;

/// Every queue's stats, declared queues without jobs included (at zero).
pub(crate) async fn queue_stats(state: &AppState) -> Result<Vec<jobs::QueueStats>, keel_store::StoreError> {
    let mut stats = jobs::queue_stats(&state.db).await?;
    for declared in &state.schema.app.jobs.queues {
        if !stats.iter().any(|q| q.name == declared.name) {
            stats.push(jobs::QueueStats {
                name: declared.name.clone(),
                paused: false,
                depth: JobState::ALL.iter().map(|s| (s.as_str(), 0)).collect(),
                oldest_available_seconds: 0.0,
            });
        }
    }
    Ok(stats)
}

/// The lease a worker asked for (default `jobs.lease_seconds`), between 1 s and an hour.
pub(crate) fn requested_lease(state: &AppState, lease_ms: Option<u64>) -> Duration {
    Duration::from_millis(
        lease_ms
            .unwrap_or(state.config.jobs.lease_seconds * 1000)
            .clamp(1_000, 3_600_000),
    )
}
