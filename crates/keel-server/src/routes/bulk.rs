//! Bulk routes (B1–B4): thin adapters to [`crate::import`] (`POST …/{collection}/import`)
//! and [`crate::records::delete_many`] (`DELETE …/{collection}?filter=…`,
//! `DELETE …/{collection}/batches/{batch}`).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use uuid::Uuid;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Auth, Params};
use crate::http::state::AppState;
use crate::import::import;
use crate::records::{delete_many, resolve};

fn parse_batch(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found())
}

// Axum handlers.

pub async fn org_import(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name)): Path<(String, String)>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    import(&state, &p, Some(&org), &name, params, headers, body).await
}

pub async fn global_import(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    import(&state, &p, None, &name, params, headers, body).await
}

pub async fn org_delete_many(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name)): Path<(String, String)>,
    params: Params,
) -> ApiResult<Response> {
    params.only(&["filter"])?;
    delete_many(&state, &p, Some(&org), &name, params.get("filter"), None).await
}

pub async fn global_delete_many(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    params.only(&["filter"])?;
    delete_many(&state, &p, None, &name, params.get("filter"), None).await
}

pub async fn org_delete_batch(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name, batch)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    // Resolve first, so an unknown collection or org answers before a malformed id does.
    resolve(&state, &p, Some(&org), &name).await?;
    let batch = parse_batch(&batch)?;
    delete_many(&state, &p, Some(&org), &name, None, Some(batch)).await
}

pub async fn global_delete_batch(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((name, batch)): Path<(String, String)>,
) -> ApiResult<Response> {
    resolve(&state, &p, None, &name).await?;
    let batch = parse_batch(&batch)?;
    delete_many(&state, &p, None, &name, None, Some(batch)).await
}
