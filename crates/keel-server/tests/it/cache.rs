//! The response cache (C1–C3) on both backends: cached list and get answers, invalidated
//! by writes to the collection and to the collections it embeds, per caller, by membership
//! changes, by lifetime, and bounded in bytes. Across instances with Redis: `redis.rs`.

use std::time::Duration;

use keel_testkit::{Backend, TestApp, TestResponse, both, json};

pub const SPEC: &str = r#"
[app]
name = "cached"

[roles]
order = ["owner", "admin", "member"]

[collections.projects]
fields.name = { type = "text", required = true }
fields.brief = { type = "file" }
cache = "1m"

[collections.tasks]
fields.project = { type = "relation", to = "projects", required = true, on_delete = "cascade" }
fields.title = { type = "text", required = true }
cache = "1m"

[collections.prices]
fields.value = { type = "integer" }
cache = "1s"

[collections.notes]
fields.text = { type = "text" }
"#;

pub fn cache_header(response: &TestResponse) -> &str {
    response.header("keel-cache").unwrap_or("none")
}

async fn reads_are_cached_until_a_write_changes_them(backend: Backend) {
    let app = TestApp::spawn_with(backend, SPEC, |_| {}).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let apollo = app
        .create("/api/v1/orgs/acme/projects", &owner, json!({"name": "Apollo"}))
        .await;
    let task = app
        .create(
            "/api/v1/orgs/acme/tasks",
            &owner,
            json!({"project": apollo, "title": "Launch"}),
        )
        .await;

    let first = app.get("/api/v1/orgs/acme/projects", &owner).await;
    assert_eq!((first.status.as_u16(), cache_header(&first)), (200, "miss"));
    let second = app.get("/api/v1/orgs/acme/projects", &owner).await;
    assert_eq!(cache_header(&second), "hit");
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("content-type"), Some("application/json"));
    // Another query is another entry; a get is cached too.
    assert_eq!(
        cache_header(&app.get("/api/v1/orgs/acme/projects?limit=1", &owner).await),
        "miss"
    );
    let path = format!("/api/v1/orgs/acme/projects/{apollo}");
    app.get(&path, &owner).await;
    assert_eq!(cache_header(&app.get(&path, &owner).await), "hit");
    // Collections without `cache` are never cached.
    app.get("/api/v1/orgs/acme/notes", &owner).await;
    assert_eq!(cache_header(&app.get("/api/v1/orgs/acme/notes", &owner).await), "none");

    // A write answers only after the stamps moved: the next read is fresh.
    app.create("/api/v1/orgs/acme/projects", &owner, json!({"name": "Gemini"}))
        .await;
    let after = app.get("/api/v1/orgs/acme/projects", &owner).await;
    assert_eq!(cache_header(&after), "miss");
    assert_eq!(after.body["items"].as_array().unwrap().len(), 2);

    // Tasks embed their project: renaming it invalidates the tasks' answers too.
    let expanded = format!("/api/v1/orgs/acme/tasks/{task}?expand=project");
    app.get(&expanded, &owner).await;
    assert_eq!(cache_header(&app.get(&expanded, &owner).await), "hit");
    let renamed = app.patch(&path, &owner, json!({"name": "Apollo 11"})).await;
    assert_eq!(renamed.status, 200);
    let fresh = app.get(&expanded, &owner).await;
    assert_eq!(cache_header(&fresh), "miss");
    assert_eq!(fresh.body["expand"]["project"]["name"], "Apollo 11");
    // Deleting the project cascades to its tasks: the cached task is gone as well.
    app.get("/api/v1/orgs/acme/tasks", &owner).await;
    assert_eq!(app.delete(&path, &owner).await.status, 204);
    let tasks = app.get("/api/v1/orgs/acme/tasks", &owner).await;
    assert_eq!(cache_header(&tasks), "miss");
    assert!(tasks.body["items"].as_array().unwrap().is_empty());
    // A refused write bumps nothing.
    app.get("/api/v1/orgs/acme/projects", &owner).await;
    let refused = app.post("/api/v1/orgs/acme/projects", &owner, json!({})).await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        cache_header(&app.get("/api/v1/orgs/acme/projects", &owner).await),
        "hit"
    );

    // Uploading a file is a write; signing a link to it changes nothing and bumps nothing.
    let gemini = after.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Gemini")
        .and_then(|p| p["id"].as_str())
        .unwrap()
        .to_string();
    let headers = vec![
        ("authorization".to_string(), format!("Bearer {owner}")),
        ("content-type".to_string(), "text/plain".to_string()),
    ];
    let files = format!("/api/v1/orgs/acme/projects/{gemini}/files/brief");
    let uploaded = app
        .request_bytes("POST", &files, headers, Some(b"the brief".to_vec()))
        .await;
    assert_eq!(uploaded.status, 201, "{}", uploaded.text);
    assert_eq!(
        cache_header(&app.get("/api/v1/orgs/acme/projects", &owner).await),
        "miss"
    );
    let file = uploaded.body["file"]["id"].as_str().unwrap();
    let link = app
        .request("POST", &format!("{files}/{file}/link"), Some(&owner), None)
        .await;
    assert_eq!(link.status, 200, "{}", link.text);
    assert_eq!(
        cache_header(&app.get("/api/v1/orgs/acme/projects", &owner).await),
        "hit"
    );

    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("keel_cache_requests_total{collection=\"projects\",result=\"hit\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("keel_cache_bytes "));
}

