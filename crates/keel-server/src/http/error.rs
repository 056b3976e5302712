//! `ApiError` and the one table of error codes (invariant 7). Codes are snake_case and are
//! never renamed or reused; `docs/ERRORS.md` is generated from `CODES` and kept fresh by a test.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Every error code with its HTTP status and meaning.
pub const CODES: &[(&str, u16, &str)] = &[
    (
        "bad_request",
        400,
        "The request is malformed in a way no more specific code covers.",
    ),
    (
        "invalid_json",
        400,
        "The body is not valid JSON, or not the JSON object expected.",
    ),
    (
        "invalid_query",
        400,
        "A query-string parameter is unknown, repeated or malformed.",
    ),
    (
        "validation_failed",
        400,
        "One or more fields failed validation; `details` lists each field with its own code.",
    ),
    ("invalid_filter", 400, "The filter expression cannot be parsed."),
    (
        "unknown_field",
        400,
        "A filter, sort, projection or expand names a field the collection does not have; `details.field` names it.",
    ),
    (
        "invalid_value",
        400,
        "A filter compares a field with a value of the wrong type; `details.field` names it.",
    ),
    ("invalid_sort", 400, "The sort parameter is malformed."),
    (
        "invalid_cursor",
        400,
        "The `after` cursor was not made by this server for this sort order.",
    ),
    (
        "invalid_aggregate",
        400,
        "The aggregate's group or measures are malformed.",
    ),
    (
        "limit_too_large",
        400,
        "`limit` exceeds the maximum page size; nothing is silently capped.",
    ),
    (
        "search_not_enabled",
        400,
        "`q` was given for a collection with no `search` fields.",
    ),
    ("weak_password", 400, "The password does not meet the password policy."),
    (
        "invalid_role",
        400,
        "The role is not one of the app's roles, or is above the caller's own.",
    ),
    ("unauthenticated", 401, "No valid session token or API key was sent."),
    ("invalid_credentials", 401, "The email or password is wrong."),
    (
        "invalid_code",
        401,
        "The second-factor code is wrong, expired, or was used already (a code works once).",
    ),
    (
        "invalid_token",
        400,
        "The verification or reset token is unknown, used, expired, or for something else; ask for a new link.",
    ),
    ("forbidden", 403, "The caller may not do this (role or access rule)."),
    ("signup_closed", 403, "Self sign-up is disabled on this server."),
    (
        "account_disabled",
        403,
        "An operator disabled this account (`keel users disable`); given only for the right password.",
    ),
    (
        "email_not_verified",
        403,
        "`auth.require_verified_email` is on and the caller has not verified their address (`POST /api/v1/auth/verify/request`).",
    ),
    (
        "invitation_for_another_address",
        403,
        "The invitation is for another email address than the caller's account.",
    ),
    (
        "email_unavailable",
        403,
        "The server sends no email (`smtp.host` is not set), so this flow is not available.",
    ),
    (
        "not_found",
        404,
        "No such record, org or resource, or it belongs to an org the caller cannot see.",
    ),
    ("route_not_found", 404, "No such route."),
    ("collection_not_found", 404, "The app has no collection of that name."),
    ("method_not_allowed", 405, "The route exists but not with this method."),
    (
        "read_only_collection",
        405,
        "The collection (e.g. the activity log) cannot be written through the API.",
    ),
    (
        "unique_violation",
        409,
        "A unique field or index already has this value; `details.fields` names the fields.",
    ),
    (
        "still_referenced",
        409,
        "Other records still point at this one (on_delete = restrict).",
    ),
    ("email_taken", 409, "A user with this email exists."),
    (
        "mfa_required",
        403,
        "The org requires a second factor of its members: enrol one (`POST /api/v1/auth/mfa/totp`) to use it.",
    ),
    (
        "invalid_state",
        400,
        "The provider sign-in is unknown, finished already, expired, or was started in another browser; start again.",
    ),
    (
        "redirect_not_allowed",
        400,
        "The `redirect` of a provider sign-in is not on `auth.oidc_redirects`.",
    ),
    (
        "oidc_unavailable",
        502,
        "The sign-in provider cannot be reached or answers with a server error; nothing was created. Try again later.",
    ),
    (
        "oidc_rejected",
        401,
        "The sign-in provider did not confirm who signed in (a refused code, an ID token that fails its signature, issuer, audience, expiry or nonce check).",
    ),
    (
        "oidc_denied",
        403,
        "The user cancelled the sign-in at the provider, or the provider refused it.",
    ),
    (
        "oidc_email_unverified",
        403,
        "The provider did not confirm an email address for the account, so it can neither link to an account nor create one.",
    ),
    (
        "identity_taken",
        409,
        "The account at the provider is linked to another user, or the user has another account linked at this provider.",
    ),
    (
        "last_sign_in_method",
        409,
        "Unlinking would leave the account with no way to sign in; set a password or link another provider first.",
    ),
    (
        "mfa_enabled",
        409,
        "A second factor is set up already; remove it before enrolling again.",
    ),
    ("slug_taken", 409, "An org with this slug exists."),
    ("already_member", 409, "The user is already a member of the org."),
    (
        "invitation_pending",
        409,
        "The address has an open invitation to this org; resend or revoke it.",
    ),
    (
        "last_owner",
        409,
        "The change would leave the org without a member in the top role.",
    ),
    (
        "unknown_job_kind",
        400,
        "No job kind of this name is declared in the spec.",
    ),
    (
        "job_not_enqueueable",
        403,
        "The caller's role may not enqueue this job kind through the API (see the kind's `enqueue_role`).",
    ),
    (
        "job_state_conflict",
        409,
        "The job is not in a state that allows this (e.g. retrying a running job).",
    ),
    (
        "lease_lost",
        409,
        "The worker no longer holds this job's lease (it expired and was rescued, or the job was cancelled): its result is not recorded.",
    ),
    (
        "version_mismatch",
        412,
        "`If-Match` does not match the record's current version; `details.current_version` has it.",
    ),
    ("payload_too_large", 413, "The body exceeds the configured limit."),
    (
        "rate_limited",
        429,
        "Too many requests from this address, user or org for the route's class (see `[rate_limits]`); retry after `Retry-After` seconds. `details` has the class, the scope (ip, user, org), the limit and its period.",
    ),
    (
        "login_locked",
        429,
        "Too many failed logins for this account or from this address: logins are refused until `Retry-After` seconds have passed (the lock doubles with each further failure).",
    ),
    (
        "too_many_concurrent",
        429,
        "The user already has the most uploads or imports in progress that `rate_limits.upload.concurrent_per_user` allows; retry when one finishes.",
    ),
    (
        "csrf_failed",
        403,
        "A write authenticated by the session cookie came without the session's `X-CSRF-Token`, or from an origin that is neither this server's nor in `server.cors_origins`.",
    ),
    (
        "key_retire_refused",
        409,
        "The signing key cannot be retired: it is the one that signs (rotate first), it was replaced less than an hour ago (links it signed may be live; `force` overrides), or it is retired already.",
    ),
    (
        "ip_blocked",
        403,
        "The client's address is in `server.deny_ips`, or not in a non-empty `server.allow_ips` (or, for the console and `/api/v1/admin/*`, `console.allow_ips`).",
    ),
    (
        "unsupported_media_type",
        415,
        "The body's `Content-Type` is not one the route accepts: `application/json`, or `text/csv` / `application/x-ndjson` for imports.",
    ),
    (
        "invalid_file",
        400,
        "The upload is empty, or the field named is not a file field; `details.field` names it.",
    ),
    (
        "file_too_large",
        413,
        "The file is larger than the field's `max_size`; `details.max_bytes` has the limit.",
    ),
    (
        "invalid_signature",
        403,
        "A signed file link whose signature does not match (altered, or made by another deployment).",
    ),
    (
        "link_expired",
        403,
        "A signed file link past its expiry; ask for a new one.",
    ),
    (
        "quota_exceeded",
        413,
        "The upload would take the user's or the org's stored files past the quota in `[storage]`; `details` has the scope, the quota, the bytes used and the file's size.",
    ),
    (
        "file_type_not_allowed",
        415,
        "The file's type, read from its bytes (not the client's claim), is not one the field accepts; `details` has both.",
    ),
    (
        "too_many_files",
        409,
        "A multiple file field already holds its most files (100); delete one first.",
    ),
    (
        "invalid_import",
        400,
        "The import cannot start: an empty file, a header column that is not a field, two columns for one field, a missing required field, or a mapping to no field; `details` names them.",
    ),
    (
        "import_rejected",
        422,
        "An all-or-nothing import found invalid rows and wrote nothing; `details` is the import report, with the row, line, column and reason of each.",
    ),
    (
        "database_busy",
        503,
        "No database connection became free in time; retry after `Retry-After` seconds.",
    ),
    (
        "database_timeout",
        503,
        "A database statement ran past its timeout and was cancelled.",
    ),
    (
        "request_timeout",
        503,
        "The request ran past the server's request timeout.",
    ),
    (
        "too_many_streams",
        503,
        "This instance holds as many realtime streams as it may (in all, for this user or key, or for this address: `realtime.max_streams*`); retry after `Retry-After` seconds, or close a stream.",
    ),
    (
        "realtime_disabled",
        404,
        "Realtime streams are turned off on this server (`realtime.enabled = false`).",
    ),
    (
        "bad_event_id",
        400,
        "`Last-Event-ID` is not an event id this server sent (`XID-SEQ` on record streams, `done` on job streams).",
    ),
    ("unavailable", 503, "A dependency is unavailable."),
    (
        "internal",
        500,
        "An unexpected error; the response says nothing more, the log has the cause with the request id.",
    ),
];

