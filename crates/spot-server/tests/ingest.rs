//! Spot ingest over HTTP against the real server on loopback: streaming, acknowledgement,
//! replays, commands, malformed events, media types. The commands' tests run on the
//! embedded server and on a two-node cluster too (the request `PUT` to node A, the spot
//! posting to node B).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value};
use spot_protocol::{Decoder, Encoding, Event, EventKind, Limits};
use test_support::captures::http_spot203_body;

on_backends! {
    #[tokio::test]
    config_and_firmware_requests_are_delivered_once_in_the_next_response_then_cleared,
    a_protobuf_post_is_applied_and_commands_come_back_in_protobuf,
}

fn decode_all(encoding: Encoding, bytes: &[u8]) -> Vec<Event> {
    let mut d = Decoder::new(encoding, Limits::default());
    d.feed(bytes);
    d.finish();
    std::iter::from_fn(|| d.next_event())
        .map(|r| r.expect("valid event"))
        .collect()
}

async fn spot(addr: std::net::SocketAddr, serial: &str) -> Value {
    let (status, v) = get(addr, &format!("/api/spots/{serial}")).await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn vendor_capture_with_a_chunk_boundary_at_every_offset_is_applied_on_one_keep_alive_connection(
) {
    let (server, _dir) = start(|_| {}).await;
    let addr = server.http_addr();
    let body = http_spot203_body();
    let mut conn = Raw::connect(addr).await;
    for split in 1..body.len() {
        let resp = conn.post("203", &[&body[..split], &body[split..]]).await;
        assert_eq!(resp.status, 200, "split at {split}");
        assert_eq!(resp.header("x-spot-ack"), Some("0"));
        assert!(resp.header("date").is_some(), "Date header");
        assert!(resp.body.is_empty(), "no commands pending");
        assert_eq!(resp.header("x-spot-rejected"), None, "split at {split}");
    }
    let posts = (body.len() - 1) as u64;
    let s = spot(addr, "203").await;
    assert_eq!(s["serial_number"], "203");
    assert_eq!(s["request_counter"], posts);
    assert_eq!(s["event_counter"], 3 * posts);
    assert_eq!(s["version"], "35-42-g0388fd9-dirty");
    assert_eq!(s["status"]["boot_count"], 9347);
    assert_eq!(s["config"]["hostname"], "spot203");
    assert_eq!(s["config"]["bt_near"], -650);
    assert_eq!(s["is_online"], true);
    let (_, items) = get(addr, "/api/items?code_hex=000000000000000000004409").await;
    let item = &items["results"][0];
    assert_eq!(item["is_present"], true);
    assert_eq!(item["location"], s["report_location"]);
    let (_, location) = get(
        addr,
        &format!("/api/locations/{}", s["report_location"].as_str().unwrap()),
    )
    .await;
    assert_eq!(location["label"], "spot203");
    server.shutdown().await;
}

#[tokio::test]
async fn a_presence_is_visible_through_the_api_before_the_post_body_ends() {
    let (server, _dir) = start(|_| {}).await;
    let addr = server.http_addr();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut send = client::<ChannelBody>(addr).await;
    let req = hyper::Request::builder()
        .method("POST")
        .uri("/api/spots/42/events/")
        .header("host", "test")
        .header("content-type", "text/x-intellifi-events")
        .body(ChannelBody(rx))
        .unwrap();
    let response = tokio::spawn(async move { send.send_request(req).await });
    let mut first = spot_create(42, 1);
    first.extend(presence(
        "create",
        "e2801160600002054cc2096f",
        "near",
        Some(1),
    ));
    tx.send(Bytes::from(first)).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, v) = get(addr, "/api/presences").await;
            if v["results"].as_array().is_some_and(|r| !r.is_empty()) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("presence visible while the POST is open");
    assert_eq!(seen["results"][0]["proximity"], "near");
    assert!(!response.is_finished(), "no response before the body ends");
    drop(tx); // ends the body
    let resp = response.await.unwrap().expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-spot-ack"], "1");
    server.shutdown().await;
}

#[tokio::test]
async fn replayed_sequence_numbers_are_acknowledged_but_stored_once_and_a_new_epoch_restarts() {
    let (server, _dir) = start(|_| {}).await;
    let addr = server.http_addr();
    let mut conn = Raw::connect(addr).await;
    let p = |seq| presence("update", "000000000000000000000001", "far", Some(seq));
    let resp = conn.post("7", &[&spot_create(7, 100), &p(1), &p(2)]).await;
    assert_eq!(resp.header("x-spot-ack"), Some("2"));
    let resp = conn
        .post("7", &[&spot_create(7, 100), &p(1), &p(2), &p(3)])
        .await;
    assert_eq!(resp.header("x-spot-ack"), Some("3"));
    assert_eq!(spot(addr, "7").await["event_counter"], 5);
    let (_, metrics_text) = raw_get(addr, "/metrics").await;
    assert!(
        metrics_text.contains("spot_events_duplicate_total 2"),
        "{metrics_text}"
    );
    // The spot lost its buffer: a new epoch, numbering starts again.
    let resp = conn.post("7", &[&spot_create(7, 101), &p(1)]).await;
    assert_eq!(resp.header("x-spot-ack"), Some("1"));
    assert_eq!(spot(addr, "7").await["seq_epoch"], 101);
    server.shutdown().await;
}

