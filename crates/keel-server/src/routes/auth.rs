//! `/api/v1/auth`: sign-up, login, logout (one session or all), and `me`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{Duration, Utc};
use keel_store::StoreError;
use keel_store::security;
use keel_store::system::{self, NewUser, Principal};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{check_password, hash_password, locked, normalize_email, start_session, verify_password};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, Auth};
use crate::http::state::AppState;

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
    body["csrf_token"] = json!(crate::auth::browser::csrf_token(token));
    let max_age = (expires_at - Utc::now()).num_seconds();
    let mut response = Json(body).into_response();
    for value in crate::auth::browser::session_cookies(token, max_age) {
        response.headers_mut().append(axum::http::header::SET_COOKIE, value);
    }
    response
}

pub async fn login(
    State(state): State<AppState>,
    client: Option<axum::Extension<crate::http::extract::ClientIp>>,
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
            if let Some(hash) = crate::http::extract::request_token_hash(&headers) {
                crate::http::extract::forget_tokens(&state, &[hash]).await;
            }
            let mut response = StatusCode::NO_CONTENT.into_response();
            if crate::auth::browser::cookie(&headers, crate::auth::browser::SESSION_COOKIE).is_some() {
                for value in crate::auth::browser::session_cookies("", 0) {
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
    crate::http::extract::forget_tokens(&state, &revoked).await;
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
            crate::http::extract::forget_tokens(&state, &hashes).await;
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
