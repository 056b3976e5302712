//! Files (F1–F3, F5): `POST …/{collection}/{id}/files/{field}` streams a file to storage,
//! `GET …/files/{field}/{file}` streams it back, `DELETE` removes it.
//!
//! An upload is written to storage while it arrives (never held in memory), hashed, counted
//! against the field's `max_size`, and typed from its first bytes, not from what the client
//! claims. The record then changes in one transaction: its file field, the `keel_files` row,
//! the activity entry and the update triggers. A file that the transaction does not keep is
//! deleted from storage; a file the transaction drops is deleted after it commits.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures_util::StreamExt;
use keel_query::SqlValue;
use keel_query::value::truncate_micros;
use keel_spec::{Action, Collection, FieldKind};
use keel_store::files::{self, StoredFile};
use keel_store::records::{self, WriteScope, parse_object};
use keel_store::system::Principal;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::extract::{Auth, Params};
use crate::routes::records::{Target, ensure_allowed, resolve, resolve_write, triggered};
use crate::state::AppState;

/// Bytes looked at to tell a file's type.
const SNIFF: usize = 8 * 1024;
/// Files one `multiple` field holds at most.
pub const MAX_FILES: usize = 100;

/// Where an upload's bytes come from.
enum Source<'a> {
    Body(axum::body::BodyDataStream),
    Part(Box<multer::Field<'a>>),
}

impl Source<'_> {
    async fn next(&mut self) -> Option<Result<axum::body::Bytes, String>> {
        match self {
            Source::Body(stream) => stream.next().await.map(|r| r.map_err(|e| e.to_string())),
            Source::Part(field) => field.chunk().await.map_err(|e| e.to_string()).transpose(),
        }
    }
}

/// The file field `name` of the collection, with its settings.
struct FileField<'a> {
    name: &'a str,
    max_bytes: u64,
    types: &'a [String],
    multiple: bool,
}

fn file_field<'a>(collection: &'a Collection, name: &str) -> ApiResult<FileField<'a>> {
    match collection.field(name) {
        Some(field) => match &field.kind {
            FieldKind::File {
                max_bytes,
                types,
                multiple,
                ..
            } => Ok(FileField {
                name: &field.name,
                max_bytes: *max_bytes,
                types,
                multiple: *multiple,
            }),
            _ => Err(ApiError::new(
                "invalid_file",
                format!("'{name}' is not a file field of {}", collection.name),
            )
            .with_details(json!({ "field": name }))),
        },
        None => Err(keel_query::QueryError::unknown_field(name, 0, &collection.name).into()),
    }
}

fn parse_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found())
}

/// Where a file is stored: by org, collection, record and field (seed 000's layout).
pub fn object_key(org: Option<Uuid>, collection: &str, record: Uuid, field: &str, file: Uuid) -> String {
    match org {
        Some(org) => format!("org-{org}/{collection}/{record}/{field}/{file}"),
        None => format!("global/{collection}/{record}/{field}/{file}"),
    }
}

/// The content type of a file from its first bytes: a known signature, else text (with the
/// client's text subtype, e.g. `text/csv`, which bytes cannot tell apart), else binary.
pub fn sniff(head: &[u8], claimed: Option<&str>) -> String {
    if let Some(kind) = infer::get(head) {
        return kind.mime_type().to_string();
    }
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        // A multi-byte character cut at the end of the sample is still text.
        Err(error) => error.error_len().is_none() && error.valid_up_to() + 4 > head.len(),
    };
    let printable = !head.contains(&0);
    if text && printable {
        let claimed = claimed
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let textual = claimed.starts_with("text/")
            || matches!(
                claimed.as_str(),
                "application/json" | "application/x-ndjson" | "application/xml" | "application/csv"
            );
        if textual && claimed != "text/html" {
            return claimed;
        }
        return "text/plain".into();
    }
    "application/octet-stream".into()
}

fn allowed(types: &[String], content_type: &str) -> bool {
    types.is_empty()
        || types.iter().any(|t| match t.strip_suffix("/*") {
            Some(prefix) => content_type.split('/').next() == Some(prefix),
            None => t == content_type,
        })
}

/// A file name as given, without directories or control characters, at most 255 bytes.
fn clean_name(raw: Option<&str>) -> String {
    let base = raw.unwrap_or("").rsplit(['/', '\\']).next().unwrap_or("");
    let mut name: String = base.chars().filter(|c| !c.is_control()).collect();
    while name.len() > 255 {
        name.pop();
    }
    let name = name.trim().to_string();
    if name.is_empty() || name == "." || name == ".." {
        "file".into()
    } else {
        name
    }
}

