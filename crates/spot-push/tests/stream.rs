//! SSE and WebSocket outlets over loopback with real clients (reqwest, tokio-tungstenite).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use spot_push::{
    stream_router, Hub, HubConfig, MemoryEventLog, Published, StreamLimits, StreamShutdown,
    StreamState,
};
use tokio_tungstenite::tungstenite::Message;

struct Server {
    url: String,
    hub: Hub,
    log: Arc<MemoryEventLog>,
    shutdown: StreamShutdown,
}

impl Server {
    async fn start(config: HubConfig) -> Self {
        Self::start_with(
            config,
            StreamLimits {
                max_filters_per_connection: 2,
                ..StreamLimits::default()
            },
        )
        .await
    }

    async fn start_with(config: HubConfig, limits: StreamLimits) -> Self {
        let hub = Hub::new(config);
        let log = Arc::new(MemoryEventLog::new(100_000));
        let shutdown = StreamShutdown::new();
        let router = stream_router(StreamState {
            hub: hub.clone(),
            log: log.clone(),
            limits,
            shutdown: shutdown.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            url: format!("127.0.0.1:{}", addr.port()),
            hub,
            log,
            shutdown,
        }
    }

    /// As the server does: log, then hub.
    fn commit(&self, id: u64, topic: &str) {
        let event = Published::from_value(id, topic, &json!({ "n": id })).expect("event");
        self.log.append(event.clone());
        self.hub.publish(event);
    }
}

/// Reads Server-Sent Events (id, data) from a streaming response.
struct SseReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>>>,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    async fn next_event(&mut self) -> (u64, Value) {
        match self.next_message().await {
            (Some(id), data) => (id, data),
            (None, data) => panic!("an event without id: {data}"),
        }
    }

    /// The next event's own `id:` line (if it has one) and data.
    async fn next_message(&mut self) -> (Option<u64>, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse::<u64>().expect("numeric id"));
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str::<Value>(v.trim()).expect("json data"));
                    }
                }
                if let Some(data) = data {
                    return (id, data);
                }
                continue; // keep-alive comment
            }
            let chunk = self.body.next().await.expect("stream open").expect("chunk");
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }
}

#[tokio::test]
async fn sse_streams_matching_events_with_ids_and_envelopes() {
    let server = Server::start(HubConfig::default()).await;
    let response = reqwest::get(format!(
        "http://{}/api/stream?topic_filter=items/%2B/created",
        server.url
    ))
    .await
    .expect("connect");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "served as SSE"
    );
    let mut sse = SseReader::new(response);
    server.commit(1, "items/1/created");
    server.commit(2, "spots/1/connected/203");
    server.commit(3, "items/1/appeared");
    server.commit(4, "items/2/created");
    let (id, data) = sse.next_event().await;
    assert_eq!(id, 1);
    assert_eq!(
        data,
        json!({"id": 1, "topic": "items/1/created", "payload": {"n": 1}})
    );
    assert_eq!(sse.next_event().await.0, 4, "non-matching events skipped");
}

#[tokio::test]
async fn sse_resumes_from_last_event_id() {
    let server = Server::start(HubConfig::default()).await;
    for id in 1..=5 {
        server.commit(id, "items/1/created");
    }
    let response = reqwest::Client::new()
        .get(format!("http://{}/api/stream", server.url))
        .header("Last-Event-ID", "2")
        .send()
        .await
        .expect("connect");
    let mut sse = SseReader::new(response);
    for want in 3..=5 {
        assert_eq!(sse.next_event().await.0, want);
    }
    server.commit(6, "items/1/created");
    assert_eq!(sse.next_event().await.0, 6);
}

