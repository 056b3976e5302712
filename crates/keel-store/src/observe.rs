//! Query observation: how many statements a request ran and how long they took (for the
//! per-route metric), and the slow-query log (D11). The server opens a scope per request;
//! statements outside a scope (migrations, the demo loader) are only checked for slowness.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

tokio::task_local! {
    static STATS: Cell<QueryStats>;
}

/// Statements run within a scope, and their total time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueryStats {
    pub statements: u32,
    pub total: Duration,
    /// Time spent waiting for a pooled connection (or the SQLite writer).
    pub acquire_wait: Duration,
    /// The scope opened a write transaction.
    pub wrote: bool,
    /// Reads served by a replica.
    pub replica_statements: u32,
    /// Reads must go to the primary (the client wrote recently: read-your-writes).
    pub primary_only: bool,
}

/// Runs `work` with a fresh accumulator and returns what it ran.
pub async fn measured<F: Future>(work: F) -> (F::Output, QueryStats) {
    STATS
        .scope(Cell::new(QueryStats::default()), async move {
            let output = work.await;
            let stats = STATS.with(Cell::get);
            (output, stats)
        })
        .await
}

/// Sends this scope's reads to the primary (read-your-writes).
pub fn require_primary() {
    let _ = STATS.try_with(|stats| {
        let mut current = stats.get();
        current.primary_only = true;
        stats.set(current);
    });
}

/// Whether a read may go to a replica: only inside a request scope, and not once the
/// request has written or the client wrote recently. Outside a scope reads use the primary.
pub(crate) fn may_use_replica() -> bool {
    STATS
        .try_with(|stats| {
            let current = stats.get();
            !current.primary_only && !current.wrote
        })
        .unwrap_or(false)
}

pub(crate) fn wrote() {
    let _ = STATS.try_with(|stats| {
        let mut current = stats.get();
        current.wrote = true;
        stats.set(current);
    });
}

pub(crate) fn replica_read() {
    let _ = STATS.try_with(|stats| {
        let mut current = stats.get();
        current.replica_statements += 1;
        stats.set(current);
    });
}

/// Records the wait for a connection.
pub(crate) fn acquired(wait: Duration) {
    let _ = STATS.try_with(|stats| {
        let mut current = stats.get();
        current.acquire_wait += wait;
        stats.set(current);
    });
}

/// Records one statement: adds it to the scope's totals and logs it when it was slow. The
/// SQL text has placeholders for every request value, so it is already normalised; the
/// request's span adds the route and request id to the log line.
pub(crate) fn record(sql: &str, elapsed: Duration, slow_after: Duration) {
    let _ = STATS.try_with(|stats| {
        let mut current = stats.get();
        current.statements += 1;
        current.total += elapsed;
        stats.set(current);
    });
    if elapsed >= slow_after {
        let mut text: String = sql.chars().take(2_000).collect();
        if text.len() < sql.len() {
            text.push('…');
        }
        tracing::warn!(duration_ms = elapsed.as_secs_f64() * 1000.0, sql = %text, "slow query");
    }
}
