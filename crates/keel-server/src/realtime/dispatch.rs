//! The dispatcher: one reader of the change log per instance, deciding in batches which
//! stream sees which change, and the tasks beside it (telling other instances, re-checking
//! access).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::Utc;
use keel_query::{Builder, Caller, Context, RoleSource, Scope, SharedRow};
use keel_spec::{Action, Collection};
use keel_store::changes::{self, Change, ChangeListener, Position};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::hub::{Closing, Hub, Outgoing, Stream, TargetKey, Watch};

/// How soon to read again when committed changes wait behind PostgreSQL's fence.
const HELD_BACK_RETRY: Duration = Duration::from_millis(5);
/// The most values one statement binds (SQLite allows 32,766).
const MAX_PARAMS: usize = 30_000;
/// The most subscriber rows in one statement.
const MAX_ROWS: usize = 2_000;

/// Starts this instance's background tasks once, with its first stream.
pub(super) fn start(hub: &Arc<Hub>) {
    hub.started.call_once(|| {
        tokio::spawn(run(Arc::downgrade(hub)));
        tokio::spawn(recheck(Arc::downgrade(hub)));
        tokio::spawn(super::job_watch::poll(Arc::downgrade(hub)));
    });
}

/// Reads the log when woken (a write here, a NOTIFY from another instance, a resuming
/// stream) or on the timer, until the hub is gone.
pub(super) async fn run(hub: Weak<Hub>) {
    let Some((wake, poll, db)) = hub
        .upgrade()
        .map(|h| (h.wake.clone(), Duration::from_millis(h.settings.poll_ms), h.db.clone()))
    else {
        return;
    };
    let mut listener: Option<ChangeListener> = None;
    let mut listen_again = tokio::time::Instant::now();
    let mut delay = Duration::ZERO;
    loop {
        if listener.is_none() && tokio::time::Instant::now() >= listen_again {
            match changes::listener(&db).await {
                Ok(found) => listener = found,
                Err(error) => {
                    tracing::warn!(%error, "realtime: listening for other instances' changes failed; polling meanwhile");
                    listen_again = tokio::time::Instant::now() + Duration::from_secs(5);
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
            failed = async {
                match listener.as_mut() {
                    Some(listener) => listener.recv().await.err(),
                    None => std::future::pending().await,
                }
            } => {
                if let Some(error) = failed {
                    tracing::warn!(%error, "realtime: the change listener failed; reconnecting");
                    listener = None;
                }
            }
        }
        let Some(hub) = hub.upgrade() else { return };
        delay = match cycle(&hub).await {
            Ok(true) => HELD_BACK_RETRY,
            Ok(false) => poll,
            Err(error) => {
                tracing::warn!(%error, "realtime: reading the change log failed; retrying");
                poll
            }
        };
    }
}

/// Catches resuming streams up, then delivers what committed since the last read. `true`
/// when committed changes wait behind the fence.
async fn cycle(hub: &Arc<Hub>) -> Result<bool, keel_store::StoreError> {
    let limit = i64::from(hub.settings.batch);
    let (pending, live_position) = {
        let mut registry = hub.registry.lock().expect("lock");
        let pending: Vec<Arc<Stream>> = std::mem::take(&mut registry.pending)
            .into_iter()
            .filter_map(|id| registry.streams.get(&id).cloned())
            .collect();
        (pending, registry.position)
    };
    if !pending.is_empty() {
        catch_up(hub, &pending, live_position, limit).await?;
        let mut registry = hub.registry.lock().expect("lock");
        for stream in pending {
            if let Watch::Records(watch) = &stream.watch
                && registry.streams.contains_key(&stream.id)
            {
                registry
                    .by_target
                    .entry((watch.collection.clone(), watch.org))
                    .or_default()
                    .push(stream.id);
            }
        }
    }
    loop {
        let from = {
            let registry = hub.registry.lock().expect("lock");
            if registry.by_target.is_empty() {
                return Ok(false);
            }
            registry.position
        };
        let batch = changes::read_batch(&hub.db, from, limit).await?;
        let Some(last) = batch.changes.last().map(|c| c.position) else {
            return Ok(batch.held_back);
        };
        let targets = {
            let mut registry = hub.registry.lock().expect("lock");
            registry.position = registry.position.max(last);
            let mut targets: HashMap<TargetKey, Vec<Arc<Stream>>> = HashMap::new();
            for change in &batch.changes {
                let key = (change.collection.clone(), change.org);
                if targets.contains_key(&key) {
                    continue;
                }
                if let Some(ids) = registry.by_target.get(&key) {
                    let streams = ids.iter().filter_map(|id| registry.streams.get(id).cloned()).collect();
                    targets.insert(key, streams);
                }
            }
            targets
        };
        deliver(hub, &batch.changes, &targets).await?;
        if (batch.changes.len() as i64) < limit {
            return Ok(batch.held_back);
        }
    }
}

/// Sends resuming streams what they missed, from the oldest of their positions up to where
/// the dispatcher has read (everything up to there is past the fence already).
async fn catch_up(
    hub: &Arc<Hub>,
    pending: &[Arc<Stream>],
    until: Position,
    limit: i64,
) -> Result<(), keel_store::StoreError> {
    let mut targets: HashMap<TargetKey, Vec<Arc<Stream>>> = HashMap::new();
    let mut from = until;
    for stream in pending {
        if let Watch::Records(watch) = &stream.watch {
            from = from.min(*stream.after.lock().expect("lock"));
            targets
                .entry((watch.collection.clone(), watch.org))
                .or_default()
                .push(stream.clone());
        }
    }
    while from < until {
        let mut read = changes::read_after(&hub.db, from, limit).await?;
        let Some(last) = read.last().map(|c| c.position) else {
            break;
        };
        read.retain(|c| c.position <= until);
        deliver(hub, &read, &targets).await?;
        from = last;
        if (read.len() as i64) < limit {
            break;
        }
    }
    Ok(())
}

/// A caller that passes every rule: the statements here carry each subscriber's rule
/// themselves.
fn unrestricted() -> Caller {
    Caller {
        context: Context {
            user: None,
            role: RoleSource::Rank(None),
            now: Utc::now(),
        },
        superuser: true,
    }
}

/// Decides which stream sees which change and queues the events, in log order per stream.
async fn deliver(
    hub: &Arc<Hub>,
    batch: &[Change],
    targets: &HashMap<TargetKey, Vec<Arc<Stream>>>,
) -> Result<(), keel_store::StoreError> {
    let mut groups: Vec<(&TargetKey, Vec<&Change>)> = vec![];
    let mut index: HashMap<TargetKey, usize> = HashMap::new();
    for change in batch {
        let key = (change.collection.clone(), change.org);
        let Some((key, _)) = targets.get_key_value(&key) else {
            continue;
        };
        let at = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, vec![]));
            groups.len() - 1
        });
        groups[at].1.push(change);
    }
    let now = Utc::now();
    for (key, changes) in groups {
        let streams: Vec<&Arc<Stream>> = targets[key].iter().filter(|s| !s.is_closing()).collect();
        let Some(collection) = hub.schema.app.collection(&key.0) else {
            continue;
        };
        if streams.is_empty() {
            continue;
        }
        let seen = visibility(hub, collection, key.1, &changes, &streams).await?;
        for change in changes {
            let mut sent = false;
            for stream in &streams {
                if change.position <= *stream.after.lock().expect("lock") {
                    continue;
                }
                let Some(event) = event_for(collection, change, stream, &seen) else {
                    continue;
                };
                let deleted_record = event.event == "deleted" && record_of(stream).is_some();
                sent |= stream.send(hub, event);
                if deleted_record {
                    stream.close(Closing {
                        event: "end",
                        data: json!({ "reason": "deleted", "message": "the record was deleted" }),
                        retry: false,
                    });
                }
            }
            if sent {
                let latency = (now - change.created_at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                hub.metrics.histogram("keel_realtime_delivery_seconds", &[], latency);
            }
        }
        // Every stream of this target has seen the batch up to its last change.
        if let Some(last) = batch.last() {
            for stream in &streams {
                let mut after = stream.after.lock().expect("lock");
                *after = (*after).max(last.position);
            }
        }
    }
    Ok(())
}

