//! The listener: the accept loop (connection limit, hyper with a timer so header and idle
//! timeouts work, TLS from [`tls`]) and the router that sends each request to spot ingest
//! ([`crate::ingest::http`]), the REST API ([`crate::api`]), `/metrics`, or the push
//! outlets' routes (WebSocket, SSE, subscriptions).

pub mod router;
pub mod tls;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::context::Context;
use crate::shutdown::{reached, Phase};

/// Accepts HTTP (or, with `tls`, HTTPS) connections until `shutdown`; each connection task
/// holds a `done` sender.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Context>,
    mut shutdown: watch::Receiver<Phase>,
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
    let router = router::router(shared.clone());
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = shared.http_slots.clone().try_acquire_owned() else {
            shared
                .metrics
                .requests_refused
                .fetch_add(1, Ordering::Relaxed);
            tokio::spawn(refuse(stream, shared.limits.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, builder, tls) = (router.clone(), builder.clone(), tls.clone());
        let handshake_timeout = shared.limits.header_read_timeout;
        let mut shutdown = shutdown.clone();
        let done = done.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, builder, router, shutdown).await,
                Some(acceptor) => {
                    // The handshake is bounded like the request head it precedes.
                    let handshake =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                    tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(stream)) => {
                                serve_connection(stream, peer, builder, router, shutdown).await
                            }
                            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        },
                        _ = reached(&mut shutdown, Phase::Draining) => {}
                    }
                }
            }
            drop(permit);
            drop(done);
        });
    }
}

/// Answers one HTTP request with the router (WebSocket upgrades included).
async fn dispatch(req: Request<Incoming>, router: &axum::Router) -> Response<axum::body::Body> {
    spot_push::call_router(router, router::without_trailing_slash(req)).await
}

/// Serves one HTTP/1.1 connection (plain or TLS) until it ends or the server stops.
async fn serve_connection<I>(
    io: I,
    peer: std::net::SocketAddr,
    builder: http1::Builder,
    router: axum::Router,
    mut shutdown: watch::Receiver<Phase>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(
        TokioIo::new(io),
        service_fn(move |req| {
            let router = router.clone();
            async move { Ok::<_, Infallible>(dispatch(req, &router).await) }
        }),
    );
    let conn = conn.with_upgrades(); // WebSocket (push)
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            tracing::debug!(%peer, "connection ended: {e}");
        },
        _ = reached(&mut shutdown, Phase::Draining) => {
            // In-flight requests finish (answered with `Connection: close`), idle
            // connections close now; after the grace period the rest is dropped.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = reached(&mut shutdown, Phase::Closing) => {}
            }
        }
    }
}
/// Answers a connection over the limit with `503` and closes it.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let body = json!({"error": format!("too many connections (limit {limit})")}).to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
