//! Enqueueing: one job (inside the caller's transaction or in one of its own), many jobs in
//! one statement per chunk, and the notifications that wake workers.

use keel_query::{Dialect, Sql, SqlValue};

use super::{JobState, NOTIFY_CHANNEL_SQL, NewJob, Params, UNFINISHED, later, now_micros, now_sql};
use crate::cell::Row;
use crate::db::{Db, Tx, portable};
use crate::error::StoreError;

/// What an enqueue did: the job's id and state, and whether a job with the same unique key
/// was already waiting or running (then no new job was made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: i64,
    pub state: JobState,
    pub duplicate: bool,
}

/// The statement that enqueues one job, and the state it gets.
fn insert_sql(dialect: Dialect, job: &NewJob) -> (Sql, JobState) {
    let mut params = Params::default();
    let queue = params.bind(SqlValue::Text(job.queue.clone()));
    let kind = params.bind(SqlValue::Text(job.kind.clone()));
    let org = params.optional_uuid(job.org_id);
    let created_by = params.optional_uuid(job.created_by);
    let payload = params.bind(match dialect {
        Dialect::Postgres => SqlValue::Json(job.payload.clone()),
        Dialect::Sqlite => SqlValue::Text(job.payload.to_string()),
    });
    let priority = params.bind(SqlValue::Int(i64::from(job.priority)));
    let state = if job.delay.is_zero() {
        JobState::Available
    } else {
        JobState::Scheduled
    };
    let state_param = params.bind(SqlValue::Text(state.as_str().to_string()));
    let max_attempts = params.bind(SqlValue::Int(i64::from(job.max_attempts)));
    let run_at = later(dialect, &mut params, job.delay);
    let unique_key = params.optional_text(job.unique_key.as_deref());
    let concurrency_key = params.optional_text(job.concurrency_key.as_deref());
    let now = now_sql(dialect, &mut params);
    let conflict = if job.unique_key.is_some() {
        format!("ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL AND state IN {UNFINISHED} DO NOTHING")
    } else {
        String::new()
    };
    let insert = format!(
        "INSERT INTO keel_jobs (queue, kind, org_id, created_by, payload, priority, state, max_attempts, run_at, unique_key, concurrency_key, created_at) \
         VALUES ({queue}, {kind}, {org}, {created_by}, {payload}, {priority}, {state_param}, {max_attempts}, {run_at}, {unique_key}, {concurrency_key}, {now}) {conflict} RETURNING id"
    );
    let text = match (dialect, state) {
        // Wakes idle workers on every instance when the transaction commits.
        (Dialect::Postgres, JobState::Available) => format!(
            "WITH inserted AS ({insert}) SELECT inserted.id FROM inserted CROSS JOIN LATERAL pg_notify({NOTIFY_CHANNEL_SQL}, {queue}) AS notified"
        ),
        _ => insert,
    };
    (params.sql(dialect, &text), state)
}

fn existing_sql(dialect: Dialect, job: &NewJob) -> Sql {
    portable(
        dialect,
        &format!("SELECT id, state FROM keel_jobs WHERE queue = $1 AND unique_key = $2 AND state IN {UNFINISHED}"),
        vec![
            SqlValue::Text(job.queue.clone()),
            SqlValue::Text(job.unique_key.clone().unwrap_or_default()),
        ],
    )
}

fn enqueued_of(inserted: Vec<Row>, state: JobState) -> Option<Enqueued> {
    let id = inserted.first().and_then(|row| row[0].int())?;
    Some(Enqueued {
        id,
        state,
        duplicate: false,
    })
}

fn duplicate_of(existing: Option<Row>) -> Result<Enqueued, StoreError> {
    let existing = existing.ok_or_else(|| StoreError::Other("a unique job vanished while being enqueued".into()))?;
    Ok(Enqueued {
        id: existing[0].int().unwrap_or(0),
        state: existing[1]
            .text()
            .and_then(JobState::parse)
            .unwrap_or(JobState::Available),
        duplicate: true,
    })
}

/// Enqueues one job inside `tx` (J1: it commits or rolls back with the caller's write).
/// A job whose unique key is taken by an unfinished job is not enqueued; the existing job is
/// returned with `duplicate: true` (J2).
pub async fn job_insert(tx: &mut Tx, job: &NewJob) -> Result<Enqueued, StoreError> {
    let (sql, state) = insert_sql(tx.dialect(), job);
    if let Some(enqueued) = enqueued_of(tx.query(&sql).await?, state) {
        return Ok(enqueued);
    }
    duplicate_of(tx.query_one(&existing_sql(tx.dialect(), job)).await?)
}

