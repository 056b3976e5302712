//! A collection's table: its name, options, rules, time series and indexes.

use std::ops::Range;

use super::fields::field;
use super::{
    Entry, Node, NodeRef, Reader, array, boolean, entries, int_in, is_identifier, jobs, located, string, table_entries,
    unknown_key,
};
use crate::model::*;

const RESERVED_COLLECTIONS: [&str; 13] = [
    "members",
    "invitations",
    "audit",
    "activity",
    "api_keys",
    "import",
    "export",
    "aggregate",
    "users",
    "orgs",
    "jobs",
    "files",
    "usage",
];

pub(super) fn collection(reader: &mut Reader, entry: &Entry, all_names: &[&str]) -> Option<Collection> {
    let name = entry.key;
    let base = format!("collections.{name}");
    let mut ok = true;
    if !is_identifier(name) {
        reader.problem(
            entry.key_span.clone(),
            &base,
            "a collection name is a lowercase identifier ([a-z][a-z0-9_]*, at most 48 characters)",
        );
        ok = false;
    } else if RESERVED_COLLECTIONS.contains(&name) || name.starts_with("keel") {
        reader.problem(entry.key_span.clone(), &base, format!("'{name}' is a reserved name"));
        ok = false;
    }
    let mut global = false;
    let mut fields = vec![];
    let mut index_items = None;
    let mut rules = Rules::default();
    let mut demo_count = None;
    let mut field_entries = vec![];
    let mut timeseries_entry = None;
    let mut triggers = Triggers::default();
    let mut cache_ttl_ms = None;
    for item in table_entries(reader, entry, &base) {
        let path = format!("{base}.{}", item.key);
        match item.key {
            "global" => global = boolean(reader, &item, &path),
            "fields" => field_entries = table_entries(reader, &item, &path),
            "indexes" => index_items = Some((array(reader, &item, &path), path)),
            "rules" => {
                for rule in table_entries(reader, &item, &path) {
                    let rule_path = format!("{path}.{}", rule.key);
                    let value = located(reader, &rule, &rule_path);
                    match rule.key {
                        "list" => rules.list = value,
                        "view" => rules.view = value,
                        "create" => rules.create = value,
                        "update" => rules.update = value,
                        "delete" => rules.delete = value,
                        _ => unknown_key(
                            reader,
                            &rule,
                            &rule_path,
                            &["list", "view", "create", "update", "delete"],
                        ),
                    }
                }
            }
            "demo" => {
                for demo in table_entries(reader, &item, &path) {
                    let demo_path = format!("{path}.{}", demo.key);
                    match demo.key {
                        "count" => demo_count = int_in(reader, &demo, &demo_path, 0, 100_000_000).map(|n| n as u64),
                        _ => unknown_key(reader, &demo, &demo_path, &["count"]),
                    }
                }
            }
            "timeseries" => timeseries_entry = Some((table_entries(reader, &item, &path), path, item.span())),
            "jobs" => triggers = jobs::triggers(reader, &item, &path),
            "cache" => match jobs::duration_ms(reader, &item, &path) {
                Some(ms) if (1_000..=86_400_000).contains(&ms) => cache_ttl_ms = Some(ms),
                Some(_) => reader.problem(item.span(), &path, "a cache lifetime is between 1s and 1d"),
                None => {}
            },
            _ => unknown_key(
                reader,
                &item,
                &path,
                &[
                    "global",
                    "fields",
                    "indexes",
                    "rules",
                    "demo",
                    "timeseries",
                    "jobs",
                    "cache",
                ],
            ),
        }
    }
    if field_entries.is_empty() {
        reader.problem(
            entry.key_span.clone(),
            &format!("{base}.fields"),
            "declare at least one field",
        );
        ok = false;
    }
    for field_entry in &field_entries {
        match field(reader, field_entry, &base, all_names) {
            Some(f) => fields.push(f),
            None => ok = false,
        }
    }
    let mut collection = Collection {
        name: name.to_string(),
        global,
        fields,
        indexes: vec![],
        rules,
        demo_count,
        timeseries: None,
        system: false,
        triggers,
        cache_ttl_ms,
    };
    if let Some((items, path, span)) = timeseries_entry {
        collection.timeseries = timeseries(reader, items, &path, span, &collection);
        if collection.timeseries.is_none() {
            ok = false;
        }
    }
    if let Some((items, path)) = index_items {
        for (i, item) in items.into_iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            match index(reader, item, &item_path, &collection) {
                Some(index) => {
                    if collection.indexes.iter().any(|existing| existing.name == index.name) {
                        reader.problem(item.span(), &item_path, "the same index is declared twice");
                    } else {
                        collection.indexes.push(index);
                    }
                }
                None => ok = false,
            }
        }
    }
    ok.then_some(collection)
}

