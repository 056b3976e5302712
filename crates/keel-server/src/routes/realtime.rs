//! Realtime routes: thin adapters from paths to [`crate::realtime`].

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;

use crate::http::error::ApiResult;
use crate::http::extract::{Auth, ClientIp, Params};
use crate::http::state::AppState;
use crate::realtime::{StreamQuery, open_job, open_records};

fn ip(client: Option<Extension<ClientIp>>) -> Option<std::net::IpAddr> {
    client.and_then(|Extension(ClientIp(ip))| ip)
}

pub async fn org_events(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, collection)): Path<(String, String)>,
    params: Params,
    headers: HeaderMap,
    client: Option<Extension<ClientIp>>,
) -> ApiResult<Response> {
    let query = StreamQuery {
        org: Some(&org),
        collection: &collection,
        record: None,
    };
    open_records(&state, &p, query, params, &headers, ip(client)).await
}

pub async fn org_record_events(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, collection, id)): Path<(String, String, String)>,
    params: Params,
    headers: HeaderMap,
    client: Option<Extension<ClientIp>>,
) -> ApiResult<Response> {
    let query = StreamQuery {
        org: Some(&org),
        collection: &collection,
        record: Some(&id),
    };
    open_records(&state, &p, query, params, &headers, ip(client)).await
}

pub async fn global_events(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(collection): Path<String>,
    params: Params,
    headers: HeaderMap,
    client: Option<Extension<ClientIp>>,
) -> ApiResult<Response> {
    let query = StreamQuery {
        org: None,
        collection: &collection,
        record: None,
    };
    open_records(&state, &p, query, params, &headers, ip(client)).await
}

pub async fn global_record_events(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((collection, id)): Path<(String, String)>,
    params: Params,
    headers: HeaderMap,
    client: Option<Extension<ClientIp>>,
) -> ApiResult<Response> {
    let query = StreamQuery {
        org: None,
        collection: &collection,
        record: Some(&id),
    };
    open_records(&state, &p, query, params, &headers, ip(client)).await
}

pub async fn job_events(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    params: Params,
    headers: HeaderMap,
    client: Option<Extension<ClientIp>>,
) -> ApiResult<Response> {
    open_job(&state, &p, &id, params, &headers, ip(client)).await
}
