//! `Db` and `Tx`: the store boundary. One enum per handle, one arm per backend, so callers
//! write each operation once for both databases.

use std::path::PathBuf;

use keel_query::{Dialect, Sql, SqlValue};

use crate::PoolConfig;
use crate::cell::Row;
use crate::error::StoreError;
use crate::postgres::{PgDb, PgTx};
use crate::sqlite::{SqliteDb, SqliteTx};

/// Where the data lives: a SQLite file (the default) or a PostgreSQL URL.
#[derive(Clone)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres { url: String, schema: Option<String> },
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
            // The URL may hold a password: show only its host part.
            Location::Postgres { url, schema } => {
                let host = url.rsplit('@').next().unwrap_or("?");
                write!(f, "Postgres(…@{host}, schema {schema:?})")
            }
        }
    }
}

pub enum Db {
    Sqlite(SqliteDb),
    Postgres(PgDb),
}

pub enum Tx {
    Sqlite(SqliteTx),
    Postgres(PgTx),
}

impl Db {
    pub async fn connect(location: &Location, pool: &PoolConfig) -> Result<Db, StoreError> {
        match location {
            Location::Sqlite(path) => Ok(Db::Sqlite(SqliteDb::open(path, pool.clone())?)),
            Location::Postgres { url, schema } => Ok(Db::Postgres(PgDb::connect(url, schema.as_deref(), pool).await?)),
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// A new SQL builder for this backend.
    pub fn sql(&self) -> Sql {
        Sql::new(self.dialect())
    }

    /// Hand-written SQL with `$1, $2, …` placeholders, made right for this backend.
    pub fn portable(&self, text: &str, params: Vec<SqlValue>) -> Sql {
        portable(self.dialect(), text, params)
    }

    /// A read, on a reader (SQLite) or any pooled connection (PostgreSQL).
    pub async fn query(&self, sql: &Sql) -> Result<Vec<Row>, StoreError> {
        match self {
            Db::Sqlite(db) => db.query(sql).await,
            Db::Postgres(db) => db.query(sql).await,
        }
    }

    /// A read expected to return at most one row.
    pub async fn query_one(&self, sql: &Sql) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql).await?.into_iter().next())
    }

    pub async fn begin(&self) -> Result<Tx, StoreError> {
        match self {
            Db::Sqlite(db) => Ok(Tx::Sqlite(db.begin().await?)),
            Db::Postgres(db) => Ok(Tx::Postgres(db.begin().await?)),
        }
    }

    /// How many statements this handle has run (tests use it to prove there is no N+1).
    pub fn statements(&self) -> u64 {
        match self {
            Db::Sqlite(db) => db.statements(),
            Db::Postgres(db) => db.statements(),
        }
    }

    /// Connections (in use, idle).
    pub fn pool_state(&self) -> (usize, usize) {
        match self {
            Db::Sqlite(db) => db.pool_state(),
            Db::Postgres(db) => db.pool_state(),
        }
    }

    /// A cheap round trip for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query(&self.portable("SELECT 1", vec![])).await.map(|_| ())
    }

    pub async fn close(&self) {
        if let Db::Postgres(db) = self {
            db.close().await;
        }
    }
}

impl Tx {
    pub fn dialect(&self) -> Dialect {
        match self {
            Tx::Sqlite(_) => Dialect::Sqlite,
            Tx::Postgres(_) => Dialect::Postgres,
        }
    }

    pub fn portable(&self, text: &str, params: Vec<SqlValue>) -> Sql {
        portable(self.dialect(), text, params)
    }

    pub async fn query(&mut self, sql: &Sql) -> Result<Vec<Row>, StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.query(sql),
            Tx::Postgres(tx) => tx.query(sql).await,
        }
    }

    pub async fn query_one(&mut self, sql: &Sql) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql).await?.into_iter().next())
    }

    pub async fn execute(&mut self, sql: &Sql) -> Result<u64, StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.execute(sql),
            Tx::Postgres(tx) => tx.execute(sql).await,
        }
    }

    pub async fn execute_script(&mut self, script: &str) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.execute_script(script),
            Tx::Postgres(tx) => tx.execute_script(script).await,
        }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
    }
}

/// Rewrites `$N` placeholders to `?N` for SQLite (outside string literals).
pub fn portable(dialect: Dialect, text: &str, params: Vec<SqlValue>) -> Sql {
    let text = match dialect {
        Dialect::Postgres => text.to_string(),
        Dialect::Sqlite => {
            let mut out = String::with_capacity(text.len());
            let mut in_string = false;
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '\'' {
                    in_string = !in_string;
                }
                if c == '$' && !in_string && chars.peek().is_some_and(|n| n.is_ascii_digit()) {
                    out.push('?');
                } else {
                    out.push(c);
                }
            }
            out
        }
    };
    Sql { dialect, text, params }
}
