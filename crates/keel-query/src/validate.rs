//! Validates a record body (JSON) against a collection and turns it into typed column values.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use keel_spec::{Collection, DefaultValue, FieldKind, SYSTEM_FIELDS};
use regex::Regex;
use serde::Serialize;
use uuid::Uuid;

use crate::value::{SqlValue, parse_date, parse_datetime};

/// One failing field, listed in the 400 response's `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    Create,
    Update,
}

/// Compiled text patterns, built once per schema.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    by_field: HashMap<(String, String), Regex>,
}

impl Patterns {
    pub fn new(collections: &[Collection]) -> Patterns {
        let mut by_field = HashMap::new();
        for collection in collections {
            for field in &collection.fields {
                if let FieldKind::Text {
                    pattern: Some(pattern), ..
                } = &field.kind
                    && let Ok(regex) = Regex::new(&format!("^(?:{pattern})$"))
                {
                    by_field.insert((collection.name.clone(), field.name.clone()), regex);
                }
            }
        }
        Patterns { by_field }
    }

    fn get(&self, collection: &str, field: &str) -> Option<&Regex> {
        self.by_field.get(&(collection.to_string(), field.to_string()))
    }
}

fn error(field: &str, code: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        code,
        message: message.into(),
    }
}

/// Validates `body` for a create or an update. On create, defaults fill missing fields and
/// required fields must be present. Every failing field is reported.
pub fn validate_record(
    collection: &Collection,
    patterns: &Patterns,
    body: &serde_json::Map<String, serde_json::Value>,
    mode: WriteMode,
    now: DateTime<Utc>,
) -> Result<Vec<(String, SqlValue)>, Vec<FieldError>> {
    let mut errors = vec![];
    let mut values = vec![];
    for key in body.keys() {
        if SYSTEM_FIELDS.contains(&key.as_str()) || key == "expand" {
            errors.push(error(key, "read_only_field", format!("'{key}' is set by the server")));
        } else if collection.field(key).is_none() {
            errors.push(error(
                key,
                "unknown_field",
                format!("'{key}' is not a field of {}", collection.name),
            ));
        }
    }
    for field in &collection.fields {
        let name = field.name.as_str();
        let value = match body.get(name) {
            Some(value) => value,
            None => {
                if mode == WriteMode::Create {
                    match &field.default {
                        Some(default) => values.push((field.name.clone(), default_value(&field.kind, default, now))),
                        None if field.required => errors.push(error(name, "required", format!("'{name}' is required"))),
                        None => {}
                    }
                }
                continue;
            }
        };
        if value.is_null() {
            if field.required {
                errors.push(error(
                    name,
                    "required",
                    format!("'{name}' is required and cannot be null"),
                ));
            } else {
                values.push((field.name.clone(), SqlValue::Null));
            }
            continue;
        }
        match convert(collection, patterns, name, &field.kind, value) {
            Ok(v) => values.push((field.name.clone(), v)),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(values) } else { Err(errors) }
}

fn default_value(kind: &FieldKind, default: &DefaultValue, now: DateTime<Utc>) -> SqlValue {
    match (kind, default) {
        (FieldKind::Date, DefaultValue::Now) => SqlValue::Date(now.date_naive()),
        (_, DefaultValue::Now) => SqlValue::Datetime(now),
        (FieldKind::Date, DefaultValue::Text(s)) => parse_date(s).map(SqlValue::Date).unwrap_or(SqlValue::Null),
        (FieldKind::Datetime, DefaultValue::Text(s)) => {
            parse_datetime(s).map(SqlValue::Datetime).unwrap_or(SqlValue::Null)
        }
        (_, DefaultValue::Text(s)) => SqlValue::Text(s.clone()),
        (_, DefaultValue::Integer(i)) => SqlValue::Int(*i),
        (_, DefaultValue::Number(f)) => SqlValue::Float(*f),
        (_, DefaultValue::Bool(b)) => SqlValue::Bool(*b),
    }
}

/// Converts one JSON value to the field's SQL value, or says why it cannot.
pub fn convert(
    collection: &Collection,
    patterns: &Patterns,
    name: &str,
    kind: &FieldKind,
    value: &serde_json::Value,
) -> Result<SqlValue, FieldError> {
    use serde_json::Value;
    let type_error = |expected: &str| error(name, "invalid_type", format!("'{name}' must be {expected}"));
    match kind {
        FieldKind::Text { min, max, .. } => {
            let Value::String(text) = value else {
                return Err(type_error("a string"));
            };
            let length = text.chars().count();
            if length > *max as usize {
                return Err(error(
                    name,
                    "too_long",
                    format!("'{name}' is longer than {max} characters"),
                ));
            }
            if let Some(min) = min
                && length < *min as usize
            {
                return Err(error(
                    name,
                    "too_short",
                    format!("'{name}' is shorter than {min} characters"),
                ));
            }
            if text.contains('\0') {
                return Err(error(
                    name,
                    "invalid_text",
                    format!("'{name}' contains a NUL character"),
                ));
            }
            if let Some(regex) = patterns.get(&collection.name, name)
                && !regex.is_match(text)
            {
                return Err(error(
                    name,
                    "pattern_mismatch",
                    format!("'{name}' does not match the required pattern"),
                ));
            }
            Ok(SqlValue::Text(text.clone()))
        }
        FieldKind::Integer { min, max } => {
            let Some(number) = value.as_i64() else {
                return Err(type_error("an integer"));
            };
            if min.is_some_and(|m| number < m) || max.is_some_and(|m| number > m) {
                return Err(error(
                    name,
                    "out_of_range",
                    out_of_range(name, min.map(|m| m as f64), max.map(|m| m as f64)),
                ));
            }
            Ok(SqlValue::Int(number))
        }
        FieldKind::Number { min, max } => {
            let Some(number) = value.as_f64().filter(|f| f.is_finite()) else {
                return Err(type_error("a number"));
            };
            if min.is_some_and(|m| number < m) || max.is_some_and(|m| number > m) {
                return Err(error(name, "out_of_range", out_of_range(name, *min, *max)));
            }
            Ok(SqlValue::Float(number))
        }
        FieldKind::Bool => value
            .as_bool()
            .map(SqlValue::Bool)
            .ok_or_else(|| type_error("true or false")),
        FieldKind::Date => value
            .as_str()
            .and_then(parse_date)
            .map(SqlValue::Date)
            .ok_or_else(|| type_error("a date (YYYY-MM-DD)")),
        FieldKind::Datetime => value
            .as_str()
            .and_then(parse_datetime)
            .map(SqlValue::Datetime)
            .ok_or_else(|| type_error("a datetime (RFC 3339, e.g. 2026-01-31T12:00:00Z)")),
        FieldKind::Select { values } => {
            let Value::String(text) = value else {
                return Err(type_error("a string"));
            };
            if values.iter().any(|v| v == text) {
                Ok(SqlValue::Text(text.clone()))
            } else {
                Err(error(
                    name,
                    "invalid_choice",
                    format!("'{name}' must be one of: {}", values.join(", ")),
                ))
            }
        }
        FieldKind::Json => Ok(SqlValue::Json(value.clone())),
        FieldKind::File { .. } => Err(error(
            name,
            "read_only_field",
            format!("'{name}' is a file field: upload files to …/{{id}}/files/{name}"),
        )),
        FieldKind::Relation { .. } => value
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .map(SqlValue::Uuid)
            .ok_or_else(|| type_error("an id (a UUID string)")),
    }
}

fn out_of_range(name: &str, min: Option<f64>, max: Option<f64>) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("'{name}' must be between {a} and {b}"),
        (Some(a), None) => format!("'{name}' must be at least {a}"),
        (None, Some(b)) => format!("'{name}' must be at most {b}"),
        (None, None) => format!("'{name}' is out of range"),
    }
}
