//! The job runtime (J1–J12): in-process workers per queue that claim jobs in batches, run
//! their handlers under a timeout, and settle them in batched, fenced statements; a heartbeat
//! that keeps leases alive; a leader (elected in the database) that rescues expired leases and
//! enqueues cron ticks; and a graceful shutdown that finishes or hands back in-flight jobs.
//!
//! The queue's SQL lives in `keel_store::jobs`; this crate decides when to run it.

mod context;
pub mod cron;
pub mod handlers;
pub mod policy;
mod runtime;
pub mod template;

pub use context::{
    HandlerFn, HandlerFuture, JobContext, JobFailure, JobsConfig, Observer, Outcome, SmtpConfig, SmtpTls,
};
pub use runtime::Jobs;
