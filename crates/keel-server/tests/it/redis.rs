//! Redis as optional shared state, against a real `redis-server` this test starts, stops and
//! restarts: token lookups are cached and revoked across instances, and when Redis goes down
//! Keel keeps serving, reports "degraded", and reconnects by itself.

use std::time::{Duration, Instant};

use keel_testkit::{Backend, RedisServer, TestApp, both, json};

/// An app whose shared state is in `redis`.
async fn with_redis(backend: Backend, redis: &RedisServer) -> TestApp {
    let url = redis.url();
    TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |c| {
        c.redis.url = Some(keel_server::config::Secret(url))
    })
    .await
}

async fn keeps_serving_while_redis_is_down_and_reconnects(backend: Backend) {
    let mut redis = RedisServer::start();
    let app = with_redis(backend, &redis).await;
    let (_, token) = app.signup("a@example.com").await;

    // A lookup fills the shared cache; the next one is served from it.
    assert_eq!(app.get("/api/v1/auth/me", &token).await.status, 200);
    assert_eq!(
        redis.keys("keel:auth:*").len(),
        1,
        "the token lookup is cached in Redis"
    );
    let before = app.statements();
    assert_eq!(app.get("/api/v1/auth/me", &token).await.status, 200);
    assert_eq!(
        app.statements() - before,
        1,
        "only the memberships query ran: the token came from Redis"
    );

    // Logging out deletes the cached entry, so no instance accepts the token any more.
    assert_eq!(
        app.request("POST", "/api/v1/auth/logout", Some(&token), None)
            .await
            .status,
        204
    );
    assert!(redis.keys("keel:auth:*").is_empty());
    assert_eq!(app.get("/api/v1/auth/me", &token).await.status, 401);

    let login = app
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "a@example.com", "password": "correct horse battery"})),
        )
        .await;
    let token = login.body["token"].as_str().unwrap().to_string();
    assert_eq!(app.get("/api/v1/auth/me", &token).await.status, 200);
    let ready = app.request("GET", "/health/ready", None, None).await;
    assert_eq!(ready.body["status"], "ok", "{}", ready.text);
    assert_eq!(ready.body["checks"]["redis"]["status"], "ok");

    // Redis goes away: requests still work from the database; readiness says degraded.
    redis.stop();
    assert_eq!(app.get("/api/v1/auth/me", &token).await.status, 200);
    let ready = app.request("GET", "/health/ready", None, None).await;
    assert_eq!(ready.status, 200, "an optional dependency does not fail readiness");
    assert_eq!(ready.body["status"], "degraded", "{}", ready.text);
    assert_eq!(ready.body["checks"]["redis"]["status"], "failing");
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(metrics.contains("keel_redis_up 0"), "{metrics}");

    // It comes back on the same address: Keel reconnects without a restart.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = app.request("GET", "/health/ready", None, None).await;
        if ready.body["status"] == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "never reconnected: {}", ready.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.get("/api/v1/auth/me", &token).await.status, 200);
    assert_eq!(redis.keys("keel:auth:*").len(), 1, "the cache fills again");
}

