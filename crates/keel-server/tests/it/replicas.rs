//! Read replicas (D10) against a real streaming replica (`pg_basebackup`) this test starts:
//! reads go to the replica, writes and a client's reads right after its own write go to the
//! primary, a lagging or stopped replica is skipped.

use std::time::Duration;

use keel_store::{Db, Location, PoolConfig};
use keel_testkit::{Backend, PgCluster, TestApp, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_use_the_replica_unless_writes_or_lag_say_otherwise() {
    let cluster = PgCluster::start();
    let schema = "keel_replica_test";
    let admin = Db::connect(
        &Location::Postgres {
            url: cluster.primary_url(),
            schema: None,
            replicas: vec![],
        },
        &PoolConfig::default(),
    )
    .await
    .unwrap();
    let mut tx = admin.begin().await.unwrap();
    tx.execute_script(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    tx.commit().await.unwrap();
    admin.close().await;
    let (primary, replica) = (cluster.primary_url(), cluster.replica_url());
    let app = TestApp::spawn_with(Backend::Postgres, keel_testkit::TEST_SPEC, |c| {
        c.database.url = Some(keel_server::config::Secret(primary));
        c.database.schema = Some(schema.into());
        c.database.replica_urls = vec![keel_server::config::Secret(replica)];
        c.database.read_your_writes_ms = 300;
        c.database.replica_max_lag_ms = 1_000;
    })
    .await;
    let (_, token) = app.signup("a@example.com").await;
    app.org(&token, "acme").await;
    app.post("/api/v1/orgs/acme/projects", &token, json!({"name": "first"}))
        .await;
    let names = |body: &serde_json::Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };

    // Right after its own write, the client reads from the primary.
    let before = app.db().replica_statements();
    let listed = app.get("/api/v1/orgs/acme/projects", &token).await;
    assert_eq!(names(&listed.body), ["first"]);
    assert_eq!(
        app.db().replica_statements(),
        before,
        "read-your-writes: the primary answered"
    );

    // Later, reads go to the replica, which has the data.
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.db().check_replicas().await;
    let listed = app.get("/api/v1/orgs/acme/projects", &token).await;
    assert_eq!(names(&listed.body), ["first"]);
    assert!(app.db().replica_statements() > before, "the replica answered");

    // A replica that falls behind is skipped: pause its replay, write, and wait past the lag bound.
    cluster.replica_sql("SELECT pg_wal_replay_pause()");
    // A session the replica has not replayed yet is found on the primary: a new login works
    // at once, though the replica still counts as healthy.
    let (_, fresh) = app.signup("b@example.com").await;
    let me = app.get("/api/v1/auth/me", &fresh).await;
    assert_eq!(me.status, 200, "{}", me.text);
    app.post("/api/v1/orgs/acme/projects", &token, json!({"name": "second"}))
        .await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    app.db().check_replicas().await;
    let lagging = app.db().replica_states();
    assert!(lagging[0].lag_ms > 1_000, "{lagging:?}");
    let before = app.db().replica_statements();
    let listed = app.get("/api/v1/orgs/acme/projects?sort=name", &token).await;
    assert_eq!(
        names(&listed.body),
        ["first", "second"],
        "the primary answered with the new row"
    );
    assert_eq!(app.db().replica_statements(), before);
    cluster.replica_sql("SELECT pg_wal_replay_resume()");
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.db().check_replicas().await;
    let listed = app.get("/api/v1/orgs/acme/projects?sort=name", &token).await;
    assert_eq!(names(&listed.body), ["first", "second"]);
    assert!(
        app.db().replica_statements() > before,
        "caught up: the replica serves again"
    );

    // A stopped replica: reads fall back to the primary; readiness says degraded.
    cluster.stop_replica();
    let listed = app.get("/api/v1/orgs/acme/projects?sort=name", &token).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(names(&listed.body), ["first", "second"]);
    app.db().check_replicas().await;
    let ready = app.request("GET", "/health/ready", None, None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["status"], "degraded", "{}", ready.text);
    assert_eq!(ready.body["checks"]["replicas"]["status"], "failing");
    assert_eq!(ready.body["checks"]["replicas"]["replicas"][0]["status"], "failing");
}
