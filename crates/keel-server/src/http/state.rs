//! Shared state handed to every handler: the checked schema, the database, config, metrics.

use std::sync::Arc;
use std::time::Instant;

use keel_query::{Patterns, Schema};
use keel_store::Db;

use crate::config::Config;

#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<Inner>,
}

pub struct Inner {
    pub schema: Arc<Schema>,
    pub patterns: Arc<Patterns>,
    pub db: Arc<Db>,
    /// The job runtime (started by `App::run_until`, or by tests).
    pub jobs: Arc<keel_jobs::Jobs>,
    /// Where uploaded files live.
    pub storage: Arc<crate::files::storage::Storage>,
    /// The sign-in providers (A4), with their cached discovery and keys.
    pub oidc: crate::auth::oidc::Providers,
    /// The keys that sign file links, shared by every instance through the database.
    pub keys: crate::auth::keys::KeyRing,
    /// Unexpected errors grouped by fingerprint (O6).
    pub errors: Arc<crate::ops::tracking::ErrorTracker>,
    /// The alert rules and their states (O4).
    pub alerts: Arc<crate::ops::alerts::Alerts>,
    pub config: Config,
    pub metrics: Arc<crate::http::metrics::Metrics>,
    pub shared: Arc<crate::http::shared::Shared>,
    /// The response cache of collections that declare `cache` (C1–C3).
    pub cache: Arc<crate::cache::ResponseCache>,
    /// This instance's realtime streams (R1–R3).
    pub realtime: crate::realtime::hub::Realtime,
    /// IP lists, rate limits and concurrency caps (S4, S5).
    pub protection: crate::protect::Protection,
    /// `console.allow_ips`, in front of the console and the admin API.
    pub fence: crate::console::Fence,
    /// Clients that wrote recently, by token hash (read-your-writes without Redis).
    pub recent_writers: crate::http::shared::RecentWriters,
    /// Set on SIGTERM: readiness fails while requests are still served (see `App::run_until`).
    pub draining: std::sync::atomic::AtomicBool,
    pub started: Instant,
    /// A hash of a random password at the configured cost, verified when a login names an
    /// unknown email.
    pub dummy_password_hash: String,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}
