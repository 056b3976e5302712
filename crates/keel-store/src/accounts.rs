//! Account flows (system version 7): the single-use tokens behind email verification, email
//! changes and password resets, each user's verified address, and where each session came
//! from.
//!
//! A token is stored only as its SHA-256 hash. Using one deletes it in the transaction that
//! does what it allows, so it works once even when two instances race for it; an expired
//! one is deleted and refused. A new token of a purpose replaces the user's older ones, and
//! any password change drops every reset token of the user.

use chrono::{DateTime, Duration, Utc};
use keel_query::value::truncate_micros;
use keel_query::{Dialect, SqlValue};
use uuid::Uuid;

use crate::db::{Db, Tx};
use crate::error::StoreError;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Prove that the user owns their current address.
    Verify,
    /// Move the account to the token's address (which the link proves the user owns).
    ChangeEmail,
    /// Set a new password without the old one.
    Reset,
    /// Finish a sign-in with the second factor (A5): the step between password and code.
    Mfa,
    /// Finish a sign-in with another provider (A4): the one-time code the app exchanges for
    /// a session after the provider sent the browser back.
    OidcSignIn,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Verify => "verify",
            Purpose::ChangeEmail => "change_email",
            Purpose::Reset => "reset",
            Purpose::Mfa => "mfa",
            Purpose::OidcSignIn => "oidc_sign_in",
        }
    }
}

pub fn tables(dialect: Dialect) -> Vec<String> {
    let (uuid, ts, ..) = crate::migrate::column_types(dialect);
    vec![
        format!("ALTER TABLE keel_users ADD COLUMN email_verified_at {ts}"),
        // An operator's lock on the account (`keel users disable`).
        format!("ALTER TABLE keel_users ADD COLUMN disabled_at {ts}"),
        format!(
            "CREATE TABLE keel_account_tokens (token_hash TEXT PRIMARY KEY, purpose TEXT NOT NULL, user_id {uuid} NOT NULL REFERENCES keel_users (id) ON DELETE CASCADE, email TEXT NOT NULL, created_at {ts} NOT NULL, expires_at {ts} NOT NULL)"
        ),
        "CREATE INDEX keel_account_tokens_user ON keel_account_tokens (user_id, purpose)".to_string(),
        "CREATE INDEX keel_account_tokens_expiry ON keel_account_tokens (expires_at)".to_string(),
        // Where a session came from and when it was last used (A6: the session list).
        format!("ALTER TABLE keel_sessions ADD COLUMN last_seen_at {ts}"),
        "ALTER TABLE keel_sessions ADD COLUMN ip TEXT".to_string(),
        "ALTER TABLE keel_sessions ADD COLUMN user_agent TEXT".to_string(),
    ]
}

/// Stores a new token of `purpose` for `user` and `email`, valid for `ttl`, in place of the
/// user's older tokens of that purpose.
pub async fn token_insert(
    db: &Db,
    purpose: Purpose,
    user: Uuid,
    email: &str,
    token_hash: &str,
    ttl: Duration,
) -> Result<(), StoreError> {
    let now = truncate_micros(Utc::now());
    let mut tx = db.begin().await?;
    tokens_drop_in(&mut tx, user, purpose).await?;
    tx.execute(&tx.portable(
        "INSERT INTO keel_account_tokens (token_hash, purpose, user_id, email, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        vec![
            SqlValue::Text(token_hash.to_string()),
            SqlValue::Text(purpose.as_str().to_string()),
            SqlValue::Uuid(user),
            SqlValue::Text(email.to_string()),
            SqlValue::Datetime(now),
            SqlValue::Datetime(now + ttl),
        ],
    ))
    .await?;
    tx.commit().await
}

/// Whom a used token was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub user: Uuid,
    pub email: String,
}

