//! Reads `keel.toml` into the app model, collecting every problem with its line and key path.

use std::ops::Range;

use toml_edit::{Item, Value};

use crate::model::*;
use crate::{SpecError, SpecProblem};

pub(crate) mod jobs;
pub(crate) mod rates;

/// A TOML node with its source span, detached from toml_edit's representation.
enum Node<'a> {
    Table(Vec<(&'a str, Option<Range<usize>>, NodeRef<'a>)>),
    Array(Vec<NodeRef<'a>>),
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Other,
}

#[derive(Clone, Copy)]
enum NodeRef<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a toml_edit::Table),
}

impl<'a> NodeRef<'a> {
    fn node(self) -> Node<'a> {
        match self {
            NodeRef::Item(Item::Table(t)) => Node::Table(
                t.iter()
                    .map(|(k, v)| {
                        let span = t.key(k).and_then(|key| key.span());
                        (k, span, NodeRef::Item(v))
                    })
                    .collect(),
            ),
            NodeRef::Item(Item::Value(v)) => NodeRef::Value(v).node(),
            NodeRef::Item(Item::ArrayOfTables(a)) => Node::Array(a.iter().map(NodeRef::Table).collect()),
            NodeRef::Item(Item::None) => Node::Other,
            NodeRef::Table(t) => Node::Table(
                t.iter()
                    .map(|(k, v)| (k, t.key(k).and_then(|key| key.span()), NodeRef::Item(v)))
                    .collect(),
            ),
            NodeRef::Value(v) => match v {
                Value::String(s) => Node::Str(s.value()),
                Value::Integer(i) => Node::Int(*i.value()),
                Value::Float(f) => Node::Float(*f.value()),
                Value::Boolean(b) => Node::Bool(*b.value()),
                Value::Array(a) => Node::Array(a.iter().map(NodeRef::Value).collect()),
                Value::InlineTable(t) => Node::Table(
                    t.iter()
                        .map(|(k, v)| (k, t.key(k).and_then(|key| key.span()), NodeRef::Value(v)))
                        .collect(),
                ),
                Value::Datetime(_) => Node::Other,
            },
        }
    }

    fn span(self) -> Option<Range<usize>> {
        match self {
            NodeRef::Item(i) => i.span(),
            NodeRef::Value(v) => v.span(),
            NodeRef::Table(t) => t.span(),
        }
    }
}

struct Reader<'s> {
    source: &'s str,
    problems: Vec<SpecProblem>,
    /// The declared job kinds (collections' triggers name them).
    job_kinds: Vec<String>,
}

impl<'s> Reader<'s> {
    fn line_of(&self, span: Option<Range<usize>>) -> usize {
        match span {
            Some(range) => {
                self.source[..range.start.min(self.source.len())]
                    .bytes()
                    .filter(|b| *b == b'\n')
                    .count()
                    + 1
            }
            None => 0,
        }
    }

    fn problem(&mut self, span: Option<Range<usize>>, path: &str, message: impl Into<String>) {
        let line = self.line_of(span);
        self.problems.push(SpecProblem {
            line,
            path: path.to_string(),
            message: message.into(),
        });
    }
}

/// `type/subtype` or `type/*`, lowercase letters, digits and `.+-`.
fn is_content_type(text: &str) -> bool {
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'))
    };
    match text.split_once('/') {
        Some((kind, "*")) => valid(kind),
        Some((kind, sub)) => valid(kind) && valid(sub),
        None => false,
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 48
}

const RESERVED_COLLECTIONS: [&str; 11] = [
    "members",
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

/// Where a key sits in the source: the key's span, else the value's.
struct Entry<'a> {
    key: &'a str,
    key_span: Option<Range<usize>>,
    value: NodeRef<'a>,
}

impl Entry<'_> {
    fn span(&self) -> Option<Range<usize>> {
        self.value.span().or(self.key_span.clone())
    }
}

fn entries<'a>(node: NodeRef<'a>) -> Option<Vec<Entry<'a>>> {
    match node.node() {
        Node::Table(items) => Some(
            items
                .into_iter()
                .map(|(key, key_span, value)| Entry { key, key_span, value })
                .collect(),
        ),
        _ => None,
    }
}

