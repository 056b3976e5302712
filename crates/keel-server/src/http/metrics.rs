//! The metrics registry: a Prometheus recorder owned by the app (no global recorder, so tests
//! can run many apps), the job runtime's counters, and the latency buckets alerts share.

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

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

static METADATA: Metadata<'static> = Metadata::new("keel", metrics::Level::INFO, Some("keel"));

/// The latency buckets of the request histogram (seconds), shared with `/metrics` so the
/// in-process p95 and Prometheus's `histogram_quantile` agree.
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .expect("buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Every metric's `# HELP` line, from the catalogue (O2).
        for metric in crate::http::catalogue::METRICS
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

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, String)], value: f64) {
        let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect();
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &METADATA)
            .record(value);
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
