//! `/api/v1/auth/oidc`: sign-in with OAuth 2.0 / OpenID Connect providers, and linking them
//! to a signed-in account (the logic is in `auth::oidc`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::auth::Origin;
use crate::auth::oidc::{self, CallbackRequest, StartRequest, Started};
use crate::http::error::ApiResult;
use crate::http::extract::{ApiJson, Auth, Params};
use crate::http::state::AppState;
use crate::routes::auth::signed_in_answer;

/// A 303 to `location` that sets (or clears) the flow's cookie.
fn redirect(started: Started) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(location) = started.location.parse() {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::SET_COOKIE, started.cookie);
    headers.insert(header::CACHE_CONTROL, "no-store".parse().expect("a header value"));
    response
}

/// A browser navigated here (rather than a client calling): errors are a page, not JSON.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

fn answer(state: &AppState, headers: &HeaderMap, result: ApiResult<Started>) -> ApiResult<Response> {
    match result {
        Ok(started) => Ok(redirect(started)),
        Err(error) if wants_html(headers) => Ok(crate::auth::pages::sign_in_failed(state, &error)),
        Err(error) => Err(error),
    }
}

pub async fn providers(State(state): State<AppState>) -> impl IntoResponse {
    Json(oidc::list(&state))
}

pub async fn start(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> ApiResult<Response> {
    let started = start_with(&state, &provider, &params).await;
    answer(&state, &headers, started)
}

async fn start_with(state: &AppState, provider: &str, params: &Params) -> ApiResult<Started> {
    params.only(&[
        "redirect",
        "login_hint",
        "resume",
        "code_challenge",
        "code_challenge_method",
    ])?;
    if params.get("code_challenge_method").is_some_and(|m| m != "S256") {
        return Err(crate::http::error::ApiError::new(
            "invalid_query",
            "code_challenge_method must be S256",
        ));
    }
    let asked = StartRequest {
        redirect: params.get("redirect"),
        login_hint: params.get("login_hint"),
        resume: params.get("resume"),
        code_challenge: params.get("code_challenge"),
    };
    oidc::start(state, provider, asked).await
}

pub async fn callback(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> ApiResult<Response> {
    // Providers add parameters of their own (`session_state`, `scope`, `authuser`…): only
    // these are read, the rest ignored.
    let given = CallbackRequest {
        state: params.get("state"),
        code: params.get("code"),
        error: params.get("error"),
        iss: params.get("iss"),
        cookies: &headers,
    };
    let finished = oidc::callback(&state, &provider, given).await;
    answer(&state, &headers, finished)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    code: String,
    /// The verifier of the `code_challenge` the sign-in started with.
    #[serde(default)]
    code_verifier: Option<String>,
    #[serde(default)]
    cookie: bool,
}

pub async fn exchange(
    State(state): State<AppState>,
    Origin(origin): Origin,
    ApiJson(body): ApiJson<Exchange>,
) -> ApiResult<Response> {
    let signed_in = oidc::exchange(&state, &body.code, body.code_verifier.as_deref()).await?;
    signed_in_answer(&state, signed_in, &origin, body.cookie).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    redirect: String,
}

pub async fn link(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(provider): Path<String>,
    ApiJson(body): ApiJson<Link>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        oidc::start_link(&state, &principal, &provider, &body.redirect).await?,
    ))
}

pub async fn unlink(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(provider): Path<String>,
) -> ApiResult<impl IntoResponse> {
    oidc::unlink(&state, &principal, &provider).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn identities(State(state): State<AppState>, Auth(principal): Auth) -> ApiResult<impl IntoResponse> {
    Ok(Json(oidc::identities_of(&state, &principal).await?))
}