/// Uses a token inside the caller's transaction: deletes it and answers whom it was for,
/// or `None` when no live token of `purpose` has this hash (unknown, used, expired, or of
/// another purpose). A rolled-back transaction leaves the token usable.
pub async fn token_take_in(
    tx: &mut Tx,
    purpose: Purpose,
    token_hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<Taken>, StoreError> {
    let rows = tx
        .query(&tx.portable(
            "DELETE FROM keel_account_tokens WHERE token_hash = $1 AND purpose = $2 RETURNING user_id, email, expires_at",
            vec![
                SqlValue::Text(token_hash.to_string()),
                SqlValue::Text(purpose.as_str().to_string()),
            ],
        ))
        .await?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let live = row
        .get(2)
        .and_then(|c| c.datetime())
        .is_some_and(|expires| expires > now);
    let user = row.first().and_then(|c| c.uuid());
    let email = row.get(1).and_then(|c| c.text()).map(str::to_string);
    Ok(match (live, user, email) {
        (true, Some(user), Some(email)) => Some(Taken { user, email }),
        _ => None,
    })
}

/// Whom a live token of `purpose` is for, without using it (to check a new password against
/// the account before the transaction that uses the token).
pub async fn token_peek(db: &Db, purpose: Purpose, token_hash: &str) -> Result<Option<Taken>, StoreError> {
    let sql = db.portable(
        "SELECT user_id, email FROM keel_account_tokens WHERE token_hash = $1 AND purpose = $2 AND expires_at > $3",
        vec![
            SqlValue::Text(token_hash.to_string()),
            SqlValue::Text(purpose.as_str().to_string()),
            SqlValue::Datetime(truncate_micros(Utc::now())),
        ],
    );
    let Some(row) = db.query_primary(&sql).await?.into_iter().next() else {
        return Ok(None);
    };
    Ok(
        match (row.first().and_then(|c| c.uuid()), row.get(1).and_then(|c| c.text())) {
            (Some(user), Some(email)) => Some(Taken {
                user,
                email: email.to_string(),
            }),
            _ => None,
        },
    )
}

/// Deletes every token of `purpose` the user has.
pub async fn tokens_drop_in(tx: &mut Tx, user: Uuid, purpose: Purpose) -> Result<u64, StoreError> {
    tx.execute(&tx.portable(
        "DELETE FROM keel_account_tokens WHERE user_id = $1 AND purpose = $2",
        vec![SqlValue::Uuid(user), SqlValue::Text(purpose.as_str().to_string())],
    ))
    .await
}

/// Deletes tokens that expired before `now` (the cleanup job); returns how many.
pub async fn tokens_prune(db: &Db, now: DateTime<Utc>) -> Result<u64, StoreError> {
    let mut tx = db.begin().await?;
    let n = tx
        .execute(&tx.portable(
            "DELETE FROM keel_account_tokens WHERE expires_at <= $1",
            vec![SqlValue::Datetime(truncate_micros(now))],
        ))
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Marks `email` verified for the user, inside the caller's transaction: for a verification
/// token, only while it is still the user's address (`false` otherwise: the user changed it
/// meanwhile); for an email change, the account moves to it (`StoreError::Unique` when
/// another account has it by now).
pub async fn email_verified_in(tx: &mut Tx, purpose: Purpose, user: Uuid, email: &str) -> Result<bool, StoreError> {
    let now = SqlValue::Datetime(truncate_micros(Utc::now()));
    let params = vec![SqlValue::Uuid(user), SqlValue::Text(email.to_string()), now];
    let sql = match purpose {
        Purpose::ChangeEmail => {
            "UPDATE keel_users SET email = $2, email_verified_at = $3, updated_at = $3 WHERE id = $1"
        }
        _ => {
            "UPDATE keel_users SET email_verified_at = COALESCE(email_verified_at, $3), updated_at = $3 WHERE id = $1 AND email = $2"
        }
    };
    Ok(tx.execute(&tx.portable(sql, params)).await? == 1)
}
