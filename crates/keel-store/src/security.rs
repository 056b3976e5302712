//! Account security (system version 4): failed logins with their lockouts, and the key ring
//! of server secrets that sign things (file links), with rotation.
//!
//! Both are rows, so every instance sees the same lockouts and keys (invariant: instances
//! keep no state of their own).

use chrono::{DateTime, Utc};
use keel_query::{Dialect, SqlValue};

use crate::Db;
use crate::error::StoreError;

pub fn tables(dialect: Dialect) -> Vec<String> {
    let ts = match dialect {
        Dialect::Sqlite => "TEXT",
        Dialect::Postgres => "timestamptz",
    };
    vec![
        format!(
            "CREATE TABLE keel_login_failures (key TEXT PRIMARY KEY, failures INTEGER NOT NULL, locked_until {ts}, updated_at {ts} NOT NULL)"
        ),
        "CREATE INDEX keel_login_failures_age ON keel_login_failures (updated_at)".to_string(),
        format!(
            "CREATE TABLE keel_keys (id TEXT PRIMARY KEY, purpose TEXT NOT NULL, secret TEXT NOT NULL, created_at {ts} NOT NULL, retired_at {ts})"
        ),
        "CREATE INDEX keel_keys_purpose ON keel_keys (purpose, created_at)".to_string(),
    ]
}

/// The latest lock among `keys` that has not ended by `now`: the key and when it ends.
pub async fn login_locked(
    db: &Db,
    keys: &[String],
    now: DateTime<Utc>,
) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
    if keys.is_empty() {
        return Ok(None);
    }
    let placeholders: Vec<String> = (0..keys.len()).map(|i| format!("${}", i + 2)).collect();
    let mut params = vec![SqlValue::Datetime(now)];
    params.extend(keys.iter().map(|k| SqlValue::Text(k.clone())));
    let sql = db.portable(
        &format!(
            "SELECT key, locked_until FROM keel_login_failures WHERE locked_until > $1 AND key IN ({}) ORDER BY locked_until DESC LIMIT 1",
            placeholders.join(", ")
        ),
        params,
    );
    Ok(db.query_primary(&sql).await?.into_iter().next().and_then(|row| {
        let mut cells = row.into_iter();
        let key = cells.next()?.into_text()?;
        let until = cells.next()?.datetime()?;
        Some((key, until))
    }))
}

/// Counts one failed login under `key`: failures older than `window` are forgotten first.
/// Returns the failures now counted.
pub async fn login_failure(
    db: &Db,
    key: &str,
    now: DateTime<Utc>,
    window: chrono::Duration,
) -> Result<i64, StoreError> {
    let sql = db.portable(
        "INSERT INTO keel_login_failures (key, failures, locked_until, updated_at) VALUES ($1, 1, NULL, $2) \
         ON CONFLICT (key) DO UPDATE SET \
         failures = CASE WHEN keel_login_failures.updated_at < $3 AND (keel_login_failures.locked_until IS NULL OR keel_login_failures.locked_until < $2) THEN 1 ELSE keel_login_failures.failures + 1 END, \
         updated_at = $2 RETURNING failures",
        vec![
            SqlValue::Text(key.to_string()),
            SqlValue::Datetime(now),
            SqlValue::Datetime(now - window),
        ],
    );
    Ok(db
        .write(&sql)
        .await?
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next())
        .and_then(|cell| cell.int())
        .unwrap_or(1))
}

/// Locks `key` until `until`.
pub async fn login_lock(db: &Db, key: &str, until: DateTime<Utc>) -> Result<(), StoreError> {
    let sql = db.portable(
        "UPDATE keel_login_failures SET locked_until = $1 WHERE key = $2",
        vec![SqlValue::Datetime(until), SqlValue::Text(key.to_string())],
    );
    db.write(&sql).await?;
    Ok(())
}

/// Forgets the failures under `key` (a successful login).
pub async fn login_clear(db: &Db, key: &str) -> Result<(), StoreError> {
    let sql = db.portable(
        "DELETE FROM keel_login_failures WHERE key = $1",
        vec![SqlValue::Text(key.to_string())],
    );
    db.write(&sql).await?;
    Ok(())
}

/// Deletes failure rows untouched since `before` whose lock has ended (the cleanup job).
pub async fn login_prune(db: &Db, before: DateTime<Utc>) -> Result<u64, StoreError> {
    let sql = db.portable(
        "DELETE FROM keel_login_failures WHERE updated_at < $1 AND (locked_until IS NULL OR locked_until < $1)",
        vec![SqlValue::Datetime(before)],
    );
    let mut tx = db.begin().await?;
    let n = tx.execute(&sql).await?;
    tx.commit().await?;
    Ok(n)
}

/// A server key: the newest unretired key of a purpose signs; every unretired key verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub id: String,
    pub purpose: String,
    pub secret: String,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

fn key_of(row: crate::Row) -> Option<Key> {
    let mut cells = row.into_iter();
    Some(Key {
        id: cells.next()?.into_text()?,
        purpose: cells.next()?.into_text()?,
        secret: cells.next()?.into_text()?,
        created_at: cells.next()?.datetime()?,
        retired_at: cells.next().and_then(|c| c.datetime()),
    })
}

/// Every key, newest first (retired ones too), optionally of one purpose.
pub async fn keys(db: &Db, purpose: Option<&str>) -> Result<Vec<Key>, StoreError> {
    let sql = match purpose {
        Some(purpose) => db.portable(
            "SELECT id, purpose, secret, created_at, retired_at FROM keel_keys WHERE purpose = $1 ORDER BY created_at DESC, id DESC",
            vec![SqlValue::Text(purpose.to_string())],
        ),
        None => db.portable(
            "SELECT id, purpose, secret, created_at, retired_at FROM keel_keys ORDER BY purpose, created_at DESC, id DESC",
            vec![],
        ),
    };
    Ok(db.query_primary(&sql).await?.into_iter().filter_map(key_of).collect())
}

/// Adds a key (rotation: it signs from now on; older ones keep verifying).
pub async fn key_insert(db: &Db, key: &Key) -> Result<(), StoreError> {
    let sql = db.portable(
        "INSERT INTO keel_keys (id, purpose, secret, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        vec![
            SqlValue::Text(key.id.clone()),
            SqlValue::Text(key.purpose.clone()),
            SqlValue::Text(key.secret.clone()),
            SqlValue::Datetime(key.created_at),
        ],
    );
    db.write(&sql).await?;
    Ok(())
}

/// Retires a key: it no longer verifies. Refused for the purpose's only unretired key.
pub async fn key_retire(db: &Db, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
    let sql = db.portable(
        "UPDATE keel_keys SET retired_at = $1 WHERE id = $2 AND retired_at IS NULL \
         AND EXISTS (SELECT 1 FROM keel_keys other WHERE other.purpose = keel_keys.purpose AND other.id <> keel_keys.id AND other.retired_at IS NULL AND other.created_at >= keel_keys.created_at) \
         RETURNING id",
        vec![SqlValue::Datetime(now), SqlValue::Text(id.to_string())],
    );
    Ok(!db.write(&sql).await?.is_empty())
}
