//! The blocking half of an import: raw rows of the file turned into validated rows.

use std::io::Read;

use chrono::Utc;
use keel_query::value::truncate_micros;
use keel_query::{Patterns, SqlValue, WriteMode, validate_record};
use keel_spec::{Collection, FieldKind, RelationTarget, SYSTEM_FIELDS};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::read::{CsvReader, LineReader, Raw, RawRow};
use super::{Chunk, Format, Limits, Options, Prepared, RowError};
use crate::http::error::ApiError;

/// Turns the raw rows of the file into validated rows (the blocking half).
pub(super) struct Parser<'a> {
    collection: &'a Collection,
    patterns: &'a Patterns,
    options: &'a Options,
    limits: Limits,
}

/// Where a CSV column goes.
#[derive(Clone)]
pub(super) enum Target {
    Field(String),
    Ignore,
}

impl<'a> Parser<'a> {
    pub(super) fn new(
        collection: &'a Collection,
        patterns: &'a Patterns,
        options: &'a Options,
        limits: Limits,
    ) -> Parser<'a> {
        Parser {
            collection,
            patterns,
            options,
            limits,
        }
    }

    /// The field a column maps to: the mapping, else the field of that name (case and
    /// surrounding spaces ignored), else nothing for system fields; `Err` for unknown ones.
    pub(super) fn target(&self, column: &str) -> Result<Target, ()> {
        if let Some((_, field)) = self.options.mapping.iter().find(|(c, _)| c == column) {
            return Ok(field.clone().map_or(Target::Ignore, Target::Field));
        }
        let name = column.trim();
        if let Some(field) = self
            .collection
            .fields
            .iter()
            .find(|f| f.name == name || f.name.eq_ignore_ascii_case(name))
        {
            return Ok(Target::Field(field.name.clone()));
        }
        if SYSTEM_FIELDS.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            // An export read back in: imported records get new ids and times.
            return Ok(Target::Ignore);
        }
        Err(())
    }

    pub(super) fn run(&self, input: impl Read, sender: &mpsc::Sender<Result<Chunk, ApiError>>) -> Result<(), ApiError> {
        let mut chunk = Chunk {
            rows: Vec::with_capacity(self.limits.batch_rows),
            rejected: vec![],
            read: 0,
        };
        let mut row_number = 0u64;
        let emit = |chunk: &mut Chunk, force: bool| -> bool {
            if !force && chunk.rows.len() < self.limits.batch_rows && chunk.rejected.len() < self.limits.batch_rows {
                return true;
            }
            let full = std::mem::replace(
                chunk,
                Chunk {
                    rows: Vec::with_capacity(self.limits.batch_rows),
                    rejected: vec![],
                    read: 0,
                },
            );
            // The writer stopped (it failed): stop reading.
            sender.blocking_send(Ok(full)).is_ok()
        };
        match self.options.format {
            Format::Csv => {
                let mut reader = CsvReader::new(input, self.options.delimiter, self.limits.max_row_bytes, 4_096);
                let header = match reader.next_row().map_err(read_error)? {
                    None => {
                        return Err(ApiError::new(
                            "invalid_import",
                            "the file is empty: a CSV import needs a header row",
                        ));
                    }
                    Some(RawRow {
                        raw: Raw::Fields(fields),
                        ..
                    }) => fields,
                    Some(_) => {
                        return Err(ApiError::new(
                            "invalid_import",
                            "the header row is larger than the row limit",
                        ));
                    }
                };
                let targets = self.header(&header)?;
                while let Some(raw) = reader.next_row().map_err(read_error)? {
                    row_number += 1;
                    chunk.read += 1;
                    match self.csv_row(row_number, raw, &targets) {
                        Ok(prepared) => chunk.rows.push(prepared),
                        Err(errors) => chunk.rejected.push(errors),
                    }
                    if !emit(&mut chunk, false) {
                        return Ok(());
                    }
                }
            }
            Format::Ndjson => {
                let mut reader = LineReader::new(input, self.limits.max_row_bytes);
                while let Some(raw) = reader.next_row().map_err(read_error)? {
                    row_number += 1;
                    chunk.read += 1;
                    match self.json_row(row_number, raw) {
                        Ok(prepared) => chunk.rows.push(prepared),
                        Err(errors) => chunk.rejected.push(errors),
                    }
                    if !emit(&mut chunk, false) {
                        return Ok(());
                    }
                }
            }
        }
        emit(&mut chunk, true);
        Ok(())
    }

    /// Maps the header's columns, refusing unknown columns and missing required fields.
    pub(super) fn header(&self, header: &[Vec<u8>]) -> Result<Vec<Target>, ApiError> {
        let mut targets = Vec::with_capacity(header.len());
        let mut unknown = vec![];
        for raw in header {
            let column = String::from_utf8_lossy(raw).into_owned();
            match self.target(&column) {
                Ok(target) => targets.push(target),
                Err(()) => {
                    unknown.push(column);
                    targets.push(Target::Ignore);
                }
            }
        }
        if !unknown.is_empty() {
            return Err(ApiError::new(
                "invalid_import",
                format!(
                    "the header has columns that are not fields of {}: {} (map them to a field, or to nothing to ignore them)",
                    self.collection.name,
                    unknown.join(", ")
                ),
            )
            .with_details(json!({ "unknown_columns": unknown })));
        }
        let mut seen: Vec<&str> = vec![];
        for target in &targets {
            if let Target::Field(name) = target {
                if seen.contains(&name.as_str()) {
                    return Err(
                        ApiError::new("invalid_import", format!("two columns map to the field '{name}'"))
                            .with_details(json!({ "field": name })),
                    );
                }
                seen.push(name);
            }
        }
        let missing: Vec<&str> = self
            .collection
            .fields
            .iter()
            .filter(|f| f.required && f.default.is_none() && !seen.contains(&f.name.as_str()))
            .map(|f| f.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::new(
                "invalid_import",
                format!("the header lacks required fields: {}", missing.join(", ")),
            )
            .with_details(json!({ "missing_fields": missing })));
        }
        Ok(targets)
    }

    pub(super) fn csv_row(&self, row: u64, raw: RawRow, targets: &[Target]) -> Result<Prepared, Vec<RowError>> {
        let line = raw.line;
        let reject = |column: Option<&str>, code: &str, message: String| {
            vec![RowError {
                row,
                line,
                column: column.map(str::to_string),
                code: code.to_string(),
                message,
            }]
        };
        let fields = match raw.raw {
            Raw::Fields(fields) => fields,
            Raw::TooLarge | Raw::Line(_) => {
                return Err(reject(
                    None,
                    "row_too_large",
                    format!("the row is longer than {} bytes", self.limits.max_row_bytes),
                ));
            }
        };
        if fields.len() != targets.len() {
            return Err(reject(
                None,
                "wrong_field_count",
                format!("the row has {} fields; the header has {}", fields.len(), targets.len()),
            ));
        }
        let mut body = Map::new();
        let mut errors = vec![];
        for (bytes, target) in fields.into_iter().zip(targets) {
            let Target::Field(name) = target else { continue };
            let text = match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(_) => {
                    errors.extend(reject(
                        Some(name),
                        "invalid_encoding",
                        "the value is not valid UTF-8".into(),
                    ));
                    continue;
                }
            };
            let field = self.collection.field(name).expect("targets are fields");
            match cell_value(&field.kind, text) {
                Ok(Some(value)) => {
                    body.insert(name.clone(), value);
                }
                Ok(None) => {}
                Err((code, message)) => errors.extend(reject(Some(name), code, message)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        self.prepare(row, line, body)
    }

    pub(super) fn json_row(&self, row: u64, raw: RawRow) -> Result<Prepared, Vec<RowError>> {
        let line = raw.line;
        let reject = |code: &str, message: String| {
            vec![RowError {
                row,
                line,
                column: None,
                code: code.to_string(),
                message,
            }]
        };
        let bytes = match raw.raw {
            Raw::Line(bytes) => bytes,
            _ => {
                return Err(reject(
                    "row_too_large",
                    format!("the line is longer than {} bytes", self.limits.max_row_bytes),
                ));
            }
        };
        let object = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err(reject("invalid_json", "each line must be a JSON object".into())),
            Err(error) => return Err(reject("invalid_json", format!("the line is not valid JSON: {error}"))),
        };
        let mut body = Map::new();
        for (key, value) in object {
            match self.target(&key) {
                Ok(Target::Field(name)) => {
                    body.insert(name, value);
                }
                Ok(Target::Ignore) => {}
                // Unknown keys reach validation, which names them.
                Err(()) => {
                    body.insert(key, value);
                }
            }
        }
        self.prepare(row, line, body)
    }

    /// Validates a row like a create; relation values that are not ids become lookups.
    pub(super) fn prepare(&self, row: u64, line: u64, mut body: Map<String, Value>) -> Result<Prepared, Vec<RowError>> {
        let mut lookups = vec![];
        for (index, field) in self.collection.fields.iter().enumerate() {
            let FieldKind::Relation { to, .. } = &field.kind else {
                continue;
            };
            let Some(Value::String(given)) = body.get(&field.name) else {
                continue;
            };
            if Uuid::parse_str(given).is_ok() {
                continue;
            }
            let by_key = field.lookup.is_some() || matches!(to, RelationTarget::Users);
            if by_key {
                let key = if matches!(to, RelationTarget::Users) {
                    given.trim().to_lowercase()
                } else {
                    given.clone()
                };
                lookups.push((index, key));
                body.insert(field.name.clone(), Value::String(Uuid::nil().to_string()));
            }
        }
        let now = truncate_micros(Utc::now());
        let values =
            validate_record(self.collection, self.patterns, &body, WriteMode::Create, now).map_err(|errors| {
                errors
                    .into_iter()
                    .map(|e| RowError {
                        row,
                        line,
                        column: Some(e.field),
                        code: e.code.to_string(),
                        message: e.message,
                    })
                    .collect::<Vec<_>>()
            })?;
        let mut ordered = vec![SqlValue::Null; self.collection.fields.len()];
        for (name, value) in values {
            if let Some(index) = self.collection.fields.iter().position(|f| f.name == name) {
                ordered[index] = value;
            }
        }
        Ok(Prepared {
            row,
            line,
            values: ordered,
            lookups,
        })
    }
}

