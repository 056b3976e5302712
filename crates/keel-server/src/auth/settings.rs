//! `[auth]`: sign-up, sessions, the password policy and hashing cost, login lockouts.

use serde::{Deserialize, Serialize};

use crate::http::settings::{Checked, invalid};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Whether anyone may sign up (otherwise users are created with `keel users create`).
    pub signup: bool,
    pub session_ttl_hours: u64,
    pub min_password_length: usize,
    /// argon2id memory cost in KiB (OWASP: at least 19456).
    pub argon2_memory_kib: u32,
    /// argon2id iterations (OWASP: at least 2 with 19 MiB).
    pub argon2_iterations: u32,
    /// Failed logins for one account (within `lockout_window_seconds`) before it is locked.
    pub lockout_failures: u32,
    /// Failed logins from one address before it may not log in.
    pub lockout_ip_failures: u32,
    /// The first lock's length; each further failure doubles it, up to `lockout_max_seconds`.
    pub lockout_seconds: u64,
    pub lockout_max_seconds: u64,
    /// Failures older than this are forgotten.
    pub lockout_window_seconds: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            signup: true,
            session_ttl_hours: 24 * 30,
            min_password_length: 10,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            lockout_failures: 5,
            lockout_ip_failures: 20,
            lockout_seconds: 60,
            lockout_max_seconds: 3_600,
            lockout_window_seconds: 900,
        }
    }
}

impl AuthSection {
    pub fn validate(&self) -> Checked {
        if self.argon2_memory_kib < 64 || self.argon2_iterations == 0 {
            return invalid(
                "auth.argon2_memory_kib",
                "must be at least 64 KiB with at least 1 iteration",
            );
        }
        if self.lockout_failures == 0 || self.lockout_ip_failures == 0 {
            return invalid("auth.lockout_failures", "lockouts need at least 1 failure");
        }
        if self.lockout_seconds == 0 || self.lockout_max_seconds < self.lockout_seconds {
            return invalid(
                "auth.lockout_seconds",
                "must be at least 1 and at most auth.lockout_max_seconds",
            );
        }
        if self.min_password_length < 8 {
            return invalid("auth.min_password_length", "must be at least 8");
        }
        Ok(())
    }
}

/// One line per key of `[auth]`, for `docs/CONFIG.md`.
pub const KEYS: &[(&str, &str)] = &[
    ("auth.signup", "Whether anyone may sign up through the API."),
    ("auth.session_ttl_hours", "How long a session token lives."),
    ("auth.min_password_length", "The shortest password accepted."),
    ("auth.argon2_memory_kib", "argon2id memory cost in KiB."),
    ("auth.argon2_iterations", "argon2id iterations."),
    (
        "auth.lockout_failures",
        "Failed logins for one account within `auth.lockout_window_seconds` before logins to it are refused (429 `login_locked`) for `auth.lockout_seconds`.",
    ),
    (
        "auth.lockout_ip_failures",
        "Failed logins from one client address (any accounts) before its logins are refused the same way.",
    ),
    (
        "auth.lockout_seconds",
        "The first lock's length; every further failure doubles it (backoff), up to `auth.lockout_max_seconds`.",
    ),
    ("auth.lockout_max_seconds", "The longest lock."),
    (
        "auth.lockout_window_seconds",
        "Failures older than this (with no lock running) are forgotten; a successful login forgets the account's.",
    ),
];
