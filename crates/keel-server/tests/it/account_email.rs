//! Email verification, email changes and password resets (A1, A2) on both backends, through
//! a real SMTP server: the tests read the emails Keel sent, follow their links, and check
//! what no answer may reveal.

use std::time::{Duration, Instant};

use keel_testkit::{Backend, SmtpSink, TestApp, TestResponse, both, json};
use serde_json::Value;

async fn app(backend: Backend, smtp: &SmtpSink, tweak: impl FnOnce(&mut keel_server::Config)) -> TestApp {
    let port = smtp.port;
    let app = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, move |config| {
        config.jobs.poll_interval_ms = 50;
        config.smtp.host = Some("127.0.0.1".into());
        config.smtp.port = port;
        config.smtp.tls = "none".into();
        config.smtp.from = "Keel <keel@example.com>".into();
        config.auth.public_url = Some("https://hoa.example.com".into());
        tweak(config);
    })
    .await;
    app.state.jobs.start();
    app
}

/// Waits until every account email queued so far is sent (or given up on).
async fn settled(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let db = app.db();
        let sql = db.portable(
            "SELECT count(*) FROM keel_jobs WHERE kind = 'keel_account_email' AND state IN ('available', 'scheduled', 'running', 'retryable')",
            vec![],
        );
        let rows = db.query_primary(&sql).await.expect("count jobs");
        if rows[0][0].int() == Some(0) {
            return;
        }
        assert!(Instant::now() < deadline, "account emails still pending after 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The emails sent to `to`, as raw text with quoted-printable soft breaks undone.
fn mail_to(smtp: &SmtpSink, to: &str) -> Vec<String> {
    smtp.messages()
        .into_iter()
        .map(|m| m.replace("=\r\n", "").replace("=\n", "").replace("=3D", "="))
        .filter(|m| m.lines().any(|l| l.starts_with("To:") && l.contains(to)))
        .collect()
}

/// The token with `prefix` in an email.
fn token_in(message: &str, prefix: &str) -> String {
    let at = message
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix} token in {message}"));
    message[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect()
}

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> TestResponse {
    app.request("POST", path, token, Some(body)).await
}

async fn login(app: &TestApp, email: &str, password: &str) -> TestResponse {
    post(
        app,
        "/api/v1/auth/login",
        None,
        json!({"email": email, "password": password}),
    )
    .await
}

async fn sign_up_sends_a_link_that_verifies_once(backend: Backend) {
    let smtp = SmtpSink::start();
    let app = app(backend, &smtp, |c| c.auth.require_verified_email = true).await;
    let (_, token) = app.signup("ann@example.com").await;
    let me = app.get("/api/v1/auth/me", &token).await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.body["user"]["email_verified_at"], Value::Null);
    // Unverified: every route outside /auth/ is closed.
    let orgs = app.get("/api/v1/orgs", &token).await;
    assert_eq!(orgs.status, 403, "{}", orgs.text);
    assert_eq!(orgs.code(), "email_not_verified");

    settled(&app).await;
    let mail = mail_to(&smtp, "ann@example.com");
    assert_eq!(mail.len(), 1, "one verification email");
    assert!(
        mail[0].contains("Subject: Confirm your email address for testapp"),
        "{}",
        mail[0]
    );
    assert!(
        mail[0].contains("https://hoa.example.com/_/auth/verify?token=kv_"),
        "{}",
        mail[0]
    );
    let link_token = token_in(&mail[0], "kv_");
    // The token is nowhere but in the email: not in the job's payload or result.
    let jobs = app
        .db()
        .query_primary(&app.db().portable(
            "SELECT payload, result FROM keel_jobs WHERE kind = 'keel_account_email'",
            vec![],
        ))
        .await
        .unwrap();
    for row in jobs {
        for cell in row {
            assert!(
                !format!("{cell:?}").contains(&link_token[3..]),
                "a token leaked into a job row"
            );
        }
    }

    // Opening the link shows a button and uses nothing (link scanners fetch links).
    let page = app
        .request("GET", &format!("/_/auth/verify?token={link_token}"), None, None)
        .await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("form-action 'self'")
    );
    assert!(page.text.contains(&link_token));

    for forged in ["kv_nothing", "kr_notareset", "ks_session", "", &"kv_".repeat(40)] {
        let refused = post(&app, "/api/v1/auth/verify/confirm", None, json!({"token": forged})).await;
        assert_eq!(refused.status, 400, "{forged}: {}", refused.text);
        assert_eq!(refused.code(), "invalid_token");
    }
    let confirmed = post(&app, "/api/v1/auth/verify/confirm", None, json!({"token": link_token})).await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.text);
    assert!(confirmed.body["user"]["email_verified_at"].is_string());
    let again = post(&app, "/api/v1/auth/verify/confirm", None, json!({"token": link_token})).await;
    assert_eq!(again.code(), "invalid_token", "single use");
    // The same session now passes (its cached principal was refreshed).
    assert_eq!(app.get("/api/v1/orgs", &token).await.status, 200);
    let requested = post(&app, "/api/v1/auth/verify/request", Some(&token), json!({})).await;
    assert_eq!(requested.status, 200);
    assert_eq!(requested.body["status"], "verified");
}

