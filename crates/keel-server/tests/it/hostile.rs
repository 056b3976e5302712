//! Bad input gets a 4xx with a code, never a 5xx: random and hostile bodies, filters, sorts,
//! cursors and ids, on both backends.

use keel_testkit::{Backend, TestApp, both, json};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const FIELDS: &[&str] = &[
    "project", "title", "status", "assignee", "due", "points", "meta", "code", "id", "org", "x", "",
];
const OPERATORS: &[&str] = &[
    "=",
    "!=",
    ">",
    ">=",
    "<",
    "<=",
    "contains",
    "startswith",
    "in",
    "not in",
    "is null",
    "~",
    "&&",
    "||",
    "!",
    "(",
    ")",
    "[",
    "]",
    ",",
];

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..10) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e12),
        4 => json!("x".repeat(rng.random_range(0..300))),
        5 => json!(
            [
                "todo",
                "2026-01-01",
                "2026-02-30",
                "ABC-1",
                "not-a-uuid",
                "'; DROP TABLE tasks; --",
                "\u{0000}",
                "💥"
            ][rng.random_range(0..8)]
        ),
        6 => json!(uuid::Uuid::from_u128(rng.random()).to_string()),
        7 if depth < 3 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        8 if depth < 3 => {
            let mut map = serde_json::Map::new();
            for _ in 0..rng.random_range(0..4) {
                map.insert(
                    FIELDS[rng.random_range(0..FIELDS.len())].to_string(),
                    random_value(rng, depth + 1),
                );
            }
            Value::Object(map)
        }
        _ => json!(1e308),
    }
}

fn random_filter(rng: &mut StdRng) -> String {
    let mut parts = vec![];
    for _ in 0..rng.random_range(1..8) {
        let part = match rng.random_range(0..4) {
            0 => FIELDS[rng.random_range(0..FIELDS.len())].to_string(),
            1 => OPERATORS[rng.random_range(0..OPERATORS.len())].to_string(),
            2 => [
                "'todo'",
                "\"x\"",
                "42",
                "-1.5",
                "true",
                "null",
                "@user",
                "@now - 3d",
                "@today",
                "'",
                "\"\\",
                "[1, 'a']",
                "role",
                "admin",
            ][rng.random_range(0..14)]
            .to_string(),
            _ => String::from_utf8_lossy(
                &(0..rng.random_range(0..6))
                    .map(|_| rng.random_range(32u8..127))
                    .collect::<Vec<_>>(),
            )
            .to_string(),
        };
        parts.push(part);
    }
    parts.join(" ")
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn random_input_never_causes_a_5xx(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let project = app
        .create("/api/v1/orgs/acme/projects", &owner, json!({"name": "p"}))
        .await;
    let task = app
        .create(
            "/api/v1/orgs/acme/tasks",
            &owner,
            json!({"project": project, "title": "t"}),
        )
        .await;
    let mut rng = StdRng::seed_from_u64(20261122);
    for round in 0..150 {
        let body = random_value(&mut rng, 0);
        let created = app.post("/api/v1/orgs/acme/tasks", &owner, body.clone()).await;
        assert!(
            created.status.as_u16() < 500,
            "round {round}: POST {body} -> {} {}",
            created.status,
            created.text
        );
        if created.status.is_client_error() {
            assert!(
                !created.code().is_empty(),
                "round {round}: an error code: {}",
                created.text
            );
        }
        let patched = app
            .patch(&format!("/api/v1/orgs/acme/tasks/{task}"), &owner, body.clone())
            .await;
        assert!(
            patched.status.as_u16() < 500,
            "round {round}: PATCH {body} -> {} {}",
            patched.status,
            patched.text
        );

        let filter = random_filter(&mut rng);
        let sort = ["title", "-due", "points,-id", "meta", "nope", "-", ",", "status,status"][rng.random_range(0..8)];
        let after =
            ["", "abc", "eyJ9", "x".repeat(5000).as_str(), "MDAwMDAwMDAuWyIxIl0"][rng.random_range(0..5)].to_string();
        let path = format!(
            "/api/v1/orgs/acme/tasks?filter={}&sort={}&after={}&limit={}&expand={}",
            encode(&filter),
            encode(sort),
            encode(&after),
            ["1", "0", "-1", "500", "501", "abc", ""][rng.random_range(0..7)],
            ["project", "assignee", "title", "nope", ""][rng.random_range(0..5)],
        );
        let listed = app.get(&path, &owner).await;
        assert!(
            listed.status.as_u16() < 500,
            "round {round}: GET {path} -> {} {}",
            listed.status,
            listed.text
        );
        let aggregate = format!(
            "/api/v1/orgs/acme/tasks/aggregate?group={}&measures={}&filter={}",
            ["status", "meta", "nope", "points,due"][rng.random_range(0..4)],
            ["sum:points", "avg:title", "x", "max:due"][rng.random_range(0..4)],
            encode(&filter)
        );
        let grouped = app.get(&aggregate, &owner).await;
        assert!(
            grouped.status.as_u16() < 500,
            "round {round}: GET {aggregate} -> {} {}",
            grouped.status,
            grouped.text
        );
    }
    // Hostile ids and org slugs are plain 404s.
    for path in [
        "/api/v1/orgs/acme/tasks/..%2F..%2Fetc",
        "/api/v1/orgs/%00/tasks",
        &format!("/api/v1/orgs/{}/tasks", "a".repeat(300)),
    ] {
        let response = app.get(path, &owner).await;
        assert!(response.status.is_client_error(), "{path}: {}", response.status);
    }
}

both!(random_input_never_causes_a_5xx);