fn record_of(stream: &Stream) -> Option<Uuid> {
    match &stream.watch {
        Watch::Records(watch) => watch.record,
        Watch::Job(_) => None,
    }
}

/// What the statements decided: for each stream, the records it may see, with their JSON
/// when the stream's `expand` made it caller-dependent.
#[derive(Default)]
struct Seen {
    by_stream: HashMap<u64, HashMap<Uuid, Option<String>>>,
    /// Each record's JSON as a caller-independent list renders it.
    records: HashMap<Uuid, String>,
}

async fn visibility(
    hub: &Arc<Hub>,
    collection: &Collection,
    org: Option<Uuid>,
    changes: &[&Change],
    streams: &[&Arc<Stream>],
) -> Result<Seen, keel_store::StoreError> {
    let mut seen = Seen::default();
    let written: Vec<Uuid> = {
        let mut set = HashSet::new();
        changes
            .iter()
            .filter(|c| matches!(c.action.as_str(), "create" | "update"))
            .filter_map(|c| Uuid::parse_str(&c.record).ok())
            .filter(|id| set.insert(*id))
            .collect()
    };
    if written.is_empty() {
        return Ok(seen);
    }
    let caller = unrestricted();
    let builder = Builder {
        schema: &hub.schema,
        collection,
        dialect: hub.db.dialect(),
        caller: &caller,
        scope: org.map_or(Scope::Unscoped, Scope::Org),
    };
    // Streams by shape: one statement decides each shape for all its subscribers.
    let mut shapes: HashMap<&str, Vec<&Arc<Stream>>> = HashMap::new();
    for stream in streams {
        let Watch::Records(watch) = &stream.watch else { continue };
        if watch.record.is_some_and(|id| !written.contains(&id)) {
            continue;
        }
        shapes.entry(watch.shared.key.as_str()).or_default().push(stream);
    }
    let now = Utc::now();
    let mut plain = false;
    for members in shapes.values() {
        let Watch::Records(first) = &members[0].watch else {
            continue;
        };
        let shared = &first.shared;
        plain |= shared.select.is_none();
        // Only the records some member follows: all of them unless every member follows one.
        let ids: Vec<Uuid> = if members.iter().all(|s| record_of(s).is_some()) {
            let wanted: HashSet<Uuid> = members.iter().filter_map(|s| record_of(s)).collect();
            written.iter().copied().filter(|id| wanted.contains(id)).collect()
        } else {
            written.clone()
        };
        // Identical subscriber rows (one user's tabs, one role's keys) are decided once.
        let mut rows: Vec<SharedRow> = vec![];
        let mut row_of: HashMap<String, usize> = HashMap::new();
        let mut members_of: Vec<Vec<u64>> = vec![];
        for stream in members {
            let Watch::Records(watch) = &stream.watch else { continue };
            let row = watch.shared.row(watch.user, watch.rank, now);
            let key = format!("{row:?}");
            let at = *row_of.entry(key).or_insert_with(|| {
                rows.push(row);
                members_of.push(vec![]);
                rows.len() - 1
            });
            members_of[at].push(stream.id);
        }
        let per_row = 1 + usize::from(shared.user) + usize::from(shared.role) + shared.params.len();
        let chunk = ((MAX_PARAMS - ids.len().min(MAX_PARAMS / 2)) / per_row).clamp(1, MAX_ROWS);
        for (n, rows_chunk) in rows.chunks(chunk).enumerate() {
            let sql = builder.visible(shared, rows_chunk, &ids);
            hub.rule_statements.fetch_add(1, Ordering::Relaxed);
            hub.metrics.counter("keel_realtime_rule_statements_total", &[], 1);
            for row in hub.db.query(&sql).await? {
                let mut cells = row.into_iter();
                let (Some(i), Some(id)) = (cells.next().and_then(|c| c.int()), cells.next()) else {
                    continue;
                };
                let Some(id) = id.uuid().or_else(|| id.text().and_then(|t| Uuid::parse_str(t).ok())) else {
                    continue;
                };
                let json = cells.next().and_then(|c| c.into_text());
                let Some(owners) = members_of.get(n * chunk + i as usize) else {
                    continue;
                };
                for owner in owners {
                    seen.by_stream.entry(*owner).or_default().insert(id, json.clone());
                }
            }
        }
    }
    if plain && !seen.by_stream.is_empty() {
        let sql = builder.by_ids(&written, Action::View);
        for row in hub.db.query(&sql).await? {
            let mut cells = row.into_iter();
            let id = cells.next();
            let id = id.and_then(|c| c.uuid().or_else(|| c.text().and_then(|t| Uuid::parse_str(t).ok())));
            if let (Some(id), Some(json)) = (id, cells.next().and_then(|c| c.into_text())) {
                seen.records.insert(id, json);
            }
        }
    }
    Ok(seen)
}

