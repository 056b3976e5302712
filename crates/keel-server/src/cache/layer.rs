//! The cache middleware: answers cached reads, stores fresh ones and bumps stamps after
//! writes, with the state every handler gets. What it keeps and how stamps work is
//! [`super::ResponseCache`]'s.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_store::system::Principal;

use super::{Entry, Target, target};
use crate::http::state::AppState;

/// Who an answer was computed for.
fn caller_key(principal: &Principal) -> String {
    match principal {
        Principal::User { user, .. } => format!("u{}{}", user.id.simple(), if user.superuser { "s" } else { "" }),
        Principal::ApiKey(key) => format!("k{}", key.id.simple()),
    }
}

fn outcome(state: &AppState, collection: &str, result: &'static str) {
    let counter = match result {
        "hit" => Some(&state.cache.hits),
        "miss" => Some(&state.cache.misses),
        _ => None,
    };
    if let Some(counter) = counter {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    state.metrics.counter(
        "keel_cache_requests_total",
        &[("collection", collection.to_string()), ("result", result.into())],
        1,
    );
}

/// Write-method routes that change no data, so bump no stamp: signing a file link.
fn changes_nothing(route: &str) -> bool {
    route.ends_with("/files/{field}/{file}/link")
}

/// The middleware: answers cached reads, stores fresh ones, and bumps stamps after writes.
pub async fn cache(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let cache = &state.cache;
    if !cache.enabled() {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let path = request.uri().path().to_string();
    let Some(target) = route.as_deref().and_then(|route| target(route, &path)) else {
        return next.run(request).await;
    };
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        if route.as_deref().is_some_and(changes_nothing) {
            return next.run(request).await;
        }
        let response = next.run(request).await;
        // A refused write changed nothing; anything else may have (even a 5xx after commit).
        if !(response.status().is_client_error()) {
            match target {
                Target::Collection { collection, scope, .. } => {
                    cache.bump(&state.shared, collection, Some(scope)).await
                }
                Target::Org(slug) => cache.bump_org(&state.shared, slug).await,
            }
        }
        return response;
    }
    let Target::Collection {
        collection,
        scope,
        readable: true,
    } = target
    else {
        return next.run(request).await;
    };
    let Some(ttl) = cache.ttl.get(collection).copied() else {
        return next.run(request).await;
    };
    // `-` reads every org of the caller: no one scope's stamp covers it.
    if scope == "-" || method != Method::GET {
        return next.run(request).await;
    }
    let principal = match request.extensions().get::<crate::http::extract::ResolvedPrincipal>() {
        Some(resolved) => Some(resolved.0.clone()),
        None => crate::http::extract::principal_of(request.headers(), &state)
            .await
            .ok()
            .flatten(),
    };
    let Some(principal) = principal else {
        return next.run(request).await;
    };
    let Some(stamp) = cache.stamp(&state.shared, collection, scope).await else {
        outcome(&state, collection, "bypass");
        return next.run(request).await;
    };
    let key = format!(
        "{collection}\u{1f}{scope}\u{1f}{stamp}\u{1f}{}\u{1f}{}",
        caller_key(&principal),
        request.uri().path_and_query().map(|p| p.as_str()).unwrap_or(&path)
    );
    if let Some(entry) = cache.entries.get(&key) {
        if entry.expires > Instant::now() {
            outcome(&state, collection, "hit");
            let mut response = (StatusCode::OK, Body::from(entry.body.clone())).into_response();
            *response.headers_mut() = entry.headers.clone();
            response
                .headers_mut()
                .insert("keel-cache", HeaderValue::from_static("hit"));
            return response;
        }
        cache.entries.remove(&key);
    }
    outcome(&state, collection, "miss");
    let response = next.run(request).await;
    let small = axum::body::HttpBody::size_hint(response.body())
        .exact()
        .is_some_and(|n| n as usize <= cache.max_entry_bytes);
    if response.status() != StatusCode::OK || !small {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, cache.max_entry_bytes).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "").into_response();
    };
    cache.entries.insert(
        key,
        Arc::new(Entry {
            headers: parts.headers.clone(),
            body: bytes.clone(),
            expires: Instant::now() + ttl,
        }),
    );
    state
        .metrics
        .gauge("keel_cache_bytes", &[], cache.entries.weight() as f64);
    state
        .metrics
        .gauge("keel_cache_entries", &[], cache.entries.len() as f64);
    state.metrics.counter_total(
        "keel_cache_evictions_total",
        &[],
        cache.evictions.0.load(Ordering::Relaxed),
    );
    parts.headers.insert("keel-cache", HeaderValue::from_static("miss"));
    Response::from_parts(parts, Body::from(bytes))
}