#[tokio::test]
async fn sse_refuses_bad_filters_and_bad_last_event_ids() {
    let server = Server::start(HubConfig::default()).await;
    let response = reqwest::get(format!(
        "http://{}/api/stream?topic_filter=items/%23/created",
        server.url
    ))
    .await
    .expect("connect");
    assert_eq!(response.status(), 400);
    let body: Value = serde_json::from_str(&response.text().await.expect("body")).expect("json");
    assert!(body["error"]
        .as_str()
        .expect("error")
        .contains("last level"));
    let response = reqwest::Client::new()
        .get(format!("http://{}/api/stream", server.url))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .expect("connect");
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn raw_events_come_over_sse_without_an_id_line_and_resumption_skips_them() {
    let server = Server::start(HubConfig::default()).await;
    let response = reqwest::get(format!(
        "http://{}/api/stream?topic_filter=spots/%23",
        server.url
    ))
    .await
    .expect("connect");
    let mut sse = SseReader::new(response);
    server.commit(1, "spots/a/connected/203");
    let raw = Published::raw("spots/a/events/hit/create", r#"{"resource":{}}"#.into())
        .expect("raw event");
    server.hub.publish(raw);
    server.commit(2, "spots/a/disconnected/203");
    assert_eq!(sse.next_message().await.0, Some(1));
    assert_eq!(
        sse.next_message().await,
        (
            None,
            json!({"topic": "spots/a/events/hit/create", "payload": {"resource": {}}})
        )
    );
    assert_eq!(sse.next_message().await.0, Some(2));
    // A client resuming after 1 gets 2 from the log; the raw event is gone (live only).
    let response = reqwest::Client::new()
        .get(format!("http://{}/api/stream", server.url))
        .header("Last-Event-ID", "1")
        .send()
        .await
        .expect("connect");
    let mut resumed = SseReader::new(response);
    assert_eq!(resumed.next_message().await.0, Some(2));
}

#[tokio::test]
async fn raw_events_come_over_websocket_without_an_id() {
    let server = Server::start(HubConfig::default()).await;
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"subscribe": "spots/+/events/#"})).await;
    assert_eq!(
        ws_recv(&mut ws).await,
        json!({"subscribed": "spots/+/events/#"})
    );
    server.commit(1, "spots/a/connected/203");
    let raw =
        Published::raw("spots/a/events/presence/create", r#"{"seq":4}"#.into()).expect("raw event");
    server.hub.publish(raw);
    assert_eq!(
        ws_recv(&mut ws).await,
        json!({"topic": "spots/a/events/presence/create", "payload": {"seq": 4}})
    );
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(server: &Server) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/api/ws", server.url))
        .await
        .expect("ws connect");
    ws
}

async fn ws_send(ws: &mut Ws, command: Value) {
    ws.send(Message::text(command.to_string()))
        .await
        .expect("send");
}

async fn ws_recv(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await.expect("open").expect("frame") {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("json"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test]
async fn ws_subscribe_receive_unsubscribe() {
    let server = Server::start(HubConfig::default()).await;
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"subscribe": "spots/+/connected/#"})).await;
    assert_eq!(
        ws_recv(&mut ws).await,
        json!({"subscribed": "spots/+/connected/#"})
    );
    ws_send(&mut ws, json!({"subscribe": "items/#"})).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"subscribed": "items/#"}));
    server.commit(1, "spots/1/connected/203");
    server.commit(2, "presences/1/created/1/1/near");
    server.commit(3, "items/1/created");
    assert_eq!(
        ws_recv(&mut ws).await,
        json!({"id": 1, "topic": "spots/1/connected/203", "payload": {"n": 1}})
    );
    assert_eq!(ws_recv(&mut ws).await["id"], 3);
    ws_send(&mut ws, json!({"unsubscribe": "items/#"})).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"unsubscribed": "items/#"}));
    server.commit(4, "items/1/appeared");
    server.commit(5, "spots/1/connected/203");
    assert_eq!(
        ws_recv(&mut ws).await["id"],
        5,
        "unsubscribed topic no longer sent"
    );
}

