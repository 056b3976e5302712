//! The http handler: a webhook or a feed poll. With `into`, the JSON answer's objects are
//! validated and written into a collection (created, or updated by a unique `key`) in the
//! job's org, each in its own transaction with its activity-log row.

use chrono::Utc;
use keel_query::value::truncate_micros;
use keel_query::{Builder, Caller, Context, RoleSource, Scope, SqlValue, WriteMode, validate_record};
use keel_store::records::{self, Actor, Change, RecordError, WriteScope};
use serde_json::Value;

use super::template_root;
use crate::context::{JobContext, JobFailure};
use crate::template::render;

/// The largest answer read, and the most records one answer may write.
const MAX_RESPONSE_BYTES: usize = 8 << 20;
const MAX_RECORDS: usize = 10_000;

pub struct Request<'a> {
    pub url: &'a str,
    pub method: &'a str,
    pub headers: &'a [(String, String)],
    pub body: Option<&'a str>,
    pub into: Option<&'a str>,
    pub key: Option<&'a str>,
    /// Answer key → field; when given, only these keys are taken.
    pub map: &'a [(String, String)],
}

/// A header value: a template, or `env:NAME` to read a secret from the environment.
fn header_value(template: &str, root: &Value) -> Result<String, JobFailure> {
    match template.strip_prefix("env:") {
        Some(name) => std::env::var(name)
            .map_err(|_| JobFailure::permanent(format!("the environment variable {name} is not set"))),
        None => Ok(render(template, root, false)),
    }
}

