//! Org invitations (A3): a manager invites an address with a role no higher than their own;
//! the owner of that address accepts once, signed in with an account of that address or by
//! signing up with the invitation, before it expires. Each change is in the org's activity
//! log (collection `invitations`).

use keel_store::StoreError;
use keel_store::invitations::{self, By, Invitation};
use keel_store::system::{self, NewUser, Org, Principal, User};
use uuid::Uuid;

use super::mail;
use super::password::{check_password, hash_password, normalize_email};
use super::roles::{grantable, require_manager};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{forget_membership, forget_tokens, org_access, token_hash};
use crate::http::request_id::current_request_id;
use crate::http::state::AppState;

/// The most open invitations an org lists.
const MAX_LISTED: u32 = 500;

fn by<'a>(principal: &Principal, request_id: &'a str) -> By<'a> {
    let user = match principal {
        Principal::User { user, .. } => Some(user.id),
        Principal::ApiKey(_) => None,
    };
    By { user, request_id }
}

/// The org and the caller's role, for a manager only.
async fn managed(state: &AppState, principal: &Principal, slug: &str) -> ApiResult<(Org, Option<String>)> {
    let (org, role) = org_access(state, principal, slug).await?;
    require_manager(state, principal, &role)?;
    Ok((org, role))
}

fn needs_email(state: &AppState) -> ApiResult<()> {
    if state.config.smtp.sends() {
        Ok(())
    } else {
        Err(ApiError::new(
            "email_unavailable",
            "this server sends no email (neither smtp.host nor smtp.log_only is set); add members who have accounts instead",
        ))
    }
}

/// `POST /orgs/{org}/invitations`: invites an address; its email goes out in the same
/// transaction's job.
pub async fn invite(
    state: &AppState,
    principal: &Principal,
    slug: &str,
    email: &str,
    role: &str,
) -> ApiResult<Invitation> {
    let (org, caller_role) = managed(state, principal, slug).await?;
    grantable(state, principal, &caller_role, role)?;
    needs_email(state)?;
    let email = normalize_email(email)?;
    if let Some((user, _)) = system::user_by_email(&state.db, &email).await?
        && system::member(&state.db, org.id, user.id).await?.is_some()
    {
        return Err(ApiError::new(
            "already_member",
            "this address's account is already a member",
        ));
    }
    // Invite, revoke, invite again: each sends an email, so the address's budget applies.
    if !mail::invitation_within_budget(state, &email).await? {
        return Err(ApiError::new(
            "rate_limited",
            "this address got its share of invitation emails this hour; try again later",
        ));
    }
    let request_id = current_request_id().unwrap_or_default();
    let ttl = chrono::Duration::hours(state.config.auth.invitation_ttl_hours as i64);
    let mut tx = state.db.begin().await?;
    let invitation = invitations::invitation_insert_in(&mut tx, org.id, &email, role, by(principal, &request_id), ttl)
        .await
        .map_err(|e| match e {
            StoreError::Unique { .. } => ApiError::new(
                "invitation_pending",
                "this address has an open invitation to the org; resend or revoke it",
            ),
            other => other.into(),
        })?;
    mail::queue_invitation_in(&mut tx, state, &invitation).await?;
    tx.commit().await?;
    state.jobs.wake("default");
    Ok(invitation)
}

/// `GET /orgs/{org}/invitations`: the open ones, newest first.
pub async fn list(state: &AppState, principal: &Principal, slug: &str) -> ApiResult<Vec<Invitation>> {
    let (org, _) = managed(state, principal, slug).await?;
    Ok(invitations::invitations_open(&state.db, org.id, MAX_LISTED).await?)
}

/// `DELETE /orgs/{org}/invitations/{id}`: its link stops working at once.
pub async fn revoke(state: &AppState, principal: &Principal, slug: &str, id: &str) -> ApiResult<()> {
    let (org, _) = managed(state, principal, slug).await?;
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found())?;
    let request_id = current_request_id().unwrap_or_default();
    invitations::invitation_revoke(&state.db, org.id, id, by(principal, &request_id))
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(())
}

/// `POST /orgs/{org}/invitations/{id}/resend`: a new link (the old one stops working) and a
/// new expiry, within the address's hourly budget.
pub async fn resend(state: &AppState, principal: &Principal, slug: &str, id: &str) -> ApiResult<Invitation> {
    let (org, _) = managed(state, principal, slug).await?;
    needs_email(state)?;
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found())?;
    let invitation = invitations::invitation_open(&state.db, org.id, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if mail::invitation_within_budget(state, &invitation.email).await? {
        let mut tx = state.db.begin().await?;
        mail::queue_invitation_in(&mut tx, state, &invitation).await?;
        tx.commit().await?;
        state.jobs.wake("default");
    }
    Ok(invitation)
}

