//! `keel jobs`: enqueue, inspect, retry, cancel and discard jobs, pause and resume queues,
//! and create worker keys, straight against the database (no server needed).

use anyhow::{Context, Result, bail};
use keel_store::Db;
use keel_store::jobs::{self, JobFilter, JobState, NewJob};

#[derive(clap::Subcommand)]
pub enum JobsAction {
    /// Enqueue a job of a declared kind.
    Enqueue {
        kind: String,
        /// The payload, a JSON object.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// The org (slug) the job belongs to.
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        unique_key: Option<String>,
        #[arg(long)]
        priority: Option<i32>,
        /// Run no earlier than this many milliseconds from now.
        #[arg(long)]
        delay_ms: Option<u64>,
    },
    /// List jobs, newest first.
    List {
        #[arg(long)]
        queue: Option<String>,
        /// available, scheduled, running, retryable, completed, cancelled or dead.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one job as JSON (with its error history and result).
    Get {
        id: i64,
    },
    /// Put a dead, cancelled or waiting job back in its queue now.
    Retry {
        id: i64,
        /// More attempts to allow (default: the kind's attempts).
        #[arg(long)]
        attempts: Option<u32>,
    },
    /// Cancel a job that has not finished.
    Cancel {
        id: i64,
    },
    /// Delete a finished job (dead, cancelled or completed).
    Discard {
        id: i64,
    },
    /// Every queue's depth by state and its oldest waiting job.
    Queues,
    /// Stop workers on every instance from claiming this queue's jobs.
    Pause {
        queue: String,
    },
    Resume {
        queue: String,
    },
    /// Create a key for external workers of some queues (printed once).
    WorkerKey {
        #[arg(long)]
        name: String,
        #[arg(long = "queue", required = true)]
        queues: Vec<String>,
    },
}

pub async fn run(db: &Db, schema: &keel_query::Schema, action: JobsAction) -> Result<()> {
    let app = &schema.app;
    match action {
        JobsAction::Enqueue {
            kind,
            payload,
            org,
            unique_key,
            priority,
            delay_ms,
        } => {
            let declared = app
                .jobs
                .kind(&kind)
                .with_context(|| format!("no job kind '{kind}' is declared in the spec"))?;
            let payload: serde_json::Value = serde_json::from_str(&payload).context("--payload is not JSON")?;
            if !payload.is_object() {
                bail!("--payload must be a JSON object");
            }
            let org_id = match org {
                Some(slug) => Some(
                    keel_store::system::org_with_role(db, &slug, None)
                        .await?
                        .with_context(|| format!("no org '{slug}'"))?
                        .0
                        .id,
                ),
                None => None,
            };
            let mut job = NewJob::of_kind(declared, payload, org_id, None);
            job.unique_key = unique_key;
            if let Some(priority) = priority {
                job.priority = priority;
            }
            if let Some(delay) = delay_ms {
                job.delay = std::time::Duration::from_millis(delay);
            }
            let enqueued = jobs::job_enqueue(db, &job).await?;
            println!(
                "{} job {} ({}) in queue {}: {}",
                if enqueued.duplicate { "existing" } else { "enqueued" },
                enqueued.id,
                kind,
                job.queue,
                enqueued.state.as_str()
            );
        }
        JobsAction::List {
            queue,
            state,
            kind,
            limit,
        } => {
            let state = match state {
                Some(text) => Some(JobState::parse(&text).with_context(|| format!("unknown state '{text}'"))?),
                None => None,
            };
            let filter = JobFilter {
                queue,
                state,
                kind,
                org_id: None,
                before: None,
                limit: limit.clamp(1, 500),
            };
            println!(
                "{:>10}  {:<12} {:<20} {:<10} {:>7}  last error",
                "id", "queue", "kind", "state", "attempt"
            );
            for job in jobs::job_list(db, &filter).await? {
                let last_error = job
                    .errors
                    .as_array()
                    .and_then(|e| e.last())
                    .and_then(|e| e["error"].as_str())
                    .unwrap_or("");
                println!(
                    "{:>10}  {:<12} {:<20} {:<10} {:>3}/{:<3}  {}",
                    job.id,
                    job.queue,
                    job.kind,
                    job.state.as_str(),
                    job.attempt,
                    job.max_attempts,
                    last_error.chars().take(80).collect::<String>()
                );
            }
        }
        JobsAction::Get { id } => {
            let job = jobs::job_get(db, id).await?.with_context(|| format!("no job {id}"))?;
            println!("{}", serde_json::to_string_pretty(&job)?);
        }
        JobsAction::Retry { id, attempts } => {
            let job = jobs::job_get(db, id).await?.with_context(|| format!("no job {id}"))?;
            let default = app.jobs.kind(&job.kind).map(|k| k.attempts).unwrap_or(1);
            let attempts = attempts.unwrap_or(default).clamp(1, 100) as i32;
            match jobs::job_retry(db, id, attempts).await? {
                Some(job) => println!("job {id} is {} again", job.state.as_str()),
                None => bail!("job {id} is {} and cannot be retried", job.state.as_str()),
            }
        }
        JobsAction::Cancel { id } => match jobs::job_cancel(db, id).await? {
            Some(_) => println!("job {id} cancelled"),
            None => bail!("job {id} does not exist or has finished"),
        },
        JobsAction::Discard { id } => {
            if !jobs::job_delete(db, id).await? {
                bail!("job {id} does not exist or has not finished");
            }
            println!("job {id} discarded");
        }
        JobsAction::Queues => {
            println!(
                "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  oldest waiting",
                "queue", "available", "scheduled", "running", "retryable", "completed", "cancelled", "dead"
            );
            for queue in jobs::queue_stats(db).await? {
                let d = &queue.depth;
                println!(
                    "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {:.1} s{}",
                    queue.name,
                    d["available"],
                    d["scheduled"],
                    d["running"],
                    d["retryable"],
                    d["completed"],
                    d["cancelled"],
                    d["dead"],
                    queue.oldest_available_seconds,
                    if queue.paused { " (paused)" } else { "" }
                );
            }
        }
        JobsAction::Pause { queue } => {
            app.jobs.queue(&queue).with_context(|| format!("no queue '{queue}'"))?;
            jobs::queue_pause(db, &queue, true).await?;
            println!("queue {queue} paused");
        }
        JobsAction::Resume { queue } => {
            app.jobs.queue(&queue).with_context(|| format!("no queue '{queue}'"))?;
            jobs::queue_pause(db, &queue, false).await?;
            println!("queue {queue} resumed");
        }
        JobsAction::WorkerKey { name, queues } => {
            for queue in &queues {
                app.jobs.queue(queue).with_context(|| format!("no queue '{queue}'"))?;
            }
            let token = keel_server::auth::new_token("kw_");
            let key =
                jobs::worker_key_create(db, &keel_server::http::extract::token_hash(&token), &name, &queues).await?;
            println!("worker key {} ({}) for {}", key.name, key.id, queues.join(", "));
            println!("{token}");
        }
    }
    Ok(())
}
