//! The response cache (C1–C3): list and get answers of collections that declare
//! `cache = "5m"`, kept in a byte-bounded in-process cache (S3-FIFO, `quick_cache`).
//!
//! Invalidation is by version stamps, never by finding entries: every entry's key holds the
//! version of its collection in its scope (the org, or `global`) and the collection's epoch
//! (all scopes). A write bumps the version of every cached collection it can change (the
//! collection itself and those that point at it, which embed it with `expand` and lose rows
//! to its cascades) before its answer leaves the server, so no read that starts after a write
//! answered is served from before it. A change of membership bumps the whole org; a job that
//! wrote records bumps the epoch of what it wrote when it finishes.
//!
//! With Redis the stamps live in Redis (a read costs one `MGET`, a write one pipelined
//! `INCR`), so this holds across every instance; while Redis cannot answer, reads bypass the
//! cache (they are served from the database, never from an entry that may be stale) and
//! writes remember their bumps and retry them. Without Redis the stamps are in-process (one
//! instance, as documented for running without Redis).
//!
//! An entry is per caller (user or API key), so rules, roles and memberships need no
//! analysis: a cached answer is only ever served to whom it was computed for.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use keel_spec::App;

pub mod layer;

struct Entry {
    headers: HeaderMap,
    body: Bytes,
    expires: Instant,
}

#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<String, Arc<Entry>> for Weight {
    fn weight(&self, key: &String, value: &Arc<Entry>) -> u64 {
        (key.len() + value.body.len() + 64 * value.headers.len() + 64) as u64
    }
}

#[derive(Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl quick_cache::Lifecycle<String, Arc<Entry>> for Evictions {
    type RequestState = ();
    fn on_evict(&self, _state: &mut (), _key: String, _value: Arc<Entry>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type Entries = quick_cache::sync::Cache<String, Arc<Entry>, Weight, std::collections::hash_map::RandomState, Evictions>;

pub struct ResponseCache {
    /// Cached collections and their entries' lifetime.
    ttl: HashMap<String, Duration>,
    /// A write to a collection changes the answers of these cached collections.
    affected: HashMap<String, Vec<String>>,
    entries: Entries,
    max_entry_bytes: usize,
    evictions: Evictions,
    /// In-process stamps (without Redis), by `collection:scope` and `collection:*`.
    versions: std::sync::Mutex<HashMap<String, u64>>,
    /// Bumps Redis did not take, retried with the next bump.
    pending: std::sync::Mutex<HashSet<String>>,
    /// Cached reads answered from the cache and not, since start (the console's ratio).
    pub hits: std::sync::atomic::AtomicU64,
    pub misses: std::sync::atomic::AtomicU64,
}

/// What a request touches: a collection in a scope (an org slug, `global`), or a whole org.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Collection {
        collection: &'a str,
        scope: &'a str,
        /// A list or a get (the answers that are cached).
        readable: bool,
    },
    Org(&'a str),
}

fn target<'a>(route: &str, path: &'a str) -> Option<Target<'a>> {
    let segments: Vec<&'a str> = path.split('/').collect();
    // ["", "api", "v1", "orgs", slug, collection, …] or ["", "api", "v1", "global", collection, …]
    if let Some(rest) = route.strip_prefix("/api/v1/orgs/{org}/") {
        let slug = *segments.get(4)?;
        if rest.starts_with("members") {
            return Some(Target::Org(slug));
        }
        if !rest.starts_with("{collection}") {
            return None;
        }
        return Some(Target::Collection {
            collection: segments.get(5)?,
            scope: slug,
            readable: matches!(rest, "{collection}" | "{collection}/{id}"),
        });
    }
    if let Some(rest) = route.strip_prefix("/api/v1/global/") {
        return Some(Target::Collection {
            collection: segments.get(4)?,
            scope: "global",
            readable: matches!(rest, "{collection}" | "{collection}/{id}"),
        });
    }
    None
}

