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
    let (uuid, ts, _, bigint) = crate::migrate::column_types(dialect);
    vec![
        format!(
            "CREATE TABLE keel_files (id {uuid} PRIMARY KEY, org {uuid}, collection TEXT NOT NULL, record {uuid} NOT NULL, field TEXT NOT NULL, object_key TEXT NOT NULL, name TEXT NOT NULL, content_type TEXT NOT NULL, size {bigint} NOT NULL, sha256 TEXT NOT NULL, uploaded_by {uuid}, created_at {ts} NOT NULL)"
        ),
        "CREATE INDEX keel_files_record ON keel_files (collection, record)".to_string(),
        "CREATE INDEX keel_files_age ON keel_files (collection, field, created_at)".to_string(),
        "CREATE INDEX keel_files_org ON keel_files (org, uploaded_by)".to_string(),
        format!("CREATE TABLE keel_usage (scope TEXT PRIMARY KEY, bytes {bigint} NOT NULL, files {bigint} NOT NULL)"),
        "CREATE TABLE keel_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)".to_string(),
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

pub async fn file_insert(tx: &mut Tx, file: &StoredFile) -> Result<(), StoreError> {
    let mut params = vec![
        SqlValue::Uuid(file.id),
        SqlValue::Text(file.collection.clone()),
        SqlValue::Uuid(file.record),
        SqlValue::Text(file.field.clone()),
        SqlValue::Text(file.object_key.clone()),
        SqlValue::Text(file.name.clone()),
        SqlValue::Text(file.content_type.clone()),
        SqlValue::Int(file.size),
        SqlValue::Text(file.sha256.clone()),
        SqlValue::Datetime(file.created_at),
    ];
    // A missing id is a literal NULL: a bound NULL is typed text on PostgreSQL.
    let mut optional = |value: Option<Uuid>| match value {
        Some(id) => {
            params.push(SqlValue::Uuid(id));
            format!("${}", params.len())
        }
        None => "NULL".to_string(),
    };
    let org = optional(file.org);
    let uploaded_by = optional(file.uploaded_by);
    let sql = tx.portable(
        &format!(
            "INSERT INTO keel_files (id, collection, record, field, object_key, name, content_type, size, sha256, created_at, org, uploaded_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, {org}, {uploaded_by})"
        ),
        params,
    );
    tx.execute(&sql).await?;
    Ok(())
}

/// A file row removed: its object (to delete after the commit) and what it counted against.
#[derive(Debug, Clone)]
pub struct Removed {
    pub object_key: String,
    pub org: Option<Uuid>,
    pub uploaded_by: Option<Uuid>,
    pub size: i64,
}

const RETURNING: &str = "RETURNING object_key, org, uploaded_by, size";

fn removed(rows: Vec<crate::Row>) -> Vec<Removed> {
    rows.into_iter()
        .filter_map(|row| {
            let mut cells = row.into_iter();
            Some(Removed {
                object_key: cells.next()?.into_text()?,
                org: cells.next().and_then(|c| c.uuid()),
                uploaded_by: cells.next().and_then(|c| c.uuid()),
                size: cells.next().and_then(|c| c.int()).unwrap_or(0),
            })
        })
        .collect()
}

/// Removes file rows by id, releasing their usage.
pub async fn file_delete(tx: &mut Tx, ids: &[Uuid]) -> Result<Vec<Removed>, StoreError> {
    let mut out = vec![];
    for part in ids.chunks(1_000) {
        let marks: Vec<String> = (1..=part.len()).map(|i| format!("${i}")).collect();
        let sql = tx.portable(
            &format!("DELETE FROM keel_files WHERE id IN ({}) {RETURNING}", marks.join(", ")),
            part.iter().map(|id| SqlValue::Uuid(*id)).collect(),
        );
        out.extend(removed(tx.query(&sql).await?));
    }
    usage_release(tx, &out).await?;
    Ok(out)
}

/// Removes the file rows of records (deleted records), releasing their usage.
pub async fn file_delete_for_records(
    tx: &mut Tx,
    collection: &str,
    records: &[Uuid],
) -> Result<Vec<Removed>, StoreError> {
    let mut out = vec![];
    for part in records.chunks(1_000) {
        let marks: Vec<String> = (2..=part.len() + 1).map(|i| format!("${i}")).collect();
        let mut params = vec![SqlValue::Text(collection.to_string())];
        params.extend(part.iter().map(|id| SqlValue::Uuid(*id)));
        let sql = tx.portable(
            &format!(
                "DELETE FROM keel_files WHERE collection = $1 AND record IN ({}) {RETURNING}",
                marks.join(", ")
            ),
            params,
        );
        out.extend(removed(tx.query(&sql).await?));
    }
    usage_release(tx, &out).await?;
    Ok(out)
}

/// The usage counter of an org.
pub fn org_scope(org: Uuid) -> String {
    format!("org:{org}")
}

/// The usage counter of a user (across orgs).
pub fn user_scope(user: Uuid) -> String {
    format!("user:{user}")
}

/// Adds `bytes` and `files` to a usage counter, unless that would take it past `limit`:
/// `Ok(Ok(new total))`, or `Ok(Err(current total))` when the limit refuses it. The row lock
/// of the counter serialises concurrent uploads, on every instance.
pub async fn usage_add(
    tx: &mut Tx,
    scope: &str,
    bytes: i64,
    files: i64,
    limit: Option<u64>,
) -> Result<Result<i64, i64>, StoreError> {
    let create = tx.portable(
        "INSERT INTO keel_usage (scope, bytes, files) VALUES ($1, 0, 0) ON CONFLICT (scope) DO NOTHING",
        vec![SqlValue::Text(scope.to_string())],
    );
    tx.execute(&create).await?;
    let mut params = vec![
        SqlValue::Text(scope.to_string()),
        SqlValue::Int(bytes),
        SqlValue::Int(files),
    ];
    let mut text = "UPDATE keel_usage SET bytes = bytes + $2, files = files + $3 WHERE scope = $1".to_string();
    if let Some(limit) = limit {
        params.push(SqlValue::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        text.push_str(" AND bytes + $2 <= $4");
    }
    text.push_str(" RETURNING bytes");
    let sql = tx.portable(&text, params);
    if let Some(row) = tx.query_one(&sql).await? {
        return Ok(Ok(row[0].int().unwrap_or(0)));
    }
    let current = tx.portable(
        "SELECT bytes FROM keel_usage WHERE scope = $1",
        vec![SqlValue::Text(scope.to_string())],
    );
    let used = tx.query_one(&current).await?.and_then(|r| r[0].int()).unwrap_or(0);
    Ok(Err(used))
}

/// Gives back the usage of removed files.
async fn usage_release(tx: &mut Tx, removed: &[Removed]) -> Result<(), StoreError> {
    let mut totals: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for file in removed {
        let mut scopes = vec![];
        if let Some(org) = file.org {
            scopes.push(org_scope(org));
        }
        if let Some(user) = file.uploaded_by {
            scopes.push(user_scope(user));
        }
        for scope in scopes {
            let entry = totals.entry(scope).or_default();
            entry.0 += file.size;
            entry.1 += 1;
        }
    }
    for (scope, (bytes, files)) in totals {
        // Without a limit the change always applies.
        let _ = usage_add(tx, &scope, -bytes, -files, None).await?;
    }
    Ok(())
}

/// A usage counter: (bytes, files).
pub async fn usage_get(db: &crate::Db, scope: &str) -> Result<(i64, i64), StoreError> {
    let sql = crate::db::portable(
        db.dialect(),
        "SELECT bytes, files FROM keel_usage WHERE scope = $1",
        vec![SqlValue::Text(scope.to_string())],
    );
    Ok(db
        .query_primary(&sql)
        .await?
        .into_iter()
        .next()
        .map(|row| (row[0].int().unwrap_or(0), row[1].int().unwrap_or(0)))
        .unwrap_or((0, 0)))
}

/// A server secret shared by every instance (e.g. the key that signs file links): created
/// with `candidate` by the first instance that asks, then read by all.
pub async fn secret(db: &crate::Db, name: &str, candidate: &str) -> Result<String, StoreError> {
    let dialect = db.dialect();
    let insert = crate::db::portable(
        dialect,
        "INSERT INTO keel_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        vec![SqlValue::Text(name.to_string()), SqlValue::Text(candidate.to_string())],
    );
    db.write(&insert).await?;
    let select = crate::db::portable(
        dialect,
        "SELECT value FROM keel_secrets WHERE name = $1",
        vec![SqlValue::Text(name.to_string())],
    );
    db.query_primary(&select)
        .await?
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next())
        .and_then(|cell| cell.into_text())
        .ok_or(StoreError::NotFound)
}

/// A stored file by id.
pub async fn file_get(db: &crate::Db, id: Uuid) -> Result<Option<StoredFile>, StoreError> {
    let sql = crate::db::portable(
        db.dialect(),
        "SELECT id, org, collection, record, field, object_key, name, content_type, size, sha256, uploaded_by, created_at FROM keel_files WHERE id = $1",
        vec![SqlValue::Uuid(id)],
    );
    Ok(db.query_primary(&sql).await?.into_iter().next().and_then(|row| {
        let mut cells = row.into_iter();
        Some(StoredFile {
            id: cells.next()?.uuid()?,
            org: cells.next().and_then(|c| c.uuid()),
            collection: cells.next()?.into_text()?,
            record: cells.next()?.uuid()?,
            field: cells.next()?.into_text()?,
            object_key: cells.next()?.into_text()?,
            name: cells.next()?.into_text()?,
            content_type: cells.next()?.into_text()?,
            size: cells.next()?.int()?,
            sha256: cells.next()?.into_text()?,
            uploaded_by: cells.next().and_then(|c| c.uuid()),
            created_at: cells.next()?.datetime()?,
        })
    }))
}
