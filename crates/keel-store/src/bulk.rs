//! Bulk writes into one collection table: the rows of an import (B1), written in large
//! batches (`COPY` on PostgreSQL, one prepared insert run per row on SQLite's writer) inside
//! the caller's transaction, so a batch and its activity entry commit together.
//!
//! A batch that a constraint rejects (a duplicate, a relation deleted meanwhile) is written
//! again row by row to find the rows at fault; the others are kept.

use keel_query::value::ident;
use keel_query::{Dialect, SqlValue};

use crate::db::Tx;
use crate::error::StoreError;

pub use crate::error::RowFailures;

/// Inserts `rows` (each in the order of `columns`) into `table`. Returns the rows a
/// constraint rejected; every other row is written.
pub async fn insert_rows(
    tx: &mut Tx,
    table: &str,
    columns: &[String],
    rows: &[Vec<SqlValue>],
) -> Result<RowFailures, StoreError> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let column_list = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
    match tx {
        Tx::Postgres(pg, _) => {
            let copy = format!("COPY {} ({column_list}) FROM STDIN", ident(table));
            let mut data = Vec::with_capacity(rows.len() * 128);
            let mut times = TimeText::default();
            for row in rows {
                copy_row(&mut data, row, &mut times);
            }
            pg.execute_script("SAVEPOINT keel_bulk").await?;
            match pg.copy_in(&copy, &data).await {
                Ok(_) => {
                    pg.execute_script("RELEASE SAVEPOINT keel_bulk").await?;
                    Ok(vec![])
                }
                Err(StoreError::Unique { .. } | StoreError::ForeignKey(_)) => {
                    pg.execute_script("ROLLBACK TO SAVEPOINT keel_bulk").await?;
                    let insert = insert_statement(Dialect::Postgres, table, &column_list, columns.len());
                    let mut failures = vec![];
                    for (index, row) in rows.iter().enumerate() {
                        if let Err(error) = pg.insert_guarded(&insert, row).await {
                            match error {
                                StoreError::Unique { .. } | StoreError::ForeignKey(_) => failures.push((index, error)),
                                other => return Err(other),
                            }
                        }
                    }
                    pg.execute_script("RELEASE SAVEPOINT keel_bulk").await?;
                    Ok(failures)
                }
                Err(other) => Err(other),
            }
        }
        Tx::Sqlite(lite, _) => lite.insert_many(&format!("{} ({column_list})", ident(table)), columns.len(), rows),
    }
}

/// The plain loop: one prepared single-row insert per row (the baseline of `keel bench
/// import` on SQLite).
pub async fn insert_rows_one_by_one(
    tx: &mut Tx,
    table: &str,
    columns: &[String],
    rows: &[Vec<SqlValue>],
) -> Result<RowFailures, StoreError> {
    let column_list = columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
    match tx {
        Tx::Sqlite(lite, _) => {
            let insert = insert_statement(Dialect::Sqlite, table, &column_list, columns.len());
            lite.insert_each(&insert, rows)
        }
        Tx::Postgres(..) => insert_rows(tx, table, columns, rows).await,
    }
}

fn insert_statement(dialect: Dialect, table: &str, column_list: &str, count: usize) -> String {
    let marks: Vec<String> = (1..=count)
        .map(|i| match dialect {
            Dialect::Postgres => format!("${i}"),
            Dialect::Sqlite => format!("?{i}"),
        })
        .collect();
    format!(
        "INSERT INTO {} ({column_list}) VALUES ({})",
        ident(table),
        marks.join(", ")
    )
}

/// The text of the last time written: the rows of an import share their times, so each is
/// formatted once, not once per row.
#[derive(Default)]
struct TimeText(Option<(chrono::DateTime<chrono::Utc>, String)>);

impl TimeText {
    fn of(&mut self, time: &chrono::DateTime<chrono::Utc>) -> &str {
        match &self.0 {
            Some((last, _)) if last == time => {}
            _ => self.0 = Some((*time, keel_query::value::format_datetime(time))),
        }
        self.0.as_ref().map(|(_, text)| text.as_str()).unwrap_or_default()
    }
}

/// One row in `COPY`'s text format: tab-separated, `\N` for NULL, backslash escapes.
fn copy_row(out: &mut Vec<u8>, row: &[SqlValue], times: &mut TimeText) {
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        copy_value(out, value, times);
    }
    out.push(b'\n');
}

fn copy_value(out: &mut Vec<u8>, value: &SqlValue, times: &mut TimeText) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = match value {
        SqlValue::Null => out.write_all(b"\\N"),
        SqlValue::Int(i) => write!(out, "{i}"),
        SqlValue::Float(f) => write!(out, "{f}"),
        SqlValue::Bool(b) => out.write_all(if *b { b"t" } else { b"f" }),
        SqlValue::Uuid(u) => out.write_all(u.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).as_bytes()),
        SqlValue::Date(d) => write!(out, "{}", d.format("%Y-%m-%d")),
        SqlValue::Datetime(d) => out.write_all(times.of(d).as_bytes()),
        SqlValue::Text(s) => {
            escape(out, s);
            Ok(())
        }
        SqlValue::Json(j) => {
            escape(out, &j.to_string());
            Ok(())
        }
        SqlValue::Bytes(b) => {
            // bytea's hex input form; its backslash is escaped for COPY.
            let _ = out.write_all(b"\\\\x");
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
            Ok(())
        }
    };
}

fn escape(out: &mut Vec<u8>, text: &str) {
    for byte in text.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rows_escape_what_copy_reads_specially() {
        let mut out = vec![];
        copy_row(
            &mut out,
            &[
                SqlValue::Int(7),
                SqlValue::Null,
                SqlValue::Text("a\tb\nc\\d\re".into()),
                SqlValue::Bool(true),
                SqlValue::Json(serde_json::json!({"k": "x\ny"})),
            ],
            &mut TimeText::default(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "7\t\\N\ta\\tb\\nc\\\\d\\re\tt\t{\"k\":\"x\\\\ny\"}\n"
        );
    }

    #[test]
    fn copy_rows_write_ids_dates_and_times_as_postgresql_reads_them() {
        let id = uuid::Uuid::parse_str("0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B").unwrap();
        let first = chrono::DateTime::parse_from_rfc3339("2026-12-04T20:00:00.123456Z")
            .unwrap()
            .to_utc();
        let second = first + chrono::Duration::seconds(1);
        let mut out = vec![];
        let mut times = TimeText::default();
        for time in [first, first, second] {
            copy_row(
                &mut out,
                &[
                    SqlValue::Uuid(id),
                    SqlValue::Datetime(time),
                    SqlValue::Date(chrono::NaiveDate::from_ymd_opt(2027, 1, 9).unwrap()),
                ],
                &mut times,
            );
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\t2026-12-04T20:00:00.123456Z\t2027-01-09\n\
             0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\t2026-12-04T20:00:00.123456Z\t2027-01-09\n\
             0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b\t2026-12-04T20:00:01.123456Z\t2027-01-09\n"
        );
    }
}
