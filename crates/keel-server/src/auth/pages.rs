//! Keel's own pages behind the links of account emails, for apps that have no page of their
//! own (`auth.verify_url` and `auth.reset_url` point elsewhere when they do).
//!
//! Plain server-rendered HTML forms, no script. Opening a link never uses its token: a GET
//! only shows the form (mail scanners and link previews fetch links), and the POST does the
//! work through the same flows as the API. The forms authenticate with the link's token, not
//! with a session cookie, so the cookie sessions' CSRF check does not apply to them.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::flows;
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// A page: a title and escaped-at-the-source HTML.
fn page(status: StatusCode, app: &str, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title} · {app}</title><style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem;color:#1b1f24}}h1{{font-size:1.4rem}}input{{display:block;width:100%;box-sizing:border-box;margin:.3rem 0 1rem;padding:.5rem;font-size:1rem}}button{{padding:.6rem 1.2rem;font-size:1rem}}.error{{color:#b42318}}</style></head><body><h1>{title}</h1>{body}<p><small>{app}</small></p></body></html>",
        title = escape(title),
        app = escape(app),
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    response
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    keel_jobs::template::escape_into(&mut out, text);
    out
}

fn failure(state: &AppState, title: &str, error: &ApiError) -> Response {
    let body = format!(
        "<p class=\"error\">{}</p><p><code>{}</code></p>",
        escape(&error.message),
        error.code
    );
    page(error.status(), &state.schema.app.name, title, &body)
}

/// A provider sign-in that failed before Keel knew where to send the browser (start, or a
/// callback whose state is not this browser's), for a browser that navigated there.
pub fn sign_in_failed(state: &AppState, error: &ApiError) -> Response {
    failure(state, "The sign-in did not finish", error)
}

/// `GET /_/auth/verify?token=…`: the confirmation button.
pub fn verify_form(state: &AppState, token: &str) -> Response {
    let body = format!(
        "<form method=\"post\" action=\"/_/auth/verify\"><input type=\"hidden\" name=\"token\" value=\"{}\"><button type=\"submit\">Confirm my email address</button></form>",
        escape(token)
    );
    page(
        StatusCode::OK,
        &state.schema.app.name,
        "Confirm your email address",
        &body,
    )
}

/// `POST /_/auth/verify`.
pub async fn verify(state: &AppState, token: &str) -> Response {
    match flows::confirm_email(state, token).await {
        Ok(user) => page(
            StatusCode::OK,
            &state.schema.app.name,
            "Email address confirmed",
            &format!(
                "<p><strong>{}</strong> is confirmed. You can close this page.</p>",
                escape(&user.email)
            ),
        ),
        Err(error) => failure(state, "This link does not work", &error),
    }
}

/// `GET /_/auth/reset?token=…`: the new-password form.
pub fn reset_form(state: &AppState, token: &str, problem: Option<&str>) -> Response {
    let problem = problem
        .map(|p| format!("<p class=\"error\">{}</p>", escape(p)))
        .unwrap_or_default();
    let body = format!(
        "{problem}<form method=\"post\" action=\"/_/auth/reset\"><input type=\"hidden\" name=\"token\" value=\"{}\"><label>New password<input type=\"password\" name=\"password\" autocomplete=\"new-password\" required minlength=\"{}\"></label><label>The same again<input type=\"password\" name=\"confirm\" autocomplete=\"new-password\" required></label><button type=\"submit\">Set my new password</button></form>",
        escape(token),
        state.config.auth.min_password_length
    );
    let status = if problem.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    page(status, &state.schema.app.name, "Choose a new password", &body)
}

/// `POST /_/auth/reset`.
pub async fn reset(state: &AppState, token: &str, password: String, confirm: &str) -> Response {
    if password != confirm {
        return reset_form(state, token, Some("the two passwords differ"));
    }
    match flows::confirm_reset(state, token, password).await {
        Ok((user, _)) => page(
            StatusCode::OK,
            &state.schema.app.name,
            "Password changed",
            &format!(
                "<p>The password of <strong>{}</strong> is changed, and every session of the account has ended. Sign in with the new password.</p>",
                escape(&user.email)
            ),
        ),
        Err(error) if error.code == "weak_password" => reset_form(state, token, Some(&error.message)),
        Err(error) => failure(state, "This link does not work", &error),
    }
}

/// `GET /_/auth/invitation?token=…`: what the invitation is, and one password field: the
/// password of the invited address's account, or the new account's (the link is for the
/// address's owner, so saying which it is tells nothing to anyone else).
pub async fn invitation_form(state: &AppState, token: &str, problem: Option<&str>) -> Response {
    let (invitation, org) = match super::invitations::peek(state, token).await {
        Ok(found) => found,
        Err(error) => return failure(state, "This invitation does not work", &error),
    };
    let exists = matches!(
        keel_store::system::user_by_email(&state.db, &invitation.email).await,
        Ok(Some(_))
    );
    let problem = problem
        .map(|p| format!("<p class=\"error\">{}</p>", escape(p)))
        .unwrap_or_default();
    let (label, action, autocomplete) = if exists {
        ("Your password", "Sign in and join", "current-password")
    } else {
        (
            "Choose a password for your new account",
            "Create my account and join",
            "new-password",
        )
    };
    let body = format!(
        "<p>You are invited to join <strong>{org}</strong> as <strong>{role}</strong> with <strong>{email}</strong>.</p>{problem}<form method=\"post\" action=\"/_/auth/invitation\"><input type=\"hidden\" name=\"token\" value=\"{token}\"><label>{label}<input type=\"password\" name=\"password\" autocomplete=\"{autocomplete}\" required></label><button type=\"submit\">{action}</button></form>",
        org = escape(&org.name),
        role = escape(&invitation.role),
        email = escape(&invitation.email),
        token = escape(token),
    );
    let status = if problem.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    page(status, &state.schema.app.name, "Join an org", &body)
}

/// `POST /_/auth/invitation`: signs in (or signs up) the invited address and accepts.
pub async fn invitation(state: &AppState, token: &str, password: String) -> Response {
    let (invitation, _) = match super::invitations::peek(state, token).await {
        Ok(found) => found,
        Err(error) => return failure(state, "This invitation does not work", &error),
    };
    let accepted = match keel_store::system::user_by_email(&state.db, &invitation.email).await {
        Ok(Some((user, hash))) => {
            if password.len() > 1024 || !super::verify_password(password, hash).await {
                return invitation_form(state, token, Some("the password is wrong")).await;
            }
            let principal = keel_store::system::Principal::User {
                user,
                session: uuid::Uuid::nil(),
                expires_at: chrono::Utc::now(),
                seen_at: None,
            };
            super::invitations::accept(state, &principal, token).await
        }
        Ok(None) => super::invitations::sign_up(state, token, None, password, None).await,
        Err(error) => Err(error.into()),
    };
    match accepted {
        Ok(accepted) => {
            // The page signs nobody in: the app's own sign-in does, with the password.
            page(
                StatusCode::OK,
                &state.schema.app.name,
                "You joined",
                &format!(
                    "<p><strong>{}</strong> is now a member of <strong>{}</strong> as {}. Sign in to the app with this address and password.</p>",
                    escape(&accepted.user.email),
                    escape(&accepted.org.name),
                    escape(&accepted.role)
                ),
            )
        }
        Err(error) if error.code == "weak_password" => invitation_form(state, token, Some(&error.message)).await,
        Err(error) => failure(state, "This invitation does not work", &error),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_is_escaped() {
        assert_eq!(
            super::escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
