//! Jobs over HTTP: enqueue and status for users (J1 J11), queue administration for the
//! superuser (J3 J11), and the protocol of external workers (J9).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use keel_store::jobs::{self, ClaimParams, Completion, Failure, Job, WorkerKey};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::{is_superuser, rank, require_manager};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, Auth, Params, org_access, token_hash};
use crate::http::state::AppState;
use crate::jobs::{
    EnqueueBody, MAX_CLAIM, enqueue, filter_of, new_job, page, parse_job_id, queue_stats, requested_lease,
    require_superuser, state_conflict, user_of, visible,
};

/// `POST /orgs/{org}/jobs`: members whose role reaches the kind's `enqueue_role`.
pub async fn org_enqueue(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<EnqueueBody>,
) -> ApiResult<impl IntoResponse> {
    let (org, role) = org_access(&state, &principal, &slug).await?;
    let kind = state.schema.app.jobs.kind(&body.kind);
    let allowed = is_superuser(&principal)
        || kind
            .and_then(|k| k.enqueue_role.as_deref())
            .and_then(|needed| state.schema.app.role_rank(needed))
            .is_some_and(|needed| rank(&state, &role).is_some_and(|r| r >= needed));
    if kind.is_some() && !allowed {
        return Err(ApiError::new(
            "job_not_enqueueable",
            format!("your role may not enqueue '{}' jobs", body.kind),
        ));
    }
    let job = new_job(&state, body, Some(org.id), user_of(&principal))?;
    enqueue(&state, job).await
}

/// `GET /jobs/{id}`: the job's state, attempts, errors, result and progress.
pub async fn status(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    let job = jobs::job_get(&state.db, parse_job_id(&id)?)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if !visible(&state, &principal, &job).await? {
        return Err(ApiError::not_found());
    }
    Ok(Json(job))
}

/// `POST /jobs/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    let id = parse_job_id(&id)?;
    let job = jobs::job_get(&state.db, id).await?.ok_or_else(ApiError::not_found)?;
    if !visible(&state, &principal, &job).await? {
        return Err(ApiError::not_found());
    }
    let cancelled = jobs::job_cancel(&state.db, id)
        .await?
        .ok_or_else(|| state_conflict(&job, "cancelled"))?;
    Ok(Json(cancelled))
}

/// `GET /orgs/{org}/jobs`: the org's jobs, newest first (managers); `next` is the `before`
/// cursor of the next page.
pub async fn org_list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(slug): Path<String>,
    params: Params,
) -> ApiResult<Json<Value>> {
    params.only(&["state", "kind", "queue", "limit", "before"])?;
    let (org, role) = org_access(&state, &principal, &slug).await?;
    require_manager(&state, &principal, &role)?;
    let mut filter = filter_of(&params)?;
    filter.org_id = Some(org.id);
    let items = jobs::job_list(&state.db, &filter).await?;
    Ok(Json(page(items, filter.limit)))
}

/// `GET /admin/queues`: every queue's depth by state, oldest waiting job, pause flag, and
/// jobs running on this instance.
pub async fn admin_queues(State(state): State<AppState>, Auth(principal): Auth) -> ApiResult<Json<Value>> {
    require_superuser(&principal)?;
    let stats = queue_stats(&state).await?;
    let running_here = state.jobs.running();
    let items: Vec<Value> = stats
        .into_iter()
        .map(|q| {
            let spec = state.schema.app.jobs.queue(&q.name);
            json!({
                "name": q.name,
                "paused": q.paused,
                "depth": q.depth,
                "oldest_available_seconds": q.oldest_available_seconds,
                "running_here": running_here.get(&q.name).copied().unwrap_or(0),
                "concurrency": spec.map(|s| s.concurrency),
                "rate": spec.and_then(|s| s.rate),
                "per_key": spec.and_then(|s| s.per_key),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items, "leader": state.jobs.is_leader() })))
}

