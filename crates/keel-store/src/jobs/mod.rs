//! The job queue's tables and statements (J1–J8): one function per operation, named
//! entity-then-verb, each with its SQL for both backends.
//!
//! Times: PostgreSQL decides with its own clock (`now()`), so instances with skewed clocks
//! agree on leases and schedules (invariant 9). SQLite is embedded: its clock is the
//! process's, and its time columns hold microseconds since the epoch so that comparisons and
//! arithmetic stay integer operations.
//!
//! Fencing: every claim increments `attempt`; completing, failing or extending a lease names
//! the attempt it holds, so a worker whose lease was rescued and claimed again matches no row.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_query::{Dialect, SqlValue};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::cell::{Cell, Row};
pub(crate) use crate::params::Params;

mod admin;
mod claim;
mod enqueue;
mod lead;
mod settle;
mod worker_keys;

pub use admin::{
    JobFilter, QueueDepth, QueueStats, Retention, job_cancel, job_delete, job_get, job_get_many, job_list, job_prune,
    job_retry, queue_pause, queue_retry_dead, queue_stats,
};
pub use claim::{ClaimParams, Claimed, job_claim, queue_ensure};
pub use enqueue::{Enqueued, job_enqueue, job_insert, job_insert_many, job_insert_many_tx, job_notify};
pub use lead::{
    JobListener, clock_now, cron_claim_tick, cron_last_tick, job_listener, leader_acquire, leader_resign, leaders,
};
pub use settle::{
    Completion, Failure, Rescued, job_complete_many, job_fail_many, job_heartbeat, job_progress, job_release_many,
    job_rescue,
};
pub use worker_keys::{WorkerKey, worker_key_create, worker_key_find, worker_key_list, worker_key_revoke};

/// The states a job moves through (docs/JOBS.md draws the machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Ready to be claimed.
    Available,
    /// Waiting for its `run_at`.
    Scheduled,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Failed, waiting for its next attempt at `run_at`.
    Retryable,
    Completed,
    Cancelled,
    /// Failed its last attempt (or was rescued after it); kept with its error history.
    Dead,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Available,
        JobState::Scheduled,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Cancelled,
        JobState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Cancelled => "cancelled",
            JobState::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the job will not run again by itself.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Completed | JobState::Cancelled | JobState::Dead)
    }
}

/// The states a job waits in before it runs (the claim's partial index covers them).
const WAITING: &str = "('available', 'scheduled', 'retryable')";
/// The states in which a unique key is taken.
const UNFINISHED: &str = "('available', 'scheduled', 'running', 'retryable')";
/// The error history keeps this many entries (the oldest are dropped).
const ERRORS_KEPT: i64 = 20;
/// An error message is cut to this many bytes.
const ERROR_BYTES: usize = 2_000;

/// The DDL of the queue's tables (system version 2).
pub fn tables(dialect: Dialect) -> Vec<String> {
    let (id, uuid, ts, json, boolean, false_) = match dialect {
        Dialect::Sqlite => ("INTEGER PRIMARY KEY", "TEXT", "INTEGER", "TEXT", "INTEGER", "0"),
        Dialect::Postgres => (
            "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
            "uuid",
            "timestamptz",
            "jsonb",
            "boolean",
            "false",
        ),
    };
    vec![
        format!(
            "CREATE TABLE keel_jobs (
                id {id},
                queue TEXT NOT NULL,
                kind TEXT NOT NULL,
                org_id {uuid},
                created_by {uuid},
                payload {json} NOT NULL,
                priority INTEGER NOT NULL DEFAULT 0,
                state TEXT NOT NULL,
                attempt INTEGER NOT NULL DEFAULT 0,
                max_attempts INTEGER NOT NULL,
                run_at {ts} NOT NULL,
                lease_owner TEXT,
                lease_expires_at {ts},
                unique_key TEXT,
                concurrency_key TEXT,
                errors {json} NOT NULL DEFAULT '[]',
                result {json},
                progress {json},
                created_at {ts} NOT NULL,
                started_at {ts},
                finished_at {ts}
            )"
        ),
        format!(
            "CREATE INDEX keel_jobs_waiting ON keel_jobs (queue, priority DESC, run_at, id) WHERE state IN {WAITING}"
        ),
        "CREATE INDEX keel_jobs_leases ON keel_jobs (lease_expires_at) WHERE state = 'running'".to_string(),
        "CREATE INDEX keel_jobs_keys ON keel_jobs (queue, concurrency_key) WHERE state = 'running' AND concurrency_key IS NOT NULL".to_string(),
        format!(
            "CREATE UNIQUE INDEX keel_jobs_unique ON keel_jobs (queue, unique_key) WHERE unique_key IS NOT NULL AND state IN {UNFINISHED}"
        ),
        "CREATE INDEX keel_jobs_finished ON keel_jobs (queue, state, finished_at) WHERE state IN ('completed', 'cancelled', 'dead')".to_string(),
        format!(
            "CREATE TABLE keel_queues (name TEXT PRIMARY KEY, paused {boolean} NOT NULL DEFAULT {false_}, rate_tat {ts})"
        ),
        format!("CREATE TABLE keel_leaders (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at {ts} NOT NULL)"),
        format!("CREATE TABLE keel_cron (name TEXT PRIMARY KEY, last_tick {ts} NOT NULL)"),
        format!(
            "CREATE TABLE keel_worker_keys (id {uuid} PRIMARY KEY, token_hash TEXT NOT NULL, name TEXT NOT NULL, queues {json} NOT NULL, created_at {ts} NOT NULL, revoked_at {ts})"
        ),
        "CREATE UNIQUE INDEX keel_worker_keys_token ON keel_worker_keys (token_hash)".to_string(),
    ]
}

