//! Alerts (O4): every built-in rule goes pending, fires and resolves as its condition is made
//! true and false; through the app, real 500s fire the error-rate alert and real slow
//! requests the latency one, a failed backup and a paused queue fire theirs, with webhook and
//! email notifications, `GET /api/v1/admin/alerts` and the metric; and the exported
//! Prometheus rules pass `promtool check rules`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use keel_server::ops::alerts::Alerts;
use keel_testkit::{Backend, SmtpSink, TestApp, both, json};
use serde_json::Value;

/// Every default rule, with the seeds' thresholds, through pending, firing and resolved on a
/// made-up clock.
#[test]
fn each_default_rule_fires_and_resolves() {
    let backup = keel_spec::BackupSpec {
        schedule: Some("0 3 * * *".into()),
        ..Default::default()
    };
    let rules = keel_spec::default_alert_rules(&backup);
    // Values just above and below each threshold, in the rule's unit.
    let above_below = |name: &str| match name {
        "api_latency" => (1200.0, 300.0),
        "api_latency_warning" => (700.0, 300.0),
        "error_rate" => (0.06, 0.01),
        "db_pool" => (0.9, 0.5),
        "disk" => (0.9, 0.5),
        "memory" => (0.8, 0.5),
        "queue_lag" => (400.0, 10.0),
        "backup" => (30.0 * 3600.0, 3600.0),
        other => panic!("{other} has no test values"),
    };
    for rule in &rules {
        let alerts = Alerts::new(std::slice::from_ref(rule));
        let (above, below) = above_below(&rule.name);
        let start = Utc::now();
        let value = |v: f64| move |_: &keel_spec::AlertRule| Some((Some(v), None));
        let fired = alerts.step(start, value(above));
        if rule.for_ms == 0 {
            assert_eq!(fired.len(), 1, "{} fires at once", rule.name);
        } else {
            assert!(fired.is_empty(), "{} waits for its `for`", rule.name);
            assert_eq!(alerts.states()[0].state, "pending");
            let early = start + chrono::Duration::milliseconds(rule.for_ms as i64 - 1000);
            assert!(alerts.step(early, value(above)).is_empty());
            let due = start + chrono::Duration::milliseconds(rule.for_ms as i64);
            let fired = alerts.step(due, value(above));
            assert_eq!(fired.len(), 1, "{}", rule.name);
        }
        let state = &alerts.states()[0];
        assert_eq!(state.state, "firing", "{}", rule.name);
        assert_eq!(state.value, Some(above));
        let later = start + chrono::Duration::hours(1);
        assert!(alerts.step(later, value(above)).is_empty(), "{} tells once", rule.name);
        let resolved = alerts.step(later, value(below));
        assert_eq!(resolved.len(), 1, "{}", rule.name);
        assert_eq!(resolved[0].state, "resolved");
        assert_eq!(alerts.states()[0].state, "inactive");
        // A blip shorter than `for` never fires.
        if rule.for_ms > 0 {
            assert!(alerts.step(later, value(above)).is_empty());
            assert!(
                alerts
                    .step(later + chrono::Duration::seconds(1), value(below))
                    .is_empty()
            );
            assert_eq!(alerts.states()[0].state, "inactive");
        }
    }
}

#[test]
fn exported_rules_pass_promtool() {
    let backup = keel_spec::BackupSpec {
        schedule: Some("0 3 * * *".into()),
        ..Default::default()
    };
    let rules = keel_spec::default_alert_rules(&backup);
    let yaml = keel_server::ops::alerts::prometheus_rules(&rules, "fleet-compliance");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yml");
    std::fs::write(&file, &yaml).unwrap();
    let promtool = std::env::var("KEEL_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let output = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {promtool} ({e}); scripts/test-tools.sh installs it"));
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}\n{yaml}");
    assert!(text.contains("SUCCESS: 8 rules found"), "{text}");
}

async fn webhook_sink() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://127.0.0.1:{port}/hook"), received)
}

const SPEC: &str = r#"
[app]
name = "alerting"

[roles]
order = ["owner", "member"]

[collections.notes]
fields.title = { type = "text", required = true }

[backup]
schedule = "0 3 * * *"
alert_after = "1h"

[alerts.error_rate]
window = "2s"

[alerts.api_latency]
threshold = "0ms"
for = "0s"
window = "2s"

[alerts.queue_lag]
threshold = "1s"
for = "0s"
"#;

