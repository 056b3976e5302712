//! Cron ticks (J7): which tick is due, and whether a missed one runs.

use chrono::{DateTime, Utc};
use croner::Cron;

/// A tick found within this long after its time runs; older missed ticks run only with
/// `catch_up` (and then once, not once per missed tick).
pub const ON_TIME: chrono::Duration = chrono::Duration::seconds(60);

/// What the scheduler does for an entry at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due.
    Wait,
    /// Enqueue a run for this tick (and record it).
    Run(DateTime<Utc>),
    /// Record this tick without running it (first start, or missed ticks without catch-up).
    Skip(DateTime<Utc>),
}

/// The latest tick at or before `now`.
pub fn latest_tick(cron: &Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_previous_occurrence(&now, true).ok()
}

/// The next tick after `now`.
pub fn next_tick(cron: &Cron, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&now, false).ok()
}

/// Decides from the latest due tick and the last recorded one.
pub fn decide(
    latest: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    catch_up: bool,
) -> Decision {
    let Some(tick) = latest else { return Decision::Wait };
    if last.is_some_and(|last| last >= tick) {
        return Decision::Wait;
    }
    let on_time = now - tick <= ON_TIME;
    match last {
        // Never scheduled before: a tick that is due now runs; an old one is only recorded.
        None if on_time => Decision::Run(tick),
        None => Decision::Skip(tick),
        Some(_) if on_time || catch_up => Decision::Run(tick),
        Some(_) => Decision::Skip(tick),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn every_five_minutes() {
        let cron = keel_spec::parse_cron("*/5 * * * *").unwrap();
        let now = at("2026-11-22T10:07:30Z");
        assert_eq!(latest_tick(&cron, now), Some(at("2026-11-22T10:05:00Z")));
        assert_eq!(next_tick(&cron, now), Some(at("2026-11-22T10:10:00Z")));
    }

    #[test]
    fn runs_on_time_once_and_skips_missed_ticks_unless_asked() {
        let tick = at("2026-11-22T10:05:00Z");
        let soon = at("2026-11-22T10:05:01Z");
        assert_eq!(
            decide(Some(tick), Some(at("2026-11-22T10:00:00Z")), soon, false),
            Decision::Run(tick)
        );
        assert_eq!(decide(Some(tick), Some(tick), soon, false), Decision::Wait);
        // Back after three hours of downtime: no burst of catch-up runs.
        let late = at("2026-11-22T13:01:00Z");
        let due = at("2026-11-22T13:00:00Z");
        assert_eq!(decide(Some(due), Some(tick), late, false), Decision::Run(due));
        let later = at("2026-11-22T13:03:00Z");
        assert_eq!(decide(Some(due), Some(tick), later, false), Decision::Skip(due));
        assert_eq!(decide(Some(due), Some(tick), later, true), Decision::Run(due));
        assert_eq!(decide(Some(due), None, later, false), Decision::Skip(due));
    }
}
