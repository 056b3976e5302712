//! Optional shared state in Redis (`redis.url`): a cache of token lookups shared by every
//! instance. Redis is never required: every call has a short timeout, a failure falls back
//! to the database, `/health/ready` reports "degraded", and the connection manager
//! reconnects by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::Client;
use redis::aio::ConnectionManager;

use crate::http::settings::RedisSection;

pub struct Shared {
    redis: Option<Redis>,
    /// A short-lived in-process copy of token lookups in front of Redis, kept honest by
    /// invalidations other instances publish (cleared whole when the subscription breaks).
    local: Arc<LocalCache>,
    /// Wakes the subscriber to subscribe again after Redis came back (a subscription on a
    /// dead connection may never end on its own).
    resubscribe: Arc<tokio::sync::Notify>,
}

/// Entries of the in-process cache: key → (value, valid until).
#[derive(Default)]
struct LocalCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (String, Instant)>>,
}

/// The in-process cache holds at most this many entries, each at most this long.
const LOCAL_MAX: usize = 10_000;
const LOCAL_TTL: Duration = Duration::from_secs(10);

impl LocalCache {
    fn get(&self, key: &str) -> Option<String> {
        let entries = self.entries.lock().expect("local cache lock");
        entries
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(v, _)| v.clone())
    }

    fn put(&self, key: &str, value: &str, ttl: Duration) {
        let mut entries = self.entries.lock().expect("local cache lock");
        let now = Instant::now();
        if entries.len() >= LOCAL_MAX {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= LOCAL_MAX {
                entries.clear();
            }
        }
        entries.insert(key.to_string(), (value.to_string(), now + ttl.min(LOCAL_TTL)));
    }

    fn remove(&self, key: &str) {
        self.entries.lock().expect("local cache lock").remove(key);
    }

    fn clear(&self) {
        self.entries.lock().expect("local cache lock").clear();
    }
}

struct Redis {
    manager: ConnectionManager,
    prefix: String,
    /// Where instances announce keys whose in-process copies must go.
    channel: String,
    timeout: Duration,
    /// The last call succeeded; flips are logged once each way.
    up: AtomicBool,
    /// While down, requests skip Redis and only one call per `RETRY_EVERY` tries it again,
    /// so a dead Redis costs requests nothing (milliseconds since `epoch`).
    last_attempt_ms: std::sync::atomic::AtomicU64,
    epoch: Instant,
    /// The rate-limit and concurrency scripts (sent once, then run by hash).
    gcra: redis::Script,
    slot: redis::Script,
}

/// While Redis is down, how often a call tries it again.
const RETRY_EVERY: Duration = Duration::from_millis(500);

impl Shared {
    /// No Redis: one instance, state in the database only.
    pub fn none() -> Shared {
        Shared {
            redis: None,
            local: Arc::default(),
            resubscribe: Arc::default(),
        }
    }

