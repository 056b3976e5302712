//! The PostgreSQL backend: a sqlx pool with acquire, idle and lifetime limits, UTC sessions,
//! and a server-side statement timeout; and its read replicas.
//!

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use keel_query::{Sql, SqlValue};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Column, Postgres, Row as _, TypeInfo, ValueRef};

use crate::PoolConfig;
use crate::cell::{Cell, Row};
use crate::error::StoreError;

pub struct PgDb {
    pool: PgPool,
    waiting: std::sync::atomic::AtomicUsize,
    statements: Arc<AtomicU64>,
    slow_query: std::time::Duration,
    /// Streaming replicas that may serve this primary's reads.
    replicas: Option<Arc<Replicas>>,
    replica_statements: AtomicU64,
    statement_timeout: std::time::Duration,
    write_statement_timeout: std::time::Duration,
}

fn bind<'q>(query: Query<'q, Postgres, PgArguments>, value: &SqlValue) -> Query<'q, Postgres, PgArguments> {
    match value {
        SqlValue::Null => query.bind(None::<String>),
        SqlValue::Int(i) => query.bind(*i),
        SqlValue::Float(f) => query.bind(*f),
        SqlValue::Text(s) => query.bind(s.clone()),
        SqlValue::Bool(b) => query.bind(*b),
        SqlValue::Uuid(u) => query.bind(*u),
        SqlValue::Date(d) => query.bind(*d),
        SqlValue::Datetime(d) => query.bind(*d),
        SqlValue::Json(j) => query.bind(sqlx::types::Json(j.clone())),
        SqlValue::Bytes(b) => query.bind(b.clone()),
    }
}

fn build(sql: &Sql) -> Query<'_, Postgres, PgArguments> {
    let mut query = sqlx::query(AssertSqlSafe(sql.text.clone()));
    for value in &sql.params {
        query = bind(query, value);
    }
    query
}

fn cells(row: &PgRow) -> Result<Row, StoreError> {
    let mut out = Vec::with_capacity(row.columns().len());
    for (i, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            out.push(Cell::Null);
            continue;
        }
        let cell = match column.type_info().name() {
            "INT8" => Cell::Int(row.try_get::<i64, _>(i)?),
            "INT4" => Cell::Int(i64::from(row.try_get::<i32, _>(i)?)),
            "INT2" => Cell::Int(i64::from(row.try_get::<i16, _>(i)?)),
            "FLOAT8" => Cell::Float(row.try_get::<f64, _>(i)?),
            "FLOAT4" => Cell::Float(f64::from(row.try_get::<f32, _>(i)?)),
            "BOOL" => Cell::Bool(row.try_get::<bool, _>(i)?),
            "UUID" => Cell::Uuid(row.try_get::<uuid::Uuid, _>(i)?),
            "TIMESTAMPTZ" => Cell::Datetime(row.try_get::<chrono::DateTime<chrono::Utc>, _>(i)?),
            "DATE" => Cell::Text(row.try_get::<chrono::NaiveDate, _>(i)?.format("%Y-%m-%d").to_string()),
            "JSON" | "JSONB" => Cell::Text(row.try_get::<serde_json::Value, _>(i)?.to_string()),
            "BYTEA" => Cell::Bytes(row.try_get::<Vec<u8>, _>(i)?),
            _ => Cell::Text(row.try_get::<String, _>(i)?),
        };
        out.push(cell);
    }
    Ok(out)
}

impl PgDb {
    fn options(
        url: &str,
        schema: Option<&str>,
        pool: &PoolConfig,
    ) -> Result<(PgConnectOptions, PgPoolOptions), StoreError> {
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid database URL: {e}")))?
            .application_name("keel")
            .statement_cache_capacity(256);
        let timeout_ms = pool.statement_timeout.as_millis().to_string();
        let mut settings = vec![("timezone", "UTC".to_string()), ("statement_timeout", timeout_ms)];
        if let Some(schema) = schema {
            settings.push(("search_path", schema.to_string()));
        }
        options = options.options(settings);
        // No ping before each acquire (sqlx's default): it costs a round trip per statement,
        // and a connection that broke meanwhile fails its statement with a clear error anyway.
        let pool_options = PgPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(pool.max_connections)
            .min_connections(pool.min_connections)
            .acquire_timeout(pool.acquire_timeout)
            .idle_timeout(Some(pool.idle_timeout))
            .max_lifetime(Some(pool.max_lifetime));
        Ok((options, pool_options))
    }

    fn new(pool: PgPool, config: &PoolConfig) -> PgDb {
        PgDb {
            pool,
            waiting: std::sync::atomic::AtomicUsize::new(0),
            statements: Arc::new(AtomicU64::new(0)),
            slow_query: config.slow_query,
            replicas: None,
            replica_statements: AtomicU64::new(0),
            statement_timeout: config.statement_timeout,
            write_statement_timeout: config.write_statement_timeout,
        }
    }

