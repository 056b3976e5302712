//! Coordination between instances: leaderships, cron ticks, the database clock, and the
//! listener that wakes workers on enqueues.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_query::{Dialect, SqlValue};

use super::{NOTIFY_CHANNEL_SQL, Params, later, now_sql, time_of};
use crate::db::{Db, Tx};
use crate::error::StoreError;

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

/// Every leadership with its owner and when its lease ends (database clock), for the console.
pub async fn leaders(db: &Db) -> Result<Vec<(String, String, Option<DateTime<Utc>>)>, StoreError> {
    let sql = db.portable("SELECT name, owner, expires_at FROM keel_leaders ORDER BY name", vec![]);
    let rows = db.query_primary(&sql).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let expires = time_of(&row[2]);
            let mut cells = row.into_iter();
            let name = cells.next().and_then(|c| c.into_text()).unwrap_or_default();
            let owner = cells.next().and_then(|c| c.into_text()).unwrap_or_default();
            (name, owner, expires)
        })
        .collect())
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

/// A PostgreSQL connection listening for enqueues (`None` on SQLite).
pub async fn job_listener(db: &Db) -> Result<Option<JobListener>, StoreError> {
    Ok(db.listen(NOTIFY_CHANNEL_SQL).await?.map(JobListener))
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
