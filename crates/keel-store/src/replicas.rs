//! PostgreSQL read replicas (D10): reads go to a healthy replica whose replay lag is within
//! `replica_max_lag`; writes, reads in a request that wrote, and reads by a client that wrote
//! recently (read-your-writes, decided by the server) go to the primary. A monitor measures
//! each replica's lag every second; a replica that errors is skipped until it answers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::PoolConfig;
use crate::error::StoreError;
use crate::postgres::PgDb;

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
            let sql = crate::db::portable(keel_query::Dialect::Postgres, LAG_SQL, vec![]);
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
