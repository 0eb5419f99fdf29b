//! Reconnect and retry backoff: the one implementation for every side that redials or
//! retries (the emulator's uplink, the server's `--pull`, webhook deliveries).
//!
//! Pure: the caller counts failures, supplies the randomness and sleeps. The delay before
//! attempt `failures` (1-based) is `initial * 2^(failures-1)`, capped at `max`, then drawn
//! uniformly between half and all of it, so many clients that failed together do not
//! retry in step ("equal jitter").

use std::time::Duration;

/// Doubling delays from `initial`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure (before jitter).
    pub initial: Duration,
    /// The largest delay (before jitter).
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `failures` (1-based; 0 counts as 1) without jitter.
    pub fn base(&self, failures: u32) -> Duration {
        let doubling = 1u32 << failures.saturating_sub(1).min(30);
        self.initial.saturating_mul(doubling).min(self.max)
    }

    /// The jittered delay before attempt `failures`: uniform in `[base/2, base]`, drawn
    /// from `random` (any 64 random bits).
    pub fn delay(&self, failures: u32, random: u64) -> Duration {
        let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
        self.base(failures).mul_f64(0.5 + 0.5 * fraction)
    }
}

/// A run of failures with its own jitter source: what a redialling loop keeps.
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    failures: u32,
    rng: u64,
}

impl Delays {
    /// No failures yet; `seed` drives the jitter (any value).
    pub fn new(backoff: Backoff, seed: u64) -> Self {
        Delays {
            backoff,
            failures: 0,
            rng: seed | 1,
        }
    }

    /// Counts one more failure and returns the wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: jitter needs no cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.failures = self.failures.saturating_add(1);
        self.backoff.delay(self.failures, self.rng)
    }

    /// After a success: the next failure waits about `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last [`Delays::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };

    #[test]
    fn delays_double_from_initial_are_capped_and_jittered_between_half_and_all() {
        let mut delays = Delays::new(B, 7);
        for failures in 1..40u32 {
            let d = delays.next_delay();
            let base = Duration::from_millis((100u64 << (failures - 1).min(30)).min(10_000));
            assert!(d >= base / 2 && d <= base, "{failures}: {d:?} vs {base:?}");
        }
        let spread: std::collections::HashSet<_> = (0..20u64)
            .map(|i| B.delay(3, i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            .collect();
        assert!(spread.len() > 10, "jittered: {spread:?}");
    }

    #[test]
    fn a_reset_starts_the_doubling_over() {
        let mut delays = Delays::new(B, 1);
        for _ in 0..10 {
            delays.next_delay();
        }
        delays.reset();
        assert!(delays.next_delay() <= Duration::from_millis(100));
        assert_eq!(delays.failures(), 1);
    }
}
