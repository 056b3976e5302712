//! Sign-in with providers (A4) on both backends, against a real OpenID provider on loopback
//! (oidc-provider, `keel_testkit::OidcProvider`): the whole code flow with PKCE through Keel,
//! as a browser makes it (cookies, redirects), and every way it must fail.

use std::collections::HashMap;
use std::time::Duration;

use keel_testkit::{Backend, OidcProvider, TestApp, TestResponse, both, json};

/// Where the test app says it is reached (the provider sends the browser back under it).
const PUBLIC: &str = "http://keel.test";
/// The app page a sign-in ends on.
const DONE: &str = "https://app.example.com/signed-in";

async fn app(backend: Backend, provider: &OidcProvider, tweak: impl FnOnce(&mut keel_server::Config)) -> TestApp {
    let issuer = provider.issuer();
    TestApp::spawn_with(backend, keel_testkit::TEST_SPEC, move |config| {
        config.auth.public_url = Some(PUBLIC.into());
        config.auth.oidc_redirects = vec![DONE.into()];
        let test: keel_server::auth::oidc::settings::OidcProvider = toml_provider(&format!(
            "issuer = \"{issuer}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\ndisplay_name = \"Test SSO\"",
            OidcProvider::CLIENT_ID,
            OidcProvider::CLIENT_SECRET
        ));
        // The same provider as plain OAuth 2.0: no ID token, the user from its user API.
        let plain = toml_provider(&format!(
            "authorize_url = \"{issuer}/auth\"\ntoken_url = \"{issuer}/token\"\nuserinfo_url = \"{issuer}/me\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nscopes = [\"openid\", \"email\"]",
            OidcProvider::CLIENT_ID,
            OidcProvider::CLIENT_SECRET
        ));
        config.auth.oidc.insert("test".into(), test);
        config.auth.oidc.insert("plain".into(), plain);
        tweak(config);
    })
    .await
}

fn toml_provider(text: &str) -> keel_server::auth::oidc::settings::OidcProvider {
    toml::from_str(text).expect("provider settings")
}

/// A browser: a cookie jar by host (as browsers keep them, whatever the port), redirects
/// followed at the provider, Keel reached through its router.
#[derive(Default)]
struct Browser {
    jar: HashMap<String, HashMap<String, String>>,
}

impl Browser {
    fn cookies(&self, host: &str) -> String {
        self.jar
            .get(host)
            .map(|c| c.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "))
            .unwrap_or_default()
    }

    fn keep<'a>(&mut self, host: &str, set_cookies: impl Iterator<Item = &'a str>) {
        let jar = self.jar.entry(host.to_string()).or_default();
        for line in set_cookies {
            let pair = line.split(';').next().unwrap_or("");
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            if value.is_empty() || line.contains("Max-Age=0") {
                jar.remove(name.trim());
            } else {
                jar.insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    /// A GET of a Keel URL (under `PUBLIC`, or a path), with this browser's cookies.
    async fn keel(&mut self, app: &TestApp, url: &str) -> TestResponse {
        let path = url.strip_prefix(PUBLIC).unwrap_or(url);
        let cookies = self.cookies("keel.test");
        let headers = if cookies.is_empty() {
            vec![]
        } else {
            vec![("cookie".to_string(), cookies)]
        };
        let response = app.request_with("GET", path, headers, None).await;
        let set: Vec<String> = response
            .headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        self.keep("keel.test", set.iter().map(String::as_str));
        response
    }

    /// Follows the provider's redirects from `url` until it sends the browser back to Keel;
    /// answers that URL.
    async fn at_provider(&mut self, url: &str) -> String {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut next = url.to_string();
        for _ in 0..10 {
            if next.starts_with(PUBLIC) {
                return next;
            }
            let parsed = url::Url::parse(&next).unwrap();
            let host = parsed.host_str().unwrap().to_string();
            let response = client
                .get(&next)
                .header("cookie", self.cookies(&host))
                .send()
                .await
                .expect("the provider answers");
            let set: Vec<String> = response
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            self.keep(&host, set.iter().map(String::as_str));
            let status = response.status();
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let Some(location) = location else {
                panic!(
                    "the provider answered {status}: {}",
                    response.text().await.unwrap_or_default()
                );
            };
            next = parsed.join(&location).unwrap().to_string();
        }
        panic!("the provider never sent the browser back");
    }
}

fn start_path(provider: &str, login_hint: &str) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("redirect", DONE)
        .append_pair("login_hint", login_hint)
        .finish();
    format!("/api/v1/auth/oidc/{provider}/start?{query}")
}

/// Where a Keel answer sends the browser (a 303's `Location`).
fn location(response: &TestResponse) -> String {
    assert_eq!(response.status, 303, "{}", response.text);
    response.header("location").expect("a Location").to_string()
}

fn param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.to_string())
}

