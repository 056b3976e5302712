//! The filter and rule language, and the SQL it compiles to.
//!
//! Pure: no IO. Parses expressions, type-checks them against the app model, and builds every
//! record statement for SQLite or PostgreSQL with bound parameters. Identifiers come only from
//! the validated spec; user text is only ever a bound value (invariant 2).

pub mod check;
pub mod cursor;
pub mod parse;
pub mod render;
pub mod schema;
pub mod shared;
pub mod stmt;
pub mod validate;
pub mod value;

pub use check::{ColumnType, Context, Frag, Mode, RoleSource, TExpr, check_expr, column_type};
pub use cursor::{SortKey, decode_cursor, encode_cursor, parse_sort};
pub use schema::{RuleProblem, Schema};
pub use shared::{Shared, SharedRow};
pub use stmt::{AggregateFn, AggregateSpec, Builder, Caller, ListSpec, Returned, Scope};
pub use validate::{FieldError, Patterns, WriteMode, validate_record};
pub use value::{Dialect, Sql, SqlValue};

use serde::Serialize;

/// A filter, sort, cursor or rule that cannot be used. `code` is a stable error code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub code: &'static str,
    pub message: String,
    /// The field the problem is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Byte offset in the expression.
    pub position: usize,
}

impl QueryError {
    pub fn new(code: &'static str, position: usize, message: impl Into<String>) -> QueryError {
        QueryError {
            code,
            message: message.into(),
            field: None,
            position,
        }
    }
    pub fn syntax(position: usize, message: impl Into<String>) -> QueryError {
        let message = message.into();
        QueryError::new("invalid_filter", position, format!("{message} (at byte {position})"))
    }
    pub fn unknown_field(field: &str, position: usize, collection: &str) -> QueryError {
        QueryError {
            code: "unknown_field",
            message: format!("'{field}' is not a field of {collection}"),
            field: Some(field.to_string()),
            position,
        }
    }
    pub fn invalid_value(field: &str, message: impl Into<String>) -> QueryError {
        QueryError {
            code: "invalid_value",
            message: message.into(),
            field: Some(field.to_string()),
            position: 0,
        }
    }
}

#[cfg(test)]
mod tests;
