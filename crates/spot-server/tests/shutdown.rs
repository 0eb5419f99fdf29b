//! Stopping and exclusivity: one server per address and per data directory; a stop drops
//! what outlives the grace period but keeps every event received.

mod common;

use std::time::Duration;

use common::*;
use spot_server::{Durability, ServerConfig, ServerError};

fn config(dir: &std::path::Path, listen: &str) -> ServerConfig {
    ServerConfig {
        listen: listen.parse().unwrap(),
        data_dir: dir.to_path_buf(),
        sync: Durability::Normal,
        ..ServerConfig::default()
    }
}

#[tokio::test]
async fn a_second_server_cannot_bind_an_address_in_use() {
    let (first, _dir) = start(|_| {}).await;
    let port = first.http_addr().port();
    for listen in [format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")] {
        let other = tempfile::tempdir().unwrap();
        match common::bind(config(other.path(), &listen)).await {
            Err(ServerError::Bind { addr, .. }) => assert_eq!(addr.port(), port),
            Err(e) => panic!("{listen}: wrong error {e}"),
            Ok(_) => panic!("{listen}: a second server bound the same port"),
        }
    }
    first.shutdown().await;
}

#[tokio::test]
async fn a_data_directory_serves_one_server_at_a_time() {
    let (first, dir) = start(|_| {}).await;
    let err = common::bind(config(dir.path(), "127.0.0.1:0"))
        .await
        .expect_err("the directory is locked");
    match &err {
        ServerError::DataDirLocked { holder, .. } => {
            assert_eq!(holder, &format!("pid {}", std::process::id()))
        }
        e => panic!("wrong error {e}"),
    }
    assert!(err.to_string().contains("in use by another spot server"));
    first.shutdown().await;
    let second = common::bind(config(dir.path(), "127.0.0.1:0"))
        .await
        .expect("free after the first stopped");
    second.shutdown().await;
}

#[tokio::test]
async fn a_post_outliving_the_grace_period_is_dropped_and_its_received_events_kept() {
    let (server, dir) = start(|c| c.limits.shutdown_grace = Duration::from_millis(200)).await;
    let addr = server.http_addr();
    let mut conn = Raw::connect(addr).await;
    conn.post_head("31", "").await;
    conn.chunk(&spot_create(31, 5)).await;
    conn.chunk(&presence(
        "create",
        "000000000000000000000031",
        "near",
        Some(1),
    ))
    .await;
    // Never ends its body: wait until its event is applied, then stop.
    while get(addr, "/api/presences?results_only=true")
        .await
        .1
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown().await;
    assert!(
        conn.closed_without_response().await,
        "the unfinished POST is closed, not acknowledged"
    );
    let restarted = common::bind(config(dir.path(), "127.0.0.1:0"))
        .await
        .unwrap();
    let (_, items) = get(restarted.http_addr(), "/api/items?results_only=true").await;
    assert_eq!(items[0]["code_hex"], "000000000000000000000031");
    restarted.shutdown().await;
}
