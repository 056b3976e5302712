//! The registry of this instance's streams: admission under the limits, each stream's
//! bounded buffer and closing event, and the tasks started with the first stream.
//! It names no handler state (`AppState`), so `http::state` can hold it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use chrono::{DateTime, Utc};
use keel_query::{Schema, Shared};
use keel_store::Db;
use keel_store::changes::Position;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use super::settings::RealtimeSection;
use crate::http::error::{ApiError, ApiResult};
use crate::http::metrics::Metrics;

/// This instance's realtime streams.
#[derive(Clone)]
pub struct Realtime {
    pub(super) hub: Arc<Hub>,
}

pub(crate) struct Hub {
    pub(super) db: Arc<Db>,
    pub(super) schema: Arc<Schema>,
    pub(super) settings: RealtimeSection,
    pub(super) metrics: Arc<Metrics>,
    pub(super) registry: Mutex<Registry>,
    /// Wakes the dispatcher: a write on this instance, or a stream that resumes.
    pub(super) wake: Arc<Notify>,
    /// Wakes the task that tells other instances (PostgreSQL NOTIFY).
    pub(super) tell: Arc<Notify>,
    pub(super) started: std::sync::Once,
    pub(super) telling: std::sync::Once,
    pub(super) closing: AtomicBool,
    /// Rule statements run for streams since start (R2's measure).
    pub(super) rule_statements: AtomicU64,
}

/// Who holds a stream, as the periodic re-check needs it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Who {
    pub session: Option<Uuid>,
    pub key: Option<Uuid>,
    pub user: Option<Uuid>,
    pub superuser: bool,
    /// The org whose membership gives access (none for the superuser and API keys).
    pub org: Option<Uuid>,
    /// The rank of the member's role there when the stream opened.
    pub rank: Option<i64>,
    pub expires_at: Option<DateTime<Utc>>,
    pub ip: Option<IpAddr>,
}

impl Who {
    /// The key streams are counted under per user.
    fn owner(&self) -> Option<Uuid> {
        self.user.or(self.key)
    }
}

/// One event for a client.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub id: Option<String>,
    pub event: &'static str,
    pub data: String,
}

/// Why a stream ends from the server's side: its last event.
#[derive(Debug, Clone)]
pub(crate) struct Closing {
    pub event: &'static str,
    pub data: Value,
    /// Tell the client when to reconnect (`retry:`).
    pub retry: bool,
}

/// What a stream follows.
pub(crate) enum Watch {
    Records(Box<RecordWatch>),
    Job(i64),
}

/// A collection stream (every record the caller may list and the filter matches) or a
/// record stream (one record the caller may view).
pub(crate) struct RecordWatch {
    pub collection: String,
    pub org: Option<Uuid>,
    pub record: Option<Uuid>,
    pub shared: Shared,
    pub user: Option<Uuid>,
    pub rank: Option<i64>,
    pub fields: Option<Vec<String>>,
}

pub(super) type TargetKey = (String, Option<Uuid>);

pub(crate) struct Stream {
    pub id: u64,
    pub who: Who,
    pub watch: Watch,
    /// The stream gets changes after this position (set once, at registration).
    pub after: Mutex<Position>,
    pub(super) out: mpsc::Sender<Outgoing>,
    pub(super) closing: Mutex<Option<Closing>>,
    pub(super) closed: Notify,
    /// The last state sent (job streams).
    pub last: Mutex<Option<String>>,
}

