//! The SQLite backend: one file in WAL mode, one writer connection and a pool of readers.
//!
//! rusqlite calls are synchronous. A request's statements take tens to hundreds of
//! microseconds, less than handing the work to another thread costs (measured: moving every
//! statement through `block_in_place` cut list throughput by a third), so they run inline on the
//! async worker; the statement timeout (a progress handler, which leaves the connection healthy)
//! bounds how long one can hold it. Scripts and migrations run under `block_in_place`.
//!
//! Checkpoints (copying committed pages from the WAL into the database file) run on a thread
//! of their own, as PostgreSQL's checkpointer does, not inside the COMMIT that crossed SQLite's
//! threshold: a commit only appends to the WAL, so no request pays for copying the pages of
//! the writes before it (see `Checkpointer`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel_query::{Sql, SqlValue};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OpenFlags};
use std::sync::atomic::AtomicUsize;

use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore, oneshot};

use crate::PoolConfig;
use crate::cell::{Cell, Row};
use crate::error::StoreError;

pub struct SqliteDb {
    path: PathBuf,
    writer: Arc<Mutex<Writer>>,
    /// Transactions waiting for the writer: while there are any, a finished transaction
    /// leaves its commit to the group (see `SqliteTx::commit`).
    waiting: Arc<AtomicUsize>,
    readers: std::sync::Mutex<Vec<Connection>>,
    reader_permits: Semaphore,
    reader_count: usize,
    readers_waiting: AtomicUsize,
    pool: PoolConfig,
    statements: Arc<AtomicU64>,
}

/// Runs long SQLite work (migrations, scripts) without stalling the async runtime: the
/// worker hands its other tasks to another thread first.
fn blocking<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

fn open(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if !read_only {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let connection = Connection::open_with_flags(path, flags)?;
    connection.execute_batch(
        "PRAGMA busy_timeout = 5000;
         PRAGMA foreign_keys = ON;
         PRAGMA synchronous = NORMAL;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -32000;
         PRAGMA mmap_size = 268435456;",
    )?;
    if read_only {
        connection.execute_batch("PRAGMA query_only = ON;")?;
    } else {
        let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Other(format!("could not enable WAL mode (got {mode})")));
        }
        connection.execute_batch(&format!("PRAGMA journal_size_limit = {WAL_KEEP_BYTES};"))?;
    }
    connection.set_prepared_statement_cache_capacity(256);
    Ok(connection)
}

fn to_sqlite(value: &SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::Null,
        SqlValue::Int(i) => Value::Integer(*i),
        SqlValue::Float(f) => Value::Real(*f),
        SqlValue::Text(s) => Value::Text(s.clone()),
        SqlValue::Bool(b) => Value::Integer(i64::from(*b)),
        SqlValue::Uuid(u) => Value::Text(u.to_string()),
        SqlValue::Date(d) => Value::Text(d.format("%Y-%m-%d").to_string()),
        SqlValue::Datetime(d) => Value::Text(keel_query::value::format_datetime(d)),
        SqlValue::Json(j) => Value::Text(j.to_string()),
        SqlValue::Bytes(b) => Value::Blob(b.clone()),
    }
}

/// Binds a value without building an owned SQLite value for it: text is bound borrowed,
/// and ids, dates and times are written into `scratch` (SQLite copies bound text at once, so
/// one buffer serves every parameter). The same time, as every row of an import has, is
/// formatted once. This is the bulk insert's hot loop: a million rows bind 17 million values.
struct Binder {
    scratch: String,
    last_time: Option<(chrono::DateTime<chrono::Utc>, String)>,
}

impl Binder {
    fn new() -> Binder {
        Binder {
            scratch: String::with_capacity(64),
            last_time: None,
        }
    }

