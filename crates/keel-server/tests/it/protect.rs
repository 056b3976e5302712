//! Traffic protection (S4, S5) on both backends: rate limits per IP, user and org by route
//! class with the standard headers, client addresses behind trusted proxies only, IP allow and
//! deny lists, the per-user cap on uploads in progress, and the longer upload timeout.

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use keel_testkit::{Backend, TestApp, TestResponse, both, json};

const SPEC: &str = r#"
[app]
name = "limits"

[roles]
order = ["owner", "admin", "member", "viewer"]

[collections.drivers]
fields.name = { type = "text", required = true }
fields.licence = { type = "file", max_size = "1MB" }
rules.view = "role >= viewer"
rules.update = "role >= member"

[rate_limits]
auth = { per_ip = "3/m" }
api = { per_ip = "50/m", per_user = "6/m", per_org = "9/m" }
upload = { per_user = "20/m", concurrent_per_user = 2 }
status = { per_user = "2/m" }
"#;

async fn limited(backend: Backend, tweak: impl FnOnce(&mut keel_server::Config)) -> TestApp {
    limited_with(backend, SPEC, tweak).await
}

async fn limited_with(backend: Backend, spec: &str, tweak: impl FnOnce(&mut keel_server::Config)) -> TestApp {
    TestApp::spawn_with(backend, spec, |config| {
        config.server.rate_limits = true;
        tweak(config);
    })
    .await
}

fn header(response: &TestResponse, name: &str) -> u64 {
    response
        .header(name)
        .unwrap_or_else(|| panic!("no {name} header: {:?}", response.headers))
        .parse()
        .expect("a number")
}

async fn login(app: &TestApp, peer: &str) -> TestResponse {
    let body = json!({"email": "nobody@example.com", "password": "wrong password"});
    app.request_from(peer, "POST", "/api/v1/auth/login", None, Some(body))
        .await
}

async fn auth_is_limited_per_ip_with_standard_headers(backend: Backend) {
    let app = limited(backend, |_| {}).await;
    for left in (0..3).rev() {
        let response = login(&app, "198.51.100.1").await;
        assert_eq!(response.status, 401, "{}", response.text);
        // Both the auth class (3/m) and the api class (50/m) count it; the tighter shows.
        assert_eq!(header(&response, "ratelimit-limit"), 3);
        assert_eq!(header(&response, "ratelimit-remaining"), left);
        assert_eq!(response.header("ratelimit-policy"), Some("3;w=60"));
    }
    let refused = login(&app, "198.51.100.1").await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(refused.code(), "rate_limited");
    assert_eq!(refused.body["error"]["details"]["class"], "auth");
    assert_eq!(refused.body["error"]["details"]["scope"], "ip");
    assert_eq!(refused.body["error"]["details"]["limit"], 3);
    let retry_after = header(&refused, "retry-after");
    assert!(
        (1..=20).contains(&retry_after),
        "one emission interval (20 s): {retry_after}"
    );
    assert_eq!(header(&refused, "ratelimit-remaining"), 0);
    assert!(header(&refused, "ratelimit-reset") >= retry_after);

    // Another address has its own allowance; health checks are never limited.
    assert_eq!(login(&app, "198.51.100.2").await.status, 401);
    assert_eq!(
        app.request_from("198.51.100.1", "GET", "/health/live", None, None)
            .await
            .status,
        200
    );
    // The refusal is counted by error code.
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("keel_http_errors_total{code=\"rate_limited\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("keel_rate_limited_total{class=\"auth\",store=\"local\"} 1"));
}

