//! The Keel server: the HTTP API of an app spec, in layers you can see in the folders.
//!
//! - [`http`]: the core every request goes through: the error envelope, the request context,
//!   extractors, the state handed to handlers, the metrics registry, the shared (Redis)
//!   layer, the core settings and the OpenAPI document. It names no feature but the types
//!   [`http::state::Inner`] holds.
//! - One module per feature, each owning its logic and its settings: [`records`] (reads,
//!   writes, bulk deletes, export), [`import`], [`files`] (uploads, downloads, links,
//!   storage, cleanup), [`jobs`], [`auth`] (passwords, sessions, roles, browser security,
//!   the key ring), [`protect`] (IP lists and limits), [`cache`], [`ops`] (health, the
//!   metrics catalogue, alerts, error tracking), [`backup`], [`realtime`] (SSE streams of
//!   record and job changes).
//! - [`routes`]: thin adapters from HTTP to the features; [`router`] lists them all.
//! - [`config`] composes the features' settings; [`app`] builds and runs an instance.

pub mod app;
pub mod auth;
pub mod backup;
pub mod cache;
pub mod config;
pub mod console;
pub mod files;
pub mod http;
pub mod import;
pub mod jobs;
pub mod ops;
pub mod protect;
pub mod realtime;
pub mod records;
pub mod router;
pub mod routes;

pub use app::{App, StartError, init_logging, load_schema, open_database, shutdown_signal, state};
pub use config::Config;
pub use http::metrics::Metrics;
pub use http::state::AppState;
pub use router::router;

/// Lowercase hex of bytes (digests, as stored in `keel_files.sha256`).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
