//! Migrations planned from the spec (D7): the planner diffs the app recorded by the last
//! migration against the new one and emits DDL for the backend; `apply` runs it in one
//! transaction and records it in `keel_migrations`. Destructive steps need an explicit flag.

use chrono::Utc;
use keel_query::check::compile_index_condition;
use keel_query::value::{ident, spec_literal};
use keel_query::{Dialect, Schema, SqlValue};
use keel_spec::{App, Collection, DefaultValue, Field, FieldKind, RelationTarget};

use crate::db::{Db, Tx};
use crate::error::StoreError;

/// One step of a plan: a human description and its SQL statements.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub description: String,
    pub statements: Vec<String>,
    pub destructive: bool,
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// The version recorded last (0 for an empty database).
    pub from_version: i64,
    pub steps: Vec<Step>,
    /// SQLite table rebuilds need foreign keys off around the transaction.
    pub rebuilds: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn destructive_steps(&self) -> Vec<&Step> {
        self.steps.iter().filter(|s| s.destructive).collect()
    }

    /// The plan as an SQL script with a comment per step.
    pub fn to_sql(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            out.push_str(&format!(
                "-- {}{}\n",
                step.description,
                if step.destructive { " (DESTRUCTIVE)" } else { "" }
            ));
            for statement in &step.statements {
                out.push_str(statement);
                out.push_str(";\n");
            }
            out.push('\n');
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the plan has destructive steps; re-run with --allow-destructive to apply them:\n{0}")]
    Destructive(String),
    #[error("cannot migrate: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn column_type(dialect: Dialect, kind: &FieldKind) -> &'static str {
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

fn types(dialect: Dialect) -> (&'static str, &'static str, &'static str, &'static str) {
    match dialect {
        Dialect::Sqlite => ("TEXT", "TEXT", "INTEGER", "INTEGER"),
        Dialect::Postgres => ("uuid", "timestamptz", "boolean", "bigint"),
    }
}

/// The version of Keel's own tables this build expects; `keel_system` records a database's.
pub const SYSTEM_VERSION: i64 = 6;

/// Keel's own tables, step by step: a database at system version `v` gets the steps after
/// `v`, in one transaction with the app's migration.
pub fn system_steps(dialect: Dialect, from: i64) -> Vec<Step> {
    let mut steps = vec![];
    if from < 1 {
        steps.push(Step {
            description: "create Keel's system tables".into(),
            statements: system_tables(dialect),
            destructive: false,
        });
    }
    if from < 2 {
        let mut statements = vec![
            "CREATE TABLE keel_system (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)".to_string(),
            "INSERT INTO keel_system (id, version) VALUES (1, 2)".to_string(),
        ];
        statements.extend(crate::jobs::tables(dialect));
        steps.push(Step {
            description: "create the job queue's tables (system version 2)".into(),
            statements,
            destructive: false,
        });
    }
    if from < 3 {
        let mut statements = vec!["UPDATE keel_system SET version = 3 WHERE id = 1".to_string()];
        statements.extend(crate::uploads::tables(dialect));
        statements.extend(crate::files::tables(dialect));
        steps.push(Step {
            description: "create the upload spool and the file index (system version 3)".into(),
            statements,
            destructive: false,
        });
    }
    if from < 4 {
        let mut statements = vec!["UPDATE keel_system SET version = 4 WHERE id = 1".to_string()];
        statements.extend(crate::security::tables(dialect));
        steps.push(Step {
            description: "create the login-failure table and the key ring (system version 4)".into(),
            statements,
            destructive: false,
        });
    }
    if from < 5 {
        let mut statements = vec!["UPDATE keel_system SET version = 5 WHERE id = 1".to_string()];
        statements.extend(crate::backups::tables(dialect));
        statements.extend(crate::errors::tables(dialect));
        steps.push(Step {
            description: "create the backup runs, the deferred deletes and the error groups (system version 5)".into(),
            statements,
            destructive: false,
        });
    }
    if from < 6 {
        // The collections' search indexes move to external content in `plan` (SQLite).
        steps.push(Step {
            description: "full-text search without a copy of the text (system version 6)".into(),
            statements: vec!["UPDATE keel_system SET version = 6 WHERE id = 1".to_string()],
            destructive: false,
        });
    }
    steps
}

/// The `batch` column (system version 3) for a collection created before it existed: the
/// import that wrote a record, with its index.
fn add_batch_column(dialect: Dialect, collection: &Collection) -> Vec<String> {
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

/// The system tables every Keel database has (system version 1).
fn system_tables(dialect: Dialect) -> Vec<String> {
    let (uuid, ts, boolean, bigint) = types(dialect);
    vec![
        format!(
            "CREATE TABLE keel_migrations (version {bigint} PRIMARY KEY, applied_at {ts} NOT NULL, description TEXT NOT NULL, app TEXT NOT NULL, statements TEXT NOT NULL)"
        ),
        format!(
            "CREATE TABLE keel_users (id {uuid} PRIMARY KEY, email TEXT NOT NULL, name TEXT, password_hash TEXT NOT NULL, superuser {boolean} NOT NULL DEFAULT {}, created_at {ts} NOT NULL, updated_at {ts} NOT NULL)",
            if dialect == Dialect::Sqlite { "0" } else { "false" }
        ),
        "CREATE UNIQUE INDEX keel_users_email ON keel_users (email)".to_string(),
        format!(
            "CREATE TABLE keel_orgs (id {uuid} PRIMARY KEY, slug TEXT NOT NULL, name TEXT NOT NULL, created_at {ts} NOT NULL)"
        ),
        "CREATE UNIQUE INDEX keel_orgs_slug ON keel_orgs (slug)".to_string(),
        format!(
            "CREATE TABLE keel_memberships (org_id {uuid} NOT NULL REFERENCES keel_orgs (id) ON DELETE CASCADE, user_id {uuid} NOT NULL REFERENCES keel_users (id) ON DELETE CASCADE, role TEXT NOT NULL, created_at {ts} NOT NULL, PRIMARY KEY (org_id, user_id))"
        ),
        "CREATE INDEX keel_memberships_user ON keel_memberships (user_id, org_id)".to_string(),
        format!(
            "CREATE TABLE keel_sessions (id {uuid} PRIMARY KEY, token_hash TEXT NOT NULL, user_id {uuid} NOT NULL REFERENCES keel_users (id) ON DELETE CASCADE, created_at {ts} NOT NULL, expires_at {ts} NOT NULL, revoked_at {ts})"
        ),
        "CREATE UNIQUE INDEX keel_sessions_token ON keel_sessions (token_hash)".to_string(),
        "CREATE INDEX keel_sessions_user ON keel_sessions (user_id)".to_string(),
        format!(
            "CREATE TABLE keel_api_keys (id {uuid} PRIMARY KEY, token_hash TEXT NOT NULL, org_id {uuid} NOT NULL REFERENCES keel_orgs (id) ON DELETE CASCADE, role TEXT NOT NULL, name TEXT NOT NULL, created_by {uuid} REFERENCES keel_users (id) ON DELETE SET NULL, created_at {ts} NOT NULL, expires_at {ts}, revoked_at {ts})"
        ),
        "CREATE UNIQUE INDEX keel_api_keys_token ON keel_api_keys (token_hash)".to_string(),
        "CREATE INDEX keel_api_keys_org ON keel_api_keys (org_id)".to_string(),
    ]
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

fn default_literal(dialect: Dialect, field: &Field) -> Option<String> {
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
fn column_definition(dialect: Dialect, app: &App, field: &Field, with_default: bool) -> String {
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

fn create_table(dialect: Dialect, app: &App, collection: &Collection, table_name: &str) -> String {
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

fn fk_name(collection: &Collection, field: &str) -> String {
    format!("{}_{field}_fkey", collection.table())
}

fn add_foreign_key(app: &App, collection: &Collection, field: &Field) -> Option<String> {
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
fn indexes(dialect: Dialect, schema: &Schema, collection: &Collection) -> Vec<(String, String)> {
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

fn search_signature(collection: &Collection) -> Vec<String> {
    collection.search_fields().map(|f| f.name.clone()).collect()
}

/// Statements that create full-text search for a collection.
fn create_search(dialect: Dialect, collection: &Collection) -> Vec<String> {
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

fn drop_search(dialect: Dialect, collection: &Collection) -> Vec<String> {
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

/// A widening that keeps every value: allowed without the destructive flag.
fn widening(old: &FieldKind, new: &FieldKind) -> bool {
    matches!(
        (old, new),
        (FieldKind::Integer { .. }, FieldKind::Number { .. })
            | (FieldKind::Select { .. }, FieldKind::Text { .. })
            | (FieldKind::Text { .. }, FieldKind::Select { .. })
    ) || column_type(Dialect::Postgres, old) == column_type(Dialect::Postgres, new)
}

fn same_storage(old: &FieldKind, new: &FieldKind) -> bool {
    column_type(Dialect::Postgres, old) == column_type(Dialect::Postgres, new)
}

fn relation_of(kind: &FieldKind) -> Option<(&RelationTarget, keel_spec::OnDelete)> {
    match kind {
        FieldKind::Relation { to, on_delete } => Some((to, *on_delete)),
        _ => None,
    }
}

/// Plans the steps from `previous` (the app recorded last, `None` for an empty database)
/// to `next`.
pub fn plan(
    dialect: Dialect,
    previous: Option<&Schema>,
    next: &Schema,
    from_version: i64,
    system_version: i64,
) -> Result<Plan, MigrateError> {
    let app = &next.app;
    let mut rebuilds = false;
    let mut foreign_keys = vec![];
    let mut steps = system_steps(dialect, if previous.is_none() { 0 } else { system_version });
    let empty: Vec<Collection> = vec![];
    let old_collections = previous.map(|p| &p.app.collections).unwrap_or(&empty);
    if system_version < 3 {
        for old in old_collections
            .iter()
            .filter(|c| !c.system && app.collection(&c.name).is_some())
        {
            steps.push(Step {
                description: format!("add the import batch column to {}", old.name),
                statements: add_batch_column(dialect, old),
                destructive: false,
            });
        }
    }
    if system_version < 6 && dialect == Dialect::Sqlite {
        // Search entries keyed by the record's rowid (before version 3 they were numbered on
        // their own), over the record table instead of a copy of its text (version 6).
        for old in old_collections
            .iter()
            .filter(|c| c.has_search() && app.collection(&c.name).is_some())
        {
            let mut statements = drop_search(dialect, old);
            statements.extend(create_search(dialect, old));
            steps.push(Step {
                description: format!("rebuild the full-text search of {} over its own table", old.name),
                statements,
                destructive: false,
            });
        }
    }
    for old in old_collections {
        if app.collection(&old.name).is_none() {
            let mut statements = drop_search(dialect, old);
            statements.push(format!("DROP TABLE {}", ident(&old.table())));
            steps.push(Step {
                description: format!("drop collection {} and all its records", old.name),
                statements,
                destructive: true,
            });
        }
    }
    for collection in &app.collections {
        let Some(old) = old_collections.iter().find(|c| c.name == collection.name) else {
            let mut statements = vec![create_table(dialect, app, collection, &collection.table())];
            if dialect == Dialect::Postgres && collection.timeseries.is_some() {
                // A default partition catches rows outside the monthly ones, so no insert fails;
                // the maintenance task keeps months created ahead (`crate::partitions`).
                statements.extend(crate::partitions::initial_partitions(collection, Utc::now()));
            }
            statements.extend(indexes(dialect, next, collection).into_iter().map(|(_, s)| s));
            if dialect == Dialect::Postgres {
                for field in &collection.fields {
                    foreign_keys.extend(add_foreign_key(app, collection, field));
                }
                // The search column goes before its index.
                let search = create_search(dialect, collection);
                let index_position = statements.len() - usize::from(collection.has_search());
                for (offset, statement) in search.into_iter().enumerate() {
                    statements.insert(index_position + offset, statement);
                }
            } else {
                statements.extend(create_search(dialect, collection));
            }
            steps.push(Step {
                description: format!("create collection {}", collection.name),
                statements,
                destructive: false,
            });
            continue;
        };
        let previous_schema = previous.expect("old collection implies a previous schema");
        if old.global != collection.global {
            return Err(MigrateError::Unsupported(format!(
                "collection {} changes between global and tenant-scoped; create a new collection and copy the data",
                collection.name
            )));
        }
        let mut destructive = false;
        let mut needs_rebuild = false;
        let mut field_statements = vec![];
        let mut notes = vec![];
        for old_field in &old.fields {
            let Some(new_field) = collection.field(&old_field.name) else {
                destructive = true;
                needs_rebuild = true;
                notes.push(format!("drop field {}", old_field.name));
                field_statements.push(format!(
                    "ALTER TABLE {} DROP COLUMN {}",
                    ident(&collection.table()),
                    ident(&old_field.name)
                ));
                continue;
            };
            if !same_storage(&old_field.kind, &new_field.kind) {
                if !widening(&old_field.kind, &new_field.kind) {
                    destructive = true;
                }
                needs_rebuild = true;
                notes.push(format!(
                    "change {} from {} to {}",
                    new_field.name,
                    old_field.kind.type_name(),
                    new_field.kind.type_name()
                ));
                let new_type = column_type(Dialect::Postgres, &new_field.kind);
                field_statements.push(format!(
                    "ALTER TABLE {} ALTER COLUMN {} TYPE {new_type} USING {}::{new_type}",
                    ident(&collection.table()),
                    ident(&new_field.name),
                    ident(&new_field.name)
                ));
            }
            if old_field.required != new_field.required {
                needs_rebuild = true;
                let verb = if new_field.required { "SET" } else { "DROP" };
                if new_field.required {
                    destructive = true;
                    notes.push(format!(
                        "make {} required (fails if any record has none)",
                        new_field.name
                    ));
                } else {
                    notes.push(format!("make {} optional", new_field.name));
                }
                field_statements.push(format!(
                    "ALTER TABLE {} ALTER COLUMN {} {verb} NOT NULL",
                    ident(&collection.table()),
                    ident(&new_field.name)
                ));
            }
            if relation_of(&old_field.kind) != relation_of(&new_field.kind) && relation_of(&new_field.kind).is_some() {
                needs_rebuild = true;
                notes.push(format!("change the relation of {}", new_field.name));
                if relation_of(&old_field.kind).is_some() {
                    field_statements.push(format!(
                        "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}",
                        ident(&collection.table()),
                        ident(&fk_name(collection, &new_field.name))
                    ));
                }
                foreign_keys.extend(add_foreign_key(app, collection, new_field));
            }
        }
        let mut added = vec![];
        for new_field in &collection.fields {
            if old.field(&new_field.name).is_some() {
                continue;
            }
            if new_field.required && new_field.default.is_none() {
                return Err(MigrateError::Unsupported(format!(
                    "field {}.{} is required and has no default; existing records would have no value (give it a default, or add it as optional first)",
                    collection.name, new_field.name
                )));
            }
            if dialect == Dialect::Sqlite && new_field.required && relation_of(&new_field.kind).is_some() {
                needs_rebuild = true;
            }
            notes.push(format!("add field {}", new_field.name));
            added.push(format!(
                "ALTER TABLE {} ADD COLUMN {}",
                ident(&collection.table()),
                column_definition(dialect, app, new_field, true)
            ));
            if dialect == Dialect::Postgres {
                foreign_keys.extend(add_foreign_key(app, collection, new_field));
            }
        }
        let old_indexes = indexes(dialect, previous_schema, old);
        let new_indexes = indexes(dialect, next, collection);
        let search_changed = search_signature(old) != search_signature(collection);
        let mut statements = vec![];
        if dialect == Dialect::Sqlite && needs_rebuild {
            rebuilds = true;
            // SQLite cannot alter columns: rebuild the table (the documented 12-step way).
            let temporary = format!("{}__keel_new", collection.table());
            statements.extend(drop_search(dialect, old));
            statements.push(create_table(dialect, app, collection, &temporary));
            let mut copied: Vec<String> = vec!["\"id\"".into(), "\"created_at\"".into()];
            if !collection.global {
                copied.push("\"org\"".into());
            }
            if !collection.system {
                copied.push("\"updated_at\"".into());
                copied.push("\"version\"".into());
                copied.push("\"batch\"".into());
            }
            let mut selected = copied.clone();
            for field in &collection.fields {
                if let Some(old_field) = old.field(&field.name) {
                    copied.push(ident(&field.name));
                    if same_storage(&old_field.kind, &field.kind) {
                        selected.push(ident(&field.name));
                    } else {
                        selected.push(format!(
                            "CAST({} AS {})",
                            ident(&field.name),
                            column_type(Dialect::Sqlite, &field.kind)
                        ));
                    }
                } else if let Some(literal) = default_literal(dialect, field) {
                    copied.push(ident(&field.name));
                    selected.push(literal);
                }
            }
            statements.push(format!(
                "INSERT INTO {} ({}) SELECT {} FROM {}",
                ident(&temporary),
                copied.join(", "),
                selected.join(", "),
                ident(&collection.table())
            ));
            statements.push(format!("DROP TABLE {}", ident(&collection.table())));
            statements.push(format!(
                "ALTER TABLE {} RENAME TO {}",
                ident(&temporary),
                ident(&collection.table())
            ));
            statements.extend(new_indexes.iter().map(|(_, s)| s.clone()));
            statements.extend(create_search(dialect, collection));
        } else {
            if search_changed || (dialect == Dialect::Postgres && !field_statements.is_empty() && old.has_search()) {
                statements.extend(drop_search(dialect, old));
            }
            for (name, statement) in &old_indexes {
                if !new_indexes.iter().any(|(n, s)| n == name && s == statement) {
                    statements.push(format!("DROP INDEX IF EXISTS {}", ident(name)));
                }
            }
            statements.extend(field_statements);
            statements.extend(added);
            if search_changed
                || (dialect == Dialect::Postgres && statements.iter().any(|s| s.contains("DROP COLUMN keel_search")))
            {
                statements.extend(create_search(dialect, collection));
            }
            for (name, statement) in &new_indexes {
                let existed = old_indexes.iter().any(|(n, s)| n == name && s == statement);
                let search_index_dropped = dialect == Dialect::Postgres
                    && name.ends_with("_search")
                    && statements.iter().any(|s| s.contains("DROP COLUMN keel_search"));
                if !existed || search_index_dropped {
                    statements.push(statement.clone());
                }
            }
            if search_changed {
                notes.push("rebuild full-text search".into());
            }
        }
        if statements.is_empty() {
            continue;
        }
        if notes.is_empty() {
            notes.push("update indexes".into());
        }
        steps.push(Step {
            description: format!("alter collection {}: {}", collection.name, notes.join(", ")),
            statements,
            destructive,
        });
    }
    if !foreign_keys.is_empty() {
        steps.push(Step {
            description: "add foreign keys".into(),
            statements: foreign_keys,
            destructive: false,
        });
    }
    Ok(Plan {
        from_version,
        steps,
        rebuilds,
    })
}

/// What a database has recorded: the latest migration's version, the app it brought the
/// database to, and the version of Keel's own tables.
struct Recorded {
    version: i64,
    app: Option<App>,
    system: i64,
}

/// The latest recorded migration: its version and the app it brought the database to.
pub async fn current(db: &Db) -> Result<(i64, Option<App>), StoreError> {
    let found = db.query_one(&tables_exist(db.dialect())).await?;
    if found.and_then(|row| row[0].int()).unwrap_or(0) == 0 {
        return Ok((0, None));
    }
    recorded(db.query_one(&latest_migration(db.dialect())).await?)
}

/// Where the recorded state is read: the database (planning), or a migration's own
/// transaction (so a pool of one connection can migrate, and the plan is made under the lock).
enum Source<'a> {
    Db(&'a Db),
    Tx(&'a mut Tx),
}

impl Source<'_> {
    fn dialect(&self) -> Dialect {
        match self {
            Source::Db(db) => db.dialect(),
            Source::Tx(tx) => tx.dialect(),
        }
    }

    async fn query_one(&mut self, sql: &keel_query::Sql) -> Result<Option<crate::Row>, StoreError> {
        match self {
            Source::Db(db) => Ok(db.query_primary(sql).await?.into_iter().next()),
            Source::Tx(tx) => tx.query_one(sql).await,
        }
    }
}

async fn recorded_from(mut source: Source<'_>) -> Result<Recorded, StoreError> {
    let dialect = source.dialect();
    let found = source.query_one(&tables_exist(dialect)).await?;
    let (migrations, system) = found
        .map(|row| (row[0].int().unwrap_or(0), row[1].int().unwrap_or(0)))
        .unwrap_or((0, 0));
    if migrations == 0 {
        return Ok(Recorded {
            version: 0,
            app: None,
            system: 0,
        });
    }
    let (version, app) = recorded(source.query_one(&latest_migration(dialect)).await?)?;
    let system = if system == 0 {
        1
    } else {
        let sql = crate::db::portable(dialect, "SELECT version FROM keel_system WHERE id = 1", vec![]);
        let row = source.query_one(&sql).await?;
        row.and_then(|row| row[0].int()).unwrap_or(1)
    };
    Ok(Recorded { version, app, system })
}

/// Whether `keel_migrations` and `keel_system` exist (1 or 0 each).
fn tables_exist(dialect: Dialect) -> keel_query::Sql {
    let text = match dialect {
        Dialect::Sqlite => {
            "SELECT count(*) FILTER (WHERE name = 'keel_migrations'), count(*) FILTER (WHERE name = 'keel_system') FROM sqlite_master WHERE type = 'table'"
        }
        Dialect::Postgres => {
            "SELECT count(*) FILTER (WHERE tablename = 'keel_migrations'), count(*) FILTER (WHERE tablename = 'keel_system') FROM pg_catalog.pg_tables WHERE schemaname = current_schema()"
        }
    };
    crate::db::portable(dialect, text, vec![])
}

fn latest_migration(dialect: Dialect) -> keel_query::Sql {
    crate::db::portable(
        dialect,
        "SELECT version, app FROM keel_migrations ORDER BY version DESC LIMIT 1",
        vec![],
    )
}

fn recorded(row: Option<crate::Row>) -> Result<(i64, Option<App>), StoreError> {
    match row {
        None => Ok((0, None)),
        Some(row) => {
            let version = row[0].int().unwrap_or(0);
            let app: App = serde_json::from_str(row[1].text().unwrap_or("{}")).map_err(|e| {
                StoreError::Other(format!("the recorded app of migration {version} cannot be read: {e}"))
            })?;
            Ok((version, Some(app)))
        }
    }
}

fn plan_from(dialect: Dialect, recorded: Recorded, next: &Schema) -> Result<Plan, MigrateError> {
    let Recorded {
        version,
        app: previous_app,
        system,
    } = recorded;
    let previous = match previous_app {
        Some(app) => Some(Schema::new(app).map_err(|problems| {
            MigrateError::Unsupported(format!("the recorded app no longer checks: {problems:?}"))
        })?),
        None => None,
    };
    plan(dialect, previous.as_ref(), next, version, system)
}

/// Plans the migration from the database's recorded state to `next`.
pub async fn plan_for(db: &Db, next: &Schema) -> Result<Plan, MigrateError> {
    plan_from(db.dialect(), recorded_from(Source::Db(db)).await?, next)
}

/// Applies the plan in one transaction and records it. Concurrent instances serialise on
/// an advisory lock (PostgreSQL) or the single writer (SQLite); a plan that went stale
/// while waiting is recomputed.
pub async fn apply(db: &Db, next: &Schema, allow_destructive: bool) -> Result<Plan, MigrateError> {
    let plan = plan_for(db, next).await?;
    if plan.is_empty() {
        return Ok(plan);
    }
    check_destructive(&plan, allow_destructive)?;
    if let (Db::Sqlite(sqlite), true) = (db, plan.rebuilds) {
        sqlite
            .with_writer(|c| Ok(c.execute_batch("PRAGMA foreign_keys = OFF")?))
            .await?;
    }
    let result = apply_in_transaction(db, next, allow_destructive).await;
    if let (Db::Sqlite(sqlite), true) = (db, plan.rebuilds) {
        sqlite
            .with_writer(|c| Ok(c.execute_batch("PRAGMA foreign_keys = ON")?))
            .await?;
    }
    result
}

fn check_destructive(plan: &Plan, allow_destructive: bool) -> Result<(), MigrateError> {
    let destructive = plan.destructive_steps();
    if !destructive.is_empty() && !allow_destructive {
        let list: Vec<String> = destructive.iter().map(|s| format!("  - {}", s.description)).collect();
        return Err(MigrateError::Destructive(list.join("\n")));
    }
    Ok(())
}

async fn apply_in_transaction(db: &Db, next: &Schema, allow_destructive: bool) -> Result<Plan, MigrateError> {
    let mut tx = db.begin().await?;
    if let Tx::Postgres(..) = &tx {
        tx.execute(&tx.portable("SELECT pg_advisory_xact_lock(4242424242)", vec![]))
            .await?;
    }
    // Re-plan under the lock, inside the transaction: another instance may have migrated meanwhile.
    let plan = plan_from(tx.dialect(), recorded_from(Source::Tx(&mut tx)).await?, next)?;
    if plan.is_empty() {
        return Ok(plan);
    }
    check_destructive(&plan, allow_destructive)?;
    for step in &plan.steps {
        for statement in &step.statements {
            tx.execute_script(statement).await?;
        }
    }
    if let Tx::Sqlite(sqlite, _) = &tx
        && plan.rebuilds
    {
        let broken: i64 = sqlite
            .connection()
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))
            .map_err(StoreError::from)?;
        if broken > 0 {
            return Err(MigrateError::Unsupported(format!(
                "{broken} records would break foreign keys"
            )));
        }
    }
    let description: Vec<&str> = plan.steps.iter().map(|s| s.description.as_str()).collect();
    let record = tx.portable(
        "INSERT INTO keel_migrations (version, applied_at, description, app, statements) VALUES ($1, $2, $3, $4, $5)",
        vec![
            SqlValue::Int(plan.from_version + 1),
            SqlValue::Datetime(keel_query::value::truncate_micros(Utc::now())),
            SqlValue::Text(description.join("; ")),
            SqlValue::Text(serde_json::to_string(&next.app).expect("the app serialises")),
            SqlValue::Text(plan.to_sql()),
        ],
    );
    tx.execute(&record).await?;
    tx.commit().await?;
    Ok(plan)
}

/// The recorded migrations, newest first: (version, applied_at, description).
pub async fn history(db: &Db) -> Result<Vec<(i64, String, String)>, StoreError> {
    if current(db).await?.1.is_none() {
        return Ok(vec![]);
    }
    let rows = db
        .query(&db.portable(
            "SELECT version, applied_at, description FROM keel_migrations ORDER BY version DESC",
            vec![],
        ))
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let mut cells = row.into_iter();
            let version = cells.next().and_then(|c| c.int()).unwrap_or(0);
            let at = cells.next().and_then(|c| c.into_text()).unwrap_or_default();
            let description = cells.next().and_then(|c| c.into_text()).unwrap_or_default();
            (version, at, description)
        })
        .collect())
}