async fn users_and_orgs_have_their_own_limits(backend: Backend) {
    let spec = SPEC.replace("per_ip = \"3/m\"", "per_ip = \"10/m\"");
    let app = limited_with(backend, &spec, |_| {}).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let (_, member) = app.member(&owner, "acme", "member@example.com", "member").await;
    let (_, other) = app.signup("other@example.com").await;
    app.org(&other, "other").await;
    // Every user on their own address: only the user and org limits can bind.
    let from = |n: u32| format!("203.0.113.{n}");
    let list = |token: String, n: u32, org: &'static str| {
        let app = &app;
        async move {
            app.request_from(
                &from(n),
                "GET",
                &format!("/api/v1/orgs/{org}/drivers"),
                Some(&token),
                None,
            )
            .await
        }
    };
    // The owner made two requests (creating the org, adding the member); four more pass.
    for _ in 0..4 {
        assert_eq!(list(owner.clone(), 1, "acme").await.status, 200);
    }
    let refused = list(owner.clone(), 2, "acme").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["error"]["details"]["scope"], "user", "{}", refused.text);
    assert!(
        header(&refused, "retry-after") <= 10,
        "6/m lets one more through every 10 s"
    );

    // The member has requests of their own, until the org's 9/m runs out (5 so far: adding
    // the member and the owner's four lists; the refused one is not counted).
    for _ in 0..4 {
        assert_eq!(list(member.clone(), 3, "acme").await.status, 200);
    }
    let refused = list(member.clone(), 3, "acme").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["error"]["details"]["scope"], "org", "{}", refused.text);

    // Another org is untouched.
    let response = list(other.clone(), 4, "other").await;
    assert_eq!(response.status, 200, "{}", response.text);
    // Job-status polling has its own tighter class: 2/m, then 429 (before the 404).
    let (_, poller) = app.signup("poller@example.com").await;
    for _ in 0..2 {
        let response = app
            .request_from(&from(5), "GET", "/api/v1/jobs/1", Some(&poller), None)
            .await;
        assert_eq!(response.status, 404);
    }
    let response = app
        .request_from(&from(5), "GET", "/api/v1/jobs/1", Some(&poller), None)
        .await;
    assert_eq!(response.status, 429);
    assert_eq!(response.body["error"]["details"]["class"], "status");
    // A bad token is limited as an anonymous caller and refused as unauthenticated.
    let response = app
        .request_from(&from(6), "GET", "/api/v1/orgs/acme/drivers", Some("not-a-token"), None)
        .await;
    assert_eq!(response.status, 401);
}

async fn forwarded_addresses_count_only_behind_trusted_proxies(backend: Backend) {
    // Without trusted proxies, X-Forwarded-For is the client's own claim and is ignored.
    let app = limited(backend, |_| {}).await;
    for n in 0..4 {
        let headers = vec![
            (keel_testkit::PEER_HEADER.to_string(), "192.0.2.10".to_string()),
            ("x-forwarded-for".to_string(), format!("10.9.9.{n}")),
        ];
        let body = json!({"email": "x@example.com", "password": "wrong password"}).to_string();
        let response = app
            .request_with("POST", "/api/v1/auth/login", headers, Some(body))
            .await;
        let expected = if n < 3 { 401 } else { 429 };
        assert_eq!(response.status, expected, "spoofed hop {n}: {}", response.text);
    }

    // Behind a trusted proxy, each forwarded client has its own allowance.
    let app = limited(backend, |c| c.server.trusted_proxies = vec!["192.0.2.0/24".into()]).await;
    for n in 0..4 {
        let headers = vec![
            (keel_testkit::PEER_HEADER.to_string(), "192.0.2.10".to_string()),
            ("x-forwarded-for".to_string(), format!("198.51.100.{n}, 192.0.2.99")),
        ];
        let body = json!({"email": "x@example.com", "password": "wrong password"}).to_string();
        let response = app
            .request_with("POST", "/api/v1/auth/login", headers, Some(body))
            .await;
        assert_eq!(response.status, 401, "client {n} behind the proxy: {}", response.text);
    }
}

