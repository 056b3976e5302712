//! Bulk deletes (B4): the records matching a filter, or one import batch, in chunks.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_query::{Mode as ExprMode, check_expr};
use keel_spec::Action;
use keel_store::records::{self, Selection, WriteScope};
use keel_store::system::Principal;
use serde_json::json;
use uuid::Uuid;

use crate::http::error::{ApiError, ApiResult};
use crate::http::state::AppState;
use crate::records::{resolve_write, triggered};

/// Deletes the records matching `filter` (required) or one import `batch`.
pub async fn delete_many(
    state: &AppState,
    principal: &Principal,
    org: Option<&str>,
    name: &str,
    filter: Option<&str>,
    batch: Option<Uuid>,
) -> ApiResult<Response> {
    let target = resolve_write(state, principal, org, name, Action::Delete).await?;
    let filter_text = filter.map(str::trim).filter(|f| !f.is_empty());
    if filter_text.is_none() && batch.is_none() {
        return Err(ApiError::new(
            "invalid_query",
            "a bulk delete needs a filter (filter=true deletes every record you may delete)",
        ));
    }
    let filter = match filter_text {
        Some(text) => Some(check_expr(
            &state.schema.app,
            target.collection,
            text,
            ExprMode::Filter,
        )?),
        None => None,
    };
    let builder = target.builder(state);
    let scope = WriteScope {
        builder: &builder,
        org: target.org,
        actor: &target.actor,
    };
    let selection = Selection {
        filter: filter.as_ref(),
        filter_text,
        batch,
    };
    let (deleted, object_keys) =
        records::delete_many(&state.db, &scope, &selection, state.config.limits.bulk_delete_chunk)
            .await
            .map_err(|e| crate::records::access::record_error(target.collection, e))?;
    state.storage.delete_after_commit(&state.db, &object_keys).await;
    triggered(state, &target.collection.triggers.on_delete, deleted);
    Ok((StatusCode::OK, axum::Json(json!({ "deleted": deleted }))).into_response())
}
