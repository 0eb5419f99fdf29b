//! Recovery refuses an unreadable journal line (acknowledged events would vanish) unless the
//! operator asks for the repair, which drops it.

mod common;

use common::*;
use spot_server::{Durability, ServerConfig};

fn config(dir: &std::path::Path, repair_journal: bool) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        sync: Durability::Normal,
        repair_journal,
        ..ServerConfig::default()
    }
}

/// Risk 4 of issue 11: an unreadable journal line was logged and skipped at startup.
#[tokio::test]
async fn an_unreadable_journal_line_stops_the_start_unless_the_repair_drops_it() {
    let (server, dir) = start(|_| {}).await;
    server.shutdown().await;
    // A journal batch the rows do not cover: a stream begin of spot 77, then garbage.
    let lines = "77\t+\t1764000000000\t\nnot a journal line\n";
    let db = rusqlite::Connection::open(dir.path().join("spot.db")).unwrap();
    db.execute(
        "INSERT INTO upstream_batches (time_last, lines) VALUES (?1, ?2)",
        rusqlite::params![
            1_764_000_000_000_i64,
            lz4_flex::compress_prepend_size(lines.as_bytes())
        ],
    )
    .unwrap();
    let batch = db.last_insert_rowid();
    drop(db);

    let err = common::bind(config(dir.path(), false))
        .await
        .expect_err("an unreadable journal line refuses the start");
    let message = err.to_string();
    for needle in [
        "spot.db".to_string(),
        format!("batch {batch} line 2"),
        "--repair-journal".to_string(),
    ] {
        assert!(message.contains(&needle), "{needle:?} not in: {message}");
    }

    let server = common::bind(config(dir.path(), true))
        .await
        .expect("the repair drops the line");
    let (status, _) = get(server.http_addr(), "/api/spots/77").await;
    assert_eq!(status, 200, "the readable lines are replayed");
    server.shutdown().await;
}

/// Risk 4, a whole batch: a journal batch that does not decompress refused the start
/// without saying which batch or how to go on.
#[tokio::test]
async fn a_journal_batch_that_does_not_unpack_stops_the_start_naming_it_unless_repaired() {
    let (server, dir) = start(|_| {}).await;
    server.shutdown().await;
    let db = rusqlite::Connection::open(dir.path().join("spot.db")).unwrap();
    db.execute(
        "INSERT INTO upstream_batches (time_last, lines) VALUES (?1, ?2)",
        rusqlite::params![1_764_000_000_000_i64, vec![0xffu8; 16]],
    )
    .unwrap();
    let batch = db.last_insert_rowid();
    drop(db);

    let message = common::bind(config(dir.path(), false))
        .await
        .expect_err("an undecodable journal batch refuses the start")
        .to_string();
    for needle in [
        "spot.db".to_string(),
        format!("batch {batch} "),
        "--repair-journal".to_string(),
    ] {
        assert!(message.contains(&needle), "{needle:?} not in: {message}");
    }
    let server = common::bind(config(dir.path(), true))
        .await
        .expect("the repair drops the batch");
    server.shutdown().await;
}
