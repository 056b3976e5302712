//! `GET …/{collection}/export?format=csv|ndjson` (B5): any filtered list, streamed page by
//! page (1,000 records per statement), so memory stays flat whatever the size and however
//! many exports run at once.
//!
//! The pages are read one after another by keyset, not in one snapshot: rows written while
//! an export runs may or may not be in it. CSV cells that a spreadsheet would run as a
//! formula (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) are prefixed with
//! `'`, the OWASP rule against CSV injection.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::{StreamExt, stream};
use keel_query::{Builder, Caller, ListSpec, Scope, decode_cursor};
use keel_spec::{Action, Collection};
use keel_store::records;
use keel_store::system::Principal;
use serde_json::Value;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::Params;
use crate::http::state::AppState;
use crate::records::{ensure_allowed, list_spec, resolve};

/// Records per statement (and so the most an export holds in memory).
const PAGE: u32 = 1_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

/// Where an export stands between pages.
struct Cursor {
    state: AppState,
    collection: String,
    caller: Caller,
    scope: Scope,
    spec: ListSpec,
    format: Format,
    columns: Vec<String>,
    header_sent: bool,
    done: bool,
}

/// The CSV columns: the system fields, then the collection's fields (or only `fields`).
fn columns(collection: &Collection, fields: Option<&[String]>) -> Vec<String> {
    let mut columns = vec!["id".to_string()];
    match fields {
        Some(names) => columns.extend(names.iter().filter(|n| *n != "id").cloned()),
        None => {
            if !collection.global {
                columns.push("org".into());
            }
            columns.push("created_at".into());
            if !collection.system {
                columns.push("updated_at".into());
                columns.push("version".into());
                columns.push("batch".into());
            }
            columns.extend(collection.fields.iter().map(|f| f.name.clone()));
        }
    }
    columns
}

/// A cell as text, defused if a spreadsheet would evaluate it.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => {
            if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                format!("'{text}")
            } else {
                text.clone()
            }
        }
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => other.to_string(),
    }
}

fn csv_rows(columns: &[String], header: bool, items: &[String]) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::WriterBuilder::new().from_writer(Vec::with_capacity(items.len() * 128));
    if header {
        writer.write_record(columns)?;
    }
    for item in items {
        let record: serde_json::Map<String, Value> = serde_json::from_str(item).unwrap_or_default();
        writer.write_record(columns.iter().map(|c| cell(record.get(c))))?;
    }
    writer.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

/// The next page as bytes, or `None` when the export is done.
async fn fetch(cursor: &mut Cursor) -> Result<Option<Vec<u8>>, ApiError> {
    if cursor.done {
        return Ok(None);
    }
    let state = cursor.state.clone();
    let Some(collection) = state.schema.app.collection(&cursor.collection) else {
        return Ok(None);
    };
    let builder = Builder {
        schema: &state.schema,
        collection,
        dialect: state.db.dialect(),
        caller: &cursor.caller,
        scope: cursor.scope,
    };
    let page = records::list(&state.db, &builder, &cursor.spec).await?;
    let chunk = match cursor.format {
        Format::Ndjson => {
            let mut out = Vec::with_capacity(page.items.iter().map(|i| i.len() + 1).sum());
            for item in &page.items {
                out.extend_from_slice(item.as_bytes());
                out.push(b'\n');
            }
            out
        }
        Format::Csv => csv_rows(&cursor.columns, !cursor.header_sent, &page.items).map_err(ApiError::internal)?,
    };
    cursor.header_sent = true;
    match page.next.as_deref().map(|next| decode_cursor(&cursor.spec.sort, next)) {
        Some(Ok(after)) => cursor.spec.after = Some(after),
        _ => cursor.done = true,
    }
    Ok(Some(chunk))
}

/// The pages after the first, for the body stream. The status line is gone by then: an error
/// ends the body early, so the client sees a broken download (and the log says why).
async fn next_chunk(mut cursor: Cursor) -> Option<(Result<Vec<u8>, std::io::Error>, Cursor)> {
    match fetch(&mut cursor).await {
        Ok(Some(chunk)) => Some((Ok(chunk), cursor)),
        Ok(None) => None,
        Err(error) => {
            tracing::error!(error = %error.cause.as_deref().unwrap_or(&error.message), collection = %cursor.collection, "an export failed midway");
            cursor.done = true;
            Some((Err(std::io::Error::other(error.message)), cursor))
        }
    }
}

/// The command line's caller: the superuser, for `keel export` and `keel import`.
pub fn operator() -> Principal {
    Principal::User {
        user: keel_store::system::User {
            id: uuid::Uuid::nil(),
            email: "keel-cli".into(),
            name: None,
            superuser: true,
            created_at: chrono::Utc::now(),
            email_verified_at: None,
            disabled_at: None,
        },
        session: uuid::Uuid::nil(),
        expires_at: chrono::Utc::now() + chrono::Duration::hours(24),
        seen_at: None,
    }
}

/// The export for `keel export`: as the superuser, written to `out`.
pub async fn export_to(
    state: &AppState,
    org: Option<&str>,
    name: &str,
    params: Vec<(String, String)>,
    mut out: impl tokio::io::AsyncWrite + Unpin,
) -> ApiResult<()> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let response = export(state, &operator(), org, name, Params(params.into_iter().collect())).await?;
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ApiError::internal)?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).await.map_err(ApiError::internal)?;
        }
    }
    out.flush().await.map_err(ApiError::internal)?;
    Ok(())
}

pub async fn export(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    params: Params,
) -> ApiResult<Response> {
    params.only(&["format", "filter", "sort", "fields", "q"])?;
    let format = match params.get("format").unwrap_or("csv") {
        "csv" => Format::Csv,
        "ndjson" => Format::Ndjson,
        _ => return Err(ApiError::new("invalid_query", "format is csv or ndjson")),
    };
    let target = resolve(state, principal, org, name).await?;
    ensure_allowed(&target.builder(state), Action::List)?;
    let mut spec = list_spec(state, &target, &params)?;
    spec.limit = PAGE;
    spec.expand.clear();
    let mut cursor = Cursor {
        state: state.clone(),
        collection: target.collection.name.clone(),
        caller: target.caller.clone(),
        scope: target.scope,
        columns: columns(target.collection, spec.fields.as_deref()),
        spec,
        format,
        header_sent: false,
        done: false,
    };
    let (content_type, extension) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Ndjson => ("application/x-ndjson", "ndjson"),
    };
    // The first page is read before answering, so a failure there (a busy pool, a timeout)
    // is a proper error response rather than a broken download.
    let first = fetch(&mut cursor).await?;
    let rest = stream::unfold(cursor, next_chunk);
    let body = stream::iter(first.map(Ok::<_, std::io::Error>)).chain(rest);
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.{extension}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
