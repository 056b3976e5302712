//! HTTP integration tests: every test runs on SQLite and on PostgreSQL (`both!`).

mod accounts;
mod auth;
mod backup;
mod browser;
mod cache;
mod docs;
mod errors;
mod explain;
mod export;
mod files;
mod hostile;
mod import;
mod jobs;
mod jobs_handlers;
mod jobs_store;
mod migrate;
mod ops;
mod orgs;
mod protect;
mod records;
mod redis;
mod replicas;
mod rules;
mod store;
mod tenancy;
mod timeseries;
