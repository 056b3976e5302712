//! Realtime streams (R1–R3): delivery under rules and filters, rollback, resume and reset,
//! two instances, one rule statement per change for 1,000 subscribers, revocation, a slow
//! consumer, limits and bad input, on both backends.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use keel_testkit::{Backend, TestApp, both};
use serde_json::{Value, json};

const SPEC: &str = r#"
[app]
name = "live"

[roles]
order = ["owner", "admin", "member", "viewer"]

[collections.notes]
fields.title = { type = "text", required = true, max = 100 }
fields.status = { type = "select", values = ["open", "closed", "secret"], default = "open" }
fields.owner = { type = "relation", to = "users" }
fields.points = { type = "integer" }
rules.list = "role >= admin || owner = @user"
rules.view = "role >= admin || owner = @user"
rules.create = "status != 'secret'"
rules.update = "role >= member"

[collections.countries]
global = true
fields.code = { type = "text", required = true, max = 2 }

[jobs.slow]
enqueue_role = "member"
"#;

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
    pub retry: bool,
}

/// An open stream, read event by event.
pub struct Stream {
    body: Body,
    buffer: String,
}

impl Stream {
    /// The next event, skipping heartbeat comments; `None` when the stream ended or nothing
    /// came within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event {
                    event: "message".into(),
                    id: None,
                    data: Value::Null,
                    retry: false,
                };
                let mut data = String::new();
                let mut any = false;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event.event = value.trim().to_string();
                        any = true;
                    } else if let Some(value) = line.strip_prefix("id:") {
                        event.id = Some(value.trim().to_string());
                        any = true;
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                        any = true;
                    } else if line.starts_with("retry:") {
                        event.retry = true;
                    }
                }
                if !any {
                    continue;
                }
                event.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(event);
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await.ok()??.ok()?;
            if let Ok(bytes) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }

    pub async fn next(&mut self) -> Event {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("an event within 10 s")
    }

    /// The next event that is not `ready`.
    pub async fn change(&mut self) -> Event {
        loop {
            let event = self.next().await;
            if event.event != "ready" {
                return event;
            }
        }
    }

    /// Nothing but heartbeats for `wait`.
    pub async fn quiet(&mut self, wait: Duration) -> bool {
        self.next_within(wait).await.is_none()
    }
}

/// Opens a stream; panics unless it answers 200 with `text/event-stream`.
pub async fn open(app: &TestApp, path: &str, token: &str, last_event_id: Option<&str>) -> Stream {
    let response = request(app, path, token, last_event_id).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    assert_eq!(
        response.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    Stream {
        body: response.into_body(),
        buffer: String::new(),
    }
}

async fn request(app: &TestApp, path: &str, token: &str, last_event_id: Option<&str>) -> axum::response::Response {
    let mut builder = Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    if let Some(id) = last_event_id {
        builder = builder.header("last-event-id", id);
    }
    app.send(builder.body(Body::empty()).unwrap()).await
}

/// The error code of a refused stream.
async fn refused(app: &TestApp, path: &str, token: &str, last_event_id: Option<&str>) -> (StatusCode, String) {
    let response = request(app, path, token, last_event_id).await;
    let status = response.status();
    assert_ne!(status, StatusCode::OK, "GET {path} opened a stream");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or("").to_string())
}

struct World {
    app: TestApp,
    owner: String,
    member: String,
    member_id: String,
}

async fn world(backend: Backend, tweak: impl FnOnce(&mut keel_server::Config)) -> World {
    let app = TestApp::spawn_with(backend, SPEC, |config| {
        config.realtime.poll_ms = 100;
        tweak(config);
    })
    .await;
    let (_, owner) = app.signup("owner@live.test").await;
    app.org(&owner, "acme").await;
    let (member_id, member) = app.member(&owner, "acme", "member@live.test", "member").await;
    World {
        app,
        owner,
        member,
        member_id,
    }
}

const NOTES: &str = "/api/v1/orgs/acme/notes";

