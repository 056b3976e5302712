//! The job runtime through the API, on both backends: enqueue and status, jobs enqueued by a
//! record write, retries into dead letters and back, timeouts that kill a process group,
//! per-key limits, pause, external workers (a Python worker, fencing after a rescue), cron
//! across two instances, and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keel_jobs::{HandlerFn, JobFailure};
use keel_store::jobs::JobState;
use keel_testkit::{Backend, TestApp, both};
use serde_json::{Value, json};

fn spec(dir: &std::path::Path) -> String {
    format!(
        r#"
[app]
name = "jobsapp"

[roles]
order = ["owner", "admin", "member", "viewer"]

[queues.pdf]
concurrency = 6
per_key = 2
keep_completed = 100
keep_failed = 500

[queues.ext]
concurrency = 0

[jobs.render]
queue = "pdf"
attempts = 3
backoff = "100ms"
timeout = "5s"
concurrency_key = "user"
enqueue_role = "member"

[jobs.flaky]
attempts = 2
backoff = "10ms"
enqueue_role = "member"

[jobs.hung]
handler = "command"
command = ["sh", "-c", "sleep 30 & echo $! > {pid}; wait"]
timeout = "300ms"
attempts = 1
enqueue_role = "member"

[jobs.confirm]
handler = "noop"

[jobs.convert]
queue = "ext"
handler = "external"
attempts = 3
backoff = "10ms"
enqueue_role = "member"

[jobs.tick]
handler = "noop"
cron = "* * * * * *"

[jobs.greedy]
handler = "command"
command = ["python3", "-c", "x = bytearray(512 * 1024 * 1024); print(len(x))"]
memory = "256MB"
attempts = 1
enqueue_role = "member"

[jobs.spinner]
handler = "command"
command = ["sh", "-c", "while :; do :; done"]
cpu = "1s"
timeout = "20s"
attempts = 1
enqueue_role = "member"

[queues.tiny]
keep_completed = 1

[queues.narrow]
concurrency = 1

[jobs.slowpoke]
queue = "narrow"
enqueue_role = "member"

[jobs.small]
queue = "tiny"
enqueue_role = "member"

[collections.reservations]
fields.title = {{ type = "text", required = true }}
jobs.on_create = ["confirm"]
"#,
        pid = dir.join("hung.pid").display()
    )
}

async fn spawn(backend: Backend) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_with(backend, &spec(dir.path()), |config| {
        config.jobs.lease_seconds = 2;
        config.jobs.poll_interval_ms = 50;
        config.jobs.shutdown_grace_seconds = 1;
    })
    .await;
    (app, dir)
}

fn handler(f: impl Fn(Value) -> Result<Option<Value>, JobFailure> + Send + Sync + 'static) -> HandlerFn {
    let f = Arc::new(f);
    Arc::new(move |context| {
        let f = f.clone();
        Box::pin(async move { f(context.payload_value()) })
    })
}

async fn enqueue(app: &TestApp, token: &str, org: &str, body: Value) -> i64 {
    let response = app.post(&format!("/api/v1/orgs/{org}/jobs"), token, body).await;
    assert_eq!(response.status, 201, "{}", response.text);
    response.body["id"].as_i64().unwrap()
}