#[tokio::test]
async fn ws_refuses_bad_commands_and_keeps_the_connection() {
    let server = Server::start(HubConfig::default()).await;
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"subscribe": "a/#/b"})).await;
    let reply = ws_recv(&mut ws).await;
    assert!(reply["error"].as_str().expect("error").contains("a/#/b"));
    ws.send(Message::text("not json")).await.expect("send");
    assert!(ws_recv(&mut ws).await["error"].is_string());
    ws_send(&mut ws, json!({"unsubscribe": "never"})).await;
    assert!(ws_recv(&mut ws).await["error"].is_string());
    ws_send(&mut ws, json!({"subscribe": "a"})).await;
    ws_send(&mut ws, json!({"subscribe": "b"})).await;
    ws_send(&mut ws, json!({"subscribe": "c"})).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"subscribed": "a"}));
    assert_eq!(ws_recv(&mut ws).await, json!({"subscribed": "b"}));
    let reply = ws_recv(&mut ws).await;
    assert!(
        reply["error"]
            .as_str()
            .expect("error")
            .contains("maximum of 2"),
        "{reply}"
    );
    server.commit(1, "b");
    assert_eq!(
        ws_recv(&mut ws).await["id"],
        1,
        "still serving after errors"
    );
}

#[tokio::test]
async fn ws_subscribe_after_id_replays_from_the_log() {
    let server = Server::start(HubConfig::default()).await;
    for id in 1..=4 {
        server.commit(id, &format!("items/{id}/created"));
    }
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"subscribe": "items/#", "after_id": 2})).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"subscribed": "items/#"}));
    assert_eq!(ws_recv(&mut ws).await["id"], 3);
    assert_eq!(ws_recv(&mut ws).await["id"], 4);
    server.commit(5, "items/5/created");
    assert_eq!(ws_recv(&mut ws).await["id"], 5);
}

/// A current-thread runtime: publishing 500 events without yielding overflows the
/// 4-event queue for sure; the client still gets every event, in order, from the log.
#[tokio::test]
async fn ws_slow_consumer_loses_nothing_and_drops_are_counted() {
    let server = Server::start(HubConfig {
        queue_capacity: 4,
        max_subscriptions: 100,
    })
    .await;
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"subscribe": "#"})).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"subscribed": "#"}));
    for id in 1..=500 {
        server.commit(id, "items/1/created");
    }
    let ws_stats = server
        .hub
        .stats()
        .outlets
        .into_iter()
        .find(|o| o.outlet == "ws")
        .expect("ws outlet");
    assert_eq!(ws_stats.dropped_total, 496, "overflow is counted");
    for want in 1..=500 {
        assert_eq!(ws_recv(&mut ws).await["id"], want);
    }
}

