//! `[queues.*]`, `[jobs.*]` and a collection's `jobs.on_*` triggers.

use super::{Entry, Node, Reader, array, boolean, int_in, is_identifier, number, string, table_entries, unknown_key};
use crate::model::*;

/// A duration such as `"500ms"`, `"5s"`, `"5m"`, `"1h"` or `"7d"`, in milliseconds.
pub(super) fn duration_ms(reader: &mut Reader, entry: &Entry, path: &str) -> Option<u64> {
    let text = string(reader, entry, path)?;
    match parse_duration_ms(text) {
        Some(ms) => Some(ms),
        None => {
            reader.problem(
                entry.span(),
                path,
                "a duration is a whole number with a unit: ms, s, m, h or d (e.g. \"5s\", \"5m\", \"7d\")",
            );
            None
        }
    }
}

/// `[backup]`: the schedule (daily at 03:00 UTC unless given) and the retention.
pub(super) fn backup(reader: &mut Reader, entry: &Entry) -> BackupSpec {
    let mut spec = BackupSpec {
        schedule: Some("0 3 * * *".to_string()),
        ..BackupSpec::default()
    };
    for item in table_entries(reader, entry, "backup") {
        let path = format!("backup.{}", item.key);
        match item.key {
            "schedule" => match string(reader, &item, &path) {
                Some("off") => spec.schedule = None,
                Some(expression) => match parse_cron(expression) {
                    Ok(_) => spec.schedule = Some(expression.to_string()),
                    Err(error) => reader.problem(
                        item.span(),
                        &path,
                        format!("not a cron expression (or \"off\"): {error}"),
                    ),
                },
                None => {}
            },
            "keep_daily" => spec.keep_daily = int_in(reader, &item, &path, 0, 10_000).unwrap_or(30) as u32,
            "keep_weekly" => spec.keep_weekly = int_in(reader, &item, &path, 0, 10_000).unwrap_or(12) as u32,
            "keep_monthly" => spec.keep_monthly = int_in(reader, &item, &path, 0, 10_000).unwrap_or(12) as u32,
            "alert_after" => match duration_ms(reader, &item, &path) {
                Some(ms) if ms >= 60_000 => spec.alert_after_ms = ms,
                Some(_) => reader.problem(item.span(), &path, "at least 1m"),
                None => {}
            },
            _ => unknown_key(
                reader,
                &item,
                &path,
                &["schedule", "keep_daily", "keep_weekly", "keep_monthly", "alert_after"],
            ),
        }
    }
    if spec.keep_daily + spec.keep_weekly + spec.keep_monthly == 0 {
        reader.problem(
            entry.span(),
            "backup",
            "keep at least one backup (keep_daily, keep_weekly or keep_monthly)",
        );
    }
    spec
}

/// `[alerts.NAME]`: changes to the built-in rules (`threshold`, `for`, `window`, `severity`,
/// `enabled`). Thresholds of time rules are durations (`"1000ms"`, `"5m"`), of the others a
/// share from 0 to 1.
pub(super) fn alerts(reader: &mut Reader, entries: &[Entry], backup: &BackupSpec) -> Vec<AlertRule> {
    let mut rules = default_alert_rules(backup);
    let names: Vec<String> = rules.iter().map(|r| r.name.clone()).collect();
    for entry in entries {
        let Some(rule) = rules.iter_mut().find(|r| r.name == entry.key) else {
            let known: Vec<&str> = names.iter().map(String::as_str).collect();
            unknown_key(reader, entry, &format!("alerts.{}", entry.key), &known);
            continue;
        };
        let in_ms = matches!(rule.name.as_str(), "api_latency" | "api_latency_warning");
        let in_seconds = matches!(rule.name.as_str(), "queue_lag" | "backup");
        for item in table_entries(reader, entry, &format!("alerts.{}", entry.key)) {
            let path = format!("alerts.{}.{}", entry.key, item.key);
            match item.key {
                "threshold" if in_ms || in_seconds => {
                    if let Some(ms) = duration_ms(reader, &item, &path) {
                        rule.threshold = if in_ms { ms as f64 } else { ms as f64 / 1000.0 };
                    }
                }
                "threshold" => match number(reader, &item, &path) {
                    Some(share) if (0.0..=1.0).contains(&share) => rule.threshold = share,
                    Some(_) => reader.problem(item.span(), &path, "a share from 0 to 1 (0.85 is 85 %)"),
                    None => {}
                },
                "for" => rule.for_ms = duration_ms(reader, &item, &path).unwrap_or(rule.for_ms),
                "window" if rule.window_ms > 0 => match duration_ms(reader, &item, &path) {
                    Some(ms) if ms >= 1_000 => rule.window_ms = ms,
                    Some(_) => reader.problem(item.span(), &path, "at least 1s"),
                    None => {}
                },
                "severity" => match string(reader, &item, &path) {
                    Some(severity @ ("critical" | "warning")) => rule.severity = severity.to_string(),
                    Some(_) => reader.problem(item.span(), &path, "one of: critical, warning"),
                    None => {}
                },
                "enabled" => rule.enabled = boolean(reader, &item, &path),
                _ => {
                    let mut keys = vec!["threshold", "for", "severity", "enabled"];
                    if rule.window_ms > 0 {
                        keys.push("window");
                    }
                    unknown_key(reader, &item, &path, &keys)
                }
            }
        }
    }
    rules
}

