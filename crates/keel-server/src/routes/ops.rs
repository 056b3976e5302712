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

/// The superuser's id, or 403.
fn superuser_of(principal: &keel_store::system::Principal) -> Result<Option<uuid::Uuid>, ApiError> {
    crate::auth::roles::require_superuser(principal)?;
    Ok(crate::jobs::user_of(principal))
}

/// `GET /api/v1/admin/backups`: see [`crate::backup::admin::overview`].
pub async fn admin_backups(
    State(state): State<AppState>,
    crate::http::extract::Auth(principal): crate::http::extract::Auth,
) -> Result<Json<serde_json::Value>, ApiError> {
    superuser_of(&principal)?;
    Ok(Json(crate::backup::admin::overview(&state).await?))
}

/// `POST /api/v1/admin/backups`: a backup now, as a job (202 with the job).
pub async fn admin_backup_take(
    State(state): State<AppState>,
    crate::http::extract::Auth(principal): crate::http::extract::Auth,
) -> Result<Response, ApiError> {
    let user = superuser_of(&principal)?;
    let body = crate::backup::admin::take(&state, user).await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `POST /api/v1/admin/backups/{name}/verify`: a verification, as a job (202 with the job).
pub async fn admin_backup_verify(
    State(state): State<AppState>,
    crate::http::extract::Auth(principal): crate::http::extract::Auth,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let user = superuser_of(&principal)?;
    let body = crate::backup::admin::verify(&state, &name, user).await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `GET /api/v1/admin/keys`: the signing keys and what each does (never their secrets).
pub async fn admin_keys(
    State(state): State<AppState>,
    crate::http::extract::Auth(principal): crate::http::extract::Auth,
) -> Result<Json<serde_json::Value>, ApiError> {
    superuser_of(&principal)?;
    let items = crate::auth::keys::list(&state.db).await?;
    Ok(Json(json!({ "items": items })))
}

/// `POST /api/v1/admin/keys/rotate`: a new file-link key that signs from now on.
pub async fn admin_keys_rotate(
    State(state): State<AppState>,
    crate::http::extract::Auth(principal): crate::http::extract::Auth,
) -> Result<Response, ApiError> {
    superuser_of(&principal)?;
    let key = crate::auth::keys::rotate(&state.db, crate::auth::keys::FILE_LINKS).await?;
    let body = json!({ "id": key.id, "purpose": key.purpose, "created_at": key.created_at });
    Ok((axum::http::StatusCode::CREATED, Json(body)).into_response())
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetireBody {
    #[serde(default)]
    force: bool,
}

/// `POST /api/v1/admin/keys/{id}/retire` `{force?}`: ends what a replaced key signed.
pub async fn admin_key_retire(
    State(state): State<AppState>,
    crate::http::extract::Auth(principal): crate::http::extract::Auth,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    superuser_of(&principal)?;
    let body: RetireBody = crate::http::extract::optional_json(&body)?;
    use crate::auth::keys::RetireError;
    match crate::auth::keys::retire(&state.db, &id, body.force).await {
        Ok(()) => Ok(Json(json!({ "id": id, "retired": true }))),
        Err(RetireError::NotFound(_)) => Err(ApiError::not_found()),
        Err(RetireError::Store(error)) => Err(error.into()),
        Err(error) => Err(ApiError::new("key_retire_refused", error.to_string())),
    }
}

/// `GET /api/v1/admin/migrations`: the applied migrations and the pending plan (read-only;
/// `keel migrate apply` applies it).
pub async fn admin_migrations(
    State(state): State<AppState>,
    crate::http::extract::Auth(principal): crate::http::extract::Auth,
) -> Result<Json<serde_json::Value>, ApiError> {
    superuser_of(&principal)?;
    let history: Vec<_> = keel_store::migrate::history(&state.db)
        .await?
        .into_iter()
        .map(|(version, applied_at, description)| {
            json!({ "version": version, "applied_at": applied_at, "description": description })
        })
        .collect();
    let plan = keel_store::migrate::plan_for(&state.db, &state.schema)
        .await
        .map_err(ApiError::internal)?;
    let pending: Vec<_> = plan
        .steps
        .iter()
        .map(|s| json!({ "description": s.description, "destructive": s.destructive }))
        .collect();
    Ok(Json(json!({
        "version": plan.from_version,
        "history": history,
        "pending": pending,
        "destructive": plan.destructive_steps().len(),
        "sql": plan.to_sql(),
    })))
}

/// `GET /api/v1/admin/config`: the configuration in effect, every secret as `***`.
pub async fn admin_config(
    State(state): State<AppState>,
    crate::http::extract::Auth(principal): crate::http::extract::Auth,
) -> Result<Json<serde_json::Value>, ApiError> {
    superuser_of(&principal)?;
    Ok(Json(
        json!({ "config": crate::http::settings::redacted(&state.config) }),
    ))
}
