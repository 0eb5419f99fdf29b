//! Every bound of the server, each with the status it answers.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413_and_the_connection_closes() {
    let (server, _dir) = start(|c| c.limits.max_body_bytes = 1_000).await;
    let mut conn = Raw::connect(server.http_addr()).await;
    conn.post_head("1", "").await;
    for _ in 0..3 {
        conn.chunk(&[b' '; 400]).await;
    }
    let resp = conn.response().await.expect("response");
    assert_eq!(resp.status, 413);
    assert!(resp.json()["error"].as_str().unwrap().contains("1000"));
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(resp.header("x-spot-ack").is_some());
    server.shutdown().await;
}

#[tokio::test]
async fn a_declared_content_length_over_the_limit_gets_413_before_the_body() {
    let (server, _dir) = start(|c| c.limits.max_body_bytes = 1_000).await;
    let mut conn = Raw::connect(server.http_addr()).await;
    conn.send(b"POST /api/spots/1/events/ HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n")
        .await;
    let resp = conn.response().await.expect("response");
    assert_eq!(resp.status, 413);
    server.shutdown().await;
}

#[tokio::test]
async fn an_event_over_the_message_limit_is_skipped_and_the_rest_acknowledged() {
    let (server, _dir) = start(|c| c.limits.max_message_bytes = 300).await;
    let mut conn = Raw::connect(server.http_addr()).await;
    let big = event(
        "config",
        "update",
        serde_json::json!({"x": "y".repeat(1000), "seq": 1}),
    );
    let resp = conn
        .post(
            "2",
            &[
                &spot_create(2, 1),
                &big,
                &presence("create", "000000000000000000000002", "far", Some(2)),
            ],
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-spot-rejected"), Some("1"));
    assert_eq!(resp.header("x-spot-ack"), Some("2"));
    server.shutdown().await;
}

#[tokio::test]
async fn too_many_headers_get_431() {
    let (server, _dir) = start(|c| c.limits.max_headers = 8).await;
    let mut conn = Raw::connect(server.http_addr()).await;
    let mut req = String::from("GET /api/spots HTTP/1.1\r\nHost: t\r\n");
    for i in 0..20 {
        req.push_str(&format!("X-Flood-{i}: 1\r\n"));
    }
    req.push_str("\r\n");
    conn.send(req.as_bytes()).await;
    let resp = conn.response().await.expect("response");
    assert_eq!(resp.status, 431);
    server.shutdown().await;
}

#[tokio::test]
async fn oversize_headers_get_431() {
    let (server, _dir) = start(|c| c.limits.max_header_bytes = 1024).await;
    let mut conn = Raw::connect(server.http_addr()).await;
    let req = format!(
        "GET /api/spots HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4000)
    );
    conn.send(req.as_bytes()).await;
    let resp = conn.response().await.expect("response");
    assert_eq!(resp.status, 431);
    server.shutdown().await;
}

#[tokio::test]
async fn slow_headers_are_cut_off_by_the_header_read_timeout() {
    let (server, _dir) = start(|c| c.limits.header_read_timeout = Duration::from_millis(200)).await;
    let mut conn = Raw::connect(server.http_addr()).await;
    conn.send(b"POST /api/spots/1/events/ HTTP/1.1\r\nHost: t\r\n")
        .await;
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed_without_response())
        .await
        .expect("the server closes the connection");
    assert!(closed);
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_by_the_header_read_timeout() {
    let (server, _dir) = start(|c| c.limits.header_read_timeout = Duration::from_millis(200)).await;
    let mut conn = Raw::connect(server.http_addr()).await;
    assert_eq!(conn.post("3", &[&spot_create(3, 1)]).await.status, 200);
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed_without_response())
        .await
        .expect("the server closes the idle connection");
    assert!(closed);
    server.shutdown().await;
}