/// Parses and validates a spec. Every problem is reported, not only the first.
pub fn parse_app(source: &str) -> Result<App, SpecError> {
    let document = match toml_edit::Document::parse(source) {
        Ok(document) => document,
        Err(error) => {
            let mut reader = Reader {
                source,
                problems: vec![],
                job_kinds: vec![],
            };
            reader.problem(error.span(), "", error.message().to_string());
            return Err(SpecError {
                problems: reader.problems,
            });
        }
    };
    let mut reader = Reader {
        source,
        problems: vec![],
        job_kinds: vec![],
    };
    let root = NodeRef::Item(document.as_item());
    let mut name = None;
    let mut title = None;
    let mut roles: Vec<String> = vec![];
    let mut demo = DemoSpec {
        orgs: 3,
        users_per_org: 5,
        activity: 0,
    };
    let mut collection_entries = vec![];
    let mut queue_entries = vec![];
    let mut job_entries = vec![];
    let mut saw_roles = false;
    let mut storage = StorageSpec::default();
    let mut rate_limits = RateLimitsSpec::default();
    let mut backup = BackupSpec::default();
    let mut alert_entries = vec![];
    for entry in entries(root).unwrap_or_default() {
        match entry.key {
            "app" => {
                for app_entry in table_entries(&mut reader, &entry, "app") {
                    let path = format!("app.{}", app_entry.key);
                    match app_entry.key {
                        "name" => {
                            if let Some(value) = string(&mut reader, &app_entry, &path) {
                                if value.is_empty()
                                    || !value
                                        .chars()
                                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                                {
                                    reader.problem(
                                        app_entry.span(),
                                        &path,
                                        "must be lowercase letters, digits and '-'",
                                    );
                                } else {
                                    name = Some(value.to_string());
                                }
                            }
                        }
                        "title" => title = string(&mut reader, &app_entry, &path).map(str::to_string),
                        _ => unknown_key(&mut reader, &app_entry, &path, &["name", "title"]),
                    }
                }
            }
            "roles" => {
                saw_roles = true;
                for role_entry in table_entries(&mut reader, &entry, "roles") {
                    let path = format!("roles.{}", role_entry.key);
                    match role_entry.key {
                        "order" => {
                            for (i, item) in array(&mut reader, &role_entry, &path).into_iter().enumerate() {
                                let item_path = format!("{path}[{i}]");
                                match item.node() {
                                    Node::Str(role) if is_identifier(role) => {
                                        if roles.iter().any(|r| r == role) {
                                            reader.problem(
                                                item.span(),
                                                &item_path,
                                                format!("role '{role}' is listed twice"),
                                            );
                                        } else {
                                            roles.push(role.to_string());
                                        }
                                    }
                                    _ => reader.problem(
                                        item.span(),
                                        &item_path,
                                        "a role is a lowercase identifier string",
                                    ),
                                }
                            }
                        }
                        _ => unknown_key(&mut reader, &role_entry, &path, &["order"]),
                    }
                }
            }
            "demo" => {
                for demo_entry in table_entries(&mut reader, &entry, "demo") {
                    let path = format!("demo.{}", demo_entry.key);
                    match demo_entry.key {
                        "orgs" => demo.orgs = int_in(&mut reader, &demo_entry, &path, 1, 100_000).unwrap_or(1) as u32,
                        "activity" => {
                            demo.activity = int_in(&mut reader, &demo_entry, &path, 0, 100_000_000).unwrap_or(0) as u64
                        }
                        "users_per_org" => {
                            demo.users_per_org = int_in(&mut reader, &demo_entry, &path, 1, 10_000).unwrap_or(1) as u32
                        }
                        _ => unknown_key(&mut reader, &demo_entry, &path, &["orgs", "users_per_org", "activity"]),
                    }
                }
            }
            "collections" => {
                collection_entries = table_entries(&mut reader, &entry, "collections");
            }
            "storage" => {
                for storage_entry in table_entries(&mut reader, &entry, "storage") {
                    let path = format!("storage.{}", storage_entry.key);
                    match storage_entry.key {
                        "quota_per_user" => {
                            storage.quota_per_user = jobs::size_bytes(&mut reader, &storage_entry, &path)
                        }
                        "quota_per_org" => storage.quota_per_org = jobs::size_bytes(&mut reader, &storage_entry, &path),
                        _ => unknown_key(&mut reader, &storage_entry, &path, &["quota_per_user", "quota_per_org"]),
                    }
                }
            }
            "rate_limits" => rate_limits = rates::rate_limits(&mut reader, &entry),
            "backup" => backup = jobs::backup(&mut reader, &entry),
            "alerts" => alert_entries = table_entries(&mut reader, &entry, "alerts"),
            "queues" => queue_entries = table_entries(&mut reader, &entry, "queues"),
            "jobs" => job_entries = table_entries(&mut reader, &entry, "jobs"),
            _ => unknown_key(
                &mut reader,
                &entry,
                entry.key,
                &[
                    "app",
                    "roles",
                    "collections",
                    "demo",
                    "queues",
                    "jobs",
                    "storage",
                    "rate_limits",
                    "backup",
                    "alerts",
                ],
            ),
        }
    }
    if name.is_none() && !reader.problems.iter().any(|p| p.path == "app.name") {
        reader.problem(None, "app.name", "is required");
    }
    if roles.is_empty() {
        let message = if saw_roles {
            "must list at least one role"
        } else {
            "is required"
        };
        reader.problem(None, "roles.order", message);
    }
    let names: Vec<&str> = collection_entries.iter().map(|e| e.key).collect();
    let jobs = jobs::jobs(&mut reader, &queue_entries, &job_entries, &roles, &names);
    reader.job_kinds = jobs.kinds.iter().map(|k| k.name.clone()).collect();
    reader.job_kinds.push(CLEANUP_KIND.to_string());
    let mut collections = vec![];
    for entry in &collection_entries {
        if let Some(collection) = collection(&mut reader, entry, &names) {
            collections.push(collection);
        }
    }
    if collection_entries.is_empty() {
        reader.problem(None, "collections", "declare at least one collection");
    }
    check_relations(&mut reader, &collections, &collection_entries);
    jobs::check_upsert_keys(&mut reader, &collections, &jobs);
    let alerts = jobs::alerts(&mut reader, &alert_entries, &backup);
    if reader.problems.is_empty() {
        Ok(App {
            name: name.unwrap_or_default(),
            title,
            roles,
            collections,
            demo,
            jobs,
            storage,
            rate_limits,
            backup,
            alerts,
        }
        .with_builtins())
    } else {
        reader.problems.sort_by_key(|p| p.line);
        Err(SpecError {
            problems: reader.problems,
        })
    }
}

