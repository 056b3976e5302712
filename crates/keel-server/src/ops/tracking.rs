//! Error tracking (O6): unexpected errors (a 500 `internal` with its cause) and caught panics,
//! grouped by a fingerprint of their kind, route and message with the variable parts (ids,
//! numbers) taken out. Each instance counts groups in memory (bounded) and adds them to the
//! shared `keel_errors` table every few seconds (and before the admin list answers);
//! with `errors.sentry_dsn`, each group is also sent to a Sentry-compatible endpoint once per
//! flush, with its count.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::Utc;
use keel_store::Db;
use keel_store::errors::ErrorGroup;
use sha2::{Digest, Sha256};

/// Groups kept between flushes; errors of further groups are counted in the metric only.
const MAX_PENDING: usize = 1_000;
/// Events sent to Sentry per flush, at most.
const MAX_FORWARDED: usize = 50;
const MESSAGE_MAX_CHARS: usize = 2_000;

pub struct ErrorTracker {
    pending: Mutex<HashMap<String, ErrorGroup>>,
    sentry: Option<Sentry>,
    environment: String,
}

impl ErrorTracker {
    pub fn new(config: &crate::Config) -> ErrorTracker {
        let sentry = config
            .errors
            .sentry_dsn
            .as_ref()
            .and_then(|dsn| match Sentry::new(&dsn.0) {
                Ok(sentry) => Some(sentry),
                Err(error) => {
                    // `Config::validate` refuses a malformed DSN; this is the client failing.
                    tracing::error!(%error, "errors.sentry_dsn is unusable; errors are tracked here only");
                    None
                }
            });
        ErrorTracker {
            pending: Mutex::new(HashMap::new()),
            sentry,
            environment: config.app.environment.clone(),
        }
    }

    /// Counts one unexpected error; `message` is the cause (never sent to the client).
    pub fn record(&self, route: &str, message: &str, request_id: &str) {
        let kind = if message.starts_with("panic") { "panic" } else { "error" };
        let fingerprint = fingerprint(kind, route, message);
        let now = Utc::now();
        let mut pending = self.pending.lock().expect("errors lock");
        if let Some(group) = pending.get_mut(&fingerprint) {
            group.count += 1;
            group.last_seen = now;
            group.sample_request_id = request_id.to_string();
            return;
        }
        if pending.len() >= MAX_PENDING {
            return;
        }
        pending.insert(
            fingerprint.clone(),
            ErrorGroup {
                fingerprint,
                kind: kind.to_string(),
                route: route.to_string(),
                // PostgreSQL text cannot hold NUL.
                message: message
                    .chars()
                    .take(MESSAGE_MAX_CHARS)
                    .map(|c| if c == '\0' { '\u{fffd}' } else { c })
                    .collect(),
                count: 1,
                first_seen: now,
                last_seen: now,
                sample_request_id: request_id.to_string(),
            },
        );
    }

    /// Adds the pending counts to `keel_errors` and forwards them. When the database cannot
    /// take them they stay pending for the next flush.
    pub async fn flush(&self, db: &Db) {
        let groups: Vec<ErrorGroup> = {
            let mut pending = self.pending.lock().expect("errors lock");
            pending.drain().map(|(_, group)| group).collect()
        };
        if groups.is_empty() {
            return;
        }
        if let Err(error) = keel_store::errors::errors_add(db, &groups).await {
            tracing::warn!(%error, groups = groups.len(), "could not record error groups; retrying at the next flush");
            let mut pending = self.pending.lock().expect("errors lock");
            for group in &groups {
                merge(&mut pending, group.clone());
            }
        }
        if let Some(sentry) = &self.sentry {
            for group in groups.iter().take(MAX_FORWARDED) {
                if let Err(error) = sentry.send(group, &self.environment).await {
                    tracing::warn!(%error, fingerprint = %group.fingerprint, "could not forward an error to Sentry");
                }
            }
        }
    }
}

fn merge(pending: &mut HashMap<String, ErrorGroup>, group: ErrorGroup) {
    let room = pending.len() < MAX_PENDING;
    match pending.get_mut(&group.fingerprint) {
        Some(existing) => {
            existing.count += group.count;
            existing.first_seen = existing.first_seen.min(group.first_seen);
        }
        None if room => {
            pending.insert(group.fingerprint.clone(), group);
        }
        None => {}
    }
}

