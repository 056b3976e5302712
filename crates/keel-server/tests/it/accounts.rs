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

/// A5: TOTP enrolment, sign-in with a second factor, replay refusal, recovery codes, lockouts.
async fn a_second_factor_guards_sign_in(backend: Backend) {
    let app = app(backend).await;
    let (_, token) = app.signup("mfa@example.com").await;
    let post = |path: &str, token: Option<&str>, body: serde_json::Value| {
        let (app, path, token) = (&app, path.to_string(), token.map(str::to_string));
        async move { app.request("POST", &path, token.as_deref(), Some(body)).await }
    };
    let wrong = post(
        "/api/v1/auth/mfa/totp/enroll",
        Some(&token),
        json!({"password": "nope nope nope"}),
    )
    .await;
    assert_eq!(wrong.code(), "invalid_credentials");
    let enrolled = post(
        "/api/v1/auth/mfa/totp/enroll",
        Some(&token),
        json!({"password": "correct horse battery"}),
    )
    .await;
    assert_eq!(enrolled.status, 200, "{}", enrolled.text);
    let uri = enrolled.body["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/testapp:mfa%40example.com?"), "{uri}");
    let secret = enrolled.body["secret"].as_str().unwrap().to_string();
    let totp = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(&secret).unwrap())
        .build()
        .unwrap();
    let at = |offset: i64| {
        totp.generate((chrono::Utc::now().timestamp() + offset) as u64)
            .to_string()
    };

    let bad = post("/api/v1/auth/mfa/totp/confirm", Some(&token), json!({"code": "000000"})).await;
    assert_eq!(bad.code(), "invalid_code");
    let confirmed = post("/api/v1/auth/mfa/totp/confirm", Some(&token), json!({"code": at(0)})).await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.text);
    let recovery: Vec<String> = confirmed.body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(recovery.len(), 10);
    let again = post(
        "/api/v1/auth/mfa/totp/enroll",
        Some(&token),
        json!({"password": "correct horse battery"}),
    )
    .await;
    assert_eq!(again.code(), "mfa_enabled");

    // The password alone no longer signs in.
    let first = login(&app, "127.0.0.1", "mfa@example.com", "correct horse battery").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["mfa_required"], true);
    assert!(first.body.get("token").is_none());
    let mfa_token = first.body["mfa_token"].as_str().unwrap().to_string();
    // The code that confirmed the enrolment was used: its step is spent.
    let replay = post("/api/v1/auth/mfa", None, json!({"mfa_token": mfa_token, "code": at(0)})).await;
    assert_eq!(replay.code(), "invalid_code", "a code works once");
    let next = at(30);
    let done = post("/api/v1/auth/mfa", None, json!({"mfa_token": mfa_token, "code": next})).await;
    assert_eq!(done.status, 200, "{}", done.text);
    let session = done.body["token"].as_str().unwrap().to_string();
    assert_eq!(app.get("/api/v1/auth/me", &session).await.status, 200);
    let reused = post("/api/v1/auth/mfa", None, json!({"mfa_token": mfa_token, "code": next})).await;
    assert_eq!(reused.code(), "invalid_token", "the sign-in is finished");
    assert_eq!(
        post(
            "/api/v1/auth/mfa",
            None,
            json!({"mfa_token": "km_forged", "code": "123456"})
        )
        .await
        .code(),
        "invalid_token"
    );

    // A recovery code works once, in any case and with or without its dash.
    let second = login(&app, "127.0.0.1", "mfa@example.com", "correct horse battery")
        .await
        .body["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    let code = recovery[0].to_uppercase().replace('-', "");
    let by_recovery = post("/api/v1/auth/mfa", None, json!({"mfa_token": second, "code": code})).await;
    assert_eq!(by_recovery.status, 200, "{}", by_recovery.text);
    let third = login(&app, "127.0.0.1", "mfa@example.com", "correct horse battery")
        .await
        .body["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    let spent = post(
        "/api/v1/auth/mfa",
        None,
        json!({"mfa_token": third, "code": recovery[0]}),
    )
    .await;
    assert_eq!(spent.code(), "invalid_code");
    let status = app.get("/api/v1/auth/mfa", &session).await;
    assert_eq!(status.body, json!({"totp": true, "recovery_codes_left": 9}));

    // Removing it needs the password and a code.
    let refused = post(
        "/api/v1/auth/mfa/totp/disable",
        Some(&session),
        json!({"password": "correct horse battery", "code": "000000"}),
    )
    .await;
    assert_eq!(refused.code(), "invalid_code");
    let removed = post(
        "/api/v1/auth/mfa/totp/disable",
        Some(&session),
        json!({"password": "correct horse battery", "code": recovery[1]}),
    )
    .await;
    assert_eq!(removed.status, 204, "{}", removed.text);
    let plain = login(&app, "127.0.0.1", "mfa@example.com", "correct horse battery").await;
    assert!(plain.body["token"].is_string(), "{}", plain.text);
}

