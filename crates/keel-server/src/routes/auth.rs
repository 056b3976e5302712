//! `/api/v1/auth`: sign-up, login, logout (one session or all), and `me`.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use chrono::{Duration, Utc};
use keel_store::StoreError;
use keel_store::security;
use keel_store::system::{self, NewUser, Principal};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, Auth, token_hash};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    email: String,
    password: String,
    #[serde(default)]
    name: Option<String>,
    /// Keep the session in a cookie (for browser pages) instead of answering the token.
    #[serde(default)]
    cookie: bool,
}

/// The answer while a login lock runs: when it ends, and whose it is.
fn locked(key: &str, until: chrono::DateTime<Utc>, now: chrono::DateTime<Utc>) -> ApiError {
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

/// The argon2id hasher for the configured cost.
fn hasher(auth: &crate::config::AuthSection) -> Argon2<'static> {
    let params = argon2::Params::new(auth.argon2_memory_kib, auth.argon2_iterations, 1, None).unwrap_or_default();
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Hashes a password with argon2id (deliberately slow: call it off the async workers).
pub fn hash_password_blocking(auth: &crate::config::AuthSection, password: &str) -> ApiResult<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(ApiError::internal)?;
    hasher(auth)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(ApiError::internal)
}

/// Hashes a password with argon2id on a blocking thread.
pub async fn hash_password(auth: &crate::config::AuthSection, password: String) -> ApiResult<String> {
    let auth = auth.clone();
    tokio::task::spawn_blocking(move || hash_password_blocking(&auth, &password))
        .await
        .map_err(ApiError::internal)?
}

/// Verifies a password; the hash carries its own parameters.
async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Normalises and checks an email address.
pub fn normalize_email(email: &str) -> ApiResult<String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(
            ApiError::new("validation_failed", "the email address is not valid").with_details(
                json!([{ "field": "email", "code": "invalid_email", "message": "not a valid email address" }]),
            ),
        )
    }
}

/// The most common passwords of breach corpora (8 characters or more, lowercase, sorted):
/// see `data/README.md`.
const COMMON_PASSWORDS: &str = include_str!("../../data/common-passwords.txt");

