//! Grandfather-father-son retention: which backups to keep.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Utc};

/// The period a backup falls in: (year, day of year | ISO week | month).
type Period = fn(&DateTime<Utc>) -> (i32, u32);

/// How many days, ISO weeks and months keep their newest backup. The periods count
/// independently (a backup may be kept as a day's, a week's and a month's at once), and only
/// periods that have a backup count, so a gap in the schedule does not shorten retention.
/// The newest backup is always kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Retention {
    /// The indexes of `times` to keep (any order in, indexes into the slice out).
    pub fn keep(&self, times: &[DateTime<Utc>]) -> BTreeSet<usize> {
        let mut order: Vec<usize> = (0..times.len()).collect();
        // Newest first; equal times by index, so the choice is stable.
        order.sort_by(|&a, &b| times[b].cmp(&times[a]).then(a.cmp(&b)));
        let mut keep = BTreeSet::new();
        if let Some(&newest) = order.first() {
            keep.insert(newest);
        }
        let periods: [(u32, Period); 3] = [
            (self.daily, |t| (t.year(), t.ordinal())),
            (self.weekly, |t| {
                let week = t.iso_week();
                (week.year(), week.week())
            }),
            (self.monthly, |t| (t.year(), t.month())),
        ];
        for (count, period) in periods {
            let mut last = None;
            let mut kept = 0;
            for &index in &order {
                if kept == count {
                    break;
                }
                let key = period(&times[index]);
                if last != Some(key) {
                    keep.insert(index);
                    kept += 1;
                    last = Some(key);
                }
            }
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, NaiveDate, TimeZone};

    use super::*;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 3, 0, 0).unwrap()
    }

    /// A year of daily backups, pruned after each run as the scheduled job does, keeps the
    /// last 30 days, the last of each of the last 12 ISO weeks, and the last of each of the
    /// last 12 months: 47 backups on 31 December 2025.
    #[test]
    fn a_simulated_year_of_daily_runs_keeps_exactly_the_expected_set() {
        let retention = Retention {
            daily: 30,
            weekly: 12,
            monthly: 12,
        };
        let mut stored: Vec<DateTime<Utc>> = vec![];
        let mut day = at(2025, 1, 1);
        while day <= at(2025, 12, 31) {
            stored.push(day);
            let keep = retention.keep(&stored);
            stored = keep.into_iter().map(|i| stored[i]).collect();
            day += Duration::days(1);
        }
        let mut expected: BTreeSet<DateTime<Utc>> = (2..=31).map(|d| at(2025, 12, d)).collect();
        // Weeks: the week of Wed 31 Dec, then the Sundays that end the eleven before it.
        for (m, d) in [(11, 30), (11, 23), (11, 16), (11, 9), (11, 2), (10, 26), (10, 19)] {
            expected.insert(at(2025, m, d));
        }
        for m in 1..=11 {
            let last = NaiveDate::from_ymd_opt(2025, m + 1, 1).unwrap().pred_opt().unwrap();
            expected.insert(at(2025, m, last.day()));
        }
        let stored: BTreeSet<DateTime<Utc>> = stored.into_iter().collect();
        assert_eq!(stored.len(), 47);
        assert_eq!(stored, expected);
    }

    #[test]
    fn the_newest_is_kept_and_gaps_do_not_shorten_retention() {
        let retention = Retention {
            daily: 2,
            weekly: 0,
            monthly: 0,
        };
        // Three backups months apart: the two newest days are kept, whatever the gap.
        let times = [at(2025, 1, 1), at(2025, 6, 1), at(2025, 3, 1)];
        assert_eq!(retention.keep(&times), BTreeSet::from([1, 2]));
        // Two on the same day: the later one is the day's.
        let times = [at(2025, 1, 1), at(2025, 1, 1) + Duration::hours(5)];
        assert_eq!(retention.keep(&times), BTreeSet::from([1]));
        let none = Retention {
            daily: 0,
            weekly: 0,
            monthly: 0,
        };
        assert_eq!(none.keep(&times), BTreeSet::from([1]));
        assert!(none.keep(&[]).is_empty());
    }
}
