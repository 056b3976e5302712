//! Record operations: each write runs in one transaction with its activity-log row
//! (S11, D8), so a write and its audit entry commit or roll back together.

use chrono::Utc;
use keel_query::value::truncate_micros;
use keel_query::{Builder, ListSpec, SqlValue, encode_cursor};
use keel_spec::Action;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::db::{Db, Tx};
use crate::error::StoreError;

/// Who writes, for the activity log.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub user: Option<Uuid>,
    pub api_key: Option<Uuid>,
    pub request_id: String,
}

/// Where a write happens and who makes it.
pub struct WriteScope<'a> {
    pub builder: &'a Builder<'a>,
    /// The org of the record (`None` for global collections).
    pub org: Option<Uuid>,
    pub actor: &'a Actor,
}

/// The change an update makes.
pub struct Change<'a> {
    pub id: Uuid,
    /// The version the caller read (`If-Match`), if the write is conditional.
    pub if_match: Option<i64>,
    pub values: Vec<(String, SqlValue)>,
    pub relations: &'a [(String, Uuid)],
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record not found")]
    NotFound,
    #[error("the access rule does not allow this")]
    Forbidden,
    #[error("the record is at version {current}")]
    VersionMismatch { current: i64 },
    #[error("related records not found: {0:?}")]
    InvalidRelation(Vec<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One page of a list: raw JSON records and the cursor of the next page.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<String>,
    pub next: Option<String>,
}

pub async fn list(db: &Db, builder: &Builder<'_>, spec: &ListSpec) -> Result<Page, StoreError> {
    let rows = db.query(&builder.list(spec)).await?;
    let has_more = rows.len() > spec.limit as usize;
    let mut items = Vec::with_capacity(rows.len().min(spec.limit as usize));
    let mut last_key = None;
    for row in rows.into_iter().take(spec.limit as usize) {
        let mut cells = row.into_iter();
        items.push(cells.next().and_then(|c| c.into_text()).unwrap_or_default());
        last_key = cells.next().and_then(|c| c.into_text());
    }
    let next = match (has_more, last_key) {
        (true, Some(key)) => Some(encode_cursor(&spec.sort, &key)),
        _ => None,
    };
    Ok(Page { items, next })
}

pub async fn count(db: &Db, builder: &Builder<'_>, spec: &ListSpec, cap: Option<u64>) -> Result<i64, StoreError> {
    let row = db.query_one(&builder.count(spec, cap)).await?;
    Ok(row.and_then(|r| r[0].int()).unwrap_or(0))
}

pub async fn get(
    db: &Db,
    builder: &Builder<'_>,
    id: Uuid,
    expand: &[String],
    fields: Option<&[String]>,
) -> Result<Option<String>, StoreError> {
    let row = db
        .query_one(&builder.get(id, Action::View, expand, fields, false))
        .await?;
    Ok(row.and_then(|r| r.into_iter().next()).and_then(|c| c.into_text()))
}

pub async fn aggregate(
    db: &Db,
    builder: &Builder<'_>,
    spec: &keel_query::AggregateSpec,
) -> Result<Vec<String>, StoreError> {
    let rows = db.query(&builder.aggregate(spec)).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().and_then(|c| c.into_text()))
        .collect())
}

pub fn parse_object(json: &str) -> Map<String, Value> {
    match serde_json::from_str(json) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

async fn check_relations(tx: &mut Tx, builder: &Builder<'_>, relations: &[(String, Uuid)]) -> Result<(), RecordError> {
    let Some(sql) = builder.relations_exist(relations) else {
        return Ok(());
    };
    let row = tx.query_one(&sql).await?;
    let found = row
        .and_then(|r| r.into_iter().next())
        .and_then(|c| c.into_text())
        .unwrap_or_default();
    let found = parse_object(&found);
    let missing: Vec<String> = relations
        .iter()
        .filter(|(field, _)| found.get(field) != Some(&Value::Bool(true)))
        .map(|(field, _)| field.clone())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(RecordError::InvalidRelation(missing))
    }
}

