//! Built-in handlers against real peers, on both backends: webhooks to a local HTTP server
//! (retried on 5xx, dead on a refusal), a feed written into collections (created, then
//! updated by its key, bad rows reported), and email through a real SMTP server (aiosmtpd).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use keel_store::jobs::JobState;
use keel_testkit::{Backend, SmtpSink, TestApp, both};
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Peer {
    calls: Arc<AtomicUsize>,
    received: Arc<std::sync::Mutex<Vec<(HeaderMap, String)>>>,
}

/// A local HTTP server: `/hook` fails once with 503 then accepts; `/refuse` answers 400;
/// `/feed` serves prices that change on the second call.
async fn peer() -> (String, Peer) {
    let peer = Peer::default();
    let router = axum::Router::new()
        .route(
            "/hook",
            post(
                |State(peer): State<Peer>, headers: HeaderMap, body: String| async move {
                    peer.received.lock().unwrap().push((headers, body));
                    if peer.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "busy"})))
                    } else {
                        (StatusCode::OK, Json(json!({"ok": true})))
                    }
                },
            ),
        )
        .route(
            "/refuse",
            post(|| async { (StatusCode::BAD_REQUEST, "no such customer") }),
        )
        .route(
            "/feed",
            get(|State(peer): State<Peer>| async move {
                let round = peer.calls.fetch_add(1, Ordering::SeqCst);
                let sword = if round == 0 { 10.5 } else { 12.0 };
                Json(json!([
                    {"item": "sword", "price": sword},
                    {"item": "shield", "price": 5},
                    {"item": "broken", "price": "not a number"},
                ]))
            }),
        )
        .with_state(peer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{address}"), peer)
}

fn spec(base: &str, smtp_port: u16) -> String {
    format!(
        r#"
[app]
name = "handlers"

[roles]
order = ["owner", "admin", "member"]

[jobs.hook]
handler = "http"
url = "{base}/hook"
body = '{{"reservation": "{{{{ payload.record.title }}}}", "job": {{{{ job.id }}}}}}'
headers = {{ "x-org" = "{{{{ org }}}}" }}
attempts = 3
backoff = "10ms"

[jobs.refused]
handler = "http"
url = "{base}/refuse"
attempts = 3
backoff = "10ms"
enqueue_role = "member"

[jobs.poll_prices]
handler = "http"
method = "GET"
url = "{base}/feed"
into = "prices"
key = "item"

[jobs.org_quotes]
handler = "http"
method = "GET"
url = "{base}/feed"
into = "quotes"
map = {{ item = "label", price = "price" }}
enqueue_role = "admin"

[jobs.confirmation]
handler = "email"
to = "{{{{ payload.record.email }}}}"
subject = "Reservation: {{{{ payload.record.title }}}}"
text = "Hello, your reservation of {{{{ payload.record.title }}}} is confirmed."
html = "<p>Your reservation of <b>{{{{ payload.record.title }}}}</b> is confirmed.</p>"
attempts = 2
backoff = "10ms"

[collections.reservations]
fields.title = {{ type = "text", required = true }}
fields.email = {{ type = "text", required = true }}
jobs.on_create = ["hook", "confirmation"]

[collections.prices]
global = true
fields.item = {{ type = "text", required = true, unique = true }}
fields.price = {{ type = "number", required = true }}

[collections.quotes]
fields.label = {{ type = "text", required = true }}
fields.price = {{ type = "number", required = true }}
"#
    ) + &format!("# smtp {smtp_port}\n")
}

async fn spawn(backend: Backend, base: &str, smtp_port: u16) -> TestApp {
    let app = TestApp::spawn_with(backend, &spec(base, smtp_port), |config| {
        config.jobs.poll_interval_ms = 50;
        config.smtp.host = Some("127.0.0.1".into());
        config.smtp.port = smtp_port;
        config.smtp.tls = "none".into();
        config.smtp.from = "Keel <keel@example.com>".into();
    })
    .await;
    app.state.jobs.start();
    app
}

async fn jobs_of(app: &TestApp, token: &str, kind: &str) -> Vec<Value> {
    let list = app.get(&format!("/api/v1/admin/jobs?kind={kind}"), token).await;
    list.body["items"].as_array().cloned().unwrap_or_default()
}

async fn webhooks_retry_server_errors_and_stop_on_refusals(backend: Backend) {
    let (base, peer) = peer().await;
    let smtp = SmtpSink::start();
    let app = spawn(backend, &base, smtp.port).await;
    let (owner_id, owner) = app.signup("owner@example.com").await;
    let org = app.org(&owner, "acme").await;
    app.make_superuser(&owner_id).await;
    app.create(
        "/api/v1/orgs/acme/reservations",
        &owner,
        json!({"title": "Tennis court", "email": "ann@example.com"}),
    )
    .await;
    let hook = jobs_of(&app, &owner, "hook").await;
    let id = hook[0]["id"].as_i64().unwrap();
    let done = app.wait_job(id, JobState::Completed, 10).await;
    assert_eq!(done.attempt, 2, "the 503 was retried");
    assert_eq!(done.result.unwrap()["body"], json!({"ok": true}));
    assert!(
        done.errors[0]["error"].as_str().unwrap().contains("503"),
        "{:?}",
        done.errors
    );
    let received = peer.received.lock().unwrap().clone();
    let (headers, body) = &received[1];
    assert_eq!(
        serde_json::from_str::<Value>(body).unwrap(),
        json!({"reservation": "Tennis court", "job": id})
    );
    assert_eq!(headers["x-org"], org.as_str());
    assert_eq!(headers["x-keel-attempt"], "2");

    let refused = app
        .post("/api/v1/orgs/acme/jobs", &owner, json!({"kind": "refused"}))
        .await;
    let dead = app
        .wait_job(refused.body["id"].as_i64().unwrap(), JobState::Dead, 10)
        .await;
    assert_eq!(dead.attempt, 1, "a 400 is not retried");
    assert!(dead.errors[0]["error"].as_str().unwrap().contains("no such customer"));
    app.state.jobs.shutdown().await;
}

