//! Keys for external workers (J9).

use chrono::{DateTime, Utc};
use keel_query::{Dialect, SqlValue};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{Params, now_sql, time_of};
use crate::cell::{Cell, Row};
use crate::db::Db;
use crate::error::StoreError;

/// A key external workers authenticate with, limited to some queues (J9).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerKey {
    pub id: Uuid,
    pub name: String,
    pub queues: Vec<String>,
    pub created_at: Option<DateTime<Utc>>,
}

pub async fn worker_key_create(
    db: &Db,
    token_hash: &str,
    name: &str,
    queues: &[String],
) -> Result<WorkerKey, StoreError> {
    let dialect = db.dialect();
    let id = Uuid::now_v7();
    let mut params = Params::default();
    let id_param = params.bind(SqlValue::Uuid(id));
    let hash = params.bind(SqlValue::Text(token_hash.to_string()));
    let name_param = params.bind(SqlValue::Text(name.to_string()));
    let list = serde_json::to_value(queues).unwrap_or(Value::Null);
    let queues_param = params.bind(match dialect {
        Dialect::Postgres => SqlValue::Json(list),
        Dialect::Sqlite => SqlValue::Text(list.to_string()),
    });
    let now = now_sql(dialect, &mut params);
    let text = format!(
        "INSERT INTO keel_worker_keys (id, token_hash, name, queues, created_at) VALUES ({id_param}, {hash}, {name_param}, {queues_param}, {now})"
    );
    db.write(&params.sql(dialect, &text)).await?;
    Ok(WorkerKey {
        id,
        name: name.to_string(),
        queues: queues.to_vec(),
        created_at: Some(Utc::now()),
    })
}

fn worker_key_of(row: Row) -> WorkerKey {
    let mut cells = row.into_iter();
    let mut next = || cells.next().unwrap_or(Cell::Null);
    let id = next().uuid().unwrap_or_default();
    let name = next().into_text().unwrap_or_default();
    let queues = next()
        .into_text()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    WorkerKey {
        id,
        name,
        queues,
        created_at: time_of(&next()),
    }
}

/// The unrevoked worker key with this token hash.
pub async fn worker_key_find(db: &Db, token_hash: &str) -> Result<Option<WorkerKey>, StoreError> {
    let sql = db.portable(
        "SELECT id, name, queues, created_at FROM keel_worker_keys WHERE token_hash = $1 AND revoked_at IS NULL",
        vec![SqlValue::Text(token_hash.to_string())],
    );
    Ok(db.query_primary(&sql).await?.into_iter().next().map(worker_key_of))
}

pub async fn worker_key_list(db: &Db) -> Result<Vec<WorkerKey>, StoreError> {
    let sql = db.portable(
        "SELECT id, name, queues, created_at FROM keel_worker_keys WHERE revoked_at IS NULL ORDER BY created_at",
        vec![],
    );
    Ok(db.query_primary(&sql).await?.into_iter().map(worker_key_of).collect())
}

pub async fn worker_key_revoke(db: &Db, id: Uuid) -> Result<bool, StoreError> {
    let dialect = db.dialect();
    let mut params = Params::default();
    let now = now_sql(dialect, &mut params);
    let id = params.bind(SqlValue::Uuid(id));
    let text =
        format!("UPDATE keel_worker_keys SET revoked_at = {now} WHERE id = {id} AND revoked_at IS NULL RETURNING id");
    Ok(!db.write(&params.sql(dialect, &text)).await?.is_empty())
}
