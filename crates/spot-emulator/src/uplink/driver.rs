//! Runs a [`Session`]'s clock while the transports wait on the network ([`Driver`]): a spot's
//! tags do not wait for the server, so every wait — connecting, a blocked write, a response —
//! ticks the session each `tick_ms`, and the stop signal is passed on. Also how a connection
//! ends well ([`ConnectionEnd`]).

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::config::UplinkConfig;
use super::error::UplinkError;
use super::session::Session;

/// How a connection ended without an error.
pub enum ConnectionEnd {
    /// Generation stopped and everything is delivered (or the drain time is over).
    Finished,
    /// New firmware: reconnect at once so the next `spot create` reports it.
    Reboot,
    /// The server asked to close: reconnect at once.
    Closed,
}

/// A session with its clock, its stop signal and its configuration.
pub struct Driver {
    /// The sans-IO state.
    pub session: Session,
    /// The uplink's configuration.
    pub cfg: Arc<UplinkConfig>,
    stop: watch::Receiver<bool>,
}

impl Driver {
    /// Drives `session` until `stop` turns true (or the session's own end).
    pub fn new(session: Session, cfg: Arc<UplinkConfig>, stop: watch::Receiver<bool>) -> Self {
        Driver { session, cfg, stop }
    }

    /// The current instant, after passing a stop request on to the session.
    pub fn now(&mut self) -> Instant {
        if *self.stop.borrow() {
            self.session.request_stop();
        }
        Instant::now()
    }

    /// Generates the events due now.
    pub fn tick(&mut self) {
        let now = self.now();
        self.session.generate(now);
    }

    /// Rate 0: generates the next events at once.
    pub fn tick_fast(&mut self) {
        let now = self.now();
        self.session.generate_fast(now);
    }

    /// The run is over (see [`Session::finished`]).
    pub fn finished(&mut self) -> bool {
        let now = self.now();
        self.session.finished(now)
    }

    /// One tick from now, but not past `deadline`.
    pub fn next_tick(&self, deadline: Instant) -> Instant {
        (Instant::now() + Duration::from_millis(self.cfg.tick_ms)).min(deadline)
    }

    /// Waits until `until`, generating events on the way.
    pub async fn idle_until(&mut self, until: Instant) {
        loop {
            if Instant::now() >= until || self.finished() {
                return;
            }
            sleep_until(self.next_tick(until)).await;
            self.tick();
        }
    }

    /// Awaits `fut`, generating events each tick meanwhile; `None` if `deadline` passes first.
    pub async fn generating_while<F: Future>(
        &mut self,
        fut: F,
        deadline: Instant,
    ) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return Some(out),
                _ = sleep_until(self.next_tick(deadline)) => {
                    if Instant::now() >= deadline {
                        return None;
                    }
                    self.tick();
                }
            }
        }
    }

    /// Writes `bytes` (and flushes them: TLS holds written records until flushed),
    /// generating events while the socket is blocked; a write that makes no progress for
    /// `response_timeout_ms` fails.
    pub async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        bytes: &[u8],
    ) -> Result<(), UplinkError> {
        let write = async {
            wr.write_all(bytes).await?;
            wr.flush().await
        };
        tokio::pin!(write);
        // Most writes complete at once: no deadline, no timer for them.
        let done = match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
            Poll::Ready(r) => Some(r),
            Poll::Pending => {
                let deadline = Instant::now() + Duration::from_millis(self.cfg.response_timeout_ms);
                self.generating_while(write, deadline).await
            }
        };
        match done {
            Some(Ok(())) => {
                let stats = self.session.stats();
                stats.bytes_sent.fetch_add(bytes.len() as u64, Relaxed);
                Ok(())
            }
            Some(Err(e)) => Err(UplinkError::Write(e)),
            None => Err(UplinkError::WriteStalled(self.cfg.response_timeout_ms)),
        }
    }
}
