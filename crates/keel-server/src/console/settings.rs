//! `[console]`: whether the operators' console is served and who may reach it.

use serde::{Deserialize, Serialize};

use crate::http::settings::{Checked, invalid, parse_cidrs};

/// The console at `/_/` and the admin API behind it (O9).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSection {
    /// Serve the console at `/_/`.
    pub enabled: bool,
    /// Addresses or CIDRs that may reach the console and `/api/v1/admin/*`; empty: any
    /// address the server accepts.
    pub allow_ips: Vec<String>,
}

impl Default for ConsoleSection {
    fn default() -> Self {
        ConsoleSection {
            enabled: true,
            allow_ips: vec![],
        }
    }
}

impl ConsoleSection {
    pub fn validate(&self) -> Checked {
        if let Err(message) = parse_cidrs(&self.allow_ips) {
            return invalid("console.allow_ips", message);
        }
        Ok(())
    }
}

/// One line per key of `[console]`, for `docs/CONFIG.md`.
pub const KEYS: &[(&str, &str)] = &[
    (
        "console.enabled",
        "Serve the operators' console at `/_/` (the account pages under `/_/auth/` stay); `false` answers 404 there.",
    ),
    (
        "console.allow_ips",
        "Addresses or CIDRs (e.g. `[\"10.0.0.0/8\"]`) that may reach the console and `/api/v1/admin/*`, after `server.allow_ips`; others get 403 `ip_blocked`. Empty: no extra restriction.",
    ),
];
