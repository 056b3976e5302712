//! Alerts (O4): the spec's built-in rules (`keel_spec::AlertRule`, with the seeds'
//! thresholds), evaluated in-process every `alerts.evaluate_seconds` on windows of Keel's own
//! measurements, with pending → firing → resolved states; notifications to webhooks
//! (Slack-compatible JSON) and email; `GET /api/v1/admin/alerts`; and the same rules as
//! Prometheus alerting rules (`keel ops prometheus-rules`).
//!
//! Request latency and error rate are per instance (each instance sees its own traffic);
//! queue lag and backup age are shared state, evaluated by the jobs leader only, so one
//! instance notifies.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use crate::http::metrics::BUCKETS;
use chrono::{DateTime, Utc};
use keel_spec::AlertRule;
use serde::Serialize;

const SLOT_MS: i64 = 1_000;
/// One hour of 1-second slots: the longest window a rule may use.
const SLOTS: usize = 3_600;
/// The error-rate rule needs this many requests in its window.
pub const MIN_REQUESTS: u64 = 20;
/// Notifications kept for a retry when a channel fails.
const MAX_UNSENT: usize = 100;

#[derive(Clone)]
struct Slot {
    start: i64,
    requests: u64,
    errors: u64,
    buckets: [u64; 15],
}

/// API requests in 1-second slots: counts, 5xx, and the latency histogram. A window covers
/// the slots it overlaps (so up to a second more than asked).
#[derive(Default)]
pub struct Traffic {
    slots: Mutex<VecDeque<Slot>>,
}

impl Traffic {
    pub fn record(&self, now: DateTime<Utc>, status: u16, seconds: f64) {
        let start = now.timestamp_millis().div_euclid(SLOT_MS);
        let mut slots = self.slots.lock().expect("traffic lock");
        if slots.back().is_none_or(|s| s.start != start) {
            slots.push_back(Slot {
                start,
                requests: 0,
                errors: 0,
                buckets: [0; 15],
            });
            while slots.len() > SLOTS {
                slots.pop_front();
            }
        }
        let slot = slots.back_mut().expect("a slot");
        slot.requests += 1;
        if status >= 500 {
            slot.errors += 1;
        }
        let bucket = BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(BUCKETS.len());
        slot.buckets[bucket] += 1;
    }

    fn window(&self, now: DateTime<Utc>, window_ms: u64) -> (u64, u64, [u64; 15]) {
        let from = (now.timestamp_millis() - window_ms as i64).div_euclid(SLOT_MS);
        let slots = self.slots.lock().expect("traffic lock");
        let mut total = (0, 0, [0u64; 15]);
        for slot in slots.iter().filter(|s| s.start >= from) {
            total.0 += slot.requests;
            total.1 += slot.errors;
            for (sum, count) in total.2.iter_mut().zip(slot.buckets) {
                *sum += count;
            }
        }
        total
    }

    /// The 95th percentile of latency over the window, in milliseconds, estimated from the
    /// buckets as `histogram_quantile` does (linear within a bucket).
    pub fn p95_ms(&self, now: DateTime<Utc>, window_ms: u64) -> Option<f64> {
        let (requests, _, buckets) = self.window(now, window_ms);
        quantile(0.95, requests, &buckets).map(|seconds| seconds * 1000.0)
    }

    /// The last `points` whole minutes (oldest first), each with its requests, 5xx answers
    /// and latency percentiles: what the console's overview draws.
    pub fn minutes(&self, now: DateTime<Utc>, points: usize) -> Vec<Minute> {
        let per = 60_000 / SLOT_MS;
        let this = now.timestamp_millis().div_euclid(SLOT_MS).div_euclid(per);
        let first = this - points as i64 + 1;
        let mut out: Vec<(u64, u64, [u64; 15])> = vec![(0, 0, [0; 15]); points];
        let slots = self.slots.lock().expect("traffic lock");
        for slot in slots.iter() {
            let minute = slot.start.div_euclid(per);
            if minute < first || minute > this {
                continue;
            }
            let total = &mut out[(minute - first) as usize];
            total.0 += slot.requests;
            total.1 += slot.errors;
            for (sum, count) in total.2.iter_mut().zip(slot.buckets) {
                *sum += count;
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, (requests, errors, buckets))| {
                let ms = |q: f64| quantile(q, requests, &buckets).map(|s| (s * 1_000_000.0).round() / 1000.0);
                Minute {
                    at: DateTime::from_timestamp_millis((first + i as i64) * per * SLOT_MS).unwrap_or(now),
                    requests,
                    errors,
                    p50_ms: ms(0.50),
                    p95_ms: ms(0.95),
                    p99_ms: ms(0.99),
                }
            })
            .collect()
    }

