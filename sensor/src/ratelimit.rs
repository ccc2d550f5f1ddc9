//! Rate-limited warnings: a loss or a bad input that repeats is logged at most once per
//! interval, with how many times it happened since the last line, so that a flood of bad input
//! cannot flood the log (the counters keep every occurrence).

use std::time::Duration;

/// One kind of recurring event, logged at most once per interval.
#[derive(Clone, Debug)]
pub struct RateLimit {
    interval_ns: u64,
    last_ns: Option<u64>,
    pending: u64,
}

impl RateLimit {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        RateLimit {
            interval_ns: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
            last_ns: None,
            pending: 0,
        }
    }

    /// Notes `n` occurrences at `now_ns` (monotonic). Returns the number to report when a line
    /// is due: the occurrences since the last line (these included). `n` = 0 only reports
    /// occurrences held back earlier, once the interval has passed.
    pub fn hit(&mut self, now_ns: u64, n: u64) -> Option<u64> {
        self.pending = self.pending.saturating_add(n);
        if self.pending == 0 {
            return None;
        }
        let due = self
            .last_ns
            .is_none_or(|last| now_ns.saturating_sub(last) >= self.interval_ns);
        if !due {
            return None;
        }
        self.last_ns = Some(now_ns);
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_occurrence_is_logged_then_one_line_per_interval_with_the_count() {
        let mut limit = RateLimit::new(Duration::from_secs(10));
        let s = 1_000_000_000;
        assert_eq!(limit.hit(5 * s, 1), Some(1));
        assert_eq!(limit.hit(6 * s, 3), None);
        assert_eq!(limit.hit(9 * s, 2), None);
        assert_eq!(limit.hit(14 * s, 0), None, "interval not over");
        assert_eq!(limit.hit(15 * s, 0), Some(5), "held back ones reported");
        assert_eq!(limit.hit(40 * s, 0), None, "nothing new");
        assert_eq!(limit.hit(41 * s, 7), Some(7));
    }
}
