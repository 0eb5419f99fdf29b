//! Push wired into the real server: a spot POSTs a presence and applications receive the
//! derived event over WebSocket, SSE (with `Last-Event-ID` resumption), MQTT (a real
//! mosquitto) and a webhook subscription created through the REST API. Each test on the
//! embedded server and on a two-node cluster (a spot posting to one node, the application
//! on the other), but the one about a stalled client's connection.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{admin_key, get, on_backends, presence, spot_create, start, start_on, Backend, Raw};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use spot_push::tail::SseParser;
use test_support::mosquitto;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

on_backends! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_websocket_client_receives_the_presence_a_spot_posts,
    a_websocket_client_receives_every_derived_event_of_a_new_spot_in_order,
    an_sse_client_resumes_with_last_event_id_without_losses,
    an_sse_client_resumes_between_two_events_of_one_post,
    a_real_mqtt_subscriber_receives_the_presence,
    a_webhook_subscription_created_through_the_api_receives_the_presence,
    every_event_a_webhook_matches_reaches_it_once_in_order,
    event_ids_keep_increasing_across_a_restart_and_resume_reads_the_stored_log,
    shutdown_ends_open_event_streams_instead_of_waiting_for_the_grace_period,
    with_publish_raw_the_spots_own_events_reach_websocket_sse_and_mqtt,
    without_publish_raw_no_raw_event_is_pushed,
    events_committed_while_the_broker_is_down_reach_it_after_a_server_restart,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client subscribed to `filter` (after the server's acknowledgement).
async fn ws_subscribe(addr: SocketAddr, filter: &str) -> Ws {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws?key={}", admin_key(addr)))
            .await
            .expect("WebSocket upgrade");
    ws.send(Message::text(json!({ "subscribe": filter }).to_string()))
        .await
        .expect("send");
    let ack = ws.next().await.expect("open").expect("frame");
    assert_eq!(
        ack.to_text().expect("text"),
        json!({ "subscribed": filter }).to_string()
    );
    ws
}

/// How long a test waits for an event it expects (instead of hanging without it).
const EVENT_WITHIN: Duration = Duration::from_secs(20);

async fn ws_next(ws: &mut Ws) -> Value {
    let next = async {
        loop {
            let frame = ws.next().await.expect("open").expect("frame");
            if let Message::Text(text) = frame {
                return serde_json::from_str(&text).expect("JSON event");
            }
        }
    };
    tokio::time::timeout(EVENT_WITHIN, next)
        .await
        .expect("a WebSocket event within 20 s")
}

/// The spot `serial` POSTs a `spot create` and a presence of `code`.
async fn post_presence(addr: SocketAddr, serial: &str, code: &str) {
    let mut spot = Raw::connect(addr).await;
    let resp = spot
        .post(
            serial,
            &[
                &spot_create(serial.parse().expect("numeric serial"), 1),
                &presence("create", code, "near", None),
            ],
        )
        .await;
    assert_eq!(resp.status, 200);
}

/// Checks `event` is the `presences/<id>/created/<item>/<location>/near` of item `code`
/// with the resource as the REST API shows it.
async fn assert_presence_created(addr: SocketAddr, event: &Value, code: &str) {
    let (_, items) = get(addr, "/api/items?results_only=true").await;
    let item = items
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i["code_hex"] == code)
        .expect("item of the code")
        .clone();
    let payload = &event["payload"];
    let resource = &payload["resource"];
    let presence_id = resource["id"].as_str().expect("presence id");
    let location = item["location"].as_str().expect("item location");
    assert_eq!(
        event["topic"],
        format!(
            "presences/{presence_id}/created/{}/{location}/near",
            item["id"].as_str().expect("item id")
        )
    );
    let (status, stored) = get(addr, &format!("/api/presences/{presence_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(resource["item"], stored["item"]);
    assert_eq!(resource["location"], stored["location"]);
    assert_eq!(resource["proximity"], "near");
    assert_eq!(payload["time_event"], "2024-01-01T00:00:01Z");
    assert!(payload["time_created"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(event["id"].as_u64().is_some_and(|id| id >= 1), "{event}");
}

async fn a_websocket_client_receives_the_presence_a_spot_posts(backend: Backend) {
    let site = start_on(backend, |_| {}).await;
    let mut ws = ws_subscribe(site.b(), "presences/#").await;
    post_presence(site.a(), "203", "e2801100").await;
    let event = ws_next(&mut ws).await;
    assert_presence_created(site.b(), &event, "e2801100").await;
    drop(ws);
    site.shutdown().await;
}

/// A new spot's first POST: it comes online and sees item `code` appear, come closer and
/// go. Its seven derived events: connected, item created, presence created, appeared,
/// changed proximity, presence deleted, disappeared.
async fn post_a_new_spots_item_lifecycle(addr: SocketAddr, serial: u64, code: &str) {
    let mut spot = Raw::connect(addr).await;
    let body = [
        spot_create(serial, 1),
        presence("create", code, "far", Some(1)),
        presence("update", code, "immediate", Some(2)),
        presence("delete", code, "immediate", Some(3)),
    ];
    let chunks: Vec<&[u8]> = body.iter().map(Vec::as_slice).collect();
    assert_eq!(spot.post(&serial.to_string(), &chunks).await.status, 200);
}

/// Every derived event of a new spot's first POST (to node A), in order with consecutive
/// ids, to a client subscribed to everything (on node B) before it.
async fn a_websocket_client_receives_every_derived_event_of_a_new_spot_in_order(backend: Backend) {
    let site = start_on(backend, |_| {}).await;
    let mut ws = ws_subscribe(site.b(), "#").await;
    let code = "000000000000000000000077";
    post_a_new_spots_item_lifecycle(site.a(), 77, code).await;
    let mut events = Vec::new();
    while events.len() < 7 {
        let event = ws_next(&mut ws).await;
        // On a cluster, a node's first admin key's audit event reaches the log after the
        // node started (the embedded server logs it before it serves).
        if !event["topic"].as_str().unwrap_or("").starts_with("keys/") {
            events.push(event);
        }
    }
    let (_, spot) = get(site.b(), "/api/spots/77").await;
    let (_, items) = get(site.b(), &format!("/api/items?code_hex={code}")).await;
    let (spot, location) = (&spot["id"], &spot["report_location"]);
    let item = items["results"][0]["id"]
        .as_str()
        .expect("the item")
        .to_string();
    let presence = events[2]["payload"]["resource"]["id"].clone();
    let (spot, location, presence) = (
        spot.as_str().expect("spot id"),
        location.as_str().expect("location id"),
        presence.as_str().expect("presence id"),
    );
    let topics: Vec<&str> = events
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(
        topics,
        [
            format!("spots/{spot}/connected/77"),
            format!("items/{item}/created"),
            format!("presences/{presence}/created/{item}/{location}/far"),
            format!("items/{item}/appeared"),
            format!("presences/{presence}/changed-proximity/{item}/{location}/immediate/far/moved-closer"),
            format!("presences/{presence}/deleted/{item}/{location}/immediate"),
            format!("items/{item}/disappeared"),
        ]
    );
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect();
    let first = ids[0];
    assert_eq!(
        ids,
        (first..first + 7).collect::<Vec<_>>(),
        "consecutive ids"
    );
    drop(ws);
    site.shutdown().await;
}

/// An SSE stream read with reqwest: (id, event) pairs.
struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: SseParser,
    ready: std::collections::VecDeque<(u64, Value)>,
}

impl Sse {
    async fn open(addr: SocketAddr, filter: &str, last_event_id: Option<u64>) -> Sse {
        let mut request = reqwest::Client::new().get(format!(
            "http://{addr}/api/stream?topic_filter={}",
            filter.replace('#', "%23")
        ));
        request = request.header("X-Api-Key", admin_key(addr));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("SSE request");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Sse {
            body: Box::pin(response.bytes_stream()),
            parser: SseParser::new(),
            ready: Default::default(),
        }
    }

    async fn next(&mut self) -> (u64, Value) {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return e;
            }
            let chunk = tokio::time::timeout(EVENT_WITHIN, self.body.next())
                .await
                .expect("an SSE event within 20 s")
                .expect("stream open")
                .expect("chunk");
            for message in self.parser.push(&chunk).expect("SSE") {
                if message.data.is_empty() {
                    continue; // keep-alive
                }
                // The last id seen (a raw event has none of its own: SSE keeps the last).
                let id = message.id.as_deref().expect("id").parse().expect("u64 id");
                let event = serde_json::from_str(&message.data).expect("JSON");
                self.ready.push_back((id, event));
            }
        }
    }
}

/// On the cluster, the client reads node B first and resumes on node A.
async fn an_sse_client_resumes_with_last_event_id_without_losses(backend: Backend) {
    let site = start_on(backend, |_| {}).await;
    let addr = site.a();
    // The reference: a WebSocket client connected all along.
    let mut reference = ws_subscribe(addr, "presences/#").await;
    let mut sse = Sse::open(site.b(), "presences/#", None).await;
    post_presence(addr, "203", "aa01").await;
    let (first_id, first) = sse.next().await;
    assert_presence_created(addr, &first, "aa01").await;
    assert_eq!(first_id, first["id"].as_u64().expect("id"));
    assert_eq!(ws_next(&mut reference).await, first);
    drop(sse); // the client goes away…
    post_presence(addr, "203", "aa02").await;
    post_presence(addr, "204", "aa03").await;
    let missed = vec![ws_next(&mut reference).await, ws_next(&mut reference).await];
    // …and comes back with the last id it saw.
    let mut sse = Sse::open(addr, "presences/#", Some(first_id)).await;
    for expected in &missed {
        let (id, event) = sse.next().await;
        assert_eq!(&event, expected);
        assert_eq!(id, expected["id"].as_u64().expect("id"));
    }
    assert_presence_created(addr, &missed[0], "aa02").await;
    assert_presence_created(addr, &missed[1], "aa03").await;
    // Then live again.
    post_presence(addr, "204", "aa04").await;
    let live = ws_next(&mut reference).await;
    assert_eq!(sse.next().await.1, live);
    drop((sse, reference));
    site.shutdown().await;
}

/// A client that saw only some of the derived events of one POST (a cluster stores them in
/// one `SPOT_OUT` message) gets the rest, and nothing twice, when it resumes after the last
/// one it saw.
async fn an_sse_client_resumes_between_two_events_of_one_post(backend: Backend) {
    let site = start_on(backend, |_| {}).await;
    let mut reference = ws_subscribe(site.b(), "#").await;
    post_a_new_spots_item_lifecycle(site.a(), 78, "000000000000000000000078").await;
    let mut all = Vec::new();
    while all.len() < 7 {
        all.push(ws_next(&mut reference).await);
    }
    let ids: Vec<u64> = all.iter().map(|e| e["id"].as_u64().expect("id")).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    for seen in [0, 2, 5] {
        let mut sse = Sse::open(site.a(), "#", Some(ids[seen])).await;
        for expected in &all[seen + 1..] {
            let (id, event) = sse.next().await;
            assert_eq!(&event, expected, "resumed after event {seen}");
            assert_eq!(id, expected["id"].as_u64().expect("id"));
        }
    }
    drop(reference);
    site.shutdown().await;
}

/// Every node with the same MQTT settings: each event reaches the broker once.
async fn a_real_mqtt_subscriber_receives_the_presence(backend: Backend) {
    let broker_dir = tempfile::tempdir().expect("tempdir");
    let port = test_support::free_port();
    let _broker = mosquitto::Broker::start(broker_dir.path(), port);
    let mut received = mosquitto::subscriber(port, "site/presences/#").await;
    let site = start_on(backend, move |config| {
        let mut mqtt =
            spot_push::MqttConfig::from_url(&format!("mqtt://127.0.0.1:{port}/site")).expect("url");
        mqtt.client_id = "spot-server-push-test".into();
        config.push.mqtt = Some(mqtt);
    })
    .await;
    let addr = site.a();
    let mut ws = ws_subscribe(site.b(), "presences/#").await;
    post_presence(addr, "203", "bb01").await;
    let (topic, payload, qos) = received.recv().await.expect("MQTT message");
    let event = ws_next(&mut ws).await;
    assert_eq!(
        topic,
        format!("site/{}", event["topic"].as_str().expect("topic"))
    );
    assert_eq!(payload, event["payload"]);
    assert_eq!(qos, rumqttc::QoS::AtLeastOnce);
    assert_presence_created(site.b(), &event, "bb01").await;
    // Once: what the broker gets up to the next presence is that presence only.
    post_presence(addr, "203", "bb02").await;
    let next = ws_next(&mut ws).await;
    let next_topic = format!("site/{}", next["topic"].as_str().expect("topic"));
    let (topic, _, _) = received.recv().await.expect("MQTT message");
    assert_eq!(topic, next_topic, "the first presence's event came again");
    // One outlet runs (on a cluster, on the node holding its lease).
    let mut nodes = vec![site.a(), site.b()];
    nodes.dedup();
    let mut running = 0;
    for node in nodes {
        let (_, metrics) = metrics(node).await;
        let subscribed = metrics.contains("spot_push_subscriptions{outlet=\"mqtt\"} 1");
        let connected = metrics.contains("spot_push_mqtt_connected 1");
        assert_eq!(subscribed, connected, "{metrics}");
        running += usize::from(connected);
    }
    assert_eq!(running, 1, "MQTT outlets running");
    drop(ws);
    site.shutdown().await;
}

async fn metrics(addr: SocketAddr) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .header("X-Api-Key", admin_key(addr))
        .send()
        .await
        .expect("metrics");
    let status = response.status().as_u16();
    (status, response.text().await.expect("text"))
}