    /// Sets up the connection lazily: Keel starts even when Redis is down.
    pub fn connect(config: &RedisSection) -> Result<Shared, String> {
        let Some(url) = config.url.as_ref().map(|s| s.0.clone()).filter(|u| !u.is_empty()) else {
            return Ok(Shared::none());
        };
        let client = Client::open(url.as_str()).map_err(|e| format!("redis.url: {e}"))?;
        let timeout = Duration::from_millis(config.timeout_ms);
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| format!("redis: {e}"))?;
        let local: Arc<LocalCache> = Arc::default();
        let resubscribe: Arc<tokio::sync::Notify> = Arc::default();
        let channel = format!("{}:invalidate", config.key_prefix);
        tokio::spawn(subscribe(
            client,
            channel.clone(),
            Arc::downgrade(&local),
            resubscribe.clone(),
        ));
        Ok(Shared {
            redis: Some(Redis {
                manager,
                prefix: config.key_prefix.clone(),
                channel,
                timeout,
                up: AtomicBool::new(true),
                last_attempt_ms: std::sync::atomic::AtomicU64::new(0),
                epoch: Instant::now(),
                gcra: redis::Script::new(GCRA_LUA),
                slot: redis::Script::new(SLOT_LUA),
            }),
            local,
            resubscribe,
        })
    }

    pub fn enabled(&self) -> bool {
        self.redis.is_some()
    }

    /// A namespaced key.
    pub fn key(&self, parts: &[&str]) -> String {
        let prefix = self.redis.as_ref().map(|r| r.prefix.as_str()).unwrap_or("keel");
        let mut key = prefix.to_string();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// Runs one command with the timeout; `None` when Redis is off or failing.
    async fn run<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Option<T> {
        let redis = self.redis.as_ref()?;
        if !redis.may_try() {
            return None;
        }
        let mut manager = redis.manager.clone();
        let outcome = tokio::time::timeout(redis.timeout, command.query_async::<T>(&mut manager)).await;
        match outcome {
            Ok(Ok(value)) => {
                self.came_back(redis);
                Some(value)
            }
            Ok(Err(error)) => {
                self.went_down(redis, &error.to_string());
                None
            }
            Err(_) => {
                self.went_down(redis, "timed out");
                None
            }
        }
    }

    /// A cached value: the in-process copy while Redis is healthy, else Redis itself.
    pub async fn get(&self, key: &str) -> Option<String> {
        if self.healthy()
            && let Some(value) = self.local.get(key)
        {
            return Some(value);
        }
        let value = self
            .run::<Option<String>>(redis::cmd("GET").arg(key).clone())
            .await
            .flatten()?;
        self.local.put(key, &value, LOCAL_TTL);
        Some(value)
    }

    pub async fn set_ex(&self, key: &str, value: &str, seconds: u64) {
        let command = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(seconds.max(1))
            .clone();
        if self.run::<()>(command).await.is_some() {
            self.local.put(key, value, Duration::from_secs(seconds));
        }
    }

    /// Deletes keys in Redis and, through the invalidation channel, in every instance's
    /// in-process copy.
    pub async fn del(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        for key in keys {
            self.local.remove(key);
        }
        let _ = self.run::<i64>(redis::cmd("DEL").arg(keys).clone()).await;
        if let Some(redis) = &self.redis {
            for key in keys {
                let _ = self
                    .run::<i64>(redis::cmd("PUBLISH").arg(&redis.channel).arg(key).clone())
                    .await;
            }
        }
    }

    /// Integer counters (missing ones are 0); `None` when Redis is off or failing.
    pub async fn counters(&self, keys: &[String]) -> Option<Vec<u64>> {
        let values = self
            .run::<Vec<Option<u64>>>(redis::cmd("MGET").arg(keys).clone())
            .await?;
        Some(values.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Sets a counter unless it exists; `None` when Redis is off or failing.
    pub async fn set_nx(&self, key: &str, value: u64) -> Option<()> {
        self.run::<Option<String>>(redis::cmd("SET").arg(key).arg(value).arg("NX").clone())
            .await
            .map(|_| ())
    }

    /// Increments counters in one round trip (a pipeline); false when Redis could not.
    pub async fn increment(&self, keys: &[String]) -> bool {
        if keys.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("INCR").arg(key).ignore();
        }
        let Some(redis) = &self.redis else { return false };
        if !redis.may_try() {
            return false;
        }
        let mut manager = redis.manager.clone();
        match tokio::time::timeout(redis.timeout, pipe.query_async::<()>(&mut manager)).await {
            Ok(Ok(())) => {
                self.came_back(redis);
                true
            }
            Ok(Err(error)) => {
                self.went_down(redis, &error.to_string());
                false
            }
            Err(_) => {
                self.went_down(redis, "timed out");
                false
            }
        }
    }

    /// PING with its latency, for `/health/ready`; `None` when Redis is not configured.
    pub async fn ping(&self) -> Option<Result<Duration, String>> {
        let redis = self.redis.as_ref()?;
        let started = Instant::now();
        Some(match self.run::<String>(redis::cmd("PING")).await {
            Some(_) => Ok(started.elapsed()),
            None => Err(if redis.up.load(Ordering::Relaxed) {
                "no answer".into()
            } else {
                "unreachable".into()
            }),
        })
    }

    /// Invalidations may be lost while Redis is away: the in-process copies go too.
    fn went_down(&self, redis: &Redis, error: &str) {
        self.local.clear();
        redis.down(error);
    }

    /// Whether the last call to Redis worked (`true` when Redis is not configured).
    pub fn healthy(&self) -> bool {
        self.redis.as_ref().is_none_or(|r| r.up.load(Ordering::Relaxed))
    }
}

/// Listens for invalidations from other instances and drops those keys from the in-process
/// cache. When the subscription breaks, invalidations may have been missed, so the whole
/// cache is cleared before subscribing again.
async fn subscribe(
    client: Client,
    channel: String,
    local: std::sync::Weak<LocalCache>,
    resubscribe: Arc<tokio::sync::Notify>,
) {
    use futures_util::StreamExt;
    loop {
        match local.upgrade() {
            Some(cache) => cache.clear(),
            None => return,
        }
        if let Ok(mut pubsub) = client.get_async_pubsub().await
            && pubsub.subscribe(&channel).await.is_ok()
        {
            let mut messages = pubsub.into_on_message();
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        let Some(cache) = local.upgrade() else { return };
                        if let Ok(key) = message.get_payload::<String>() {
                            cache.remove(&key);
                        }
                    }
                    _ = resubscribe.notified() => break,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Redis {
    /// Always while up; while down, one caller per `RETRY_EVERY`.
    fn may_try(&self) -> bool {
        if self.up.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_attempt_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= RETRY_EVERY.as_millis() as u64
            && self
                .last_attempt_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn down(&self, error: &str) {
        self.last_attempt_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                error,
                "redis is unreachable; serving from the database until it is back"
            );
        }
    }
}

/// The local record of clients that wrote recently, for read-your-writes on one instance
/// (with Redis the record is shared instead). Bounded: when full, expired entries go first,
/// then the oldest.
#[derive(Default)]
pub struct RecentWriters {
    entries: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

const RECENT_WRITERS_MAX: usize = 100_000;

impl RecentWriters {
    pub fn record(&self, client: &str, window: Duration) {
        let mut entries = self.entries.lock().expect("recent writers lock");
        let now = Instant::now();
        if entries.len() >= RECENT_WRITERS_MAX {
            entries.retain(|_, until| *until > now);
            if entries.len() >= RECENT_WRITERS_MAX
                && let Some(oldest) = entries.iter().min_by_key(|(_, until)| **until).map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(client.to_string(), now + window);
    }

    pub fn wrote_recently(&self, client: &str) -> bool {
        let entries = self.entries.lock().expect("recent writers lock");
        entries.get(client).is_some_and(|until| *until > Instant::now())
    }
}

impl Shared {
    /// Records that a client (token hash) wrote: its reads go to the primary for `window`.
    pub async fn record_write(&self, local: &RecentWriters, client: &str, window: Duration) {
        if self.enabled() {
            let key = self.key(&["ryw", client]);
            let _ = self
                .run::<()>(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(1)
                        .arg("PX")
                        .arg(window.as_millis() as u64)
                        .clone(),
                )
                .await;
        } else {
            local.record(client, window);
        }
    }

    /// Whether a client wrote within the read-your-writes window (on any instance, with Redis).
    /// If Redis cannot answer, the safe answer is yes: the primary is always up to date.
    pub async fn wrote_recently(&self, local: &RecentWriters, client: &str) -> bool {
        if self.enabled() {
            let key = self.key(&["ryw", client]);
            self.run::<Option<String>>(redis::cmd("GET").arg(&key).clone())
                .await
                .is_none_or(|v| v.is_some())
        } else {
            local.wrote_recently(client)
        }
    }
}

/// The outcome of a rate-limit check (GCRA) over one or more limits: whether the request may
/// go, and, for the `RateLimit-*` and `Retry-After` headers, the limit that binds (when
/// refused, the one to wait longest for; when allowed, the one with the fewest left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Which of the limits checked binds.
    pub index: usize,
    pub limit: u64,
    pub period_ms: u64,
    pub remaining: u64,
    /// Milliseconds until the next request would be allowed (0 when allowed).
    pub retry_after_ms: u64,
    /// Milliseconds until the full limit is available again.
    pub reset_ms: u64,
    /// Decided by the shared (Redis) state rather than this instance's own table.
    pub shared: bool,
}

/// One limit to count a request against: `limit` requests per `period`, bursts up to `limit`.
#[derive(Debug, Clone)]
pub struct RateKey {
    pub key: String,
    pub limit: u64,
    pub period: Duration,
}

impl RateKey {
    /// GCRA's emission interval and burst tolerance.
    fn gcra(&self) -> (Duration, Duration) {
        let limit = self.limit.max(1);
        let interval = (self.period / limit as u32).max(Duration::from_micros(1));
        (interval, interval * (limit as u32 - 1))
    }
}

/// GCRA over theoretical arrival times (TAT) in microseconds, timed by Redis's own clock so
/// instances with skewed clocks agree (invariant 9), over every key at once: a request is
/// counted against all of them or, if any refuses it, against none. ARGV holds each key's
/// emission interval and burst tolerance (µs). Returns {allowed, index (1-based), remaining,
/// retry_after (µs), reset (µs)} of the binding limit.
const GCRA_LUA: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tats = {}
local worst, worst_retry = 0, -1
for i = 1, #KEYS do
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  local owed = tat - now
  if owed > tolerance and owed - tolerance > worst_retry then
    worst, worst_retry = i, owed - tolerance
  end
end
if worst > 0 then
  return {0, worst, 0, worst_retry, tats[worst] - now}
end
local best, best_remaining, best_reset = 1, -1, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local new_tat = tats[i] + interval
  redis.call('SET', KEYS[i], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
  local remaining = math.floor((tolerance - (new_tat - now) + interval) / interval)
  if best_remaining < 0 or remaining < best_remaining then
    best, best_remaining, best_reset = i, remaining, new_tat - now
  end
end
return {1, best, best_remaining, 0, best_reset}
";

/// At most `ARGV[2]` holders of `KEYS[1]` at once, each holding a lease of `ARGV[3]` ms (so a
/// crashed instance's slots free themselves): a sorted set of holder ids by lease end.
const SLOT_LUA: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[2]) then
  return held
end
local lease = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease)
return -1
";

/// The same algorithms for one instance, bounded: when full, expired entries go first, then all.
#[derive(Default)]
pub struct LocalLimits {
    entries: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    /// Requests in progress by concurrency key.
    running: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
}

const LOCAL_LIMITS_MAX: usize = 100_000;

impl LocalLimits {
    fn decide(&self, keys: &[RateKey]) -> RateDecision {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("local limits lock");
        if entries.len() + keys.len() > LOCAL_LIMITS_MAX {
            entries.retain(|_, tat| *tat > now);
            if entries.len() + keys.len() > LOCAL_LIMITS_MAX {
                entries.clear();
            }
        }
        let tats: Vec<Instant> = keys
            .iter()
            .map(|k| entries.get(&k.key).copied().filter(|t| *t > now).unwrap_or(now))
            .collect();
        let mut worst: Option<(usize, Duration)> = None;
        for (i, key) in keys.iter().enumerate() {
            let (_, tolerance) = key.gcra();
            let owed = tats[i] - now;
            if owed > tolerance && worst.is_none_or(|(_, retry)| owed - tolerance > retry) {
                worst = Some((i, owed - tolerance));
            }
        }
        if let Some((i, retry)) = worst {
            return RateDecision {
                allowed: false,
                index: i,
                limit: keys[i].limit,
                period_ms: keys[i].period.as_millis() as u64,
                remaining: 0,
                retry_after_ms: (retry.as_micros() as u64).div_ceil(1000),
                reset_ms: ((tats[i] - now).as_micros() as u64).div_ceil(1000),
                shared: false,
            };
        }
        let mut best: Option<(usize, u64, Duration)> = None;
        for (i, key) in keys.iter().enumerate() {
            let (interval, tolerance) = key.gcra();
            let new_tat = tats[i] + interval;
            entries.insert(key.key.clone(), new_tat);
            let ahead = new_tat - now;
            let remaining =
                ((tolerance + interval).saturating_sub(ahead).as_nanos() / interval.as_nanos().max(1)) as u64;
            if best.is_none_or(|(_, fewest, _)| remaining < fewest) {
                best = Some((i, remaining, ahead));
            }
        }
        let (i, remaining, ahead) = best.unwrap_or((0, u64::MAX, Duration::ZERO));
        RateDecision {
            allowed: true,
            index: i,
            limit: keys.get(i).map_or(0, |k| k.limit),
            period_ms: keys.get(i).map_or(0, |k| k.period.as_millis() as u64),
            remaining,
            retry_after_ms: 0,
            reset_ms: (ahead.as_micros() as u64).div_ceil(1000),
            shared: false,
        }
    }

    fn acquire(&self, key: &str, cap: u32) -> Option<Slot> {
        let mut running = self.running.lock().expect("local slots lock");
        let held = running.entry(key.to_string()).or_insert(0);
        if *held >= cap {
            return None;
        }
        *held += 1;
        Some(Slot(Some(Release::Local(self.running.clone(), key.to_string()))))
    }
}

/// A held concurrency slot, given back when dropped.
pub struct Slot(Option<Release>);

enum Release {
    Local(Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>, String),
    Shared(ConnectionManager, String, String),
}

impl Drop for Slot {
    fn drop(&mut self) {
        match self.0.take() {
            Some(Release::Local(running, key)) => {
                let mut running = running.lock().expect("local slots lock");
                if let Some(held) = running.get_mut(&key) {
                    *held = held.saturating_sub(1);
                    if *held == 0 {
                        running.remove(&key);
                    }
                }
            }
            Some(Release::Shared(mut manager, key, member)) => {
                // Best effort: a slot that is not removed ends with its lease.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let command = redis::cmd("ZREM").arg(&key).arg(&member).clone();
                        let _ = tokio::time::timeout(Duration::from_secs(1), command.query_async::<i64>(&mut manager))
                            .await;
                    });
                }
            }
            None => {}
        }
    }
}