    /// Connects now (the primary: Keel does not start without it).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn connect(url: &str, schema: Option<&str>, pool: &PoolConfig) -> Result<PgDb, StoreError> {
        let (options, pool_options) = PgDb::options(url, schema, pool)?;
        Ok(PgDb::new(pool_options.connect_with(options).await?, pool))
    }

    /// Connects on first use (replicas: one that is down at start is simply skipped).
    pub fn connect_lazy(url: &str, schema: Option<&str>, pool: &PoolConfig) -> Result<PgDb, StoreError> {
        let (options, pool_options) = PgDb::options(url, schema, pool)?;
        Ok(PgDb::new(
            pool_options.min_connections(0).connect_lazy_with(options),
            pool,
        ))
    }

    pub fn set_replicas(&mut self, replicas: Arc<Replicas>) {
        self.replicas = Some(replicas);
    }

    pub fn replicas(&self) -> Option<&Replicas> {
        self.replicas.as_deref()
    }

    /// Reads served by replicas so far.
    pub fn replica_statements(&self) -> u64 {
        self.replica_statements.load(Ordering::Relaxed)
    }

    pub fn slow_query(&self) -> std::time::Duration {
        self.slow_query
    }

    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    pub fn pool_state(&self) -> crate::PoolState {
        let size = self.pool.size() as usize;
        let idle = self.pool.num_idle();
        crate::PoolState {
            in_use: size.saturating_sub(idle),
            idle,
            waiting: self.waiting.load(Ordering::Relaxed),
            max: self.pool.options().get_max_connections() as usize,
        }
    }

    /// A connection from the pool, counting the wait.
    async fn acquire(&self) -> Result<sqlx::pool::PoolConnection<Postgres>, StoreError> {
        let started = std::time::Instant::now();
        let waiting = crate::Waiting::new(&self.waiting);
        let connection = self.pool.acquire().await?;
        drop(waiting);
        crate::observe::acquired(started.elapsed());
        Ok(connection)
    }

    /// A read: on a usable replica when the request may read from one, else here. A replica
    /// that fails is marked down and the read is retried on the primary.
    pub async fn query(&self, sql: &Sql) -> Result<Vec<Row>, StoreError> {
        if let Some(replicas) = &self.replicas
            && crate::observe::may_use_replica()
            && let Some(replica) = replicas.pick()
        {
            match replica.db.query_here(sql).await {
                Ok(rows) => {
                    crate::observe::replica_read();
                    self.replica_statements.fetch_add(1, Ordering::Relaxed);
                    return Ok(rows);
                }
                Err(StoreError::Timeout) => return Err(StoreError::Timeout),
                Err(error) => {
                    tracing::warn!(replica = %replica.name, error = %error, "replica read failed; using the primary");
                    replica.failed();
                }
            }
        }
        self.query_here(sql).await
    }

    /// A read on this server's own pool.
    pub async fn query_here(&self, sql: &Sql) -> Result<Vec<Row>, StoreError> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let mut connection = self.acquire().await?;
        let rows = build(sql).fetch_all(&mut *connection).await?;
        rows.iter().map(cells).collect()
    }

    /// A transaction on a pooled connection (the measured wait includes the BEGIN round trip).
    pub async fn begin(&self) -> Result<PgTx, StoreError> {
        let started = std::time::Instant::now();
        let waiting = crate::Waiting::new(&self.waiting);
        let mut transaction = self.pool.begin().await?;
        drop(waiting);
        crate::observe::acquired(started.elapsed());
        // Writes have their own statement timeout (the connection's default is the reads').
        if self.write_statement_timeout != self.statement_timeout {
            let set = format!(
                "SET LOCAL statement_timeout = {}",
                self.write_statement_timeout.as_millis()
            );
            sqlx::raw_sql(AssertSqlSafe(set)).execute(&mut *transaction).await?;
        }
        Ok(PgTx {
            transaction,
            statements: self.statements.clone(),
        })
    }

    /// A dedicated connection for LISTEN, with this pool's settings.
    pub async fn listener(&self) -> Result<sqlx::postgres::PgListener, StoreError> {
        Ok(sqlx::postgres::PgListener::connect_with(&self.pool).await?)
    }

    pub async fn execute_script(&self, script: &str) -> Result<(), StoreError> {
        sqlx::raw_sql(AssertSqlSafe(script.to_string()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub struct PgTx {
    transaction: sqlx::Transaction<'static, Postgres>,
    statements: Arc<AtomicU64>,
}

impl PgTx {
    pub async fn query(&mut self, sql: &Sql) -> Result<Vec<Row>, StoreError> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let rows = build(sql).fetch_all(&mut *self.transaction).await?;
        rows.iter().map(cells).collect()
    }

    pub async fn execute(&mut self, sql: &Sql) -> Result<u64, StoreError> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        Ok(build(sql).execute(&mut *self.transaction).await?.rows_affected())
    }

    pub async fn execute_script(&mut self, script: &str) -> Result<(), StoreError> {
        sqlx::raw_sql(AssertSqlSafe(script.to_string()))
            .execute(&mut *self.transaction)
            .await?;
        Ok(())
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        self.transaction.commit().await?;
        Ok(())
    }

    /// Runs `COPY … FROM STDIN` with `data` in its text format; returns the rows copied.
    pub async fn copy_in(&mut self, statement: &str, data: &[u8]) -> Result<u64, StoreError> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let mut copy = self.transaction.copy_in_raw(statement).await?;
        // Half-megabyte messages keep the connection's write buffer small.
        for chunk in data.chunks(512 * 1024) {
            if let Err(error) = copy.send(chunk).await {
                let _ = copy.abort("keel: sending failed").await;
                return Err(error.into());
            }
        }
        Ok(copy.finish().await?)
    }

    /// One insert under its own savepoint, so a constraint failure leaves the transaction usable.
    pub async fn insert_guarded(&mut self, statement: &str, row: &[SqlValue]) -> Result<(), StoreError> {
        self.execute_script("SAVEPOINT keel_row").await?;
        let mut query = sqlx::query(AssertSqlSafe(statement.to_string()));
        for value in row {
            query = bind(query, value);
        }
        self.statements.fetch_add(1, Ordering::Relaxed);
        match query.execute(&mut *self.transaction).await {
            Ok(_) => {
                self.execute_script("RELEASE SAVEPOINT keel_row").await?;
                Ok(())
            }
            Err(error) => {
                self.execute_script("ROLLBACK TO SAVEPOINT keel_row").await?;
                Err(error.into())
            }
        }
    }
}

