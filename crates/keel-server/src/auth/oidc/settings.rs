//! `[auth.oidc.<name>]`: the OAuth 2.0 / OpenID Connect providers users may sign in with, and
//! `auth.oidc_redirects`, where a sign-in may send the browser back to.

use serde::{Deserialize, Serialize};

use crate::http::settings::{Checked, Secret, invalid};

/// One provider. Generic OpenID Connect needs `issuer` (its endpoints and keys come from
/// discovery); a plain OAuth 2.0 provider needs the three URLs; a preset fills them in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProvider {
    /// `google` (OpenID Connect) or `github` (OAuth 2.0 and GitHub's user API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// The OpenID issuer: `{issuer}/.well-known/openid-configuration` is read at first use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Plain OAuth 2.0 (no ID token): where users authorise, where codes become tokens, and
    /// where the user's `id`/`sub`, `email` and `email_verified` are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userinfo_url: Option<String>,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Secret>,
    /// The scopes asked for; `openid email profile` for OpenID Connect, `read:user
    /// user:email` for GitHub.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The name sign-in pages show (`GET /api/v1/auth/oidc/providers`); the key when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Whether a first sign-in creates an account; `auth.signup` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signup: Option<bool>,
}

/// How Keel talks to a provider, presets applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// OpenID Connect: discovery at the issuer, an ID token verified against its keys.
    Oidc { issuer: String },
    /// OAuth 2.0 with a user API: no ID token; the user comes from `userinfo_url`.
    OAuth2 {
        authorize_url: String,
        token_url: String,
        userinfo_url: String,
        /// GitHub: the addresses (with `verified`) come from `/user/emails`.
        emails_url: Option<String>,
    },
}

impl OidcProvider {
    /// The protocol, with a preset's endpoints where the provider's own are unset.
    pub fn protocol(&self) -> Option<Protocol> {
        match self.preset.as_deref() {
            Some("google") => Some(Protocol::Oidc {
                issuer: self
                    .issuer
                    .clone()
                    .unwrap_or_else(|| "https://accounts.google.com".into()),
            }),
            Some("github") => Some(Protocol::OAuth2 {
                authorize_url: self
                    .authorize_url
                    .clone()
                    .unwrap_or_else(|| "https://github.com/login/oauth/authorize".into()),
                token_url: self
                    .token_url
                    .clone()
                    .unwrap_or_else(|| "https://github.com/login/oauth/access_token".into()),
                userinfo_url: self
                    .userinfo_url
                    .clone()
                    .unwrap_or_else(|| "https://api.github.com/user".into()),
                emails_url: Some("https://api.github.com/user/emails".into()),
            }),
            Some(_) => None,
            None => match (&self.issuer, &self.authorize_url, &self.token_url, &self.userinfo_url) {
                (Some(issuer), None, None, None) => Some(Protocol::Oidc { issuer: issuer.clone() }),
                (None, Some(authorize), Some(token), Some(userinfo)) => Some(Protocol::OAuth2 {
                    authorize_url: authorize.clone(),
                    token_url: token.clone(),
                    userinfo_url: userinfo.clone(),
                    emails_url: None,
                }),
                _ => None,
            },
        }
    }

    /// The scopes to ask for.
    pub fn scopes(&self) -> String {
        if !self.scopes.is_empty() {
            return self.scopes.join(" ");
        }
        match self.protocol() {
            Some(Protocol::OAuth2 {
                emails_url: Some(_), ..
            }) => "read:user user:email".into(),
            _ => "openid email profile".into(),
        }
    }
}