pub(super) fn read_error(error: std::io::Error) -> ApiError {
    // The body stream reports its own limit as an I/O error carrying an ApiError message.
    match error.get_ref().and_then(|inner| inner.downcast_ref::<BodyTooLarge>()) {
        Some(limit) => ApiError::new(
            "payload_too_large",
            format!("the file is larger than {} bytes", limit.0),
        ),
        None => ApiError::new("invalid_import", format!("the file could not be read: {error}")),
    }
}

/// The error a body reader gives when the upload passes its size limit.
#[derive(Debug)]
pub struct BodyTooLarge(pub u64);

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the body is larger than {} bytes", self.0)
    }
}

impl std::error::Error for BodyTooLarge {}

/// A CSV cell as the JSON value validation expects. Empty cells are absent (the field's
/// default applies, or it stays empty).
pub(super) fn cell_value(kind: &FieldKind, text: String) -> Result<Option<Value>, (&'static str, String)> {
    if text.is_empty() {
        return Ok(None);
    }
    let trimmed = text.trim();
    Ok(Some(match kind {
        FieldKind::Integer { .. } => match trimmed.parse::<i64>() {
            Ok(n) => Value::from(n),
            Err(_) => return Err(("invalid_type", format!("'{}' is not a whole number", clip(&text)))),
        },
        FieldKind::Number { .. } => match trimmed.parse::<f64>() {
            Ok(n) if n.is_finite() => Value::from(n),
            _ => return Err(("invalid_type", format!("'{}' is not a number", clip(&text)))),
        },
        FieldKind::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" => Value::Bool(true),
            "false" | "f" | "no" | "n" | "0" => Value::Bool(false),
            _ => return Err(("invalid_type", format!("'{}' is not true or false", clip(&text)))),
        },
        FieldKind::File { .. } => {
            return Err(("read_only_field", "file fields are uploaded, not imported".into()));
        }
        FieldKind::Json => match serde_json::from_str(&text) {
            Ok(value) => value,
            Err(error) => return Err(("invalid_json", format!("the value is not valid JSON: {error}"))),
        },
        FieldKind::Relation { .. } | FieldKind::Date | FieldKind::Datetime => Value::String(trimmed.to_string()),
        FieldKind::Text { .. } | FieldKind::Select { .. } => Value::String(text),
    }))
}

/// The start of a long value, for messages.
pub(super) fn clip(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