/// The files a field holds, as a list.
fn files_of(value: Option<&Value>) -> Vec<Value> {
    match value {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::Object(_)) => vec![value.cloned().unwrap_or(Value::Null)],
        _ => vec![],
    }
}

fn file_id_of(meta: &Value) -> Option<Uuid> {
    meta.get("id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// Writes a changed file field in a transaction holding the record's lock: the record, the
/// activity entry (with `reason` when the system made the change) and the update triggers.
/// Returns the record's JSON.
async fn write_field(
    tx: &mut keel_store::Tx,
    scope: &WriteScope<'_>,
    record: &serde_json::Map<String, Value>,
    field: &str,
    value: Value,
    reason: Option<&str>,
) -> Result<String, keel_store::StoreError> {
    let builder = scope.builder;
    let id = record
        .get("id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or(keel_store::StoreError::NotFound)?;
    let version = record.get("version").and_then(Value::as_i64).unwrap_or(0);
    let stored = if value.is_null() {
        SqlValue::Null
    } else {
        SqlValue::Json(value.clone())
    };
    let columns = vec![
        (field.to_string(), stored),
        (
            "updated_at".to_string(),
            SqlValue::Datetime(truncate_micros(Utc::now())),
        ),
    ];
    let json = tx
        .query_one(&builder.update(id, version, &columns))
        .await?
        .and_then(|r| r.into_iter().next())
        .and_then(|c| c.into_text())
        .ok_or(keel_store::StoreError::NotFound)?;
    let old = record.get(field).cloned().unwrap_or(Value::Null);
    let after = serde_json::from_str::<Value>(&json).unwrap_or(Value::Null);
    let triggers = &builder.collection.triggers.on_update;
    records::enqueue_triggers(tx, scope, triggers, "update", &id.to_string(), after).await?;
    let mut changes = json!({ "changed": { field: { "old": old, "new": value } } });
    if let Some(reason) = reason {
        changes["reason"] = json!(reason);
    }
    records::log_activity(tx, scope, &id.to_string(), "update", changes, 1).await?;
    Ok(json)
}

/// The record, locked for update, if the update rule lets the caller change it.
async fn locked_record(
    tx: &mut keel_store::Tx,
    state: &AppState,
    target: &Target<'_>,
    id: Uuid,
) -> ApiResult<serde_json::Map<String, Value>> {
    let builder = target.builder(state);
    let json = tx
        .query_one(&builder.get(id, Action::Update, &[], None, true))
        .await?
        .and_then(|r| r.into_iter().next())
        .and_then(|c| c.into_text())
        .ok_or_else(ApiError::not_found)?;
    Ok(parse_object(&json))
}

#[allow(clippy::too_many_arguments)]
pub async fn upload(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    id: &str,
    field: &str,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    params.only(&["name"])?;
    let target = resolve_write(state, principal, org, name, Action::Update).await?;
    let id = parse_id(id)?;
    let spec = file_field(target.collection, field)?;
    let too_large = || {
        ApiError::new(
            "file_too_large",
            format!("'{}' takes files of at most {} bytes", spec.name, spec.max_bytes),
        )
        .with_details(json!({ "field": spec.name, "max_bytes": spec.max_bytes }))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let request_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let multipart = request_type.to_ascii_lowercase().starts_with("multipart/form-data");
    // A form's own bytes (boundaries, part headers) come on top of the file's.
    let overhead = if multipart { 64 * 1024 } else { 0 };
    if declared.is_some_and(|length| length > spec.max_bytes + overhead) {
        return Err(too_large());
    }
    // The record must exist and be the caller's to change before a byte is stored.
    let builder = target.builder(state);
    let current = state
        .db
        .query_one(&builder.get(id, Action::Update, &[], None, false))
        .await?
        .and_then(|r| r.into_iter().next())
        .and_then(|c| c.into_text())
        .ok_or_else(ApiError::not_found)?;
    let quotas = quotas(state, &target);
    if let Some(length) = declared {
        // An early refusal, never stricter than the count the upload's transaction makes
        // atomically (a replaced single file is given back first).
        let replaced: u64 = if spec.multiple {
            0
        } else {
            files_of(parse_object(&current).get(spec.name))
                .iter()
                .filter_map(|m| m.get("size").and_then(Value::as_u64))
                .sum()
        };
        for (scope, what, quota) in &quotas {
            let (used, _) = files::usage_get(&state.db, scope).await?;
            if (used as u64).saturating_sub(replaced) + length > *quota {
                return Err(quota_exceeded(what, *quota, used, length));
            }
        }
    }
    // The file: the body itself, or the first file part of a `multipart/form-data` form.
    let (mut source, part_name, part_type) = if multipart {
        let boundary = multer::parse_boundary(&request_type)
            .map_err(|_| ApiError::new("invalid_file", "a multipart body needs a boundary"))?;
        // The field keeps the form's stream: it outlives `form`.
        let mut form = multer::Multipart::new(body.into_data_stream(), boundary);
        let field = loop {
            match form.next_field().await {
                Ok(Some(field)) if field.file_name().is_some() || field.name() == Some("file") => break field,
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(ApiError::new(
                        "invalid_file",
                        "the form has no file part (a part with a filename, or named \"file\")",
                    ));
                }
                Err(error) => return Err(ApiError::new("invalid_file", format!("the form is malformed: {error}"))),
            }
        };
        let name = field.file_name().map(str::to_string);
        let kind = field.content_type().map(|m| m.to_string());
        (Source::Part(Box::new(field)), name, kind)
    } else {
        (Source::Body(body.into_data_stream()), None, Some(request_type.clone()))
    };
    let claimed = part_type.as_deref();
    let file_name = clean_name(params.get("name").or(part_name.as_deref()));
    let file_id = Uuid::now_v7();
    let key = object_key(target.org, &target.collection.name, id, spec.name, file_id);
    let mut writer = state.storage.writer(&key).await.map_err(ApiError::internal)?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut head: Vec<u8> = Vec::with_capacity(SNIFF);
    let mut content_type: Option<String> = None;
    let check = |head: &[u8]| -> ApiResult<String> {
        let sniffed = sniff(head, claimed);
        if allowed(spec.types, &sniffed) {
            Ok(sniffed)
        } else {
            Err(ApiError::new(
                "file_type_not_allowed",
                format!(
                    "'{}' takes {}; this file is {sniffed}",
                    spec.name,
                    spec.types.join(", ")
                ),
            )
            .with_details(json!({ "field": spec.name, "type": sniffed, "allowed": spec.types })))
        }
    };
    let received: ApiResult<()> = async {
        while let Some(chunk) = source.next().await {
            let chunk = chunk.map_err(|e| ApiError::new("bad_request", format!("the upload failed: {e}")))?;
            size += chunk.len() as u64;
            if size > spec.max_bytes {
                return Err(too_large());
            }
            hasher.update(&chunk);
            if content_type.is_none() {
                let take = (SNIFF - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
                if head.len() >= SNIFF {
                    content_type = Some(check(&head)?);
                }
            }
            writer.write(&chunk);
            writer.wait_for_capacity(4).await.map_err(ApiError::internal)?;
        }
        if size == 0 {
            return Err(ApiError::new("invalid_file", "the file is empty"));
        }
        if content_type.is_none() {
            content_type = Some(check(&head)?);
        }
        Ok(())
    }
    .await;
    if let Err(error) = received {
        let _ = writer.abort().await;
        return Err(error);
    }
    writer.finish().await.map_err(ApiError::internal)?;
    let content_type = content_type.unwrap_or_else(|| "application/octet-stream".into());
    let sha256 = crate::hex(&hasher.finalize());
    let now = truncate_micros(Utc::now());
    let meta = json!({
        "id": file_id,
        "name": file_name,
        "size": size,
        "type": content_type,
        "sha256": sha256,
        "uploaded_at": keel_query::value::format_datetime(&now),
    });
    let stored = StoredFile {
        id: file_id,
        org: target.org,
        collection: target.collection.name.clone(),
        record: id,
        field: spec.name.to_string(),
        object_key: key.clone(),
        name: file_name,
        content_type,
        size: size as i64,
        sha256,
        uploaded_by: target.actor.user,
        created_at: now,
    };
    let kept: ApiResult<(String, Vec<String>)> = async {
        let mut tx = state.db.begin().await?;
        let record = locked_record(&mut tx, state, &target, id).await?;
        let current = files_of(record.get(spec.name));
        let (value, dropped) = if spec.multiple {
            if current.len() >= MAX_FILES {
                return Err(ApiError::new(
                    "too_many_files",
                    format!("'{}' holds at most {MAX_FILES} files; delete one first", spec.name),
                ));
            }
            let mut list = current;
            list.push(meta.clone());
            (Value::Array(list), vec![])
        } else {
            (meta.clone(), current.iter().filter_map(file_id_of).collect())
        };
        let builder = target.builder(state);
        let json = write_field(&mut tx, &target.scope(&builder), &record, spec.name, value, None).await?;
        files::file_insert(&mut tx, &stored).await?;
        let dropped_keys: Vec<String> = files::file_delete(&mut tx, &dropped)
            .await?
            .into_iter()
            .map(|removed| removed.object_key)
            .collect();
        // Counted after the replaced file was given back, under the counters' row locks.
        for (scope, what, quota) in &quotas {
            if let Err(used) = files::usage_add(&mut tx, scope, size as i64, 1, Some(*quota)).await? {
                return Err(quota_exceeded(what, *quota, used, size));
            }
        }
        for scope in unlimited_scopes(&target) {
            if !quotas.iter().any(|(s, _, _)| *s == scope) {
                let _ = files::usage_add(&mut tx, &scope, size as i64, 1, None).await?;
            }
        }
        tx.commit().await?;
        Ok((json, dropped_keys))
    }
    .await;
    let (json, dropped_keys) = match kept {
        Ok(kept) => kept,
        Err(error) => {
            state.storage.delete_all(std::slice::from_ref(&key)).await;
            return Err(error);
        }
    };
    state.storage.delete_after_commit(&state.db, &dropped_keys).await;
    triggered(state, &target.collection.triggers.on_update, 1);
    let record: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "file": meta, "record": record })),
    )
        .into_response())
}

