//! The emulator over `https://` against the real server (`spot_server` in-process, TLS on
//! port 0 with a self-signed rcgen certificate): delivery with `--ca-cert` trust, and a
//! certificate the emulator must not trust failing as connection errors, not panics.
//! (Here, not in spot-emulator's tests: the server's tests use the emulator, never the
//! reverse, so neither crate dev-depends on the other in a circle.)

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::certificate;
use spot_emulator::buffer::BufferLimits;
use spot_emulator::fleet::{self, FleetConfig, Summary};
use spot_emulator::population::PopulationParams;
use spot_emulator::tls::{TlsClient, Trust};
use spot_emulator::uplink::{ServerAddr, UplinkConfig};
use spot_emulator::wire::ChunkSplit;
use spot_server::{Durability, Server, ServerConfig, TlsFiles};
use tokio::sync::watch;

async fn https_server(files: TlsFiles, data: &std::path::Path) -> Server {
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.to_path_buf(),
        sync: Durability::Normal,
        tls: Some(files),
        ..ServerConfig::default()
    })
    .await
    .expect("server starts");
    assert!(server.is_https());
    server
}

fn fleet_config(url: &str, trust: Trust, first_serial: u64, duration_s: f64) -> FleetConfig {
    let mut uplink = UplinkConfig::new(ServerAddr::parse(url).unwrap());
    uplink.tls = Some(TlsClient::new(trust).unwrap());
    uplink.post_ms = 100;
    uplink.tick_ms = 5;
    uplink.rate = 300.0;
    uplink.chunk_split = ChunkSplit::Random;
    uplink.backoff_min_ms = 10;
    uplink.backoff_max_ms = 50;
    uplink.drain_ms = 20_000;
    FleetConfig {
        uplink,
        spots: 2,
        first_serial,
        duration: Some(Duration::from_secs_f64(duration_s)),
        seed: 11,
        population: PopulationParams::default(),
        buffer_dir: None,
        buffer_limits: BufferLimits::default(),
        replay: None,
    }
}

async fn run(cfg: &FleetConfig) -> Summary {
    let (_stop, stop_rx) = watch::channel(false);
    let tasks = fleet::prepare(cfg, &stop_rx).unwrap();
    fleet::run(tasks, false).await
}

#[tokio::test]
async fn https_with_ca_cert_delivers_every_event_to_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = certificate(&dir.path().join("certs"));
    let ca = files.cert.clone();
    let server = https_server(files, &dir.path().join("data")).await;
    let url = format!("https://localhost:{}", server.http_addr().port());

    let cfg = fleet_config(&url, Trust::CaFile(ca), 500, 0.6);
    let summary = run(&cfg).await;

    assert!(summary.panics.is_empty(), "{:?}", summary.panics);
    let total = summary.total();
    let generated = total.events_generated.load(Relaxed);
    assert!(generated > 100, "generated {generated}");
    assert_eq!(total.events_acked.load(Relaxed), generated);
    assert_eq!(total.events_buffered.load(Relaxed), 0);
    // POSTs of 100 ms for 0.6 s, two spots: about 12, fewer when acks are slow on a busy
    // machine; what counts is that each spot went on to new POSTs on its TLS connection.
    assert!(
        total.posts.load(Relaxed) >= 2 * 2,
        "each spot sent several POSTs: {}",
        total.posts.load(Relaxed)
    );
    assert_eq!(total.reconnects.load(Relaxed), 0);
    {
        let domain = server.context().domain.read().unwrap();
        for report in &summary.reports {
            let serial = report.serial.to_string();
            let spot = domain
                .spot_by_serial(&serial)
                .unwrap_or_else(|| panic!("server has spot {serial}"));
            let generated = report.stats.events_generated.load(Relaxed);
            // Seqs 1..=generated, each stored once, plus the connection's spot and config create.
            assert_eq!(spot.acked_seq, generated, "spot {serial}");
            assert_eq!(spot.event_counter, generated + 2, "spot {serial}");
            assert_eq!(
                spot.serial_number, serial,
                "the spot create arrived over TLS"
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_certificate_or_wrong_name_fails_as_reconnects_with_a_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = certificate(&dir.path().join("certs"));
    let ca = files.cert.clone();
    let other_ca = certificate(&dir.path().join("other")).0.cert;
    let server = https_server(files, &dir.path().join("data")).await;
    let port = server.http_addr().port();

    for (url, trust, first_serial, expected) in [
        // Another self-signed certificate (same subject name as the server's, so webpki
        // tries it as the issuer and the signature does not verify).
        (
            format!("https://localhost:{port}"),
            Trust::CaFile(other_ca),
            600,
            "the server's certificate is not signed by the key of the trusted CA",
        ),
        // The right CA, but the URL names 127.0.0.1 and the certificate only `localhost`.
        (
            format!("https://127.0.0.1:{port}"),
            Trust::CaFile(ca.clone()),
            610,
            "the server's certificate is not valid for \"127.0.0.1\": it holds localhost",
        ),
    ] {
        let mut cfg = fleet_config(&url, trust, first_serial, 0.3);
        cfg.uplink.drain_ms = 200;
        let summary = run(&cfg).await;
        assert!(summary.panics.is_empty(), "{:?}", summary.panics);
        let total = summary.total();
        assert!(total.events_generated.load(Relaxed) > 0);
        assert_eq!(total.events_acked.load(Relaxed), 0, "{url}");
        assert_eq!(total.posts.load(Relaxed), 0, "{url}");
        for report in &summary.reports {
            assert!(report.stats.reconnects.load(Relaxed) >= 1, "{url}");
            let error = report.last_error.as_deref().unwrap_or_default();
            assert!(
                error.contains("TLS handshake with") && error.contains(expected),
                "{url}: {error}"
            );
            assert!(
                server
                    .context()
                    .domain
                    .read()
                    .unwrap()
                    .spot_by_serial(&report.serial.to_string())
                    .is_none(),
                "nothing reached the server over an untrusted connection"
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn insecure_trust_connects_to_a_self_signed_server_without_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = https_server(
        certificate(&dir.path().join("certs")).0,
        &dir.path().join("data"),
    )
    .await;
    // 127.0.0.1 does not match the certificate either: nothing about it is checked.
    let url = format!("https://127.0.0.1:{}", server.http_addr().port());
    let summary = run(&fleet_config(&url, Trust::Insecure, 700, 0.3)).await;
    assert!(summary.panics.is_empty(), "{:?}", summary.panics);
    let total = summary.total();
    let generated = total.events_generated.load(Relaxed);
    assert!(generated > 0);
    assert_eq!(total.events_acked.load(Relaxed), generated);
    assert_eq!(total.reconnects.load(Relaxed), 0);
    server.shutdown().await;
}
