//! The change log that realtime streams read (system version 10): one row per record change,
//! written in the write's own transaction, so a rolled-back write leaves none and a reader
//! never sees a change before the write is readable.
//!
//! Positions. SQLite runs one write transaction at a time, so `seq` order is commit order. On
//! PostgreSQL a sequence value is taken before commit: a reader that took `seq` 10 could pass
//! a `seq` 9 that commits after it. Each row therefore carries its transaction id, and a
//! reader only takes rows of transactions older than the oldest one still running (the
//! snapshot's `xmin`), in `(xid, seq)` order. Every transaction below that fence has ended,
//! so no row can later appear behind a reader's position: resuming from a position loses
//! nothing. The price: the fence is the cluster's oldest running write transaction, in any
//! database, so one long write transaction holds back delivery until it ends, and a reader
//! woken by a change it cannot read yet must read again.
//!
//! Retention: [`prune`] forgets rows older than a time and records the newest position it
//! dropped (`keel_changes_horizon`); a reader behind that position must reload ([`resumable`]).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use keel_query::value::truncate_micros;
use keel_query::{Dialect, SqlValue};
use uuid::Uuid;

use crate::db::{Db, Tx};
use crate::error::StoreError;

pub fn tables(dialect: Dialect) -> Vec<String> {
    let (uuid, ts, _, bigint) = crate::migrate::column_types(dialect);
    let (seq, xid) = match dialect {
        Dialect::Sqlite => (
            "seq INTEGER PRIMARY KEY AUTOINCREMENT",
            "xid INTEGER NOT NULL DEFAULT 0",
        ),
        Dialect::Postgres => (
            "seq bigserial PRIMARY KEY",
            "xid xid8 NOT NULL DEFAULT pg_current_xact_id()",
        ),
    };
    vec![
        format!(
            "CREATE TABLE keel_changes ({seq}, {xid}, created_at {ts} NOT NULL, org {uuid}, collection TEXT NOT NULL, record TEXT NOT NULL, action TEXT NOT NULL, count {bigint} NOT NULL)"
        ),
        "CREATE INDEX keel_changes_order ON keel_changes (xid, seq)".to_string(),
        "CREATE INDEX keel_changes_time ON keel_changes (created_at)".to_string(),
        format!(
            "CREATE TABLE keel_changes_horizon (id INTEGER PRIMARY KEY CHECK (id = 1), xid {bigint} NOT NULL, seq {bigint} NOT NULL)"
        ),
    ]
}

/// A place in the change log: what a stream sends as an event id and resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// The writing transaction's id on PostgreSQL; 0 on SQLite.
    pub xid: i64,
    pub seq: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.xid, self.seq)
    }
}

/// A text that is not `XID-SEQ` with two non-negative integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPosition;

impl FromStr for Position {
    type Err = BadPosition;

    fn from_str(text: &str) -> Result<Position, BadPosition> {
        let (xid, seq) = text.split_once('-').ok_or(BadPosition)?;
        let number = |part: &str| {
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadPosition);
            }
            part.parse::<i64>().map_err(|_| BadPosition)
        };
        Ok(Position {
            xid: number(xid)?,
            seq: number(seq)?,
        })
    }
}

/// One committed change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub position: Position,
    pub created_at: DateTime<Utc>,
    /// The org of an org-scoped collection; none for a global one.
    pub org: Option<Uuid>,
    pub collection: String,
    /// The record's id; for a bulk change, the batch or the filter it applied to.
    pub record: String,
    /// `create`, `update`, `delete`, or a bulk action (`import`, `bulk_delete`).
    pub action: String,
    /// How many records the change touched (1 but for bulk changes).
    pub count: i64,
}

/// Writes a change in the write's transaction.
pub async fn insert(
    tx: &mut Tx,
    org: Option<Uuid>,
    collection: &str,
    record: &str,
    action: &str,
    count: i64,
) -> Result<(), StoreError> {
    let mut params = vec![
        SqlValue::Datetime(truncate_micros(Utc::now())),
        SqlValue::Text(collection.to_string()),
        SqlValue::Text(record.to_string()),
        SqlValue::Text(action.to_string()),
        SqlValue::Int(count),
    ];
    // NULL as a literal: a typed NULL parameter would not match a uuid column on PostgreSQL.
    let org = match org {
        Some(org) => {
            params.push(SqlValue::Uuid(org));
            format!("${}", params.len())
        }
        None => "NULL".to_string(),
    };
    let sql = tx.portable(
        &format!(
            "INSERT INTO keel_changes (created_at, collection, record, action, count, org) VALUES ($1, $2, $3, $4, $5, {org})"
        ),
        params,
    );
    tx.execute(&sql).await?;
    Ok(())
}