    fn bind(
        &mut self,
        statement: &mut rusqlite::Statement<'_>,
        index: usize,
        value: &SqlValue,
    ) -> rusqlite::Result<()> {
        use std::fmt::Write as _;
        match value {
            SqlValue::Null => statement.raw_bind_parameter(index, rusqlite::types::Null),
            SqlValue::Int(i) => statement.raw_bind_parameter(index, *i),
            SqlValue::Float(f) => statement.raw_bind_parameter(index, *f),
            SqlValue::Bool(b) => statement.raw_bind_parameter(index, i64::from(*b)),
            SqlValue::Text(text) => statement.raw_bind_parameter(index, text.as_str()),
            SqlValue::Uuid(id) => {
                let mut buffer = uuid::Uuid::encode_buffer();
                statement.raw_bind_parameter(index, &*id.hyphenated().encode_lower(&mut buffer))
            }
            SqlValue::Date(date) => {
                self.scratch.clear();
                let _ = write!(self.scratch, "{}", date.format("%Y-%m-%d"));
                statement.raw_bind_parameter(index, self.scratch.as_str())
            }
            SqlValue::Datetime(time) => {
                match &self.last_time {
                    Some((last, _)) if last == time => {}
                    _ => self.last_time = Some((*time, keel_query::value::format_datetime(time))),
                }
                let text = self
                    .last_time
                    .as_ref()
                    .map(|(_, text)| text.as_str())
                    .unwrap_or_default();
                statement.raw_bind_parameter(index, text)
            }
            other => statement.raw_bind_parameter(index, to_sqlite(other)),
        }
    }
}

/// Arms the progress handler so a statement running past `timeout` is interrupted.
fn arm_timeout(connection: &Connection, timeout: Duration) -> Result<(), StoreError> {
    let deadline = Instant::now() + timeout;
    connection.progress_handler(4_000, Some(move || Instant::now() > deadline))?;
    Ok(())
}

fn run_query(connection: &Connection, sql: &Sql, timeout: Duration) -> Result<Vec<Row>, StoreError> {
    arm_timeout(connection, timeout)?;
    let result = (|| {
        let mut statement = connection.prepare_cached(&sql.text)?;
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(sql.params.iter().map(to_sqlite)))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut cells = Vec::with_capacity(columns);
            for i in 0..columns {
                cells.push(match row.get_ref(i)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(i) => Cell::Int(i),
                    ValueRef::Real(f) => Cell::Float(f),
                    ValueRef::Text(t) => Cell::Text(match std::str::from_utf8(t) {
                        Ok(text) => text.to_owned(),
                        Err(_) => String::from_utf8_lossy(t).into_owned(),
                    }),
                    ValueRef::Blob(b) => Cell::Bytes(b.to_vec()),
                });
            }
            out.push(cells);
        }
        Ok::<_, rusqlite::Error>(out)
    })();
    connection.progress_handler(0, None::<fn() -> bool>)?;
    Ok(result?)
}

fn run_execute(connection: &Connection, sql: &Sql, timeout: Duration) -> Result<u64, StoreError> {
    arm_timeout(connection, timeout)?;
    let result = (|| {
        let mut statement = connection.prepare_cached(&sql.text)?;
        statement.execute(rusqlite::params_from_iter(sql.params.iter().map(to_sqlite)))
    })();
    connection.progress_handler(0, None::<fn() -> bool>)?;
    Ok(result? as u64)
}