/// A cron expression: 5 fields (minute granularity) or 6 (with seconds first), in UTC.
pub fn parse_cron(expression: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expression)
}

pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let digits = text.trim().chars().take_while(char::is_ascii_digit).count();
    let (number, unit) = text.trim().split_at(digits);
    let number: u64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// A size such as `"512MB"`, `"1GB"` or `"64KB"`, in bytes.
pub(super) fn size_bytes(reader: &mut Reader, entry: &Entry, path: &str) -> Option<u64> {
    let text = string(reader, entry, path)?;
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let scale = match unit.to_ascii_uppercase().as_str() {
        "KB" => Some(1 << 10),
        "MB" => Some(1 << 20),
        "GB" => Some(1 << 30),
        _ => None,
    };
    match (number.parse::<u64>().ok(), scale) {
        (Some(n), Some(scale)) if n > 0 => n.checked_mul(scale),
        _ => {
            reader.problem(
                entry.span(),
                path,
                "a size is a whole number with KB, MB or GB (e.g. \"512MB\")",
            );
            None
        }
    }
}

pub(super) fn triggers(reader: &mut Reader, item: &Entry, path: &str) -> Triggers {
    let mut triggers = Triggers::default();
    for entry in table_entries(reader, item, path) {
        let entry_path = format!("{path}.{}", entry.key);
        let list = match entry.key {
            "on_create" => &mut triggers.on_create,
            "on_update" => &mut triggers.on_update,
            "on_delete" => &mut triggers.on_delete,
            _ => {
                unknown_key(reader, &entry, &entry_path, &["on_create", "on_update", "on_delete"]);
                continue;
            }
        };
        for (i, value) in array(reader, &entry, &entry_path).into_iter().enumerate() {
            match value.node() {
                Node::Str(kind) if reader.job_kinds.iter().any(|k| k == kind) => list.push(kind.to_string()),
                Node::Str(kind) => reader.problem(
                    value.span(),
                    &format!("{entry_path}[{i}]"),
                    format!("no job kind '{kind}' is declared under [jobs]"),
                ),
                _ => reader.problem(value.span(), &format!("{entry_path}[{i}]"), "a job kind's name"),
            }
        }
    }
    triggers
}

