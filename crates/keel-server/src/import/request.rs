//! Imports over HTTP (B1–B3): the request's options, its body as a blocking reader, and the
//! choice between answering in the request and spooling to a background job.

use std::io::{self, Read};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use keel_spec::Action;
use keel_store::system::Principal;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::Params;
use crate::http::state::AppState;
use crate::import::{
    self, Background, BodyTooLarge, ChannelReader, Destination, Format, Limits, Mode, Options, Report,
};
use crate::records::access::{resolve_write, triggered};

/// Feeds a request body to a [`ChannelReader`], failing past `limit` bytes.
fn body_reader(body: Body, limit: u64) -> ChannelReader {
    let (sender, receiver) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut total: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let item = match chunk {
                Ok(bytes) => {
                    total += bytes.len() as u64;
                    if total > limit {
                        let _ = sender.send(Err(io::Error::other(BodyTooLarge(limit)))).await;
                        return;
                    }
                    Ok(bytes)
                }
                Err(error) => Err(io::Error::other(error.to_string())),
            };
            if sender.send(item).await.is_err() {
                return;
            }
        }
    });
    ChannelReader::new(receiver)
}

/// Reads the import's options from the query string and the content type.
pub fn options(params: &Params, headers: &HeaderMap) -> ApiResult<Options> {
    let content_type = crate::http::extract::media_type(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    )
    .to_ascii_lowercase();
    let format = match params.get("format") {
        Some("csv") => Format::Csv,
        Some("ndjson") => Format::Ndjson,
        Some(_) => return Err(ApiError::new("invalid_query", "format is csv or ndjson")),
        None => match content_type.as_str() {
            "text/csv" | "application/csv" => Format::Csv,
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/x-jsonlines" => {
                Format::Ndjson
            }
            _ => {
                return Err(ApiError::new(
                    "unsupported_media_type",
                    "send the file as text/csv or application/x-ndjson, or name it with ?format=csv|ndjson",
                ));
            }
        },
    };
    let mode = match params.get("mode").unwrap_or("atomic") {
        "atomic" => Mode::Atomic,
        "skip" => Mode::Skip,
        _ => {
            return Err(ApiError::new(
                "invalid_query",
                "mode is atomic (all or nothing) or skip",
            ));
        }
    };
    let mapping = match params.get("map") {
        None => vec![],
        Some(raw) => match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(map)) if map.len() <= 1_024 => {
                let mut out = vec![];
                for (column, field) in map {
                    match field {
                        Value::String(field) => out.push((column, Some(field))),
                        Value::Null => out.push((column, None)),
                        _ => {
                            return Err(ApiError::new(
                                "invalid_query",
                                "map is a JSON object of column to field name (or null to ignore the column)",
                            ));
                        }
                    }
                }
                out
            }
            _ => {
                return Err(ApiError::new(
                    "invalid_query",
                    "map is a JSON object of column to field name (or null to ignore the column), e.g. {\"Title\":\"title\"}",
                ));
            }
        },
    };
    let delimiter = match params.get("delimiter").unwrap_or(",") {
        "," => b',',
        ";" => b';',
        "tab" | "\t" => b'\t',
        "|" => b'|',
        _ => return Err(ApiError::new("invalid_query", "delimiter is one of , ; | tab")),
    };
    Ok(Options {
        format,
        mode,
        mapping,
        delimiter,
    })
}

/// The limits of an import, from the config.
pub fn limits(state: &AppState) -> Limits {
    Limits::of(&state.config.limits)
}

/// Runs an import for a caller and answers with its report.
pub async fn import(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    params.only(&["format", "mode", "map", "delimiter", "background"])?;
    let options = options(&params, &headers)?;
    let limit = state.config.limits.import_max_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::new(
            "payload_too_large",
            format!("the file is larger than {limit} bytes"),
        ));
    }
    let sync_max = state.config.limits.import_sync_max_bytes;
    let background = match params.get("background").unwrap_or("auto") {
        // A body of unknown length (chunked) may be large: spool it.
        "auto" => declared.is_none_or(|length| length > sync_max),
        "true" => true,
        "false" => false,
        _ => return Err(ApiError::new("invalid_query", "background is auto, true or false")),
    };
    if background {
        return spool(state, principal, org, name, options, body, limit).await;
    }
    let report = import_stream(
        state,
        principal,
        org,
        name,
        options,
        body_reader(body, limit),
        &mut |_| {},
    )
    .await?;
    report_response(report)
}

