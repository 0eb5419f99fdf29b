//! The one accept loop of the listeners (HTTP and raw TCP): accept until the server leaves
//! [`Phase::Running`], back off on accept errors, give each connection a slot (its task
//! holds the slot and the server's `done` sender) or refuse it, with the refusals
//! themselves bounded so that a flood grows neither tasks nor file descriptors.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::metrics::Metrics;
use crate::shutdown::Phase;

/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// Longest a refusal holds its connection: writing the answer, then reading what the
/// client still sends until it closes (so that it reads the answer rather than a reset).
pub const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How a listener answers a connection over its limit.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Close it (raw TCP: a spot retries later).
    Close,
    /// Write `answer` (an HTTP `503`), then close; while every permit of `under_way` is
    /// taken ([`crate::ServerLimits::max_refusals`] refusals), close at once instead.
    Answer {
        /// The bytes written.
        answer: bytes::Bytes,
        /// A permit per refusal under way.
        under_way: Arc<Semaphore>,
    },
}

/// One listener's bounds.
#[derive(Debug)]
pub struct Slots {
    /// Open connections (a permit each).
    pub connections: Arc<Semaphore>,
    /// What a connection over the limit gets.
    pub refusal: Refusal,
}

/// Accepts connections on `listener` until the phase changes, running `connection` for
/// each in a task of its own that holds a slot and `done`; refuses the others.
pub async fn serve<C, F>(
    listener: TcpListener,
    slots: Slots,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<Phase>,
    done: mpsc::Sender<()>,
    mut connection: C,
) where
    C: FnMut(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = slots.connections.clone().try_acquire_owned() else {
            refuse(stream, peer, &slots, &metrics);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let task = connection(stream, peer);
        let done = done.clone();
        tokio::spawn(async move {
            task.await;
            drop(permit);
            drop(done);
        });
    }
}

/// Refuses a connection over the limit: answers it in a task of its own if a refusal slot
/// is free, else closes it now.
fn refuse(stream: TcpStream, peer: SocketAddr, slots: &Slots, metrics: &Metrics) {
    metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
    let Refusal::Answer { answer, under_way } = &slots.refusal else {
        tracing::debug!(%peer, "too many connections: closed");
        return;
    };
    let Ok(permit) = under_way.clone().try_acquire_owned() else {
        metrics
            .connections_refused_unanswered
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "too many connections and refusals: closed unanswered");
        return;
    };
    metrics.requests_refused.fetch_add(1, Ordering::Relaxed);
    let answer = answer.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, answer_and_close(stream, &answer)).await;
        drop(permit);
    });
}

/// Writes `answer`, ends the writing side, and reads until the client closes.
async fn answer_and_close(mut stream: TcpStream, answer: &[u8]) -> std::io::Result<()> {
    stream.write_all(answer).await?;
    stream.shutdown().await?;
    let mut discard = [0u8; 1024];
    while stream.read(&mut discard).await? > 0 {}
    Ok(())
}
