//! Records: list, get, create, update, delete and aggregate for every collection, under
//! `/api/v1/orgs/{org}/{collection}` (tenant collections; `{org}` = `-` lists across every
//! org of the caller) and `/api/v1/global/{collection}` (global collections).

pub mod delete;
pub mod export;

pub use delete::delete_many;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use keel_query::value::truncate_micros;
use keel_query::{
    AggregateSpec, Builder, Caller, Context, Frag, ListSpec, Mode, RoleSource, Scope, SqlValue, WriteMode, check_expr,
    decode_cursor, parse_sort, validate_record,
};
use keel_spec::{Action, Collection, FieldKind};
use keel_store::StoreError;
use keel_store::records::{self, Actor, Change, RecordError, WriteScope};
use keel_store::system::Principal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::http::context::current_request_id;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::page_limit;
use crate::http::extract::{CallerInfo, Params, org_access};
use crate::http::state::AppState;

/// A request's collection, scope and caller, resolved once.
pub struct Target<'a> {
    pub collection: &'a Collection,
    pub scope: Scope,
    pub org: Option<Uuid>,
    pub caller: Caller,
    pub info: CallerInfo,
    /// Who writes, for the activity log.
    pub actor: Actor,
}

impl Target<'_> {
    pub fn builder<'b>(&'b self, state: &'b AppState) -> Builder<'b> {
        Builder {
            schema: &state.schema,
            collection: self.collection,
            dialect: state.db.dialect(),
            caller: &self.caller,
            scope: self.scope,
        }
    }

    /// The scope of a write made through `builder`.
    pub(crate) fn scope<'b>(&'b self, builder: &'b Builder<'b>) -> WriteScope<'b> {
        WriteScope {
            builder,
            org: self.org,
            actor: &self.actor,
        }
    }
}

/// Resolves the collection and the caller's scope. `org` is `None` on the global routes.
pub async fn resolve<'a>(
    state: &'a AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
) -> ApiResult<Target<'a>> {
    let collection = state
        .schema
        .app
        .collection(name)
        .ok_or_else(|| ApiError::new("collection_not_found", format!("no collection named '{name}'")))?;
    let info = CallerInfo::of(principal);
    let now = truncate_micros(Utc::now());
    let (scope, org_id, rank) = match org {
        None => {
            if !collection.global {
                return Err(ApiError::new(
                    "collection_not_found",
                    format!("'{name}' is scoped to orgs: use /api/v1/orgs/{{org}}/{name}"),
                ));
            }
            (Scope::Unscoped, None, None)
        }
        Some(_) if collection.global => {
            return Err(ApiError::new(
                "collection_not_found",
                format!("'{name}' is global: use /api/v1/global/{name}"),
            ));
        }
        Some("-") => match principal {
            Principal::User { user, .. } if user.superuser => (Scope::Unscoped, None, None),
            Principal::User { user, .. } => (Scope::MemberOrgs(user.id), None, None),
            Principal::ApiKey(key) => (
                Scope::Org(key.org),
                Some(key.org),
                state.schema.app.role_rank(&key.role),
            ),
        },
        Some(slug) => {
            let (org, role) = org_access(state, principal, slug).await?;
            (
                Scope::Org(org.id),
                Some(org.id),
                role.as_deref().and_then(|r| state.schema.app.role_rank(r)),
            )
        }
    };
    Ok(Target {
        collection,
        scope,
        org: org_id,
        caller: Caller {
            context: Context {
                user: info.user,
                role: RoleSource::Rank(rank),
                now,
            },
            superuser: info.superuser,
        },
        actor: Actor {
            // The command line's operator (nil id) is no user of the database.
            user: info.user.filter(|id| !id.is_nil()),
            api_key: info.api_key,
            request_id: current_request_id().unwrap_or_default(),
        },
        info,
    })
}

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

pub(crate) fn ensure_allowed(builder: &Builder, action: Action) -> ApiResult<()> {
    if builder.rule(action) == Frag::Const(false) {
        return Err(ApiError::forbidden());
    }
    Ok(())
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
    let fields = match params.get("fields") {
        Some(raw) => {
            let names = names_list(Some(raw), 128, "fields")?;
            check_fields(collection, &names)?;
            Some(names)
        }
        None => None,
    };
    let expand = names_list(params.get("expand"), state.config.limits.max_expand, "expand")?;
    check_expand(collection, &expand)?;
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
    let expand = names_list(params.get("expand"), state.config.limits.max_expand, "expand")?;
    check_expand(target.collection, &expand)?;
    let fields = match params.get("fields") {
        Some(raw) => {
            let names = names_list(Some(raw), 128, "fields")?;
            check_fields(target.collection, &names)?;
            Some(names)
        }
        None => None,
    };
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

/// Writes name one org: `-` (every org of the caller) is for reading lists only.
fn writable(collection: &Collection, org: Option<&str>) -> ApiResult<()> {
    if org == Some("-") {
        return Err(ApiError::new(
            "bad_request",
            "write records in one org: /api/v1/orgs/{org}/...",
        ));
    }
    if collection.system {
        return Err(ApiError::new(
            "read_only_collection",
            format!("{} cannot be written through the API", collection.name),
        ));
    }
    Ok(())
}

/// Resolves a write: one org, a writable collection, and a rule that can hold for the caller.
pub(crate) async fn resolve_write<'a>(
    state: &'a AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    action: Action,
) -> ApiResult<Target<'a>> {
    let target = resolve(state, principal, org, name).await?;
    writable(target.collection, org)?;
    ensure_allowed(&target.builder(state), action)?;
    Ok(target)
}

/// After a write committed with its triggered jobs: count them and wake this instance's
/// workers (other instances hear of them through the database).
pub(crate) fn triggered(state: &AppState, kinds: &[String], records: u64) {
    if records == 0 {
        return;
    }
    for name in kinds {
        if let Some(kind) = state.schema.app.jobs.kind(name) {
            keel_jobs::Observer::enqueued(state.metrics.as_ref(), &kind.queue, &kind.name, records);
            state.jobs.wake(&kind.queue);
        }
    }
}

/// Maps a record error, naming the fields of a unique violation.
pub(crate) fn record_error(collection: &Collection, error: RecordError) -> ApiError {
    match error {
        RecordError::NotFound => ApiError::not_found(),
        RecordError::Forbidden => ApiError::forbidden(),
        RecordError::VersionMismatch { current } => {
            ApiError::new("version_mismatch", "the record changed since you read it")
                .with_details(json!({ "current_version": current }))
        }
        RecordError::InvalidRelation(fields) => {
            let details: Vec<Value> = fields
                .iter()
                .map(|f| json!({ "field": f, "code": "invalid_relation", "message": format!("no such record for '{f}' in this org") }))
                .collect();
            ApiError::new("validation_failed", "a related record does not exist").with_details(json!(details))
        }
        RecordError::Store(StoreError::Unique { constraint, columns }) => {
            let mut fields: Vec<String> = columns.into_iter().filter(|c| c != "org").collect();
            if let Some(constraint) = &constraint {
                let table = collection.table();
                if let Some(field) = constraint.strip_prefix(&format!("{table}_uq_")) {
                    fields.push(field.to_string());
                } else if let Some(index) = collection.indexes.iter().find(|i| &i.name == constraint) {
                    fields.extend(index.columns.iter().map(|c| c.field.clone()));
                }
            }
            ApiError::new("unique_violation", "a record with this value already exists")
                .with_details(json!({ "fields": fields }))
        }
        RecordError::Store(other) => other.into(),
    }
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
