//! The account flows behind `/api/v1/auth` and Keel's own link pages: sign-up with its
//! verification email (A1), verification and email changes (A1), and password resets (A2).
//!
//! No answer tells whether an address has an account: a reset request, a verification
//! request and an email change answer the same 202 whatever the address, after the same
//! work (one throttle count and one job insert, both always done), and the job decides what
//! to send. Tokens are single use and stored only as hashes (`keel_store::accounts`).

use chrono::Utc;
use keel_store::StoreError;
use keel_store::accounts::{self, Purpose, Taken};
use keel_store::system::{self, NewUser, User};
use serde_json::json;

use super::mail;
use super::password::{check_password, confirm_own_password, hash_password, normalize_email};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{forget_tokens, token_hash};
use crate::http::state::AppState;

/// What sign-up needs.
pub struct SignUp {
    pub email: String,
    pub password: String,
    pub name: Option<String>,
}

/// Creates an account and, in the same transaction, the job that sends its verification
/// email (when SMTP is configured: without it there is no way to verify, and the job would
/// only fail).
pub async fn sign_up(state: &AppState, body: SignUp) -> ApiResult<User> {
    if !state.config.auth.signup {
        return Err(ApiError::new(
            "signup_closed",
            "sign-up is closed; ask an administrator for an account",
        ));
    }
    let email = normalize_email(&body.email)?;
    check_password(&body.password, &email, state.config.auth.min_password_length)?;
    check_name(body.name.as_deref())?;
    let password_hash = hash_password(&state.config.auth, body.password).await?;
    let mut tx = state.db.begin().await?;
    let user = system::user_insert_in(
        &mut tx,
        NewUser {
            email: &email,
            name: body.name.as_deref(),
            password_hash: &password_hash,
            superuser: false,
            email_verified: false,
        },
    )
    .await
    .map_err(|e| match e {
        StoreError::Unique { .. } => ApiError::new("email_taken", "an account with this email exists"),
        other => other.into(),
    })?;
    let sends = state.config.smtp.sends();
    if sends {
        mail::queue_in(&mut tx, state, Purpose::Verify, Some(user.id), &email).await?;
    }
    tx.commit().await?;
    if sends {
        state.jobs.wake("default");
    }
    Ok(user)
}

/// A new account's display name: at most 200 characters.
pub(crate) fn check_name(name: Option<&str>) -> ApiResult<()> {
    if name.is_some_and(|n| n.chars().count() > 200) {
        return Err(ApiError::new("validation_failed", "the name is too long")
            .with_details(json!([{ "field": "name", "code": "too_long", "message": "at most 200 characters" }])));
    }
    Ok(())
}

/// The 202 of every request that may send an email: the same whatever happens next.
pub fn accepted() -> serde_json::Value {
    json!({ "status": "accepted", "message": "if the address can receive this email, it is on its way" })
}

/// Queues an email of `purpose` to `email` unless the address had its hourly share.
async fn queue(state: &AppState, purpose: Purpose, user: Option<uuid::Uuid>, email: &str) -> ApiResult<()> {
    if !state.config.smtp.sends() {
        return Err(ApiError::new(
            "email_unavailable",
            "this server sends no email (neither smtp.host nor smtp.log_only is set); ask an administrator",
        ));
    }
    if !mail::within_budget(state, purpose, email).await? {
        return Ok(());
    }
    let mut tx = state.db.begin().await?;
    mail::queue_in(&mut tx, state, purpose, user, email).await?;
    tx.commit().await?;
    state.jobs.wake("default");
    Ok(())
}

/// `POST /auth/verify/request`: a new verification email to the caller's address; `false`
/// when the address is verified already (nothing to send).
pub async fn request_verification(state: &AppState, user: &User) -> ApiResult<bool> {
    if user.email_verified_at.is_some() {
        return Ok(false);
    }
    queue(state, Purpose::Verify, Some(user.id), &user.email).await?;
    Ok(true)
}

/// `POST /auth/email`: moves the caller's account to a new address once a link sent there is
/// opened; until then nothing changes. Answers 202 whether or not another account has the
/// new address (the job then sends nothing).
pub async fn change_email(
    state: &AppState,
    user: &User,
    new_email: &str,
    password: String,
) -> ApiResult<serde_json::Value> {
    let email = normalize_email(new_email)?;
    confirm_own_password(state, user, password).await?;
    if email == user.email {
        return Err(ApiError::new("bad_request", "this is already the account's address"));
    }
    queue(state, Purpose::ChangeEmail, Some(user.id), &email).await?;
    Ok(accepted())
}

