//! A demo of the push layer alone: serves `/api/ws`, `/api/stream` and `/api/subscriptions`
//! on 127.0.0.1:PORT and publishes a made-up event every INTERVAL_MS (to try `spot tail`,
//! `curl -N`, a WebSocket client or a webhook receiver by hand).
//!
//! ```text
//! cargo run -p spot-push --example demo_server -- 8080 500
//! spot tail --server http://127.0.0.1:8080 'items/#'
//! curl -N 'http://127.0.0.1:8080/api/stream?topic_filter=presences/%23'
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spot_push::webhook::{WebhookConfig, WebhookStore, Webhooks};
use spot_push::{
    stream_router, Hub, HubConfig, MemoryEventLog, Published, StreamLimits, StreamState,
};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(8080);
    let interval_ms: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let hub = Hub::new(HubConfig::default());
    let log = Arc::new(MemoryEventLog::new(100_000));
    let webhooks = Webhooks::start(
        WebhookStore::open_in_memory().expect("store"),
        &hub,
        log.clone(),
        WebhookConfig::default(),
    )
    .expect("webhooks");
    let router = stream_router(StreamState {
        hub: hub.clone(),
        log: log.clone(),
        limits: StreamLimits::default(),
        shutdown: Default::default(),
    })
    .merge(webhooks.router());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    tokio::spawn(async move { axum::serve(listener, router).await });
    eprintln!("demo push server on http://127.0.0.1:{port}");
    let topics = [
        "items/{n}/created",
        "presences/{n}/created/{n}/1/near",
        "items/{n}/moved-to/2",
        "spots/1/connected/203",
    ];
    for id in 1u64.. {
        let topic = topics[(id % 4) as usize].replace("{n}", &(id / 4).to_string());
        let payload = json!({
            "resource": {"id": id / 4},
            "time_event": "2026-11-24T21:00:00.000Z",
            "time_created": "2026-11-24T21:00:00.002Z",
        });
        let event = Published::from_value(id, &topic, &payload).expect("event");
        log.append(event.clone());
        hub.publish(event);
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
}
