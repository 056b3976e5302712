//! Sign-in with OAuth 2.0 / OpenID Connect providers (A4): the authorization-code flow with
//! PKCE, `state` and `nonce`, and the accounts it signs in to.
//!
//! 1. `GET /api/v1/auth/oidc/{provider}/start?redirect=…` checks the redirect against
//!    `auth.oidc_redirects`, stores the flow's state (hashed) and sends the browser to the
//!    provider, with a cookie that binds the flow to this browser (a link someone else
//!    started cannot sign this browser in).
//! 2. The provider sends the browser back to `/api/v1/auth/oidc/{provider}/callback`: the
//!    state is used (once), the cookie checked, the code exchanged with the PKCE verifier,
//!    the ID token verified (keys, issuer, audience, times, nonce). The browser goes on to
//!    the redirect with a one-time `oidc_code` (or an `oidc_error` with a stable code).
//! 3. The app posts the code to `POST /api/v1/auth/oidc/exchange` and gets a session (or the
//!    second step, when the account has a second factor), as a password sign-in does.
//!
//! Who is signed in: the user linked to the provider's subject; else the account with the
//! provider's address when the provider says the address is verified (an account whose
//! address was never verified is taken over by the proven owner: its password and sessions
//! end); else a new account, when sign-up is open. An unverified address never links or
//! creates anything. Everything is written in one transaction after every check has passed,
//! so a failed sign-in leaves nothing behind.

pub mod provider;
pub mod settings;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::HeaderValue;
use base64::Engine;
use chrono::{Duration, Utc};
use keel_store::StoreError;
use keel_store::accounts::{self, Purpose};
use keel_store::identities::{self, FlowState};
use keel_store::system::{self, NewUser, Principal, User};
use rand::RngCore;
use serde_json::json;

use self::provider::{External, Failure, Provider};
use crate::auth::login::SignedIn;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{forget_tokens, token_hash};
use crate::http::state::AppState;

/// The prefix of the one-time code a callback hands to the app.
pub const CODE_PREFIX: &str = "ko_";
/// How long a flow may take at the provider.
const FLOW_MINUTES: i64 = 10;
/// How long the app has to exchange the code.
const CODE_SECONDS: i64 = 120;
/// The cookie that binds a flow to its browser (`{prefix}{first 16 characters of state}`).
const COOKIE_PREFIX: &str = "keel_oidc_";
/// The password hash of an account made by a provider sign-in: no password verifies against
/// it (a password reset sets one).
pub const NO_PASSWORD: &str = "!none";

/// The configured providers, each with what this instance has learnt about it.
#[derive(Default)]
pub struct Providers(BTreeMap<String, Arc<Provider>>);

impl Providers {
    pub fn new(config: &crate::Config) -> Providers {
        if config.auth.oidc.is_empty() {
            return Providers::default();
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with rustls");
        Providers(
            config
                .auth
                .oidc
                .iter()
                .filter_map(|(name, p)| Some((name.clone(), Arc::new(Provider::new(name, p.clone(), http.clone())?))))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> ApiResult<Arc<Provider>> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::new("not_found", format!("no sign-in provider '{name}' is configured")))
    }
}

fn random() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn failure(state: &AppState, provider: &str, failure: Failure) -> ApiError {
    let (code, why) = match failure {
        Failure::Unavailable(why) => ("oidc_unavailable", why),
        Failure::Rejected(why) => ("oidc_rejected", why),
    };
    tracing::warn!(provider, code, %why, "sign-in with a provider failed");
    count(state, provider, code);
    match code {
        "oidc_unavailable" => ApiError::new(
            code,
            format!("the sign-in provider '{provider}' cannot be reached; try again later"),
        ),
        _ => ApiError::new(
            code,
            format!("the sign-in provider '{provider}' did not confirm who signed in"),
        ),
    }
}

fn count(state: &AppState, provider: &str, result: &str) {
    state.metrics.counter(
        "keel_oidc_signins_total",
        &[("provider", provider.to_string()), ("result", result.to_string())],
        1,
    );
}

/// Where the provider sends the browser back to.
fn callback_url(state: &AppState, provider: &str) -> String {
    format!(
        "{}/api/v1/auth/oidc/{provider}/callback",
        crate::auth::mail::public_url(&state.config)
    )
}

/// `GET /api/v1/auth/oidc/providers`: the providers a sign-in page can offer.
pub fn list(state: &AppState) -> serde_json::Value {
    let items: Vec<_> = state
        .oidc
        .0
        .values()
        .map(|p| {
            json!({
                "name": p.name,
                "display_name": p.display_name(),
                "start": format!("/api/v1/auth/oidc/{}/start", p.name),
            })
        })
        .collect();
    json!({ "items": items })
}

/// Where `start` sends the browser, and the cookie that binds the flow to it.
pub struct Started {
    pub location: String,
    pub cookie: HeaderValue,
}

fn binding_cookie(state: &AppState, flow_state: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if crate::auth::mail::public_url(&state.config).starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let name = format!("{COOKIE_PREFIX}{}", &flow_state[..16]);
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/api/v1/auth/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .expect("a cookie of URL-safe characters")
}

/// What `start` was asked.
pub struct StartRequest<'a> {
    pub redirect: Option<&'a str>,
    pub login_hint: Option<&'a str>,
    /// A link flow's state (from `link`), which this browser picks up.
    pub resume: Option<&'a str>,
    /// The app's PKCE challenge (S256): the code the sign-in ends with is then exchanged
    /// only with its verifier, so a code that leaks (a log, a `Referer`) is worth nothing.
    pub code_challenge: Option<&'a str>,
}