const COLUMNS: &str = "seq, created_at, org, collection, record, action, count";

/// Up to `limit` changes after `after`, in log order, of transactions that have all ended.
pub async fn read_after(db: &Db, after: Position, limit: i64) -> Result<Vec<Change>, StoreError> {
    Ok(read_batch(db, after, limit).await?.changes)
}

/// What one read of the log gives.
#[derive(Debug, Default)]
pub struct Batch {
    /// Changes after the position, in log order, of transactions that have all ended.
    pub changes: Vec<Change>,
    /// Committed changes exist past the fence (PostgreSQL: an older transaction still runs);
    /// a reader should read again soon rather than wait for the next wake-up.
    pub held_back: bool,
}

/// [`read_after`], saying whether committed changes wait behind the fence.
pub async fn read_batch(db: &Db, after: Position, limit: i64) -> Result<Batch, StoreError> {
    let sql = match db.dialect() {
        Dialect::Sqlite => db.portable(
            &format!("SELECT 0, {COLUMNS}, 1 FROM keel_changes WHERE seq > $1 ORDER BY seq LIMIT $2"),
            vec![SqlValue::Int(after.seq), SqlValue::Int(limit)],
        ),
        // Rows in (xid, seq) order: those below the fence come first, so the readable ones
        // are a prefix, and any row after it is a committed change that waits.
        Dialect::Postgres => db.portable(
            &format!(
                "SELECT xid::text, {COLUMNS}, xid < pg_snapshot_xmin(pg_current_snapshot()) FROM keel_changes \
                 WHERE (xid, seq) > (($1::text)::xid8, $2) ORDER BY xid, seq LIMIT $3"
            ),
            vec![
                SqlValue::Text(after.xid.to_string()),
                SqlValue::Int(after.seq),
                SqlValue::Int(limit),
            ],
        ),
    };
    let rows = db.query_primary(&sql).await?;
    let mut batch = Batch::default();
    for mut row in rows {
        let ready = row
            .pop()
            .and_then(|cell| cell.bool().or_else(|| cell.int().map(|i| i != 0)));
        if ready != Some(true) {
            batch.held_back = true;
            break;
        }
        let rest = row.split_off(2);
        let mut cells = rest.into_iter();
        let change = (|| {
            Some(Change {
                position: position_of(row)?,
                created_at: cells.next()?.datetime()?,
                org: cells.next()?.uuid(),
                collection: cells.next()?.into_text()?,
                record: cells.next()?.into_text()?,
                action: cells.next()?.into_text()?,
                count: cells.next()?.int()?,
            })
        })();
        batch.changes.extend(change);
    }
    Ok(batch)
}

/// Where a new reader starts: after every change of the transactions that have ended, so it
/// gets what commits from now on (and perhaps a few changes that committed just before).
pub async fn tail(db: &Db) -> Result<Position, StoreError> {
    let sql = match db.dialect() {
        Dialect::Sqlite => db.portable("SELECT 0, coalesce(max(seq), 0) FROM keel_changes", vec![]),
        Dialect::Postgres => db.portable(
            "SELECT xid::text, seq FROM keel_changes WHERE xid < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY xid DESC, seq DESC LIMIT 1",
            vec![],
        ),
    };
    let row = db.query_primary(&sql).await?.into_iter().next();
    Ok(row.and_then(position_of).unwrap_or_default().max(horizon(db).await?))
}

/// A row's first two cells as a position: the xid (an integer, or text from PostgreSQL's
/// `xid8`) and the seq.
fn position_of(row: crate::cell::Row) -> Option<Position> {
    let mut cells = row.into_iter();
    let xid = cells.next()?;
    let xid = xid.int().or_else(|| xid.into_text()?.parse().ok())?;
    Some(Position {
        xid,
        seq: cells.next()?.int()?,
    })
}