async fn enqueue_and_poll_status(backend: Backend) {
    let (app, _dir) = spawn(backend).await;
    app.state.jobs.register(
        "render",
        handler(|payload| Ok(Some(json!({"pages": payload["pages"]})))),
    );
    app.state.jobs.start();
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let (_, member) = app.member(&owner, "acme", "member@example.com", "member").await;
    let (_, viewer) = app.member(&owner, "acme", "viewer@example.com", "viewer").await;

    let id = enqueue(
        &app,
        &member,
        "acme",
        json!({"kind": "render", "payload": {"pages": 3}}),
    )
    .await;
    let done = app.wait_job(id, JobState::Completed, 10).await;
    assert_eq!(done.result, Some(json!({"pages": 3})));
    assert_eq!(done.attempt, 1);
    let status = app.get(&format!("/api/v1/jobs/{id}"), &member).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.body["state"], "completed");
    assert_eq!(status.body["result"]["pages"], 3);
    // The org's managers see it too; other members and strangers do not.
    assert_eq!(app.get(&format!("/api/v1/jobs/{id}"), &owner).await.status, 200);
    assert_eq!(app.get(&format!("/api/v1/jobs/{id}"), &viewer).await.status, 404);
    let (_, stranger) = app.signup("stranger@example.com").await;
    assert_eq!(app.get(&format!("/api/v1/jobs/{id}"), &stranger).await.status, 404);
    assert_eq!(app.get("/api/v1/jobs/not-a-number", &member).await.status, 404);

    let refused = app
        .post("/api/v1/orgs/acme/jobs", &viewer, json!({"kind": "render"}))
        .await;
    assert_eq!((refused.status.as_u16(), refused.code()), (403, "job_not_enqueueable"));
    let unknown = app
        .post("/api/v1/orgs/acme/jobs", &member, json!({"kind": "nope"}))
        .await;
    assert_eq!((unknown.status.as_u16(), unknown.code()), (400, "unknown_job_kind"));
    let not_allowed = app
        .post("/api/v1/orgs/acme/jobs", &member, json!({"kind": "confirm"}))
        .await;
    assert_eq!(
        not_allowed.code(),
        "job_not_enqueueable",
        "kinds without enqueue_role are not for the API"
    );
    let bad = app
        .post(
            "/api/v1/orgs/acme/jobs",
            &member,
            json!({"kind": "render", "payload": [1]}),
        )
        .await;
    assert_eq!(bad.code(), "invalid_json");
    let extra = app
        .post(
            "/api/v1/orgs/acme/jobs",
            &member,
            json!({"kind": "render", "surprise": 1}),
        )
        .await;
    assert_eq!(extra.code(), "invalid_json");

    // A unique key returns the waiting job instead of a second one.
    let delayed = json!({"kind": "render", "unique_key": "schedule-7", "delay_ms": 60_000});
    let first = app.post("/api/v1/orgs/acme/jobs", &member, delayed.clone()).await;
    assert_eq!(
        (first.status.as_u16(), first.body["state"].as_str()),
        (201, Some("scheduled"))
    );
    let second = app.post("/api/v1/orgs/acme/jobs", &member, delayed).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body["duplicate"], true);
    assert_eq!(second.body["id"], first.body["id"]);

    let list = app.get("/api/v1/orgs/acme/jobs?state=completed", &owner).await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.get("/api/v1/orgs/acme/jobs", &member).await.status, 403);
    let cancelled = app
        .post(&format!("/api/v1/jobs/{}/cancel", first.body["id"]), &member, json!({}))
        .await;
    assert_eq!(cancelled.body["state"], "cancelled");
    let again = app
        .post(&format!("/api/v1/jobs/{}/cancel", first.body["id"]), &member, json!({}))
        .await;
    assert_eq!((again.status.as_u16(), again.code()), (409, "job_state_conflict"));
    app.state.jobs.shutdown().await;
}

