//! The records API: CRUD, validation, pagination, expand, search, aggregates, concurrency.

use std::collections::HashSet;

use keel_testkit::{Backend, TestApp, both, json};

/// An org `acme` with an owner; returns (app, owner token, project id).
async fn setup(backend: Backend) -> (TestApp, String, String) {
    let app = TestApp::spawn(backend).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let project = app
        .post(
            "/api/v1/orgs/acme/projects",
            &owner,
            json!({"name": "Apollo", "budget": 10.5}),
        )
        .await;
    assert_eq!(project.status, 201, "{}", project.text);
    let id = project.body["id"].as_str().unwrap().to_string();
    (app, owner, id)
}

async fn crud_round_trip(backend: Backend) {
    let (app, owner, project) = setup(backend).await;
    let created = app
        .post(
            "/api/v1/orgs/acme/tasks",
            &owner,
            json!({"project": project, "title": "Write docs", "due": "2026-12-01", "points": 3, "meta": {"labels": ["a"]}, "code": "ABC-12"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let task = &created.body;
    assert_eq!(task["status"], "todo", "defaults apply");
    assert_eq!(task["version"], 1);
    assert_eq!(task["meta"]["labels"][0], "a", "json round-trips as JSON");
    assert_eq!(task["due"], "2026-12-01");
    assert!(task["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created.header("etag"), Some("\"1\""));
    let id = task["id"].as_str().unwrap();

    let fetched = app.get(&format!("/api/v1/orgs/acme/tasks/{id}"), &owner).await;
    assert_eq!(fetched.body, created.body, "a read returns what the write returned");

    let updated = app
        .patch(
            &format!("/api/v1/orgs/acme/tasks/{id}"),
            &owner,
            json!({"status": "doing", "points": null}),
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert_eq!(updated.body["status"], "doing");
    assert_eq!(updated.body["points"], serde_json::Value::Null);
    assert_eq!(updated.body["version"], 2);
    assert_eq!(updated.body["title"], "Write docs", "fields left out are kept");

    let deleted = app.delete(&format!("/api/v1/orgs/acme/tasks/{id}"), &owner).await;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        app.get(&format!("/api/v1/orgs/acme/tasks/{id}"), &owner).await.status,
        404
    );
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/acme/tasks/{id}"), &owner)
            .await
            .status,
        404
    );
    assert_eq!(app.get("/api/v1/orgs/acme/tasks/not-a-uuid", &owner).await.status, 404);
}

async fn validation_lists_every_field(backend: Backend) {
    let (app, owner, _) = setup(backend).await;
    let response = app
        .post(
            "/api/v1/orgs/acme/tasks",
            &owner,
            json!({"title": "", "status": "nope", "points": 101, "due": "31/12/2026", "code": "abc", "colour": "red", "id": "x"}),
        )
        .await;
    assert_eq!(response.status, 400);
    assert_eq!(response.code(), "validation_failed");
    let details = response.body["error"]["details"].as_array().unwrap();
    let codes: HashSet<(String, String)> = details
        .iter()
        .map(|d| {
            (
                d["field"].as_str().unwrap().to_string(),
                d["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for expected in [
        ("project", "required"),
        ("title", "too_short"),
        ("status", "invalid_choice"),
        ("points", "out_of_range"),
        ("due", "invalid_type"),
        ("code", "pattern_mismatch"),
        ("colour", "unknown_field"),
        ("id", "read_only_field"),
    ] {
        assert!(
            codes.contains(&(expected.0.to_string(), expected.1.to_string())),
            "missing {expected:?} in {codes:?}"
        );
    }
    let not_object = app.post("/api/v1/orgs/acme/tasks", &owner, json!([1, 2])).await;
    assert_eq!(not_object.code(), "invalid_json");
    let ghost = app
        .post(
            "/api/v1/orgs/acme/tasks",
            &owner,
            json!({"project": uuid::Uuid::now_v7().to_string(), "title": "x"}),
        )
        .await;
    assert_eq!(ghost.code(), "validation_failed");
    assert_eq!(ghost.body["error"]["details"][0]["code"], "invalid_relation");
}

async fn unique_and_restrict_conflicts(backend: Backend) {
    let (app, owner, _) = setup(backend).await;
    let duplicate = app
        .post("/api/v1/orgs/acme/projects", &owner, json!({"name": "Apollo"}))
        .await;
    assert_eq!((duplicate.status.as_u16(), duplicate.code()), (409, "unique_violation"));
    assert_eq!(duplicate.body["error"]["details"]["fields"], json!(["name"]));
    // Unique is per org: another org may reuse the name.
    app.org(&owner, "beta").await;
    assert_eq!(
        app.post("/api/v1/orgs/beta/projects", &owner, json!({"name": "Apollo"}))
            .await
            .status,
        201
    );
}

async fn on_delete_cascade_and_restrict(backend: Backend) {
    let (app, owner, project) = setup(backend).await;
    let task = app
        .create(
            "/api/v1/orgs/acme/tasks",
            &owner,
            json!({"project": project, "title": "t"}),
        )
        .await;
    let comment = app
        .post(
            "/api/v1/orgs/acme/comments",
            &owner,
            json!({"task": task, "body": "hi"}),
        )
        .await;
    assert_eq!(comment.status, 201, "{}", comment.text);
    // comments.task is `restrict` (the default): the task cannot go while a comment points at it.
    let refused = app.delete(&format!("/api/v1/orgs/acme/tasks/{task}"), &owner).await;
    assert_eq!((refused.status.as_u16(), refused.code()), (409, "still_referenced"));
    assert_eq!(
        app.get(&format!("/api/v1/orgs/acme/tasks/{task}"), &owner).await.status,
        200,
        "nothing was deleted"
    );
    let comment_id = comment.body["id"].as_str().unwrap();
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/acme/comments/{comment_id}"), &owner)
            .await
            .status,
        204
    );
    // tasks.project is `cascade`: deleting the project deletes its tasks.
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/acme/projects/{project}"), &owner)
            .await
            .status,
        204
    );
    assert_eq!(
        app.get(&format!("/api/v1/orgs/acme/tasks/{task}"), &owner).await.status,
        404
    );
}

async fn if_match_makes_writes_conditional(backend: Backend) {
    let (app, owner, project) = setup(backend).await;
    let path = format!("/api/v1/orgs/acme/projects/{project}");
    let headers = |etag: &str| {
        vec![
            ("authorization".to_string(), format!("Bearer {owner}")),
            ("if-match".to_string(), etag.to_string()),
        ]
    };
    let ok = app
        .request_with(
            "PATCH",
            &path,
            headers("\"1\""),
            Some(json!({"budget": 20}).to_string()),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let stale = app
        .request_with(
            "PATCH",
            &path,
            headers("\"1\""),
            Some(json!({"budget": 30}).to_string()),
        )
        .await;
    assert_eq!((stale.status.as_u16(), stale.code()), (412, "version_mismatch"));
    assert_eq!(stale.body["error"]["details"]["current_version"], 2);
    let stale_delete = app.request_with("DELETE", &path, headers("\"1\""), None).await;
    assert_eq!(stale_delete.status, 412);
    let current = app.get(&path, &owner).await;
    assert_eq!(
        current.body["budget"].as_f64(),
        Some(20.0),
        "the stale write changed nothing"
    );
}

async fn concurrent_updates_never_lose_a_write(backend: Backend) {
    let (app, owner, project) = setup(backend).await;
    let app = std::sync::Arc::new(app);
    let path = format!("/api/v1/orgs/acme/projects/{project}");
    let mut handles = vec![];
    for n in 0..8 {
        let app = app.clone();
        let owner = owner.clone();
        let path = path.clone();
        handles.push(tokio::spawn(async move {
            let headers = vec![
                ("authorization".to_string(), format!("Bearer {owner}")),
                ("if-match".to_string(), "\"1\"".to_string()),
            ];
            app.request_with("PATCH", &path, headers, Some(json!({"budget": n}).to_string()))
                .await
                .status
                .as_u16()
        }));
    }
    let mut statuses = vec![];
    for handle in handles {
        statuses.push(handle.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "exactly one conditional write wins: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 412).count(), 7, "{statuses:?}");
}

async fn concurrent_creates_commit_independently(backend: Backend) {
    // On SQLite concurrent writes share group commits; a failing write must not take the
    // others down, and every acknowledged write must be there afterwards.
    let (app, owner, _) = setup(backend).await;
    let app = std::sync::Arc::new(app);
    let mut handles = vec![];
    for n in 0..40 {
        let app = app.clone();
        let owner = owner.clone();
        handles.push(tokio::spawn(async move {
            let response = app
                .post(
                    "/api/v1/orgs/acme/projects",
                    &owner,
                    json!({"name": format!("p{}", n % 30)}),
                )
                .await;
            (
                response.status.as_u16(),
                response.body["id"].as_str().map(str::to_string),
            )
        }));
    }
    let mut created = vec![];
    let mut conflicts = 0;
    for handle in handles {
        match handle.await.unwrap() {
            (201, Some(id)) => created.push(id),
            (409, _) => conflicts += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((created.len(), conflicts), (30, 10));
    for id in &created {
        assert_eq!(
            app.get(&format!("/api/v1/orgs/acme/projects/{id}"), &owner)
                .await
                .status,
            200
        );
    }
    let count = app.get("/api/v1/orgs/acme/projects?count=exact&limit=1", &owner).await;
    assert_eq!(count.body["count"], 31, "30 new projects and the setup's");
    let log = app
        .get(
            "/api/v1/orgs/acme/activity?count=exact&limit=1&filter=collection%20%3D%20%27projects%27",
            &owner,
        )
        .await;
    assert_eq!(
        log.body["count"], 31,
        "one activity row per committed create, none for the failed ones"
    );
}

async fn keyset_pagination_visits_every_row_once(backend: Backend) {
    let (app, owner, project) = setup(backend).await;
    for n in 0..23 {
        // Some due dates repeat and some are missing, to exercise ties and NULLs.
        let due = if n % 4 == 0 {
            serde_json::Value::Null
        } else {
            json!(format!("2026-01-{:02}", 1 + n % 5))
        };
        let response = app
            .post(
                "/api/v1/orgs/acme/tasks",
                &owner,
                json!({"project": project, "title": format!("t{n}"), "due": due, "points": n % 3}),
            )
            .await;
        assert_eq!(response.status, 201, "{}", response.text);
    }
    for sort in ["-due,title", "due", "points,-due", "-id", "title"] {
        let mut seen = vec![];
        let mut after: Option<String> = None;
        for _ in 0..20 {
            let mut path = format!("/api/v1/orgs/acme/tasks?limit=4&sort={sort}");
            if let Some(cursor) = &after {
                path.push_str(&format!("&after={cursor}"));
            }
            let page = app.get(&path, &owner).await;
            assert_eq!(page.status, 200, "{sort}: {}", page.text);
            for item in page.body["items"].as_array().unwrap() {
                seen.push(item["title"].as_str().unwrap().to_string());
            }
            match page.body["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(seen.len(), 23, "sort {sort}: every row once, got {seen:?}");
        assert_eq!(unique.len(), 23, "sort {sort}: no duplicates");
    }
    let all = app
        .get("/api/v1/orgs/acme/tasks?limit=500&sort=title&count=exact", &owner)
        .await;
    assert_eq!(all.body["count"], 23);
    assert_eq!(all.body["next"], serde_json::Value::Null);
    let titles: Vec<&str> = all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    let mut sorted = titles.clone();
    sorted.sort();
    assert_eq!(titles, sorted);
}

async fn list_parameters_are_checked(backend: Backend) {
    let (app, owner, _) = setup(backend).await;
    let base = "/api/v1/orgs/acme/tasks";
    for (query, code) in [
        ("limit=501", "limit_too_large"),
        ("limit=0", "invalid_query"),
        ("limit=abc", "invalid_query"),
        ("after=garbage", "invalid_cursor"),
        ("sort=nope", "unknown_field"),
        ("sort=meta", "invalid_sort"),
        ("filter=nope%20%3D%201", "unknown_field"),
        ("filter=points%20%3D%20%22x%22", "invalid_value"),
        ("filter=title%20%3D%3D%3D", "invalid_filter"),
        ("filter=(((", "invalid_filter"),
        ("fields=nope", "unknown_field"),
        ("expand=title", "invalid_query"),
        ("color=red", "invalid_query"),
        ("limit=1&limit=2", "invalid_query"),
        ("count=maybe", "invalid_query"),
    ] {
        let response = app.get(&format!("{base}?{query}"), &owner).await;
        assert_eq!(response.status, 400, "{query}: {}", response.text);
        assert_eq!(response.code(), code, "{query}: {}", response.text);
    }
    let unknown = app.get(&format!("{base}?filter=nope%20%3D%201"), &owner).await;
    assert_eq!(
        unknown.body["error"]["details"]["field"], "nope",
        "the code names the field"
    );
    // A cursor from one sort cannot be used with another.
    for n in 0..3 {
        app.post("/api/v1/orgs/acme/projects", &owner, json!({"name": format!("p{n}")}))
            .await;
    }
    let page = app.get("/api/v1/orgs/acme/projects?limit=1&sort=name", &owner).await;
    let cursor = page.body["next"].as_str().unwrap();
    let mixed = app
        .get(
            &format!("/api/v1/orgs/acme/projects?limit=1&sort=-name&after={cursor}"),
            &owner,
        )
        .await;
    assert_eq!(mixed.code(), "invalid_cursor");
    assert_eq!(
        app.get("/api/v1/orgs/acme/nothing", &owner).await.code(),
        "collection_not_found"
    );
}

async fn filters_select_the_right_rows(backend: Backend) {
    let (app, owner, project) = setup(backend).await;
    for (title, status, points, due) in [
        ("alpha one", "todo", 1, "2026-01-01"),
        ("beta two", "doing", 5, "2026-02-01"),
        ("gamma three", "done", 9, "2026-03-01"),
        ("Alpha four", "todo", 7, "2026-04-01"),
    ] {
        app.post(
            "/api/v1/orgs/acme/tasks",
            &owner,
            json!({"project": project, "title": title, "status": status, "points": points, "due": due}),
        )
        .await;
    }
    let titles = |body: &serde_json::Value| {
        let mut t: Vec<String> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["title"].as_str().unwrap().to_string())
            .collect();
        t.sort();
        t
    };
    for (filter, expected) in [
        ("status = 'todo'", vec!["Alpha four", "alpha one"]),
        ("status != 'todo' && points > 5", vec!["gamma three"]),
        ("status in ['doing', 'done']", vec!["beta two", "gamma three"]),
        ("status not in ['todo']", vec!["beta two", "gamma three"]),
        ("title contains 'ALPHA'", vec!["Alpha four", "alpha one"]),
        ("title startswith 'gam'", vec!["gamma three"]),
        (
            "due >= '2026-02-01' and due < '2026-04-01'",
            vec!["beta two", "gamma three"],
        ),
        (
            "!(points <= 5) || title = 'alpha one'",
            vec!["Alpha four", "alpha one", "gamma three"],
        ),
        (
            "assignee = null",
            vec!["Alpha four", "alpha one", "beta two", "gamma three"],
        ),
        ("assignee = @user", vec![]),
        ("title contains '%'", vec![]),
        (
            "created_at <= @now && created_at > @now - 1d",
            vec!["Alpha four", "alpha one", "beta two", "gamma three"],
        ),
    ] {
        let encoded: String = form_urlencoded::byte_serialize(filter.as_bytes()).collect();
        let response = app
            .get(&format!("/api/v1/orgs/acme/tasks?filter={encoded}"), &owner)
            .await;
        assert_eq!(response.status, 200, "{filter}: {}", response.text);
        assert_eq!(titles(&response.body), expected, "{filter}");
    }
    // Injection attempts are just values.
    let hostile = "title = \"x' OR 1=1 --\"";
    let encoded: String = form_urlencoded::byte_serialize(hostile.as_bytes()).collect();
    let response = app
        .get(&format!("/api/v1/orgs/acme/tasks?filter={encoded}"), &owner)
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body["items"].as_array().unwrap().len(), 0);
}

async fn fields_expand_and_no_n_plus_one(backend: Backend) {
    let (app, owner, project) = setup(backend).await;
    let me = app.get("/api/v1/auth/me", &owner).await;
    let owner_id = me.body["user"]["id"].as_str().unwrap().to_string();
    for n in 0..30 {
        app.post(
            "/api/v1/orgs/acme/tasks",
            &owner,
            json!({"project": project, "title": format!("t{n}"), "assignee": owner_id}),
        )
        .await;
    }
    let projected = app.get("/api/v1/orgs/acme/tasks?fields=id,title&limit=2", &owner).await;
    let item = projected.body["items"][0].as_object().unwrap();
    assert_eq!(
        item.keys().cloned().collect::<HashSet<_>>(),
        HashSet::from(["id".to_string(), "title".to_string()])
    );
    // The id stays in every projection, even an empty one.
    for fields in ["title", ""] {
        let projected = app
            .get(&format!("/api/v1/orgs/acme/tasks?fields={fields}&limit=1"), &owner)
            .await;
        let item = projected.body["items"][0].as_object().unwrap();
        assert!(item.contains_key("id"), "fields={fields}: {item:?}");
        assert_eq!(item.len(), if fields.is_empty() { 1 } else { 2 });
    }

    let expanded = app
        .get("/api/v1/orgs/acme/tasks?expand=project,assignee&limit=3", &owner)
        .await;
    assert_eq!(expanded.status, 200, "{}", expanded.text);
    let first = &expanded.body["items"][0];
    assert_eq!(first["expand"]["project"]["name"], "Apollo");
    assert_eq!(first["expand"]["assignee"]["email"], "owner@example.com");
    assert!(first["expand"]["assignee"].get("password_hash").is_none());

    // The statement count of a request does not grow with the page size (no N+1).
    let before = app.statements();
    app.get("/api/v1/orgs/acme/tasks?expand=project,assignee&limit=2", &owner)
        .await;
    let small = app.statements() - before;
    let before = app.statements();
    app.get("/api/v1/orgs/acme/tasks?expand=project,assignee&limit=30", &owner)
        .await;
    let large = app.statements() - before;
    assert_eq!(
        small, large,
        "statements for 2 rows ({small}) and for 30 rows ({large})"
    );
    assert!(large <= 3, "auth + org + list: {large}");

    let one = app
        .get(
            &format!(
                "/api/v1/orgs/acme/tasks/{}?expand=project",
                first["id"].as_str().unwrap()
            ),
            &owner,
        )
        .await;
    assert_eq!(one.body["expand"]["project"]["id"], project.as_str());
}

async fn full_text_search(backend: Backend) {
    let (app, owner, project) = setup(backend).await;
    let mut ids = vec![];
    for title in [
        "Renew driver licence",
        "Quarterly audit",
        "Audit the fleet",
        "licence plates",
    ] {
        let created = app
            .post(
                "/api/v1/orgs/acme/tasks",
                &owner,
                json!({"project": project, "title": title}),
            )
            .await;
        ids.push(created.body["id"].as_str().unwrap().to_string());
    }
    let search = |q: &'static str| {
        let app = &app;
        let owner = owner.clone();
        async move {
            let encoded: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
            let response = app.get(&format!("/api/v1/orgs/acme/tasks?q={encoded}"), &owner).await;
            assert_eq!(response.status, 200, "{q}: {}", response.text);
            let mut titles: Vec<String> = response.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["title"].as_str().unwrap().to_string())
                .collect();
            titles.sort();
            titles
        }
    };
    assert_eq!(search("audit").await, vec!["Audit the fleet", "Quarterly audit"]);
    assert_eq!(search("licence driver").await, vec!["Renew driver licence"]);
    assert_eq!(
        search("\"unbalanced AND (").await,
        Vec::<String>::new(),
        "FTS syntax in user text is just words"
    );
    let count = app.get("/api/v1/orgs/acme/tasks?q=audit&count=exact", &owner).await;
    assert_eq!(count.body["count"], 2);
    let long = vec!["word"; 33].join("%20");
    assert_eq!(
        app.get(&format!("/api/v1/orgs/acme/tasks?q={long}"), &owner)
            .await
            .code(),
        "invalid_query"
    );
    let no_search = app.get("/api/v1/global/countries?q=x", &owner).await;
    assert_eq!(no_search.code(), "search_not_enabled");

    // The index follows every write: a searched field changed, another field changed, a
    // record deleted, and its project's cascade.
    let renamed = app
        .patch(
            &format!("/api/v1/orgs/acme/tasks/{}", ids[1]),
            &owner,
            json!({"title": "Quarterly review"}),
        )
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    let status = app
        .patch(
            &format!("/api/v1/orgs/acme/tasks/{}", ids[2]),
            &owner,
            json!({"status": "done"}),
        )
        .await;
    assert_eq!(status.status, 200, "{}", status.text);
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/acme/tasks/{}", ids[3]), &owner)
            .await
            .status,
        204
    );
    assert_eq!(search("audit").await, vec!["Audit the fleet"]);
    assert_eq!(search("review").await, vec!["Quarterly review"]);
    assert_eq!(search("licence").await, vec!["Renew driver licence"]);
    assert_eq!(search("plates").await, Vec::<String>::new());
    assert_search_intact(&app, "tasks").await;
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/acme/projects/{project}"), &owner)
            .await
            .status,
        204
    );
    assert_eq!(
        search("audit").await,
        Vec::<String>::new(),
        "cascaded deletes leave the index"
    );
    assert_search_intact(&app, "tasks").await;
}

/// On SQLite, FTS5's own check that the search index matches the text of the table it
/// indexes (PostgreSQL's index is maintained by the database itself).
async fn assert_search_intact(app: &TestApp, table: &str) {
    if let keel_store::Db::Sqlite(_) = app.db() {
        let fts = format!("{table}_fts");
        app.db()
            .write(&app.db().portable(
                &format!("INSERT INTO \"{fts}\" (\"{fts}\", rank) VALUES ('integrity-check', 1)"),
                vec![],
            ))
            .await
            .unwrap_or_else(|e| panic!("the search index of {table} disagrees with its table: {e}"));
    }
}

async fn aggregates_group_and_measure(backend: Backend) {
    let (app, owner, project) = setup(backend).await;
    for (status, points) in [("todo", 1), ("todo", 3), ("done", 10), ("doing", 4), ("done", 20)] {
        app.post(
            "/api/v1/orgs/acme/tasks",
            &owner,
            json!({"project": project, "title": "t", "status": status, "points": points}),
        )
        .await;
    }
    let response = app
        .get(
            "/api/v1/orgs/acme/tasks/aggregate?group=status&measures=sum:points,avg:points,max:points",
            &owner,
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let groups = response.body["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    let done = groups.iter().find(|g| g["status"] == "done").unwrap();
    assert_eq!(done["count"], 2);
    assert_eq!(done["sum_points"], 30);
    assert_eq!(done["avg_points"].as_f64(), Some(15.0));
    assert_eq!(done["max_points"], 20);
    let filtered = app
        .get(
            "/api/v1/orgs/acme/tasks/aggregate?measures=sum:points&filter=status%20%21%3D%20%27done%27",
            &owner,
        )
        .await;
    assert_eq!(filtered.body["groups"][0]["count"], 3);
    assert_eq!(filtered.body["groups"][0]["sum_points"], 8);
    let bad = app
        .get("/api/v1/orgs/acme/tasks/aggregate?measures=sum:title", &owner)
        .await;
    assert_eq!(bad.code(), "invalid_value");
    let bad = app
        .get("/api/v1/orgs/acme/tasks/aggregate?measures=median:points", &owner)
        .await;
    assert_eq!(bad.code(), "invalid_aggregate");
}

async fn activity_log_records_every_write(backend: Backend) {
    let (app, owner, project) = setup(backend).await;
    let created = app
        .post(
            "/api/v1/orgs/acme/tasks",
            &owner,
            json!({"project": project, "title": "audited"}),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_string();
    app.patch(
        &format!("/api/v1/orgs/acme/tasks/{id}"),
        &owner,
        json!({"title": "changed", "status": "done"}),
    )
    .await;
    app.delete(&format!("/api/v1/orgs/acme/tasks/{id}"), &owner).await;
    let filter: String = form_urlencoded::byte_serialize(format!("record = '{id}'").as_bytes()).collect();
    let log = app
        .get(&format!("/api/v1/orgs/acme/activity?filter={filter}&sort=id"), &owner)
        .await;
    assert_eq!(log.status, 200, "{}", log.text);
    let items = log.body["items"].as_array().unwrap();
    let actions: Vec<&str> = items.iter().map(|i| i["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["create", "update", "delete"]);
    let update = &items[1];
    assert_eq!(
        update["changes"]["changed"]["title"],
        json!({"old": "audited", "new": "changed"})
    );
    assert_eq!(
        update["changes"]["changed"]["status"],
        json!({"old": "todo", "new": "done"})
    );
    assert!(update["changes"]["changed"].get("version").is_none());
    assert_eq!(update["collection"], "tasks");
    assert!(
        !update["request_id"].as_str().unwrap().is_empty(),
        "the request id is kept"
    );
    let me = app.get("/api/v1/auth/me", &owner).await;
    assert_eq!(update["actor"], me.body["user"]["id"]);
    // The log is read-only and needs admin.
    let write = app
        .post("/api/v1/orgs/acme/activity", &owner, json!({"action": "create"}))
        .await;
    assert_eq!((write.status.as_u16(), write.code()), (405, "read_only_collection"));
    let (_, member) = app.member(&owner, "acme", "m@example.com", "member").await;
    assert_eq!(app.get("/api/v1/orgs/acme/activity", &member).await.code(), "forbidden");
}

async fn global_collections(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (admin_id, admin) = app.signup("root@example.com").await;
    app.make_superuser(&admin_id).await;
    let (_, user) = app.signup("user@example.com").await;
    let created = app
        .post(
            "/api/v1/global/countries",
            &admin,
            json!({"code": "PT", "name": "Portugal"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert!(created.body.get("org").is_none(), "global records have no org");
    assert_eq!(
        app.post(
            "/api/v1/global/countries",
            &user,
            json!({"code": "ES", "name": "Spain"})
        )
        .await
        .code(),
        "forbidden"
    );
    let listed = app.get("/api/v1/global/countries", &user).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.get("/api/v1/global/tasks", &user).await.code(),
        "collection_not_found"
    );
    app.org(&user, "acme").await;
    assert_eq!(
        app.get("/api/v1/orgs/acme/countries", &user).await.code(),
        "collection_not_found"
    );
}

both!(
    crud_round_trip,
    validation_lists_every_field,
    unique_and_restrict_conflicts,
    on_delete_cascade_and_restrict,
    if_match_makes_writes_conditional,
    concurrent_updates_never_lose_a_write,
    concurrent_creates_commit_independently,
    keyset_pagination_visits_every_row_once,
    list_parameters_are_checked,
    filters_select_the_right_rows,
    fields_expand_and_no_n_plus_one,
    full_text_search,
    aggregates_group_and_measure,
    activity_log_records_every_write,
    global_collections,
);
