//! The async half of an import: relations resolved in bulk and valid rows written in batches
//! (`COPY` on PostgreSQL, prepared inserts on SQLite), with the activity entry.

use std::collections::HashMap;

use chrono::Utc;
use keel_query::value::truncate_micros;
use keel_query::{Builder, Frag, SqlValue};
use keel_spec::{Action, Collection, FieldKind, RelationTarget};
use keel_store::records::WriteScope;
use keel_store::{StoreError, Tx};
use serde_json::{Value, json};
use uuid::Uuid;

use super::parse::clip;
use super::{Chunk, Counts, Destination, Limits, Mode, Prepared, Report, RowError};
use crate::http::error::ApiError;

/// The async half: resolves relations and writes batches.
pub(super) struct Writer<'d, 'a> {
    destination: &'d Destination<'a>,
    collection: &'d Collection,
    mode: Mode,
    limits: Limits,
    pub(super) report: Report,
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
    pub(super) fn new(
        destination: &'d Destination<'a>,
        collection: &'d Collection,
        mode: Mode,
        limits: Limits,
    ) -> Writer<'d, 'a> {
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

    pub(super) fn builder(&self) -> Builder<'d> {
        Builder {
            schema: &self.destination.schema,
            collection: self.collection,
            dialect: self.destination.db.dialect(),
            caller: &self.destination.caller,
            scope: self.destination.scope,
        }
    }

    /// Counts a rejected row and lists its errors (up to the report's cap).
    pub(super) fn reject_row(&mut self, errors: Vec<RowError>) {
        self.report.counts.rejected += 1;
        for error in errors {
            if self.report.errors.len() < self.limits.max_errors {
                self.report.errors.push(error);
            } else {
                self.report.errors_truncated = true;
            }
        }
    }

    pub(super) fn reject(&mut self, error: RowError) {
        self.reject_row(vec![error]);
    }

    /// Whether rows are still being written (an atomic import stops at its first invalid row).
    pub(super) fn writing(&self) -> bool {
        self.mode == Mode::Skip || self.report.counts.rejected == 0
    }

    pub(super) async fn write(&mut self, chunk: Chunk) -> Result<(), ApiError> {
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
    pub(super) async fn end_batch(&mut self, written: u64) -> Result<(), ApiError> {
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
pub(super) async fn log_import(
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
    pub(super) async fn resolve(&mut self, rows: Vec<Prepared>) -> Result<Vec<Prepared>, ApiError> {
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
    pub(super) async fn find<'k>(
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
    pub(super) async fn insert(&mut self, rows: Vec<Prepared>) -> Result<u64, ApiError> {
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
    pub(super) async fn finish(mut self) -> Result<Report, ApiError> {
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
    pub(super) fn failed(self, error: ApiError) -> ApiError {
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

pub(super) fn cast_text(dialect: keel_query::Dialect, column: &str) -> String {
    match dialect {
        keel_query::Dialect::Postgres => format!("CAST({column} AS text)"),
        keel_query::Dialect::Sqlite => format!("CAST({column} AS TEXT)"),
    }
}

/// The column, code and message of a row a constraint rejected.
pub(super) fn constraint_error(collection: &Collection, error: &StoreError) -> (Option<String>, &'static str, String) {
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
