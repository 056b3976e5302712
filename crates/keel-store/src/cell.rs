//! `Cell`: one column of a result row, read the same way from both backends.

use chrono::{DateTime, Utc};
use keel_query::value::parse_datetime;
use uuid::Uuid;

/// A column value. SQLite yields integers, reals and text; PostgreSQL yields native types.
/// The accessors accept either form (a UUID may be text on SQLite and `uuid` on PostgreSQL).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    Uuid(Uuid),
    Datetime(DateTime<Utc>),
    Bytes(Vec<u8>),
}

pub type Row = Vec<Cell>;

impl Cell {
    pub fn is_null(&self) -> bool {
        matches!(self, Cell::Null)
    }
    pub fn text(&self) -> Option<&str> {
        match self {
            Cell::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn into_text(self) -> Option<String> {
        match self {
            Cell::Text(s) => Some(s),
            Cell::Int(i) => Some(i.to_string()),
            Cell::Float(f) => Some(f.to_string()),
            Cell::Bool(b) => Some(b.to_string()),
            Cell::Uuid(u) => Some(u.to_string()),
            Cell::Datetime(d) => Some(keel_query::value::format_datetime(&d)),
            Cell::Null | Cell::Bytes(_) => None,
        }
    }
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Cell::Bytes(b) => Some(b),
            Cell::Text(s) => Some(s.into_bytes()),
            _ => None,
        }
    }
    pub fn int(&self) -> Option<i64> {
        match self {
            Cell::Int(i) => Some(*i),
            Cell::Float(f) => Some(*f as i64),
            Cell::Bool(b) => Some(i64::from(*b)),
            Cell::Text(s) => s.parse().ok(),
            _ => None,
        }
    }
    pub fn bool(&self) -> Option<bool> {
        match self {
            Cell::Bool(b) => Some(*b),
            Cell::Int(i) => Some(*i != 0),
            _ => None,
        }
    }
    pub fn uuid(&self) -> Option<Uuid> {
        match self {
            Cell::Uuid(u) => Some(*u),
            Cell::Text(s) => Uuid::parse_str(s).ok(),
            _ => None,
        }
    }
    pub fn datetime(&self) -> Option<DateTime<Utc>> {
        match self {
            Cell::Datetime(d) => Some(*d),
            Cell::Text(s) => parse_datetime(s),
            _ => None,
        }
    }
}
