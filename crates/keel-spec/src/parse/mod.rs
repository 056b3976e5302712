//! Reads `keel.toml` into the app model, collecting every problem with its line and key path.

use std::ops::Range;

use toml_edit::{Item, Value};

use crate::model::*;
use crate::{SpecError, SpecProblem};

pub(crate) mod jobs;
pub(crate) mod rates;

mod checks;
mod collections;
mod fields;

use checks::check_relations;
use collections::collection;

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

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 48
}

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
