//! Record routes: thin adapters from paths to [`crate::records`].

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

use crate::http::error::ApiResult;
use crate::http::extract::{ApiJson, Auth, Params};
use crate::http::state::AppState;
use crate::records::{aggregate, create, delete, get, list, update};

// Axum handlers: thin adapters from paths to the functions above.

pub async fn org_export(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name)): Path<(String, String)>,
    params: Params,
) -> ApiResult<Response> {
    crate::records::export::export(&state, &p, Some(&org), &name, params).await
}

pub async fn global_export(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    crate::records::export::export(&state, &p, None, &name, params).await
}

pub async fn org_list(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name)): Path<(String, String)>,
    params: Params,
) -> ApiResult<Response> {
    list(&state, &p, Some(&org), &name, params).await
}
pub async fn org_create(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    create(&state, &p, Some(&org), &name, body).await
}
pub async fn org_get(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name, id)): Path<(String, String, String)>,
    params: Params,
) -> ApiResult<Response> {
    get(&state, &p, Some(&org), &name, &id, params).await
}
pub async fn org_update(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    update(&state, &p, Some(&org), &name, &id, &headers, body).await
}
pub async fn org_delete(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    delete(&state, &p, Some(&org), &name, &id, &headers).await
}
pub async fn org_aggregate(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name)): Path<(String, String)>,
    params: Params,
) -> ApiResult<Response> {
    aggregate(&state, &p, Some(&org), &name, params).await
}
pub async fn global_list(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    list(&state, &p, None, &name, params).await
}
pub async fn global_create(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    create(&state, &p, None, &name, body).await
}
pub async fn global_get(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((name, id)): Path<(String, String)>,
    params: Params,
) -> ApiResult<Response> {
    get(&state, &p, None, &name, &id, params).await
}
pub async fn global_update(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    update(&state, &p, None, &name, &id, &headers, body).await
}
pub async fn global_delete(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    delete(&state, &p, None, &name, &id, &headers).await
}
pub async fn global_aggregate(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    aggregate(&state, &p, None, &name, params).await
}
