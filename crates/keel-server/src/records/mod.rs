//! Records: list, get, create, update, delete and aggregate for every collection, under
//! `/api/v1/orgs/{org}/{collection}` (tenant collections; `{org}` = `-` lists across every
//! org of the caller) and `/api/v1/global/{collection}` (global collections).

pub mod access;
pub mod delete;
pub mod export;

pub use access::{Target, ensure_allowed, record_error, resolve, resolve_write, triggered};
pub use delete::delete_many;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use keel_query::value::truncate_micros;
use keel_query::{
    AggregateSpec, ListSpec, Mode, SqlValue, WriteMode, check_expr, decode_cursor, parse_sort, validate_record,
};
use keel_spec::{Action, Collection, FieldKind};
use keel_store::records::{self, Change};
use keel_store::system::Principal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::Params;
use crate::http::extract::page_limit;
use crate::http::state::AppState;

fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A single record with its `ETag` (the version).
fn record_response(status: StatusCode, json: String) -> Response {
    let version = serde_json::from_str::<Value>(&json)
        .ok()
        .and_then(|v| v.get("version").and_then(Value::as_i64));
    let mut response = json_response(status, json);
    if let Some(version) = version
        && let Ok(value) = HeaderValue::from_str(&format!("\"{version}\""))
    {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn parse_id(raw: &str) -> ApiResult<Uuid> {
    // An id that cannot exist is simply not found.
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found())
}

fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    let bare = text.trim_start_matches("W/").trim_matches('"');
    bare.parse::<i64>()
        .map(Some)
        .map_err(|_| ApiError::new("bad_request", "If-Match must be an ETag from this server, e.g. \"3\""))
}

fn names_list(raw: Option<&str>, max: usize, what: &str) -> ApiResult<Vec<String>> {
    let names: Vec<String> = raw
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() > max {
        return Err(ApiError::new(
            "invalid_query",
            format!("{what} takes at most {max} names"),
        ));
    }
    Ok(names)
}

fn check_fields(collection: &Collection, names: &[String]) -> ApiResult<()> {
    let columns = keel_query::render::record_columns(collection);
    for name in names {
        if !columns.iter().any(|(c, _)| c == name) {
            return Err(keel_query::QueryError::unknown_field(name, 0, &collection.name).into());
        }
    }
    Ok(())
}

fn check_expand(collection: &Collection, names: &[String]) -> ApiResult<()> {
    for name in names {
        match collection.field(name).map(|f| &f.kind) {
            Some(FieldKind::Relation { .. }) => {}
            Some(_) => {
                return Err(ApiError::new(
                    "invalid_query",
                    format!("'{name}' is not a relation and cannot be expanded"),
                )
                .with_details(json!({ "field": name })));
            }
            None => return Err(keel_query::QueryError::unknown_field(name, 0, &collection.name).into()),
        }
    }
    Ok(())
}

/// `fields=a,b`: the fields a read shows (the id always), or all of them.
pub(crate) fn fields_param(collection: &Collection, raw: Option<&str>) -> ApiResult<Option<Vec<String>>> {
    let Some(raw) = raw else { return Ok(None) };
    let names = names_list(Some(raw), 128, "fields")?;
    check_fields(collection, &names)?;
    Ok(Some(names))
}

/// `expand=a,b`: relations a read embeds.
pub(crate) fn expand_param(state: &AppState, collection: &Collection, raw: Option<&str>) -> ApiResult<Vec<String>> {
    let expand = names_list(raw, state.config.limits.max_expand, "expand")?;
    check_expand(collection, &expand)?;
    Ok(expand)
}

/// Parses the list parameters shared by lists and counts.
pub(crate) fn list_spec(state: &AppState, target: &Target, params: &Params) -> ApiResult<ListSpec> {
    let collection = target.collection;
    let filter = match params.get("filter").map(str::trim).filter(|f| !f.is_empty()) {
        Some(text) => Some(check_expr(&state.schema.app, collection, text, Mode::Filter)?),
        None => None,
    };
    let sort = parse_sort(collection, params.get("sort"))?;
    let after = match params.get("after").filter(|a| !a.is_empty()) {
        Some(cursor) => Some(decode_cursor(&sort, cursor)?),
        None => None,
    };
    let fields = fields_param(collection, params.get("fields"))?;
    let expand = expand_param(state, collection, params.get("expand"))?;
    let search = match params.get("q").map(str::trim).filter(|q| !q.is_empty()) {
        Some(_) if !collection.has_search() => {
            return Err(ApiError::new(
                "search_not_enabled",
                format!("{} has no fields marked search = true", collection.name),
            ));
        }
        Some(q) if q.len() > 512 => return Err(ApiError::new("invalid_query", "q is at most 512 bytes")),
        Some(q) if q.split_whitespace().count() > 32 => {
            return Err(ApiError::new("invalid_query", "q has at most 32 words"));
        }
        Some(q) => Some(q.to_string()),
        None => None,
    };
    Ok(ListSpec {
        filter,
        sort,
        after,
        limit: page_limit(state, params.get("limit"))?,
        fields,
        expand,
        search,
    })
}