/// Writes the activity row and the change-log row (what realtime streams read) of a write in
/// its transaction; `count` is how many records a bulk write touched. Every record write
/// passes here, so a stream sees every committed write and never a rolled-back one.
pub async fn log_activity(
    tx: &mut Tx,
    scope: &WriteScope<'_>,
    record: &str,
    action: &str,
    changes: Value,
    count: i64,
) -> Result<(), StoreError> {
    let (builder, actor, org) = (scope.builder, scope.actor, scope.org);
    crate::changes::insert(tx, org, &builder.collection.name, record, action, count).await?;
    // Global collections have no org; their writes are the superuser's and are not logged per org.
    let Some(org) = org else { return Ok(()) };
    let mut params = vec![
        SqlValue::Uuid(Uuid::now_v7()),
        SqlValue::Uuid(org),
        SqlValue::Datetime(truncate_micros(Utc::now())),
        SqlValue::Text(builder.collection.name.clone()),
        SqlValue::Text(record.to_string()),
        SqlValue::Text(action.to_string()),
        SqlValue::Json(changes),
        SqlValue::Text(actor.request_id.clone()),
        SqlValue::Int(count),
    ];
    let mut optional = |value: Option<Uuid>, text: bool| match value {
        Some(v) => {
            params.push(if text {
                SqlValue::Text(v.to_string())
            } else {
                SqlValue::Uuid(v)
            });
            format!("${}", params.len())
        }
        None => "NULL".to_string(),
    };
    let user = optional(actor.user, false);
    let key = optional(actor.api_key, true);
    let sql = tx.portable(
        &format!("INSERT INTO keel_activity (id, org, created_at, collection, record, action, changes, request_id, count, actor, api_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {user}, {key})"),
        params,
    );
    tx.execute(&sql).await?;
    Ok(())
}

/// Enqueues the collection's job kinds for this write, in its transaction (invariant 4).
pub async fn enqueue_triggers(
    tx: &mut Tx,
    scope: &WriteScope<'_>,
    kinds: &[String],
    action: &str,
    record_id: &str,
    record: Value,
) -> Result<(), StoreError> {
    if kinds.is_empty() {
        return Ok(());
    }
    let app = &scope.builder.schema.app;
    let payload = serde_json::json!({
        "collection": scope.builder.collection.name,
        "action": action,
        "id": record_id,
        "record": record,
    });
    for name in kinds {
        if let Some(kind) = app.jobs.kind(name) {
            let job = crate::jobs::NewJob::of_kind(kind, payload.clone(), scope.org, scope.actor.user);
            crate::jobs::job_insert(tx, &job).await?;
        }
    }
    Ok(())
}

/// Creates a record: relation check, insert, create-rule check, activity row — one transaction.
pub async fn create(
    db: &Db,
    scope: &WriteScope<'_>,
    mut values: Vec<(String, SqlValue)>,
    relations: &[(String, Uuid)],
) -> Result<String, RecordError> {
    let (builder, org) = (scope.builder, scope.org);
    let id = Uuid::now_v7();
    let at = truncate_micros(Utc::now());
    let mut columns = vec![("id".to_string(), SqlValue::Uuid(id))];
    if let Some(org) = org {
        columns.push(("org".to_string(), SqlValue::Uuid(org)));
    }
    columns.push(("created_at".to_string(), SqlValue::Datetime(at)));
    columns.push(("updated_at".to_string(), SqlValue::Datetime(at)));
    columns.push(("version".to_string(), SqlValue::Int(1)));
    columns.append(&mut values);
    let mut tx = db.begin().await?;
    check_relations(&mut tx, builder, relations).await?;
    let row = tx.query_one(&builder.insert(&columns)).await?;
    let json = row
        .and_then(|r| r.into_iter().next())
        .and_then(|c| c.into_text())
        .ok_or(StoreError::NotFound)?;
    if let Some(check) = builder.satisfies(id, Action::Create)
        && tx.query(&check).await?.is_empty()
    {
        return Err(RecordError::Forbidden);
    }
    let after = serde_json::from_str::<Value>(&json).unwrap_or(Value::Null);
    let triggers = &builder.collection.triggers.on_create;
    enqueue_triggers(&mut tx, scope, triggers, "create", &id.to_string(), after.clone()).await?;
    log_activity(
        &mut tx,
        scope,
        &id.to_string(),
        "create",
        serde_json::json!({ "after": after }),
        1,
    )
    .await?;
    tx.commit().await?;
    Ok(json)
}

