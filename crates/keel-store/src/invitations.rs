//! Org invitations (A3, system version 7): an org manager invites an address with a role; the
//! invitation is accepted once, by the owner of that address, before it expires.
//!
//! Like the other account links, the token exists only in the email and, as a SHA-256 hash,
//! here: the job that sends the email sets `token_hash`, so a resend replaces the link. Every
//! change writes a row to the org's activity log in the same transaction.

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
    let (uuid, ts, ..) = crate::migrate::column_types(dialect);
    vec![
        format!(
            "CREATE TABLE keel_invitations (id {uuid} PRIMARY KEY, org_id {uuid} NOT NULL REFERENCES keel_orgs (id) ON DELETE CASCADE, email TEXT NOT NULL, role TEXT NOT NULL, token_hash TEXT, invited_by {uuid} REFERENCES keel_users (id) ON DELETE SET NULL, created_at {ts} NOT NULL, expires_at {ts} NOT NULL, accepted_at {ts}, accepted_by {uuid} REFERENCES keel_users (id) ON DELETE SET NULL, revoked_at {ts})"
        ),
        "CREATE UNIQUE INDEX keel_invitations_token ON keel_invitations (token_hash)".to_string(),
        // One open invitation per org and address.
        "CREATE UNIQUE INDEX keel_invitations_open ON keel_invitations (org_id, email) WHERE accepted_at IS NULL AND revoked_at IS NULL".to_string(),
        "CREATE INDEX keel_invitations_org ON keel_invitations (org_id, created_at)".to_string(),
    ]
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Invitation {
    pub id: Uuid,
    pub org: Uuid,
    pub email: String,
    pub role: String,
    pub invited_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, org_id, email, role, invited_by, created_at, expires_at, accepted_at, revoked_at";

fn from_row(row: &Row) -> Result<Invitation, StoreError> {
    let bad = || StoreError::Other("unexpected invitation row shape".into());
    Ok(Invitation {
        id: row[0].uuid().ok_or_else(bad)?,
        org: row[1].uuid().ok_or_else(bad)?,
        email: row[2].text().ok_or_else(bad)?.to_string(),
        role: row[3].text().ok_or_else(bad)?.to_string(),
        invited_by: row[4].uuid(),
        created_at: row[5].datetime().ok_or_else(bad)?,
        expires_at: row[6].datetime().ok_or_else(bad)?,
        accepted_at: row[7].datetime(),
        revoked_at: row[8].datetime(),
    })
}

fn now() -> DateTime<Utc> {
    truncate_micros(Utc::now())
}

/// Who changes an invitation, for the activity log.
#[derive(Debug, Clone, Copy)]
pub struct By<'a> {
    pub user: Option<Uuid>,
    pub request_id: &'a str,
}

/// An activity-log row of the org for an invitation (collection `invitations`; `create` an
/// invitation, `delete` a revocation, `update` an acceptance).
async fn log_in(tx: &mut Tx, invitation: &Invitation, action: &str, by: By<'_>) -> Result<(), StoreError> {
    let mut params = Params::default();
    let values = [
        params.bind(SqlValue::Uuid(Uuid::now_v7())),
        params.bind(SqlValue::Uuid(invitation.org)),
        params.bind(SqlValue::Datetime(now())),
        params.bind(SqlValue::Text(invitation.id.to_string())),
        params.bind(SqlValue::Text(action.to_string())),
        params.bind(SqlValue::Json(serde_json::json!({ "email": invitation.email, "role": invitation.role, "accepted_at": invitation.accepted_at }))),
        params.bind(SqlValue::Text(by.request_id.to_string())),
        params.optional_uuid(by.user),
    ];
    let [id, org, at, record, action, changes, request_id, actor] = &values;
    tx.execute(&params.sql(
        tx.dialect(),
        &format!(
            "INSERT INTO keel_activity (id, org, created_at, collection, record, action, changes, request_id, count, actor, api_key) VALUES ({id}, {org}, {at}, 'invitations', {record}, {action}, {changes}, {request_id}, 1, {actor}, NULL)"
        ),
    ))
    .await?;
    Ok(())
}

/// Creates an open invitation (`StoreError::Unique` when the org has one for the address).
pub async fn invitation_insert_in(
    tx: &mut Tx,
    org: Uuid,
    email: &str,
    role: &str,
    by: By<'_>,
    ttl: Duration,
) -> Result<Invitation, StoreError> {
    let invited_by = by.user;
    let at = now();
    let invitation = Invitation {
        id: Uuid::now_v7(),
        org,
        email: email.to_string(),
        role: role.to_string(),
        invited_by,
        created_at: at,
        expires_at: at + ttl,
        accepted_at: None,
        revoked_at: None,
    };
    let mut params = Params::default();
    let values = [
        params.bind(SqlValue::Uuid(invitation.id)),
        params.bind(SqlValue::Uuid(org)),
        params.bind(SqlValue::Text(email.to_string())),
        params.bind(SqlValue::Text(role.to_string())),
        params.bind(SqlValue::Datetime(at)),
        params.bind(SqlValue::Datetime(invitation.expires_at)),
        params.optional_uuid(invited_by),
    ];
    let [id, org_p, email_p, role_p, created, expires, inviter] = &values;
    tx.execute(&params.sql(
        tx.dialect(),
        &format!(
            "INSERT INTO keel_invitations (id, org_id, email, role, created_at, expires_at, invited_by) VALUES ({id}, {org_p}, {email_p}, {role_p}, {created}, {expires}, {inviter})"
        ),
    ))
    .await?;
    log_in(tx, &invitation, "create", by).await?;
    Ok(invitation)
}