impl ResponseCache {
    pub fn new(app: &App, config: &crate::Config) -> ResponseCache {
        let ttl: HashMap<String, Duration> = app
            .collections
            .iter()
            .filter_map(|c| c.cache_ttl_ms.map(|ms| (c.name.clone(), Duration::from_millis(ms))))
            .collect();
        let mut affected: HashMap<String, Vec<String>> = HashMap::new();
        for collection in app.collections.iter().filter(|c| ttl.contains_key(&c.name)) {
            affected
                .entry(collection.name.clone())
                .or_default()
                .push(collection.name.clone());
            for field in &collection.fields {
                if let keel_spec::FieldKind::Relation {
                    to: keel_spec::RelationTarget::Collection(target),
                    ..
                } = &field.kind
                {
                    let list = affected.entry(target.clone()).or_default();
                    if !list.contains(&collection.name) {
                        list.push(collection.name.clone());
                    }
                }
            }
        }
        let max_bytes = config.limits.cache_max_bytes.max(1);
        let evictions = Evictions::default();
        let entries = Entries::with(
            (max_bytes / 4096).clamp(16, 1 << 20) as usize,
            max_bytes,
            Weight,
            Default::default(),
            evictions.clone(),
        );
        ResponseCache {
            ttl,
            affected,
            entries,
            max_entry_bytes: config.limits.cache_max_entry_bytes,
            evictions,
            versions: Default::default(),
            pending: Default::default(),
            hits: Default::default(),
            misses: Default::default(),
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_empty()
    }

    /// The stamps of a collection in a scope, as they go into an entry's key: `None` when
    /// they cannot be known (Redis down).
    async fn stamp(&self, shared: &crate::http::shared::Shared, collection: &str, scope: &str) -> Option<String> {
        let keys = [format!("{collection}:*"), format!("{collection}:{scope}")];
        if shared.enabled() {
            if !self.flush(shared).await {
                return None;
            }
            // The generation tells this Redis's stamps from those of a Redis that restarted
            // empty (whose counters start again from 0 and would meet old entries' keys).
            let mut redis_keys = vec![shared.key(&["cv", "generation"])];
            redis_keys.extend(keys.iter().map(|k| shared.key(&["cv", k])));
            let mut values = shared.counters(&redis_keys).await?;
            if values[0] == 0 {
                let generation = rand::random::<u64>() >> 1 | 1;
                shared.set_nx(&redis_keys[0], generation).await?;
                values = shared.counters(&redis_keys).await?;
            }
            return Some(format!("{}.{}.{}", values[0], values[1], values[2]));
        }
        let versions = self.versions.lock().expect("cache versions");
        Some(format!(
            "0.{}.{}",
            versions.get(&keys[0]).copied().unwrap_or(0),
            versions.get(&keys[1]).copied().unwrap_or(0),
        ))
    }

    /// Retries the bumps Redis did not take; true when none is left.
    async fn flush(&self, shared: &crate::http::shared::Shared) -> bool {
        let pending: Vec<String> = self.pending.lock().expect("cache pending").iter().cloned().collect();
        if pending.is_empty() {
            return true;
        }
        if shared.increment(&pending).await {
            let mut left = self.pending.lock().expect("cache pending");
            for key in &pending {
                left.remove(key);
            }
            true
        } else {
            false
        }
    }

    /// Bumps the stamps of every cached collection that a write to `collection` in `scope`
    /// (`None`: every scope) can change.
    pub async fn bump(&self, shared: &crate::http::shared::Shared, collection: &str, scope: Option<&str>) {
        let Some(affected) = self.affected.get(collection) else {
            return;
        };
        let keys: Vec<String> = affected
            .iter()
            .map(|name| format!("{name}:{}", scope.unwrap_or("*")))
            .collect();
        self.bump_keys(shared, keys).await;
    }

    /// Bumps every cached collection in an org (its memberships changed).
    async fn bump_org(&self, shared: &crate::http::shared::Shared, slug: &str) {
        let keys: Vec<String> = self.ttl.keys().map(|name| format!("{name}:{slug}")).collect();
        self.bump_keys(shared, keys).await;
    }

    async fn bump_keys(&self, shared: &crate::http::shared::Shared, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        if shared.enabled() {
            let mut redis_keys: Vec<String> = keys.iter().map(|k| shared.key(&["cv", k])).collect();
            redis_keys.extend(self.pending.lock().expect("cache pending").drain());
            if !shared.increment(&redis_keys).await {
                // Reads bypass the cache until these get through (`stamp` flushes first).
                self.pending.lock().expect("cache pending").extend(redis_keys);
            }
        } else {
            let mut versions = self.versions.lock().expect("cache versions");
            for key in keys {
                *versions.entry(key).or_default() += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_their_collection_and_scope() {
        let t = |route, path| target(route, path);
        assert_eq!(
            t("/api/v1/orgs/{org}/{collection}", "/api/v1/orgs/acme/tasks"),
            Some(Target::Collection {
                collection: "tasks",
                scope: "acme",
                readable: true
            })
        );
        assert_eq!(
            t(
                "/api/v1/orgs/{org}/{collection}/{id}/files/{field}",
                "/api/v1/orgs/acme/tasks/x/files/f"
            ),
            Some(Target::Collection {
                collection: "tasks",
                scope: "acme",
                readable: false
            })
        );
        assert_eq!(
            t("/api/v1/global/{collection}/{id}", "/api/v1/global/items/x"),
            Some(Target::Collection {
                collection: "items",
                scope: "global",
                readable: true
            })
        );
        assert_eq!(
            t("/api/v1/orgs/{org}/members/{user}", "/api/v1/orgs/acme/members/u"),
            Some(Target::Org("acme"))
        );
        assert_eq!(t("/api/v1/orgs/{org}/usage", "/api/v1/orgs/acme/usage"), None);
        assert_eq!(t("/api/v1/jobs/{id}", "/api/v1/jobs/1"), None);
    }
}
