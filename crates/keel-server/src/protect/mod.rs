//! Traffic protection (S4, S5): who the client is (its address, behind trusted proxies only),
//! IP allow and deny lists, rate limits by route class (GCRA, shared through Redis when it
//! is configured), and a per-user cap on uploads in progress.
//!
//! A request is classified by its matched route: `auth` (sign-up, log-in), `upload` (file
//! uploads, imports), `status` (job-status polls), `api` (every other API route). Each class
//! has limits per IP, per user (or API key) and per org (the org in the path); the `api`
//! class's limits count every API request, the others' add to them. Health checks, metrics
//! and the external workers' routes (worker keys, admin-issued) are not rate limited.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::HeaderMap;
use ipnet::IpNet;
use keel_spec::{Rate, RateClass, RateLimitsSpec};
use keel_store::system::Principal;

use crate::http::route_class::RouteClass;
use crate::http::settings::parse_cidrs;
use crate::http::shared::{LocalLimits, RateKey};

pub mod layer;

/// The spec's limits of a route class.
fn class_limits(class: RouteClass, spec: &RateLimitsSpec) -> &RateClass {
    match class {
        RouteClass::Api => &spec.api,
        RouteClass::Auth => &spec.auth,
        RouteClass::Upload => &spec.upload,
        RouteClass::Status => &spec.status,
    }
}

/// The protection settings in use, built once from the config and the spec.
pub struct Protection {
    enabled: bool,
    trusted: Vec<IpNet>,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    spec: RateLimitsSpec,
    upload_timeout: Duration,
    pub local: LocalLimits,
}

impl Protection {
    pub fn new(config: &crate::Config, spec: &RateLimitsSpec) -> Protection {
        // `Config::validate` parses the same lists, so a config that reached here parses.
        let parse = |list: &[String]| parse_cidrs(list).unwrap_or_default();
        Protection {
            enabled: config.server.rate_limits,
            trusted: parse(&config.server.trusted_proxies),
            allow: parse(&config.server.allow_ips),
            deny: parse(&config.server.deny_ips),
            spec: spec.clone(),
            upload_timeout: Duration::from_millis(config.server.upload_timeout_ms),
            local: LocalLimits::default(),
        }
    }

    /// The client: the peer, or, when the peer is a trusted proxy, the last address in
    /// `X-Forwarded-For` that is not a trusted proxy (the one the nearest proxy saw).
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.is_trusted(Some(peer)) {
            return Some(peer);
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|value| value.to_str().unwrap_or("").split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            // A malformed hop ends the chain: the last good address is the client.
            let Ok(address) = hop.parse::<IpAddr>().map(|a| a.to_canonical()) else {
                break;
            };
            client = address;
            if !self.is_trusted(Some(address)) {
                break;
            }
        }
        Some(client)
    }

    /// Whether the socket's peer is one of `server.trusted_proxies`.
    pub fn is_trusted(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|peer| self.trusted.iter().any(|net| net.contains(&peer.to_canonical())))
    }

    fn ip_allowed(&self, ip: Option<IpAddr>) -> bool {
        match ip {
            Some(ip) => {
                !self.deny.iter().any(|net| net.contains(&ip))
                    && (self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip)))
            }
            // No peer address (not served from a socket): only when no list restricts.
            None => self.allow.is_empty(),
        }
    }

    /// The request timeout of a route class.
    pub fn timeout(&self, class: Option<RouteClass>, default: Duration) -> Duration {
        match class {
            Some(RouteClass::Upload) => self.upload_timeout.max(default),
            _ => default,
        }
    }

    fn needs_principal(&self, class: RouteClass) -> bool {
        let wants = |c: &RateClass| !c.per_user.is_empty() || !c.per_org.is_empty() || c.concurrent_per_user.is_some();
        wants(&self.spec.api) || wants(class_limits(class, &self.spec))
    }

    /// The limits a request counts against: its class's and, for the other classes, `api`'s.
    fn keys(&self, class: RouteClass, ip: Option<IpAddr>, caller: Option<&str>, org: Option<&str>) -> Vec<RateKey> {
        let mut keys = vec![];
        let ip = ip.map(ip_key);
        let mut add = |class: RouteClass| {
            let limits = class_limits(class, &self.spec);
            let scopes = [
                ("ip", ip.as_deref(), &limits.per_ip),
                ("user", caller, &limits.per_user),
                ("org", org, &limits.per_org),
            ];
            for (scope, who, rates) in scopes {
                let Some(who) = who else { continue };
                for rate in rates {
                    keys.push(rate_key(class, scope, who, rate));
                }
            }
        };
        add(class);
        if class != RouteClass::Api {
            add(RouteClass::Api);
        }
        keys
    }
}

