//! The email handler: a message from templates over the payload, sent over SMTP. A refusal
//! the server calls permanent (5xx) kills the job; anything else is retried.

use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

use super::template_root;
use crate::context::{JobContext, JobFailure, SmtpConfig, SmtpTls};
use crate::template::render;

/// The most recipients one email job may address.
const MAX_RECIPIENTS: usize = 50;

pub async fn run(
    context: &JobContext,
    to: &str,
    subject: &str,
    text: &str,
    html: Option<&str>,
) -> Result<Option<Value>, JobFailure> {
    let smtp = context
        .config
        .smtp
        .as_ref()
        .ok_or_else(|| JobFailure::retry("no SMTP server is configured (set smtp.host)"))?;
    let root = template_root(context, &[to, subject, text, html.unwrap_or_default()]).await?;
    let recipients: Vec<String> = render(to, &root, false)
        .split(',')
        .map(|address| address.trim().to_string())
        .filter(|address| !address.is_empty())
        .collect();
    if recipients.is_empty() {
        return Err(JobFailure::permanent("the email has no recipient"));
    }
    if recipients.len() > MAX_RECIPIENTS {
        return Err(JobFailure::permanent(format!("at most {MAX_RECIPIENTS} recipients")));
    }
    let subject = render(subject, &root, false);
    let plain = render(text, &root, false);
    let html = html.map(|html| render(html, &root, true));
    let sent = send(
        smtp,
        context.config.http_timeout,
        &Email {
            to: &recipients,
            subject: &subject,
            text: &plain,
            html: html.as_deref(),
            message_id: &format!("<keel-job-{}@keel>", context.id),
        },
    )
    .await?;
    Ok(Some(serde_json::json!({
        "to": recipients,
        "smtp": sent,
    })))
}

/// A rendered email.
pub struct Email<'a> {
    pub to: &'a [String],
    pub subject: &'a str,
    pub text: &'a str,
    /// An HTML alternative to the text.
    pub html: Option<&'a str>,
    /// The `Message-ID`; a retried job sends the same one, so receivers can drop duplicates.
    pub message_id: &'a str,
}

/// Sends an email over SMTP; answers the server's reply code. A refusal the server calls
/// permanent (5xx) is a permanent failure, anything else is worth retrying.
pub async fn send(smtp: &SmtpConfig, timeout: std::time::Duration, email: &Email<'_>) -> Result<String, JobFailure> {
    if smtp.log_only {
        tracing::info!(
            to = %email.to.join(", "),
            subject = email.subject,
            text = email.text,
            "email written to the log instead of sent (smtp.log_only)"
        );
        return Ok("logged".into());
    }
    let from: Mailbox = smtp
        .from
        .parse()
        .map_err(|e| JobFailure::permanent(format!("smtp.from '{}' is not an address: {e}", smtp.from)))?;
    let mut builder = Message::builder()
        .from(from)
        .subject(email.subject)
        .header(lettre::message::header::MessageId::from(email.message_id.to_string()));
    for address in email.to {
        let mailbox: Mailbox = address
            .parse()
            .map_err(|e| JobFailure::permanent(format!("'{address}' is not an address: {e}")))?;
        builder = builder.to(mailbox);
    }
    let message = match email.html {
        Some(html) => builder.multipart(
            MultiPart::alternative()
                .singlepart(SinglePart::plain(email.text.to_string()))
                .singlepart(SinglePart::html(html.to_string())),
        ),
        None => builder.header(ContentType::TEXT_PLAIN).body(email.text.to_string()),
    }
    .map_err(|e| JobFailure::permanent(format!("the email cannot be built: {e}")))?;
    let transport = transport(smtp, timeout).map_err(JobFailure::retry)?;
    let response = transport.send(message).await.map_err(|error| {
        let message = format!("sending to {} failed: {error}", email.to.join(", "));
        if error.is_permanent() {
            JobFailure::permanent(message)
        } else {
            JobFailure::retry(message)
        }
    })?;
    Ok(response.code().to_string())
}

fn transport(smtp: &SmtpConfig, timeout: std::time::Duration) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let transport = match smtp.tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
            .map_err(|e| format!("SMTP setup failed: {e}"))?,
        SmtpTls::Tls => {
            AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host).map_err(|e| format!("SMTP setup failed: {e}"))?
        }
    };
    let mut transport = transport.port(smtp.port).timeout(Some(timeout));
    if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
        transport = transport.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(transport.build())
}

/// A plain-text email outside any job (alert notifications).
pub async fn send_plain(smtp: &SmtpConfig, to: &[String], subject: &str, text: &str) -> Result<(), String> {
    if smtp.log_only {
        tracing::info!(to = %to.join(", "), subject, text, "email written to the log instead of sent (smtp.log_only)");
        return Ok(());
    }
    let from: Mailbox = smtp
        .from
        .parse()
        .map_err(|e| format!("smtp.from '{}' is not an address: {e}", smtp.from))?;
    let mut builder = Message::builder().from(from).subject(subject);
    for address in to.iter().take(MAX_RECIPIENTS) {
        builder = builder.to(address
            .parse()
            .map_err(|e| format!("'{address}' is not an address: {e}"))?);
    }
    let message = builder
        .header(ContentType::TEXT_PLAIN)
        .body(text.to_string())
        .map_err(|e| format!("the email cannot be built: {e}"))?;
    transport(smtp, std::time::Duration::from_secs(10))?
        .send(message)
        .await
        .map(drop)
        .map_err(|e| format!("sending to {} failed: {e}", to.join(", ")))
}
