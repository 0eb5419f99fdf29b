//! A flood of connections over `max-connections`: the refusals are bounded too.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Risk 5 of issue 11: each connection over the limit spawned a 5-second refusal task, so a
/// flood grew tasks and file descriptors without bound.
#[tokio::test]
async fn refusals_past_their_bound_close_at_once_and_the_server_still_serves() {
    let (server, _dir) = start(|c| {
        c.limits.max_connections = 1;
        c.limits.max_refusals = 2;
    })
    .await;
    let addr = server.http_addr();
    // One connection is served and holds the only slot.
    let mut held = Raw::connect(addr).await;
    let get = format!(
        "GET /api/spots HTTP/1.1\r\nHost: test\r\nX-Api-Key: {}\r\n\r\n",
        admin_key(addr)
    );
    held.send(get.as_bytes()).await;
    assert_eq!(held.response().await.expect("served").status, 200);
    // Two are answered 503 and kept open: both refusals are under way.
    let mut answered = Vec::new();
    for _ in 0..2 {
        let mut conn = Raw::connect(addr).await;
        let resp = conn.response().await.expect("503");
        assert_eq!(resp.status, 503);
        answered.push(conn);
    }
    // The rest are closed at once, unanswered.
    for i in 0..20 {
        let mut conn = Raw::connect(addr).await;
        let closed = tokio::time::timeout(Duration::from_secs(2), conn.closed_without_response())
            .await
            .unwrap_or_else(|_| panic!("connection {i} held open"));
        assert!(closed, "connection {i} answered past the refusal bound");
    }
    drop(held);
    drop(answered);
    // The slot comes back: a real request is served.
    let mut served = None;
    for _ in 0..50 {
        let mut conn = Raw::connect(addr).await;
        conn.send(get.as_bytes()).await;
        match conn.response().await {
            Some(resp) if resp.status == 200 => {
                served = Some(conn);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    served.expect("served again after the flood");
    let metrics = &server.context().metrics;
    assert!(metrics.connections_refused.load(Ordering::Relaxed) >= 22);
    assert_eq!(
        metrics
            .connections_refused_unanswered
            .load(Ordering::Relaxed),
        20
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_raw_tcp_stream_over_the_limit_is_closed_and_counted() {
    let (server, _dir) = start(|c| {
        c.limits.max_connections = 1;
        c.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let tcp = server.tcp_addr().unwrap();
    let mut held = tokio::net::TcpStream::connect(tcp).await.unwrap();
    held.write_all(&spot_create(601, 1)).await.unwrap();
    let mut ack = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), held.read(&mut ack))
        .await
        .expect("acknowledged")
        .unwrap();
    assert!(n > 0, "the first stream is served");
    let mut over = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), over.read(&mut ack))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing is written to a stream over the limit");
    let metrics = &server.context().metrics;
    assert_eq!(metrics.connections_refused.load(Ordering::Relaxed), 1);
    assert_eq!(
        metrics
            .connections_refused_unanswered
            .load(Ordering::Relaxed),
        0
    );
    drop(held);
    server.shutdown().await;
}
