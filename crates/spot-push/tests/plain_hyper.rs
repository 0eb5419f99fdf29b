//! The push routers mounted in a plain hyper server (like spot-server's), WebSocket included.

use std::convert::Infallible;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use spot_push::{
    call_router, is_push_path, stream_router, Hub, HubConfig, MemoryEventLog, Published,
    StreamLimits, StreamState,
};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_and_sse_through_a_hyper_service_fn() {
    let hub = Hub::new(HubConfig::default());
    let log = Arc::new(MemoryEventLog::new(100));
    let push = stream_router(StreamState {
        hub: hub.clone(),
        log: log.clone(),
        limits: StreamLimits::default(),
        shutdown: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let push = push.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let push = push.clone();
                    async move {
                        if is_push_path(req.uri().path()) {
                            Ok::<_, Infallible>(call_router(&push, req).await)
                        } else {
                            let mut not_found = hyper::Response::new(axum::body::Body::empty());
                            *not_found.status_mut() = hyper::StatusCode::NOT_FOUND;
                            Ok(not_found)
                        }
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
        .await
        .expect("ws upgrade through hyper");
    ws.send(Message::text(json!({"subscribe": "#"}).to_string()))
        .await
        .expect("send");
    let ack = ws.next().await.expect("open").expect("frame");
    assert_eq!(ack.to_text().expect("text"), r##"{"subscribed":"#"}"##);
    let event = Published::from_value(1, "items/1/created", &json!({"a": 1})).expect("event");
    log.append(event.clone());
    hub.publish(event);
    let frame = ws.next().await.expect("open").expect("frame");
    let got: Value = serde_json::from_str(frame.to_text().expect("text")).expect("json");
    assert_eq!(got["id"], 1);

    let response = reqwest::Client::new()
        .get(format!("http://{addr}/api/stream"))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .expect("sse");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = body.next().await.expect("open").expect("chunk");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    assert!(text.contains("id: 1\n"), "{text}");
    let status = reqwest::get(format!("http://{addr}/api/other"))
        .await
        .expect("get")
        .status();
    assert_eq!(status, 404);
}