fn queue(reader: &mut Reader, entry: &Entry) -> Option<QueueSpec> {
    let base = format!("queues.{}", entry.key);
    if !is_identifier(entry.key) || entry.key.starts_with("keel") {
        reader.problem(
            entry.key_span.clone(),
            &base,
            "a queue name is a lowercase identifier not starting with 'keel'",
        );
        return None;
    }
    let mut queue = QueueSpec::new(entry.key);
    let mut prefetch = None;
    for item in table_entries(reader, entry, &base) {
        let path = format!("{base}.{}", item.key);
        match item.key {
            "concurrency" => queue.concurrency = int_in(reader, &item, &path, 0, 1_000).unwrap_or(1) as u32,
            "prefetch" => prefetch = int_in(reader, &item, &path, 1, 10_000).map(|n| n as u32),
            "per_key" => queue.per_key = int_in(reader, &item, &path, 1, 1_000).map(|n| n as u32),
            "rate" => match number(reader, &item, &path) {
                Some(rate) if rate > 0.0 && rate <= 1_000_000.0 => queue.rate = Some(rate),
                Some(_) => reader.problem(item.span(), &path, "jobs per second, above 0"),
                None => {}
            },
            "keep_completed" => {
                queue.keep_completed = int_in(reader, &item, &path, 0, 10_000_000).unwrap_or(0) as u32;
            }
            "keep_failed" => queue.keep_failed = int_in(reader, &item, &path, 0, 10_000_000).unwrap_or(0) as u32,
            "keep_for" => queue.keep_for_ms = duration_ms(reader, &item, &path).unwrap_or(queue.keep_for_ms),
            "attempts" => queue.defaults.attempts = int_in(reader, &item, &path, 1, 100).map(|n| n as u32),
            "backoff" => queue.defaults.backoff_ms = duration_ms(reader, &item, &path),
            "max_backoff" => queue.defaults.max_backoff_ms = duration_ms(reader, &item, &path),
            "timeout" => queue.defaults.timeout_ms = duration_ms(reader, &item, &path).filter(|ms| *ms >= 10),
            _ => unknown_key(
                reader,
                &item,
                &path,
                &[
                    "concurrency",
                    "prefetch",
                    "per_key",
                    "rate",
                    "keep_completed",
                    "keep_failed",
                    "keep_for",
                    "attempts",
                    "backoff",
                    "max_backoff",
                    "timeout",
                ],
            ),
        }
    }
    queue.prefetch = prefetch.unwrap_or(queue.concurrency).max(queue.concurrency);
    Some(queue)
}

const KIND_KEYS: [&str; 22] = [
    "queue",
    "handler",
    "attempts",
    "backoff",
    "max_backoff",
    "timeout",
    "priority",
    "concurrency_key",
    "enqueue_role",
    "cron",
    "catch_up",
    "payload",
    "url",
    "method",
    "headers",
    "body",
    "into",
    "key",
    "map",
    "to",
    "subject",
    "text",
];
const COMMAND_KEYS: [&str; 4] = ["html", "command", "cpu", "memory"];

