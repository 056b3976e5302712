//! Route classes: which of the spec's `[rate_limits]` a request counts against, and which
//! request timeout it gets. Decided from the method and the matched route template alone.

use axum::http::Method;

/// A route class: which of the spec's `[rate_limits]` apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    Api,
    Auth,
    Upload,
    Status,
}

impl RouteClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Api => "api",
            RouteClass::Auth => "auth",
            RouteClass::Upload => "upload",
            RouteClass::Status => "status",
        }
    }
}

/// The class of a request from its method and matched route template (`None` for routes that
/// are not rate limited). A path under `/api/` that matched no route is `api`.
pub fn classify(method: &Method, route: Option<&str>, path: &str) -> Option<RouteClass> {
    let Some(route) = route else {
        return path.starts_with("/api/").then_some(RouteClass::Api);
    };
    let route = route.strip_prefix("/api/v1")?;
    if route.starts_with("/workers/") {
        return None;
    }
    Some(match (method, route) {
        (
            &Method::POST,
            "/auth/login"
            | "/auth/signup"
            | "/auth/email"
            | "/auth/verify/request"
            | "/auth/verify/confirm"
            | "/auth/password-reset/request"
            | "/auth/password-reset/confirm"
            | "/invitations/accept"
            | "/auth/mfa"
            | "/auth/mfa/totp/confirm"
            | "/auth/mfa/totp/disable",
        ) => RouteClass::Auth,
        (&Method::POST, r) if r.ends_with("/import") || r.ends_with("/files/{field}") => RouteClass::Upload,
        (&Method::GET, "/jobs/{id}") => RouteClass::Status,
        _ => RouteClass::Api,
    })
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    #[test]
    fn routes_fall_into_classes() {
        let class = |method: Method, route: &str| classify(&method, Some(route), route);
        assert_eq!(class(Method::POST, "/api/v1/auth/login"), Some(RouteClass::Auth));
        assert_eq!(class(Method::POST, "/api/v1/auth/logout"), Some(RouteClass::Api));
        assert_eq!(
            class(Method::POST, "/api/v1/orgs/{org}/{collection}/{id}/files/{field}"),
            Some(RouteClass::Upload)
        );
        assert_eq!(
            class(Method::POST, "/api/v1/global/{collection}/import"),
            Some(RouteClass::Upload)
        );
        assert_eq!(class(Method::GET, "/api/v1/jobs/{id}"), Some(RouteClass::Status));
        assert_eq!(class(Method::POST, "/api/v1/workers/claim"), None);
        assert_eq!(class(Method::GET, "/health/ready"), None);
        assert_eq!(classify(&Method::GET, None, "/api/v1/nothing"), Some(RouteClass::Api));
        assert_eq!(classify(&Method::GET, None, "/favicon.ico"), None);
    }
}
