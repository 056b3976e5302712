//! The indexes declared in the spec are the ones the database uses (D3).

use keel_query::{Builder, Caller, Context, ListSpec, Mode, RoleSource, Scope, check_expr, parse_sort};
use keel_testkit::{Backend, TestApp, both, json};

async fn plan_text(app: &TestApp, filter: &str, sort: Option<&str>) -> String {
    let schema = &app.state.schema;
    let tasks = schema.app.collection("tasks").unwrap();
    let caller = Caller {
        context: Context {
            user: None,
            role: RoleSource::Rank(Some(4)),
            now: chrono::Utc::now(),
        },
        superuser: false,
    };
    let org = uuid::Uuid::now_v7();
    let builder = Builder {
        schema,
        collection: tasks,
        dialect: app.db().dialect(),
        caller: &caller,
        scope: Scope::Org(org),
    };
    let spec = ListSpec {
        filter: Some(check_expr(&schema.app, tasks, filter, Mode::Filter).unwrap()),
        sort: parse_sort(tasks, sort).unwrap(),
        limit: 50,
        ..ListSpec::default()
    };
    let mut sql = builder.list(&spec);
    let db = app.db();
    match db.dialect() {
        keel_query::Dialect::Sqlite => {
            sql.text = format!("EXPLAIN QUERY PLAN {}", sql.text);
            let rows = db.query(&sql).await.unwrap();
            rows.iter()
                .map(|r| r.last().and_then(|c| c.text()).unwrap_or("").to_string())
                .collect::<Vec<_>>()
                .join("\n")
        }
        keel_query::Dialect::Postgres => {
            // Tiny test tables make sequential scans cheapest; forbid them to see which index fits.
            let mut tx = db.begin().await.unwrap();
            tx.execute_script("SET LOCAL enable_seqscan = off").await.unwrap();
            sql.text = format!("EXPLAIN {}", sql.text);
            let rows = tx.query(&sql).await.unwrap();
            rows.iter()
                .map(|r| r[0].text().unwrap_or("").to_string())
                .collect::<Vec<_>>()
                .join("\n")
        }
    }
}

async fn declared_indexes_are_used(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let project = app
        .create("/api/v1/orgs/acme/projects", &owner, json!({"name": "p"}))
        .await;
    let plan = plan_text(&app, &format!("project = '{project}' && status = 'todo'"), None).await;
    // Either declared index that covers the filter (project+status, or the partial status one)
    // may win on a tiny table; the generic org index must not.
    assert!(
        plan.contains("tasks_ix_") && !plan.contains("tasks_org_id"),
        "a declared index: {plan}"
    );
    let plan = plan_text(&app, "due >= '2026-01-01'", Some("-due")).await;
    assert!(plan.contains("tasks_ix_due_desc"), "descending index: {plan}");
    let plan = plan_text(&app, "status != 'done'", Some("status")).await;
    assert!(plan.contains("tasks_ix_status_p"), "partial index: {plan}");
}

async fn pages_need_no_sort_step(backend: Backend) {
    // The default order (newest first) and a declared index's order are served by an index:
    // no sort of the whole org per page, whatever the NULL order of the columns.
    let app = TestApp::spawn(backend).await;
    for (filter, sort) in [
        ("title = 'x'", None),
        ("due >= '2026-01-01'", Some("-due")),
        ("status != 'done'", Some("status")),
    ] {
        let plan = plan_text(&app, filter, sort).await;
        assert!(
            !plan.contains("TEMP B-TREE FOR ORDER BY") && !plan.contains("Sort Key"),
            "{filter} / {sort:?}: {plan}"
        );
    }
}

both!(declared_indexes_are_used, pages_need_no_sort_step);