async fn alerts_fire_and_resolve_through_the_app(backend: Backend) {
    let (hook, received) = webhook_sink().await;
    let smtp = SmtpSink::start();
    let app = TestApp::spawn_with(backend, SPEC, |config| {
        config.alerts.webhook_urls = vec![keel_server::config::Secret(hook.clone())];
        config.alerts.email_to = vec!["oncall@example.com".into()];
        config.smtp.host = Some("127.0.0.1".into());
        config.smtp.port = smtp.port;
        config.smtp.tls = "none".into();
        config.jobs.poll_interval_ms = 50;
    })
    .await;
    let state = app.state.clone();
    let (admin_id, admin) = app.signup("admin@example.com").await;
    app.make_superuser(&admin_id).await;
    app.org(&admin, "acme").await;
    state.jobs.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !state.jobs.is_leader() {
        assert!(std::time::Instant::now() < deadline, "this instance leads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let by_name = |name: &str| state.alerts.states().into_iter().find(|r| r.name == name).unwrap();

    // Every request is slower than 0 ms: the latency alert fires at once.
    keel_server::ops::alerting::evaluate(&state).await;
    assert_eq!(by_name("api_latency").state, "firing", "{:?}", by_name("api_latency"));
    assert_eq!(by_name("error_rate").state, "inactive", "too few requests to judge");

    // Real 500s: a table goes missing under the app.
    let mut tx = app.db().begin().await.unwrap();
    tx.execute_script("ALTER TABLE notes RENAME TO notes_gone")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    for _ in 0..25 {
        assert_eq!(app.get("/api/v1/orgs/acme/notes", &admin).await.status, 500);
    }
    // A failed backup.
    let now = Utc::now();
    keel_store::backups::backup_begin(app.db(), "b1", "b1", "manual", now, chrono::Duration::seconds(60))
        .await
        .unwrap();
    let failed = keel_store::backups::BackupOutcome {
        succeeded: false,
        size_bytes: None,
        files: None,
        error: Some("disk full"),
    };
    keel_store::backups::backup_finish(app.db(), "b1", failed, now)
        .await
        .unwrap();
    // A paused queue with a waiting job.
    keel_store::jobs::queue_pause(app.db(), "default", true).await.unwrap();
    let kind = state.schema.app.jobs.kind(keel_spec::CLEANUP_KIND).unwrap();
    let job = keel_store::jobs::NewJob::of_kind(kind, json!({}), None, None);
    keel_store::jobs::job_enqueue(app.db(), &job).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    keel_server::ops::alerting::evaluate(&state).await;
    for name in ["error_rate", "backup", "queue_lag", "api_latency"] {
        assert_eq!(by_name(name).state, "firing", "{name}: {:?}", by_name(name));
    }
    assert!(by_name("backup").detail.unwrap().contains("disk full"));
    let listed = app.get("/api/v1/admin/alerts", &admin).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["firing"], 4, "{}", listed.text);
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("keel_alerts_firing{alert=\"error_rate\",severity=\"critical\"} 1"),
        "{metrics}"
    );

    // The conditions end: the table is back, a backup succeeds, the queue runs.
    let mut tx = app.db().begin().await.unwrap();
    tx.execute_script("ALTER TABLE notes_gone RENAME TO notes")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut config = state.config.clone();
    config.backup.key = Some(keel_server::config::Secret(keel_server::backup::generate_identity().0));
    let backups = keel_server::backup::Backups::new(&config, &state.schema.app.backup, "alerting").unwrap();
    if let Err(error) = backups.run(app.db(), state.storage.clone(), "manual").await {
        panic!("{error:?}");
    }
    keel_store::jobs::queue_pause(app.db(), "default", false).await.unwrap();
    // The errors leave the 2-second window (slots are whole seconds).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    for _ in 0..25 {
        assert_eq!(app.get("/api/v1/orgs/acme/notes", &admin).await.status, 200);
    }
    // The latency window still holds those requests (any request is over 0 ms).
    keel_server::ops::alerting::evaluate(&state).await;
    for name in ["error_rate", "backup", "queue_lag"] {
        assert_eq!(by_name(name).state, "inactive", "{name}: {:?}", by_name(name));
    }
    assert_eq!(by_name("api_latency").state, "firing");

    let notes = received.lock().unwrap().clone();
    let told = |alert: &str, state: &str| {
        notes.iter().any(|n| {
            n["alert"] == alert && n["state"] == state && n["text"].as_str().unwrap().contains("[keel alerting]")
        })
    };
    for name in ["error_rate", "backup", "queue_lag"] {
        assert!(told(name, "firing") && told(name, "resolved"), "{name}: {notes:?}");
    }
    assert!(told("api_latency", "firing"));
    let mails = smtp.messages();
    assert!(
        mails
            .iter()
            .any(|m| m.contains("oncall@example.com") && m.contains("error_rate")),
        "{mails:?}"
    );
    assert!(mails.iter().any(|m| m.contains("RESOLVED backup")), "{mails:?}");
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("keel_alert_notifications_total{channel=\"webhook\",result=\"sent\"}"),
        "{metrics}"
    );
    state.jobs.shutdown().await;
}

both!(alerts_fire_and_resolve_through_the_app);
