//! Bound parameters for the store's hand-written SQL, with NULLs written inline.

use keel_query::{Dialect, Sql, SqlValue};
use uuid::Uuid;

use crate::db::portable;

/// Bound parameters for hand-written SQL: NULLs are written inline (an untyped NULL
/// parameter does not fit every PostgreSQL column type).
#[derive(Default)]
pub(crate) struct Params(pub(crate) Vec<SqlValue>);

impl Params {
    pub(crate) fn bind(&mut self, value: SqlValue) -> String {
        if matches!(value, SqlValue::Null) {
            return "NULL".to_string();
        }
        self.0.push(value);
        format!("${}", self.0.len())
    }

    pub(crate) fn optional_uuid(&mut self, value: Option<Uuid>) -> String {
        self.bind(value.map_or(SqlValue::Null, SqlValue::Uuid))
    }

    pub(crate) fn optional_text(&mut self, value: Option<&str>) -> String {
        self.bind(value.map_or(SqlValue::Null, |v| SqlValue::Text(v.to_string())))
    }

    /// Binds every id; the placeholders joined by commas, for `IN (…)`.
    pub(crate) fn uuids(&mut self, ids: &[Uuid]) -> String {
        ids.iter()
            .map(|id| self.bind(SqlValue::Uuid(*id)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) fn sql(self, dialect: Dialect, text: &str) -> Sql {
        portable(dialect, text, self.0)
    }
}
