//! `Jobs`: the workers, settler, heartbeat and leader of one instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_query::Schema;
use keel_spec::{JobKind, QueueSpec};
use keel_store::Db;
use keel_store::jobs::{self, ClaimParams, Claimed, Completion, Failure};
use serde_json::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::context::{HandlerFn, HandlerFuture, JobContext, JobFailure, JobsConfig, NoObserver, Observer, Outcome};
use crate::cron::{self, Decision};
use crate::policy;

/// A job this instance holds a lease on.
struct InFlight {
    attempt: i32,
    queue: Arc<str>,
    /// Told when the lease is lost, so the handler stops.
    lost: Arc<Notify>,
}

/// A finished attempt waiting to be written.
struct Settled {
    id: i64,
    attempt: i32,
    queue: Arc<str>,
    kind: Arc<str>,
    ran: Duration,
    result: Result<Option<Value>, (String, Option<Duration>)>,
}

/// The job runtime of one instance.
pub struct Jobs {
    db: Arc<Db>,
    schema: Arc<Schema>,
    config: Arc<JobsConfig>,
    /// This instance's name in leases (`lease_owner`).
    owner: String,
    observer: Arc<dyn Observer>,
    patterns: Arc<keel_query::Patterns>,
    http: reqwest::Client,
    custom: std::sync::RwLock<HashMap<String, HandlerFn>>,
    wakers: HashMap<String, Arc<Notify>>,
    in_flight: Mutex<HashMap<i64, InFlight>>,
    settle_tx: mpsc::Sender<Settled>,
    settle_rx: Mutex<Option<mpsc::Receiver<Settled>>>,
    stopping: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    leading: AtomicBool,
}

impl Jobs {
    pub fn new(db: Arc<Db>, schema: Arc<Schema>, config: JobsConfig) -> Arc<Jobs> {
        let patterns = Arc::new(keel_query::Patterns::new(&schema.app.collections));
        Jobs::with_observer(db, schema, patterns, config, Arc::new(NoObserver))
    }

