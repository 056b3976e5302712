//! The operators' audit log (system version 9): every write to the admin API and every change
//! to an org's membership, keys, invitations or settings, with who made it, from where, and
//! the answer. Record writes have the activity log (in their own transaction); these are
//! the writes around the data, which that log does not hold.

use chrono::{DateTime, Utc};
use keel_query::value::truncate_micros;
use keel_query::{Dialect, SqlValue};
use serde::Serialize;
use uuid::Uuid;

use crate::db::Db;
use crate::error::StoreError;

pub fn tables(dialect: Dialect) -> Vec<String> {
    let (uuid, ts, _, _) = crate::migrate::column_types(dialect);
    vec![
        format!(
            "CREATE TABLE keel_audit (id {uuid} PRIMARY KEY, created_at {ts} NOT NULL, org {uuid}, actor {uuid}, actor_email TEXT, api_key TEXT, method TEXT NOT NULL, route TEXT NOT NULL, path TEXT NOT NULL, status INTEGER NOT NULL, request_id TEXT NOT NULL, ip TEXT)"
        ),
        "CREATE INDEX keel_audit_org ON keel_audit (org, id)".to_string(),
        "CREATE INDEX keel_audit_time ON keel_audit (created_at)".to_string(),
    ]
}

/// One audited request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    /// The org the request changed, if it was an org's.
    pub org: Option<Uuid>,
    pub actor: Option<Uuid>,
    pub actor_email: Option<String>,
    pub api_key: Option<String>,
    pub method: String,
    /// The route template (`/api/v1/admin/jobs/{id}/{action}`).
    pub route: String,
    pub path: String,
    pub status: i64,
    pub request_id: String,
    pub ip: Option<String>,
}

impl Entry {
    pub fn new(method: &str, route: &str, path: &str, status: u16, request_id: &str) -> Entry {
        Entry {
            id: Uuid::now_v7(),
            created_at: truncate_micros(Utc::now()),
            org: None,
            actor: None,
            actor_email: None,
            api_key: None,
            method: method.to_string(),
            route: route.to_string(),
            path: path.to_string(),
            status: i64::from(status),
            request_id: request_id.to_string(),
            ip: None,
        }
    }
}

const COLUMNS: &str = "id, created_at, org, actor, actor_email, api_key, method, route, path, status, request_id, ip";

pub async fn insert(db: &Db, entry: &Entry) -> Result<(), StoreError> {
    let mut params = vec![
        SqlValue::Uuid(entry.id),
        SqlValue::Datetime(entry.created_at),
        SqlValue::Text(entry.method.clone()),
        SqlValue::Text(entry.route.clone()),
        SqlValue::Text(entry.path.clone()),
        SqlValue::Int(entry.status),
        SqlValue::Text(entry.request_id.clone()),
    ];
    // Absent values are written as NULL literals: a typed NULL parameter would not match a
    // uuid column on PostgreSQL.
    let mut optional = |value: Option<SqlValue>| match value {
        Some(v) => {
            params.push(v);
            format!("${}", params.len())
        }
        None => "NULL".to_string(),
    };
    let org = optional(entry.org.map(SqlValue::Uuid));
    let actor = optional(entry.actor.map(SqlValue::Uuid));
    let email = optional(entry.actor_email.clone().map(SqlValue::Text));
    let key = optional(entry.api_key.clone().map(SqlValue::Text));
    let ip = optional(entry.ip.clone().map(SqlValue::Text));
    let sql = db.portable(
        &format!(
            "INSERT INTO keel_audit (id, created_at, method, route, path, status, request_id, org, actor, actor_email, api_key, ip) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, {org}, {actor}, {email}, {key}, {ip})"
        ),
        params,
    );
    db.write(&sql).await?;
    Ok(())
}

/// Entries newest first, of one org or of all, before an entry id (keyset paging).
pub async fn list(db: &Db, org: Option<Uuid>, before: Option<Uuid>, limit: i64) -> Result<Vec<Entry>, StoreError> {
    let mut conditions = vec![];
    let mut params = vec![];
    if let Some(org) = org {
        params.push(SqlValue::Uuid(org));
        conditions.push(format!("org = ${}", params.len()));
    }
    if let Some(before) = before {
        params.push(SqlValue::Uuid(before));
        conditions.push(format!("id < ${}", params.len()));
    }
    params.push(SqlValue::Int(limit));
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = db.portable(
        &format!(
            "SELECT {COLUMNS} FROM keel_audit {filter} ORDER BY id DESC LIMIT ${}",
            params.len()
        ),
        params,
    );
    Ok(db
        .query_primary(&sql)
        .await?
        .into_iter()
        .filter_map(|row| {
            let mut cells = row.into_iter();
            Some(Entry {
                id: cells.next()?.uuid()?,
                created_at: cells.next()?.datetime()?,
                org: cells.next()?.uuid(),
                actor: cells.next()?.uuid(),
                actor_email: cells.next()?.into_text(),
                api_key: cells.next()?.into_text(),
                method: cells.next()?.into_text()?,
                route: cells.next()?.into_text()?,
                path: cells.next()?.into_text()?,
                status: cells.next()?.int()?,
                request_id: cells.next()?.into_text()?,
                ip: cells.next()?.into_text(),
            })
        })
        .collect())
}

/// Forgets entries older than `before` (the cleanup job keeps a year).
pub async fn prune(db: &Db, before: DateTime<Utc>) -> Result<u64, StoreError> {
    let sql = db.portable(
        "DELETE FROM keel_audit WHERE created_at < $1 RETURNING id",
        vec![SqlValue::Datetime(before)],
    );
    Ok(db.write(&sql).await?.len() as u64)
}
