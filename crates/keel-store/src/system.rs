//! Users, sessions, orgs, memberships and API keys: the system tables behind auth and tenancy.

use chrono::{DateTime, Utc};
use keel_query::SqlValue;
use keel_query::value::truncate_micros;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cell::{Cell, Row};
use crate::db::{Db, Tx};
use crate::error::StoreError;
use crate::params::Params;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: Option<String>,
    pub superuser: bool,
    pub created_at: DateTime<Utc>,
    /// When the user proved they own `email` (a verification link, a password reset), or
    /// `None`; accounts an operator creates count as verified.
    #[serde(default)]
    pub email_verified_at: Option<DateTime<Utc>>,
    /// When an operator disabled the account (`keel users disable`): it cannot sign in, and
    /// its sessions ended then.
    #[serde(default)]
    pub disabled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Org {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// Members must have a second factor to use the org (A5; 403 `mfa_required` until then).
    #[serde(default)]
    pub require_mfa: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    pub user: User,
    pub role: String,
    pub joined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKey {
    pub id: Uuid,
    pub org: Uuid,
    pub name: String,
    pub role: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Who a bearer token stands for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Principal {
    User {
        user: User,
        session: Uuid,
        expires_at: DateTime<Utc>,
        /// When the session was last marked as used (at most every few minutes).
        #[serde(default)]
        seen_at: Option<DateTime<Utc>>,
    },
    ApiKey(ApiKey),
}

impl Principal {
    /// When the token stops being valid (`None`: an API key without expiry).
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Principal::User { expires_at, .. } => Some(*expires_at),
            Principal::ApiKey(key) => key.expires_at,
        }
    }
}

fn now() -> DateTime<Utc> {
    truncate_micros(Utc::now())
}

fn bad_row(what: &str) -> StoreError {
    StoreError::Other(format!("unexpected {what} row shape"))
}

const USER_COLUMNS: &str = "u.id, u.email, u.name, u.superuser, u.created_at, u.email_verified_at, u.disabled_at";
/// How many cells `USER_COLUMNS` takes: what a query selects after them starts here.
const USER_WIDTH: usize = 7;

fn user_from(cells: &[Cell]) -> Result<User, StoreError> {
    Ok(User {
        id: cells[0].uuid().ok_or_else(|| bad_row("user"))?,
        email: cells[1].text().ok_or_else(|| bad_row("user"))?.to_string(),
        name: cells[2].text().map(str::to_string),
        superuser: cells[3].bool().unwrap_or(false),
        created_at: cells[4].datetime().ok_or_else(|| bad_row("user"))?,
        email_verified_at: cells[5].datetime(),
        disabled_at: cells[6].datetime(),
    })
}

fn org_from(cells: &[Cell]) -> Result<Org, StoreError> {
    Ok(Org {
        id: cells[0].uuid().ok_or_else(|| bad_row("org"))?,
        slug: cells[1].text().ok_or_else(|| bad_row("org"))?.to_string(),
        name: cells[2].text().ok_or_else(|| bad_row("org"))?.to_string(),
        created_at: cells[3].datetime().ok_or_else(|| bad_row("org"))?,
        require_mfa: cells[4].bool().unwrap_or(false),
    })
}

const KEY_COLUMNS: &str = "k.id, k.org_id, k.name, k.role, k.created_by, k.created_at, k.expires_at";

fn key_from(cells: &[Cell]) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: cells[0].uuid().ok_or_else(|| bad_row("api key"))?,
        org: cells[1].uuid().ok_or_else(|| bad_row("api key"))?,
        name: cells[2].text().unwrap_or_default().to_string(),
        role: cells[3].text().unwrap_or_default().to_string(),
        created_by: cells[4].uuid(),
        created_at: cells[5].datetime().ok_or_else(|| bad_row("api key"))?,
        expires_at: cells[6].datetime(),
    })
}

pub struct NewUser<'a> {
    pub email: &'a str,
    pub name: Option<&'a str>,
    pub password_hash: &'a str,
    pub superuser: bool,
    /// Whether the address counts as verified from the start (accounts an operator creates).
    pub email_verified: bool,
}

