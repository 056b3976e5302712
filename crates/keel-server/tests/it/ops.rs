//! Health, metrics and the OpenAPI document.

use keel_testkit::{Backend, TestApp, both, json};

async fn health_and_metrics(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let live = app.request("GET", "/health/live", None, None).await;
    assert_eq!(live.body, json!({"status": "ok"}));
    let ready = app.request("GET", "/health/ready", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["checks"]["database"]["status"], "ok");
    assert!(ready.body["checks"]["database"]["latency_ms"].is_number());
    let (_, token) = app.signup("a@example.com").await;
    app.org(&token, "acme").await;
    app.get("/api/v1/orgs/acme/tasks", &token).await;
    let metrics = app.request("GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text;
    assert!(
        text.contains(
            "keel_http_requests_total{method=\"GET\",route=\"/api/v1/orgs/{org}/{collection}\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("keel_http_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/orgs/{org}/{collection}\",status=\"200\",le=\"0.005\"}"), "{text}");
    assert!(text.contains("keel_db_pool_connections{state=\"idle\"}"), "{text}");
    assert!(text.contains("keel_db_pool_connections{state=\"waiting\"} 0"), "{text}");
    assert!(
        text.contains("keel_db_pool_acquire_seconds_bucket{route=\"/api/v1/orgs/{org}/{collection}\",le=\"0.001\"}"),
        "{text}"
    );
    // Database time per route: the list above ran three statements (session, org, page).
    assert!(
        text.contains("keel_db_statements_total{route=\"/api/v1/orgs/{org}/{collection}\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("keel_db_query_duration_seconds_count{route=\"/api/v1/orgs/{org}/{collection}\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("/api/v1/orgs/acme"),
        "routes are templates, never raw paths"
    );
}

async fn openapi_describes_every_collection(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let doc = app.request("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let schema = &doc.body["components"]["schemas"]["TasksRecord"];
    assert_eq!(
        schema["properties"]["status"]["anyOf"][0]["enum"],
        json!(["todo", "doing", "done"])
    );
    assert_eq!(schema["properties"]["points"]["anyOf"][0]["maximum"], 100);
    assert_eq!(
        doc.body["components"]["schemas"]["TasksCreate"]["required"],
        json!(["project", "title"])
    );
    assert!(doc.body["paths"]["/api/v1/orgs/{org}/tasks"]["get"].is_object());
    assert!(doc.body["paths"]["/api/v1/orgs/{org}/tasks/{id}"]["patch"].is_object());
    assert!(doc.body["paths"]["/api/v1/global/countries"]["post"].is_object());
    assert!(
        doc.body["paths"]["/api/v1/orgs/{org}/activity"]["post"].is_null(),
        "the activity log is read-only"
    );
}

both!(health_and_metrics, openapi_describes_every_collection);

/// Every metric `/metrics` shows is in the catalogue (docs/METRICS.md) with its type, and the
/// exposition passes `promtool check metrics` (O2).
async fn metrics_are_catalogued_and_pass_promtool(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token) = app.signup("a@example.com").await;
    app.org(&token, "acme").await;
    app.get("/api/v1/orgs/acme/tasks", &token).await;
    app.get("/api/v1/orgs/acme/nothing", &token).await;
    app.state.jobs.start();
    let kind = app.state.schema.app.jobs.kind(keel_spec::CLEANUP_KIND).unwrap();
    let job = keel_store::jobs::NewJob::of_kind(kind, json!({}), None, None);
    let id = keel_store::jobs::job_enqueue(app.db(), &job).await.unwrap().id;
    app.wait_job(id, keel_store::jobs::JobState::Completed, 30).await;
    let text = app.request("GET", "/metrics", None, None).await.text;
    app.state.jobs.shutdown().await;
    let mut seen = 0;
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        let documented =
            keel_server::http::catalogue::find(name).unwrap_or_else(|| panic!("{name} is not in the catalogue"));
        assert_eq!(documented.kind, kind, "{name}");
        seen += 1;
    }
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "keel_disk_available_bytes",
        "keel_memory_limit_bytes",
        "keel_db_size_bytes",
        "keel_http_errors_total",
        "keel_jobs_finished_total",
    ] {
        assert!(text.contains(&format!("\n{name}")), "{name} missing:\n{text}");
    }
    assert!(seen >= 20, "{text}");
    let promtool = std::env::var("KEEL_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {promtool} ({e}); scripts/test-tools.sh installs it"));
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

both!(metrics_are_catalogued_and_pass_promtool);

/// `/health/ready` checks each dependency with its latency (O3): a slow queue or an
/// unreachable file store is `degraded` (200), a failed database is `failing` (503).
async fn readiness_checks_each_dependency_and_fails_only_for_required_ones(backend: Backend) {
    let s3 = keel_testkit::S3Server::start();
    let app = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |config| {
        s3.configure(config);
        config.server.ready_queue_lag_seconds = 3600;
    })
    .await;
    let ready = app.request("GET", "/health/ready", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["status"], "ok", "{}", ready.text);
    for check in ["database", "disk", "storage", "queues"] {
        assert_eq!(ready.body["checks"][check]["status"], "ok", "{check}: {}", ready.text);
        assert!(ready.body["checks"][check]["latency_ms"].is_number());
    }
    assert_eq!(ready.body["checks"]["database"]["required"], true);
    assert_eq!(ready.body["checks"]["storage"]["required"], false);
    assert!(ready.body["checks"]["disk"]["used_ratio"].is_number());

    // The file store stops: uploads would fail, reads go on.
    drop(s3);
    let ready = app.request("GET", "/health/ready", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["status"], "degraded");
    assert_eq!(ready.body["checks"]["storage"]["status"], "failing");
    assert!(ready.body["checks"]["storage"]["error"].is_string());

    // The database goes away: not ready. (An embedded SQLite file cannot go away on its own:
    // PostgreSQL only.)
    if backend == Backend::Sqlite {
        return;
    }
    app.state.db.close().await;
    let started = std::time::Instant::now();
    let ready = app.request("GET", "/health/ready", None, None).await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert_eq!(ready.body["status"], "failing");
    assert_eq!(ready.body["checks"]["database"]["status"], "failing");
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "bounded");
}