/// Wrong second-factor codes count against the same lockouts as wrong passwords.
async fn wrong_codes_lock_the_account(backend: Backend) {
    let app = app(backend).await;
    let (_, token) = app.signup("lock@example.com").await;
    enrol_totp(&app, &token).await;
    let mfa_token = login(&app, "127.0.0.1", "lock@example.com", "correct horse battery")
        .await
        .body["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    let attempt = || {
        app.request(
            "POST",
            "/api/v1/auth/mfa",
            None,
            Some(json!({"mfa_token": mfa_token, "code": "000000"})),
        )
    };
    for _ in 0..3 {
        assert_eq!(attempt().await.code(), "invalid_code");
    }
    let locked = attempt().await;
    assert_eq!(locked.status, 429, "{}", locked.text);
    assert_eq!(locked.code(), "login_locked");
}

/// Enrols and confirms TOTP for the token's user (whose password is the testkit's); answers
/// the generator of its codes.
pub(crate) async fn enrol_totp(app: &TestApp, token: &str) -> totp_rs::Totp {
    let enrolled = app
        .post(
            "/api/v1/auth/mfa/totp/enroll",
            token,
            json!({"password": "correct horse battery"}),
        )
        .await;
    assert_eq!(enrolled.status, 200, "{}", enrolled.text);
    let secret = enrolled.body["secret"].as_str().unwrap();
    let totp = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .build()
        .unwrap();
    let code = totp.generate(chrono::Utc::now().timestamp() as u64).to_string();
    let confirmed = app
        .post("/api/v1/auth/mfa/totp/confirm", token, json!({"code": code}))
        .await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.text);
    totp
}

async fn an_org_can_require_a_second_factor(backend: Backend) {
    let app = app(backend).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let (_, admin) = app.member(&owner, "acme", "admin@example.com", "admin").await;
    let (_, member) = app.member(&owner, "acme", "member@example.com", "member").await;
    let key = app
        .post(
            "/api/v1/orgs/acme/api_keys",
            &owner,
            json!({"name": "ci", "role": "member"}),
        )
        .await;
    let key = key.body["token"].as_str().expect("an API key").to_string();
    let require = |token: String, on: bool| {
        let app = &app;
        async move { app.patch("/api/v1/orgs/acme", &token, json!({"require_mfa": on})).await }
    };
    // Only owners; and an owner without a second factor would lock themselves out.
    let by_admin = require(admin.clone(), true).await;
    assert_eq!((by_admin.status.as_u16(), by_admin.code()), (403, "forbidden"));
    let unenrolled = require(owner.clone(), true).await;
    assert_eq!((unenrolled.status.as_u16(), unenrolled.code()), (403, "mfa_required"));
    enrol_totp(&app, &owner).await;
    let on = require(owner.clone(), true).await;
    assert_eq!(on.status, 200, "{}", on.text);
    assert_eq!(on.body["org"]["require_mfa"], true);

    // Members without one are refused everywhere in the org, and told what to do.
    let refused = app.get("/api/v1/orgs/acme/projects", &member).await;
    assert_eq!(
        (refused.status.as_u16(), refused.code()),
        (403, "mfa_required"),
        "{}",
        refused.text
    );
    assert_eq!(app.get("/api/v1/orgs/acme", &admin).await.code(), "mfa_required");
    // They still see that they belong to it, and can enrol.
    let listed = app.get("/api/v1/orgs", &member).await;
    assert_eq!(listed.body["items"][0]["org"]["require_mfa"], true, "{}", listed.text);
    enrol_totp(&app, &member).await;
    assert_eq!(app.get("/api/v1/orgs/acme/projects", &member).await.status, 200);
    // API keys are not people; the owner's own access is unchanged.
    assert_eq!(app.get("/api/v1/orgs/acme/projects", &key).await.status, 200);
    assert_eq!(app.get("/api/v1/orgs/acme", &owner).await.status, 200);

    let off = require(owner.clone(), false).await;
    assert_eq!(off.body["org"]["require_mfa"], false);
    assert_eq!(app.get("/api/v1/orgs/acme/projects", &admin).await.status, 200);
    let bad = app
        .patch("/api/v1/orgs/acme", &owner, json!({"require_mfa": "yes"}))
        .await;
    assert_eq!(bad.status, 400);
}

both!(
    an_org_can_require_a_second_factor,
    a_second_factor_guards_sign_in,
    wrong_codes_lock_the_account,
    a_disabled_account_cannot_sign_in,
    sessions_are_listed_and_revoked,
    common_passwords_are_refused,
    repeated_failures_lock_the_account_with_backoff,
    repeated_failures_lock_the_address,
    a_password_change_rotates_every_session
);