pub async fn user_insert(db: &Db, new: NewUser<'_>) -> Result<User, StoreError> {
    let mut tx = db.begin().await?;
    let user = user_insert_in(&mut tx, new).await?;
    tx.commit().await?;
    Ok(user)
}

/// Inserts a user inside the caller's transaction (sign-up writes its verification job in
/// the same one).
pub async fn user_insert_in(tx: &mut Tx, new: NewUser<'_>) -> Result<User, StoreError> {
    let id = Uuid::now_v7();
    let at = now();
    let mut params = Params::default();
    let values = [
        params.bind(SqlValue::Uuid(id)),
        params.bind(SqlValue::Text(new.email.to_string())),
        params.optional_text(new.name),
        params.bind(SqlValue::Text(new.password_hash.to_string())),
        params.bind(SqlValue::Bool(new.superuser)),
        params.bind(SqlValue::Datetime(at)),
        params.bind(if new.email_verified {
            SqlValue::Datetime(at)
        } else {
            SqlValue::Null
        }),
    ];
    let [id_p, email, name, hash, superuser, created, verified] = &values;
    let sql = params.sql(
        tx.dialect(),
        &format!(
            "INSERT INTO keel_users (id, email, name, password_hash, superuser, created_at, updated_at, email_verified_at) VALUES ({id_p}, {email}, {name}, {hash}, {superuser}, {created}, {created}, {verified})"
        ),
    );
    tx.execute(&sql).await?;
    Ok(User {
        id,
        email: new.email.to_string(),
        name: new.name.map(str::to_string),
        superuser: new.superuser,
        created_at: at,
        email_verified_at: new.email_verified.then_some(at),
        disabled_at: None,
    })
}

pub async fn user_by_id(db: &Db, id: Uuid) -> Result<Option<User>, StoreError> {
    let sql = db.portable(
        &format!("SELECT {USER_COLUMNS} FROM keel_users u WHERE u.id = $1"),
        vec![SqlValue::Uuid(id)],
    );
    match db.query_one(&sql).await? {
        None => Ok(None),
        Some(row) => Ok(Some(user_from(&row)?)),
    }
}

/// A user and their password hash, for login.
pub async fn user_by_email(db: &Db, email: &str) -> Result<Option<(User, String)>, StoreError> {
    let sql = db.portable(
        &format!("SELECT {USER_COLUMNS}, u.password_hash FROM keel_users u WHERE u.email = $1"),
        vec![SqlValue::Text(email.to_string())],
    );
    match db.query_one(&sql).await? {
        None => Ok(None),
        Some(row) => {
            let user = user_from(&row)?;
            let hash = row[USER_WIDTH].text().unwrap_or_default().to_string();
            Ok(Some((user, hash)))
        }
    }
}

/// Replaces a user's password hash and revokes every session of theirs, in one transaction;
/// returns the revoked sessions' token hashes (to drop from caches).
pub async fn user_set_password(db: &Db, id: Uuid, password_hash: &str) -> Result<Vec<String>, StoreError> {
    let mut tx = db.begin().await?;
    let hashes = user_set_password_in(&mut tx, id, password_hash).await?;
    tx.commit().await?;
    Ok(hashes)
}

/// [`user_set_password`] inside the caller's transaction. Any password change also ends
/// every password-reset link of the user's that is still open.
pub async fn user_set_password_in(tx: &mut Tx, id: Uuid, password_hash: &str) -> Result<Vec<String>, StoreError> {
    let at = now();
    tx.execute(&tx.portable(
        "UPDATE keel_users SET password_hash = $1, updated_at = $2 WHERE id = $3",
        vec![
            SqlValue::Text(password_hash.to_string()),
            SqlValue::Datetime(at),
            SqlValue::Uuid(id),
        ],
    ))
    .await?;
    crate::accounts::tokens_drop_in(tx, id, crate::accounts::Purpose::Reset).await?;
    Ok(tx
        .query(&tx.portable(
            "UPDATE keel_sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL RETURNING token_hash",
            vec![SqlValue::Datetime(at), SqlValue::Uuid(id)],
        ))
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next().and_then(|c| c.into_text()))
        .collect())
}

