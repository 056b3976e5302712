//! Claiming: runnable jobs handed to a worker under a lease, within the queue's limits.

use std::time::Duration;

use keel_query::{Dialect, Sql, SqlValue};
use uuid::Uuid;

use super::{Params, WAITING, later, now_micros, now_sql};
use crate::cell::{Cell, Row};
use crate::db::{Db, Tx};
use crate::error::StoreError;

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
