//! Spooled uploads (`keel_uploads`, system version 3): a file a request received and a
//! background job reads later, in numbered chunks of at most [`CHUNK`] bytes. Kept in the
//! database so that any instance can run the job; deleted when the job ends, and by the
//! cleanup job after a day if the job never did.

use std::time::Duration;

use chrono::Utc;
use keel_query::{Dialect, SqlValue};
use uuid::Uuid;

use crate::db::{Db, portable};
use crate::error::StoreError;

/// The most bytes one chunk row holds.
pub const CHUNK: usize = 1 << 20;

pub fn tables(dialect: Dialect) -> Vec<String> {
    match dialect {
        Dialect::Sqlite => vec![
            "CREATE TABLE keel_uploads (id TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (id, seq))".to_string(),
        ],
        Dialect::Postgres => vec![
            "CREATE TABLE keel_uploads (id uuid NOT NULL, seq integer NOT NULL, data bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (id, seq))".to_string(),
        ],
    }
}

fn created_at(dialect: Dialect, params: &mut Vec<SqlValue>) -> String {
    match dialect {
        Dialect::Sqlite => {
            params.push(SqlValue::Int(Utc::now().timestamp_micros()));
            format!("${}", params.len())
        }
        Dialect::Postgres => "now()".to_string(),
    }
}

/// Stores chunk `seq` of upload `id` (one autocommit statement).
pub async fn upload_put(db: &Db, id: Uuid, seq: i64, data: Vec<u8>) -> Result<(), StoreError> {
    let dialect = db.dialect();
    let mut params = vec![SqlValue::Uuid(id), SqlValue::Int(seq), SqlValue::Bytes(data)];
    let at = created_at(dialect, &mut params);
    let sql = portable(
        dialect,
        &format!("INSERT INTO keel_uploads (id, seq, data, created_at) VALUES ($1, $2, $3, {at})"),
        params,
    );
    db.write(&sql).await?;
    Ok(())
}

/// Chunk `seq` of upload `id`, from the primary; `None` past the last chunk.
pub async fn upload_chunk(db: &Db, id: Uuid, seq: i64) -> Result<Option<Vec<u8>>, StoreError> {
    let sql = portable(
        db.dialect(),
        "SELECT data FROM keel_uploads WHERE id = $1 AND seq = $2",
        vec![SqlValue::Uuid(id), SqlValue::Int(seq)],
    );
    Ok(db
        .query_primary(&sql)
        .await?
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next())
        .and_then(|cell| cell.into_bytes()))
}

/// Deletes every chunk of upload `id`.
pub async fn upload_delete(db: &Db, id: Uuid) -> Result<(), StoreError> {
    let sql = portable(
        db.dialect(),
        "DELETE FROM keel_uploads WHERE id = $1",
        vec![SqlValue::Uuid(id)],
    );
    db.write(&sql).await?;
    Ok(())
}

/// Deletes uploads older than `age` (left by a job that never finished); returns the chunks removed.
pub async fn upload_prune(db: &Db, age: Duration) -> Result<u64, StoreError> {
    let dialect = db.dialect();
    let micros = i64::try_from(age.as_micros()).unwrap_or(i64::MAX / 4);
    let sql = match dialect {
        Dialect::Sqlite => portable(
            dialect,
            "DELETE FROM keel_uploads WHERE created_at < $1 RETURNING seq",
            vec![SqlValue::Int(Utc::now().timestamp_micros() - micros)],
        ),
        Dialect::Postgres => portable(
            dialect,
            "DELETE FROM keel_uploads WHERE created_at < now() - $1 * interval '1 microsecond' RETURNING seq",
            vec![SqlValue::Int(micros)],
        ),
    };
    Ok(db.write(&sql).await?.len() as u64)
}