async fn readiness_reports_queue_lag(backend: Backend) {
    let app = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |config| {
        config.server.ready_queue_lag_seconds = 0;
    })
    .await;
    let kind = app.state.schema.app.jobs.kind(keel_spec::CLEANUP_KIND).unwrap();
    let job = keel_store::jobs::NewJob::of_kind(kind, json!({}), None, None);
    keel_store::jobs::job_enqueue(app.db(), &job).await.unwrap();
    // No workers run here: the job waits.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let ready = app.request("GET", "/health/ready", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["status"], "degraded", "{}", ready.text);
    assert_eq!(ready.body["checks"]["queues"]["status"], "degraded");
    assert_eq!(ready.body["checks"]["queues"]["queue"], "default");
    assert!(
        ready.body["checks"]["queues"]["oldest_available_seconds"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn a_nearly_full_disk_fails_readiness() {
    use keel_server::ops::health::disk_status;
    use keel_server::ops::system::Disk;
    let gib = 1u64 << 30;
    assert_eq!(
        disk_status(
            &Disk {
                total: 100 * gib,
                available: 50 * gib
            },
            0.9
        ),
        "ok"
    );
    assert_eq!(
        disk_status(
            &Disk {
                total: 100 * gib,
                available: 5 * gib
            },
            0.9
        ),
        "degraded"
    );
    assert_eq!(
        disk_status(
            &Disk {
                total: 100 * gib,
                available: 32 << 20
            },
            0.9
        ),
        "failing"
    );
    assert_eq!(
        disk_status(
            &Disk {
                total: gib,
                available: 5 << 20
            },
            0.9
        ),
        "failing"
    );
}

both!(
    readiness_checks_each_dependency_and_fails_only_for_required_ones,
    readiness_reports_queue_lag
);

/// The console's first screen, as JSON: readiness, the hour's traffic by minute, the pool,
/// the queues, memory and disk; for the superuser only.
async fn the_overview_shows_the_instance_at_a_glance(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (admin_id, admin) = app.signup("root@example.com").await;
    let (_, user) = app.signup("user@example.com").await;
    app.make_superuser(&admin_id).await;
    let refused = app.get("/api/v1/admin/overview", &user).await;
    assert_eq!(refused.status, 403);
    for _ in 0..25 {
        app.get("/api/v1/auth/me", &user).await;
    }
    let overview = app.get("/api/v1/admin/overview", &admin).await;
    assert_eq!(overview.status, 200, "{}", overview.text);
    let body = &overview.body;
    assert_eq!(body["readiness"]["checks"]["database"]["status"], "ok", "{body}");
    let minutes = body["traffic"]["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 60);
    // The requests above are in the last minute or the one before (if a minute turned).
    let recent: u64 = minutes[58..].iter().map(|m| m["requests"].as_u64().unwrap()).sum();
    assert!(recent >= 26, "{recent} in {minutes:?}");
    let last = minutes.iter().rev().find(|m| m["requests"].as_u64() > Some(0)).unwrap();
    assert!(
        last["p50_ms"].as_f64().unwrap() <= last["p99_ms"].as_f64().unwrap(),
        "{last}"
    );
    assert!(minutes[0]["at"].as_str().unwrap() < minutes[59]["at"].as_str().unwrap());
    assert_eq!(body["traffic"]["errors"], 0);
    assert!(body["pool"]["max"].as_u64().unwrap() >= 1);
    assert!(body["queues"].is_array());
    assert!(body["memory"]["resident_bytes"].as_u64().unwrap() > 1_000_000);
    assert!(body["disk"]["available_bytes"].as_u64().unwrap() > 0);
    assert_eq!(body["alerts_firing"], json!([]));
    let expected = if backend == Backend::Sqlite {
        "sqlite"
    } else {
        "postgres"
    };
    assert_eq!(body["backend"], expected);
}

both!(the_overview_shows_the_instance_at_a_glance);