/// Whether a password is on the bundled list of common and breached passwords (any case).
pub fn is_common_password(password: &str) -> bool {
    let lower = password.to_lowercase();
    let list = COMMON_PASSWORDS.as_bytes();
    // Binary search over the sorted lines without building an index.
    let (mut low, mut high) = (0usize, list.len());
    while low < high {
        let middle = (low + high) / 2;
        let start = list[..middle].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let end = list[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(list.len(), |i| start + i);
        match list[start..end].cmp(lower.as_bytes()) {
            std::cmp::Ordering::Equal => return true,
            std::cmp::Ordering::Less => low = end + 1,
            std::cmp::Ordering::Greater => high = start,
        }
    }
    false
}

/// The password policy: length bounds, not the email itself, not a common password.
pub fn check_password(password: &str, email: &str, min_length: usize) -> ApiResult<()> {
    let length = password.chars().count();
    let problem = if length < min_length {
        Some(format!("use at least {min_length} characters"))
    } else if length > 256 {
        Some("use at most 256 characters".to_string())
    } else if password.eq_ignore_ascii_case(email)
        || password.eq_ignore_ascii_case(email.split('@').next().unwrap_or(""))
    {
        Some("the password must not be your email".to_string())
    } else if is_common_password(password) {
        Some("this password is one of the most common ones in breached-password lists; choose another".to_string())
    } else {
        None
    };
    match problem {
        Some(message) => Err(ApiError::new("weak_password", message)),
        None => Ok(()),
    }
}

async fn start_session(state: &AppState, user: uuid::Uuid) -> ApiResult<(String, chrono::DateTime<Utc>)> {
    let token = new_token("ks_");
    let expires_at = Utc::now() + Duration::hours(state.config.auth.session_ttl_hours as i64);
    system::session_insert(&state.db, user, &token_hash(&token), expires_at).await?;
    Ok((token, expires_at))
}

pub async fn signup(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Credentials>,
) -> ApiResult<impl IntoResponse> {
    if !state.config.auth.signup {
        return Err(ApiError::new(
            "signup_closed",
            "sign-up is closed; ask an administrator for an account",
        ));
    }
    let email = normalize_email(&body.email)?;
    check_password(&body.password, &email, state.config.auth.min_password_length)?;
    if body.name.as_ref().is_some_and(|n| n.chars().count() > 200) {
        return Err(ApiError::new("validation_failed", "the name is too long")
            .with_details(json!([{ "field": "name", "code": "too_long", "message": "at most 200 characters" }])));
    }
    let password_hash = hash_password(&state.config.auth, body.password).await?;
    let user = system::user_insert(
        &state.db,
        NewUser {
            email: &email,
            name: body.name.as_deref(),
            password_hash: &password_hash,
            superuser: false,
        },
    )
    .await
    .map_err(|e| match e {
        StoreError::Unique { .. } => ApiError::new("email_taken", "an account with this email exists"),
        other => other.into(),
    })?;
    let (token, expires_at) = start_session(&state, user.id).await?;
    let mut response = session_answer(json!({ "user": user }), &token, expires_at, body.cookie);
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

/// The answer of a new session: the token in the body or, for a cookie session, in an
/// `HttpOnly` cookie with the CSRF token in the body and a readable cookie.
fn session_answer(
    mut body: serde_json::Value,
    token: &str,
    expires_at: chrono::DateTime<Utc>,
    cookie: bool,
) -> axum::response::Response {
    body["expires_at"] = json!(expires_at);
    if !cookie {
        body["token"] = json!(token);
        return Json(body).into_response();
    }
    body["csrf_token"] = json!(crate::browser::csrf_token(token));
    let max_age = (expires_at - Utc::now()).num_seconds();
    let mut response = Json(body).into_response();
    for value in crate::browser::session_cookies(token, max_age) {
        response.headers_mut().append(axum::http::header::SET_COOKIE, value);
    }
    response
}

pub async fn login(
    State(state): State<AppState>,
    client: Option<axum::Extension<crate::protect::ClientIp>>,
    ApiJson(body): ApiJson<Credentials>,
) -> ApiResult<impl IntoResponse> {
    let email = body.email.trim().to_lowercase();
    if email.len() > 254 || body.password.len() > 1024 {
        return Err(ApiError::new("invalid_credentials", "the email or password is wrong"));
    }
    // Lockouts (S9): the account, and the client's address, each after repeated failures.
    let now = Utc::now();
    let mut keys = vec![(format!("account:{email}"), state.config.auth.lockout_failures)];
    if let Some(ip) = client.and_then(|c| c.0.0) {
        keys.push((
            format!("ip:{}", crate::protect::ip_key(ip)),
            state.config.auth.lockout_ip_failures,
        ));
    }
    let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    if let Some((key, until)) = security::login_locked(&state.db, &names, now).await? {
        return Err(locked(&key, until, now));
    }
    let found = system::user_by_email(&state.db, &email).await?;
    // Verify against a hash made with the same cost when the user does not exist, so the
    // answer's timing does not tell whether the email has an account.
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, state.dummy_password_hash.clone()),
    };
    let ok = verify_password(body.password, hash).await;
    let Some(user) = user.filter(|_| ok) else {
        let auth = &state.config.auth;
        let window = Duration::seconds(auth.lockout_window_seconds as i64);
        for (key, threshold) in &keys {
            let failures = security::login_failure(&state.db, key, now, window).await?;
            if failures >= i64::from(*threshold) {
                // Backoff: the lock doubles with every failure past the threshold.
                let doublings = (failures - i64::from(*threshold)).min(20) as u32;
                let seconds = auth
                    .lockout_seconds
                    .saturating_mul(1 << doublings)
                    .min(auth.lockout_max_seconds);
                security::login_lock(&state.db, key, now + Duration::seconds(seconds as i64)).await?;
                tracing::warn!(
                    key = key.split(':').next().unwrap_or(""),
                    failures,
                    seconds,
                    "login locked"
                );
                state.metrics.counter(
                    "keel_login_lockouts_total",
                    &[("scope", key.split(':').next().unwrap_or("").to_string())],
                    1,
                );
            }
        }
        return Err(ApiError::new("invalid_credentials", "the email or password is wrong"));
    };
    security::login_clear(&state.db, &keys[0].0).await?;
    let (token, expires_at) = start_session(&state, user.id).await?;
    Ok(session_answer(json!({ "user": user }), &token, expires_at, body.cookie))
}

