//! Background imports: the built-in `keel_import` job kind runs a spooled upload as its caller.

use std::io;
use std::sync::Arc;

use axum::body::Bytes;
use chrono::Utc;
use keel_query::value::truncate_micros;
use keel_query::{Caller, Scope};
use keel_store::records::Actor;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::{ChannelReader, Counts, Destination, Limits, Options, run};

/// A background import, as its job's payload: the spooled upload, and the caller as it was
/// when the upload was accepted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Background {
    pub upload: Uuid,
    pub bytes: u64,
    pub collection: String,
    pub org: Option<Uuid>,
    pub user: Option<Uuid>,
    pub api_key: Option<Uuid>,
    pub request_id: String,
    /// The caller's role rank in the org when the import was accepted.
    pub rank: Option<i64>,
    pub superuser: bool,
    pub options: Options,
}

/// A background import's `progress`: rows so far, and the file's bytes read of its size
/// (a bytes count runs ahead of the rows by the reader's buffer, at most a few MiB).
fn progress_of(counts: Counts, bytes_read: u64, bytes: u64) -> Value {
    json!({
        "read": counts.read,
        "written": counts.written,
        "rejected": counts.rejected,
        "bytes_read": bytes_read,
        "bytes": bytes,
    })
}

/// The handler of the built-in `keel_import` kind.
pub fn job_handler(limits: Limits) -> keel_jobs::HandlerFn {
    Arc::new(move |context| Box::pin(run_job(context, limits)))
}

async fn run_job(context: keel_jobs::JobContext, limits: Limits) -> Result<Option<Value>, keel_jobs::JobFailure> {
    let job: Background = serde_json::from_str(&context.payload)
        .map_err(|e| keel_jobs::JobFailure::permanent(format!("the import's payload is malformed: {e}")))?;
    let outcome = run_background(&context, &job, limits).await;
    // The spool goes whatever happened (the import is not retried).
    if let Err(error) = keel_store::uploads::upload_delete(&context.db, job.upload).await {
        tracing::warn!(upload = %job.upload, error = %error, "could not delete a spooled upload; the cleanup job will");
    }
    outcome
}

async fn run_background(
    context: &keel_jobs::JobContext,
    job: &Background,
    limits: Limits,
) -> Result<Option<Value>, keel_jobs::JobFailure> {
    let destination = Destination {
        db: &context.db,
        schema: context.schema.clone(),
        patterns: context.patterns.clone(),
        collection: job.collection.clone(),
        scope: match job.org {
            Some(org) => Scope::Org(org),
            None => Scope::Unscoped,
        },
        org: job.org,
        caller: Caller {
            context: keel_query::Context {
                user: job.user,
                role: keel_query::RoleSource::Rank(job.rank),
                now: truncate_micros(Utc::now()),
            },
            superuser: job.superuser,
        },
        actor: Actor {
            user: job.user,
            api_key: job.api_key,
            request_id: job.request_id.clone(),
        },
    };
    // The spool, chunk by chunk, to the blocking reader.
    let (sender, receiver) = mpsc::channel(4);
    // Bytes handed to the reader so far, for the progress bar (`bytes_read` of `bytes`).
    let fed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let feeder = {
        let db = context.db.clone();
        let upload = job.upload;
        let fed = fed.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            loop {
                let item = match keel_store::uploads::upload_chunk(&db, upload, seq).await {
                    Ok(Some(data)) => {
                        fed.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        Ok(Bytes::from(data))
                    }
                    Ok(None) => return,
                    Err(error) => Err(io::Error::other(error.to_string())),
                };
                let failed = item.is_err();
                if sender.send(item).await.is_err() || failed {
                    return;
                }
                seq += 1;
            }
        })
    };
    // Progress to the job row, at most four times a second.
    let (progress_tx, mut progress_rx) = watch::channel(Counts::default());
    let reporter = {
        let db = context.db.clone();
        let (id, attempt, total) = (context.id, context.attempt, job.bytes);
        let fed = fed.clone();
        tokio::spawn(async move {
            while progress_rx.changed().await.is_ok() {
                let counts = *progress_rx.borrow_and_update();
                let read = fed.load(std::sync::atomic::Ordering::Relaxed).min(total);
                let progress = progress_of(counts, read, total);
                let _ = keel_store::jobs::job_progress(&db, id, attempt, progress).await;
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        })
    };
    let mut progress = move |counts: Counts| {
        let _ = progress_tx.send(counts);
    };
    let result = run(
        &destination,
        ChannelReader::new(receiver),
        job.options.clone(),
        limits,
        &mut progress,
    )
    .await;
    feeder.abort();
    drop(progress);
    let _ = reporter.await;
    match result {
        Ok(report) => {
            let progress = progress_of(report.counts, job.bytes, job.bytes);
            let _ = keel_store::jobs::job_progress(&context.db, context.id, context.attempt, progress).await;
            Ok(Some(json!(report)))
        }
        Err(error) => {
            let details = error.details.as_ref().map(|d| format!(" {d}")).unwrap_or_default();
            Err(keel_jobs::JobFailure::permanent(format!(
                "{}: {}{details}",
                error.code, error.message
            )))
        }
    }
}