/// `GET /api/v1/auth/oidc/{provider}/start`.
pub async fn start(state: &AppState, name: &str, asked: StartRequest<'_>) -> ApiResult<Started> {
    let provider = state.oidc.get(name)?;
    if asked.login_hint.is_some_and(|h| h.len() > 254) {
        return Err(ApiError::new("invalid_query", "login_hint is at most 254 characters"));
    }
    let well_formed = |c: &str| c.len() == 43 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if asked.code_challenge.is_some_and(|c| !well_formed(c)) {
        return Err(ApiError::new(
            "invalid_query",
            "code_challenge is BASE64URL(SHA-256(code_verifier)) without padding: 43 characters",
        ));
    }
    let binding = random();
    let (flow_state, flow) = match asked.resume {
        Some(resumed) => {
            let bound = match resumed.len() {
                43 => identities::state_bind(&state.db, &token_hash(resumed), &token_hash(&binding)).await?,
                _ => None,
            };
            let flow = bound.filter(|f| f.provider == name).ok_or_else(invalid_state)?;
            (resumed.to_string(), flow)
        }
        None => {
            let redirect = asked.redirect.ok_or_else(|| {
                ApiError::new(
                    "invalid_query",
                    "redirect is required: where the browser goes when the sign-in ends",
                )
            })?;
            check_redirect(state, redirect)?;
            let flow = FlowState {
                provider: name.to_string(),
                binding_hash: Some(token_hash(&binding)),
                nonce: random(),
                verifier: random(),
                redirect: redirect.to_string(),
                link_user: None,
                client_challenge: asked.code_challenge.map(str::to_string),
            };
            (random(), flow)
        }
    };
    let location = provider
        .authorize_url(
            &callback_url(state, name),
            &flow_state,
            &flow.nonce,
            &flow.verifier,
            asked.login_hint,
        )
        .await
        .map_err(|f| failure(state, name, f))?;
    if asked.resume.is_none() {
        save(state, &flow_state, &flow).await?;
    }
    Ok(Started {
        location,
        cookie: binding_cookie(state, &flow_state, &binding, FLOW_MINUTES * 60),
    })
}

/// Stores a flow's state under its hash, for `FLOW_MINUTES`.
async fn save(state: &AppState, flow_state: &str, flow: &FlowState) -> ApiResult<()> {
    identities::state_insert(
        &state.db,
        &token_hash(flow_state),
        flow,
        Duration::minutes(FLOW_MINUTES),
    )
    .await?;
    Ok(())
}

fn check_redirect(state: &AppState, redirect: &str) -> ApiResult<()> {
    if redirect.len() > 2048 || !settings::redirect_allowed(&state.config.auth.oidc_redirects, redirect) {
        return Err(ApiError::new(
            "redirect_not_allowed",
            "redirect is not on the server's list of allowed URLs (auth.oidc_redirects)",
        ));
    }
    Ok(())
}

