//! Imports (B1–B3): a CSV or NDJSON stream read on a blocking thread, each row checked like
//! a create (the same validation, relation and access checks), and the valid rows written in
//! batches of [`Limits::batch_rows`] with `COPY` (PostgreSQL) or prepared inserts (SQLite).
//! Memory is bounded by two batches in flight and the per-row bound, not by the file.
//!
//! Every imported record carries the import's `batch` id, so a whole import can be listed or
//! deleted in one call. In `atomic` mode nothing is written unless every row is valid; in
//! `skip` mode each batch commits with the rows that passed. Either way the report names the
//! row, line, column and reason of each rejected row (the first [`Limits::max_errors`], with
//! a count of all).

pub mod read;

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;

use axum::body::Bytes;
use chrono::Utc;
use keel_query::value::truncate_micros;
use keel_query::{Builder, Caller, Frag, Patterns, Schema, Scope, SqlValue, WriteMode, validate_record};
use keel_spec::{Action, Collection, FieldKind, RelationTarget, SYSTEM_FIELDS};
use keel_store::records::{Actor, WriteScope};
use keel_store::{Db, StoreError, Tx};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::error::ApiError;
use read::{CsvReader, LineReader, Raw, RawRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Csv,
    Ndjson,
}

/// What an invalid row does to the import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// All or nothing: one invalid row and nothing is written (the report lists them all).
    Atomic,
    /// Invalid rows are skipped and reported; the others are written.
    Skip,
}

/// How to read the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    pub format: Format,
    pub mode: Mode,
    /// Column (CSV header or NDJSON key) to field; `None` ignores the column. Columns not
    /// listed map to the field of the same name.
    #[serde(default)]
    pub mapping: Vec<(String, Option<String>)>,
    /// The CSV delimiter (`,` by default; `;` and tab are common).
    #[serde(default = "comma")]
    pub delimiter: u8,
}

fn comma() -> u8 {
    b','
}

/// Bounds on one import.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Limits {
    /// A row longer than this is rejected (and skipped) without being held in memory.
    pub max_row_bytes: usize,
    /// Rejected rows listed in the report (all are counted).
    pub max_errors: usize,
    /// Rows per written batch.
    pub batch_rows: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_row_bytes: 1 << 20,
            max_errors: 1_000,
            batch_rows: 10_000,
        }
    }
}

impl Limits {
    /// The limits the configuration sets.
    pub fn of(config: &crate::config::LimitsSection) -> Limits {
        Limits {
            max_row_bytes: config.import_max_row_bytes,
            max_errors: config.import_max_errors,
            ..Limits::default()
        }
    }
}

/// Rows read, written and rejected so far (the progress of a background import).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub read: u64,
    pub written: u64,
    pub rejected: u64,
}

/// Why one row was not written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowError {
    /// The data row, from 1 (the CSV header is not counted).
    pub row: u64,
    /// The line of the file the row starts on, from 1.
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    pub code: String,
    pub message: String,
}

/// The answer to an import.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub batch: Uuid,
    pub mode: Mode,
    #[serde(flatten)]
    pub counts: Counts,
    /// Whether the written rows are committed (`false` when an atomic import found errors).
    pub committed: bool,
    pub errors: Vec<RowError>,
    /// More rows were rejected than `errors` lists.
    pub errors_truncated: bool,
}