pub async fn run(context: &JobContext, request: Request<'_>) -> Result<Option<Value>, JobFailure> {
    let mut templates = vec![request.url, request.body.unwrap_or_default()];
    templates.extend(request.headers.iter().map(|(_, value)| value.as_str()));
    let root = template_root(context, &templates).await?;
    let url = render(request.url, &root, false);
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| JobFailure::permanent(format!("unknown method {}", request.method)))?;
    let mut builder = context
        .http
        .request(method.clone(), &url)
        .timeout(context.config.http_timeout)
        .header("user-agent", "keel-jobs")
        .header("x-keel-job", context.id.to_string())
        .header("x-keel-attempt", context.attempt.to_string());
    for (name, value) in request.headers {
        builder = builder.header(name.as_str(), header_value(value, &root)?);
    }
    if method != reqwest::Method::GET {
        builder = match request.body {
            Some(template) => builder.body(render(template, &root, false)),
            None => builder
                .header("content-type", "application/json")
                .body(context.payload.clone()),
        };
    }
    let mut response = builder
        .send()
        .await
        .map_err(|e| JobFailure::retry(format!("{} {url} failed: {e}", request.method)))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| JobFailure::retry(format!("reading the answer of {url} failed: {e}")))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(JobFailure::permanent(format!(
                "the answer of {url} is larger than 8 MiB"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        let message = format!("{} {url} answered {status}: {}", request.method, cut(&text, 500));
        // A request the server refuses as such will not succeed later; overload and
        // outages will.
        let retry = status.is_server_error() || matches!(status.as_u16(), 408 | 409 | 425 | 429);
        return Err(if retry {
            JobFailure::retry(message)
        } else {
            JobFailure::permanent(message)
        });
    }
    let Some(into) = request.into else {
        let answer = serde_json::from_str::<Value>(&text).unwrap_or_else(|_| Value::String(cut(&text, 4_000)));
        return Ok(Some(serde_json::json!({ "status": status.as_u16(), "body": answer })));
    };
    let answer: Value = serde_json::from_str(&text)
        .map_err(|e| JobFailure::permanent(format!("the answer of {url} is not JSON: {e}")))?;
    let (created, updated, rejected) = write_into(context, into, request.key, request.map, answer).await?;
    Ok(Some(serde_json::json!({
        "status": status.as_u16(),
        "created": created,
        "updated": updated,
        "rejected": rejected,
    })))
}

fn cut(text: &str, bytes: usize) -> String {
    let mut end = text.len().min(bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// The objects of an answer: an array, `{"items": [...]}`/`{"data": [...]}`, or one object.
fn objects(answer: Value) -> Vec<Value> {
    match answer {
        Value::Array(items) => items,
        Value::Object(mut map) => match map.remove("items").or_else(|| map.remove("data")) {
            Some(Value::Array(items)) => items,
            Some(other) => {
                map.insert("items".into(), other);
                vec![Value::Object(map)]
            }
            None => vec![Value::Object(map)],
        },
        _ => vec![],
    }
}

/// Writes the answer's objects; returns (created, updated, rejected with their reasons).
async fn write_into(
    context: &JobContext,
    into: &str,
    key: Option<&str>,
    map: &[(String, String)],
    answer: Value,
) -> Result<(u64, u64, Vec<Value>), JobFailure> {
    let schema = &context.schema;
    let collection = schema
        .app
        .collection(into)
        .ok_or_else(|| JobFailure::permanent(format!("no collection '{into}'")))?;
    let scope = match (collection.global, context.org_id) {
        (true, _) => Scope::Unscoped,
        (false, Some(org)) => Scope::Org(org),
        (false, None) => {
            return Err(JobFailure::permanent(format!(
                "'{into}' belongs to orgs, and this job has no org"
            )));
        }
    };
    let items = objects(answer);
    if items.len() > MAX_RECORDS {
        return Err(JobFailure::permanent(format!(
            "the answer holds {} records; at most {MAX_RECORDS} are written per job",
            items.len()
        )));
    }
    // The job writes as the app itself: the spec declared it.
    let caller = Caller {
        context: Context {
            user: context.created_by,
            role: RoleSource::Rank(None),
            now: Utc::now(),
        },
        superuser: true,
    };
    let builder = Builder {
        schema,
        collection,
        dialect: context.db.dialect(),
        caller: &caller,
        scope,
    };
    let actor = Actor {
        user: context.created_by,
        api_key: None,
        request_id: format!("job-{}", context.id),
    };
    let write_scope = WriteScope {
        builder: &builder,
        org: if collection.global { None } else { context.org_id },
        actor: &actor,
    };
    let (mut created, mut updated, mut rejected) = (0u64, 0u64, vec![]);
    for (index, item) in items.into_iter().enumerate() {
        let Value::Object(object) = item else {
            rejected.push(serde_json::json!({ "index": index, "reason": "not a JSON object" }));
            continue;
        };
        let map = if map.is_empty() {
            object
        } else {
            map.iter()
                .filter_map(|(from, field)| object.get(from).map(|v| (field.clone(), v.clone())))
                .collect()
        };
        let existing = match key.and_then(|k| map.get(k).map(|v| (k, v))) {
            Some((field, value)) => {
                let value = key_value(value);
                let found = context
                    .db
                    .query_primary(&builder.find_by(field, value))
                    .await
                    .map_err(|e| JobFailure::retry(e.to_string()))?;
                found.first().and_then(|row| row[0].uuid())
            }
            None => None,
        };
        let mode = if existing.is_some() {
            WriteMode::Update
        } else {
            WriteMode::Create
        };
        let values = match validate_record(collection, &context.patterns, &map, mode, truncate_micros(Utc::now())) {
            Ok(values) => values,
            Err(errors) => {
                rejected.push(serde_json::json!({ "index": index, "errors": errors }));
                continue;
            }
        };
        let relations: Vec<(String, uuid::Uuid)> = values
            .iter()
            .filter_map(|(field, value)| match value {
                SqlValue::Uuid(id) => Some((field.clone(), *id)),
                _ => None,
            })
            .collect();
        let result = match existing {
            Some(id) => records::update(
                &context.db,
                &write_scope,
                Change {
                    id,
                    if_match: None,
                    values,
                    relations: &relations,
                },
            )
            .await
            .map(|_| updated += 1),
            None => records::create(&context.db, &write_scope, values, &relations)
                .await
                .map(|_| created += 1),
        };
        match result {
            Ok(()) => {}
            Err(RecordError::Store(error)) if !matches!(error, keel_store::StoreError::Unique { .. }) => {
                return Err(JobFailure::retry(format!("writing into {into} failed: {error}")));
            }
            Err(error) => rejected.push(serde_json::json!({ "index": index, "reason": error.to_string() })),
        }
        if rejected.len() > 100 {
            rejected.truncate(100);
        }
    }
    Ok((created, updated, rejected))
}

/// A JSON key value as a bound parameter.
fn key_value(value: &Value) -> SqlValue {
    match value {
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Number(n) if n.is_i64() => SqlValue::Int(n.as_i64().unwrap_or(0)),
        Value::Number(n) => SqlValue::Float(n.as_f64().unwrap_or(0.0)),
        Value::Bool(b) => SqlValue::Bool(*b),
        other => SqlValue::Text(other.to_string()),
    }
}