// Read replicas (D10): reads go to a healthy replica whose replay lag is within
// `replica_max_lag`; writes, reads in a request that wrote, and reads by a client that wrote
// recently (read-your-writes, decided by the server) go to the primary. A monitor measures
// each replica's lag every second; a replica that errors is skipped until it answers again.

pub struct Replicas {
    list: Vec<Replica>,
    max_lag: Duration,
    next: AtomicUsize,
}

pub struct Replica {
    pub name: String,
    pub db: PgDb,
    healthy: AtomicBool,
    lag_ms: AtomicU64,
}

/// A replica as `/health/ready` and `/metrics` report it.
#[derive(Debug, Clone)]
pub struct ReplicaState {
    pub name: String,
    pub healthy: bool,
    pub lag_ms: u64,
}

/// Replay lag: zero when everything received is replayed, else the age of the last replayed
/// transaction (so an idle replica is not "late").
const LAG_SQL: &str = "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
     ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) * 1000, 0) END::bigint";

impl Replicas {
    /// Sets up pools lazily (a replica that is down at start is skipped until it answers) and
    /// starts the lag monitor.
    pub fn connect(urls: &[String], schema: Option<&str>, pool: &PoolConfig) -> Result<Arc<Replicas>, StoreError> {
        let mut list = vec![];
        for url in urls {
            let name = url.rsplit('@').next().unwrap_or(url).to_string();
            list.push(Replica {
                name,
                db: PgDb::connect_lazy(url, schema, pool)?,
                healthy: AtomicBool::new(false),
                lag_ms: AtomicU64::new(0),
            });
        }
        let replicas = Arc::new(Replicas {
            list,
            max_lag: pool.replica_max_lag,
            next: AtomicUsize::new(0),
        });
        let monitor = Arc::downgrade(&replicas);
        tokio::spawn(async move {
            loop {
                let Some(replicas) = monitor.upgrade() else { return };
                replicas.check().await;
                drop(replicas);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Ok(replicas)
    }

    /// Measures every replica's lag now.
    pub async fn check(&self) {
        for replica in &self.list {
            let sql = Sql {
                dialect: keel_query::Dialect::Postgres,
                text: LAG_SQL.to_string(),
                params: vec![],
            };
            match tokio::time::timeout(Duration::from_secs(2), replica.db.query_here(&sql)).await {
                Ok(Ok(rows)) => {
                    let lag = rows.first().and_then(|r| r[0].int()).unwrap_or(0).max(0) as u64;
                    replica.lag_ms.store(lag, Ordering::Relaxed);
                    replica.healthy.store(true, Ordering::Relaxed);
                }
                _ => replica.healthy.store(false, Ordering::Relaxed),
            }
        }
    }

    /// A replica that may serve a read now, round-robin among the usable ones.
    pub fn pick(&self) -> Option<&Replica> {
        let usable: Vec<&Replica> = self.list.iter().filter(|r| self.usable(r)).collect();
        if usable.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(usable[n % usable.len()])
    }

    fn usable(&self, replica: &Replica) -> bool {
        replica.healthy.load(Ordering::Relaxed)
            && Duration::from_millis(replica.lag_ms.load(Ordering::Relaxed)) <= self.max_lag
    }

    pub fn states(&self) -> Vec<ReplicaState> {
        self.list
            .iter()
            .map(|r| ReplicaState {
                name: r.name.clone(),
                healthy: r.healthy.load(Ordering::Relaxed),
                lag_ms: r.lag_ms.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl Replica {
    /// Marks the replica unusable until the monitor sees it answer again.
    pub fn failed(&self) {
        self.healthy.store(false, Ordering::Relaxed);
    }
}