/// The usage counters an upload by this caller is charged to.
fn unlimited_scopes(target: &Target<'_>) -> Vec<String> {
    let mut scopes = vec![];
    if let Some(org) = target.org {
        scopes.push(files::org_scope(org));
    }
    if let Some(user) = target.actor.user {
        scopes.push(files::user_scope(user));
    }
    scopes
}

/// The counters with a quota: (scope, "user" or "org", bytes allowed).
fn quotas(state: &AppState, target: &Target<'_>) -> Vec<(String, &'static str, u64)> {
    let spec = &state.schema.app.storage;
    let mut out = vec![];
    if let (Some(org), Some(quota)) = (target.org, spec.quota_per_org) {
        out.push((files::org_scope(org), "org", quota));
    }
    if let (Some(user), Some(quota)) = (target.actor.user, spec.quota_per_user) {
        out.push((files::user_scope(user), "user", quota));
    }
    out
}

fn quota_exceeded(what: &str, quota: u64, used: i64, size: u64) -> ApiError {
    ApiError::new(
        "quota_exceeded",
        format!(
            "this file ({size} bytes) would take the {what}'s storage past its quota of {quota} bytes ({used} used)"
        ),
    )
    .with_details(json!({ "scope": what, "quota_bytes": quota, "used_bytes": used, "file_bytes": size }))
}

