//! The operations settings: `[errors]` (error tracking) and `[alerts]` (where alert
//! notifications go; the rules are in the spec).

use serde::{Deserialize, Serialize};

use super::tracking::parse_dsn;
use crate::http::settings::{Checked, Secret, invalid};

/// Error tracking (O6).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorsSection {
    /// A Sentry-compatible DSN (`https://KEY@HOST/PROJECT`): error groups are sent there too.
    pub sentry_dsn: Option<Secret>,
}

impl ErrorsSection {
    pub fn validate(&self) -> Checked {
        if let Some(dsn) = &self.sentry_dsn
            && let Err(error) = parse_dsn(&dsn.0)
        {
            return invalid("errors.sentry_dsn", error);
        }
        Ok(())
    }
}

/// One line per key of `[errors]`, for `docs/CONFIG.md`.
pub const ERRORS_KEYS: &[(&str, &str)] = &[(
    "errors.sentry_dsn",
    "A Sentry-compatible DSN (`https://KEY@HOST/PROJECT`, Sentry, GlitchTip, Bugsink…): unexpected errors and panics are sent there as well as counted in `keel_errors` (`GET /api/v1/admin/errors`).",
)];

/// Where alert notifications go (the rules are in the spec, `[alerts.*]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// Webhooks (Slack-compatible JSON) told when an alert fires or resolves.
    pub webhook_urls: Vec<Secret>,
    /// Addresses emailed when an alert fires or resolves (through `[smtp]`).
    pub email_to: Vec<String>,
    pub evaluate_seconds: u64,
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            webhook_urls: vec![],
            email_to: vec![],
            evaluate_seconds: 15,
        }
    }
}

impl AlertsSection {
    pub fn validate(&self) -> Checked {
        if self.evaluate_seconds == 0 || self.evaluate_seconds > 3600 {
            return invalid("alerts.evaluate_seconds", "must be between 1 and 3600");
        }
        for url in &self.webhook_urls {
            if !(url.0.starts_with("http://") || url.0.starts_with("https://")) {
                return invalid("alerts.webhook_urls", "each must be an http:// or https:// URL");
            }
        }
        Ok(())
    }
}

/// One line per key of `[alerts]`, for `docs/CONFIG.md`.
pub const ALERTS_KEYS: &[(&str, &str)] = &[
    (
        "alerts.webhook_urls",
        "Webhooks told when an alert fires or resolves: a POST of Slack-compatible JSON (`text`, plus `alert`, `severity`, `state`, `value`, `threshold`, `unit`, `summary`, `at`).",
    ),
    (
        "alerts.email_to",
        "Addresses emailed when an alert fires or resolves, through the `[smtp]` server.",
    ),
    (
        "alerts.evaluate_seconds",
        "How often each instance evaluates the alert rules (docs/OPERATIONS.md, Alerts).",
    ),
];
