//! `StoreError`: one error type that makes both backends look the same.

/// A database failure, classified the same way on SQLite and PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique constraint failed. `constraint` is the index name (PostgreSQL) and
    /// `columns` the columns (SQLite), so callers can name the field.
    #[error("unique constraint failed: {constraint:?} {columns:?}")]
    Unique {
        constraint: Option<String>,
        columns: Vec<String>,
    },
    #[error("foreign key constraint failed: {0:?}")]
    ForeignKey(Option<String>),
    /// No connection could be had in time (the pool or the writer is saturated).
    #[error("the database is busy")]
    Busy,
    /// A statement ran past its timeout and was cancelled.
    #[error("the statement timed out")]
    Timeout,
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Other(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        use rusqlite::ErrorCode;
        match &error {
            rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound,
            rusqlite::Error::SqliteFailure(code, message) => match code.code {
                ErrorCode::ConstraintViolation => {
                    let message = message.clone().unwrap_or_default();
                    // Extended codes: 2067 UNIQUE, 1555 PRIMARY KEY, 787 FOREIGN KEY.
                    match code.extended_code {
                        2067 | 1555 => {
                            let columns = message
                                .split_once(':')
                                .map(|(_, list)| {
                                    list.split(',')
                                        .filter_map(|c| c.trim().rsplit('.').next().map(str::to_string))
                                        .collect()
                                })
                                .unwrap_or_default();
                            StoreError::Unique {
                                constraint: None,
                                columns,
                            }
                        }
                        // 787: FOREIGN KEY; ON DELETE RESTRICT fails as a trigger (1811) with the same message.
                        _ if code.extended_code == 787 || message.starts_with("FOREIGN KEY") => {
                            StoreError::ForeignKey(None)
                        }
                        _ => StoreError::Other(error.to_string()),
                    }
                }
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Busy,
                ErrorCode::OperationInterrupted => StoreError::Timeout,
                _ => StoreError::Other(error.to_string()),
            },
            _ => StoreError::Other(error.to_string()),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        match &error {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::PoolTimedOut => StoreError::Busy,
            sqlx::Error::PoolClosed => StoreError::Unavailable("the pool is closed".into()),
            sqlx::Error::Io(e) => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Tls(e) => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("23505") => StoreError::Unique {
                    constraint: db.constraint().map(str::to_string),
                    columns: vec![],
                },
                Some("23503") => StoreError::ForeignKey(db.constraint().map(str::to_string)),
                Some("57014") => StoreError::Timeout,
                Some("53300") => StoreError::Busy,
                Some(code) if code.starts_with("08") || code == "57P01" => {
                    StoreError::Unavailable(db.message().to_string())
                }
                _ => StoreError::Other(error.to_string()),
            },
            _ => StoreError::Other(error.to_string()),
        }
    }
}

/// The rows of a batch that failed, by index in the batch, with why.
pub type RowFailures = Vec<(usize, StoreError)>;
