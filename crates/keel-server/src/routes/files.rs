//! File routes: thin adapters to [`crate::files`].

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use keel_store::files;
use keel_store::system::Principal;
use serde_json::json;

use crate::files::{download, link, remove, upload};
use crate::http::error::ApiResult;
use crate::http::extract::{Auth, Params};
use crate::http::state::AppState;

/// `GET /api/v1/orgs/{org}/usage`: the org's stored files and the caller's, with quotas.
pub async fn org_usage(State(state): State<AppState>, Auth(p): Auth, Path(org): Path<String>) -> ApiResult<Response> {
    let (org, _) = crate::http::extract::org_access(&state, &p, &org).await?;
    let spec = &state.schema.app.storage;
    let (org_bytes, org_files) = files::usage_get(&state.db, &files::org_scope(org.id)).await?;
    let mut body = json!({
        "org": { "bytes": org_bytes, "files": org_files, "quota_bytes": spec.quota_per_org },
    });
    if let Principal::User { user, .. } = &p {
        let (bytes, count) = files::usage_get(&state.db, &files::user_scope(user.id)).await?;
        body["user"] = json!({ "bytes": bytes, "files": count, "quota_bytes": spec.quota_per_user });
    }
    Ok(axum::Json(body).into_response())
}

pub async fn org_link(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name, id, field, file)): Path<(String, String, String, String, String)>,
    params: Params,
) -> ApiResult<Response> {
    link(&state, &p, Some(&org), &name, &id, &field, &file, params).await
}

pub async fn global_link(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((name, id, field, file)): Path<(String, String, String, String)>,
    params: Params,
) -> ApiResult<Response> {
    link(&state, &p, None, &name, &id, &field, &file, params).await
}

pub async fn org_upload(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name, id, field)): Path<(String, String, String, String)>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    upload(&state, &p, Some(&org), &name, &id, &field, params, headers, body).await
}

pub async fn global_upload(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((name, id, field)): Path<(String, String, String)>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    upload(&state, &p, None, &name, &id, &field, params, headers, body).await
}

pub async fn org_download(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name, id, field, file)): Path<(String, String, String, String, String)>,
) -> ApiResult<Response> {
    download(&state, &p, Some(&org), &name, &id, &field, &file).await
}

pub async fn global_download(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((name, id, field, file)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    download(&state, &p, None, &name, &id, &field, &file).await
}

pub async fn org_remove(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name, id, field, file)): Path<(String, String, String, String, String)>,
) -> ApiResult<Response> {
    remove(&state, &p, Some(&org), &name, &id, &field, &file).await
}

pub async fn global_remove(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((name, id, field, file)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    remove(&state, &p, None, &name, &id, &field, &file).await
}

/// `GET /api/v1/files/{file}?expires=…&signature=…`: a signed link, no credentials.
pub async fn signed_download(
    State(state): State<AppState>,
    Path(file): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    crate::files::signed_download(&state, &file, params).await
}
