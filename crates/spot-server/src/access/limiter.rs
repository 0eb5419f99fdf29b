//! The rate limit on failed authentication, per client address, sans-IO (time passed in).
//!
//! A token bucket per address: each failure takes a token; with none left the address is
//! refused (`429` with `Retry-After`) before its key is even looked at, until a token has
//! grown back. Successes cost nothing, so a good key is never slowed down, and another
//! address is not affected. Hand-written: `governor`'s keyed limiter has no way to ask
//! whether an address is blocked without spending a token, which a check before the key
//! lookup needs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// Settings of the limiter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureLimit {
    /// Failures allowed in a burst (default 10).
    pub burst: u32,
    /// Failures allowed per second after the burst (default 1).
    pub per_second: f64,
    /// Addresses tracked at most (default 65,536): past it, addresses whose bucket is full
    /// again are forgotten; if none is, a new address is not tracked.
    pub max_addresses: usize,
}

impl Default for FailureLimit {
    fn default() -> Self {
        FailureLimit {
            burst: 10,
            per_second: 1.0,
            max_addresses: 65_536,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

/// The failed-authentication buckets of the client addresses.
#[derive(Debug)]
pub struct FailureLimiter {
    limit: FailureLimit,
    buckets: HashMap<IpAddr, Bucket>,
}

impl FailureLimiter {
    /// An empty limiter.
    pub fn new(limit: FailureLimit) -> FailureLimiter {
        FailureLimiter {
            limit,
            buckets: HashMap::new(),
        }
    }

    fn tokens(&self, bucket: &Bucket, now_ms: i64) -> f64 {
        let grown = (now_ms - bucket.at_ms).max(0) as f64 / 1000.0 * self.limit.per_second;
        (bucket.tokens + grown).min(f64::from(self.limit.burst))
    }

    /// How long `addr` must wait before it may try again, if it is blocked now.
    pub fn blocked(&self, addr: IpAddr, now_ms: i64) -> Option<Duration> {
        let bucket = self.buckets.get(&addr)?;
        let tokens = self.tokens(bucket, now_ms);
        (tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - tokens) / self.limit.per_second))
    }

    /// Counts a failure of `addr`.
    pub fn failed(&mut self, addr: IpAddr, now_ms: i64) {
        if !self.buckets.contains_key(&addr) && self.buckets.len() >= self.limit.max_addresses {
            let burst = f64::from(self.limit.burst);
            let limit = self.limit;
            self.buckets.retain(|_, b| {
                let grown = (now_ms - b.at_ms).max(0) as f64 / 1000.0 * limit.per_second;
                b.tokens + grown < burst
            });
            if self.buckets.len() >= self.limit.max_addresses {
                return;
            }
        }
        let full = Bucket {
            tokens: f64::from(self.limit.burst),
            at_ms: now_ms,
        };
        let bucket = self.buckets.get(&addr).copied().unwrap_or(full);
        let tokens = self.tokens(&bucket, now_ms);
        self.buckets.insert(
            addr,
            Bucket {
                tokens: (tokens - 1.0).max(0.0),
                at_ms: now_ms,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_burst_of_failures_blocks_the_address_until_a_token_grows_back() {
        let mut l = FailureLimiter::new(FailureLimit {
            burst: 3,
            per_second: 2.0,
            max_addresses: 10,
        });
        for _ in 0..3 {
            assert_eq!(l.blocked(addr(1), 0), None);
            l.failed(addr(1), 0);
        }
        assert_eq!(l.blocked(addr(1), 0), Some(Duration::from_millis(500)));
        assert_eq!(l.blocked(addr(1), 250), Some(Duration::from_millis(250)));
        assert_eq!(l.blocked(addr(1), 500), None);
        // Another address is not affected.
        assert_eq!(l.blocked(addr(2), 0), None);
    }

    #[test]
    fn the_table_of_addresses_is_bounded() {
        let mut l = FailureLimiter::new(FailureLimit {
            burst: 1,
            per_second: 1.0,
            max_addresses: 2,
        });
        l.failed(addr(1), 0);
        l.failed(addr(2), 0);
        l.failed(addr(3), 0); // full, none refilled: not tracked
        assert!(l.blocked(addr(3), 0).is_none());
        assert_eq!(l.buckets.len(), 2);
        l.failed(addr(3), 5_000); // the others refilled: forgotten
        assert!(l.blocked(addr(3), 5_000).is_some());
        assert_eq!(l.buckets.len(), 1);
    }
}
