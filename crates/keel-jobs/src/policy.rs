//! Retry policy (J3): exponential backoff with jitter, per job kind.

use std::time::Duration;

use keel_spec::JobKind;
use rand::Rng;

/// How long to wait before attempt `attempt + 1`, after attempt `attempt` failed: the kind's
/// base doubled per attempt, capped, with "equal jitter" (half fixed, half random) so that
/// jobs failing together do not retry together.
pub fn backoff(kind: &JobKind, attempt: i32) -> Duration {
    let exponent = u32::try_from(attempt.saturating_sub(1)).unwrap_or(0).min(30);
    let full = kind
        .backoff_ms
        .saturating_mul(1u64 << exponent)
        .min(kind.max_backoff_ms.max(kind.backoff_ms));
    let half = full / 2;
    let jitter = if half == 0 {
        0
    } else {
        rand::rng().random_range(0..=half)
    };
    Duration::from_millis(full - half + jitter)
}

/// Whether a failed attempt is retried or the job is dead.
pub fn retry_in(kind: &JobKind, attempt: i32, max_attempts: i32, permanent: bool) -> Option<Duration> {
    if permanent || attempt >= max_attempts {
        None
    } else {
        Some(backoff(kind, attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(backoff_ms: u64, max_backoff_ms: u64) -> JobKind {
        JobKind {
            name: "k".into(),
            queue: "default".into(),
            handler: keel_spec::Handler::Noop,
            attempts: 3,
            backoff_ms,
            max_backoff_ms,
            timeout_ms: 1_000,
            priority: 0,
            concurrency_key: None,
            enqueue_role: None,
            cron: None,
        }
    }

    #[test]
    fn doubles_with_jitter_and_caps() {
        let k = kind(5_000, 60_000);
        for _ in 0..200 {
            let first = backoff(&k, 1).as_millis();
            assert!((2_500..=5_000).contains(&first), "{first}");
            let second = backoff(&k, 2).as_millis();
            assert!((5_000..=10_000).contains(&second), "{second}");
            let late = backoff(&k, 20).as_millis();
            assert!((30_000..=60_000).contains(&late), "{late}");
        }
    }

    #[test]
    fn the_last_attempt_or_a_permanent_failure_is_dead() {
        let k = kind(5_000, 60_000);
        assert!(retry_in(&k, 1, 3, false).is_some());
        assert!(retry_in(&k, 3, 3, false).is_none());
        assert!(retry_in(&k, 1, 3, true).is_none());
    }
}