    /// The share of 5xx answers over the window (none below `MIN_REQUESTS` requests).
    pub fn error_rate(&self, now: DateTime<Utc>, window_ms: u64) -> Option<f64> {
        let (requests, errors, _) = self.window(now, window_ms);
        (requests >= MIN_REQUESTS).then(|| errors as f64 / requests as f64)
    }
}

/// One minute of API traffic.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Minute {
    pub at: DateTime<Utc>,
    pub requests: u64,
    /// 5xx answers.
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

fn quantile(q: f64, total: u64, buckets: &[u64; 15]) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, count) in buckets.iter().enumerate() {
        if (seen + count) as f64 >= rank && *count > 0 {
            let Some(&upper) = BUCKETS.get(i) else {
                // Beyond the last bucket: its bound, as Prometheus answers.
                return Some(*BUCKETS.last().expect("buckets"));
            };
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            return Some(lower + (upper - lower) * (rank - seen as f64) / *count as f64);
        }
        seen += count;
    }
    Some(*BUCKETS.last().expect("buckets"))
}

/// A rule's state as `GET /api/v1/admin/alerts` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleState {
    pub name: String,
    pub severity: String,
    /// `inactive`, `pending` or `firing`.
    pub state: &'static str,
    /// The latest value (absent without data, e.g. no traffic).
    pub value: Option<f64>,
    pub threshold: f64,
    pub unit: &'static str,
    pub for_seconds: f64,
    /// Since when the condition holds (pending or firing).
    pub since: Option<DateTime<Utc>>,
    pub detail: Option<String>,
    pub enabled: bool,
}

/// A transition to tell people about.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Notification {
    pub alert: String,
    pub severity: String,
    /// `firing` or `resolved`.
    pub state: &'static str,
    pub value: Option<f64>,
    pub threshold: f64,
    pub unit: &'static str,
    pub summary: String,
    pub at: DateTime<Utc>,
}

pub fn unit(rule: &str) -> &'static str {
    match rule {
        "api_latency" | "api_latency_warning" => "ms",
        "queue_lag" | "backup" => "s",
        _ => "ratio",
    }
}

fn describe(rule: &str) -> &'static str {
    match rule {
        "api_latency" | "api_latency_warning" => "p95 API latency",
        "error_rate" => "share of API requests answered 5xx",
        "db_pool" => "share of database connections in use",
        "disk" => "share of the data directory's disk in use",
        "memory" => "share of the memory limit in use",
        "queue_lag" => "wait of the oldest runnable job",
        "backup" => "age of the latest successful backup",
        _ => "value",
    }
}

/// The rules and their states.
pub struct Alerts {
    states: Mutex<Vec<(AlertRule, RuleState)>>,
    unsent: Mutex<Vec<Notification>>,
    pub traffic: Traffic,
}

/// A measured value with an optional explanation (e.g. why a backup counts as late).
pub type Value = (Option<f64>, Option<String>);

impl Alerts {
    pub fn new(rules: &[AlertRule]) -> Alerts {
        let states = rules
            .iter()
            .map(|rule| {
                let state = RuleState {
                    name: rule.name.clone(),
                    severity: rule.severity.clone(),
                    state: "inactive",
                    value: None,
                    threshold: rule.threshold,
                    unit: unit(&rule.name),
                    for_seconds: rule.for_ms as f64 / 1000.0,
                    since: None,
                    detail: None,
                    enabled: rule.enabled,
                };
                (rule.clone(), state)
            })
            .collect();
        Alerts {
            states: Mutex::new(states),
            unsent: Mutex::new(vec![]),
            traffic: Traffic::default(),
        }
    }

