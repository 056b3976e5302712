//! Import (B1–B3) and bulk delete (B4) on both backends: CSV and NDJSON, relations by id or
//! lookup key, atomic and skip modes with row-level reports, a hostile-CSV suite where no
//! valid row is lost and every rejection is reported, batches listed and deleted in one call,
//! delete by filter with one activity entry, and the limits.

use keel_testkit::{Backend, TestApp, both};
use serde_json::{Value, json};

const SPEC: &str = r#"
[app]
name = "imports"

[roles]
order = ["owner", "admin", "member", "viewer"]

[collections.projects]
fields.name = { type = "text", required = true, max = 100, unique = true }
fields.code = { type = "text", max = 10, unique = true }
rules.create = "role >= member"
rules.delete = "role >= admin"

[collections.tasks]
fields.project = { type = "relation", to = "projects", required = true, lookup = "name", on_delete = "cascade" }
fields.title = { type = "text", required = true, max = 50 }
fields.status = { type = "select", values = ["todo", "done"], required = true, default = "todo" }
fields.estimate = { type = "number", min = 0 }
fields.position = { type = "integer", required = true, default = 1000 }
fields.urgent = { type = "bool" }
fields.due = { type = "date" }
fields.meta = { type = "json" }
fields.assignee = { type = "relation", to = "users", on_delete = "set_null" }
rules.create = "role >= member"
rules.delete = "role >= admin"
jobs.on_create = ["task_created"]

[collections.notes]
fields.body = { type = "text", required = true }
fields.owner = { type = "relation", to = "users", required = true }
rules.create = "role >= admin || owner = @user"

[jobs.task_created]
handler = "noop"
"#;

const CSV: &str = "text/csv";

struct Fixture {
    app: TestApp,
    owner: String,
    owner_id: String,
    project: String,
}

async fn fixture(backend: Backend) -> Fixture {
    fixture_with(backend, |_| {}).await
}