/// Reads a byte stream fed by an async task, for the blocking import reader.
pub struct ChannelReader {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(receiver: mpsc::Receiver<io::Result<Bytes>>) -> ChannelReader {
        ChannelReader {
            receiver,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(error)) => return Err(error),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Where an import writes and who makes it.
pub struct Destination<'a> {
    pub db: &'a Db,
    pub schema: Arc<Schema>,
    pub patterns: Arc<Patterns>,
    pub collection: String,
    pub scope: Scope,
    pub org: Option<Uuid>,
    pub caller: Caller,
    pub actor: Actor,
}

/// A row that passed validation, waiting for its relations and its write.
struct Prepared {
    row: u64,
    line: u64,
    /// One value per declared field, in order.
    values: Vec<SqlValue>,
    /// Relation fields given by lookup key instead of id: (field index, key).
    lookups: Vec<(usize, String)>,
}

/// What the reading thread hands the writer.
struct Chunk {
    rows: Vec<Prepared>,
    /// The rejected rows, each with its errors (one per bad column).
    rejected: Vec<Vec<RowError>>,
    read: u64,
}

/// Checks a mapping against the collection before anything is read.
pub fn check_mapping(collection: &Collection, mapping: &[(String, Option<String>)]) -> Result<(), ApiError> {
    for (column, field) in mapping {
        if let Some(field) = field
            && collection.field(field).is_none()
        {
            return Err(ApiError::new(
                "invalid_import",
                format!(
                    "the mapping sends '{column}' to '{field}', which is not a field of {}",
                    collection.name
                ),
            )
            .with_details(json!({ "column": column, "field": field })));
        }
    }
    Ok(())
}

/// Runs an import from `input` to the end. `progress` is told the counts after each batch.
pub async fn run(
    destination: &Destination<'_>,
    input: impl Read + Send + 'static,
    options: Options,
    limits: Limits,
    progress: &mut (dyn FnMut(Counts) + Send),
) -> Result<Report, ApiError> {
    let schema = destination.schema.clone();
    let collection = schema
        .app
        .collection(&destination.collection)
        .ok_or_else(|| ApiError::new("collection_not_found", "no such collection"))?;
    check_mapping(collection, &options.mapping)?;
    let (sender, mut receiver) = mpsc::channel::<Result<Chunk, ApiError>>(2);
    let reader = {
        let schema = schema.clone();
        let patterns = destination.patterns.clone();
        let name = destination.collection.clone();
        let options = options.clone();
        tokio::task::spawn_blocking(move || {
            let collection = schema.app.collection(&name).expect("checked above");
            let parser = Parser::new(collection, &patterns, &options, limits);
            if let Err(error) = parser.run(input, &sender) {
                let _ = sender.blocking_send(Err(error));
            }
        })
    };
    let mut writer = Writer::new(destination, collection, options.mode, limits);
    let mut outcome = Ok(());
    while let Some(message) = receiver.recv().await {
        match message {
            Ok(chunk) => {
                if let Err(error) = writer.write(chunk).await {
                    outcome = Err(error);
                    break;
                }
                progress(writer.report.counts);
            }
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
    }
    drop(receiver);
    let _ = reader.await;
    match outcome {
        Ok(()) => writer.finish().await,
        Err(error) => Err(writer.failed(error)),
    }
}

/// Turns the raw rows of the file into validated rows (the blocking half).
struct Parser<'a> {
    collection: &'a Collection,
    patterns: &'a Patterns,
    options: &'a Options,
    limits: Limits,
}

/// Where a CSV column goes.
#[derive(Clone)]
enum Target {
    Field(String),
    Ignore,
}

impl<'a> Parser<'a> {
    fn new(collection: &'a Collection, patterns: &'a Patterns, options: &'a Options, limits: Limits) -> Parser<'a> {
        Parser {
            collection,
            patterns,
            options,
            limits,
        }
    }

    /// The field a column maps to: the mapping, else the field of that name (case and
    /// surrounding spaces ignored), else nothing for system fields; `Err` for unknown ones.
    fn target(&self, column: &str) -> Result<Target, ()> {
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

    fn run(&self, input: impl Read, sender: &mpsc::Sender<Result<Chunk, ApiError>>) -> Result<(), ApiError> {
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
    fn header(&self, header: &[Vec<u8>]) -> Result<Vec<Target>, ApiError> {
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

    fn csv_row(&self, row: u64, raw: RawRow, targets: &[Target]) -> Result<Prepared, Vec<RowError>> {
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

    fn json_row(&self, row: u64, raw: RawRow) -> Result<Prepared, Vec<RowError>> {
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
    fn prepare(&self, row: u64, line: u64, mut body: Map<String, Value>) -> Result<Prepared, Vec<RowError>> {
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

fn read_error(error: std::io::Error) -> ApiError {
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
fn cell_value(kind: &FieldKind, text: String) -> Result<Option<Value>, (&'static str, String)> {
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
fn clip(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// The async half: resolves relations and writes batches.
struct Writer<'d, 'a> {
    destination: &'d Destination<'a>,
    collection: &'d Collection,
    mode: Mode,
    limits: Limits,
    report: Report,
    /// The open transaction (the whole import in atomic mode, one batch in skip mode).
    tx: Option<Tx>,
    columns: Vec<String>,
    /// Lookup keys and given ids already resolved: (field index, key) → id (`None`: no such record).
    resolved: HashMap<(usize, String), Option<Uuid>>,
    now: chrono::DateTime<Utc>,
}

/// Resolved entries kept between batches (then the cache starts over).
const MAX_RESOLVED: usize = 200_000;

impl<'d, 'a> Writer<'d, 'a> {
    fn new(destination: &'d Destination<'a>, collection: &'d Collection, mode: Mode, limits: Limits) -> Writer<'d, 'a> {
        let mut columns = vec!["id".to_string()];
        if !collection.global {
            columns.push("org".into());
        }
        columns.extend(["created_at", "updated_at", "version", "batch"].map(String::from));
        columns.extend(collection.fields.iter().map(|f| f.name.clone()));
        Writer {
            destination,
            collection,
            mode,
            limits,
            report: Report {
                batch: Uuid::now_v7(),
                mode,
                counts: Counts::default(),
                committed: false,
                errors: vec![],
                errors_truncated: false,
            },
            tx: None,
            columns,
            resolved: HashMap::new(),
            now: truncate_micros(Utc::now()),
        }
    }

    fn builder(&self) -> Builder<'d> {
        Builder {
            schema: &self.destination.schema,
            collection: self.collection,
            dialect: self.destination.db.dialect(),
            caller: &self.destination.caller,
            scope: self.destination.scope,
        }
    }

    /// Counts a rejected row and lists its errors (up to the report's cap).
    fn reject_row(&mut self, errors: Vec<RowError>) {
        self.report.counts.rejected += 1;
        for error in errors {
            if self.report.errors.len() < self.limits.max_errors {
                self.report.errors.push(error);
            } else {
                self.report.errors_truncated = true;
            }
        }
    }

    fn reject(&mut self, error: RowError) {
        self.reject_row(vec![error]);
    }

    /// Whether rows are still being written (an atomic import stops at its first invalid row).
    fn writing(&self) -> bool {
        self.mode == Mode::Skip || self.report.counts.rejected == 0
    }

    async fn write(&mut self, chunk: Chunk) -> Result<(), ApiError> {
        self.report.counts.read += chunk.read;
        for errors in chunk.rejected {
            self.reject_row(errors);
        }
        if !self.writing() || chunk.rows.is_empty() {
            return Ok(());
        }
        if self.tx.is_none() {
            self.tx = Some(self.destination.db.begin().await?);
        }
        let rows = self.resolve(chunk.rows).await?;
        if !self.writing() || rows.is_empty() {
            return self.end_batch(0).await;
        }
        let written = self.insert(rows).await?;
        self.report.counts.written += written;
        self.end_batch(written).await
    }

    /// In skip mode, commits the batch with its activity entry.
    async fn end_batch(&mut self, written: u64) -> Result<(), ApiError> {
        if self.mode != Mode::Skip {
            return Ok(());
        }
        let Some(mut tx) = self.tx.take() else { return Ok(()) };
        if written > 0 {
            log_import(self.destination, self.collection, self.report.batch, &mut tx, written).await?;
        }
        tx.commit().await?;
        if written > 0 {
            self.report.committed = true;
        }
        Ok(())
    }
}

/// The activity entry of an import's transaction: one row with the count written.
async fn log_import(
    destination: &Destination<'_>,
    collection: &Collection,
    batch: Uuid,
    tx: &mut Tx,
    written: u64,
) -> Result<(), ApiError> {
    {
        let builder = Builder {
            schema: &destination.schema,
            collection,
            dialect: destination.db.dialect(),
            caller: &destination.caller,
            scope: destination.scope,
        };
        let scope = WriteScope {
            builder: &builder,
            org: destination.org,
            actor: &destination.actor,
        };
        let batch = batch.to_string();
        keel_store::records::log_activity(
            tx,
            &scope,
            &batch,
            "import",
            json!({ "batch": batch, "rows": written }),
            written as i64,
        )
        .await?;
        Ok(())
    }
}

impl Writer<'_, '_> {
    /// Resolves lookup keys to ids and checks given ids, rejecting rows whose related
    /// record does not exist in this org.
    async fn resolve(&mut self, rows: Vec<Prepared>) -> Result<Vec<Prepared>, ApiError> {
        if self.resolved.len() > MAX_RESOLVED {
            self.resolved.clear();
        }
        // What is not known yet, per field.
        let mut wanted: HashMap<usize, Vec<(String, bool)>> = HashMap::new();
        for row in &rows {
            for (index, key) in &row.lookups {
                if !self.resolved.contains_key(&(*index, key.clone())) {
                    wanted.entry(*index).or_default().push((key.clone(), true));
                }
            }
            for (index, field) in self.collection.fields.iter().enumerate() {
                if !matches!(field.kind, FieldKind::Relation { .. }) || row.lookups.iter().any(|(i, _)| *i == index) {
                    continue;
                }
                if let SqlValue::Uuid(id) = &row.values[index] {
                    let key = id.to_string();
                    if !self.resolved.contains_key(&(index, key.clone())) {
                        wanted.entry(index).or_default().push((key, false));
                    }
                }
            }
        }
        for (index, mut keys) in wanted {
            keys.sort();
            keys.dedup();
            for part in keys.chunks(1_000) {
                let (by_key, by_id): (Vec<_>, Vec<_>) = part.iter().partition(|(_, lookup)| *lookup);
                for (list, lookup) in [(by_key, true), (by_id, false)] {
                    if list.is_empty() {
                        continue;
                    }
                    let found = self.find(index, list.iter().map(|(k, _)| k.as_str()), lookup).await?;
                    for (key, _) in list {
                        let id = found.get(key.as_str()).copied();
                        self.resolved.insert((index, key.clone()), id);
                    }
                }
            }
        }
        let mut kept = Vec::with_capacity(rows.len());
        for mut row in rows {
            let mut missing = None;
            for (index, field) in self.collection.fields.iter().enumerate() {
                if !matches!(field.kind, FieldKind::Relation { .. }) {
                    continue;
                }
                let key = match row.lookups.iter().find(|(i, _)| *i == index) {
                    Some((_, key)) => key.clone(),
                    None => match &row.values[index] {
                        SqlValue::Uuid(id) => id.to_string(),
                        _ => continue,
                    },
                };
                match self.resolved.get(&(index, key.clone())) {
                    Some(Some(id)) => row.values[index] = SqlValue::Uuid(*id),
                    _ => {
                        missing = Some((field.name.clone(), key));
                        break;
                    }
                }
            }
            match missing {
                None => kept.push(row),
                Some((field, key)) => self.reject(RowError {
                    row: row.row,
                    line: row.line,
                    column: Some(field.clone()),
                    code: "invalid_relation".into(),
                    message: format!("no record for '{field}' matches '{}' in this org", clip(&key)),
                }),
            }
        }
        Ok(kept)
    }

    /// The ids of related records by lookup key (or the given ids that exist), in this org.
    async fn find<'k>(
        &mut self,
        index: usize,
        keys: impl Iterator<Item = &'k str>,
        lookup: bool,
    ) -> Result<HashMap<String, Uuid>, ApiError> {
        let field = &self.collection.fields[index];
        let FieldKind::Relation { to, .. } = &field.kind else {
            return Ok(HashMap::new());
        };
        let dialect = self.destination.db.dialect();
        let mut params = vec![];
        let mut marks = vec![];
        let bind = |value: SqlValue, params: &mut Vec<SqlValue>| {
            params.push(value);
            format!("${}", params.len())
        };
        let org = self.destination.org;
        let (select, from, mut conditions) = match to {
            RelationTarget::Users => {
                let column = if lookup { "lower(u.email)" } else { "u.id" };
                let mut conditions = vec![];
                let from = match org {
                    Some(org) if !self.collection.global => {
                        let org = bind(SqlValue::Uuid(org), &mut params);
                        format!("keel_users u JOIN keel_memberships m ON m.user_id = u.id AND m.org_id = {org}")
                    }
                    _ => "keel_users u".to_string(),
                };
                conditions.push(column.to_string());
                (format!("{}, u.id", cast_text(dialect, column)), from, conditions)
            }
            RelationTarget::Collection(name) => {
                let target = self
                    .destination
                    .schema
                    .app
                    .collection(name)
                    .expect("validated relation");
                let column = if lookup {
                    format!(
                        "t.{}",
                        keel_query::value::ident(field.lookup.as_deref().unwrap_or("id"))
                    )
                } else {
                    "t.id".to_string()
                };
                let mut conditions = vec![column.clone()];
                if let Some(org) = org
                    && !target.global
                {
                    let org = bind(SqlValue::Uuid(org), &mut params);
                    conditions.push(format!("t.org = {org}"));
                }
                (
                    format!("{}, t.id", cast_text(dialect, &column)),
                    format!("{} t", keel_query::value::ident(&target.table())),
                    conditions,
                )
            }
        };
        let key_kind = match (to, lookup) {
            (RelationTarget::Collection(name), true) => self
                .destination
                .schema
                .app
                .collection(name)
                .and_then(|c| c.field(field.lookup.as_deref().unwrap_or("")))
                .map(|f| f.kind.clone()),
            _ => None,
        };
        for key in keys {
            let value = if !lookup {
                match Uuid::parse_str(key) {
                    Ok(id) => SqlValue::Uuid(id),
                    Err(_) => continue,
                }
            } else if matches!(key_kind, Some(FieldKind::Integer { .. })) {
                match key.trim().parse::<i64>() {
                    Ok(n) => SqlValue::Int(n),
                    Err(_) => continue,
                }
            } else {
                SqlValue::Text(key.to_string())
            };
            marks.push(bind(value, &mut params));
        }
        if marks.is_empty() {
            return Ok(HashMap::new());
        }
        let column = conditions.remove(0);
        conditions.insert(0, format!("{column} IN ({})", marks.join(", ")));
        let text = format!("SELECT {select} FROM {from} WHERE {}", conditions.join(" AND "));
        let tx = self.tx.as_mut().expect("a batch holds a transaction");
        let sql = tx.portable(&text, params);
        let rows = tx.query(&sql).await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            let mut cells = row.into_iter();
            let key = cells.next().and_then(|c| c.into_text());
            let id = cells.next().and_then(|c| c.uuid());
            if let (Some(key), Some(id)) = (key, id) {
                found.insert(key, id);
            }
        }
        Ok(found)
    }

    /// Writes one batch of resolved rows; rows a constraint or the create rule rejects are
    /// reported (and, for the rule, removed again).
    async fn insert(&mut self, rows: Vec<Prepared>) -> Result<u64, ApiError> {
        let batch = self.report.batch;
        let org = self.destination.org;
        let now = self.now;
        let mut ids = Vec::with_capacity(rows.len());
        let mut values = Vec::with_capacity(rows.len());
        let mut positions = Vec::with_capacity(rows.len());
        for row in rows {
            let id = Uuid::now_v7();
            let mut full = Vec::with_capacity(self.columns.len());
            full.push(SqlValue::Uuid(id));
            if let Some(org) = org.filter(|_| !self.collection.global) {
                full.push(SqlValue::Uuid(org));
            }
            full.push(SqlValue::Datetime(now));
            full.push(SqlValue::Datetime(now));
            full.push(SqlValue::Int(1));
            full.push(SqlValue::Uuid(batch));
            full.extend(row.values);
            ids.push(id);
            values.push(full);
            positions.push((row.row, row.line));
        }
        let table = self.collection.table();
        let tx = self.tx.as_mut().expect("a batch holds a transaction");
        let failures = keel_store::bulk::insert_rows(tx, &table, &self.columns, &values).await?;
        drop(values);
        let mut failed = vec![false; ids.len()];
        for (index, error) in failures {
            failed[index] = true;
            let (row, line) = positions[index];
            let (column, code, message) = constraint_error(self.collection, &error);
            self.reject(RowError {
                row,
                line,
                column,
                code: code.into(),
                message,
            });
        }
        let mut written: Vec<(Uuid, (u64, u64))> = ids
            .into_iter()
            .zip(positions)
            .zip(failed)
            .filter(|(_, failed)| !failed)
            .map(|(pair, _)| pair)
            .collect();
        let builder = self.builder();
        let rule_applies = builder.rule(Action::Create) != Frag::Const(true);
        let triggers = &self.collection.triggers.on_create;
        if (rule_applies || !triggers.is_empty()) && !written.is_empty() {
            let mut records: HashMap<Uuid, Value> = HashMap::with_capacity(written.len());
            for part in written.chunks(5_000) {
                let part_ids: Vec<Uuid> = part.iter().map(|(id, _)| *id).collect();
                let sql = builder.by_ids(&part_ids, Action::Create);
                let tx = self.tx.as_mut().expect("a batch holds a transaction");
                for row in tx.query(&sql).await? {
                    let mut cells = row.into_iter();
                    let id = cells.next().and_then(|c| c.uuid());
                    let json = cells.next().and_then(|c| c.into_text());
                    if let (Some(id), Some(json)) = (id, json) {
                        records.insert(id, serde_json::from_str(&json).unwrap_or(Value::Null));
                    }
                }
            }
            let (allowed, forbidden): (Vec<_>, Vec<_>) =
                written.into_iter().partition(|(id, _)| records.contains_key(id));
            if !forbidden.is_empty() {
                let forbidden_ids: Vec<Uuid> = forbidden.iter().map(|(id, _)| *id).collect();
                for part in forbidden_ids.chunks(5_000) {
                    let marks: Vec<String> = (1..=part.len()).map(|i| format!("${i}")).collect();
                    let tx = self.tx.as_mut().expect("a batch holds a transaction");
                    let sql = tx.portable(
                        &format!(
                            "DELETE FROM {} WHERE id IN ({})",
                            keel_query::value::ident(&table),
                            marks.join(", ")
                        ),
                        part.iter().map(|id| SqlValue::Uuid(*id)).collect(),
                    );
                    tx.execute(&sql).await?;
                }
                for (_, (row, line)) in forbidden {
                    self.reject(RowError {
                        row,
                        line,
                        column: None,
                        code: "forbidden".into(),
                        message: "the create rule does not allow this record".into(),
                    });
                }
            }
            written = allowed;
            if !triggers.is_empty() && !written.is_empty() {
                let app = &self.destination.schema.app;
                let mut jobs = vec![];
                for (id, _) in &written {
                    let payload = json!({
                        "collection": self.collection.name,
                        "action": "create",
                        "id": id.to_string(),
                        "record": records.remove(id).unwrap_or(Value::Null),
                    });
                    for name in triggers {
                        if let Some(kind) = app.jobs.kind(name) {
                            jobs.push(keel_store::jobs::NewJob::of_kind(
                                kind,
                                payload.clone(),
                                org,
                                self.destination.actor.user,
                            ));
                        }
                    }
                }
                let tx = self.tx.as_mut().expect("a batch holds a transaction");
                keel_store::jobs::job_insert_many_tx(tx, &jobs).await?;
            }
        }
        Ok(written.len() as u64)
    }

    /// Commits an atomic import that found no invalid row; otherwise rolls it back.
    async fn finish(mut self) -> Result<Report, ApiError> {
        if let Some(mut tx) = self.tx.take() {
            if self.mode == Mode::Atomic && self.report.counts.rejected == 0 && self.report.counts.written > 0 {
                let written = self.report.counts.written;
                log_import(self.destination, self.collection, self.report.batch, &mut tx, written).await?;
                tx.commit().await?;
                self.report.committed = true;
            } else if self.mode == Mode::Skip {
                tx.commit().await?;
            }
        }
        if self.mode == Mode::Atomic && !self.report.committed {
            self.report.counts.written = 0;
        }
        Ok(self.report)
    }

    /// An import that stopped on an error: what was committed stays (skip mode), and the
    /// error says so.
    fn failed(self, error: ApiError) -> ApiError {
        if self.report.committed {
            let mut details = error.details.clone().unwrap_or_else(|| json!({}));
            details["batch"] = json!(self.report.batch);
            details["written"] = json!(self.report.counts.written);
            error.with_details(details)
        } else {
            error
        }
    }
}

fn cast_text(dialect: keel_query::Dialect, column: &str) -> String {
    match dialect {
        keel_query::Dialect::Postgres => format!("CAST({column} AS text)"),
        keel_query::Dialect::Sqlite => format!("CAST({column} AS TEXT)"),
    }
}

/// The column, code and message of a row a constraint rejected.
fn constraint_error(collection: &Collection, error: &StoreError) -> (Option<String>, &'static str, String) {
    match error {
        StoreError::Unique { constraint, columns } => {
            let mut fields: Vec<String> = columns.iter().filter(|c| *c != "org").cloned().collect();
            if let Some(constraint) = constraint {
                let table = collection.table();
                if let Some(field) = constraint.strip_prefix(&format!("{table}_uq_")) {
                    fields.push(field.to_string());
                } else if let Some(index) = collection.indexes.iter().find(|i| &i.name == constraint) {
                    fields.extend(index.columns.iter().map(|c| c.field.clone()));
                }
            }
            (
                fields.first().cloned(),
                "unique_violation",
                format!(
                    "a record with this {} already exists (in this org or earlier in the file)",
                    if fields.is_empty() {
                        "value".to_string()
                    } else {
                        fields.join(", ")
                    }
                ),
            )
        }
        StoreError::ForeignKey(_) => (
            None,
            "invalid_relation",
            "a related record does not exist (it may have been deleted during the import)".into(),
        ),
        other => (None, "rejected", other.to_string()),
    }
}

/// A background import, as its job's payload: the spooled upload, and the caller as it was
/// when the upload was accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Background {
    pub upload: Uuid,
    pub bytes: u64,
    pub collection: String,
    pub org: Option<Uuid>,
    pub user: Option<Uuid>,
    pub api_key: Option<Uuid>,
    pub request_id: String,
    /// The caller's role rank in the org when the import was accepted.
    pub rank: Option<i64>,
    pub superuser: bool,
    pub options: Options,
}

/// The handler of the built-in `keel_import` kind.
pub fn job_handler(limits: Limits) -> keel_jobs::HandlerFn {
    Arc::new(move |context| Box::pin(run_job(context, limits)))
}

async fn run_job(context: keel_jobs::JobContext, limits: Limits) -> Result<Option<Value>, keel_jobs::JobFailure> {
    let job: Background = serde_json::from_str(&context.payload)
        .map_err(|e| keel_jobs::JobFailure::permanent(format!("the import's payload is malformed: {e}")))?;
    let outcome = run_background(&context, &job, limits).await;
    // The spool goes whatever happened (the import is not retried).
    if let Err(error) = keel_store::uploads::upload_delete(&context.db, job.upload).await {
        tracing::warn!(upload = %job.upload, error = %error, "could not delete a spooled upload; the cleanup job will");
    }
    outcome
}

async fn run_background(
    context: &keel_jobs::JobContext,
    job: &Background,
    limits: Limits,
) -> Result<Option<Value>, keel_jobs::JobFailure> {
    let destination = Destination {
        db: &context.db,
        schema: context.schema.clone(),
        patterns: context.patterns.clone(),
        collection: job.collection.clone(),
        scope: match job.org {
            Some(org) => Scope::Org(org),
            None => Scope::Unscoped,
        },
        org: job.org,
        caller: Caller {
            context: keel_query::Context {
                user: job.user,
                role: keel_query::RoleSource::Rank(job.rank),
                now: truncate_micros(Utc::now()),
            },
            superuser: job.superuser,
        },
        actor: Actor {
            user: job.user,
            api_key: job.api_key,
            request_id: job.request_id.clone(),
        },
    };
    // The spool, chunk by chunk, to the blocking reader.
    let (sender, receiver) = mpsc::channel(4);
    let feeder = {
        let db = context.db.clone();
        let upload = job.upload;
        tokio::spawn(async move {
            let mut seq = 0;
            loop {
                let item = match keel_store::uploads::upload_chunk(&db, upload, seq).await {
                    Ok(Some(data)) => Ok(Bytes::from(data)),
                    Ok(None) => return,
                    Err(error) => Err(io::Error::other(error.to_string())),
                };
                let failed = item.is_err();
                if sender.send(item).await.is_err() || failed {
                    return;
                }
                seq += 1;
            }
        })
    };
    // Progress to the job row, at most four times a second.
    let (progress_tx, mut progress_rx) = watch::channel(Counts::default());
    let reporter = {
        let db = context.db.clone();
        let (id, attempt) = (context.id, context.attempt);
        tokio::spawn(async move {
            while progress_rx.changed().await.is_ok() {
                let counts = *progress_rx.borrow_and_update();
                let _ = keel_store::jobs::job_progress(&db, id, attempt, json!(counts)).await;
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        })
    };
    let mut progress = move |counts: Counts| {
        let _ = progress_tx.send(counts);
    };
    let result = run(
        &destination,
        ChannelReader::new(receiver),
        job.options.clone(),
        limits,
        &mut progress,
    )
    .await;
    feeder.abort();
    drop(progress);
    let _ = reporter.await;
    match result {
        Ok(report) => {
            let _ =
                keel_store::jobs::job_progress(&context.db, context.id, context.attempt, json!(report.counts)).await;
            Ok(Some(json!(report)))
        }
        Err(error) => {
            let details = error.details.as_ref().map(|d| format!(" {d}")).unwrap_or_default();
            Err(keel_jobs::JobFailure::permanent(format!(
                "{}: {}{details}",
                error.code, error.message
            )))
        }
    }
}