    pub fn rules(&self) -> Vec<AlertRule> {
        self.states
            .lock()
            .expect("alerts lock")
            .iter()
            .map(|(r, _)| r.clone())
            .collect()
    }

    pub fn states(&self) -> Vec<RuleState> {
        self.states
            .lock()
            .expect("alerts lock")
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Moves every rule on with its value (`value` gives `None` for a rule this instance does
    /// not evaluate, which leaves it as it is): the notifications to send.
    pub fn step(&self, now: DateTime<Utc>, value: impl Fn(&AlertRule) -> Option<Value>) -> Vec<Notification> {
        let mut notifications = vec![];
        let mut states = self.states.lock().expect("alerts lock");
        for (rule, state) in states.iter_mut().filter(|(rule, _)| rule.enabled) {
            let Some((measured, detail)) = value(rule) else {
                continue;
            };
            state.value = measured.filter(|v| v.is_finite());
            state.detail = detail;
            let holds = measured.is_some_and(|v| v > rule.threshold);
            let held_for = |since: DateTime<Utc>| (now - since).num_milliseconds() >= rule.for_ms as i64;
            let next = match (state.state, holds) {
                ("inactive", true) if rule.for_ms == 0 => Some(("firing", Some(now))),
                ("inactive", true) => Some(("pending", Some(now))),
                ("pending", true) if state.since.is_some_and(held_for) => Some(("firing", state.since)),
                ("pending", false) | ("firing", false) => Some(("inactive", None)),
                _ => None,
            };
            if let Some((to, since)) = next {
                let from = state.state;
                state.state = to;
                state.since = since;
                let told = match (from, to) {
                    (_, "firing") => Some("firing"),
                    ("firing", "inactive") => Some("resolved"),
                    _ => None,
                };
                if let Some(told) = told {
                    let value = match state.value {
                        Some(v) => format!("{v:.3} {}", state.unit),
                        None => "no value".into(),
                    };
                    let mut summary = format!(
                        "{} {}: {} is {value} (threshold {} {})",
                        rule.severity.to_uppercase(),
                        rule.name,
                        describe(&rule.name),
                        rule.threshold,
                        state.unit
                    );
                    if let Some(detail) = &state.detail {
                        summary.push_str(&format!("; {detail}"));
                    }
                    if told == "resolved" {
                        summary = format!("RESOLVED {}: {} is back to {value}", rule.name, describe(&rule.name));
                    }
                    notifications.push(Notification {
                        alert: rule.name.clone(),
                        severity: rule.severity.clone(),
                        state: told,
                        value: state.value,
                        threshold: rule.threshold,
                        unit: state.unit,
                        summary,
                        at: now,
                    });
                }
            }
        }
        notifications
    }

    /// The notifications a failed channel left, taken for a new attempt.
    pub fn take_unsent(&self) -> Vec<Notification> {
        std::mem::take(&mut *self.unsent.lock().expect("alerts lock"))
    }

    /// Keeps notifications no channel took for the next evaluation (the newest
    /// `MAX_UNSENT`).
    pub fn keep_unsent(&self, failed: Vec<Notification>) {
        let mut unsent = self.unsent.lock().expect("alerts lock");
        unsent.extend(failed);
        let excess = unsent.len().saturating_sub(MAX_UNSENT);
        unsent.drain(..excess);
    }
}

/// The backup rule's value: the latest success's age in seconds; infinite when the latest
/// run failed; the instance's uptime when no backup ever succeeded.
pub fn backup_value(
    now: DateTime<Utc>,
    success: Option<keel_store::backups::BackupRun>,
    last: Option<keel_store::backups::BackupRun>,
    uptime: Duration,
) -> Value {
    if let Some(failed) = last.as_ref().filter(|run| run.state == "failed") {
        let error = failed.error.clone().unwrap_or_default();
        return (Some(f64::INFINITY), Some(format!("the latest backup failed: {error}")));
    }
    match success {
        Some(run) => {
            let finished = run.finished_at.unwrap_or(run.started_at);
            let age = (now - finished).num_milliseconds() as f64 / 1000.0;
            (Some(age), Some(format!("latest backup {}", run.name)))
        }
        None => (Some(uptime.as_secs_f64()), Some("no backup has succeeded yet".into())),
    }
}

/// The same rules as Prometheus alerting rules (YAML), for a Prometheus that scrapes every
/// instance's `/metrics`.
pub fn prometheus_rules(rules: &[AlertRule], app: &str) -> String {
    let api = r#"route=~"/api/.*""#;
    let mut out = format!(
        "# Keel's alert rules for the app {app}, as Prometheus alerting rules.\n# Generated by `keel ops prometheus-rules`; check with `promtool check rules FILE`.\ngroups:\n  - name: keel\n    rules:\n"
    );
    for rule in rules.iter().filter(|r| r.enabled) {
        let window = format!("{}s", (rule.window_ms / 1000).max(1));
        let t = rule.threshold;
        let expr = match rule.name.as_str() {
            "api_latency" | "api_latency_warning" => format!(
                "histogram_quantile(0.95, sum by (le) (rate(keel_http_request_duration_seconds_bucket{{{api}}}[{window}]))) > {}",
                t / 1000.0
            ),
            "error_rate" => format!(
                "(sum(rate(keel_http_requests_total{{{api},status=~\"5..\"}}[{window}])) / sum(rate(keel_http_requests_total{{{api}}}[{window}]))) > {t} and sum(increase(keel_http_requests_total{{{api}}}[{window}])) >= {MIN_REQUESTS}"
            ),
            "db_pool" => format!(
                "keel_db_pool_connections{{state=\"in_use\"}} / ignoring(state) keel_db_pool_max_connections > {t}"
            ),
            "disk" => format!("1 - keel_disk_available_bytes / keel_disk_total_bytes > {t}"),
            "memory" => format!("process_resident_memory_bytes / keel_memory_limit_bytes > {t}"),
            "queue_lag" => format!("max(keel_jobs_oldest_available_seconds) > {t}"),
            "backup" => format!(
                "(time() - max(keel_backup_last_success_timestamp_seconds) > {t}) or (max(keel_backup_last_failed) == 1)"
            ),
            _ => continue,
        };
        let title: String = rule
            .name
            .split('_')
            .map(|w| {
                let mut chars = w.chars();
                chars
                    .next()
                    .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
                    .unwrap_or_default()
            })
            .collect();
        let summary = format!(
            "{} above {t} {} (docs/OPERATIONS.md, Alerts: {})",
            describe(&rule.name),
            unit(&rule.name),
            rule.name
        );
        // Single-quoted YAML scalars: a quote is doubled.
        let quoted = |text: &str| format!("'{}'", text.replace('\'', "''"));
        out.push_str(&format!(
            "      - alert: Keel{title}\n        expr: {}\n        for: {}s\n        labels:\n          severity: {}\n          app: {}\n        annotations:\n          summary: {}\n",
            quoted(&expr),
            rule.for_ms / 1000,
            rule.severity,
            quoted(app),
            quoted(&summary)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p95_is_estimated_from_the_buckets_like_histogram_quantile() {
        let mut buckets = [0u64; 15];
        // 90 requests at 1–2.5 ms, 10 at 0.5–1 s: the 95th is in the second group.
        buckets[2] = 90;
        buckets[10] = 10;
        let p95 = quantile(0.95, 100, &buckets).unwrap();
        assert!((p95 - 0.75).abs() < 1e-9, "{p95}");
        buckets[14] = 100;
        assert_eq!(quantile(0.95, 200, &buckets), Some(10.0));
        assert_eq!(quantile(0.95, 0, &[0; 15]), None);
    }
}