async fn a_record_write_enqueues_in_its_transaction(backend: Backend) {
    let (app, _dir) = spawn(backend).await;
    let (owner_id, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.make_superuser(&owner_id).await;
    let record = app
        .create(
            "/api/v1/orgs/acme/reservations",
            &owner,
            json!({"title": "Pool, Saturday"}),
        )
        .await;
    // A write that fails enqueues nothing.
    let invalid = app.post("/api/v1/orgs/acme/reservations", &owner, json!({})).await;
    assert_eq!(invalid.status, 400);
    let list = app.get("/api/v1/admin/jobs?kind=confirm", &owner).await;
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", list.text);
    assert_eq!(items[0]["payload"]["id"], record.as_str());
    assert_eq!(items[0]["payload"]["action"], "create");
    assert_eq!(items[0]["payload"]["record"]["title"], "Pool, Saturday");
    assert_eq!(items[0]["state"], "available");
    app.state.jobs.start();
    app.wait_job(items[0]["id"].as_i64().unwrap(), JobState::Completed, 10)
        .await;
    app.state.jobs.shutdown().await;
}

async fn failures_retry_then_die_and_can_be_retried(backend: Backend) {
    let (app, _dir) = spawn(backend).await;
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = failing.clone();
    app.state.jobs.register(
        "flaky",
        handler(move |_| {
            if flag.load(Ordering::SeqCst) {
                Err(JobFailure::retry("the printer is on fire"))
            } else {
                Ok(None)
            }
        }),
    );
    app.state.jobs.start();
    let (owner_id, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.make_superuser(&owner_id).await;
    let id = enqueue(&app, &owner, "acme", json!({"kind": "flaky"})).await;
    let dead = app.wait_job(id, JobState::Dead, 10).await;
    assert_eq!(dead.attempt, 2);
    let errors = dead.errors.as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[1]["error"], "the printer is on fire");
    let queues = app.get("/api/v1/admin/queues", &owner).await;
    let default = queues.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "default")
        .unwrap()
        .clone();
    assert_eq!(default["depth"]["dead"], 1, "{default}");

    failing.store(false, Ordering::SeqCst);
    let retried = app
        .post(&format!("/api/v1/admin/jobs/{id}/retry"), &owner, json!({}))
        .await;
    assert_eq!(retried.status, 200, "{}", retried.text);
    let done = app.wait_job(id, JobState::Completed, 10).await;
    assert_eq!(done.attempt, 3);
    assert_eq!(
        app.post(&format!("/api/v1/admin/jobs/{id}/retry"), &owner, json!({}))
            .await
            .code(),
        "job_state_conflict"
    );
    let (_, member) = app.member(&owner, "acme", "m@example.com", "member").await;
    assert_eq!(app.get("/api/v1/admin/queues", &member).await.status, 403);
    let discard = app.delete(&format!("/api/v1/admin/jobs/{id}"), &owner).await;
    assert_eq!(discard.status, 204);
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains(r#"keel_jobs_finished_total{queue="default",kind="flaky",outcome="dead"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("keel_jobs_queue_wait_seconds"), "{metrics}");
    assert!(
        metrics.contains(r#"keel_jobs_depth{queue="pdf",state="dead"} 0"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("keel_jobs_oldest_available_seconds{queue=\"pdf\"} 0"),
        "{metrics}"
    );
    app.state.jobs.shutdown().await;
}

async fn a_hung_command_is_killed_at_its_timeout(backend: Backend) {
    let (app, dir) = spawn(backend).await;
    app.state.jobs.start();
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let id = enqueue(&app, &owner, "acme", json!({"kind": "hung"})).await;
    let dead = app.wait_job(id, JobState::Dead, 10).await;
    assert!(
        dead.errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 300 ms"),
        "{:?}",
        dead.errors
    );
    // The shell's background `sleep` was in the job's process group: it is gone too.
    let pid = std::fs::read_to_string(dir.path().join("hung.pid")).unwrap();
    // Gone, or a zombie waiting to be reaped by whoever adopted it: either way, not running.
    let running = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit(')')
                    .next()
                    .map(|rest| rest.trim_start().starts_with(|c| c != 'Z'))
            })
            .unwrap_or(false)
    };
    let mut alive = true;
    for _ in 0..100 {
        alive = running(pid.trim());
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive, "the grandchild {pid} survived the timeout");
    app.state.jobs.shutdown().await;
}

