//! Serving stored files: streaming downloads, removal, and signed links that download
//! without credentials until they expire.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use keel_spec::Action;
use keel_store::files::{self};
use keel_store::records::{self, parse_object};
use keel_store::system::Principal;
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use super::{file_field, file_id_of, files_of, locked_record, object_key, parse_id, write_field};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::Params;
use crate::http::state::AppState;
use crate::records::access::{ensure_allowed, resolve, resolve_write, triggered};

/// `attachment; filename="…"; filename*=UTF-8''…` for any name.
fn disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

pub async fn download(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    id: &str,
    field: &str,
    file: &str,
) -> ApiResult<Response> {
    let target = resolve(state, principal, org, name).await?;
    let builder = target.builder(state);
    ensure_allowed(&builder, Action::View)?;
    let id = parse_id(id)?;
    let file = parse_id(file)?;
    let spec = file_field(target.collection, field)?;
    let json = records::get(
        &state.db,
        &builder,
        id,
        &[],
        Some(&[spec.name.to_string(), "org".to_string()]),
    )
    .await?
    .ok_or_else(ApiError::not_found)?;
    let record = parse_object(&json);
    let meta = files_of(record.get(spec.name))
        .into_iter()
        .find(|m| file_id_of(m) == Some(file))
        .ok_or_else(ApiError::not_found)?;
    // The org of the record, not of the request (`-` reads across orgs).
    let org = record
        .get("org")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    let key = object_key(org, &target.collection.name, id, spec.name, file);
    let content_type = meta
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("application/octet-stream");
    let file_name = meta.get("name").and_then(Value::as_str).unwrap_or("file");
    let sha256 = meta.get("sha256").and_then(Value::as_str);
    stream_file(state, &key, content_type, file_name, sha256).await
}

/// A stored object as a download.
async fn stream_file(
    state: &AppState,
    key: &str,
    content_type: &str,
    file_name: &str,
    sha256: Option<&str>,
) -> ApiResult<Response> {
    let (size, stream) = match state.storage.get(key).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => {
            tracing::error!(key = %key, "a file the record lists is missing from storage");
            return Err(ApiError::not_found());
        }
        Err(error) => return Err(ApiError::internal(error)),
    };
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(value) = HeaderValue::from_str(&disposition(file_name)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    if let Some(hash) = sha256
        && let Ok(value) = HeaderValue::from_str(&format!("\"{hash}\""))
    {
        headers.insert(header::ETAG, value);
    }
    Ok(response)
}

pub async fn remove(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    id: &str,
    field: &str,
    file: &str,
) -> ApiResult<Response> {
    let target = resolve_write(state, principal, org, name, Action::Update).await?;
    let id = parse_id(id)?;
    let file = parse_id(file)?;
    let spec = file_field(target.collection, field)?;
    let mut tx = state.db.begin().await?;
    let record = locked_record(&mut tx, state, &target, id).await?;
    let current = files_of(record.get(spec.name));
    if !current.iter().any(|m| file_id_of(m) == Some(file)) {
        return Err(ApiError::not_found());
    }
    let value = if spec.multiple {
        Value::Array(current.into_iter().filter(|m| file_id_of(m) != Some(file)).collect())
    } else {
        Value::Null
    };
    let builder = target.builder(state);
    write_field(&mut tx, &target.scope(&builder), &record, spec.name, value, None).await?;
    let keys: Vec<String> = files::file_delete(&mut tx, &[file])
        .await?
        .into_iter()
        .map(|removed| removed.object_key)
        .collect();
    tx.commit().await?;
    state.storage.delete_after_commit(&state.db, &keys).await;
    triggered(state, &target.collection.triggers.on_update, 1);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The longest a signed link lives, and its default.
const MAX_LINK_SECONDS: u64 = 3_600;
const DEFAULT_LINK_SECONDS: u64 = 300;

/// The link-signing key: random, created once in the database and shared by every instance.
/// HMAC-SHA256 of a link's file and expiry under a key of the ring (the key id is signed too,
/// except for links made before the ring, whose key is `legacy`).
fn signature(key: &[u8], kid: &str, file: Uuid, expires: i64) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    if kid == "legacy" {
        mac.update(format!("{file}.{expires}").as_bytes());
    } else {
        mac.update(format!("{kid}.{file}.{expires}").as_bytes());
    }
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// `POST …/files/{field}/{file}/link`: a URL that downloads the file without credentials
/// until it expires (for `<img src>` and browser downloads). Needs the view rule.
#[allow(clippy::too_many_arguments)]
pub async fn link(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    id: &str,
    field: &str,
    file: &str,
    params: Params,
) -> ApiResult<Response> {
    params.only(&["expires_in"])?;
    let seconds = match params.get("expires_in") {
        None => DEFAULT_LINK_SECONDS,
        Some(raw) => match raw.parse::<u64>() {
            Ok(n) if (1..=MAX_LINK_SECONDS).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    "invalid_query",
                    format!("expires_in is 1 to {MAX_LINK_SECONDS} seconds"),
                ));
            }
        },
    };
    let target = resolve(state, principal, org, name).await?;
    let builder = target.builder(state);
    ensure_allowed(&builder, Action::View)?;
    let id = parse_id(id)?;
    let file = parse_id(file)?;
    let spec = file_field(target.collection, field)?;
    let json = records::get(&state.db, &builder, id, &[], Some(&[spec.name.to_string()]))
        .await?
        .ok_or_else(ApiError::not_found)?;
    if !files_of(parse_object(&json).get(spec.name))
        .iter()
        .any(|m| file_id_of(m) == Some(file))
    {
        return Err(ApiError::not_found());
    }
    let expires = Utc::now().timestamp() + seconds as i64;
    let (kid, key) = state.keys.signer(&state.db).await?;
    let signature = signature(&key, &kid, file, expires);
    let url = format!("/api/v1/files/{file}?expires={expires}&kid={kid}&signature={signature}");
    let expires_at = chrono::DateTime::from_timestamp(expires, 0).map(|t| keel_query::value::format_datetime(&t));
    Ok(axum::Json(json!({ "url": url, "expires_at": expires_at })).into_response())
}

/// `GET /api/v1/files/{file}?expires=…&signature=…`: a signed link, no credentials.
pub async fn signed_download(state: &AppState, file: &str, params: Params) -> ApiResult<Response> {
    params.only(&["expires", "kid", "signature"])?;
    let refused = || ApiError::new("invalid_signature", "this link is not valid");
    let file = Uuid::parse_str(file).map_err(|_| refused())?;
    let expires: i64 = params.get("expires").and_then(|e| e.parse().ok()).ok_or_else(refused)?;
    let given = params.get("signature").ok_or_else(refused)?;
    // Links made before the key ring carry no key id.
    let kid = params.get("kid").unwrap_or("legacy");
    if kid.len() > 64 {
        return Err(refused());
    }
    let key = state.keys.verifier(&state.db, kid).await?.ok_or_else(refused)?;
    if !crate::auth::browser::constant_time_eq(given, &signature(&key, kid, file, expires)) {
        return Err(refused());
    }
    if Utc::now().timestamp() > expires {
        return Err(ApiError::new(
            "link_expired",
            "this link has expired; ask for a new one",
        ));
    }
    // A file removed since the link was made is gone.
    let stored = files::file_get(&state.db, file)
        .await?
        .ok_or_else(ApiError::not_found)?;
    stream_file(
        state,
        &stored.object_key,
        &stored.content_type,
        &stored.name,
        Some(&stored.sha256),
    )
    .await
}

// Axum handlers.