async fn delivery_rules_filters_and_rollback(backend: Backend) {
    let w = world(backend, |_| {}).await;
    let app = &w.app;
    let mut all = open(app, &format!("{NOTES}/events"), &w.owner, None).await;
    let mut open_only = open(
        app,
        &format!("{NOTES}/events?filter=status%20%3D%20%27open%27&fields=title"),
        &w.owner,
        None,
    )
    .await;
    let mut mine = open(app, &format!("{NOTES}/events"), &w.member, None).await;
    let ready = all.next().await;
    assert_eq!(ready.event, "ready");
    assert!(ready.id.is_some());

    let theirs = app
        .create(NOTES, &w.owner, json!({ "title": "the owner's", "status": "closed" }))
        .await;
    let own = app
        .create(
            NOTES,
            &w.member,
            json!({ "title": "the member's", "owner": w.member_id }),
        )
        .await;
    // A write whose create rule fails after the insert rolls back, change row included.
    let failed = app
        .post(NOTES, &w.member, json!({ "title": "hidden", "status": "secret" }))
        .await;
    assert_eq!(failed.status, StatusCode::FORBIDDEN, "{}", failed.text);

    let first = all.change().await;
    assert_eq!(
        (first.event.as_str(), first.data["id"].as_str()),
        ("created", Some(theirs.as_str()))
    );
    assert_eq!(first.data["record"]["title"], "the owner's");
    let second = all.change().await;
    assert_eq!(second.data["id"].as_str(), Some(own.as_str()));
    let position = |e: &Event| {
        e.id.as_deref()
            .unwrap()
            .parse::<keel_store::changes::Position>()
            .unwrap()
    };
    assert!(position(&first) < position(&second), "event ids follow commit order");

    // The filter and `fields`: only the open note, only its title (and id).
    let event = open_only.change().await;
    assert_eq!(event.data["id"].as_str(), Some(own.as_str()));
    assert_eq!(event.data["record"], json!({ "id": own, "title": "the member's" }));

    // The list rule: the member sees their own note only.
    let event = mine.change().await;
    assert_eq!(event.data["id"].as_str(), Some(own.as_str()));
    assert_eq!(event.data["record"]["owner"].as_str(), Some(w.member_id.as_str()));

    // Updates and deletes, in commit order.
    let updated = app
        .patch(&format!("{NOTES}/{own}"), &w.owner, json!({ "points": 5 }))
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    // (Waiting for the update's event first: a record deleted before its update's event is
    // sent gets only `deleted`, see docs/REALTIME.md.)
    let event = mine.change().await;
    assert_eq!(
        (event.event.as_str(), event.data["record"]["points"].as_i64()),
        ("updated", Some(5))
    );
    assert_eq!(
        app.delete(&format!("{NOTES}/{own}"), &w.owner).await.status,
        StatusCode::NO_CONTENT
    );
    let event = mine.change().await;
    assert_eq!(
        (event.event.as_str(), event.data["id"].as_str()),
        ("deleted", Some(own.as_str()))
    );
    // Nothing of the rolled-back write, nothing else.
    assert!(all.change().await.event == "updated");
    assert!(all.change().await.event == "deleted");
    assert!(all.quiet(Duration::from_millis(300)).await);
    assert!(mine.quiet(Duration::from_millis(100)).await);

    // A record stream: its record's changes only, and its end when it is deleted.
    let note = app.create(NOTES, &w.owner, json!({ "title": "watched" })).await;
    let other = app.create(NOTES, &w.owner, json!({ "title": "other" })).await;
    let mut one = open(app, &format!("{NOTES}/{note}/events?expand=owner"), &w.owner, None).await;
    app.patch(&format!("{NOTES}/{other}"), &w.owner, json!({ "points": 1 }))
        .await;
    app.patch(&format!("{NOTES}/{note}"), &w.owner, json!({ "points": 2 }))
        .await;
    let event = one.change().await;
    assert_eq!(
        (event.data["id"].as_str(), event.data["record"]["points"].as_i64()),
        (Some(note.as_str()), Some(2))
    );
    app.delete(&format!("{NOTES}/{note}"), &w.owner).await;
    assert_eq!(one.change().await.event, "deleted");
    let end = one.change().await;
    assert_eq!(
        (end.event.as_str(), end.data["reason"].as_str()),
        ("end", Some("deleted"))
    );
    assert!(one.next_within(Duration::from_millis(200)).await.is_none());

    // Global collections stream too (the superuser writes them).
    let mut global = open(app, "/api/v1/global/countries/events", &w.member, None).await;
    let (superuser_id, superuser) = app.signup("root@live.test").await;
    app.make_superuser(&superuser_id).await;
    app.create("/api/v1/global/countries", &superuser, json!({ "code": "NZ" }))
        .await;
    let event = global.change().await;
    assert_eq!(
        (event.event.as_str(), event.data["record"]["code"].as_str()),
        ("created", Some("NZ"))
    );
}
both!(delivery_rules_filters_and_rollback);

