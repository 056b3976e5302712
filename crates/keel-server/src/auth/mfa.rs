//! The TOTP second factor (A5): enrolment (an `otpauth://` URI and its secret), confirmation
//! with a first code (which also hands out ten single-use recovery codes), sign-in's second
//! step, and removal with the password and a code.
//!
//! Codes are RFC 6238 (SHA-1, 6 digits, 30 s steps; `totp-rs`), accepted one step early or
//! late, and never twice: the step of each accepted code is kept and a code of that step or
//! an earlier one is refused. Wrong codes count against the sign-in lockouts.

use std::net::IpAddr;

use chrono::Utc;
use keel_store::accounts::{self, Purpose};
use keel_store::mfa;
use keel_store::system::{self, User};
use rand::{Rng, RngCore};
use serde_json::{Value, json};
use totp_rs::{Builder, Secret};

use super::login::{count_failure, lock_keys, refuse_if_locked};
use super::password::confirm_own_password;
use super::session::new_token;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::token_hash;
use crate::http::state::AppState;

/// The prefix of the token between the password and the second factor.
pub const MFA_PREFIX: &str = "km_";
/// How long that token lets the second step wait.
const MFA_TOKEN_MINUTES: i64 = 5;
/// Recovery codes handed out at confirmation.
const RECOVERY_CODES: usize = 10;

fn bad_code() -> ApiError {
    ApiError::new("invalid_code", "the code is wrong, expired or used already")
}

/// The TOTP of a base32 secret, named for authenticator apps by the app and the address.
fn totp(state: &AppState, secret: &str, account: &str) -> ApiResult<totp_rs::Totp> {
    let secret = Secret::try_from_base32(secret)
        .map_err(|e| ApiError::internal(format!("a stored TOTP secret does not parse: {e:?}")))?;
    // The URI's label is `issuer:account`, so neither may hold a colon.
    let issuer = state.schema.app.name.replace(':', " ");
    Builder::new()
        .with_secret(secret)
        .with_account_name(account.replace(':', " "))
        .with_issuer(Some(issuer))
        .build()
        .map_err(|e| ApiError::internal(format!("TOTP parameters refused: {e:?}")))
}

/// The step of a code that fits the secret now (one step either way), or `None`.
fn step_of(totp: &totp_rs::Totp, code: &str) -> Option<i64> {
    let code = code.trim().replace(' ', "");
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
    totp.check(&code, now).and_then(|step| i64::try_from(step).ok())
}

/// `POST /auth/mfa/totp/enroll {password}`: a new secret, waiting for its first code.
pub async fn enroll(state: &AppState, user: &User, password: String) -> ApiResult<Value> {
    confirm_own_password(state, user, password).await?;
    // 160 bits, as RFC 4226 recommends, from a CSPRNG seeded by the operating system.
    let mut bytes = [0u8; 20];
    rand::rng().fill_bytes(&mut bytes);
    let secret = Secret::from(bytes).to_base32();
    if !mfa::totp_begin(&state.db, user.id, &secret).await? {
        return Err(ApiError::new(
            "mfa_enabled",
            "a second factor is set up already; remove it first",
        ));
    }
    let uri = totp(state, &secret, &user.email)?
        .to_url()
        .map_err(|e| ApiError::internal(format!("no otpauth URI: {e:?}")))?;
    Ok(json!({ "secret": secret, "otpauth_uri": uri }))
}

/// `POST /auth/mfa/totp/confirm {code}`: turns the second factor on; answers the recovery
/// codes, shown this once.
pub async fn confirm(state: &AppState, user: &User, code: &str) -> ApiResult<Value> {
    let pending = mfa::totp_of(&state.db, user.id)
        .await?
        .filter(|t| !t.confirmed)
        .ok_or_else(|| {
            ApiError::new(
                "bad_request",
                "no enrolment is waiting; POST /api/v1/auth/mfa/totp/enroll first",
            )
        })?;
    let step = step_of(&totp(state, &pending.secret, &user.email)?, code).ok_or_else(bad_code)?;
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
    let hashes: Vec<String> = codes.iter().map(|c| token_hash(&normalize_recovery(c))).collect();
    if !mfa::totp_confirm(&state.db, user.id, step, &hashes).await? {
        return Err(bad_code());
    }
    Ok(json!({ "enabled": true, "recovery_codes": codes }))
}

