//! Passwords: argon2id hashing at the configured cost, the password policy (length, not the
//! email, not a common password) and email normalisation.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use serde_json::json;

use crate::auth::settings::AuthSection;
use crate::http::error::{ApiError, ApiResult};

/// The argon2id hasher for the configured cost.
fn hasher(auth: &AuthSection) -> Argon2<'static> {
    let params = argon2::Params::new(auth.argon2_memory_kib, auth.argon2_iterations, 1, None).unwrap_or_default();
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Hashes a password with argon2id (deliberately slow: call it off the async workers).
pub fn hash_password_blocking(auth: &AuthSection, password: &str) -> ApiResult<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(ApiError::internal)?;
    hasher(auth)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(ApiError::internal)
}

/// Hashes a password with argon2id on a blocking thread.
pub async fn hash_password(auth: &AuthSection, password: String) -> ApiResult<String> {
    let auth = auth.clone();
    tokio::task::spawn_blocking(move || hash_password_blocking(&auth, &password))
        .await
        .map_err(ApiError::internal)?
}

/// Verifies a password; the hash carries its own parameters.
/// Checks the signed-in user's own password again, before a change that needs it (a new
/// password, address or second factor): 401 `invalid_credentials` when it is wrong.
pub(crate) async fn confirm_own_password(
    state: &crate::http::state::AppState,
    user: &keel_store::system::User,
    password: String,
) -> ApiResult<()> {
    let (_, hash) = keel_store::system::user_by_email(&state.db, &user.email)
        .await?
        .ok_or_else(|| ApiError::new("unauthenticated", "the user no longer exists"))?;
    if password.len() > 1024 || !verify_password(password, hash).await {
        return Err(ApiError::new("invalid_credentials", "the password is wrong"));
    }
    Ok(())
}

pub(crate) async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Normalises and checks an email address.
pub fn normalize_email(email: &str) -> ApiResult<String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(
            ApiError::new("validation_failed", "the email address is not valid").with_details(
                json!([{ "field": "email", "code": "invalid_email", "message": "not a valid email address" }]),
            ),
        )
    }
}

/// The most common passwords of breach corpora (8 characters or more, lowercase, sorted):
/// see `data/README.md`.
const COMMON_PASSWORDS: &str = include_str!("../../data/common-passwords.txt");

/// Whether a password is on the bundled list of common and breached passwords (any case).
pub fn is_common_password(password: &str) -> bool {
    let lower = password.to_lowercase();
    let list = COMMON_PASSWORDS.as_bytes();
    // Binary search over the sorted lines without building an index.
    let (mut low, mut high) = (0usize, list.len());
    while low < high {
        let middle = (low + high) / 2;
        let start = list[..middle].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let end = list[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(list.len(), |i| start + i);
        match list[start..end].cmp(lower.as_bytes()) {
            std::cmp::Ordering::Equal => return true,
            std::cmp::Ordering::Less => low = end + 1,
            std::cmp::Ordering::Greater => high = start,
        }
    }
    false
}

/// The password policy: length bounds, not the email itself, not a common password.
pub fn check_password(password: &str, email: &str, min_length: usize) -> ApiResult<()> {
    let length = password.chars().count();
    let problem = if length < min_length {
        Some(format!("use at least {min_length} characters"))
    } else if length > 256 {
        Some("use at most 256 characters".to_string())
    } else if password.eq_ignore_ascii_case(email)
        || password.eq_ignore_ascii_case(email.split('@').next().unwrap_or(""))
    {
        Some("the password must not be your email".to_string())
    } else if is_common_password(password) {
        Some("this password is one of the most common ones in breached-password lists; choose another".to_string())
    } else {
        None
    };
    match problem {
        Some(message) => Err(ApiError::new("weak_password", message)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_passwords_are_refused_in_any_case() {
        assert!(COMMON_PASSWORDS.lines().count() > 8_000);
        let first = COMMON_PASSWORDS.lines().next().unwrap();
        let last = COMMON_PASSWORDS.lines().last().unwrap();
        for listed in [first, last, "password123", "PassWord123", "iloveyou2"] {
            assert!(is_common_password(listed), "{listed}");
        }
        for fine in ["correct horse battery", "zzzzzzzzzzzzzzzzzzzzzzzz", "", "a"] {
            assert!(!is_common_password(fine), "{fine}");
        }
        // Every line is found: the search handles every position.
        assert!(COMMON_PASSWORDS.lines().all(is_common_password));
        let refused = check_password("Password123", "ada@example.com", 8).unwrap_err();
        assert_eq!(refused.code, "weak_password");
        assert!(check_password("correct horse battery", "ada@example.com", 10).is_ok());
    }
}
