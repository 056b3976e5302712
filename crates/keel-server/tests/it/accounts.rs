//! Accounts (S9) on both backends: the common-password list, login lockouts per account and
//! per address with doubling locks, and password changes that rotate every session.

use std::time::Duration;

use keel_testkit::{Backend, TestApp, TestResponse, both, json};

async fn app(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, |c| {
        c.auth.lockout_failures = 3;
        c.auth.lockout_ip_failures = 5;
        c.auth.lockout_seconds = 1;
        c.auth.lockout_max_seconds = 4;
    })
    .await
}

async fn login(app: &TestApp, peer: &str, email: &str, password: &str) -> TestResponse {
    let body = json!({"email": email, "password": password});
    app.request_from(peer, "POST", "/api/v1/auth/login", None, Some(body))
        .await
}

async fn common_passwords_are_refused(backend: Backend) {
    let app = app(backend).await;
    for password in ["password123", "Password123", "qwertyuiop"] {
        let response = app
            .request(
                "POST",
                "/api/v1/auth/signup",
                None,
                Some(json!({"email": "a@example.com", "password": password})),
            )
            .await;
        assert_eq!(response.status, 400, "{password}: {}", response.text);
        assert_eq!(response.code(), "weak_password");
        assert!(response.text.contains("common"), "{}", response.text);
    }
}

async fn repeated_failures_lock_the_account_with_backoff(backend: Backend) {
    let app = app(backend).await;
    app.signup("ada@example.com").await;
    // Three failures from three addresses: the account locks (1 s).
    for n in 1..=3 {
        let response = login(&app, &format!("198.51.100.{n}"), "ada@example.com", "wrong password").await;
        assert_eq!(response.code(), "invalid_credentials");
    }
    let locked = login(&app, "198.51.100.9", "ada@example.com", "correct horse battery").await;
    assert_eq!(locked.status, 429, "even the right password waits: {}", locked.text);
    assert_eq!(locked.code(), "login_locked");
    assert_eq!(locked.body["error"]["details"]["scope"], "account");
    assert_eq!(locked.header("retry-after"), Some("1"));
    // Another account is not locked.
    app.signup("bob@example.com").await;
    assert_eq!(
        login(&app, "198.51.100.9", "bob@example.com", "correct horse battery")
            .await
            .status,
        200
    );

    // After the lock, one more failure locks again for twice as long.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        login(&app, "198.51.100.1", "ada@example.com", "wrong password")
            .await
            .code(),
        "invalid_credentials"
    );
    let locked = login(&app, "198.51.100.1", "ada@example.com", "correct horse battery").await;
    assert_eq!(locked.code(), "login_locked");
    assert_eq!(locked.header("retry-after"), Some("2"), "{}", locked.text);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    // The right password then works and forgets the failures.
    assert_eq!(
        login(&app, "198.51.100.1", "ada@example.com", "correct horse battery")
            .await
            .status,
        200
    );
    for _ in 0..2 {
        login(&app, "198.51.100.1", "ada@example.com", "wrong password").await;
    }
    assert_eq!(
        login(&app, "198.51.100.1", "ada@example.com", "correct horse battery")
            .await
            .status,
        200,
        "two failures after a success do not lock"
    );
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("keel_login_lockouts_total{scope=\"account\"}"),
        "{metrics}"
    );
}

async fn repeated_failures_lock_the_address(backend: Backend) {
    let app = app(backend).await;
    app.signup("ada@example.com").await;
    // Five failures on five accounts (unknown ones too) from one address.
    for n in 0..5 {
        let response = login(&app, "203.0.113.7", &format!("user{n}@example.com"), "wrong password").await;
        assert_eq!(response.code(), "invalid_credentials");
    }
    let locked = login(&app, "203.0.113.7", "ada@example.com", "correct horse battery").await;
    assert_eq!(locked.code(), "login_locked", "{}", locked.text);
    assert_eq!(locked.body["error"]["details"]["scope"], "ip");
    assert_eq!(
        login(&app, "203.0.113.8", "ada@example.com", "correct horse battery")
            .await
            .status,
        200,
        "other addresses are not locked"
    );
}

async fn a_password_change_rotates_every_session(backend: Backend) {
    let app = app(backend).await;
    let (_, first) = app.signup("ada@example.com").await;
    let second = login(&app, "127.0.0.1", "ada@example.com", "correct horse battery")
        .await
        .body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let change = |token: &str, current: &str, new: &str| {
        let body = json!({"current_password": current, "new_password": new});
        let (app, token) = (&app, token.to_string());
        async move { app.post("/api/v1/auth/password", &token, body).await }
    };
    let wrong = change(&first, "not my password", "a much better passphrase").await;
    assert_eq!(wrong.code(), "invalid_credentials");
    let weak = change(&first, "correct horse battery", "password123").await;
    assert_eq!(weak.code(), "weak_password");
    let changed = change(&first, "correct horse battery", "a much better passphrase").await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    assert_eq!(changed.body["revoked_sessions"], 2);
    let rotated = changed.body["token"].as_str().expect("a new session").to_string();
    assert_ne!(rotated, first);
    for old in [&first, &second] {
        assert_eq!(app.get("/api/v1/auth/me", old).await.status, 401, "old sessions end");
    }
    assert_eq!(app.get("/api/v1/auth/me", &rotated).await.status, 200);
    assert_eq!(
        login(&app, "127.0.0.1", "ada@example.com", "correct horse battery")
            .await
            .code(),
        "invalid_credentials"
    );
    assert_eq!(
        login(&app, "127.0.0.1", "ada@example.com", "a much better passphrase")
            .await
            .status,
        200
    );
}

