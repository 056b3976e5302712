//! Job streams: `GET /api/v1/jobs/{id}/events` sends a job's state and progress as they
//! change, to whoever may read its status. One statement a tick reads every job streamed on
//! the instance. A job's final state is the stream's last event (id `done`); an
//! `EventSource` that reconnects with `Last-Event-ID: done` gets 204, which stops it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_store::changes::Position;
use keel_store::jobs::{self, Job};
use keel_store::system::Principal;
use serde_json::json;

use super::stream::{enabled, respond, who_of_principal};
use super::{Closing, Hub, Outgoing, Start, Stream, Watch};
use crate::auth::roles::is_superuser;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Params, org_access};
use crate::http::state::AppState;

pub async fn open_job(
    state: &AppState,
    principal: &Principal,
    id: &str,
    params: Params,
    headers: &HeaderMap,
    ip: Option<IpAddr>,
) -> ApiResult<Response> {
    enabled(state)?;
    params.only(&[])?;
    let id = crate::jobs::parse_job_id(id)?;
    let job = jobs::job_get(&state.db, id).await?.ok_or_else(ApiError::not_found)?;
    if !crate::jobs::visible(state, principal, &job).await? {
        return Err(ApiError::not_found());
    }
    match headers.get("last-event-id").map(|v| v.to_str().unwrap_or("?").trim()) {
        None | Some("") => {}
        // The client saw the final state: 204 tells an EventSource not to reconnect.
        Some("done") => return Ok(StatusCode::NO_CONTENT.into_response()),
        Some(_) => {
            return Err(ApiError::new(
                "bad_event_id",
                "Last-Event-ID is not an event id this server sent",
            ));
        }
    }
    let mut who = who_of_principal(principal, ip);
    let creator = job.created_by.is_some() && job.created_by == who.user;
    if !is_superuser(principal) && !creator && who.key.is_none() {
        // Access through the org: the re-check follows the membership.
        if let Some(org) = job.org_id
            && let Some(found) = keel_store::system::org_by_id(&state.db, org).await?
        {
            let (_, role) = org_access(state, principal, &found.slug).await?;
            who.org = Some(org);
            who.rank = crate::auth::roles::rank(state, &role);
        }
    }
    let hub = state.realtime.hub();
    let (registration, receiver) = hub.register(who, Watch::Job(id), Start::Fresh(Position::default()), false)?;
    offer(hub, &registration.stream, &job);
    Ok(respond(state, registration, receiver))
}

/// Sends a job's state if it changed since the stream's last event; the final state ends
/// the stream.
fn offer(hub: &Hub, stream: &Stream, job: &Job) {
    let Ok(json) = serde_json::to_string(job) else { return };
    {
        let mut last = stream.last.lock().expect("lock");
        if last.as_deref() == Some(json.as_str()) {
            return;
        }
        *last = Some(json.clone());
    }
    let done = job.state.is_final();
    stream.send(
        hub,
        Outgoing {
            id: done.then(|| "done".to_string()),
            event: "job",
            data: json,
        },
    );
    if done {
        stream.close(Closing {
            event: "end",
            data: json!({ "reason": job.state.as_str(), "message": "the job reached its final state" }),
            retry: false,
        });
    }
}

/// Reads every streamed job each `realtime.job_poll_ms`, in one statement.
pub(super) async fn poll(hub: Weak<Hub>) {
    let Some(every) = hub.upgrade().map(|h| Duration::from_millis(h.settings.job_poll_ms)) else {
        return;
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(hub) = hub.upgrade() else { return };
        let streams: Vec<Arc<Stream>> = {
            let registry = hub.registry.lock().expect("lock");
            registry
                .jobs
                .iter()
                .filter_map(|id| registry.streams.get(id).cloned())
                .collect()
        };
        if streams.is_empty() {
            continue;
        }
        let ids: Vec<i64> = streams
            .iter()
            .filter_map(|s| match s.watch {
                Watch::Job(id) => Some(id),
                Watch::Records(_) => None,
            })
            .collect();
        let found: HashMap<i64, Job> = match jobs::job_get_many(&hub.db, &ids).await {
            Ok(found) => found.into_iter().map(|job| (job.id, job)).collect(),
            Err(error) => {
                tracing::warn!(%error, "realtime: reading streamed jobs failed; trying again");
                continue;
            }
        };
        for stream in streams {
            let Watch::Job(id) = stream.watch else { continue };
            match found.get(&id) {
                Some(job) => offer(&hub, &stream, job),
                None => stream.close(Closing {
                    event: "end",
                    data: json!({ "reason": "gone", "message": "the job no longer exists" }),
                    retry: false,
                }),
            }
        }
    }
}