async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut conn = Raw::connect(addr).await;
    let key = common::admin_key(addr);
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Api-Key: {key}\r\n\r\n").as_bytes())
        .await;
    let r = conn.response().await.unwrap();
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

#[tokio::test]
async fn a_malformed_event_in_the_middle_is_skipped_counted_and_the_rest_acknowledged() {
    let (server, _dir) = start(|_| {}).await;
    let addr = server.http_addr();
    let mut conn = Raw::connect(addr).await;
    let resp = conn
        .post(
            "9",
            &[
                &spot_create(9, 5),
                b"[\"presence\",\"create\",{oops}]\n\n",
                &presence("create", "000000000000000000000009", "near", Some(4)),
            ],
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-spot-ack"), Some("4"));
    assert_eq!(resp.header("x-spot-rejected"), Some("1"));
    let (_, text) = raw_get(addr, "/metrics").await;
    assert!(text.contains("spot_events_malformed_total 1"), "{text}");
    let (_, items) = get(addr, "/api/items?code_hex=000000000000000000000009").await;
    assert_eq!(items["results"][0]["is_present"], true);
    server.shutdown().await;
}

#[tokio::test]
async fn an_item_code_that_is_not_hex_is_a_malformed_event_not_a_new_item() {
    let (server, _dir) = start(|_| {}).await;
    let addr = server.http_addr();
    let mut conn = Raw::connect(addr).await;
    let resp = conn
        .post(
            "10",
            &[
                &spot_create(10, 1),
                &presence("create", "zz", "near", Some(1)),
                &event("hit", "create", json!({"seq": 2, "item_code": ""})),
                &presence("create", "00000000000000000000000a", "near", Some(3)),
            ],
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-spot-rejected"), Some("2"));
    assert_eq!(resp.header("x-spot-ack"), Some("3"));
    let (_, text) = raw_get(addr, "/metrics").await;
    assert!(text.contains("spot_events_malformed_total 2"), "{text}");
    let (_, items) = get(addr, "/api/items").await;
    let codes: Vec<&str> = items["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|i| i["code_hex"].as_str().expect("code_hex"))
        .collect();
    assert_eq!(codes, ["00000000000000000000000a"]);
    server.shutdown().await;
}

async fn config_and_firmware_requests_are_delivered_once_in_the_next_response_then_cleared(
    backend: Backend,
) {
    let site = start_on(backend, |_| {}).await;
    let addr = site.b();
    let mut conn = Raw::connect(addr).await;
    assert_eq!(conn.post("11", &[&spot_create(11, 1)]).await.status, 200);
    let (status, v) = call(
        site.a(),
        "PUT",
        "/api/spots/11",
        Some(json!({"config_request": {"brain_address": "10.0.0.9"},
                    "firmware_request": {"url": "/fw/b22.bin", "version": "beta22"}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["config_request"]["brain_address"], "10.0.0.9");
    let resp = conn.post("11", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some(Encoding::Json.media_type())
    );
    let commands = decode_all(Encoding::Json, &resp.body);
    assert_eq!(commands.len(), 2, "{}", String::from_utf8_lossy(&resp.body));
    match &commands[0].kind {
        EventKind::Config(_, c) => assert_eq!(c.brain_address.as_deref(), Some("10.0.0.9")),
        other => panic!("expected config update, got {other:?}"),
    }
    match &commands[1].kind {
        EventKind::Firmware(_, f) => assert_eq!(f.version.as_deref(), Some("beta22")),
        other => panic!("expected firmware update, got {other:?}"),
    }
    let s = spot(addr, "11").await;
    assert_eq!(s["config_request"], Value::Null);
    assert_eq!(s["firmware_request"], Value::Null);
    let resp = conn.post("11", &[]).await;
    assert!(resp.body.is_empty(), "handed over once");
    site.shutdown().await;
}

#[tokio::test]
async fn unknown_media_types_are_refused_with_a_readable_error() {
    let (server, _dir) = start(|_| {}).await;
    let addr = server.http_addr();
    let mut conn = Raw::connect(addr).await;
    conn.send(
        b"POST /api/spots/5/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
          Content-Length: 2\r\n\r\n[]",
    )
    .await;
    let resp = conn.response().await.unwrap();
    assert_eq!(resp.status, 415);
    assert!(resp.json()["error"]
        .as_str()
        .unwrap()
        .contains("text/x-intellifi-events"));
    assert_eq!(resp.header("x-spot-ack"), Some("0"));
    let mut conn = Raw::connect(addr).await;
    conn.post_head("5", "Accept: application/xml\r\n").await;
    conn.end().await;
    let resp = conn.response().await.unwrap();
    assert_eq!(resp.status, 406);
    server.shutdown().await;
}

#[tokio::test]
async fn a_content_length_body_without_trailing_slash_is_accepted() {
    let (server, _dir) = start(|_| {}).await;
    let addr = server.http_addr();
    let body = http_spot203_body();
    let mut conn = Raw::connect(addr).await;
    conn.send(
        format!(
            "POST /api/spots/203/events HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    conn.send(&body).await;
    let resp = conn.response().await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(spot(addr, "203").await["event_counter"], 3);
    server.shutdown().await;
}

#[tokio::test]
async fn derived_events_carry_the_spec_topics() {
    let (server, _dir) = start(|_| {}).await;
    let addr = server.http_addr();
    let mut conn = Raw::connect(addr).await;
    let code = "000000000000000000000077";
    conn.post(
        "77",
        &[
            &spot_create(77, 1),
            &presence("create", code, "far", Some(1)),
            &presence("update", code, "immediate", Some(2)),
            &presence("delete", code, "immediate", Some(3)),
        ],
    )
    .await;
    let s = spot(addr, "77").await;
    let (_, items) = get(addr, &format!("/api/items?code_hex={code}")).await;
    let item = items["results"][0]["id"].as_str().unwrap().to_string();
    let loc = s["report_location"].as_str().unwrap();
    let (_, events) = get(addr, "/api/events?sort=id&results_only=true").await;
    // The audit entry of the first admin key (`keys/<id>/created`) is not the spot's.
    let topics: Vec<String> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap().to_string())
        .filter(|t| !t.starts_with("keys/"))
        .collect();
    let presence_id = topics
        .iter()
        .find_map(|t| t.strip_prefix("presences/"))
        .and_then(|t| t.split('/').next())
        .unwrap()
        .to_string();
    let spot_id = s["id"].as_str().unwrap();
    let expected = vec![
        format!("spots/{spot_id}/connected/77"),
        format!("items/{item}/created"),
        format!("presences/{presence_id}/created/{item}/{loc}/far"),
        format!("items/{item}/appeared"),
        format!(
            "presences/{presence_id}/changed-proximity/{item}/{loc}/immediate/far/moved-closer"
        ),
        format!("presences/{presence_id}/deleted/{item}/{loc}/immediate"),
        format!("items/{item}/disappeared"),
    ];
    assert_eq!(topics, expected);
    let (_, item_doc) = get(addr, &format!("/api/items/{item}")).await;
    assert_eq!(item_doc["is_present"], false);
    assert_eq!(item_doc["location"], loc, "last known location kept");
    server.shutdown().await;
}

async fn a_protobuf_post_is_applied_and_commands_come_back_in_protobuf(backend: Backend) {
    let site = start_on(backend, |_| {}).await;
    let addr = site.b();
    // The vendor capture's events, re-encoded as one protobuf stream (one stream per body).
    let events = decode_all(Encoding::Json, &http_spot203_body());
    let mut encoder = spot_protocol::Encoder::new(Encoding::Protobuf);
    let mut body = Vec::new();
    for event in &events {
        encoder.encode(event, &mut body);
    }
    let pb_head = "POST /api/spots/203/events/ HTTP/1.1\r\nHost: test\r\n\
                   User-Agent: spot/35-42-g0388fd9-dirty\r\nTransfer-Encoding: chunked\r\n\
                   Content-Type: application/x-intellifi-events-pb\r\n\
                   Accept: application/x-intellifi-events-pb\r\n\r\n";
    let mut conn = Raw::connect(addr).await;
    conn.send(pb_head.as_bytes()).await;
    for piece in body.chunks(7) {
        conn.chunk(piece).await;
    }
    conn.end().await;
    let resp = conn.response().await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty(), "no commands yet");
    let s = spot(addr, "203").await;
    assert_eq!(s["event_counter"], 3);
    assert_eq!(s["config"]["bt_near"], -650);
    let (_, items) = get(addr, "/api/items?code_hex=000000000000000000004409").await;
    assert_eq!(items["results"][0]["is_present"], true);

    let (status, v) = call(
        site.a(),
        "PUT",
        "/api/spots/203",
        Some(json!({"config_request": {"send_hits": true}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    conn.send(pb_head.as_bytes()).await;
    conn.end().await;
    let resp = conn.response().await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some(Encoding::Protobuf.media_type())
    );
    let commands = decode_all(Encoding::Protobuf, &resp.body);
    assert_eq!(commands.len(), 1);
    match &commands[0].kind {
        EventKind::Config(_, c) => assert_eq!(c.send_hits, Some(true)),
        other => panic!("expected a config update, got {other:?}"),
    }
    site.shutdown().await;
}
