//! Talking to one provider: discovery, the authorization URL, the code exchange (with the
//! PKCE verifier), the ID token checked against the provider's keys, and the user API.
//!
//! Discovery and the key set are cached in the instance. A key set is read again when an ID
//! token names a key it does not have (the provider rotated its keys), at most once every
//! [`JWKS_REFETCH_EVERY`]; discovery is read again after [`DISCOVERY_TTL`], and a stale copy
//! is used while the provider cannot be reached. Every call has a timeout and every answer a
//! size bound; nothing a provider sends reaches a client except as a stable error code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::RwLock;

use super::settings::{OidcProvider, Protocol};

/// How long discovery is trusted before it is read again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// How long a key set is trusted before it is read again.
const JWKS_TTL: Duration = Duration::from_secs(3600);
/// The shortest time between two reads of a key set for an unknown key.
pub const JWKS_REFETCH_EVERY: Duration = Duration::from_secs(2);
/// The largest answer read from a provider.
const MAX_ANSWER: usize = 256 * 1024;
/// Clock skew allowed on an ID token's times.
const LEEWAY_SECONDS: u64 = 60;

/// Why a call to a provider failed.
#[derive(Debug)]
pub enum Failure {
    /// The provider cannot be reached or answers with a server error: 502 `oidc_unavailable`.
    Unavailable(String),
    /// The provider answered, but not with what a sign-in needs (a refused code, a token that
    /// fails its checks): 401 `oidc_rejected`.
    Rejected(String),
}

/// The user as the provider knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    /// The provider's stable id for the user (`sub`, or GitHub's numeric `id`).
    pub subject: String,
    pub email: Option<String>,
    /// Whether the provider says the user owns `email`.
    pub email_verified: bool,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    id_token_signing_alg_values_supported: Option<Vec<String>>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

/// Where the flow's steps go, from discovery or from the configuration.
struct Endpoints {
    authorize: String,
    token: String,
    userinfo: Option<String>,
    /// Send the client secret in the form rather than as HTTP Basic.
    secret_in_form: bool,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    id_token: Option<String>,
}

#[derive(Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<Value>,
    #[serde(default)]
    name: Option<String>,
}

/// One configured provider and what the instance has learnt about it.
pub struct Provider {
    pub name: String,
    pub config: OidcProvider,
    protocol: Protocol,
    discovery: RwLock<Option<(Arc<Discovery>, Instant)>>,
    jwks: RwLock<Option<(Arc<JwkSet>, Instant)>>,
    http: reqwest::Client,
}

