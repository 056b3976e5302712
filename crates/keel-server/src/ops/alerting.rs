//! Alerting at run time: measures each rule's value from the running instance (traffic
//! windows, pool, disk, memory, queue lag, backup age), moves the rules of
//! [`super::alerts::Alerts`] on, and sends what changed to the webhooks and email. Runs every
//! `alerts.evaluate_seconds` on the jobs leader and on each instance for its own traffic.

use std::time::Duration;

use chrono::Utc;

use super::alerts::Notification;
use crate::http::state::AppState;

fn record(state: &AppState, channel: &'static str, sent: Result<(), String>, notification: &Notification) -> bool {
    let result = if sent.is_ok() { "sent" } else { "failed" };
    state.metrics.counter(
        "keel_alert_notifications_total",
        &[("channel", channel.to_string()), ("result", result.to_string())],
        1,
    );
    if let Err(error) = &sent {
        tracing::warn!(channel, alert = %notification.alert, %error, "an alert notification failed; retrying at the next evaluation");
    }
    sent.is_ok()
}

/// Slack-compatible JSON: `text` for Slack, Mattermost and the like, and the fields for
/// anything else.
async fn send_webhook(url: &str, notification: &Notification, app: &str) -> Result<(), String> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client")
    });
    let mut body = serde_json::to_value(notification).expect("a notification serialises");
    body["text"] = serde_json::json!(format!("[keel {app}] {}", notification.summary));
    body["app"] = serde_json::json!(app);
    let response = client.post(url).json(&body).send().await.map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered {}", response.status()))
    }
}

/// Measures every rule's value now and moves the rules on; then notifies.
pub async fn evaluate(state: &AppState) {
    let now = Utc::now();
    let leader = state.jobs.is_leader();
    let pool = state.db.pool_state();
    let disk = crate::ops::system::disk(&state.config.app.data_dir).map(|d| d.used_ratio());
    let memory = match (
        crate::ops::system::resident_memory(),
        crate::ops::system::memory_limit(),
    ) {
        (Some(rss), Some(limit)) if limit > 0 => Some(rss as f64 / limit as f64),
        _ => None,
    };
    let queue_lag = if leader {
        tokio::time::timeout(Duration::from_secs(2), crate::jobs::queue_stats(state))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|stats| stats.iter().map(|q| q.oldest_available_seconds).fold(0.0, f64::max))
    } else {
        None
    };
    let backup = if leader {
        tokio::time::timeout(Duration::from_secs(2), keel_store::backups::backup_status(&state.db))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|(success, last)| super::alerts::backup_value(now, success, last, state.started.elapsed()))
    } else {
        None
    };
    let notifications = state.alerts.step(now, |rule| match rule.name.as_str() {
        "api_latency" | "api_latency_warning" => Some((state.alerts.traffic.p95_ms(now, rule.window_ms), None)),
        "error_rate" => Some((state.alerts.traffic.error_rate(now, rule.window_ms), None)),
        "db_pool" => Some(((pool.max > 0).then(|| pool.in_use as f64 / pool.max as f64), None)),
        "disk" => Some((disk, None)),
        "memory" => Some((memory, None)),
        "queue_lag" => queue_lag.map(|lag| (Some(lag), None)),
        "backup" => backup.clone(),
        _ => None,
    });
    for rule in state.alerts.states() {
        let firing = if rule.state == "firing" { 1.0 } else { 0.0 };
        state.metrics.gauge(
            "keel_alerts_firing",
            &[("alert", rule.name.clone()), ("severity", rule.severity.clone())],
            firing,
        );
    }
    for notification in &notifications {
        tracing::warn!(alert = %notification.alert, state = notification.state, summary = %notification.summary, "alert");
    }
    notify(state, notifications).await;
}

/// Sends notifications (and those a failed channel left) to every channel; what fails is
/// kept for the next evaluation.
async fn notify(state: &AppState, fresh: Vec<Notification>) {
    let mut queue = state.alerts.take_unsent();
    queue.extend(fresh);
    if queue.is_empty() {
        return;
    }
    let config = &state.config.alerts;
    let mut failed = vec![];
    for notification in queue {
        let mut ok = true;
        for url in &config.webhook_urls {
            let sent = send_webhook(&url.0, &notification, &state.schema.app.name).await;
            ok &= record(state, "webhook", sent, &notification);
        }
        if !config.email_to.is_empty() {
            let sent = match &state.jobs.config().smtp {
                Some(smtp) => {
                    let subject = format!("[keel {}] {}", state.schema.app.name, notification.summary);
                    let text = format!(
                        "{}\n\nAlert: {}\nSeverity: {}\nState: {}\nAt: {}\n",
                        notification.summary,
                        notification.alert,
                        notification.severity,
                        notification.state,
                        notification.at.to_rfc3339()
                    );
                    keel_jobs::handlers::email::send_plain(smtp, &config.email_to, &subject, &text).await
                }
                None => Err("alerts.email_to is set but smtp.host is not".to_string()),
            };
            ok &= record(state, "email", sent, &notification);
        }
        if !ok {
            failed.push(notification);
        }
    }
    state.alerts.keep_unsent(failed);
}

/// Runs `evaluate` every `alerts.evaluate_seconds`.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = Duration::from_secs(state.config.alerts.evaluate_seconds.max(1));
        loop {
            tokio::time::sleep(every).await;
            evaluate(&state).await;
        }
    })
}
