//! `[rate_limits]`: per route class, `per_ip`, `per_user` and `per_org` rates (`"10/m"`,
//! `"10/5m"`, a list of them, or `"off"`) and `concurrent_per_user`.

use super::{Entry, Node, Reader, int_in, table_entries, unknown_key};
use crate::model::*;

const CLASSES: &[&str] = &["api", "auth", "upload", "status"];
const KEYS: &[&str] = &["per_ip", "per_user", "per_org", "concurrent_per_user"];

/// A rate such as `"10/m"`, `"100/s"` or `"10/5m"`: requests per period (a duration whose
/// number may be left out).
pub fn parse_rate(text: &str) -> Option<Rate> {
    let (limit, period) = text.trim().split_once('/')?;
    let limit: u32 = limit.trim().parse().ok().filter(|n| (1..=10_000_000).contains(n))?;
    let period = period.trim();
    let period_ms = if period.starts_with(|c: char| c.is_ascii_digit()) {
        super::jobs::parse_duration_ms(period)?
    } else {
        super::jobs::parse_duration_ms(&format!("1{period}"))?
    };
    // At least a second, at most a day; and at most one request per microsecond.
    (1_000..=86_400_000).contains(&period_ms).then_some(())?;
    (u64::from(limit) <= period_ms * 1_000).then_some(Rate { limit, period_ms })
}

fn rates(reader: &mut Reader, entry: &Entry, path: &str) -> Option<Vec<Rate>> {
    const HINT: &str = "a rate is requests per period, e.g. \"10/m\", \"100/s\" or \"10/5m\" \
        (at least 1 s, at most 1 d, at most 10,000,000 requests), a list of rates, or \"off\"";
    let items = match entry.value.node() {
        Node::Str("off") => return Some(vec![]),
        Node::Str(_) => vec![entry.value],
        Node::Array(items) if !items.is_empty() && items.len() <= 4 => items,
        _ => {
            reader.problem(entry.span(), path, HINT);
            return None;
        }
    };
    let mut out = vec![];
    for item in items {
        match item.node() {
            Node::Str(text) => match parse_rate(text) {
                Some(rate) if out.iter().all(|r: &Rate| r.period_ms != rate.period_ms) => out.push(rate),
                Some(_) => reader.problem(item.span(), path, "two rates over the same period"),
                None => reader.problem(item.span(), path, HINT),
            },
            _ => reader.problem(item.span(), path, HINT),
        }
    }
    Some(out)
}

pub(super) fn rate_limits(reader: &mut Reader, entry: &Entry) -> RateLimitsSpec {
    let mut spec = RateLimitsSpec::default();
    for class_entry in table_entries(reader, entry, "rate_limits") {
        let class_path = format!("rate_limits.{}", class_entry.key);
        let class = match class_entry.key {
            "api" => &mut spec.api,
            "auth" => &mut spec.auth,
            "upload" => &mut spec.upload,
            "status" => &mut spec.status,
            _ => {
                unknown_key(reader, &class_entry, &class_path, CLASSES);
                continue;
            }
        };
        for item in table_entries(reader, &class_entry, &class_path) {
            let path = format!("{class_path}.{}", item.key);
            match item.key {
                "per_ip" => class.per_ip = rates(reader, &item, &path).unwrap_or_default(),
                "per_user" => class.per_user = rates(reader, &item, &path).unwrap_or_default(),
                "per_org" => class.per_org = rates(reader, &item, &path).unwrap_or_default(),
                "concurrent_per_user" if class_entry.key == "upload" => {
                    class.concurrent_per_user = int_in(reader, &item, &path, 1, 1_000).map(|n| n as u32);
                }
                "concurrent_per_user" => reader.problem(
                    item.key_span.clone().or(item.span()),
                    &path,
                    "only the upload class has a concurrency cap",
                ),
                _ => unknown_key(reader, &item, &path, KEYS),
            }
        }
    }
    spec
}
