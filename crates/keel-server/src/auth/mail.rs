//! Account emails (A1, A2): what they say, how they are queued and how they are sent.
//!
//! A request that wants an email (a sign-up, a verification or reset request, an email
//! change) inserts a `keel_account_email` job in its own transaction, so a rolled-back
//! sign-up sends nothing and a crash after the commit still sends. The job mints the link's
//! token when it sends: the token exists only in the email and, as a SHA-256 hash, in
//! `keel_account_tokens`; no payload, log or job result ever holds it. A retry mints a new
//! token, which replaces the one an attempt that failed may have sent.
//!
//! The texts are built in and can be replaced from the spec's folder: `emails/<name>.txt`
//! (a `Subject: …` line, a blank line, the text) and optionally `emails/<name>.html`, where
//! `<name>` is `verify_email`, `change_email` or `reset_password`. Templates see `app`,
//! `email`, `name`, `link` and `expires_minutes`.

use std::path::Path;
use std::sync::Arc;

use keel_jobs::handlers::email::{Email, send};
use keel_jobs::template::render;
use keel_jobs::{JobContext, JobFailure};
use keel_store::accounts::{self, Purpose};
use keel_store::jobs::NewJob;
use keel_store::{StoreError, Tx, system};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::session::new_token;
use crate::config::Config;
use crate::http::extract::token_hash;
use crate::http::state::AppState;

/// The token prefix of each purpose: a token names what it is for, so the one confirmation
/// route can tell a verification from an email change, and a reset token is refused there.
pub fn prefix(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Verify => "kv_",
        Purpose::ChangeEmail => "ke_",
        Purpose::Reset => "kr_",
    }
}

/// One email's templates.
#[derive(Debug, Clone)]
struct Template {
    subject: String,
    text: String,
    html: Option<String>,
}

impl Template {
    /// `Subject: …`, a blank line, then the text.
    fn parse(source: &str, html: Option<String>) -> Result<Template, String> {
        let source = source.replace("\r\n", "\n");
        let (first, text) = source.split_once("\n\n").unwrap_or((&source, ""));
        let subject = first
            .strip_prefix("Subject:")
            .ok_or("the first line must be 'Subject: …', then a blank line, then the text")?
            .trim();
        if subject.is_empty() || subject.contains('\n') {
            return Err("the subject must be one non-empty line".into());
        }
        if text.trim().is_empty() {
            return Err("the text is empty".into());
        }
        Ok(Template {
            subject: subject.to_string(),
            text: text.to_string(),
            html,
        })
    }
}

/// The three account emails, built in or from the spec folder's `emails/`.
#[derive(Debug, Clone)]
pub struct Templates {
    verify: Template,
    change_email: Template,
    reset: Template,
}

const BUILT_IN: [(&str, &str, &str); 3] = [
    (
        "verify_email",
        include_str!("emails/verify_email.txt"),
        include_str!("emails/verify_email.html"),
    ),
    (
        "change_email",
        include_str!("emails/change_email.txt"),
        include_str!("emails/change_email.html"),
    ),
    (
        "reset_password",
        include_str!("emails/reset_password.txt"),
        include_str!("emails/reset_password.html"),
    ),
];

impl Templates {
    /// The built-in texts, each replaced by `emails/<name>.txt` (and `.html`) in `folder`
    /// when that file exists. A file that exists but does not parse is an error.
    pub fn load(folder: Option<&Path>) -> Result<Templates, String> {
        let mut loaded = vec![];
        for (name, text, html) in BUILT_IN {
            let own = folder.map(|f| f.join("emails").join(format!("{name}.txt")));
            let template = match own.filter(|path| path.is_file()) {
                Some(path) => {
                    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
                    let html_path = path.with_extension("html");
                    let html = if html_path.is_file() {
                        Some(read(&html_path)?)
                    } else {
                        None
                    };
                    Template::parse(&read(&path)?, html).map_err(|e| format!("{}: {e}", path.display()))?
                }
                None => Template::parse(text, Some(html.to_string())).expect("the built-in templates parse"),
            };
            loaded.push(template);
        }
        let mut loaded = loaded.into_iter();
        Ok(Templates {
            verify: loaded.next().expect("three"),
            change_email: loaded.next().expect("three"),
            reset: loaded.next().expect("three"),
        })
    }

