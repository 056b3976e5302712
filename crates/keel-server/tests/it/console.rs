//! The console (O9): its page and files as HTTP sees them, `[console]`, and the whole
//! console in a real browser (Debian's Chromium driven by `scripts/console-test.mjs`).

use keel_testkit::{Backend, TestApp, both, json};

const PMS: &str = include_str!("../../../../examples/pms/keel.toml");

/// The pms example with a queue whose job kind always fails (dead letters to retry).
fn spec() -> String {
    format!(
        "{PMS}\n[queues.reports]\nconcurrency = 2\n\n[jobs.nightly_report]\nqueue = \"reports\"\nhandler = \"command\"\ncommand = [\"false\"]\nattempts = 1\n"
    )
}

fn header<'a>(response: &'a keel_testkit::TestResponse, name: &str) -> &'a str {
    response.header(name).unwrap_or_default()
}

async fn get_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> keel_testkit::TestResponse {
    let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    app.request_bytes("GET", path, headers, None).await
}

async fn the_page_and_its_files_are_served_for_caches(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let page = get_with(&app, "/_/", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(page.status, 200);
    assert_eq!(header(&page, "content-encoding"), "br");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let csp = header(&page, "content-security-policy");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let etag = header(&page, "etag").to_string();
    let again = get_with(
        &app,
        "/_/",
        &[("accept-encoding", "gzip, br"), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(again.status, 304);

    let plain = get_with(&app, "/_/", &[]).await;
    assert_eq!(header(&plain, "content-encoding"), "");
    let script = plain
        .text
        .split("src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page names its script")
        .to_string();
    assert!(
        script.starts_with("/_/assets/console.") && script.ends_with(".js"),
        "{script}"
    );
    let file = get_with(&app, &script, &[("accept-encoding", "gzip")]).await;
    assert_eq!(file.status, 200);
    assert_eq!(header(&file, "content-encoding"), "gzip");
    assert_eq!(header(&file, "cache-control"), "public, max-age=31536000, immutable");
    assert_eq!(header(&file, "content-type"), "text/javascript; charset=utf-8");
    let cached = get_with(&app, &script, &[("if-none-match", header(&file, "etag"))]).await;
    assert_eq!(cached.status, 304);
    let old = get_with(&app, "/_/assets/console.0000000000.js", &[]).await;
    assert_eq!(old.status, 404);
    assert_eq!(header(&old, "cache-control"), "no-store");
    let redirect = get_with(&app, "/_", &[]).await;
    assert_eq!(redirect.status, 308);
    assert_eq!(header(&redirect, "location"), "/_/");
}

async fn the_console_can_be_turned_off_and_fenced(backend: Backend) {
    let off = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |c| c.console.enabled = false).await;
    assert_eq!(off.request("GET", "/_/", None, None).await.status, 404);
    // The account pages its emails link to stay.
    assert_eq!(off.request("GET", "/_/auth/reset", None, None).await.status, 200);

    let fenced = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |c| {
        c.console.allow_ips = vec!["10.0.0.0/8".into()];
    })
    .await;
    let (user, token) = fenced.signup("root@example.com").await;
    fenced.make_superuser(&user).await;
    let outside = fenced
        .request_from("192.0.2.7", "GET", "/api/v1/admin/overview", Some(&token), None)
        .await;
    assert_eq!(outside.status, 403, "{}", outside.text);
    assert_eq!(outside.code(), "ip_blocked");
    let page = fenced.request_from("192.0.2.7", "GET", "/_/", None, None).await;
    assert_eq!(page.status, 403);
    let inside = fenced
        .request_from("10.1.2.3", "GET", "/api/v1/admin/overview", Some(&token), None)
        .await;
    assert_eq!(inside.status, 200, "{}", inside.text);
    // The rest of the API is not behind the console's fence.
    let me = fenced
        .request_from("192.0.2.7", "GET", "/api/v1/auth/me", Some(&token), None)
        .await;
    assert_eq!(me.status, 200);
}

async fn the_schema_describes_collections_for_forms(backend: Backend) {
    let app = TestApp::spawn_with(backend, &spec(), |_| {}).await;
    let (_, token) = app.signup("a@example.com").await;
    let schema = app.get("/api/v1/schema", &token).await;
    assert_eq!(schema.status, 200, "{}", schema.text);
    assert_eq!(schema.body["app"], "pms");
    let tasks = schema.body["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tasks")
        .expect("tasks");
    let field = |name: &str| {
        tasks["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(field("status")["type"], "select");
    assert_eq!(field("status")["values"][0], "backlog");
    assert_eq!(field("project")["to"], "projects");
    assert_eq!(field("estimate_hours")["min"], json!(0.0));
    assert_eq!(tasks["searchable"], true);
    assert_eq!(app.request("GET", "/api/v1/schema", None, None).await.status, 401);
}

async fn backups_keys_migrations_and_config_for_operators(backend: Backend) {
    let key = keel_server::backup::generate_identity().0;
    let app = TestApp::spawn_with(backend, &spec(), |c| {
        c.backup.key = Some(keel_server::config::Secret(key.clone()));
    })
    .await;
    app.state.jobs.start();
    let (user, token) = app.signup("root@example.com").await;
    let (_, member) = app.signup("member@example.com").await;
    app.make_superuser(&user).await;
    for path in [
        "/api/v1/admin/backups",
        "/api/v1/admin/keys",
        "/api/v1/admin/migrations",
        "/api/v1/admin/config",
    ] {
        assert_eq!(app.get(path, &member).await.status, 403, "{path}");
    }
    let taken = app.post("/api/v1/admin/backups", &token, json!({})).await;
    assert_eq!(taken.status, 202, "{}", taken.text);
    let id = taken.body["job"]["id"].as_i64().unwrap();
    let job = app.wait_job(id, keel_store::jobs::JobState::Completed, 60).await;
    let name = job.result.as_ref().unwrap()["name"].as_str().unwrap().to_string();
    let listed = app.get("/api/v1/admin/backups", &token).await;
    assert_eq!(listed.body["items"][0]["name"], name.as_str(), "{}", listed.text);
    assert_eq!(listed.body["runs"][0]["state"], "succeeded");
    assert_eq!(listed.body["encrypted"], true);
    let verify = app
        .post(&format!("/api/v1/admin/backups/{name}/verify"), &token, json!({}))
        .await;
    assert_eq!(verify.status, 202, "{}", verify.text);
    let id = verify.body["job"]["id"].as_i64().unwrap();
    let job = app.wait_job(id, keel_store::jobs::JobState::Completed, 60).await;
    assert!(job.result.as_ref().unwrap()["manifest"]["name"] == name.as_str());
    let missing = app.post("/api/v1/admin/backups/nope/verify", &token, json!({})).await;
    assert_eq!(missing.status, 404);

    // Keys: rotate, then the old one cannot be retired within the hour unless forced.
    let first = app.post("/api/v1/admin/keys/rotate", &token, json!({})).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let second = app.post("/api/v1/admin/keys/rotate", &token, json!({})).await;
    let keys = app.get("/api/v1/admin/keys", &token).await;
    assert_eq!(keys.body["items"][0]["state"], "signs_and_verifies", "{}", keys.text);
    assert_eq!(keys.body["items"][1]["state"], "verifies");
    assert!(
        !keys.text.contains("secret"),
        "a key's secret is never shown: {}",
        keys.text
    );
    let old = first.body["id"].as_str().unwrap();
    let soon = app
        .post(&format!("/api/v1/admin/keys/{old}/retire"), &token, json!({}))
        .await;
    assert_eq!(soon.status, 409);
    assert_eq!(soon.code(), "key_retire_refused");
    let newest = second.body["id"].as_str().unwrap();
    let signing = app
        .post(
            &format!("/api/v1/admin/keys/{newest}/retire"),
            &token,
            json!({"force": true}),
        )
        .await;
    assert_eq!(signing.code(), "key_retire_refused");
    let forced = app
        .post(
            &format!("/api/v1/admin/keys/{old}/retire"),
            &token,
            json!({"force": true}),
        )
        .await;
    assert_eq!(forced.status, 200, "{}", forced.text);

    let migrations = app.get("/api/v1/admin/migrations", &token).await;
    assert_eq!(migrations.body["pending"], json!([]), "{}", migrations.text);
    assert!(!migrations.body["history"].as_array().unwrap().is_empty());

    let config = app.get("/api/v1/admin/config", &token).await;
    assert_eq!(config.status, 200);
    assert_eq!(config.body["config"]["backup"]["key"], "***");
    assert!(!config.text.contains(&key), "the backup key is on show");
    if backend == Backend::Postgres {
        assert_eq!(config.body["config"]["database"]["url"], "***");
    }
}

async fn bulk_retry_and_schedules(backend: Backend) {
    let app = TestApp::spawn_with(backend, &spec(), |_| {}).await;
    app.state.jobs.start();
    let (user, token) = app.signup("root@example.com").await;
    app.make_superuser(&user).await;
    let mut ids = vec![];
    for _ in 0..3 {
        let job = app
            .post("/api/v1/admin/jobs", &token, json!({"kind": "nightly_report"}))
            .await;
        ids.push(job.body["id"].as_i64().unwrap());
    }
    for id in &ids {
        app.wait_job(*id, keel_store::jobs::JobState::Dead, 30).await;
    }
    app.post("/api/v1/admin/queues/reports/pause", &token, json!({})).await;
    let retried = app
        .post("/api/v1/admin/queues/reports/retry_dead", &token, json!({}))
        .await;
    assert_eq!(retried.body["retried"], 3, "{}", retried.text);
    let waiting = app
        .get("/api/v1/admin/jobs?queue=reports&state=available", &token)
        .await;
    assert_eq!(waiting.body["items"].as_array().unwrap().len(), 3, "{}", waiting.text);
    let schedules = app.get("/api/v1/admin/schedules", &token).await;
    let kinds: Vec<_> = schedules.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].clone())
        .collect();
    assert!(
        kinds.contains(&json!("keel_cleanup")) && kinds.contains(&json!("keel_backup")),
        "{}",
        schedules.text
    );
    let backup = schedules.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "keel_backup")
        .unwrap();
    assert_eq!(backup["schedule"], "0 2 * * *");
    assert!(backup["next_tick"].is_string());
}