/// Disables an account (and ends every session of it) or enables it again; returns the
/// ended sessions' token hashes (to drop from caches), or `None` for an unknown user.
pub async fn user_set_disabled(db: &Db, id: Uuid, disabled: bool) -> Result<Option<Vec<String>>, StoreError> {
    let at = now();
    let mut tx = db.begin().await?;
    let sql = if disabled {
        "UPDATE keel_users SET disabled_at = COALESCE(disabled_at, $1), updated_at = $1 WHERE id = $2"
    } else {
        "UPDATE keel_users SET disabled_at = NULL, updated_at = $1 WHERE id = $2"
    };
    if tx
        .execute(&tx.portable(sql, vec![SqlValue::Datetime(at), SqlValue::Uuid(id)]))
        .await?
        == 0
    {
        return Ok(None);
    }
    let hashes = if disabled {
        tx.query(&tx.portable(
            "UPDATE keel_sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL RETURNING token_hash",
            vec![SqlValue::Datetime(at), SqlValue::Uuid(id)],
        ))
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next().and_then(|c| c.into_text()))
        .collect()
    } else {
        vec![]
    };
    tx.commit().await?;
    Ok(Some(hashes))
}

/// Marks the user's current address verified (an operator's `keel users verify`).
pub async fn user_verify(db: &Db, id: Uuid) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    let n = tx
        .execute(&tx.portable(
            "UPDATE keel_users SET email_verified_at = COALESCE(email_verified_at, $1), updated_at = $1 WHERE id = $2",
            vec![SqlValue::Datetime(now()), SqlValue::Uuid(id)],
        ))
        .await?;
    tx.commit().await?;
    Ok(n == 1)
}

pub async fn user_set_superuser(db: &Db, id: Uuid, superuser: bool) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    let n = tx
        .execute(&tx.portable(
            "UPDATE keel_users SET superuser = $1, updated_at = $2 WHERE id = $3",
            vec![SqlValue::Bool(superuser), SqlValue::Datetime(now()), SqlValue::Uuid(id)],
        ))
        .await?;
    tx.commit().await?;
    Ok(n == 1)
}

/// Where a new session comes from (shown in the session list).
#[derive(Debug, Clone, Default)]
pub struct SessionOrigin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

pub async fn session_insert(
    db: &Db,
    user: Uuid,
    token_hash: &str,
    expires_at: DateTime<Utc>,
    origin: &SessionOrigin,
) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    let at = now();
    let mut params = Params::default();
    let values = [
        params.bind(SqlValue::Uuid(id)),
        params.bind(SqlValue::Text(token_hash.to_string())),
        params.bind(SqlValue::Uuid(user)),
        params.bind(SqlValue::Datetime(at)),
        params.bind(SqlValue::Datetime(truncate_micros(expires_at))),
        params.optional_text(origin.ip.as_deref()),
        params.optional_text(origin.user_agent.as_deref()),
    ];
    let [id_p, hash, user_p, created, expires, ip, agent] = &values;
    let mut tx = db.begin().await?;
    tx.execute(&params.sql(
        tx.dialect(),
        &format!(
            "INSERT INTO keel_sessions (id, token_hash, user_id, created_at, expires_at, last_seen_at, ip, user_agent) VALUES ({id_p}, {hash}, {user_p}, {created}, {expires}, {created}, {ip}, {agent})"
        ),
    ))
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// A live session as its user sees it in the session list.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// The user's live sessions (not revoked, not expired), most recently used first.
pub async fn sessions_of_user(db: &Db, user: Uuid, limit: u32) -> Result<Vec<SessionInfo>, StoreError> {
    let sql = db.portable(
        &format!(
            "SELECT id, created_at, last_seen_at, expires_at, ip, user_agent FROM keel_sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY COALESCE(last_seen_at, created_at) DESC, id DESC LIMIT {limit}"
        ),
        vec![SqlValue::Uuid(user), SqlValue::Datetime(now())],
    );
    db.query_primary(&sql)
        .await?
        .iter()
        .map(|row| {
            Ok(SessionInfo {
                id: row[0].uuid().ok_or_else(|| bad_row("session"))?,
                created_at: row[1].datetime().ok_or_else(|| bad_row("session"))?,
                last_seen_at: row[2].datetime(),
                expires_at: row[3].datetime().ok_or_else(|| bad_row("session"))?,
                ip: row[4].text().map(str::to_string),
                user_agent: row[5].text().map(str::to_string),
            })
        })
        .collect()
}

