//! The job streams' side of the hub: one statement per tick reads every streamed job, and a
//! job's state is sent when it changed; the final state ends the stream.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use keel_store::jobs::{self, Job};
use serde_json::json;

use super::hub::{Closing, Hub, Outgoing, Stream, Watch};

/// Sends a job's state if it changed since the stream's last event; the final state ends
/// the stream.
pub(super) fn offer(hub: &Hub, stream: &Stream, job: &Job) {
    let Ok(json) = serde_json::to_string(job) else { return };
    {
        let mut last = stream.last.lock().expect("lock");
        if last.as_deref() == Some(json.as_str()) {
            return;
        }
        *last = Some(json.clone());
    }
    let done = job.state.is_final();
    stream.send(
        hub,
        Outgoing {
            id: done.then(|| "done".to_string()),
            event: "job",
            data: json,
        },
    );
    if done {
        stream.close(Closing {
            event: "end",
            data: json!({ "reason": job.state.as_str(), "message": "the job reached its final state" }),
            retry: false,
        });
    }
}

/// Reads every streamed job each `realtime.job_poll_ms`, in one statement.
pub(super) async fn poll(hub: Weak<Hub>) {
    let Some(every) = hub.upgrade().map(|h| Duration::from_millis(h.settings.job_poll_ms)) else {
        return;
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(hub) = hub.upgrade() else { return };
        let streams: Vec<Arc<Stream>> = {
            let registry = hub.registry.lock().expect("lock");
            registry
                .jobs
                .iter()
                .filter_map(|id| registry.streams.get(id).cloned())
                .collect()
        };
        if streams.is_empty() {
            continue;
        }
        let ids: Vec<i64> = streams
            .iter()
            .filter_map(|s| match s.watch {
                Watch::Job(id) => Some(id),
                Watch::Records(_) => None,
            })
            .collect();
        let found: HashMap<i64, Job> = match jobs::job_get_many(&hub.db, &ids).await {
            Ok(found) => found.into_iter().map(|job| (job.id, job)).collect(),
            Err(error) => {
                tracing::warn!(%error, "realtime: reading streamed jobs failed; trying again");
                continue;
            }
        };
        for stream in streams {
            let Watch::Job(id) = stream.watch else { continue };
            match found.get(&id) {
                Some(job) => offer(&hub, &stream, job),
                None => stream.close(Closing {
                    event: "end",
                    data: json!({ "reason": "gone", "message": "the job no longer exists" }),
                    retry: false,
                }),
            }
        }
    }
}
