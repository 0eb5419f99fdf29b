//! The listener: HTTP connections ([`crate::accept`]: the connection budget). A new
//! connection has [`crate::ServerLimits::request_head_timeout`] for its TLS handshake
//! (failed handshakes logged in words at most once per [`HANDSHAKE_LOG_EVERY`]) and its
//! first request head, which is read ahead to tell what it is ([`accept::Class`]), then
//! handed to hyper with the rest ([`io::ConnIo`], which also ends a connection whose client
//! stops reading for the write timeout). hyper runs with a timer so that header and idle
//! timeouts work; each request goes to the one [`router`] (spot ingest, the REST API,
//! `/metrics`, the push outlets' routes), or is answered `503` once the pipeline has
//! failed.

pub mod auth;
pub mod io;
pub mod openapi;
pub mod router;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use spot_protocol::lograte::LogRate;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::accept::{self, Admitted, Class};
use crate::context::Context;
use crate::shutdown::{phase_reached, Phase};

/// A connection's byte stream, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin> Stream for S {}

/// What every connection of the listener shares.
#[derive(Clone)]
struct Listener {
    builder: http1::Builder,
    router: axum::Router,
    shared: Arc<Context>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake_log: Arc<Mutex<LogRate>>,
    write_timeout: Duration,
}

/// Accepts HTTP (or, with `tls`, HTTPS) connections until `shutdown` ([`accept`]); a
/// connection not admitted is answered `503`. A write the client does not take within
/// `write_timeout` (the push streams' send timeout) ends its connection.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Context>,
    shutdown: watch::Receiver<Phase>,
    done: mpsc::Sender<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    write_timeout: Duration,
) {
    let limits = &shared.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let slots = accept::Slots {
        connections: shared.http_connections.clone(),
        class: None,
        refusal: accept::Refusal::Answer {
            under_way: Arc::new(Semaphore::new(limits.max_refusals)),
        },
    };
    let each = Listener {
        builder,
        router: router::router(shared.clone()),
        shared: shared.clone(),
        tls,
        handshake_log: Arc::new(Mutex::new(LogRate::every(HANDSHAKE_LOG_EVERY))),
        write_timeout,
    };
    let connection = |stream: TcpStream, peer, admitted| {
        each.clone()
            .connection(stream, peer, admitted, shutdown.clone())
    };
    let metrics = shared.metrics.clone();
    accept::serve(listener, slots, metrics, shutdown.clone(), done, connection).await;
}

impl Listener {
    /// One connection: its first request head within the head timeout (an eviction or a
    /// stop ends the wait), identified, then served.
    async fn connection(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        mut admitted: Admitted,
        mut shutdown: watch::Receiver<Phase>,
    ) {
        let metrics = &self.shared.metrics;
        let timeout = self.shared.limits.first_head_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        // Its first bytes (a TLS ClientHello, the start of a head) move it behind the silent
        // ones in the eviction order; silence past the deadline ends in `first_head`.
        let mut first_byte = [0u8; 1];
        let spoke = tokio::select! {
            // Peeked, not read: `first_head` reads it (readiness alone can be spurious).
            r = tokio::time::timeout_at(deadline, stream.peek(&mut first_byte)) => {
                matches!(r, Ok(Ok(1..)))
            }
            () = admitted.evicted() => {
                metrics.connections_evicted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "no request yet, closed for a newer connection");
                return;
            }
            _ = phase_reached(&mut shutdown, Phase::Draining) => return,
        };
        if spoke {
            admitted.spoke();
        }
        let first = tokio::select! {
            r = self.first_head(stream, peer, deadline) => r,
            () = admitted.evicted() => {
                metrics.connections_evicted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "no request yet, closed for a newer connection");
                return;
            }
            _ = phase_reached(&mut shutdown, Phase::Draining) => return,
        };
        let Some((stream, head)) = first else {
            return;
        };
        let class = Class::of_request(&head);
        if let Err(why) = admitted.identify(class) {
            metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            metrics.requests_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "refused: {why}");
            let answer = accept::answer_503(&why.to_string());
            let refusal = accept::answer_and_close(stream, &answer);
            let _ = tokio::time::timeout(accept::REFUSAL_TIMEOUT, refusal).await;
            return;
        }
        let io = io::ConnIo::new(stream, head.freeze(), self.write_timeout).holding(admitted);
        self.serve_connection(io, peer, shutdown).await;
    }

    /// The TLS handshake (with `tls`) and the first request head (up to its blank line,
    /// or `max_header_bytes`: hyper answers what is too long), by `deadline`; `None` when
    /// the connection failed, closed or took too long.
    async fn first_head(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        deadline: tokio::time::Instant,
    ) -> Option<(Box<dyn Stream>, BytesMut)> {
        let timeout = self.shared.limits.first_head_timeout();
        let mut stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(stream),
            Some(acceptor) => {
                match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => Box::new(stream),
                    Ok(Err(e)) => {
                        handshake_failed(&self.handshake_log, peer, || {
                            spot_tls::explain(&e, spot_tls::Side::Server)
                                .unwrap_or_else(|| e.to_string())
                        });
                        return None;
                    }
                    Err(_) => {
                        handshake_failed(&self.handshake_log, peer, || {
                            format!(
                                "no TLS handshake within {}s (a client that is not speaking, or \
                             not TLS)",
                                timeout.as_secs_f64()
                            )
                        });
                        return None;
                    }
                }
            }
        };
        let max = self.shared.limits.max_header_bytes;
        let mut head = BytesMut::with_capacity(1024);
        let mut scanned = 0;
        loop {
            let ended = head[scanned..].windows(4).any(|w| w == b"\r\n\r\n");
            if ended || head.len() >= max {
                return Some((stream, head));
            }
            scanned = head.len().saturating_sub(3);
            head.reserve(1024.min(max - head.len()));
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut head)).await {
                Ok(Ok(0)) => return None,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "connection failed before its first request: {e}");
                    return None;
                }
                Err(_) => {
                    let metrics = &self.shared.metrics;
                    metrics
                        .connections_head_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        %peer,
                        "no request head within {}s (request-head-timeout-secs): closed",
                        timeout.as_secs_f64()
                    );
                    return None;
                }
            }
        }
    }
}