/// A whole sign-in as `login_hint` through `provider`: answers the URL the app page gets.
/// `tamper` may change the authorization URL, as a hostile page could.
async fn sign_in_with(
    app: &TestApp,
    browser: &mut Browser,
    provider: &str,
    login_hint: &str,
    tamper: impl FnOnce(String) -> String,
) -> String {
    let started = browser.keel(app, &start_path(provider, login_hint)).await;
    let authorize = location(&started);
    let back = browser.at_provider(&tamper(authorize)).await;
    let done = browser.keel(app, &back).await;
    location(&done)
}

/// A whole sign-in as alice, in a new browser, with the app's own PKCE challenge.
async fn sign_in_with_challenge(app: &TestApp, challenge: &str) -> String {
    let path = format!(
        "{}&code_challenge={challenge}&code_challenge_method=S256",
        start_path("test", "alice@example.com")
    );
    let mut browser = Browser::default();
    let authorize = location(&browser.keel(app, &path).await);
    let back = browser.at_provider(&authorize).await;
    location(&browser.keel(app, &back).await)
}

/// The session a sign-in's code is exchanged for.
async fn exchange(app: &TestApp, done: &str) -> TestResponse {
    let code = param(done, "oidc_code").unwrap_or_else(|| panic!("no oidc_code in {done}"));
    app.request(
        "POST",
        "/api/v1/auth/oidc/exchange",
        None,
        Some(json!({ "code": code })),
    )
    .await
}

async fn users(app: &TestApp) -> i64 {
    let db = app.db();
    let rows = db
        .query_primary(&db.portable("SELECT count(*) FROM keel_users", vec![]))
        .await
        .unwrap();
    rows[0][0].int().unwrap()
}

async fn a_first_sign_in_creates_a_verified_account_and_the_next_finds_it(backend: Backend) {
    let provider = OidcProvider::start("key-1", 0);
    let app = app(backend, &provider, |_| {}).await;
    let listed = app.request("GET", "/api/v1/auth/oidc/providers", None, None).await;
    assert_eq!(listed.body["items"][1]["name"], "test", "{}", listed.text);
    assert_eq!(listed.body["items"][1]["display_name"], "Test SSO");

    let mut browser = Browser::default();
    let started = browser.keel(&app, &start_path("test", "alice@example.com")).await;
    let authorize = location(&started);
    assert!(
        authorize.starts_with(&format!("{}/auth?", provider.issuer())),
        "{authorize}"
    );
    for needed in ["state", "nonce", "code_challenge"] {
        assert!(
            param(&authorize, needed).is_some_and(|v| v.len() >= 43),
            "{needed} in {authorize}"
        );
    }
    assert_eq!(param(&authorize, "code_challenge_method").as_deref(), Some("S256"));
    let cookie = started.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    // The provider sends the browser back to another instance: the flow's state is shared.
    let other = app.sibling().await;
    let back = browser.at_provider(&authorize).await;
    let done = location(&browser.keel(&other, &back).await);
    assert!(done.starts_with(DONE), "{done}");
    let signed_in = exchange(&app, &done).await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.text);
    let user = signed_in.body["user"].clone();
    assert_eq!(user["email"], "alice@example.com");
    assert!(user["email_verified_at"].is_string(), "{user}");
    let token = signed_in.body["token"].as_str().unwrap().to_string();
    let me = app.get("/api/v1/auth/me", &token).await;
    assert_eq!(me.body["user"]["id"], user["id"], "{}", me.text);
    // The code works once.
    let again = exchange(&app, &done).await;
    assert_eq!((again.status.as_u16(), again.code()), (400, "invalid_token"));
    // No password signs in to an account a provider made.
    let password = app
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "alice@example.com", "password": "!none"})),
        )
        .await;
    assert_eq!(password.code(), "invalid_credentials");

    let identities = app.get("/api/v1/auth/oidc/identities", &token).await;
    assert_eq!(identities.body["items"][0]["provider"], "test", "{}", identities.text);
    assert_eq!(identities.body["items"][0]["subject"], "alice@example.com");

    // With the app's own PKCE challenge, the code works only with its verifier.
    let verifier = "app-side-verifier-0123456789-0123456789-0123456789";
    let challenge = keel_server::auth::oidc::provider::challenge(verifier);
    let stolen = sign_in_with_challenge(&app, &challenge).await;
    let code = param(&stolen, "oidc_code").unwrap();
    let without = app
        .request("POST", "/api/v1/auth/oidc/exchange", None, Some(json!({"code": code})))
        .await;
    assert_eq!(without.code(), "invalid_token", "{}", without.text);
    let done = sign_in_with_challenge(&app, &challenge).await;
    let code = param(&done, "oidc_code").unwrap();
    let proven = app
        .request(
            "POST",
            "/api/v1/auth/oidc/exchange",
            None,
            Some(json!({"code": code, "code_verifier": verifier})),
        )
        .await;
    assert_eq!(proven.body["user"]["id"], user["id"], "{}", proven.text);
    let bad = app
        .request(
            "GET",
            &format!("{}&code_challenge=short", start_path("test", "alice@example.com")),
            None,
            None,
        )
        .await;
    assert_eq!(bad.code(), "invalid_query");

    // The next sign-in, in a new browser, reaches the same account.
    let done = sign_in_with(&app, &mut Browser::default(), "test", "alice@example.com", |u| u).await;
    let second = exchange(&app, &done).await;
    assert_eq!(second.body["user"]["id"], user["id"], "{}", second.text);
    assert_eq!(users(&app).await, 1);
    // The last way in cannot be unlinked.
    let unlink = app.delete("/api/v1/auth/oidc/test/link", &token).await;
    assert_eq!((unlink.status.as_u16(), unlink.code()), (409, "last_sign_in_method"));
}

