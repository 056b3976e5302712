//! Opening a stream: the request checked as a list or a get would check it (before any
//! event), the resume point, and the SSE body that carries the stream's events.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use keel_query::{Mode, check_expr};
use keel_spec::Action;
use keel_store::changes::{self, Position};
use keel_store::system::Principal;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::hub::{Outgoing, RecordWatch, Registration, Start, Watch, Who};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::Params;
use crate::http::state::AppState;
use crate::records::{self, Target, ensure_allowed};

/// Where a record stream points: a collection (with `filter`), or one record.
pub struct StreamQuery<'a> {
    pub org: Option<&'a str>,
    pub collection: &'a str,
    pub record: Option<&'a str>,
}

/// `GET …/{collection}/events` and `GET …/{collection}/{id}/events`.
pub async fn open_records(
    state: &AppState,
    principal: &Principal,
    query: StreamQuery<'_>,
    params: Params,
    headers: &HeaderMap,
    ip: Option<IpAddr>,
) -> ApiResult<Response> {
    enabled(state)?;
    if query.record.is_some() {
        params.only(&["fields", "expand"])?;
    } else {
        params.only(&["filter", "fields", "expand"])?;
    }
    if query.org == Some("-") {
        return Err(ApiError::new(
            "bad_request",
            "a stream follows one org: /api/v1/orgs/{org}/.../events",
        ));
    }
    let resume = last_event_id(headers)?;
    let target = records::resolve(state, principal, query.org, query.collection).await?;
    let builder = target.builder(state);
    let action = if query.record.is_some() {
        Action::View
    } else {
        Action::List
    };
    ensure_allowed(&builder, action)?;
    let collection = target.collection;
    let filter = match params.get("filter").map(str::trim).filter(|f| !f.is_empty()) {
        Some(text) => Some(check_expr(&state.schema.app, collection, text, Mode::Filter)?),
        None => None,
    };
    let fields = records::fields_param(collection, params.get("fields"))?;
    let expand = records::expand_param(state, collection, params.get("expand"))?;
    let record = match query.record {
        Some(raw) => {
            let id = Uuid::parse_str(raw).map_err(|_| ApiError::not_found())?;
            // The record must exist and be visible now: 404 before any event.
            keel_store::records::get(&state.db, &builder, id, &[], Some(&[]))
                .await?
                .ok_or_else(ApiError::not_found)?;
            Some(id)
        }
        None => None,
    };
    let shared = builder.shared(action, filter.as_ref(), fields.as_deref(), &expand);
    let rank = match &target.caller.context.role {
        keel_query::RoleSource::Rank(rank) => *rank,
        keel_query::RoleSource::Expression(_) => None,
    };
    let watch = Watch::Records(Box::new(RecordWatch {
        collection: collection.name.clone(),
        org: target.org,
        record,
        shared,
        user: target.caller.context.user,
        rank,
        fields,
    }));
    let who = who_of(principal, &target, ip);
    let (start, reset) = start_of(state, resume).await?;
    let hub = state.realtime.hub();
    let (registration, receiver) = hub.register(who, watch, start, reset)?;
    super::dispatch::start(hub);
    Ok(respond(state, registration, receiver))
}

/// The realtime routes answer 404 when `realtime.enabled` is off.
pub(super) fn enabled(state: &AppState) -> ApiResult<()> {
    if state.config.realtime.enabled {
        Ok(())
    } else {
        Err(ApiError::new(
            "realtime_disabled",
            "realtime streams are turned off on this server",
        ))
    }
}

/// The `Last-Event-ID` a reconnecting client sends, if any; one Keel did not send is a 400.
fn last_event_id(headers: &HeaderMap) -> ApiResult<Option<Position>> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let bad = || ApiError::new("bad_event_id", "Last-Event-ID is not an event id this server sent");
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<Position>().map(Some).map_err(|_| bad())
}

/// Where the stream starts, and whether the client must reload first (`reset`): its position
/// was pruned, or is past anything the log holds (a restored database).
async fn start_of(state: &AppState, resume: Option<Position>) -> ApiResult<(Start, bool)> {
    let tail = changes::tail(&state.db).await?;
    let Some(position) = resume else {
        return Ok((Start::Fresh(tail), false));
    };
    if position > tail || !changes::resumable(&state.db, position).await? {
        return Ok((Start::Fresh(tail), true));
    }
    Ok((Start::Resume(position), false))
}

/// Who holds the stream: what the re-check verifies later.
fn who_of(principal: &Principal, target: &Target<'_>, ip: Option<IpAddr>) -> Who {
    let mut who = who_of_principal(principal, ip);
    if !who.superuser && who.key.is_none() {
        who.org = target.org;
        if let keel_query::RoleSource::Rank(rank) = &target.caller.context.role {
            who.rank = *rank;
        }
    }
    who
}

pub(super) fn who_of_principal(principal: &Principal, ip: Option<IpAddr>) -> Who {
    match principal {
        Principal::User {
            user,
            session,
            expires_at,
            ..
        } => Who {
            session: Some(*session),
            user: Some(user.id),
            superuser: user.superuser,
            expires_at: Some(*expires_at),
            ip,
            ..Who::default()
        },
        Principal::ApiKey(key) => Who {
            key: Some(key.id),
            expires_at: key.expires_at,
            ip,
            ..Who::default()
        },
    }
}

/// The SSE response: queued events in order, a heartbeat comment on idle streams, and the
/// closing event (with `retry:` when the client should come back) when the server ends it.
pub(super) fn respond(state: &AppState, registration: Registration, receiver: mpsc::Receiver<Outgoing>) -> Response {
    let retry = Duration::from_millis(state.config.realtime.retry_ms);
    let heartbeat = Duration::from_secs(state.config.realtime.heartbeat_seconds);
    let body = Body {
        registration,
        receiver,
        retry,
        done: false,
    };
    let events = futures_util::stream::unfold(body, |mut body| async move {
        let event = body.next().await?;
        Some((Ok::<Event, Infallible>(event), body))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(heartbeat).text(""))
        .into_response();
    let headers = response.headers_mut();
    // Proxies that buffer responses (nginx) would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

struct Body {
    registration: Registration,
    receiver: mpsc::Receiver<Outgoing>,
    retry: Duration,
    done: bool,
}

impl Body {
    async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let stream: Arc<super::hub::Stream> = self.registration.stream.clone();
        loop {
            let closing = stream.closing.lock().expect("lock").clone();
            if let Some(closing) = closing {
                // A record's deletion ends its stream after the `deleted` event; every other
                // end is said at once (a slow client's buffer is dropped: it resumes).
                if closing.event == "end"
                    && let Ok(event) = self.receiver.try_recv()
                {
                    return Some(event_of(event));
                }
                self.done = true;
                let mut event = Event::default().event(closing.event).data(closing.data.to_string());
                if closing.retry {
                    event = event.retry(self.retry);
                }
                return Some(event);
            }
            tokio::select! {
                biased;
                event = self.receiver.recv() => return event.map(event_of),
                _ = stream.closed.notified() => continue,
            }
        }
    }
}

fn event_of(outgoing: Outgoing) -> Event {
    let mut event = Event::default().event(outgoing.event).data(outgoing.data);
    if let Some(id) = outgoing.id {
        event = event.id(id);
    }
    event
}
