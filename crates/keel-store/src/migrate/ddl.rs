//! The DDL of an app's collections: columns, tables, foreign keys, indexes and full-text search.

use chrono::Utc;
use keel_query::check::compile_index_condition;
use keel_query::value::{ident, spec_literal};
use keel_query::{Dialect, Schema};
use keel_spec::{App, Collection, DefaultValue, Field, FieldKind, RelationTarget};

pub(super) fn column_type(dialect: Dialect, kind: &FieldKind) -> &'static str {
    match (dialect, kind) {
        (Dialect::Sqlite, FieldKind::Integer { .. } | FieldKind::Bool) => "INTEGER",
        (Dialect::Sqlite, FieldKind::Number { .. }) => "REAL",
        (Dialect::Sqlite, _) => "TEXT",
        (Dialect::Postgres, FieldKind::Text { .. } | FieldKind::Select { .. }) => "text",
        (Dialect::Postgres, FieldKind::Integer { .. }) => "bigint",
        (Dialect::Postgres, FieldKind::Number { .. }) => "double precision",
        (Dialect::Postgres, FieldKind::Bool) => "boolean",
        (Dialect::Postgres, FieldKind::Date) => "date",
        (Dialect::Postgres, FieldKind::Datetime) => "timestamptz",
        (Dialect::Postgres, FieldKind::Json | FieldKind::File { .. }) => "jsonb",
        (Dialect::Postgres, FieldKind::Relation { .. }) => "uuid",
    }
}

/// The column types of Keel's own tables: (uuid, timestamp, boolean, bigint).
pub(crate) fn types(dialect: Dialect) -> (&'static str, &'static str, &'static str, &'static str) {
    match dialect {
        Dialect::Sqlite => ("TEXT", "TEXT", "INTEGER", "INTEGER"),
        Dialect::Postgres => ("uuid", "timestamptz", "boolean", "bigint"),
    }
}

/// The `batch` column (system version 3) for a collection created before it existed: the
/// import that wrote a record, with its index.
pub(super) fn add_batch_column(dialect: Dialect, collection: &Collection) -> Vec<String> {
    let (uuid, ..) = types(dialect);
    vec![
        format!("ALTER TABLE {} ADD COLUMN \"batch\" {uuid}", ident(&collection.table())),
        batch_index(collection).1,
    ]
}

/// The partial index on `batch` (listing and deleting one import).
fn batch_index(collection: &Collection) -> (String, String) {
    let table = collection.table();
    let name = format!("{table}_batch");
    let org_prefix = if collection.global { "" } else { "\"org\", " };
    let statement = format!(
        "CREATE INDEX {} ON {} ({org_prefix}\"batch\") WHERE \"batch\" IS NOT NULL",
        ident(&name),
        ident(&table)
    );
    (name, statement)
}

fn references(app: &App, field: &Field) -> Option<(String, &'static str)> {
    match &field.kind {
        FieldKind::Relation { to, on_delete } => {
            let table = match to {
                RelationTarget::Users => "keel_users".to_string(),
                RelationTarget::Collection(name) => {
                    app.collection(name).map(|c| c.table()).unwrap_or_else(|| name.clone())
                }
            };
            Some((table, on_delete.sql()))
        }
        _ => None,
    }
}

pub(super) fn default_literal(dialect: Dialect, field: &Field) -> Option<String> {
    Some(match field.default.as_ref()? {
        DefaultValue::Text(s) => spec_literal(s),
        DefaultValue::Integer(i) => i.to_string(),
        DefaultValue::Number(f) => format!("{f:?}"),
        DefaultValue::Bool(b) => match dialect {
            Dialect::Sqlite => if *b { "1" } else { "0" }.to_string(),
            Dialect::Postgres => b.to_string(),
        },
        DefaultValue::Now => {
            let now = Utc::now();
            match field.kind {
                FieldKind::Date => spec_literal(&now.format("%Y-%m-%d").to_string()),
                _ => spec_literal(&keel_query::value::format_datetime(&now)),
            }
        }
    })
}

/// The column definition of a field. `inline_fk`: SQLite declares foreign keys inline;
/// PostgreSQL adds them as named constraints after every table exists.
pub(super) fn column_definition(dialect: Dialect, app: &App, field: &Field, with_default: bool) -> String {
    let mut definition = format!("{} {}", ident(&field.name), column_type(dialect, &field.kind));
    if field.required {
        definition.push_str(" NOT NULL");
    }
    if with_default && let Some(literal) = default_literal(dialect, field) {
        definition.push_str(" DEFAULT ");
        definition.push_str(&literal);
    }
    if dialect == Dialect::Sqlite
        && let Some((table, on_delete)) = references(app, field)
    {
        definition.push_str(&format!(" REFERENCES {} (id) ON DELETE {on_delete}", ident(&table)));
    }
    definition
}

