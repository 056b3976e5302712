//! Sorting and keyset pagination: `sort=` parsing, opaque cursors, and the predicate that
//! starts a page after the last row of the previous one (so page 10,000 costs what page 1 costs).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel_spec::Collection;
use uuid::Uuid;

use crate::QueryError;
use crate::check::{ColumnType, column_type};
use crate::value::{Dialect, Sql, SqlValue, ident, parse_date, parse_datetime};

pub const MAX_SORT_KEYS: usize = 4;
const MAX_CURSOR_LENGTH: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub field: String,
    pub ty: ColumnType,
    pub descending: bool,
    pub nullable: bool,
}

/// Parses `sort=-due_date,title`. The result always ends with `id` as the tie-breaker;
/// the default order is newest first (`-id`: ids are time-ordered UUIDv7).
pub fn parse_sort(collection: &Collection, text: Option<&str>) -> Result<Vec<SortKey>, QueryError> {
    let mut keys: Vec<SortKey> = vec![];
    let text = text.unwrap_or("").trim();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, descending) = match item.strip_prefix('-') {
            Some(rest) => (rest, true),
            None => (item.strip_prefix('+').unwrap_or(item), false),
        };
        let ty = column_type(collection, name).ok_or_else(|| QueryError::unknown_field(name, 0, &collection.name))?;
        if ty == ColumnType::Json {
            return Err(QueryError::new(
                "invalid_sort",
                0,
                format!("json field '{name}' cannot be sorted"),
            ));
        }
        if keys.iter().any(|k| k.field == name) {
            return Err(QueryError::new("invalid_sort", 0, format!("'{name}' is sorted twice")));
        }
        let nullable = collection.field(name).is_some_and(|f| !f.required);
        keys.push(SortKey {
            field: name.to_string(),
            ty,
            descending,
            nullable,
        });
        if name == "id" {
            break;
        }
    }
    if keys.len() > MAX_SORT_KEYS {
        return Err(QueryError::new(
            "invalid_sort",
            0,
            format!("sort by at most {MAX_SORT_KEYS} fields"),
        ));
    }
    if keys.last().is_none_or(|k| k.field != "id") {
        let descending = keys.last().is_none_or(|k| k.descending);
        keys.push(SortKey {
            field: "id".to_string(),
            ty: ColumnType::Id,
            descending,
            nullable: false,
        });
    }
    Ok(keys)
}

fn signature(sort: &[SortKey]) -> String {
    let text: Vec<String> = sort
        .iter()
        .map(|k| format!("{}{}", if k.descending { "-" } else { "" }, k.field))
        .collect();
    let hash = text.join(",").bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    format!("{:08x}", hash as u32)
}

/// Encodes the sort-key JSON of a page's last row as an opaque cursor.
pub fn encode_cursor(sort: &[SortKey], key_json: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{}", signature(sort), key_json))
}

fn invalid_cursor(message: &str) -> QueryError {
    QueryError::new("invalid_cursor", 0, message)
}

/// Decodes a cursor made by [`encode_cursor`] for the same sort.
pub fn decode_cursor(sort: &[SortKey], cursor: &str) -> Result<Vec<SqlValue>, QueryError> {
    if cursor.len() > MAX_CURSOR_LENGTH {
        return Err(invalid_cursor("the cursor is too long"));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| invalid_cursor("the cursor is not one this server made"))?;
    let text = String::from_utf8(bytes).map_err(|_| invalid_cursor("the cursor is not one this server made"))?;
    let (sig, json) = text
        .split_once('.')
        .ok_or_else(|| invalid_cursor("the cursor is not one this server made"))?;
    if sig != signature(sort) {
        return Err(invalid_cursor("the cursor belongs to a different sort order"));
    }
    let values: Vec<serde_json::Value> =
        serde_json::from_str(json).map_err(|_| invalid_cursor("the cursor is damaged"))?;
    if values.len() != sort.len() {
        return Err(invalid_cursor("the cursor is damaged"));
    }
    sort.iter()
        .zip(values)
        .map(|(key, value)| json_to_sql(key.ty, &value).ok_or_else(|| invalid_cursor("the cursor is damaged")))
        .collect()
}

