//! The job queue's statements, the same on both backends: enqueue and unique keys, claims in
//! priority order, fencing of completions and failures, retries into dead letters, the
//! rescuer, limits per key and per second, pause, pruning, leadership and cron ticks.

use std::time::Duration;

use keel_store::Db;
use keel_store::jobs::{self, ClaimParams, Completion, Failure, JobState, NewJob, Retention};
use keel_testkit::{Backend, TEST_SPEC, TestDb, both};

pub(crate) async fn migrated(backend: Backend) -> (TestDb, Db) {
    let database = TestDb::new(backend).await;
    let db = database.connect().await;
    let schema = keel_query::Schema::new(keel_spec::parse_app(TEST_SPEC).unwrap()).unwrap();
    keel_store::migrate::apply(&db, &schema, false).await.unwrap();
    (database, db)
}

fn job(queue: &str) -> NewJob {
    NewJob {
        queue: queue.into(),
        kind: "noop".into(),
        org_id: None,
        created_by: None,
        payload: serde_json::json!({"n": 1}),
        priority: 0,
        max_attempts: 3,
        delay: Duration::ZERO,
        unique_key: None,
        concurrency_key: None,
    }
}

async fn enqueue(db: &Db, new: &NewJob) -> jobs::Enqueued {
    let mut tx = db.begin().await.unwrap();
    let enqueued = jobs::job_insert(&mut tx, new).await.unwrap();
    tx.commit().await.unwrap();
    enqueued
}

fn claim<'a>(queue: &'a str, owner: &'a str, limit: u32) -> ClaimParams<'a> {
    ClaimParams {
        queue,
        owner,
        limit,
        lease: Duration::from_secs(30),
        per_key: None,
        rate: None,
        kinds: None,
    }
}

async fn state(db: &Db, id: i64) -> JobState {
    jobs::job_get(db, id).await.unwrap().unwrap().state
}