fn table_entries<'a>(reader: &mut Reader, entry: &Entry<'a>, path: &str) -> Vec<Entry<'a>> {
    match entries(entry.value) {
        Some(items) => items,
        None => {
            reader.problem(entry.span(), path, "must be a table");
            vec![]
        }
    }
}

fn unknown_key(reader: &mut Reader, entry: &Entry, path: &str, known: &[&str]) {
    reader.problem(
        entry.key_span.clone().or(entry.span()),
        path,
        format!("unknown key '{}'; expected one of: {}", entry.key, known.join(", ")),
    );
}

fn string<'a>(reader: &mut Reader, entry: &Entry<'a>, path: &str) -> Option<&'a str> {
    match entry.value.node() {
        Node::Str(s) => Some(s),
        _ => {
            reader.problem(entry.span(), path, "must be a string");
            None
        }
    }
}

fn boolean(reader: &mut Reader, entry: &Entry, path: &str) -> bool {
    match entry.value.node() {
        Node::Bool(b) => b,
        _ => {
            reader.problem(entry.span(), path, "must be true or false");
            false
        }
    }
}

fn int_in(reader: &mut Reader, entry: &Entry, path: &str, min: i64, max: i64) -> Option<i64> {
    match entry.value.node() {
        Node::Int(i) if (min..=max).contains(&i) => Some(i),
        Node::Int(_) => {
            reader.problem(entry.span(), path, format!("must be between {min} and {max}"));
            None
        }
        _ => {
            reader.problem(entry.span(), path, "must be an integer");
            None
        }
    }
}