async fn allow_and_deny_lists(backend: Backend) {
    let app = limited(backend, |c| {
        c.server.deny_ips = vec!["10.0.0.0/8".into(), "2001:db8::/32".into()];
    })
    .await;
    for peer in ["10.1.2.3", "2001:db8::1", "::ffff:10.1.2.3"] {
        let response = app.request_from(peer, "GET", "/api/v1/auth/me", None, None).await;
        assert_eq!(response.status, 403, "{peer}");
        assert_eq!(response.code(), "ip_blocked");
        let metrics = app.request_from(peer, "GET", "/metrics", None, None).await;
        assert_eq!(metrics.status, 403, "{peer}");
        let health = app.request_from(peer, "GET", "/health/ready", None, None).await;
        assert_eq!(health.status, 200, "health checks stay open: {peer}");
    }
    assert_eq!(
        app.request_from("192.0.2.1", "GET", "/api/v1/auth/me", None, None)
            .await
            .code(),
        "unauthenticated"
    );

    let app = limited(backend, |c| c.server.allow_ips = vec!["192.0.2.0/24".into()]).await;
    assert_eq!(
        app.request_from("192.0.2.200", "GET", "/api/v1/auth/me", None, None)
            .await
            .code(),
        "unauthenticated"
    );
    assert_eq!(
        app.request_from("198.51.100.1", "GET", "/api/v1/auth/me", None, None)
            .await
            .code(),
        "ip_blocked"
    );
}

/// An upload whose body arrives only when the returned sender sends it (or drops).
fn held_upload(
    app: &TestApp,
    path: &str,
    token: &str,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<u16>) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let body = futures_util::stream::once(async move {
        let _ = released.await;
        Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"%PDF-1.7\n%%EOF\n"))
    });
    let request = Request::builder()
        .method("POST")
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/pdf")
        .body(Body::from_stream(body))
        .expect("request");
    let router = app.router();
    let task = tokio::spawn(async move { keel_testkit::send_to(router, request).await.status().as_u16() });
    (release, task)
}

async fn uploads_in_progress_are_capped_per_user(backend: Backend) {
    let spec = SPEC.replace("per_user = \"6/m\", per_org = \"9/m\"", "per_user = \"60/m\"");
    let app = limited_with(backend, &spec, |c| {
        // Uploads run under their own, longer timeout.
        c.server.request_timeout_ms = 300;
        c.server.upload_timeout_ms = 20_000;
    })
    .await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let (_, member) = app.member(&owner, "acme", "member@example.com", "member").await;
    let driver = app
        .create("/api/v1/orgs/acme/drivers", &owner, json!({"name": "Dana"}))
        .await;
    let path = format!("/api/v1/orgs/acme/drivers/{driver}/files/licence");

    let (first, first_done) = held_upload(&app, &path, &owner);
    let (second, second_done) = held_upload(&app, &path, &owner);
    // Both hold their slots once their handlers wait for the body.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let third = app
        .request_bytes("POST", &path, auth(&owner), Some(b"%PDF-1.7\n".to_vec()))
        .await;
    assert_eq!(third.status, 429, "{}", third.text);
    assert_eq!(third.code(), "too_many_concurrent");
    assert_eq!(third.body["error"]["details"]["concurrent"], 2);
    // Another user is not held up by the owner's uploads.
    let other = app
        .request_bytes("POST", &path, auth(&member), Some(b"%PDF-1.7\n".to_vec()))
        .await;
    assert_eq!(other.status, 201, "{}", other.text);

    // The held uploads outlive the 300 ms request timeout and still succeed.
    first.send(()).unwrap();
    assert_eq!(first_done.await.unwrap(), 201);
    let fourth = app
        .request_bytes("POST", &path, auth(&owner), Some(b"%PDF-1.7\n".to_vec()))
        .await;
    assert_eq!(fourth.status, 201, "a slot is free again: {}", fourth.text);
    second.send(()).unwrap();
    assert_eq!(second_done.await.unwrap(), 201);
}

fn auth(token: &str) -> Vec<(String, String)> {
    vec![
        ("authorization".to_string(), format!("Bearer {token}")),
        ("content-type".to_string(), "application/pdf".to_string()),
    ]
}

async fn limits_can_be_turned_off(backend: Backend) {
    let app = TestApp::spawn_with(backend, SPEC, |_| {}).await;
    for _ in 0..5 {
        let response = login(&app, "198.51.100.1").await;
        assert_eq!(response.status, 401);
        assert!(response.header("ratelimit-limit").is_none());
    }
}

both!(
    auth_is_limited_per_ip_with_standard_headers,
    users_and_orgs_have_their_own_limits,
    forwarded_addresses_count_only_behind_trusted_proxies,
    allow_and_deny_lists,
    uploads_in_progress_are_capped_per_user,
    limits_can_be_turned_off
);