fn version_of(record: &Map<String, Value>) -> i64 {
    record.get("version").and_then(Value::as_i64).unwrap_or(0)
}

/// Updates a record the update rule lets the caller touch; `if_match` makes it conditional.
pub async fn update(db: &Db, scope: &WriteScope<'_>, change: Change<'_>) -> Result<String, RecordError> {
    let builder = scope.builder;
    let Change {
        id,
        if_match,
        values,
        relations,
    } = change;
    let mut tx = db.begin().await?;
    let before = tx
        .query_one(&builder.get(id, Action::Update, &[], None, true))
        .await?
        .and_then(|r| r.into_iter().next())
        .and_then(|c| c.into_text())
        .ok_or(RecordError::NotFound)?;
    let before = parse_object(&before);
    let current = version_of(&before);
    if let Some(expected) = if_match
        && expected != current
    {
        return Err(RecordError::VersionMismatch { current });
    }
    check_relations(&mut tx, builder, relations).await?;
    let mut columns = values;
    columns.push((
        "updated_at".to_string(),
        SqlValue::Datetime(truncate_micros(Utc::now())),
    ));
    let json = tx
        .query_one(&builder.update(id, current, &columns))
        .await?
        .and_then(|r| r.into_iter().next())
        .and_then(|c| c.into_text())
        .ok_or(RecordError::VersionMismatch { current })?;
    let after = parse_object(&json);
    let mut changed = Map::new();
    for (key, new_value) in &after {
        if matches!(key.as_str(), "updated_at" | "version") {
            continue;
        }
        let old_value = before.get(key).cloned().unwrap_or(Value::Null);
        if &old_value != new_value {
            changed.insert(key.clone(), serde_json::json!({ "old": old_value, "new": new_value }));
        }
    }
    let triggers = &builder.collection.triggers.on_update;
    let record = Value::Object(after.clone());
    enqueue_triggers(&mut tx, scope, triggers, "update", &id.to_string(), record).await?;
    log_activity(
        &mut tx,
        scope,
        &id.to_string(),
        "update",
        serde_json::json!({ "changed": changed }),
        1,
    )
    .await?;
    tx.commit().await?;
    Ok(json)
}

/// Deletes a record the delete rule lets the caller touch. Returns the object keys of its
/// files, for the caller to delete from storage once the transaction has committed.
pub async fn delete(
    db: &Db,
    scope: &WriteScope<'_>,
    id: Uuid,
    if_match: Option<i64>,
) -> Result<Vec<String>, RecordError> {
    let builder = scope.builder;
    let mut tx = db.begin().await?;
    let before = tx
        .query_one(&builder.get(id, Action::Delete, &[], None, true))
        .await?
        .and_then(|r| r.into_iter().next())
        .and_then(|c| c.into_text())
        .ok_or(RecordError::NotFound)?;
    let before: Value = serde_json::from_str(&before).unwrap_or(Value::Null);
    if let Some(expected) = if_match {
        let current = before.get("version").and_then(Value::as_i64).unwrap_or(0);
        if expected != current {
            return Err(RecordError::VersionMismatch { current });
        }
    }
    tx.execute(&builder.delete(id)).await?;
    let object_keys = if builder.collection.has_files() {
        crate::files::file_delete_for_records(&mut tx, &builder.collection.name, &[id])
            .await?
            .into_iter()
            .map(|removed| removed.object_key)
            .collect()
    } else {
        vec![]
    };
    let triggers = &builder.collection.triggers.on_delete;
    enqueue_triggers(&mut tx, scope, triggers, "delete", &id.to_string(), before.clone()).await?;
    log_activity(
        &mut tx,
        scope,
        &id.to_string(),
        "delete",
        serde_json::json!({ "before": before }),
        1,
    )
    .await?;
    tx.commit().await?;
    Ok(object_keys)
}

