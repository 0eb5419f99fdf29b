//! Raw TCP ingest: acks after commit and commands written back on the socket.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use spot_protocol::{Decoder, Encoding, Event, EventKind, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads from the socket until `want` returns true for a decoded event.
async fn read_until(
    stream: &mut TcpStream,
    decoder: &mut Decoder,
    want: impl Fn(&Event) -> bool,
) -> Event {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            while let Some(next) = decoder.next_event() {
                let event = next.expect("valid event from server");
                if want(&event) {
                    return event;
                }
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "server closed the stream");
            decoder.feed(&buf[..n]);
        }
    })
    .await
    .expect("event arrives")
}

fn ack_seq(event: &Event) -> Option<u64> {
    match &event.kind {
        EventKind::Other(o) if o.resource_type == "ack" => o.object.get("seq")?.as_u64(),
        _ => None,
    }
}

#[tokio::test]
async fn a_json_stream_is_acknowledged_after_commit_and_receives_commands_at_once() {
    let (server, _dir) = start(|c| c.tcp_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let tcp = server.tcp_addr().unwrap();
    let mut stream = TcpStream::connect(tcp).await.unwrap();
    let mut decoder = Decoder::new(Encoding::Json, Limits::default());
    let mut out = spot_create(500, 9);
    out.extend(presence(
        "create",
        "000000000000000000000500",
        "near",
        Some(1),
    ));
    out.extend(presence(
        "update",
        "000000000000000000000500",
        "far",
        Some(2),
    ));
    stream.write_all(&out).await.unwrap();
    read_until(&mut stream, &mut decoder, |e| ack_seq(e) == Some(2)).await;
    let (status, _) = get(server.http_addr(), "/api/spots/500").await;
    assert_eq!(status, 200);
    let (status, v) = call(
        server.http_addr(),
        "PUT",
        "/api/spots/500",
        Some(json!({"config_request": {"send_hits": true}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let command = read_until(&mut stream, &mut decoder, |e| {
        matches!(e.kind, EventKind::Config(..))
    })
    .await;
    match command.kind {
        EventKind::Config(_, c) => assert_eq!(c.send_hits, Some(true)),
        _ => unreachable!(),
    }
    let (_, spot) = get(server.http_addr(), "/api/spots/500").await;
    assert_eq!(spot["config_request"], serde_json::Value::Null);
    server.shutdown().await;
}

#[tokio::test]
async fn a_stream_not_starting_with_spot_create_is_closed() {
    let (server, _dir) = start(|c| c.tcp_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let mut stream = TcpStream::connect(server.tcp_addr().unwrap())
        .await
        .unwrap();
    stream
        .write_all(&presence(
            "create",
            "000000000000000000000001",
            "near",
            None,
        ))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let (_, spots) = get(server.http_addr(), "/api/spots?results_only=true").await;
    assert_eq!(spots, json!([]));
    server.shutdown().await;
}

/// Risk 1 of issue 11: a second stream of one serial replaced the first's command sink, so
/// the first's writer stopped (its later events were stored but never acknowledged), and
/// the first's close removed the second's sink (commands stayed pending).
#[tokio::test]
async fn a_second_stream_of_one_serial_neither_silences_the_first_nor_loses_its_commands() {
    let (server, _dir) = start(|c| c.tcp_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let tcp = server.tcp_addr().unwrap();
    let code = "000000000000000000000501";
    let mut first = TcpStream::connect(tcp).await.unwrap();
    let mut first_decoder = Decoder::new(Encoding::Json, Limits::default());
    let mut out = spot_create(501, 9);
    out.extend(presence("create", code, "near", Some(1)));
    first.write_all(&out).await.unwrap();
    read_until(&mut first, &mut first_decoder, |e| ack_seq(e) == Some(1)).await;

    let mut second = TcpStream::connect(tcp).await.unwrap();
    let mut second_decoder = Decoder::new(Encoding::Json, Limits::default());
    let mut out = spot_create(501, 9);
    out.extend(presence("update", code, "far", Some(2)));
    second.write_all(&out).await.unwrap();
    read_until(&mut second, &mut second_decoder, |e| ack_seq(e) == Some(2)).await;

    first
        .write_all(&presence("update", code, "near", Some(3)))
        .await
        .unwrap();
    read_until(&mut first, &mut first_decoder, |e| {
        ack_seq(e).is_some_and(|s| s >= 3)
    })
    .await;

    // The first stream closes; the second still takes the spot's commands.
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, v) = call(
        server.http_addr(),
        "PUT",
        "/api/spots/501",
        Some(json!({"config_request": {"send_hits": true}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let command = read_until(&mut second, &mut second_decoder, |e| {
        matches!(e.kind, EventKind::Config(..))
    })
    .await;
    match command.kind {
        EventKind::Config(_, c) => assert_eq!(c.send_hits, Some(true)),
        _ => unreachable!(),
    }
    server.shutdown().await;
}