async fn a_verified_address_links_an_account_and_an_unverified_one_never(backend: Backend) {
    let provider = OidcProvider::start("key-1", 0);
    let app = app(backend, &provider, |_| {}).await;
    // An account with a verified address: the provider's verified address links to it.
    let (carol, _) = app.signup("carol@example.com").await;
    let db = app.db();
    let mut tx = db.begin().await.unwrap();
    tx.execute(&tx.portable(
        "UPDATE keel_users SET email_verified_at = $1 WHERE email = 'carol@example.com'",
        vec![keel_query::SqlValue::Datetime(chrono::Utc::now())],
    ))
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let done = sign_in_with(&app, &mut Browser::default(), "test", "carol@example.com", |u| u).await;
    assert_eq!(exchange(&app, &done).await.body["user"]["id"], carol.as_str());
    let password = app
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "carol@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(password.status, 200, "her password still works: {}", password.text);

    // An account whose address was never verified: the provider proves who owns it, and
    // whoever made the account loses its password and sessions.
    let (dave, squatter) = app.signup("dave@example.com").await;
    let done = sign_in_with(&app, &mut Browser::default(), "test", "dave@example.com", |u| u).await;
    let claimed = exchange(&app, &done).await;
    assert_eq!(claimed.body["user"]["id"], dave.as_str(), "{}", claimed.text);
    assert!(claimed.body["user"]["email_verified_at"].is_string());
    assert_eq!(app.get("/api/v1/auth/me", &squatter).await.status, 401);
    let old_password = app
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "dave@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(old_password.code(), "invalid_credentials");

    // The provider does not vouch for bob's address: nothing is linked or created.
    let before = users(&app).await;
    let done = sign_in_with(
        &app,
        &mut Browser::default(),
        "test",
        "bob+unverified@example.com",
        |u| u,
    )
    .await;
    assert_eq!(
        param(&done, "oidc_error").as_deref(),
        Some("oidc_email_unverified"),
        "{done}"
    );
    assert!(param(&done, "oidc_code").is_none());
    assert_eq!(users(&app).await, before);
}