/// An error answered to the client in the standard envelope.
#[derive(Debug)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Logged with the request id, never sent.
    pub cause: Option<String>,
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

pub fn status_of(code: &str) -> StatusCode {
    let status = CODES
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, s, _)| *s)
        .unwrap_or(500);
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> ApiError {
        debug_assert!(CODES.iter().any(|(c, _, _)| *c == code), "unknown error code {code}");
        ApiError {
            code,
            message: message.into(),
            details: None,
            cause: None,
            retry_after: None,
        }
    }
    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }
    pub fn not_found() -> ApiError {
        ApiError::new("not_found", "not found")
    }
    pub fn forbidden() -> ApiError {
        ApiError::new("forbidden", "you may not do this")
    }
    /// An unexpected failure: the client sees a generic message, the log sees `cause`.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        ApiError {
            code: "internal",
            message: "internal error".into(),
            details: None,
            cause: Some(cause.to_string()),
            retry_after: None,
        }
    }
    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }
}

/// The cause of an error response, for the request middleware to log with the request id.
#[derive(Clone, Debug)]
pub struct ErrorCause(pub String);

/// The code of an error response, for the request middleware's per-code counter.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = json!({
            "error": {
                "code": self.code,
                "message": if self.code == "internal" { "internal error".to_string() } else { self.message.clone() },
                "request_id": crate::http::request_id::current_request_id(),
                "details": self.details,
            }
        });
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        let cause = self.cause.unwrap_or(self.message);
        response
            .extensions_mut()
            .insert(ErrorCause(format!("{}: {cause}", self.code)));
        response.extensions_mut().insert(ErrorCode(self.code));
        response
    }
}

