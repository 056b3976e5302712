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

mod background;
mod parse;
pub mod read;
mod request;
mod write;

pub use background::{Background, job_handler};
pub use parse::BodyTooLarge;
use parse::Parser;
pub use request::{import, import_stream, limits, options, report_response};
use write::Writer;

use std::io::{self, Read};
use std::sync::Arc;

use axum::body::Bytes;
use keel_query::{Caller, Patterns, Schema, Scope, SqlValue};
use keel_spec::Collection;
use keel_store::Db;
use keel_store::records::Actor;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::http::error::ApiError;

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
