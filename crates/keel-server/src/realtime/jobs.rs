//! Job streams: `GET /api/v1/jobs/{id}/events` sends a job's state and progress as they
//! change, to whoever may read its status. One statement a tick reads every job streamed on
//! the instance. A job's final state is the stream's last event (id `done`); an
//! `EventSource` that reconnects with `Last-Event-ID: done` gets 204, which stops it.

use std::net::IpAddr;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_store::changes::Position;
use keel_store::jobs;
use keel_store::system::Principal;

use super::hub::{Start, Watch};
use super::job_watch::offer;
use super::stream::{enabled, respond, who_of_principal};
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
    super::dispatch::start(hub);
    offer(hub, &registration.stream, &job);
    Ok(respond(state, registration, receiver))
}
