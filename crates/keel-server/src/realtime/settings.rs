//! `[realtime]`: the live streams of record and job changes (R1–R3).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::http::settings::{Checked, invalid};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RealtimeSection {
    /// Serve the `/events` streams.
    pub enabled: bool,
    /// How long the change log keeps changes for a client to resume from.
    pub retention_seconds: u64,
    /// Open streams on this instance, in all.
    pub max_streams: u32,
    /// Open streams per user or API key.
    pub max_streams_per_user: u32,
    /// Open streams per client address.
    pub max_streams_per_ip: u32,
    /// Events waiting for one slow client before it is cut off with `lost`.
    pub buffer: u32,
    /// A comment line on idle streams, so proxies keep them open.
    pub heartbeat_seconds: u64,
    /// How often streams read the change log when no wake-up came.
    pub poll_ms: u64,
    /// Changes read per batch.
    pub batch: u32,
    /// How often open streams' sessions, keys and memberships are checked again.
    pub recheck_seconds: u64,
    /// How often job streams read their jobs' state.
    pub job_poll_ms: u64,
    /// The reconnect delay a client is told when the server shuts down or cuts it off.
    pub retry_ms: u64,
}

impl Default for RealtimeSection {
    fn default() -> Self {
        RealtimeSection {
            enabled: true,
            retention_seconds: 3_600,
            max_streams: 20_000,
            max_streams_per_user: 20,
            max_streams_per_ip: 500,
            buffer: 256,
            heartbeat_seconds: 25,
            poll_ms: 1_000,
            batch: 500,
            recheck_seconds: 10,
            job_poll_ms: 250,
            retry_ms: 1_000,
        }
    }
}

impl RealtimeSection {
    pub fn validate(&self) -> Checked {
        if self.retention_seconds < 60 {
            return invalid("realtime.retention_seconds", "must be at least 60");
        }
        if self.max_streams == 0 || self.max_streams_per_user == 0 || self.max_streams_per_ip == 0 {
            return invalid("realtime.max_streams", "stream limits must be at least 1");
        }
        if !(8..=65_536).contains(&self.buffer) {
            return invalid("realtime.buffer", "must be between 8 and 65536");
        }
        if !(1..=300).contains(&self.heartbeat_seconds) {
            return invalid("realtime.heartbeat_seconds", "must be between 1 and 300");
        }
        if !(10..=60_000).contains(&self.poll_ms) {
            return invalid("realtime.poll_ms", "must be between 10 and 60000");
        }
        if !(1..=5_000).contains(&self.batch) {
            return invalid("realtime.batch", "must be between 1 and 5000");
        }
        if !(1..=3_600).contains(&self.recheck_seconds) {
            return invalid("realtime.recheck_seconds", "must be between 1 and 3600");
        }
        if !(10..=60_000).contains(&self.job_poll_ms) {
            return invalid("realtime.job_poll_ms", "must be between 10 and 60000");
        }
        if !(100..=600_000).contains(&self.retry_ms) {
            return invalid("realtime.retry_ms", "must be between 100 and 600000");
        }
        Ok(())
    }

    /// How long the change log keeps changes.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_seconds)
    }
}

/// One line per key of `[realtime]`, for `docs/CONFIG.md`.
pub const KEYS: &[(&str, &str)] = &[
    (
        "realtime.enabled",
        "Serve the `/events` streams of record and job changes; `false` answers 404 `realtime_disabled` there (the change log is still written, so turning it on later loses nothing within the retention).",
    ),
    (
        "realtime.retention_seconds",
        "How long the change log keeps changes, so a client that reconnects with `Last-Event-ID` resumes without loss; one that was away longer gets a `reset` event. At least 60.",
    ),
    (
        "realtime.max_streams",
        "Open streams on this instance; past it a new one gets 503 `too_many_streams`.",
    ),
    (
        "realtime.max_streams_per_user",
        "Open streams per user or API key on this instance; past it 503 `too_many_streams`.",
    ),
    (
        "realtime.max_streams_per_ip",
        "Open streams per client address (after trusted proxies) on this instance; past it 503 `too_many_streams`.",
    ),
    (
        "realtime.buffer",
        "Events held for one client that reads slowly; when it is full the client gets a `lost` event and is disconnected, and resumes from its last event id.",
    ),
    (
        "realtime.heartbeat_seconds",
        "An SSE comment line on idle streams every this many seconds, so proxies and load balancers keep them open.",
    ),
    (
        "realtime.poll_ms",
        "How often streams read the change log when no wake-up came (writes on this instance wake them at once, other instances' through PostgreSQL NOTIFY).",
    ),
    (
        "realtime.batch",
        "Changes read per batch: each batch costs one rule statement per (collection, rule, filter shape), whatever the number of subscribers.",
    ),
    (
        "realtime.recheck_seconds",
        "How often open streams' sessions, API keys and memberships are checked again: a revoked session, a removed member or a changed role ends the stream with a `revoked` event.",
    ),
    (
        "realtime.job_poll_ms",
        "How often job streams read their jobs' state and progress (one statement for every job stream of the instance).",
    ),
    (
        "realtime.retry_ms",
        "The reconnect delay (`retry:`) sent to clients when the server shuts down or cuts a stream off.",
    ),
];