impl Shared {
    /// Counts one request against every limit in `keys` (GCRA), or refuses it without
    /// counting it against any: in Redis for all instances when it is configured and healthy
    /// (one round trip), else in this instance's table (`shared: false` says which).
    pub async fn gcra_many(&self, local: &LocalLimits, keys: &[RateKey]) -> RateDecision {
        if let Some(redis) = &self.redis
            && redis.may_try()
            && !keys.is_empty()
        {
            let mut manager = redis.manager.clone();
            let mut invocation = redis.gcra.prepare_invoke();
            for key in keys {
                let (interval, tolerance) = key.gcra();
                invocation
                    .key(self.key(&["rl", &key.key]))
                    .arg(interval.as_micros() as u64)
                    .arg(tolerance.as_micros() as u64);
            }
            let outcome = tokio::time::timeout(
                redis.timeout,
                invocation.invoke_async::<(u64, usize, u64, u64, u64)>(&mut manager),
            )
            .await;
            match outcome {
                Ok(Ok((allowed, index, remaining, retry_after_us, reset_us))) => {
                    self.came_back(redis);
                    let i = index.saturating_sub(1).min(keys.len() - 1);
                    return RateDecision {
                        allowed: allowed == 1,
                        index: i,
                        limit: keys[i].limit,
                        period_ms: keys[i].period.as_millis() as u64,
                        remaining,
                        retry_after_ms: retry_after_us.div_ceil(1000),
                        reset_ms: reset_us.div_ceil(1000),
                        shared: true,
                    };
                }
                Ok(Err(error)) => self.went_down(redis, &error.to_string()),
                Err(_) => self.went_down(redis, "timed out"),
            }
        }
        local.decide(keys)
    }

