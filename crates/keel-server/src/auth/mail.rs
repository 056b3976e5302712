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
//! `<name>` is `verify_email`, `change_email`, `reset_password` or `invitation`. Templates
//! see `app`, `email`, `name`, `link`, `expires_minutes` and `expires_hours`; an invitation
//! also `org`, `role` and `inviter`.

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
        Purpose::Mfa => super::mfa::MFA_PREFIX,
        Purpose::OidcSignIn => super::oidc::CODE_PREFIX,
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
    invitation: Template,
}

const BUILT_IN: [(&str, &str, &str); 4] = [
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
    (
        "invitation",
        include_str!("emails/invitation.txt"),
        include_str!("emails/invitation.html"),
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
            verify: loaded.next().expect("four"),
            change_email: loaded.next().expect("four"),
            reset: loaded.next().expect("four"),
            invitation: loaded.next().expect("four"),
        })
    }

    fn of(&self, purpose: Purpose) -> &Template {
        match purpose {
            Purpose::Verify => &self.verify,
            Purpose::ChangeEmail => &self.change_email,
            Purpose::Reset => &self.reset,
            // `purpose_named` never yields it: the sign-in's second step sends no email.
            Purpose::Mfa | Purpose::OidcSignIn => unreachable!("no email carries a sign-in step's token"),
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
    /// An invitation's id (purpose `invite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    invitation: Option<Uuid>,
}

/// The purpose name of invitation emails, beside the account purposes.
const INVITE: &str = "invite";

/// The prefix of invitation tokens.
pub const INVITATION_PREFIX: &str = "ki_";

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
    let payload = Payload {
        purpose: purpose.as_str().to_string(),
        user,
        email: email.to_string(),
        invitation: None,
    };
    insert(tx, state, payload, format!("account:{}:{}", purpose.as_str(), email)).await
}

/// Inserts the job that sends (or sends again) an invitation's email, inside the caller's
/// transaction; the job gives the invitation its link.
pub async fn queue_invitation_in(
    tx: &mut Tx,
    state: &AppState,
    invitation: &keel_store::invitations::Invitation,
) -> Result<(), StoreError> {
    let payload = Payload {
        purpose: INVITE.to_string(),
        user: invitation.invited_by,
        email: invitation.email.clone(),
        invitation: Some(invitation.id),
    };
    insert(tx, state, payload, format!("account:{INVITE}:{}", invitation.id)).await
}

async fn insert(tx: &mut Tx, state: &AppState, payload: Payload, unique_key: String) -> Result<(), StoreError> {
    let kind = state
        .schema
        .app
        .jobs
        .kind(keel_spec::ACCOUNT_EMAIL_KIND)
        .expect("the account-email kind is built in");
    let mut job = NewJob::of_kind(kind, json!(payload), None, None);
    job.unique_key = Some(unique_key);
    keel_store::jobs::job_insert(tx, &job).await?;
    Ok(())
}

/// Whether `email` may get another email of `purpose` this hour
/// (`auth.account_emails_per_hour`). Counted in the database, so every instance agrees.
pub async fn within_budget(state: &AppState, purpose: Purpose, email: &str) -> Result<bool, StoreError> {
    within_budget_of(state, purpose.as_str(), email).await
}

/// [`within_budget`] for invitations (their own budget per address).
pub async fn invitation_within_budget(state: &AppState, email: &str) -> Result<bool, StoreError> {
    within_budget_of(state, INVITE, email).await
}

async fn within_budget_of(state: &AppState, purpose: &str, email: &str) -> Result<bool, StoreError> {
    let key = format!("mail:{purpose}:{email}");
    let now = chrono::Utc::now();
    let sent = keel_store::security::login_failure(&state.db, &key, now, chrono::Duration::hours(1)).await?;
    let allowed = sent <= i64::from(state.config.auth.account_emails_per_hour);
    state.metrics.counter(
        "keel_account_emails_total",
        &[
            ("purpose", purpose.to_string()),
            ("result", if allowed { "queued" } else { "throttled" }.to_string()),
        ],
        1,
    );
    Ok(allowed)
}

/// Where the link of an email of `purpose` points, with its token.
pub fn link(config: &Config, purpose: Purpose, token: &str) -> String {
    let (own, page) = match purpose {
        Purpose::Reset => (&config.auth.reset_url, "reset"),
        _ => (&config.auth.verify_url, "verify"),
    };
    link_to(config, own, page, token)
}

/// Where users reach this server: `auth.public_url`, or the address it listens on.
pub fn public_url(config: &Config) -> String {
    let base = config
        .auth
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}:{}", config.server.host, config.server.port));
    base.trim_end_matches('/').to_string()
}

fn link_to(config: &Config, own: &Option<String>, page: &str, token: &str) -> String {
    let base = public_url(config);
    match own {
        Some(url) => url.replace("{token}", token),
        None => format!("{base}/_/auth/{page}?token={token}"),
    }
}

