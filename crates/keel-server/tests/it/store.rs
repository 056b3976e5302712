//! The store conformance suite: `Db`/`Tx` behave the same on SQLite and PostgreSQL —
//! commit and rollback, error classification, statement timeouts, and a saturated pool.

use std::time::Duration;

use keel_query::SqlValue;
use keel_store::{Db, PoolConfig, StoreError};
use keel_testkit::{Backend, TestDb, both};

async fn connect(database: &TestDb, pool: PoolConfig) -> Db {
    Db::connect(&database.location, &pool).await.expect("connect")
}

async fn setup(db: &Db) {
    let mut tx = db.begin().await.unwrap();
    tx.execute_script("CREATE TABLE parents (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
        .await
        .unwrap();
    tx.execute_script("CREATE TABLE children (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL REFERENCES parents (id) ON DELETE RESTRICT)")
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn count(db: &Db, table: &str) -> i64 {
    db.query_one(&db.portable(&format!("SELECT count(*) FROM {table}"), vec![]))
        .await
        .unwrap()
        .unwrap()[0]
        .int()
        .unwrap()
}

async fn commit_and_rollback(backend: Backend) {
    let database = TestDb::new(backend).await;
    let db = connect(&database, PoolConfig::default()).await;
    setup(&db).await;
    let mut tx = db.begin().await.unwrap();
    tx.execute(&tx.portable(
        "INSERT INTO parents (id, name) VALUES ($1, $2)",
        vec![SqlValue::Int(1), SqlValue::Text("a".into())],
    ))
    .await
    .unwrap();
    tx.commit().await.unwrap();
    {
        let mut tx = db.begin().await.unwrap();
        tx.execute(&tx.portable(
            "INSERT INTO parents (id, name) VALUES ($1, $2)",
            vec![SqlValue::Int(2), SqlValue::Text("b".into())],
        ))
        .await
        .unwrap();
        // Dropped without commit: rolled back.
    }
    assert_eq!(count(&db, "parents").await, 1);
    // The handle still works after a rollback.
    let mut tx = db.begin().await.unwrap();
    tx.execute(&tx.portable(
        "INSERT INTO parents (id, name) VALUES ($1, $2)",
        vec![SqlValue::Int(3), SqlValue::Text("c".into())],
    ))
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&db, "parents").await, 2);
}

async fn errors_are_classified_alike(backend: Backend) {
    let database = TestDb::new(backend).await;
    let db = connect(&database, PoolConfig::default()).await;
    setup(&db).await;
    let insert = |id: i64, name: &str| {
        db.portable(
            "INSERT INTO parents (id, name) VALUES ($1, $2)",
            vec![SqlValue::Int(id), SqlValue::Text(name.into())],
        )
    };
    let mut tx = db.begin().await.unwrap();
    tx.execute(&insert(1, "a")).await.unwrap();
    tx.execute(&db.portable("INSERT INTO children (id, parent) VALUES (1, 1)", vec![]))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    let duplicate = tx.execute(&insert(2, "a")).await.unwrap_err();
    assert!(matches!(duplicate, StoreError::Unique { .. }), "{duplicate:?}");
    drop(tx);
    let mut tx = db.begin().await.unwrap();
    let orphan = tx
        .execute(&db.portable("INSERT INTO children (id, parent) VALUES (2, 99)", vec![]))
        .await
        .unwrap_err();
    assert!(matches!(orphan, StoreError::ForeignKey(_)), "{orphan:?}");
    drop(tx);
    let mut tx = db.begin().await.unwrap();
    let restricted = tx
        .execute(&db.portable("DELETE FROM parents WHERE id = 1", vec![]))
        .await
        .unwrap_err();
    assert!(matches!(restricted, StoreError::ForeignKey(_)), "{restricted:?}");
    drop(tx);
    assert_eq!(count(&db, "parents").await, 1, "failed statements changed nothing");
}

/// A statement that runs until it is cancelled.
fn slow_statement(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
        Backend::Postgres => "SELECT pg_sleep(5)",
    }
}

/// Reads and writes are separate request classes with their own statement timeouts: each is
/// cancelled at its own limit, and the connection answers the next statement.
async fn slow_statements_time_out_per_class_and_the_connection_survives(backend: Backend) {
    let database = TestDb::new(backend).await;
    let short = Duration::from_millis(200);
    for writes in [false, true] {
        let pool = if writes {
            PoolConfig {
                write_statement_timeout: short,
                max_connections: 1,
                ..PoolConfig::default()
            }
        } else {
            PoolConfig {
                statement_timeout: short,
                max_connections: 1,
                ..PoolConfig::default()
            }
        };
        let db = connect(&database, pool).await;
        let slow = db.portable(slow_statement(backend), vec![]);
        let started = std::time::Instant::now();
        let error = if writes {
            let mut tx = db.begin().await.unwrap();
            tx.query(&slow).await.unwrap_err()
        } else {
            db.query(&slow).await.unwrap_err()
        };
        assert!(matches!(error, StoreError::Timeout), "writes: {writes}: {error:?}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "cancelled at its class's limit, not waited out"
        );
        // The same (only) connection answers the next statement.
        let one = db.query_one(&db.portable("SELECT 1", vec![])).await.unwrap().unwrap();
        assert_eq!(one[0].int(), Some(1));
    }
}

async fn a_saturated_pool_answers_busy(backend: Backend) {
    let database = TestDb::new(backend).await;
    let db = connect(
        &database,
        PoolConfig {
            acquire_timeout: Duration::from_millis(150),
            max_connections: 1,
            ..PoolConfig::default()
        },
    )
    .await;
    setup(&db).await;
    let held = db.begin().await.unwrap();
    let started = std::time::Instant::now();
    let error = match db.begin().await {
        Err(error) => error,
        Ok(_) => panic!("a second writer got in while the only connection was held"),
    };
    assert!(matches!(error, StoreError::Busy), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up after the acquire timeout"
    );
    drop(held);
    db.begin().await.expect("free again").commit().await.unwrap();
}

both!(
    commit_and_rollback,
    errors_are_classified_alike,
    slow_statements_time_out_per_class_and_the_connection_survives,
    a_saturated_pool_answers_busy
);
