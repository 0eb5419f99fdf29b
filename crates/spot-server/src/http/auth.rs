//! Who may call which route: the layer in front of the router that checks the API key
//! ([`crate::access`]) of every request under `/api` and of `/metrics`, and the CORS layer.
//!
//! | route | needs |
//! |---|---|
//! | `GET /`, `/healthz`, `/readyz`, `/api/openapi.json` | nothing |
//! | `/ui/…` (the dashboard's files: no data) | nothing |
//! | `POST /api/spots/{serial}/events` (spot ingest) | spot admission, in ingest |
//! | `/api/keys…`, `/api/subscriptions…` (any method) | `admin` |
//! | other `/api…` with `GET` or `HEAD` (`/api/ws`, `/api/stream` included) | `read` |
//! | other `/api…` with any other method | `write` |
//! | `/metrics` | `read`, nothing with `--metrics-public` |
//! | everything else (`404`s) | nothing |
//!
//! The key is taken from `X-Api-Key: K`, `Authorization: Bearer K` or `?key=K` (the
//! vendor's two forms and the usual third). `key` is removed from the query before the
//! route sees it (never a field filter, never echoed). Refusals: `401` without a valid key
//! (`WWW-Authenticate: Bearer`), `403` with a key of too small a role, `429` with
//! `Retry-After` after too many failures from one address; each with the JSON error body.
//! A request that passes carries its [`Caller`] in its extensions; a push stream also
//! carries a [`StreamEnd`] that closes it when its key is revoked.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hyper::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Method, StatusCode, Uri};
use serde_json::json;
use spot_push::StreamEnd;

use crate::access::{Access, Caller, Denied, KeyRefusal, Role};
use crate::clock::now_ms;
use crate::context::Context;
use crate::response::error;

/// The client's address, put into each request's extensions by the listener.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing.
    Public,
    /// Spot admission (checked by ingest).
    Spot,
    /// An API key of at least this role.
    Key(Role),
}

/// What `method path` needs (the table of the module's doc).
pub fn need(method: &Method, path: &str, metrics_public: bool) -> Need {
    if matches!(path, "/" | "/healthz" | "/readyz" | "/api/openapi.json")
        || path.starts_with("/ui/")
    {
        return Need::Public;
    }
    if path == "/metrics" {
        return if metrics_public {
            Need::Public
        } else {
            Need::Key(Role::Read)
        };
    }
    let Some(rest) = path.strip_prefix("/api") else {
        return Need::Public;
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Need::Public;
    }
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    match segments.as_slice() {
        _ if crate::accept::spot_stream_serial(method.as_str(), path).is_some() => Need::Spot,
        ["keys", ..] | ["subscriptions", ..] => Need::Key(Role::Admin),
        _ if method == Method::GET || method == Method::HEAD => Need::Key(Role::Read),
        _ => Need::Key(Role::Write),
    }
}

/// Whether `path` is one of the push streams (closed when their key is revoked).
fn is_stream(path: &str) -> bool {
    matches!(path, "/api/ws" | "/api/stream")
}

/// The key the request presents, and its URI without `key` in the query.
fn presented_key(req: &Request) -> (Option<String>, Option<Uri>) {
    let headers = req.headers();
    let header_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .or_else(|| {
            let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        });
    // Most queries carry no key: they are not parsed and rebuilt.
    let Some(query) = req.uri().query().filter(|q| q.contains("key=")) else {
        return (header_key, None);
    };
    let mut query_key = None;
    let mut rest = form_urlencoded::Serializer::new(String::new());
    let mut had_key = false;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name == "key" {
            had_key = true;
            query_key.get_or_insert_with(|| value.into_owned());
        } else {
            rest.append_pair(&name, &value);
        }
    }
    if !had_key {
        return (header_key, None);
    }
    let rest = rest.finish();
    let path = req.uri().path();
    let uri = if rest.is_empty() {
        path.parse().ok()
    } else {
        format!("{path}?{rest}").parse().ok()
    };
    (header_key.or(query_key), uri)
}

/// The refusal's answer.
fn denied(denial: &Denied, method: &Method, path: &str) -> Response {
    let (status, message) = match denial {
        Denied::Unauthenticated(KeyRefusal::Missing) => (
            StatusCode::UNAUTHORIZED,
            format!(
                "{method} {path} needs an API key: send it as X-Api-Key: KEY, \
                 Authorization: Bearer KEY or ?key=KEY (the first admin key is in \
                 <data>/admin.key; more with `spot keys create`)"
            ),
        ),
        Denied::Unauthenticated(KeyRefusal::Malformed) => (
            StatusCode::UNAUTHORIZED,
            "the API key is not one of this server's (they look like spot_<id>_<secret>)"
                .to_string(),
        ),
        Denied::Unauthenticated(KeyRefusal::Invalid) => (
            StatusCode::UNAUTHORIZED,
            "the API key is not valid: unknown or revoked".to_string(),
        ),
        Denied::Forbidden { have, need } => (
            StatusCode::FORBIDDEN,
            format!("{method} {path} needs a key with the role {need}; this key's role is {have}"),
        ),
        Denied::Limited { retry_after } => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed API key attempts from this address; try again in {} s",
                retry_after.as_secs().max(1)
            ),
        ),
    };
    let extra = match denial {
        Denied::Forbidden { have, need } => json!({"role": have.as_str(), "needs": need.as_str()}),
        _ => serde_json::Value::Null,
    };
    let mut resp = error(status, message, extra).map(Body::new);
    let headers = resp.headers_mut();
    match denial {
        Denied::Unauthenticated(_) => {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"spot\""),
            );
        }
        Denied::Forbidden { .. } => {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"spot\", error=\"insufficient_scope\""),
            );
        }
        Denied::Limited { retry_after } => {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
    }
    resp
}