/// Stores the body in the upload spool and enqueues a `keel_import` job for it: 202 with the
/// job, whose progress and report `GET /api/v1/jobs/{id}` shows.
async fn spool(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    options: Options,
    body: Body,
    limit: u64,
) -> ApiResult<Response> {
    use keel_store::uploads;
    // Permission and the mapping are checked before a byte is stored.
    let target = resolve_write(state, principal, org, name, Action::Create).await?;
    import::check_mapping(target.collection, &options.mapping)?;
    let upload = Uuid::now_v7();
    let mut stream = body.into_data_stream();
    let mut buffer: Vec<u8> = Vec::with_capacity(uploads::CHUNK);
    let mut total: u64 = 0;
    let mut seq = 0;
    let stored: ApiResult<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::new("bad_request", format!("the upload failed: {e}")))?;
            total += chunk.len() as u64;
            if total > limit {
                return Err(ApiError::new(
                    "payload_too_large",
                    format!("the file is larger than {limit} bytes"),
                ));
            }
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = (uploads::CHUNK - buffer.len()).min(rest.len());
                buffer.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buffer.len() == uploads::CHUNK {
                    let full = std::mem::replace(&mut buffer, Vec::with_capacity(uploads::CHUNK));
                    uploads::upload_put(&state.db, upload, seq, full).await?;
                    seq += 1;
                }
            }
        }
        if !buffer.is_empty() {
            uploads::upload_put(&state.db, upload, seq, std::mem::take(&mut buffer)).await?;
        }
        Ok(())
    }
    .await;
    if let Err(error) = stored {
        let _ = uploads::upload_delete(&state.db, upload).await;
        return Err(error);
    }
    let rank = match &target.caller.context.role {
        keel_query::RoleSource::Rank(rank) => *rank,
        keel_query::RoleSource::Expression(_) => None,
    };
    let payload = Background {
        upload,
        bytes: total,
        collection: target.collection.name.clone(),
        org: target.org,
        user: target.actor.user,
        api_key: target.actor.api_key,
        request_id: target.actor.request_id.clone(),
        rank,
        superuser: target.caller.superuser,
        options,
    };
    let kind = state
        .schema
        .app
        .jobs
        .kind(keel_spec::IMPORT_KIND)
        .ok_or_else(|| ApiError::internal("the keel_import kind is missing"))?;
    let job = keel_store::jobs::NewJob::of_kind(kind, json!(payload), target.org, target.actor.user);
    let enqueued = match crate::jobs::insert(state, &job).await {
        Ok(enqueued) => enqueued,
        Err(error) => {
            let _ = uploads::upload_delete(&state.db, upload).await;
            return Err(error.into());
        }
    };
    let body = json!({
        "job": { "id": enqueued.id, "kind": job.kind, "queue": job.queue, "state": enqueued.state },
        "bytes": total,
    });
    let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    if let Ok(location) = axum::http::HeaderValue::from_str(&format!("/api/v1/jobs/{}", enqueued.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Runs an import from any reader (the API's body, a file for `keel import`).
pub async fn import_stream(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    options: Options,
    input: impl Read + Send + 'static,
    progress: &mut (dyn FnMut(import::Counts) + Send),
) -> ApiResult<Report> {
    let target = resolve_write(state, principal, org, name, Action::Create).await?;
    let destination = Destination {
        db: &state.db,
        schema: state.schema.clone(),
        patterns: state.patterns.clone(),
        collection: target.collection.name.clone(),
        scope: target.scope,
        org: target.org,
        caller: target.caller.clone(),
        actor: target.actor.clone(),
    };
    let report = import::run(&destination, input, options, limits(state), progress).await?;
    if report.committed {
        triggered(state, &target.collection.triggers.on_create, report.counts.written);
    }
    Ok(report)
}

/// 200 with the report, or 422 `import_rejected` when an atomic import wrote nothing.
pub fn report_response(report: Report) -> ApiResult<Response> {
    if report.mode == Mode::Atomic && !report.committed && report.counts.rejected > 0 {
        let message = format!(
            "{} of {} rows are invalid; nothing was written",
            report.counts.rejected, report.counts.read
        );
        return Err(ApiError::new("import_rejected", message).with_details(json!(report)));
    }
    Ok((StatusCode::OK, axum::Json(report)).into_response())
}
