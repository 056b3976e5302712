//! The HTTP core: what every request goes through, whatever feature serves it. The error
//! envelope and its codes, the request context (id, span, class, timeout, metrics, access
//! log), the extractors (body, query string, caller, org, page size), the state handed to
//! handlers, the metrics registry and its catalogue, the shared Redis layer, the core settings, and the
//! OpenAPI document.
//!
//! It may use the store and the query compiler; of the features it names only the types
//! [`state::Inner`] holds.

pub mod catalogue;
pub mod context;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod request_id;
pub mod route_class;
pub mod settings;
pub mod shared;
pub mod state;
