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

async fn slow_statements_time_out_and_the_connection_survives(backend: Backend) {
    let database = TestDb::new(backend).await;
    let db = connect(
        &database,
        PoolConfig {
            statement_timeout: Duration::from_millis(200),
            max_connections: 1,
            ..PoolConfig::default()
        },
    )
    .await;
    let slow = match backend {
        Backend::Sqlite => "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
        Backend::Postgres => "SELECT pg_sleep(5)",
    };
    let started = std::time::Instant::now();
    let error = db.query(&db.portable(slow, vec![])).await.unwrap_err();
    assert!(matches!(error, StoreError::Timeout), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "cancelled, not waited out");
    // The same (only) connection answers the next statement.
    assert_eq!(
        db.query_one(&db.portable("SELECT 1", vec![])).await.unwrap().unwrap()[0].int(),
        Some(1)
    );
}

async fn writes_have_their_own_statement_timeout(backend: Backend) {
    let database = TestDb::new(backend).await;
    let db = connect(
        &database,
        PoolConfig {
            write_statement_timeout: Duration::from_millis(200),
            max_connections: 1,
            ..PoolConfig::default()
        },
    )
    .await;
    let slow = match backend {
        Backend::Sqlite => "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n",
        Backend::Postgres => "SELECT pg_sleep(5)",
    };
    let started = std::time::Instant::now();
    let mut tx = db.begin().await.unwrap();
    let error = tx.query(&db.portable(slow, vec![])).await.unwrap_err();
    assert!(matches!(error, StoreError::Timeout), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the write timeout, not the read one"
    );
    drop(tx);
    let quick = db.query_one(&db.portable("SELECT 1", vec![])).await.unwrap().unwrap();
    assert_eq!(quick[0].int(), Some(1));
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
    slow_statements_time_out_and_the_connection_survives,
    a_saturated_pool_answers_busy
);

both!(writes_have_their_own_statement_timeout);