/// Marks a session as used now.
pub async fn session_seen(db: &Db, session: Uuid) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    tx.execute(&tx.portable(
        "UPDATE keel_sessions SET last_seen_at = $1 WHERE id = $2",
        vec![SqlValue::Datetime(now()), SqlValue::Uuid(session)],
    ))
    .await?;
    tx.commit().await
}

/// Revokes the user's sessions: one (`only`), or all but one (`except`); returns the revoked
/// sessions' token hashes (to drop from caches). Another user's session is never touched.
pub async fn sessions_revoke(
    db: &Db,
    user: Uuid,
    only: Option<Uuid>,
    except: Option<Uuid>,
) -> Result<Vec<String>, StoreError> {
    let mut params = vec![SqlValue::Datetime(now()), SqlValue::Uuid(user)];
    let mut filter = String::new();
    if let Some(only) = only {
        params.push(SqlValue::Uuid(only));
        filter.push_str(&format!(" AND id = ${}", params.len()));
    }
    if let Some(except) = except {
        params.push(SqlValue::Uuid(except));
        filter.push_str(&format!(" AND id <> ${}", params.len()));
    }
    let mut tx = db.begin().await?;
    let hashes = tx
        .query(&tx.portable(
            &format!("UPDATE keel_sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL{filter} RETURNING token_hash"),
            params,
        ))
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next().and_then(|c| c.into_text()))
        .collect();
    tx.commit().await?;
    Ok(hashes)
}

/// The principal behind a token hash: a live session, else a live API key. A token a
/// replica does not know yet (a session created a moment ago, within the replica's lag) is
/// looked up again on the primary, so a new login is never refused.
pub async fn principal_by_token(db: &Db, token_hash: &str) -> Result<Option<Principal>, StoreError> {
    match token_lookup(db, token_hash, false).await? {
        None if db.has_replicas() => token_lookup(db, token_hash, true).await,
        found => Ok(found),
    }
}

async fn token_lookup(db: &Db, token_hash: &str, primary: bool) -> Result<Option<Principal>, StoreError> {
    let read = async |sql: &keel_query::Sql| -> Result<Option<crate::Row>, StoreError> {
        if primary {
            Ok(db.query_primary(sql).await?.into_iter().next())
        } else {
            db.query_one(sql).await
        }
    };
    let at = SqlValue::Datetime(now());
    let session = db.portable(
        &format!("SELECT {USER_COLUMNS}, s.id, s.expires_at, s.last_seen_at FROM keel_sessions s JOIN keel_users u ON u.id = s.user_id WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.disabled_at IS NULL"),
        vec![SqlValue::Text(token_hash.to_string()), at.clone()],
    );
    if let Some(row) = read(&session).await? {
        let user = user_from(&row)?;
        let session = row[USER_WIDTH].uuid().ok_or_else(|| bad_row("session"))?;
        let expires_at = row[USER_WIDTH + 1].datetime().ok_or_else(|| bad_row("session"))?;
        return Ok(Some(Principal::User {
            user,
            session,
            expires_at,
            seen_at: row[USER_WIDTH + 2].datetime(),
        }));
    }
    let key = db.portable(
        &format!("SELECT {KEY_COLUMNS} FROM keel_api_keys k WHERE k.token_hash = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)"),
        vec![SqlValue::Text(token_hash.to_string()), at],
    );
    match read(&key).await? {
        Some(row) => Ok(Some(Principal::ApiKey(key_from(&row)?))),
        None => Ok(None),
    }
}

