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

/// The rows of a batch that failed, by index in the batch, with why.
pub type RowFailures = Vec<(usize, StoreError)>;

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
            for row in rows {
                copy_row(&mut data, row);
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

/// One row in `COPY`'s text format: tab-separated, `\N` for NULL, backslash escapes.
fn copy_row(out: &mut Vec<u8>, row: &[SqlValue]) {
    for (i, value) in row.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        copy_value(out, value);
    }
    out.push(b'\n');
}

fn copy_value(out: &mut Vec<u8>, value: &SqlValue) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = match value {
        SqlValue::Null => out.write_all(b"\\N"),
        SqlValue::Int(i) => write!(out, "{i}"),
        SqlValue::Float(f) => write!(out, "{f}"),
        SqlValue::Bool(b) => out.write_all(if *b { b"t" } else { b"f" }),
        SqlValue::Uuid(u) => write!(out, "{u}"),
        SqlValue::Date(d) => write!(out, "{}", d.format("%Y-%m-%d")),
        SqlValue::Datetime(d) => out.write_all(keel_query::value::format_datetime(d).as_bytes()),
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
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "7\t\\N\ta\\tb\\nc\\\\d\\re\tt\t{\"k\":\"x\\\\ny\"}\n"
        );
    }
}
