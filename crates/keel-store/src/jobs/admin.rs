//! Operating the queue: reading, listing, retrying, cancelling and deleting jobs, queue
//! statistics and pausing, and retention.

use std::time::Duration;

use keel_query::{Dialect, SqlValue};
use serde::Serialize;
use uuid::Uuid;

use super::enqueue::notify_now;
use super::{JOB_COLUMNS, Job, JobState, Params, UNFINISHED, WAITING, duration_micros, job_of, now_micros, now_sql};
use crate::cell::Cell;
use crate::db::Db;
use crate::error::StoreError;

pub async fn job_get(db: &Db, id: i64) -> Result<Option<Job>, StoreError> {
    // The primary: a job's state must not lag behind what its worker committed.
    let sql = db.portable(
        &format!("SELECT {JOB_COLUMNS} FROM keel_jobs WHERE id = $1"),
        vec![SqlValue::Int(id)],
    );
    Ok(db.query_primary(&sql).await?.into_iter().next().map(job_of))
}

/// The jobs among `ids` that exist, read on the primary (realtime's job streams, one
/// statement for every stream of an instance).
pub async fn job_get_many(db: &Db, ids: &[i64]) -> Result<Vec<Job>, StoreError> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let mut params = Params::default();
    let list: Vec<String> = ids.iter().map(|id| params.bind(SqlValue::Int(*id))).collect();
    let sql = params.sql(
        db.dialect(),
        &format!("SELECT {JOB_COLUMNS} FROM keel_jobs WHERE id IN ({})", list.join(", ")),
    );
    Ok(db.query_primary(&sql).await?.into_iter().map(job_of).collect())
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub queue: Option<String>,
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub org_id: Option<Uuid>,
    /// Jobs with a smaller id than this (the cursor: newest first).
    pub before: Option<i64>,
    pub limit: u32,
}

/// Jobs matching the filter, newest first.
pub async fn job_list(db: &Db, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
    let mut params = Params::default();
    let mut conditions = vec![];
    if let Some(queue) = &filter.queue {
        conditions.push(format!("queue = {}", params.bind(SqlValue::Text(queue.clone()))));
    }
    if let Some(state) = filter.state {
        conditions.push(format!(
            "state = {}",
            params.bind(SqlValue::Text(state.as_str().into()))
        ));
    }
    if let Some(kind) = &filter.kind {
        conditions.push(format!("kind = {}", params.bind(SqlValue::Text(kind.clone()))));
    }
    if let Some(org) = filter.org_id {
        conditions.push(format!("org_id = {}", params.bind(SqlValue::Uuid(org))));
    }
    if let Some(before) = filter.before {
        conditions.push(format!("id < {}", params.bind(SqlValue::Int(before))));
    }
    let condition = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let limit = params.bind(SqlValue::Int(i64::from(filter.limit)));
    let text = format!("SELECT {JOB_COLUMNS} FROM keel_jobs {condition} ORDER BY id DESC LIMIT {limit}");
    Ok(db
        .query(&params.sql(db.dialect(), &text))
        .await?
        .into_iter()
        .map(job_of)
        .collect())
}

/// Puts a dead, cancelled or retryable job back in the queue now, with `extra_attempts` more
/// attempts. The attempt counter keeps counting up (it is the fencing token).
pub async fn job_retry(db: &Db, id: i64, extra_attempts: i32) -> Result<Option<Job>, StoreError> {
    let dialect = db.dialect();
    let mut params = Params::default();
    let now = now_sql(dialect, &mut params);
    let extra = params.bind(SqlValue::Int(i64::from(extra_attempts)));
    let id_param = params.bind(SqlValue::Int(id));
    let text = format!(
        "UPDATE keel_jobs SET state = 'available', run_at = {now}, finished_at = NULL, max_attempts = attempt + {extra} \
         WHERE id = {id_param} AND state IN ('dead', 'cancelled', 'retryable', 'scheduled') RETURNING id"
    );
    if db.write(&params.sql(dialect, &text)).await?.is_empty() {
        return Ok(None);
    }
    let job = job_get(db, id).await?;
    if let Some(job) = &job {
        notify_now(db, &job.queue).await?;
    }
    Ok(job)
}