/// The token hashes of a user's live sessions (to drop them from a shared cache).
pub async fn session_token_hashes(db: &Db, user: Uuid) -> Result<Vec<String>, StoreError> {
    let sql = db.portable(
        "SELECT token_hash FROM keel_sessions WHERE user_id = $1 AND revoked_at IS NULL",
        vec![SqlValue::Uuid(user)],
    );
    Ok(db
        .query(&sql)
        .await?
        .into_iter()
        .filter_map(|row| row.into_iter().next().and_then(|c| c.into_text()))
        .collect())
}

pub async fn session_revoke(db: &Db, session: Uuid) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    tx.execute(&tx.portable(
        "UPDATE keel_sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        vec![SqlValue::Datetime(now()), SqlValue::Uuid(session)],
    ))
    .await?;
    tx.commit().await
}

/// Revokes every session of a user ("log out everywhere"); returns how many.
pub async fn sessions_revoke_all(db: &Db, user: Uuid) -> Result<u64, StoreError> {
    let mut tx = db.begin().await?;
    let n = tx
        .execute(&tx.portable(
            "UPDATE keel_sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            vec![SqlValue::Datetime(now()), SqlValue::Uuid(user)],
        ))
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Creates an org with its creator as a member with `role`.
pub async fn org_insert(db: &Db, slug: &str, name: &str, creator: Option<Uuid>, role: &str) -> Result<Org, StoreError> {
    let id = Uuid::now_v7();
    let at = now();
    let mut tx = db.begin().await?;
    tx.execute(&tx.portable(
        "INSERT INTO keel_orgs (id, slug, name, created_at) VALUES ($1, $2, $3, $4)",
        vec![
            SqlValue::Uuid(id),
            SqlValue::Text(slug.to_string()),
            SqlValue::Text(name.to_string()),
            SqlValue::Datetime(at),
        ],
    ))
    .await?;
    if let Some(user) = creator {
        tx.execute(&tx.portable(
            "INSERT INTO keel_memberships (org_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
            vec![
                SqlValue::Uuid(id),
                SqlValue::Uuid(user),
                SqlValue::Text(role.to_string()),
                SqlValue::Datetime(at),
            ],
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(Org {
        id,
        slug: slug.to_string(),
        name: name.to_string(),
        created_at: at,
        require_mfa: false,
    })
}

/// Sets whether the org requires a second factor of its members.
pub async fn org_require_mfa(db: &Db, org: Uuid, required: bool) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    tx.execute(&tx.portable(
        "UPDATE keel_orgs SET require_mfa = $2 WHERE id = $1",
        vec![SqlValue::Uuid(org), SqlValue::Bool(required)],
    ))
    .await?;
    tx.commit().await
}

/// An org by slug and the caller's role in it (`None` when not a member), in one query.
pub async fn org_with_role(
    db: &Db,
    slug: &str,
    user: Option<Uuid>,
) -> Result<Option<(Org, Option<String>)>, StoreError> {
    let sql = match user {
        Some(user) => db.portable(
            "SELECT o.id, o.slug, o.name, o.created_at, o.require_mfa, m.role FROM keel_orgs o LEFT JOIN keel_memberships m ON m.org_id = o.id AND m.user_id = $2 WHERE o.slug = $1",
            vec![SqlValue::Text(slug.to_string()), SqlValue::Uuid(user)],
        ),
        None => db.portable("SELECT o.id, o.slug, o.name, o.created_at, o.require_mfa, NULL FROM keel_orgs o WHERE o.slug = $1", vec![SqlValue::Text(slug.to_string())]),
    };
    match db.query_one(&sql).await? {
        None => Ok(None),
        Some(row) => Ok(Some((org_from(&row)?, row[5].text().map(str::to_string)))),
    }
}

/// The orgs a user belongs to, with the role in each (at most `limit`, by slug).
pub async fn orgs_of_user(
    db: &Db,
    user: Uuid,
    after_slug: Option<&str>,
    limit: u32,
) -> Result<Vec<(Org, String)>, StoreError> {
    let sql = db.portable(
        &format!(
            "SELECT o.id, o.slug, o.name, o.created_at, o.require_mfa, m.role FROM keel_memberships m JOIN keel_orgs o ON o.id = m.org_id WHERE m.user_id = $1 AND o.slug > $2 ORDER BY o.slug LIMIT {}",
            limit
        ),
        vec![SqlValue::Uuid(user), SqlValue::Text(after_slug.unwrap_or("").to_string())],
    );
    db.query(&sql)
        .await?
        .into_iter()
        .map(|row| Ok((org_from(&row)?, row[5].text().unwrap_or_default().to_string())))
        .collect()
}

pub async fn org_by_id(db: &Db, id: Uuid) -> Result<Option<Org>, StoreError> {
    let sql = db.portable(
        "SELECT o.id, o.slug, o.name, o.created_at, o.require_mfa FROM keel_orgs o WHERE o.id = $1",
        vec![SqlValue::Uuid(id)],
    );
    db.query_one(&sql).await?.as_ref().map(|row| org_from(row)).transpose()
}

/// Every org (for the superuser), by slug.
pub async fn orgs_all(db: &Db, after_slug: Option<&str>, limit: u32) -> Result<Vec<Org>, StoreError> {
    let sql = db.portable(
        &format!(
            "SELECT o.id, o.slug, o.name, o.created_at, o.require_mfa FROM keel_orgs o WHERE o.slug > $1 ORDER BY o.slug LIMIT {limit}"
        ),
        vec![SqlValue::Text(after_slug.unwrap_or("").to_string())],
    );
    db.query(&sql).await?.iter().map(|row| org_from(row)).collect()
}

fn member_from(row: &Row) -> Result<Member, StoreError> {
    Ok(Member {
        user: user_from(row)?,
        role: row[USER_WIDTH].text().unwrap_or_default().to_string(),
        joined_at: row[USER_WIDTH + 1].datetime().ok_or_else(|| bad_row("member"))?,
    })
}

/// Members of an org, ordered by user id, after a user id (keyset), at most `limit`.
pub async fn members(db: &Db, org: Uuid, after: Option<Uuid>, limit: u32) -> Result<Vec<Member>, StoreError> {
    let sql = match after {
        Some(after) => db.portable(
            &format!("SELECT {USER_COLUMNS}, m.role, m.created_at FROM keel_memberships m JOIN keel_users u ON u.id = m.user_id WHERE m.org_id = $1 AND m.user_id > $2 ORDER BY m.user_id LIMIT {limit}"),
            vec![SqlValue::Uuid(org), SqlValue::Uuid(after)],
        ),
        None => db.portable(
            &format!("SELECT {USER_COLUMNS}, m.role, m.created_at FROM keel_memberships m JOIN keel_users u ON u.id = m.user_id WHERE m.org_id = $1 ORDER BY m.user_id LIMIT {limit}"),
            vec![SqlValue::Uuid(org)],
        ),
    };
    db.query(&sql).await?.iter().map(member_from).collect()
}

pub async fn member(db: &Db, org: Uuid, user: Uuid) -> Result<Option<Member>, StoreError> {
    let sql = db.portable(
        &format!("SELECT {USER_COLUMNS}, m.role, m.created_at FROM keel_memberships m JOIN keel_users u ON u.id = m.user_id WHERE m.org_id = $1 AND m.user_id = $2"),
        vec![SqlValue::Uuid(org), SqlValue::Uuid(user)],
    );
    db.query_one(&sql).await?.as_ref().map(member_from).transpose()
}

pub async fn member_insert(db: &Db, org: Uuid, user: Uuid, role: &str) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    member_insert_in(&mut tx, org, user, role).await?;
    tx.commit().await
}

/// [`member_insert`] inside the caller's transaction (accepting an invitation).
pub async fn member_insert_in(tx: &mut Tx, org: Uuid, user: Uuid, role: &str) -> Result<(), StoreError> {
    tx.execute(&tx.portable(
        "INSERT INTO keel_memberships (org_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
        vec![
            SqlValue::Uuid(org),
            SqlValue::Uuid(user),
            SqlValue::Text(role.to_string()),
            SqlValue::Datetime(now()),
        ],
    ))
    .await?;
    Ok(())
}

/// Outcome of a change that must keep at least one member with the top role.
#[derive(Debug, PartialEq, Eq)]
pub enum MemberChange {
    Done,
    NotFound,
    LastOwner,
}

/// Changes a member's role (`Some`) or removes them (`None`), refusing to leave the org
/// without a member holding `top_role`.
pub async fn member_change(
    db: &Db,
    org: Uuid,
    user: Uuid,
    role: Option<&str>,
    top_role: &str,
) -> Result<MemberChange, StoreError> {
    let mut tx = db.begin().await?;
    let current = tx
        .query_one(&tx.portable(
            &format!(
                "SELECT role FROM keel_memberships WHERE org_id = $1 AND user_id = $2{}",
                if tx.dialect() == keel_query::Dialect::Postgres {
                    " FOR UPDATE"
                } else {
                    ""
                }
            ),
            vec![SqlValue::Uuid(org), SqlValue::Uuid(user)],
        ))
        .await?;
    let Some(current) = current.and_then(|row| row[0].text().map(str::to_string)) else {
        return Ok(MemberChange::NotFound);
    };
    if current == top_role && role != Some(top_role) {
        let owners = tx
            .query_one(&tx.portable(
                "SELECT count(*) FROM keel_memberships WHERE org_id = $1 AND role = $2",
                vec![SqlValue::Uuid(org), SqlValue::Text(top_role.to_string())],
            ))
            .await?
            .and_then(|row| row[0].int())
            .unwrap_or(0);
        if owners <= 1 {
            return Ok(MemberChange::LastOwner);
        }
    }
    let sql = match role {
        Some(role) => tx.portable(
            "UPDATE keel_memberships SET role = $1 WHERE org_id = $2 AND user_id = $3",
            vec![
                SqlValue::Text(role.to_string()),
                SqlValue::Uuid(org),
                SqlValue::Uuid(user),
            ],
        ),
        None => tx.portable(
            "DELETE FROM keel_memberships WHERE org_id = $1 AND user_id = $2",
            vec![SqlValue::Uuid(org), SqlValue::Uuid(user)],
        ),
    };
    tx.execute(&sql).await?;
    tx.commit().await?;
    Ok(MemberChange::Done)
}

pub struct NewApiKey<'a> {
    pub org: Uuid,
    pub name: &'a str,
    pub role: &'a str,
    pub created_by: Option<Uuid>,
    pub token_hash: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn api_key_insert(db: &Db, new: NewApiKey<'_>) -> Result<ApiKey, StoreError> {
    let id = Uuid::now_v7();
    let at = now();
    let mut tx = db.begin().await?;
    let mut params = vec![
        SqlValue::Uuid(id),
        SqlValue::Text(new.token_hash.to_string()),
        SqlValue::Uuid(new.org),
        SqlValue::Text(new.role.to_string()),
        SqlValue::Text(new.name.to_string()),
        SqlValue::Datetime(at),
    ];
    let created_by = match new.created_by {
        Some(user) => {
            params.push(SqlValue::Uuid(user));
            format!("${}", params.len())
        }
        None => "NULL".to_string(),
    };
    let expires = match new.expires_at {
        Some(at) => {
            params.push(SqlValue::Datetime(truncate_micros(at)));
            format!("${}", params.len())
        }
        None => "NULL".to_string(),
    };
    tx.execute(&tx.portable(
        &format!("INSERT INTO keel_api_keys (id, token_hash, org_id, role, name, created_at, created_by, expires_at) VALUES ($1, $2, $3, $4, $5, $6, {created_by}, {expires})"),
        params,
    ))
    .await?;
    tx.commit().await?;
    Ok(ApiKey {
        id,
        org: new.org,
        name: new.name.to_string(),
        role: new.role.to_string(),
        created_by: new.created_by,
        created_at: at,
        expires_at: new.expires_at.map(truncate_micros),
    })
}

pub async fn api_keys(db: &Db, org: Uuid, limit: u32) -> Result<Vec<ApiKey>, StoreError> {
    let sql = db.portable(
        &format!("SELECT {KEY_COLUMNS} FROM keel_api_keys k WHERE k.org_id = $1 AND k.revoked_at IS NULL ORDER BY k.id DESC LIMIT {limit}"),
        vec![SqlValue::Uuid(org)],
    );
    db.query(&sql).await?.iter().map(|row| key_from(row)).collect()
}

/// Revokes a key; returns its token hash (to drop it from a shared cache), or `None` when
/// there was no such live key.
pub async fn api_key_revoke(db: &Db, org: Uuid, id: Uuid) -> Result<Option<String>, StoreError> {
    let mut tx = db.begin().await?;
    let rows = tx
        .query(&tx.portable(
            "UPDATE keel_api_keys SET revoked_at = $1 WHERE org_id = $2 AND id = $3 AND revoked_at IS NULL RETURNING token_hash",
            vec![SqlValue::Datetime(now()), SqlValue::Uuid(org), SqlValue::Uuid(id)],
        ))
        .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next())
        .and_then(|c| c.into_text()))
}

