//! Connections that hold a slot without saying anything (issue 13 item 1): they get a
//! deadline of their own and give way to new connections; spots, API clients and push
//! streams have budgets of their own; one address has a cap.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tokio::net::{TcpSocket, TcpStream};

/// A connection from the loopback address `source` (any of 127.0.0.0/8 on Linux), so that
/// a test can play several client addresses.
async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(addr).await.expect("connect")
}

/// `n` connections that send nothing.
async fn silent(addr: SocketAddr, source: [u8; 4], n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(connect_from(source, addr).await);
    }
    held
}

/// The status of a GET of `path` on a new connection, answered within 5 s (`None`: the
/// connection closed unanswered).
async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut conn = Raw::connect(addr).await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nX-Api-Key: {}\r\n\r\n",
        admin_key(addr)
    );
    conn.send(request.as_bytes()).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), conn.response());
    answer.await.expect("answered within 5 s").map(|r| r.status)
}

/// The finding: with `max-connections` 200, 200 silent connections made ingest,
/// REST and `/metrics` answer `503` until the header timeout (30 s).
#[tokio::test]
async fn silent_connections_at_the_limit_leave_spots_and_the_api_served() {
    let (server, _dir) = start(|c| c.limits.max_connections = 200).await;
    let addr = server.http_addr();
    // A spot connected before the flood keeps its connection.
    let mut established = Raw::connect(addr).await;
    let first = established.post("7001", &[&spot_create(7001, 1)]).await;
    assert_eq!(first.status, 200);
    let _flood = silent(addr, [127, 0, 0, 1], 200).await;
    let seen = presence("create", "000000000000000000000071", "far", Some(2));
    let chunks = [seen.as_slice()];
    let again = established.post("7001", &chunks);
    let again = tokio::time::timeout(Duration::from_secs(5), again).await;
    assert_eq!(again.expect("answered within 5 s").status, 200);
    // A spot connecting during the flood is served.
    let mut new_spot = Raw::connect(addr).await;
    let create = spot_create(7002, 1);
    let chunks = [create.as_slice()];
    let posted = new_spot.post("7002", &chunks);
    let posted = tokio::time::timeout(Duration::from_secs(5), posted).await;
    assert_eq!(posted.expect("answered within 5 s").status, 200);
    // So are REST and /metrics.
    assert_eq!(get_status(addr, "/api/spots").await, Some(200));
    assert_eq!(get_status(addr, "/metrics").await, Some(200));
    server.shutdown().await;
}

/// A slow client part-way through its request head is not evicted by a flood of silent
/// connections from many addresses (issue 13 item 6): the silent ones give way first.
#[tokio::test]
async fn a_slow_client_mid_head_outlasts_a_flood_of_silent_connections_from_many_addresses() {
    let (server, _dir) = start(|c| c.limits.max_unidentified_connections = Some(16)).await;
    let addr = server.http_addr();
    let mut slow = Raw::connect(addr).await;
    slow.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n").await;
    let connections = &server.context().http_connections;
    for _ in 0..500 {
        if connections.unidentified().1 == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        connections.unidentified(),
        (0, 1),
        "the server saw its first bytes"
    );
    let mut flood = Vec::new();
    for i in 0..64u8 {
        flood.push(connect_from([127, 0, 1, i + 1], addr).await);
    }
    let rest = format!("X-Api-Key: {}\r\n\r\n", admin_key(addr));
    slow.send(rest.as_bytes()).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), slow.response()).await;
    let answer = answer.expect("answered within 5 s");
    assert_eq!(answer.map(|r| r.status), Some(200), "not evicted");
    let metrics = &server.context().metrics;
    assert!(metrics.connections_evicted.load(Ordering::Relaxed) >= 64 - 16);
    drop(flood);
    server.shutdown().await;
}