/// The layer: checks the request's key against what its route needs.
pub async fn check(State(ctx): State<Arc<Context>>, mut req: Request, next: Next) -> Response {
    let access = &ctx.access;
    let path = req.uri().path();
    let need = need(req.method(), path, access.config().metrics_public);
    let (key, stripped) = presented_key(&req);
    if let Some(uri) = stripped {
        *req.uri_mut() = uri;
    }
    let Need::Key(role) = need else {
        return next.run(req).await;
    };
    let peer = req
        .extensions()
        .get::<Peer>()
        .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |p| p.0.ip());
    match access.authorize(key.as_deref(), peer, role, now_ms()) {
        Ok(caller) => {
            if is_stream(req.uri().path()) {
                req.extensions_mut().insert(end_on_revoke(access, &caller));
            }
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(denial) => {
            tracing::debug!(%peer, "API request refused: {denial:?}");
            denied(&denial, req.method(), req.uri().path())
        }
    }
}

/// A [`StreamEnd`] that fires when `caller`'s key is revoked (watched until the stream is
/// gone).
fn end_on_revoke(access: &Arc<Access>, caller: &Caller) -> StreamEnd {
    let (tx, end) = StreamEnd::channel();
    let mut snapshots = access.subscribe();
    let key_id = caller.key_id.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if !snapshots.borrow_and_update().keys.is_active(&key_id) {
                        let _ = tx.send(Some(format!("API key {key_id} revoked")));
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    end
}

/// The CORS layer for `origins` (`--cors-origin`), `None` when there are none (CORS off:
/// browsers on other origins are refused by the browser).
pub fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::DELETE,
            ])
            .allow_headers([
                hyper::header::CONTENT_TYPE,
                AUTHORIZATION,
                hyper::header::HeaderName::from_static("x-api-key"),
                hyper::header::HeaderName::from_static("last-event-id"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_what_the_table_says() {
        let cases = [
            (Method::POST, "/api/spots/203/events", Need::Spot),
            (Method::GET, "/api/spots/203/events", Need::Key(Role::Read)),
            (Method::GET, "/api/spots", Need::Key(Role::Read)),
            (Method::HEAD, "/api/items", Need::Key(Role::Read)),
            (Method::GET, "/api", Need::Key(Role::Read)),
            (Method::GET, "/api/ws", Need::Key(Role::Read)),
            (Method::GET, "/api/stream", Need::Key(Role::Read)),
            (Method::PUT, "/api/spots/1", Need::Key(Role::Write)),
            (Method::POST, "/api/spots", Need::Key(Role::Write)),
            (Method::GET, "/api/sets/itemlists", Need::Key(Role::Read)),
            (
                Method::GET,
                "/api/sets/spotlists/abc/ids",
                Need::Key(Role::Read),
            ),
            (Method::POST, "/api/sets/itemlists", Need::Key(Role::Write)),
            (
                Method::PUT,
                "/api/sets/itemlists/abc",
                Need::Key(Role::Write),
            ),
            (
                Method::POST,
                "/api/sets/itemlists/abc/ids",
                Need::Key(Role::Write),
            ),
            (
                Method::DELETE,
                "/api/sets/spotlists/abc/ids/1",
                Need::Key(Role::Write),
            ),
            (Method::GET, "/api/keys", Need::Key(Role::Admin)),
            (Method::DELETE, "/api/keys/abc", Need::Key(Role::Admin)),
            (Method::GET, "/api/subscriptions", Need::Key(Role::Admin)),
            (Method::GET, "/metrics", Need::Key(Role::Read)),
            (Method::GET, "/", Need::Public),
            (Method::GET, "/apis", Need::Public),
            (Method::GET, "/healthz", Need::Public),
            (Method::GET, "/readyz", Need::Public),
            (Method::GET, "/api/openapi.json", Need::Public),
            (Method::GET, "/api/openapi.yaml", Need::Key(Role::Read)),
        ];
        for (method, path, expected) in cases {
            assert_eq!(need(&method, path, false), expected, "{method} {path}");
        }
        assert_eq!(need(&Method::GET, "/metrics", true), Need::Public);
    }

    #[test]
    fn the_key_comes_from_the_header_bearer_or_query_and_leaves_the_query() {
        let req = |uri: &str, header: Option<(&str, &str)>| {
            let mut b = hyper::Request::builder().uri(uri);
            if let Some((name, value)) = header {
                b = b.header(name, value);
            }
            b.body(Body::empty()).unwrap()
        };
        let (key, uri) = presented_key(&req("/api/items?key=k1&label=a%20b", None));
        assert_eq!(key.as_deref(), Some("k1"));
        assert_eq!(uri.unwrap().to_string(), "/api/items?label=a+b");
        let (key, uri) = presented_key(&req("/api/items?key=k1", None));
        assert_eq!(
            (key.as_deref(), uri.unwrap().to_string()),
            (Some("k1"), "/api/items".into())
        );
        let (key, uri) = presented_key(&req("/api/items", Some(("X-Api-Key", "k2"))));
        assert_eq!((key.as_deref(), uri), (Some("k2"), None));
        let bearer = req("/api/items?sort=id", Some(("Authorization", "Bearer k3")));
        assert_eq!(presented_key(&bearer), (Some("k3".into()), None));
        let basic = req("/api/items", Some(("Authorization", "Basic abc")));
        assert_eq!(presented_key(&basic), (None, None));
    }
}
