//! The runtime's contract with its handlers and its embedder: how an instance takes part in
//! the queue (`JobsConfig`, `SmtpConfig`), what a handler gets (`JobContext`) and answers
//! (`JobFailure`), and what the runtime reports (`Observer`, `Outcome`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use keel_query::Schema;
use keel_spec::JobKind;
use keel_store::Db;
use keel_store::jobs;
use serde_json::Value;
use uuid::Uuid;

/// How this instance takes part in the queue.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Run in-process workers here (an instance may only serve HTTP).
    pub workers: bool,
    /// How long a claim holds a job without a heartbeat.
    pub lease: Duration,
    /// How often idle workers look for jobs when no notification came.
    pub poll_interval: Duration,
    /// The most jobs one claim takes.
    pub claim_batch: u32,
    /// On shutdown, how long in-flight jobs may take before they are handed back.
    pub shutdown_grace: Duration,
    /// Take part in the leader election (cron, rescuer).
    pub leader: bool,
    pub smtp: Option<SmtpConfig>,
    /// Outbound HTTP requests of the http handler give up after this long.
    pub http_timeout: Duration,
    /// How long the change log keeps changes for realtime streams to resume from
    /// (`realtime.retention_seconds`); the cleanup job forgets older ones.
    pub change_retention: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            workers: true,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            claim_batch: 500,
            shutdown_grace: Duration::from_secs(25),
            leader: true,
            smtp: None,
            http_timeout: Duration::from_secs(30),
            change_retention: Duration::from_secs(3600),
        }
    }
}

/// Where the email handler sends mail.
#[derive(Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    /// Log emails instead of sending them (`smtp.log_only`).
    pub log_only: bool,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Smtp({}:{} {:?}, from {})",
            self.host, self.port, self.tls, self.from
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    StartTls,
    Tls,
}

/// How one attempt ended, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// Failed; will be retried.
    Retried,
    /// Failed its last attempt (or permanently).
    Dead,
    /// Its lease was lost (rescued, cancelled): the result was not recorded.
    Lost,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Retried => "retried",
            Outcome::Dead => "dead",
            Outcome::Lost => "lost",
        }
    }
}

/// Receives what the runtime does (the server turns it into Prometheus metrics).
pub trait Observer: Send + Sync {
    fn claimed(&self, _queue: &str, _kind: &str, _waited: Duration) {}
    fn finished(&self, _queue: &str, _kind: &str, _outcome: Outcome, _ran: Duration) {}
    fn enqueued(&self, _queue: &str, _kind: &str, _count: u64) {}
    fn rescued(&self, _queue: &str, _count: u64) {}
}

pub(crate) struct NoObserver;
impl Observer for NoObserver {}

/// Why an attempt failed.
#[derive(Debug, Clone)]
pub struct JobFailure {
    pub message: String,
    /// Not worth retrying (bad payload, a 4xx answer): the job is dead at once.
    pub permanent: bool,
}

impl JobFailure {
    pub fn retry(message: impl Into<String>) -> JobFailure {
        JobFailure {
            message: message.into(),
            permanent: false,
        }
    }
    pub fn permanent(message: impl Into<String>) -> JobFailure {
        JobFailure {
            message: message.into(),
            permanent: true,
        }
    }
}

/// What a handler gets: the job, and the store to write results through.
#[derive(Clone)]
pub struct JobContext {
    pub id: i64,
    pub kind: Arc<JobKind>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub org_id: Option<Uuid>,
    pub created_by: Option<Uuid>,
    /// The payload as JSON text.
    pub payload: String,
    pub db: Arc<Db>,
    pub schema: Arc<Schema>,
    pub config: Arc<JobsConfig>,
    /// Field patterns of the schema (record validation).
    pub patterns: Arc<keel_query::Patterns>,
    /// The outbound HTTP client (connection pool shared by every job).
    pub http: reqwest::Client,
}

impl JobContext {
    pub fn payload_value(&self) -> Value {
        serde_json::from_str(&self.payload).unwrap_or(Value::Null)
    }

    /// Records progress (e.g. rows imported) for the job-status endpoint.
    pub async fn progress(&self, progress: Value) -> Result<bool, keel_store::StoreError> {
        jobs::job_progress(&self.db, self.id, self.attempt, progress).await
    }
}

pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Option<Value>, JobFailure>> + Send>>;
/// A handler registered in Rust (embedding, tests) for a kind, in place of the spec's.
pub type HandlerFn = Arc<dyn Fn(JobContext) -> HandlerFuture + Send + Sync>;
