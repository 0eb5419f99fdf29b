//! Helpers shared by the process tests: free ports, starting `spot serve`, chunked bodies,
//! REST GETs. Each test file uses a subset.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts `spot serve` on `127.0.0.1:port` with `data` (plus `extra` arguments) and waits
/// until it accepts connections.
pub fn spawn_server(data: &Path, port: u16, extra: &[&OsStr]) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_spot"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spot serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// One HTTP/1.1 chunk.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// GET `path` over plain HTTP; asserts `200` and returns the body.
pub fn get_text(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{path}: {raw}");
    let (_, body) = raw.split_once("\r\n\r\n").unwrap();
    body.to_string()
}

/// GET `path` over plain HTTP; asserts `200` and returns the JSON body.
pub fn get_json(port: u16, path: &str) -> serde_json::Value {
    serde_json::from_str(&get_text(port, path)).unwrap()
}