/// A token as sent: its prefix names its purpose; anything else is refused before the store.
fn token_of(token: &str, purposes: &[Purpose]) -> ApiResult<(Purpose, String)> {
    let purpose = purposes
        .iter()
        .copied()
        .find(|p| token.starts_with(mail::prefix(*p)))
        .filter(|_| token.len() <= 64 && token.is_ascii());
    match purpose {
        Some(purpose) => Ok((purpose, token_hash(token))),
        None => Err(invalid_token()),
    }
}

fn invalid_token() -> ApiError {
    ApiError::new(
        "invalid_token",
        "the link is invalid, was used already, or has expired; ask for a new one",
    )
}

/// Drops the user's cached sessions, so the next request sees the account as it is now.
async fn refresh_sessions(state: &AppState, user: uuid::Uuid) {
    match system::session_token_hashes(&state.db, user).await {
        Ok(hashes) => forget_tokens(state, &hashes).await,
        Err(error) => tracing::warn!(%error, "could not list sessions to refresh"),
    }
}

/// `POST /auth/verify/confirm`: uses a verification or email-change token.
pub async fn confirm_email(state: &AppState, token: &str) -> ApiResult<User> {
    let (purpose, hash) = token_of(token, &[Purpose::Verify, Purpose::ChangeEmail])?;
    let mut tx = state.db.begin().await?;
    let Some(Taken { user, email }) = accounts::token_take_in(&mut tx, purpose, &hash, Utc::now()).await? else {
        return Err(invalid_token());
    };
    let applied = accounts::email_verified_in(&mut tx, purpose, user, &email)
        .await
        .map_err(|e| match e {
            StoreError::Unique { .. } => ApiError::new("email_taken", "another account has this address by now"),
            other => other.into(),
        })?;
    if !applied {
        // The account moved to another address since the link was sent: the link is void.
        tx.commit().await?;
        return Err(invalid_token());
    }
    tx.commit().await?;
    state.metrics.counter(
        "keel_account_tokens_used_total",
        &[("purpose", purpose.as_str().to_string())],
        1,
    );
    refresh_sessions(state, user).await;
    system::user_by_id(&state.db, user)
        .await?
        .ok_or_else(|| ApiError::new("not_found", "the account no longer exists"))
}

/// `POST /auth/password-reset/request`: always the same 202 (see the module's comment).
pub async fn request_reset(state: &AppState, email: &str) -> ApiResult<serde_json::Value> {
    let email = normalize_email(email)?;
    queue(state, Purpose::Reset, None, &email).await?;
    Ok(accepted())
}

/// `POST /auth/password-reset/confirm`: sets a new password under the policy, ends every
/// session, and counts the address as verified (the link reached it). A password the policy
/// refuses leaves the token usable.
pub async fn confirm_reset(state: &AppState, token: &str, password: String) -> ApiResult<(User, usize)> {
    let (_, hash) = token_of(token, &[Purpose::Reset])?;
    let Some(peeked) = accounts::token_peek(&state.db, Purpose::Reset, &hash).await? else {
        return Err(invalid_token());
    };
    check_password(&password, &peeked.email, state.config.auth.min_password_length)?;
    let password_hash = hash_password(&state.config.auth, password).await?;
    let mut tx = state.db.begin().await?;
    let Some(taken) = accounts::token_take_in(&mut tx, Purpose::Reset, &hash, Utc::now()).await? else {
        // Used by a request that raced this one.
        return Err(invalid_token());
    };
    let revoked = system::user_set_password_in(&mut tx, taken.user, &password_hash).await?;
    accounts::email_verified_in(&mut tx, Purpose::Verify, taken.user, &taken.email).await?;
    tx.commit().await?;
    state.metrics.counter(
        "keel_account_tokens_used_total",
        &[("purpose", Purpose::Reset.as_str().to_string())],
        1,
    );
    forget_tokens(state, &revoked).await;
    let user = system::user_by_id(&state.db, taken.user)
        .await?
        .ok_or_else(|| ApiError::new("not_found", "the account no longer exists"))?;
    Ok((user, revoked.len()))
}
