//! spot-server's test support: an in-process server on port 0, a self-signed certificate, a
//! raw HTTP/1.1 connection for byte-exact requests (chunk boundaries, floods, slow senders),
//! and a hyper client for ordinary use; the backends a suite runs against ([`backend`]:
//! embedded, or a two-node cluster). What other crates' tests share too is in
//! `test-support`.
#![allow(dead_code)]

// Not every suite runs on both backends.
#[allow(unused_imports, unused_macros)]
pub mod backend;
#[allow(unused_imports)]
pub use backend::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use spot_server::{Durability, Server, ServerConfig, TlsFiles};
use test_support::http::{chunk, LAST_CHUNK};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A server on 127.0.0.1:0 with a fresh data directory, configured by `tweak`. Its first
/// admin key (from its data directory) is what [`call`] and [`get`] send.
pub async fn start(tweak: impl FnOnce(&mut ServerConfig)) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        sync: Durability::Normal,
        ..ServerConfig::default()
    };
    tweak(&mut config);
    let server = Server::bind(config).await.expect("server starts");
    remember_key(server.http_addr(), dir.path());
    (server, dir)
}

/// `Server::bind`, and [`remember_key`] of the server it started.
pub async fn bind(config: ServerConfig) -> Result<Server, spot_server::ServerError> {
    let data_dir = config.data_dir.clone();
    let server = Server::bind(config).await?;
    remember_key(server.http_addr(), &data_dir);
    Ok(server)
}

/// The first admin key of each server started here, by address.
static ADMIN_KEYS: std::sync::Mutex<Vec<(SocketAddr, String)>> = std::sync::Mutex::new(Vec::new());

/// Makes [`call`] to `addr` send the first admin key in `data_dir`.
pub fn remember_key(addr: SocketAddr, data_dir: &std::path::Path) {
    let key = std::fs::read_to_string(data_dir.join("admin.key")).expect("admin.key");
    let mut keys = ADMIN_KEYS.lock().unwrap();
    keys.retain(|(a, _)| *a != addr);
    keys.push((addr, key.trim().to_string()));
}

/// The first admin key of the server at `addr` (started by [`start`]).
pub fn admin_key(addr: SocketAddr) -> String {
    let keys = ADMIN_KEYS.lock().unwrap();
    let found = keys.iter().find(|(a, _)| *a == addr);
    found.expect("a server started by common::start").1.clone()
}

/// A self-signed certificate for `localhost`, written as PEM files into `dir` (created if
/// missing); also the certificate itself, for a client's root store.
pub fn certificate(dir: &std::path::Path) -> (TlsFiles, CertificateDer<'static>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, generated.cert.pem()).unwrap();
    std::fs::write(&files.key, generated.key_pair.serialize_pem()).unwrap();
    (files, generated.cert.der().clone())
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A raw HTTP/1.1 connection (test-only: reads responses with Content-Length bodies, which
/// is all the server sends).
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Starts a chunked POST of events for `serial`.
    pub async fn post_head(&mut self, serial: &str, extra_headers: &str) {
        let head = format!(
            "POST /api/spots/{serial}/events/ HTTP/1.1\r\nHost: test\r\n\
             User-Agent: spot/test-1\r\nTransfer-Encoding: chunked\r\n\
             Content-Type: text/x-intellifi-events\r\n{extra_headers}\r\n"
        );
        self.send(head.as_bytes()).await;
    }

    /// Sends one chunk (non-empty).
    pub async fn chunk(&mut self, data: &[u8]) {
        assert!(!data.is_empty());
        self.send(&chunk(data)).await;
    }

    /// Ends the chunked body.
    pub async fn end(&mut self) {
        self.send(LAST_CHUNK).await;
    }

    /// A whole chunked POST, one chunk per element of `chunks`; returns the response.
    pub async fn post(&mut self, serial: &str, chunks: &[&[u8]]) -> Resp {
        self.post_head(serial, "").await;
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            self.chunk(c).await;
        }
        self.end().await;
        self.response().await.expect("a response")
    }

    /// Reads one response; `None` if the connection closed first.
    pub async fn response(&mut self) -> Option<Resp> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse().unwrap())
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    if !self.fill().await {
                        return None;
                    }
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Some(Resp {
                    status,
                    headers,
                    body,
                });
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Whether the server closed the connection (EOF or reset) without sending anything.
    pub async fn closed_without_response(&mut self) -> bool {
        let mut tmp = [0u8; 1024];
        match self.stream.read(&mut tmp).await {
            Ok(0) | Err(_) => true,
            Ok(_) => false,
        }
    }

    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 8192];
        match self.stream.read(&mut tmp).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }
}

/// A request body fed through a channel: a real streaming (chunked) body for hyper.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A hyper client connection (real HTTP client).
pub async fn client<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    send
}

/// GET (or other body-less method) with the hyper client; returns status and JSON.
pub async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut send = client::<http_body_util::Full<Bytes>>(addr).await;
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "test")
        .header("content-type", "application/json")
        .header("x-api-key", admin_key(addr))
        .body(http_body_util::Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let resp = send.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    call(addr, "GET", path, None).await
}

/// One JSON event frame.
pub fn event(resource: &str, action: &str, object: Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(&serde_json::json!([resource, action, object])).unwrap();
    out.extend_from_slice(b"\n\n");
    out
}

/// A `spot create` with a sequence epoch.
pub fn spot_create(serial: u64, epoch: u64) -> Vec<u8> {
    event(
        "spot",
        "create",
        serde_json::json!({"spot_id": serial, "version": "test-1", "seq_epoch": epoch}),
    )
}

/// A `presence create` with a sequence number.
pub fn presence(action: &str, code: &str, proximity: &str, seq: Option<u64>) -> Vec<u8> {
    let mut obj = serde_json::json!({
        "item_code": code, "item_codetype": "EPC Gen2",
        "time_started": "2024-01-01T00:00:00Z", "time_last": "2024-01-01T00:00:01Z",
        "proximity": proximity, "hold_delay_s": 4
    });
    if let Some(seq) = seq {
        obj["seq"] = seq.into();
    }
    event("presence", action, obj)
}

/// A server with spot 300 and `items` items present at its location (REST tests).
pub async fn seeded(items: usize) -> (spot_server::Server, tempfile::TempDir) {
    let (server, dir) = start(|_| {}).await;
    let mut conn = Raw::connect(server.http_addr()).await;
    let mut body = spot_create(300, 1);
    for i in 0..items {
        body.extend(presence("create", &format!("{i:024x}"), "near", None));
    }
    assert_eq!(conn.post("300", &[&body]).await.status, 200);
    (server, dir)
}
