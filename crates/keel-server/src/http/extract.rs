//! Extractors whose rejections are `ApiError`s, so every failure uses the same envelope:
//! JSON bodies, query strings, the caller (from the bearer token) and the org of the path.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use keel_store::system::{self, Org, Principal};
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::http::error::{ApiError, ApiResult};
use crate::http::state::AppState;

/// A JSON body. Malformed JSON, a wrong content type or an oversized body are 4xx with codes.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let is_json = media_type(content_type).eq_ignore_ascii_case("application/json");
        if !is_json {
            return Err(ApiError::new(
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new("payload_too_large", "the body is larger than the server accepts")
                } else {
                    ApiError::new("bad_request", rejection.body_text())
                }
            })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A JSON body as `T`, refused (400 `invalid_json`) if it is not JSON, holds a NUL, or is
/// not the request's shape.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new("invalid_json", format!("the body is not valid JSON: {e}")))?;
    if contains_nul(&value) {
        // PostgreSQL text cannot hold NUL; SQLite would cut strings at it. Refuse it everywhere.
        return Err(ApiError::new(
            "invalid_json",
            "strings must not contain NUL (\\u0000) characters",
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            "invalid_json",
            format!("the body is not valid JSON for this request: {e}"),
        )
    })
}

/// Whether any string (or key) in a JSON value holds a NUL character.
fn contains_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(contains_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Query-string parameters: each at most once, and only the names a route accepts.
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        if query.len() > 16 * 1024 {
            return Err(ApiError::new("invalid_query", "the query string is longer than 16 KiB"));
        }
        let mut params = HashMap::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key.contains('\0') || value.contains('\0') {
                return Err(ApiError::new(
                    "invalid_query",
                    "the query string must not contain NUL characters",
                ));
            }
            if params.insert(key.to_string(), value.to_string()).is_some() {
                return Err(ApiError::new(
                    "invalid_query",
                    format!("parameter '{key}' is given twice"),
                ));
            }
        }
        Ok(Params(params))
    }
}

impl Params {
    /// Rejects any parameter not in `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        for key in self.0.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(ApiError::new(
                    "invalid_query",
                    format!("unknown parameter '{key}'; this route accepts: {}", allowed.join(", ")),
                )
                .with_details(serde_json::json!({ "parameter": key })));
            }
        }
        Ok(())
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// Hashes a bearer token for lookup: tokens are stored only as SHA-256 hashes.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The authenticated caller. Rejects with 401 when there is no valid token.
pub struct Auth(pub Principal);

/// The caller if a valid token was sent; `None` for anonymous requests.
pub struct MaybeAuth(pub Option<Principal>);

async fn principal(parts: &Parts, state: &AppState) -> Result<Option<Principal>, ApiError> {
    let principal = match parts.extensions.get::<ResolvedPrincipal>() {
        Some(resolved) => Some(resolved.0.clone()),
        None => principal_of(&parts.headers, state).await?,
    };
    if let Some(Principal::User { user, .. }) = &principal
        && user.email_verified_at.is_none()
        && !user.superuser
        && state.config.auth.require_verified_email
        && !under_auth(parts)
    {
        return Err(ApiError::new(
            "email_not_verified",
            "verify your email address first: open the link we sent, or ask for a new one with POST /api/v1/auth/verify/request",
        ));
    }
    Ok(principal)
}

/// Whether the request is for `/api/v1/auth/…` (a nested router sees its path without the
/// prefix, so the original URI decides).
fn under_auth(parts: &Parts) -> bool {
    let path = match parts.extensions.get::<axum::extract::OriginalUri>() {
        Some(original) => original.0.path(),
        None => parts.uri.path(),
    };
    path.starts_with("/api/v1/auth/")
}

/// How stale a session's `last_seen_at` may get before a request marks it again: the session
/// list is that precise, and a busy session costs one write per this interval, not one per
/// request.
const SESSION_SEEN_EVERY: chrono::Duration = chrono::Duration::minutes(5);

