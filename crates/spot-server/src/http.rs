//! The HTTP side: the accept loop (connection limit, hyper with a timer so header and idle
//! timeouts work), streaming spot ingest, the REST API and `/metrics`.
//!
//! Ingest (`POST /api/spots/{serial}/events[/]`, spec §4.1 and the delivery contract): each
//! body chunk is fed to a [`Decoder`] and the decoded events go to the core at once (so they
//! are visible before the body ends); at the end of the body the handler asks the core to
//! sync and answers `200` only after the commit, with `X-Spot-Ack`, the `Date` hyper adds,
//! and the spot's pending commands encoded per `Accept`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, ALLOW, CONNECTION, CONTENT_TYPE, USER_AGENT};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use spot_protocol::{Decoder, Encoder, Encoding, Event, EventKind, Limits};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::core::{CoreMsg, EndReply};
use crate::domain::{encode_json, PutError};
use crate::tcp::reached;
use crate::{Phase, Shared};

/// Response body type.
pub type Body = Full<Bytes>;

/// The header carrying the highest sequence durably stored for the spot.
pub const ACK_HEADER: &str = "x-spot-ack";
/// The header counting the messages of this POST that were skipped as malformed.
pub const REJECTED_HEADER: &str = "x-spot-rejected";

/// Accepts HTTP (or, with `tls`, HTTPS) connections until `shutdown`; each connection task
/// holds a `done` sender.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
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

/// Serves one HTTP/1.1 connection (plain or TLS) until it ends or the server stops.
async fn serve_connection<I>(
    io: I,
    peer: std::net::SocketAddr,
    builder: http1::Builder,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<Phase>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(
        TokioIo::new(io),
        service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(crate::push::serve(req, &shared).await) }
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

/// The HTTPS acceptor for a PEM certificate chain and private key (PKCS#8, PKCS#1 or
/// SEC1); ALPN `http/1.1`.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, crate::ServerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let tls_err = |path: &std::path::Path, reason: String| crate::ServerError::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let chain = spot_tls::read_certificates(cert).map_err(|e| tls_err(cert, e.reason))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(spot_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| tls_err(key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
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

/// A JSON error `{"error": message, ...extra}`.
pub fn error(status: StatusCode, message: impl Into<String>, extra: Value) -> Response<Body> {
    let mut body = json!({ "error": message.into() });
    if let (Some(obj), Value::Object(more)) = (body.as_object_mut(), extra) {
        obj.extend(more);
    }
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; allowed: {allow}"),
        Value::Null,
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

pub(crate) async fn route(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
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
                ingest(req, serial, shared).await
            } else {
                method_not_allowed("POST")
            }
        }
        ["metrics"] => match *req.method() {
            Method::GET => {
                let mut resp = Response::new(Full::new(Bytes::from(crate::push::metrics(shared))));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            _ => method_not_allowed("GET"),
        },
        ["api", collection] => match *req.method() {
            Method::GET => list(&req, collection, &path, shared),
            _ => method_not_allowed("GET"),
        },
        ["api", collection, id] => {
            let (collection, id) = (collection.to_string(), id.to_string());
            match *req.method() {
                Method::GET => get_one(&req, &collection, &id, shared),
                Method::PUT => put(req, collection, id, shared).await,
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

fn list(req: &Request<Incoming>, collection: &str, path: &str, shared: &Shared) -> Response<Body> {
    let params: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let docs = {
        let domain = shared.domain.read().unwrap_or_else(|e| e.into_inner());
        domain.collection(collection)
    };
    let Some(docs) = docs else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no collection {collection:?}"),
            Value::Null,
        );
    };
    let lookup = |collection: &str, id: &str| {
        let domain = shared.domain.read().unwrap_or_else(|e| e.into_inner());
        domain.get(collection, id)
    };
    match crate::api::query(collection, docs, &params, path, &lookup) {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            e.to_string(),
            json!({ "parameter": e.param }),
        ),
    }
}

/// One document; `populate` works as on the collection.
fn get_one(req: &Request<Incoming>, collection: &str, id: &str, shared: &Shared) -> Response<Body> {
    let mut fields = Vec::new();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        if k == "populate" {
            match crate::api::populate_fields(collection, &v) {
                Ok(f) => fields.extend(f),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        e.to_string(),
                        json!({ "parameter": e.param }),
                    )
                }
            }
        }
    }
    let domain = shared.domain.read().unwrap_or_else(|e| e.into_inner());
    if !crate::api::COLLECTIONS.contains(&collection) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no collection {collection:?}"),
            Value::Null,
        );
    }
    match domain.get(collection, id) {
        Some(v) => {
            let mut docs = [v];
            crate::api::populate(&mut docs, &fields, &|c, id| domain.get(c, id));
            let [v] = docs;
            json_response(StatusCode::OK, &v)
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("{collection} {id:?} not found"),
            Value::Null,
        ),
    }
}