impl From<keel_store::StoreError> for ApiError {
    fn from(error: keel_store::StoreError) -> ApiError {
        use keel_store::StoreError;
        match error {
            StoreError::NotFound => ApiError::not_found(),
            StoreError::Busy => ApiError {
                retry_after: Some(1),
                ..ApiError::new("database_busy", "the database is busy; retry shortly")
            },
            StoreError::Timeout => ApiError {
                retry_after: Some(1),
                ..ApiError::new("database_timeout", "the query took too long and was cancelled")
            },
            StoreError::Unavailable(cause) => ApiError {
                cause: Some(cause),
                retry_after: Some(5),
                ..ApiError::new("unavailable", "the database is unavailable")
            },
            StoreError::ForeignKey(constraint) => ApiError {
                cause: constraint,
                ..ApiError::new("still_referenced", "other records still refer to this one")
            },
            StoreError::Unique { constraint, columns } => ApiError {
                cause: Some(format!("{constraint:?} {columns:?}")),
                ..ApiError::new("unique_violation", "a record with this value already exists")
            },
            StoreError::Other(cause) => ApiError::internal(cause),
        }
    }
}

impl From<keel_query::QueryError> for ApiError {
    fn from(error: keel_query::QueryError) -> ApiError {
        let details = match &error.field {
            Some(field) => json!({ "field": field, "position": error.position }),
            None => json!({ "position": error.position }),
        };
        ApiError::new(error.code, error.message).with_details(details)
    }
}

/// `docs/ERRORS.md`, generated from [`CODES`].
pub fn errors_markdown() -> String {
    let mut out = String::from(
        "# Error codes\n\nEvery error answers with the same envelope:\n\n```json\n{\"error\": {\"code\": \"snake_case_code\", \"message\": \"…\", \"request_id\": \"…\", \"details\": null}}\n```\n\nCodes are stable: never renamed, never reused.\n5xx bodies say nothing internal; the log line with the same `request_id` has the cause.\nThis file is generated from `crates/keel-server/src/error.rs` (a test fails when it is stale).\n\n| code | status | meaning |\n| --- | --- | --- |\n",
    );
    for (code, status, meaning) in CODES {
        out.push_str(&format!("| `{code}` | {status} | {meaning} |\n"));
    }
    out
}