pub async fn logout(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Auth(principal): Auth,
) -> ApiResult<axum::response::Response> {
    match principal {
        Principal::User { session, .. } => {
            system::session_revoke(&state.db, session).await?;
            if let Some(hash) = crate::extract::request_token_hash(&headers) {
                crate::extract::forget_tokens(&state, &[hash]).await;
            }
            let mut response = StatusCode::NO_CONTENT.into_response();
            if crate::browser::cookie(&headers, crate::browser::SESSION_COOKIE).is_some() {
                for value in crate::browser::session_cookies("", 0) {
                    response.headers_mut().append(axum::http::header::SET_COOKIE, value);
                }
            }
            Ok(response)
        }
        Principal::ApiKey(_) => Err(ApiError::new(
            "bad_request",
            "API keys are revoked through /orgs/{org}/api_keys",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// `POST /api/v1/auth/password`: checks the current password, sets the new one (by the
/// policy), ends every session of the user and starts a new one (rotation: a stolen token
/// dies with the old password). A cookie session gets its new session as cookies.
pub async fn change_password(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Auth(principal): Auth,
    ApiJson(body): ApiJson<PasswordChange>,
) -> ApiResult<axum::response::Response> {
    let Principal::User { user, .. } = principal else {
        return Err(ApiError::new("bad_request", "API keys have no password"));
    };
    let (_, hash) = system::user_by_email(&state.db, &user.email)
        .await?
        .ok_or_else(|| ApiError::new("unauthenticated", "the user no longer exists"))?;
    if body.current_password.len() > 1024 || !verify_password(body.current_password, hash).await {
        return Err(ApiError::new("invalid_credentials", "the current password is wrong"));
    }
    check_password(&body.new_password, &user.email, state.config.auth.min_password_length)?;
    let password_hash = hash_password(&state.config.auth, body.new_password).await?;
    let revoked = system::user_set_password(&state.db, user.id, &password_hash).await?;
    crate::extract::forget_tokens(&state, &revoked).await;
    let (token, expires_at) = start_session(&state, user.id).await?;
    let cookie = headers.get(axum::http::header::AUTHORIZATION).is_none();
    let body = json!({ "user": user, "revoked_sessions": revoked.len() });
    Ok(session_answer(body, &token, expires_at, cookie))
}

pub async fn logout_all(State(state): State<AppState>, Auth(principal): Auth) -> ApiResult<impl IntoResponse> {
    match principal {
        Principal::User { user, .. } => {
            let hashes = system::session_token_hashes(&state.db, user.id).await?;
            let revoked = system::sessions_revoke_all(&state.db, user.id).await?;
            crate::extract::forget_tokens(&state, &hashes).await;
            Ok(Json(json!({ "revoked_sessions": revoked })))
        }
        Principal::ApiKey(_) => Err(ApiError::new("bad_request", "API keys have no sessions")),
    }
}

pub async fn me(State(state): State<AppState>, Auth(principal): Auth) -> ApiResult<impl IntoResponse> {
    match principal {
        Principal::User { user, .. } => {
            // The first 500 memberships; the rest are listed by GET /api/v1/orgs (paginated).
            let mut orgs = system::orgs_of_user(&state.db, user.id, None, 501).await?;
            let truncated = orgs.len() > 500;
            orgs.truncate(500);
            let memberships: Vec<_> = orgs
                .into_iter()
                .map(|(org, role)| json!({ "org": org, "role": role }))
                .collect();
            Ok(Json(
                json!({ "user": user, "memberships": memberships, "memberships_truncated": truncated }),
            ))
        }
        Principal::ApiKey(key) => Ok(Json(json!({ "api_key": key }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_passwords_are_refused_in_any_case() {
        assert!(COMMON_PASSWORDS.lines().count() > 8_000);
        let first = COMMON_PASSWORDS.lines().next().unwrap();
        let last = COMMON_PASSWORDS.lines().last().unwrap();
        for listed in [first, last, "password123", "PassWord123", "iloveyou2"] {
            assert!(is_common_password(listed), "{listed}");
        }
        for fine in ["correct horse battery", "zzzzzzzzzzzzzzzzzzzzzzzz", "", "a"] {
            assert!(!is_common_password(fine), "{fine}");
        }
        // Every line is found: the search handles every position.
        assert!(COMMON_PASSWORDS.lines().all(is_common_password));
        let refused = check_password("Password123", "ada@example.com", 8).unwrap_err();
        assert_eq!(refused.code, "weak_password");
        assert!(check_password("correct horse battery", "ada@example.com", 10).is_ok());
    }
}