async fn tampered_flows_are_refused_and_leave_nothing(backend: Backend) {
    let provider = OidcProvider::start("key-1", 0);
    let app = app(backend, &provider, |_| {}).await;
    let before = users(&app).await;

    // A forged state.
    let mut browser = Browser::default();
    let authorize = location(&browser.keel(&app, &start_path("test", "eve@example.com")).await);
    let back = browser.at_provider(&authorize).await;
    let state = param(&back, "state").unwrap();
    // Another first character (the last one of 32 random bytes carries only 4 bits).
    let other = if state.starts_with('A') { 'B' } else { 'A' };
    let forged = back.replace(&state, &format!("{other}{}", &state[1..]));
    let refused = browser.keel(&app, &forged).await;
    assert_eq!(
        (refused.status.as_u16(), refused.code()),
        (400, "invalid_state"),
        "{}",
        refused.text
    );

    // The real callback, but from another browser (no binding cookie): login CSRF.
    let stranger = Browser::default().keel(&app, &back).await;
    assert_eq!(stranger.code(), "invalid_state", "{}", stranger.text);
    // Used (even by the failed try), it does not work again in its own browser either.
    let replayed = browser.keel(&app, &back).await;
    assert_eq!(replayed.code(), "invalid_state");

    // A nonce changed on the way to the provider: the ID token's nonce does not match.
    let done = sign_in_with(&app, &mut Browser::default(), "test", "eve@example.com", |url| {
        let nonce = param(&url, "nonce").unwrap();
        url.replace(&nonce, "an-attacker-chosen-nonce")
    })
    .await;
    assert_eq!(param(&done, "oidc_error").as_deref(), Some("oidc_rejected"), "{done}");

    // A verifier the provider does not know (the challenge swapped): the code exchange fails.
    let done = sign_in_with(&app, &mut Browser::default(), "test", "eve@example.com", |url| {
        let challenge = param(&url, "code_challenge").unwrap();
        url.replace(&challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
    })
    .await;
    assert_eq!(param(&done, "oidc_error").as_deref(), Some("oidc_rejected"), "{done}");
    assert_eq!(users(&app).await, before);

    // Redirects off the list, unknown providers, missing parameters.
    let evil = app
        .request(
            "GET",
            "/api/v1/auth/oidc/test/start?redirect=https%3A%2F%2Fevil.test%2Fsigned-in",
            None,
            None,
        )
        .await;
    assert_eq!((evil.status.as_u16(), evil.code()), (400, "redirect_not_allowed"));
    let lookalike = app
        .request(
            "GET",
            "/api/v1/auth/oidc/test/start?redirect=https%3A%2F%2Fapp.example.com%2Fsigned-in.evil",
            None,
            None,
        )
        .await;
    assert_eq!(lookalike.code(), "redirect_not_allowed");
    let unknown = app
        .request("GET", &start_path("nope", "eve@example.com"), None, None)
        .await;
    assert_eq!(unknown.status, 404);
    let bare = app.request("GET", "/api/v1/auth/oidc/test/start", None, None).await;
    assert_eq!(bare.code(), "invalid_query");
    let no_state = app
        .request("GET", "/api/v1/auth/oidc/test/callback?code=x", None, None)
        .await;
    assert_eq!(no_state.code(), "invalid_state");
    // A browser that navigated there gets a page saying so, not JSON.
    let page = app
        .request_with(
            "GET",
            "/api/v1/auth/oidc/test/callback?code=x",
            vec![("accept".into(), "text/html,application/xhtml+xml".into())],
            None,
        )
        .await;
    assert_eq!(page.status, 400);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(
        page.text.contains("The sign-in did not finish") && page.text.contains("invalid_state"),
        "{}",
        page.text
    );
    let forged_code = app
        .request(
            "POST",
            "/api/v1/auth/oidc/exchange",
            None,
            Some(json!({"code": "ko_forged"})),
        )
        .await;
    assert_eq!(forged_code.code(), "invalid_token");
}

async fn an_expired_id_token_is_refused(backend: Backend) {
    // The provider's clock is two hours behind: its ID tokens expired long ago.
    let provider = OidcProvider::start("key-1", -7200);
    let app = app(backend, &provider, |_| {}).await;
    let done = sign_in_with(&app, &mut Browser::default(), "test", "frank@example.com", |u| u).await;
    assert_eq!(param(&done, "oidc_error").as_deref(), Some("oidc_rejected"), "{done}");
    assert_eq!(users(&app).await, 0);
}

async fn a_key_rotation_at_the_provider_is_followed(backend: Backend) {
    let mut provider = OidcProvider::start("key-1", 0);
    let app = app(backend, &provider, |_| {}).await;
    let done = sign_in_with(&app, &mut Browser::default(), "test", "grace@example.com", |u| u).await;
    let first = exchange(&app, &done).await;
    assert_eq!(first.status, 200, "{}", first.text);
    // New keys: Keel's cached set does not have the new kid and reads the set again.
    provider.restart("key-2", 0);
    tokio::time::sleep(keel_server::auth::oidc::provider::JWKS_REFETCH_EVERY + Duration::from_millis(100)).await;
    let done = sign_in_with(&app, &mut Browser::default(), "test", "grace@example.com", |u| u).await;
    let second = exchange(&app, &done).await;
    assert_eq!(second.status, 200, "{done} {}", second.text);
    assert_eq!(second.body["user"]["id"], first.body["user"]["id"]);
}

async fn a_provider_that_is_down_is_a_clear_502(backend: Backend) {
    let mut provider = OidcProvider::start("key-1", 0);
    let app = app(backend, &provider, |_| {}).await;
    // Down before Keel ever reached it: no discovery, so no sign-in can start.
    provider.stop();
    let refused = Browser::default()
        .keel(&app, &start_path("test", "heidi@example.com"))
        .await;
    assert_eq!(
        (refused.status.as_u16(), refused.code()),
        (502, "oidc_unavailable"),
        "{}",
        refused.text
    );

    // Down between the user's consent and the code exchange.
    provider.restart("key-1", 0);
    let mut browser = Browser::default();
    let authorize = location(&browser.keel(&app, &start_path("test", "heidi@example.com")).await);
    let back = browser.at_provider(&authorize).await;
    provider.stop();
    let done = location(&browser.keel(&app, &back).await);
    assert_eq!(
        param(&done, "oidc_error").as_deref(),
        Some("oidc_unavailable"),
        "{done}"
    );
    assert_eq!(users(&app).await, 0, "nothing half-created");
    let metrics = app.request("GET", "/metrics", None, None).await.text;
    assert!(
        metrics.contains("keel_oidc_signins_total{provider=\"test\",result=\"oidc_unavailable\"}"),
        "{metrics}"
    );
}

async fn a_signed_in_user_links_and_unlinks_a_provider(backend: Backend) {
    let provider = OidcProvider::start("key-1", 0);
    let app = app(backend, &provider, |_| {}).await;
    let (ivan, token) = app.signup("ivan@example.com").await;
    let linked = app
        .post("/api/v1/auth/oidc/test/link", &token, json!({"redirect": DONE}))
        .await;
    assert_eq!(linked.status, 200, "{}", linked.text);
    let url = linked.body["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{PUBLIC}/api/v1/auth/oidc/test/start?resume=")),
        "{url}"
    );
    // The browser opens it; the account at the provider is another address entirely.
    let mut browser = Browser::default();
    let authorize = location(&browser.keel(&app, &url).await);
    let authorize = format!("{authorize}&login_hint=ivan.work%40example.com");
    let back = browser.at_provider(&authorize).await;
    let done = location(&browser.keel(&app, &back).await);
    assert_eq!(param(&done, "oidc_linked").as_deref(), Some("test"), "{done}");
    // A link URL works in one browser only.
    let reused = Browser::default().keel(&app, &url).await;
    assert_eq!(reused.code(), "invalid_state");

    let done = sign_in_with(&app, &mut Browser::default(), "test", "ivan.work@example.com", |u| u).await;
    assert_eq!(exchange(&app, &done).await.body["user"]["id"], ivan.as_str());

    // The same provider account cannot be linked to someone else.
    let (_, judy) = app.signup("judy@example.com").await;
    let url = app
        .post("/api/v1/auth/oidc/test/link", &judy, json!({"redirect": DONE}))
        .await
        .body["url"]
        .as_str()
        .unwrap()
        .to_string();
    let mut browser = Browser::default();
    let authorize = location(&browser.keel(&app, &url).await);
    let back = browser
        .at_provider(&format!("{authorize}&login_hint=ivan.work%40example.com"))
        .await;
    let done = location(&browser.keel(&app, &back).await);
    assert_eq!(param(&done, "oidc_error").as_deref(), Some("identity_taken"), "{done}");
    let evil = app
        .post(
            "/api/v1/auth/oidc/test/link",
            &judy,
            json!({"redirect": "https://evil.test/"}),
        )
        .await;
    assert_eq!(evil.code(), "redirect_not_allowed");

    // Ivan has a password, so he may unlink.
    let unlinked = app.delete("/api/v1/auth/oidc/test/link", &token).await;
    assert_eq!(unlinked.status, 204, "{}", unlinked.text);
    let none = app.get("/api/v1/auth/oidc/identities", &token).await;
    assert_eq!(none.body["items"], json!([]));
    assert_eq!(app.delete("/api/v1/auth/oidc/test/link", &token).await.status, 404);
}