/// Runs the dead jobs of a queue again (at most `limit`, oldest first), each with
/// `extra_attempts` more attempts: how many were retried.
pub async fn queue_retry_dead(db: &Db, queue: &str, extra_attempts: i32, limit: i64) -> Result<u64, StoreError> {
    let dialect = db.dialect();
    let mut params = Params::default();
    let now = now_sql(dialect, &mut params);
    let extra = params.bind(SqlValue::Int(i64::from(extra_attempts)));
    let queue_param = params.bind(SqlValue::Text(queue.to_string()));
    let limit = params.bind(SqlValue::Int(limit));
    let text = format!(
        "UPDATE keel_jobs SET state = 'available', run_at = {now}, finished_at = NULL, max_attempts = attempt + {extra} \
         WHERE id IN (SELECT id FROM keel_jobs WHERE queue = {queue_param} AND state = 'dead' ORDER BY id LIMIT {limit}) RETURNING id"
    );
    let retried = db.write(&params.sql(dialect, &text)).await?.len() as u64;
    if retried > 0 {
        notify_now(db, queue).await?;
    }
    Ok(retried)
}

/// Cancels a job that has not finished. A running job's worker loses its lease: its
/// completion is refused and its next heartbeat tells it to stop.
pub async fn job_cancel(db: &Db, id: i64) -> Result<Option<Job>, StoreError> {
    let dialect = db.dialect();
    let mut params = Params::default();
    let now = now_sql(dialect, &mut params);
    let id_param = params.bind(SqlValue::Int(id));
    let text = format!(
        "UPDATE keel_jobs SET state = 'cancelled', finished_at = {now}, lease_owner = NULL, lease_expires_at = NULL \
         WHERE id = {id_param} AND state IN {UNFINISHED} RETURNING id"
    );
    if db.write(&params.sql(dialect, &text)).await?.is_empty() {
        return Ok(None);
    }
    job_get(db, id).await
}

/// Deletes a finished (dead, cancelled or completed) job. Returns whether it did.
pub async fn job_delete(db: &Db, id: i64) -> Result<bool, StoreError> {
    let sql = db.portable(
        "DELETE FROM keel_jobs WHERE id = $1 AND state IN ('completed', 'cancelled', 'dead') RETURNING id",
        vec![SqlValue::Int(id)],
    );
    Ok(!db.write(&sql).await?.is_empty())
}

/// One queue's depth in one state, and for waiting states how long the oldest runnable job
/// has been waiting.
#[derive(Debug, Clone, Serialize)]
pub struct QueueDepth {
    pub queue: String,
    pub state: JobState,
    pub count: i64,
}

/// A queue's shape: depth by state, the age of its oldest runnable job, its pause flag.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStats {
    pub name: String,
    pub paused: bool,
    pub depth: std::collections::BTreeMap<&'static str, i64>,
    /// Seconds the oldest runnable job has waited past its `run_at` (0 when none waits).
    pub oldest_available_seconds: f64,
}