#[tokio::test]
async fn a_body_that_stalls_gets_408() {
    let (server, _dir) = start(|c| c.limits.body_idle_timeout = Duration::from_millis(200)).await;
    let mut conn = Raw::connect(server.http_addr()).await;
    conn.post_head("4", "").await;
    conn.chunk(&spot_create(4, 1)).await;
    let resp = tokio::time::timeout(Duration::from_secs(10), conn.response())
        .await
        .expect("answered")
        .expect("response");
    assert_eq!(resp.status, 408);
    assert!(resp.json()["error"]
        .as_str()
        .unwrap()
        .contains("no body data"));
    assert_eq!(resp.header("connection"), Some("close"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_body_whose_gaps_are_shorter_than_the_idle_timeout_is_not_cut() {
    let (server, _dir) = start(|c| c.limits.body_idle_timeout = Duration::from_millis(300)).await;
    let mut conn = Raw::connect(server.http_addr()).await;
    conn.post_head("6", "").await;
    conn.chunk(&spot_create(6, 1)).await;
    // 1.2 s in all, four idle timeouts, but never 150 ms without data.
    for seq in 1..=12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.chunk(&presence(
            "create",
            &format!("{seq:024x}"),
            "near",
            Some(seq),
        ))
        .await;
    }
    conn.end().await;
    let resp = conn.response().await.expect("response");
    assert_eq!(resp.status, 200, "{:?}", resp.json());
    assert_eq!(resp.header("x-spot-ack"), Some("12"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_never_ending_body_gets_408_after_the_post_duration_limit() {
    let (server, _dir) = start(|c| c.limits.max_post_duration = Duration::from_millis(300)).await;
    let mut conn = Raw::connect(server.http_addr()).await;
    conn.post_head("5", "").await;
    conn.chunk(&spot_create(5, 1)).await;
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // A trickle of white space: never idle, never ending.
            if conn.stream.try_write(b"1\r\n \r\n").is_err() {
                break;
            }
            tokio::select! {
                r = conn.response() => return r,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        conn.response().await
    })
    .await
    .expect("answered")
    .expect("response");
    assert_eq!(answered.status, 408);
    assert!(answered.json()["error"]
        .as_str()
        .unwrap()
        .contains("not finished"));
    server.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_limit_get_503() {
    let (server, _dir) = start(|c| c.limits.max_connections = 2).await;
    let addr = server.http_addr();
    let mut a = Raw::connect(addr).await;
    let mut b = Raw::connect(addr).await;
    // Both are served (so both hold a slot) …
    assert_eq!(a.post("6", &[&spot_create(6, 1)]).await.status, 200);
    assert_eq!(b.post("6", &[]).await.status, 200);
    // … and a third is refused.
    let mut c = Raw::connect(addr).await;
    let resp = c.response().await.expect("503 response");
    assert_eq!(resp.status, 503);
    assert!(resp.json()["error"]
        .as_str()
        .unwrap()
        .contains("too many connections"));
    drop(a);
    server.shutdown().await;
}

#[tokio::test]
async fn a_put_body_over_the_api_limit_gets_413() {
    let (server, _dir) = start(|c| c.limits.max_api_body_bytes = 100).await;
    let addr = server.http_addr();
    let mut conn = Raw::connect(addr).await;
    assert_eq!(conn.post("8", &[&spot_create(8, 1)]).await.status, 200);
    let (status, v) = call(
        addr,
        "PUT",
        "/api/spots/8",
        Some(serde_json::json!({"config_request": {"hostname": "x".repeat(500)}})),
    )
    .await;
    assert_eq!(status, 413, "{v}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_core_event_budget_still_takes_every_event_from_several_spots() {
    // 3 events may wait for the core: chunks of one event, and one chunk of 40, larger than
    // the whole budget, must all get through (the core gives the budget back) from four
    // spots at once.
    let (server, _dir) = start(|c| c.limits.core_queue_events = 3).await;
    let addr = server.http_addr();
    let posts = (0..4u64).map(|s| {
        tokio::spawn(async move {
            let serial = (500 + s).to_string();
            let mut conn = Raw::connect(addr).await;
            let mut chunks = vec![spot_create(500 + s, 1)];
            for seq in 1..=20u64 {
                chunks.push(presence(
                    "create",
                    &format!("{:024x}", s * 100 + seq),
                    "far",
                    Some(seq),
                ));
            }
            let mut big = Vec::new();
            for seq in 21..=60u64 {
                big.extend(presence(
                    "create",
                    &format!("{:024x}", s * 100 + seq),
                    "near",
                    Some(seq),
                ));
            }
            chunks.push(big);
            let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            conn.post(&serial, &chunks).await
        })
    });
    for post in posts {
        let resp = post.await.expect("client task");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-spot-ack"), Some("60"));
    }
    let (_, items) = get(addr, "/api/items?limit=1000&results_only=true").await;
    assert_eq!(items.as_array().map(Vec::len), Some(240));
    server.shutdown().await;
}