async fn plain_oauth2_signs_in_through_the_user_api(backend: Backend) {
    let provider = OidcProvider::start("key-1", 0);
    let app = app(backend, &provider, |_| {}).await;
    let mut browser = Browser::default();
    let authorize = location(&browser.keel(&app, &start_path("plain", "mallory@example.com")).await);
    assert!(
        param(&authorize, "nonce").is_none(),
        "OAuth 2.0 has no nonce: {authorize}"
    );
    let back = browser.at_provider(&authorize).await;
    let done = location(&browser.keel(&app, &back).await);
    let signed_in = exchange(&app, &done).await;
    assert_eq!(signed_in.status, 200, "{done} {}", signed_in.text);
    assert_eq!(signed_in.body["user"]["email"], "mallory@example.com");
}

async fn a_second_factor_still_guards_a_provider_sign_in(backend: Backend) {
    let provider = OidcProvider::start("key-1", 0);
    let app = app(backend, &provider, |_| {}).await;
    let done = sign_in_with(&app, &mut Browser::default(), "test", "niaj@example.com", |u| u).await;
    let token = exchange(&app, &done).await.body["token"].as_str().unwrap().to_string();
    // A provider account has no password; it sets one through a reset before enrolling
    // (enrolment asks for the password): here, directly.
    let db = app.db();
    let hash = keel_server::auth::hash_password_blocking(&app.state.config.auth, "correct horse battery").unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.execute(&tx.portable(
        "UPDATE keel_users SET password_hash = $1 WHERE email = 'niaj@example.com'",
        vec![keel_query::SqlValue::Text(hash)],
    ))
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let totp = crate::accounts::enrol_totp(&app, &token).await;
    let done = sign_in_with(&app, &mut Browser::default(), "test", "niaj@example.com", |u| u).await;
    let step = exchange(&app, &done).await;
    assert_eq!(step.body["mfa_required"], true, "{}", step.text);
    assert!(step.body.get("token").is_none());
    let code = totp.generate(chrono::Utc::now().timestamp() as u64 + 30).to_string();
    let finished = app
        .request(
            "POST",
            "/api/v1/auth/mfa",
            None,
            Some(json!({"mfa_token": step.body["mfa_token"], "code": code})),
        )
        .await;
    assert_eq!(finished.status, 200, "{}", finished.text);
}