/// `GET /api/v1/orgs/{org}/usage`: the org's stored files and the caller's, with quotas.
pub async fn org_usage(State(state): State<AppState>, Auth(p): Auth, Path(org): Path<String>) -> ApiResult<Response> {
    let (org, _) = crate::extract::org_access(&state, &p, &org).await?;
    let spec = &state.schema.app.storage;
    let (org_bytes, org_files) = files::usage_get(&state.db, &files::org_scope(org.id)).await?;
    let mut body = json!({
        "org": { "bytes": org_bytes, "files": org_files, "quota_bytes": spec.quota_per_org },
    });
    if let Principal::User { user, .. } = &p {
        let (bytes, count) = files::usage_get(&state.db, &files::user_scope(user.id)).await?;
        body["user"] = json!({ "bytes": bytes, "files": count, "quota_bytes": spec.quota_per_user });
    }
    Ok(axum::Json(body).into_response())
}

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
pub async fn signed_download(
    State(state): State<AppState>,
    Path(file): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    params.only(&["expires", "kid", "signature"])?;
    let refused = || ApiError::new("invalid_signature", "this link is not valid");
    let file = Uuid::parse_str(&file).map_err(|_| refused())?;
    let expires: i64 = params.get("expires").and_then(|e| e.parse().ok()).ok_or_else(refused)?;
    let given = params.get("signature").ok_or_else(refused)?;
    // Links made before the key ring carry no key id.
    let kid = params.get("kid").unwrap_or("legacy");
    if kid.len() > 64 {
        return Err(refused());
    }
    let key = state.keys.verifier(&state.db, kid).await?.ok_or_else(refused)?;
    if !crate::browser::constant_time_eq(given, &signature(&key, kid, file, expires)) {
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
        &state,
        &stored.object_key,
        &stored.content_type,
        &stored.name,
        Some(&stored.sha256),
    )
    .await
}