    /// One limit: `limit` requests per `period` under `key`.
    pub async fn gcra(&self, local: &LocalLimits, key: &str, limit: u64, period: Duration) -> RateDecision {
        let key = RateKey {
            key: key.to_string(),
            limit,
            period,
        };
        self.gcra_many(local, std::slice::from_ref(&key)).await
    }

    /// Takes one of `cap` slots under `key` until the returned guard drops (a lease of `lease`
    /// bounds it in Redis); `None` when all are taken. Shared by every instance when Redis is
    /// configured and healthy, else per instance.
    pub async fn acquire_slot(&self, local: &LocalLimits, key: &str, cap: u32, lease: Duration) -> Option<Slot> {
        if let Some(redis) = &self.redis
            && redis.may_try()
        {
            let mut manager = redis.manager.clone();
            let key = self.key(&["slot", key]);
            let member = uuid::Uuid::new_v4().simple().to_string();
            let mut invocation = redis.slot.prepare_invoke();
            invocation
                .key(&key)
                .arg(&member)
                .arg(cap)
                .arg(lease.as_millis().max(1) as u64);
            let outcome = tokio::time::timeout(redis.timeout, invocation.invoke_async::<i64>(&mut manager)).await;
            match outcome {
                Ok(Ok(held)) => {
                    self.came_back(redis);
                    return (held < 0).then(|| Slot(Some(Release::Shared(manager, key, member))));
                }
                Ok(Err(error)) => self.went_down(redis, &error.to_string()),
                Err(_) => self.went_down(redis, "timed out"),
            }
        }
        local.acquire(key, cap)
    }

    fn came_back(&self, redis: &Redis) {
        if !redis.up.swap(true, Ordering::Relaxed) {
            tracing::info!("redis is reachable again");
            self.resubscribe.notify_one();
        }
    }
}