async fn answers_are_per_caller_and_follow_membership(backend: Backend) {
    let app = TestApp::spawn_with(backend, SPEC, |_| {}).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let (member_id, member) = app.member(&owner, "acme", "member@example.com", "member").await;
    app.create("/api/v1/orgs/acme/projects", &owner, json!({"name": "Apollo"}))
        .await;
    app.get("/api/v1/orgs/acme/projects", &owner).await;
    assert_eq!(
        cache_header(&app.get("/api/v1/orgs/acme/projects", &member).await),
        "miss",
        "another caller never gets the owner's entry"
    );
    assert_eq!(
        cache_header(&app.get("/api/v1/orgs/acme/projects", &member).await),
        "hit"
    );
    // An outsider is refused, not served.
    let (_, outsider) = app.signup("outsider@example.com").await;
    assert_eq!(app.get("/api/v1/orgs/acme/projects", &outsider).await.status, 404);
    // Removing the member: their cached answers go with the membership.
    let removed = app
        .delete(&format!("/api/v1/orgs/acme/members/{member_id}"), &owner)
        .await;
    assert_eq!(removed.status, 204);
    assert_eq!(app.get("/api/v1/orgs/acme/projects", &member).await.status, 404);
    // A bad token is refused, not served.
    assert_eq!(
        app.get("/api/v1/orgs/acme/projects", "ks_not_a_token").await.status,
        401
    );
}

async fn entries_expire_and_the_cache_stays_within_its_bound(backend: Backend) {
    let app = TestApp::spawn_with(backend, SPEC, |c| {
        c.limits.cache_max_bytes = 16 * 1024;
    })
    .await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    for value in 0..20 {
        app.create("/api/v1/orgs/acme/prices", &owner, json!({"value": value}))
            .await;
    }
    app.get("/api/v1/orgs/acme/prices", &owner).await;
    assert_eq!(cache_header(&app.get("/api/v1/orgs/acme/prices", &owner).await), "hit");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        cache_header(&app.get("/api/v1/orgs/acme/prices", &owner).await),
        "miss",
        "past its 1 s lifetime"
    );
    // Many distinct answers: the cache keeps within 16 KiB by evicting.
    for limit in 1..=60 {
        app.get(&format!("/api/v1/orgs/acme/prices?limit={limit}"), &owner)
            .await;
    }
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name}: {metrics}"))
    };
    assert!(gauge("keel_cache_bytes") <= 16.0 * 1024.0, "{metrics}");
    assert!(gauge("keel_cache_evictions_total") > 0.0, "{metrics}");
}

async fn a_job_that_writes_invalidates_when_it_ends(backend: Backend) {
    let app = TestApp::spawn_with(backend, SPEC, |_| {}).await;
    app.state.jobs.start();
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let project = app
        .create("/api/v1/orgs/acme/projects", &owner, json!({"name": "Apollo"}))
        .await;
    let list = "/api/v1/orgs/acme/tasks";
    app.get(list, &owner).await;
    // The built-in cleanup (every 5 minutes, and so maybe right now) also bumps what it may
    // write: a second read in a row is a hit unless it ran in between.
    let mut cached = false;
    for _ in 0..3 {
        if cache_header(&app.get(list, &owner).await) == "hit" {
            cached = true;
            break;
        }
    }
    assert!(cached, "a repeated read is served from the cache");
    // A background import writes in a job, after its request has answered.
    let csv = format!("title,project\none,{project}\ntwo,{project}\n");
    let response = app.import(list, "background=true", &owner, "text/csv", csv).await;
    assert_eq!(response.status, 202, "{}", response.text);
    let id = response.body["job"]["id"].as_i64().unwrap();
    app.wait_job(id, keel_store::jobs::JobState::Completed, 30).await;
    // The job's end bumps the stamps (moments after it is marked completed).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let read = app.get(list, &owner).await;
        if read.body["items"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still stale: {}", read.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

both!(
    a_job_that_writes_invalidates_when_it_ends,
    reads_are_cached_until_a_write_changes_them,
    answers_are_per_caller_and_follow_membership,
    entries_expire_and_the_cache_stays_within_its_bound
);