async fn a_rolled_back_sign_up_sends_nothing(backend: Backend) {
    let smtp = SmtpSink::start();
    let app = app(backend, &smtp, |_| {}).await;
    app.signup("bob@example.com").await;
    let taken = post(
        &app,
        "/api/v1/auth/signup",
        None,
        json!({"email": "bob@example.com", "password": "another good phrase"}),
    )
    .await;
    assert_eq!(taken.code(), "email_taken");
    settled(&app).await;
    assert_eq!(
        mail_to(&smtp, "bob@example.com").len(),
        1,
        "the failed sign-up queued no email"
    );
}

async fn reset_works_once_on_any_instance_and_ends_every_session(backend: Backend) {
    let smtp = SmtpSink::start();
    let app = app(backend, &smtp, |_| {}).await;
    let other = app.sibling().await;
    let (_, first) = app.signup("cat@example.com").await;
    let second = login(&app, "cat@example.com", "correct horse battery").await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    settled(&app).await;

    let known = post(
        &app,
        "/api/v1/auth/password-reset/request",
        None,
        json!({"email": "Cat@Example.com"}),
    )
    .await;
    let unknown = post(
        &app,
        "/api/v1/auth/password-reset/request",
        None,
        json!({"email": "nobody@example.com"}),
    )
    .await;
    assert_eq!(known.status, 202);
    assert_eq!(
        (unknown.status, &unknown.text),
        (known.status, &known.text),
        "same answer either way"
    );
    let malformed = post(
        &app,
        "/api/v1/auth/password-reset/request",
        None,
        json!({"email": "not an address"}),
    )
    .await;
    assert_eq!(malformed.status, 400);
    settled(&app).await;
    assert!(mail_to(&smtp, "nobody@example.com").is_empty());
    let mail: Vec<String> = mail_to(&smtp, "cat@example.com")
        .into_iter()
        .filter(|m| m.contains("Reset your testapp password"))
        .collect();
    assert_eq!(mail.len(), 1);
    let reset = token_in(&mail[0], "kr_");

    // A weak password is refused and leaves the link usable.
    let weak = post(
        &other,
        "/api/v1/auth/password-reset/confirm",
        None,
        json!({"token": reset, "password": "short"}),
    )
    .await;
    assert_eq!(weak.code(), "weak_password");
    // A reset token is no verification token.
    let wrong = post(&other, "/api/v1/auth/verify/confirm", None, json!({"token": reset})).await;
    assert_eq!(wrong.code(), "invalid_token");
    // Confirmed on the other instance.
    let done = post(
        &other,
        "/api/v1/auth/password-reset/confirm",
        None,
        json!({"token": reset, "password": "a brand new phrase"}),
    )
    .await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["revoked_sessions"], 2);
    assert!(
        done.body["user"]["email_verified_at"].is_string(),
        "the link proved the address"
    );
    for session in [&first, &second] {
        assert_eq!(
            app.get("/api/v1/auth/me", session).await.status,
            401,
            "every session ended"
        );
    }
    assert_eq!(
        login(&app, "cat@example.com", "correct horse battery").await.status,
        401
    );
    assert_eq!(login(&app, "cat@example.com", "a brand new phrase").await.status, 200);
    let reused = post(
        &app,
        "/api/v1/auth/password-reset/confirm",
        None,
        json!({"token": reset, "password": "yet another phrase"}),
    )
    .await;
    assert_eq!(reused.code(), "invalid_token", "single use");
}

