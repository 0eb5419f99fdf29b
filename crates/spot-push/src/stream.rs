//! HTTP outlets: `GET /api/stream` (Server-Sent Events) and `GET /api/ws` (WebSocket).
//!
//! Both follow the hub through a [`Follower`], so they resume from the events log
//! (`Last-Event-ID` / `after_id`) and refill from it what their queue had to drop.
//!
//! Raw spot events (server flag `--publish-raw`, topics `spots/<id>/events/…`) have no id:
//! over WebSocket their message has no `"id"`; over SSE their event has no `id:` line, so
//! the client's last event id (what `Last-Event-ID` resumes from) stays the last derived
//! event's. They are live only: resumption does not replay them.
//!
//! Server stop ([`StreamShutdown::shut_down`]): a WebSocket gets a close frame `1001`
//! ("going away") with the reason, and the server waits (at most
//! [`StreamLimits::ws_close_timeout`]) for the client's close reply; an SSE stream gets a
//! last event `event: shutdown` (data: the reason) and ends. New requests get `503`.
//! [`StreamShutdown::closed`] resolves once every WebSocket connection has ended (upgraded
//! connections are not the HTTP server's any more, so its graceful stop does not see them).
//!
//! WebSocket protocol (text frames, JSON):
//! - client → server: `{"subscribe":"<filter>"}`, optionally with `"after_id":<id>`;
//!   `{"unsubscribe":"<filter>"}`.
//! - server → client: events `{"id":..,"topic":..,"payload":{..}}` (raw spot events without
//!   `id`); acknowledgements `{"subscribed":"<filter>"}`, `{"unsubscribed":"<filter>"}`;
//!   `{"error":"<what>"}` for a refused command (the connection stays open).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;

use crate::filter::TopicFilter;
use crate::follow::{EventLog, Follower};
use crate::hub::{Hub, HubError};

/// Events written to a WebSocket before one flush (fewer when fewer are ready): one
/// syscall and TCP segment for a burst instead of one per event.
const WS_EVENTS_PER_FLUSH: usize = 256;

/// SSE events made ready ahead of the connection (besides the hub queue): few, so that a
/// stalled client is noticed when its socket is full, not after a large buffer.
const SSE_EVENTS_AHEAD: usize = 16;

/// Read buffer of a WebSocket connection (clients send only small commands; a larger
/// frame reserves its length). tungstenite zero-fills the free part of its read buffer
/// before every read attempt, and the connection's loop polls for a command each time it
/// wakes for events: with the default 128 KiB, that fill was about a tenth of the CPU of
/// pushing 100,000 events/s to one client.
const WS_READ_BUFFER_BYTES: usize = 4096;

/// Ends one stream from outside while it runs: the server closes the streams opened with
/// an API key when that key is revoked. The layer in front of the router puts it into the
/// request's extensions; [`StreamEnd::channel`]'s sender sets the reason. A WebSocket then
/// gets a close frame `1008` (policy) with the reason, an SSE stream a last event
/// `event: closed` with the reason.
#[derive(Debug, Clone)]
pub struct StreamEnd(tokio::sync::watch::Receiver<Option<String>>);

impl StreamEnd {
    /// A sender that ends the stream by sending `Some(reason)`, and the stream's side.
    pub fn channel() -> (tokio::sync::watch::Sender<Option<String>>, StreamEnd) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (tx, StreamEnd(rx))
    }

    /// Resolves with the reason once the stream must end (never if the sender is dropped
    /// without one).
    async fn ended(&mut self) -> String {
        loop {
            if let Some(reason) = self.0.borrow_and_update().clone() {
                return reason;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Until a [`StreamEnd`] (if any) says why the stream must end.
async fn ended(end: &mut Option<StreamEnd>) -> String {
    match end {
        Some(end) => end.ended().await,
        None => std::future::pending().await,
    }
}

/// Limits of the HTTP outlets.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Largest WebSocket message accepted from a client (commands are tiny).
    pub max_ws_message_bytes: usize,
    /// Filters one WebSocket connection may hold (each costs a match per published event).
    pub max_filters_per_connection: usize,
    /// Interval of SSE keep-alive comments (keeps proxies from closing idle streams).
    pub sse_keep_alive: Duration,
    /// A WebSocket client that takes longer than this to accept a burst of events (its
    /// socket stays full) is disconnected; it can resume with `after_id`. The same holds
    /// for an SSE client and one event: its stream ends (it resumes with `Last-Event-ID`).
    pub ws_send_timeout: Duration,
    /// When the server stops: time for sending the close frame and receiving the client's
    /// close reply, after which the connection is dropped.
    pub ws_close_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_ws_message_bytes: 64 * 1024,
            max_filters_per_connection: 64,
            sse_keep_alive: Duration::from_secs(15),
            ws_send_timeout: Duration::from_secs(30),
            ws_close_timeout: Duration::from_secs(2),
        }
    }
}

