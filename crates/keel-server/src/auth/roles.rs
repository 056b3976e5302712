//! Org roles: ranks, the superuser, who may manage members and keys, and which roles they may grant.

use keel_store::system::Principal;

use crate::http::error::{ApiError, ApiResult};
use crate::http::state::AppState;

/// The caller's rank in the org (`None` for the superuser who is not a member).
pub fn rank(state: &AppState, role: &Option<String>) -> Option<i64> {
    role.as_deref().and_then(|r| state.schema.app.role_rank(r))
}

pub fn is_superuser(principal: &Principal) -> bool {
    matches!(principal, Principal::User { user, .. } if user.superuser)
}

/// Refuses (403) anyone but the superuser.
pub fn require_superuser(principal: &Principal) -> ApiResult<()> {
    if is_superuser(principal) {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// Managing members and keys takes the second-highest role (admin) or above.
pub fn require_manager(state: &AppState, principal: &Principal, role: &Option<String>) -> ApiResult<()> {
    let roles = &state.schema.app.roles;
    let needed = state
        .schema
        .app
        .role_rank(roles.get(1).unwrap_or(&roles[0]))
        .unwrap_or(i64::MAX);
    if is_superuser(principal) || rank(state, role).is_some_and(|r| r >= needed) {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// A role the caller may grant: a known role no higher than their own.
pub fn grantable(state: &AppState, principal: &Principal, caller_role: &Option<String>, wanted: &str) -> ApiResult<()> {
    let Some(wanted_rank) = state.schema.app.role_rank(wanted) else {
        return Err(ApiError::new(
            "invalid_role",
            format!(
                "unknown role '{wanted}'; roles are: {}",
                state.schema.app.roles.join(", ")
            ),
        ));
    };
    if is_superuser(principal) || rank(state, caller_role).is_some_and(|r| r >= wanted_rank) {
        Ok(())
    } else {
        Err(ApiError::new("invalid_role", "you cannot grant a role above your own"))
    }
}
