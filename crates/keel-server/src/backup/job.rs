//! The scheduled `keel_backup` job.

use std::sync::Arc;

use crate::config::Config;
use crate::files::storage::Storage;

use super::{BackupError, Backups};

/// The `keel_backup` job: a backup, then retention; or, with `{"verify": NAME}`, the
/// verification of a backup (its report is the job's result). A run that finds another
/// backup running retries later; a missing key fails at once (and the backup alert fires).
pub fn job_handler(
    config: Config,
    app: keel_spec::App,
    storage: Arc<Storage>,
    metrics: Arc<crate::http::metrics::Metrics>,
) -> keel_jobs::HandlerFn {
    let config = Arc::new(config);
    let app = Arc::new(app);
    Arc::new(move |context: keel_jobs::JobContext| {
        let (config, app, storage, metrics) = (config.clone(), app.clone(), storage.clone(), metrics.clone());
        Box::pin(async move {
            let backups = Backups::new(&config, &app.backup, &app.name)
                .map_err(|e| keel_jobs::JobFailure::permanent(e.to_string()))?;
            let payload: serde_json::Value = serde_json::from_str(&context.payload).unwrap_or_default();
            if let Some(name) = payload.get("verify").and_then(|v| v.as_str()) {
                return verify(&backups, name).await;
            }
            let trigger = payload.get("trigger").and_then(|v| v.as_str()).unwrap_or("schedule");
            let trigger = if trigger == "manual" { "manual" } else { "schedule" };
            let outcome = backups.run(&context.db, storage, trigger).await;
            let result = if outcome.is_ok() { "succeeded" } else { "failed" };
            metrics.counter("keel_backup_runs_total", &[("result", result.to_string())], 1);
            match outcome {
                Ok(report) => {
                    tracing::info!(name = %report.name, bytes = report.bytes, seconds = report.seconds, pruned = report.pruned.len(), "backup taken");
                    Ok(Some(serde_json::to_value(&report).expect("a report serialises")))
                }
                Err(error @ (BackupError::NoKey | BackupError::Incompatible(_))) => {
                    tracing::error!(%error, "backup failed");
                    Err(keel_jobs::JobFailure::permanent(error.to_string()))
                }
                Err(error) => {
                    tracing::error!(%error, "backup failed");
                    Err(keel_jobs::JobFailure::retry(error.to_string()))
                }
            }
        })
    })
}

/// Verifies one backup: restored into scratch storage and compared with its manifest. A
/// backup that does not verify makes the job dead with the reason (retrying would not help).
async fn verify(backups: &Backups, name: &str) -> Result<Option<serde_json::Value>, keel_jobs::JobFailure> {
    let progress: super::Progress = Arc::new(|_, _| {});
    match backups.verify(name, progress).await {
        Ok(report) => {
            tracing::info!(
                backup = name,
                files = report.files,
                seconds = report.seconds,
                "backup verified"
            );
            Ok(Some(serde_json::to_value(&report).expect("a report serialises")))
        }
        Err(error) => {
            tracing::error!(backup = name, %error, "backup verification failed");
            Err(keel_jobs::JobFailure::permanent(error.to_string()))
        }
    }
}