/// What a bulk delete removes: records matching a filter, one import's batch, or both.
pub struct Selection<'a> {
    pub filter: Option<&'a keel_query::TExpr>,
    /// The filter as given, for the activity entry.
    pub filter_text: Option<&'a str>,
    pub batch: Option<Uuid>,
}

/// Deletes every record of the selection that the delete rule lets the caller touch (B4):
/// `chunk` records per statement, all in one transaction with one activity entry that counts
/// them (not one entry per record). Triggers get one job per deleted record. Returns the
/// count and the object keys of the deleted records' files (to delete after the commit).
pub async fn delete_many(
    db: &Db,
    scope: &WriteScope<'_>,
    selection: &Selection<'_>,
    chunk: u32,
) -> Result<(u64, Vec<String>), RecordError> {
    let builder = scope.builder;
    let triggers = &builder.collection.triggers.on_delete;
    let app = &builder.schema.app;
    let files = builder.collection.has_files();
    let mut tx = db.begin().await?;
    let mut deleted: u64 = 0;
    let mut object_keys = vec![];
    loop {
        let returned = if !triggers.is_empty() {
            keel_query::Returned::Records
        } else if files {
            keel_query::Returned::Ids
        } else {
            keel_query::Returned::Nothing
        };
        let sql = builder.delete_chunk(selection.filter, selection.batch, chunk, returned);
        let (count, rows) = if returned == keel_query::Returned::Nothing {
            (tx.execute(&sql).await?, vec![])
        } else {
            let rows = tx.query(&sql).await?;
            (rows.len() as u64, rows)
        };
        deleted += count;
        if files {
            let ids: Vec<Uuid> = rows
                .iter()
                .filter_map(|row| {
                    let cell = row.first()?;
                    match (cell.uuid(), cell.text()) {
                        (Some(id), _) => Some(id),
                        (None, Some(json)) => serde_json::from_str::<Value>(json)
                            .ok()?
                            .get("id")?
                            .as_str()
                            .and_then(|s| Uuid::parse_str(s).ok()),
                        _ => None,
                    }
                })
                .collect();
            let removed = crate::files::file_delete_for_records(&mut tx, &builder.collection.name, &ids).await?;
            object_keys.extend(removed.into_iter().map(|r| r.object_key));
        }
        if !triggers.is_empty() {
            let mut jobs = Vec::with_capacity(rows.len() * triggers.len());
            for row in rows {
                let record: Value = row
                    .into_iter()
                    .next()
                    .and_then(|c| c.into_text())
                    .and_then(|json| serde_json::from_str(&json).ok())
                    .unwrap_or(Value::Null);
                let payload = serde_json::json!({
                    "collection": builder.collection.name,
                    "action": "delete",
                    "id": record.get("id").cloned().unwrap_or(Value::Null),
                    "record": record,
                });
                for name in triggers {
                    if let Some(kind) = app.jobs.kind(name) {
                        jobs.push(crate::jobs::NewJob::of_kind(
                            kind,
                            payload.clone(),
                            scope.org,
                            scope.actor.user,
                        ));
                    }
                }
            }
            crate::jobs::job_insert_many_tx(&mut tx, &jobs).await?;
        }
        // Not `count < chunk`: a record deleted or changed by someone else between a chunk's
        // choice and its delete makes a chunk short without being the last.
        if count == 0 {
            break;
        }
    }
    if deleted > 0 {
        let changes = serde_json::json!({
            "filter": selection.filter_text,
            "batch": selection.batch,
            "deleted": deleted,
        });
        let subject = selection.batch.map(|b| b.to_string()).unwrap_or_default();
        log_activity(&mut tx, scope, &subject, "bulk_delete", changes, deleted as i64).await?;
    }
    tx.commit().await?;
    Ok((deleted, object_keys))
}