#[tokio::test]
async fn tail_follows_from_an_id_then_live() {
    let server = Server::start(HubConfig::default()).await;
    for id in 1..=3 {
        server.commit(id, "items/1/created");
    }
    server.commit(4, "spots/1/connected/203");
    let options = spot_push::tail::TailOptions {
        server: format!("http://{}", server.url),
        topic_filter: "items/#".into(),
        after_id: Some(1),
        reconnect_delay: std::time::Duration::from_millis(10),
        ca_cert: None,
        key: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let follow = tokio::spawn(async move {
        spot_push::tail::follow(&options, |e| tx.send(e).is_ok(), |_| {}).await
    });
    let event = rx.recv().await.expect("event");
    assert_eq!(
        (event.id, event.topic.as_str()),
        (Some(2), "items/1/created")
    );
    assert_eq!(event.payload, json!({"n": 2}));
    assert_eq!(rx.recv().await.expect("event").id, Some(3));
    server.commit(5, "items/2/created");
    assert_eq!(rx.recv().await.expect("event").id, Some(5));
    drop(rx);
    server.commit(6, "items/2/created");
    follow
        .await
        .expect("join")
        .expect("ends when the consumer stops");
}

#[tokio::test]
async fn tail_reconnects_with_last_event_id() {
    use axum::http::HeaderMap;
    // A stream that ends after one event: the second request must resume after it.
    let router = axum::Router::new().route(
        "/api/stream",
        axum::routing::get(|headers: HeaderMap| async move {
            let after: u64 = headers
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let id = after + 1;
            // Odd ids: the server says it stops; even ones: the connection just ends.
            // Unknown event types are skipped.
            let mut body = format!(
                "id: {id}\ndata: {{\"id\":{id},\"topic\":\"t\",\"payload\":{{}}}}\n\n\
                 event: later-feature\ndata: x\n\n"
            );
            if id % 2 == 1 {
                body.push_str("event: shutdown\ndata: stopping\n\n");
            }
            ([("content-type", "text/event-stream")], body)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    let options = spot_push::tail::TailOptions {
        server: format!("http://{addr}"),
        topic_filter: "#".into(),
        after_id: Some(10),
        reconnect_delay: std::time::Duration::from_millis(1),
        ca_cert: None,
        key: None,
    };
    let mut ids = Vec::new();
    let mut reasons = Vec::new();
    spot_push::tail::follow(
        &options,
        |e| {
            ids.push(e.id.expect("derived event"));
            ids.len() < 3
        },
        |why| reasons.push(why.to_string()),
    )
    .await
    .expect("follow");
    assert_eq!(ids, [11, 12, 13]);
    assert_eq!(reasons.len(), 2);
    assert!(reasons[0].ends_with(": stopping"), "{reasons:?}");
    assert!(reasons[1].ends_with(": stream ended"), "{reasons:?}");
}

#[tokio::test]
async fn tail_reports_a_refused_filter() {
    let server = Server::start(HubConfig::default()).await;
    let options = spot_push::tail::TailOptions {
        server: format!("http://{}", server.url),
        topic_filter: "a/#/b".into(),
        after_id: None,
        reconnect_delay: std::time::Duration::from_millis(1),
        ca_cert: None,
        key: None,
    };
    let err = spot_push::tail::follow(&options, |_| true, |_| {})
        .await
        .expect_err("refused");
    assert!(
        matches!(
            &err,
            spot_push::tail::TailError::Refused { status: 400, .. }
        ),
        "{err}"
    );
}

/// A client that never reads: once its socket is full for `ws_send_timeout`, the server
/// disconnects it (and its hub subscription ends) instead of holding it forever.
#[tokio::test]
async fn ws_stalled_reader_is_disconnected() {
    let server = Server::start_with(
        HubConfig::default(),
        StreamLimits {
            ws_send_timeout: std::time::Duration::from_millis(200),
            ..StreamLimits::default()
        },
    )
    .await;
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"subscribe": "#"})).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"subscribed": "#"}));
    let big = "x".repeat(64 * 1024);
    let ws_subscriptions = |hub: &Hub| {
        hub.stats()
            .outlets
            .iter()
            .find(|o| o.outlet == "ws")
            .map_or(0, |o| o.subscriptions)
    };
    // 64 MiB in total: more than loopback socket buffers hold.
    for id in 1..=1024 {
        let event =
            Published::from_value(id, "items/1/created", &json!({ "big": big })).expect("event");
        server.log.append(event.clone());
        server.hub.publish(event);
        if id % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for _ in 0..1000 {
        if ws_subscriptions(&server.hub) == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the stalled client was never disconnected");
}

/// An SSE client that stops reading: once an event waits `ws_send_timeout` for its full
/// socket, the stream ends and its hub subscription (its queue of events) with it, as for
/// WebSocket, instead of being held forever. (The connection itself waits for the socket:
/// a client that reads again gets the end of the stream.)
#[tokio::test]
async fn sse_stalled_reader_has_its_stream_ended_and_its_subscription_freed() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start_with(
        HubConfig::default(),
        StreamLimits {
            ws_send_timeout: std::time::Duration::from_millis(200),
            ..StreamLimits::default()
        },
    )
    .await;
    let sse_subscriptions = |hub: &Hub| {
        hub.stats()
            .outlets
            .iter()
            .find(|o| o.outlet == "sse")
            .map_or(0, |o| o.subscriptions)
    };
    let mut client = tokio::net::TcpStream::connect(&server.url)
        .await
        .expect("connect");
    client
        .write_all(b"GET /api/stream HTTP/1.1\r\nhost: spot\r\n\r\n")
        .await
        .expect("request");
    for _ in 0..1000 {
        if sse_subscriptions(&server.hub) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(sse_subscriptions(&server.hub), 1, "the stream is open");
    // 64 MiB in total, never read: more than loopback socket buffers hold.
    let big = "x".repeat(64 * 1024);
    for id in 1..=1024 {
        let event =
            Published::from_value(id, "items/1/created", &json!({ "big": big })).expect("event");
        server.log.append(event.clone());
        server.hub.publish(event);
        if id % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for _ in 0..1000 {
        if sse_subscriptions(&server.hub) == 0 {
            drop(client);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the stalled SSE client was never disconnected");
}

#[tokio::test]
async fn shutdown_closes_websockets_with_1001_and_ends_sse_streams_with_a_shutdown_event() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let server = Server::start(HubConfig::default()).await;
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"subscribe": "#"})).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"subscribed": "#"}));
    let response = reqwest::get(format!("http://{}/api/stream", server.url))
        .await
        .expect("connect");
    let mut sse = Box::pin(response.bytes_stream());
    server.commit(1, "items/1/created");
    assert_eq!(ws_recv(&mut ws).await["id"], 1);
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = sse.next().await.expect("open").expect("chunk");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    assert_eq!(server.shutdown.open_websockets(), 1);

    server.shutdown.shut_down();
    // WebSocket: a close frame saying why, then the end (the client library answered it).
    let frame = ws.next().await.expect("open").expect("frame");
    let Message::Close(Some(close)) = frame else {
        panic!("expected a close frame, got {frame:?}");
    };
    assert_eq!(close.code, CloseCode::Away, "1001 going away");
    assert_eq!(close.reason.as_str(), spot_push::SHUTDOWN_REASON);
    assert!(ws.next().await.is_none(), "closed after the handshake");
    server.shutdown.closed().await;
    assert_eq!(server.shutdown.open_websockets(), 0);
    // SSE: a last `shutdown` event, then the body ends.
    while let Some(chunk) = sse.next().await {
        text.push_str(std::str::from_utf8(&chunk.expect("chunk")).expect("utf-8"));
    }
    assert!(
        text.ends_with(&format!(
            "event: shutdown\ndata: {}\n\n",
            spot_push::SHUTDOWN_REASON
        )),
        "{text:?}"
    );
    // New streams are refused.
    let refused = reqwest::get(format!("http://{}/api/stream", server.url))
        .await
        .expect("connect");
    assert_eq!(refused.status(), 503);
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/api/ws", server.url)).await;
    assert!(
        matches!(
            &refused,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503
        ),
        "{refused:?}"
    );
}

/// A client that never reads cannot answer the close frame: it is dropped after
/// `ws_close_timeout`, so the server's stop is not held up.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_websocket_client_that_never_answers() {
    let server = Server::start_with(
        HubConfig::default(),
        StreamLimits {
            ws_close_timeout: std::time::Duration::from_millis(100),
            ..StreamLimits::default()
        },
    )
    .await;
    let mut ws = ws_connect(&server).await;
    ws_send(&mut ws, json!({"subscribe": "#"})).await;
    assert_eq!(ws_recv(&mut ws).await, json!({"subscribed": "#"}));
    server.shutdown.shut_down();
    // The test keeps `ws` and never reads it again.
    tokio::time::timeout(std::time::Duration::from_secs(20), server.shutdown.closed())
        .await
        .expect("closed within the close timeout (guard only, no timing claim)");
    drop(ws);
}
