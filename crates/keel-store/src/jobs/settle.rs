//! Settling claimed jobs: completions, failures, heartbeats, progress, releases, and the
//! rescue of jobs whose lease expired. Each names the attempt it holds (fencing).

use std::time::Duration;

use chrono::Utc;
use keel_query::{Dialect, SqlValue};
use serde::Serialize;
use serde_json::Value;

use super::enqueue::notify_now;
use super::{ERROR_BYTES, ERRORS_KEPT, JobState, Params, duration_micros, later, now_micros, now_sql};
use crate::db::Db;
use crate::error::StoreError;

/// A job a worker finished, with the attempt it held.
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub id: i64,
    pub attempt: i32,
    pub result: Option<Value>,
}

/// Marks jobs completed in one statement. Only jobs still running under the named attempt
/// change (fencing); the ids that did are returned.
pub async fn job_complete_many(db: &Db, completions: &[Completion]) -> Result<Vec<i64>, StoreError> {
    if completions.is_empty() {
        return Ok(vec![]);
    }
    let dialect = db.dialect();
    let mut params = Params::default();
    let list = serde_json::to_value(completions).map_err(|e| StoreError::Other(e.to_string()))?;
    let text = match dialect {
        Dialect::Postgres => {
            let list = params.bind(SqlValue::Json(list));
            format!(
                "UPDATE keel_jobs AS j SET state = 'completed', finished_at = now(), result = c.result, \
                        lease_owner = NULL, lease_expires_at = NULL \
                 FROM jsonb_to_recordset({list}) AS c(id bigint, attempt int, result jsonb) \
                 WHERE j.id = c.id AND j.attempt = c.attempt AND j.state = 'running' RETURNING j.id"
            )
        }
        Dialect::Sqlite => {
            let list = params.bind(SqlValue::Text(list.to_string()));
            let now = params.bind(SqlValue::Int(now_micros()));
            format!(
                "UPDATE keel_jobs SET state = 'completed', finished_at = {now}, result = c.result, \
                        lease_owner = NULL, lease_expires_at = NULL \
                 FROM (SELECT value ->> 'id' AS id, value ->> 'attempt' AS attempt, json(value -> 'result') AS result \
                       FROM json_each({list})) AS c \
                 WHERE keel_jobs.id = c.id AND keel_jobs.attempt = c.attempt AND keel_jobs.state = 'running' \
                 RETURNING keel_jobs.id"
            )
        }
    };
    let rows = db.write(&params.sql(dialect, &text)).await?;
    Ok(rows.iter().filter_map(|row| row[0].int()).collect())
}

/// A failed attempt: retried after `retry_in`, or dead when `retry_in` is `None`.
#[derive(Debug, Clone)]
pub struct Failure {
    pub id: i64,
    pub attempt: i32,
    pub error: String,
    pub retry_in: Option<Duration>,
}

