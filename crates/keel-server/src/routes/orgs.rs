//! `/api/v1/orgs`: orgs, their members and their API keys.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use keel_store::StoreError;
use keel_store::system::{self, MemberChange, NewApiKey, Principal};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::auth::new_token;
use crate::auth::{grantable, require_manager};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::page_limit;
use crate::http::extract::{ApiJson, Auth, Params, org_access, token_hash};
use crate::http::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrg {
    slug: String,
    name: String,
}

fn valid_slug(slug: &str) -> bool {
    (2..=63).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-')
}

pub async fn create(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ApiJson(body): ApiJson<NewOrg>,
) -> ApiResult<impl IntoResponse> {
    let Principal::User { user, .. } = principal else {
        return Err(ApiError::forbidden());
    };
    if !valid_slug(&body.slug) {
        return Err(ApiError::new("validation_failed", "invalid slug").with_details(json!([{
            "field": "slug", "code": "invalid_slug", "message": "2–63 characters: lowercase letters, digits and '-', not at either end"
        }])));
    }
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::new("validation_failed", "invalid name").with_details(json!([{
            "field": "name", "code": "invalid_length", "message": "1–200 characters"
        }])));
    }
    let org = system::org_insert(&state.db, &body.slug, name, Some(user.id), state.schema.app.top_role())
        .await
        .map_err(|e| match e {
            StoreError::Unique { .. } => ApiError::new("slug_taken", "an org with this slug exists"),
            other => other.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "org": org, "role": state.schema.app.top_role() })),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    params: Params,
) -> ApiResult<impl IntoResponse> {
    params.only(&["after", "limit"])?;
    let limit = page_limit(&state, params.get("limit"))?;
    let after = params.get("after");
    match principal {
        Principal::User { user, .. } if user.superuser => {
            let orgs = system::orgs_all(&state.db, after, limit + 1).await?;
            let next = (orgs.len() > limit as usize).then(|| orgs[limit as usize - 1].slug.clone());
            let items: Vec<_> = orgs
                .into_iter()
                .take(limit as usize)
                .map(|org| json!({ "org": org, "role": null }))
                .collect();
            Ok(Json(json!({ "items": items, "next": next })))
        }
        Principal::User { user, .. } => {
            let orgs = system::orgs_of_user(&state.db, user.id, after, limit + 1).await?;
            let next = (orgs.len() > limit as usize).then(|| orgs[limit as usize - 1].0.slug.clone());
            let items: Vec<_> = orgs
                .into_iter()
                .take(limit as usize)
                .map(|(org, role)| json!({ "org": org, "role": role }))
                .collect();
            Ok(Json(json!({ "items": items, "next": next })))
        }
        Principal::ApiKey(key) => {
            let org = system::org_by_id(&state.db, key.org).await?;
            Ok(Json(
                json!({ "items": org.map(|o| vec![json!({ "org": o, "role": key.role })]).unwrap_or_default(), "next": null }),
            ))
        }
    }
}

pub async fn members(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(slug): Path<String>,
    params: Params,
) -> ApiResult<impl IntoResponse> {
    params.only(&["after", "limit"])?;
    let (org, _) = org_access(&state, &principal, &slug).await?;
    let limit = page_limit(&state, params.get("limit"))?;
    let after = match params.get("after") {
        Some(text) => Some(
            Uuid::parse_str(text).map_err(|_| ApiError::new("invalid_cursor", "after must be a member's user id"))?,
        ),
        None => None,
    };
    let members = system::members(&state.db, org.id, after, limit + 1).await?;
    let next = (members.len() > limit as usize).then(|| members[limit as usize - 1].user.id);
    let items: Vec<_> = members.into_iter().take(limit as usize).collect();
    Ok(Json(json!({ "items": items, "next": next })))
}

