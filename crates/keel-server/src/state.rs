//! Shared state handed to every handler: the checked schema, the database, config, metrics.

use std::sync::Arc;
use std::time::Instant;

use keel_query::{Patterns, Schema};
use keel_store::Db;
use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

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
    pub storage: Arc<crate::storage::Storage>,
    /// The keys that sign file links, shared by every instance through the database.
    pub keys: crate::keys::KeyRing,
    /// Unexpected errors grouped by fingerprint (O6).
    pub errors: Arc<crate::tracking::ErrorTracker>,
    /// The alert rules and their states (O4).
    pub alerts: Arc<crate::alerts::Alerts>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub shared: Arc<crate::shared::Shared>,
    /// The response cache of collections that declare `cache` (C1–C3).
    pub cache: Arc<crate::cache::ResponseCache>,
    /// IP lists, rate limits and concurrency caps (S4, S5).
    pub protection: crate::protect::Protection,
    /// Clients that wrote recently, by token hash (read-your-writes without Redis).
    pub recent_writers: crate::shared::RecentWriters,
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

/// A Prometheus registry owned by the app (no global recorder, so tests can run many apps).
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

/// The job runtime's events as metrics (J11).
impl keel_jobs::Observer for Metrics {
    fn claimed(&self, queue: &str, kind: &str, waited: std::time::Duration) {
        let labels = vec![
            Label::new("queue", queue.to_string()),
            Label::new("kind", kind.to_string()),
        ];
        self.recorder
            .register_histogram(&Key::from_parts("keel_jobs_queue_wait_seconds", labels), &METADATA)
            .record(waited.as_secs_f64());
    }

    fn finished(&self, queue: &str, kind: &str, outcome: keel_jobs::Outcome, ran: std::time::Duration) {
        let labels = vec![
            Label::new("queue", queue.to_string()),
            Label::new("kind", kind.to_string()),
        ];
        let mut with_outcome = labels.clone();
        with_outcome.push(Label::new("outcome", outcome.as_str()));
        self.recorder
            .register_counter(&Key::from_parts("keel_jobs_finished_total", with_outcome), &METADATA)
            .increment(1);
        self.recorder
            .register_histogram(&Key::from_parts("keel_jobs_run_seconds", labels), &METADATA)
            .record(ran.as_secs_f64());
    }

    fn enqueued(&self, queue: &str, kind: &str, count: u64) {
        let labels = vec![
            Label::new("queue", queue.to_string()),
            Label::new("kind", kind.to_string()),
        ];
        self.recorder
            .register_counter(&Key::from_parts("keel_jobs_enqueued_total", labels), &METADATA)
            .increment(count);
    }

    fn rescued(&self, queue: &str, count: u64) {
        self.recorder
            .register_counter(
                &Key::from_parts("keel_jobs_rescued_total", vec![Label::new("queue", queue.to_string())]),
                &METADATA,
            )
            .increment(count);
    }
}

/// The job runtime's observer: metrics, and the response cache's stamps after jobs that
/// write records.
pub struct ServerObserver {
    pub metrics: Arc<Metrics>,
    pub cache: Arc<crate::cache::ResponseCache>,
    pub shared: Arc<crate::shared::Shared>,
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

static METADATA: Metadata<'static> = Metadata::new("keel", metrics::Level::INFO, Some("keel"));

/// Latency buckets in seconds, from 0.5 ms to 10 s (the alerts' windows use the same).
const LATENCY_BUCKETS: &[f64] = crate::alerts::BUCKETS;

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Every metric's `# HELP` line, from the catalogue (O2).
        for metric in crate::catalogue::METRICS
            .iter()
            .filter(|m| !m.name.starts_with("process_"))
        {
            let name = metrics::KeyName::from_const_str(metric.name);
            let help = metrics::SharedString::const_str(metric.help);
            match metric.kind {
                "counter" => recorder.describe_counter(name, None, help),
                "gauge" => recorder.describe_gauge(name, None, help),
                _ => recorder.describe_histogram(name, None, help),
            }
        }
        Metrics { recorder, handle }
    }

    /// One finished HTTP request. `route` is the matched template, never the raw path.
    pub fn http_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let labels = vec![
            Label::new("method", method.to_string()),
            Label::new("route", route.to_string()),
            Label::new("status", status.to_string()),
        ];
        self.recorder
            .register_counter(&Key::from_parts("keel_http_requests_total", labels.clone()), &METADATA)
            .increment(1);
        self.recorder
            .register_histogram(
                &Key::from_parts("keel_http_request_duration_seconds", labels),
                &METADATA,
            )
            .record(seconds);
    }

    /// Database work of one request: statements run and their total time, per route (D11).
    pub fn db_queries(&self, route: &str, queries: keel_store::observe::QueryStats) {
        if queries.statements == 0 {
            return;
        }
        let (statements, seconds) = (queries.statements, queries.total.as_secs_f64());
        self.recorder
            .register_histogram(
                &Key::from_parts(
                    "keel_db_pool_acquire_seconds",
                    vec![Label::new("route", route.to_string())],
                ),
                &METADATA,
            )
            .record(queries.acquire_wait.as_secs_f64());
        let labels = vec![Label::new("route", route.to_string())];
        self.recorder
            .register_counter(&Key::from_parts("keel_db_statements_total", labels.clone()), &METADATA)
            .increment(u64::from(statements));
        self.recorder
            .register_histogram(&Key::from_parts("keel_db_query_duration_seconds", labels), &METADATA)
            .record(seconds);
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, String)], value: f64) {
        let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect();
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
            .set(value);
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, String)], increment: u64) {
        let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect();
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
            .increment(increment);
    }

    /// Sets a counter to a total kept elsewhere (it only ever grows).
    pub fn counter_total(&self, name: &'static str, labels: &[(&'static str, String)], total: u64) {
        let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect();
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
            .absolute(total);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
