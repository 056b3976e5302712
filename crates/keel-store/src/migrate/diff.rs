//! The planner: the steps from the app recorded last to the new one.

use chrono::Utc;
use keel_query::value::ident;
use keel_query::{Dialect, Schema};
use keel_spec::{Collection, FieldKind, RelationTarget};

use super::ddl::{
    add_batch_column, add_foreign_key, column_definition, column_type, create_search, create_table, default_literal,
    drop_search, fk_name, indexes, search_signature,
};
use super::system::system_steps;
use super::{MigrateError, Plan, Step};

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