/// What a handler's keys say, gathered before the handler type is known.
#[derive(Default)]
struct HandlerKeys {
    url: Option<String>,
    method: Option<String>,
    headers: Vec<(String, String)>,
    map: Vec<(String, String)>,
    body: Option<String>,
    into: Option<String>,
    key: Option<String>,
    to: Option<String>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    command: Vec<String>,
    cpu_seconds: Option<u64>,
    memory_bytes: Option<u64>,
    /// (key, line span) of each handler-specific key, to report keys the handler does not take.
    given: Vec<(&'static str, Option<std::ops::Range<usize>>)>,
}

/// Which retry and timeout keys a kind set itself (the rest come from its queue).
#[derive(Default)]
struct Explicit {
    attempts: bool,
    backoff: bool,
    max_backoff: bool,
    timeout: bool,
}

fn kind(reader: &mut Reader, entry: &Entry, roles: &[String], collections: &[&str]) -> Option<(JobKind, Explicit)> {
    let base = format!("jobs.{}", entry.key);
    if !is_identifier(entry.key) || entry.key.starts_with("keel") {
        reader.problem(
            entry.key_span.clone(),
            &base,
            "a job kind's name is a lowercase identifier not starting with 'keel'",
        );
        return None;
    }
    let mut kind = JobKind {
        name: entry.key.to_string(),
        queue: "default".to_string(),
        handler: Handler::Noop,
        attempts: 3,
        backoff_ms: 5_000,
        max_backoff_ms: 3_600_000,
        timeout_ms: 300_000,
        priority: 0,
        concurrency_key: None,
        enqueue_role: None,
        cron: None,
    };
    let mut handler_name = None;
    let mut explicit = Explicit::default();
    let mut keys = HandlerKeys::default();
    let mut schedule = None;
    let mut catch_up = false;
    let mut payload = serde_json::Value::Object(Default::default());
    let mut ok = true;
    for item in table_entries(reader, entry, &base) {
        let path = format!("{base}.{}", item.key);
        let text = |reader: &mut Reader| string(reader, &item, &path).map(str::to_string);
        match item.key {
            "queue" => kind.queue = text(reader).unwrap_or_default(),
            "handler" => handler_name = text(reader).map(|h| (h, item.span())),
            "attempts" => {
                explicit.attempts = true;
                kind.attempts = int_in(reader, &item, &path, 1, 100).unwrap_or(1) as u32;
            }
            "backoff" => {
                explicit.backoff = true;
                kind.backoff_ms = duration_ms(reader, &item, &path).unwrap_or(kind.backoff_ms);
            }
            "max_backoff" => {
                explicit.max_backoff = true;
                kind.max_backoff_ms = duration_ms(reader, &item, &path).unwrap_or(kind.max_backoff_ms);
            }
            "timeout" => match duration_ms(reader, &item, &path).inspect(|_| explicit.timeout = true) {
                Some(ms) if ms >= 10 => kind.timeout_ms = ms,
                Some(_) => reader.problem(item.span(), &path, "at least 10ms"),
                None => {}
            },
            "priority" => kind.priority = int_in(reader, &item, &path, -1_000, 1_000).unwrap_or(0) as i32,
            "concurrency_key" => match text(reader).as_deref() {
                Some("user") => kind.concurrency_key = Some(KeySource::User),
                Some("org") => kind.concurrency_key = Some(KeySource::Org),
                Some(_) => reader.problem(item.span(), &path, "one of: user, org"),
                None => {}
            },
            "enqueue_role" => match text(reader) {
                Some(role) if roles.contains(&role) => kind.enqueue_role = Some(role),
                Some(role) => reader.problem(item.span(), &path, format!("'{role}' is not a declared role")),
                None => {}
            },
            "cron" => match text(reader) {
                Some(expression) => match parse_cron(&expression) {
                    Ok(_) => schedule = Some(expression),
                    Err(error) => {
                        reader.problem(item.span(), &path, format!("not a cron expression: {error}"));
                        ok = false;
                    }
                },
                None => ok = false,
            },
            "catch_up" => catch_up = boolean(reader, &item, &path),
            "payload" => match toml_value(item.value) {
                Some(value @ serde_json::Value::Object(_)) => payload = value,
                _ => reader.problem(item.span(), &path, "a table of values"),
            },
            "url" | "method" | "body" | "into" | "key" | "to" | "subject" | "text" | "html" => {
                let key: &'static str = KIND_KEYS
                    .iter()
                    .chain(COMMAND_KEYS.iter())
                    .find(|k| **k == item.key)
                    .copied()
                    .unwrap_or("url");
                keys.given.push((key, item.span()));
                let value = text(reader);
                match key {
                    "url" => keys.url = value,
                    "method" => keys.method = value,
                    "body" => keys.body = value,
                    "into" => keys.into = value,
                    "key" => keys.key = value,
                    "to" => keys.to = value,
                    "subject" => keys.subject = value,
                    "text" => keys.text = value,
                    _ => keys.html = value,
                }
            }
            "map" => {
                keys.given.push(("map", item.span()));
                for pair in table_entries(reader, &item, &path) {
                    let pair_path = format!("{path}.{}", pair.key);
                    if let Some(field) = string(reader, &pair, &pair_path) {
                        keys.map.push((pair.key.to_string(), field.to_string()));
                    }
                }
            }
            "headers" => {
                keys.given.push(("headers", item.span()));
                for header in table_entries(reader, &item, &path) {
                    let header_path = format!("{path}.{}", header.key);
                    if let Some(value) = string(reader, &header, &header_path) {
                        keys.headers.push((header.key.to_string(), value.to_string()));
                    }
                }
            }
            "command" => {
                keys.given.push(("command", item.span()));
                for (i, part) in array(reader, &item, &path).into_iter().enumerate() {
                    match part.node() {
                        Node::Str(s) => keys.command.push(s.to_string()),
                        _ => reader.problem(part.span(), &format!("{path}[{i}]"), "must be a string"),
                    }
                }
            }
            "cpu" => {
                keys.given.push(("cpu", item.span()));
                keys.cpu_seconds = duration_ms(reader, &item, &path).map(|ms| ms.div_ceil(1000).max(1));
            }
            "memory" => {
                keys.given.push(("memory", item.span()));
                keys.memory_bytes = size_bytes(reader, &item, &path);
            }
            _ => {
                let known: Vec<&str> = KIND_KEYS.iter().chain(COMMAND_KEYS.iter()).copied().collect();
                unknown_key(reader, &item, &path, &known);
            }
        }
    }
    if let Some(expression) = schedule {
        kind.cron = Some(CronSpec {
            schedule: expression,
            catch_up,
            payload,
        });
    }
    let (name, span) = handler_name.unwrap_or(("noop".to_string(), entry.key_span.clone()));
    let path = format!("{base}.handler");
    let takes: &[&str] = match name.as_str() {
        "noop" | "external" | "cleanup" => &[],
        "http" => &["url", "method", "headers", "body", "into", "key", "map"],
        "email" => &["to", "subject", "text", "html"],
        "command" => &["command", "cpu", "memory"],
        other => {
            reader.problem(
                span,
                &path,
                format!("unknown handler '{other}'; expected one of: noop, http, email, command, external, cleanup"),
            );
            return None;
        }
    };
    for (key, key_span) in &keys.given {
        if !takes.contains(key) {
            reader.problem(
                key_span.clone(),
                &format!("{base}.{key}"),
                format!("the {name} handler does not take '{key}'"),
            );
            ok = false;
        }
    }
    let require = |reader: &mut Reader, value: &Option<String>, key: &str| {
        if value.as_deref().is_none_or(str::is_empty) {
            reader.problem(
                span.clone(),
                &format!("{base}.{key}"),
                format!("is required by the {name} handler"),
            );
            false
        } else {
            true
        }
    };
    kind.handler = match name.as_str() {
        "noop" => Handler::Noop,
        "external" => Handler::External,
        "cleanup" => Handler::Cleanup,
        "http" => {
            ok &= require(reader, &keys.url, "url");
            if let Some(url) = &keys.url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                reader.problem(span.clone(), &format!("{base}.url"), "an http:// or https:// URL");
                ok = false;
            }
            let method = keys.method.unwrap_or_else(|| "POST".to_string()).to_ascii_uppercase();
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                reader.problem(
                    span.clone(),
                    &format!("{base}.method"),
                    "one of: GET, POST, PUT, PATCH, DELETE",
                );
                ok = false;
            }
            if let Some(into) = &keys.into
                && !collections.contains(&into.as_str())
            {
                reader.problem(span.clone(), &format!("{base}.into"), format!("no collection '{into}'"));
                ok = false;
            }
            if keys.key.is_some() && keys.into.is_none() {
                reader.problem(span.clone(), &format!("{base}.key"), "only with 'into'");
                ok = false;
            }
            if !keys.map.is_empty() && keys.into.is_none() {
                reader.problem(span.clone(), &format!("{base}.map"), "only with 'into'");
                ok = false;
            }
            Handler::Http {
                url: keys.url.unwrap_or_default(),
                method,
                headers: keys.headers,
                body: keys.body,
                into: keys.into,
                key: keys.key,
                map: keys.map,
            }
        }
        "email" => {
            ok &= require(reader, &keys.to, "to");
            ok &= require(reader, &keys.subject, "subject");
            ok &= require(reader, &keys.text, "text");
            Handler::Email {
                to: keys.to.unwrap_or_default(),
                subject: keys.subject.unwrap_or_default(),
                text: keys.text.unwrap_or_default(),
                html: keys.html,
            }
        }
        _ => {
            if keys.command.is_empty() {
                reader.problem(
                    span.clone(),
                    &format!("{base}.command"),
                    "is required: [program, args…]",
                );
                ok = false;
            }
            Handler::Command {
                program: keys.command,
                cpu_seconds: keys.cpu_seconds,
                memory_bytes: keys.memory_bytes,
            }
        }
    };
    ok.then_some((kind, explicit))
}

