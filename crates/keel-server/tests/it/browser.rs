//! Browser security (S6) on both backends: security headers on every answer, HSTS only over
//! HTTPS through a trusted proxy, CORS from the allow-list, and cookie sessions whose writes
//! need their CSRF token and an allowed origin.

use keel_testkit::{Backend, PEER_HEADER, TestApp, TestResponse, both, json};

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn assert_security_headers(response: &TestResponse) {
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(response.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(response.header("x-frame-options"), Some("DENY"));
    let csp = response.header("content-security-policy").unwrap_or("");
    assert!(
        csp.starts_with("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
}

async fn every_answer_carries_security_headers(backend: Backend) {
    let app = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |c| {
        c.server.trusted_proxies = vec!["10.0.0.1".into()];
        c.server.rate_limits = true;
    })
    .await;
    let (_, token) = app.signup("a@example.com").await;
    for response in [
        app.get("/api/v1/auth/me", &token).await,
        app.request("GET", "/api/v1/nowhere", None, None).await,
        app.request("GET", "/health/ready", None, None).await,
        app.request("POST", "/api/v1/auth/login", None, Some(json!({"bad": 1})))
            .await,
    ] {
        assert_security_headers(&response);
        assert!(
            response.header("strict-transport-security").is_none(),
            "not over plain HTTP"
        );
    }
    // HTTPS at a trusted proxy: HSTS. The same claim from anyone else is ignored.
    let https = |peer: &str| headers(&[(PEER_HEADER, peer), ("x-forwarded-proto", "https")]);
    let response = app.request_with("GET", "/health/live", https("10.0.0.1"), None).await;
    assert_eq!(
        response.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    let response = app.request_with("GET", "/health/live", https("192.0.2.5"), None).await;
    assert!(response.header("strict-transport-security").is_none());
}

async fn cors_follows_the_allow_list(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let preflight = |origin: &str| {
        headers(&[
            ("origin", origin),
            ("access-control-request-method", "PATCH"),
            (
                "access-control-request-headers",
                "authorization, content-type, if-match",
            ),
        ])
    };
    // No origins configured: no cross-origin access at all.
    let response = app
        .request_with("OPTIONS", "/api/v1/orgs", preflight("https://app.example.com"), None)
        .await;
    assert!(response.header("access-control-allow-origin").is_none());

    let app = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |c| {
        c.server.cors_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let response = app
        .request_with(
            "OPTIONS",
            "/api/v1/orgs/acme/projects/x",
            preflight("https://app.example.com"),
            None,
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(response.header("access-control-allow-credentials"), Some("true"));
    let allowed = response.header("access-control-allow-headers").unwrap_or("");
    assert!(
        allowed.contains("authorization") && allowed.contains("if-match"),
        "{allowed}"
    );
    assert!(
        response
            .header("access-control-allow-methods")
            .unwrap_or("")
            .contains("PATCH")
    );

    let response = app
        .request_with("OPTIONS", "/api/v1/orgs", preflight("https://evil.example"), None)
        .await;
    assert!(
        response.header("access-control-allow-origin").is_none(),
        "not on the list"
    );

    let (_, token) = app.signup("a@example.com").await;
    let response = app
        .request_with(
            "GET",
            "/api/v1/auth/me",
            headers(&[
                ("origin", "https://app.example.com"),
                ("authorization", &format!("Bearer {token}")),
            ]),
            None,
        )
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let exposed = response.header("access-control-expose-headers").unwrap_or("");
    assert!(
        exposed.contains("ratelimit-remaining") && exposed.contains("etag"),
        "{exposed}"
    );

    // A wildcard is refused in production and allowed in development.
    let mut config = keel_server::Config::default();
    config.server.cors_origins = vec!["*".into()];
    assert!(config.validate().is_err());
    config.app.environment = "development".into();
    assert!(config.validate().is_ok());
}

async fn cookie_sessions_need_their_csrf_token_to_write(backend: Backend) {
    let app = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |c| {
        c.server.cors_origins = vec!["https://app.example.com".into()];
    })
    .await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.member(&owner, "acme", "member@example.com", "admin").await;
    let login = app
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "member@example.com", "password": "correct horse battery", "cookie": true})),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.text);
    assert!(
        login.body.get("token").is_none(),
        "the token stays in the HttpOnly cookie"
    );
    let csrf = login.body["csrf_token"].as_str().expect("csrf token").to_string();
    let cookies: Vec<&str> = login
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let session_cookie = cookies
        .iter()
        .find(|c| c.starts_with("keel_session="))
        .expect("a session cookie");
    assert!(session_cookie.contains("HttpOnly") && session_cookie.contains("SameSite=Strict"));
    assert!(cookies.iter().any(|c| c.starts_with(&format!("keel_csrf={csrf};"))));
    let session = session_cookie.split(';').next().unwrap().to_string();

    // Reads need only the cookie.
    let read = app
        .request_with("GET", "/api/v1/auth/me", headers(&[("cookie", &session)]), None)
        .await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["user"]["email"], "member@example.com");

    let write = |extra: &[(&str, &str)]| {
        let mut all = headers(&[("cookie", &session), ("host", "keel.example.com")]);
        all.extend(headers(extra));
        let body = json!({"name": uuid::Uuid::new_v4().to_string()}).to_string();
        let app = &app;
        async move {
            app.request_with("POST", "/api/v1/orgs/acme/projects", all, Some(body))
                .await
        }
    };
    let refused = write(&[]).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.code(), "csrf_failed");
    assert_eq!(write(&[("x-csrf-token", "0000")]).await.code(), "csrf_failed");
    let foreign = write(&[("x-csrf-token", &csrf), ("origin", "https://evil.example")]).await;
    assert_eq!(foreign.code(), "csrf_failed", "{}", foreign.text);
    let cross_site = write(&[("x-csrf-token", &csrf), ("sec-fetch-site", "cross-site")]).await;
    assert_eq!(cross_site.code(), "csrf_failed");
    assert_eq!(write(&[("x-csrf-token", &csrf)]).await.status, 201);
    let same_origin = write(&[("x-csrf-token", &csrf), ("origin", "https://keel.example.com")]).await;
    assert_eq!(same_origin.status, 201, "{}", same_origin.text);
    let allowed = write(&[("x-csrf-token", &csrf), ("origin", "https://app.example.com")]).await;
    assert_eq!(allowed.status, 201, "{}", allowed.text);
    // Nothing refused was written.
    let list = app.get("/api/v1/orgs/acme/projects", &owner).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 3);

    // A bearer token needs no CSRF token: browsers do not send it by themselves.
    let bearer = app
        .post("/api/v1/orgs/acme/projects", &owner, json!({"name": "Gemini"}))
        .await;
    assert_eq!(bearer.status, 201);

    // Logging out ends the session and clears both cookies.
    let logout = app
        .request_with(
            "POST",
            "/api/v1/auth/logout",
            headers(&[("cookie", &session), ("x-csrf-token", &csrf)]),
            None,
        )
        .await;
    assert_eq!(logout.status, 204, "{}", logout.text);
    let cleared: Vec<&str> = logout
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        cleared.iter().all(|c| c.contains("Max-Age=0")) && cleared.len() == 2,
        "{cleared:?}"
    );
    let after = app
        .request_with("GET", "/api/v1/auth/me", headers(&[("cookie", &session)]), None)
        .await;
    assert_eq!(after.status, 401);
}

both!(
    every_answer_carries_security_headers,
    cors_follows_the_allow_list,
    cookie_sessions_need_their_csrf_token_to_write
);
