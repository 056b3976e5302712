//! `[jobs]` (the job runtime of this instance) and `[smtp]` (where email jobs send).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::http::settings::{Checked, Secret, invalid};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSection {
    /// Run in-process workers on this instance.
    pub workers: bool,
    /// Take part in the leader election (cron and the rescuer).
    pub leader: bool,
    pub lease_seconds: u64,
    pub poll_interval_ms: u64,
    pub claim_batch: u32,
    pub shutdown_grace_seconds: u64,
    pub http_timeout_seconds: u64,
    /// How long an external worker's claim may wait for a job.
    pub max_claim_wait_ms: u64,
}

impl Default for JobsSection {
    fn default() -> Self {
        JobsSection {
            workers: true,
            leader: true,
            lease_seconds: 30,
            poll_interval_ms: 1_000,
            claim_batch: 500,
            shutdown_grace_seconds: 25,
            http_timeout_seconds: 30,
            max_claim_wait_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSection {
    /// Unset: email jobs fail with a clear error.
    pub host: Option<String>,
    pub port: u16,
    /// `none`, `starttls` or `tls`.
    pub tls: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: String,
    /// Write emails to the log instead of sending them (demos, local development).
    pub log_only: bool,
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            host: None,
            port: 587,
            tls: "starttls".into(),
            username: None,
            password: None,
            from: "keel@localhost".into(),
            log_only: false,
        }
    }
}

impl JobsSection {
    pub fn validate(&self) -> Checked {
        if self.lease_seconds < 1 || self.lease_seconds > 3600 {
            return invalid("jobs.lease_seconds", "must be between 1 and 3600");
        }
        if self.poll_interval_ms < 10 {
            return invalid("jobs.poll_interval_ms", "must be at least 10");
        }
        if self.claim_batch == 0 || self.claim_batch > 10_000 {
            return invalid("jobs.claim_batch", "must be between 1 and 10000");
        }
        if self.max_claim_wait_ms > 120_000 {
            return invalid("jobs.max_claim_wait_ms", "must be at most 120000");
        }
        Ok(())
    }

    /// The job runtime's settings, sending email through `smtp`, keeping the change log for
    /// `change_retention`.
    pub fn runtime(&self, smtp: &SmtpSection, change_retention: Duration) -> keel_jobs::JobsConfig {
        keel_jobs::JobsConfig {
            change_retention,
            workers: self.workers,
            lease: Duration::from_secs(self.lease_seconds),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            claim_batch: self.claim_batch,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
            leader: self.leader,
            http_timeout: Duration::from_secs(self.http_timeout_seconds),
            smtp: smtp.sends().then(|| keel_jobs::SmtpConfig {
                host: smtp.host.clone().unwrap_or_default(),
                port: smtp.port,
                tls: match smtp.tls.as_str() {
                    "none" => keel_jobs::SmtpTls::None,
                    "tls" => keel_jobs::SmtpTls::Tls,
                    _ => keel_jobs::SmtpTls::StartTls,
                },
                username: smtp.username.clone(),
                password: smtp.password.as_ref().map(|p| p.0.clone()),
                from: smtp.from.clone(),
                log_only: smtp.log_only,
            }),
        }
    }
}

impl SmtpSection {
    /// Whether email goes anywhere: to a server, or to the log.
    pub fn sends(&self) -> bool {
        self.host.is_some() || self.log_only
    }

    pub fn validate(&self) -> Checked {
        if !["none", "starttls", "tls"].contains(&self.tls.as_str()) {
            return invalid("smtp.tls", "must be one of: none, starttls, tls");
        }
        Ok(())
    }
}

/// One line per key of `[jobs]`, for `docs/CONFIG.md`.
pub const JOBS_KEYS: &[(&str, &str)] = &[
    (
        "jobs.workers",
        "Run in-process job workers on this instance (false: it only serves HTTP and enqueues).",
    ),
    (
        "jobs.leader",
        "Take part in the election of the instance that runs cron and rescues expired leases.",
    ),
    (
        "jobs.lease_seconds",
        "How long a claimed job is held without a heartbeat; workers extend it every third of it, and the rescuer returns jobs whose lease ran out.",
    ),
    (
        "jobs.poll_interval_ms",
        "How often idle workers look for jobs when no enqueue notification came (PostgreSQL LISTEN and in-process wake-ups come first).",
    ),
    ("jobs.claim_batch", "The most jobs one claim takes."),
    (
        "jobs.shutdown_grace_seconds",
        "On shutdown, how long in-flight jobs may run before they are handed back to the queue.",
    ),
    (
        "jobs.http_timeout_seconds",
        "Outbound requests of the http handler give up after this long.",
    ),
    (
        "jobs.max_claim_wait_ms",
        "The longest an external worker's claim waits for a job (long poll).",
    ),
];

/// One line per key of `[smtp]`, for `docs/CONFIG.md`.
pub const SMTP_KEYS: &[(&str, &str)] = &[
    (
        "smtp.host",
        "The SMTP server for email jobs; unset, email jobs fail with a clear error.",
    ),
    ("smtp.port", "The SMTP server's port."),
    ("smtp.tls", "`none`, `starttls` or `tls` (implicit TLS)."),
    ("smtp.username", "SMTP login, if the server needs one."),
    ("smtp.password", "SMTP password."),
    ("smtp.from", "The sender address of email jobs."),
    (
        "smtp.log_only",
        "Write every email (with its links) to the log at info level instead of sending it, for demos and local development; `smtp.host` is then not needed. Never in production: the log then holds reset links.",
    ),
];
