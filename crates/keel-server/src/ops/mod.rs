//! Operations: health checks and the gauges of a scrape, alerts, error
//! tracking, system figures (disk, process), with the `[errors]` and `[alerts]` settings.

pub mod alerting;
pub mod alerts;
pub mod health;
pub mod overview;
pub mod settings;
pub mod system;
pub mod tracking;
