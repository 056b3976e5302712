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