/// What a stopping server tells its stream clients (WebSocket close reason, SSE `shutdown`
/// event data).
pub const SHUTDOWN_REASON: &str = "server shutting down; reconnect and resume from the last id";

/// The stop signal of the HTTP outlets, and the count of open WebSocket connections.
/// Cheap to clone; all clones share the state.
#[derive(Clone, Debug)]
pub struct StreamShutdown {
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    open_websockets: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Default for StreamShutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamShutdown {
    /// Not stopping.
    pub fn new() -> Self {
        Self {
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
            open_websockets: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Closes every open WebSocket (1001) and SSE stream, and refuses new ones (`503`).
    pub fn shut_down(&self) {
        self.stopping.send_replace(true);
    }

    /// Whether [`StreamShutdown::shut_down`] was called.
    pub fn is_shut_down(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves when stopping (never before).
    async fn stopping(&self) {
        let mut rx = self.stopping.subscribe();
        // The sender lives in `self`: `wait_for` only ends by the value.
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    /// Resolves when no WebSocket connection is open (e.g. after `shut_down`, once their
    /// close handshakes are over).
    pub async fn closed(&self) {
        let mut rx = self.open_websockets.subscribe();
        let _ = rx.wait_for(|open| *open == 0).await;
    }

    /// Open WebSocket connections.
    pub fn open_websockets(&self) -> usize {
        *self.open_websockets.borrow()
    }

    fn websocket_opened(&self) -> OpenWebSocket {
        self.open_websockets.send_modify(|n| *n += 1);
        OpenWebSocket(self.clone())
    }
}

/// Counts one open WebSocket connection while alive.
struct OpenWebSocket(StreamShutdown);

impl Drop for OpenWebSocket {
    fn drop(&mut self) {
        self.0.open_websockets.send_modify(|n| *n -= 1);
    }
}

/// What the HTTP outlets need: the hub, the events log and the limits.
#[derive(Clone)]
pub struct StreamState {
    /// Where events come from.
    pub hub: Hub,
    /// Where missed events are read back from.
    pub log: Arc<dyn EventLog>,
    /// Limits.
    pub limits: StreamLimits,
    /// The stop signal (the server keeps a clone and calls `shut_down` when stopping).
    pub shutdown: StreamShutdown,
}

/// The router serving `GET /api/stream` and `GET /api/ws`.
pub fn stream_router(state: StreamState) -> Router {
    Router::new()
        .route("/api/stream", get(sse_handler))
        .route("/api/ws", get(ws_handler))
        .with_state(state)
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn hub_error_response(e: HubError) -> Response {
    error_response(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

fn stopping_response() -> Response {
    error_response(StatusCode::SERVICE_UNAVAILABLE, SHUTDOWN_REASON.to_string())
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    topic_filter: Option<String>,
    after_id: Option<u64>,
}

async fn sse_handler(
    State(state): State<StreamState>,
    Query(query): Query<StreamQuery>,
    end: Option<Extension<StreamEnd>>,
    headers: HeaderMap,
) -> Response {
    let text = query.topic_filter.as_deref().unwrap_or("#");
    let filter = match TopicFilter::new(text) {
        Ok(f) => f,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!("topic_filter {text:?}: {e}"),
            )
        }
    };
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(id) => Some(id),
            None => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("Last-Event-ID {v:?} is not an event id"),
                )
            }
        },
    };
    let after_id = last_event_id.or(query.after_id);
    if state.shutdown.is_shut_down() {
        return stopping_response();
    }
    let sub = match state.hub.subscribe("sse", vec![filter]) {
        Ok(s) => s,
        Err(e) => return hub_error_response(e),
    };
    let follower = Follower::new(sub, state.log.clone(), after_id);
    let (tx, rx) = tokio::sync::mpsc::channel(SSE_EVENTS_AHEAD);
    tokio::spawn(feed_sse(
        follower,
        state.shutdown.clone(),
        end.map(|Extension(end)| end),
        tx,
        state.limits.ws_send_timeout,
    ));
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), rx))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(state.limits.sse_keep_alive))
        .into_response()
}

