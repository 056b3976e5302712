//! `/api/v1/auth`: sign-up, login, logout (one session or all), `me`, verification, email
//! changes and password resets; and the pages behind the emails' links (`/_/auth/…`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::Utc;
use keel_store::system::{self, Principal};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{
    Origin, check_password, confirm_own_password, flows, hash_password, invitations, login, mfa, pages, session,
    start_session,
};
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
    /// Sign up with an invitation's token (sign-up only): the account joins its org.
    #[serde(default)]
    invitation: Option<String>,
}

pub async fn signup(
    State(state): State<AppState>,
    Origin(origin): Origin,
    ApiJson(body): ApiJson<Credentials>,
) -> ApiResult<impl IntoResponse> {
    let cookie = body.cookie;
    if let Some(token) = &body.invitation {
        let accepted =
            invitations::sign_up(&state, token, Some(&body.email), body.password, body.name.as_deref()).await?;
        let (token, expires_at) = start_session(&state, accepted.user.id, &origin).await?;
        let answer = json!({ "user": accepted.user, "org": accepted.org, "role": accepted.role });
        let mut response = session_answer(answer, &token, expires_at, cookie);
        *response.status_mut() = StatusCode::CREATED;
        return Ok(response);
    }
    let sign_up = flows::SignUp {
        email: body.email,
        password: body.password,
        name: body.name,
    };
    let user = flows::sign_up(&state, sign_up).await?;
    let (token, expires_at) = start_session(&state, user.id, &origin).await?;
    let mut response = session_answer(json!({ "user": user }), &token, expires_at, cookie);
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

/// The answer of a new session: the token in the body or, for a cookie session, in an
/// `HttpOnly` cookie with the CSRF token in the body and a readable cookie.
pub(crate) fn session_answer(
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
    Origin(origin): Origin,
    ApiJson(body): ApiJson<Credentials>,
) -> ApiResult<axum::response::Response> {
    if body.invitation.is_some() {
        return Err(ApiError::new(
            "bad_request",
            "'invitation' is for sign-up; signed in, accept it with POST /api/v1/invitations/accept",
        ));
    }
    let ip = client.and_then(|c| c.0.0);
    let signed_in = login::sign_in(&state, &body.email, body.password, ip).await?;
    signed_in_answer(&state, signed_in, &origin, body.cookie).await
}

/// The answer of a first sign-in step (a password, a provider's code): a session, or the
/// token of the second step when the account has a second factor.
pub(crate) async fn signed_in_answer(
    state: &AppState,
    signed_in: login::SignedIn,
    origin: &keel_store::system::SessionOrigin,
    cookie: bool,
) -> ApiResult<axum::response::Response> {
    match signed_in {
        login::SignedIn::Done(user) => {
            let (token, expires_at) = start_session(state, user.id, origin).await?;
            Ok(session_answer(json!({ "user": user }), &token, expires_at, cookie))
        }
        login::SignedIn::SecondFactor { mfa_token } => Ok(Json(json!({
            "mfa_required": true,
            "mfa_token": mfa_token,
            "message": "finish with POST /api/v1/auth/mfa {mfa_token, code} within 5 minutes",
        }))
        .into_response()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondStep {
    mfa_token: String,
    code: String,
    #[serde(default)]
    cookie: bool,
}

/// `POST /api/v1/auth/mfa`: the second step of a sign-in.
pub async fn mfa_complete(
    State(state): State<AppState>,
    client: Option<axum::Extension<crate::http::extract::ClientIp>>,
    Origin(origin): Origin,
    ApiJson(body): ApiJson<SecondStep>,
) -> ApiResult<axum::response::Response> {
    let ip = client.and_then(|c| c.0.0);
    let user = mfa::complete(&state, &body.mfa_token, &body.code, ip).await?;
    let (token, expires_at) = start_session(&state, user.id, &origin).await?;
    Ok(session_answer(json!({ "user": user }), &token, expires_at, body.cookie))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordOnly {
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeOnly {
    code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordAndCode {
    password: String,
    code: String,
}

/// `POST /api/v1/auth/mfa/totp/enroll`
pub async fn totp_enroll(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ApiJson(body): ApiJson<PasswordOnly>,
) -> ApiResult<impl IntoResponse> {
    let user = user_of(principal)?;
    Ok(Json(mfa::enroll(&state, &user, body.password).await?))
}

/// `POST /api/v1/auth/mfa/totp/confirm`
pub async fn totp_confirm(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ApiJson(body): ApiJson<CodeOnly>,
) -> ApiResult<impl IntoResponse> {
    let user = user_of(principal)?;
    Ok(Json(mfa::confirm(&state, &user, &body.code).await?))
}

/// `POST /api/v1/auth/mfa/totp/disable`
pub async fn totp_disable(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ApiJson(body): ApiJson<PasswordAndCode>,
) -> ApiResult<impl IntoResponse> {
    let user = user_of(principal)?;
    mfa::disable(&state, &user, body.password, &body.code).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/auth/mfa`
pub async fn mfa_status(State(state): State<AppState>, Auth(principal): Auth) -> ApiResult<impl IntoResponse> {
    let user = user_of(principal)?;
    Ok(Json(mfa::status(&state, &user).await?))
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
    Origin(origin): Origin,
    Auth(principal): Auth,
    ApiJson(body): ApiJson<PasswordChange>,
) -> ApiResult<axum::response::Response> {
    let Principal::User { user, .. } = principal else {
        return Err(ApiError::new("bad_request", "API keys have no password"));
    };
    confirm_own_password(&state, &user, body.current_password).await?;
    check_password(&body.new_password, &user.email, state.config.auth.min_password_length)?;
    let password_hash = hash_password(&state.config.auth, body.new_password).await?;
    let revoked = system::user_set_password(&state.db, user.id, &password_hash).await?;
    crate::http::extract::forget_tokens(&state, &revoked).await;
    let (token, expires_at) = start_session(&state, user.id, &origin).await?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailBody {
    email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirm {
    token: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailChange {
    email: String,
    password: String,
}

fn user_of(principal: Principal) -> ApiResult<system::User> {
    match principal {
        Principal::User { user, .. } => Ok(user),
        Principal::ApiKey(_) => Err(ApiError::new("bad_request", "API keys have no email address")),
    }
}

/// `POST /api/v1/auth/verify/request`
pub async fn verify_request(State(state): State<AppState>, Auth(principal): Auth) -> ApiResult<impl IntoResponse> {
    let user = user_of(principal)?;
    Ok(match flows::request_verification(&state, &user).await? {
        true => (StatusCode::ACCEPTED, Json(flows::accepted())),
        false => (
            StatusCode::OK,
            Json(json!({ "status": "verified", "message": "the address is already verified" })),
        ),
    })
}

/// `POST /api/v1/auth/verify/confirm`
pub async fn verify_confirm(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TokenBody>,
) -> ApiResult<impl IntoResponse> {
    let user = flows::confirm_email(&state, &body.token).await?;
    Ok(Json(json!({ "user": user })))
}

/// `POST /api/v1/auth/email`
pub async fn email_change(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ApiJson(body): ApiJson<EmailChange>,
) -> ApiResult<impl IntoResponse> {
    let user = user_of(principal)?;
    let answer = flows::change_email(&state, &user, &body.email, body.password).await?;
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// `POST /api/v1/auth/password-reset/request`
pub async fn reset_request(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<EmailBody>,
) -> ApiResult<impl IntoResponse> {
    let answer = flows::request_reset(&state, &body.email).await?;
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// `POST /api/v1/auth/password-reset/confirm`
pub async fn reset_confirm(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ResetConfirm>,
) -> ApiResult<impl IntoResponse> {
    let (user, revoked) = flows::confirm_reset(&state, &body.token, body.password).await?;
    Ok(Json(json!({ "user": user, "revoked_sessions": revoked })))
}

#[derive(Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
pub struct PageForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

/// `GET /_/auth/verify`
pub async fn verify_page(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<PageQuery>,
) -> axum::response::Response {
    pages::verify_form(&state, &query.token)
}

/// `POST /_/auth/verify`
pub async fn verify_submit(
    State(state): State<AppState>,
    axum::extract::Form(form): axum::extract::Form<PageForm>,
) -> axum::response::Response {
    pages::verify(&state, &form.token).await
}

/// `GET /_/auth/reset`
pub async fn reset_page(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<PageQuery>,
) -> axum::response::Response {
    pages::reset_form(&state, &query.token, None)
}

/// `POST /_/auth/reset`
pub async fn reset_submit(
    State(state): State<AppState>,
    axum::extract::Form(form): axum::extract::Form<PageForm>,
) -> axum::response::Response {
    pages::reset(&state, &form.token, form.password, &form.confirm).await
}

/// `GET /api/v1/auth/sessions`
pub async fn sessions(State(state): State<AppState>, Auth(principal): Auth) -> ApiResult<impl IntoResponse> {
    Ok(Json(session::list(&state, &principal).await?))
}

/// `DELETE /api/v1/auth/sessions/{id}`
pub async fn revoke_session(
    State(state): State<AppState>,
    Auth(principal): Auth,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::not_found())?;
    session::revoke(&state, &principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/auth/sessions/revoke-others`
pub async fn revoke_other_sessions(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> ApiResult<impl IntoResponse> {
    let revoked = session::revoke_others(&state, &principal).await?;
    Ok(Json(json!({ "revoked_sessions": revoked })))
}

/// `POST /api/v1/invitations/accept`
pub async fn accept_invitation(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ApiJson(body): ApiJson<TokenBody>,
) -> ApiResult<impl IntoResponse> {
    let accepted = invitations::accept(&state, &principal, &body.token).await?;
    Ok(Json(
        json!({ "user": accepted.user, "org": accepted.org, "role": accepted.role }),
    ))
}

/// `GET /_/auth/invitation`
pub async fn invitation_page(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<PageQuery>,
) -> axum::response::Response {
    pages::invitation_form(&state, &query.token, None).await
}

/// `POST /_/auth/invitation`
pub async fn invitation_submit(
    State(state): State<AppState>,
    axum::extract::Form(form): axum::extract::Form<PageForm>,
) -> axum::response::Response {
    pages::invitation(&state, &form.token, form.password).await
}
