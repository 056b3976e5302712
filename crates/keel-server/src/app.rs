//! The app's lifecycle: load the spec, open (and migrate) the database, compose the state,
//! serve until shutdown, and the background loops an instance runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_query::{Patterns, Schema};
use keel_store::Db;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::metrics::Metrics;
use crate::http::shared;
use crate::http::state::{self, AppState};
use crate::router::router;
use crate::{auth, backup, cache, files, import, ops, protect};

/// Loads and checks a spec file: spec problems and rule problems together, with lines.
pub fn load_schema(source: &str) -> Result<Schema, Vec<String>> {
    let app = keel_spec::parse_app(source).map_err(|e| e.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>())?;
    Schema::new(app).map_err(|problems| problems.iter().map(|p| p.to_string()).collect())
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the spec {path}: {message}")]
    SpecFile { path: String, message: String },
    #[error("the spec has problems:\n{}", .0.join("\n"))]
    Spec(Vec<String>),
    #[error("cannot open the database: {0}")]
    Database(#[from] keel_store::StoreError),
    #[error(
        "the database needs migrations before Keel can serve (run `keel migrate plan`, then `keel migrate apply`, or start with --migrate):\n{0}"
    )]
    PendingMigrations(String),
    #[error(transparent)]
    Migrate(#[from] keel_store::migrate::MigrateError),
    #[error("cannot listen on {address}: {message}")]
    Bind { address: String, message: String },
}

/// Opens the database for a config and schema, applying or refusing pending migrations.
pub async fn open_database(config: &Config, schema: &Schema) -> Result<Db, StartError> {
    let db = Db::connect(&config.location(), &config.pool()).await?;
    let plan = keel_store::migrate::plan_for(&db, schema).await?;
    if !plan.is_empty() {
        if config.app.migrate_on_start {
            keel_store::migrate::apply(&db, schema, config.app.allow_destructive).await?;
        } else {
            let steps: Vec<String> = plan.steps.iter().map(|s| format!("  - {}", s.description)).collect();
            return Err(StartError::PendingMigrations(steps.join("\n")));
        }
    }
    Ok(db)
}

/// A built app, bound to its listener (port 0 works), ready to serve.
pub struct App {
    pub state: AppState,
    listener: TcpListener,
    pub address: SocketAddr,
}

impl App {
    /// Reads the spec, opens (and if configured migrates) the database, binds the listener.
    pub async fn build(config: Config) -> Result<App, StartError> {
        let source = std::fs::read_to_string(&config.app.spec).map_err(|e| StartError::SpecFile {
            path: config.app.spec.display().to_string(),
            message: e.to_string(),
        })?;
        let schema = load_schema(&source).map_err(StartError::Spec)?;
        // A broken email template in the spec's folder stops the start, not the first email.
        auth::mail::Templates::load(config.app.spec.parent()).map_err(|e| StartError::Spec(vec![e]))?;
        let db = open_database(&config, &schema).await?;
        App::with_parts(config, schema, db).await
    }