async fn resume_reset_and_bad_ids(backend: Backend) {
    let w = world(backend, |_| {}).await;
    let app = &w.app;
    let path = format!("{NOTES}/events");
    let mut stream = open(app, &path, &w.owner, None).await;
    let ready = stream.next().await;
    let opened_at = ready.id.clone().unwrap();
    let a = app.create(NOTES, &w.owner, json!({ "title": "a" })).await;
    let first = stream.change().await;
    assert_eq!(first.data["id"].as_str(), Some(a.as_str()));
    drop(stream);
    // Away: two writes; back with the last id seen: both, in order, and nothing twice.
    let b = app.create(NOTES, &w.owner, json!({ "title": "b" })).await;
    let c = app.create(NOTES, &w.owner, json!({ "title": "c" })).await;
    let mut back = open(app, &path, &w.owner, first.id.as_deref()).await;
    assert_eq!(back.change().await.data["id"].as_str(), Some(b.as_str()));
    assert_eq!(back.change().await.data["id"].as_str(), Some(c.as_str()));
    // Live after the catch-up.
    let d = app.create(NOTES, &w.owner, json!({ "title": "d" })).await;
    assert_eq!(back.change().await.data["id"].as_str(), Some(d.as_str()));
    assert!(back.quiet(Duration::from_millis(200)).await);
    // From the `ready` id: everything since the stream first opened.
    let mut again = open(app, &path, &w.owner, Some(&opened_at)).await;
    let ids: Vec<String> = [
        again.change().await,
        again.change().await,
        again.change().await,
        again.change().await,
    ]
    .iter()
    .map(|e| e.data["id"].as_str().unwrap().to_string())
    .collect();
    assert_eq!(ids, [a.clone(), b, c, d]);

    // Past the retention: `reset`, then live.
    keel_store::changes::prune(app.db(), chrono::Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    let mut late = open(app, &path, &w.owner, first.id.as_deref()).await;
    let reset = late.next().await;
    assert_eq!(reset.event, "reset");
    assert_eq!(late.next().await.event, "ready");
    // An id from the future (a restored database) resets too.
    let mut future = open(app, &path, &w.owner, Some("99999999-99999999")).await;
    assert_eq!(future.next().await.event, "reset");

    // Ids Keel never sent: 400 before any event.
    for bad in ["abc", "1-", "-1", "1-2-3", "１-2"] {
        assert_eq!(
            refused(app, &path, &w.owner, Some(bad)).await,
            (StatusCode::BAD_REQUEST, "bad_event_id".to_string()),
            "{bad}"
        );
    }
}
both!(resume_reset_and_bad_ids);

async fn two_instances(backend: Backend) {
    let w = world(backend, |_| {}).await;
    let other = w.app.sibling().await;
    let mut stream = open(&other, &format!("{NOTES}/events"), &w.owner, None).await;
    assert_eq!(stream.next().await.event, "ready");
    let note = w
        .app
        .create(NOTES, &w.owner, json!({ "title": "from the first" }))
        .await;
    let event = stream.change().await;
    assert_eq!(event.data["id"].as_str(), Some(note.as_str()));
    drop(stream);
    // A client that moves to the other instance resumes from its last id.
    let later = w.app.create(NOTES, &w.owner, json!({ "title": "while away" })).await;
    let mut moved = open(&w.app, &format!("{NOTES}/events"), &w.owner, event.id.as_deref()).await;
    assert_eq!(moved.change().await.data["id"].as_str(), Some(later.as_str()));
}
both!(two_instances);

async fn one_rule_statement_per_change_for_1000_subscribers(backend: Backend) {
    let w = world(backend, |config| {
        config.realtime.max_streams_per_user = 2_000;
        config.realtime.max_streams_per_ip = 2_000;
        config.realtime.buffer = 8;
    })
    .await;
    let app = &w.app;
    // 1,000 subscribers of one shape (the list rule, a filter on the title), each with its
    // own filter value: one subscriber row each.
    let mut streams = Vec::with_capacity(1_000);
    for i in 0..1_000 {
        let token = if i % 2 == 0 { &w.owner } else { &w.member };
        let path = format!("{NOTES}/events?filter=title%20%3D%20%27t{i}%27");
        streams.push(open(app, &path, token, None).await);
    }
    assert_eq!(app.state.realtime.streams(), 1_000);
    for i in [2, 3, 5] {
        assert_eq!(streams[i].next().await.event, "ready");
    }
    let before = app.state.realtime.rule_statements();
    let note = app.create(NOTES, &w.owner, json!({ "title": "t2" })).await;
    // Subscriber 2 (the owner's, filter t2) sees it; 3 (the member's, filter t3) does not.
    let event = streams[2].change().await;
    assert_eq!(event.data["id"].as_str(), Some(note.as_str()));
    assert_eq!(
        app.state.realtime.rule_statements() - before,
        1,
        "one statement decided the change for 1,000 subscribers"
    );
    assert!(streams[3].quiet(Duration::from_millis(100)).await);
    // The member's subscriber with the matching filter sees the member's own note only.
    let own = app
        .create(NOTES, &w.member, json!({ "title": "t5", "owner": w.member_id }))
        .await;
    assert_eq!(streams[5].change().await.data["id"].as_str(), Some(own.as_str()));
    assert_eq!(app.state.realtime.rule_statements() - before, 2);
    drop(streams);
    // Closed streams are unregistered.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.state.realtime.streams() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.state.realtime.streams(), 0);
}
both!(one_rule_statement_per_change_for_1000_subscribers);

async fn revocation_ends_streams(backend: Backend) {
    let w = world(backend, |config| config.realtime.recheck_seconds = 1).await;
    let app = &w.app;
    let mut member = open(app, &format!("{NOTES}/events"), &w.member, None).await;
    let (_, viewer) = app.member(&w.owner, "acme", "viewer@live.test", "viewer").await;
    let mut signed_out = open(app, &format!("{NOTES}/events"), &viewer, None).await;
    let removed = app
        .delete(&format!("/api/v1/orgs/acme/members/{}", w.member_id), &w.owner)
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.text);
    let event = member.change().await;
    assert_eq!(
        (event.event.as_str(), event.data["reason"].as_str()),
        ("revoked", Some("membership_removed"))
    );
    assert!(
        member.next_within(Duration::from_millis(200)).await.is_none(),
        "the stream ended"
    );
    let logout = app.post("/api/v1/auth/logout", &viewer, json!({})).await;
    assert!(logout.status.is_success(), "{}", logout.text);
    let event = signed_out.change().await;
    assert_eq!(
        (event.event.as_str(), event.data["reason"].as_str()),
        ("revoked", Some("session_revoked"))
    );
    // A revoked token cannot open a stream again.
    assert_eq!(
        refused(app, &format!("{NOTES}/events"), &viewer, None).await.0,
        StatusCode::UNAUTHORIZED
    );
}
both!(revocation_ends_streams);