/// A new link of `purpose` for the user and `email` (replacing the user's older one) and how
/// many minutes it works: what the emails carry, and what `keel users reset-link` prints.
pub async fn mint_link(
    db: &keel_store::Db,
    config: &Config,
    purpose: Purpose,
    user: Uuid,
    email: &str,
) -> Result<(String, u64), StoreError> {
    let token = new_token(prefix(purpose));
    let minutes = match purpose {
        Purpose::Reset => config.auth.reset_ttl_minutes,
        _ => config.auth.verify_ttl_minutes,
    };
    let ttl = chrono::Duration::minutes(minutes as i64);
    accounts::token_insert(db, purpose, user, email, &token_hash(&token), ttl).await?;
    Ok((link(config, purpose, &token), minutes))
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
    if payload.purpose == INVITE {
        return run_invitation(&context, &config, &templates, &payload).await;
    }
    let purpose =
        purpose_named(&payload.purpose).ok_or_else(|| JobFailure::permanent("unknown account-email purpose"))?;
    smtp_of(&context)?;
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
    if user.disabled_at.is_some() {
        return skip("the account is disabled");
    }
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
    let (link, minutes) = mint_link(&context.db, &config, purpose, user.id, &payload.email)
        .await
        .map_err(store)?;
    let root = json!({
        "app": context.schema.app.name,
        "email": payload.email,
        "name": user.name.clone().unwrap_or_default(),
        "link": link,
        "expires_minutes": minutes,
        "expires_hours": minutes / 60,
    });
    deliver(&context, templates.of(purpose), &root, &payload.email).await
}

/// The SMTP settings, or a retryable failure: the email waits until a server is configured.
fn smtp_of(context: &JobContext) -> Result<&keel_jobs::SmtpConfig, JobFailure> {
    context
        .config
        .smtp
        .as_ref()
        .ok_or_else(|| JobFailure::retry("no SMTP server is configured (set smtp.host)"))
}

/// Renders a template over `root` and sends it to `to`; a retried job sends a new message id
/// per attempt (each attempt's link is new).
async fn deliver(
    context: &JobContext,
    template: &Template,
    root: &Value,
    to: &str,
) -> Result<Option<Value>, JobFailure> {
    let recipients = [to.to_string()];
    let smtp_code = send(
        smtp_of(context)?,
        context.config.http_timeout,
        &Email {
            to: &recipients,
            subject: &render(&template.subject, root, false),
            text: &render(&template.text, root, false),
            html: template.html.as_ref().map(|h| render(h, root, true)).as_deref(),
            message_id: &format!("<keel-job-{}-{}@keel>", context.id, context.attempt),
        },
    )
    .await?;
    Ok(Some(json!({ "sent": true, "to": to, "smtp": smtp_code })))
}

/// Sends an invitation's email with a new link (which replaces any earlier one).
async fn run_invitation(
    context: &JobContext,
    config: &Config,
    templates: &Templates,
    payload: &Payload,
) -> Result<Option<Value>, JobFailure> {
    smtp_of(context)?;
    let store = |e: StoreError| JobFailure::retry(format!("the store failed: {e}"));
    let id = payload
        .invitation
        .ok_or_else(|| JobFailure::permanent("an invitation email names its invitation"))?;
    let token = new_token(INVITATION_PREFIX);
    let hours = config.auth.invitation_ttl_hours;
    let ttl = chrono::Duration::hours(hours as i64);
    if !keel_store::invitations::invitation_set_token(&context.db, id, &token_hash(&token), ttl)
        .await
        .map_err(store)?
    {
        return Ok(Some(
            json!({ "sent": false, "reason": "the invitation is no longer open" }),
        ));
    }
    let invitation = keel_store::invitations::invitation_by_token(&context.db, &token_hash(&token))
        .await
        .map_err(store)?
        .ok_or_else(|| JobFailure::retry("the invitation changed while its email was prepared"))?;
    let org = system::org_by_id(&context.db, invitation.org)
        .await
        .map_err(store)?
        .ok_or_else(|| JobFailure::permanent("the org no longer exists"))?;
    let inviter = match invitation.invited_by {
        Some(id) => system::user_by_id(&context.db, id).await.map_err(store)?,
        None => None,
    }
    .map(|u| u.name.unwrap_or(u.email))
    .unwrap_or_else(|| "An administrator".to_string());
    let root = json!({
        "app": context.schema.app.name,
        "email": invitation.email,
        "name": "",
        "org": org.name,
        "role": invitation.role,
        "inviter": inviter,
        "link": link_to(config, &config.auth.invitation_url, "invitation", &token),
        "expires_minutes": hours * 60,
        "expires_hours": hours,
    });
    deliver(context, &templates.invitation, &root, &invitation.email).await
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
