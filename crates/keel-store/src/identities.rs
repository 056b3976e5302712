//! Sign-in with other providers (A4, system version 8): the accounts users hold at OAuth 2.0 /
//! OpenID Connect providers, linked to Keel users, and the short-lived state of a sign-in
//! between Keel's redirect to the provider and the provider's redirect back.
//!
//! An identity is a provider and the provider's stable subject for the user (`sub`), never
//! an email address: addresses change hands, subjects do not. A user has at most one identity
//! per provider.
//!
//! A sign-in's state is stored only as the SHA-256 hash of the `state` parameter, with the
//! hash of the random value in the browser's cookie that binds the flow to the browser that
//! started it (login CSRF), the nonce and the PKCE verifier. It is used once: the callback
//! deletes it before it talks to the provider.

use chrono::{DateTime, Duration, Utc};
use keel_query::value::truncate_micros;
use keel_query::{Dialect, SqlValue};
use serde::Serialize;
use uuid::Uuid;

use crate::cell::Row;
use crate::db::{Db, Tx};
use crate::error::StoreError;
use crate::params::Params;

pub fn tables(dialect: Dialect) -> Vec<String> {
    let (uuid, ts, boolean, _) = crate::migrate::column_types(dialect);
    let no = match dialect {
        Dialect::Sqlite => "0",
        Dialect::Postgres => "false",
    };
    vec![
        format!(
            "CREATE TABLE keel_identities (provider TEXT NOT NULL, subject TEXT NOT NULL, user_id {uuid} NOT NULL REFERENCES keel_users (id) ON DELETE CASCADE, email TEXT, created_at {ts} NOT NULL, last_used_at {ts} NOT NULL, PRIMARY KEY (provider, subject))"
        ),
        "CREATE UNIQUE INDEX keel_identities_user ON keel_identities (user_id, provider)".to_string(),
        format!(
            "CREATE TABLE keel_oidc_states (state_hash TEXT PRIMARY KEY, provider TEXT NOT NULL, binding_hash TEXT, nonce TEXT NOT NULL, verifier TEXT NOT NULL, redirect TEXT NOT NULL, link_user {uuid} REFERENCES keel_users (id) ON DELETE CASCADE, client_challenge TEXT, created_at {ts} NOT NULL, expires_at {ts} NOT NULL)"
        ),
        // The app's own PKCE challenge for the code a sign-in ends with (`code_take`).
        "ALTER TABLE keel_account_tokens ADD COLUMN challenge TEXT".to_string(),
        "CREATE INDEX keel_oidc_states_expiry ON keel_oidc_states (expires_at)".to_string(),
        // An org's owners may require a second factor of its members (A5).
        format!("ALTER TABLE keel_orgs ADD COLUMN require_mfa {boolean} NOT NULL DEFAULT {no}"),
    ]
}

fn now() -> DateTime<Utc> {
    truncate_micros(Utc::now())
}

/// A sign-in between Keel's redirect to the provider and the provider's redirect back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowState {
    pub provider: String,
    /// The hash of the browser cookie's value; `None` until a browser picks up a link flow
    /// (`state_bind`).
    pub binding_hash: Option<String>,
    pub nonce: String,
    pub verifier: String,
    /// Where the browser goes when the sign-in ends (an allowed URL).
    pub redirect: String,
    /// The signed-in user who asked to link this provider; `None` for a sign-in.
    pub link_user: Option<Uuid>,
    /// The app's PKCE challenge (S256) that the code this sign-in ends with must be
    /// exchanged with, when the app gave one.
    pub client_challenge: Option<String>,
}

const STATE_COLUMNS: &str = "provider, binding_hash, nonce, verifier, redirect, link_user, client_challenge";

fn state_from(row: &Row) -> Result<FlowState, StoreError> {
    let bad = || StoreError::Other("unexpected sign-in state row shape".into());
    Ok(FlowState {
        provider: row[0].text().ok_or_else(bad)?.to_string(),
        binding_hash: row[1].text().map(str::to_string),
        nonce: row[2].text().ok_or_else(bad)?.to_string(),
        verifier: row[3].text().ok_or_else(bad)?.to_string(),
        redirect: row[4].text().ok_or_else(bad)?.to_string(),
        link_user: row[5].uuid(),
        client_challenge: row[6].text().map(str::to_string),
    })
}