/// `timeseries = { field = "ts", retention = "90d" }`.
fn timeseries(
    reader: &mut Reader,
    items: Vec<Entry>,
    path: &str,
    span: Option<Range<usize>>,
    collection: &Collection,
) -> Option<TimeSeries> {
    let mut field = None;
    let mut retention_days = None;
    let mut ok = true;
    for item in &items {
        let item_path = format!("{path}.{}", item.key);
        match item.key {
            "field" => field = string(reader, item, &item_path).map(str::to_string),
            "retention" => match string(reader, item, &item_path) {
                Some(text) => match text
                    .strip_suffix('d')
                    .and_then(|n| n.parse::<u32>().ok())
                    .filter(|n| *n > 0)
                {
                    Some(days) => retention_days = Some(days),
                    None => {
                        reader.problem(item.span(), &item_path, "a retention is a number of days, e.g. \"90d\"");
                        ok = false;
                    }
                },
                None => ok = false,
            },
            _ => unknown_key(reader, item, &item_path, &["field", "retention"]),
        }
    }
    let Some(field) = field else {
        reader.problem(
            span,
            &format!("{path}.field"),
            "is required: the datetime field rows are partitioned by",
        );
        return None;
    };
    match collection.field(&field) {
        Some(f) if matches!(f.kind, FieldKind::Datetime) && f.required => {}
        _ => {
            reader.problem(
                span.clone(),
                &format!("{path}.field"),
                format!("'{field}' must be a required datetime field of {}", collection.name),
            );
            ok = false;
        }
    }
    for f in &collection.fields {
        if f.unique {
            reader.problem(span.clone(), &format!("collections.{}.fields.{}", collection.name, f.name), "a time series cannot have a unique field (uniqueness cannot span partitions); use a unique index that includes the time field");
            ok = false;
        }
    }
    ok.then_some(TimeSeries { field, retention_days })
}

fn index(reader: &mut Reader, item: NodeRef, path: &str, collection: &Collection) -> Option<Index> {
    let mut unique = false;
    let mut condition = None;
    let mut name = None;
    let field_nodes = match item.node() {
        Node::Array(fields) => fields,
        Node::Table(_) => {
            let mut fields = vec![];
            for entry in entries(item).unwrap_or_default() {
                let entry_path = format!("{path}.{}", entry.key);
                match entry.key {
                    "fields" => fields = array(reader, &entry, &entry_path),
                    "unique" => unique = boolean(reader, &entry, &entry_path),
                    "where" => condition = located(reader, &entry, &entry_path),
                    "name" => name = string(reader, &entry, &entry_path).map(str::to_string),
                    _ => unknown_key(reader, &entry, &entry_path, &["fields", "unique", "where", "name"]),
                }
            }
            fields
        }
        _ => {
            reader.problem(
                item.span(),
                path,
                "an index is an array of field names or a table { fields = [...] }",
            );
            return None;
        }
    };
    let mut columns = vec![];
    for (i, field_node) in field_nodes.iter().enumerate() {
        let field_path = format!("{path}[{i}]");
        let Node::Str(raw) = field_node.node() else {
            reader.problem(
                field_node.span(),
                &field_path,
                "an index column is a field name, with '-' in front for descending",
            );
            return None;
        };
        let (field, descending) = match raw.strip_prefix('-') {
            Some(rest) => (rest, true),
            None => (raw, false),
        };
        let known =
            collection.field(field).is_some() || matches!(field, "id" | "created_at" | "updated_at" | "version");
        if !known {
            reader.problem(
                field_node.span(),
                &field_path,
                format!("no field named '{field}' in collection '{}'", collection.name),
            );
            return None;
        }
        if collection
            .field(field)
            .is_some_and(|f| matches!(f.kind, FieldKind::Json | FieldKind::File { .. }))
        {
            reader.problem(field_node.span(), &field_path, "json and file fields cannot be indexed");
            return None;
        }
        columns.push(IndexColumn {
            field: field.to_string(),
            descending,
        });
    }
    if columns.is_empty() {
        reader.problem(item.span(), path, "an index needs at least one field");
        return None;
    }
    let name = match name {
        Some(name) if is_identifier(&name) => name,
        Some(_) => {
            reader.problem(item.span(), path, "an index name is a lowercase identifier");
            return None;
        }
        None => {
            let mut generated = format!("{}_{}", collection.name, if unique { "uq" } else { "ix" });
            for column in &columns {
                generated.push('_');
                generated.push_str(&column.field);
                if column.descending {
                    generated.push_str("_desc");
                }
            }
            if let Some(condition) = &condition {
                generated.push_str(&format!("_p{:08x}", fnv(&condition.text)));
            }
            if generated.len() > 60 {
                generated = format!("{}_{:016x}", &generated[..40], fnv(&generated));
            }
            generated
        }
    };
    Some(Index {
        name,
        columns,
        unique,
        condition,
    })
}

/// A small stable hash for generated names (FNV-1a).
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}