    fn of(&self, purpose: Purpose) -> &Template {
        match purpose {
            Purpose::Verify => &self.verify,
            Purpose::ChangeEmail => &self.change_email,
            Purpose::Reset => &self.reset,
        }
    }
}

/// A `keel_account_email` job's payload: never a token.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    purpose: String,
    /// The account (verification, email change); a reset names only the address, since
    /// whoever asked does not learn whether it has one.
    user: Option<Uuid>,
    email: String,
}

fn purpose_named(name: &str) -> Option<Purpose> {
    [Purpose::Verify, Purpose::ChangeEmail, Purpose::Reset]
        .into_iter()
        .find(|p| p.as_str() == name)
}

/// Inserts the job that sends an account email, inside the caller's transaction. At most
/// one such job per purpose and address waits at a time (`unique_key`); a duplicate request
/// adds nothing.
pub async fn queue_in(
    tx: &mut Tx,
    state: &AppState,
    purpose: Purpose,
    user: Option<Uuid>,
    email: &str,
) -> Result<(), StoreError> {
    let kind = state
        .schema
        .app
        .jobs
        .kind(keel_spec::ACCOUNT_EMAIL_KIND)
        .expect("the account-email kind is built in");
    let payload = Payload {
        purpose: purpose.as_str().to_string(),
        user,
        email: email.to_string(),
    };
    let mut job = NewJob::of_kind(kind, json!(payload), None, user);
    job.unique_key = Some(format!("account:{}:{}", purpose.as_str(), email));
    keel_store::jobs::job_insert(tx, &job).await?;
    Ok(())
}

/// Whether `email` may get another email of `purpose` this hour
/// (`auth.account_emails_per_hour`). Counted in the database, so every instance agrees.
pub async fn within_budget(state: &AppState, purpose: Purpose, email: &str) -> Result<bool, StoreError> {
    let key = format!("mail:{}:{email}", purpose.as_str());
    let now = chrono::Utc::now();
    let sent = keel_store::security::login_failure(&state.db, &key, now, chrono::Duration::hours(1)).await?;
    let allowed = sent <= i64::from(state.config.auth.account_emails_per_hour);
    state.metrics.counter(
        "keel_account_emails_total",
        &[
            ("purpose", purpose.as_str().to_string()),
            ("result", if allowed { "queued" } else { "throttled" }.to_string()),
        ],
        1,
    );
    Ok(allowed)
}

/// Where the link of an email of `purpose` points, with its token.
pub fn link(config: &Config, purpose: Purpose, token: &str) -> String {
    let base = config
        .auth
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}:{}", config.server.host, config.server.port));
    let base = base.trim_end_matches('/');
    let (own, page) = match purpose {
        Purpose::Reset => (&config.auth.reset_url, "reset"),
        _ => (&config.auth.verify_url, "verify"),
    };
    match own {
        Some(url) => url.replace("{token}", token),
        None => format!("{base}/_/auth/{page}?token={token}"),
    }
}

/// The server's handler of `keel_account_email`.
pub fn job_handler(config: Config, templates: Arc<Templates>) -> keel_jobs::HandlerFn {
    let config = Arc::new(config);
    Arc::new(move |context| Box::pin(run_job(context, config.clone(), templates.clone())))
}

