//! HTTP handlers, one module per resource.

pub mod auth;
pub mod ops;
pub mod orgs;
pub mod records;
