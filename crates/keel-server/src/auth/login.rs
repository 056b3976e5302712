//! Signing in (S9, A5): the password with lockouts per account and per address, then the
//! second factor when the account has one.
//!
//! A wrong password and an unknown email are the same 401 after the same work (an unknown
//! email is checked against a dummy hash of the same cost). Failed second-factor codes count
//! against the same lockouts as failed passwords, and the account's failures are forgotten
//! only when the whole sign-in succeeds.

use std::net::IpAddr;

use chrono::{Duration, Utc};
use keel_store::security;
use keel_store::system::{self, User};

use super::password::verify_password;
use super::session::locked;
use crate::http::error::{ApiError, ApiResult};
use crate::http::state::AppState;

/// How a sign-in ended when the password was right.
pub enum SignedIn {
    /// Signed in: start a session.
    Done(User),
    /// The account has a second factor: finish with `POST /auth/mfa`.
    SecondFactor { mfa_token: String },
}

fn wrong() -> ApiError {
    ApiError::new("invalid_credentials", "the email or password is wrong")
}

/// The lockout counters a sign-in of `email` from `ip` counts against, with their thresholds.
pub(crate) fn lock_keys(state: &AppState, email: &str, ip: Option<IpAddr>) -> Vec<(String, u32)> {
    let mut keys = vec![(format!("account:{email}"), state.config.auth.lockout_failures)];
    if let Some(ip) = ip {
        keys.push((
            format!("ip:{}", crate::protect::ip_key(ip)),
            state.config.auth.lockout_ip_failures,
        ));
    }
    keys
}

/// 429 `login_locked` while any of `keys` is locked.
pub(crate) async fn refuse_if_locked(state: &AppState, keys: &[(String, u32)]) -> ApiResult<()> {
    let now = Utc::now();
    let names: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
    match security::login_locked(&state.db, &names, now).await? {
        Some((key, until)) => Err(locked(&key, until, now)),
        None => Ok(()),
    }
}

/// Counts a failure against every key; a key past its threshold locks, for a time that
/// doubles with every further failure (backoff), up to `auth.lockout_max_seconds`.
pub(crate) async fn count_failure(state: &AppState, keys: &[(String, u32)]) -> ApiResult<()> {
    let auth = &state.config.auth;
    let now = Utc::now();
    let window = Duration::seconds(auth.lockout_window_seconds as i64);
    for (key, threshold) in keys {
        let failures = security::login_failure(&state.db, key, now, window).await?;
        if failures >= i64::from(*threshold) {
            let doublings = (failures - i64::from(*threshold)).min(20) as u32;
            let seconds = auth
                .lockout_seconds
                .saturating_mul(1 << doublings)
                .min(auth.lockout_max_seconds);
            security::login_lock(&state.db, key, now + Duration::seconds(seconds as i64)).await?;
            let scope = key.split(':').next().unwrap_or("");
            tracing::warn!(key = scope, failures, seconds, "login locked");
            state
                .metrics
                .counter("keel_login_lockouts_total", &[("scope", scope.to_string())], 1);
        }
    }
    Ok(())
}

/// Checks the password (and whether the account may sign in); asks for the second factor
/// when the account has one.
pub async fn sign_in(state: &AppState, email: &str, password: String, ip: Option<IpAddr>) -> ApiResult<SignedIn> {
    let email = email.trim().to_lowercase();
    if email.len() > 254 || password.len() > 1024 {
        return Err(wrong());
    }
    let keys = lock_keys(state, &email, ip);
    refuse_if_locked(state, &keys).await?;
    let found = system::user_by_email(&state.db, &email).await?;
    // Verify against a hash made with the same cost when the user does not exist, so the
    // answer's timing does not tell whether the email has an account.
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, state.dummy_password_hash.clone()),
    };
    let ok = verify_password(password, hash).await;
    let Some(user) = user.filter(|_| ok) else {
        count_failure(state, &keys).await?;
        return Err(wrong());
    };
    if user.disabled_at.is_some() {
        // Only after the right password: to anyone else a disabled account looks like any other.
        return Err(ApiError::new(
            "account_disabled",
            "this account is disabled; ask an administrator",
        ));
    }
    if let Some(mfa_token) = super::mfa::challenge(state, &user).await? {
        return Ok(SignedIn::SecondFactor { mfa_token });
    }
    security::login_clear(&state.db, &keys[0].0).await?;
    Ok(SignedIn::Done(user))
}