async fn run_job(
    context: JobContext,
    config: Arc<Config>,
    templates: Arc<Templates>,
) -> Result<Option<Value>, JobFailure> {
    let payload: Payload = serde_json::from_str(&context.payload)
        .map_err(|e| JobFailure::permanent(format!("the account email's payload is malformed: {e}")))?;
    let purpose =
        purpose_named(&payload.purpose).ok_or_else(|| JobFailure::permanent("unknown account-email purpose"))?;
    let smtp = context
        .config
        .smtp
        .as_ref()
        .ok_or_else(|| JobFailure::retry("no SMTP server is configured (set smtp.host)"))?;
    let store = |e: StoreError| JobFailure::retry(format!("the store failed: {e}"));
    let skip = |reason: &str| Ok(Some(json!({ "sent": false, "reason": reason })));
    // Who the email is for, as the account is now (it may have changed since the request).
    let user = match purpose {
        Purpose::Reset => match system::user_by_email(&context.db, &payload.email)
            .await
            .map_err(store)?
        {
            Some((user, _)) => user,
            None => return skip("no account has this address"),
        },
        _ => {
            let Some(id) = payload.user else {
                return Err(JobFailure::permanent("a verification email names its user"));
            };
            match system::user_by_id(&context.db, id).await.map_err(store)? {
                Some(user) => user,
                None => return skip("the account no longer exists"),
            }
        }
    };
    match purpose {
        Purpose::Verify if user.email != payload.email => return skip("the account's address changed"),
        Purpose::Verify if user.email_verified_at.is_some() => return skip("the address is verified"),
        Purpose::ChangeEmail
            if system::user_by_email(&context.db, &payload.email)
                .await
                .map_err(store)?
                .is_some() =>
        {
            return skip("another account has this address");
        }
        _ => {}
    }
    let token = new_token(prefix(purpose));
    let minutes = match purpose {
        Purpose::Reset => config.auth.reset_ttl_minutes,
        _ => config.auth.verify_ttl_minutes,
    };
    accounts::token_insert(
        &context.db,
        purpose,
        user.id,
        &payload.email,
        &token_hash(&token),
        chrono::Duration::minutes(minutes as i64),
    )
    .await
    .map_err(store)?;
    let root = json!({
        "app": context.schema.app.name,
        "email": payload.email,
        "name": user.name.clone().unwrap_or_default(),
        "link": link(&config, purpose, &token),
        "expires_minutes": minutes,
    });
    let template = templates.of(purpose);
    let to = [payload.email.clone()];
    let smtp_code = send(
        smtp,
        context.config.http_timeout,
        &Email {
            to: &to,
            subject: &render(&template.subject, &root, false),
            text: &render(&template.text, &root, false),
            html: template.html.as_ref().map(|h| render(h, &root, true)).as_deref(),
            message_id: &format!("<keel-job-{}-{}@keel>", context.id, context.attempt),
        },
    )
    .await?;
    Ok(Some(json!({ "sent": true, "to": payload.email, "smtp": smtp_code })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_need_a_subject_line_and_a_text() {
        let parsed = Template::parse("Subject: Hi {{ name }}\n\nClick {{ link }}\n", None).unwrap();
        assert_eq!(parsed.subject, "Hi {{ name }}");
        assert_eq!(parsed.text, "Click {{ link }}\n");
        assert!(Template::parse("Hi\n\nbody", None).is_err());
        assert!(Template::parse("Subject: \n\nbody", None).is_err());
        assert!(Template::parse("Subject: x\n\n  \n", None).is_err());
        Templates::load(None).expect("the built-in templates load");
    }

    #[test]
    fn links_use_the_configured_page_or_keels_own() {
        let mut config = Config::default();
        assert_eq!(
            link(&config, Purpose::Reset, "kr_x"),
            format!(
                "http://{}:{}/_/auth/reset?token=kr_x",
                config.server.host, config.server.port
            )
        );
        config.auth.public_url = Some("https://hoa.example.com/".into());
        assert_eq!(
            link(&config, Purpose::Verify, "kv_y"),
            "https://hoa.example.com/_/auth/verify?token=kv_y"
        );
        config.auth.reset_url = Some("https://app.example.com/reset#{token}".into());
        assert_eq!(
            link(&config, Purpose::Reset, "kr_z"),
            "https://app.example.com/reset#kr_z"
        );
    }
}