    pub async fn with_parts(config: Config, schema: Schema, db: Db) -> Result<App, StartError> {
        let address = format!("{}:{}", config.server.host, config.server.port);
        let listener = TcpListener::bind(&address).await.map_err(|e| StartError::Bind {
            address: address.clone(),
            message: e.to_string(),
        })?;
        let bound = listener.local_addr().map_err(|e| StartError::Bind {
            address,
            message: e.to_string(),
        })?;
        Ok(App {
            state: state(config, schema, db),
            listener,
            address: bound,
        })
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// (up to `server.shutdown_grace_seconds`), and closes the database.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if self.state.config.console.enabled {
            crate::console::assets::warm();
        }
        let grace = Duration::from_secs(self.state.config.server.shutdown_grace_seconds);
        let state = self.state.clone();
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let drain = Duration::from_millis(self.state.config.server.drain_ms);
        let draining_state = self.state.clone();
        let (jobs_done_tx, jobs_done_rx) = tokio::sync::oneshot::channel::<()>();
        let service = router(self.state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(self.listener, service).with_graceful_shutdown(async move {
            shutdown.await;
            // Workers stop claiming at once; in-flight jobs finish within the jobs grace
            // period or go back to the queue, while HTTP drains.
            let jobs = draining_state.jobs.clone();
            tokio::spawn(async move {
                jobs.shutdown().await;
                let _ = jobs_done_tx.send(());
            });
            // First say "not ready" while still serving, so load balancers stop sending new
            // requests; then stop accepting and let in-flight requests finish. Realtime
            // streams end at once, telling clients to reconnect (to another instance).
            draining_state.draining.store(true, std::sync::atomic::Ordering::SeqCst);
            draining_state.realtime.shutdown();
            tracing::info!(
                drain_ms = drain.as_millis() as u64,
                "draining: /health/ready answers 503"
            );
            tokio::time::sleep(drain).await;
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
            let _ = stopped_tx.send(());
        });
        let serving = tokio::spawn(async move { server.await });
        let maintenance = spawn_maintenance(self.state.clone());
        let error_flusher = spawn_error_flusher(self.state.clone());
        let alerting = ops::alerting::spawn(self.state.clone());
        self.state.jobs.start();
        let result = tokio::select! {
            result = serving => result.map_err(std::io::Error::other)?,
            _ = async {
                let _ = stopped_rx.await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!("in-flight requests outlived the shutdown grace period");
                Ok(())
            }
        };
        maintenance.abort();
        error_flusher.abort();
        alerting.abort();
        state.errors.flush(&state.db).await;
        if jobs_done_rx.await.is_err() {
            // The server ended without a shutdown signal: stop the jobs now.
            state.jobs.shutdown().await;
        }
        state.db.close().await;
        result
    }
}

/// Adds this instance's error counts to the shared table every 5 seconds.
fn spawn_error_flusher(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            state.errors.flush(&state.db).await;
        }
    })
}

