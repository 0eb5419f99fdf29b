//! `--pull HOST:PORT`: the server dials a spot's telnet service (spec §4.2), which streams
//! the spot protocol (with `["spot","update",{"online":true}]` every second), and ingests
//! it through the raw TCP path ([`crate::tcp::ingest`]); nothing is written back.
//!
//! When the connection fails or ends, it dials again after a jittered exponential backoff:
//! the delay doubles from [`PullBackoff::initial`] up to [`PullBackoff::max`], each wait
//! drawn between half and all of it (so many servers do not redial in step), and starts
//! over once a stream stayed up for [`PullBackoff::max`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::tcp::{ingest, reached, WriteBack};
use crate::{Phase, Shared};

/// Longest a dial may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Redial delays of `--pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullBackoff {
    /// First delay after a failure. Default 0.5 s.
    pub initial: Duration,
    /// Largest delay. Default 30 s.
    pub max: Duration,
}

impl Default for PullBackoff {
    fn default() -> Self {
        PullBackoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// The delays of one run of failures: doubling, capped, jittered.
#[derive(Debug)]
pub struct Delays {
    backoff: PullBackoff,
    next: Duration,
    rng: u64,
}

impl Delays {
    /// Starts at `backoff.initial`; `seed` drives the jitter.
    pub fn new(backoff: PullBackoff, seed: u64) -> Self {
        Delays {
            backoff,
            next: backoff.initial,
            rng: seed | 1,
        }
    }

    /// The wait before the next dial: uniform in `[d/2, d]`, then `d` doubles (capped).
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: jitter needs no cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.next.min(self.backoff.max);
        let fraction = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        self.next = (base * 2).min(self.backoff.max);
        base.mul_f64(0.5 + 0.5 * fraction)
    }

    /// After a good stream: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.backoff.initial;
    }
}

/// Dials `target` and ingests its stream until the server stops; holds `done` meanwhile.
pub async fn run(
    target: String,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<Phase>,
    backoff: PullBackoff,
    done: mpsc::Sender<()>,
) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ target
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
    let mut delays = Delays::new(backoff, seed);
    loop {
        let dial = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.as_str()));
        let connected = tokio::select! {
            r = dial => r,
            _ = reached(&mut shutdown, Phase::Draining) => break,
        };
        match connected {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                tracing::info!(%target, "pull: connected");
                let started = Instant::now();
                match ingest(stream, &shared, shutdown.clone(), WriteBack::Nothing).await {
                    Ok(()) => tracing::info!(%target, "pull: stream ended"),
                    Err(e) => tracing::warn!(%target, "pull: stream ended: {e}"),
                }
                if started.elapsed() >= backoff.max {
                    delays.reset();
                }
            }
            Ok(Err(e)) => tracing::warn!(%target, "pull: cannot connect: {e}"),
            Err(_) => tracing::warn!(%target, "pull: cannot connect within {CONNECT_TIMEOUT:?}"),
        }
        if *shutdown.borrow() >= Phase::Draining {
            break;
        }
        let delay = delays.next_delay();
        tracing::debug!(%target, "pull: redial in {delay:?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = reached(&mut shutdown, Phase::Draining) => break,
        }
    }
    drop(done);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_reset() {
        let backoff = PullBackoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        let mut delays = Delays::new(backoff, 42);
        let bases = [100, 200, 400, 800, 1000, 1000, 1000];
        let mut seen = Vec::new();
        for base in bases {
            let d = delays.next_delay();
            let base = Duration::from_millis(base);
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} not in [{:?}, {base:?}]",
                base / 2
            );
            seen.push(d);
        }
        assert!(
            seen[4..].windows(2).any(|w| w[0] != w[1]),
            "jittered: {seen:?}"
        );
        delays.reset();
        assert!(delays.next_delay() <= Duration::from_millis(100));
    }
}