/// The org's open invitations (not accepted, not revoked; expired ones too, marked by
/// `expires_at`), newest first.
pub async fn invitations_open(db: &Db, org: Uuid, limit: u32) -> Result<Vec<Invitation>, StoreError> {
    let sql = db.portable(
        &format!(
            "SELECT {COLUMNS} FROM keel_invitations WHERE org_id = $1 AND accepted_at IS NULL AND revoked_at IS NULL ORDER BY created_at DESC, id DESC LIMIT {limit}"
        ),
        vec![SqlValue::Uuid(org)],
    );
    db.query_primary(&sql).await?.iter().map(from_row).collect()
}

/// One open invitation of the org.
pub async fn invitation_open(db: &Db, org: Uuid, id: Uuid) -> Result<Option<Invitation>, StoreError> {
    let sql = db.portable(
        &format!(
            "SELECT {COLUMNS} FROM keel_invitations WHERE org_id = $1 AND id = $2 AND accepted_at IS NULL AND revoked_at IS NULL"
        ),
        vec![SqlValue::Uuid(org), SqlValue::Uuid(id)],
    );
    db.query_primary(&sql).await?.first().map(from_row).transpose()
}

/// Revokes an open invitation; `None` when the org has no such open invitation.
pub async fn invitation_revoke(db: &Db, org: Uuid, id: Uuid, by: By<'_>) -> Result<Option<Invitation>, StoreError> {
    let mut tx = db.begin().await?;
    let rows = tx
        .query(&tx.portable(
            &format!(
                "UPDATE keel_invitations SET revoked_at = $3, token_hash = NULL WHERE org_id = $1 AND id = $2 AND accepted_at IS NULL AND revoked_at IS NULL RETURNING {COLUMNS}"
            ),
            vec![SqlValue::Uuid(org), SqlValue::Uuid(id), SqlValue::Datetime(now())],
        ))
        .await?;
    let Some(invitation) = rows.first().map(from_row).transpose()? else {
        return Ok(None);
    };
    log_in(&mut tx, &invitation, "delete", by).await?;
    tx.commit().await?;
    Ok(Some(invitation))
}

/// Gives an open invitation a new link (the sending job): its token's hash, and a new
/// expiry. `false` when it is no longer open.
pub async fn invitation_set_token(db: &Db, id: Uuid, token_hash: &str, ttl: Duration) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    let n = tx
        .execute(&tx.portable(
            "UPDATE keel_invitations SET token_hash = $2, expires_at = $3 WHERE id = $1 AND accepted_at IS NULL AND revoked_at IS NULL",
            vec![
                SqlValue::Uuid(id),
                SqlValue::Text(token_hash.to_string()),
                SqlValue::Datetime(now() + ttl),
            ],
        ))
        .await?;
    tx.commit().await?;
    Ok(n == 1)
}

/// The open, unexpired invitation behind a token, without using it.
pub async fn invitation_by_token(db: &Db, token_hash: &str) -> Result<Option<Invitation>, StoreError> {
    let sql = db.portable(
        &format!(
            "SELECT {COLUMNS} FROM keel_invitations WHERE token_hash = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2"
        ),
        vec![SqlValue::Text(token_hash.to_string()), SqlValue::Datetime(now())],
    );
    db.query_primary(&sql).await?.first().map(from_row).transpose()
}

/// Uses an invitation's token inside the caller's transaction: marks it accepted by `user`
/// (once: a second use finds nothing) and logs it. The caller adds the membership in the
/// same transaction.
pub async fn invitation_accept_in(
    tx: &mut Tx,
    token_hash: &str,
    user: Uuid,
    request_id: &str,
) -> Result<Option<Invitation>, StoreError> {
    let at = now();
    let rows = tx
        .query(&tx.portable(
            &format!(
                "UPDATE keel_invitations SET accepted_at = $2, accepted_by = $3, token_hash = NULL WHERE token_hash = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2 RETURNING {COLUMNS}"
            ),
            vec![
                SqlValue::Text(token_hash.to_string()),
                SqlValue::Datetime(at),
                SqlValue::Uuid(user),
            ],
        ))
        .await?;
    let Some(invitation) = rows.first().map(from_row).transpose()? else {
        return Ok(None);
    };
    log_in(
        tx,
        &invitation,
        "update",
        By {
            user: Some(user),
            request_id,
        },
    )
    .await?;
    Ok(Some(invitation))
}
