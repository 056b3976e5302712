//! The audit layer: every write to the admin API and every change to an org's membership,
//! API keys, invitations or settings is recorded in `keel_audit` with who made it (user or
//! key), from which address, the route, the status it got, and the request id, whatever
//! client sent it (the console, `curl`, a script). Refused attempts (403, 409) are recorded
//! too; requests without a valid credential (401) are not, as they identify no one.
//! `GET /api/v1/admin/audit` lists every entry; `GET /api/v1/orgs/{org}/audit` an org's, to
//! its managers.

use axum::Json;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use keel_store::audit::{self, Entry};
use keel_store::system::Principal;
use serde_json::{Value, json};

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{Auth, ClientIp, Params, ResolvedPrincipal, org_access, page_limit, principal_of};
use crate::http::state::AppState;

/// Whether a write to this route template is audited.
fn audited(route: &str) -> bool {
    route.starts_with("/api/v1/admin/")
        || route == "/api/v1/orgs"
        || route == "/api/v1/orgs/{org}"
        || ["members", "api_keys", "invitations"]
            .iter()
            .any(|part| route.starts_with(&format!("/api/v1/orgs/{{org}}/{part}")))
}

pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let Some(route) = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
    else {
        return next.run(request).await;
    };
    if !audited(&route) {
        return next.run(request).await;
    }
    let principal = match request.extensions().get::<ResolvedPrincipal>() {
        Some(resolved) => Some(resolved.0.clone()),
        None => principal_of(request.headers(), &state).await.ok().flatten(),
    };
    let ip = request.extensions().get::<ClientIp>().and_then(|c| c.0);
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let request_id = crate::http::context::current_request_id().unwrap_or_default();
    let response = next.run(request).await;
    let Some(principal) = principal else { return response };
    let mut entry = Entry::new(&method, &route, &path, response.status().as_u16(), &request_id);
    entry.ip = ip.map(|ip| ip.to_string());
    match &principal {
        Principal::User { user, .. } => {
            entry.actor = Some(user.id);
            entry.actor_email = Some(user.email.clone());
        }
        Principal::ApiKey(key) => entry.api_key = Some(key.id.to_string()),
    }
    if route.starts_with("/api/v1/orgs/{org}")
        && let Some(slug) = path
            .strip_prefix("/api/v1/orgs/")
            .and_then(|rest| rest.split('/').next())
    {
        entry.org = keel_store::system::org_with_role(&state.db, slug, None)
            .await
            .ok()
            .flatten()
            .map(|(org, _)| org.id);
    }
    if let Err(error) = audit::insert(&state.db, &entry).await {
        tracing::error!(%error, route, "could not write the audit entry");
    }
    response
}

fn page(entries: Vec<Entry>, limit: u32) -> Value {
    let next = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.id.to_string()))
        .flatten();
    json!({ "items": entries, "next": next })
}

fn before_of(params: &Params) -> ApiResult<Option<uuid::Uuid>> {
    params
        .get("before")
        .map(|b| {
            b.parse()
                .map_err(|_| ApiError::new("invalid_query", "'before' is the `next` of a page"))
        })
        .transpose()
}

/// `GET /api/v1/admin/audit` (superuser): every entry, newest first; `limit`, `before`.
pub async fn all(State(state): State<AppState>, Auth(principal): Auth, params: Params) -> ApiResult<Json<Value>> {
    crate::auth::roles::require_superuser(&principal)?;
    params.only(&["limit", "before"])?;
    let limit = page_limit(&state, params.get("limit"))?;
    let entries = audit::list(&state.db, None, before_of(&params)?, i64::from(limit)).await?;
    Ok(Json(page(entries, limit)))
}

/// `GET /api/v1/orgs/{org}/audit` (the org's managers): the org's entries.
pub async fn of_org(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(org): Path<String>,
    params: Params,
) -> ApiResult<Json<Value>> {
    params.only(&["limit", "before"])?;
    let (org, role) = org_access(&state, &principal, &org).await?;
    crate::auth::require_manager(&state, &principal, &role)?;
    let limit = page_limit(&state, params.get("limit"))?;
    let entries = audit::list(&state.db, Some(org.id), before_of(&params)?, i64::from(limit)).await?;
    Ok(Json(page(entries, limit)))
}