fn number(reader: &mut Reader, entry: &Entry, path: &str) -> Option<f64> {
    match entry.value.node() {
        Node::Int(i) => Some(i as f64),
        Node::Float(f) if f.is_finite() => Some(f),
        _ => {
            reader.problem(entry.span(), path, "must be a number");
            None
        }
    }
}

fn array<'a>(reader: &mut Reader, entry: &Entry<'a>, path: &str) -> Vec<NodeRef<'a>> {
    match entry.value.node() {
        Node::Array(items) => items,
        _ => {
            reader.problem(entry.span(), path, "must be an array");
            vec![]
        }
    }
}

fn located(reader: &mut Reader, entry: &Entry, path: &str) -> Option<Located> {
    let text = string(reader, entry, path)?;
    if text.trim().is_empty() {
        reader.problem(entry.span(), path, "must not be empty");
        return None;
    }
    Some(Located {
        text: text.to_string(),
        line: reader.line_of(entry.span()),
        path: path.to_string(),
    })
}

fn collection(reader: &mut Reader, entry: &Entry, all_names: &[&str]) -> Option<Collection> {
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

fn field(reader: &mut Reader, entry: &Entry, base: &str, all_names: &[&str]) -> Option<Field> {
    let path = format!("{base}.fields.{}", entry.key);
    let name = entry.key;
    let mut ok = true;
    if !is_identifier(name) {
        reader.problem(
            entry.key_span.clone(),
            &path,
            "a field name is a lowercase identifier ([a-z][a-z0-9_]*, at most 48 characters)",
        );
        ok = false;
    } else if SYSTEM_FIELDS.contains(&name) || name == "batch" || name.starts_with("keel") || name == "search" {
        reader.problem(
            entry.key_span.clone(),
            &path,
            format!("'{name}' is a system field name"),
        );
        ok = false;
    }
    let Some(items) = entries(entry.value) else {
        reader.problem(entry.span(), &path, "a field is a table such as { type = \"text\" }");
        return None;
    };
    let type_name = items
        .iter()
        .find(|e| e.key == "type")
        .and_then(|e| match e.value.node() {
            Node::Str(s) => Some(s),
            _ => None,
        });
    let Some(type_name) = type_name else {
        reader.problem(
            entry.span(),
            &format!("{path}.type"),
            "is required: one of text, integer, number, bool, date, datetime, select, json, relation, file",
        );
        return None;
    };
    let common = ["type", "required", "default", "unique", "description", "demo"];
    let extra: &[&str] = match type_name {
        "text" => &["min", "max", "pattern", "search"],
        "integer" | "number" => &["min", "max"],
        "select" => &["values"],
        "relation" => &["to", "on_delete", "lookup"],
        "file" => &["max_size", "types", "multiple", "retention"],
        "bool" | "date" | "datetime" | "json" => &[],
        other => {
            let type_entry = items.iter().find(|e| e.key == "type").expect("type exists");
            reader.problem(type_entry.span(), &format!("{path}.type"), format!("unknown type '{other}'; expected one of text, integer, number, bool, date, datetime, select, json, relation, file"));
            return None;
        }
    };
    let mut required = false;
    let mut unique = false;
    let mut description = None;
    let mut demo = None;
    let mut default_entry = None;
    let (mut min_i, mut max_i, mut min_f, mut max_f) = (None, None, None, None);
    let mut pattern = None;
    let mut search = false;
    let mut values = vec![];
    let mut to = None;
    let mut on_delete = OnDelete::Restrict;
    let mut lookup = None;
    let mut max_bytes = 10 << 20;
    let mut file_types = vec![];
    let mut multiple = false;
    let mut retention_ms = None;
    for item in &items {
        let item_path = format!("{path}.{}", item.key);
        if !common.contains(&item.key) && !extra.contains(&item.key) {
            let known: Vec<&str> = common.iter().chain(extra.iter()).copied().collect();
            unknown_key(reader, item, &item_path, &known);
            ok = false;
            continue;
        }
        match item.key {
            "type" => {}
            "required" => required = boolean(reader, item, &item_path),
            "unique" => unique = boolean(reader, item, &item_path),
            "description" => description = string(reader, item, &item_path).map(str::to_string),
            "demo" => {
                const HINTS: [&str; 12] = [
                    "name",
                    "first_name",
                    "last_name",
                    "email",
                    "phone",
                    "company",
                    "city",
                    "word",
                    "sentence",
                    "paragraph",
                    "code",
                    "url",
                ];
                if let Some(hint) = string(reader, item, &item_path) {
                    if HINTS.contains(&hint) {
                        demo = Some(hint.to_string());
                    } else {
                        reader.problem(
                            item.span(),
                            &item_path,
                            format!("unknown demo hint '{hint}'; expected one of: {}", HINTS.join(", ")),
                        );
                    }
                }
            }
            "default" => default_entry = Some(item),
            "min" | "max" if type_name == "text" => {
                let value = int_in(reader, item, &item_path, 0, 10_000_000).map(|v| v as u32);
                if item.key == "min" {
                    min_i = value.map(i64::from)
                } else {
                    max_i = value.map(i64::from)
                }
            }
            "min" | "max" if type_name == "integer" => {
                let value = int_in(reader, item, &item_path, i64::MIN, i64::MAX);
                if item.key == "min" {
                    min_i = value
                } else {
                    max_i = value
                }
            }
            "min" | "max" => {
                let value = number(reader, item, &item_path);
                if item.key == "min" {
                    min_f = value
                } else {
                    max_f = value
                }
            }
            "pattern" => {
                if let Some(p) = string(reader, item, &item_path) {
                    match regex::Regex::new(&format!("^(?:{p})$")) {
                        Ok(_) => pattern = Some(p.to_string()),
                        Err(e) => {
                            reader.problem(item.span(), &item_path, format!("not a valid regular expression: {e}"))
                        }
                    }
                }
            }
            "search" => search = boolean(reader, item, &item_path),
            "values" => {
                for (i, value) in array(reader, item, &item_path).into_iter().enumerate() {
                    match value.node() {
                        Node::Str(s) if !s.is_empty() && s.len() <= 100 => {
                            if values.iter().any(|v: &String| v == s) {
                                reader.problem(
                                    value.span(),
                                    &format!("{item_path}[{i}]"),
                                    format!("'{s}' is listed twice"),
                                );
                            }
                            values.push(s.to_string())
                        }
                        _ => reader.problem(
                            value.span(),
                            &format!("{item_path}[{i}]"),
                            "a select value is a non-empty string of at most 100 characters",
                        ),
                    }
                }
                if values.is_empty() {
                    reader.problem(item.span(), &item_path, "list at least one value");
                }
            }
            "lookup" => lookup = string(reader, item, &item_path).map(str::to_string),
            "max_size" => match jobs::size_bytes(reader, item, &item_path) {
                Some(bytes) => max_bytes = bytes,
                None => ok = false,
            },
            "multiple" => multiple = boolean(reader, item, &item_path),
            "retention" => match jobs::duration_ms(reader, item, &item_path) {
                Some(ms) => retention_ms = Some(ms),
                None => ok = false,
            },
            "types" => {
                for node in array(reader, item, &item_path) {
                    match node.node() {
                        Node::Str(text) if is_content_type(text) => file_types.push(text.to_ascii_lowercase()),
                        _ => {
                            reader.problem(
                                item.span(),
                                &item_path,
                                "each type is a content type such as \"application/pdf\" or \"image/*\"",
                            );
                            ok = false;
                        }
                    }
                }
            }
            "to" => {
                if let Some(target) = string(reader, item, &item_path) {
                    if target == "users" {
                        to = Some(RelationTarget::Users);
                    } else if all_names.contains(&target) {
                        to = Some(RelationTarget::Collection(target.to_string()));
                    } else {
                        reader.problem(
                            item.span(),
                            &item_path,
                            format!("no collection named '{target}' (relations point to a collection or to users)"),
                        );
                    }
                }
            }
            "on_delete" => match string(reader, item, &item_path) {
                Some("restrict") => on_delete = OnDelete::Restrict,
                Some("cascade") => on_delete = OnDelete::Cascade,
                Some("set_null") => on_delete = OnDelete::SetNull,
                Some(other) => reader.problem(
                    item.span(),
                    &item_path,
                    format!("unknown on_delete '{other}'; expected restrict, cascade or set_null"),
                ),
                None => {}
            },
            _ => unreachable!("filtered above"),
        }
    }
    let kind = match type_name {
        "text" => {
            let max = max_i.unwrap_or(10_000) as u32;
            let min = min_i.map(|m| m as u32);
            if min.is_some_and(|min| min > max) {
                reader.problem(entry.span(), &path, "min is greater than max");
                ok = false;
            }
            FieldKind::Text {
                min,
                max,
                pattern,
                search,
            }
        }
        "integer" => {
            if let (Some(a), Some(b)) = (min_i, max_i)
                && a > b
            {
                reader.problem(entry.span(), &path, "min is greater than max");
                ok = false;
            }
            FieldKind::Integer { min: min_i, max: max_i }
        }
        "number" => {
            if let (Some(a), Some(b)) = (min_f, max_f)
                && a > b
            {
                reader.problem(entry.span(), &path, "min is greater than max");
                ok = false;
            }
            FieldKind::Number { min: min_f, max: max_f }
        }
        "bool" => FieldKind::Bool,
        "date" => FieldKind::Date,
        "datetime" => FieldKind::Datetime,
        "json" => FieldKind::Json,
        "file" => {
            if required || unique || default_entry.is_some() {
                reader.problem(
                    entry.span(),
                    &path,
                    "a file field cannot be required, unique or have a default (files are uploaded to an existing record)",
                );
                ok = false;
            }
            FieldKind::File {
                max_bytes,
                types: file_types,
                multiple,
                retention_ms,
            }
        }
        "select" => {
            if values.is_empty() {
                if !items.iter().any(|e| e.key == "values") {
                    reader.problem(
                        entry.span(),
                        &format!("{path}.values"),
                        "is required for a select field",
                    );
                }
                ok = false;
            }
            FieldKind::Select { values }
        }
        "relation" => match to {
            Some(to) => {
                if on_delete == OnDelete::SetNull && required {
                    reader.problem(
                        entry.span(),
                        &path,
                        "on_delete = \"set_null\" cannot be used on a required field",
                    );
                    ok = false;
                }
                FieldKind::Relation { to, on_delete }
            }
            None => {
                if !items.iter().any(|e| e.key == "to") {
                    reader.problem(entry.span(), &format!("{path}.to"), "is required for a relation");
                }
                return None;
            }
        },
        _ => unreachable!("checked above"),
    };
    if unique && matches!(kind, FieldKind::Json) {
        reader.problem(entry.span(), &path, "a json field cannot be unique");
        ok = false;
    }
    if search && unique {
        // allowed; nothing to check
    }
    let default = default_entry.and_then(|item| default_value(reader, item, &format!("{path}.default"), &kind));
    if default_entry.is_some() && default.is_none() {
        ok = false;
    }
    ok.then_some(Field {
        name: name.to_string(),
        kind,
        required,
        default,
        unique,
        description,
        demo,
        lookup,
    })
}

fn default_value(reader: &mut Reader, entry: &Entry, path: &str, kind: &FieldKind) -> Option<DefaultValue> {
    let node = entry.value.node();
    let value = match (kind, node) {
        (FieldKind::Text { max, min, .. }, Node::Str(s)) => {
            let length = s.chars().count();
            if length > *max as usize || min.is_some_and(|m| length < m as usize) {
                reader.problem(entry.span(), path, "the default does not fit the field's length limits");
                return None;
            }
            DefaultValue::Text(s.to_string())
        }
        (FieldKind::Select { values }, Node::Str(s)) => {
            if !values.iter().any(|v| v == s) {
                reader.problem(entry.span(), path, format!("'{s}' is not one of the field's values"));
                return None;
            }
            DefaultValue::Text(s.to_string())
        }
        (FieldKind::Integer { .. }, Node::Int(i)) => DefaultValue::Integer(i),
        (FieldKind::Number { .. }, Node::Int(i)) => DefaultValue::Number(i as f64),
        (FieldKind::Number { .. }, Node::Float(f)) => DefaultValue::Number(f),
        (FieldKind::Bool, Node::Bool(b)) => DefaultValue::Bool(b),
        (FieldKind::Date | FieldKind::Datetime, Node::Str("@now")) => DefaultValue::Now,
        (FieldKind::Date, Node::Str(s)) if is_date(s) => DefaultValue::Text(s.to_string()),
        (FieldKind::Datetime, Node::Str(s)) if is_datetime(s) => DefaultValue::Text(s.to_string()),
        _ => {
            reader.problem(
                entry.span(),
                path,
                format!("not a valid default for a {} field", kind.type_name()),
            );
            return None;
        }
    };
    Some(value)
}

/// A real calendar date in `YYYY-MM-DD` form (so `2026-13-45` is refused).
fn is_date(s: &str) -> bool {
    let bytes = s.as_bytes();
    let shape = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if !shape {
        return false;
    }
    let number = |range: std::ops::Range<usize>| s[range].parse::<u32>().unwrap_or(0);
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

/// An RFC 3339 datetime: a valid date, `T`, `HH:MM:SS`, optional fraction, and `Z` or an offset.
fn is_datetime(s: &str) -> bool {
    let Some((date, time)) = s.split_once(['T', 't']) else {
        return false;
    };
    let bytes = time.as_bytes();
    let clock = bytes.len() >= 9
        && bytes[2] == b':'
        && bytes[5] == b':'
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| bytes[i].is_ascii_digit())
        && time[0..2].parse::<u32>().is_ok_and(|h| h < 24)
        && time[3..5].parse::<u32>().is_ok_and(|m| m < 60)
        && time[6..8].parse::<u32>().is_ok_and(|sec| sec < 61);
    let zone = time.ends_with(['Z', 'z']) || time.rfind(['+', '-']).is_some_and(|i| i >= 8 && time.len() - i == 6);
    is_date(date) && clock && zone
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

fn check_relations(reader: &mut Reader, collections: &[Collection], entries: &[Entry]) {
    for collection in collections {
        if let Some(timeseries) = &collection.timeseries {
            let span = entries
                .iter()
                .find(|e| e.key == collection.name)
                .and_then(|e| e.key_span.clone());
            for index in collection.indexes.iter().filter(|i| i.unique) {
                if !index.columns.iter().any(|c| c.field == timeseries.field) {
                    reader.problem(
                        span.clone(),
                        &format!("collections.{}.indexes", collection.name),
                        format!(
                            "unique index {} must include the time field '{}' (uniqueness is per partition)",
                            index.name, timeseries.field
                        ),
                    );
                }
            }
        }
        let span = entries
            .iter()
            .find(|e| e.key == collection.name)
            .and_then(|e| e.key_span.clone());
        for field in &collection.fields {
            if let Some(lookup) = &field.lookup {
                let usable = match &field.kind {
                    FieldKind::Relation {
                        to: RelationTarget::Collection(target),
                        ..
                    } => collections
                        .iter()
                        .find(|c| &c.name == target)
                        .and_then(|c| c.field(lookup))
                        .is_some_and(|f| {
                            f.unique
                                && matches!(
                                    f.kind,
                                    FieldKind::Text { .. } | FieldKind::Select { .. } | FieldKind::Integer { .. }
                                )
                        }),
                    _ => false,
                };
                if !usable {
                    reader.problem(
                        span.clone(),
                        &format!("collections.{}.fields.{}.lookup", collection.name, field.name),
                        format!("'{lookup}' must be a unique text or integer field of the related collection (users are looked up by email)"),
                    );
                }
            }
            if let FieldKind::Relation {
                to: RelationTarget::Collection(target),
                ..
            } = &field.kind
                && let Some(target) = collections.iter().find(|c| &c.name == target)
                && target.timeseries.is_some()
            {
                reader.problem(
                    span.clone(),
                    &format!("collections.{}.fields.{}.to", collection.name, field.name),
                    format!("'{}' is a time series; records cannot point at one (its ids are unique only with the time field)", target.name),
                );
            }
            if let FieldKind::Relation {
                to: RelationTarget::Collection(target),
                ..
            } = &field.kind
                && let Some(target) = collections.iter().find(|c| &c.name == target)
                && collection.global
                && !target.global
            {
                reader.problem(
                    span.clone(),
                    &format!("collections.{}.fields.{}.to", collection.name, field.name),
                    format!(
                        "a global collection cannot relate to the tenant collection '{}'",
                        target.name
                    ),
                );
            }
        }
    }
}
