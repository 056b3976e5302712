//! `Db` and `Tx`: the store boundary. One enum per handle, one arm per backend, so callers
//! write each operation once for both databases.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel_query::{Dialect, Sql, SqlValue};

use crate::PoolConfig;
use crate::cell::Row;
use crate::error::StoreError;
use crate::observe;
use crate::postgres::{PgDb, PgTx};
use crate::sqlite::{SqliteDb, SqliteTx};

/// Where the data lives: a SQLite file (the default) or a PostgreSQL URL.
#[derive(Clone)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres {
        url: String,
        schema: Option<String>,
        /// Streaming replicas that may serve reads.
        replicas: Vec<String>,
    },
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
            // The URL may hold a password: show only its host part.
            Location::Postgres { url, schema, replicas } => {
                let host = url.rsplit('@').next().unwrap_or("?");
                write!(
                    f,
                    "Postgres(…@{host}, schema {schema:?}, {} replica(s))",
                    replicas.len()
                )
            }
        }
    }
}

pub enum Db {
    Sqlite(SqliteDb),
    Postgres(PgDb),
}

/// A write transaction; the second field is the slow-query threshold.
pub enum Tx {
    Sqlite(SqliteTx, Duration),
    Postgres(PgTx, Duration),
}

impl Db {
    pub async fn connect(location: &Location, pool: &PoolConfig) -> Result<Db, StoreError> {
        match location {
            Location::Sqlite(path) => Ok(Db::Sqlite(SqliteDb::open(path, pool.clone())?)),
            Location::Postgres { url, schema, replicas } => {
                let mut db = PgDb::connect(url, schema.as_deref(), pool).await?;
                if !replicas.is_empty() {
                    db.set_replicas(crate::postgres::Replicas::connect(replicas, schema.as_deref(), pool)?);
                }
                Ok(Db::Postgres(db))
            }
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

    /// A dedicated PostgreSQL connection listening on the channel that `channel_sql` names
    /// (an SQL expression, e.g. `'keel_jobs:' || current_schema()`); `None` on SQLite.
    pub async fn listen(&self, channel_sql: &str) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        let Db::Postgres(pg) = self else {
            return Ok(None);
        };
        let channel = self
            .query_primary(&self.portable(&format!("SELECT {channel_sql}"), vec![]))
            .await?
            .first()
            .and_then(|row| row[0].text().map(str::to_string))
            .ok_or_else(|| StoreError::Other("no schema name".into()))?;
        let mut listener = pg.listener().await?;
        listener.listen(&channel).await?;
        Ok(Some(listener))
    }

    /// A read, on a reader (SQLite) or any pooled connection (PostgreSQL).
    pub async fn query(&self, sql: &Sql) -> Result<Vec<Row>, StoreError> {
        let started = Instant::now();
        let result = match self {
            Db::Sqlite(db) => db.query(sql).await,
            Db::Postgres(db) => db.query(sql).await,
        };
        observe::record(&sql.text, started.elapsed(), self.slow_query());
        result
    }

    fn slow_query(&self) -> std::time::Duration {
        match self {
            Db::Sqlite(db) => db.slow_query(),
            Db::Postgres(db) => db.slow_query(),
        }
    }

    /// A read expected to return at most one row.
    pub async fn query_one(&self, sql: &Sql) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql).await?.into_iter().next())
    }

    /// A read that must see every committed write: never on a replica.
    pub async fn query_primary(&self, sql: &Sql) -> Result<Vec<Row>, StoreError> {
        let started = Instant::now();
        let result = match self {
            Db::Sqlite(db) => db.query(sql).await,
            Db::Postgres(db) => db.query_here(sql).await,
        };
        observe::record(&sql.text, started.elapsed(), self.slow_query());
        result
    }

    /// One statement that writes, as a transaction of its own, on the primary (autocommit on
    /// PostgreSQL: one round trip; through the writer's group commit on SQLite).
    pub async fn write(&self, sql: &Sql) -> Result<Vec<Row>, StoreError> {
        let started = Instant::now();
        let result = match self {
            Db::Sqlite(db) => match db.begin().await {
                Ok(mut tx) => match tx.query(sql) {
                    Ok(rows) => tx.commit().await.map(|()| rows),
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            },
            Db::Postgres(db) => db.query_here(sql).await,
        };
        observe::record(&sql.text, started.elapsed(), self.slow_query());
        result
    }

    pub async fn begin(&self) -> Result<Tx, StoreError> {
        observe::wrote();
        let slow_query = self.slow_query();
        match self {
            Db::Sqlite(db) => Ok(Tx::Sqlite(db.begin().await?, slow_query)),
            Db::Postgres(db) => Ok(Tx::Postgres(db.begin().await?, slow_query)),
        }
    }

    /// How many statements this handle has run (tests use it to prove there is no N+1).
    pub fn statements(&self) -> u64 {
        match self {
            Db::Sqlite(db) => db.statements(),
            Db::Postgres(db) => db.statements(),
        }
    }

    /// Reads served by read replicas so far (PostgreSQL with replicas only).
    pub fn replica_statements(&self) -> u64 {
        match self {
            Db::Postgres(db) => db.replica_statements(),
            Db::Sqlite(_) => 0,
        }
    }

    /// Whether reads may be served by replicas.
    pub fn has_replicas(&self) -> bool {
        matches!(self, Db::Postgres(db) if db.replicas().is_some())
    }

    /// The read replicas and their state, if any.
    pub fn replica_states(&self) -> Vec<crate::postgres::ReplicaState> {
        match self {
            Db::Postgres(db) => db.replicas().map(|r| r.states()).unwrap_or_default(),
            Db::Sqlite(_) => vec![],
        }
    }

    /// Measures replica lag now (the monitor does it every second).
    pub async fn check_replicas(&self) {
        if let Db::Postgres(db) = self
            && let Some(replicas) = db.replicas()
        {
            replicas.check().await;
        }
    }

    /// Connections in use, idle, and callers waiting.
    pub fn pool_state(&self) -> crate::PoolState {
        match self {
            Db::Sqlite(db) => db.pool_state(),
            Db::Postgres(db) => db.pool_state(),
        }
    }

    /// A cheap round trip for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.query(&self.portable("SELECT 1", vec![])).await.map(|_| ())
    }

    /// Copies what the WAL holds into the database file now (SQLite; waits for a running
    /// background checkpoint first). Nothing to do on PostgreSQL, whose checkpointer is the
    /// server's.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(db) => db.checkpoint().await,
            Db::Postgres(_) => Ok(()),
        }
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
            Tx::Sqlite(..) => Dialect::Sqlite,
            Tx::Postgres(..) => Dialect::Postgres,
        }
    }

    pub fn portable(&self, text: &str, params: Vec<SqlValue>) -> Sql {
        portable(self.dialect(), text, params)
    }

    pub async fn query(&mut self, sql: &Sql) -> Result<Vec<Row>, StoreError> {
        let started = Instant::now();
        let (result, slow_query) = match self {
            Tx::Sqlite(tx, slow) => (tx.query(sql), *slow),
            Tx::Postgres(tx, slow) => (tx.query(sql).await, *slow),
        };
        observe::record(&sql.text, started.elapsed(), slow_query);
        result
    }

    pub async fn query_one(&mut self, sql: &Sql) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql).await?.into_iter().next())
    }

    pub async fn execute(&mut self, sql: &Sql) -> Result<u64, StoreError> {
        let started = Instant::now();
        let (result, slow_query) = match self {
            Tx::Sqlite(tx, slow) => (tx.execute(sql), *slow),
            Tx::Postgres(tx, slow) => (tx.execute(sql).await, *slow),
        };
        observe::record(&sql.text, started.elapsed(), slow_query);
        result
    }

    pub async fn execute_script(&mut self, script: &str) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx, _) => tx.execute_script(script),
            Tx::Postgres(tx, _) => tx.execute_script(script).await,
        }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(tx, _) => tx.commit().await,
            Tx::Postgres(tx, _) => tx.commit().await,
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