fn rate_key(class: RouteClass, scope: &str, who: &str, rate: &Rate) -> RateKey {
    RateKey {
        key: format!("{}:{scope}:{}:{who}", class.as_str(), rate.period_ms),
        limit: u64::from(rate.limit),
        period: Duration::from_millis(rate.period_ms),
    }
}

/// The key of an address: IPv4 whole, IPv6 by its /64 (one subscriber's network).
pub fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let net = ipnet::Ipv6Net::new(v6, 64).map(|n| n.trunc()).unwrap_or_default();
            net.to_string()
        }
    }
}

/// Who a per-user limit counts: the user, or the API key.
fn caller_key(principal: &Principal) -> String {
    match principal {
        Principal::User { user, .. } => format!("u{}", user.id.simple()),
        Principal::ApiKey(key) => format!("k{}", key.id.simple()),
    }
}

/// The org slug of an `/api/v1/orgs/{org}/…` route.
fn org_of<'a>(route: Option<&str>, path: &'a str) -> Option<&'a str> {
    route.filter(|r| r.starts_with("/api/v1/orgs/{org}"))?;
    path.split('/').nth(4).filter(|s| !s.is_empty() && s.len() <= 63)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn protection(trusted: &[&str]) -> Protection {
        let mut config = crate::Config::default();
        config.server.trusted_proxies = trusted.iter().map(|s| s.to_string()).collect();
        Protection::new(&config, &RateLimitsSpec::default())
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let direct = protection(&[]);
        assert_eq!(
            direct.client_ip(ip("203.0.113.9"), &forwarded("1.2.3.4")),
            ip("203.0.113.9"),
            "an untrusted peer's header is ignored"
        );
        let behind = protection(&["10.0.0.0/8", "192.0.2.1"]);
        assert_eq!(
            behind.client_ip(ip("10.1.1.1"), &forwarded("1.2.3.4, 198.51.100.7, 192.0.2.1")),
            ip("198.51.100.7"),
            "the last untrusted hop, not the spoofable first"
        );
        assert_eq!(
            behind.client_ip(ip("10.1.1.1"), &forwarded("garbage, 198.51.100.7")),
            ip("198.51.100.7")
        );
        assert_eq!(
            behind.client_ip(ip("10.1.1.1"), &forwarded("198.51.100.7, garbage")),
            ip("10.1.1.1"),
            "a malformed nearest hop leaves the proxy as the client"
        );
        assert_eq!(behind.client_ip(ip("10.1.1.1"), &HeaderMap::new()), ip("10.1.1.1"));
        assert_eq!(
            direct.client_ip(ip("::ffff:203.0.113.9"), &HeaderMap::new()),
            ip("203.0.113.9"),
            "IPv4-mapped addresses are IPv4"
        );
        assert_eq!(ip_key("2001:db8:1:2:3:4:5:6".parse().unwrap()), "2001:db8:1:2::/64");
    }

    #[test]
    fn routes_fall_into_classes() {
        assert_eq!(
            org_of(Some("/api/v1/orgs/{org}/{collection}"), "/api/v1/orgs/acme/tasks"),
            Some("acme")
        );
        assert_eq!(
            org_of(Some("/api/v1/global/{collection}"), "/api/v1/global/tasks"),
            None
        );
        assert!(parse_cidrs(&["10.0.0.0/8".into(), "::1".into()]).is_ok());
        assert!(parse_cidrs(&["10.0.0.0/33".into()]).is_err());
    }
}