/// The event a change makes for one stream, if the stream may see it.
fn event_for(collection: &Collection, change: &Change, stream: &Stream, seen: &Seen) -> Option<Outgoing> {
    let Watch::Records(watch) = &stream.watch else {
        return None;
    };
    let id = Some(change.position.to_string());
    match change.action.as_str() {
        action @ ("create" | "update") => {
            let record = Uuid::parse_str(&change.record).ok()?;
            if watch.record.is_some_and(|r| r != record) {
                return None;
            }
            let json = match seen.by_stream.get(&stream.id)?.get(&record)? {
                Some(json) => json.clone(),
                None => project(collection, seen.records.get(&record)?, watch.fields.as_deref()),
            };
            Some(Outgoing {
                id,
                event: if action == "create" { "created" } else { "updated" },
                data: format!("{{\"id\":\"{record}\",\"record\":{json}}}"),
            })
        }
        "delete" => {
            let record = Uuid::parse_str(&change.record).ok()?;
            if watch.record.is_some_and(|r| r != record) {
                return None;
            }
            Some(Outgoing {
                id,
                event: "deleted",
                data: format!("{{\"id\":\"{record}\"}}"),
            })
        }
        // Imports and bulk deletes: one event saying what happened, for the client to reload.
        action => Some(Outgoing {
            id,
            event: "bulk",
            data: json!({
                "action": action,
                "count": change.count,
                "batch": (!change.record.is_empty()).then_some(&change.record),
            })
            .to_string(),
        }),
    }
}