async fn a_newer_link_or_a_password_change_voids_a_reset_link(backend: Backend) {
    let smtp = SmtpSink::start();
    let app = app(backend, &smtp, |_| {}).await;
    let (_, session) = app.signup("dan@example.com").await;
    let reset_links = || {
        mail_to(&smtp, "dan@example.com")
            .into_iter()
            .filter(|m| m.contains("kr_"))
            .map(|m| token_in(&m, "kr_"))
            .collect::<Vec<_>>()
    };
    let ask = || {
        post(
            &app,
            "/api/v1/auth/password-reset/request",
            None,
            json!({"email": "dan@example.com"}),
        )
    };
    ask().await;
    settled(&app).await;
    ask().await;
    settled(&app).await;
    let links = reset_links();
    assert_eq!(links.len(), 2);
    let (older, newer) = if links[0] == links[1] {
        panic!("two links are one")
    } else {
        (&links[0], &links[1])
    };
    // Which one is newer is not known from the maildir's order: exactly one of them works.
    let try_link = |token: String| {
        let app = &app;
        async move {
            post(
                app,
                "/api/v1/auth/password-reset/confirm",
                None,
                json!({"token": token, "password": "phrase number one"}),
            )
            .await
            .status
        }
    };
    let results = [try_link(older.clone()).await, try_link(newer.clone()).await];
    let mut sorted = results.map(|s| s.as_u16());
    sorted.sort();
    assert_eq!(sorted, [200, 400], "only the newest link works: {results:?}");

    // A password change voids an open link.
    let fresh = login(&app, "dan@example.com", "phrase number one").await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    ask().await;
    settled(&app).await;
    let open = reset_links()
        .into_iter()
        .find(|t| t != older && t != newer)
        .expect("a third link");
    let changed = post(
        &app,
        "/api/v1/auth/password",
        Some(&fresh),
        json!({"current_password": "phrase number one", "new_password": "phrase number two"}),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
    let void = post(
        &app,
        "/api/v1/auth/password-reset/confirm",
        None,
        json!({"token": open, "password": "phrase number three"}),
    )
    .await;
    assert_eq!(void.code(), "invalid_token");
    drop(session);
}

async fn an_email_change_waits_for_the_new_address(backend: Backend) {
    let smtp = SmtpSink::start();
    let app = app(backend, &smtp, |_| {}).await;
    let (_, token) = app.signup("eve@example.com").await;
    app.signup("taken@example.com").await;
    let wrong = post(
        &app,
        "/api/v1/auth/email",
        Some(&token),
        json!({"email": "eve@new.example.com", "password": "nope nope nope"}),
    )
    .await;
    assert_eq!(wrong.code(), "invalid_credentials");
    let asked = post(
        &app,
        "/api/v1/auth/email",
        Some(&token),
        json!({"email": "eve@new.example.com", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!(asked.status, 202, "{}", asked.text);
    // Another account's address: the same answer, and no email.
    let clash = post(
        &app,
        "/api/v1/auth/email",
        Some(&token),
        json!({"email": "taken@example.com", "password": "correct horse battery"}),
    )
    .await;
    assert_eq!((clash.status, &clash.text), (asked.status, &asked.text));
    settled(&app).await;
    assert!(mail_to(&smtp, "taken@example.com").iter().all(|m| !m.contains("ke_")));
    assert_eq!(
        app.get("/api/v1/auth/me", &token).await.body["user"]["email"],
        "eve@example.com"
    );
    let mail = mail_to(&smtp, "eve@new.example.com");
    assert_eq!(mail.len(), 1);
    let change = token_in(&mail[0], "ke_");
    let done = post(&app, "/api/v1/auth/verify/confirm", None, json!({"token": change})).await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["user"]["email"], "eve@new.example.com");
    assert_eq!(
        app.get("/api/v1/auth/me", &token).await.body["user"]["email"],
        "eve@new.example.com"
    );
    assert_eq!(
        login(&app, "eve@new.example.com", "correct horse battery").await.status,
        200
    );
    assert_eq!(
        login(&app, "eve@example.com", "correct horse battery").await.status,
        401
    );
}

async fn many_requests_for_one_address_send_a_few_emails(backend: Backend) {
    let smtp = SmtpSink::start();
    let app = app(backend, &smtp, |c| {
        c.auth.account_emails_per_hour = 2;
        c.server.rate_limits = false;
    })
    .await;
    app.signup("fay@example.com").await;
    settled(&app).await;
    let mut answers = vec![];
    for _ in 0..40 {
        let answer = post(
            &app,
            "/api/v1/auth/password-reset/request",
            None,
            json!({"email": "fay@example.com"}),
        )
        .await;
        answers.push((answer.status, answer.text));
        settled(&app).await;
    }
    assert!(
        answers.iter().all(|a| a == &answers[0]),
        "every request gets the same answer"
    );
    let resets = mail_to(&smtp, "fay@example.com")
        .into_iter()
        .filter(|m| m.contains("kr_"))
        .count();
    assert_eq!(resets, 2, "auth.account_emails_per_hour = 2");
}

async fn the_reset_page_sets_a_password(backend: Backend) {
    let smtp = SmtpSink::start();
    let app = app(backend, &smtp, |_| {}).await;
    app.signup("gus@example.com").await;
    post(
        &app,
        "/api/v1/auth/password-reset/request",
        None,
        json!({"email": "gus@example.com"}),
    )
    .await;
    settled(&app).await;
    let mail = mail_to(&smtp, "gus@example.com")
        .into_iter()
        .find(|m| m.contains("kr_"))
        .unwrap();
    let token = token_in(&mail, "kr_");
    let form = app
        .request("GET", &format!("/_/auth/reset?token={token}"), None, None)
        .await;
    assert_eq!(form.status, 200);
    assert!(form.text.contains("name=\"password\""));
    let submit = |password: &str, confirm: &str| {
        let body = format!("token={token}&password={password}&confirm={confirm}");
        app.request_with(
            "POST",
            "/_/auth/reset",
            vec![("content-type".into(), "application/x-www-form-urlencoded".into())],
            Some(body),
        )
    };
    let differ = submit("one+good+phrase", "another+phrase").await;
    assert_eq!(differ.status, 400);
    assert!(differ.text.contains("differ"));
    let weak = submit("short", "short").await;
    assert_eq!(weak.status, 400);
    let done = submit("one+good+phrase", "one+good+phrase").await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert!(done.text.contains("Password changed"));
    assert_eq!(login(&app, "gus@example.com", "one good phrase").await.status, 200);
    let used = submit("one+good+phrase", "one+good+phrase").await;
    assert_eq!(used.status, 400);
    assert!(used.text.contains("invalid_token"));
}

/// The reset request does the same work whether or not the address has an account: the
/// same statements, in the same number (the job decides later what to send).
async fn a_reset_request_works_alike_for_known_and_unknown_addresses(backend: Backend) {
    let smtp = SmtpSink::start();
    let port = smtp.port;
    // No workers: only the requests themselves touch the database.
    let app = TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, move |config| {
        config.smtp.host = Some("127.0.0.1".into());
        config.smtp.port = port;
    })
    .await;
    app.signup("hal@example.com").await;
    let mut costs = vec![];
    for email in [
        "hal@example.com",
        "nobody@example.com",
        "hal@example.com",
        "nobody@example.com",
    ] {
        let before = app.statements();
        let answer = post(
            &app,
            "/api/v1/auth/password-reset/request",
            None,
            json!({"email": email}),
        )
        .await;
        costs.push((answer.status.as_u16(), answer.text, app.statements() - before));
    }
    assert_eq!(costs[0], costs[1], "a first request, known and unknown");
    assert_eq!(costs[2], costs[3], "a repeat, known and unknown");
}

/// A3: invitations by email, with a role no higher than the inviter's, accepted once by the
/// address's owner (signed in, or signing up with the invitation), revocable and resendable.
async fn invitations_join_an_org_once(backend: Backend) {
    let smtp = SmtpSink::start();
    let app = app(backend, &smtp, |c| c.auth.signup = false).await;
    // Sign-up is closed: these accounts are made the way an operator would.
    let make = |email: &'static str| {
        let app = &app;
        async move {
            let hash = keel_server::auth::hash_password(&app.state.config.auth, "correct horse battery".into())
                .await
                .unwrap();
            keel_store::system::user_insert(
                app.db(),
                keel_store::system::NewUser {
                    email,
                    name: None,
                    password_hash: &hash,
                    superuser: false,
                    email_verified: true,
                },
            )
            .await
            .unwrap();
            login(app, email, "correct horse battery").await.body["token"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let owner = make("owner@example.com").await;
    app.org(&owner, "acme").await;
    let admin = make("admin@example.com").await;
    let member = make("member@example.com").await;
    for (email, role) in [("admin@example.com", "admin"), ("member@example.com", "member")] {
        let added = app
            .post(
                "/api/v1/orgs/acme/members",
                &owner,
                json!({"email": email, "role": role}),
            )
            .await;
        assert_eq!(added.status, 201, "{}", added.text);
    }
    let invite = |token: &str, email: &str, role: &str| {
        let (app, token, body) = (&app, token.to_string(), json!({"email": email, "role": role}));
        async move { app.post("/api/v1/orgs/acme/invitations", &token, body).await }
    };
    assert_eq!(invite(&member, "x@example.com", "viewer").await.code(), "forbidden");
    assert_eq!(
        invite(&admin, "x@example.com", "owner").await.code(),
        "invalid_role",
        "above the inviter's role"
    );
    assert_eq!(
        invite(&owner, "member@example.com", "viewer").await.code(),
        "already_member"
    );
    let sent = invite(&admin, "New@Example.com", "member").await;
    assert_eq!(sent.status, 201, "{}", sent.text);
    assert_eq!(sent.body["email"], "new@example.com");
    assert_eq!(
        invite(&owner, "new@example.com", "viewer").await.code(),
        "invitation_pending"
    );
    let listed = app.get("/api/v1/orgs/acme/invitations", &admin).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.get("/api/v1/orgs/acme/invitations", &member).await.code(),
        "forbidden"
    );

    settled(&app).await;
    let mail = mail_to(&smtp, "new@example.com");
    assert_eq!(mail.len(), 1);
    assert!(
        mail[0].contains("admin@example.com invited you to acme on testapp"),
        "{}",
        mail[0]
    );
    let token = token_in(&mail[0], "ki_");
    let page = app
        .request("GET", &format!("/_/auth/invitation?token={token}"), None, None)
        .await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("Create my account and join"), "{}", page.text);
    // Sign-up with the invitation works though sign-up is closed, for the invited address only.
    let wrong = post(
        &app,
        "/api/v1/auth/signup",
        None,
        json!({"email": "other@example.com", "password": "a fine new phrase", "invitation": token}),
    )
    .await;
    assert_eq!(wrong.code(), "invitation_for_another_address");
    let joined = post(
        &app,
        "/api/v1/auth/signup",
        None,
        json!({"email": "new@example.com", "password": "a fine new phrase", "invitation": token}),
    )
    .await;
    assert_eq!(joined.status, 201, "{}", joined.text);
    assert_eq!(joined.body["role"], "member");
    assert!(
        joined.body["user"]["email_verified_at"].is_string(),
        "the link proved the address"
    );
    let newcomer = joined.body["token"].as_str().unwrap().to_string();
    assert_eq!(app.get("/api/v1/orgs/acme/projects", &newcomer).await.status, 200);
    let again = post(
        &app,
        "/api/v1/invitations/accept",
        Some(&newcomer),
        json!({"token": token}),
    )
    .await;
    assert_eq!(again.code(), "invalid_token", "single use");
    assert!(
        app.get("/api/v1/orgs/acme/invitations", &admin).await.body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // An existing account accepts while signed in; another account cannot use its link.
    let old = make("old@example.com").await;
    invite(&owner, "old@example.com", "viewer").await;
    settled(&app).await;
    let token = token_in(&mail_to(&smtp, "old@example.com")[0], "ki_");
    let not_theirs = post(
        &app,
        "/api/v1/invitations/accept",
        Some(&member),
        json!({"token": token}),
    )
    .await;
    assert_eq!(not_theirs.code(), "invitation_for_another_address");
    let accepted = post(&app, "/api/v1/invitations/accept", Some(&old), json!({"token": token})).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text);
    assert_eq!(accepted.body["org"]["slug"], "acme");
    assert_eq!(app.get("/api/v1/orgs/acme/projects", &old).await.status, 200);

    // Revoked and resent links stop working; the newest one works.
    let gone = invite(&owner, "gone@example.com", "viewer").await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let twice = invite(&owner, "twice@example.com", "viewer").await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    settled(&app).await;
    let gone_token = token_in(&mail_to(&smtp, "gone@example.com")[0], "ki_");
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/acme/invitations/{gone}"), &admin)
            .await
            .status,
        204
    );
    assert_eq!(
        app.delete(&format!("/api/v1/orgs/acme/invitations/{gone}"), &admin)
            .await
            .status,
        404
    );
    let signup = |email: &str, token: &str| {
        let body = json!({"email": email, "password": "a fine new phrase", "invitation": token});
        post(&app, "/api/v1/auth/signup", None, body)
    };
    assert_eq!(signup("gone@example.com", &gone_token).await.code(), "invalid_token");
    let first = token_in(&mail_to(&smtp, "twice@example.com")[0], "ki_");
    let resent = app
        .request(
            "POST",
            &format!("/api/v1/orgs/acme/invitations/{twice}/resend"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(resent.status, 202, "{}", resent.text);
    settled(&app).await;
    let links: Vec<String> = mail_to(&smtp, "twice@example.com")
        .iter()
        .map(|m| token_in(m, "ki_"))
        .collect();
    assert_eq!(links.len(), 2);
    let second = links.into_iter().find(|t| t != &first).unwrap();
    assert_eq!(signup("twice@example.com", &first).await.code(), "invalid_token");
    assert_eq!(signup("twice@example.com", &second).await.status, 201);

    // Every step is in the org's activity log.
    let log = app
        .get(
            "/api/v1/orgs/acme/activity?filter=collection%20%3D%20%22invitations%22&limit=100",
            &owner,
        )
        .await;
    assert_eq!(log.status, 200, "{}", log.text);
    let actions: Vec<&str> = log.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.iter().filter(|a| **a == "create").count(), 4, "{actions:?}");
    assert_eq!(actions.iter().filter(|a| **a == "update").count(), 3, "{actions:?}");
    assert_eq!(actions.iter().filter(|a| **a == "delete").count(), 1, "{actions:?}");
}

/// An invitation past its expiry is refused.
async fn an_expired_invitation_is_refused(backend: Backend) {
    let smtp = SmtpSink::start();
    let app = app(backend, &smtp, |_| {}).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    app.post(
        "/api/v1/orgs/acme/invitations",
        &owner,
        json!({"email": "late@example.com", "role": "viewer"}),
    )
    .await;
    settled(&app).await;
    let token = token_in(&mail_to(&smtp, "late@example.com")[0], "ki_");
    let db = app.db();
    let past = db.portable(
        "UPDATE keel_invitations SET expires_at = $1",
        vec![keel_query::SqlValue::Datetime(
            chrono::Utc::now() - chrono::Duration::minutes(1),
        )],
    );
    db.write(&past).await.unwrap();
    let page = app
        .request("GET", &format!("/_/auth/invitation?token={token}"), None, None)
        .await;
    assert_eq!(page.status, 400);
    let late = post(
        &app,
        "/api/v1/auth/signup",
        None,
        json!({"email": "late@example.com", "password": "a fine new phrase", "invitation": token}),
    )
    .await;
    assert_eq!(late.code(), "invalid_token");
}

/// Inviting, revoking and inviting one address again sends an email each time: the address's
/// hourly budget bounds it.
async fn re_inviting_one_address_is_bounded(backend: Backend) {
    let smtp = SmtpSink::start();
    let app = app(backend, &smtp, |c| c.auth.account_emails_per_hour = 3).await;
    let (_, owner) = app.signup("owner@example.com").await;
    app.org(&owner, "acme").await;
    let body = json!({"email": "target@example.com", "role": "viewer"});
    for round in 0..3 {
        let invited = app.post("/api/v1/orgs/acme/invitations", &owner, body.clone()).await;
        assert_eq!(invited.status, 201, "round {round}: {}", invited.text);
        let id = invited.body["id"].as_str().unwrap();
        // Sent before it is revoked (the email of a revoked invitation is not sent).
        settled(&app).await;
        assert_eq!(
            app.delete(&format!("/api/v1/orgs/acme/invitations/{id}"), &owner)
                .await
                .status,
            204
        );
    }
    let refused = app.post("/api/v1/orgs/acme/invitations", &owner, body).await;
    assert_eq!(refused.status, 429, "{}", refused.text);
    assert_eq!(refused.code(), "rate_limited");
    settled(&app).await;
    assert_eq!(mail_to(&smtp, "target@example.com").len(), 3);
}

#[test]
fn requiring_verification_needs_a_way_to_send_email() {
    let mut config = keel_server::Config::default();
    config.auth.require_verified_email = true;
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("auth.require_verified_email"), "{error}");
    config.smtp.host = Some("127.0.0.1".into());
    config.validate().unwrap();
}

both!(
    sign_up_sends_a_link_that_verifies_once,
    a_rolled_back_sign_up_sends_nothing,
    reset_works_once_on_any_instance_and_ends_every_session,
    a_newer_link_or_a_password_change_voids_a_reset_link,
    an_email_change_waits_for_the_new_address,
    many_requests_for_one_address_send_a_few_emails,
    the_reset_page_sets_a_password,
    a_reset_request_works_alike_for_known_and_unknown_addresses,
    invitations_join_an_org_once,
    an_expired_invitation_is_refused,
    re_inviting_one_address_is_bounded,
);
