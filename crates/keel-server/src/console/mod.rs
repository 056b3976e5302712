//! The operators' console (O9): a page at `/_/` for the superuser and for org owners and
//! managers, served from files embedded in the binary.
//!
//! The console is a client of the public API and nothing else: it signs in with a cookie
//! session (`POST /api/v1/auth/login {cookie: true}`, CSRF token on every write), reads and
//! writes through the same routes as any client, and so can do nothing a caller with the
//! same role could not do with `curl`. Role checks, validation, the activity log and rate
//! limits are the API's. What lives here: the files and how they are served
//! ([`assets`]), `[console]` ([`settings`]), the address fence in front of the console and
//! the admin API ([`fence`]), the audit log of operators' writes ([`audit`]), and `GET /api/v1/schema`, the app's collections as the
//! console draws them ([`schema`]).

use std::net::IpAddr;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use ipnet::IpNet;

use crate::http::error::ApiError;
use crate::http::extract::ClientIp;
use crate::http::state::AppState;

pub mod assets;
pub mod audit;
pub mod schema;
pub mod settings;

/// The console's routes: the page, its files, and `/_` sent on to `/_/`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/_", get(|| async { Redirect::permanent("/_/") }))
        .route("/_/", get(page))
        .route("/_/assets/{name}", get(file))
}

async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.config.console.enabled {
        return crate::routes::ops::not_found().await.into_response();
    }
    assets::assets().page(&headers)
}

async fn file(State(state): State<AppState>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    if !state.config.console.enabled {
        return crate::routes::ops::not_found().await.into_response();
    }
    match assets::assets().file(&name, &headers) {
        Some(response) => response,
        None => {
            let mut response = ApiError::new("not_found", "no such console file").into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
            response
        }
    }
}

/// The console's address list, parsed once.
pub struct Fence {
    allow: Vec<IpNet>,
}

impl Fence {
    pub fn new(config: &crate::Config) -> Fence {
        // `Config::validate` parsed the same list.
        let allow = crate::http::settings::parse_cidrs(&config.console.allow_ips).unwrap_or_default();
        Fence { allow }
    }

    fn admits(&self, ip: Option<IpAddr>) -> bool {
        self.allow.is_empty() || ip.is_some_and(|ip| self.allow.iter().any(|net| net.contains(&ip)))
    }
}

/// Whether a path is behind the fence: the console (not the account pages its links open,
/// which end users reach from their mail) and the admin API.
fn fenced(path: &str) -> bool {
    (path == "/_" || path.starts_with("/_/") && !path.starts_with("/_/auth/")) || path.starts_with("/api/v1/admin/")
}

/// Refuses a console or admin request from an address outside `console.allow_ips` (runs
/// after the protection layer, which knows the client's address behind trusted proxies).
pub async fn fence(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if fenced(request.uri().path()) {
        let ip = request.extensions().get::<ClientIp>().and_then(|c| c.0);
        if !state.fence.admits(ip) {
            return ApiError::new("ip_blocked", "the console is not open to this address").into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_covers_the_console_and_the_admin_api() {
        assert!(fenced("/_/"));
        assert!(fenced("/_"));
        assert!(fenced("/_/assets/console.0123456789.js"));
        assert!(fenced("/api/v1/admin/jobs"));
        assert!(!fenced("/_/auth/reset"));
        assert!(!fenced("/api/v1/orgs/acme/tasks"));
        assert!(!fenced("/_x"));
    }
}