pub async fn list(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    params: Params,
) -> ApiResult<Response> {
    params.only(&["filter", "sort", "limit", "after", "fields", "expand", "q", "count"])?;
    let target = resolve(state, principal, org, name).await?;
    let builder = target.builder(state);
    ensure_allowed(&builder, Action::List)?;
    let spec = list_spec(state, &target, &params)?;
    let page = records::list(&state.db, &builder, &spec).await?;
    let mut body = String::with_capacity(64 + page.items.iter().map(String::len).sum::<usize>());
    body.push_str("{\"items\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(item);
    }
    body.push_str("],\"next\":");
    body.push_str(&serde_json::to_string(&page.next).expect("strings serialise"));
    match params.get("count") {
        None => {}
        Some(mode @ ("exact" | "estimate")) => {
            let cap = (mode == "estimate").then_some(state.config.limits.estimate_count_cap);
            let count = records::count(&state.db, &builder, &spec, cap).await?;
            body.push_str(&format!(",\"count\":{count}"));
            if mode == "estimate" {
                body.push_str(&format!(",\"count_capped\":{}", cap.is_some_and(|c| count as u64 >= c)));
            }
        }
        Some(_) => return Err(ApiError::new("invalid_query", "count must be exact or estimate")),
    }
    body.push('}');
    Ok(json_response(StatusCode::OK, body))
}

pub async fn get(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    id: &str,
    params: Params,
) -> ApiResult<Response> {
    params.only(&["expand", "fields"])?;
    let target = resolve(state, principal, org, name).await?;
    let builder = target.builder(state);
    ensure_allowed(&builder, Action::View)?;
    let id = parse_id(id)?;
    let expand = expand_param(state, target.collection, params.get("expand"))?;
    let fields = fields_param(target.collection, params.get("fields"))?;
    let json = records::get(&state.db, &builder, id, &expand, fields.as_deref())
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(record_response(StatusCode::OK, json))
}

/// Relation fields set by a write, with the ids they point at.
type Relations = Vec<(String, Uuid)>;

/// Validates a body and collects relation ids to check.
fn validated(
    state: &AppState,
    collection: &Collection,
    body: Value,
    mode: WriteMode,
) -> ApiResult<(Vec<(String, SqlValue)>, Relations)> {
    let Value::Object(map) = body else {
        return Err(ApiError::new("invalid_json", "the body must be a JSON object"));
    };
    let values =
        validate_record(collection, &state.patterns, &map, mode, truncate_micros(Utc::now())).map_err(|errors| {
            ApiError::new(
                "validation_failed",
                format!("{} field(s) failed validation", errors.len()),
            )
            .with_details(json!(errors))
        })?;
    let relations = values
        .iter()
        .filter_map(|(field, value)| match value {
            SqlValue::Uuid(id) => Some((field.clone(), *id)),
            _ => None,
        })
        .collect();
    Ok((values, relations))
}

pub async fn create(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    body: Value,
) -> ApiResult<Response> {
    let target = resolve_write(state, principal, org, name, Action::Create).await?;
    let (values, relations) = validated(state, target.collection, body, WriteMode::Create)?;
    let builder = target.builder(state);
    let json = records::create(&state.db, &target.scope(&builder), values, &relations)
        .await
        .map_err(|e| record_error(target.collection, e))?;
    triggered(state, &target.collection.triggers.on_create, 1);
    Ok(record_response(StatusCode::CREATED, json))
}

pub async fn update(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    id: &str,
    headers: &HeaderMap,
    body: Value,
) -> ApiResult<Response> {
    let target = resolve_write(state, principal, org, name, Action::Update).await?;
    let id = parse_id(id)?;
    let if_match = if_match(headers)?;
    let (values, relations) = validated(state, target.collection, body, WriteMode::Update)?;
    let builder = target.builder(state);
    let change = Change {
        id,
        if_match,
        values,
        relations: &relations,
    };
    let json = records::update(&state.db, &target.scope(&builder), change)
        .await
        .map_err(|e| record_error(target.collection, e))?;
    triggered(state, &target.collection.triggers.on_update, 1);
    Ok(record_response(StatusCode::OK, json))
}

pub async fn delete(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    id: &str,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let target = resolve_write(state, principal, org, name, Action::Delete).await?;
    let id = parse_id(id)?;
    let expected = if_match(headers)?;
    let builder = target.builder(state);
    let object_keys = records::delete(&state.db, &target.scope(&builder), id, expected)
        .await
        .map_err(|e| record_error(target.collection, e))?;
    state.storage.delete_after_commit(&state.db, &object_keys).await;
    triggered(state, &target.collection.triggers.on_delete, 1);
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn aggregate(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    params: Params,
) -> ApiResult<Response> {
    params.only(&["group", "measures", "filter", "limit"])?;
    let target = resolve(state, principal, org, name).await?;
    let builder = target.builder(state);
    ensure_allowed(&builder, Action::List)?;
    let (group, measures) =
        keel_query::stmt::parse_aggregate(target.collection, params.get("group"), params.get("measures"))?;
    let filter = match params.get("filter").map(str::trim).filter(|f| !f.is_empty()) {
        Some(text) => Some(check_expr(&state.schema.app, target.collection, text, Mode::Filter)?),
        None => None,
    };
    let max = state.config.limits.max_aggregate_groups;
    let limit = match params.get("limit") {
        None => 100.min(max),
        Some(raw) => {
            let value: u32 = raw
                .parse()
                .map_err(|_| ApiError::new("invalid_query", "limit must be a positive integer"))?;
            if value == 0 || value > max {
                return Err(ApiError::new(
                    "limit_too_large",
                    format!("limit is between 1 and {max}"),
                ));
            }
            value
        }
    };
    let spec = AggregateSpec {
        group,
        measures,
        filter,
        limit,
    };
    let limit = spec.limit as usize;
    let mut rows = records::aggregate(&state.db, &builder, &spec).await?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    let body = format!("{{\"groups\":[{}],\"truncated\":{truncated}}}", rows.join(","));
    Ok(json_response(StatusCode::OK, body))
}
