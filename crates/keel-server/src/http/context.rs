//! The request middleware: request id (taken from `x-request-id` or generated), one span per
//! request so every log line carries the id, the request timeout, metrics and the access log.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::http::error::{ApiError, ErrorCause};
use crate::http::request_id::REQUEST_ID;
pub use crate::http::request_id::current_request_id;
use crate::http::route_class::classify;
use crate::http::state::AppState;

fn valid_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let ok = !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| text.to_string())
}

pub async fn request_context(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(valid_request_id)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, route = %route);
    let class = classify(
        request.method(),
        request.extensions().get::<MatchedPath>().map(|p| p.as_str()),
        request.uri().path(),
    );
    let timeout = state
        .protection
        .timeout(class, Duration::from_millis(state.config.server.request_timeout_ms));
    // The client, for read-your-writes (only when replicas exist).
    let client = if state.db.has_replicas() {
        crate::http::extract::request_token_hash(request.headers())
    } else {
        None
    };
    let write_client = client.clone();
    let read_state = state.clone();
    let (mut response, queries) = REQUEST_ID
        .scope(
            request_id.clone(),
            keel_store::observe::measured(async move {
                // Read-your-writes: a client that wrote recently reads from the primary.
                if let Some(client) = &client
                    && read_state
                        .shared
                        .wrote_recently(&read_state.recent_writers, client)
                        .await
                {
                    keel_store::observe::require_primary();
                }
                match tokio::time::timeout(timeout, next.run(request)).await {
                    Ok(response) => response,
                    Err(_) => ApiError::new("request_timeout", "the request took too long").into_response(),
                }
            }),
        )
        .instrument(span.clone())
        .await;
    let status = response.status().as_u16();
    if queries.wrote
        && let Some(client) = &write_client
    {
        let window = Duration::from_millis(state.config.database.read_your_writes_ms);
        state.shared.record_write(&state.recent_writers, client, window).await;
    }
    let elapsed = started.elapsed();
    state
        .metrics
        .http_request(&method, &route, status, elapsed.as_secs_f64());
    state.metrics.db_queries(&route, queries);
    if route.starts_with("/api/") {
        state
            .alerts
            .traffic
            .record(chrono::Utc::now(), status, elapsed.as_secs_f64());
    }
    if let Some(code) = response.extensions().get::<crate::http::error::ErrorCode>() {
        // One series per error code (a fixed table): rate limits, blocks, timeouts, limits.
        state
            .metrics
            .counter("keel_http_errors_total", &[("code", code.0.into())], 1);
    }
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let cause = response.extensions().get::<ErrorCause>().map(|c| c.0.clone());
    let _entered = span.enter();
    let db_statements = queries.statements;
    let db_ms = queries.total.as_secs_f64() * 1000.0;
    let unexpected = response
        .extensions()
        .get::<crate::http::error::ErrorCode>()
        .is_some_and(|code| code.0 == "internal");
    if unexpected {
        state.metrics.counter("keel_unexpected_errors_total", &[], 1);
        state
            .errors
            .record(&route, cause.as_deref().unwrap_or("internal error"), &request_id);
    }
    if status >= 500 {
        let cause = cause.as_deref().unwrap_or("");
        tracing::error!(status, duration_ms, db_statements, db_ms, cause, "request failed");
    } else if let Some(cause) = cause {
        tracing::info!(status, duration_ms, db_statements, db_ms, error = %cause, "request");
    } else {
        tracing::info!(status, duration_ms, db_statements, db_ms, "request");
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Turns a caught panic into the standard 500 envelope (the panic message goes to the log).
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".to_string());
    ApiError::internal(format!("panic: {message}")).into_response()
}