/// Enqueues one job in a transaction of its own (one round trip on PostgreSQL).
pub async fn job_enqueue(db: &Db, job: &NewJob) -> Result<Enqueued, StoreError> {
    let (sql, state) = insert_sql(db.dialect(), job);
    if let Some(enqueued) = enqueued_of(db.write(&sql).await?, state) {
        return Ok(enqueued);
    }
    duplicate_of(
        db.query_primary(&existing_sql(db.dialect(), job))
            .await?
            .into_iter()
            .next(),
    )
}

/// Enqueues many jobs in one statement per chunk (bulk enqueue). Jobs whose unique key is
/// taken are skipped. Returns how many were inserted.
pub async fn job_insert_many(db: &Db, jobs: &[NewJob]) -> Result<u64, StoreError> {
    let mut inserted = 0;
    for chunk in jobs.chunks(5_000) {
        let mut tx = db.begin().await?;
        inserted += job_insert_many_tx(&mut tx, chunk).await?;
        tx.commit().await?;
    }
    Ok(inserted)
}

/// Enqueues many jobs inside `tx` (they run once it commits), e.g. the triggers of an import.
pub async fn job_insert_many_tx(tx: &mut Tx, jobs: &[NewJob]) -> Result<u64, StoreError> {
    let dialect = tx.dialect();
    let mut inserted = 0;
    for chunk in jobs.chunks(5_000) {
        let rows = serde_json::to_value(chunk).map_err(|e| StoreError::Other(e.to_string()))?;
        let mut params = Params::default();
        let text = match dialect {
            Dialect::Postgres => {
                let list = params.bind(SqlValue::Json(rows));
                format!(
                    "INSERT INTO keel_jobs (queue, kind, org_id, created_by, payload, priority, state, max_attempts, run_at, unique_key, concurrency_key, created_at) \
                     SELECT j.queue, j.kind, j.org_id, j.created_by, j.payload, j.priority, \
                            CASE WHEN j.delay_ms > 0 THEN 'scheduled' ELSE 'available' END, j.max_attempts, \
                            now() + j.delay_ms * interval '1 millisecond', j.unique_key, j.concurrency_key, now() \
                     FROM jsonb_to_recordset({list}) AS j(queue text, kind text, org_id uuid, created_by uuid, payload jsonb, priority int, max_attempts int, delay_ms float8, unique_key text, concurrency_key text) \
                     ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL AND state IN {UNFINISHED} DO NOTHING"
                )
            }
            Dialect::Sqlite => {
                let list = params.bind(SqlValue::Text(rows.to_string()));
                let now = params.bind(SqlValue::Int(now_micros()));
                format!(
                    "INSERT INTO keel_jobs (queue, kind, org_id, created_by, payload, priority, state, max_attempts, run_at, unique_key, concurrency_key, created_at) \
                     SELECT value ->> 'queue', value ->> 'kind', value ->> 'org_id', value ->> 'created_by', json(value -> 'payload'), value ->> 'priority', \
                            CASE WHEN value ->> 'delay_ms' > 0 THEN 'scheduled' ELSE 'available' END, value ->> 'max_attempts', \
                            {now} + CAST(value ->> 'delay_ms' * 1000 AS INTEGER), value ->> 'unique_key', value ->> 'concurrency_key', {now} \
                     FROM json_each({list}) WHERE true \
                     ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL AND state IN {UNFINISHED} DO NOTHING"
                )
            }
        };
        inserted += tx.execute(&params.sql(dialect, &text)).await?;
        job_notify(tx, chunk.iter().map(|job| job.queue.as_str())).await?;
    }
    Ok(inserted)
}

/// Wakes the workers of these queues on every instance when `tx` commits (PostgreSQL;
/// SQLite has one process, woken by the caller).
pub async fn job_notify<'a>(tx: &mut Tx, queues: impl Iterator<Item = &'a str>) -> Result<(), StoreError> {
    if tx.dialect() != Dialect::Postgres {
        return Ok(());
    }
    let mut names: Vec<&str> = queues.collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let sql = tx.portable(
            &format!("SELECT 1 FROM pg_notify({NOTIFY_CHANNEL_SQL}, $1)"),
            vec![SqlValue::Text(name.to_string())],
        );
        tx.execute(&sql).await?;
    }
    Ok(())
}

/// Wakes the workers of `queue` (`*`: every queue) on every instance now, outside any
/// transaction (PostgreSQL; SQLite has one process, woken by the caller).
pub(super) async fn notify_now(db: &Db, queue: &str) -> Result<(), StoreError> {
    if db.dialect() == Dialect::Postgres {
        let sql = db.portable(
            &format!("SELECT 1 FROM pg_notify({NOTIFY_CHANNEL_SQL}, $1)"),
            vec![SqlValue::Text(queue.to_string())],
        );
        db.write(&sql).await?;
    }
    Ok(())
}
