//! Backups from the admin API (the console's backup screen): what is in the target, the
//! recent runs, and a backup or a verification started as a `keel_backup` job, so it runs on
//! any instance, survives a restart of the one that asked, and shows in the jobs screens.

use serde_json::{Value, json};
use uuid::Uuid;

use super::{BackupError, Backups};
use crate::http::error::{ApiError, ApiResult};
use crate::http::state::AppState;

fn backups(state: &AppState) -> ApiResult<Backups> {
    let app = &state.schema.app;
    Backups::new(&state.config, &app.backup, &app.name).map_err(api_error)
}

fn api_error(error: BackupError) -> ApiError {
    match error {
        BackupError::NotFound(_) => ApiError::not_found(),
        other => ApiError::internal(other),
    }
}

/// The backups in the target (newest first), the last runs with their state, the schedule.
pub async fn overview(state: &AppState) -> ApiResult<Value> {
    let backups = backups(state)?;
    let mut items = backups.list().await.map_err(api_error)?;
    items.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    let runs = keel_store::backups::backup_history(&state.db, 20).await?;
    let section = &state.config.backup;
    Ok(json!({
        "items": items,
        "runs": runs,
        "schedule": state.schema.app.backup.schedule,
        "target": match section.backend.as_str() {
            "s3" => format!("s3://{}/{}", section.s3_bucket.as_deref().unwrap_or(""), section.s3_prefix),
            _ => "local directory".to_string(),
        },
        "encrypted": section.key.is_some() || section.key_file.is_some(),
    }))
}

/// Starts a backup now; a second request while one waits is the same job.
pub async fn take(state: &AppState, user: Option<Uuid>) -> ApiResult<Value> {
    enqueue(state, json!({ "trigger": "manual" }), "manual".to_string(), user).await
}

/// Starts the verification of a backup that is in the target.
pub async fn verify(state: &AppState, name: &str, user: Option<Uuid>) -> ApiResult<Value> {
    let backups = backups(state)?;
    if !backups.list().await.map_err(api_error)?.iter().any(|b| b.name == name) {
        return Err(ApiError::not_found());
    }
    enqueue(state, json!({ "verify": name }), format!("verify:{name}"), user).await
}

async fn enqueue(state: &AppState, payload: Value, unique: String, user: Option<Uuid>) -> ApiResult<Value> {
    let kind = state
        .schema
        .app
        .jobs
        .kind(keel_spec::BACKUP_KIND)
        .ok_or_else(|| ApiError::internal("the keel_backup kind is missing"))?;
    let mut job = keel_store::jobs::NewJob::of_kind(kind, payload, None, user);
    job.unique_key = Some(format!("backup:{unique}"));
    let enqueued = crate::jobs::insert(state, &job).await?;
    Ok(
        json!({ "job": { "id": enqueued.id, "kind": job.kind, "state": enqueued.state, "duplicate": enqueued.duplicate } }),
    )
}
