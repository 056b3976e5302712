//! Browser security (S6): CORS from an allow-list, security headers on every response, and
//! CSRF protection for cookie sessions.
//!
//! A session can live in a cookie (`keel_session`: `HttpOnly`, `Secure`, `SameSite=Strict`)
//! instead of the `Authorization` header, for Keel's own pages. Browsers send cookies by
//! themselves, so a request that writes with a cookie session must also send
//! `X-CSRF-Token` (the `csrf_token` of the login answer, also in the readable `keel_csrf`
//! cookie) and, when it sends an `Origin`, come from the server's own origin or an allowed
//! one. The token is SHA-256 of a label and the session token: only a holder of the session
//! (which scripts cannot read) has it, and the server keeps nothing to check it.

use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::http::error::ApiError;
use crate::http::state::AppState;

pub use crate::http::extract::{SESSION_COOKIE, cookie};

/// The readable cookie holding the session's CSRF token.
pub const CSRF_COOKIE: &str = "keel_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The CORS layer for `server.cors_origins`, or none (no cross-origin access) when empty.
pub fn cors(config: &crate::Config) -> Option<CorsLayer> {
    let origins = &config.server.cors_origins;
    if origins.is_empty() {
        return None;
    }
    let exposed = [
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "ratelimit-policy",
        "retry-after",
        "etag",
        "location",
        "content-disposition",
        "x-request-id",
    ]
    .map(HeaderName::from_static);
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static(CSRF_HEADER),
        ])
        .expose_headers(exposed)
        .max_age(Duration::from_secs(600));
    Some(if origins.iter().any(|o| o == "*") {
        // Any origin, but then never with credentials (cookies): bearer tokens only.
        layer.allow_origin(AllowOrigin::any())
    } else {
        let list: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        layer.allow_origin(AllowOrigin::list(list)).allow_credentials(true)
    })
}

/// The CSRF token of a session token.
pub fn csrf_token(session_token: &str) -> String {
    let digest = Sha256::digest(format!("keel-csrf\0{session_token}").as_bytes());
    digest.iter().take(24).map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets in time that depends on their length only (`subtle`).
pub fn constant_time_eq(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// `Set-Cookie` values that start a cookie session (the session itself, unreadable by
/// scripts, and its CSRF token, readable) or, with `max_age` 0, end it.
pub fn session_cookies(token: &str, max_age_seconds: i64) -> [HeaderValue; 2] {
    let csrf = if token.is_empty() {
        String::new()
    } else {
        csrf_token(token)
    };
    let attributes = format!("Path=/; Max-Age={}; Secure; SameSite=Strict", max_age_seconds.max(0));
    let session = format!("{SESSION_COOKIE}={token}; {attributes}; HttpOnly");
    let readable = format!("{CSRF_COOKIE}={csrf}; {attributes}");
    [session, readable].map(|v| HeaderValue::from_str(&v).expect("cookie values are ASCII tokens"))
}

/// Whether the request reached the proxy in front of Keel over HTTPS (trusted proxies only).
fn forwarded_https(state: &AppState, request: &Request) -> bool {
    let peer = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    state.protection.is_trusted(peer)
        && request
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// Refuses a write that a cookie session carries without its CSRF token or from a foreign
/// origin; then adds the security headers to the response, whatever it is.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let https = forwarded_https(&state, &request);
    let mut response = match csrf_problem(&state, &request) {
        Some(message) => ApiError::new("csrf_failed", message).into_response(),
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    let mut set = |name: HeaderName, value: &'static str| {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    };
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    set(header::X_FRAME_OPTIONS, "DENY");
    // Keel serves data, not pages: nothing in a response may load or run anything.
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    );
    set(HeaderName::from_static("cross-origin-opener-policy"), "same-origin");
    let max_age = state.config.server.hsts_max_age_seconds;
    if https
        && max_age > 0
        && let Ok(value) = HeaderValue::from_str(&format!("max-age={max_age}; includeSubDomains"))
    {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, value);
    }
    response
}

fn csrf_problem(state: &AppState, request: &Request) -> Option<&'static str> {
    let headers = request.headers();
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        || headers.contains_key(header::AUTHORIZATION)
    {
        return None;
    }
    // The account pages' forms carry their link's token and never act on the cookie.
    if request.uri().path().starts_with("/_/auth/") {
        return None;
    }
    let session = cookie(headers, SESSION_COOKIE)?;
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !constant_time_eq(sent, &csrf_token(session)) {
        return Some("a write with a cookie session needs the X-CSRF-Token header of its login");
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && !same_origin(origin, headers)
        && !state.config.server.cors_origins.iter().any(|o| o == origin)
    {
        return Some("a write with a cookie session must come from this server's origin or an allowed one");
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        && !headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|o| state.config.server.cors_origins.iter().any(|allowed| allowed == o))
    {
        return Some("a cross-site write with a cookie session is refused");
    }
    None
}

/// Whether `origin` names the host the request was sent to.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::settings::check_origins;

    #[test]
    fn secrets_compare_whole() {
        assert!(constant_time_eq("abc123", "abc123"));
        assert!(!constant_time_eq("abc123", "abc124"));
        assert!(!constant_time_eq("abc12", "abc123"));
        assert!(!constant_time_eq("", "a"));
        assert!(constant_time_eq("", ""));
    }

    #[test]
    fn origins_are_checked() {
        assert!(
            check_origins(
                &["https://app.example.com".into(), "http://localhost:5173".into()],
                true
            )
            .is_ok()
        );
        assert!(check_origins(&["*".into()], true).is_err(), "no wildcard in production");
        assert!(check_origins(&["*".into()], false).is_ok());
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://*.example.com",
            "https://",
        ] {
            assert!(check_origins(&[bad.into()], false).is_err(), "{bad}");
        }
    }

    #[test]
    fn cookies_and_tokens() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; keel_session=ks_abc; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("ks_abc"));
        assert_eq!(cookie(&headers, "missing"), None);
        assert_eq!(csrf_token("ks_abc"), csrf_token("ks_abc"));
        assert_ne!(csrf_token("ks_abc"), csrf_token("ks_abd"));
        assert_eq!(csrf_token("ks_abc").len(), 48);
        let [session, readable] = session_cookies("ks_abc", 60);
        let session = session.to_str().unwrap();
        assert!(session.starts_with("keel_session=ks_abc;") && session.contains("HttpOnly"));
        assert!(session.contains("Secure") && session.contains("SameSite=Strict"));
        assert!(!readable.to_str().unwrap().contains("HttpOnly"));
    }
}