/// 16 hex digits of SHA-256 over the kind, the route and the message with every word that
/// holds a digit (ids, numbers, times) replaced by `#`.
pub fn fingerprint(kind: &str, route: &str, message: &str) -> String {
    let mut normalized = String::with_capacity(message.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.bytes().any(|b| b.is_ascii_digit()) {
            out.push('#');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in message.chars() {
        if c.is_alphanumeric() || c == '-' || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut normalized);
            normalized.push(c);
        }
    }
    flush(&mut word, &mut normalized);
    let digest = Sha256::digest(format!("{kind}\n{route}\n{normalized}"));
    crate::hex(&digest[..8])
}

/// A Sentry-compatible endpoint from a DSN (`https://KEY@HOST[/PATH]/PROJECT`), sent to with
/// the store API (JSON events).
pub struct Sentry {
    endpoint: String,
    auth: String,
    client: reqwest::Client,
}

impl Sentry {
    pub fn new(dsn: &str) -> Result<Sentry, String> {
        let (endpoint, key) = parse_dsn(dsn)?;
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Sentry {
            endpoint,
            auth: format!(
                "Sentry sentry_version=7, sentry_client=keel/{}, sentry_key={key}",
                env!("CARGO_PKG_VERSION")
            ),
            client,
        })
    }

    async fn send(&self, group: &ErrorGroup, environment: &str) -> Result<(), String> {
        let event = serde_json::json!({
            "event_id": uuid::Uuid::new_v4().simple().to_string(),
            "timestamp": group.last_seen.to_rfc3339(),
            "platform": "other",
            "level": if group.kind == "panic" { "fatal" } else { "error" },
            "logger": "keel",
            "release": format!("keel@{}", env!("CARGO_PKG_VERSION")),
            "environment": environment,
            "message": { "formatted": group.message },
            "fingerprint": [group.fingerprint],
            "tags": { "route": group.route, "kind": group.kind, "request_id": group.sample_request_id },
            "extra": { "count": group.count, "first_seen": group.first_seen.to_rfc3339() },
        });
        let response = self
            .client
            .post(&self.endpoint)
            .header("x-sentry-auth", &self.auth)
            .json(&event)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("the endpoint answered {}", response.status()))
        }
    }
}

/// The store endpoint and the public key of a DSN.
pub fn parse_dsn(dsn: &str) -> Result<(String, String), String> {
    let url = url::Url::parse(dsn).map_err(|e| format!("not a URL: {e}"))?;
    let key = url.username();
    if key.is_empty() {
        return Err("has no key (https://KEY@HOST/PROJECT)".into());
    }
    let path = url.path().trim_end_matches('/');
    let (prefix, project) = path.rsplit_once('/').ok_or("has no project id")?;
    if project.is_empty() {
        return Err("has no project id".into());
    }
    let host = url.host_str().ok_or("has no host")?;
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    Ok((
        format!("{}://{host}{port}{prefix}/api/{project}/store/", url.scheme()),
        key.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_ignore_ids_and_numbers() {
        let a = fingerprint(
            "error",
            "/api/v1/orgs/{org}/{collection}",
            "no such table: tasks (row 17, id 0197a3f0-1c2d)",
        );
        let b = fingerprint(
            "error",
            "/api/v1/orgs/{org}/{collection}",
            "no such table: tasks (row 4, id 0198ffff-0000)",
        );
        let other = fingerprint(
            "error",
            "/api/v1/orgs/{org}/{collection}",
            "no such table: projects (row 4)",
        );
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_ne!(
            a,
            fingerprint(
                "panic",
                "/api/v1/orgs/{org}/{collection}",
                "no such table: tasks (row 17)"
            )
        );
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn dsns_name_the_store_endpoint() {
        assert_eq!(
            parse_dsn("https://abc123@o1.ingest.sentry.io/42").unwrap(),
            ("https://o1.ingest.sentry.io/api/42/store/".into(), "abc123".into())
        );
        assert_eq!(
            parse_dsn("http://key@127.0.0.1:9000/prefix/7").unwrap().0,
            "http://127.0.0.1:9000/prefix/api/7/store/"
        );
        assert!(parse_dsn("https://o1.ingest.sentry.io/42").is_err());
        assert!(parse_dsn("https://k@host/").is_err());
        assert!(parse_dsn("not a dsn").is_err());
    }
}
