//! The store boundary: one `Db` handle over SQLite or PostgreSQL, the migration planner, and
//! the record and system-table operations both backends share.

pub mod accounts;
pub mod audit;
pub mod backups;
pub mod bulk;
pub mod cell;
pub mod changes;
pub mod db;
pub mod error;
pub mod errors;
pub mod files;
pub mod identities;
pub mod invitations;
pub mod jobs;
pub mod mfa;
pub mod migrate;
pub mod observe;
mod params;
pub mod partitions;
pub mod postgres;
pub mod records;
pub mod security;
pub mod sqlite;
pub mod system;
pub mod uploads;

use std::time::Duration;

pub use cell::{Cell, Row};
pub use db::{Db, Location, Tx};
pub use error::StoreError;

/// A snapshot of a pool: connections in use and idle, and callers waiting for one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolState {
    pub in_use: usize,
    pub idle: usize,
    pub waiting: usize,
    pub max: usize,
}

/// Counts a caller waiting for a connection until it has one (or gives up).
pub(crate) struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    pub(crate) fn new(counter: &'a std::sync::atomic::AtomicUsize) -> Waiting<'a> {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Connection-pool settings (D1). For SQLite, `max_connections` is the number of readers;
/// writes always go through the single writer.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub statement_timeout: Duration,
    /// The statement timeout inside write transactions (the other request class).
    pub write_statement_timeout: Duration,
    /// Statements that take at least this long are logged as slow queries.
    pub slow_query: Duration,
    /// A PostgreSQL replica further behind than this is skipped.
    pub replica_max_lag: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        // A fixed default (not derived from the core count) so docs/CONFIG.md is the same on
        // every machine; PostgreSQL's default max_connections (100) fits several instances.
        PoolConfig {
            max_connections: 16,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(1800),
            statement_timeout: Duration::from_secs(10),
            write_statement_timeout: Duration::from_secs(10),
            slow_query: Duration::from_millis(250),
            replica_max_lag: Duration::from_secs(5),
        }
    }
}
