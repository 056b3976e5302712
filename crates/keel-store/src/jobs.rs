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
use keel_query::{Dialect, Sql, SqlValue};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::cell::{Cell, Row};
use crate::db::{Db, Tx, portable};
use crate::error::StoreError;

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

/// What an enqueue did: the job's id and state, and whether a job with the same unique key
/// was already waiting or running (then no new job was made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: i64,
    pub state: JobState,
    pub duplicate: bool,
}

/// A job claimed by a worker: what it needs to run it and to settle it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub kind: String,
    pub org_id: Option<Uuid>,
    pub created_by: Option<Uuid>,
    /// The payload as JSON text.
    pub payload: String,
    /// This claim's attempt number: the fencing token.
    pub attempt: i32,
    pub max_attempts: i32,
    /// How long the job waited past its `run_at` before this claim.
    pub waited: Duration,
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

/// Bound parameters for hand-written SQL: NULLs are written inline (an untyped NULL
/// parameter does not fit every PostgreSQL column type).
#[derive(Default)]
struct Params(Vec<SqlValue>);

impl Params {
    fn bind(&mut self, value: SqlValue) -> String {
        if matches!(value, SqlValue::Null) {
            return "NULL".to_string();
        }
        self.0.push(value);
        format!("${}", self.0.len())
    }

    fn optional_uuid(&mut self, value: Option<Uuid>) -> String {
        self.bind(value.map_or(SqlValue::Null, SqlValue::Uuid))
    }

    fn optional_text(&mut self, value: Option<&str>) -> String {
        self.bind(value.map_or(SqlValue::Null, |v| SqlValue::Text(v.to_string())))
    }