fn invalid_state() -> ApiError {
    ApiError::new(
        "invalid_state",
        "this sign-in is unknown, was finished already, expired, or was started in another browser; start again",
    )
}

/// What the provider's redirect carried.
pub struct CallbackRequest<'a> {
    pub state: Option<&'a str>,
    pub code: Option<&'a str>,
    pub error: Option<&'a str>,
    pub iss: Option<&'a str>,
    pub cookies: &'a axum::http::HeaderMap,
}

/// `GET /api/v1/auth/oidc/{provider}/callback`: answers where the browser goes next (the
/// flow's redirect with `oidc_code`, `oidc_linked` or `oidc_error`), and the cookie to clear.
/// A state that is not this browser's is an error of its own: there is no trusted redirect.
pub async fn callback(state: &AppState, name: &str, given: CallbackRequest<'_>) -> ApiResult<Started> {
    let provider = state.oidc.get(name)?;
    let flow_state = given.state.filter(|s| s.len() == 43).ok_or_else(invalid_state)?;
    let flow = identities::state_take(&state.db, &token_hash(flow_state))
        .await?
        .filter(|f| f.provider == name)
        .ok_or_else(invalid_state)?;
    let cookie_name = format!("{COOKIE_PREFIX}{}", &flow_state[..16]);
    let bound = crate::http::extract::cookie(given.cookies, &cookie_name).is_some_and(|value| {
        flow.binding_hash
            .as_deref()
            .is_some_and(|expected| crate::auth::browser::constant_time_eq(&token_hash(value), expected))
    });
    if !bound {
        count(state, name, "invalid_state");
        return Err(invalid_state());
    }
    let clear = binding_cookie(state, flow_state, "", 0);
    let outcome = finish(state, &provider, &flow, &given).await;
    let mut location = url::Url::parse(&flow.redirect).map_err(|_| invalid_state())?;
    match outcome {
        Ok(Finished::SignedIn(code)) => {
            count(state, name, "signed_in");
            location.query_pairs_mut().append_pair("oidc_code", &code);
        }
        Ok(Finished::Linked) => {
            count(state, name, "linked");
            location.query_pairs_mut().append_pair("oidc_linked", name);
        }
        Err(error) => {
            if !matches!(error.code, "oidc_unavailable" | "oidc_rejected") {
                count(state, name, error.code);
            }
            location.query_pairs_mut().append_pair("oidc_error", error.code);
        }
    }
    Ok(Started {
        location: location.into(),
        cookie: clear,
    })
}

enum Finished {
    /// The one-time code the app exchanges for a session.
    SignedIn(String),
    Linked,
}

async fn finish(
    state: &AppState,
    provider: &Provider,
    flow: &FlowState,
    given: &CallbackRequest<'_>,
) -> ApiResult<Finished> {
    let name = provider.name.as_str();
    if let Some(error) = given.error {
        tracing::info!(provider = name, error = %error.chars().take(64).collect::<String>(), "the provider refused the sign-in");
        return Err(ApiError::new(
            "oidc_denied",
            "the sign-in was cancelled or refused at the provider",
        ));
    }
    let code = given
        .code
        .filter(|c| !c.is_empty() && c.len() <= 2048)
        .ok_or_else(|| ApiError::new("oidc_rejected", "the provider sent no code"))?;
    provider
        .check_issuer(given.iss)
        .await
        .map_err(|f| failure(state, name, f))?;
    let external = provider
        .user_of(code, &flow.verifier, &callback_url(state, name), &flow.nonce)
        .await
        .map_err(|f| failure(state, name, f))?;
    if external.subject.is_empty() || external.subject.len() > 255 {
        return Err(failure(
            state,
            name,
            Failure::Rejected("the subject is empty or too long".into()),
        ));
    }
    let email = match (&external.email, external.email_verified) {
        (Some(email), true) => crate::auth::normalize_email(email).ok(),
        _ => None,
    };
    if let Some(user) = flow.link_user {
        link(state, name, &external, user, email.as_deref()).await?;
        return Ok(Finished::Linked);
    }
    let user = signed_in(state, provider, &external, email).await?;
    if user.disabled_at.is_some() {
        return Err(ApiError::new(
            "account_disabled",
            "this account is disabled; ask an administrator",
        ));
    }
    let code = crate::auth::new_token(CODE_PREFIX);
    identities::code_insert(
        &state.db,
        &token_hash(&code),
        user.id,
        &user.email,
        flow.client_challenge.as_deref(),
        Duration::seconds(CODE_SECONDS),
    )
    .await?;
    Ok(Finished::SignedIn(code))
}

