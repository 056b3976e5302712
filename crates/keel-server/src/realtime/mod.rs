//! Realtime (R1–R3): Server-Sent Events streams of record changes and of jobs.
//!
//! - **Source.** Every record write adds a row to the change log (`keel_store::changes`) in
//!   its own transaction, so a rolled-back write sends nothing, and a stream reads only
//!   committed changes in commit order. Event ids are log positions (`XID-SEQ`): a client
//!   that reconnects with `Last-Event-ID` resumes without loss within
//!   `realtime.retention_seconds`, and gets a `reset` past it.
//! - **One reader per instance.** The dispatcher (`dispatch`) reads the log once for every
//!   stream of the instance. Writes on this instance wake it at once; other instances' writes
//!   wake it through PostgreSQL NOTIFY, sent after their commit and coalesced; a timer
//!   (`realtime.poll_ms`) covers a lost notification.
//! - **Rules in batches (R2).** For each batch of changes, the subscribers of one
//!   (collection, org, rule, filter shape) are decided by one statement
//!   (`keel_query::shared`), whatever their number.
//! - **Bounded (R3).** Each stream has a buffer of `realtime.buffer` events; a client that
//!   falls behind gets `lost` and is disconnected (it resumes from its last id). Streams are
//!   limited per instance, user and address (503 `too_many_streams`), sessions, keys and
//!   memberships are checked again every `realtime.recheck_seconds` (a stream whose access
//!   ended gets `revoked`), and shutdown ends every stream with a `retry:` hint.

mod dispatch;
pub mod hub;
mod job_watch;
mod jobs;
pub mod settings;
mod stream;

pub use hub::Realtime;
pub use jobs::open_job;
pub use stream::{StreamQuery, open_records};
