//! Error tracking (O6): unexpected errors grouped by fingerprint with counts, first and last
//! seen and a sample request id, listed for the superuser, counted in the metrics, and sent to
//! a Sentry-compatible endpoint (a local server that records what it receives).

use std::sync::{Arc, Mutex};

use keel_testkit::{Backend, TestApp, both, json};
use serde_json::Value;

/// A Sentry-compatible store endpoint on a real socket: it keeps each event with its auth
/// header.
async fn sentry_sink() -> (u16, Arc<Mutex<Vec<(String, Value)>>>) {
    let received: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let kept = received.clone();
    let app = axum::Router::new().route(
        "/api/{project}/store/",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let auth = headers
                    .get("x-sentry-auth")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                kept.lock()
                    .unwrap()
                    .push((auth, serde_json::from_slice(&body).unwrap()));
                axum::Json(json!({"id": "ok"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, received)
}

async fn unexpected_errors_are_grouped_listed_and_forwarded(backend: Backend) {
    let (port, received) = sentry_sink().await;
    let app = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |config| {
        config.errors.sentry_dsn = Some(keel_server::config::Secret(format!(
            "http://testkey@127.0.0.1:{port}/7"
        )));
    })
    .await;
    let (admin_id, admin) = app.signup("admin@example.com").await;
    app.make_superuser(&admin_id).await;
    let (_, member) = app.signup("member@example.com").await;
    app.org(&admin, "acme").await;

    // A table goes missing under the app: every list of it is an unexpected error.
    let mut tx = app.db().begin().await.unwrap();
    tx.execute_script("ALTER TABLE tasks RENAME TO tasks_gone")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut request_ids = vec![];
    for _ in 0..2 {
        let failed = app.get("/api/v1/orgs/acme/tasks", &admin).await;
        assert_eq!(failed.status, 500, "{}", failed.text);
        assert_eq!(failed.code(), "internal");
        assert!(
            !failed.text.contains("tasks_gone"),
            "causes are never sent to the client"
        );
        request_ids.push(failed.header("x-request-id").unwrap().to_string());
    }

    assert_eq!(app.get("/api/v1/admin/errors", &member).await.status, 403);
    let listed = app.get("/api/v1/admin/errors", &admin).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let items = listed.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "one fingerprint: {}", listed.text);
    let group = &items[0];
    assert_eq!(group["count"], 2);
    assert_eq!(group["kind"], "error");
    assert_eq!(group["route"], "/api/v1/orgs/{org}/{collection}");
    assert!(group["message"].as_str().unwrap().contains("tasks"), "{group}");
    assert_eq!(group["sample_request_id"], request_ids[1].as_str());
    assert!(group["first_seen"].as_str().unwrap() <= group["last_seen"].as_str().unwrap());
    let fingerprint = group["fingerprint"].as_str().unwrap().to_string();

    // A third one later adds to the same group.
    app.get("/api/v1/orgs/acme/tasks", &admin).await;
    let listed = app.get("/api/v1/admin/errors?limit=10", &admin).await;
    assert_eq!(listed.body["items"][0]["count"], 3);
    assert_eq!(listed.body["items"][0]["fingerprint"], fingerprint.as_str());

    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(metrics.contains("keel_unexpected_errors_total 3"), "{metrics}");

    // Forwarded once per flush, with the count so far.
    let events = received.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "{events:?}");
    let (auth, event) = &events[0];
    assert!(
        auth.contains("sentry_key=testkey") && auth.contains("sentry_version=7"),
        "{auth}"
    );
    assert_eq!(event["fingerprint"], json!([fingerprint]));
    assert_eq!(event["level"], "error");
    assert_eq!(event["tags"]["route"], "/api/v1/orgs/{org}/{collection}");
    assert_eq!(event["tags"]["request_id"], request_ids[1].as_str());
    assert_eq!(event["extra"]["count"], 2);
    assert_eq!(events[1].1["extra"]["count"], 1);
    assert_eq!(event["event_id"].as_str().unwrap().len(), 32);
}

both!(unexpected_errors_are_grouped_listed_and_forwarded);
