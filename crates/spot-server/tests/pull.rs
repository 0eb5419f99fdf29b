//! `--pull`: the server dials a spot's telnet service, ingests the stream like raw TCP,
//! writes nothing back, and dials again when the stream drops.

mod common;

use std::time::Duration;

use common::*;
use spot_server::ingest::pull::PullBackoff;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The vendor telnet capture, from the repo's golden fixtures.
const CAPTURE: &[u8] = test_support::captures::TELNET_SPOT201;

#[tokio::test]
async fn a_telnet_stream_is_ingested_and_redialled_after_it_drops() {
    // A stand-in for the spot's telnet service: the vendor capture, then the connection
    // drops; the redial gets a fresh hello and one more presence, and stays open.
    let telnet = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let telnet_addr = telnet.local_addr().unwrap();
    let capture = CAPTURE.to_vec();
    let (server, _dir) = start(|c| {
        c.pull = vec![telnet_addr.to_string()];
        c.pull_backoff = PullBackoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
    })
    .await;
    let (mut first, _) = telnet.accept().await.unwrap();
    first.write_all(&capture).await.unwrap();
    drop(first);
    let (mut second, _) = telnet.accept().await.unwrap();
    let mut hello = event(
        "spot",
        "create",
        serde_json::json!({"spot_id": "201", "version": "beta13"}),
    );
    hello.extend(event("spot", "update", serde_json::json!({"online": true})));
    hello.extend(presence("create", "000000000000000000000201", "near", None));
    second.write_all(&hello).await.unwrap();

    let addr = server.http_addr();
    loop {
        let (_, items) = get(addr, "/api/items?results_only=true&sort=code_hex").await;
        let codes: Vec<&str> = items
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["code_hex"].as_str().unwrap())
            .collect();
        if codes.contains(&"000000000000000000000201") {
            assert_eq!(
                codes,
                [
                    "000000000000000000000201",
                    "404000001111000066667777",
                    "404040401111111166667777",
                    "404040401111111166667778",
                    "6d1680a0aee93234a58a5102",
                ],
                "the capture's items, then the redialled stream's"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, spot) = get(addr, "/api/spots/201").await;
    assert_eq!(spot["is_online"], true, "{spot}");
    assert_eq!(spot["status"]["version"], "beta13");

    server.shutdown().await;
    let mut written = Vec::new();
    second.read_to_end(&mut written).await.unwrap();
    assert!(written.is_empty(), "nothing is written to a telnet service");
}

#[tokio::test]
async fn an_unreachable_spot_is_redialled_until_it_listens() {
    // Reserve a port, close it: the first dials are refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (server, _dir) = start(|c| {
        c.pull = vec![format!("127.0.0.1:{port}")];
        c.pull_backoff = PullBackoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        };
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await; // let a few dials fail
    let telnet = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let (mut stream, _) = telnet.accept().await.unwrap();
    stream
        .write_all(&event(
            "spot",
            "create",
            serde_json::json!({"spot_id": "202"}),
        ))
        .await
        .unwrap();
    while get(server.http_addr(), "/api/spots/202").await.0 != 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown().await;
}