/// Of these sessions, the ones still valid (not revoked, not expired, their user not
/// disabled), each with whether its user is the superuser: the re-check of open realtime
/// streams, one statement for all of them.
pub async fn sessions_valid(db: &Db, ids: &[Uuid]) -> Result<std::collections::HashMap<Uuid, bool>, StoreError> {
    let mut valid = std::collections::HashMap::new();
    for chunk in ids.chunks(1_000) {
        let mut params = Params::default();
        let at = params.bind(SqlValue::Datetime(now()));
        let list = params.uuids(chunk);
        let sql = params.sql(
            db.dialect(),
            &format!(
                "SELECT s.id, u.superuser FROM keel_sessions s JOIN keel_users u ON u.id = s.user_id \
                 WHERE s.id IN ({list}) AND s.revoked_at IS NULL AND s.expires_at > {at} AND u.disabled_at IS NULL"
            ),
        );
        for row in db.query_primary(&sql).await? {
            if let (Some(id), Some(superuser)) = (row[0].uuid(), row[1].bool()) {
                valid.insert(id, superuser);
            }
        }
    }
    Ok(valid)
}

/// Of these API keys, the ones still valid (not revoked, not expired).
pub async fn keys_valid(db: &Db, ids: &[Uuid]) -> Result<std::collections::HashSet<Uuid>, StoreError> {
    let mut valid = std::collections::HashSet::new();
    for chunk in ids.chunks(1_000) {
        let mut params = Params::default();
        let at = params.bind(SqlValue::Datetime(now()));
        let list = params.uuids(chunk);
        let sql = params.sql(
            db.dialect(),
            &format!(
                "SELECT id FROM keel_api_keys WHERE id IN ({list}) AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > {at})"
            ),
        );
        valid.extend(db.query_primary(&sql).await?.iter().filter_map(|row| row[0].uuid()));
    }
    Ok(valid)
}

/// The current role of each of these users in each of these orgs, where they are members:
/// `(org, user) -> role`.
pub async fn roles_of(
    db: &Db,
    users: &[Uuid],
    orgs: &[Uuid],
) -> Result<std::collections::HashMap<(Uuid, Uuid), String>, StoreError> {
    let mut roles = std::collections::HashMap::new();
    if orgs.is_empty() {
        return Ok(roles);
    }
    for chunk in users.chunks(1_000) {
        let mut params = Params::default();
        let users = params.uuids(chunk);
        let orgs = params.uuids(orgs);
        let sql = params.sql(
            db.dialect(),
            &format!(
                "SELECT org_id, user_id, role FROM keel_memberships WHERE user_id IN ({users}) AND org_id IN ({orgs})"
            ),
        );
        for row in db.query_primary(&sql).await? {
            if let (Some(org), Some(user), Some(role)) = (row[0].uuid(), row[1].uuid(), row[2].text()) {
                roles.insert((org, user), role.to_string());
            }
        }
    }
    Ok(roles)
}