impl Stream {
    /// Queues an event; a full buffer cuts the client off with `lost`.
    pub(crate) fn send(&self, hub: &Hub, event: Outgoing) -> bool {
        match self.out.try_send(event) {
            Ok(()) => {
                hub.metrics.counter("keel_realtime_events_sent_total", &[], 1);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                hub.metrics.counter("keel_realtime_events_dropped_total", &[], 1);
                self.close(Closing {
                    event: "lost",
                    data: serde_json::json!({
                        "reason": "slow_consumer",
                        "message": "this client read too slowly; reconnect with Last-Event-ID to resume",
                        "buffer": hub.settings.buffer,
                    }),
                    retry: true,
                });
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Ends the stream with `closing` as its last event (the first reason wins).
    pub(crate) fn close(&self, closing: Closing) {
        let mut slot = self.closing.lock().expect("lock");
        if slot.is_none() {
            *slot = Some(closing);
        }
        drop(slot);
        self.closed.notify_one();
    }

    pub(super) fn is_closing(&self) -> bool {
        self.closing.lock().expect("lock").is_some()
    }
}

#[derive(Default)]
pub(super) struct Registry {
    pub(super) next_id: u64,
    /// Where the dispatcher has read to.
    pub(super) position: Position,
    pub(super) streams: HashMap<u64, Arc<Stream>>,
    /// Live record streams by (collection, org).
    pub(super) by_target: HashMap<TargetKey, Vec<u64>>,
    /// Record streams that resume and wait for the dispatcher to catch them up.
    pub(super) pending: Vec<u64>,
    pub(super) jobs: Vec<u64>,
    pub(super) per_owner: HashMap<Uuid, u32>,
    pub(super) per_ip: HashMap<IpAddr, u32>,
}

/// Unregisters a stream when its response body is dropped (the client went away, or the
/// stream ended).
pub(crate) struct Registration {
    pub(super) hub: Weak<Hub>,
    pub stream: Arc<Stream>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.unregister(&self.stream);
        }
    }
}

/// How a stream starts reading.
pub(crate) enum Start {
    /// From now (`position` is the log's tail when the stream opened).
    Fresh(Position),
    /// After a position the client sent, within the retention.
    Resume(Position),
}

impl Realtime {
    pub fn new(db: Arc<Db>, schema: Arc<Schema>, settings: RealtimeSection, metrics: Arc<Metrics>) -> Realtime {
        Realtime {
            hub: Arc::new(Hub {
                db,
                schema,
                settings,
                metrics,
                registry: Mutex::new(Registry::default()),
                wake: Arc::new(Notify::new()),
                tell: Arc::new(Notify::new()),
                started: std::sync::Once::new(),
                telling: std::sync::Once::new(),
                closing: AtomicBool::new(false),
                rule_statements: AtomicU64::new(0),
            }),
        }
    }

    /// After a record write committed on this instance: wake this instance's streams and
    /// tell the other instances (one NOTIFY for all the writes of a few milliseconds).
    pub fn written(&self) {
        let hub = &self.hub;
        if hub.db.dialect() == keel_query::Dialect::Postgres {
            hub.telling
                .call_once(|| drop(tokio::spawn(tell_others(Arc::downgrade(hub)))));
            hub.tell.notify_one();
        }
        hub.wake.notify_one();
    }

    /// Open streams on this instance.
    pub fn streams(&self) -> usize {
        self.hub.registry.lock().expect("lock").streams.len()
    }

    /// Rule statements run for streams since start.
    pub fn rule_statements(&self) -> u64 {
        self.hub.rule_statements.load(Ordering::Relaxed)
    }

