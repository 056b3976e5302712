//! The error envelope, request ids, and malformed requests.

use keel_testkit::{Backend, TestApp, both, json};

async fn envelope_and_request_ids(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .request_with(
            "GET",
            "/api/v1/nowhere",
            vec![("x-request-id".into(), "trace-123".into())],
            None,
        )
        .await;
    assert_eq!(response.status, 404);
    assert_eq!(
        response.header("x-request-id"),
        Some("trace-123"),
        "the request id is echoed"
    );
    assert_eq!(
        response.body,
        json!({"error": {"code": "route_not_found", "message": "no such route", "request_id": "trace-123", "details": null}})
    );
    let generated = app.request("GET", "/health/live", None, None).await;
    assert!(
        generated.header("x-request-id").is_some_and(|id| id.len() >= 16),
        "an id is generated when none is sent"
    );
    let hostile = app
        .request_with(
            "GET",
            "/health/live",
            vec![("x-request-id".into(), "bad id with spaces".into())],
            None,
        )
        .await;
    assert_ne!(
        hostile.header("x-request-id"),
        Some("bad id with spaces"),
        "unsafe ids are replaced"
    );
    let method = app.request("PUT", "/api/v1/orgs", None, None).await;
    assert_eq!((method.status.as_u16(), method.code()), (405, "method_not_allowed"));
}

async fn malformed_bodies_get_clear_codes(backend: Backend) {
    let app = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |c| c.server.body_limit_bytes = 2048).await;
    let (_, token) = app.signup("a@example.com").await;
    let auth = || vec![("authorization".to_string(), format!("Bearer {token}"))];
    let broken = app
        .request_with("POST", "/api/v1/orgs", auth(), Some("{not json".into()))
        .await;
    assert_eq!((broken.status.as_u16(), broken.code()), (400, "invalid_json"));
    let mut headers = auth();
    headers.push(("content-type".into(), "text/plain".into()));
    let wrong_type = app
        .request_with("POST", "/api/v1/orgs", headers, Some("{}".into()))
        .await;
    assert_eq!(
        (wrong_type.status.as_u16(), wrong_type.code()),
        (415, "unsupported_media_type")
    );
    let big = format!("{{\"slug\": \"x\", \"name\": \"{}\"}}", "a".repeat(5000));
    let too_large = app.request_with("POST", "/api/v1/orgs", auth(), Some(big)).await;
    assert_eq!(
        (too_large.status.as_u16(), too_large.code()),
        (413, "payload_too_large")
    );
    let nul = app
        .request_with(
            "POST",
            "/api/v1/orgs",
            auth(),
            Some(r#"{"slug": "a\u0000b", "name": "x"}"#.into()),
        )
        .await;
    assert_eq!(
        (nul.status.as_u16(), nul.code()),
        (400, "invalid_json"),
        "NUL never reaches the database"
    );
    let nul_query = app.request_with("GET", "/api/v1/orgs?after=%00", auth(), None).await;
    assert_eq!((nul_query.status.as_u16(), nul_query.code()), (400, "invalid_query"));
    for response in [&broken, &wrong_type, &too_large, &nul, &nul_query] {
        assert!(
            response.body["error"]["request_id"].is_string(),
            "every error carries the request id"
        );
    }
}

async fn a_busy_database_is_a_503_with_retry_after(backend: Backend) {
    let app = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |c| {
        c.database.max_connections = 1;
        c.database.acquire_timeout_ms = 1_000;
    })
    .await;
    let (_, token) = app.signup("a@example.com").await;
    // Hold the only write connection, as a long transaction would.
    let held = app.db().begin().await.unwrap();
    let response = app
        .post("/api/v1/orgs", &token, json!({"slug": "acme", "name": "Acme"}))
        .await;
    assert_eq!(
        (response.status.as_u16(), response.code()),
        (503, "database_busy"),
        "{}",
        response.text
    );
    assert_eq!(response.header("retry-after"), Some("1"));
    // While a request waits for the connection, the pool metrics say so.
    let app = std::sync::Arc::new(app);
    let waiter = {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move {
            app.post("/api/v1/orgs", &token, json!({"slug": "beta", "name": "Beta"}))
                .await
                .status
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("keel_db_pool_connections{state=\"waiting\"} 1"),
        "{metrics}"
    );
    assert_eq!(waiter.await.unwrap(), 503);
    drop(held);
    assert_eq!(
        app.post("/api/v1/orgs", &token, json!({"slug": "acme", "name": "Acme"}))
            .await
            .status,
        201,
        "and it recovers"
    );
}

both!(
    envelope_and_request_ids,
    malformed_bodies_get_clear_codes,
    a_busy_database_is_a_503_with_retry_after
);
