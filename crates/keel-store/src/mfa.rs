//! Second factors (A5, system version 7): a TOTP secret per user (RFC 6238), the last time
//! step it accepted (a code is never accepted twice), and ten single-use recovery codes,
//! stored as SHA-256 hashes.
//!
//! The TOTP secret is stored as it is: the server must compute codes from it. Whoever can read
//! the database can read it, as with every such server; backups are encrypted (age).

use chrono::{DateTime, Utc};
use keel_query::value::truncate_micros;
use keel_query::{Dialect, SqlValue};
use uuid::Uuid;

use crate::db::Db;
use crate::error::StoreError;

pub fn tables(dialect: Dialect) -> Vec<String> {
    let (uuid, ts, _, bigint) = crate::migrate::column_types(dialect);
    vec![
        format!(
            "CREATE TABLE keel_totp (user_id {uuid} PRIMARY KEY REFERENCES keel_users (id) ON DELETE CASCADE, secret TEXT NOT NULL, created_at {ts} NOT NULL, confirmed_at {ts}, last_step {bigint})"
        ),
        format!(
            "CREATE TABLE keel_recovery_codes (user_id {uuid} NOT NULL REFERENCES keel_users (id) ON DELETE CASCADE, code_hash TEXT NOT NULL, used_at {ts}, PRIMARY KEY (user_id, code_hash))"
        ),
    ]
}

fn now() -> DateTime<Utc> {
    truncate_micros(Utc::now())
}

/// A user's TOTP enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totp {
    /// Base32, as authenticator apps take it.
    pub secret: String,
    pub confirmed: bool,
}

pub async fn totp_of(db: &Db, user: Uuid) -> Result<Option<Totp>, StoreError> {
    let sql = db.portable(
        "SELECT secret, confirmed_at FROM keel_totp WHERE user_id = $1",
        vec![SqlValue::Uuid(user)],
    );
    Ok(db.query_primary(&sql).await?.into_iter().next().and_then(|row| {
        Some(Totp {
            secret: row.first()?.text()?.to_string(),
            confirmed: row.get(1).and_then(|c| c.datetime()).is_some(),
        })
    }))
}

/// Starts an enrolment with `secret`, replacing one that was never confirmed; `false` when
/// the user has a confirmed one (it must be disabled first).
pub async fn totp_begin(db: &Db, user: Uuid, secret: &str) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    tx.execute(&tx.portable(
        "DELETE FROM keel_totp WHERE user_id = $1 AND confirmed_at IS NULL",
        vec![SqlValue::Uuid(user)],
    ))
    .await?;
    let n = tx
        .execute(&tx.portable(
            "INSERT INTO keel_totp (user_id, secret, created_at) VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING",
            vec![
                SqlValue::Uuid(user),
                SqlValue::Text(secret.to_string()),
                SqlValue::Datetime(now()),
            ],
        ))
        .await?;
    tx.commit().await?;
    Ok(n == 1)
}

/// Confirms an enrolment with the step of the code that proved it, and stores the recovery
/// codes' hashes (replacing any); `false` when there is no enrolment waiting.
pub async fn totp_confirm(db: &Db, user: Uuid, step: i64, code_hashes: &[String]) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    let n = tx
        .execute(&tx.portable(
            "UPDATE keel_totp SET confirmed_at = $2, last_step = $3 WHERE user_id = $1 AND confirmed_at IS NULL",
            vec![SqlValue::Uuid(user), SqlValue::Datetime(now()), SqlValue::Int(step)],
        ))
        .await?;
    if n != 1 {
        return Ok(false);
    }
    tx.execute(&tx.portable(
        "DELETE FROM keel_recovery_codes WHERE user_id = $1",
        vec![SqlValue::Uuid(user)],
    ))
    .await?;
    for hash in code_hashes {
        tx.execute(&tx.portable(
            "INSERT INTO keel_recovery_codes (user_id, code_hash) VALUES ($1, $2)",
            vec![SqlValue::Uuid(user), SqlValue::Text(hash.clone())],
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Accepts a code's time step once: `false` when this step (or a later one) was accepted
/// before, so a code cannot be replayed within its window.
pub async fn totp_use_step(db: &Db, user: Uuid, step: i64) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    let n = tx
        .execute(&tx.portable(
            "UPDATE keel_totp SET last_step = $2 WHERE user_id = $1 AND confirmed_at IS NOT NULL AND (last_step IS NULL OR last_step < $2)",
            vec![SqlValue::Uuid(user), SqlValue::Int(step)],
        ))
        .await?;
    tx.commit().await?;
    Ok(n == 1)
}

/// Uses a recovery code once.
pub async fn recovery_use(db: &Db, user: Uuid, code_hash: &str) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    let n = tx
        .execute(&tx.portable(
            "UPDATE keel_recovery_codes SET used_at = $3 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
            vec![
                SqlValue::Uuid(user),
                SqlValue::Text(code_hash.to_string()),
                SqlValue::Datetime(now()),
            ],
        ))
        .await?;
    tx.commit().await?;
    Ok(n == 1)
}

/// How many recovery codes the user has left.
pub async fn recovery_left(db: &Db, user: Uuid) -> Result<i64, StoreError> {
    let sql = db.portable(
        "SELECT count(*) FROM keel_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        vec![SqlValue::Uuid(user)],
    );
    Ok(db
        .query_primary(&sql)
        .await?
        .first()
        .and_then(|row| row.first())
        .and_then(|c| c.int())
        .unwrap_or(0))
}

/// Removes the second factor and its recovery codes.
pub async fn totp_remove(db: &Db, user: Uuid) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    for table in ["keel_totp", "keel_recovery_codes"] {
        tx.execute(&tx.portable(
            &format!("DELETE FROM {table} WHERE user_id = $1"),
            vec![SqlValue::Uuid(user)],
        ))
        .await?;
    }
    tx.commit().await
}
