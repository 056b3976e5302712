//! The scheduled `keel_backup` job.

use std::sync::Arc;

use crate::config::Config;
use crate::files::storage::Storage;

use super::{BackupError, Backups};

/// The scheduled `keel_backup` job: a backup, then retention. A run that finds another
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
            let outcome = backups.run(&context.db, storage, "schedule").await;
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