fn identity_taken() -> ApiError {
    ApiError::new(
        "identity_taken",
        "this account at the provider is linked to another user, or you have another account linked at this provider",
    )
}

async fn link(
    state: &AppState,
    name: &str,
    external: &External,
    user: uuid::Uuid,
    email: Option<&str>,
) -> ApiResult<()> {
    if let Some(owner) = identities::identity_user(&state.db, name, &external.subject, email).await? {
        return if owner == user { Ok(()) } else { Err(identity_taken()) };
    }
    let mut tx = state.db.begin().await?;
    identities::identity_insert_in(&mut tx, name, &external.subject, user, email)
        .await
        .map_err(unique_is_taken)?;
    tx.commit().await?;
    Ok(())
}

fn unique_is_taken(error: StoreError) -> ApiError {
    match error {
        StoreError::Unique { .. } => identity_taken(),
        other => other.into(),
    }
}

/// The account a provider's user signs in to (see the module's comment).
async fn signed_in(
    state: &AppState,
    provider: &Provider,
    external: &External,
    email: Option<String>,
) -> ApiResult<User> {
    let name = provider.name.as_str();
    if let Some(user) = identities::identity_user(&state.db, name, &external.subject, email.as_deref()).await? {
        return system::user_by_id(&state.db, user)
            .await?
            .ok_or_else(|| ApiError::new("not_found", "the account no longer exists"));
    }
    let Some(email) = email else {
        return Err(ApiError::new(
            "oidc_email_unverified",
            "the provider did not confirm an email address for this account, so it cannot be linked or create one",
        ));
    };
    let existing = system::user_by_email(&state.db, &email).await?;
    let mut tx = state.db.begin().await?;
    let user = match existing {
        Some((user, _)) => {
            if user.email_verified_at.is_none() {
                // The provider proves who owns the address; whoever made the account without
                // proving it loses the password and sessions they may have set up.
                let revoked = system::user_set_password_in(&mut tx, user.id, NO_PASSWORD).await?;
                accounts::email_verified_in(&mut tx, Purpose::Verify, user.id, &email).await?;
                accounts::tokens_drop_in(&mut tx, user.id, Purpose::Reset).await?;
                identities::identity_insert_in(&mut tx, name, &external.subject, user.id, Some(&email))
                    .await
                    .map_err(unique_is_taken)?;
                tx.commit().await?;
                forget_tokens(state, &revoked).await;
                tracing::warn!(provider = name, user = %user.id, "an unverified account was claimed by a verified sign-in");
                return system::user_by_id(&state.db, user.id)
                    .await?
                    .ok_or_else(|| ApiError::new("not_found", "the account no longer exists"));
            }
            user
        }
        None => {
            if !provider.config.signup.unwrap_or(state.config.auth.signup) {
                return Err(ApiError::new(
                    "signup_closed",
                    "sign-up is closed; ask an administrator for an account",
                ));
            }
            let name_given = external
                .name
                .as_deref()
                .map(|n| n.chars().take(200).collect::<String>());
            system::user_insert_in(
                &mut tx,
                NewUser {
                    email: &email,
                    name: name_given.as_deref(),
                    password_hash: NO_PASSWORD,
                    superuser: false,
                    email_verified: true,
                },
            )
            .await
            .map_err(|e| match e {
                // Made by a sign-in that raced this one.
                StoreError::Unique { .. } => identity_taken(),
                other => other.into(),
            })?
        }
    };
    identities::identity_insert_in(&mut tx, name, &external.subject, user.id, Some(&email))
        .await
        .map_err(unique_is_taken)?;
    tx.commit().await?;
    Ok(user)
}