async fn enqueue_is_transactional_and_unique(backend: Backend) {
    let (_database, db) = migrated(backend).await;
    // Rolled back with its transaction.
    let mut tx = db.begin().await.unwrap();
    let lost = jobs::job_insert(&mut tx, &job("default")).await.unwrap();
    drop(tx);
    assert!(jobs::job_get(&db, lost.id).await.unwrap().is_none());

    let unique = NewJob {
        unique_key: Some("report-42".into()),
        ..job("default")
    };
    let first = enqueue(&db, &unique).await;
    assert!(!first.duplicate);
    let second = enqueue(&db, &unique).await;
    assert!(second.duplicate, "a waiting job holds its unique key");
    assert_eq!(second.id, first.id);
    // Once finished, the key is free again.
    let claimed = jobs::job_claim(&db, &claim("default", "w1", 10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    jobs::job_complete_many(
        &db,
        &[Completion {
            id: first.id,
            attempt: 1,
            result: None,
        }],
    )
    .await
    .unwrap();
    let third = enqueue(&db, &unique).await;
    assert!(!third.duplicate);
    assert_ne!(third.id, first.id);

    let delayed = enqueue(
        &db,
        &NewJob {
            delay: Duration::from_secs(3600),
            ..job("later")
        },
    )
    .await;
    assert_eq!(delayed.state, JobState::Scheduled);
    assert!(
        jobs::job_claim(&db, &claim("later", "w1", 10))
            .await
            .unwrap()
            .is_empty()
    );

    let inserted = jobs::job_insert_many(&db, &(0..12_000).map(|_| job("bulk")).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(inserted, 12_000);
    let stats = jobs::queue_stats(&db).await.unwrap();
    let bulk = stats.iter().find(|q| q.name == "bulk").unwrap();
    assert_eq!(bulk.depth["available"], 12_000);
}

async fn claims_by_priority_and_fences_completions(backend: Backend) {
    let (_database, db) = migrated(backend).await;
    let low = enqueue(&db, &job("q")).await;
    let high = enqueue(
        &db,
        &NewJob {
            priority: 5,
            ..job("q")
        },
    )
    .await;
    let claimed = jobs::job_claim(&db, &claim("q", "w1", 1)).await.unwrap();
    assert_eq!(claimed[0].id, high.id, "higher priority first");
    assert_eq!(claimed[0].attempt, 1);
    let payload: serde_json::Value = serde_json::from_str(&claimed[0].payload).unwrap();
    assert_eq!(payload, serde_json::json!({"n": 1}));
    let claimed_low = jobs::job_claim(&db, &claim("q", "w2", 5)).await.unwrap();
    assert_eq!(claimed_low.len(), 1);
    assert_eq!(claimed_low[0].id, low.id);
    assert!(jobs::job_claim(&db, &claim("q", "w3", 5)).await.unwrap().is_empty());

    // A completion naming the wrong attempt changes nothing.
    let stale = Completion {
        id: high.id,
        attempt: 7,
        result: None,
    };
    assert!(jobs::job_complete_many(&db, &[stale]).await.unwrap().is_empty());
    let done = jobs::job_complete_many(
        &db,
        &[Completion {
            id: high.id,
            attempt: 1,
            result: Some(serde_json::json!({"pages": 3})),
        }],
    )
    .await
    .unwrap();
    assert_eq!(done, vec![high.id]);
    let job_row = jobs::job_get(&db, high.id).await.unwrap().unwrap();
    assert_eq!(job_row.state, JobState::Completed);
    assert_eq!(job_row.result, Some(serde_json::json!({"pages": 3})));
    assert!(job_row.finished_at.is_some());
    // Completing twice does nothing.
    assert!(
        jobs::job_complete_many(
            &db,
            &[Completion {
                id: high.id,
                attempt: 1,
                result: None
            }]
        )
        .await
        .unwrap()
        .is_empty()
    );
}

async fn failures_retry_then_die_and_can_be_retried(backend: Backend) {
    let (_database, db) = migrated(backend).await;
    let enqueued = enqueue(
        &db,
        &NewJob {
            max_attempts: 2,
            ..job("q")
        },
    )
    .await;
    let first = jobs::job_claim(&db, &claim("q", "w1", 1)).await.unwrap().remove(0);
    let failed = jobs::job_fail_many(
        &db,
        &[Failure {
            id: first.id,
            attempt: first.attempt,
            error: "boom 1".into(),
            retry_in: Some(Duration::ZERO),
        }],
    )
    .await
    .unwrap();
    assert_eq!(failed, vec![enqueued.id]);
    assert_eq!(state(&db, enqueued.id).await, JobState::Retryable);
    let second = jobs::job_claim(&db, &claim("q", "w1", 1)).await.unwrap().remove(0);
    assert_eq!(second.attempt, 2);
    // The first attempt's late failure is fenced out.
    let late = Failure {
        id: first.id,
        attempt: first.attempt,
        error: "late".into(),
        retry_in: None,
    };
    assert!(jobs::job_fail_many(&db, &[late]).await.unwrap().is_empty());
    jobs::job_fail_many(
        &db,
        &[Failure {
            id: second.id,
            attempt: second.attempt,
            error: "boom 2 ".repeat(1000),
            retry_in: None,
        }],
    )
    .await
    .unwrap();
    let dead = jobs::job_get(&db, enqueued.id).await.unwrap().unwrap();
    assert_eq!(dead.state, JobState::Dead);
    let errors = dead.errors.as_array().unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0]["error"], "boom 1");
    assert_eq!(errors[0]["attempt"], 1);
    assert!(errors[1]["error"].as_str().unwrap().len() < 2_100, "errors are cut");

    let retried = jobs::job_retry(&db, enqueued.id, 1).await.unwrap().unwrap();
    assert_eq!(retried.state, JobState::Available);
    assert_eq!(retried.max_attempts, 3);
    let third = jobs::job_claim(&db, &claim("q", "w1", 1)).await.unwrap().remove(0);
    assert_eq!(third.attempt, 3, "attempts keep counting (they fence)");
    assert!(
        jobs::job_retry(&db, enqueued.id, 1).await.unwrap().is_none(),
        "a running job is not retried"
    );
    let cancelled = jobs::job_cancel(&db, enqueued.id).await.unwrap().unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(
        jobs::job_complete_many(
            &db,
            &[Completion {
                id: third.id,
                attempt: third.attempt,
                result: None
            }]
        )
        .await
        .unwrap()
        .is_empty(),
        "a cancelled job's worker cannot complete it"
    );
    assert!(jobs::job_delete(&db, enqueued.id).await.unwrap());
    assert!(jobs::job_get(&db, enqueued.id).await.unwrap().is_none());
}

async fn expired_leases_are_rescued_and_fenced(backend: Backend) {
    let (_database, db) = migrated(backend).await;
    let enqueued = enqueue(&db, &job("q")).await;
    let short = ClaimParams {
        lease: Duration::from_millis(50),
        ..claim("q", "crashed", 1)
    };
    let first = jobs::job_claim(&db, &short).await.unwrap().remove(0);
    assert!(
        jobs::job_rescue(&db, 100).await.unwrap().is_empty(),
        "the lease still holds"
    );
    // Heartbeats keep it.
    assert_eq!(
        jobs::job_heartbeat(&db, &[(first.id, first.attempt)], Duration::from_millis(50))
            .await
            .unwrap(),
        vec![first.id]
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    let rescued = jobs::job_rescue(&db, 100).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].state, JobState::Retryable);
    let second = jobs::job_claim(&db, &claim("q", "healthy", 1)).await.unwrap().remove(0);
    assert_eq!(second.id, enqueued.id);
    assert_eq!(second.attempt, 2);
    // The crashed worker comes back: its heartbeat and completion are refused.
    assert!(
        jobs::job_heartbeat(&db, &[(first.id, first.attempt)], Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty()
    );
    let stale = Completion {
        id: first.id,
        attempt: first.attempt,
        result: None,
    };
    assert!(jobs::job_complete_many(&db, &[stale]).await.unwrap().is_empty());
    let fresh = Completion {
        id: second.id,
        attempt: second.attempt,
        result: None,
    };
    assert_eq!(jobs::job_complete_many(&db, &[fresh]).await.unwrap(), vec![enqueued.id]);
    let job_row = jobs::job_get(&db, enqueued.id).await.unwrap().unwrap();
    assert_eq!(
        job_row.errors.as_array().unwrap().len(),
        1,
        "the rescue is in the history"
    );

    // A job rescued after its last attempt is dead.
    let last = enqueue(
        &db,
        &NewJob {
            max_attempts: 1,
            ..job("q")
        },
    )
    .await;
    jobs::job_claim(&db, &short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let rescued = jobs::job_rescue(&db, 100).await.unwrap();
    assert_eq!(rescued[0].id, last.id);
    assert_eq!(rescued[0].state, JobState::Dead);
}

async fn limits_per_key_rate_and_pause(backend: Backend) {
    let (_database, db) = migrated(backend).await;
    for user in ["alice", "alice", "alice", "bob"] {
        enqueue(
            &db,
            &NewJob {
                concurrency_key: Some(user.into()),
                ..job("pdf")
            },
        )
        .await;
    }
    let per_key = ClaimParams {
        per_key: Some(2),
        ..claim("pdf", "w1", 10)
    };
    let claimed = jobs::job_claim(&db, &per_key).await.unwrap();
    assert_eq!(claimed.len(), 3, "two of alice's and bob's");
    assert!(jobs::job_claim(&db, &per_key).await.unwrap().is_empty());
    let done = Completion {
        id: claimed[0].id,
        attempt: 1,
        result: None,
    };
    jobs::job_complete_many(&db, &[done]).await.unwrap();
    assert_eq!(jobs::job_claim(&db, &per_key).await.unwrap().len(), 1);

    jobs::job_insert_many(&db, &(0..50).map(|_| job("limited")).collect::<Vec<_>>())
        .await
        .unwrap();
    let rated = ClaimParams {
        rate: Some(10.0),
        ..claim("limited", "w1", 50)
    };
    let burst = jobs::job_claim(&db, &rated).await.unwrap().len();
    assert!((9..=11).contains(&burst), "a burst of one second's worth: {burst}");
    assert!(jobs::job_claim(&db, &rated).await.unwrap().len() <= 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let later = jobs::job_claim(&db, &rated).await.unwrap().len();
    assert!((2..=5).contains(&later), "about 3 more after 0.3 s: {later}");

    jobs::job_insert_many(&db, &[job("paused")]).await.unwrap();
    jobs::queue_pause(&db, "paused", true).await.unwrap();
    assert!(
        jobs::job_claim(&db, &claim("paused", "w1", 5))
            .await
            .unwrap()
            .is_empty()
    );
    let stats = jobs::queue_stats(&db).await.unwrap();
    assert!(stats.iter().find(|q| q.name == "paused").unwrap().paused);
    jobs::queue_pause(&db, "paused", false).await.unwrap();
    assert_eq!(jobs::job_claim(&db, &claim("paused", "w1", 5)).await.unwrap().len(), 1);
}

async fn prunes_finished_jobs_by_count_and_age(backend: Backend) {
    let (_database, db) = migrated(backend).await;
    jobs::job_insert_many(&db, &(0..30).map(|_| job("q")).collect::<Vec<_>>())
        .await
        .unwrap();
    let claimed = jobs::job_claim(&db, &claim("q", "w", 30)).await.unwrap();
    let (done, failed) = claimed.split_at(20);
    let completions: Vec<Completion> = done
        .iter()
        .map(|c| Completion {
            id: c.id,
            attempt: c.attempt,
            result: None,
        })
        .collect();
    jobs::job_complete_many(&db, &completions).await.unwrap();
    let failures: Vec<Failure> = failed
        .iter()
        .map(|c| Failure {
            id: c.id,
            attempt: c.attempt,
            error: "x".into(),
            retry_in: None,
        })
        .collect();
    jobs::job_fail_many(&db, &failures).await.unwrap();
    let retention = Retention {
        keep_completed: 5,
        keep_failed: 3,
        max_age: Duration::from_secs(3600),
    };
    let deleted = jobs::job_prune(&db, "q", &retention, 4).await.unwrap();
    assert_eq!(deleted, 15 + 7);
    let stats = jobs::queue_stats(&db).await.unwrap();
    let q = stats.iter().find(|q| q.name == "q").unwrap();
    assert_eq!((q.depth["completed"], q.depth["dead"]), (5, 3));
    let by_age = Retention {
        max_age: Duration::ZERO,
        ..retention
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(jobs::job_prune(&db, "q", &by_age, 100).await.unwrap(), 8);
}

async fn leadership_and_cron_ticks(backend: Backend) {
    let (_database, db) = migrated(backend).await;
    let lease = Duration::from_millis(200);
    assert!(jobs::leader_acquire(&db, "maintenance", "a", lease).await.unwrap());
    assert!(!jobs::leader_acquire(&db, "maintenance", "b", lease).await.unwrap());
    assert!(
        jobs::leader_acquire(&db, "maintenance", "a", lease).await.unwrap(),
        "renewal"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        jobs::leader_acquire(&db, "maintenance", "b", lease).await.unwrap(),
        "takeover after expiry"
    );
    jobs::leader_resign(&db, "maintenance", "b").await.unwrap();
    assert!(jobs::leader_acquire(&db, "maintenance", "a", lease).await.unwrap());

    let tick = chrono::Utc::now();
    let mut tx = db.begin().await.unwrap();
    assert!(jobs::cron_claim_tick(&mut tx, "prices", tick).await.unwrap());
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert!(
        !jobs::cron_claim_tick(&mut tx, "prices", tick).await.unwrap(),
        "a tick runs once"
    );
    assert!(
        jobs::cron_claim_tick(&mut tx, "prices", tick + chrono::Duration::minutes(5))
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    let last = jobs::cron_last_tick(&db, "prices").await.unwrap().unwrap();
    assert_eq!(
        last.timestamp_micros(),
        (tick + chrono::Duration::minutes(5)).timestamp_micros()
    );
}

both!(
    enqueue_is_transactional_and_unique,
    claims_by_priority_and_fences_completions,
    failures_retry_then_die_and_can_be_retried,
    expired_leases_are_rescued_and_fenced,
    limits_per_key_rate_and_pause,
    prunes_finished_jobs_by_count_and_age,
    leadership_and_cron_ticks,
);