/// Every queue's depth by state (one grouped scan; finished jobs are bounded by retention).
pub async fn queue_stats(db: &Db) -> Result<Vec<QueueStats>, StoreError> {
    let dialect = db.dialect();
    let mut params = Params::default();
    let now = now_sql(dialect, &mut params);
    let age = match dialect {
        Dialect::Postgres => format!(
            "extract(epoch FROM {now} - min(run_at) FILTER (WHERE state IN {WAITING} AND run_at <= {now}))::float8"
        ),
        Dialect::Sqlite => {
            format!("({now} - min(run_at) FILTER (WHERE state IN {WAITING} AND run_at <= {now})) / 1000000.0")
        }
    };
    let text = format!(
        "SELECT queue, state, count(*), {age} FROM keel_jobs GROUP BY queue, state \
         UNION ALL SELECT name, 'paused', CASE WHEN paused THEN 1 ELSE 0 END, NULL FROM keel_queues"
    );
    let rows = db.query_primary(&params.sql(dialect, &text)).await?;
    let mut queues: std::collections::BTreeMap<String, QueueStats> = Default::default();
    for row in rows {
        let name = row[0].text().unwrap_or_default().to_string();
        let stats = queues.entry(name.clone()).or_insert_with(|| QueueStats {
            name,
            paused: false,
            depth: JobState::ALL.iter().map(|s| (s.as_str(), 0)).collect(),
            oldest_available_seconds: 0.0,
        });
        let count = row[2].int().unwrap_or(0);
        match row[1].text() {
            Some("paused") => stats.paused = count > 0,
            Some(state) => {
                if let Some(state) = JobState::parse(state) {
                    stats.depth.insert(state.as_str(), count);
                }
                if let Cell::Float(age) = row[3] {
                    stats.oldest_available_seconds = stats.oldest_available_seconds.max(age);
                }
            }
            None => {}
        }
    }
    Ok(queues.into_values().collect())
}

/// Pauses or resumes a queue on every instance (claims check the flag).
pub async fn queue_pause(db: &Db, queue: &str, paused: bool) -> Result<(), StoreError> {
    let dialect = db.dialect();
    let value = match dialect {
        Dialect::Postgres => SqlValue::Bool(paused),
        Dialect::Sqlite => SqlValue::Int(i64::from(paused)),
    };
    let sql = db.portable(
        "INSERT INTO keel_queues (name, paused) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET paused = excluded.paused",
        vec![SqlValue::Text(queue.to_string()), value],
    );
    db.write(&sql).await?;
    if !paused {
        notify_now(db, queue).await?;
    }
    Ok(())
}

/// Retention of a queue's finished jobs (J8).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep_completed: u32,
    /// Dead and cancelled jobs.
    pub keep_failed: u32,
    /// Finished jobs older than this go whatever the counts.
    pub max_age: Duration,
}

/// Deletes a queue's finished jobs beyond the retention, at most `batch` per statement.
/// Returns how many it deleted.
pub async fn job_prune(db: &Db, queue: &str, retention: &Retention, batch: u32) -> Result<u64, StoreError> {
    let dialect = db.dialect();
    let mut deleted = 0;
    let groups = [
        ("('completed')", retention.keep_completed),
        ("('cancelled', 'dead')", retention.keep_failed),
    ];
    for (states, keep) in groups {
        loop {
            let mut params = Params::default();
            let queue_param = params.bind(SqlValue::Text(queue.to_string()));
            let keep = params.bind(SqlValue::Int(i64::from(keep)));
            let batch_param = params.bind(SqlValue::Int(i64::from(batch)));
            let cutoff = match dialect {
                Dialect::Postgres => {
                    let ms = params.bind(SqlValue::Float(retention.max_age.as_secs_f64() * 1000.0));
                    format!("now() - {ms}::float8 * interval '1 millisecond'")
                }
                Dialect::Sqlite => params.bind(SqlValue::Int(now_micros() - duration_micros(retention.max_age))),
            };
            let text = format!(
                "DELETE FROM keel_jobs WHERE id IN (\
                   SELECT id FROM (SELECT id, finished_at, row_number() OVER (ORDER BY finished_at DESC, id DESC) AS position \
                                   FROM keel_jobs WHERE queue = {queue_param} AND state IN {states}) AS ranked \
                   WHERE position > {keep} OR finished_at < {cutoff} LIMIT {batch_param})"
            );
            let mut tx = db.begin().await?;
            let n = tx.execute(&params.sql(dialect, &text)).await?;
            tx.commit().await?;
            deleted += n;
            if n < u64::from(batch) {
                break;
            }
        }
    }
    Ok(deleted)
}