async fn per_key_concurrency_and_pause(backend: Backend) {
    let (app, _dir) = spawn(backend).await;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    app.state.jobs.register(
        "render",
        Arc::new(move |_context| {
            let (r, p) = (r.clone(), p.clone());
            Box::pin(async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(80)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(None)
            })
        }),
    );
    let (owner_id, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.make_superuser(&owner_id).await;
    let paused = app.post("/api/v1/admin/queues/pdf/pause", &owner, json!({})).await;
    assert_eq!(paused.body["paused"], true);
    app.state.jobs.start();
    let mut ids = vec![];
    for _ in 0..6 {
        ids.push(enqueue(&app, &owner, "acme", json!({"kind": "render"})).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = jobs_in(&app, &owner, "pdf").await;
    assert_eq!(
        waiting["depth"]["available"], 6,
        "a paused queue runs nothing: {waiting}"
    );
    assert_eq!(waiting["paused"], true);
    assert!(waiting["oldest_available_seconds"].as_f64().unwrap() > 0.1, "{waiting}");
    app.post("/api/v1/admin/queues/pdf/resume", &owner, json!({})).await;
    for id in ids {
        app.wait_job(id, JobState::Completed, 10).await;
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2, "at most 2 running jobs per user");
    app.state.jobs.shutdown().await;
}

async fn jobs_in(app: &TestApp, token: &str, queue: &str) -> Value {
    let queues = app.get("/api/v1/admin/queues", token).await;
    queues.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == queue)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn worker_key(app: &TestApp, token: &str) -> String {
    let created = app
        .post(
            "/api/v1/admin/worker_keys",
            token,
            json!({"name": "converters", "queues": ["ext"]}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    created.body["token"].as_str().unwrap().to_string()
}

async fn a_python_worker_drives_a_job(backend: Backend) {
    let (app, _dir) = spawn(backend).await;
    app.state.jobs.start();
    let (owner_id, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.make_superuser(&owner_id).await;
    let token = worker_key(&app, &owner).await;
    let base = app.serve().await;
    let id = enqueue(
        &app,
        &owner,
        "acme",
        json!({"kind": "convert", "payload": {"text": "one two three"}}),
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/workers/worker.py");
    let output = tokio::process::Command::new("python3")
        .args([
            script,
            "--url",
            &base,
            "--token",
            &token,
            "--queue",
            "ext",
            "--once",
            "--wait-ms",
            "5000",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let done = app.wait_job(id, JobState::Completed, 5).await;
    assert_eq!(done.result, Some(json!({"words": 3, "worker": "python"})), "{stdout}");
    assert!(done.lease_owner.is_none());

    // Without a worker key, or for another queue, the protocol refuses.
    let anonymous = app
        .post("/api/v1/workers/claim", &owner, json!({"queue": "ext", "worker": "x"}))
        .await;
    assert_eq!(anonymous.status, 401);
    let other = app
        .post("/api/v1/workers/claim", &token, json!({"queue": "pdf", "worker": "x"}))
        .await;
    assert_eq!(other.status, 403);
    app.state.jobs.shutdown().await;
}

async fn a_rescued_jobs_first_worker_cannot_complete_it(backend: Backend) {
    let (app, _dir) = spawn(backend).await;
    app.state.jobs.start();
    let (owner_id, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.make_superuser(&owner_id).await;
    let token = worker_key(&app, &owner).await;
    let id = enqueue(&app, &owner, "acme", json!({"kind": "convert"})).await;
    let claim = json!({"queue": "ext", "worker": "a", "lease_ms": 1000});
    let first = app.post("/api/v1/workers/claim", &token, claim).await;
    assert_eq!(first.body["items"][0]["id"], id, "{}", first.text);
    assert_eq!(first.body["items"][0]["attempt"], 1);
    // Worker a stalls; its lease runs out, the leader rescues the job, worker b takes it.
    let second = app
        .post(
            "/api/v1/workers/claim",
            &token,
            json!({"queue": "ext", "worker": "b", "wait_ms": 8000}),
        )
        .await;
    assert_eq!(second.body["items"][0]["id"], id, "{}", second.text);
    assert_eq!(second.body["items"][0]["attempt"], 2);
    let late = app
        .post(
            &format!("/api/v1/workers/jobs/{id}/complete"),
            &token,
            json!({"attempt": 1, "result": {"by": "a"}}),
        )
        .await;
    assert_eq!((late.status.as_u16(), late.code()), (409, "lease_lost"));
    let beat = app
        .post(
            &format!("/api/v1/workers/jobs/{id}/heartbeat"),
            &token,
            json!({"attempt": 1}),
        )
        .await;
    assert_eq!(beat.code(), "lease_lost");
    let fresh = app
        .post(
            &format!("/api/v1/workers/jobs/{id}/complete"),
            &token,
            json!({"attempt": 2, "result": {"by": "b"}}),
        )
        .await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    let job = app.wait_job(id, JobState::Completed, 1).await;
    assert_eq!(job.result, Some(json!({"by": "b"})));
    assert_eq!(job.errors.as_array().unwrap().len(), 1, "the rescue is in the history");
    app.state.jobs.shutdown().await;
}

async fn shutdown_hands_back_unfinished_jobs(backend: Backend) {
    let (app, _dir) = spawn(backend).await;
    app.state.jobs.register(
        "render",
        Arc::new(|_context| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(None)
            })
        }),
    );
    app.state.jobs.start();
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let id = enqueue(&app, &owner, "acme", json!({"kind": "render"})).await;
    app.wait_job(id, JobState::Running, 5).await;
    let started = std::time::Instant::now();
    app.state.jobs.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the grace period bounds shutdown"
    );
    let job = app.wait_job(id, JobState::Available, 1).await;
    assert_eq!(job.attempt, 1);
    assert_eq!(job.max_attempts, 4, "a handed-back attempt does not count");
    assert!(job.lease_owner.is_none());
}

async fn two_instances_run_each_cron_tick_once(backend: Backend) {
    let (app, _dir) = spawn(backend).await;
    let sibling = app.sibling().await;
    app.state.jobs.start();
    sibling.state.jobs.start();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let leaders = [app.state.jobs.is_leader(), sibling.state.jobs.is_leader()];
    assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "one leader: {leaders:?}");
    let filter = keel_store::jobs::JobFilter {
        kind: Some("tick".into()),
        limit: 100,
        ..Default::default()
    };
    let ticks = keel_store::jobs::job_list(app.db(), &filter).await.unwrap();
    let mut seen: Vec<String> = ticks
        .iter()
        .map(|job| job.payload["tick"].as_str().unwrap().to_string())
        .collect();
    let runs = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), runs, "a tick ran twice: {seen:?}");
    assert!((2..=5).contains(&runs), "one run per second for 3.5 s: {runs}");
    // The leader steps down at shutdown; the other instance takes over at once.
    let (leader, follower) = if app.state.jobs.is_leader() {
        (&app, &sibling)
    } else {
        (&sibling, &app)
    };
    leader.state.jobs.shutdown().await;
    // The follower's next leadership attempt (every second) finds the lease released; a
    // loaded machine may need a few more.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !follower.state.jobs.is_leader() {
        assert!(std::time::Instant::now() < deadline, "the follower did not take over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    follower.state.jobs.shutdown().await;
}

async fn commands_are_held_to_their_memory_and_cpu_limits(backend: Backend) {
    let (app, _dir) = spawn(backend).await;
    app.state.jobs.start();
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let greedy = enqueue(&app, &owner, "acme", json!({"kind": "greedy"})).await;
    let spinner = enqueue(&app, &owner, "acme", json!({"kind": "spinner"})).await;
    let dead = app.wait_job(greedy, JobState::Dead, 20).await;
    assert!(
        dead.errors[0]["error"].as_str().unwrap().contains("MemoryError"),
        "{:?}",
        dead.errors
    );
    let dead = app.wait_job(spinner, JobState::Dead, 20).await;
    let error = dead.errors[0]["error"].as_str().unwrap();
    assert!(error.contains("killed by signal"), "{error}");
    assert!(
        !error.contains("timed out"),
        "the CPU limit stopped it, not the timeout: {error}"
    );
    app.state.jobs.shutdown().await;
}

async fn the_cleanup_job_applies_each_queues_retention(backend: Backend) {
    let (app, _dir) = spawn(backend).await;
    app.state.jobs.start();
    let (owner_id, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.make_superuser(&owner_id).await;
    for _ in 0..3 {
        let id = enqueue(&app, &owner, "acme", json!({"kind": "small"})).await;
        app.wait_job(id, JobState::Completed, 10).await;
    }
    let cleanup = app
        .post("/api/v1/admin/jobs", &owner, json!({"kind": "keel_cleanup"}))
        .await;
    assert_eq!(cleanup.status, 201, "{}", cleanup.text);
    let done = app
        .wait_job(cleanup.body["id"].as_i64().unwrap(), JobState::Completed, 10)
        .await;
    // The scheduled cleanup (every 5 minutes) may have run first and deleted some of them;
    // either way one completed job is left.
    let deleted = done.result.unwrap()["deleted"]["tiny"].as_i64().unwrap_or(0);
    assert!((0..=2).contains(&deleted), "deleted {deleted}");
    assert_eq!(jobs_in(&app, &owner, "tiny").await["depth"]["completed"], 1);
    app.state.jobs.shutdown().await;
}

async fn saturated_workers_leave_enqueue_answering_and_show_the_backlog(backend: Backend) {
    let (app, _dir) = spawn(backend).await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    app.state.jobs.register(
        "slowpoke",
        Arc::new(move |_context| {
            let gate = gate.clone();
            Box::pin(async move {
                gate.acquire().await.expect("open").forget();
                Ok(None)
            })
        }),
    );
    app.state.jobs.start();
    let (owner_id, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.make_superuser(&owner_id).await;
    let mut ids = vec![];
    for _ in 0..40 {
        ids.push(enqueue(&app, &owner, "acme", json!({"kind": "slowpoke"})).await);
    }
    app.wait_job(ids[0], JobState::Running, 5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let narrow = jobs_in(&app, &owner, "narrow").await;
    assert_eq!(narrow["depth"]["running"], 1, "{narrow}");
    assert_eq!(narrow["depth"]["available"], 39, "{narrow}");
    assert!(narrow["oldest_available_seconds"].as_f64().unwrap() > 0.05, "{narrow}");
    assert_eq!(narrow["running_here"], 1);
    release.add_permits(40);
    for id in ids {
        app.wait_job(id, JobState::Completed, 10).await;
    }
    app.state.jobs.shutdown().await;
}

both!(
    saturated_workers_leave_enqueue_answering_and_show_the_backlog,
    commands_are_held_to_their_memory_and_cpu_limits,
    the_cleanup_job_applies_each_queues_retention,
    two_instances_run_each_cron_tick_once,
    enqueue_and_poll_status,
    a_record_write_enqueues_in_its_transaction,
    failures_retry_then_die_and_can_be_retried,
    a_hung_command_is_killed_at_its_timeout,
    per_key_concurrency_and_pause,
    a_python_worker_drives_a_job,
    a_rescued_jobs_first_worker_cannot_complete_it,
    shutdown_hands_back_unfinished_jobs,
);