/// Moves the follower's events into an SSE stream (`tx`) until the client goes away, the
/// server stops (a last `shutdown` event), its [`StreamEnd`] fires (a last `closed` event
/// with the reason) or the log fails (an `error` event). The same
/// rule as for WebSocket: an event the connection does not take within `send_timeout` (its
/// socket stays full, so the response body is not read) ends the stream and frees its hub
/// subscription; the client resumes with `Last-Event-ID`. (The body is only polled when the
/// connection can write: hence a task of its own, which can notice the stall.)
async fn feed_sse(
    mut follower: Follower,
    shutdown: StreamShutdown,
    mut end: Option<StreamEnd>,
    tx: tokio::sync::mpsc::Sender<SseEvent>,
    send_timeout: Duration,
) {
    loop {
        let next = tokio::select! {
            next = follower.next() => next,
            () = shutdown.stopping() => {
                let event = SseEvent::default().event("shutdown").data(SHUTDOWN_REASON);
                let _ = tokio::time::timeout(send_timeout, tx.send(event)).await;
                return;
            }
            reason = ended(&mut end) => {
                let event = SseEvent::default().event("closed").data(reason);
                let _ = tokio::time::timeout(send_timeout, tx.send(event)).await;
                return;
            }
            () = tx.closed() => return, // the client went away
        };
        let (event, last) = match next {
            Ok(Some(e)) => {
                let mut event = SseEvent::default().data(e.envelope_json());
                if !e.is_raw() {
                    event = event.id(e.id().to_string());
                }
                (event, false)
            }
            Ok(None) => return,
            Err(err) => (
                SseEvent::default().event("error").data(err.to_string()),
                true,
            ),
        };
        match tokio::time::timeout(send_timeout, tx.send(event)).await {
            Ok(Ok(())) if !last => {}
            Ok(_) => return,
            Err(_) => {
                tracing::info!("SSE client too slow; disconnected");
                return;
            }
        }
    }
}