// Axum handlers.

pub async fn org_link(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name, id, field, file)): Path<(String, String, String, String, String)>,
    params: Params,
) -> ApiResult<Response> {
    link(&state, &p, Some(&org), &name, &id, &field, &file, params).await
}

pub async fn global_link(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((name, id, field, file)): Path<(String, String, String, String)>,
    params: Params,
) -> ApiResult<Response> {
    link(&state, &p, None, &name, &id, &field, &file, params).await
}

pub async fn org_upload(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name, id, field)): Path<(String, String, String, String)>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    upload(&state, &p, Some(&org), &name, &id, &field, params, headers, body).await
}

pub async fn global_upload(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((name, id, field)): Path<(String, String, String)>,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    upload(&state, &p, None, &name, &id, &field, params, headers, body).await
}

pub async fn org_download(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name, id, field, file)): Path<(String, String, String, String, String)>,
) -> ApiResult<Response> {
    download(&state, &p, Some(&org), &name, &id, &field, &file).await
}

pub async fn global_download(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((name, id, field, file)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    download(&state, &p, None, &name, &id, &field, &file).await
}

pub async fn org_remove(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((org, name, id, field, file)): Path<(String, String, String, String, String)>,
) -> ApiResult<Response> {
    remove(&state, &p, Some(&org), &name, &id, &field, &file).await
}

pub async fn global_remove(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((name, id, field, file)): Path<(String, String, String, String)>,
) -> ApiResult<Response> {
    remove(&state, &p, None, &name, &id, &field, &file).await
}

/// The cleanup job with files: the built-in cleanup (job retention, time series, spooled
/// uploads), then file retention (`retention` on a file field) and files whose record is gone
/// (deleted by a database cascade). At most `FILES_PER_RUN` files per run; the rest wait for
/// the next run.
pub fn cleanup_handler(storage: std::sync::Arc<crate::storage::Storage>) -> keel_jobs::HandlerFn {
    std::sync::Arc::new(move |context: keel_jobs::JobContext| {
        let storage = storage.clone();
        Box::pin(async move {
            let base = keel_jobs::handlers::run(keel_spec::Handler::Cleanup, context.clone()).await?;
            let files = expire_files(&context, &storage)
                .await
                .map_err(|e| keel_jobs::JobFailure::retry(format!("file retention failed: {e}")))?;
            // Failed-login rows a day old whose lock has ended.
            let day_ago = chrono::Utc::now() - chrono::Duration::days(1);
            let logins = keel_store::security::login_prune(&context.db, day_ago)
                .await
                .map_err(|e| keel_jobs::JobFailure::retry(format!("login-failure pruning failed: {e}")))?;
            let deferred = deferred_deletes(&context.db, &storage)
                .await
                .map_err(|e| keel_jobs::JobFailure::retry(format!("deferred file deletes failed: {e}")))?;
            let backups = keel_store::backups::backup_history_prune(&context.db, 1_000)
                .await
                .map_err(|e| keel_jobs::JobFailure::retry(format!("backup history pruning failed: {e}")))?;
            // Error groups not seen for 30 days.
            let errors = keel_store::errors::errors_prune(&context.db, chrono::Utc::now() - chrono::Duration::days(30))
                .await
                .map_err(|e| keel_jobs::JobFailure::retry(format!("error-group pruning failed: {e}")))?;
            let mut result = base.unwrap_or_else(|| json!({}));
            result["error_groups_pruned"] = json!(errors);
            result["files"] = files;
            result["deferred_deletes"] = json!(deferred);
            result["backup_runs_pruned"] = json!(backups);
            result["login_failures_pruned"] = json!(logins);
            Ok(Some(result))
        })
    })
}

const FILES_PER_RUN: i64 = 1_000;

async fn expire_files(
    context: &keel_jobs::JobContext,
    storage: &crate::storage::Storage,
) -> Result<Value, keel_store::StoreError> {
    let db = &context.db;
    let dialect = db.dialect();
    let mut expired = 0u64;
    let mut orphans = 0u64;
    for collection in context.schema.app.collections.iter().filter(|c| c.has_files()) {
        let table = keel_query::value::ident(&collection.table());
        // Files whose record no longer exists.
        let sql = db.portable(
            &format!(
                "SELECT f.id FROM keel_files f WHERE f.collection = $1 AND NOT EXISTS (SELECT 1 FROM {table} r WHERE r.id = f.record) LIMIT {FILES_PER_RUN}"
            ),
            vec![SqlValue::Text(collection.name.clone())],
        );
        let ids: Vec<Uuid> = db
            .query_primary(&sql)
            .await?
            .into_iter()
            .filter_map(|row| row.first().and_then(|c| c.uuid()))
            .collect();
        if !ids.is_empty() {
            let mut tx = db.begin().await?;
            let removed = files::file_delete(&mut tx, &ids).await?;
            tx.commit().await?;
            orphans += removed.len() as u64;
            let keys: Vec<String> = removed.into_iter().map(|r| r.object_key).collect();
            storage.delete_after_commit(db, &keys).await;
        }
        // Files past their field's retention.
        for field in &collection.fields {
            let FieldKind::File {
                retention_ms: Some(retention),
                ..
            } = &field.kind
            else {
                continue;
            };
            let cutoff = truncate_micros(Utc::now() - chrono::Duration::milliseconds(*retention as i64));
            let sql = keel_store::db::portable(
                dialect,
                &format!(
                    "SELECT id FROM keel_files WHERE collection = $1 AND field = $2 AND created_at < $3 ORDER BY created_at LIMIT {FILES_PER_RUN}"
                ),
                vec![
                    SqlValue::Text(collection.name.clone()),
                    SqlValue::Text(field.name.clone()),
                    SqlValue::Datetime(cutoff),
                ],
            );
            for row in db.query_primary(&sql).await? {
                let Some(id) = row.first().and_then(|c| c.uuid()) else {
                    continue;
                };
                if let Some(file) = files::file_get(db, id).await? {
                    expire_file(context, storage, collection, &file).await?;
                    expired += 1;
                }
            }
        }
    }
    Ok(json!({ "expired": expired, "orphans": orphans }))
}

/// Removes one file past its retention from its record (an update by the system, logged).
async fn expire_file(
    context: &keel_jobs::JobContext,
    storage: &crate::storage::Storage,
    collection: &Collection,
    file: &StoredFile,
) -> Result<(), keel_store::StoreError> {
    let caller = keel_query::Caller {
        context: keel_query::Context {
            user: None,
            role: keel_query::RoleSource::Rank(None),
            now: truncate_micros(Utc::now()),
        },
        superuser: true,
    };
    let builder = keel_query::Builder {
        schema: &context.schema,
        collection,
        dialect: context.db.dialect(),
        caller: &caller,
        scope: file.org.map_or(keel_query::Scope::Unscoped, keel_query::Scope::Org),
    };
    let mut tx = context.db.begin().await?;
    if let Some(json) = tx
        .query_one(&builder.get(file.record, Action::Update, &[], None, true))
        .await?
        .and_then(|r| r.into_iter().next())
        .and_then(|c| c.into_text())
    {
        let record = parse_object(&json);
        let value = match record.get(&file.field) {
            Some(Value::Array(items)) => Value::Array(
                items
                    .iter()
                    .filter(|m| file_id_of(m) != Some(file.id))
                    .cloned()
                    .collect(),
            ),
            _ => Value::Null,
        };
        let actor = keel_store::records::Actor {
            user: None,
            api_key: None,
            request_id: format!("job-{}", context.id),
        };
        let scope = WriteScope {
            builder: &builder,
            org: file.org,
            actor: &actor,
        };
        write_field(&mut tx, &scope, &record, &file.field, value, Some("retention")).await?;
    }
    let removed = files::file_delete(&mut tx, &[file.id]).await?;
    tx.commit().await?;
    let keys: Vec<String> = removed.into_iter().map(|r| r.object_key).collect();
    storage.delete_after_commit(&context.db, &keys).await;
    Ok(())
}

/// Deletes the objects whose deletion waited for a backup, once none runs.
async fn deferred_deletes(
    db: &keel_store::Db,
    storage: &crate::storage::Storage,
) -> Result<u64, keel_store::StoreError> {
    use keel_store::backups;
    let mut deleted = 0;
    loop {
        if backups::backup_running(db, Utc::now()).await? {
            return Ok(deleted);
        }
        let keys = backups::deferred_deletes(db, FILES_PER_RUN).await?;
        if keys.is_empty() {
            return Ok(deleted);
        }
        // Checked again per batch: a backup that started meanwhile stops the deleting.
        storage.delete_all(&keys).await;
        backups::deferred_forget(db, &keys).await?;
        deleted += keys.len() as u64;
    }
}