/// The caller named by a request's `Authorization` header: `None` without one, an error when
/// the token is malformed, unknown, expired or revoked.
pub async fn principal_of(headers: &axum::http::HeaderMap, state: &AppState) -> Result<Option<Principal>, ApiError> {
    let token = match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let text = value.to_str().unwrap_or("");
            text.strip_prefix("Bearer ")
                .or_else(|| text.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty() && t.len() <= 256)
                .ok_or_else(|| ApiError::new("unauthenticated", "the Authorization header must be 'Bearer <token>'"))?
        }
        // A cookie session (Keel's own pages); `browser::guard` has checked a write's CSRF token.
        None => match cookie(headers, SESSION_COOKIE) {
            Some(token) if token.starts_with("ks_") && token.len() <= 256 => token,
            _ => return Ok(None),
        },
    };
    let hash = token_hash(token);
    let key = state.shared.key(&["auth", &hash]);
    let now = chrono::Utc::now();
    if let Some(cached) = state.shared.get(&key).await
        && let Ok(principal) = serde_json::from_str::<Principal>(&cached)
        && principal.expires_at().is_none_or(|at| at > now)
    {
        state
            .metrics
            .counter("keel_token_cache_total", &[("result", "hit".into())], 1);
        return Ok(Some(principal));
    }
    let principal = system::principal_by_token(&state.db, &hash).await?;
    let Some(principal) = principal else {
        return Err(ApiError::new(
            "unauthenticated",
            "the token is unknown, expired or revoked",
        ));
    };
    if let Principal::User { session, seen_at, .. } = &principal
        && seen_at.is_none_or(|at| now - at > SESSION_SEEN_EVERY)
    {
        // Off the request's path: the answer does not wait for the write.
        let (db, session) = (state.db.clone(), *session);
        tokio::spawn(async move {
            if let Err(error) = system::session_seen(&db, session).await {
                tracing::warn!(%error, "could not mark a session as used");
            }
        });
    }
    if state.shared.enabled() {
        state
            .metrics
            .counter("keel_token_cache_total", &[("result", "miss".into())], 1);
        // Cached no longer than the token lives; revocation deletes the entry (forget_tokens).
        let remaining = principal.expires_at().map(|at| (at - now).num_seconds().max(0) as u64);
        let seconds = state
            .config
            .redis
            .session_cache_seconds
            .min(remaining.unwrap_or(u64::MAX));
        if seconds > 0
            && let Ok(json) = serde_json::to_string(&principal)
        {
            state.shared.set_ex(&key, &json, seconds).await;
        }
    }
    Ok(Some(principal))
}

/// An org and the user's role in it: from the shared cache (Redis) when it has it, else the
/// database. Membership changes delete the entry on every instance (`forget_membership`).
async fn membership(state: &AppState, slug: &str, user: Uuid) -> Result<Option<(Org, Option<String>)>, ApiError> {
    let key = state.shared.key(&["member", &user.to_string(), slug]);
    if let Some(cached) = state.shared.get(&key).await
        && let Ok(found) = serde_json::from_str::<(Org, Option<String>)>(&cached)
    {
        return Ok(Some(found));
    }
    let found = system::org_with_role(&state.db, slug, Some(user)).await?;
    if let Some(found) = &found
        && state.shared.enabled()
        && let Ok(json) = serde_json::to_string(found)
    {
        state
            .shared
            .set_ex(&key, &json, state.config.redis.session_cache_seconds)
            .await;
    }
    Ok(found)
}

/// Drops a cached membership after it changed, on every instance.
pub async fn forget_membership(state: &AppState, user: Uuid, slug: &str) {
    state
        .shared
        .del(&[state.shared.key(&["member", &user.to_string(), slug])])
        .await;
}

/// Drops revoked tokens from the shared cache, so every instance refuses them at once.
pub async fn forget_tokens(state: &AppState, hashes: &[String]) {
    let keys: Vec<String> = hashes.iter().map(|hash| state.shared.key(&["auth", hash])).collect();
    state.shared.del(&keys).await;
}