/// A job to enqueue.
#[derive(Debug, Clone, Serialize)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    pub org_id: Option<Uuid>,
    pub created_by: Option<Uuid>,
    pub payload: Value,
    /// Higher runs first.
    pub priority: i32,
    pub max_attempts: i32,
    /// Runs no earlier than this long after the enqueue (database clock).
    #[serde(rename = "delay_ms")]
    #[serde(serialize_with = "millis")]
    pub delay: Duration,
    pub unique_key: Option<String>,
    pub concurrency_key: Option<String>,
}

impl NewJob {
    /// A job of a declared kind, with the kind's queue, attempts and priority.
    pub fn of_kind(
        kind: &keel_spec::JobKind,
        payload: Value,
        org_id: Option<Uuid>,
        created_by: Option<Uuid>,
    ) -> NewJob {
        let concurrency_key = match kind.concurrency_key {
            Some(keel_spec::KeySource::User) => created_by.map(|u| format!("user:{u}")),
            Some(keel_spec::KeySource::Org) => org_id.map(|o| format!("org:{o}")),
            None => None,
        };
        NewJob {
            queue: kind.queue.clone(),
            kind: kind.name.clone(),
            org_id,
            created_by,
            payload,
            priority: kind.priority,
            max_attempts: kind.attempts as i32,
            delay: Duration::ZERO,
            unique_key: None,
            concurrency_key,
        }
    }
}

fn millis<S: serde::Serializer>(delay: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(delay.as_secs_f64() * 1000.0)
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    pub queue: String,
    pub kind: String,
    pub org_id: Option<Uuid>,
    pub created_by: Option<Uuid>,
    pub payload: Value,
    pub priority: i64,
    pub state: JobState,
    pub attempt: i64,
    pub max_attempts: i64,
    pub run_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub unique_key: Option<String>,
    pub concurrency_key: Option<String>,
    pub errors: Value,
    pub result: Option<Value>,
    pub progress: Option<Value>,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

const JOB_COLUMNS: &str = "id, queue, kind, org_id, created_by, payload, priority, state, attempt, max_attempts, run_at, lease_owner, lease_expires_at, unique_key, concurrency_key, errors, result, progress, created_at, started_at, finished_at";

/// A time column: microseconds on SQLite, `timestamptz` on PostgreSQL.
pub fn time_of(cell: &Cell) -> Option<DateTime<Utc>> {
    match cell {
        Cell::Int(micros) => DateTime::from_timestamp_micros(*micros),
        other => other.datetime(),
    }
}

fn json_of(cell: Cell) -> Option<Value> {
    cell.into_text()
        .map(|text| serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn job_of(row: Row) -> Job {
    let mut cells = row.into_iter();
    let mut next = || cells.next().unwrap_or(Cell::Null);
    let id = next().int().unwrap_or(0);
    let queue = next().into_text().unwrap_or_default();
    let kind = next().into_text().unwrap_or_default();
    let org_id = next().uuid();
    let created_by = next().uuid();
    let payload = json_of(next()).unwrap_or(Value::Null);
    let priority = next().int().unwrap_or(0);
    let state = next()
        .into_text()
        .and_then(|s| JobState::parse(&s))
        .unwrap_or(JobState::Dead);
    let attempt = next().int().unwrap_or(0);
    let max_attempts = next().int().unwrap_or(0);
    let run_at = time_of(&next());
    let lease_owner = next().into_text();
    let lease_expires_at = time_of(&next());
    let unique_key = next().into_text();
    let concurrency_key = next().into_text();
    let errors = json_of(next()).unwrap_or(Value::Array(vec![]));
    let result = json_of(next());
    let progress = json_of(next());
    Job {
        id,
        queue,
        kind,
        org_id,
        created_by,
        payload,
        priority,
        state,
        attempt,
        max_attempts,
        run_at,
        lease_owner,
        lease_expires_at,
        unique_key,
        concurrency_key,
        errors,
        result,
        progress,
        created_at: time_of(&next()),
        started_at: time_of(&next()),
        finished_at: time_of(&next()),
    }
}

/// Now, in the SQLite time representation.
fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn duration_micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX / 4)
}

/// `now() + <ms>` on PostgreSQL; `<now + micros>` on SQLite.
fn later(dialect: Dialect, params: &mut Params, after: Duration) -> String {
    match dialect {
        Dialect::Postgres => {
            let ms = params.bind(SqlValue::Float(after.as_secs_f64() * 1000.0));
            format!("now() + {ms}::float8 * interval '1 millisecond'")
        }
        Dialect::Sqlite => params.bind(SqlValue::Int(now_micros() + duration_micros(after))),
    }
}

fn now_sql(dialect: Dialect, params: &mut Params) -> String {
    match dialect {
        Dialect::Postgres => "now()".to_string(),
        Dialect::Sqlite => params.bind(SqlValue::Int(now_micros())),
    }
}

/// The NOTIFY channel that wakes workers of this schema on PostgreSQL.
pub const NOTIFY_CHANNEL_SQL: &str = "'keel_jobs:' || current_schema()";
