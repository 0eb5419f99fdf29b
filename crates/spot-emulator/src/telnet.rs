//! The telnet service of a spot (spec §4.2): whoever connects gets the raw JSON stream —
//! `spot create` and `config create` first, then every event as it is generated — and
//! `["spot","update",{"online":true}]` once a second. A debugging aid, unauthenticated.
//!
//! Bounded: at most [`MAX_CLIENTS`] clients per spot (more are refused: closed at once and
//! counted in `telnet_refused`); each client is fed through a broadcast queue of
//! [`QUEUE_EVENTS`] events, and a client that falls further behind skips events, counted in
//! `telnet_events_skipped`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

use crate::stats::SpotStats;

/// Most clients one spot serves at once.
pub const MAX_CLIENTS: usize = 8;
/// Events queued per client before it skips.
pub const QUEUE_EVENTS: usize = 4096;
/// The alive message of the telnet stream.
pub const ONLINE: &[u8] = b"[\"spot\",\"update\",{\"online\":true}]\n\n";

/// What the spot task publishes to its telnet clients.
#[derive(Debug, Clone)]
pub struct TelnetFeed {
    /// Each event's JSON bytes, as generated.
    pub events: broadcast::Sender<Arc<Vec<u8>>>,
    /// The `spot create` + `config create` a new client gets first.
    pub hello: watch::Sender<Vec<u8>>,
    /// The spot's counters (`telnet_*`).
    pub stats: Arc<SpotStats>,
}

impl TelnetFeed {
    /// A feed with no clients yet, counting into `stats`.
    pub fn new(stats: Arc<SpotStats>) -> Self {
        TelnetFeed {
            events: broadcast::channel(QUEUE_EVENTS).0,
            hello: watch::channel(Vec::new()).0,
            stats,
        }
    }

    /// Publishes one event's bytes to the connected clients (none: nothing to do).
    pub fn publish(&self, bytes: &[u8]) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(Arc::new(bytes.to_vec()));
        }
    }
}

/// Accepts telnet clients until the task is aborted.
pub async fn serve(listener: TcpListener, feed: TelnetFeed) {
    let active = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if active.load(Relaxed) >= MAX_CLIENTS as u64 {
            feed.stats.telnet_refused.fetch_add(1, Relaxed);
            continue; // dropped: closed at once
        }
        active.fetch_add(1, Relaxed);
        feed.stats.telnet_clients.fetch_add(1, Relaxed);
        let (feed, active) = (feed.clone(), active.clone());
        tokio::spawn(async move {
            let _ = client(stream, &feed).await;
            active.fetch_sub(1, Relaxed);
        });
    }
}

async fn client(mut stream: TcpStream, feed: &TelnetFeed) -> std::io::Result<()> {
    let mut events = feed.events.subscribe();
    let hello = feed.hello.borrow().clone();
    stream.write_all(&hello).await?;
    let mut online = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = online.tick() => stream.write_all(ONLINE).await?,
            e = events.recv() => match e {
                Ok(bytes) => stream.write_all(&bytes).await?,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    feed.stats.telnet_events_skipped.fetch_add(n, Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}
