//! The listener: HTTP connections ([`crate::accept`]: the connection limit; hyper with a
//! timer so header and idle timeouts work; TLS from [`tls`], failed handshakes logged in
//! words at most once per [`HANDSHAKE_LOG_EVERY`]), each request handed to the
//! one [`router`] (spot ingest, the REST API, `/metrics`, the push outlets' routes), or
//! answered `503` once the pipeline has failed.

pub mod auth;
pub mod openapi;
pub mod router;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use spot_protocol::lograte::LogRate;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::accept;
use crate::context::{Context, StateUnavailable};
use crate::response::unavailable_state;
use crate::shutdown::{phase_reached, Phase};

/// Accepts HTTP (or, with `tls`, HTTPS) connections until `shutdown` ([`accept`]); a
/// connection over the limit is answered `503`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Context>,
    shutdown: watch::Receiver<Phase>,
    done: mpsc::Sender<()>,
    tls: Option<tokio_rustls::TlsAcceptor>,
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
        connections: shared.http_slots.clone(),
        refusal: accept::Refusal::Answer {
            answer: too_many_connections(limits.max_connections),
            under_way: Arc::new(Semaphore::new(limits.max_refusals)),
        },
    };
    let router = router::router(shared.clone());
    let handshake_timeout = limits.header_read_timeout;
    let handshake_log = Arc::new(Mutex::new(LogRate::every(HANDSHAKE_LOG_EVERY)));
    let connection = |stream: TcpStream, peer| {
        let (router, builder, tls) = (router.clone(), builder.clone(), tls.clone());
        let handshake_log = handshake_log.clone();
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        async move {
            match tls {
                None => serve_connection(stream, peer, builder, router, shared, shutdown).await,
                Some(acceptor) => {
                    // The handshake is bounded like the request head it precedes.
                    let handshake =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                    tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(stream)) => {
                                serve_connection(stream, peer, builder, router, shared, shutdown)
                                    .await
                            }
                            Ok(Err(e)) => handshake_failed(&handshake_log, peer, || {
                                spot_tls::explain(&e, spot_tls::Side::Server)
                                    .unwrap_or_else(|| e.to_string())
                            }),
                            Err(_) => handshake_failed(&handshake_log, peer, || {
                                format!(
                                    "no TLS handshake within {}s (a client that is not \
                                     speaking, or not TLS)",
                                    handshake_timeout.as_secs_f64()
                                )
                            }),
                        },
                        _ = phase_reached(&mut shutdown, Phase::Draining) => {}
                    }
                }
            }
        }
    };
    let metrics = shared.metrics.clone();
    accept::serve(listener, slots, metrics, shutdown.clone(), done, connection).await;
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

/// Answers one HTTP request with the router (WebSocket upgrades included). Once the
/// pipeline has failed (a panic in a state owner: the live state may be half-applied,
/// nothing commits) only `/metrics`, `/healthz` and `/readyz` are served; everything else is
/// answered `503`, saying why.
async fn dispatch(
    req: Request<Incoming>,
    router: &axum::Router,
    shared: &Context,
) -> Response<axum::body::Body> {
    if let Some(failure) = shared.pipeline.failure() {
        if !router::served_after_pipeline_failure(req.uri().path()) {
            return unavailable_state(&StateUnavailable(failure.to_string()))
                .map(axum::body::Body::new);
        }
    }
    spot_push::call_router(router, router::without_trailing_slash(req)).await
}

/// Serves one HTTP/1.1 connection (plain or TLS) until it ends or the server stops.
async fn serve_connection<I>(
    io: I,
    peer: std::net::SocketAddr,
    builder: http1::Builder,
    router: axum::Router,
    shared: Arc<Context>,
    mut shutdown: watch::Receiver<Phase>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(
        TokioIo::new(io),
        service_fn(move |mut req: Request<Incoming>| {
            let (router, shared) = (router.clone(), shared.clone());
            req.extensions_mut().insert(auth::Peer(peer));
            async move { Ok::<_, Infallible>(dispatch(req, &router, &shared).await) }
        }),
    );
    let conn = conn.with_upgrades(); // WebSocket (push)
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
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
/// The `503` a connection over the limit is answered with.
fn too_many_connections(limit: usize) -> Bytes {
    let body = json!({"error": format!("too many connections (limit {limit})")}).to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    Bytes::from(head + &body)
}
#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::pipeline::PipelineMsg;
    use crate::{Durability, Server, ServerConfig};

    /// Sends `request` on a new connection and reads until the server closes it.
    async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("answered")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Risk 7 of issue 11: after a panic in the pipeline, the poisoned live state was read
    /// through and served, and ingest went on.
    #[tokio::test]
    async fn a_panic_in_the_pipeline_answers_503_saying_why_instead_of_serving_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            sync: Durability::Normal,
            ..ServerConfig::default()
        })
        .await
        .unwrap();
        let addr = server.http_addr();
        let key = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
        let get = format!(
            "GET /api/spots HTTP/1.1\r\nHost: t\r\nX-Api-Key: {}\r\nConnection: close\r\n\r\n",
            key.trim()
        );
        let get = get.as_str();
        assert!(exchange(addr, get).await.starts_with("HTTP/1.1 200"));
        let pipeline = &server.context().pipeline;
        pipeline.send(PipelineMsg::Panic).await.unwrap();
        for _ in 0..100 {
            if pipeline.failure().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let failure = pipeline.failure().expect("the pipeline says it failed");
        assert!(failure.contains("injected by a test"), "{failure}");
        assert!(server.context().domain.is_poisoned());
        for request in [
            get.to_string(),
            "POST /api/spots/9/events HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
             Content-Length: 0\r\n\r\n"
                .to_string(),
        ] {
            let answer = exchange(addr, &request).await;
            assert!(answer.starts_with("HTTP/1.1 503"), "{request}: {answer}");
            assert!(answer.contains("injected by a test"), "{answer}");
        }
        let metrics = get.replace("/api/spots", "/metrics");
        assert!(exchange(addr, &metrics).await.starts_with("HTTP/1.1 200"));
        server.shutdown().await;
    }
}