impl SqliteDb {
    pub fn open(path: &Path, pool: PoolConfig) -> Result<SqliteDb, StoreError> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", parent.display())))?;
        }
        let writer = open(path, false)?;
        let checkpointer = Checkpointer::start(path)?;
        writer.wal_hook(Some(wal_hook));
        let reader_count = pool.max_connections.max(1) as usize;
        let mut readers = Vec::with_capacity(reader_count);
        for _ in 0..reader_count {
            readers.push(open(path, true)?);
        }
        Ok(SqliteDb {
            path: path.to_path_buf(),
            writer: Arc::new(Mutex::new(Writer {
                connection: writer,
                open: false,
                pending: Vec::new(),
                checkpointer,
            })),
            waiting: Arc::new(AtomicUsize::new(0)),
            readers: std::sync::Mutex::new(readers),
            reader_permits: Semaphore::new(reader_count),
            reader_count,
            readers_waiting: AtomicUsize::new(0),
            pool,
            statements: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn slow_query(&self) -> Duration {
        self.pool.slow_query
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// The reader pool (writes wait for the single writer and show under `waiting` too).
    pub fn pool_state(&self) -> crate::PoolState {
        let idle = self.reader_permits.available_permits();
        crate::PoolState {
            in_use: self.reader_count - idle,
            idle,
            waiting: self.readers_waiting.load(Ordering::Relaxed) + self.waiting.load(Ordering::SeqCst),
            max: self.reader_count,
        }
    }

    /// Runs a read on a reader connection.
    pub async fn query(&self, sql: &Sql) -> Result<Vec<Row>, StoreError> {
        let started = Instant::now();
        let waiting = crate::Waiting::new(&self.readers_waiting);
        let permit = tokio::time::timeout(self.pool.acquire_timeout, self.reader_permits.acquire())
            .await
            .map_err(|_| StoreError::Busy)?
            .map_err(|_| StoreError::Unavailable("the reader pool is closed".into()))?;
        drop(waiting);
        crate::observe::acquired(started.elapsed());
        let connection = self
            .readers
            .lock()
            .expect("reader pool lock")
            .pop()
            .expect("a permit guarantees a connection");
        self.statements.fetch_add(1, Ordering::Relaxed);
        let result = run_query(&connection, sql, self.pool.statement_timeout);
        self.readers.lock().expect("reader pool lock").push(connection);
        drop(permit);
        result
    }

    /// Starts a write transaction on the single writer: a savepoint inside the open group
    /// transaction (`BEGIN IMMEDIATE` when none is open).
    pub async fn begin(&self) -> Result<SqliteTx, StoreError> {
        let started = Instant::now();
        let waiting = WaitGuard::new(&self.waiting);
        let mut guard = tokio::time::timeout(self.pool.acquire_timeout, self.writer.clone().lock_owned())
            .await
            .map_err(|_| StoreError::Busy)?;
        drop(waiting);
        crate::observe::acquired(started.elapsed());
        if !guard.open {
            guard.connection.execute_batch("BEGIN IMMEDIATE")?;
            guard.open = true;
        }
        if let Err(error) = guard.connection.execute_batch("SAVEPOINT keel_tx") {
            guard.settle();
            return Err(error.into());
        }
        Ok(SqliteTx {
            writer: Some(guard),
            shared: self.writer.clone(),
            waiting: self.waiting.clone(),
            finished: false,
            timeout: self.pool.write_statement_timeout,
            statements: self.statements.clone(),
        })
    }

    /// Checkpoints the WAL on the writer, after any running background checkpoint.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let guard = self.idle_writer().await?;
        blocking(|| guard.checkpointer.catch_up(&guard.connection));
        Ok(())
    }

    /// Runs work on the writer outside a transaction (PRAGMAs, VACUUM, checks), after
    /// committing any open group.
    pub async fn with_writer<R>(
        &self,
        work: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut guard = self.idle_writer().await?;
        let result = blocking(|| work(&guard.connection));
        guard.after_commit();
        result
    }

    /// The writer with no group open (any open group is committed first).
    async fn idle_writer(&self) -> Result<tokio::sync::MutexGuard<'_, Writer>, StoreError> {
        let mut guard = tokio::time::timeout(self.pool.acquire_timeout, self.writer.lock())
            .await
            .map_err(|_| StoreError::Busy)?;
        if guard.open {
            guard.commit_group();
        }
        Ok(guard)
    }
}

/// The writer connection and its group commit: transactions run one after another as
/// savepoints of one SQLite transaction, which commits when no other writer is waiting (or
/// the group is full). Every page a group touches is written to the WAL once instead of once
/// per transaction; each transaction's `commit` returns only after the group's COMMIT.
struct Writer {
    connection: Connection,
    /// A group transaction is open.
    open: bool,
    /// Transactions released into the open group, waiting for its COMMIT.
    pending: Vec<oneshot::Sender<Result<(), String>>>,
    checkpointer: Checkpointer,
}

/// The most transactions one group commit carries.
const MAX_GROUP: usize = 256;

impl Writer {
    /// Commits the open group and tells every member how it went.
    fn commit_group(&mut self) {
        let result = self.connection.execute_batch("COMMIT").map_err(|e| e.to_string());
        if result.is_err() {
            let _ = self.connection.execute_batch("ROLLBACK");
        }
        self.open = false;
        self.after_commit();
        for member in self.pending.drain(..) {
            let _ = member.send(result.clone());
        }
    }

    /// After a commit: the WAL hook (called inside COMMIT, on this thread) left the WAL's size;
    /// past SQLite's threshold the checkpointer is woken. Only when the WAL is past
    /// `WAL_BOUND_PAGES` while a checkpoint is already running does the writer wait for it and
    /// checkpoint what came since itself: the WAL cannot outgrow what the checkpointer copies.
    fn after_commit(&mut self) {
        let pages = WAL_PAGES.with(|cell| cell.replace(0));
        if pages < CHECKPOINT_PAGES {
            return;
        }
        if pages >= self.checkpointer.bound && self.checkpointer.running() {
            blocking(|| self.checkpointer.catch_up(&self.connection));
        } else {
            self.checkpointer.wake();
        }
    }