#[test]
fn providers_and_redirects_are_checked_at_start_up() {
    let mut config = keel_server::Config::default();
    config.auth.oidc.insert(
        "corp".into(),
        toml_provider("issuer = \"https://id.example.com\"\nclient_id = \"k\""),
    );
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("auth.oidc_redirects"), "{error}");
    config.auth.oidc_redirects = vec!["https://app.example.com/*".into()];
    config.validate().unwrap();
    config.auth.oidc.insert(
        "half".into(),
        toml_provider("authorize_url = \"https://id.example.com/a\"\nclient_id = \"k\""),
    );
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("half"), "{error}");
    config.auth.oidc.remove("half");
    config
        .auth
        .oidc
        .insert("gh".into(), toml_provider("preset = \"github\"\nclient_id = \"k\""));
    config.validate().unwrap();

    // The secret from the environment, merged into the file's table.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keel.toml");
    std::fs::write(
        &file,
        "[auth]\noidc_redirects = [\"https://app.example.com/done\"]\n[auth.oidc.corp]\nissuer = \"https://id.example.com\"\nclient_id = \"k\"\n",
    )
    .unwrap();
    let env = vec![(
        "KEEL_AUTH__OIDC".to_string(),
        "{ corp = { client_secret = \"from-env\" } }".to_string(),
    )];
    let loaded = keel_server::Config::load(Some(&file), env, vec![]).unwrap();
    let corp = &loaded.auth.oidc["corp"];
    assert_eq!(corp.client_id, "k");
    assert_eq!(corp.client_secret.as_ref().unwrap().0, "from-env");
}

both!(
    a_first_sign_in_creates_a_verified_account_and_the_next_finds_it,
    a_verified_address_links_an_account_and_an_unverified_one_never,
    tampered_flows_are_refused_and_leave_nothing,
    an_expired_id_token_is_refused,
    a_key_rotation_at_the_provider_is_followed,
    a_provider_that_is_down_is_a_clear_502,
    a_signed_in_user_links_and_unlinks_a_provider,
    plain_oauth2_signs_in_through_the_user_api,
    a_second_factor_still_guards_a_provider_sign_in,
);