async fn put(
    req: Request<Incoming>,
    collection: String,
    id: String,
    shared: &Shared,
) -> Response<Body> {
    let limit = shared.limits.max_api_body_bytes;
    let bytes = match Limited::new(req.into_body(), limit as usize)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds {limit} bytes"),
                Value::Null,
            )
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("request body: {e}"),
                Value::Null,
            )
        }
    };
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(o)) => o,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "body must be a JSON object",
                Value::Null,
            )
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body is not JSON: {e}"),
                Value::Null,
            )
        }
    };
    let (reply, rx) = oneshot::channel();
    let msg = CoreMsg::Put {
        collection,
        id,
        body,
        reply,
    };
    if shared.core.send(msg).await.is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(Ok(v)) => json_response(StatusCode::OK, &v),
        Ok(Err(e @ PutError::NotFound { .. })) => {
            error(StatusCode::NOT_FOUND, e.to_string(), Value::Null)
        }
        Ok(Err(e @ PutError::MethodNotAllowed(_))) => {
            let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, e.to_string(), Value::Null);
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            resp
        }
        Ok(Err(e @ PutError::BadField { .. })) => {
            let field = match &e {
                PutError::BadField { field, .. } => field.clone(),
                _ => String::new(),
            };
            error(
                StatusCode::BAD_REQUEST,
                e.to_string(),
                json!({ "field": field }),
            )
        }
        Err(_) => unavailable(),
    }
}

fn unavailable() -> Response<Body> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "server is shutting down",
        Value::Null,
    )
}

/// The response encoding named by `Accept`; the request's when absent or a wildcard.
fn response_encoding(headers: &HeaderMap, request: Encoding) -> Result<Encoding, String> {
    let Some(value) = headers.get(ACCEPT) else {
        return Ok(request);
    };
    let text = value.to_str().map_err(|_| "<not text>".to_string())?;
    let mut wildcard = false;
    for part in text.split(',') {
        if let Some(e) = Encoding::from_media_type(part) {
            return Ok(e);
        }
        let essence = part.split(';').next().unwrap_or("").trim();
        if matches!(essence, "*/*" | "text/*" | "application/*" | "") {
            wildcard = true;
        }
    }
    if wildcard {
        Ok(request)
    } else {
        Err(text.to_string())
    }
}

/// Whether a serial number is acceptable in a path (and as a key).
pub(crate) fn valid_serial(serial: &str) -> bool {
    !serial.is_empty()
        && serial.len() <= 64
        && serial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Ends the stream with the core if the handler is dropped mid-body (client went away).
struct StreamGuard {
    core: crate::core::CoreSender,
    serial: String,
    armed: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let core = self.core.clone();
        let serial = std::mem::take(&mut self.serial);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let (reply, _rx) = oneshot::channel();
                let _ = core
                    .send(CoreMsg::Sync {
                        serial,
                        end_stream: true,
                        take_commands: false,
                        reply,
                    })
                    .await;
            });
        }
    }
}

/// The JSON an event just returned by `decoder` is journaled with (see
/// [`crate::domain::JournalEntry`]): the message's text as received, which decodes to the
/// same event again, so that ingest encodes nothing per event; its newlines and carriage
/// returns (white space between tokens: a valid message has none inside a string) become
/// spaces, as the journal is split into lines. The encoding ([`encode_json`]) instead for
/// protobuf (its frames depend on the frames before them), for a text larger than the
/// replay's decoder takes ([`Limits::default`]), and for the spot status and config events,
/// whose object the domain keeps as a document (normalised, e.g. `"30"` → `30`).
pub(crate) fn journal_json(decoder: &Decoder, event: &Event) -> String {
    match decoder.last_json() {
        Some(text)
            if text.len() <= Limits::default().max_message_bytes
                && !matches!(event.kind, EventKind::Spot(..) | EventKind::Config(..)) =>
        {
            if text.bytes().any(|b| b == b'\n' || b == b'\r') {
                text.replace(['\n', '\r'], " ")
            } else {
                text.to_string()
            }
        }
        _ => encode_json(event),
    }
}