/// A recovery code: 10 characters of an unambiguous alphabet (50 bits), shown as two groups.
fn recovery_code() -> String {
    const ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";
    let mut rng = rand::rng();
    let chars: String = (0..10)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

fn normalize_recovery(code: &str) -> String {
    code.trim().to_lowercase().replace(['-', ' '], "")
}

/// `POST /auth/mfa/totp/disable {password, code}`: removes the second factor (a recovery
/// code serves as the code).
pub async fn disable(state: &AppState, user: &User, password: String, code: &str) -> ApiResult<()> {
    confirm_own_password(state, user, password).await?;
    let enrolled = mfa::totp_of(&state.db, user.id)
        .await?
        .filter(|t| t.confirmed)
        .ok_or_else(|| ApiError::new("bad_request", "no second factor is set up"))?;
    if !code_accepted(state, user, &enrolled, code).await? {
        return Err(bad_code());
    }
    mfa::totp_remove(&state.db, user.id).await?;
    Ok(())
}

/// Whether `code` is a fresh TOTP code or an unused recovery code of the user (using it).
async fn code_accepted(state: &AppState, user: &User, enrolled: &mfa::Totp, code: &str) -> ApiResult<bool> {
    if let Some(step) = step_of(&totp(state, &enrolled.secret, &user.email)?, code) {
        return Ok(mfa::totp_use_step(&state.db, user.id, step).await?);
    }
    let recovery = normalize_recovery(code);
    if recovery.len() == 10 && recovery.is_ascii() {
        return Ok(mfa::recovery_use(&state.db, user.id, &token_hash(&recovery)).await?);
    }
    Ok(false)
}

/// After a right password: a token for the second step when the user has a second factor.
pub async fn challenge(state: &AppState, user: &User) -> ApiResult<Option<String>> {
    let enrolled = mfa::totp_of(&state.db, user.id).await?.is_some_and(|t| t.confirmed);
    if !enrolled {
        return Ok(None);
    }
    let token = new_token(MFA_PREFIX);
    let ttl = chrono::Duration::minutes(MFA_TOKEN_MINUTES);
    accounts::token_insert(&state.db, Purpose::Mfa, user.id, &user.email, &token_hash(&token), ttl).await?;
    Ok(Some(token))
}

fn invalid_mfa_token() -> ApiError {
    ApiError::new(
        "invalid_token",
        "the sign-in expired or was finished already; sign in with the password again",
    )
}

/// `POST /auth/mfa {mfa_token, code}`: the second step; answers the user to start a session
/// for. A wrong code counts against the lockouts and leaves the token for another try.
pub async fn complete(state: &AppState, mfa_token: &str, code: &str, ip: Option<IpAddr>) -> ApiResult<User> {
    if !mfa_token.starts_with(MFA_PREFIX) || mfa_token.len() > 64 {
        return Err(invalid_mfa_token());
    }
    let hash = token_hash(mfa_token);
    let waiting = accounts::token_peek(&state.db, Purpose::Mfa, &hash)
        .await?
        .ok_or_else(invalid_mfa_token)?;
    let keys = lock_keys(state, &waiting.email, ip);
    refuse_if_locked(state, &keys).await?;
    let user = system::user_by_id(&state.db, waiting.user)
        .await?
        .filter(|u| u.disabled_at.is_none())
        .ok_or_else(invalid_mfa_token)?;
    let enrolled = mfa::totp_of(&state.db, user.id)
        .await?
        .filter(|t| t.confirmed)
        .ok_or_else(invalid_mfa_token)?;
    if !code_accepted(state, &user, &enrolled, code).await? {
        count_failure(state, &keys).await?;
        return Err(bad_code());
    }
    let mut tx = state.db.begin().await?;
    let taken = accounts::token_take_in(&mut tx, Purpose::Mfa, &hash, Utc::now()).await?;
    tx.commit().await?;
    if taken.is_none() {
        return Err(invalid_mfa_token());
    }
    keel_store::security::login_clear(&state.db, &keys[0].0).await?;
    Ok(user)
}

/// Whether the user has a second factor, and how many recovery codes are left (for `me`).
pub async fn status(state: &AppState, user: &User) -> ApiResult<Value> {
    let enrolled = mfa::totp_of(&state.db, user.id).await?.is_some_and(|t| t.confirmed);
    let left = if enrolled {
        mfa::recovery_left(&state.db, user.id).await?
    } else {
        0
    };
    Ok(json!({ "totp": enrolled, "recovery_codes_left": left }))
}

fn mfa_required() -> ApiError {
    ApiError::new(
        "mfa_required",
        "this org requires a second factor: set one up with POST /api/v1/auth/mfa/totp/enroll, then use the org",
    )
}

async fn enrolled(state: &AppState, user: uuid::Uuid) -> ApiResult<bool> {
    Ok(mfa::totp_of(&state.db, user).await?.is_some_and(|t| t.confirmed))
}

/// An org that requires a second factor (A5) refuses its members without one: 403
/// `mfa_required`, on every org route, until they enrol. The superuser is not a member and is
/// not held to it; API keys are not people. Costs one lookup, only in orgs that require it.
pub async fn enforce(state: &AppState, org: &system::Org, user: &User) -> ApiResult<()> {
    if !org.require_mfa || user.superuser || enrolled(state, user.id).await? {
        return Ok(());
    }
    Err(mfa_required())
}

/// `PATCH /api/v1/orgs/{org} {require_mfa}`: by the org's owners (the top role) or the
/// superuser. An owner turning it on must have a second factor first, so no owner locks
/// themselves out. Every member's cached membership is dropped, so every instance applies it
/// at once.
pub async fn require_for_org(
    state: &AppState,
    principal: &system::Principal,
    org: &system::Org,
    role: &Option<String>,
    required: bool,
) -> ApiResult<system::Org> {
    let superuser = super::is_superuser(principal);
    let owner = role.as_deref() == Some(state.schema.app.top_role());
    let system::Principal::User { user, .. } = principal else {
        return Err(ApiError::forbidden());
    };
    if !superuser && !owner {
        return Err(ApiError::new(
            "forbidden",
            "only the org's owners change its security settings",
        ));
    }
    if required && !superuser && !enrolled(state, user.id).await? {
        return Err(ApiError::new(
            "mfa_required",
            "set up your own second factor (POST /api/v1/auth/mfa/totp/enroll) before requiring one of the org's members",
        ));
    }
    system::org_require_mfa(&state.db, org.id, required).await?;
    let mut after = None;
    loop {
        let page = system::members(&state.db, org.id, after, 500).await?;
        for member in &page {
            crate::http::extract::forget_membership(state, member.user.id, &org.slug).await;
        }
        match page.last() {
            Some(last) if page.len() == 500 => after = Some(last.user.id),
            _ => break,
        }
    }
    Ok(system::Org {
        require_mfa: required,
        ..org.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238, appendix B (SHA-1): the codes Keel's parameters give are the RFC's, cut to
    /// six digits.
    #[test]
    fn codes_follow_rfc_6238() {
        let totp = Builder::new()
            .with_secret(Secret::from(b"12345678901234567890".to_vec()))
            .build()
            .unwrap();
        for (time, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
            (20_000_000_000, "353130"),
        ] {
            assert_eq!(totp.generate(time).to_string(), code, "at {time}");
            assert_eq!(totp.check(code, time), Some(time / 30), "at {time}");
        }
        // One step either way is accepted, two are not.
        assert!(totp.check("287082", 59 + 30).is_some());
        assert!(totp.check("287082", 59 + 60).is_none());
    }

    #[test]
    fn recovery_codes_are_two_groups_of_five() {
        let code = recovery_code();
        assert_eq!(code.len(), 11);
        assert_eq!(&code[5..6], "-");
        assert_eq!(normalize_recovery(&code.to_uppercase()).len(), 10);
        assert_ne!(recovery_code(), recovery_code());
    }
}
