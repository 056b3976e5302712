//! Access rules: roles and ownership ("assignee is me").

use keel_testkit::{Backend, TestApp, both, json};

async fn roles_and_ownership(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let (member_id, member) = app.member(&owner, "acme", "member@example.com", "member").await;
    let (_, viewer) = app.member(&owner, "acme", "viewer@example.com", "viewer").await;
    let (_, other) = app.member(&owner, "acme", "other@example.com", "member").await;

    // projects.create needs admin.
    assert_eq!(
        app.post("/api/v1/orgs/acme/projects", &member, json!({"name": "x"}))
            .await
            .code(),
        "forbidden"
    );
    let project = app
        .create("/api/v1/orgs/acme/projects", &owner, json!({"name": "Apollo"}))
        .await;

    // tasks.create needs member; viewers can only read.
    assert_eq!(
        app.post(
            "/api/v1/orgs/acme/tasks",
            &viewer,
            json!({"project": project, "title": "x"})
        )
        .await
        .code(),
        "forbidden"
    );
    let mine = app
        .post(
            "/api/v1/orgs/acme/tasks",
            &member,
            json!({"project": project, "title": "mine", "assignee": member_id}),
        )
        .await;
    assert_eq!(mine.status, 201, "{}", mine.text);
    let mine = mine.body["id"].as_str().unwrap().to_string();
    let theirs = app
        .create(
            "/api/v1/orgs/acme/tasks",
            &owner,
            json!({"project": project, "title": "theirs"}),
        )
        .await;
    assert_eq!(
        app.get("/api/v1/orgs/acme/tasks", &viewer).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // update: admin or the assignee; other rows are out of reach (404).
    for (task, token, expected) in [
        (&mine, &member, 200),
        (&theirs, &member, 404),
        (&mine, &other, 404),
        (&theirs, &owner, 200),
        (&mine, &viewer, 404),
    ] {
        let response = app
            .patch(
                &format!("/api/v1/orgs/acme/tasks/{task}"),
                token,
                json!({"status": "done"}),
            )
            .await;
        assert_eq!(response.status, expected, "{}", response.text);
    }
    // delete: admin only.
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/acme/tasks/{mine}"), &member)
            .await
            .code(),
        "forbidden"
    );
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/acme/tasks/{mine}"), &owner)
            .await
            .status,
        204
    );
}

const OWNERSHIP_SPEC: &str = r#"
[app]
name = "notes"
[roles]
order = ["admin", "member"]
[collections.notes]
fields.owner = { type = "relation", to = "users", required = true }
fields.body = { type = "text" }
rules.list = "owner = @user || role >= admin"
rules.view = "owner = @user || role >= admin"
rules.create = "owner = @user"
rules.update = "owner = @user"
rules.delete = "owner = @user"
"#;

async fn list_and_create_rules_filter_rows(backend: Backend) {
    let app = TestApp::spawn_with(backend, OWNERSHIP_SPEC, |_| {}).await;
    let (admin_id, admin) = app.signup("admin@example.com").await;
    app.org(&admin, "acme").await;
    let (alice_id, alice) = app.member(&admin, "acme", "alice@example.com", "member").await;
    let (_, bob) = app.member(&admin, "acme", "bob@example.com", "member").await;
    let note = app
        .post(
            "/api/v1/orgs/acme/notes",
            &alice,
            json!({"owner": alice_id, "body": "secret"}),
        )
        .await;
    assert_eq!(note.status, 201, "{}", note.text);
    let id = note.body["id"].as_str().unwrap();
    // A create rule is checked on the new row: bob cannot create a note owned by alice.
    let forged = app
        .post(
            "/api/v1/orgs/acme/notes",
            &bob,
            json!({"owner": alice_id, "body": "forged"}),
        )
        .await;
    assert_eq!(forged.code(), "forbidden");
    assert_eq!(
        app.get("/api/v1/orgs/acme/notes?count=exact", &alice).await.body["count"],
        1,
        "the forged note was rolled back"
    );
    assert_eq!(
        app.get("/api/v1/orgs/acme/notes", &bob).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "list rules filter rows"
    );
    assert_eq!(
        app.get(&format!("/api/v1/orgs/acme/notes/{id}"), &bob).await.status,
        404
    );
    assert_eq!(
        app.get("/api/v1/orgs/acme/notes", &admin).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/acme/notes/{id}"), &bob).await.status,
        404
    );
    let _ = admin_id;
}

async fn superuser_passes_every_rule(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let (root_id, root) = app.signup("root@example.com").await;
    app.make_superuser(&root_id).await;
    let project = app
        .post("/api/v1/orgs/acme/projects", &root, json!({"name": "by root"}))
        .await;
    assert_eq!(project.status, 201, "{}", project.text);
    assert_eq!(
        app.get("/api/v1/orgs/-/projects", &root).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

both!(
    roles_and_ownership,
    list_and_create_rules_filter_rows,
    superuser_passes_every_rule
);