async fn slow_consumer_limits_and_shutdown(backend: Backend) {
    let w = world(backend, |config| {
        config.realtime.buffer = 8;
        config.realtime.max_streams_per_user = 2;
    })
    .await;
    let app = &w.app;
    let path = format!("{NOTES}/events");
    let mut slow = open(app, &path, &w.owner, None).await;
    let mut second = open(app, &path, &w.owner, None).await;
    // A third stream for the same user: refused before it opens.
    let (status, code) = refused(app, &path, &w.owner, None).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "too_many_streams")
    );
    // `slow` reads nothing while 20 changes arrive: its buffer of 8 fills, it is cut off.
    // `second` keeps up and gets all 20.
    for i in 0..20 {
        app.create(NOTES, &w.owner, json!({ "title": format!("n{i}") })).await;
        assert_eq!(second.change().await.event, "created");
    }
    let mut got_lost = false;
    for _ in 0..10 {
        match slow.next_within(Duration::from_secs(5)).await {
            Some(event) if event.event == "lost" => {
                assert!(event.retry, "lost says when to reconnect");
                got_lost = true;
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(got_lost, "the slow consumer got `lost`");
    assert!(slow.next_within(Duration::from_millis(200)).await.is_none());
    // Its slot is free again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.state.realtime.streams() > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = open(app, &path, &w.owner, None).await;
    // Shutdown ends every stream with a reconnect hint.
    app.state.realtime.shutdown();
    let event = third.change().await;
    assert_eq!(event.event, "shutdown");
    assert!(event.retry);
    let (status, code) = refused(app, &path, &w.member, None).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "too_many_streams")
    );
}
both!(slow_consumer_limits_and_shutdown);

