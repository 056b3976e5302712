//! Operations endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::http::error::ApiError;
use crate::http::state::AppState;

pub async fn live() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /health/ready`: see [`crate::ops::health::readiness`].
pub async fn ready(State(state): State<AppState>) -> Response {
    let (status, body) = crate::ops::health::readiness(&state).await;
    (status, Json(body)).into_response()
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut response = crate::ops::health::scrape(&state).await.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `GET /api/v1/admin/overview` (superuser): see [`crate::ops::overview`].
pub async fn admin_overview(
    State(state): State<AppState>,
    crate::http::extract::Auth(principal): crate::http::extract::Auth,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !crate::auth::is_superuser(&principal) {
        return Err(ApiError::forbidden());
    }
    Ok(Json(crate::ops::overview::overview(&state).await?))
}

/// `GET /api/v1/admin/errors` (superuser): unexpected errors and panics grouped by
/// fingerprint, most recently seen first, with counts and a sample request id.
pub async fn admin_errors(
    State(state): State<AppState>,
    crate::http::extract::Auth(principal): crate::http::extract::Auth,
    params: crate::http::extract::Params,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !crate::auth::is_superuser(&principal) {
        return Err(ApiError::forbidden());
    }
    params.only(&["limit"])?;
    let limit = crate::http::extract::page_limit(&state, params.get("limit"))?;
    state.errors.flush(&state.db).await;
    let groups = keel_store::errors::errors_list(&state.db, limit as i64).await?;
    Ok(Json(json!({ "items": groups })))
}

/// `GET /api/v1/admin/alerts` (superuser): every rule with its state, value and threshold.
pub async fn admin_alerts(
    State(state): State<AppState>,
    crate::http::extract::Auth(principal): crate::http::extract::Auth,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !crate::auth::is_superuser(&principal) {
        return Err(ApiError::forbidden());
    }
    let items = state.alerts.states();
    let firing = items.iter().filter(|r| r.state == "firing").count();
    Ok(Json(json!({ "items": items, "firing": firing })))
}

pub async fn openapi(State(state): State<AppState>) -> Response {
    Json(crate::http::openapi::document(&state.schema.app)).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::new("route_not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new("method_not_allowed", "this route does not take this method")
}