    fn sql(self, dialect: Dialect, text: &str) -> Sql {
        portable(dialect, text, self.0)
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
async fn notify_now(db: &Db, queue: &str) -> Result<(), StoreError> {
    if db.dialect() == Dialect::Postgres {
        let sql = db.portable(
            &format!("SELECT 1 FROM pg_notify({NOTIFY_CHANNEL_SQL}, $1)"),
            vec![SqlValue::Text(queue.to_string())],
        );
        db.write(&sql).await?;
    }
    Ok(())
}

/// How to claim: which queue, for whom, how many, and the queue's limits.
#[derive(Debug, Clone)]
pub struct ClaimParams<'a> {
    pub queue: &'a str,
    /// The worker (instance or external worker) that will hold the leases.
    pub owner: &'a str,
    pub limit: u32,
    pub lease: Duration,
    /// At most this many running jobs per concurrency key (J5).
    pub per_key: Option<u32>,
    /// At most this many jobs started per second across all instances (J5).
    pub rate: Option<f64>,
    /// Only these kinds (external workers may serve a subset of a queue).
    pub kinds: Option<&'a [String]>,
}

/// Claims up to `limit` runnable jobs of a queue, highest priority first, oldest first, with
/// a lease for `owner`. Concurrent claimers never get the same job (`FOR UPDATE SKIP LOCKED`
/// on PostgreSQL, the single writer on SQLite). A paused queue yields nothing.
pub async fn job_claim(db: &Db, claim: &ClaimParams<'_>) -> Result<Vec<Claimed>, StoreError> {
    if claim.limit == 0 {
        return Ok(vec![]);
    }
    if claim.per_key.is_none() && claim.rate.is_none() {
        return Ok(db
            .write(&claim_sql(db.dialect(), claim, claim.limit))
            .await?
            .into_iter()
            .map(claimed_of)
            .collect());
    }
    // Limits need a consistent view of the running jobs and of the queue's rate state:
    // claims of such a queue are serialised (an advisory lock on PostgreSQL).
    let mut tx = db.begin().await?;
    let dialect = tx.dialect();
    let mut limit = claim.limit;
    let mut rate_state = None;
    if let Some(rate) = claim.rate {
        queue_ensure(&mut tx, claim.queue).await?;
        let row = match dialect {
            Dialect::Postgres => {
                tx.query_one(&tx.portable(
                    "SELECT (extract(epoch FROM rate_tat) * 1000000)::bigint, (extract(epoch FROM now()) * 1000000)::bigint FROM keel_queues WHERE name = $1 FOR UPDATE",
                    vec![SqlValue::Text(claim.queue.to_string())],
                ))
                .await?
            }
            Dialect::Sqlite => {
                tx.query_one(&tx.portable(
                    "SELECT rate_tat, $2 FROM keel_queues WHERE name = $1",
                    vec![SqlValue::Text(claim.queue.to_string()), SqlValue::Int(now_micros())],
                ))
                .await?
            }
        };
        let row = row.ok_or(StoreError::NotFound)?;
        let now = row[1].int().unwrap_or(0);
        let tat = row[0].int().unwrap_or(now).max(now);
        let interval = (1_000_000.0 / rate.max(0.001)) as i64;
        // GCRA with a burst of one second's worth of jobs.
        let tolerance = 1_000_000i64.max(interval);
        let allowed = ((now + tolerance - tat) / interval.max(1)).max(0);
        limit = limit.min(u32::try_from(allowed).unwrap_or(u32::MAX));
        rate_state = Some((tat, interval));
    } else if dialect == Dialect::Postgres {
        tx.execute(&tx.portable(
            "SELECT pg_advisory_xact_lock(hashtext('keel_jobs:' || $1))",
            vec![SqlValue::Text(claim.queue.to_string())],
        ))
        .await?;
    }
    if limit == 0 {
        return Ok(vec![]);
    }
    let claimed: Vec<Claimed> = tx
        .query(&claim_sql(dialect, claim, limit))
        .await?
        .into_iter()
        .map(claimed_of)
        .collect();
    if let Some((tat, interval)) = rate_state
        && !claimed.is_empty()
    {
        let next = tat + interval * claimed.len() as i64;
        let text = match dialect {
            Dialect::Postgres => "UPDATE keel_queues SET rate_tat = to_timestamp($2::float8 / 1000000) WHERE name = $1",
            Dialect::Sqlite => "UPDATE keel_queues SET rate_tat = $2 WHERE name = $1",
        };
        tx.execute(&tx.portable(text, vec![SqlValue::Text(claim.queue.to_string()), SqlValue::Int(next)]))
            .await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

/// On PostgreSQL a claim commits asynchronously (`synchronous_commit` off for its own
/// transaction: no wait for the WAL flush). A claim lost in a database crash only puts the
/// job back in the queue; its worker's completion then names a stale attempt and is refused,
/// and the job runs again — the same at-least-once outcome as a worker crash. Enqueues,
/// completions and failures stay synchronous.
fn claim_sql(dialect: Dialect, claim: &ClaimParams<'_>, limit: u32) -> Sql {
    let mut params = Params::default();
    let queue = params.bind(SqlValue::Text(claim.queue.to_string()));
    let limit = params.bind(SqlValue::Int(i64::from(limit)));
    let owner = params.bind(SqlValue::Text(claim.owner.to_string()));
    let expires = later(dialect, &mut params, claim.lease);
    let now = now_sql(dialect, &mut params);
    let kinds = match claim.kinds {
        Some(kinds) => {
            let list: Vec<String> = kinds.iter().map(|k| params.bind(SqlValue::Text(k.clone()))).collect();
            format!(" AND kind IN ({})", list.join(", "))
        }
        None => String::new(),
    };
    let waiting = format!("queue = {queue} AND state IN {WAITING} AND run_at <= {now}{kinds}");
    let order = "priority DESC, run_at, id";
    let picked = match claim.per_key {
        None => format!("SELECT id FROM keel_jobs WHERE {waiting} ORDER BY {order} LIMIT {limit}"),
        Some(per_key) => {
            let per_key = params.bind(SqlValue::Int(i64::from(per_key)));
            // Look ahead a bounded window of waiting jobs; within it, a key's jobs are ranked
            // and only as many as its free slots are taken.
            format!(
                "SELECT ranked.id FROM (\
                   SELECT id, priority, run_at, concurrency_key, \
                          row_number() OVER (PARTITION BY concurrency_key ORDER BY {order}) AS rank \
                   FROM (SELECT id, priority, run_at, concurrency_key FROM keel_jobs WHERE {waiting} ORDER BY {order} LIMIT 1000) AS window_\
                 ) AS ranked \
                 LEFT JOIN (SELECT concurrency_key AS key, count(*) AS n FROM keel_jobs \
                            WHERE queue = {queue} AND state = 'running' AND concurrency_key IS NOT NULL GROUP BY concurrency_key) AS busy \
                   ON busy.key = ranked.concurrency_key \
                 WHERE ranked.concurrency_key IS NULL OR coalesce(busy.n, 0) + ranked.rank <= {per_key} \
                 ORDER BY ranked.priority DESC, ranked.run_at, ranked.id LIMIT {limit}"
            )
        }
    };
    let text = match dialect {
        Dialect::Postgres => {
            let lock = if claim.per_key.is_none() {
                " FOR UPDATE SKIP LOCKED"
            } else {
                ""
            };
            format!(
                "WITH picked AS ({picked}{lock}) \
                 UPDATE keel_jobs AS j SET state = 'running', attempt = j.attempt + 1, lease_owner = {owner}, \
                        lease_expires_at = {expires}, started_at = now() \
                 FROM picked WHERE j.id = picked.id \
                   AND NOT EXISTS (SELECT 1 FROM keel_queues AS q WHERE q.name = {queue} AND q.paused) \
                   AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL \
                 RETURNING j.id, j.kind, j.org_id, j.created_by, j.payload::text, j.attempt, j.max_attempts, \
                           (extract(epoch FROM now() - j.run_at) * 1000000)::bigint"
            )
        }
        Dialect::Sqlite => format!(
            "UPDATE keel_jobs SET state = 'running', attempt = attempt + 1, lease_owner = {owner}, \
                    lease_expires_at = {expires}, started_at = {now} \
             WHERE id IN ({picked}) \
               AND NOT EXISTS (SELECT 1 FROM keel_queues AS q WHERE q.name = {queue} AND q.paused) \
             RETURNING id, kind, org_id, created_by, payload, attempt, max_attempts, {now} - run_at"
        ),
    };
    params.sql(dialect, &text)
}

fn claimed_of(row: Row) -> Claimed {
    let mut cells = row.into_iter();
    let mut next = || cells.next().unwrap_or(Cell::Null);
    Claimed {
        id: next().int().unwrap_or(0),
        kind: next().into_text().unwrap_or_default(),
        org_id: next().uuid(),
        created_by: next().uuid(),
        payload: next().into_text().unwrap_or_else(|| "null".into()),
        attempt: next().int().unwrap_or(0) as i32,
        max_attempts: next().int().unwrap_or(0) as i32,
        waited: Duration::from_micros(next().int().unwrap_or(0).max(0) as u64),
    }
}

/// Makes sure a queue has its row (pause flag and rate state).
pub async fn queue_ensure(tx: &mut Tx, queue: &str) -> Result<(), StoreError> {
    let sql = tx.portable(
        "INSERT INTO keel_queues (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
        vec![SqlValue::Text(queue.to_string())],
    );
    tx.execute(&sql).await?;
    Ok(())
}

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

pub async fn job_get(db: &Db, id: i64) -> Result<Option<Job>, StoreError> {
    // The primary: a job's state must not lag behind what its worker committed.
    let sql = db.portable(
        &format!("SELECT {JOB_COLUMNS} FROM keel_jobs WHERE id = $1"),
        vec![SqlValue::Int(id)],
    );
    Ok(db.query_primary(&sql).await?.into_iter().next().map(job_of))
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

/// Takes or renews the lease of a named leadership (cron, rescuer, pruner) for `owner`.
/// Returns whether `owner` leads until the lease runs out (database clock).
pub async fn leader_acquire(db: &Db, name: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
    let dialect = db.dialect();
    let mut params = Params::default();
    let name = params.bind(SqlValue::Text(name.to_string()));
    let owner = params.bind(SqlValue::Text(owner.to_string()));
    let expires = later(dialect, &mut params, lease);
    let now = now_sql(dialect, &mut params);
    let text = format!(
        "INSERT INTO keel_leaders (name, owner, expires_at) VALUES ({name}, {owner}, {expires}) \
         ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
         WHERE keel_leaders.owner = excluded.owner OR keel_leaders.expires_at < {now} RETURNING owner"
    );
    Ok(!db.write(&params.sql(dialect, &text)).await?.is_empty())
}

/// Gives up a leadership (on shutdown), so another instance takes over at once.
pub async fn leader_resign(db: &Db, name: &str, owner: &str) -> Result<(), StoreError> {
    let sql = db.portable(
        "DELETE FROM keel_leaders WHERE name = $1 AND owner = $2",
        vec![SqlValue::Text(name.to_string()), SqlValue::Text(owner.to_string())],
    );
    db.write(&sql).await?;
    Ok(())
}

/// The last tick of a cron entry that was enqueued, if any.
pub async fn cron_last_tick(db: &Db, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let sql = db.portable(
        "SELECT last_tick FROM keel_cron WHERE name = $1",
        vec![SqlValue::Text(name.to_string())],
    );
    Ok(db.query_primary(&sql).await?.first().and_then(|row| time_of(&row[0])))
}

/// Records `tick` as the cron entry's last run inside `tx`, only if it is newer than the one
/// recorded: returns whether this caller won the tick (so a tick is enqueued once, however
/// many instances try).
pub async fn cron_claim_tick(tx: &mut Tx, name: &str, tick: DateTime<Utc>) -> Result<bool, StoreError> {
    let dialect = tx.dialect();
    let tick = match dialect {
        Dialect::Postgres => SqlValue::Datetime(tick),
        Dialect::Sqlite => SqlValue::Int(tick.timestamp_micros()),
    };
    let sql = tx.portable(
        "INSERT INTO keel_cron (name, last_tick) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick \
         WHERE keel_cron.last_tick < excluded.last_tick RETURNING name",
        vec![SqlValue::Text(name.to_string()), tick],
    );
    Ok(!tx.query(&sql).await?.is_empty())
}

/// The database's clock (PostgreSQL's `now()`; the process clock for SQLite).
pub async fn clock_now(db: &Db) -> Result<DateTime<Utc>, StoreError> {
    match db.dialect() {
        Dialect::Sqlite => Ok(Utc::now()),
        Dialect::Postgres => {
            let rows = db
                .query_primary(&db.portable("SELECT clock_timestamp()", vec![]))
                .await?;
            rows.first()
                .and_then(|row| time_of(&row[0]))
                .ok_or_else(|| StoreError::Other("the database returned no time".into()))
        }
    }
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

/// A PostgreSQL connection listening for enqueues (`None` on SQLite).
pub async fn job_listener(db: &Db) -> Result<Option<JobListener>, StoreError> {
    match db {
        Db::Sqlite(_) => Ok(None),
        Db::Postgres(pg) => {
            let channel = db
                .query_primary(&db.portable(&format!("SELECT {NOTIFY_CHANNEL_SQL}"), vec![]))
                .await?
                .first()
                .and_then(|row| row[0].text().map(str::to_string))
                .ok_or_else(|| StoreError::Other("no schema name".into()))?;
            let mut listener = pg.listener().await?;
            listener.listen(&channel).await?;
            Ok(Some(JobListener(listener)))
        }
    }
}

/// Wakes on enqueues; reconnects by itself after a lost connection (notifications sent
/// meanwhile are lost, so workers also poll).
pub struct JobListener(sqlx::postgres::PgListener);

impl JobListener {
    /// The next notified queue name (`*` for all queues).
    pub async fn recv(&mut self) -> Result<String, StoreError> {
        Ok(self.0.recv().await?.payload().to_string())
    }
}

/// A key external workers authenticate with, limited to some queues (J9).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerKey {
    pub id: Uuid,
    pub name: String,
    pub queues: Vec<String>,
    pub created_at: Option<DateTime<Utc>>,
}

pub async fn worker_key_create(
    db: &Db,
    token_hash: &str,
    name: &str,
    queues: &[String],
) -> Result<WorkerKey, StoreError> {
    let dialect = db.dialect();
    let id = Uuid::now_v7();
    let mut params = Params::default();
    let id_param = params.bind(SqlValue::Uuid(id));
    let hash = params.bind(SqlValue::Text(token_hash.to_string()));
    let name_param = params.bind(SqlValue::Text(name.to_string()));
    let list = serde_json::to_value(queues).unwrap_or(Value::Null);
    let queues_param = params.bind(match dialect {
        Dialect::Postgres => SqlValue::Json(list),
        Dialect::Sqlite => SqlValue::Text(list.to_string()),
    });
    let now = now_sql(dialect, &mut params);
    let text = format!(
        "INSERT INTO keel_worker_keys (id, token_hash, name, queues, created_at) VALUES ({id_param}, {hash}, {name_param}, {queues_param}, {now})"
    );
    db.write(&params.sql(dialect, &text)).await?;
    Ok(WorkerKey {
        id,
        name: name.to_string(),
        queues: queues.to_vec(),
        created_at: Some(Utc::now()),
    })
}

fn worker_key_of(row: Row) -> WorkerKey {
    let mut cells = row.into_iter();
    let mut next = || cells.next().unwrap_or(Cell::Null);
    let id = next().uuid().unwrap_or_default();
    let name = next().into_text().unwrap_or_default();
    let queues = next()
        .into_text()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    WorkerKey {
        id,
        name,
        queues,
        created_at: time_of(&next()),
    }
}

/// The unrevoked worker key with this token hash.
pub async fn worker_key_find(db: &Db, token_hash: &str) -> Result<Option<WorkerKey>, StoreError> {
    let sql = db.portable(
        "SELECT id, name, queues, created_at FROM keel_worker_keys WHERE token_hash = $1 AND revoked_at IS NULL",
        vec![SqlValue::Text(token_hash.to_string())],
    );
    Ok(db.query_primary(&sql).await?.into_iter().next().map(worker_key_of))
}

pub async fn worker_key_list(db: &Db) -> Result<Vec<WorkerKey>, StoreError> {
    let sql = db.portable(
        "SELECT id, name, queues, created_at FROM keel_worker_keys WHERE revoked_at IS NULL ORDER BY created_at",
        vec![],
    );
    Ok(db.query_primary(&sql).await?.into_iter().map(worker_key_of).collect())
}

pub async fn worker_key_revoke(db: &Db, id: Uuid) -> Result<bool, StoreError> {
    let dialect = db.dialect();
    let mut params = Params::default();
    let now = now_sql(dialect, &mut params);
    let id = params.bind(SqlValue::Uuid(id));
    let text =
        format!("UPDATE keel_worker_keys SET revoked_at = {now} WHERE id = {id} AND revoked_at IS NULL RETURNING id");
    Ok(!db.write(&params.sql(dialect, &text)).await?.is_empty())
}