async fn ws_handler(
    State(state): State<StreamState>,
    end: Option<Extension<StreamEnd>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    if state.shutdown.is_shut_down() {
        return stopping_response();
    }
    let sub = match state.hub.subscribe("ws", Vec::new()) {
        Ok(s) => s,
        Err(e) => return hub_error_response(e),
    };
    let follower = Follower::new(sub, state.log.clone(), None);
    let limits = state.limits.clone();
    let shutdown = state.shutdown.clone();
    let open = shutdown.websocket_opened();
    upgrade
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .max_message_size(limits.max_ws_message_bytes)
        .max_frame_size(limits.max_ws_message_bytes)
        .on_upgrade(move |socket| async move {
            let end = end.map(|Extension(end)| end);
            serve_ws(socket, follower, limits, shutdown, end).await;
            drop(open);
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WsCommand {
    subscribe: Option<String>,
    unsubscribe: Option<String>,
    after_id: Option<u64>,
}

fn reply(key: &str, value: &str) -> Message {
    Message::Text(serde_json::json!({ key: value }).to_string().into())
}

/// Applies one client command; returns the reply.
fn apply_command(text: &str, follower: &mut Follower, limits: &StreamLimits) -> Message {
    let command: WsCommand = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(e) => return reply("error", &format!("bad command: {e}")),
    };
    match command {
        WsCommand {
            subscribe: Some(text),
            unsubscribe: None,
            after_id,
        } => {
            let filter = match TopicFilter::new(&text) {
                Ok(f) => f,
                Err(e) => return reply("error", &format!("filter {text:?}: {e}")),
            };
            let count = follower.subscription().filters().len();
            if count >= limits.max_filters_per_connection {
                return reply(
                    "error",
                    &format!(
                        "filter {text:?}: this connection already has the maximum of {} filters",
                        limits.max_filters_per_connection
                    ),
                );
            }
            follower.subscribe(filter, after_id);
            reply("subscribed", &text)
        }
        WsCommand {
            subscribe: None,
            unsubscribe: Some(text),
            after_id: None,
        } => {
            if follower.subscription().remove_filter(&text) {
                reply("unsubscribed", &text)
            } else {
                reply("error", &format!("not subscribed to {text:?}"))
            }
        }
        _ => reply(
            "error",
            "a command is {\"subscribe\":\"<filter>\"[,\"after_id\":<id>]} or {\"unsubscribe\":\"<filter>\"}",
        ),
    }
}

/// Sends a close frame (`code`, `reason`) and waits for the client's close reply (both
/// within `ws_close_timeout`).
async fn close_ws<S>(
    mut sink: S,
    incoming: &mut futures_util::stream::SplitStream<WebSocket>,
    limits: &StreamLimits,
    code: u16,
    reason: &str,
) where
    S: futures_util::Sink<Message> + Unpin,
{
    let handshake = async {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if sink.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        // Events still arriving are dropped; the reply (or the end) finishes the close.
        while let Some(Ok(message)) = incoming.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    if tokio::time::timeout(limits.ws_close_timeout, handshake)
        .await
        .is_err()
    {
        tracing::debug!("websocket client did not answer the close frame; dropped");
    }
}

async fn serve_ws(
    socket: WebSocket,
    mut follower: Follower,
    limits: StreamLimits,
    shutdown: StreamShutdown,
    mut end: Option<StreamEnd>,
) {
    use axum::extract::ws::close_code::{AWAY, POLICY};
    let (mut sink, mut incoming) = socket.split();
    loop {
        tokio::select! {
            biased;
            () = shutdown.stopping() => {
                close_ws(&mut sink, &mut incoming, &limits, AWAY, SHUTDOWN_REASON).await;
                return;
            }
            reason = ended(&mut end) => {
                close_ws(&mut sink, &mut incoming, &limits, POLICY, &reason).await;
                return;
            }
            message = incoming.next() => {
                let reply = match message {
                    Some(Ok(Message::Text(text))) => apply_command(text.as_str(), &mut follower, &limits),
                    Some(Ok(Message::Binary(_))) => reply("error", "commands are text frames"),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket client error");
                        break;
                    }
                };
                if sink.send(reply).await.is_err() {
                    break;
                }
            }
            event = follower.next() => {
                match event {
                    Ok(Some(e)) => {
                        // Queue this event and whatever else is ready, then flush once.
                        let burst = async {
                            sink.feed(Message::Text(e.envelope_bytes())).await?;
                            for _ in 1..WS_EVENTS_PER_FLUSH {
                                match follower.next().now_or_never() {
                                    Some(Ok(Some(e))) => {
                                        sink.feed(Message::Text(e.envelope_bytes())).await?;
                                    }
                                    _ => break,
                                }
                            }
                            sink.flush().await
                        };
                        let sent = tokio::select! {
                            sent = tokio::time::timeout(limits.ws_send_timeout, burst) => sent,
                            () = shutdown.stopping() => Ok(Ok(())), // closed next round
                        };
                        match sent {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "websocket send failed");
                                break;
                            }
                            Err(_) => {
                                tracing::info!("websocket client too slow; disconnected");
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // The log cannot fill a gap: say so and close, the client resumes.
                        let _ = sink.send(reply("error", &e.to_string())).await;
                        break;
                    }
                }
            }
        }
    }
}
