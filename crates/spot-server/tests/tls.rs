//! HTTPS (`tls`): spot ingest and the REST API over TLS with a self-signed certificate.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use rustls_pki_types::{CertificateDer, ServerName};
use spot_server::{Server, ServerError, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn tls_connect(
    addr: std::net::SocketAddr,
    root: CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the server's certificate")
}

#[tokio::test]
async fn spots_post_and_applications_query_over_https() {
    let certs = tempfile::tempdir().unwrap();
    let (files, root) = certificate(certs.path());
    let (server, _dir) = start(|c| c.tls = Some(files)).await;
    assert!(server.is_https());
    let addr = server.http_addr();

    let tls = tls_connect(addr, root.clone()).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut body = spot_create(401, 3);
    body.extend(presence(
        "create",
        "000000000000000000000401",
        "near",
        Some(1),
    ));
    let req = hyper::Request::post("/api/spots/401/events/")
        .header("host", "localhost")
        .header("content-type", "text/x-intellifi-events")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-spot-ack"], "1");
    resp.into_body().collect().await.unwrap();
    // Keep-alive over TLS: the REST API on the same connection.
    let req = hyper::Request::get("/api/items?results_only=true")
        .header("host", "localhost")
        .header("x-api-key", admin_key(server.http_addr()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let items: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(items[0]["code_hex"], "000000000000000000000401");

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /api/items HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn an_unusable_certificate_or_key_stops_the_start_naming_the_file() {
    let certs = tempfile::tempdir().unwrap();
    let (mut files, _) = certificate(certs.path());
    let other = certs.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (other_files, _) = certificate(&other);
    files.key = other_files.key.clone(); // a key of another certificate
    let data = tempfile::tempdir().unwrap();
    for (tls, bad_file) in [
        (files.clone(), other_files.key.clone()),
        (
            TlsFiles {
                cert: certs.path().join("missing.pem"),
                key: files.key.clone(),
            },
            certs.path().join("missing.pem"),
        ),
        (
            TlsFiles {
                cert: files.key.clone(), // a key where the certificate should be
                key: files.key.clone(),
            },
            files.key.clone(),
        ),
    ] {
        let config = spot_server::ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().to_path_buf(),
            tls: Some(tls),
            ..Default::default()
        };
        match Server::bind(config).await {
            Err(ServerError::Tls { path, .. }) => assert_eq!(path, bad_file),
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("started with an unusable certificate"),
        }
    }
}
