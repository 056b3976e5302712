//! Files (F1–F3, F5): `POST …/{collection}/{id}/files/{field}` streams a file to storage,
//! `GET …/files/{field}/{file}` streams it back, `DELETE` removes it.
//!
//! An upload is written to storage while it arrives (never held in memory), hashed, counted
//! against the field's `max_size`, and typed from its first bytes, not from what the client
//! claims. The record then changes in one transaction: its file field, the `keel_files` row,
//! the activity entry and the update triggers. A file that the transaction does not keep is
//! deleted from storage; a file the transaction drops is deleted after it commits.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
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

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::Params;
use crate::http::state::AppState;
use crate::records::access::{Target, resolve_write, triggered};

/// Bytes looked at to tell a file's type.
mod cleanup;
mod serve;
pub mod settings;
pub mod storage;

pub use cleanup::cleanup_handler;
pub use serve::{download, link, remove, signed_download};

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
        let claimed = crate::http::extract::media_type(claimed.unwrap_or("")).to_ascii_lowercase();
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