pub(super) fn create_table(dialect: Dialect, app: &App, collection: &Collection, table_name: &str) -> String {
    let (uuid, ts, _, bigint) = types(dialect);
    // A PostgreSQL time series is partitioned by its time field, which must then be part of
    // the primary key.
    let partitioned = dialect == Dialect::Postgres && collection.timeseries.is_some();
    let mut columns = vec![if partitioned {
        format!("\"id\" {uuid} NOT NULL")
    } else {
        format!("\"id\" {uuid} PRIMARY KEY")
    }];
    if !collection.global {
        columns.push(format!(
            "\"org\" {uuid} NOT NULL REFERENCES keel_orgs (id) ON DELETE CASCADE"
        ));
    }
    columns.push(format!("\"created_at\" {ts} NOT NULL"));
    if !collection.system {
        columns.push(format!("\"updated_at\" {ts} NOT NULL"));
        columns.push(format!("\"version\" {bigint} NOT NULL DEFAULT 1"));
        columns.push(format!("\"batch\" {uuid}"));
    }
    for field in &collection.fields {
        columns.push(column_definition(dialect, app, field, false));
    }
    match (&collection.timeseries, partitioned) {
        (Some(timeseries), true) => {
            columns.push(format!("PRIMARY KEY (\"id\", {})", ident(&timeseries.field)));
            format!(
                "CREATE TABLE {} (\n  {}\n) PARTITION BY RANGE ({})",
                ident(table_name),
                columns.join(",\n  "),
                ident(&timeseries.field)
            )
        }
        _ => format!("CREATE TABLE {} (\n  {}\n)", ident(table_name), columns.join(",\n  ")),
    }
}

pub(super) fn fk_name(collection: &Collection, field: &str) -> String {
    format!("{}_{field}_fkey", collection.table())
}

pub(super) fn add_foreign_key(app: &App, collection: &Collection, field: &Field) -> Option<String> {
    let (table, on_delete) = references(app, field)?;
    Some(format!(
        "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} (id) ON DELETE {on_delete}",
        ident(&collection.table()),
        ident(&fk_name(collection, &field.name)),
        ident(&field.name),
        ident(&table)
    ))
}

/// The direction of an index column in Keel's NULL order (NULLs smallest), matching
/// `keel_query::cursor::order_suffix` for the same column.
fn index_order(dialect: Dialect, descending: bool, nullable: bool) -> &'static str {
    match (dialect, descending, nullable) {
        (Dialect::Postgres, false, true) => " NULLS FIRST",
        (Dialect::Postgres, true, true) => " DESC NULLS LAST",
        (_, false, _) => "",
        (_, true, _) => " DESC",
    }
}

/// Whether a column may hold NULL (system columns and required fields never do).
fn nullable(collection: &Collection, column: &str) -> bool {
    collection.field(column).is_some_and(|f| !f.required)
}

/// Every index of a collection, by name, with its CREATE statement.
pub(super) fn indexes(dialect: Dialect, schema: &Schema, collection: &Collection) -> Vec<(String, String)> {
    let table = collection.table();
    let quoted = ident(&table);
    let mut out = vec![];
    let org_prefix = if collection.global { "" } else { "\"org\", " };
    if !collection.system {
        out.push(batch_index(collection));
    }
    if !collection.global {
        out.push((
            format!("{table}_org_id"),
            format!(
                "CREATE INDEX {} ON {quoted} (\"org\", \"id\")",
                ident(&format!("{table}_org_id"))
            ),
        ));
    }
    for field in &collection.fields {
        if field.unique {
            let name = format!("{table}_uq_{}", field.name);
            out.push((
                name.clone(),
                format!(
                    "CREATE UNIQUE INDEX {} ON {quoted} ({org_prefix}{})",
                    ident(&name),
                    ident(&field.name)
                ),
            ));
        }
        // Foreign keys are indexed so cascades and expands do not scan.
        if matches!(field.kind, FieldKind::Relation { .. })
            && !collection
                .indexes
                .iter()
                .any(|i| i.columns.first().is_some_and(|c| c.field == field.name))
            && !field.unique
        {
            let name = format!("{table}_fk_{}", field.name);
            out.push((
                name.clone(),
                format!(
                    "CREATE INDEX {} ON {quoted} ({org_prefix}{}{}, \"id\")",
                    ident(&name),
                    ident(&field.name),
                    index_order(dialect, false, !field.required)
                ),
            ));
        }
    }
    for index in &collection.indexes {
        let mut columns: Vec<String> = index
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{}{}",
                    ident(&c.field),
                    index_order(dialect, c.descending, nullable(collection, &c.field))
                )
            })
            .collect();
        // Non-unique indexes end with `id`, the keyset tie-breaker, so a filtered, sorted page
        // is one index range scan with no sort step.
        let last = index.columns.last().expect("an index has columns");
        if !index.unique && last.field != "id" {
            columns.push(format!("\"id\"{}", index_order(dialect, last.descending, false)));
        }
        let mut statement = format!(
            "CREATE {}INDEX {} ON {quoted} ({org_prefix}{})",
            if index.unique { "UNIQUE " } else { "" },
            ident(&index.name),
            columns.join(", ")
        );
        if let Some(condition) = schema.index_condition(&index.name) {
            statement.push_str(" WHERE ");
            statement.push_str(&compile_index_condition(condition, dialect, ""));
        }
        out.push((index.name.clone(), statement));
    }
    if dialect == Dialect::Postgres && collection.has_search() {
        let name = format!("{table}_search");
        out.push((
            name.clone(),
            format!("CREATE INDEX {} ON {quoted} USING gin (keel_search)", ident(&name)),
        ));
    }
    out
}

