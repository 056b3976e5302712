//! The interface every feature that reads or writes records goes through: a request's
//! [`Target`] (collection, scope, caller, actor) resolved once, the rule checks before a
//! read or a write, the wake-up of triggered jobs after one, and the mapping of record errors.

use chrono::Utc;
use keel_query::value::truncate_micros;
use keel_query::{Builder, Caller, Context, Frag, RoleSource, Scope};
use keel_spec::{Action, Collection};
use keel_store::StoreError;
use keel_store::records::{Actor, RecordError, WriteScope};
use keel_store::system::Principal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{CallerInfo, org_access};
use crate::http::request_id::current_request_id;
use crate::http::state::AppState;

/// A request's collection, scope and caller, resolved once.
pub struct Target<'a> {
    pub collection: &'a Collection,
    pub scope: Scope,
    pub org: Option<Uuid>,
    pub caller: Caller,
    pub info: CallerInfo,
    /// Who writes, for the activity log.
    pub actor: Actor,
}

impl Target<'_> {
    pub fn builder<'b>(&'b self, state: &'b AppState) -> Builder<'b> {
        Builder {
            schema: &state.schema,
            collection: self.collection,
            dialect: state.db.dialect(),
            caller: &self.caller,
            scope: self.scope,
        }
    }

    /// The scope of a write made through `builder`.
    pub fn scope<'b>(&'b self, builder: &'b Builder<'b>) -> WriteScope<'b> {
        WriteScope {
            builder,
            org: self.org,
            actor: &self.actor,
        }
    }
}

/// Resolves the collection and the caller's scope. `org` is `None` on the global routes.
pub async fn resolve<'a>(
    state: &'a AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
) -> ApiResult<Target<'a>> {
    let collection = state
        .schema
        .app
        .collection(name)
        .ok_or_else(|| ApiError::new("collection_not_found", format!("no collection named '{name}'")))?;
    let info = CallerInfo::of(principal);
    let now = truncate_micros(Utc::now());
    let (scope, org_id, rank) = match org {
        None => {
            if !collection.global {
                return Err(ApiError::new(
                    "collection_not_found",
                    format!("'{name}' is scoped to orgs: use /api/v1/orgs/{{org}}/{name}"),
                ));
            }
            (Scope::Unscoped, None, None)
        }
        Some(_) if collection.global => {
            return Err(ApiError::new(
                "collection_not_found",
                format!("'{name}' is global: use /api/v1/global/{name}"),
            ));
        }
        Some("-") => match principal {
            Principal::User { user, .. } if user.superuser => (Scope::Unscoped, None, None),
            Principal::User { user, .. } => (Scope::MemberOrgs(user.id), None, None),
            Principal::ApiKey(key) => (
                Scope::Org(key.org),
                Some(key.org),
                state.schema.app.role_rank(&key.role),
            ),
        },
        Some(slug) => {
            let (org, role) = org_access(state, principal, slug).await?;
            (
                Scope::Org(org.id),
                Some(org.id),
                role.as_deref().and_then(|r| state.schema.app.role_rank(r)),
            )
        }
    };
    Ok(Target {
        collection,
        scope,
        org: org_id,
        caller: Caller {
            context: Context {
                user: info.user,
                role: RoleSource::Rank(rank),
                now,
            },
            superuser: info.superuser,
        },
        actor: Actor {
            // The command line's operator (nil id) is no user of the database.
            user: info.user.filter(|id| !id.is_nil()),
            api_key: info.api_key,
            request_id: current_request_id().unwrap_or_default(),
        },
        info,
    })
}

pub fn ensure_allowed(builder: &Builder, action: Action) -> ApiResult<()> {
    if builder.rule(action) == Frag::Const(false) {
        return Err(ApiError::forbidden());
    }
    Ok(())
}

/// Writes name one org: `-` (every org of the caller) is for reading lists only.
fn writable(collection: &Collection, org: Option<&str>) -> ApiResult<()> {
    if org == Some("-") {
        return Err(ApiError::new(
            "bad_request",
            "write records in one org: /api/v1/orgs/{org}/...",
        ));
    }
    if collection.system {
        return Err(ApiError::new(
            "read_only_collection",
            format!("{} cannot be written through the API", collection.name),
        ));
    }
    Ok(())
}

/// Resolves a write: one org, a writable collection, and a rule that can hold for the caller.
pub async fn resolve_write<'a>(
    state: &'a AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    action: Action,
) -> ApiResult<Target<'a>> {
    let target = resolve(state, principal, org, name).await?;
    writable(target.collection, org)?;
    ensure_allowed(&target.builder(state), action)?;
    Ok(target)
}

/// After a write committed with its triggered jobs: count them and wake this instance's
/// workers (other instances hear of them through the database), and wake the realtime
/// streams (the write's change-log row committed with it).
pub fn triggered(state: &AppState, kinds: &[String], records: u64) {
    if records == 0 {
        return;
    }
    state.realtime.written();
    for name in kinds {
        if let Some(kind) = state.schema.app.jobs.kind(name) {
            keel_jobs::Observer::enqueued(state.metrics.as_ref(), &kind.queue, &kind.name, records);
            state.jobs.wake(&kind.queue);
        }
    }
}

/// Maps a record error, naming the fields of a unique violation.
pub fn record_error(collection: &Collection, error: RecordError) -> ApiError {
    match error {
        RecordError::NotFound => ApiError::not_found(),
        RecordError::Forbidden => ApiError::forbidden(),
        RecordError::VersionMismatch { current } => {
            ApiError::new("version_mismatch", "the record changed since you read it")
                .with_details(json!({ "current_version": current }))
        }
        RecordError::InvalidRelation(fields) => {
            let details: Vec<Value> = fields
                .iter()
                .map(|f| json!({ "field": f, "code": "invalid_relation", "message": format!("no such record for '{f}' in this org") }))
                .collect();
            ApiError::new("validation_failed", "a related record does not exist").with_details(json!(details))
        }
        RecordError::Store(StoreError::Unique { constraint, columns }) => {
            let mut fields: Vec<String> = columns.into_iter().filter(|c| c != "org").collect();
            if let Some(constraint) = &constraint {
                let table = collection.table();
                if let Some(field) = constraint.strip_prefix(&format!("{table}_uq_")) {
                    fields.push(field.to_string());
                } else if let Some(index) = collection.indexes.iter().find(|i| &i.name == constraint) {
                    fields.extend(index.columns.iter().map(|c| c.field.clone()));
                }
            }
            ApiError::new("unique_violation", "a record with this value already exists")
                .with_details(json!({ "fields": fields }))
        }
        RecordError::Store(other) => other.into(),
    }
}