/// Failed TLS handshakes are logged at most once per this interval (a scanner or a fleet
/// with the wrong CA would otherwise log a line per connection); each line counts the
/// failures not logged since the one before.
pub const HANDSHAKE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs a failed handshake of `peer` (`reason` in words), rate limited by `log`.
fn handshake_failed(log: &Mutex<LogRate>, peer: SocketAddr, reason: impl FnOnce() -> String) {
    let admitted = log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(Instant::now());
    if let Some(held_back) = admitted {
        tracing::warn!(
            %peer,
            more_since_last_line = held_back,
            "TLS handshake failed: {}",
            reason()
        );
    }
}

/// Answers one HTTP request: a spot's event stream by ingest directly
/// ([`router::direct_ingest_serial`] says when), anything else with the router (WebSocket
/// upgrades included; the router answers `503` once the pipeline has failed, behind the key
/// check).
async fn dispatch(
    req: Request<Incoming>,
    router: &axum::Router,
    shared: &Context,
) -> Response<axum::body::Body> {
    let direct = shared.pipeline.failure().is_none();
    if let Some(serial) = router::direct_ingest_serial(&req).filter(|_| direct) {
        return crate::ingest::http::ingest(req, serial, shared)
            .await
            .map(axum::body::Body::new);
    }
    spot_push::call_router(router, router::without_trailing_slash(req)).await
}

/// The scheme a request came in with (`http`, or `https` on a TLS listener), put into each
/// request's extensions: the REST API's links say it unless a proxy says otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Scheme(pub &'static str);

impl Listener {
    /// Serves one HTTP/1.1 connection (plain or TLS) until it ends or the server stops.
    async fn serve_connection<I>(
        self,
        io: I,
        peer: SocketAddr,
        mut shutdown: watch::Receiver<Phase>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let scheme = Scheme(if self.tls.is_some() { "https" } else { "http" });
        let Listener {
            builder,
            router,
            shared,
            ..
        } = self;
        let metrics = shared.metrics.clone();
        let conn = builder.serve_connection(
            TokioIo::new(io),
            service_fn(move |mut req: Request<Incoming>| {
                let (router, shared) = (router.clone(), shared.clone());
                req.extensions_mut().insert(auth::Peer(peer));
                req.extensions_mut().insert(scheme);
                async move { Ok::<_, Infallible>(dispatch(req, &router, &shared).await) }
            }),
        );
        let conn = conn.with_upgrades(); // WebSocket (push)
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => if let Err(e) = r {
                if write_stalled(&e) {
                    metrics.connections_write_stalled.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(%peer, "connection ended: {e}");
            },
            _ = phase_reached(&mut shutdown, Phase::Draining) => {
                // In-flight requests finish (answered with `Connection: close`), idle
                // connections close now; after the grace period the rest is dropped.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = phase_reached(&mut shutdown, Phase::Closing) => {}
                }
            }
        }
    }
}

/// Whether `e` is [`io::ConnIo`]'s write timeout (the client stopped reading).
fn write_stalled(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::TimedOut;
        }
        source = s.source();
    }
    false
}