/// A record's JSON projected to `fields` (the id always stays), in the order a list uses.
fn project(collection: &Collection, json: &str, fields: Option<&[String]>) -> String {
    let Some(fields) = fields else {
        return json.to_string();
    };
    let Ok(record) = serde_json::from_str::<Map<String, Value>>(json) else {
        return json.to_string();
    };
    let mut out = String::with_capacity(json.len());
    out.push('{');
    let mut first = true;
    for (name, _) in keel_query::render::record_columns(collection) {
        if name != "id" && !fields.contains(&name) {
            continue;
        }
        let Some(value) = record.get(&name) else { continue };
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&serde_json::to_string(&name).expect("strings serialise"));
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    out
}

/// Checks open streams' access again: one statement each for sessions, API keys and
/// memberships, whatever the number of streams.
pub(super) async fn recheck(hub: Weak<Hub>) {
    let Some(every) = hub.upgrade().map(|h| Duration::from_secs(h.settings.recheck_seconds)) else {
        return;
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(hub) = hub.upgrade() else { return };
        if let Err(error) = recheck_once(&hub).await {
            tracing::warn!(%error, "realtime: checking streams' access failed; trying again later");
        }
    }
}

pub(super) async fn recheck_once(hub: &Arc<Hub>) -> Result<(), keel_store::StoreError> {
    let streams: Vec<Arc<Stream>> = hub.registry.lock().expect("lock").streams.values().cloned().collect();
    if streams.is_empty() {
        return Ok(());
    }
    let distinct = |ids: Vec<Uuid>| -> Vec<Uuid> {
        let set: HashSet<Uuid> = ids.into_iter().collect();
        set.into_iter().collect()
    };
    let sessions = distinct(streams.iter().filter_map(|s| s.who.session).collect());
    let keys = distinct(streams.iter().filter_map(|s| s.who.key).collect());
    let members: Vec<&Arc<Stream>> = streams.iter().filter(|s| s.who.org.is_some()).collect();
    let users = distinct(members.iter().filter_map(|s| s.who.user).collect());
    let orgs = distinct(members.iter().filter_map(|s| s.who.org).collect());
    let sessions = if sessions.is_empty() {
        HashMap::new()
    } else {
        keel_store::system::sessions_valid(&hub.db, &sessions).await?
    };
    let keys = if keys.is_empty() {
        HashSet::new()
    } else {
        keel_store::system::keys_valid(&hub.db, &keys).await?
    };
    let roles = if users.is_empty() {
        HashMap::new()
    } else {
        keel_store::system::roles_of(&hub.db, &users, &orgs).await?
    };
    let now = Utc::now();
    for stream in streams {
        let who = &stream.who;
        let reason = if who.expires_at.is_some_and(|at| at <= now) {
            Some(("token_expired", "the token expired; reconnect with a fresh one"))
        } else if let Some(session) = who.session {
            match sessions.get(&session) {
                None => Some(("session_revoked", "the session was signed out or revoked")),
                Some(superuser) if who.superuser && !superuser => {
                    Some(("superuser_removed", "the account is no longer the superuser"))
                }
                Some(_) => None,
            }
        } else if who.key.is_some_and(|key| !keys.contains(&key)) {
            Some(("key_revoked", "the API key was revoked or expired"))
        } else {
            None
        };
        let reason = reason.or_else(|| {
            let (org, user) = (who.org?, who.user?);
            match roles.get(&(org, user)) {
                None => Some(("membership_removed", "you are no longer a member of this org")),
                Some(role) if hub.schema.app.role_rank(role) != who.rank => Some((
                    "role_changed",
                    "your role in this org changed; reconnect to follow with it",
                )),
                Some(_) => None,
            }
        });
        if let Some((reason, message)) = reason {
            stream.close(Closing {
                event: "revoked",
                data: json!({ "reason": reason, "message": message }),
                retry: false,
            });
        }
    }
    Ok(())
}
