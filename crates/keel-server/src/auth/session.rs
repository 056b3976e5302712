//! Sessions and tokens: random tokens, session rows with where they came from, the user's
//! session list and its revocations (A6), and the answer while a login lock runs.

use base64::Engine;
use chrono::{Duration, Utc};
use keel_store::system;
use rand::RngCore;
use serde_json::json;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use keel_store::system::{Principal, SessionOrigin};

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ClientIp, forget_tokens, token_hash};
use crate::http::state::AppState;

/// Where a request comes from, for the session it starts: the client's address (as the
/// protection layer found it) and its `User-Agent` (at most 256 characters).
pub struct Origin(pub SessionOrigin);

impl FromRequestParts<AppState> for Origin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ClientIp>()
            .and_then(|c| c.0)
            .map(|ip| ip.to_string());
        let user_agent = parts
            .headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|agent| agent.chars().filter(|c| !c.is_control()).take(256).collect::<String>())
            .filter(|agent| !agent.is_empty());
        Ok(Origin(SessionOrigin { ip, user_agent }))
    }
}

/// The answer while a login lock runs: when it ends, and whose it is.
pub(crate) fn locked(key: &str, until: chrono::DateTime<Utc>, now: chrono::DateTime<Utc>) -> ApiError {
    let seconds = ((until - now).num_milliseconds().max(1) as u64).div_ceil(1000);
    let scope = key.split(':').next().unwrap_or("account");
    let mut error = ApiError::new(
        "login_locked",
        format!("too many failed logins; try again in {seconds} s"),
    )
    .with_details(json!({ "scope": scope, "retry_after_seconds": seconds, "locked_until": until }));
    error.retry_after = Some(seconds);
    error
}

/// A new random token with a prefix telling sessions (`ks_`) from API keys (`kk_`).
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub async fn start_session(
    state: &AppState,
    user: uuid::Uuid,
    origin: &SessionOrigin,
) -> ApiResult<(String, chrono::DateTime<Utc>)> {
    let token = new_token("ks_");
    let expires_at = Utc::now() + Duration::hours(state.config.auth.session_ttl_hours as i64);
    system::session_insert(&state.db, user, &token_hash(&token), expires_at, origin).await?;
    Ok((token, expires_at))
}

/// The caller's user and session; API keys have no sessions.
fn session_of(principal: &Principal) -> ApiResult<(uuid::Uuid, uuid::Uuid)> {
    match principal {
        Principal::User { user, session, .. } => Ok((user.id, *session)),
        Principal::ApiKey(_) => Err(ApiError::new("bad_request", "API keys have no sessions")),
    }
}

/// The most sessions the list shows (the most recently used).
const MAX_LISTED: u32 = 200;

/// `GET /auth/sessions`: the caller's live sessions, most recently used first, the one
/// making the request marked `current`.
pub async fn list(state: &AppState, principal: &Principal) -> ApiResult<serde_json::Value> {
    let (user, current) = session_of(principal)?;
    let sessions = system::sessions_of_user(&state.db, user, MAX_LISTED).await?;
    let items: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let mut item = serde_json::to_value(&s).unwrap_or_default();
            item["current"] = json!(s.id == current);
            item
        })
        .collect();
    Ok(json!({ "items": items }))
}

/// `DELETE /auth/sessions/{id}`: ends one of the caller's sessions (404 for any other id).
pub async fn revoke(state: &AppState, principal: &Principal, id: uuid::Uuid) -> ApiResult<()> {
    let (user, _) = session_of(principal)?;
    let hashes = system::sessions_revoke(&state.db, user, Some(id), None).await?;
    if hashes.is_empty() {
        return Err(ApiError::new("not_found", "no live session of yours has this id"));
    }
    forget_tokens(state, &hashes).await;
    Ok(())
}

/// `POST /auth/sessions/revoke-others`: ends every session of the caller but this one.
pub async fn revoke_others(state: &AppState, principal: &Principal) -> ApiResult<usize> {
    let (user, current) = session_of(principal)?;
    let hashes = system::sessions_revoke(&state.db, user, None, Some(current)).await?;
    forget_tokens(state, &hashes).await;
    Ok(hashes.len())
}
