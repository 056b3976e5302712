//! A field: its name, type and options, and its default value.

use super::{Entry, Node, Reader, array, boolean, entries, int_in, is_identifier, jobs, number, string, unknown_key};
use crate::model::*;

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
pub(super) fn field(reader: &mut Reader, entry: &Entry, base: &str, all_names: &[&str]) -> Option<Field> {
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