/// `GET /admin/schedules`: each cron entry with its last enqueued tick and its next one,
/// and who leads (the leader enqueues the ticks).
pub async fn admin_schedules(State(state): State<AppState>, Auth(principal): Auth) -> ApiResult<Json<Value>> {
    require_superuser(&principal)?;
    let now = chrono::Utc::now();
    let mut items = vec![];
    for kind in state.schema.app.jobs.kinds.iter() {
        let Some(cron) = &kind.cron else { continue };
        let last = jobs::cron_last_tick(&state.db, &kind.name).await?;
        let next = keel_spec::parse_cron(&cron.schedule)
            .ok()
            .and_then(|schedule| keel_jobs::cron::next_tick(&schedule, now));
        items.push(json!({
            "kind": kind.name,
            "queue": kind.queue,
            "schedule": cron.schedule,
            "catch_up": cron.catch_up,
            "last_tick": last,
            "next_tick": next,
        }));
    }
    let leaders: Vec<Value> = jobs::leaders(&state.db)
        .await?
        .into_iter()
        .map(|(name, owner, expires)| json!({ "name": name, "owner": owner, "expires_at": expires }))
        .collect();
    Ok(Json(json!({
        "items": items,
        "leaders": leaders,
        "this_instance_leads": state.jobs.is_leader(),
    })))
}

/// `POST /admin/queues/{queue}/pause`, `/resume`, and `/retry_dead` (every dead job of the
/// queue runs again).
pub async fn admin_pause(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((queue, action)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    require_superuser(&principal)?;
    if state.schema.app.jobs.queue(&queue).is_none() {
        return Err(ApiError::not_found());
    }
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        "retry_dead" => {
            // At most 10,000 per call, so one statement stays short; call again for more.
            // Each job gets its kind's attempts again (the largest among the queue's kinds).
            let kinds = state.schema.app.jobs.kinds.iter().filter(|k| k.queue == queue);
            let attempts = kinds.map(|k| k.attempts).max().unwrap_or(1).clamp(1, 100) as i32;
            let retried = jobs::queue_retry_dead(&state.db, &queue, attempts, 10_000).await?;
            if retried > 0 {
                state.jobs.wake(&queue);
            }
            return Ok(Json(json!({ "name": queue, "retried": retried })));
        }
        _ => return Err(ApiError::new("route_not_found", "use /pause, /resume or /retry_dead")),
    };
    jobs::queue_pause(&state.db, &queue, paused).await?;
    if !paused {
        state.jobs.wake(&queue);
    }
    Ok(Json(json!({ "name": queue, "paused": paused })))
}

/// `GET /admin/jobs`: jobs of every org, filtered by queue, state and kind.
pub async fn admin_list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    params: Params,
) -> ApiResult<Json<Value>> {
    require_superuser(&principal)?;
    params.only(&["state", "kind", "queue", "limit", "before"])?;
    let filter = filter_of(&params)?;
    let items = jobs::job_list(&state.db, &filter).await?;
    Ok(Json(page(items, filter.limit)))
}

/// `POST /admin/jobs`: enqueues any kind, outside any org.
pub async fn admin_enqueue(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ApiJson(body): ApiJson<EnqueueBody>,
) -> ApiResult<impl IntoResponse> {
    require_superuser(&principal)?;
    let job = new_job(&state, body, None, user_of(&principal))?;
    enqueue(&state, job).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    /// More attempts to allow (default: the kind's attempts).
    #[serde(default)]
    attempts: Option<u32>,
}