/// A connection that says nothing is closed after `request_head_timeout`, while one that
/// sent a request may stay idle between requests for the longer header timeout.
#[tokio::test]
async fn a_silent_connection_has_its_own_short_deadline_and_keep_alive_keeps_the_long_one() {
    let (server, _dir) = start(|c| {
        c.limits.request_head_timeout = Duration::from_millis(300);
        c.limits.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let addr = server.http_addr();
    let mut kept = Raw::connect(addr).await;
    let get = format!(
        "GET /api/spots HTTP/1.1\r\nHost: t\r\nX-Api-Key: {}\r\n\r\n",
        admin_key(addr)
    );
    kept.send(get.as_bytes()).await;
    assert_eq!(kept.response().await.expect("served").status, 200);
    let mut silent = Raw::connect(addr).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.closed_without_response());
    assert!(
        closed.await.expect("closed within 5 s"),
        "closed unanswered"
    );
    let metrics = &server.context().metrics;
    let timeouts = metrics.connections_head_timeouts.load(Ordering::Relaxed);
    assert_eq!(timeouts, 1);
    kept.send(get.as_bytes()).await;
    assert_eq!(kept.response().await.expect("still open").status, 200);
    server.shutdown().await;
}

/// API clients and push streams have budgets of their own: filling them leaves spots
/// served.
#[tokio::test]
async fn api_clients_and_push_streams_past_their_budget_get_503_and_spots_are_still_served() {
    let (server, _dir) = start(|c| {
        c.limits.max_connections = 20;
        c.limits.max_api_connections = Some(2);
        c.limits.max_stream_connections = Some(1);
    })
    .await;
    let addr = server.http_addr();
    let key = admin_key(addr);
    let mut held = Vec::new();
    for path in ["/api/spots", "/api/items", "/api/stream"] {
        let mut conn = Raw::connect(addr).await;
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Api-Key: {key}\r\n\r\n");
        conn.send(request.as_bytes()).await;
        held.push(conn);
    }
    // The API connections are answered; the stream's head arrives (its events follow).
    for conn in &mut held[..2] {
        assert_eq!(conn.response().await.expect("served").status, 200);
    }
    let mut stream = held.pop().unwrap();
    let mut first = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut stream.stream, &mut first)
        .await
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    for (path, class) in [("/metrics", "API"), ("/api/ws", "push stream")] {
        let mut conn = Raw::connect(addr).await;
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Api-Key: {key}\r\n\r\n");
        conn.send(request.as_bytes()).await;
        let refused = conn.response().await.expect("answered");
        assert_eq!(refused.status, 503, "{path}");
        let error = refused.json()["error"].as_str().unwrap().to_string();
        assert!(
            error.contains(&format!("too many {class} connections")),
            "{error}"
        );
    }
    let mut spot = Raw::connect(addr).await;
    let create = spot_create(7101, 1);
    let chunks = [create.as_slice()];
    assert_eq!(spot.post("7101", &chunks).await.status, 200);
    drop(stream);
    server.shutdown().await;
}

/// One address has a cap of open connections; other addresses are not affected.
#[tokio::test]
async fn an_address_past_its_cap_is_refused_and_another_address_is_served() {
    let (server, _dir) = start(|c| c.limits.max_connections_per_address = 3).await;
    let addr = server.http_addr();
    let _held = silent(addr, [127, 0, 0, 2], 3).await;
    let mut over = connect_from([127, 0, 0, 2], addr).await;
    let mut refused = String::new();
    let read = tokio::io::AsyncReadExt::read_to_string(&mut over, &mut refused);
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("answered and closed")
        .unwrap();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("from 127.0.0.2"), "{refused}");
    assert_eq!(get_status(addr, "/api/spots").await, Some(200));
    server.shutdown().await;
}

/// A WebSocket counts against the push streams' budget for as long as it is open (after
/// the upgrade hyper no longer serves the connection, but its slot stays with the socket).
#[tokio::test]
async fn an_open_websocket_holds_its_stream_slot_until_it_closes() {
    let (server, _dir) = start(|c| c.limits.max_stream_connections = Some(1)).await;
    let addr = server.http_addr();
    let key = admin_key(addr);
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws?key={key}"))
        .await
        .expect("upgrade");
    let sse_status = || async {
        let mut conn = Raw::connect(addr).await;
        let request = format!("GET /api/stream HTTP/1.1\r\nHost: t\r\nX-Api-Key: {key}\r\n\r\n");
        conn.send(request.as_bytes()).await;
        let mut status = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut conn.stream, &mut status)
            .await
            .unwrap();
        String::from_utf8_lossy(&status).into_owned()
    };
    assert_eq!(sse_status().await, "HTTP/1.1 503");
    drop(ws);
    for _ in 0..100 {
        if sse_status().await == "HTTP/1.1 200" {
            server.shutdown().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the WebSocket's slot was not given back");
}