async fn fixture_with(backend: Backend, configure: impl FnOnce(&mut keel_server::Config)) -> Fixture {
    let app = TestApp::spawn_with(backend, SPEC, configure).await;
    let (owner_id, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let project = app
        .create(
            "/api/v1/orgs/acme/projects",
            &owner,
            json!({"name": "Apollo", "code": "AP"}),
        )
        .await;
    app.create("/api/v1/orgs/acme/projects", &owner, json!({"name": "Gemini"}))
        .await;
    Fixture {
        app,
        owner,
        owner_id,
        project,
    }
}

fn errors(report: &Value) -> Vec<(u64, u64, String, String)> {
    report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["row"].as_u64().unwrap(),
                e["line"].as_u64().unwrap(),
                e["column"].as_str().unwrap_or("").to_string(),
                e["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn list(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let response = app
        .get(
            &format!("/api/v1/orgs/acme/tasks?limit=500&sort=position&{query}"),
            token,
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    response.body["items"].as_array().unwrap().clone()
}

async fn csv_import_maps_converts_and_reports_each_bad_row(backend: Backend) {
    let Fixture {
        app,
        owner,
        project,
        owner_id,
    } = fixture(backend).await;
    // A BOM, CRLF line ends, a quoted field with a comma and a newline, a column in another
    // case, relations by lookup key, by id and by email, and six bad rows.
    let body = format!(
        "\u{feff}Title,project,status,estimate,position,urgent,due,meta,assignee,id\r\n\
         \"Plan, then\nlaunch\",Apollo,done,2.5,1,yes,2026-03-01,\"{{\"\"k\"\":1}}\",OWNER@example.com,ignored\r\n\
         By id,{project},,,2,,,,,\r\n\
         Bad number,Apollo,todo,lots,3,,,,,\r\n\
         Bad status,Apollo,maybe,,4,,,,,\r\n\
         ,Apollo,todo,,5,,,,,\r\n\
         Ragged,Apollo\r\n\
         Unknown project,Zeus,todo,,7,,,,,\r\n\
         Not a member,Gemini,todo,,8,,,,stranger@example.com,\r\n\
         Last,Gemini,todo,,9,no,,,,\r\n"
    );
    let response = app
        .import("/api/v1/orgs/acme/tasks", "mode=skip", &owner, CSV, body)
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let report = &response.body;
    assert_eq!(
        (
            report["read"].as_u64(),
            report["written"].as_u64(),
            report["rejected"].as_u64()
        ),
        (Some(9), Some(3), Some(6)),
        "{report:#}"
    );
    assert_eq!(report["committed"], true);
    assert_eq!(
        errors(report),
        vec![
            (3, 5, "estimate".into(), "invalid_type".into()),
            (4, 6, "status".into(), "invalid_choice".into()),
            (5, 7, "title".into(), "required".into()),
            (6, 8, "".into(), "wrong_field_count".into()),
            (7, 9, "project".into(), "invalid_relation".into()),
            (8, 10, "assignee".into(), "invalid_relation".into()),
        ],
        "{report:#}"
    );

    let batch = report["batch"].as_str().unwrap();
    let tasks = list(&app, &owner, &format!("filter=batch%20%3D%20%22{batch}%22")).await;
    assert_eq!(tasks.len(), 3);
    assert_eq!(tasks[0]["title"], "Plan, then\nlaunch");
    assert_eq!(tasks[0]["project"], project.as_str());
    assert_eq!(tasks[0]["estimate"], 2.5);
    assert_eq!(tasks[0]["urgent"], true);
    assert_eq!(tasks[0]["due"], "2026-03-01");
    assert_eq!(tasks[0]["meta"], json!({"k": 1}));
    assert_eq!(tasks[0]["assignee"], owner_id.as_str());
    assert_eq!(tasks[0]["batch"], batch);
    assert_ne!(tasks[0]["id"], "ignored");
    assert_eq!(tasks[1]["status"], "todo", "an empty cell takes the default");
    assert_eq!(tasks[1]["project"], project.as_str());
    assert_eq!(tasks[2]["urgent"], false);

    // One activity entry for the import, counting its rows.
    let activity = app
        .get("/api/v1/orgs/acme/activity?filter=action%20%3D%20%22import%22", &owner)
        .await;
    let entries = activity.body["items"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{}", activity.text);
    assert_eq!(entries[0]["count"], 3);
    assert_eq!(entries[0]["record"], batch);

    // The trigger enqueued one job per written row, in the import's transaction.
    let jobs = app
        .get("/api/v1/orgs/acme/jobs?kind=task_created&limit=100", &owner)
        .await;
    assert_eq!(jobs.body["items"].as_array().map(Vec::len), Some(3), "{}", jobs.text);
}

async fn atomic_import_writes_nothing_unless_every_row_is_valid(backend: Backend) {
    let Fixture { app, owner, .. } = fixture(backend).await;
    let bad = "title,project,position\nFine,Apollo,1\nBroken,Apollo,x\nAlso fine,Gemini,3\n";
    let response = app.import("/api/v1/orgs/acme/tasks", "", &owner, CSV, bad).await;
    assert_eq!(
        (response.status.as_u16(), response.code()),
        (422, "import_rejected"),
        "{}",
        response.text
    );
    let report = &response.body["error"]["details"];
    assert_eq!(report["written"], 0);
    assert_eq!(report["committed"], false);
    assert_eq!(errors(report), vec![(2, 3, "position".into(), "invalid_type".into())]);
    assert!(list(&app, &owner, "").await.is_empty(), "nothing was written");

    let good = "title,project,position\nFine,Apollo,1\nAlso fine,Gemini,3\n";
    let response = app
        .import("/api/v1/orgs/acme/tasks", "mode=atomic", &owner, CSV, good)
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.body["written"], 2);
    assert_eq!(list(&app, &owner, "").await.len(), 2);
}

async fn duplicates_are_reported_and_the_rest_kept(backend: Backend) {
    let Fixture { app, owner, .. } = fixture(backend).await;
    // "Apollo" exists already; "Mercury" is in the file twice.
    let mut body = String::from("name,code\n");
    for n in 0..30 {
        body.push_str(&format!("Project {n},\n"));
    }
    body.push_str("Apollo,\nMercury,ME\nMercury,MX\nVenus,VE\n");
    let response = app
        .import("/api/v1/orgs/acme/projects", "mode=skip", &owner, CSV, body.clone())
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.body["written"], 32, "{}", response.text);
    let errs = errors(&response.body);
    assert_eq!(
        errs,
        vec![
            (31, 32, "name".into(), "unique_violation".into()),
            (33, 34, "name".into(), "unique_violation".into()),
        ]
    );
    let atomic = app.import("/api/v1/orgs/acme/projects", "", &owner, CSV, body).await;
    assert_eq!(atomic.code(), "import_rejected");
}

async fn hostile_csv_loses_no_valid_row(backend: Backend) {
    let app = TestApp::spawn_with(backend, SPEC, |config| {
        config.limits.import_max_row_bytes = 4_096;
    })
    .await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.create("/api/v1/orgs/acme/projects", &owner, json!({"name": "Apollo"}))
        .await;
    let mut body: Vec<u8> = b"title,project,position,meta\n".to_vec();
    body.extend_from_slice(b"ok 1,Apollo,1,\n");
    body.extend_from_slice(b"bad \xff\xfe bytes,Apollo,2,\n");
    body.extend_from_slice(format!("\"{}\",Apollo,3,\n", "x".repeat(10_000)).as_bytes());
    body.extend_from_slice(b"ok 2,Apollo,4,\n");
    body.extend_from_slice(format!("{},Apollo,5,\n", "y".repeat(51)).as_bytes());
    body.extend_from_slice(b"=HYPERLINK(\"http://evil\"),Apollo,6,\n");
    body.extend_from_slice(b"wrong types,Apollo,6.5,{not json}\n");
    body.extend_from_slice(b"too,many,fields,here,!\n");
    body.extend_from_slice(b"ok 4,Apollo,10,\"[1,2]\"\n");
    // An unterminated quote runs to the end of the file: one bad row.
    body.extend_from_slice(b"\"unterminated,Apollo,8,\nstill inside,Apollo,9,\n");
    let response = app
        .import("/api/v1/orgs/acme/tasks", "mode=skip", &owner, CSV, body)
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    let report = &response.body;
    let codes: Vec<(u64, String, String)> = errors(report)
        .into_iter()
        .map(|(row, _, column, code)| (row, column, code))
        .collect();
    assert_eq!(
        codes[..6],
        [
            (2, "title".into(), "invalid_encoding".into()),
            (3, "".into(), "row_too_large".into()),
            (5, "title".into(), "too_long".into()),
            (7, "position".into(), "invalid_type".into()),
            (7, "meta".into(), "invalid_json".into()),
            (8, "".into(), "wrong_field_count".into()),
        ],
        "{report:#}"
    );
    let titles: Vec<String> = list(&app, &owner, "")
        .await
        .iter()
        .map(|t| t["title"].as_str().unwrap().to_string())
        .collect();
    assert!(titles.contains(&"ok 1".to_string()) && titles.contains(&"ok 2".to_string()));
    assert!(titles.contains(&"ok 4".to_string()), "{titles:?}");
    assert_eq!(codes.last().unwrap().2, "wrong_field_count", "the unterminated row");
    assert!(
        titles.contains(&"=HYPERLINK(\"http://evil\")".to_string()),
        "stored as given"
    );
    let read = report["read"].as_u64().unwrap();
    assert_eq!(
        read,
        report["written"].as_u64().unwrap() + report["rejected"].as_u64().unwrap(),
        "every row read is either written or reported: {report:#}"
    );
    // Exported back out, the formula is defused.
    let export = app
        .get("/api/v1/orgs/acme/tasks/export?format=csv&fields=title", &owner)
        .await;
    assert!(export.text.contains("'=HYPERLINK"), "{}", export.text);
    assert!(!export.text.contains("\n=HYPERLINK") && !export.text.contains(",=HYPERLINK"));
}

async fn ndjson_imports_and_an_export_reads_back_in(backend: Backend) {
    let Fixture {
        app, owner, project, ..
    } = fixture(backend).await;
    let body = format!(
        "{{\"title\":\"one\",\"project\":\"Apollo\",\"position\":1,\"meta\":{{\"a\":[1,2]}}}}\n\
         \n\
         {{\"title\":\"two\",\"project\":\"{project}\",\"position\":2,\"urgent\":true}}\r\n\
         [1,2]\n\
         {{\"title\":\"three\",\"project\":\"Apollo\",\"position\":\"x\",\"nope\":1}}\n\
         {{\"title\": \"broken\"\n"
    );
    let response = app
        .import(
            "/api/v1/orgs/acme/tasks",
            "mode=skip",
            &owner,
            "application/x-ndjson",
            body,
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.body["written"], 2);
    let errs = errors(&response.body);
    assert_eq!(errs[0], (3, 4, "".into(), "invalid_json".into()));
    assert!(
        errs.iter().any(|e| e.0 == 4 && e.2 == "nope" && e.3 == "unknown_field"),
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e.0 == 4 && e.2 == "position"), "{errs:?}");
    assert_eq!(errs.last().unwrap().3, "invalid_json");

    // An export of the org, imported into another org: system columns are ignored, and the
    // relation is given by id, which must exist in the new org; map it to the lookup name.
    let export = app.get("/api/v1/orgs/acme/tasks/export?format=csv", &owner).await;
    app.org(&owner, "other").await;
    app.create("/api/v1/orgs/other/projects", &owner, json!({"name": "Apollo"}))
        .await;
    let response = app
        .import(
            "/api/v1/orgs/other/tasks",
            "mode=skip",
            &owner,
            CSV,
            export.text.clone(),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(
        response.body["rejected"], 2,
        "project ids of another org do not resolve"
    );
    assert!(
        errors(&response.body)
            .iter()
            .all(|e| e.2 == "project" && e.3 == "invalid_relation")
    );
}

async fn bad_imports_fail_before_reading(backend: Backend) {
    let app = TestApp::spawn_with(backend, SPEC, |config| {
        config.limits.import_max_bytes = 1_000;
    })
    .await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let path = "/api/v1/orgs/acme/tasks";
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("", CSV, b"title,project,colour\n".to_vec(), 400, "invalid_import"),
        ("", CSV, b"title,position\n".to_vec(), 400, "invalid_import"),
        ("", CSV, b"title,Title,project\n".to_vec(), 400, "invalid_import"),
        ("", CSV, b"".to_vec(), 400, "invalid_import"),
        ("", "application/json", b"[]".to_vec(), 415, "unsupported_media_type"),
        ("mode=maybe", CSV, b"title\n".to_vec(), 400, "invalid_query"),
        (
            "map=%7B%22a%22%3A%22nope%22%7D",
            CSV,
            b"a\n".to_vec(),
            400,
            "invalid_import",
        ),
        ("", CSV, vec![b'a'; 2_000], 413, "payload_too_large"),
    ];
    for (query, content_type, body, status, code) in cases {
        let response = app.import(path, query, &owner, content_type, body).await;
        assert_eq!(
            (response.status.as_u16(), response.code()),
            (status, code),
            "{query}: {}",
            response.text
        );
    }
    // A column mapped to nothing is ignored; a mapped column fills its field.
    app.create("/api/v1/orgs/acme/projects", &owner, json!({"name": "Apollo"}))
        .await;
    let map = "map=%7B%22Colour%22%3Anull%2C%22Name%22%3A%22title%22%7D";
    let response = app
        .import(path, map, &owner, CSV, "Name,project,Colour\nmapped,Apollo,red\n")
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    // Viewers cannot import; strangers do not see the org.
    let (_, viewer) = app.member(&owner, "acme", "viewer@example.com", "viewer").await;
    let response = app.import(path, "", &viewer, CSV, "title,project\nx,Apollo\n").await;
    assert_eq!(response.status, 403);
    let (_, stranger) = app.signup("stranger@example.com").await;
    let response = app.import(path, "", &stranger, CSV, "title,project\nx,Apollo\n").await;
    assert_eq!(response.status, 404);
}

async fn the_create_rule_applies_to_each_row(backend: Backend) {
    let Fixture {
        app, owner, owner_id, ..
    } = fixture(backend).await;
    let (member_id, member) = app.member(&owner, "acme", "member@example.com", "member").await;
    // A member may create notes they own, not notes owned by someone else.
    let body = format!("body,owner\nmine,{member_id}\ntheirs,{owner_id}\nalso mine,member@example.com\n");
    let response = app
        .import("/api/v1/orgs/acme/notes", "mode=skip", &member, CSV, body)
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(response.body["written"], 2);
    assert_eq!(errors(&response.body), vec![(2, 3, "".into(), "forbidden".into())]);
    let notes = app.get("/api/v1/orgs/acme/notes", &owner).await;
    assert_eq!(notes.body["items"].as_array().unwrap().len(), 2);
}

async fn batches_and_filters_delete_in_one_call(backend: Backend) {
    // 16 records per statement: the batch takes 16 chunks and the filter 1, all in one call.
    let Fixture { app, owner, .. } = fixture_with(backend, |config| config.limits.bulk_delete_chunk = 16).await;
    let mut first = String::from("title,project,position\n");
    for n in 0..250 {
        first.push_str(&format!("first {n},Apollo,{n}\n"));
    }
    let mut second = String::from("title,project,position\n");
    for n in 0..40 {
        second.push_str(&format!("second {n},Gemini,{}\n", 1_000 + n));
    }
    let one = app.import("/api/v1/orgs/acme/tasks", "", &owner, CSV, first).await;
    let two = app.import("/api/v1/orgs/acme/tasks", "", &owner, CSV, second).await;
    let batch = one.body["batch"].as_str().unwrap().to_string();
    assert_ne!(two.body["batch"], one.body["batch"]);

    // Members cannot bulk delete (the delete rule is admin and up).
    let (_, member) = app.member(&owner, "acme", "member@example.com", "member").await;
    let denied = app
        .delete(&format!("/api/v1/orgs/acme/tasks/batches/{batch}"), &member)
        .await;
    assert_eq!(denied.status, 403);
    let unfiltered = app.delete("/api/v1/orgs/acme/tasks", &owner).await;
    assert_eq!(unfiltered.code(), "invalid_query", "a bulk delete needs a filter");

    // Another org's records with the same shape are untouched.
    app.org(&owner, "other").await;
    app.create("/api/v1/orgs/other/projects", &owner, json!({"name": "Apollo"}))
        .await;
    let other = app
        .import(
            "/api/v1/orgs/other/tasks",
            "",
            &owner,
            CSV,
            "title,project,position\nfirst 1,Apollo,1\n",
        )
        .await;
    assert_eq!(other.body["written"], 1);

    let deleted = app
        .delete(&format!("/api/v1/orgs/acme/tasks/batches/{batch}"), &owner)
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    assert_eq!(deleted.body["deleted"], 250);
    assert_eq!(list(&app, &owner, "").await.len(), 40);
    let again = app
        .delete(&format!("/api/v1/orgs/acme/tasks/batches/{batch}"), &owner)
        .await;
    assert_eq!(again.body["deleted"], 0);

    let by_filter = app
        .delete("/api/v1/orgs/acme/tasks?filter=position%20%3E%3D%201030", &owner)
        .await;
    assert_eq!(by_filter.body["deleted"], 10, "{}", by_filter.text);
    assert_eq!(list(&app, &owner, "").await.len(), 30);

    let activity = app
        .get(
            "/api/v1/orgs/acme/activity?filter=action%20%3D%20%22bulk_delete%22&sort=created_at",
            &owner,
        )
        .await;
    let entries = activity.body["items"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "one entry per bulk delete: {}", activity.text);
    assert_eq!(entries[0]["count"], 250);
    assert_eq!(entries[0]["changes"]["batch"], batch.as_str());
    assert_eq!(entries[1]["count"], 10);
    assert_eq!(entries[1]["changes"]["filter"], "position >= 1030");
    let other_tasks = app.get("/api/v1/orgs/other/tasks", &owner).await;
    assert_eq!(other_tasks.body["items"].as_array().unwrap().len(), 1);
}

both!(
    csv_import_maps_converts_and_reports_each_bad_row,
    atomic_import_writes_nothing_unless_every_row_is_valid,
    duplicates_are_reported_and_the_rest_kept,
    hostile_csv_loses_no_valid_row,
    ndjson_imports_and_an_export_reads_back_in,
    bad_imports_fail_before_reading,
    the_create_rule_applies_to_each_row,
    batches_and_filters_delete_in_one_call,
);

async fn large_imports_run_as_background_jobs(backend: Backend) {
    let app = TestApp::spawn_with(backend, SPEC, |config| {
        config.limits.import_sync_max_bytes = 1_000;
    })
    .await;
    app.state.jobs.start();
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.create("/api/v1/orgs/acme/projects", &owner, json!({"name": "Apollo"}))
        .await;
    // 25,000 rows: more than one spool chunk (1 MiB) and more than two write batches.
    let mut body = String::from("title,project,position\n");
    for n in 0..25_000 {
        body.push_str(&format!("background task number {n:>10},Apollo,{n}\n"));
    }
    body.push_str("bad row,Apollo,x\n");
    assert!(body.len() > 1 << 20);
    let response = app
        .import("/api/v1/orgs/acme/tasks", "mode=skip", &owner, CSV, body)
        .await;
    assert_eq!(response.status, 202, "{}", response.text);
    let id = response.body["job"]["id"].as_i64().unwrap();
    assert_eq!(response.header("location"), Some(format!("/api/v1/jobs/{id}").as_str()));
    assert_eq!(response.body["job"]["kind"], "keel_import");

    let job = app.wait_job(id, keel_store::jobs::JobState::Completed, 60).await;
    let report = job.result.expect("the report is the job's result");
    assert_eq!(
        (
            report["read"].as_u64(),
            report["written"].as_u64(),
            report["rejected"].as_u64()
        ),
        (Some(25_001), Some(25_000), Some(1))
    );
    assert_eq!(
        errors(&report),
        vec![(25_001, 25_002, "position".into(), "invalid_type".into())]
    );
    let status = app.get(&format!("/api/v1/jobs/{id}"), &owner).await;
    assert_eq!(status.body["progress"]["written"], 25_000, "{}", status.text);
    let count = app.get("/api/v1/orgs/acme/tasks?limit=1&count=exact", &owner).await;
    assert_eq!(count.body["count"], 25_000);
    let spool = app
        .db()
        .query(&app.db().portable("SELECT count(*) FROM keel_uploads", vec![]))
        .await
        .unwrap();
    assert_eq!(spool[0][0].int(), Some(0), "the spool is deleted when the import ends");

    // A bad header fails the job with the reason; background=false runs in the request.
    let response = app
        .import(
            "/api/v1/orgs/acme/tasks",
            "background=true",
            &owner,
            CSV,
            "title,colour\nx,red\n",
        )
        .await;
    assert_eq!(response.status, 202);
    let id = response.body["job"]["id"].as_i64().unwrap();
    let job = app.wait_job(id, keel_store::jobs::JobState::Dead, 30).await;
    assert!(
        job.errors[0]["error"].as_str().unwrap().contains("invalid_import"),
        "{:?}",
        job.errors
    );
    let mut small = String::from("title,project,position\n");
    for n in 0..100 {
        small.push_str(&format!("in the request {n},Apollo,{n}\n"));
    }
    let response = app
        .import("/api/v1/orgs/acme/tasks", "background=false", &owner, CSV, small)
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    // Permission is checked before anything is stored.
    let (_, viewer) = app.member(&owner, "acme", "viewer@example.com", "viewer").await;
    let response = app
        .import(
            "/api/v1/orgs/acme/tasks",
            "background=true",
            &viewer,
            CSV,
            "title,project\nx,Apollo\n",
        )
        .await;
    assert_eq!(response.status, 403);
    app.state.jobs.shutdown().await;
}

both!(large_imports_run_as_background_jobs);
