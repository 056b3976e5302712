//! Time series (D9): monthly partitions on PostgreSQL (created ahead, pruned by a time filter,
//! dropped by retention), the same retention on SQLite in bounded batches.

use chrono::{Duration, Months, Utc};
use keel_testkit::{Backend, TestApp, both, json};

const SPEC: &str = r#"
[app]
name = "prices"
[roles]
order = ["owner", "member"]
[collections.items]
global = true
fields.name = { type = "text", required = true }
[collections.prices]
global = true
fields.item = { type = "relation", to = "items", required = true, on_delete = "cascade" }
fields.price = { type = "integer", required = true }
fields.ts = { type = "datetime", required = true }
indexes = [{ fields = ["item", "-ts"], unique = true }]
timeseries = { field = "ts", retention = "30d" }
rules.list = "@user != null"
"#;

async fn partitions_pruning_and_retention(backend: Backend) {
    let app = TestApp::spawn_with(backend, SPEC, |_| {}).await;
    let (root_id, root) = app.signup("root@example.com").await;
    app.make_superuser(&root_id).await;
    let item = app.create("/api/v1/global/items", &root, json!({"name": "rune"})).await;
    let now = Utc::now();
    for days_ago in [90, 60, 45, 10, 1] {
        let ts = (now - Duration::days(days_ago)).to_rfc3339();
        let created = app
            .post(
                "/api/v1/global/prices",
                &root,
                json!({"item": item, "price": 100 + days_ago, "ts": ts}),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.text);
    }

    if backend == Backend::Postgres {
        let partitions = keel_store::partitions::partitions(app.db(), "prices").await.unwrap();
        assert!(
            partitions.len() >= 16,
            "12 months behind, this one, 3 ahead: {partitions:?}"
        );
        // A time filter touches only the partitions it needs.
        let since = (now - Duration::days(5)).to_rfc3339();
        let mut tx = app.db().begin().await.unwrap();
        let plan = tx
            .query(&tx.portable(
                "EXPLAIN SELECT * FROM prices WHERE ts >= $1",
                vec![keel_query::SqlValue::Datetime(
                    keel_query::value::parse_datetime(&since).unwrap(),
                )],
            ))
            .await
            .unwrap();
        drop(tx);
        let plan: Vec<String> = plan
            .into_iter()
            .filter_map(|r| r.into_iter().next().and_then(|c| c.into_text()))
            .collect();
        // Exactly the months that reach past `since` are scanned: this one and the ones ahead,
        // and last month too when `since` falls in it (the first days of a month).
        let since = keel_query::value::parse_datetime(&since).unwrap();
        let expected: Vec<&str> = partitions
            .iter()
            .filter(|(_, start)| *start + Months::new(1) > since)
            .map(|(name, _)| name.as_str())
            .collect();
        let scanned: Vec<&str> = partitions
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| plan.iter().any(|line| line.contains(&format!(" on {name} "))))
            .collect();
        assert_eq!(scanned, expected, "pruned to the months from {since}: {plan:#?}");
        assert!((4..=5).contains(&scanned.len()), "{scanned:?}");
    }

    // Retention: everything older than 30 days goes.
    let report = keel_store::partitions::maintain(app.db(), &app.state.schema, now)
        .await
        .unwrap();
    let listed = app.get("/api/v1/global/prices?count=exact", &root).await;
    assert_eq!(listed.body["count"], 2, "{}", listed.text);
    match backend {
        Backend::Postgres => {
            assert!(report.partitions_dropped >= 1, "{report:?}");
            let remaining = keel_store::partitions::partitions(app.db(), "prices").await.unwrap();
            let cutoff = now - Duration::days(30);
            assert!(
                remaining.iter().all(|(_, start)| *start + Duration::days(31) > cutoff),
                "{remaining:?}"
            );
        }
        Backend::Sqlite => assert_eq!(report.rows_deleted, 3, "{report:?}"),
    }
    // Maintenance is idempotent.
    let again = keel_store::partitions::maintain(app.db(), &app.state.schema, now)
        .await
        .unwrap();
    assert_eq!((again.partitions_dropped, again.rows_deleted), (0, 0), "{again:?}");
}

#[test]
fn a_time_series_cannot_be_pointed_at_or_have_unique_fields() {
    let bad = SPEC.replace(
        "fields.price = { type = \"integer\", required = true }",
        "fields.price = { type = \"integer\", required = true, unique = true }",
    );
    assert!(keel_server::load_schema(&bad).is_err());
    let pointed = format!("{SPEC}\n[collections.alerts]\nfields.price = {{ type = \"relation\", to = \"prices\" }}\n");
    let problems = keel_server::load_schema(&pointed).unwrap_err();
    assert!(problems.iter().any(|p| p.contains("is a time series")), "{problems:?}");
}

both!(partitions_pruning_and_retention);
