//! `[auth]`: sign-up, sessions, the password policy and hashing cost, login lockouts, and
//! the account emails (verification, email change, password reset).

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
    /// Users whose address is not verified get 403 `email_not_verified` outside `/auth/`.
    pub require_verified_email: bool,
    /// How long a verification (or email-change) link works.
    pub verify_ttl_minutes: u64,
    /// How long a password-reset link works.
    pub reset_ttl_minutes: u64,
    /// Account emails of one kind one address gets per hour; more requests are accepted and
    /// dropped (the answer does not change, so it tells nothing).
    pub account_emails_per_hour: u32,
    /// Where users reach this server (links in emails); `http://{server.host}:{server.port}`
    /// when unset.
    pub public_url: Option<String>,
    /// The link of a verification email, `{token}` replaced; Keel's own page when unset.
    pub verify_url: Option<String>,
    /// The link of a password-reset email, `{token}` replaced; Keel's own page when unset.
    pub reset_url: Option<String>,
    /// How long an org invitation works.
    pub invitation_ttl_hours: u64,
    /// The link of an invitation email, `{token}` replaced; Keel's own page when unset.
    pub invitation_url: Option<String>,
    /// OAuth 2.0 / OpenID Connect providers users may sign in with (A4), by name.
    pub oidc: std::collections::BTreeMap<String, super::oidc::settings::OidcProvider>,
    /// Where a provider sign-in may send the browser back to: URLs, or URL prefixes ending
    /// in `/…*`.
    pub oidc_redirects: Vec<String>,
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
            require_verified_email: false,
            verify_ttl_minutes: 24 * 60,
            reset_ttl_minutes: 30,
            account_emails_per_hour: 5,
            public_url: None,
            verify_url: None,
            reset_url: None,
            invitation_ttl_hours: 7 * 24,
            invitation_url: None,
            oidc: Default::default(),
            oidc_redirects: vec![],
        }
    }
}

impl AuthSection {
    /// `sends_email`: whether `smtp.host` is set (verification needs a way to send links).
    pub fn validate(&self, sends_email: bool) -> Checked {
        if self.require_verified_email && !sends_email {
            return invalid(
                "auth.require_verified_email",
                "needs smtp.host (or smtp.log_only): without email no one could verify an address",
            );
        }
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
        if !(1..=30 * 24 * 60).contains(&self.verify_ttl_minutes) {
            return invalid("auth.verify_ttl_minutes", "must be 1 minute to 30 days");
        }
        if !(1..=24 * 60).contains(&self.reset_ttl_minutes) {
            return invalid("auth.reset_ttl_minutes", "must be 1 minute to 24 hours");
        }
        if self.account_emails_per_hour == 0 {
            return invalid("auth.account_emails_per_hour", "must be at least 1");
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return invalid("auth.public_url", "must start with http:// or https://");
        }
        if !(1..=90 * 24).contains(&self.invitation_ttl_hours) {
            return invalid("auth.invitation_ttl_hours", "must be 1 hour to 90 days");
        }
        for (key, url) in [
            ("auth.verify_url", &self.verify_url),
            ("auth.reset_url", &self.reset_url),
            ("auth.invitation_url", &self.invitation_url),
        ] {
            if let Some(url) = url
                && (!url.contains("{token}") || !(url.starts_with("http://") || url.starts_with("https://")))
            {
                return invalid(key, "must be an http(s) URL containing {token}");
            }
        }
        super::oidc::settings::validate(&self.oidc, &self.oidc_redirects)
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
    (
        "auth.require_verified_email",
        "Users who have not verified their address get 403 `email_not_verified` on every route outside `/api/v1/auth/`.",
    ),
    (
        "auth.verify_ttl_minutes",
        "How long a verification or email-change link works (1 minute to 30 days).",
    ),
    (
        "auth.reset_ttl_minutes",
        "How long a password-reset link works (1 minute to 24 hours).",
    ),
    (
        "auth.account_emails_per_hour",
        "Account emails of one kind one address gets per hour; further requests get the same 202 and send nothing.",
    ),
    (
        "auth.public_url",
        "Where users reach this server, for the links in emails; `http://{server.host}:{server.port}` when unset.",
    ),
    (
        "auth.verify_url",
        "The verification link, with `{token}` in it (your app's page); Keel's own page at `/_/auth/verify` when unset.",
    ),
    (
        "auth.reset_url",
        "The password-reset link, with `{token}` in it (your app's page); Keel's own page at `/_/auth/reset` when unset.",
    ),
    (
        "auth.invitation_ttl_hours",
        "How long an org invitation works (1 hour to 90 days).",
    ),
    (
        "auth.invitation_url",
        "The invitation link, with `{token}` in it (your app's page); Keel's own page at `/_/auth/invitation` when unset.",
    ),
    (
        "auth.oidc",
        "Sign-in providers, one table each: `[auth.oidc.<name>]` with `issuer` (OpenID Connect discovery) or `preset = \"google\"`/`\"github\"` or `authorize_url` + `token_url` + `userinfo_url` (OAuth 2.0); `client_id`, `client_secret`, optional `scopes`, `display_name`, `signup`. See docs/OPERATIONS.md (\"Sign-in with providers\").",
    ),
    (
        "auth.oidc_redirects",
        "Where a provider sign-in may send the browser back to: exact URLs, or prefixes ending in `/…*` (required with `auth.oidc`).",
    ),
];
