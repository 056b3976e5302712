//! Cross-tenant isolation: every route answers 404 for another org's data and never alters it.

use keel_testkit::{Backend, TestApp, both, json};

async fn no_route_leaks_or_alters_another_org(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = app.signup("alice@example.com").await;
    let (mallory_id, mallory) = app.signup("mallory@example.com").await;
    app.org(&alice, "acme").await;
    app.org(&mallory, "evil").await;
    let project = app
        .create("/api/v1/orgs/acme/projects", &alice, json!({"name": "Secret"}))
        .await;
    let task = app
        .create(
            "/api/v1/orgs/acme/tasks",
            &alice,
            json!({"project": project, "title": "secret task"}),
        )
        .await;
    let statements_before = app
        .get(&format!("/api/v1/orgs/acme/tasks/{task}"), &alice)
        .await
        .body
        .clone();

    // Every route of the victim org, as an outsider.
    let probes: Vec<(&str, String, Option<serde_json::Value>)> = vec![
        ("GET", "/api/v1/orgs/acme/tasks".into(), None),
        ("GET", format!("/api/v1/orgs/acme/tasks/{task}"), None),
        (
            "PATCH",
            format!("/api/v1/orgs/acme/tasks/{task}"),
            Some(json!({"title": "pwned"})),
        ),
        ("DELETE", format!("/api/v1/orgs/acme/tasks/{task}"), None),
        (
            "POST",
            "/api/v1/orgs/acme/tasks".into(),
            Some(json!({"project": project, "title": "x"})),
        ),
        ("GET", "/api/v1/orgs/acme/tasks/aggregate".into(), None),
        ("GET", "/api/v1/orgs/acme/activity".into(), None),
        ("GET", "/api/v1/orgs/acme/members".into(), None),
        (
            "POST",
            "/api/v1/orgs/acme/members".into(),
            Some(json!({"email": "mallory@example.com", "role": "owner"})),
        ),
        (
            "PATCH",
            format!("/api/v1/orgs/acme/members/{mallory_id}"),
            Some(json!({"role": "owner"})),
        ),
        ("GET", "/api/v1/orgs/acme/api_keys".into(), None),
        (
            "POST",
            "/api/v1/orgs/acme/api_keys".into(),
            Some(json!({"name": "x", "role": "owner"})),
        ),
    ];
    for (method, path, body) in &probes {
        let response = app.request(method, path, Some(&mallory), body.clone()).await;
        assert_eq!(response.status, 404, "{method} {path}: {}", response.text);
        assert_eq!(response.code(), "not_found");
    }
    // The same ids through the attacker's own org are not found either.
    for (method, path) in [
        ("GET", format!("/api/v1/orgs/evil/tasks/{task}")),
        ("DELETE", format!("/api/v1/orgs/evil/tasks/{task}")),
    ] {
        assert_eq!(
            app.request(method, &path, Some(&mallory), None).await.status,
            404,
            "{method} {path}"
        );
    }
    let patch = app
        .patch(
            &format!("/api/v1/orgs/evil/tasks/{task}"),
            &mallory,
            json!({"title": "pwned"}),
        )
        .await;
    assert_eq!(patch.status, 404);
    // Pointing a record in one's own org at another org's record is refused.
    let cross = app
        .post(
            "/api/v1/orgs/evil/tasks",
            &mallory,
            json!({"project": project, "title": "x"}),
        )
        .await;
    assert_eq!(cross.code(), "validation_failed");
    assert_eq!(cross.body["error"]["details"][0]["code"], "invalid_relation");
    // Nor at a user who is not a member of the org (their email would show in `expand`).
    let (alice_id_row, _) = (
        app.get("/api/v1/auth/me", &alice).await.body["user"]["id"]
            .as_str()
            .unwrap()
            .to_string(),
        (),
    );
    let evil_project = app
        .create("/api/v1/orgs/evil/projects", &mallory, json!({"name": "mine"}))
        .await;
    let outsider = app
        .post(
            "/api/v1/orgs/evil/tasks",
            &mallory,
            json!({"project": evil_project, "title": "x", "assignee": alice_id_row}),
        )
        .await;
    assert_eq!(outsider.code(), "validation_failed", "{}", outsider.text);
    assert_eq!(outsider.body["error"]["details"][0]["field"], "assignee");
    // Filters cannot reach across either.
    let filter: String = form_urlencoded::byte_serialize(format!("id = '{task}'").as_bytes()).collect();
    assert_eq!(
        app.get(&format!("/api/v1/orgs/evil/tasks?filter={filter}"), &mallory)
            .await
            .body["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        app.get("/api/v1/orgs/-/tasks", &mallory).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // Nothing changed.
    let after = app.get(&format!("/api/v1/orgs/acme/tasks/{task}"), &alice).await;
    assert_eq!(after.body, statements_before);
    assert_eq!(
        app.get("/api/v1/orgs/acme/members", &alice).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn cross_org_list_spans_the_callers_orgs(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = app.signup("alice@example.com").await;
    let (_, bob) = app.signup("bob@example.com").await;
    for slug in ["one", "two"] {
        app.org(&alice, slug).await;
        let project = app
            .create(
                &format!("/api/v1/orgs/{slug}/projects"),
                &alice,
                json!({"name": format!("p-{slug}")}),
            )
            .await;
        for n in 0..3 {
            app.post(
                &format!("/api/v1/orgs/{slug}/tasks"),
                &alice,
                json!({"project": project, "title": format!("{slug}-{n}")}),
            )
            .await;
        }
    }
    app.org(&bob, "three").await;
    let bob_project = app
        .create("/api/v1/orgs/three/projects", &bob, json!({"name": "bob's"}))
        .await;
    app.post(
        "/api/v1/orgs/three/tasks",
        &bob,
        json!({"project": bob_project, "title": "bob-0"}),
    )
    .await;
    // Alice is only a viewer of bob's org: she sees his tasks too (list needs viewer).
    app.post(
        "/api/v1/orgs/three/members",
        &bob,
        json!({"email": "alice@example.com", "role": "viewer"}),
    )
    .await;

    let mut titles = vec![];
    let mut path = "/api/v1/orgs/-/tasks?limit=3&sort=title".to_string();
    loop {
        let page = app.get(&path, &alice).await;
        assert_eq!(page.status, 200, "{}", page.text);
        titles.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["title"].as_str().unwrap().to_string()),
        );
        match page.body["next"].as_str() {
            Some(next) => path = format!("/api/v1/orgs/-/tasks?limit=3&sort=title&after={next}"),
            None => break,
        }
    }
    assert_eq!(
        titles,
        vec!["bob-0", "one-0", "one-1", "one-2", "two-0", "two-1", "two-2"]
    );
    // Projects need the default rule (any member): still visible; bob sees only his org.
    assert_eq!(
        app.get("/api/v1/orgs/-/tasks", &bob).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let create = app.post("/api/v1/orgs/-/tasks", &alice, json!({"title": "x"})).await;
    assert_eq!(create.status, 400);
    // Writes through `-` are refused: they would have no single org to check relations against.
    let task = app.get("/api/v1/orgs/one/tasks?limit=1", &alice).await.body["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let patch = app
        .patch(
            &format!("/api/v1/orgs/-/tasks/{task}"),
            &alice,
            json!({"project": bob_project}),
        )
        .await;
    assert_eq!((patch.status.as_u16(), patch.code()), (400, "bad_request"));
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/-/tasks/{task}"), &alice).await.status,
        400
    );
    // Reading one record through `-` stays within the caller's orgs.
    assert_eq!(
        app.get(&format!("/api/v1/orgs/-/tasks/{task}"), &alice).await.status,
        200
    );
    assert_eq!(app.get(&format!("/api/v1/orgs/-/tasks/{task}"), &bob).await.status, 404);
}

both!(
    no_route_leaks_or_alters_another_org,
    cross_org_list_spans_the_callers_orgs
);