/// Drains decoded events (HTTP and raw TCP ingest); logs, counts and skips malformed ones.
pub(crate) fn drain(
    decoder: &mut Decoder,
    serial: &str,
    shared: &Shared,
    malformed: &mut u64,
) -> Vec<(Event, String)> {
    let mut events = Vec::new();
    while let Some(next) = decoder.next_event() {
        match next {
            Ok(event) => {
                let json = journal_json(decoder, &event);
                events.push((event, json));
            }
            Err(e) => {
                *malformed += 1;
                shared
                    .metrics
                    .events_malformed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(spot = %serial, offset = e.offset, "malformed event skipped: {}", e.kind);
            }
        }
    }
    shared
        .metrics
        .events_received
        .fetch_add(events.len() as u64, Ordering::Relaxed);
    events
}

async fn ingest(req: Request<Incoming>, serial: String, shared: &Shared) -> Response<Body> {
    let limits = &shared.limits;
    if !valid_serial(&serial) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("bad spot serial {serial:?}: 1 to 64 letters, digits, '-' or '_'"),
            Value::Null,
        );
    }
    let encoding = match req.headers().get(CONTENT_TYPE) {
        None => Encoding::Json,
        Some(v) => match v.to_str().ok().and_then(Encoding::from_media_type) {
            Some(e) => e,
            None => {
                let resp = error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "unsupported Content-Type {:?}; use {} or {}",
                        String::from_utf8_lossy(v.as_bytes()),
                        Encoding::Json.media_type(),
                        Encoding::Protobuf.media_type()
                    ),
                    Value::Null,
                );
                return with_ack(resp, &serial, shared, false).await;
            }
        },
    };
    let response_encoding = match response_encoding(req.headers(), encoding) {
        Ok(e) => e,
        Err(accept) => {
            let resp = error(
                StatusCode::NOT_ACCEPTABLE,
                format!(
                    "cannot answer in {accept:?}; accept {} or {}",
                    Encoding::Json.media_type(),
                    Encoding::Protobuf.media_type()
                ),
                Value::Null,
            );
            return with_ack(resp, &serial, shared, false).await;
        }
    };
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes) {
        shared
            .metrics
            .requests_refused
            .fetch_add(1, Ordering::Relaxed);
        let resp = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body exceeds {} bytes", limits.max_body_bytes),
            Value::Null,
        );
        return close(with_ack(resp, &serial, shared, false).await);
    }
    let version = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.strip_prefix("spot/"))
        .map(|v| v.trim().to_string());
    let begin = CoreMsg::Begin {
        serial: serial.clone(),
        version,
    };
    if shared.core.send(begin).await.is_err() {
        return unavailable();
    }
    let mut guard = StreamGuard {
        core: shared.core.clone(),
        serial: serial.clone(),
        armed: true,
    };
    let mut decoder = Decoder::new(
        encoding,
        Limits {
            max_message_bytes: limits.max_message_bytes,
            max_depth: limits.max_depth,
        },
    );
    let mut body = req.into_body();
    // One allocation for the serial of every message of this stream.
    let stream_serial: Arc<str> = Arc::from(serial.as_str());
    let deadline = Instant::now() + limits.max_post_duration;
    // One timer for the whole body, due every quarter of the idle timeout: the body is idle
    // once 4 ticks in a row saw no frame (silence of 1 to 1.25 idle timeouts). A timer per
    // frame cost a timer-wheel insert and removal and a clock read per chunk.
    let quarter = (limits.body_idle_timeout / 4).max(Duration::from_millis(1));
    let tick = tokio::time::sleep_until((Instant::now() + quarter).min(deadline));
    let mut tick = std::pin::pin!(tick);
    let mut silent_ticks = 0;
    let mut frames_since_tick = false;
    let mut received: u64 = 0;
    let mut malformed: u64 = 0;
    let failure = loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = tick.as_mut() => {
                if tick.deadline() >= deadline {
                    break Some((
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "body not finished within {}s",
                            limits.max_post_duration.as_secs()
                        ),
                    ));
                }
                silent_ticks = if frames_since_tick { 0 } else { silent_ticks + 1 };
                frames_since_tick = false;
                if silent_ticks >= 4 {
                    break Some((
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "no body data for {}s",
                            limits.body_idle_timeout.as_secs_f64()
                        ),
                    ));
                }
                let next = (tick.deadline() + quarter).min(deadline);
                tick.as_mut().reset(next);
                continue;
            }
        };
        frames_since_tick = true;
        let frame = match frame {
            None => break None,
            Some(Err(e)) => {
                break Some((StatusCode::BAD_REQUEST, format!("body framing: {e}")));
            }
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        received += data.len() as u64;
        if received > limits.max_body_bytes {
            break Some((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body exceeds {} bytes", limits.max_body_bytes),
            ));
        }
        decoder.feed(&data);
        let events = drain(&mut decoder, &serial, shared, &mut malformed);
        if !events.is_empty() {
            let msg = CoreMsg::Events {
                serial: stream_serial.clone(),
                events,
                ack: None,
            };
            if shared.core.send(msg).await.is_err() {
                return unavailable();
            }
        }
    };
    if let Some((status, message)) = failure {
        tracing::warn!(spot = %serial, %status, "POST refused: {message}");
        shared
            .metrics
            .requests_refused
            .fetch_add(1, Ordering::Relaxed);
        guard.armed = false;
        let resp = error(status, message, Value::Null);
        return close(with_ack(resp, &serial, shared, true).await);
    }
    let body_ended = std::time::Instant::now();
    decoder.finish();
    let events = drain(&mut decoder, &serial, shared, &mut malformed);
    if !events.is_empty() {
        let msg = CoreMsg::Events {
            serial: stream_serial,
            events,
            ack: None,
        };
        if shared.core.send(msg).await.is_err() {
            return unavailable();
        }
    }
    guard.armed = false;
    let Some(reply) = sync(shared, &serial, true, true).await else {
        return unavailable();
    };
    let mut out = Vec::new();
    let mut encoder = Encoder::new(response_encoding);
    for command in &reply.commands {
        encoder.encode(command, &mut out);
    }
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(response_encoding.media_type()),
    );
    headers.insert(ACK_HEADER, HeaderValue::from(reply.acked_seq));
    if malformed > 0 {
        headers.insert(REJECTED_HEADER, HeaderValue::from(malformed));
    }
    shared.metrics.posts_ok.fetch_add(1, Ordering::Relaxed);
    shared.metrics.observe_ack(body_ended.elapsed());
    resp
}