/// Stores a sign-in's state under the hash of its `state` parameter, valid for `ttl`.
pub async fn state_insert(db: &Db, state_hash: &str, state: &FlowState, ttl: Duration) -> Result<(), StoreError> {
    let now = now();
    let mut params = Params::default();
    let values = [
        params.bind(SqlValue::Text(state_hash.to_string())),
        params.bind(SqlValue::Text(state.provider.clone())),
        params.optional_text(state.binding_hash.as_deref()),
        params.bind(SqlValue::Text(state.nonce.clone())),
        params.bind(SqlValue::Text(state.verifier.clone())),
        params.bind(SqlValue::Text(state.redirect.clone())),
        params.optional_uuid(state.link_user),
        params.optional_text(state.client_challenge.as_deref()),
        params.bind(SqlValue::Datetime(now)),
        params.bind(SqlValue::Datetime(now + ttl)),
    ];
    let sql = params.sql(
        db.dialect(),
        &format!(
            "INSERT INTO keel_oidc_states (state_hash, {STATE_COLUMNS}, created_at, expires_at) VALUES ({})",
            values.join(", ")
        ),
    );
    let mut tx = db.begin().await?;
    tx.execute(&sql).await?;
    tx.commit().await
}

/// Binds a link flow that has no browser yet to the browser that opens it: answers its
/// state, or `None` when it is unknown, expired or already bound.
pub async fn state_bind(db: &Db, state_hash: &str, binding_hash: &str) -> Result<Option<FlowState>, StoreError> {
    let mut tx = db.begin().await?;
    let rows = tx
        .query(&tx.portable(
            &format!(
                "UPDATE keel_oidc_states SET binding_hash = $2 WHERE state_hash = $1 AND binding_hash IS NULL AND expires_at > $3 RETURNING {STATE_COLUMNS}"
            ),
            vec![
                SqlValue::Text(state_hash.to_string()),
                SqlValue::Text(binding_hash.to_string()),
                SqlValue::Datetime(now()),
            ],
        ))
        .await?;
    tx.commit().await?;
    rows.first().map(state_from).transpose()
}

/// Uses a sign-in's state: deletes it and answers it, or `None` when no live state has this
/// hash (unknown, used or expired).
pub async fn state_take(db: &Db, state_hash: &str) -> Result<Option<FlowState>, StoreError> {
    let mut tx = db.begin().await?;
    let rows = tx
        .query(&tx.portable(
            &format!("DELETE FROM keel_oidc_states WHERE state_hash = $1 RETURNING {STATE_COLUMNS}, expires_at"),
            vec![SqlValue::Text(state_hash.to_string())],
        ))
        .await?;
    tx.commit().await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    if row[7].datetime().is_none_or(|at| at <= now()) {
        return Ok(None);
    }
    state_from(row).map(Some)
}

