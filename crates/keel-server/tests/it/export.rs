//! Streaming export (B5) on both backends: CSV and NDJSON across many pages, filters and
//! `fields`, formula cells defused, and tenancy.

use keel_testkit::{Backend, TestApp, both};
use serde_json::{Value, json};

const SPEC: &str = r#"
[app]
name = "exports"

[roles]
order = ["owner", "admin", "member", "viewer"]

[collections.notes]
fields.title = { type = "text", required = true }
fields.n = { type = "integer" }
fields.tags = { type = "json" }
rules.list = "role >= viewer"
"#;

async fn exports_stream_every_page_as_csv_and_ndjson(backend: Backend) {
    let app = TestApp::spawn_with(backend, SPEC, |_| {}).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    // More than one page (1,000 records per statement).
    for n in 0..1_050 {
        app.create(
            "/api/v1/orgs/acme/notes",
            &owner,
            json!({"title": format!("note {n}"), "n": n}),
        )
        .await;
    }
    app.create(
        "/api/v1/orgs/acme/notes",
        &owner,
        json!({"title": "=HYPERLINK(\"http://evil\")", "n": -5, "tags": ["a", "b"]}),
    )
    .await;

    let csv = app
        .get("/api/v1/orgs/acme/notes/export?format=csv&sort=n", &owner)
        .await;
    assert_eq!(csv.status, 200, "{}", csv.text);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(csv.header("content-disposition").unwrap().contains("notes.csv"));
    let mut reader = csv::Reader::from_reader(csv.text.as_bytes());
    let headers: Vec<String> = reader.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(
        headers,
        [
            "id",
            "org",
            "created_at",
            "updated_at",
            "version",
            "batch",
            "title",
            "n",
            "tags"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1_051);
    assert_eq!(&rows[0][6], "'=HYPERLINK(\"http://evil\")", "a formula is defused");
    assert_eq!(&rows[0][7], "-5", "numbers are left alone");
    assert_eq!(&rows[0][8], r#"["a","b"]"#);
    assert_eq!(&rows[1_050][6], "note 1049");

    let filtered = app
        .get(
            "/api/v1/orgs/acme/notes/export?format=csv&filter=n%20%3E%3D%201000&fields=title,n",
            &owner,
        )
        .await;
    let mut reader = csv::Reader::from_reader(filtered.text.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        ["id", "title", "n"]
    );
    assert_eq!(reader.records().count(), 50);

    let ndjson = app.get("/api/v1/orgs/acme/notes/export?format=ndjson", &owner).await;
    assert_eq!(ndjson.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = ndjson.text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1_051);
    assert!(
        lines
            .iter()
            .all(|record| record["title"].is_string() && record["version"] == 1)
    );

    let bad = app.get("/api/v1/orgs/acme/notes/export?format=xlsx", &owner).await;
    assert_eq!((bad.status.as_u16(), bad.code()), (400, "invalid_query"));
    let unknown = app.get("/api/v1/orgs/acme/notes/export?limit=5", &owner).await;
    assert_eq!(unknown.code(), "invalid_query");
    let (_, stranger) = app.signup("stranger@example.com").await;
    assert_eq!(app.get("/api/v1/orgs/acme/notes/export", &stranger).await.status, 404);
}

both!(exports_stream_every_page_as_csv_and_ndjson);