/// The hash of the request's bearer token or session cookie, if it sent one.
pub fn request_token_hash(headers: &axum::http::HeaderMap) -> Option<String> {
    let token = match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let value = value.to_str().ok()?;
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))?
                .trim()
        }
        None => cookie(headers, SESSION_COOKIE)?,
    };
    (!token.is_empty()).then(|| token_hash(token))
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match principal(parts, state).await? {
            Some(p) => Ok(Auth(p)),
            None => Err(ApiError::new(
                "unauthenticated",
                "sign in and send 'Authorization: Bearer <token>'",
            )),
        }
    }
}

impl FromRequestParts<AppState> for MaybeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(MaybeAuth(principal(parts, state).await?))
    }
}

/// The caller as rules see it.
#[derive(Debug, Clone)]
pub struct CallerInfo {
    pub user: Option<Uuid>,
    pub api_key: Option<Uuid>,
    pub superuser: bool,
}

impl CallerInfo {
    pub fn of(principal: &Principal) -> CallerInfo {
        match principal {
            Principal::User { user, .. } => CallerInfo {
                user: Some(user.id),
                api_key: None,
                superuser: user.superuser,
            },
            Principal::ApiKey(key) => CallerInfo {
                user: None,
                api_key: Some(key.id),
                superuser: false,
            },
        }
    }
}

/// Resolves `{org}` for the caller: the org and the caller's role in it. Non-members get
/// 404, so other orgs' existence does not leak; the superuser sees every org.
pub async fn org_access(
    state: &AppState,
    principal: &Principal,
    slug: &str,
) -> Result<(Org, Option<String>), ApiError> {
    // Only a well-formed slug can name an org; anything else is simply not found.
    let well_formed = (2..=63).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !well_formed {
        return Err(ApiError::not_found());
    }
    match principal {
        Principal::User { user, .. } => {
            let (org, role) = membership(state, slug, user.id)
                .await?
                .ok_or_else(ApiError::not_found)?;
            if role.is_none() && !user.superuser {
                return Err(ApiError::not_found());
            }
            crate::auth::mfa::enforce(state, &org, user).await?;
            Ok((org, role))
        }
        Principal::ApiKey(key) => {
            let (org, _) = system::org_with_role(&state.db, slug, None)
                .await?
                .ok_or_else(ApiError::not_found)?;
            if org.id != key.org {
                return Err(ApiError::not_found());
            }
            Ok((org, Some(key.role.clone())))
        }
    }
}

/// The page size a request asks for (`limit`), within `limits.default_page_size` and
/// `limits.max_page_size`.
pub fn page_limit(state: &AppState, raw: Option<&str>) -> ApiResult<u32> {
    let limits = &state.config.limits;
    match raw {
        None => Ok(limits.default_page_size),
        Some(text) => {
            let value: u32 = text
                .parse()
                .map_err(|_| ApiError::new("invalid_query", "limit must be a positive integer"))?;
            if value == 0 {
                return Err(ApiError::new("invalid_query", "limit must be at least 1"));
            }
            if value > limits.max_page_size {
                return Err(
                    ApiError::new("limit_too_large", format!("limit is at most {}", limits.max_page_size))
                        .with_details(json!({ "max": limits.max_page_size })),
                );
            }
            Ok(value)
        }
    }
}

/// The client's address as Keel sees it, for handlers (log-in backoff) and logs.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

/// The caller, resolved once by the protection layer for per-user limits and reused by the
/// `Auth` extractor.
#[derive(Clone)]
pub struct ResolvedPrincipal(pub Principal);

/// A JSON body that may be left out (or blank): its type's default then; otherwise read as
/// [`ApiJson`] reads one.
pub fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(body)
}

/// The session cookie (set by `auth::browser`, read by the `Auth` extractor).
pub const SESSION_COOKIE: &str = "keel_session";

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// The media type of a `Content-Type` value without its parameters, as sent
/// (`Text/CSV; charset=utf-8` is `Text/CSV`); media types compare case-insensitively.
pub fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}