    /// `patterns` are the schema's compiled field patterns (the server shares its own).
    pub fn with_observer(
        db: Arc<Db>,
        schema: Arc<Schema>,
        patterns: Arc<keel_query::Patterns>,
        config: JobsConfig,
        observer: Arc<dyn Observer>,
    ) -> Arc<Jobs> {
        let wakers = schema
            .app
            .jobs
            .queues
            .iter()
            .map(|q| (q.name.clone(), Arc::new(Notify::new())))
            .collect();
        let (settle_tx, settle_rx) = mpsc::channel(16_384);
        let owner = format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "keel".into()),
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        Arc::new(Jobs {
            db,
            schema,
            config: Arc::new(config),
            owner,
            observer,
            patterns,
            http: reqwest::Client::new(),
            custom: Default::default(),
            wakers,
            in_flight: Mutex::new(HashMap::new()),
            settle_tx,
            settle_rx: Mutex::new(Some(settle_rx)),
            stopping: watch::channel(false).0,
            tasks: Mutex::new(vec![]),
            leading: AtomicBool::new(false),
        })
    }

    /// Runs `handler` for `kind` instead of the spec's handler.
    pub fn register(&self, kind: &str, handler: HandlerFn) {
        self.custom
            .write()
            .expect("handlers lock")
            .insert(kind.to_string(), handler);
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn config(&self) -> &JobsConfig {
        &self.config
    }

    pub fn observer(&self) -> &dyn Observer {
        self.observer.as_ref()
    }

    /// Whether this instance currently leads (cron, rescuer).
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// Jobs this instance is running now, per queue.
    pub fn running(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for job in self.in_flight.lock().expect("in-flight lock").values() {
            *counts.entry(job.queue.to_string()).or_default() += 1;
        }
        counts
    }

    /// Wakes this instance's idle workers of `queue` (`*`: all queues): its claim loop, and
    /// external workers waiting in a long poll.
    pub fn wake(&self, queue: &str) {
        let wake = |waker: &Arc<Notify>| {
            waker.notify_one();
            waker.notify_waiters();
        };
        if queue == "*" {
            self.wakers.values().for_each(wake);
        } else if let Some(waker) = self.wakers.get(queue) {
            wake(waker);
        }
    }

    /// What `wake` signals for `queue` (long polls of external workers wait on it).
    pub fn waker(&self, queue: &str) -> Option<Arc<Notify>> {
        self.wakers.get(queue).cloned()
    }

    /// Starts the workers, the settler, the heartbeat, the listener and the leader.
    pub fn start(self: &Arc<Self>) {
        let mut tasks = self.tasks.lock().expect("tasks lock");
        if let Some(receiver) = self.settle_rx.lock().expect("settle lock").take() {
            tasks.push(tokio::spawn(self.clone().settler(receiver)));
        }
        if self.config.workers {
            for queue in &self.schema.app.jobs.queues {
                if queue.concurrency > 0 {
                    tasks.push(tokio::spawn(self.clone().worker(queue.clone())));
                }
            }
        }
        tasks.push(tokio::spawn(self.clone().heartbeat()));
        tasks.push(tokio::spawn(self.clone().listen()));
        if self.config.leader {
            tasks.push(tokio::spawn(self.clone().lead()));
        }
    }

    fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// One queue's claim loop: claims as many jobs as it has free slots, runs each in a task,
    /// and sleeps until woken (enqueue, notification, a freed slot) or the poll interval.
    async fn worker(self: Arc<Self>, queue: QueueSpec) {
        // `held`: jobs claimed and not yet finished (running or waiting for a runner);
        // `runners`: jobs running. Claims refill `held` in batches of at least half of it.
        let prefetch = queue.prefetch.max(queue.concurrency) as usize;
        let held = Arc::new(Semaphore::new(prefetch));
        let runners = Arc::new(Semaphore::new(queue.concurrency as usize));
        let freed = Arc::new(Notify::new());
        let waker = self.wakers.get(&queue.name).cloned().unwrap_or_default();
        let queue_name: Arc<str> = Arc::from(queue.name.as_str());
        let refill_at = prefetch.div_ceil(2);
        let mut stopping = self.stopping.subscribe();
        let mut failures = 0u32;
        while !self.is_stopping() {
            let free = held.available_permits();
            if free == 0 || (free < refill_at && free < prefetch) {
                tokio::select! {
                    _ = freed.notified() => {}
                    _ = stopping.changed() => {}
                }
                continue;
            }
            let limit = (free as u32).min(self.config.claim_batch);
            let claim = ClaimParams {
                queue: &queue.name,
                owner: &self.owner,
                limit,
                lease: self.config.lease,
                per_key: queue.per_key,
                rate: queue.rate,
                kinds: None,
            };
            let claimed = match jobs::job_claim(&self.db, &claim).await {
                Ok(claimed) => {
                    failures = 0;
                    claimed
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(queue = %queue.name, error = %error, "claiming jobs failed");
                    let pause = Duration::from_millis(100 * u64::from(failures.min(50)));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopping.changed() => {}
                    }
                    continue;
                }
            };
            let count = claimed.len() as u32;
            for job in claimed {
                let permit = held
                    .clone()
                    .try_acquire_owned()
                    .expect("a claim never exceeds the free slots");
                self.start_job(queue_name.clone(), job, permit, runners.clone(), freed.clone());
            }
            if count < limit {
                // Drained (or limited): wait for news. A rate-limited queue polls sooner.
                let wait = if queue.rate.is_some() && count == 0 {
                    self.config.poll_interval.min(Duration::from_millis(100))
                } else {
                    self.config.poll_interval
                };
                tokio::select! {
                    _ = waker.notified() => {}
                    _ = freed.notified(), if queue.per_key.is_some() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopping.changed() => {}
                }
            }
        }
    }

    fn start_job(
        self: &Arc<Self>,
        queue: Arc<str>,
        job: Claimed,
        permit: OwnedSemaphorePermit,
        runners: Arc<Semaphore>,
        freed: Arc<Notify>,
    ) {
        let kind_name: Arc<str> = Arc::from(job.kind.as_str());
        self.observer.claimed(&queue, &job.kind, job.waited);
        let lost = Arc::new(Notify::new());
        self.in_flight.lock().expect("in-flight lock").insert(
            job.id,
            InFlight {
                attempt: job.attempt,
                queue: queue.clone(),
                lost: lost.clone(),
            },
        );
        let this = self.clone();
        tokio::spawn(async move {
            // Prefetched jobs wait here (in claim order) for a runner.
            let Ok(_runner) = runners.acquire_owned().await else {
                return;
            };
            let started = Instant::now();
            let (id, attempt, max_attempts) = (job.id, job.attempt, job.max_attempts);
            let kind = this.schema.app.jobs.kind(&job.kind).cloned().map(Arc::new);
            let outcome = match kind {
                None => Some(Err(JobFailure::permanent(format!(
                    "no job kind '{}' is declared",
                    job.kind
                )))),
                Some(kind) => {
                    let timeout = Duration::from_millis(kind.timeout_ms);
                    let context = JobContext {
                        id,
                        kind: kind.clone(),
                        attempt,
                        max_attempts,
                        org_id: job.org_id,
                        created_by: job.created_by,
                        payload: job.payload,
                        db: this.db.clone(),
                        schema: this.schema.clone(),
                        config: this.config.clone(),
                        patterns: this.patterns.clone(),
                        http: this.http.clone(),
                    };
                    let work = this.handler(&kind, context);
                    tokio::select! {
                        result = tokio::time::timeout(timeout, work) => Some(match result {
                            Ok(result) => result,
                            Err(_) => Err(JobFailure::retry(format!("timed out after {} ms", kind.timeout_ms))),
                        }),
                        // The lease was lost: stop (dropping the handler cancels it) and record nothing.
                        _ = lost.notified() => None,
                    }
                }
            };
            let ran = started.elapsed();
            match outcome {
                None => {
                    this.in_flight.lock().expect("in-flight lock").remove(&id);
                    this.observer.finished(&queue, &kind_name, Outcome::Lost, ran);
                }
                Some(result) => {
                    let result = result.map_err(|failure| {
                        let kind = this.schema.app.jobs.kind(&kind_name);
                        let retry = kind.and_then(|k| policy::retry_in(k, attempt, max_attempts, failure.permanent));
                        (failure.message, retry)
                    });
                    let settled = Settled {
                        id,
                        attempt,
                        queue: queue.clone(),
                        kind: kind_name.clone(),
                        ran,
                        result,
                    };
                    if this.settle_tx.send(settled).await.is_err() {
                        this.in_flight.lock().expect("in-flight lock").remove(&id);
                    }
                }
            }
            drop(permit);
            freed.notify_one();
        });
    }

    fn handler(&self, kind: &Arc<JobKind>, context: JobContext) -> HandlerFuture {
        if let Some(custom) = self.custom.read().expect("handlers lock").get(&kind.name) {
            return custom(context);
        }
        crate::handlers::run(kind.handler.clone(), context)
    }

    /// Writes finished attempts in batches: whatever has arrived since the last write goes in
    /// one statement for completions and one for failures.
    async fn settler(self: Arc<Self>, mut receiver: mpsc::Receiver<Settled>) {
        let mut batch = Vec::with_capacity(1024);
        while let Some(first) = receiver.recv().await {
            batch.push(first);
            while batch.len() < 4096 {
                match receiver.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let completions: Vec<Completion> = batch
                .iter()
                .filter_map(|s| match &s.result {
                    Ok(result) => Some(Completion {
                        id: s.id,
                        attempt: s.attempt,
                        result: result.clone(),
                    }),
                    Err(_) => None,
                })
                .collect();
            let failures: Vec<Failure> = batch
                .iter()
                .filter_map(|s| match &s.result {
                    Err((message, retry_in)) => Some(Failure {
                        id: s.id,
                        attempt: s.attempt,
                        error: message.clone(),
                        retry_in: *retry_in,
                    }),
                    Ok(_) => None,
                })
                .collect();
            let mut pause = Duration::from_millis(50);
            let written = loop {
                let result = async {
                    let mut done = jobs::job_complete_many(&self.db, &completions).await?;
                    done.extend(jobs::job_fail_many(&self.db, &failures).await?);
                    Ok::<_, keel_store::StoreError>(done)
                }
                .await;
                match result {
                    Ok(done) => break done,
                    // The leases outlive a short outage; after a long one the rescuer runs the
                    // jobs again (at least once), so nothing is lost either way.
                    Err(error) => {
                        tracing::warn!(error = %error, jobs = batch.len(), "recording finished jobs failed; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                }
            };
            let written: std::collections::HashSet<i64> = written.into_iter().collect();
            {
                let mut in_flight = self.in_flight.lock().expect("in-flight lock");
                for settled in &batch {
                    in_flight.remove(&settled.id);
                }
            }
            for settled in batch.drain(..) {
                let outcome = match (&settled.result, written.contains(&settled.id)) {
                    (_, false) => Outcome::Lost,
                    (Ok(_), true) => Outcome::Completed,
                    (Err((_, Some(_))), true) => Outcome::Retried,
                    (Err((_, None)), true) => Outcome::Dead,
                };
                if outcome == Outcome::Lost {
                    tracing::warn!(
                        job = settled.id,
                        attempt = settled.attempt,
                        "a finished job had lost its lease; its result was not recorded"
                    );
                }
                self.observer
                    .finished(&settled.queue, &settled.kind, outcome, settled.ran);
            }
        }
    }

    /// Extends the leases of every job held here, a third of a lease apart; a job whose lease
    /// is gone (rescued, cancelled) is told to stop.
    async fn heartbeat(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        let every = self.config.lease / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stopping.changed() => {}
            }
            let held: Vec<(i64, i32)> = self
                .in_flight
                .lock()
                .expect("in-flight lock")
                .iter()
                .map(|(id, job)| (*id, job.attempt))
                .collect();
            if held.is_empty() {
                if self.is_stopping() {
                    return;
                }
                continue;
            }
            let mut kept = std::collections::HashSet::new();
            let mut failed = false;
            for chunk in held.chunks(5_000) {
                match jobs::job_heartbeat(&self.db, chunk, self.config.lease).await {
                    Ok(ids) => kept.extend(ids),
                    Err(error) => {
                        tracing::warn!(error = %error, "extending job leases failed");
                        failed = true;
                    }
                }
            }
            if failed {
                continue;
            }
            let in_flight = self.in_flight.lock().expect("in-flight lock");
            for (id, attempt) in held {
                if !kept.contains(&id)
                    && let Some(job) = in_flight.get(&id)
                    && job.attempt == attempt
                {
                    tracing::warn!(job = id, "the job's lease was lost; stopping it");
                    job.lost.notify_one();
                }
            }
        }
    }

    /// Wakes workers when any instance enqueues (PostgreSQL LISTEN); polling covers gaps.
    async fn listen(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        let mut pause = Duration::from_millis(100);
        while !self.is_stopping() {
            let mut listener = match jobs::job_listener(&self.db).await {
                Ok(Some(listener)) => listener,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(error = %error, "listening for enqueues failed; polling meanwhile");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopping.changed() => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            pause = Duration::from_millis(100);
            loop {
                tokio::select! {
                    notified = listener.recv() => match notified {
                        Ok(queue) => self.wake(&queue),
                        Err(error) => {
                            tracing::warn!(error = %error, "the enqueue listener failed");
                            break;
                        }
                    },
                    _ = stopping.changed() => return,
                }
            }
        }
    }

    /// Leader duties, once a second while this instance holds the lease: rescue expired
    /// leases and enqueue due cron ticks.
    async fn lead(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        // Leadership is held like a job lease (bounded: a dead leader is replaced within 10 s).
        let lease = self.config.lease.clamp(Duration::from_secs(1), Duration::from_secs(10));
        let entries: Vec<(Arc<JobKind>, keel_spec::croner::Cron)> = self
            .schema
            .app
            .jobs
            .kinds
            .iter()
            .filter_map(|kind| {
                let cron = kind.cron.as_ref()?;
                keel_spec::parse_cron(&cron.schedule)
                    .ok()
                    .map(|c| (Arc::new(kind.clone()), c))
            })
            .collect();
        let mut last_ticks: HashMap<String, Option<chrono::DateTime<chrono::Utc>>> = HashMap::new();
        while !self.is_stopping() {
            match jobs::leader_acquire(&self.db, "keel", &self.owner, lease).await {
                Ok(leading) => {
                    if leading != self.leading.swap(leading, Ordering::Relaxed) {
                        tracing::info!(owner = %self.owner, leading, "job leadership changed");
                        last_ticks.clear();
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "the leader election failed");
                    self.leading.store(false, Ordering::Relaxed);
                }
            }
            let mut next_wake = Duration::from_secs(1);
            if self.is_leader() {
                self.rescue().await;
                match self.schedule(&entries, &mut last_ticks).await {
                    Ok(until_next) => next_wake = next_wake.min(until_next),
                    Err(error) => tracing::warn!(error = %error, "scheduling cron jobs failed"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(next_wake.max(Duration::from_millis(20))) => {}
                _ = stopping.changed() => {}
            }
        }
        if self.leading.swap(false, Ordering::Relaxed) {
            let _ = jobs::leader_resign(&self.db, "keel", &self.owner).await;
        }
    }

    /// Returns expired leases to their queues (J6).
    pub async fn rescue(&self) {
        loop {
            match jobs::job_rescue(&self.db, 1_000).await {
                Ok(rescued) => {
                    let mut per_queue: HashMap<&str, u64> = HashMap::new();
                    for job in &rescued {
                        *per_queue.entry(job.queue.as_str()).or_default() += 1;
                    }
                    for (queue, count) in per_queue {
                        tracing::warn!(queue, count, "rescued jobs whose lease expired");
                        self.observer.rescued(queue, count);
                        self.wake(queue);
                    }
                    if rescued.len() < 1_000 {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %error, "rescuing expired jobs failed");
                    return;
                }
            }
        }
    }

    /// Enqueues due cron ticks; returns how long until the next tick of any entry.
    async fn schedule(
        &self,
        entries: &[(Arc<JobKind>, keel_spec::croner::Cron)],
        last_ticks: &mut HashMap<String, Option<chrono::DateTime<chrono::Utc>>>,
    ) -> Result<Duration, keel_store::StoreError> {
        if entries.is_empty() {
            return Ok(Duration::from_secs(1));
        }
        let now = jobs::clock_now(&self.db).await?;
        let mut until_next = Duration::from_secs(1);
        for (kind, schedule) in entries {
            let Some(spec) = &kind.cron else { continue };
            let last = match last_ticks.get(&kind.name) {
                Some(last) => *last,
                None => {
                    let last = jobs::cron_last_tick(&self.db, &kind.name).await?;
                    last_ticks.insert(kind.name.clone(), last);
                    last
                }
            };
            let decision = cron::decide(cron::latest_tick(schedule, now), last, now, spec.catch_up);
            let (tick, run) = match decision {
                Decision::Wait => (None, false),
                Decision::Run(tick) => (Some(tick), true),
                Decision::Skip(tick) => (Some(tick), false),
            };
            if let Some(tick) = tick {
                let mut tx = self.db.begin().await?;
                if jobs::cron_claim_tick(&mut tx, &kind.name, tick).await? && run {
                    let mut payload = spec.payload.clone();
                    if let Value::Object(map) = &mut payload {
                        map.insert("tick".into(), Value::String(keel_query::value::format_datetime(&tick)));
                    }
                    let mut job = jobs::NewJob::of_kind(kind, payload, None, None);
                    job.unique_key = Some(format!("cron:{}", tick.timestamp()));
                    jobs::job_insert(&mut tx, &job).await?;
                    tx.commit().await?;
                    tracing::info!(kind = %kind.name, tick = %tick, "enqueued a cron run");
                    self.observer.enqueued(&kind.queue, &kind.name, 1);
                    self.wake(&kind.queue);
                } else {
                    tx.commit().await?;
                }
                last_ticks.insert(kind.name.clone(), Some(tick));
            }
            if let Some(next) = cron::next_tick(schedule, now) {
                let wait = (next - now).to_std().unwrap_or_default();
                until_next = until_next.min(wait);
            }
        }
        Ok(until_next)
    }

    /// Stops claiming, lets in-flight jobs finish within the grace period, hands back the
    /// rest (their attempt not counted), and stops the background tasks.
    pub async fn shutdown(&self) {
        self.stopping.send_replace(true);
        let deadline = Instant::now() + self.config.shutdown_grace;
        while Instant::now() < deadline && !self.in_flight.lock().expect("in-flight lock").is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let remaining: Vec<(i64, i32)> = {
            let in_flight = self.in_flight.lock().expect("in-flight lock");
            for job in in_flight.values() {
                job.lost.notify_one();
            }
            in_flight.iter().map(|(id, job)| (*id, job.attempt)).collect()
        };
        if !remaining.is_empty() {
            match jobs::job_release_many(&self.db, &remaining).await {
                Ok(released) => tracing::warn!(count = released.len(), "handed back unfinished jobs at shutdown"),
                Err(error) => {
                    tracing::error!(error = %error, "handing back unfinished jobs failed; the rescuer will return them")
                }
            }
        }
        if self.leading.swap(false, Ordering::Relaxed) {
            let _ = jobs::leader_resign(&self.db, "keel", &self.owner).await;
        }
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().expect("tasks lock").drain(..).collect();
        for task in tasks {
            task.abort();
        }
    }
}