fn invalid_invitation() -> ApiError {
    ApiError::new(
        "invalid_token",
        "the invitation is invalid, was used or revoked, or has expired; ask for a new one",
    )
}

/// The open invitation behind a token as sent (for the page, before anything is used).
pub async fn peek(state: &AppState, token: &str) -> ApiResult<(Invitation, Org)> {
    if !token.starts_with(mail::INVITATION_PREFIX) || token.len() > 64 {
        return Err(invalid_invitation());
    }
    let invitation = invitations::invitation_by_token(&state.db, &token_hash(token))
        .await?
        .ok_or_else(invalid_invitation)?;
    let org = system::org_by_id(&state.db, invitation.org)
        .await?
        .ok_or_else(invalid_invitation)?;
    Ok((invitation, org))
}

/// What accepting did: the org, the role, and the user (new or not).
pub struct Accepted {
    pub org: Org,
    pub role: String,
    pub user: User,
}

/// Uses the token in the caller's transaction and adds the membership; the link proved the
/// address, so it counts as verified.
async fn accept_in(tx: &mut keel_store::Tx, token: &str, user: &User) -> ApiResult<Invitation> {
    let request_id = current_request_id().unwrap_or_default();
    let invitation = invitations::invitation_accept_in(tx, &token_hash(token), user.id, &request_id)
        .await?
        .ok_or_else(invalid_invitation)?;
    system::member_insert_in(tx, invitation.org, user.id, &invitation.role)
        .await
        .map_err(|e| match e {
            StoreError::Unique { .. } => ApiError::new("already_member", "you are already a member of this org"),
            other => other.into(),
        })?;
    keel_store::accounts::email_verified_in(tx, keel_store::accounts::Purpose::Verify, user.id, &invitation.email)
        .await?;
    Ok(invitation)
}

/// `POST /invitations/accept`: by a signed-in user whose account has the invited address.
pub async fn accept(state: &AppState, principal: &Principal, token: &str) -> ApiResult<Accepted> {
    let Principal::User { user, .. } = principal else {
        return Err(ApiError::new("bad_request", "an API key cannot join an org"));
    };
    let (invitation, org) = peek(state, token).await?;
    if invitation.email != user.email {
        return Err(ApiError::new(
            "invitation_for_another_address",
            "this invitation is for another email address; sign in with that address's account",
        ));
    }
    let mut tx = state.db.begin().await?;
    let invitation = accept_in(&mut tx, token, user).await?;
    tx.commit().await?;
    forget_membership(state, user.id, &org.slug).await;
    if user.email_verified_at.is_none()
        && let Ok(hashes) = system::session_token_hashes(&state.db, user.id).await
    {
        forget_tokens(state, &hashes).await;
    }
    let user = system::user_by_id(&state.db, user.id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Accepted {
        org,
        role: invitation.role,
        user,
    })
}

/// Sign-up with an invitation: the account (of the invited address, verified by the link)
/// and the membership in one transaction. Open even when `auth.signup` is false: the
/// invitation is the permission.
pub async fn sign_up(
    state: &AppState,
    token: &str,
    email: Option<&str>,
    password: String,
    name: Option<&str>,
) -> ApiResult<Accepted> {
    let (invitation, org) = peek(state, token).await?;
    if let Some(email) = email
        && normalize_email(email)? != invitation.email
    {
        return Err(ApiError::new(
            "invitation_for_another_address",
            "this invitation is for another email address",
        ));
    }
    check_password(&password, &invitation.email, state.config.auth.min_password_length)?;
    super::flows::check_name(name)?;
    let password_hash = hash_password(&state.config.auth, password).await?;
    let mut tx = state.db.begin().await?;
    let user = system::user_insert_in(
        &mut tx,
        NewUser {
            email: &invitation.email,
            name,
            password_hash: &password_hash,
            superuser: false,
            email_verified: true,
        },
    )
    .await
    .map_err(|e| match e {
        StoreError::Unique { .. } => ApiError::new(
            "email_taken",
            "an account with this address exists; sign in and accept the invitation",
        ),
        other => other.into(),
    })?;
    let invitation = accept_in(&mut tx, token, &user).await?;
    tx.commit().await?;
    Ok(Accepted {
        org,
        role: invitation.role,
        user,
    })
}
