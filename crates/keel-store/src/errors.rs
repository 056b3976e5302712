//! `keel_errors` (system version 5): unexpected errors and caught panics grouped by
//! fingerprint (O6), counted, with when each was first and last seen and a sample request.
//! Instances aggregate in memory and add their counts here every few seconds, so the table
//! is shared and the write rate is bounded by the number of groups, not of errors.

use chrono::{DateTime, Utc};
use keel_query::{Dialect, SqlValue};

use crate::Db;
use crate::error::StoreError;

pub fn tables(dialect: Dialect) -> Vec<String> {
    let (ts, bigint) = match dialect {
        Dialect::Sqlite => ("TEXT", "INTEGER"),
        Dialect::Postgres => ("timestamptz", "bigint"),
    };
    vec![
        format!(
            "CREATE TABLE keel_errors (fingerprint TEXT PRIMARY KEY, kind TEXT NOT NULL, route TEXT NOT NULL, message TEXT NOT NULL, count {bigint} NOT NULL, first_seen {ts} NOT NULL, last_seen {ts} NOT NULL, sample_request_id TEXT NOT NULL)"
        ),
        "CREATE INDEX keel_errors_recent ON keel_errors (last_seen)".to_string(),
    ]
}

/// One group of errors.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ErrorGroup {
    pub fingerprint: String,
    /// `error` (a 500 with a cause) or `panic`.
    pub kind: String,
    pub route: String,
    pub message: String,
    pub count: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub sample_request_id: String,
}

/// Adds counts: a new group is inserted, a known one gets the count, the later last-seen
/// time and its latest sample.
pub async fn errors_add(db: &Db, groups: &[ErrorGroup]) -> Result<(), StoreError> {
    for group in groups {
        let sql = db.portable(
            "INSERT INTO keel_errors (fingerprint, kind, route, message, count, first_seen, last_seen, sample_request_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (fingerprint) DO UPDATE SET \
             count = keel_errors.count + excluded.count, last_seen = excluded.last_seen, \
             sample_request_id = excluded.sample_request_id, message = excluded.message",
            vec![
                SqlValue::Text(group.fingerprint.clone()),
                SqlValue::Text(group.kind.clone()),
                SqlValue::Text(group.route.clone()),
                SqlValue::Text(group.message.clone()),
                SqlValue::Int(group.count),
                SqlValue::Datetime(group.first_seen),
                SqlValue::Datetime(group.last_seen),
                SqlValue::Text(group.sample_request_id.clone()),
            ],
        );
        db.write(&sql).await?;
    }
    Ok(())
}

/// The groups seen most recently first.
pub async fn errors_list(db: &Db, limit: i64) -> Result<Vec<ErrorGroup>, StoreError> {
    let sql = db.portable(
        "SELECT fingerprint, kind, route, message, count, first_seen, last_seen, sample_request_id FROM keel_errors \
         ORDER BY last_seen DESC, fingerprint LIMIT $1",
        vec![SqlValue::Int(limit)],
    );
    Ok(db
        .query_primary(&sql)
        .await?
        .into_iter()
        .filter_map(|row| {
            let mut cells = row.into_iter();
            Some(ErrorGroup {
                fingerprint: cells.next()?.into_text()?,
                kind: cells.next()?.into_text()?,
                route: cells.next()?.into_text()?,
                message: cells.next()?.into_text()?,
                count: cells.next()?.int()?,
                first_seen: cells.next()?.datetime()?,
                last_seen: cells.next()?.datetime()?,
                sample_request_id: cells.next()?.into_text()?,
            })
        })
        .collect())
}

/// Forgets groups not seen since `before`.
pub async fn errors_prune(db: &Db, before: DateTime<Utc>) -> Result<u64, StoreError> {
    let sql = db.portable(
        "DELETE FROM keel_errors WHERE last_seen < $1 RETURNING fingerprint",
        vec![SqlValue::Datetime(before)],
    );
    Ok(db.write(&sql).await?.len() as u64)
}