pub(super) fn search_signature(collection: &Collection) -> Vec<String> {
    collection.search_fields().map(|f| f.name.clone()).collect()
}

/// Statements that create full-text search for a collection.
pub(super) fn create_search(dialect: Dialect, collection: &Collection) -> Vec<String> {
    let fields = search_signature(collection);
    if fields.is_empty() {
        return vec![];
    }
    let table = collection.table();
    match dialect {
        Dialect::Postgres => {
            let document: Vec<String> = fields.iter().map(|f| format!("coalesce({}, '')", ident(f))).collect();
            vec![format!(
                "ALTER TABLE {} ADD COLUMN keel_search tsvector GENERATED ALWAYS AS (to_tsvector('simple', {})) STORED",
                ident(&table),
                document.join(" || ' ' || ")
            )]
        }
        Dialect::Sqlite => {
            // An FTS5 index over the record table itself (external content: it keeps no copy
            // of the text), keyed by the record's rowid and kept in step by triggers: searches
            // join on the rowid and deletes find their entries by it (not by a scan). A
            // delete hands FTS5 the old text, which it tokenizes to remove exactly the
            // entries it indexed; updates that leave the searched fields alone do not touch
            // it. Rowids are stable because Keel never runs VACUUM on a live database.
            let fts = ident(&format!("{table}_fts"));
            let quoted = ident(&table);
            let columns: Vec<String> = fields.iter().map(|f| ident(f)).collect();
            let values = |row: &str| -> String {
                fields
                    .iter()
                    .map(|f| format!("{row}.{}", ident(f)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let list = columns.join(", ");
            let (old, new) = (values("old"), values("new"));
            let remove = format!("INSERT INTO {fts} ({fts}, rowid, {list}) VALUES ('delete', old.rowid, {old});");
            let add = format!("INSERT INTO {fts} (rowid, {list}) VALUES (new.rowid, {new});");
            vec![
                format!(
                    "CREATE VIRTUAL TABLE {fts} USING fts5({list}, content = {quoted}, content_rowid = 'rowid', tokenize = 'unicode61 remove_diacritics 2')"
                ),
                format!("INSERT INTO {fts} ({fts}) VALUES ('rebuild')"),
                format!(
                    "CREATE TRIGGER {} AFTER INSERT ON {quoted} BEGIN {add} END",
                    ident(&format!("{table}_fts_insert"))
                ),
                format!(
                    "CREATE TRIGGER {} AFTER DELETE ON {quoted} BEGIN {remove} END",
                    ident(&format!("{table}_fts_delete"))
                ),
                format!(
                    "CREATE TRIGGER {} AFTER UPDATE OF {list} ON {quoted} BEGIN {remove} {add} END",
                    ident(&format!("{table}_fts_update"))
                ),
            ]
        }
    }
}

pub(super) fn drop_search(dialect: Dialect, collection: &Collection) -> Vec<String> {
    if !collection.has_search() {
        return vec![];
    }
    let table = collection.table();
    match dialect {
        Dialect::Postgres => vec![format!("ALTER TABLE {} DROP COLUMN keel_search", ident(&table))],
        Dialect::Sqlite => vec![
            format!("DROP TRIGGER IF EXISTS {}", ident(&format!("{table}_fts_insert"))),
            format!("DROP TRIGGER IF EXISTS {}", ident(&format!("{table}_fts_delete"))),
            format!("DROP TRIGGER IF EXISTS {}", ident(&format!("{table}_fts_update"))),
            format!("DROP TABLE IF EXISTS {}", ident(&format!("{table}_fts"))),
        ],
    }
}