    /// After a transaction is abandoned: commit the others' work, or end the empty group.
    fn settle(&mut self) {
        if !self.open {
            return;
        }
        if self.pending.is_empty() {
            let _ = self.connection.execute_batch("ROLLBACK");
            self.open = false;
        } else {
            self.commit_group();
        }
    }
}

/// SQLite's own checkpoint threshold (the `wal_autocheckpoint` default), in WAL pages.
const CHECKPOINT_PAGES: i32 = 1000;

/// Past this many WAL pages (256 MiB of 4 KiB pages), a commit that finds a checkpoint still
/// running waits for it (see `Writer::after_commit`).
const WAL_BOUND_PAGES: i32 = 65_536;

/// A WAL left after a checkpoint is cut back to this size when the writer starts it over
/// (`journal_size_limit`), so a large import's WAL does not keep its disk space.
const WAL_KEEP_BYTES: i64 = 64 << 20;

thread_local! {
    /// The pages in the WAL after the last commit made on this thread (set by `wal_hook`).
    static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// Called by SQLite inside every COMMIT of the writer, on the committing thread. Registering
/// it turns SQLite's automatic checkpoint (which would copy the pages inside that COMMIT) off.
fn wal_hook(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|cell| cell.set(pages));
    Ok(())
}

/// Checkpoints the WAL on a thread of its own with its own connection, woken by the writer
/// when the WAL passes SQLite's threshold. A checkpoint is PASSIVE: it waits for no reader or
/// writer and copies every frame no reader still needs; the writer starts the WAL over at its
/// next transaction once everything is copied. The thread ends when the database is dropped.
struct Checkpointer {
    /// Dropping it ends the thread, which `Drop` then joins: its connection is closed when
    /// the database is, so nothing touches the files after (a restore replaces them).
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Held while a checkpoint runs.
    lock: Arc<std::sync::Mutex<()>>,
    /// `WAL_BOUND_PAGES` (smaller in tests).
    bound: i32,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let connection = open(path, false)?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let lock = Arc::new(std::sync::Mutex::new(()));
        let held = lock.clone();
        let thread = std::thread::Builder::new()
            .name("keel-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    let _running = held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    checkpoint(&connection, "background");
                }
            })
            .map_err(|e| StoreError::Other(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            wake: Some(wake),
            thread: Some(thread),
            lock,
            bound: WAL_BOUND_PAGES,
        })
    }

    /// Asks for a checkpoint (one already asked for and not begun covers this one too).
    fn wake(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }

    fn running(&self) -> bool {
        matches!(self.lock.try_lock(), Err(std::sync::TryLockError::WouldBlock))
    }

    /// Waits for the running checkpoint, then checkpoints on `connection` what came since.
    fn catch_up(&self, connection: &Connection) {
        let _running = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        checkpoint(connection, "writer");
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One PASSIVE checkpoint; failures are logged (the WAL keeps the pages, nothing is lost).
fn checkpoint(connection: &Connection, by: &'static str) {
    let started = Instant::now();
    let outcome = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match outcome {
        Ok((wal_pages, copied)) => tracing::debug!(
            by,
            wal_pages,
            copied,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "WAL checkpoint"
        ),
        Err(error) => tracing::warn!(by, %error, "WAL checkpoint failed"),
    }
}

/// Counts a transaction waiting for the writer until it gets it (or gives up).
struct WaitGuard(Arc<AtomicUsize>);

impl WaitGuard {
    fn new(counter: &Arc<AtomicUsize>) -> WaitGuard {
        counter.fetch_add(1, Ordering::SeqCst);
        WaitGuard(counter.clone())
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A write transaction holding the writer connection; rolls back if dropped unfinished.
pub struct SqliteTx {
    writer: Option<OwnedMutexGuard<Writer>>,
    shared: Arc<Mutex<Writer>>,
    waiting: Arc<AtomicUsize>,
    finished: bool,
    timeout: Duration,
    statements: Arc<AtomicU64>,
}

impl SqliteTx {
    fn connection_ref(&self) -> &Connection {
        &self
            .writer
            .as_ref()
            .expect("an unfinished transaction holds the writer")
            .connection
    }

    pub fn query(&mut self, sql: &Sql) -> Result<Vec<Row>, StoreError> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        run_query(self.connection_ref(), sql, self.timeout)
    }

    pub fn execute(&mut self, sql: &Sql) -> Result<u64, StoreError> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        run_execute(self.connection_ref(), sql, self.timeout)
    }

    /// Inserts rows with multi-row prepared statements (`rows_per` rows each: far fewer
    /// statements, and so statement-journal copies, than one per row). A statement that a
    /// constraint rejects is run again row by row; those rows fail alone (SQLite undoes just
    /// the failing statement). Returns the failed rows by index.
    pub fn insert_many(
        &mut self,
        table_columns: &str,
        columns: usize,
        rows: &[Vec<SqlValue>],
    ) -> Result<crate::error::RowFailures, StoreError> {
        self.statements.fetch_add(rows.len() as u64, Ordering::Relaxed);
        let connection = self.connection_ref();
        let timeout = self.timeout;
        let rows_per = (32_000 / columns.max(1)).clamp(1, 256);
        let statement = |count: usize| {
            let mut text = format!("INSERT INTO {table_columns} VALUES ");
            for row in 0..count {
                if row > 0 {
                    text.push_str(", ");
                }
                text.push('(');
                for column in 0..columns {
                    if column > 0 {
                        text.push_str(", ");
                    }
                    text.push_str(&format!("?{}", row * columns + column + 1));
                }
                text.push(')');
            }
            text
        };
        blocking(|| {
            arm_timeout(connection, timeout)?;
            let result = (|| {
                let mut failures = vec![];
                let mut binder = Binder::new();
                let full = statement(rows_per);
                let single = statement(1);
                for (part_index, part) in rows.chunks(rows_per).enumerate() {
                    let last;
                    let text = if part.len() == rows_per {
                        &full
                    } else {
                        last = statement(part.len());
                        &last
                    };
                    let mut prepared = connection.prepare_cached(text)?;
                    for (r, row) in part.iter().enumerate() {
                        for (c, value) in row.iter().enumerate() {
                            binder.bind(&mut prepared, r * columns + c + 1, value)?;
                        }
                    }
                    match prepared.raw_execute() {
                        Ok(_) => continue,
                        Err(error) => match StoreError::from(error) {
                            StoreError::Unique { .. } | StoreError::ForeignKey(_) => {}
                            other => return Err(other),
                        },
                    }
                    let mut one = connection.prepare_cached(&single)?;
                    for (r, row) in part.iter().enumerate() {
                        for (c, value) in row.iter().enumerate() {
                            binder.bind(&mut one, c + 1, value)?;
                        }
                        if let Err(error) = one.raw_execute() {
                            match StoreError::from(error) {
                                failure @ (StoreError::Unique { .. } | StoreError::ForeignKey(_)) => {
                                    failures.push((part_index * rows_per + r, failure))
                                }
                                other => return Err(other),
                            }
                        }
                    }
                }
                Ok(failures)
            })();
            connection.progress_handler(0, None::<fn() -> bool>)?;
            result
        })
    }

    /// Runs one prepared insert per row (the plain loop, for comparison); a row that a
    /// constraint rejects fails alone. Returns the failed rows by index.
    pub fn insert_each(
        &mut self,
        statement: &str,
        rows: &[Vec<SqlValue>],
    ) -> Result<crate::error::RowFailures, StoreError> {
        self.statements.fetch_add(rows.len() as u64, Ordering::Relaxed);
        let connection = self.connection_ref();
        let timeout = self.timeout;
        blocking(|| {
            arm_timeout(connection, timeout)?;
            let result = (|| {
                let mut prepared = connection.prepare_cached(statement)?;
                let mut failures = vec![];
                let mut binder = Binder::new();
                for (index, row) in rows.iter().enumerate() {
                    for (i, value) in row.iter().enumerate() {
                        binder.bind(&mut prepared, i + 1, value)?;
                    }
                    match prepared.raw_execute() {
                        Ok(_) => {}
                        Err(error) => match StoreError::from(error) {
                            failure @ (StoreError::Unique { .. } | StoreError::ForeignKey(_)) => {
                                failures.push((index, failure))
                            }
                            other => return Err(other),
                        },
                    }
                }
                Ok(failures)
            })();
            connection.progress_handler(0, None::<fn() -> bool>)?;
            result
        })
    }

    /// Runs several statements of trusted SQL (DDL from the migration planner).
    pub fn execute_script(&mut self, script: &str) -> Result<(), StoreError> {
        blocking(|| self.connection_ref().execute_batch(script))?;
        Ok(())
    }

    /// Releases the savepoint into the group and waits for the group's COMMIT. The last
    /// transaction of a burst commits the group itself; if the group is left open (a waiting
    /// writer went away), the transaction commits it after a short wait.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        let mut writer = self.writer.take().expect("an unfinished transaction holds the writer");
        self.finished = true;
        if let Err(error) = writer.connection.execute_batch("RELEASE keel_tx") {
            let _ = writer.connection.execute_batch("ROLLBACK TO keel_tx; RELEASE keel_tx");
            writer.settle();
            return Err(error.into());
        }
        let (sender, mut receiver) = oneshot::channel();
        writer.pending.push(sender);
        if self.waiting.load(Ordering::SeqCst) == 0 || writer.pending.len() >= MAX_GROUP {
            writer.commit_group();
        }
        drop(writer);
        let outcome = match tokio::time::timeout(Duration::from_millis(5), &mut receiver).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let mut writer = self.shared.lock().await;
                if writer.open && !writer.pending.is_empty() {
                    writer.commit_group();
                }
                drop(writer);
                receiver.await
            }
        };
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Other(format!("commit failed: {message}"))),
            Err(_) => Err(StoreError::Other("the writer dropped the commit".into())),
        }
    }

    pub fn connection(&self) -> &Connection {
        self.connection_ref()
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.as_mut()
            && !self.finished
        {
            let _ = writer.connection.execute_batch("ROLLBACK TO keel_tx; RELEASE keel_tx");
            writer.settle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes about `mib` MiB in one transaction (4 KiB pages: 256 pages a MiB).
    async fn write_mib(db: &SqliteDb, mib: usize) {
        let mut tx = db.begin().await.unwrap();
        tx.execute_script(&format!(
            "CREATE TABLE IF NOT EXISTS blobs (data BLOB); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {}) \
             INSERT INTO blobs SELECT randomblob(1024) FROM n",
            mib * 1024
        ))
        .unwrap();
        tx.commit().await.unwrap();
    }

    /// A new database in a temporary directory (dropped with the first value).
    fn fresh_db() -> (tempfile::TempDir, PathBuf, SqliteDb) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.db");
        let db = SqliteDb::open(&path, PoolConfig::default()).unwrap();
        (dir, path, db)
    }

    fn file_mib(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len() >> 20).unwrap_or(0)
    }

    // The held guard stands for a running checkpoint; on this one-thread runtime only the
    // checkpoint thread (another OS thread) waits for it.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn commits_leave_the_checkpoint_to_the_checkpoint_thread() {
        let (_dir, path, db) = fresh_db();
        // While the checkpoint thread is held, a commit far past SQLite's threshold leaves
        // every page in the WAL: SQLite's own checkpoint inside COMMIT is off.
        let lock = db.writer.lock().await.checkpointer.lock.clone();
        let held = lock.lock().unwrap();
        write_mib(&db, 16).await;
        assert!(file_mib(&path) < 2, "the database file holds {} MiB", file_mib(&path));
        assert!(file_mib(&path.with_extension("db-wal")) >= 16);
        // Let go, and the thread copies the pages into the database file.
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(20);
        while file_mib(&path) < 16 {
            assert!(Instant::now() < deadline, "no checkpoint: {} MiB", file_mib(&path));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The next write starts the WAL over and cuts it back to `journal_size_limit`.
        write_mib(&db, 1).await;
        assert!(file_mib(&path.with_extension("db-wal")) <= (WAL_KEEP_BYTES >> 20) as u64);
        // Dropping the database closes every connection, the checkpoint thread's too, before
        // it returns: the last one to close checkpoints and removes the WAL.
        drop(db);
        assert!(!path.with_extension("db-wal").exists());
    }

    // The held guard stands for a running checkpoint; on this one-thread runtime only the
    // checkpoint thread (another OS thread) waits for it.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn past_the_bound_a_commit_waits_for_the_running_checkpoint_and_catches_up() {
        let (_dir, path, db) = fresh_db();
        db.writer.lock().await.checkpointer.bound = 2_000;
        // Under the bound nothing waits for a running checkpoint.
        let lock = db.writer.lock().await.checkpointer.lock.clone();
        let held = lock.lock().unwrap();
        write_mib(&db, 4).await;
        assert!(file_mib(&path) < 2);
        drop(held);
        db.checkpoint().await.unwrap();
        assert!(file_mib(&path) >= 4);
        // A "running checkpoint" that lasts 300 ms: the commit past the bound waits for it,
        // then copies its own pages before it returns.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let _held = lock.lock().unwrap();
            started_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        });
        started_rx.recv().unwrap();
        let started = Instant::now();
        write_mib(&db, 12).await;
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        assert!(file_mib(&path) >= 16, "the writer caught up: {} MiB", file_mib(&path));
        holder.join().unwrap();
    }
}
