//! Sessions and tokens: random tokens, session rows, and the answer while a login lock runs.

use base64::Engine;
use chrono::{Duration, Utc};
use keel_store::system;
use rand::RngCore;
use serde_json::json;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::token_hash;
use crate::http::state::AppState;

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

pub async fn start_session(state: &AppState, user: uuid::Uuid) -> ApiResult<(String, chrono::DateTime<Utc>)> {
    let token = new_token("ks_");
    let expires_at = Utc::now() + Duration::hours(state.config.auth.session_ttl_hours as i64);
    system::session_insert(&state.db, user, &token_hash(&token), expires_at).await?;
    Ok((token, expires_at))
}
