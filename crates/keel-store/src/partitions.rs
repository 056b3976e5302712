//! Time series (D9): on PostgreSQL a time-series collection is a table partitioned by month
//! on its time field, with partitions created ahead and whole old partitions dropped by the
//! retention setting; on SQLite the same retention deletes in bounded batches. The server
//! runs `maintain` at start and every hour.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use keel_query::value::{format_datetime, ident};
use keel_query::{Dialect, Schema, SqlValue};
use keel_spec::Collection;

use crate::db::Db;
use crate::error::StoreError;

/// Months created ahead of now.
const MONTHS_AHEAD: i32 = 3;
/// Months created behind now when a collection is created (older rows go to the default partition).
const MONTHS_BEHIND: i32 = 12;
/// Rows deleted per statement by retention (bounded work, short locks).
const DELETE_BATCH: i64 = 5_000;

fn month_start(year: i32, month: u32) -> DateTime<Utc> {
    let date = NaiveDate::from_ymd_opt(year, month, 1).expect("a valid month");
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight"))
}

/// The first day of the month `offset` months from `at`'s month.
fn month(at: DateTime<Utc>, offset: i32) -> DateTime<Utc> {
    let index = at.year() * 12 + at.month0() as i32 + offset;
    month_start(index.div_euclid(12), index.rem_euclid(12) as u32 + 1)
}

fn partition_name(table: &str, start: DateTime<Utc>) -> String {
    format!("{table}_p{:04}{:02}", start.year(), start.month())
}

fn create_partition(table: &str, start: DateTime<Utc>) -> String {
    let end = month(start, 1);
    format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ('{}') TO ('{}')",
        ident(&partition_name(table, start)),
        ident(table),
        format_datetime(&start),
        format_datetime(&end)
    )
}

/// The statements that create a new time series' default and monthly partitions.
pub fn initial_partitions(collection: &Collection, now: DateTime<Utc>) -> Vec<String> {
    let table = collection.table();
    let mut statements = vec![format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} DEFAULT",
        ident(&format!("{table}_default")),
        ident(&table)
    )];
    for offset in -MONTHS_BEHIND..=MONTHS_AHEAD {
        statements.push(create_partition(&table, month(now, offset)));
    }
    statements
}

/// What one maintenance run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintenance {
    pub partitions_created: u64,
    pub partitions_dropped: u64,
    pub rows_deleted: u64,
}

/// Creates the months ahead and applies retention for every time-series collection.
pub async fn maintain(db: &Db, schema: &Schema, now: DateTime<Utc>) -> Result<Maintenance, StoreError> {
    let mut report = Maintenance::default();
    for collection in schema.app.collections.iter().filter(|c| c.timeseries.is_some()) {
        let timeseries = collection.timeseries.as_ref().expect("filtered");
        let table = collection.table();
        if db.dialect() == Dialect::Postgres {
            for offset in 0..=MONTHS_AHEAD {
                let start = month(now, offset);
                if !partition_exists(db, &partition_name(&table, start)).await? {
                    let mut tx = db.begin().await?;
                    tx.execute_script(&create_partition(&table, start)).await?;
                    tx.commit().await?;
                    report.partitions_created += 1;
                }
            }
        }
        let Some(days) = timeseries.retention_days else {
            continue;
        };
        let cutoff = now - Duration::days(i64::from(days));
        if db.dialect() == Dialect::Postgres {
            for (name, start) in partitions(db, &table).await? {
                if month(start, 1) <= cutoff {
                    let mut tx = db.begin().await?;
                    tx.execute_script(&format!("DROP TABLE IF EXISTS {}", ident(&name)))
                        .await?;
                    tx.commit().await?;
                    report.partitions_dropped += 1;
                }
            }
        }
        // What is left before the cutoff (the boundary month, the default partition, or the
        // whole table on SQLite) goes in bounded batches.
        let column = ident(&timeseries.field);
        let quoted = ident(&table);
        // A row's address: ctid alone repeats across partitions, so PostgreSQL pairs it with the partition.
        let key = match db.dialect() {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "(tableoid, ctid)",
        };
        loop {
            let mut tx = db.begin().await?;
            let deleted = tx
                .execute(&tx.portable(
                    &format!(
                        "DELETE FROM {quoted} WHERE {key} IN (SELECT {} FROM {quoted} WHERE {column} < $1 LIMIT {DELETE_BATCH})",
                        key.trim_matches(|c| c == '(' || c == ')')
                    ),
                    vec![SqlValue::Datetime(cutoff)],
                ))
                .await?;
            tx.commit().await?;
            report.rows_deleted += deleted;
            if deleted < DELETE_BATCH as u64 {
                break;
            }
        }
    }
    Ok(report)
}

async fn partition_exists(db: &Db, name: &str) -> Result<bool, StoreError> {
    let sql = db.portable(
        "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = $1 AND n.nspname = current_schema()",
        vec![SqlValue::Text(name.to_string())],
    );
    Ok(db.query_one(&sql).await?.and_then(|r| r[0].int()).unwrap_or(0) > 0)
}

/// The monthly partitions of a table, with the month each starts (from Keel's naming).
pub async fn partitions(db: &Db, table: &str) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
    let sql = db.portable(
        "SELECT c.relname FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid JOIN pg_catalog.pg_class p ON p.oid = i.inhparent JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace WHERE p.relname = $1 AND n.nspname = current_schema() ORDER BY c.relname",
        vec![SqlValue::Text(table.to_string())],
    );
    let prefix = format!("{table}_p");
    Ok(db
        .query(&sql)
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next().and_then(|c| c.into_text()))
        .filter_map(|name| {
            let digits = name.strip_prefix(&prefix)?;
            let (year, month) = (digits.get(..4)?.parse().ok()?, digits.get(4..6)?.parse().ok()?);
            (1..=12)
                .contains(&month)
                .then(|| (name.clone(), month_start(year, month)))
        })
        .collect())
}