/// `POST /api/v1/auth/oidc/exchange {code, code_verifier}`: the callback's one-time code for a
/// session (or for the second step, when the account has a second factor). A code whose flow
/// had the app's challenge needs its verifier; a wrong one uses the code up.
pub async fn exchange(state: &AppState, code: &str, verifier: Option<&str>) -> ApiResult<SignedIn> {
    let invalid = || {
        ApiError::new(
            "invalid_token",
            "the sign-in code is unknown, used or expired; sign in again",
        )
    };
    if !code.starts_with(CODE_PREFIX) || code.len() > 64 {
        return Err(invalid());
    }
    let (user, challenge) = identities::code_take(&state.db, &token_hash(code))
        .await?
        .ok_or_else(invalid)?;
    if let Some(challenge) = challenge {
        let proven = verifier.is_some_and(|v| {
            v.len() <= 128 && crate::auth::browser::constant_time_eq(&provider::challenge(v), &challenge)
        });
        if !proven {
            tracing::warn!(%user, "a sign-in code came without the verifier of its challenge; it is used up");
            return Err(invalid());
        }
    }
    let user = system::user_by_id(&state.db, user).await?.ok_or_else(invalid)?;
    if user.disabled_at.is_some() {
        return Err(ApiError::new(
            "account_disabled",
            "this account is disabled; ask an administrator",
        ));
    }
    Ok(match crate::auth::mfa::challenge(state, &user).await? {
        Some(mfa_token) => SignedIn::SecondFactor { mfa_token },
        None => SignedIn::Done(user),
    })
}

fn user_of(principal: &Principal) -> ApiResult<&User> {
    match principal {
        Principal::User { user, .. } => Ok(user),
        Principal::ApiKey(_) => Err(ApiError::new("forbidden", "API keys have no sign-in identities")),
    }
}

/// `POST /api/v1/auth/oidc/{provider}/link {redirect}`: a URL that, opened in the browser,
/// links the caller's account at the provider to the signed-in user.
pub async fn start_link(
    state: &AppState,
    principal: &Principal,
    name: &str,
    redirect: &str,
) -> ApiResult<serde_json::Value> {
    let user = user_of(principal)?;
    state.oidc.get(name)?;
    check_redirect(state, redirect)?;
    let flow_state = random();
    let flow = FlowState {
        provider: name.to_string(),
        binding_hash: None,
        nonce: random(),
        verifier: random(),
        redirect: redirect.to_string(),
        link_user: Some(user.id),
        client_challenge: None,
    };
    save(state, &flow_state, &flow).await?;
    let mut url = url::Url::parse(&format!(
        "{}/api/v1/auth/oidc/{name}/start",
        crate::auth::mail::public_url(&state.config)
    ))
    .map_err(|_| ApiError::internal("auth.public_url is not a URL"))?;
    url.query_pairs_mut().append_pair("resume", &flow_state);
    Ok(json!({ "url": url.as_str(), "expires_at": Utc::now() + Duration::minutes(FLOW_MINUTES) }))
}

/// `GET /api/v1/auth/oidc/identities`: the caller's linked identities.
pub async fn identities_of(state: &AppState, principal: &Principal) -> ApiResult<serde_json::Value> {
    let user = user_of(principal)?;
    let items = identities::identities_of(&state.db, user.id).await?;
    Ok(json!({ "items": items }))
}

/// `DELETE /api/v1/auth/oidc/{provider}/link`: unlinks, unless it is the account's last way
/// to sign in (no password and no other identity).
pub async fn unlink(state: &AppState, principal: &Principal, name: &str) -> ApiResult<()> {
    let user = user_of(principal)?;
    let linked = identities::identities_of(&state.db, user.id).await?;
    if !linked.iter().any(|i| i.provider == name) {
        return Err(ApiError::new("not_found", format!("no identity at '{name}' is linked")));
    }
    let (_, hash) = system::user_by_email(&state.db, &user.email)
        .await?
        .ok_or_else(|| ApiError::new("unauthenticated", "the user no longer exists"))?;
    if hash == NO_PASSWORD && linked.len() == 1 {
        return Err(ApiError::new(
            "last_sign_in_method",
            "this is the account's only way to sign in; set a password (password reset) or link another provider first",
        ));
    }
    identities::identity_delete(&state.db, user.id, name).await?;
    Ok(())
}