/// `POST /admin/jobs/{id}/retry` (a dead, cancelled or waiting job runs again now),
/// `/cancel`; `DELETE /admin/jobs/{id}` discards a finished job.
pub async fn admin_action(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Job>> {
    require_superuser(&principal)?;
    let body: RetryBody = crate::http::extract::optional_json(&body)?;
    let id = parse_job_id(&id)?;
    let job = jobs::job_get(&state.db, id).await?.ok_or_else(ApiError::not_found)?;
    let changed = match action.as_str() {
        "retry" => {
            let default = state.schema.app.jobs.kind(&job.kind).map(|k| k.attempts).unwrap_or(1);
            let attempts = body.attempts.unwrap_or(default).clamp(1, 100);
            let retried = jobs::job_retry(&state.db, id, attempts as i32).await?;
            if retried.is_some() {
                state.jobs.wake(&job.queue);
            }
            retried.ok_or_else(|| state_conflict(&job, "retried"))?
        }
        "cancel" => jobs::job_cancel(&state.db, id)
            .await?
            .ok_or_else(|| state_conflict(&job, "cancelled"))?,
        _ => return Err(ApiError::new("route_not_found", "use /retry or /cancel")),
    };
    Ok(Json(changed))
}

pub async fn admin_discard(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_superuser(&principal)?;
    let id = parse_job_id(&id)?;
    let job = jobs::job_get(&state.db, id).await?.ok_or_else(ApiError::not_found)?;
    if !jobs::job_delete(&state.db, id).await? {
        return Err(state_conflict(&job, "discarded (only finished jobs are)"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWorkerKey {
    name: String,
    queues: Vec<String>,
}

/// `POST /admin/worker_keys`: a key for external workers of some queues; the token is shown
/// once.
pub async fn worker_key_create(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ApiJson(body): ApiJson<NewWorkerKey>,
) -> ApiResult<impl IntoResponse> {
    require_superuser(&principal)?;
    if body.name.trim().is_empty() || body.name.len() > 100 {
        return Err(ApiError::new("invalid_json", "'name' must be 1 to 100 characters"));
    }
    if body.queues.is_empty() {
        return Err(ApiError::new("invalid_json", "'queues' must name at least one queue"));
    }
    for queue in &body.queues {
        if state.schema.app.jobs.queue(queue).is_none() {
            return Err(ApiError::new("invalid_json", format!("no queue '{queue}' is declared")));
        }
    }
    let token = crate::auth::new_token("kw_");
    let key = jobs::worker_key_create(&state.db, &token_hash(&token), &body.name, &body.queues).await?;
    Ok((StatusCode::CREATED, Json(json!({ "key": key, "token": token }))))
}

pub async fn worker_key_list(State(state): State<AppState>, Auth(principal): Auth) -> ApiResult<Json<Value>> {
    require_superuser(&principal)?;
    Ok(Json(json!({ "items": jobs::worker_key_list(&state.db).await? })))
}

pub async fn worker_key_revoke(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    require_superuser(&principal)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found())?;
    if jobs::worker_key_revoke(&state.db, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

/// An external worker, authenticated by its worker key.
pub struct Worker(pub WorkerKey);

impl axum::extract::FromRequestParts<AppState> for Worker {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| t.starts_with("kw_") && t.len() <= 256)
            .ok_or_else(|| ApiError::new("unauthenticated", "send 'Authorization: Bearer <worker key>'"))?;
        jobs::worker_key_find(&state.db, &token_hash(token))
            .await?
            .map(Worker)
            .ok_or_else(|| ApiError::new("unauthenticated", "the worker key is unknown or revoked"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    queue: String,
    /// The worker's name (recorded as the lease owner).
    worker: String,
    #[serde(default)]
    kinds: Option<Vec<String>>,
    #[serde(default)]
    limit: Option<u32>,
    /// Wait up to this long for a job when none is ready (long poll).
    #[serde(default)]
    wait_ms: Option<u64>,
    /// The lease (default `jobs.lease_seconds`); heartbeats extend it.
    #[serde(default)]
    lease_ms: Option<u64>,
}

/// `POST /workers/claim`: up to `limit` jobs of a queue the key may serve, each with its
/// attempt (the fencing token to send back) and lease expiry.
pub async fn worker_claim(
    State(state): State<AppState>,
    Worker(key): Worker,
    ApiJson(body): ApiJson<ClaimBody>,
) -> ApiResult<Json<Value>> {
    if !key.queues.contains(&body.queue) {
        return Err(ApiError::forbidden());
    }
    let Some(queue) = state.schema.app.jobs.queue(&body.queue) else {
        return Err(ApiError::not_found());
    };
    if body.worker.is_empty() || body.worker.len() > 100 {
        return Err(ApiError::new("invalid_json", "'worker' must be 1 to 100 characters"));
    }
    let limit = body.limit.unwrap_or(1);
    if !(1..=MAX_CLAIM).contains(&limit) {
        return Err(ApiError::new("limit_too_large", "'limit' is between 1 and 100"));
    }
    let max_wait = state.config.jobs.max_claim_wait_ms;
    let wait = Duration::from_millis(body.wait_ms.unwrap_or(0).min(max_wait));
    let lease = requested_lease(&state, body.lease_ms);
    let owner = format!("external:{}:{}", key.name, body.worker);
    let claim = ClaimParams {
        queue: &body.queue,
        owner: &owner,
        limit,
        lease,
        per_key: queue.per_key,
        rate: queue.rate,
        kinds: body.kinds.as_deref(),
    };
    let deadline = tokio::time::Instant::now() + wait;
    let waker = state.jobs.waker(&body.queue).unwrap_or_default();
    loop {
        // Registered before the claim, so an enqueue between the claim and the wait is not missed.
        let woken = waker.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let claimed = jobs::job_claim(&state.db, &claim).await?;
        if !claimed.is_empty() || tokio::time::Instant::now() >= deadline {
            let items: Vec<Value> = claimed
                .into_iter()
                .map(|job| {
                    keel_jobs::Observer::claimed(state.metrics.as_ref(), &body.queue, &job.kind, job.waited);
                    json!({
                        "id": job.id,
                        "kind": job.kind,
                        "attempt": job.attempt,
                        "max_attempts": job.max_attempts,
                        "org_id": job.org_id,
                        "payload": serde_json::from_str::<Value>(&job.payload).unwrap_or(Value::Null),
                        "lease_ms": lease.as_millis() as u64,
                    })
                })
                .collect();
            return Ok(Json(json!({ "items": items })));
        }
        // Long poll: at once when this instance hears of an enqueue (its own, or another
        // instance's through LISTEN/NOTIFY), else check again every 200 ms.
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleBody {
    attempt: i32,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error: Option<String>,
    /// On fail: `false` makes the job dead at once.
    #[serde(default)]
    retry: Option<bool>,
    #[serde(default)]
    lease_ms: Option<u64>,
    #[serde(default)]
    progress: Option<Value>,
}

/// `POST /workers/jobs/{id}/heartbeat|complete|fail|progress`, each naming the attempt the
/// worker holds; a worker whose lease was taken over gets 409 `lease_lost`.
pub async fn worker_settle(
    State(state): State<AppState>,
    Worker(key): Worker,
    Path((id, action)): Path<(String, String)>,
    ApiJson(body): ApiJson<SettleBody>,
) -> ApiResult<Json<Value>> {
    let id = parse_job_id(&id)?;
    let job = jobs::job_get(&state.db, id).await?.ok_or_else(ApiError::not_found)?;
    if !key.queues.contains(&job.queue) {
        return Err(ApiError::not_found());
    }
    let lost = || ApiError::new("lease_lost", "this worker no longer holds the job's lease");
    match action.as_str() {
        "heartbeat" => {
            let lease = requested_lease(&state, body.lease_ms);
            if jobs::job_heartbeat(&state.db, &[(id, body.attempt)], lease)
                .await?
                .is_empty()
            {
                return Err(lost());
            }
        }
        "progress" => {
            let progress = body.progress.unwrap_or(Value::Null);
            if !jobs::job_progress(&state.db, id, body.attempt, progress).await? {
                return Err(lost());
            }
        }
        "complete" => {
            let completion = Completion {
                id,
                attempt: body.attempt,
                result: body.result,
            };
            if jobs::job_complete_many(&state.db, &[completion]).await?.is_empty() {
                return Err(lost());
            }
            keel_jobs::Observer::finished(
                state.metrics.as_ref(),
                &job.queue,
                &job.kind,
                keel_jobs::Outcome::Completed,
                Duration::ZERO,
            );
        }
        "fail" => {
            let error = body.error.unwrap_or_else(|| "the worker reported a failure".into());
            let permanent = body.retry == Some(false);
            let retry_in = state
                .schema
                .app
                .jobs
                .kind(&job.kind)
                .and_then(|k| keel_jobs::policy::retry_in(k, body.attempt, job.max_attempts as i32, permanent));
            let failure = Failure {
                id,
                attempt: body.attempt,
                error,
                retry_in,
            };
            if jobs::job_fail_many(&state.db, &[failure]).await?.is_empty() {
                return Err(lost());
            }
            let outcome = if retry_in.is_some() {
                keel_jobs::Outcome::Retried
            } else {
                keel_jobs::Outcome::Dead
            };
            keel_jobs::Observer::finished(state.metrics.as_ref(), &job.queue, &job.kind, outcome, Duration::ZERO);
        }
        _ => {
            return Err(ApiError::new(
                "route_not_found",
                "use heartbeat, progress, complete or fail",
            ));
        }
    }
    let job = jobs::job_get(&state.db, id).await?.ok_or_else(ApiError::not_found)?;
    Ok(Json(
        json!({ "id": job.id, "state": job.state, "attempt": job.attempt, "lease_expires_at": job.lease_expires_at }),
    ))
}