async fn bad_requests_before_any_event(backend: Backend) {
    let w = world(backend, |_| {}).await;
    let app = &w.app;
    let (_, stranger) = app.signup("stranger@live.test").await;
    app.org(&stranger, "elsewhere").await;
    let note = app.create(NOTES, &w.owner, json!({ "title": "x" })).await;
    let list = app.get(&format!("{NOTES}?filter=nope%20%3D%201"), &w.owner).await;
    let cases: Vec<(String, &str, StatusCode, &str)> = vec![
        (
            format!("{NOTES}/events?filter=nope%20%3D%201"),
            &w.owner,
            list.status,
            list.code(),
        ),
        (
            format!("{NOTES}/events?fields=nope"),
            &w.owner,
            StatusCode::BAD_REQUEST,
            "unknown_field",
        ),
        (
            format!("{NOTES}/events?expand=title"),
            &w.owner,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            format!("{NOTES}/events?sort=title"),
            &w.owner,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/api/v1/orgs/acme/nothing/events".into(),
            &w.owner,
            StatusCode::NOT_FOUND,
            "collection_not_found",
        ),
        (
            "/api/v1/orgs/-/notes/events".into(),
            &w.owner,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            format!("/api/v1/orgs/elsewhere/notes/{note}/events"),
            &stranger,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("{NOTES}/{note}/events"),
            &stranger,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("{NOTES}/not-an-id/events"),
            &w.owner,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            format!("{NOTES}/events"),
            "not-a-token",
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "/api/v1/jobs/1/events".into(),
            &w.owner,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    assert_eq!(list.status, StatusCode::BAD_REQUEST);
    for (path, token, status, code) in cases {
        let got = refused(app, &path, token, None).await;
        assert_eq!(got, (status, code.to_string()), "{path}");
    }
    // A note the member may not see is not found on its record stream.
    assert_eq!(
        refused(app, &format!("{NOTES}/{note}/events"), &w.member, None).await,
        (StatusCode::NOT_FOUND, "not_found".to_string())
    );
    // Turned off: 404 realtime_disabled.
    let off = TestApp::spawn_with(backend, SPEC, |config| config.realtime.enabled = false).await;
    let (_, token) = off.signup("a@live.test").await;
    off.org(&token, "acme").await;
    assert_eq!(
        refused(&off, &format!("{NOTES}/events"), &token, None).await,
        (StatusCode::NOT_FOUND, "realtime_disabled".to_string())
    );
}
both!(bad_requests_before_any_event);

async fn job_streams_follow_state_and_progress(backend: Backend) {
    let w = world(backend, |config| config.realtime.job_poll_ms = 20).await;
    let app = &w.app;
    let handler: keel_jobs::HandlerFn = std::sync::Arc::new(|context| {
        Box::pin(async move {
            for step in 1..=2 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = context.progress(json!({ "step": step })).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(Some(json!({ "pages": 2 })))
        })
    });
    app.state.jobs.register("slow", handler);
    let enqueued = app
        .post("/api/v1/orgs/acme/jobs", &w.member, json!({ "kind": "slow" }))
        .await;
    assert_eq!(enqueued.status, StatusCode::CREATED, "{}", enqueued.text);
    let id = enqueued.body["id"].as_i64().unwrap();
    let path = format!("/api/v1/jobs/{id}/events");
    let mut stream = open(app, &path, &w.member, None).await;
    // The owner (a manager of the org) may follow it too; a viewer may not.
    let mut owner = open(app, &path, &w.owner, None).await;
    let (_, viewer) = app.member(&w.owner, "acme", "viewer@live.test", "viewer").await;
    assert_eq!(
        refused(app, &path, &viewer, None).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    app.state.jobs.start();
    let mut states = vec![];
    let mut steps = vec![];
    let last = loop {
        let event = stream.change().await;
        assert_eq!(event.event, "job", "{event:?}");
        states.push(event.data["state"].as_str().unwrap().to_string());
        if let Some(step) = event.data["progress"]["step"].as_i64() {
            steps.push(step);
        }
        if event.data["state"] == "completed" {
            break event;
        }
    };
    assert_eq!(states.first().map(String::as_str), Some("available"), "{states:?}");
    assert!(states.contains(&"running".to_string()), "{states:?}");
    assert!(steps.contains(&2), "progress seen: {steps:?}");
    assert_eq!(last.id.as_deref(), Some("done"));
    assert_eq!(last.data["result"]["pages"], 2);
    let end = stream.change().await;
    assert_eq!(
        (end.event.as_str(), end.data["reason"].as_str()),
        ("end", Some("completed"))
    );
    assert!(stream.next_within(Duration::from_millis(200)).await.is_none());
    loop {
        let event = owner.change().await;
        if event.event == "end" {
            break;
        }
    }
    // An EventSource reconnects with the final id: 204 stops it. Other ids are refused.
    let again = request(app, &path, &w.member, Some("done")).await;
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        refused(app, &path, &w.member, Some("7-1")).await,
        (StatusCode::BAD_REQUEST, "bad_event_id".into())
    );
    // A job already finished: one event, the final state, then the end.
    let mut late = open(app, &path, &w.member, None).await;
    let event = late.change().await;
    assert_eq!(
        (event.data["state"].as_str(), event.id.as_deref()),
        (Some("completed"), Some("done"))
    );
    assert_eq!(late.change().await.event, "end");
    app.state.jobs.shutdown().await;
}
both!(job_streams_follow_state_and_progress);