pub async fn show(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(slug): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let (org, role) = org_access(&state, &principal, &slug).await?;
    Ok(Json(json!({ "org": org, "role": role })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgChange {
    require_mfa: bool,
}

/// `PATCH /api/v1/orgs/{org}`: the org's security settings (`auth::mfa::require_for_org`).
pub async fn update(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<OrgChange>,
) -> ApiResult<impl IntoResponse> {
    let (org, role) = org_access(&state, &principal, &slug).await?;
    let org = crate::auth::mfa::require_for_org(&state, &principal, &org, &role, body.require_mfa).await?;
    Ok(Json(json!({ "org": org, "role": role })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    email: String,
    role: String,
}

pub async fn add_member(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<NewMember>,
) -> ApiResult<impl IntoResponse> {
    let (org, role) = org_access(&state, &principal, &slug).await?;
    require_manager(&state, &principal, &role)?;
    grantable(&state, &principal, &role, &body.role)?;
    let email = body.email.trim().to_lowercase();
    let (user, _) = system::user_by_email(&state.db, &email)
        .await?
        .ok_or_else(|| ApiError::new("not_found", "no user with this email; they must sign up first"))?;
    system::member_insert(&state.db, org.id, user.id, &body.role)
        .await
        .map_err(|e| match e {
            StoreError::Unique { .. } => ApiError::new("already_member", "the user is already a member"),
            other => other.into(),
        })?;
    crate::http::extract::forget_membership(&state, user.id, &slug).await;
    let member = system::member(&state.db, org.id, user.id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok((StatusCode::CREATED, Json(json!(member))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    role: String,
}

pub async fn update_member(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((slug, user_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<RoleChange>,
) -> ApiResult<impl IntoResponse> {
    let (org, role) = org_access(&state, &principal, &slug).await?;
    require_manager(&state, &principal, &role)?;
    grantable(&state, &principal, &role, &body.role)?;
    let user_id = Uuid::parse_str(&user_id).map_err(|_| ApiError::not_found())?;
    // A member above the caller cannot be changed by them.
    let target = system::member(&state.db, org.id, user_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    grantable(&state, &principal, &role, &target.role)?;
    match system::member_change(
        &state.db,
        org.id,
        user_id,
        Some(&body.role),
        state.schema.app.top_role(),
    )
    .await?
    {
        MemberChange::Done => crate::http::extract::forget_membership(&state, user_id, &slug).await,
        MemberChange::NotFound => return Err(ApiError::not_found()),
        MemberChange::LastOwner => {
            return Err(ApiError::new(
                "last_owner",
                "the org needs at least one member in the top role",
            ));
        }
    }
    let member = system::member(&state.db, org.id, user_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(json!(member)))
}

pub async fn remove_member(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((slug, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (org, role) = org_access(&state, &principal, &slug).await?;
    let user_id = Uuid::parse_str(&user_id).map_err(|_| ApiError::not_found())?;
    let leaving_self = matches!(&principal, Principal::User { user, .. } if user.id == user_id);
    if !leaving_self {
        require_manager(&state, &principal, &role)?;
        let target = system::member(&state.db, org.id, user_id)
            .await?
            .ok_or_else(ApiError::not_found)?;
        grantable(&state, &principal, &role, &target.role)?;
    }
    match system::member_change(&state.db, org.id, user_id, None, state.schema.app.top_role()).await? {
        MemberChange::Done => {
            crate::http::extract::forget_membership(&state, user_id, &slug).await;
            Ok(StatusCode::NO_CONTENT)
        }
        MemberChange::NotFound => Err(ApiError::not_found()),
        MemberChange::LastOwner => Err(ApiError::new(
            "last_owner",
            "the org needs at least one member in the top role",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    name: String,
    role: String,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

pub async fn create_key(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<NewKey>,
) -> ApiResult<impl IntoResponse> {
    let (org, role) = org_access(&state, &principal, &slug).await?;
    let Principal::User { user, .. } = &principal else {
        return Err(ApiError::new("forbidden", "API keys cannot create API keys"));
    };
    require_manager(&state, &principal, &role)?;
    grantable(&state, &principal, &role, &body.role)?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::new("validation_failed", "invalid name")
            .with_details(json!([{ "field": "name", "code": "invalid_length", "message": "1–100 characters" }])));
    }
    let token = new_token("kk_");
    let key = system::api_key_insert(
        &state.db,
        NewApiKey {
            org: org.id,
            name,
            role: &body.role,
            created_by: Some(user.id),
            token_hash: &token_hash(&token),
            expires_at: body.expires_at,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!({ "api_key": key, "token": token }))))
}

pub async fn list_keys(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(slug): Path<String>,
    params: Params,
) -> ApiResult<impl IntoResponse> {
    params.only(&[])?;
    let (org, role) = org_access(&state, &principal, &slug).await?;
    require_manager(&state, &principal, &role)?;
    let keys = system::api_keys(&state.db, org.id, state.config.limits.max_page_size).await?;
    Ok(Json(json!({ "items": keys, "next": null })))
}

pub async fn revoke_key(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((slug, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let (org, role) = org_access(&state, &principal, &slug).await?;
    require_manager(&state, &principal, &role)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found())?;
    match system::api_key_revoke(&state.db, org.id, id).await? {
        Some(hash) => {
            crate::http::extract::forget_tokens(&state, &[hash]).await;
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::not_found()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvitation {
    email: String,
    role: String,
}

/// `POST /api/v1/orgs/{org}/invitations`
pub async fn invite(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(slug): Path<String>,
    ApiJson(body): ApiJson<NewInvitation>,
) -> ApiResult<impl IntoResponse> {
    let invitation = crate::auth::invitations::invite(&state, &principal, &slug, &body.email, &body.role).await?;
    Ok((StatusCode::CREATED, Json(json!(invitation))))
}

/// `GET /api/v1/orgs/{org}/invitations`
pub async fn invitations(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path(slug): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let items = crate::auth::invitations::list(&state, &principal, &slug).await?;
    Ok(Json(json!({ "items": items, "next": null })))
}

/// `DELETE /api/v1/orgs/{org}/invitations/{id}`
pub async fn revoke_invitation(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((slug, id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    crate::auth::invitations::revoke(&state, &principal, &slug, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/orgs/{org}/invitations/{id}/resend`
pub async fn resend_invitation(
    State(state): State<AppState>,
    Auth(principal): Auth,
    Path((slug, id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let invitation = crate::auth::invitations::resend(&state, &principal, &slug, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!(invitation))))
}