fn cut(text: &str, bytes: usize) -> String {
    if text.len() <= bytes {
        return text.to_string();
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Records failed attempts in one statement, fenced like completions; returns the ids that
/// changed. Each failure appends `{attempt, at, error}` to the job's error history.
pub async fn job_fail_many(db: &Db, failures: &[Failure]) -> Result<Vec<i64>, StoreError> {
    if failures.is_empty() {
        return Ok(vec![]);
    }
    let dialect = db.dialect();
    let list: Vec<Value> = failures
        .iter()
        .map(|f| {
            serde_json::json!({
                "id": f.id,
                "attempt": f.attempt,
                "error": cut(&f.error, ERROR_BYTES),
                "state": if f.retry_in.is_some() { "retryable" } else { "dead" },
                "delay_us": f.retry_in.map(duration_micros).unwrap_or(0),
            })
        })
        .collect();
    let mut params = Params::default();
    let text = match dialect {
        Dialect::Postgres => {
            let list = params.bind(SqlValue::Json(Value::Array(list)));
            format!(
                "UPDATE keel_jobs AS j SET state = f.state, \
                        run_at = CASE WHEN f.state = 'retryable' THEN now() + f.delay_us * interval '1 microsecond' ELSE j.run_at END, \
                        finished_at = CASE WHEN f.state = 'dead' THEN now() END, \
                        errors = (CASE WHEN jsonb_array_length(j.errors) >= {ERRORS_KEPT} THEN j.errors - 0 ELSE j.errors END) \
                                 || jsonb_build_array(jsonb_build_object('attempt', j.attempt, 'at', now(), 'error', f.error)), \
                        lease_owner = NULL, lease_expires_at = NULL \
                 FROM jsonb_to_recordset({list}) AS f(id bigint, attempt int, error text, state text, delay_us bigint) \
                 WHERE j.id = f.id AND j.attempt = f.attempt AND j.state = 'running' RETURNING j.id"
            )
        }
        Dialect::Sqlite => {
            let list = params.bind(SqlValue::Text(Value::Array(list).to_string()));
            let now = params.bind(SqlValue::Int(now_micros()));
            let at = params.bind(SqlValue::Text(keel_query::value::format_datetime(&Utc::now())));
            format!(
                "UPDATE keel_jobs SET state = f.state, \
                        run_at = CASE WHEN f.state = 'retryable' THEN {now} + f.delay_us ELSE keel_jobs.run_at END, \
                        finished_at = CASE WHEN f.state = 'dead' THEN {now} END, \
                        errors = json_insert(CASE WHEN json_array_length(keel_jobs.errors) >= {ERRORS_KEPT} THEN json_remove(keel_jobs.errors, '$[0]') ELSE keel_jobs.errors END, \
                                             '$[#]', json_object('attempt', keel_jobs.attempt, 'at', {at}, 'error', f.error)), \
                        lease_owner = NULL, lease_expires_at = NULL \
                 FROM (SELECT value ->> 'id' AS id, value ->> 'attempt' AS attempt, value ->> 'state' AS state, \
                              value ->> 'delay_us' AS delay_us, value ->> 'error' AS error FROM json_each({list})) AS f \
                 WHERE keel_jobs.id = f.id AND keel_jobs.attempt = f.attempt AND keel_jobs.state = 'running' \
                 RETURNING keel_jobs.id"
            )
        }
    };
    let rows = db.write(&params.sql(dialect, &text)).await?;
    Ok(rows.iter().filter_map(|row| row[0].int()).collect())
}

/// Extends the leases of running jobs held under the named attempts; returns the ids whose
/// lease still holds (the others were rescued, cancelled or taken over).
pub async fn job_heartbeat(db: &Db, held: &[(i64, i32)], lease: Duration) -> Result<Vec<i64>, StoreError> {
    if held.is_empty() {
        return Ok(vec![]);
    }
    let dialect = db.dialect();
    let list: Vec<Value> = held
        .iter()
        .map(|(id, attempt)| serde_json::json!({"id": id, "attempt": attempt}))
        .collect();
    let mut params = Params::default();
    let expires = later(dialect, &mut params, lease);
    let text = match dialect {
        Dialect::Postgres => {
            let list = params.bind(SqlValue::Json(Value::Array(list)));
            format!(
                "UPDATE keel_jobs AS j SET lease_expires_at = {expires} \
                 FROM jsonb_to_recordset({list}) AS h(id bigint, attempt int) \
                 WHERE j.id = h.id AND j.attempt = h.attempt AND j.state = 'running' \
                   AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL RETURNING j.id"
            )
        }
        Dialect::Sqlite => {
            let list = params.bind(SqlValue::Text(Value::Array(list).to_string()));
            format!(
                "UPDATE keel_jobs SET lease_expires_at = {expires} \
                 FROM (SELECT value ->> 'id' AS id, value ->> 'attempt' AS attempt FROM json_each({list})) AS h \
                 WHERE keel_jobs.id = h.id AND keel_jobs.attempt = h.attempt AND keel_jobs.state = 'running' \
                 RETURNING keel_jobs.id"
            )
        }
    };
    let rows = db.write(&params.sql(dialect, &text)).await?;
    Ok(rows.iter().filter_map(|row| row[0].int()).collect())
}

/// Records a running job's progress (fenced like a completion). Returns whether it still
/// holds its lease.
pub async fn job_progress(db: &Db, id: i64, attempt: i32, progress: Value) -> Result<bool, StoreError> {
    let dialect = db.dialect();
    let mut params = Params::default();
    let value = params.bind(match dialect {
        Dialect::Postgres => SqlValue::Json(progress),
        Dialect::Sqlite => SqlValue::Text(progress.to_string()),
    });
    let id = params.bind(SqlValue::Int(id));
    let attempt = params.bind(SqlValue::Int(i64::from(attempt)));
    let text = format!(
        "UPDATE keel_jobs SET progress = {value} WHERE id = {id} AND attempt = {attempt} AND state = 'running' RETURNING id"
    );
    Ok(!db.write(&params.sql(dialect, &text)).await?.is_empty())
}

/// A job returned to the queue by the rescuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescued {
    pub id: i64,
    pub queue: String,
    pub state: JobState,
}

/// Returns running jobs whose lease expired (their worker died or stalled) to the queue, or
/// marks them dead after their last attempt (J6). Runs on any instance; concurrent rescuers
/// skip each other's rows.
pub async fn job_rescue(db: &Db, limit: u32) -> Result<Vec<Rescued>, StoreError> {
    let dialect = db.dialect();
    let mut params = Params::default();
    let limit = params.bind(SqlValue::Int(i64::from(limit)));
    let error = "the lease expired: the worker stopped or stalled";
    let text = match dialect {
        Dialect::Postgres => format!(
            "WITH expired AS (SELECT id FROM keel_jobs WHERE state = 'running' AND lease_expires_at < now() \
                              ORDER BY lease_expires_at LIMIT {limit} FOR UPDATE SKIP LOCKED) \
             UPDATE keel_jobs AS j SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'dead' ELSE 'retryable' END, \
                    run_at = now(), finished_at = CASE WHEN j.attempt >= j.max_attempts THEN now() END, \
                    errors = (CASE WHEN jsonb_array_length(j.errors) >= {ERRORS_KEPT} THEN j.errors - 0 ELSE j.errors END) \
                             || jsonb_build_array(jsonb_build_object('attempt', j.attempt, 'at', now(), 'error', '{error}', 'worker', j.lease_owner)), \
                    lease_owner = NULL, lease_expires_at = NULL \
             FROM expired WHERE j.id = expired.id RETURNING j.id, j.queue, j.state"
        ),
        Dialect::Sqlite => {
            let now = params.bind(SqlValue::Int(now_micros()));
            let at = params.bind(SqlValue::Text(keel_query::value::format_datetime(&Utc::now())));
            format!(
                "UPDATE keel_jobs SET state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'retryable' END, \
                        run_at = {now}, finished_at = CASE WHEN attempt >= max_attempts THEN {now} END, \
                        errors = json_insert(CASE WHEN json_array_length(errors) >= {ERRORS_KEPT} THEN json_remove(errors, '$[0]') ELSE errors END, \
                                             '$[#]', json_object('attempt', attempt, 'at', {at}, 'error', '{error}', 'worker', lease_owner)), \
                        lease_owner = NULL, lease_expires_at = NULL \
                 WHERE id IN (SELECT id FROM keel_jobs WHERE state = 'running' AND lease_expires_at < {now} ORDER BY lease_expires_at LIMIT {limit}) \
                 RETURNING id, queue, state"
            )
        }
    };
    let rows = db.write(&params.sql(dialect, &text)).await?;
    Ok(rows
        .into_iter()
        .map(|row| Rescued {
            id: row[0].int().unwrap_or(0),
            queue: row[1].text().unwrap_or_default().to_string(),
            state: row[2].text().and_then(JobState::parse).unwrap_or(JobState::Retryable),
        })
        .collect())
}

/// Returns running jobs to the queue without counting the attempt against them (a worker
/// shutting down hands back what it could not finish). Fenced like completions.
pub async fn job_release_many(db: &Db, held: &[(i64, i32)]) -> Result<Vec<i64>, StoreError> {
    if held.is_empty() {
        return Ok(vec![]);
    }
    let dialect = db.dialect();
    let list: Vec<Value> = held
        .iter()
        .map(|(id, attempt)| serde_json::json!({"id": id, "attempt": attempt}))
        .collect();
    let mut params = Params::default();
    let now = now_sql(dialect, &mut params);
    let text = match dialect {
        Dialect::Postgres => {
            let list = params.bind(SqlValue::Json(Value::Array(list)));
            format!(
                "UPDATE keel_jobs AS j SET state = 'available', run_at = {now}, max_attempts = j.max_attempts + 1, \
                        lease_owner = NULL, lease_expires_at = NULL \
                 FROM jsonb_to_recordset({list}) AS h(id bigint, attempt int) \
                 WHERE j.id = h.id AND j.attempt = h.attempt AND j.state = 'running' RETURNING j.id"
            )
        }
        Dialect::Sqlite => {
            let list = params.bind(SqlValue::Text(Value::Array(list).to_string()));
            format!(
                "UPDATE keel_jobs SET state = 'available', run_at = {now}, max_attempts = keel_jobs.max_attempts + 1, \
                        lease_owner = NULL, lease_expires_at = NULL \
                 FROM (SELECT value ->> 'id' AS id, value ->> 'attempt' AS attempt FROM json_each({list})) AS h \
                 WHERE keel_jobs.id = h.id AND keel_jobs.attempt = h.attempt AND keel_jobs.state = 'running' \
                 RETURNING keel_jobs.id"
            )
        }
    };
    let rows = db.write(&params.sql(dialect, &text)).await?;
    if !rows.is_empty() {
        // Another instance may be idle: wake every queue's workers.
        notify_now(db, "*").await?;
    }
    Ok(rows.iter().filter_map(|row| row[0].int()).collect())
}
