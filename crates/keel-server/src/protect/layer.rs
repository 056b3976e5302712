//! The protection middleware: IP lists, rate limits and the upload concurrency cap applied
//! to each request, with the state every handler gets. The settings it applies are
//! [`super::Protection`]'s.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{caller_key, class_limits, org_of};
use crate::http::error::ApiError;
use crate::http::extract::{ClientIp, ResolvedPrincipal};
use crate::http::route_class::classify;
use crate::http::shared::RateDecision;
use crate::http::state::AppState;

/// The middleware: IP lists, then rate limits, then the upload concurrency cap.
pub async fn protect(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let protection = &state.protection;
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let ip = protection.client_ip(peer, request.headers());
    request.extensions_mut().insert(ClientIp(ip));
    let path = request.uri().path().to_string();
    if !path.starts_with("/health/") && !protection.ip_allowed(ip) {
        return ApiError::new("ip_blocked", "requests from this address are not accepted").into_response();
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let class = classify(request.method(), route.as_deref(), &path);
    let Some(class) = class.filter(|_| protection.enabled) else {
        return next.run(request).await;
    };
    let principal = if protection.needs_principal(class) {
        // A bad token is the handler's to refuse (401); for limits the caller is anonymous.
        crate::http::extract::principal_of(request.headers(), &state)
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let caller = principal.as_ref().map(caller_key);
    let org = principal.as_ref().and(org_of(route.as_deref(), &path));
    let keys = protection.keys(class, ip, caller.as_deref(), org);
    let decision = state.shared.gcra_many(&protection.local, &keys).await;
    let store = if decision.shared { "redis" } else { "local" };
    if !decision.allowed {
        state.metrics.counter(
            "keel_rate_limited_total",
            &[("class", class.as_str().into()), ("store", store.into())],
            1,
        );
        let scope = keys
            .get(decision.index)
            .map(|k| k.key.split(':').nth(1).unwrap_or(""))
            .unwrap_or("");
        let mut error = ApiError::new("rate_limited", "too many requests; retry after the time in Retry-After")
            .with_details(serde_json::json!({
                "class": class.as_str(),
                "scope": scope,
                "limit": decision.limit,
                "period_seconds": decision.period_ms as f64 / 1000.0,
                "retry_after_ms": decision.retry_after_ms,
            }));
        error.retry_after = Some(decision.retry_after_ms.div_ceil(1000).max(1));
        let mut response = error.into_response();
        set_headers(response.headers_mut(), &decision, !keys.is_empty());
        return response;
    }
    if let Some(principal) = principal.clone() {
        request.extensions_mut().insert(ResolvedPrincipal(principal));
    }
    let cap = class_limits(class, &protection.spec).concurrent_per_user;
    let slot = match (cap, &caller) {
        (Some(cap), Some(caller)) => {
            let lease = protection.timeout(
                Some(class),
                Duration::from_millis(state.config.server.request_timeout_ms),
            );
            let key = format!("{}:{caller}", class.as_str());
            match state.shared.acquire_slot(&protection.local, &key, cap, lease).await {
                Some(slot) => Some(slot),
                None => {
                    state.metrics.counter(
                        "keel_rate_limited_total",
                        &[("class", class.as_str().into()), ("store", "concurrency".into())],
                        1,
                    );
                    let mut error = ApiError::new(
                        "too_many_concurrent",
                        format!("at most {cap} of these requests may run at once per user; wait for one to finish"),
                    )
                    .with_details(serde_json::json!({ "class": class.as_str(), "concurrent": cap }));
                    error.retry_after = Some(1);
                    return error.into_response();
                }
            }
        }
        _ => None,
    };
    let mut response = next.run(request).await;
    drop(slot);
    set_headers(response.headers_mut(), &decision, !keys.is_empty());
    response
}

/// `RateLimit-Limit`, `-Remaining`, `-Reset` (seconds) and `-Policy` of the binding limit.
fn set_headers(headers: &mut HeaderMap, decision: &RateDecision, any: bool) {
    if !any {
        return;
    }
    let seconds = |ms: u64| HeaderValue::from(ms.div_ceil(1000));
    headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    headers.insert("ratelimit-reset", seconds(decision.reset_ms));
    if let Ok(policy) = HeaderValue::from_str(&format!("{};w={}", decision.limit, decision.period_ms.div_ceil(1000))) {
        headers.insert("ratelimit-policy", policy);
    }
}
