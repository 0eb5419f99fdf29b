//! The listener: the accept loop (connection limit, hyper with a timer so header and idle
//! timeouts work, TLS from [`tls`]) and the router that sends each request to spot ingest
//! ([`crate::ingest::http`]), the REST API ([`crate::api`]), `/metrics`, or the push
//! outlets' routes (WebSocket, SSE, subscriptions).

pub mod tls;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::context::Context;
use crate::response::{error, method_not_allowed, Body};
use crate::shutdown::{reached, Phase};
use crate::{api, ingest};

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
        let (shared, builder, tls) = (shared.clone(), builder.clone(), tls.clone());
        let mut shutdown = shutdown.clone();
        let done = done.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, builder, shared, shutdown).await,
                Some(acceptor) => {
                    // The handshake is bounded like the request head it precedes.
                    let handshake = tokio::time::timeout(
                        shared.limits.header_read_timeout,
                        acceptor.accept(stream),
                    );
                    tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(stream)) => {
                                serve_connection(stream, peer, builder, shared, shutdown).await
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
/// Answers one HTTP request: push paths with the outlets' router (WebSocket upgrades
/// included), everything else with [`route`].
async fn dispatch(req: Request<Incoming>, ctx: &Context) -> Response<axum::body::Body> {
    if spot_push::is_push_path(req.uri().path()) {
        return spot_push::call_router(ctx.outlets.router(), req).await;
    }
    route(req, ctx).await.map(axum::body::Body::new)
}

/// Serves one HTTP/1.1 connection (plain or TLS) until it ends or the server stops.
async fn serve_connection<I>(
    io: I,
    peer: std::net::SocketAddr,
    builder: http1::Builder,
    shared: Arc<Context>,
    mut shutdown: watch::Receiver<Phase>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(
        TokioIo::new(io),
        service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(dispatch(req, &shared).await) }
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
pub(crate) async fn route(req: Request<Incoming>, shared: &Context) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["api", "spots", serial, "events"] => {
            if req.method() == Method::POST {
                let serial = serial.to_string();
                ingest::http::ingest(req, serial, shared).await
            } else {
                method_not_allowed("POST")
            }
        }
        ["metrics"] => match *req.method() {
            Method::GET => {
                let mut resp = Response::new(Full::new(Bytes::from(api::metrics_text(shared))));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            _ => method_not_allowed("GET"),
        },
        ["api", collection] => match *req.method() {
            Method::GET => api::list(&req, collection, &path, shared),
            _ => method_not_allowed("GET"),
        },
        ["api", collection, id] => {
            let (collection, id) = (collection.to_string(), id.to_string());
            match *req.method() {
                Method::GET => api::get_one(&req, &collection, &id, shared),
                Method::PUT => api::put(req, collection, id, shared).await,
                _ => method_not_allowed("GET, PUT"),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no such path: {path}"),
            Value::Null,
        ),
    }
}
