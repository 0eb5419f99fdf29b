//! Rate-limited log lines: a condition that repeats (failed TLS handshakes, failed webhook
//! deliveries, a broker that stays down) is logged at most once per interval, each line
//! counting the ones held back since the one before; for a condition that persists the
//! interval may double after each line, up to a maximum ([`LogRate::backing_off`]).
//!
//! Pure: the caller passes the time and logs.

use std::time::{Duration, Instant};

/// When the next line of one repeated condition may be logged.
#[derive(Debug, Clone)]
pub struct LogRate {
    initial: Duration,
    max: Duration,
    interval: Duration,
    next: Option<Instant>,
    held_back: u64,
}

impl LogRate {
    /// At most one line per `interval`.
    pub fn every(interval: Duration) -> Self {
        Self::backing_off(interval, interval)
    }

    /// The first line at once, then at most one per interval, the interval doubling from
    /// `initial` after each line up to `max`; [`LogRate::reset`] starts over.
    pub fn backing_off(initial: Duration, max: Duration) -> Self {
        LogRate {
            initial,
            max: max.max(initial),
            interval: initial,
            next: None,
            held_back: 0,
        }
    }

    /// One more occurrence at `now`: `Some(held back)` when a line may be logged now (with
    /// how many occurrences were not logged since the last line), `None` to hold it back.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.held_back += 1;
            return None;
        }
        self.next = Some(now + self.interval);
        self.interval = self.interval.saturating_mul(2).min(self.max);
        Some(std::mem::take(&mut self.held_back))
    }

    /// The condition is over: the next occurrence is logged at once, the interval starts
    /// from `initial` again. Returns the occurrences held back and never logged.
    pub fn reset(&mut self) -> u64 {
        self.interval = self.initial;
        self.next = None;
        std::mem::take(&mut self.held_back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn one_line_per_interval_counting_the_ones_held_back() {
        let t0 = Instant::now();
        let mut rate = LogRate::every(10 * S);
        assert_eq!(rate.admit(t0), Some(0));
        assert_eq!(rate.admit(t0 + S), None);
        assert_eq!(rate.admit(t0 + 9 * S), None);
        assert_eq!(rate.admit(t0 + 10 * S), Some(2));
        assert_eq!(rate.admit(t0 + 11 * S), None);
        assert_eq!(rate.admit(t0 + 20 * S), Some(1));
    }

    #[test]
    fn backing_off_doubles_the_interval_up_to_the_maximum_until_reset() {
        let t0 = Instant::now();
        let mut rate = LogRate::backing_off(S, 4 * S);
        let admitted: Vec<u64> = (0..20)
            .filter(|&s| rate.admit(t0 + s * S).is_some())
            .map(|s| s as u64)
            .collect();
        // Lines at 0, then 1, 2, 4 s apart, then every 4 s.
        assert_eq!(admitted, [0, 1, 3, 7, 11, 15, 19]);
        assert_eq!(rate.reset(), 0, "the held-back ones were all reported");
        assert_eq!(rate.admit(t0 + 20 * S), Some(0), "at once after a reset");
        assert_eq!(rate.admit(t0 + 20 * S + S / 2), None);
        assert_eq!(
            rate.admit(t0 + 21 * S),
            Some(1),
            "the initial interval again"
        );
    }
}