/// The newest position pruning has dropped (0-0 if none).
pub async fn horizon(db: &Db) -> Result<Position, StoreError> {
    let sql = db.portable("SELECT xid, seq FROM keel_changes_horizon WHERE id = 1", vec![]);
    let row = db.query_primary(&sql).await?.into_iter().next();
    Ok(row.and_then(position_of).unwrap_or_default())
}

/// Whether a reader at `after` can resume without loss (nothing it has not seen was pruned).
pub async fn resumable(db: &Db, after: Position) -> Result<bool, StoreError> {
    Ok(after >= horizon(db).await?)
}

/// The NOTIFY channel that wakes realtime readers of this schema on PostgreSQL.
const NOTIFY_CHANNEL_SQL: &str = "'keel_changes:' || current_schema()";

/// Tells every instance's readers that changes committed (PostgreSQL NOTIFY; nothing on
/// SQLite, whose readers share the writer's process). Sent after the commit, coalesced by
/// the caller, rather than in each write's transaction: a NOTIFY in a transaction takes a
/// lock that serialises every commit of the cluster.
pub async fn notify(db: &Db) -> Result<(), StoreError> {
    if db.dialect() == Dialect::Postgres {
        db.query_primary(&db.portable(&format!("SELECT pg_notify({NOTIFY_CHANNEL_SQL}, '')"), vec![]))
            .await?;
    }
    Ok(())
}

/// A PostgreSQL connection listening for [`notify`] (`None` on SQLite). It reconnects by
/// itself after a lost connection; notifications sent meanwhile are lost, so readers also
/// read on a timer.
pub async fn listener(db: &Db) -> Result<Option<ChangeListener>, StoreError> {
    Ok(db.listen(NOTIFY_CHANNEL_SQL).await?.map(ChangeListener))
}

pub struct ChangeListener(sqlx::postgres::PgListener);

impl ChangeListener {
    /// Waits for the next notification.
    pub async fn recv(&mut self) -> Result<(), StoreError> {
        self.0.recv().await?;
        Ok(())
    }
}

/// How many changes one pruning transaction forgets.
const PRUNE_CHUNK: i64 = 5_000;

/// Forgets the changes made before `before`, and moves the horizon past them, in
/// transactions of [`PRUNE_CHUNK`] rows (a long backlog never holds one long transaction).
pub async fn prune(db: &Db, before: DateTime<Utc>) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let dropped = prune_chunk(db, before).await?;
        total += dropped;
        if dropped < PRUNE_CHUNK as u64 {
            return Ok(total);
        }
    }
}

async fn prune_chunk(db: &Db, before: DateTime<Utc>) -> Result<u64, StoreError> {
    let mut tx = db.begin().await?;
    let xid = match db.dialect() {
        Dialect::Sqlite => "0",
        Dialect::Postgres => "xid::text::bigint",
    };
    let dropped = tx
        .query(&tx.portable(
            &format!(
                "DELETE FROM keel_changes WHERE seq IN \
                 (SELECT seq FROM keel_changes WHERE created_at < $1 ORDER BY created_at LIMIT $2) \
                 RETURNING {xid}, seq"
            ),
            vec![SqlValue::Datetime(before), SqlValue::Int(PRUNE_CHUNK)],
        ))
        .await?;
    let newest = dropped.iter().cloned().filter_map(position_of).max();
    if let Some(newest) = newest {
        let sql = tx.portable(
            "INSERT INTO keel_changes_horizon (id, xid, seq) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET xid = excluded.xid, seq = excluded.seq \
             WHERE (keel_changes_horizon.xid, keel_changes_horizon.seq) < (excluded.xid, excluded.seq)",
            vec![SqlValue::Int(newest.xid), SqlValue::Int(newest.seq)],
        );
        tx.execute(&sql).await?;
    }
    tx.commit().await?;
    Ok(dropped.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_refuse_anything_else() {
        let position = Position { xid: 7541, seq: 12 };
        assert_eq!(position.to_string(), "7541-12");
        assert_eq!("7541-12".parse::<Position>(), Ok(position));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1-2-3",
            "a-1",
            "1- 2",
            "+1-2",
            "99999999999999999999-1",
            "1_2",
        ] {
            assert_eq!(bad.parse::<Position>(), Err(BadPosition), "{bad:?}");
        }
        assert!(Position { xid: 1, seq: 9 } < Position { xid: 2, seq: 1 });
    }
}