/// Converts a rendered JSON value back to a typed SQL value.
pub fn json_to_sql(ty: ColumnType, value: &serde_json::Value) -> Option<SqlValue> {
    use serde_json::Value;
    Some(match (ty, value) {
        (_, Value::Null) => SqlValue::Null,
        (ColumnType::Text | ColumnType::Select, Value::String(s)) => SqlValue::Text(s.clone()),
        (ColumnType::Integer, Value::Number(n)) => SqlValue::Int(n.as_i64()?),
        (ColumnType::Number, Value::Number(n)) => SqlValue::Float(n.as_f64()?),
        (ColumnType::Bool, Value::Bool(b)) => SqlValue::Bool(*b),
        (ColumnType::Date, Value::String(s)) => SqlValue::Date(parse_date(s)?),
        (ColumnType::Datetime, Value::String(s)) => SqlValue::Datetime(parse_datetime(s)?),
        (ColumnType::Id, Value::String(s)) => SqlValue::Uuid(Uuid::parse_str(s).ok()?),
        _ => return None,
    })
}

/// `ASC`/`DESC` with Keel's NULL order: NULLs sort as the smallest value on both backends.
/// That is SQLite's native order; PostgreSQL is told explicitly for nullable columns, and
/// Keel builds its indexes the same way (`keel_store::migrate`), so an index still serves the
/// ORDER BY. Non-null columns get no NULLS clause, so either direction of a plain index fits.
pub fn order_suffix(dialect: Dialect, descending: bool, nullable: bool) -> &'static str {
    match (dialect, descending, nullable) {
        (Dialect::Postgres, false, true) => " ASC NULLS FIRST",
        (Dialect::Postgres, true, true) => " DESC NULLS LAST",
        (_, false, _) => " ASC",
        (_, true, _) => " DESC",
    }
}

/// The condition "strictly after `values` in `sort` order".
///
/// When every key is non-null and all go the same way this is a row-value comparison,
/// which both databases turn into one index range scan. Otherwise it is the expanded
/// form, with NULLs ordered as the smallest value (see [`order_suffix`]).
pub fn keyset_predicate(dialect: Dialect, table: &str, sort: &[SortKey], values: &[SqlValue]) -> Sql {
    let mut sql = Sql::new(dialect);
    let column = |key: &SortKey| format!("{table}.{}", ident(&key.field));
    let uniform = sort.iter().all(|k| k.descending == sort[0].descending)
        && sort
            .iter()
            .zip(values)
            .all(|(k, v)| !k.nullable && *v != SqlValue::Null);
    if uniform {
        let columns: Vec<String> = sort.iter().map(column).collect();
        sql.push("(").push(&columns.join(", ")).push(")");
        sql.push(if sort[0].descending { " < (" } else { " > (" });
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind(value.clone());
        }
        sql.push(")");
        return sql;
    }
    // (k1 after v1) OR (k1 = v1 AND k2 after v2) OR ...
    for i in 0..sort.len() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(");
        for j in 0..i {
            let key = &sort[j];
            if values[j] == SqlValue::Null {
                sql.push(&column(key)).push(" IS NULL");
            } else {
                sql.push(&column(key)).push(" = ").bind(values[j].clone());
            }
            sql.push(" AND ");
        }
        let key = &sort[i];
        let value = &values[i];
        match (key.descending, value == &SqlValue::Null) {
            // Ascending, NULLs first: after a value come bigger values.
            (false, false) => {
                sql.push(&column(key)).push(" > ").bind(value.clone());
            }
            // Ascending, after NULL: every non-null value.
            (false, true) => {
                sql.push(&column(key)).push(" IS NOT NULL");
            }
            // Descending, NULLs last: after a value come smaller values, then NULLs.
            (true, false) => {
                sql.push("(").push(&column(key)).push(" < ").bind(value.clone());
                sql.push(" OR ").push(&column(key)).push(" IS NULL)");
            }
            // Descending, after NULL: nothing.
            (true, true) => {
                sql.push("1=0");
            }
        }
        sql.push(")");
    }
    sql
}