    /// Ends every stream with a `shutdown` event and a reconnect hint (another instance, or
    /// this one restarted, resumes them from their last id); new streams are refused.
    pub fn shutdown(&self) {
        self.hub.closing.store(true, Ordering::SeqCst);
        let streams: Vec<Arc<Stream>> = self
            .hub
            .registry
            .lock()
            .expect("lock")
            .streams
            .values()
            .cloned()
            .collect();
        for stream in streams {
            stream.close(Closing {
                event: "shutdown",
                data: serde_json::json!({ "reason": "shutdown", "message": "the server is shutting down; reconnect to resume" }),
                retry: true,
            });
        }
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

impl Hub {
    /// Admits and registers a stream, or refuses it past a limit. The first event (`ready`,
    /// or `reset` then `ready`) is queued here, before the dispatcher can send anything.
    pub(crate) fn register(
        self: &Arc<Self>,
        who: Who,
        watch: Watch,
        start: Start,
        reset: bool,
    ) -> ApiResult<(Registration, mpsc::Receiver<Outgoing>)> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(too_many("the server is shutting down"));
        }
        let (out, receiver) = mpsc::channel(self.settings.buffer as usize);
        let mut registry = self.registry.lock().expect("lock");
        if registry.streams.len() >= self.settings.max_streams as usize {
            return Err(too_many("this instance holds as many streams as it may"));
        }
        if let Some(owner) = who.owner()
            && registry.per_owner.get(&owner).copied().unwrap_or(0) >= self.settings.max_streams_per_user
        {
            return Err(too_many("this user or key holds as many streams as it may"));
        }
        if let Some(ip) = who.ip
            && registry.per_ip.get(&ip).copied().unwrap_or(0) >= self.settings.max_streams_per_ip
        {
            return Err(too_many("this address holds as many streams as it may"));
        }
        registry.next_id += 1;
        let id = registry.next_id;
        let live_records = !registry.by_target.is_empty() || !registry.pending.is_empty();
        let after = match start {
            Start::Fresh(tail) => {
                // Nobody reads the log: the dispatcher starts from here.
                if !live_records {
                    registry.position = registry.position.max(tail);
                }
                tail.max(registry.position)
            }
            Start::Resume(position) => position,
        };
        let resuming = matches!(start, Start::Resume(_));
        let stream = Arc::new(Stream {
            id,
            who,
            watch,
            after: Mutex::new(after),
            out,
            closing: Mutex::new(None),
            closed: Notify::new(),
            last: Mutex::new(None),
        });
        if reset {
            let _ = stream.out.try_send(Outgoing {
                id: Some(after.to_string()),
                event: "reset",
                data: serde_json::json!({
                    "reason": "too_far_behind",
                    "message": "changes since your last event are no longer kept; reload, then follow this stream",
                })
                .to_string(),
            });
        }
        let ready_id = match &stream.watch {
            Watch::Records(_) => Some(after.to_string()),
            Watch::Job(_) => None,
        };
        let _ = stream.out.try_send(Outgoing {
            id: ready_id,
            event: "ready",
            data: "{}".into(),
        });
        match &stream.watch {
            Watch::Records(_) if resuming => registry.pending.push(id),
            Watch::Records(watch) => registry
                .by_target
                .entry((watch.collection.clone(), watch.org))
                .or_default()
                .push(id),
            Watch::Job(_) => registry.jobs.push(id),
        }
        if let Some(owner) = stream.who.owner() {
            *registry.per_owner.entry(owner).or_default() += 1;
        }
        if let Some(ip) = stream.who.ip {
            *registry.per_ip.entry(ip).or_default() += 1;
        }
        registry.streams.insert(id, stream.clone());
        let count = registry.streams.len();
        drop(registry);
        self.metrics.gauge("keel_realtime_streams", &[], count as f64);
        if resuming {
            self.wake.notify_one();
        }
        Ok((
            Registration {
                hub: Arc::downgrade(self),
                stream,
            },
            receiver,
        ))
    }

    pub(super) fn unregister(&self, stream: &Stream) {
        let mut registry = self.registry.lock().expect("lock");
        if registry.streams.remove(&stream.id).is_none() {
            return;
        }
        registry.pending.retain(|id| *id != stream.id);
        registry.jobs.retain(|id| *id != stream.id);
        if let Watch::Records(watch) = &stream.watch {
            let key = (watch.collection.clone(), watch.org);
            if let Some(ids) = registry.by_target.get_mut(&key) {
                ids.retain(|id| *id != stream.id);
                if ids.is_empty() {
                    registry.by_target.remove(&key);
                }
            }
        }
        if let Some(owner) = stream.who.owner()
            && let Some(n) = registry.per_owner.get_mut(&owner)
        {
            *n -= 1;
            if *n == 0 {
                registry.per_owner.remove(&owner);
            }
        }
        if let Some(ip) = stream.who.ip
            && let Some(n) = registry.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                registry.per_ip.remove(&ip);
            }
        }
        let count = registry.streams.len();
        drop(registry);
        self.metrics.gauge("keel_realtime_streams", &[], count as f64);
    }
}

fn too_many(message: &str) -> ApiError {
    let mut error = ApiError::new("too_many_streams", message);
    error.retry_after = Some(5);
    error
}

/// Tells the other instances that changes committed: one NOTIFY for the writes of a few
/// milliseconds, after their commits (see `keel_store::changes::notify`).
async fn tell_others(hub: Weak<Hub>) {
    let Some(tell) = hub.upgrade().map(|h| h.tell.clone()) else {
        return;
    };
    loop {
        tell.notified().await;
        let Some(db) = hub.upgrade().map(|h| h.db.clone()) else {
            return;
        };
        if let Err(error) = keel_store::changes::notify(&db).await {
            tracing::warn!(%error, "realtime: telling other instances failed; they read on their timer");
        }
        drop(db);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
