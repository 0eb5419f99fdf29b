//! `--pull HOST:PORT`: the server dials a spot's telnet service (spec §4.2), which streams
//! the spot protocol (with `["spot","update",{"online":true}]` every second), and ingests
//! it through the raw TCP path ([`crate::ingest::tcp::ingest`]); nothing is written back.
//!
//! When the connection fails or ends, it dials again after a jittered exponential backoff:
//! the delay doubles from [`PullBackoff::initial`] up to [`PullBackoff::max`], each wait
//! drawn between half and all of it (so many servers do not redial in step), and starts
//! over once a stream stayed up for [`PullBackoff::max`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use spot_protocol::backoff::Delays;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::context::Context;
use crate::ingest::tcp::{ingest, WriteBack};
use crate::shutdown::phase_reached;
use crate::shutdown::Phase;

/// Longest a dial may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Redial delays of `--pull`: the protocol crate's one backoff.
pub use spot_protocol::backoff::Backoff as PullBackoff;

/// Dials `target` and ingests its stream until the server stops; holds `done` meanwhile.
pub async fn run(
    target: String,
    shared: Arc<Context>,
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
            _ = phase_reached(&mut shutdown, Phase::Draining) => break,
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
            _ = phase_reached(&mut shutdown, Phase::Draining) => break,
        }
    }
    drop(done);
}