fn is_http_url(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

/// Checks the providers and the redirect allow-list.
pub fn validate(providers: &std::collections::BTreeMap<String, OidcProvider>, redirects: &[String]) -> Checked {
    for (name, provider) in providers {
        let well_named = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !well_named {
            return invalid(
                "auth.oidc",
                format!("provider name '{name}' must be 1-32 characters: a-z, 0-9, '-' or '_'"),
            );
        }
        if provider
            .preset
            .as_deref()
            .is_some_and(|p| p != "google" && p != "github")
        {
            return invalid("auth.oidc", format!("{name}: preset must be 'google' or 'github'"));
        }
        let Some(protocol) = provider.protocol() else {
            return invalid(
                "auth.oidc",
                format!(
                    "{name}: set issuer (OpenID Connect) or all of authorize_url, token_url and userinfo_url (OAuth 2.0), or a preset"
                ),
            );
        };
        let urls: Vec<&String> = match &protocol {
            Protocol::Oidc { issuer } => vec![issuer],
            Protocol::OAuth2 {
                authorize_url,
                token_url,
                userinfo_url,
                ..
            } => vec![authorize_url, token_url, userinfo_url],
        };
        if let Some(bad) = urls.into_iter().find(|u| !is_http_url(u)) {
            return invalid("auth.oidc", format!("{name}: '{bad}' is not an http(s) URL"));
        }
        if provider.client_id.is_empty() || provider.client_id.len() > 512 {
            return invalid("auth.oidc", format!("{name}: client_id must be 1-512 characters"));
        }
    }
    if !providers.is_empty() && redirects.is_empty() {
        return invalid(
            "auth.oidc_redirects",
            "list where a sign-in may send the browser back to (your app's page), e.g. [\"https://app.example.com/signed-in\"]",
        );
    }
    for pattern in redirects {
        let base = pattern.strip_suffix('*').unwrap_or(pattern);
        let Ok(parsed) = url::Url::parse(base) else {
            return invalid("auth.oidc_redirects", format!("'{pattern}' is not a URL"));
        };
        // A prefix must end inside the path, so `https://app.example.com*` cannot match
        // `https://app.example.com.evil.test`.
        let prefix_ok = !pattern.ends_with('*') || base[parsed.origin().ascii_serialization().len()..].starts_with('/');
        if !matches!(parsed.scheme(), "http" | "https")
            || base.contains('*')
            || !prefix_ok
            || parsed.fragment().is_some()
        {
            return invalid(
                "auth.oidc_redirects",
                format!("'{pattern}' must be an http(s) URL, optionally ending in a path followed by '*'"),
            );
        }
    }
    Ok(())
}

/// Whether `redirect` is on the allow-list: equal to an entry, or under an entry that ends
/// in `*`. Compared as parsed URLs' serialisations, so `https://APP.example.com` and
/// `https://app.example.com:443` are the same URL and user-info tricks do not pass.
pub fn redirect_allowed(redirects: &[String], redirect: &str) -> bool {
    let Ok(parsed) = url::Url::parse(redirect) else {
        return false;
    };
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() || parsed.password().is_some() {
        return false;
    }
    let given = parsed.as_str();
    redirects.iter().any(|pattern| match pattern.strip_suffix('*') {
        Some(prefix) => url::Url::parse(prefix).is_ok_and(|p| given.starts_with(p.as_str())),
        None => url::Url::parse(pattern).is_ok_and(|p| p.as_str() == given),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_match_exactly_or_under_a_path_prefix() {
        let list = vec![
            "https://app.example.com/signed-in".to_string(),
            "http://localhost:3000/auth/*".to_string(),
        ];
        assert!(redirect_allowed(&list, "https://app.example.com/signed-in"));
        assert!(redirect_allowed(&list, "https://APP.example.com:443/signed-in"));
        assert!(!redirect_allowed(&list, "https://app.example.com/signed-in/x"));
        assert!(!redirect_allowed(&list, "https://app.example.com.evil.test/signed-in"));
        assert!(!redirect_allowed(&list, "https://evil.test@app.example.com/signed-in"));
        assert!(redirect_allowed(&list, "http://localhost:3000/auth/done?x=1"));
        assert!(!redirect_allowed(&list, "http://localhost:3000/other"));
        assert!(!redirect_allowed(&list, "http://localhost:30000/auth/done"));
        assert!(!redirect_allowed(&list, "javascript:alert(1)"));
        assert!(validate(&Default::default(), &["https://app.example.com*".to_string()]).is_err());
        assert!(validate(&Default::default(), &["https://app.example.com/*".to_string()]).is_ok());
    }
}