async fn a_feed_is_written_into_collections(backend: Backend) {
    let (base, peer) = peer().await;
    let smtp = SmtpSink::start();
    let app = spawn(backend, &base, smtp.port).await;
    let (owner_id, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.make_superuser(&owner_id).await;
    for round in 0..2 {
        let job = app
            .post("/api/v1/admin/jobs", &owner, json!({"kind": "poll_prices"}))
            .await;
        let done = app
            .wait_job(job.body["id"].as_i64().unwrap(), JobState::Completed, 10)
            .await;
        let result = done.result.unwrap();
        let (created, updated) = if round == 0 { (2, 0) } else { (0, 2) };
        assert_eq!(
            (result["created"].as_u64(), result["updated"].as_u64()),
            (Some(created), Some(updated)),
            "{result}"
        );
        assert_eq!(result["rejected"][0]["index"], 2, "{result}");
        assert_eq!(result["rejected"][0]["errors"][0]["field"], "price", "{result}");
    }
    assert_eq!(peer.calls.load(Ordering::SeqCst), 2);
    let prices = app.get("/api/v1/global/prices?sort=item", &owner).await;
    let items = prices.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", prices.text);
    assert_eq!(
        (items[1]["item"].as_str(), items[1]["price"].as_f64()),
        (Some("sword"), Some(12.0))
    );
    assert_eq!(items[1]["version"], 2, "updated in place by its key");

    // Into a tenant collection: the job's org, and only it.
    let quotes = app
        .post("/api/v1/orgs/acme/jobs", &owner, json!({"kind": "org_quotes"}))
        .await;
    app.wait_job(quotes.body["id"].as_i64().unwrap(), JobState::Completed, 10)
        .await;
    assert_eq!(
        app.get("/api/v1/orgs/acme/quotes", &owner).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (_, other) = app.signup("other@example.com").await;
    app.org(&other, "other").await;
    assert!(
        app.get("/api/v1/orgs/other/quotes", &other).await.body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Without an org it cannot know where to write: dead at once, saying why.
    let orphan = app
        .post("/api/v1/admin/jobs", &owner, json!({"kind": "org_quotes"}))
        .await;
    let dead = app
        .wait_job(orphan.body["id"].as_i64().unwrap(), JobState::Dead, 10)
        .await;
    assert!(dead.errors[0]["error"].as_str().unwrap().contains("has no org"));
    app.state.jobs.shutdown().await;
}

async fn email_goes_through_a_real_smtp_server(backend: Backend) {
    let (base, _peer) = peer().await;
    let smtp = SmtpSink::start();
    let app = spawn(backend, &base, smtp.port).await;
    let (owner_id, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.make_superuser(&owner_id).await;
    app.create(
        "/api/v1/orgs/acme/reservations",
        &owner,
        json!({"title": "Pool <Saturday>", "email": "ann@example.com"}),
    )
    .await;
    let id = jobs_of(&app, &owner, "confirmation").await[0]["id"].as_i64().unwrap();
    let done = app.wait_job(id, JobState::Completed, 15).await;
    assert_eq!(done.result.unwrap()["to"], json!(["ann@example.com"]));
    // The owner's sign-up sent its verification email too; this test is about the other one.
    let messages: Vec<String> = smtp
        .messages()
        .into_iter()
        .filter(|m| m.contains("To: ann@example.com"))
        .collect();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert!(message.contains("Subject: Reservation: Pool <Saturday>"), "{message}");
    assert!(
        message.contains("Pool &lt;Saturday&gt;"),
        "the HTML part is escaped: {message}"
    );
    assert!(message.contains(&format!("keel-job-{id}@keel")), "{message}");

    // With the server gone, the job is retried, then dead with the reason.
    drop(smtp);
    app.create(
        "/api/v1/orgs/acme/reservations",
        &owner,
        json!({"title": "Gym", "email": "bob@example.com"}),
    )
    .await;
    let second = jobs_of(&app, &owner, "confirmation").await[0]["id"].as_i64().unwrap();
    let dead = app.wait_job(second, JobState::Dead, 30).await;
    assert_eq!(dead.attempt, 2);
    assert!(
        dead.errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("sending to bob@example.com failed"),
        "{:?}",
        dead.errors
    );
    app.state.jobs.shutdown().await;
}

both!(
    webhooks_retry_server_errors_and_stop_on_refusals,
    a_feed_is_written_into_collections,
    email_goes_through_a_real_smtp_server,
);
