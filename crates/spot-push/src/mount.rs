//! Mounting the push routers in a server written on plain hyper.
//!
//! `stream_router` and `Webhooks::router` are axum routers; [`call_router`] serves one
//! request with one of them and returns a streaming body. The server must serve its HTTP/1
//! connections with `.with_upgrades()` (WebSocket), and should set `TCP_NODELAY` on
//! accepted sockets (small events otherwise wait for Nagle's algorithm).

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use tower::ServiceExt;

/// Whether `path` belongs to the push routers (`/api/ws`, `/api/stream`,
/// `/api/subscriptions` and below).
pub fn is_push_path(path: &str) -> bool {
    path == "/api/ws"
        || path == "/api/stream"
        || path == "/api/subscriptions"
        || path.starts_with("/api/subscriptions/")
}

/// Serves `req` with `router`.
pub async fn call_router<B>(router: &Router, req: http::Request<B>) -> http::Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    match router.clone().oneshot(req.map(Body::new)).await {
        Ok(response) => response,
        Err(infallible) => match infallible {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_paths() {
        for p in [
            "/api/ws",
            "/api/stream",
            "/api/subscriptions",
            "/api/subscriptions/3",
        ] {
            assert!(is_push_path(p), "{p}");
        }
        for p in [
            "/api/spots",
            "/api/streams",
            "/api/subscriptionsx",
            "/metrics",
        ] {
            assert!(!is_push_path(p), "{p}");
        }
    }
}