async fn operator_writes_are_audited(backend: Backend) {
    let app = TestApp::spawn_with(backend, &spec(), |_| {}).await;
    let (root, token) = app.signup("root@example.com").await;
    app.make_superuser(&root).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let (_, stranger) = app.signup("stranger@example.com").await;
    app.org(&stranger, "other").await;
    app.member(&owner, "acme", "member@example.com", "member").await;
    let paused = app
        .request_from(
            "10.0.0.9",
            "POST",
            "/api/v1/admin/queues/reports/pause",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(paused.status, 200, "{}", paused.text);
    // A refused attempt is recorded too; one without credentials identifies no one.
    assert_eq!(
        app.post("/api/v1/admin/queues/reports/resume", &owner, json!({}))
            .await
            .status,
        403
    );
    assert_eq!(
        app.request("POST", "/api/v1/admin/queues/reports/resume", None, None)
            .await
            .status,
        401
    );
    // Record writes are the activity log's, not the audit's.
    app.create("/api/v1/orgs/acme/projects", &owner, json!({"name": "P", "key": "PP"}))
        .await;

    let all = app.get("/api/v1/admin/audit", &token).await;
    assert_eq!(all.status, 200, "{}", all.text);
    let items = all.body["items"].as_array().unwrap();
    let pause = items
        .iter()
        .find(|e| e["path"] == "/api/v1/admin/queues/reports/pause")
        .unwrap_or_else(|| panic!("the pause: {}", all.text));
    assert_eq!(pause["actor_email"], "root@example.com");
    assert_eq!(pause["status"], 200);
    assert_eq!(pause["ip"], "10.0.0.9");
    assert_eq!(pause["route"], "/api/v1/admin/queues/{queue}/{action}");
    assert!(pause["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    let refused = items
        .iter()
        .find(|e| e["path"] == "/api/v1/admin/queues/reports/resume")
        .expect("the refusal");
    assert_eq!(refused["status"], 403);
    assert_eq!(refused["actor_email"], "owner@example.com");
    assert_eq!(
        items
            .iter()
            .filter(|e| e["path"] == "/api/v1/admin/queues/reports/resume")
            .count(),
        1
    );
    assert!(!items.iter().any(|e| e["path"] == "/api/v1/orgs/acme/projects"));

    let org = app.get("/api/v1/orgs/acme/audit", &owner).await;
    assert_eq!(org.status, 200, "{}", org.text);
    let entries = org.body["items"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["route"] == "/api/v1/orgs/{org}/members" && e["status"] == 201),
        "{}",
        org.text
    );
    assert!(
        entries
            .iter()
            .all(|e| e["path"].as_str().unwrap().starts_with("/api/v1/orgs/acme")),
        "{}",
        org.text
    );
    assert_eq!(app.get("/api/v1/orgs/acme/audit", &stranger).await.status, 404);
    assert_eq!(app.get("/api/v1/admin/audit", &owner).await.status, 403);
    let first = app.get("/api/v1/admin/audit?limit=1", &token).await;
    let next = first.body["next"].as_str().expect("a next page");
    let second = app
        .get(&format!("/api/v1/admin/audit?limit=1&before={next}"), &token)
        .await;
    assert_ne!(first.body["items"][0]["id"], second.body["items"][0]["id"]);
}

/// The console in Chromium: every screen, on this backend.
async fn the_console_works_in_a_browser(backend: Backend) {
    let modules = std::env::var("KEEL_TEST_PLAYWRIGHT_MODULES")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/browser-test").to_string());
    let chromium = std::env::var("KEEL_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string());
    assert!(
        std::path::Path::new(&modules)
            .join("node_modules/playwright-core")
            .exists()
            && std::path::Path::new(&chromium).exists(),
        "playwright-core and chromium are missing: run scripts/test.sh (scripts/test-tools.sh installs them)"
    );
    let key = keel_server::backup::generate_identity().0;
    let app = TestApp::spawn_with(backend, &spec(), |c| {
        c.backup.key = Some(keel_server::config::Secret(key.clone()));
        c.limits.import_sync_max_bytes = 1024;
    })
    .await;
    app.state.jobs.start();
    let (root, token) = app.signup("root@example.com").await;
    app.make_superuser(&root).await;
    app.org(&token, "acme").await;
    let project = app
        .create(
            "/api/v1/orgs/acme/projects",
            &token,
            json!({"name": "Launch", "key": "LCH"}),
        )
        .await;
    let mut csv = String::from("project,title,status,estimate_hours\n");
    for i in 0..120 {
        let status = if i % 3 == 0 { "todo" } else { "in_progress" };
        csv.push_str(&format!("{project},Task {i},{status},{}\n", i % 9));
    }
    let seeded = app
        .import("/api/v1/orgs/acme/tasks", "background=false", &token, "text/csv", csv)
        .await;
    assert_eq!(seeded.status, 200, "{}", seeded.text);
    let record = app
        .create(
            "/api/v1/orgs/acme/tasks",
            &token,
            json!({"project": project, "title": "Edit me", "status": "in_progress"}),
        )
        .await;
    // A manager of another org.
    let (_, other) = app.signup("manager@example.com").await;
    app.org(&other, "beta").await;
    // The manager signs in with a second factor: the browser types a TOTP code it computes
    // from this secret (RFC 6238, as an authenticator app does).
    let totp = crate::accounts::enrol_totp(&app, &other).await;
    let totp_secret = totp.secret().to_base32();
    // The step of the code that confirmed the enrolment (or a later one): that code is spent.
    let used_step = chrono::Utc::now().timestamp() / 30;
    let dead = app
        .post("/api/v1/admin/jobs", &token, json!({"kind": "nightly_report"}))
        .await;
    let dead = dead.body["id"].as_i64().unwrap();
    app.wait_job(dead, keel_store::jobs::JobState::Dead, 30).await;

    let dir = tempfile::tempdir().unwrap();
    let import_file = dir.path().join("more-tasks.csv");
    let mut more = String::from("project,title,status\n");
    for i in 0..40 {
        more.push_str(&format!("Launch,Imported {i},backlog\n"));
    }
    std::fs::write(&import_file, more).unwrap();
    let backend_name = format!("{backend:?}").to_lowercase();
    let screens =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../target/console-screens/{backend_name}"));
    let _ = std::fs::remove_dir_all(&screens);
    let url = app.serve().await;
    let setup = json!({
        "url": url,
        "modules": modules,
        "chromium": chromium,
        "screens": screens,
        "token": token,
        "superuser": {"email": "root@example.com", "password": "correct horse battery"},
        "manager": {"email": "manager@example.com", "password": "correct horse battery", "totp_secret": totp_secret, "totp_used_step": used_step},
        "org": "acme",
        "manager_org": "beta",
        "collection": "tasks",
        "todo_count": 40,
        "record": record,
        "import_file": import_file,
        "import_rows": 40,
        "queue": "reports",
        "dead_job": dead,
        "secret": key,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/console-test.mjs");
    let output = tokio::process::Command::new("node")
        .arg(script)
        .env("KEEL_CONSOLE_TEST", setup.to_string())
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(300), output)
        .await
        .expect("the browser run ended within 5 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the console failed in the browser:\n{stdout}\n{stderr}"
    );
    assert!(screens.join("overview.png").exists() && screens.join("manager.png").exists());
}

both!(
    the_page_and_its_files_are_served_for_caches,
    the_console_can_be_turned_off_and_fenced,
    the_schema_describes_collections_for_forms,
    backups_keys_migrations_and_config_for_operators,
    bulk_retry_and_schedules,
    operator_writes_are_audited,
    the_console_works_in_a_browser
);