/// A6: the session list shows where each session came from; one or all others can be ended.
async fn sessions_are_listed_and_revoked(backend: Backend) {
    let app = app(backend).await;
    let (_, first) = app.signup("sam@example.com").await;
    let login_as = |peer: &'static str, agent: &'static str| {
        let app = &app;
        async move {
            let response = app
                .request_with(
                    "POST",
                    "/api/v1/auth/login",
                    vec![("x-test-peer".into(), peer.into()), ("user-agent".into(), agent.into())],
                    Some(json!({"email": "sam@example.com", "password": "correct horse battery"}).to_string()),
                )
                .await;
            assert_eq!(response.status, 200, "{}", response.text);
            response.body["token"].as_str().unwrap().to_string()
        }
    };
    let phone = login_as("10.0.0.2", "Phone/1.0").await;
    let laptop = login_as("10.0.0.3", "Laptop/2.0").await;
    let list = app.get("/api/v1/auth/sessions", &laptop).await;
    assert_eq!(list.status, 200, "{}", list.text);
    let items = list.body["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 3);
    let current: Vec<_> = items.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["user_agent"], "Laptop/2.0");
    assert_eq!(current[0]["ip"], "10.0.0.3");
    assert!(current[0]["last_seen_at"].is_string() && current[0]["expires_at"].is_string());
    let phone_id = items.iter().find(|s| s["user_agent"] == "Phone/1.0").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Another user cannot end Sam's sessions, and sees none of them.
    let (_, other) = app.signup("tom@example.com").await;
    let theirs = app.delete(&format!("/api/v1/auth/sessions/{phone_id}"), &other).await;
    assert_eq!(theirs.status, 404);
    assert_eq!(
        app.get("/api/v1/auth/sessions", &other).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(app.delete("/api/v1/auth/sessions/not-a-uuid", &other).await.status, 404);
    assert_eq!(app.get("/api/v1/auth/me", &phone).await.status, 200);

    let ended = app.delete(&format!("/api/v1/auth/sessions/{phone_id}"), &laptop).await;
    assert_eq!(ended.status, 204, "{}", ended.text);
    assert_eq!(app.get("/api/v1/auth/me", &phone).await.status, 401);
    let again = app.delete(&format!("/api/v1/auth/sessions/{phone_id}"), &laptop).await;
    assert_eq!(again.status, 404, "an ended session is gone");

    let others = app
        .request("POST", "/api/v1/auth/sessions/revoke-others", Some(&laptop), None)
        .await;
    assert_eq!(others.status, 200, "{}", others.text);
    assert_eq!(others.body["revoked_sessions"], 1);
    assert_eq!(app.get("/api/v1/auth/me", &first).await.status, 401);
    assert_eq!(app.get("/api/v1/auth/me", &laptop).await.status, 200);
    let left = app.get("/api/v1/auth/sessions", &laptop).await;
    assert_eq!(left.body["items"].as_array().unwrap().len(), 1);
}

/// `keel users disable` (through the store call it makes): the account cannot sign in
/// (403 only for the right password), its sessions end; enabled again, it can.
async fn a_disabled_account_cannot_sign_in(backend: Backend) {
    let app = app(backend).await;
    let (id, token) = app.signup("dis@example.com").await;
    let id = uuid::Uuid::parse_str(&id).unwrap();
    let ended = keel_store::system::user_set_disabled(app.db(), id, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(app.get("/api/v1/auth/me", &token).await.status, 401);
    let right = login(&app, "127.0.0.1", "dis@example.com", "correct horse battery").await;
    assert_eq!(right.code(), "account_disabled");
    let wrong = login(&app, "127.0.0.1", "dis@example.com", "not the password").await;
    assert_eq!(wrong.code(), "invalid_credentials", "a wrong password learns nothing");
    // An operator's reset link still works, but signing in waits for the account to be enabled.
    let config = &app.state.config;
    let (link, _) = keel_server::auth::mail::mint_link(
        app.db(),
        config,
        keel_store::accounts::Purpose::Reset,
        id,
        "dis@example.com",
    )
    .await
    .unwrap();
    let token = link.split("token=").nth(1).unwrap();
    let reset = app
        .request(
            "POST",
            "/api/v1/auth/password-reset/confirm",
            None,
            Some(json!({"token": token, "password": "a whole new phrase"})),
        )
        .await;
    assert_eq!(reset.status, 200, "{}", reset.text);
    assert_eq!(
        login(&app, "127.0.0.1", "dis@example.com", "a whole new phrase")
            .await
            .code(),
        "account_disabled"
    );
    keel_store::system::user_set_disabled(app.db(), id, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        login(&app, "127.0.0.1", "dis@example.com", "a whole new phrase")
            .await
            .status,
        200
    );
    assert!(
        keel_store::system::user_set_disabled(app.db(), uuid::Uuid::nil(), true)
            .await
            .unwrap()
            .is_none()
    );
}

both!(
    a_disabled_account_cannot_sign_in,
    sessions_are_listed_and_revoked,
    common_passwords_are_refused,
    repeated_failures_lock_the_account_with_backoff,
    repeated_failures_lock_the_address,
    a_password_change_rotates_every_session
);
