//! `keel_files` (system version 3): one row per stored file, the source of truth for what
//! the object store holds (the record's file field mirrors it for reading). Rows are written
//! in the same transaction as the record change that adds or removes the file; the object
//! itself is written before that transaction and deleted after it commits.

use chrono::{DateTime, Utc};
use keel_query::{Dialect, SqlValue};
use uuid::Uuid;

use crate::db::Tx;
use crate::error::StoreError;

pub fn tables(dialect: Dialect) -> Vec<String> {
    let (uuid, ts, bigint) = match dialect {
        Dialect::Sqlite => ("TEXT", "TEXT", "INTEGER"),
        Dialect::Postgres => ("uuid", "timestamptz", "bigint"),
    };
    vec![
        format!(
            "CREATE TABLE keel_files (id {uuid} PRIMARY KEY, org {uuid}, collection TEXT NOT NULL, record {uuid} NOT NULL, field TEXT NOT NULL, object_key TEXT NOT NULL, name TEXT NOT NULL, content_type TEXT NOT NULL, size {bigint} NOT NULL, sha256 TEXT NOT NULL, uploaded_by {uuid}, created_at {ts} NOT NULL)"
        ),
        "CREATE INDEX keel_files_record ON keel_files (collection, record)".to_string(),
        "CREATE INDEX keel_files_age ON keel_files (collection, field, created_at)".to_string(),
        "CREATE INDEX keel_files_org ON keel_files (org, uploaded_by)".to_string(),
    ]
}

/// A stored file.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub id: Uuid,
    pub org: Option<Uuid>,
    pub collection: String,
    pub record: Uuid,
    pub field: String,
    pub object_key: String,
    pub name: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    pub uploaded_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

fn optional(value: Option<Uuid>) -> SqlValue {
    value.map_or(SqlValue::Null, SqlValue::Uuid)
}

pub async fn file_insert(tx: &mut Tx, file: &StoredFile) -> Result<(), StoreError> {
    let sql = tx.portable(
        "INSERT INTO keel_files (id, org, collection, record, field, object_key, name, content_type, size, sha256, uploaded_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        vec![
            SqlValue::Uuid(file.id),
            optional(file.org),
            SqlValue::Text(file.collection.clone()),
            SqlValue::Uuid(file.record),
            SqlValue::Text(file.field.clone()),
            SqlValue::Text(file.object_key.clone()),
            SqlValue::Text(file.name.clone()),
            SqlValue::Text(file.content_type.clone()),
            SqlValue::Int(file.size),
            SqlValue::Text(file.sha256.clone()),
            optional(file.uploaded_by),
            SqlValue::Datetime(file.created_at),
        ],
    );
    tx.execute(&sql).await?;
    Ok(())
}

/// Removes file rows by id; returns their object keys.
pub async fn file_delete(tx: &mut Tx, ids: &[Uuid]) -> Result<Vec<String>, StoreError> {
    let mut keys = vec![];
    for part in ids.chunks(1_000) {
        let marks: Vec<String> = (1..=part.len()).map(|i| format!("${i}")).collect();
        let sql = tx.portable(
            &format!(
                "DELETE FROM keel_files WHERE id IN ({}) RETURNING object_key",
                marks.join(", ")
            ),
            part.iter().map(|id| SqlValue::Uuid(*id)).collect(),
        );
        keys.extend(
            tx.query(&sql)
                .await?
                .into_iter()
                .filter_map(|row| row.into_iter().next()?.into_text()),
        );
    }
    Ok(keys)
}

/// Removes the file rows of records (deleted records); returns their object keys.
pub async fn file_delete_for_records(
    tx: &mut Tx,
    collection: &str,
    records: &[Uuid],
) -> Result<Vec<String>, StoreError> {
    let mut keys = vec![];
    for part in records.chunks(1_000) {
        let marks: Vec<String> = (2..=part.len() + 1).map(|i| format!("${i}")).collect();
        let mut params = vec![SqlValue::Text(collection.to_string())];
        params.extend(part.iter().map(|id| SqlValue::Uuid(*id)));
        let sql = tx.portable(
            &format!(
                "DELETE FROM keel_files WHERE collection = $1 AND record IN ({}) RETURNING object_key",
                marks.join(", ")
            ),
            params,
        );
        keys.extend(
            tx.query(&sql)
                .await?
                .into_iter()
                .filter_map(|row| row.into_iter().next()?.into_text()),
        );
    }
    Ok(keys)
}