/// Runs time-series maintenance (partitions ahead, retention) at start and every hour. Every
/// step is idempotent, so instances running it at the same time do no harm.
fn spawn_maintenance(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !state.schema.app.collections.iter().any(|c| c.timeseries.is_some()) {
            return;
        }
        loop {
            match keel_store::partitions::maintain(&state.db, &state.schema, chrono::Utc::now()).await {
                Ok(report) => tracing::info!(?report, "time-series maintenance"),
                Err(error) => tracing::warn!(%error, "time-series maintenance failed; retrying in an hour"),
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
}

pub fn state(config: Config, schema: Schema, db: Db) -> AppState {
    // A malformed URL is refused by `Config::validate`; what is left cannot fail here.
    let shared = Arc::new(shared::Shared::connect(&config.redis).unwrap_or_else(|error| {
        tracing::error!(error, "redis is configured but unusable; running without shared state");
        shared::Shared::none()
    }));
    let dummy_password_hash = auth::hash_password_blocking(&config.auth, &uuid::Uuid::new_v4().to_string())
        .map_err(|e| e.cause.unwrap_or(e.message))
        .expect("argon2 hashes with valid parameters");
    let metrics = Arc::new(Metrics::new());
    let db = Arc::new(db);
    let schema = Arc::new(schema);
    let patterns = Arc::new(Patterns::new(&schema.app.collections));
    // `Config::validate` builds the same store, so a config that reached here builds.
    let storage = Arc::new(
        files::storage::Storage::new(&config.files, &config.app.data_dir)
            .expect("files.s3_* settings are checked by Config::validate"),
    );
    let cache = Arc::new(cache::ResponseCache::new(&schema.app, &config));
    let observer = Arc::new(ServerObserver {
        metrics: metrics.clone(),
        cache: cache.clone(),
        shared: shared.clone(),
        schema: schema.clone(),
    });
    let jobs = keel_jobs::Jobs::with_observer(db.clone(), schema.clone(), patterns.clone(), config.jobs(), observer);
    jobs.register(keel_spec::CLEANUP_KIND, files::cleanup_handler(storage.clone()));
    jobs.register(
        keel_spec::BACKUP_KIND,
        backup::job_handler(config.clone(), schema.app.clone(), storage.clone(), metrics.clone()),
    );
    let templates = auth::mail::Templates::load(config.app.spec.parent()).unwrap_or_else(|error| {
        tracing::error!(%error, "an account-email template does not parse; the built-in ones are used");
        auth::mail::Templates::load(None).expect("the built-in templates parse")
    });
    jobs.register(
        keel_spec::ACCOUNT_EMAIL_KIND,
        auth::mail::job_handler(config.clone(), Arc::new(templates)),
    );
    jobs.register(
        keel_spec::IMPORT_KIND,
        import::job_handler(import::Limits::of(&config.limits)),
    );
    let protection = protect::Protection::new(&config, &schema.app.rate_limits);
    let realtime = crate::realtime::Realtime::new(db.clone(), schema.clone(), config.realtime.clone(), metrics.clone());
    let fence = crate::console::Fence::new(&config);
    AppState {
        inner: Arc::new(state::Inner {
            cache,
            protection,
            realtime,
            fence,
            storage,
            keys: auth::keys::KeyRing::default(),
            oidc: auth::oidc::Providers::new(&config),
            errors: Arc::new(ops::tracking::ErrorTracker::new(&config)),
            alerts: Arc::new(ops::alerts::Alerts::new(&schema.app.alerts)),
            dummy_password_hash,
            patterns,
            schema,
            db,
            jobs,
            config,
            metrics,
            shared,
            draining: std::sync::atomic::AtomicBool::new(false),
            recent_writers: shared::RecentWriters::default(),
            started: Instant::now(),
        }),
    }
}

/// The job runtime's observer: metrics, and the response cache's stamps after jobs that
/// write records.
pub struct ServerObserver {
    pub metrics: Arc<Metrics>,
    pub cache: Arc<crate::cache::ResponseCache>,
    pub shared: Arc<crate::http::shared::Shared>,
    pub schema: Arc<Schema>,
}

impl keel_jobs::Observer for ServerObserver {
    fn claimed(&self, queue: &str, kind: &str, waited: std::time::Duration) {
        self.metrics.claimed(queue, kind, waited);
    }

    fn finished(&self, queue: &str, kind: &str, outcome: keel_jobs::Outcome, ran: std::time::Duration) {
        self.metrics.finished(queue, kind, outcome, ran);
        // What the job may have written: an HTTP kind's `into` collection; imports and the
        // cleanup (file retention) anything. Bumped when the job ends, whatever its outcome
        // (a failed attempt may have committed batches).
        let app = &self.schema.app;
        let written: Vec<String> = match app.jobs.kind(kind).map(|k| &k.handler) {
            Some(keel_spec::Handler::Http { into: Some(into), .. }) => vec![into.clone()],
            // An import may write any collection.
            _ if kind == keel_spec::IMPORT_KIND => app.collections.iter().map(|c| c.name.clone()).collect(),
            // The cleanup writes records only to remove expired and orphaned files.
            _ if kind == keel_spec::CLEANUP_KIND => app
                .collections
                .iter()
                .filter(|c| c.has_files())
                .map(|c| c.name.clone())
                .collect(),
            _ => vec![],
        };
        if !written.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (cache, shared) = (self.cache.clone(), self.shared.clone());
            runtime.spawn(async move {
                for collection in written {
                    cache.bump(&shared, &collection, None).await;
                }
            });
        }
    }

    fn enqueued(&self, queue: &str, kind: &str, count: u64) {
        self.metrics.enqueued(queue, kind, count);
    }

    fn rescued(&self, queue: &str, count: u64) {
        self.metrics.rescued(queue, count);
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}

/// Sets up logging: JSON lines (with the request span's fields) or pretty text.
pub fn init_logging(config: &crate::config::LogSection) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.format == "json" {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .try_init()
    } else {
        builder.try_init()
    };
}
