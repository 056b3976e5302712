//! HTTP handlers, one module per resource.

pub mod auth;
pub mod bulk;
pub mod files;
pub mod jobs;
pub mod oidc;
pub mod ops;
pub mod orgs;
pub mod realtime;
pub mod records;
