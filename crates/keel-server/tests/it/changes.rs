//! The change log realtime streams read: only committed changes, a position that loses
//! nothing when transactions commit out of order (PostgreSQL), and a horizon past pruning.

use chrono::{Duration, Utc};
use keel_store::Db;
use keel_store::changes::{self, Position};
use keel_testkit::{Backend, both};

use crate::jobs_store::migrated;

async fn write(db: &Db, record: &str) {
    let mut tx = db.begin().await.unwrap();
    changes::insert(&mut tx, None, "tasks", record, "update", 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn records(db: &Db, after: Position) -> Vec<String> {
    read(db, after).await.into_iter().map(|c| c.record).collect()
}

/// What a reader gets once `want` changes are readable. On PostgreSQL the fence is the whole
/// cluster's oldest running transaction, so another database's writes (the suite runs tests
/// side by side) can hold a change back for a moment: a reader reads again, as a stream does.
async fn read_until(db: &Db, after: Position, want: usize) -> Vec<changes::Change> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let read = read(db, after).await;
        if read.len() >= want || std::time::Instant::now() > deadline {
            return read;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn read(db: &Db, after: Position) -> Vec<changes::Change> {
    changes::read_after(db, after, 100).await.unwrap()
}

async fn records_until(db: &Db, after: Position, want: usize) -> Vec<String> {
    read_until(db, after, want)
        .await
        .into_iter()
        .map(|c| c.record)
        .collect()
}

async fn only_committed_changes_in_order_and_a_horizon(backend: Backend) {
    let (_database, db) = migrated(backend).await;
    let start = changes::tail(&db).await.unwrap();
    write(&db, "a").await;
    let mut rolled_back = db.begin().await.unwrap();
    changes::insert(&mut rolled_back, None, "tasks", "never", "create", 1)
        .await
        .unwrap();
    drop(rolled_back);
    let org = uuid::Uuid::now_v7();
    let mut tx = db.begin().await.unwrap();
    changes::insert(&mut tx, Some(org), "tasks", "b", "delete", 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let read = read_until(&db, start, 2).await;
    assert_eq!(read.iter().map(|c| c.record.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(
        (read[1].org, read[1].action.as_str(), read[1].count),
        (Some(org), "delete", 1)
    );
    assert!(read[0].position < read[1].position);
    // Resuming from the first gives the second; the tail is past both.
    assert_eq!(records_until(&db, read[0].position, 1).await, ["b"]);
    assert!(changes::tail(&db).await.unwrap() <= read[1].position);
    assert_eq!(read[1].position.to_string().parse::<Position>(), Ok(read[1].position));

    if backend == Backend::Postgres {
        // A transaction that began writing first and commits last: the reader does not pass
        // it, so the change that committed first waits for it rather than being skipped.
        let mut slow = db.begin().await.unwrap();
        changes::insert(&mut slow, None, "tasks", "slow", "update", 1)
            .await
            .unwrap();
        write(&db, "fast").await;
        assert_eq!(records(&db, read[1].position).await, Vec::<String>::new());
        slow.commit().await.unwrap();
        assert_eq!(records_until(&db, read[1].position, 2).await, ["slow", "fast"]);
    }

    // Pruning moves the horizon: a reader behind it must reload, one at the tail need not.
    let everything = read_until(&db, start, if backend == Backend::Postgres { 4 } else { 2 }).await;
    let tail = everything.last().unwrap().position;
    assert!(changes::resumable(&db, start).await.unwrap());
    let pruned = changes::prune(&db, Utc::now() + Duration::seconds(1)).await.unwrap();
    assert!(pruned >= 2, "{pruned}");
    assert!(!changes::resumable(&db, start).await.unwrap());
    assert!(changes::resumable(&db, tail).await.unwrap());
    assert_eq!(changes::horizon(&db).await.unwrap(), tail);
    assert_eq!(changes::tail(&db).await.unwrap(), tail);
    write(&db, "after").await;
    assert_eq!(records_until(&db, tail, 1).await, ["after"]);
}

both!(only_committed_changes_in_order_and_a_horizon);