async fn sync(
    shared: &Shared,
    serial: &str,
    end_stream: bool,
    take_commands: bool,
) -> Option<EndReply> {
    let (reply, rx) = oneshot::channel();
    let msg = CoreMsg::Sync {
        serial: serial.to_string(),
        end_stream,
        take_commands,
        reply,
    };
    shared.core.send(msg).await.ok()?;
    rx.await.ok()
}

/// Adds `X-Spot-Ack` (after a sync, so it is durable) to a response to a spot.
async fn with_ack(
    mut resp: Response<Body>,
    serial: &str,
    shared: &Shared,
    end_stream: bool,
) -> Response<Body> {
    let known = {
        let domain = shared.domain.read().unwrap_or_else(|e| e.into_inner());
        domain.spot_by_serial(serial).is_some()
    };
    let acked = if known || end_stream {
        sync(shared, serial, end_stream, false)
            .await
            .map_or(0, |r| r.acked_seq)
    } else {
        0
    };
    resp.headers_mut()
        .insert(ACK_HEADER, HeaderValue::from(acked));
    resp
}

fn close(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_chooses_the_response_encoding() {
        let mut h = HeaderMap::new();
        assert_eq!(
            response_encoding(&h, Encoding::Protobuf),
            Ok(Encoding::Protobuf)
        );
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/x-intellifi-events-pb"),
        );
        assert_eq!(
            response_encoding(&h, Encoding::Json),
            Ok(Encoding::Protobuf)
        );
        h.insert(ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(response_encoding(&h, Encoding::Json), Ok(Encoding::Json));
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert!(response_encoding(&h, Encoding::Json).is_err());
    }

    #[test]
    fn events_journaled_as_received_replay_after_a_restart_to_the_same_state() {
        use crate::domain::{Domain, DomainConfig, JournalEntry};
        use crate::store::{Store, Sync};
        const T0: i64 = 1_764_000_000_000;
        // Compact, pretty with CRLF, an escaped newline and a `]` in a string, lenient
        // values (`"30"`, `"true"`) that the encoding would normalise, a spot status and a
        // config (journaled as encoded), an event type the model does not know.
        let stream = concat!(
            r#"["spot","create",{"spot_id":"7","seq_epoch":1,"version":"1.0","rssi":"30"}]"#,
            "\n\n",
            r#"["config","create",{"seq":1,"rfid_power_dbm":"30","send_hits":"true"}]"#,
            "\r\n\r\n",
            "[\"presence\",\"create\",{\r\n  \"seq\": 2,\r\n  \"item_code\": \"a\\n]\",\r\n",
            "  \"proximity\": \"near\",\r\n  \"time_last\": \"2026-11-24T22:53:11.466+01:00\"\r\n}]",
            "\n\n",
            r#"[ "hit" , "create" , { "seq" : "3" , "item_code" : "b" , "rssi" : "30" , "x" : [1, {"y": true}] } ]"#,
            "\n\n",
            r#"["presence","update",{"seq":4,"item_code":"a\n]","proximity":"far","extra":"true"}]"#,
            "\n\n",
            r#"["gadget","create",{"seq":5,"tab":"a\tb"}]"#,
            "\n\n",
        );
        let dir = tempfile::tempdir().unwrap();
        let mut live = Domain::new(DomainConfig::default());
        let mut journaled = Vec::new();
        {
            let mut store = Store::open(dir.path(), Sync::Normal).unwrap();
            let mut decoder = Decoder::new(Encoding::Json, Limits::default());
            live.begin_stream("7", None, T0);
            for (i, chunk) in stream.as_bytes().chunks(5).enumerate() {
                decoder.feed(chunk);
                while let Some(next) = decoder.next_event() {
                    let event = next.expect("every message is an event");
                    let json = journal_json(&decoder, &event);
                    assert!(!json.contains(['\n', '\r']), "one line: {json:?}");
                    journaled.push(json.clone());
                    live.apply_encoded("7", &event, json, T0 + i as i64);
                }
            }
            live.end_stream("7", T0 + 10_000, false);
            let mut changes = live.take_changes(false);
            assert!(
                changes.upserts.is_empty(),
                "no flush: the journal is the truth"
            );
            store.commit(&mut changes).unwrap();
        }
        assert_eq!(journaled.len(), 6);
        assert!(
            journaled[0].contains(r#""spot_id":7,"#),
            "encoded: {}",
            journaled[0]
        );
        assert!(
            journaled[1].contains(r#""rfid_power_dbm":30,"send_hits":true"#),
            "encoded: {}",
            journaled[1]
        );
        assert!(
            journaled[2].starts_with("[\"presence\",\"create\",{    \"seq\": 2,"),
            "as received: {}",
            journaled[2]
        );
        assert!(
            journaled[3].starts_with(r#"[ "hit" , "create" , { "seq" : "3""#),
            "as received: {}",
            journaled[3]
        );
        assert!(
            journaled[5].contains(r#""tab":"a\tb""#),
            "as received: {}",
            journaled[5]
        );

        let store = Store::open(dir.path(), Sync::Normal).unwrap();
        let (journal, _) = store.unflushed_journal().unwrap();
        let texts: Vec<&str> = journal
            .iter()
            .filter_map(|e| match e {
                JournalEntry::Event { row, .. } => Some(row.event_json.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, journaled, "the journal reads back line by line");
        let mut rebuilt = Domain::new(DomainConfig::default());
        rebuilt.load_events(store.load_events(0).unwrap()).unwrap();
        rebuilt.replay(journal).unwrap();
        for c in ["spots", "locations", "items", "presences", "events"] {
            let original = live.collection(c);
            assert!(
                original.as_ref().is_some_and(|docs| !docs.is_empty()),
                "{c}"
            );
            assert_eq!(rebuilt.collection(c), original, "{c}");
        }
        assert_eq!(
            live.acked_seq("7"),
            4,
            "an unknown event's `seq` is its own key"
        );
        assert_eq!(rebuilt.acked_seq("7"), 4);
    }

    #[test]
    fn serials_are_bounded_and_plain() {
        assert!(valid_serial("203"));
        assert!(valid_serial("spot-7_a"));
        assert!(!valid_serial(""));
        assert!(!valid_serial("a/b"));
        assert!(!valid_serial(&"9".repeat(65)));
    }
}