fn flag(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        // Some providers send it as a string.
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

impl Provider {
    pub fn new(name: &str, config: OidcProvider, http: reqwest::Client) -> Option<Provider> {
        Some(Provider {
            name: name.to_string(),
            protocol: config.protocol()?,
            config,
            discovery: RwLock::new(None),
            jwks: RwLock::new(None),
            http,
        })
    }

    pub fn display_name(&self) -> &str {
        self.config.display_name.as_deref().unwrap_or(&self.name)
    }

    pub fn is_oidc(&self) -> bool {
        matches!(self.protocol, Protocol::Oidc { .. })
    }

    /// GETs a JSON document with a bounded answer.
    async fn get_json(&self, url: &str, bearer: Option<&str>) -> Result<Value, Failure> {
        let mut request = self.http.get(url).header("accept", "application/json");
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Failure::Unavailable(format!("{url}: {e}")))?;
        read_json(url, response).await
    }

    async fn discovery(&self) -> Result<Arc<Discovery>, Failure> {
        let Protocol::Oidc { issuer } = &self.protocol else {
            return Err(Failure::Rejected("not an OpenID Connect provider".into()));
        };
        if let Some((found, at)) = self.discovery.read().await.as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(found.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let fetched = self.get_json(&url, None).await.and_then(|value| {
            let found: Discovery = serde_json::from_value(value)
                .map_err(|e| Failure::Rejected(format!("{url}: not an OpenID configuration: {e}")))?;
            // OpenID Connect Discovery 1.0, §4.3: the document must name the issuer asked for.
            if found.issuer != *issuer {
                return Err(Failure::Rejected(format!(
                    "{url}: the configuration is for issuer {}",
                    found.issuer
                )));
            }
            Ok(found)
        });
        let mut slot = self.discovery.write().await;
        match fetched {
            Ok(found) => {
                let found = Arc::new(found);
                *slot = Some((found.clone(), Instant::now()));
                Ok(found)
            }
            // A stale copy serves while the provider cannot be reached.
            Err(Failure::Unavailable(why)) => match slot.as_ref() {
                Some((stale, _)) => {
                    tracing::warn!(provider = %self.name, %why, "OpenID discovery failed; using the cached copy");
                    Ok(stale.clone())
                }
                None => Err(Failure::Unavailable(why)),
            },
            Err(other) => Err(other),
        }
    }

    async fn endpoints(&self) -> Result<Endpoints, Failure> {
        match &self.protocol {
            Protocol::Oidc { .. } => {
                let found = self.discovery().await?;
                let methods = found.token_endpoint_auth_methods_supported.as_deref().unwrap_or(&[]);
                Ok(Endpoints {
                    authorize: found.authorization_endpoint.clone(),
                    token: found.token_endpoint.clone(),
                    userinfo: found.userinfo_endpoint.clone(),
                    secret_in_form: !methods.is_empty()
                        && !methods.iter().any(|m| m == "client_secret_basic")
                        && methods.iter().any(|m| m == "client_secret_post"),
                })
            }
            Protocol::OAuth2 {
                authorize_url,
                token_url,
                userinfo_url,
                emails_url,
            } => Ok(Endpoints {
                authorize: authorize_url.clone(),
                token: token_url.clone(),
                userinfo: Some(userinfo_url.clone()),
                // GitHub takes the secret in the form.
                secret_in_form: emails_url.is_some(),
            }),
        }
    }

    /// The URL that sends the browser to the provider.
    pub async fn authorize_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        verifier: &str,
        login_hint: Option<&str>,
    ) -> Result<String, Failure> {
        let endpoints = self.endpoints().await?;
        let mut url = url::Url::parse(&endpoints.authorize)
            .map_err(|e| Failure::Rejected(format!("authorization endpoint: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.config.client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", &self.config.scopes())
                .append_pair("state", state)
                .append_pair("code_challenge", &challenge(verifier))
                .append_pair("code_challenge_method", "S256");
            if self.is_oidc() {
                query.append_pair("nonce", nonce);
            }
            if let Some(hint) = login_hint {
                query.append_pair("login_hint", hint);
            }
        }
        Ok(url.into())
    }

    /// Checks the `iss` the provider added to its redirect (RFC 9207), when it added one.
    pub async fn check_issuer(&self, iss: Option<&str>) -> Result<(), Failure> {
        match (iss, &self.protocol) {
            (Some(iss), Protocol::Oidc { issuer }) if iss != issuer => Err(Failure::Rejected(format!(
                "the redirect names issuer {iss}, not {issuer}"
            ))),
            _ => Ok(()),
        }
    }

    /// Exchanges the code (with the PKCE verifier) and answers who signed in.
    pub async fn user_of(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
        nonce: &str,
    ) -> Result<External, Failure> {
        let endpoints = self.endpoints().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
            ("client_id", self.config.client_id.as_str()),
        ];
        let secret = self.config.client_secret.as_ref().map(|s| s.0.as_str());
        let mut request = self.http.post(&endpoints.token).header("accept", "application/json");
        match secret {
            Some(secret) if endpoints.secret_in_form => form.push(("client_secret", secret)),
            // RFC 6749 §2.3.1: both parts form-encoded before Basic.
            Some(secret) => {
                let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                request = request.basic_auth(encode(&self.config.client_id), Some(encode(secret)));
            }
            None => {}
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| Failure::Unavailable(format!("token endpoint: {e}")))?;
        let answer: TokenAnswer = serde_json::from_value(read_json(&endpoints.token, response).await?)
            .map_err(|e| Failure::Rejected(format!("token endpoint: {e}")))?;
        match &self.protocol {
            Protocol::Oidc { issuer } => {
                let id_token = answer
                    .id_token
                    .ok_or_else(|| Failure::Rejected("the token endpoint sent no ID token".into()))?;
                let claims = self.verify_id_token(&id_token, issuer, nonce).await?;
                let mut user = External {
                    subject: claims.sub,
                    email: claims.email,
                    email_verified: flag(claims.email_verified.as_ref()),
                    name: claims.name,
                };
                if user.email.is_none()
                    && let Some(userinfo) = &endpoints.userinfo
                {
                    let info = self.get_json(userinfo, Some(&answer.access_token)).await?;
                    // OpenID Connect Core §5.3.2: the answer is about the ID token's subject.
                    if info.get("sub").and_then(Value::as_str) != Some(user.subject.as_str()) {
                        return Err(Failure::Rejected("userinfo is about another subject".into()));
                    }
                    user.email = info.get("email").and_then(Value::as_str).map(str::to_string);
                    user.email_verified = flag(info.get("email_verified"));
                    user.name = user
                        .name
                        .or_else(|| info.get("name").and_then(Value::as_str).map(str::to_string));
                }
                Ok(user)
            }
            Protocol::OAuth2 {
                userinfo_url,
                emails_url,
                ..
            } => {
                let info = self.get_json(userinfo_url, Some(&answer.access_token)).await?;
                let subject = match info.get("sub").or_else(|| info.get("id")) {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => return Err(Failure::Rejected("the user API names no user id".into())),
                };
                let mut user = External {
                    subject,
                    email: info.get("email").and_then(Value::as_str).map(str::to_string),
                    email_verified: flag(info.get("email_verified")),
                    name: info.get("name").and_then(Value::as_str).map(str::to_string),
                };
                if let Some(emails_url) = emails_url {
                    // GitHub: the primary address, and whether GitHub verified it.
                    let emails = self.get_json(emails_url, Some(&answer.access_token)).await?;
                    let primary = emails
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|e| e.get("primary").and_then(Value::as_bool) == Some(true));
                    user.email = primary
                        .and_then(|e| e.get("email"))
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    user.email_verified = flag(primary.and_then(|e| e.get("verified")));
                }
                Ok(user)
            }
        }
    }

    /// The provider's key set: cached, read again when `kid` is not in it.
    async fn key_for(&self, kid: Option<&str>, uri: &str) -> Result<jsonwebtoken::jwk::Jwk, Failure> {
        let find = |set: &JwkSet| match kid {
            Some(kid) => set.find(kid).cloned(),
            // Without a kid, only a set of one key is unambiguous.
            None => (set.keys.len() == 1).then(|| set.keys[0].clone()),
        };
        let cached = self.jwks.read().await.clone();
        if let Some((set, at)) = &cached {
            if let Some(key) = find(set)
                && at.elapsed() < JWKS_TTL
            {
                return Ok(key);
            }
            if at.elapsed() < JWKS_REFETCH_EVERY {
                return Err(Failure::Rejected(format!("no key {kid:?} in the provider's key set")));
            }
        }
        let value = match self.get_json(uri, None).await {
            Ok(value) => value,
            // A key Keel has (past its hour) serves while the provider cannot be reached.
            Err(Failure::Unavailable(why)) => {
                return match cached.as_ref().and_then(|(set, _)| find(set)) {
                    Some(key) => {
                        tracing::warn!(provider = %self.name, %why, "the provider's key set cannot be read; using the cached one");
                        Ok(key)
                    }
                    None => Err(Failure::Unavailable(why)),
                };
            }
            Err(other) => return Err(other),
        };
        let set: JwkSet =
            serde_json::from_value(value).map_err(|e| Failure::Rejected(format!("{uri}: not a key set: {e}")))?;
        let key = find(&set);
        *self.jwks.write().await = Some((Arc::new(set), Instant::now()));
        key.ok_or_else(|| Failure::Rejected(format!("no key {kid:?} in the provider's key set")))
    }

    /// OpenID Connect Core §3.1.3.7: signature, issuer, audience, times, nonce, `azp`.
    async fn verify_id_token(&self, token: &str, issuer: &str, nonce: &str) -> Result<IdClaims, Failure> {
        let discovery = self.discovery().await?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| Failure::Rejected(format!("ID token header: {e}")))?;
        // Asymmetric algorithms only, and only those the provider says it signs with.
        let asymmetric = [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ];
        let advertised = discovery
            .id_token_signing_alg_values_supported
            .clone()
            .unwrap_or_else(|| vec!["RS256".into()]);
        let name = format!("{:?}", header.alg);
        if !asymmetric.contains(&header.alg) || !advertised.contains(&name) {
            return Err(Failure::Rejected(format!("ID token signed with {name}")));
        }
        let jwk = self.key_for(header.kid.as_deref(), &discovery.jwks_uri).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| Failure::Rejected(format!("provider key: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[self.config.client_id.as_str()]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECONDS;
        let claims = jsonwebtoken::decode::<IdClaims>(token, &key, &validation)
            .map_err(|e| Failure::Rejected(format!("ID token: {e}")))?
            .claims;
        let nonce_ok = claims
            .nonce
            .as_deref()
            .is_some_and(|given| crate::auth::browser::constant_time_eq(given, nonce));
        if !nonce_ok {
            return Err(Failure::Rejected("ID token nonce does not match".into()));
        }
        if claims.azp.as_deref().is_some_and(|azp| azp != self.config.client_id) {
            return Err(Failure::Rejected("ID token is for another party (azp)".into()));
        }
        Ok(claims)
    }
}

/// Reads a provider's JSON answer, at most [`MAX_ANSWER`] bytes; a server error is
/// `Unavailable`, a client error (a refused code) `Rejected`.
async fn read_json(url: &str, mut response: reqwest::Response) -> Result<Value, Failure> {
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Failure::Unavailable(format!("{url}: {e}")))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(Failure::Rejected(format!(
                "{url}: the answer is larger than {MAX_ANSWER} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if status.is_server_error() {
        return Err(Failure::Unavailable(format!("{url}: {status}")));
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        if status.is_success() {
            Failure::Rejected(format!("{url}: not JSON: {e}"))
        } else {
            Failure::Rejected(format!("{url}: {status}"))
        }
    })?;
    if !status.is_success() {
        let error = value.get("error").and_then(Value::as_str).unwrap_or("");
        return Err(Failure::Rejected(format!("{url}: {status} {error}")));
    }
    Ok(value)
}

/// RFC 7636 §4.2: `BASE64URL(SHA256(verifier))`.
pub fn challenge(verifier: &str) -> String {
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pkce_challenge_matches_rfc_7636_appendix_b() {
        assert_eq!(
            super::challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