fn toml_value(node: super::NodeRef) -> Option<serde_json::Value> {
    Some(match node.node() {
        Node::Str(s) => serde_json::Value::String(s.to_string()),
        Node::Int(i) => serde_json::Value::from(i),
        Node::Float(f) => serde_json::Value::from(f),
        Node::Bool(b) => serde_json::Value::Bool(b),
        Node::Array(items) => serde_json::Value::Array(items.into_iter().filter_map(toml_value).collect()),
        Node::Table(items) => serde_json::Value::Object(
            items
                .into_iter()
                .filter_map(|(k, _, v)| Some((k.to_string(), toml_value(v)?)))
                .collect(),
        ),
        Node::Other => return None,
    })
}

/// Reads `[queues.*]` and `[jobs.*]`; every kind's queue must be declared (or be `default`).
pub(super) fn jobs(
    reader: &mut Reader,
    queue_entries: &[Entry],
    job_entries: &[Entry],
    roles: &[String],
    collections: &[&str],
) -> JobsSpec {
    let mut spec = JobsSpec::default();
    for entry in queue_entries {
        if let Some(queue) = queue(reader, entry) {
            spec.queues.push(queue);
        }
    }
    for entry in job_entries {
        if let Some((mut kind, explicit)) = kind(reader, entry, roles, collections) {
            if let Some(defaults) = spec.queue(&kind.queue).map(|q| q.defaults.clone()) {
                if !explicit.attempts {
                    kind.attempts = defaults.attempts.unwrap_or(kind.attempts);
                }
                if !explicit.backoff {
                    kind.backoff_ms = defaults.backoff_ms.unwrap_or(kind.backoff_ms);
                }
                if !explicit.max_backoff {
                    kind.max_backoff_ms = defaults.max_backoff_ms.unwrap_or(kind.max_backoff_ms);
                }
                if !explicit.timeout {
                    kind.timeout_ms = defaults.timeout_ms.unwrap_or(kind.timeout_ms);
                }
            }
            if kind.queue != "default" && spec.queue(&kind.queue).is_none() {
                reader.problem(
                    entry.key_span.clone(),
                    &format!("jobs.{}.queue", kind.name),
                    format!("no queue '{}' is declared under [queues]", kind.queue),
                );
                continue;
            }
            if kind.handler == Handler::External && spec.queue(&kind.queue).map_or(10, |q| q.concurrency) > 0 {
                reader.problem(
                    entry.key_span.clone(),
                    &format!("jobs.{}.queue", kind.name),
                    format!(
                        "external jobs need a queue that only external workers serve: declare [queues.{}] with concurrency = 0",
                        if kind.queue == "default" { "<name>" } else { kind.queue.as_str() }
                    ),
                );
                continue;
            }
            spec.kinds.push(kind);
        }
    }
    spec
}

/// An http handler's `key` must be a unique field of its `into` collection.
pub(super) fn check_upsert_keys(reader: &mut Reader, collections: &[Collection], spec: &JobsSpec) {
    for kind in &spec.kinds {
        if let Handler::Http {
            into: Some(into), map, ..
        } = &kind.handler
            && let Some(collection) = collections.iter().find(|c| &c.name == into)
        {
            for (from, field) in map {
                if collection.field(field).is_none() {
                    reader.problem(
                        None,
                        &format!("jobs.{}.map.{from}", kind.name),
                        format!("{into} has no field '{field}'"),
                    );
                }
            }
        }
        if let Handler::Http {
            into: Some(into),
            key: Some(key),
            ..
        } = &kind.handler
            && let Some(collection) = collections.iter().find(|c| &c.name == into)
            && !collection.field(key).is_some_and(|f| f.unique)
        {
            reader.problem(
                None,
                &format!("jobs.{}.key", kind.name),
                format!("'{key}' must be a unique field of {into}"),
            );
        }
    }
}
