//! Renders records as JSON inside the database, the same way on both dialects.
//!
//! Every read returns one JSON text column per row (`json_object` on SQLite,
//! `json_build_object` on PostgreSQL), so handlers never decode columns one by one and
//! expanded relations come back nested in the same query.

use keel_spec::{App, Collection, FieldKind, RelationTarget};

use crate::check::{ColumnType, column_type};
use crate::value::{Dialect, Sql, ident, spec_literal};

/// The SQL expression that yields a column as a JSON-ready value.
pub fn column_json(dialect: Dialect, table: &str, name: &str, ty: ColumnType) -> String {
    let column = format!("{table}.{}", ident(name));
    match (dialect, ty) {
        (Dialect::Sqlite, ColumnType::Bool) => {
            format!("json(CASE WHEN {column} IS NULL THEN 'null' WHEN {column} THEN 'true' ELSE 'false' END)")
        }
        (Dialect::Sqlite, ColumnType::Json) => format!("json({column})"),
        (Dialect::Postgres, ColumnType::Datetime) => datetime_text(&column),
        _ => column,
    }
}

/// PostgreSQL: a timestamptz as the canonical text Keel uses (RFC 3339, UTC, microseconds).
pub fn datetime_text(expression: &str) -> String {
    format!("to_char({expression} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

/// Builds a JSON object from `(key, sql)` pairs. Keys are spec identifiers.
pub fn json_object(dialect: Dialect, pairs: &[(String, String)]) -> String {
    let pairs: Vec<(String, Sql)> = pairs
        .iter()
        .map(|(key, value)| {
            let mut part = Sql::new(dialect);
            part.push(value);
            (key.clone(), part)
        })
        .collect();
    json_object_sql(dialect, &pairs).text
}

/// Like [`json_object`], for values that carry bound parameters.
pub fn json_object_sql(dialect: Dialect, pairs: &[(String, Sql)]) -> Sql {
    let mut out = Sql::new(dialect);
    let wide = dialect == Dialect::Postgres && pairs.len() > 50;
    out.push(match (dialect, wide) {
        (Dialect::Sqlite, _) => "json_object(",
        (Dialect::Postgres, false) => "json_build_object(",
        (Dialect::Postgres, true) => "(SELECT row_to_json(keel_row) FROM (SELECT ",
    });
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(", ");
        }
        if wide {
            out.append(value).push(" AS ").push(&ident(key));
        } else {
            out.push(&spec_literal(key)).push(", ").append(value);
        }
    }
    out.push(if wide { ") keel_row)" } else { ")" });
    out
}

/// Wraps a JSON-producing subquery so the outer object embeds it as JSON, not as a string.
pub fn embed_json(dialect: Dialect, subquery: &str) -> String {
    match dialect {
        Dialect::Sqlite => format!("json(({subquery}))"),
        Dialect::Postgres => format!("({subquery})"),
    }
}

/// The fields a record shows, in order: system fields then declared fields.
pub fn record_columns(collection: &Collection) -> Vec<(String, ColumnType)> {
    let mut columns = vec![("id".to_string(), ColumnType::Id)];
    if !collection.global {
        columns.push(("org".to_string(), ColumnType::Id));
    }
    columns.push(("created_at".to_string(), ColumnType::Datetime));
    if !collection.system {
        columns.push(("updated_at".to_string(), ColumnType::Datetime));
        columns.push(("version".to_string(), ColumnType::Integer));
        columns.push(("batch".to_string(), ColumnType::Id));
    }
    for field in &collection.fields {
        let ty = column_type(collection, &field.name).expect("declared field has a type");
        columns.push((field.name.clone(), ty));
    }
    columns
}

/// The `(key, sql)` pairs of a record, optionally projected to some fields (the id always
/// stays: a projected record still says which record it is).
pub fn record_pairs(
    dialect: Dialect,
    collection: &Collection,
    table: &str,
    fields: Option<&[String]>,
) -> Vec<(String, String)> {
    record_columns(collection)
        .into_iter()
        .filter(|(name, _)| name == "id" || fields.is_none_or(|wanted| wanted.iter().any(|w| w == name)))
        .map(|(name, ty)| {
            let value = column_json(dialect, table, &name, ty);
            (name, value)
        })
        .collect()
}

/// A user as other members see it (in `expand` and member lists).
pub fn user_pairs(dialect: Dialect, table: &str) -> Vec<(String, String)> {
    vec![
        ("id".to_string(), format!("{table}.\"id\"")),
        ("email".to_string(), format!("{table}.\"email\"")),
        ("name".to_string(), format!("{table}.\"name\"")),
    ]
    .into_iter()
    .chain(std::iter::once((
        "created_at".to_string(),
        column_json(dialect, table, "created_at", ColumnType::Datetime),
    )))
    .collect()
}

/// The related collection a relation field expands to, if any.
pub fn expand_target<'a>(app: &'a App, collection: &Collection, field: &str) -> Option<Option<&'a Collection>> {
    match &collection.field(field)?.kind {
        FieldKind::Relation {
            to: RelationTarget::Users,
            ..
        } => Some(None),
        FieldKind::Relation {
            to: RelationTarget::Collection(name),
            ..
        } => app.collection(name).map(Some),
        _ => None,
    }
}
