//! Sign-up, login, sessions and API keys.

use keel_testkit::{Backend, TestApp, both, json};

async fn signup_login_me_logout(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, token) = app.signup("Ada@Example.com").await;
    let me = app.get("/api/v1/auth/me", &token).await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(
        me.body["user"]["email"], "ada@example.com",
        "emails are stored lowercase"
    );
    assert!(
        me.body["user"].get("password_hash").is_none(),
        "hashes never leave the server"
    );

    let login = app
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "ada@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.text);
    let second = login.body["token"].as_str().unwrap().to_string();
    assert!(second.starts_with("ks_"));
    assert_ne!(second, token);

    let wrong = app
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "ada@example.com", "password": "wrong password!"})),
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.code(), "invalid_credentials");
    let unknown = app
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "nobody@example.com", "password": "whatever123"})),
        )
        .await;
    assert_eq!(
        unknown.code(),
        "invalid_credentials",
        "unknown users look the same as wrong passwords"
    );

    let out = app.request("POST", "/api/v1/auth/logout", Some(&token), None).await;
    assert_eq!(out.status, 204);
    assert_eq!(
        app.get("/api/v1/auth/me", &token).await.code(),
        "unauthenticated",
        "a logged-out session is revoked"
    );
    assert_eq!(
        app.get("/api/v1/auth/me", &second).await.status,
        200,
        "other sessions live on"
    );

    let all = app
        .request("POST", "/api/v1/auth/logout-all", Some(&second), None)
        .await;
    assert_eq!(all.status, 200);
    assert_eq!(app.get("/api/v1/auth/me", &second).await.status, 401);
}

async fn signup_validation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let weak = app
        .request(
            "POST",
            "/api/v1/auth/signup",
            None,
            Some(json!({"email": "a@example.com", "password": "short"})),
        )
        .await;
    assert_eq!((weak.status.as_u16(), weak.code()), (400, "weak_password"));
    let same = app
        .request(
            "POST",
            "/api/v1/auth/signup",
            None,
            Some(json!({"email": "abcdefgh@example.com", "password": "abcdefgh@example.com"})),
        )
        .await;
    assert_eq!(same.code(), "weak_password");
    let bad_email = app
        .request(
            "POST",
            "/api/v1/auth/signup",
            None,
            Some(json!({"email": "not-an-email", "password": "long enough pass"})),
        )
        .await;
    assert_eq!(bad_email.code(), "validation_failed");
    assert_eq!(bad_email.body["error"]["details"][0]["field"], "email");
    app.signup("taken@example.com").await;
    let taken = app
        .request(
            "POST",
            "/api/v1/auth/signup",
            None,
            Some(json!({"email": "TAKEN@example.com", "password": "long enough pass"})),
        )
        .await;
    assert_eq!((taken.status.as_u16(), taken.code()), (409, "email_taken"));
    let extra = app
        .request(
            "POST",
            "/api/v1/auth/signup",
            None,
            Some(json!({"email": "x@example.com", "password": "long enough pass", "admin": true})),
        )
        .await;
    assert_eq!(extra.code(), "invalid_json", "unknown fields are rejected");
}

async fn signup_can_be_closed(backend: Backend) {
    let app = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |c| c.auth.signup = false).await;
    let response = app
        .request(
            "POST",
            "/api/v1/auth/signup",
            None,
            Some(json!({"email": "a@example.com", "password": "long enough pass"})),
        )
        .await;
    assert_eq!((response.status.as_u16(), response.code()), (403, "signup_closed"));
}

async fn tokens_are_checked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for header in ["Bearer nope", "Basic abc", "Bearer "] {
        let response = app
            .request_with(
                "GET",
                "/api/v1/auth/me",
                vec![("authorization".into(), header.into())],
                None,
            )
            .await;
        assert_eq!(response.status, 401, "{header}");
        assert_eq!(response.code(), "unauthenticated");
    }
    assert_eq!(
        app.request("GET", "/api/v1/auth/me", None, None).await.code(),
        "unauthenticated"
    );
}

async fn api_keys_act_with_their_role(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let key = app
        .post(
            "/api/v1/orgs/acme/api_keys",
            &owner,
            json!({"name": "ci", "role": "viewer"}),
        )
        .await;
    assert_eq!(key.status, 201, "{}", key.text);
    let token = key.body["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("kk_"));
    assert_eq!(
        app.get("/api/v1/orgs/acme/projects", &token).await.status,
        200,
        "viewers can list"
    );
    let denied = app
        .post("/api/v1/orgs/acme/projects", &token, json!({"name": "x"}))
        .await;
    assert_eq!(denied.code(), "forbidden", "a viewer key cannot create");
    app.org(&owner, "other").await;
    assert_eq!(
        app.get("/api/v1/orgs/other/projects", &token).await.status,
        404,
        "a key sees only its org"
    );
    let listed = app.get("/api/v1/orgs/acme/api_keys", &owner).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert!(listed.body["items"][0].get("token").is_none(), "tokens are shown once");
    let id = key.body["api_key"]["id"].as_str().unwrap();
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/acme/api_keys/{id}"), &owner)
            .await
            .status,
        204
    );
    assert_eq!(
        app.get("/api/v1/orgs/acme/projects", &token).await.status,
        401,
        "a revoked key is refused"
    );
    let too_high = app
        .post(
            "/api/v1/orgs/acme/api_keys",
            &owner,
            json!({"name": "x", "role": "god"}),
        )
        .await;
    assert_eq!(too_high.code(), "invalid_role");
}

both!(
    signup_login_me_logout,
    signup_validation,
    signup_can_be_closed,
    tokens_are_checked,
    api_keys_act_with_their_role
);