async fn a_logout_on_one_instance_reaches_the_others_at_once(backend: Backend) {
    let redis = RedisServer::start();
    let first = with_redis(backend, &redis).await;
    let second = first.sibling().await;
    let (_, token) = first.signup("a@example.com").await;
    // Both instances now hold the token lookup in their in-process caches.
    assert_eq!(first.get("/api/v1/auth/me", &token).await.status, 200);
    assert_eq!(second.get("/api/v1/auth/me", &token).await.status, 200);
    let before = second.statements();
    assert_eq!(second.get("/api/v1/auth/me", &token).await.status, 200);
    assert_eq!(second.statements() - before, 1, "the token came from the cache");
    // A logout on the first is published; the second drops its copy (it would otherwise keep
    // it for its 10-second lifetime).
    assert_eq!(
        first
            .request("POST", "/api/v1/auth/logout", Some(&token), None)
            .await
            .status,
        204
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while second.get("/api/v1/auth/me", &token).await.status != 401 {
        assert!(
            Instant::now() < deadline,
            "the second instance still accepts the revoked token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn membership_changes_reach_every_instance(backend: Backend) {
    let redis = RedisServer::start();
    let first = with_redis(backend, &redis).await;
    let second = first.sibling().await;
    let (_, owner) = first.signup("owner@example.com").await;
    first.org(&owner, "acme").await;
    let (member_id, member) = first.member(&owner, "acme", "m@example.com", "member").await;
    // The second instance caches the membership (org + role) on first use.
    assert_eq!(second.get("/api/v1/orgs/acme/projects", &member).await.status, 200);
    assert_eq!(
        redis.keys(&format!("keel:member:{member_id}:*")).len(),
        1,
        "memberships are cached in Redis"
    );
    let before = second.statements();
    assert_eq!(second.get("/api/v1/orgs/acme/projects", &member).await.status, 200);
    assert_eq!(second.statements() - before, 1, "only the page query ran");
    // Removing the member on the first instance reaches the second.
    let removed = first
        .delete(&format!("/api/v1/orgs/acme/members/{member_id}"), &owner)
        .await;
    assert_eq!(removed.status, 204);
    let deadline = Instant::now() + Duration::from_secs(2);
    while second.get("/api/v1/orgs/acme/projects", &member).await.status != 404 {
        assert!(
            Instant::now() < deadline,
            "the second instance still lets a removed member in"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn http_limits_hold_across_instances_and_fall_back_when_redis_stops(backend: Backend) {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let spec = format!(
        "{}\n[rate_limits]\nauth = {{ per_ip = \"4/m\" }}\n",
        keel_testkit::TEST_SPEC
    );
    let first = TestApp::spawn_with(backend, &spec, |c| {
        c.redis.url = Some(keel_server::config::Secret(url));
        c.server.rate_limits = true;
        // Every login here fails: only the rate limit may refuse, not the account lockout.
        c.auth.lockout_failures = 100;
        c.auth.lockout_ip_failures = 100;
    })
    .await;
    let second = first.sibling().await;
    async fn login(app: &TestApp) -> keel_testkit::TestResponse {
        let body = json!({"email": "nobody@example.com", "password": "wrong password"});
        app.request_from("198.51.100.7", "POST", "/api/v1/auth/login", None, Some(body))
            .await
    }
    // Four logins from one address, two on each instance; the fifth is refused by either.
    for app in [&first, &second, &first, &second] {
        assert_eq!(login(app).await.status, 401);
    }
    assert_eq!(login(&first).await.code(), "rate_limited");
    assert_eq!(login(&second).await.code(), "rate_limited");
    assert_eq!(redis.keys("keel:rl:auth:*").len(), 1, "one shared key per limit");
    let metrics = first.request("GET", "/metrics", None, None).await.text;
    assert!(metrics.contains("keel_rate_limit_shared 1"), "{metrics}");
    assert!(metrics.contains("keel_rate_limited_total{class=\"auth\",store=\"redis\"} 1"));

    // Redis stops: each instance limits on its own and says so.
    redis.stop();
    for _ in 0..4 {
        assert_eq!(login(&first).await.status, 401, "the local table starts afresh");
    }
    assert_eq!(login(&first).await.code(), "rate_limited", "and still limits");
    let ready = first.request("GET", "/health/ready", None, None).await;
    assert_eq!(ready.body["status"], "degraded", "{}", ready.text);
    assert_eq!(ready.body["checks"]["redis"]["rate_limits"], "per instance");
    let metrics = first.request("GET", "/metrics", None, None).await.text;
    assert!(metrics.contains("keel_rate_limit_shared 0"), "{metrics}");
}

async fn cached_reads_are_never_stale_across_instances(backend: Backend) {
    use crate::cache::{SPEC, cache_header};
    let mut redis = RedisServer::start();
    let url = redis.url();
    let first = TestApp::spawn_with(backend, SPEC, |c| c.redis.url = Some(keel_server::config::Secret(url))).await;
    let second = first.sibling().await;
    let (_, owner) = first.signup("owner@example.com").await;
    first.org(&owner, "acme").await;
    first
        .create("/api/v1/orgs/acme/projects", &owner, json!({"name": "Apollo"}))
        .await;
    let list = "/api/v1/orgs/acme/projects";
    assert_eq!(cache_header(&second.get(list, &owner).await), "miss");
    assert_eq!(cache_header(&second.get(list, &owner).await), "hit");
    // A write on the first instance: once it has answered, the second serves it.
    for n in 0..5 {
        first.create(list, &owner, json!({"name": format!("Gemini {n}")})).await;
        let read = second.get(list, &owner).await;
        assert_eq!(cache_header(&read), "miss", "write {n}");
        assert_eq!(read.body["items"].as_array().unwrap().len(), 2 + n);
        assert_eq!(cache_header(&second.get(list, &owner).await), "hit");
    }

    // Redis stops: reads bypass the cache (served fresh), writes remember their bumps.
    redis.stop();
    let read = second.get(list, &owner).await;
    assert_eq!((read.status.as_u16(), cache_header(&read)), (200, "none"));
    first.create(list, &owner, json!({"name": "Mercury"})).await;
    let read = second.get(list, &owner).await;
    assert_eq!(
        read.body["items"].as_array().unwrap().len(),
        7,
        "fresh from the database"
    );
    // Redis comes back empty: its stamps start again, under a new generation, so no old
    // entry can match.
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let read = second.get(list, &owner).await;
        assert_eq!(read.body["items"].as_array().unwrap().len(), 7, "never stale");
        if cache_header(&read) == "hit" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the cache never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

both!(
    cached_reads_are_never_stale_across_instances,
    http_limits_hold_across_instances_and_fall_back_when_redis_stops,
    keeps_serving_while_redis_is_down_and_reconnects,
    a_logout_on_one_instance_reaches_the_others_at_once,
    membership_changes_reach_every_instance
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_shared_across_instances_and_fall_back_locally() {
    use keel_server::config::{RedisSection, Secret};
    use keel_server::http::shared::{LocalLimits, Shared};
    let mut redis = RedisServer::start();
    let config = RedisSection {
        url: Some(Secret(redis.url())),
        ..RedisSection::default()
    };
    // Two instances' views of the same Redis.
    let (first, second) = (Shared::connect(&config).unwrap(), Shared::connect(&config).unwrap());
    let (first_local, second_local) = (LocalLimits::default(), LocalLimits::default());
    let second_of = Duration::from_secs(1);

    let opening = first.gcra(&first_local, "ip:10.0.0.1", 5, second_of).await;
    assert!(opening.allowed && opening.shared, "{opening:?}");
    assert_eq!((opening.limit, opening.remaining), (5, 4));
    for _ in 0..2 {
        assert!(first.gcra(&first_local, "ip:10.0.0.1", 5, second_of).await.allowed);
    }
    for _ in 0..2 {
        assert!(
            second.gcra(&second_local, "ip:10.0.0.1", 5, second_of).await.allowed,
            "the limit is shared"
        );
    }
    let refused = second.gcra(&second_local, "ip:10.0.0.1", 5, second_of).await;
    assert!(!refused.allowed, "5 per second across both instances: {refused:?}");
    assert_eq!(refused.remaining, 0);
    assert!(
        (1..=200).contains(&refused.retry_after_ms),
        "one emission interval at most: {refused:?}"
    );
    assert!(
        first.gcra(&first_local, "ip:10.0.0.2", 5, second_of).await.allowed,
        "keys are independent"
    );
    tokio::time::sleep(Duration::from_millis(refused.retry_after_ms + 20)).await;
    assert!(
        first.gcra(&first_local, "ip:10.0.0.1", 5, second_of).await.allowed,
        "allowed again after Retry-After"
    );

    // At most two slots across both instances; a dropped guard frees its slot at once, and
    // a slot whose holder vanished ends with its lease.
    let lease = Duration::from_millis(300);
    let one = first.acquire_slot(&first_local, "upload:u1", 2, lease).await;
    let two = second.acquire_slot(&second_local, "upload:u1", 2, lease).await;
    assert!(one.is_some() && two.is_some());
    assert!(first.acquire_slot(&first_local, "upload:u1", 2, lease).await.is_none());
    assert!(
        second
            .acquire_slot(&second_local, "upload:u2", 2, lease)
            .await
            .is_some(),
        "per key"
    );
    drop(one);
    let deadline = Instant::now() + Duration::from_secs(2);
    let three = loop {
        if let Some(slot) = second.acquire_slot(&second_local, "upload:u1", 2, lease).await {
            break slot;
        }
        assert!(Instant::now() < deadline, "the dropped slot was never given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    std::mem::forget(three);
    std::mem::forget(two);
    assert!(first.acquire_slot(&first_local, "upload:u1", 2, lease).await.is_none());
    tokio::time::sleep(lease + Duration::from_millis(50)).await;
    assert!(
        first.acquire_slot(&first_local, "upload:u1", 2, lease).await.is_some(),
        "leases of lost holders end"
    );

    // Redis goes away: each instance limits on its own, and says so.
    redis.stop();
    let local = first.gcra(&first_local, "ip:10.0.0.3", 2, second_of).await;
    assert!(local.allowed && !local.shared, "{local:?}");
    assert!(first.gcra(&first_local, "ip:10.0.0.3", 2, second_of).await.allowed);
    assert!(
        !first.gcra(&first_local, "ip:10.0.0.3", 2, second_of).await.allowed,
        "the local table still limits"
    );
}