/// Deletes sign-in states that expired before `now` (the cleanup job); returns how many.
pub async fn states_prune(db: &Db, now: DateTime<Utc>) -> Result<u64, StoreError> {
    let mut tx = db.begin().await?;
    let n = tx
        .execute(&tx.portable(
            "DELETE FROM keel_oidc_states WHERE expires_at <= $1",
            vec![SqlValue::Datetime(truncate_micros(now))],
        ))
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Stores the one-time code a sign-in ends with (an account token of purpose
/// `oidc_sign_in`, replacing the user's older one), with the app's PKCE challenge if any.
pub async fn code_insert(
    db: &Db,
    code_hash: &str,
    user: Uuid,
    email: &str,
    challenge: Option<&str>,
    ttl: Duration,
) -> Result<(), StoreError> {
    let now = now();
    let mut tx = db.begin().await?;
    crate::accounts::tokens_drop_in(&mut tx, user, crate::accounts::Purpose::OidcSignIn).await?;
    let mut params = Params::default();
    let values = [
        params.bind(SqlValue::Text(code_hash.to_string())),
        params.bind(SqlValue::Text(
            crate::accounts::Purpose::OidcSignIn.as_str().to_string(),
        )),
        params.bind(SqlValue::Uuid(user)),
        params.bind(SqlValue::Text(email.to_string())),
        params.bind(SqlValue::Datetime(now)),
        params.bind(SqlValue::Datetime(now + ttl)),
        params.optional_text(challenge),
    ];
    let sql = params.sql(
        db.dialect(),
        &format!(
            "INSERT INTO keel_account_tokens (token_hash, purpose, user_id, email, created_at, expires_at, challenge) VALUES ({})",
            values.join(", ")
        ),
    );
    tx.execute(&sql).await?;
    tx.commit().await
}

/// Uses a sign-in's code: deletes it and answers its user and challenge, or `None` when no
/// live code has this hash.
pub async fn code_take(db: &Db, code_hash: &str) -> Result<Option<(Uuid, Option<String>)>, StoreError> {
    let mut tx = db.begin().await?;
    let rows = tx
        .query(&tx.portable(
            "DELETE FROM keel_account_tokens WHERE token_hash = $1 AND purpose = $2 RETURNING user_id, challenge, expires_at",
            vec![
                SqlValue::Text(code_hash.to_string()),
                SqlValue::Text(crate::accounts::Purpose::OidcSignIn.as_str().to_string()),
            ],
        ))
        .await?;
    tx.commit().await?;
    Ok(rows.first().and_then(|row| {
        let live = row[2].datetime().is_some_and(|at| at > now());
        live.then(|| row[0].uuid().map(|user| (user, row[1].text().map(str::to_string))))
            .flatten()
    }))
}

/// A user's account at a provider.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Identity {
    pub provider: String,
    pub subject: String,
    /// The address the provider gave when the identity was linked or last used.
    pub email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
}

/// The user an identity belongs to, marking it used (with the provider's current address).
pub async fn identity_user(
    db: &Db,
    provider: &str,
    subject: &str,
    email: Option<&str>,
) -> Result<Option<Uuid>, StoreError> {
    let mut params = Params::default();
    let sql = format!(
        "UPDATE keel_identities SET last_used_at = {}, email = {} WHERE provider = {} AND subject = {} RETURNING user_id",
        params.bind(SqlValue::Datetime(now())),
        params.optional_text(email),
        params.bind(SqlValue::Text(provider.to_string())),
        params.bind(SqlValue::Text(subject.to_string())),
    );
    let mut tx = db.begin().await?;
    let rows = tx.query(&params.sql(db.dialect(), &sql)).await?;
    tx.commit().await?;
    Ok(rows.first().and_then(|row| row[0].uuid()))
}

/// Links an identity to a user, inside the caller's transaction. `StoreError::Unique` when
/// the identity belongs to someone, or the user has one at this provider already.
pub async fn identity_insert_in(
    tx: &mut Tx,
    provider: &str,
    subject: &str,
    user: Uuid,
    email: Option<&str>,
) -> Result<(), StoreError> {
    let now = now();
    let mut params = Params::default();
    let values = [
        params.bind(SqlValue::Text(provider.to_string())),
        params.bind(SqlValue::Text(subject.to_string())),
        params.bind(SqlValue::Uuid(user)),
        params.optional_text(email),
        params.bind(SqlValue::Datetime(now)),
        params.bind(SqlValue::Datetime(now)),
    ];
    let sql = params.sql(
        tx.dialect(),
        &format!(
            "INSERT INTO keel_identities (provider, subject, user_id, email, created_at, last_used_at) VALUES ({})",
            values.join(", ")
        ),
    );
    tx.execute(&sql).await.map(|_| ())
}

/// A user's identities, by provider.
pub async fn identities_of(db: &Db, user: Uuid) -> Result<Vec<Identity>, StoreError> {
    let sql = db.portable(
        "SELECT provider, subject, email, created_at, last_used_at FROM keel_identities WHERE user_id = $1 ORDER BY provider",
        vec![SqlValue::Uuid(user)],
    );
    let bad = || StoreError::Other("unexpected identity row shape".into());
    db.query_primary(&sql)
        .await?
        .iter()
        .map(|row| {
            Ok(Identity {
                provider: row[0].text().ok_or_else(bad)?.to_string(),
                subject: row[1].text().ok_or_else(bad)?.to_string(),
                email: row[2].text().map(str::to_string),
                created_at: row[3].datetime().ok_or_else(bad)?,
                last_used_at: row[4].datetime().ok_or_else(bad)?,
            })
        })
        .collect()
}

/// Unlinks the user's identity at `provider`; `false` when there was none.
pub async fn identity_delete(db: &Db, user: Uuid, provider: &str) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    let n = tx
        .execute(&tx.portable(
            "DELETE FROM keel_identities WHERE user_id = $1 AND provider = $2",
            vec![SqlValue::Uuid(user), SqlValue::Text(provider.to_string())],
        ))
        .await?;
    tx.commit().await?;
    Ok(n == 1)
}
