//! Typed SQL parameter values and the SQL text builder that binds them.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use uuid::Uuid;

/// The two SQL dialects Keel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A bound parameter. Each backend binds it with its native type.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    Uuid(Uuid),
    Date(NaiveDate),
    Datetime(DateTime<Utc>),
    Json(serde_json::Value),
    /// Raw bytes (BLOB / bytea): spooled uploads.
    Bytes(Vec<u8>),
}

/// The canonical text form of a datetime: RFC 3339, UTC, microseconds, `Z`.
/// SQLite stores this text (it sorts correctly); PostgreSQL renders timestamptz the same way.
pub fn format_datetime(value: &DateTime<Utc>) -> String {
    value.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Truncates a time to the microsecond precision both backends store.
pub fn truncate_micros(value: DateTime<Utc>) -> DateTime<Utc> {
    let micros = value.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(value)
}

/// Parses an RFC 3339 datetime (any offset) into UTC.
pub fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|d| truncate_micros(d.with_timezone(&Utc)))
}

pub fn parse_date(text: &str) -> Option<NaiveDate> {
    if text.len() != 10 {
        return None;
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

/// SQL text with its bound parameters. Placeholders are numbered for both dialects
/// (`?1` on SQLite, `$1` on PostgreSQL), so one builder serves both.
#[derive(Debug, Clone, PartialEq)]
pub struct Sql {
    pub dialect: Dialect,
    pub text: String,
    pub params: Vec<SqlValue>,
}

impl Sql {
    pub fn new(dialect: Dialect) -> Sql {
        Sql {
            dialect,
            text: String::with_capacity(256),
            params: Vec::new(),
        }
    }

    /// Appends trusted SQL text (keywords, or identifiers from the validated spec).
    pub fn push(&mut self, text: &str) -> &mut Sql {
        self.text.push_str(text);
        self
    }

    /// Binds a value and appends its placeholder.
    pub fn bind(&mut self, value: SqlValue) -> &mut Sql {
        // NULL is written inline: an untyped NULL fits any column on both backends.
        if value == SqlValue::Null {
            self.text.push_str("NULL");
            return self;
        }
        self.params.push(value);
        let n = self.params.len();
        match self.dialect {
            Dialect::Sqlite => self.text.push('?'),
            Dialect::Postgres => self.text.push('$'),
        }
        self.text.push_str(&n.to_string());
        self
    }

    /// Appends another fragment, renumbering its placeholders after ours.
    pub fn append(&mut self, other: &Sql) -> &mut Sql {
        let offset = self.params.len();
        let bytes = other.text.as_bytes();
        let mut i = 0;
        let marker = match self.dialect {
            Dialect::Sqlite => b'?',
            Dialect::Postgres => b'$',
        };
        let mut in_string = false;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'\'' {
                in_string = !in_string;
            }
            if !in_string && b == marker && i + 1 < bytes.len() && bytes[i + 1].is_ascii_digit() {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
                let n: usize = other.text[start..end].parse().unwrap_or(0);
                self.text.push(marker as char);
                self.text.push_str(&(n + offset).to_string());
                i = end;
                continue;
            }
            // Copy one UTF-8 character.
            let ch_len = utf8_len(b);
            self.text.push_str(&other.text[i..i + ch_len]);
            i += ch_len;
        }
        self.params.extend(other.params.iter().cloned());
        self
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Quotes an identifier that comes from the validated spec.
pub fn ident(name: &str) -> String {
    debug_assert!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "identifiers come from the validated spec: {name}"
    );
    format!("\"{name}\"")
}

/// A SQL string literal for text that comes from the validated spec (never from a request).
pub fn spec_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