/// A local webhook target: every POST body and its idempotency key.
async fn webhook_target() -> (String, mpsc::UnboundedReceiver<(String, Value)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send((key, serde_json::from_str(&body).unwrap_or(Value::Null)));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/hook"), rx)
}

/// On the cluster, the subscription is made through node A, the spot posts to node B, and
/// the subscription (one for the cluster) shows its delivery through node B.
async fn a_webhook_subscription_created_through_the_api_receives_the_presence(backend: Backend) {
    let site = start_on(backend, |_| {}).await;
    let addr = site.a();
    let (target, mut hooks) = webhook_target().await;
    let created = reqwest::Client::new()
        .post(format!("http://{addr}/api/subscriptions"))
        .header("content-type", "application/json")
        .header("X-Api-Key", admin_key(addr))
        .body(
            json!({
                "topic_filter": "presences/+/created/#",
                "description": "test",
                "target_url": target,
                "target_retry": true,
            })
            .to_string(),
        )
        .send()
        .await
        .expect("create subscription");
    assert_eq!(created.status(), 201);
    let subscription: Value =
        serde_json::from_str(&created.text().await.expect("body")).expect("JSON");
    let mut ws = ws_subscribe(addr, "presences/#").await;
    post_presence(site.b(), "203", "cc01").await;
    let (key, body) = hooks.recv().await.expect("webhook delivery");
    let event = ws_next(&mut ws).await;
    assert_eq!(body, event);
    assert_eq!(key, event["id"].to_string());
    assert_presence_created(addr, &body, "cc01").await;
    let id = &subscription["id"];
    // The count is written after the target answered: poll the resource until it shows.
    let shown = loop {
        let response = reqwest::Client::new()
            .get(format!("http://{}/api/subscriptions/{id}", site.b()))
            .header("X-Api-Key", admin_key(site.b()))
            .send()
            .await
            .expect("get");
        let shown: Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
        if shown["delivered_count"] == 1 {
            break shown;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(shown["failed_count"], 0);
    drop(ws);
    site.shutdown().await;
}

/// On the cluster, both nodes run a worker for the subscription; only the holder of its
/// lease delivers, so no event comes twice, and they come in the log's order.
async fn every_event_a_webhook_matches_reaches_it_once_in_order(backend: Backend) {
    let site = start_on(backend, |_| {}).await;
    let (target, mut hooks) = webhook_target().await;
    let created = reqwest::Client::new()
        .post(format!("http://{}/api/subscriptions", site.b()))
        .header("X-Api-Key", admin_key(site.b()))
        .body(json!({ "topic_filter": "presences/+/created/#", "target_url": target }).to_string())
        .send()
        .await
        .expect("create subscription");
    assert_eq!(created.status(), 201);
    let subscription: Value =
        serde_json::from_str(&created.text().await.expect("body")).expect("JSON");
    let mut ws = ws_subscribe(site.a(), "presences/+/created/#").await;
    let codes: Vec<String> = (1..=8).map(|i| format!("ee{i:02}")).collect();
    for (i, code) in codes.iter().enumerate() {
        let node = if i % 2 == 0 { site.a() } else { site.b() };
        post_presence(node, "204", code).await;
    }
    let mut pushed = Vec::new();
    for _ in &codes {
        pushed.push(ws_next(&mut ws).await["id"].to_string());
    }
    let mut delivered = Vec::new();
    for _ in &codes {
        delivered.push(hooks.recv().await.expect("webhook delivery").0);
    }
    assert_eq!(delivered, pushed, "each event once, in the log's order");
    let id = &subscription["id"];
    let shown = loop {
        let (status, shown) = get(site.a(), &format!("/api/subscriptions/{id}")).await;
        assert_eq!(status, 200);
        if shown["delivered_count"] == codes.len() {
            break shown;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(shown["failed_count"], 0);
    assert!(hooks.try_recv().is_err(), "no event delivered twice");
    drop(ws);
    site.shutdown().await;
}

async fn event_ids_keep_increasing_across_a_restart_and_resume_reads_the_stored_log(
    backend: Backend,
) {
    let mut site = start_on(backend, |_| {}).await;
    let mut ws = ws_subscribe(site.b(), "presences/#").await;
    post_presence(site.a(), "203", "dd01").await;
    let before = ws_next(&mut ws).await;
    drop(ws);
    site.restart().await;
    let addr = site.b();
    let mut sse = Sse::open(addr, "presences/#", Some(0)).await;
    let (id, replayed) = sse.next().await;
    assert_eq!(replayed, before, "resumed from the stored log");
    assert_eq!(id, before["id"].as_u64().expect("id"));
    post_presence(site.a(), "203", "dd02").await;
    let (after_id, after) = sse.next().await;
    assert_presence_created(addr, &after, "dd02").await;
    assert!(after_id > id, "{after_id} > {id}");
    drop(sse);
    site.shutdown().await;
}

/// On the cluster, one stream on each node, both stopped.
async fn shutdown_ends_open_event_streams_instead_of_waiting_for_the_grace_period(
    backend: Backend,
) {
    let site = start_on(backend, |config| {
        config.limits.shutdown_grace = std::time::Duration::from_secs(3600);
    })
    .await;
    let mut sse = Sse::open(site.a(), "#", None).await;
    let mut ws = ws_subscribe(site.b(), "#").await;
    post_presence(site.a(), "203", "ee01").await;
    sse.next().await;
    ws_next(&mut ws).await;
    let stopping = tokio::spawn(site.shutdown());
    // Guard only (no timing claim): without the fix this would wait for the 1 h grace.
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        // SSE: a last `shutdown` event, then the end of the body.
        let mut shutdown_event = None;
        while let Some(chunk) = sse.body.next().await {
            let Ok(chunk) = chunk else { break };
            for message in sse.parser.push(&chunk).expect("SSE") {
                if message.event == "shutdown" {
                    shutdown_event = Some(message.data);
                }
            }
        }
        assert_eq!(shutdown_event.as_deref(), Some(spot_push::SHUTDOWN_REASON));
        // WebSocket: close frame 1001 with the reason, then the end.
        let close = loop {
            match ws.next().await.expect("open").expect("frame") {
                Message::Close(close) => break close.expect("close frame with a code"),
                _ => continue, // events before the stop
            }
        };
        assert_eq!(u16::from(close.code), 1001);
        assert_eq!(close.reason.as_str(), spot_push::SHUTDOWN_REASON);
        assert!(ws.next().await.is_none());
        stopping.await.expect("shutdown task");
    })
    .await
    .expect("the streams ended and the server stopped");
}

/// The resource id of the spot with `serial`.
async fn spot_id(addr: SocketAddr, serial: &str) -> String {
    let (_, spots) = get(addr, "/api/spots?results_only=true").await;
    spots
        .as_array()
        .expect("spots")
        .iter()
        .find(|s| s["serial_number"] == serial)
        .and_then(|s| s["id"].as_str())
        .expect("the spot's id")
        .to_string()
}

/// Checks `payload` is the raw `presence create` of `code` that spot 203 posted.
fn assert_raw_presence(payload: &Value, code: &str) {
    assert_eq!(payload["resource"]["item_code"], code, "{payload}");
    assert_eq!(payload["resource"]["proximity"], "near");
    assert_eq!(payload["serial_number"], "203");
    assert_eq!(payload["seq"], Value::Null, "posted without seq");
    assert_eq!(payload["time_event"], "2024-01-01T00:00:01Z");
    assert!(payload["time_created"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
}

async fn with_publish_raw_the_spots_own_events_reach_websocket_sse_and_mqtt(backend: Backend) {
    let broker_dir = tempfile::tempdir().expect("tempdir");
    let port = test_support::free_port();
    let _broker = mosquitto::Broker::start(broker_dir.path(), port);
    let mut mqtt = mosquitto::subscriber(port, "spots/+/events/presence/#").await;
    let site = start_on(backend, move |config| {
        let mut mqtt =
            spot_push::MqttConfig::from_url(&format!("mqtt://127.0.0.1:{port}")).expect("url");
        mqtt.client_id = "spot-server-raw-test".into();
        config.push.mqtt = Some(mqtt);
        config.push.publish_raw = true;
    })
    .await;
    let addr = site.b();
    let mut ws = ws_subscribe(addr, "spots/+/events/#").await;
    let mut sse = Sse::open(addr, "#", None).await;
    post_presence(site.a(), "203", "ff01").await;
    let spot = spot_id(addr, "203").await;
    // WebSocket: the spot create, then the presence, without ids.
    let create = ws_next(&mut ws).await;
    assert_eq!(create["topic"], format!("spots/{spot}/events/spot/create"));
    assert_eq!(create["payload"]["resource"]["spot_id"], 203);
    assert!(
        create.get("id").is_none(),
        "raw events have no id: {create}"
    );
    let raw = ws_next(&mut ws).await;
    assert_eq!(raw["topic"], format!("spots/{spot}/events/presence/create"));
    assert!(raw.get("id").is_none(), "{raw}");
    assert_raw_presence(&raw["payload"], "ff01");
    // SSE ("#"): the derived events carry ids; the raw ones (after the derived ones of
    // their commit) have none: the SSE last event id stays the last derived one's.
    let mut derived_ids = Vec::new();
    let mut raw_topics = Vec::new();
    while raw_topics.len() < 2 {
        let (id, event) = sse.next().await;
        match event.get("id") {
            Some(own) => {
                assert_eq!(own.as_u64(), Some(id));
                derived_ids.push(id);
            }
            None => {
                assert_eq!(
                    Some(&id),
                    derived_ids.last(),
                    "SSE keeps the last derived id"
                );
                raw_topics.push(event["topic"].clone());
                if raw_topics.len() == 2 {
                    assert_eq!(event, raw);
                }
            }
        }
    }
    assert!(!derived_ids.is_empty());
    // MQTT: the same payload.
    let (topic, payload, _) = mqtt.recv().await.expect("MQTT message");
    assert_eq!(topic, raw["topic"]);
    assert_eq!(payload, raw["payload"]);
    let (_, metrics) = metrics(addr).await;
    assert!(
        metrics.contains("spot_push_raw_published_total 2"),
        "{metrics}"
    );
    drop((ws, sse));
    site.shutdown().await;
}

async fn without_publish_raw_no_raw_event_is_pushed(backend: Backend) {
    let site = start_on(backend, |_| {}).await;
    let addr = site.b();
    let mut ws = ws_subscribe(addr, "#").await;
    post_presence(site.a(), "203", "ff02").await;
    post_presence(site.a(), "204", "ff03").await;
    // Everything up to the second spot's presence: raw events of the first POST would
    // have come before it.
    loop {
        let event = ws_next(&mut ws).await;
        let topic = event["topic"].as_str().expect("topic");
        assert!(!topic.contains("/events/"), "raw event pushed: {event}");
        assert!(event["id"].is_u64(), "{event}");
        if topic.starts_with("presences/") && event["payload"]["resource"]["item"].is_string() {
            let (_, items) = get(addr, "/api/items?results_only=true").await;
            let ff03 = items
                .as_array()
                .expect("items")
                .iter()
                .find(|i| i["code_hex"] == "ff03")
                .map(|i| i["id"].clone());
            if ff03.as_ref() == Some(&event["payload"]["resource"]["item"]) {
                break;
            }
        }
    }
    let (_, metrics) = metrics(addr).await;
    assert!(
        metrics.contains("spot_push_raw_published_total 0"),
        "{metrics}"
    );
    drop(ws);
    site.shutdown().await;
}

/// The MQTT outlet's position is kept in the data directory: what was committed while the
/// broker was down reaches it after a restart of the server (with the broker back).
async fn events_committed_while_the_broker_is_down_reach_it_after_a_server_restart(
    backend: Backend,
) {
    let broker_dir = tempfile::tempdir().expect("tempdir");
    let port = test_support::free_port();
    let broker = mosquitto::Broker::start(broker_dir.path(), port);
    let mut received = mosquitto::subscriber(port, "site/presences/+/created/#").await;
    let mut site = start_on(backend, move |config| {
        let mut mqtt =
            spot_push::MqttConfig::from_url(&format!("mqtt://127.0.0.1:{port}/site")).expect("url");
        mqtt.client_id = "spot-server-restart-test".into();
        mqtt.reconnect_delay = std::time::Duration::from_millis(20);
        config.push.mqtt = Some(mqtt);
    })
    .await;
    post_presence(site.a(), "203", "aa01").await;
    let (first, _, _) = received.recv().await.expect("MQTT message");
    broker.stop();
    post_presence(site.a(), "203", "bb02").await;
    site.stop().await;

    let _broker = mosquitto::Broker::start(broker_dir.path(), port);
    site.start_again().await;
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), received.recv());
    let (second, _, _) = next
        .await
        .expect("the event committed while the broker was down arrives")
        .expect("MQTT message");
    assert_ne!(first, second, "the presence of the second item");
    site.shutdown().await;
}

/// `spot_connections_open{transport="http"}` and `spot_connections_write_stalled_total`
/// from a scrape (its own connection included in the first).
async fn connection_gauges(addr: SocketAddr) -> (u64, u64) {
    let (status, text) = metrics(addr).await;
    assert_eq!(status, 200);
    let value = |prefix: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(prefix));
        let line = line.unwrap_or_else(|| panic!("{prefix} in /metrics"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    (
        value("spot_connections_open{transport=\"http\"} "),
        value("spot_connections_write_stalled_total "),
    )
}

/// Issue 13 item 6: a stalled SSE client's stream was ended after the send timeout, but
/// its TCP connection (and its slot) stayed open: hyper waits for the full socket and no
/// longer polls the body. A write pending for the send timeout now ends the connection.
#[tokio::test]
async fn a_stalled_sse_client_loses_its_connection_after_the_send_timeout() {
    use tokio::io::AsyncWriteExt;
    let (server, _dir) = start(|c| {
        c.push.stream.ws_send_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let addr = server.http_addr();
    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /api/stream HTTP/1.1\r\nHost: spot\r\nX-Api-Key: {}\r\n\r\n",
        admin_key(addr)
    );
    client.write_all(request.as_bytes()).await.expect("request");
    let hub = server.context().outlets.hub();
    let sse_subscriptions = || {
        let stats = hub.stats();
        let sse = stats.outlets.iter().find(|o| o.outlet == "sse");
        sse.map_or(0, |o| o.subscriptions)
    };
    for _ in 0..500 {
        if sse_subscriptions() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(sse_subscriptions(), 1, "the stream is open");
    assert_eq!(
        connection_gauges(addr).await,
        (2, 0),
        "the stream and the scrape"
    );
    // 64 MiB in all, never read: more than loopback socket buffers hold.
    let big = "x".repeat(64 * 1024);
    for id in 1..=1024 {
        let event = spot_push::Published::from_value(id, "items/1/created", &json!({ "big": big }))
            .expect("event");
        hub.publish(event);
        if id % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for _ in 0..500 {
        if connection_gauges(addr).await == (1, 1) {
            drop(client);
            server.shutdown().await;
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "the stalled client's connection is still open: {:?}",
        connection_gauges(addr).await
    );
}
