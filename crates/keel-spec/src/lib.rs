//! The spec language: parse and validate `keel.toml` into the typed app model.
//!
//! This crate does no IO beyond what its caller hands it; rules and index conditions are kept as
//! source text here and checked by `keel-query`.

mod model;
mod parse;

pub use croner;
pub use model::*;
pub use parse::jobs::{parse_cron, parse_duration_ms};
pub use parse::parse_app;
pub use parse::rates::parse_rate;

/// One problem in a spec, located by line (1-based; 0 when unknown) and key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    pub line: usize,
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.path.is_empty()) {
            (0, _) => write!(f, "{}: {}", self.path, self.message),
            (line, true) => write!(f, "line {line}: {}", self.message),
            (line, false) => write!(f, "line {line}: {}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in a spec.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the spec has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct SpecError {
    pub problems: Vec<SpecProblem>,
}

#[cfg(test)]
mod tests;
