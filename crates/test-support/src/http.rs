//! HTTP/1.1 as the tests write and read it byte for byte: chunked bodies
//! (`Transfer-Encoding: chunked`) written chunk by chunk and de-chunked, and a blocking
//! `GET` for REST reads from synchronous tests.

use std::io::{Read, Write};
use std::net::TcpStream;

/// Appends `data` as one chunk (hex size line, data, CRLF) to `out`; `data` should not be
/// empty (an empty chunk ends the body: that is [`LAST_CHUNK`]).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// `data` as one chunk (see [`write_chunk`]).
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 12);
    write_chunk(&mut out, data);
    out
}

/// The zero-length chunk that ends a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A chunked request (or response) taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dechunked {
    /// The head, up to and including the blank line.
    pub head: Vec<u8>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Where each chunk ends, as offsets into `body` (the transport's cuts).
    pub boundaries: Vec<usize>,
}

/// Takes apart a whole HTTP/1.1 message with a chunked body, checking its framing (CRLF
/// after each size line and each chunk's data; chunk extensions are skipped). Panics
/// saying what is wrong: this reads test data.
pub fn dechunk(message: &[u8]) -> Dechunked {
    let head_end = find(message, b"\r\n\r\n").expect("the message has a header end") + 4;
    let mut rest = &message[head_end..];
    let mut body = Vec::new();
    let mut boundaries = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").expect("a chunk size line");
        let size_text = std::str::from_utf8(&rest[..line_end]).expect("ASCII size line");
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).expect("a hex chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Dechunked {
                head: message[..head_end].to_vec(),
                body,
                boundaries,
            };
        }
        body.extend_from_slice(&rest[..size]);
        boundaries.push(body.len());
        assert_eq!(&rest[size..size + 2], b"\r\n", "chunk data ends with CRLF");
        rest = &rest[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The API key of each server a test started, by port ([`remember_key`]).
static KEYS: std::sync::Mutex<Vec<(u16, String)>> = std::sync::Mutex::new(Vec::new());

/// Makes [`get_text`] on `port` send the first admin key of the server whose data directory
/// is `data` (`<data>/admin.key`, written by its first start). [`crate::process::spawn_serve`]
/// calls it.
pub fn remember_key(port: u16, data: &std::path::Path) {
    let path = data.join("admin.key");
    // A server may listen before it has written the file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let key = std::fs::read_to_string(&path).expect("<data>/admin.key");
    let mut keys = KEYS.lock().unwrap();
    keys.retain(|(p, _)| *p != port);
    keys.push((port, key.trim().to_string()));
}

/// The key [`remember_key`] keeps for `port`.
pub fn key_for(port: u16) -> Option<String> {
    let keys = KEYS.lock().unwrap();
    keys.iter()
        .find(|(p, _)| *p == port)
        .map(|(_, k)| k.clone())
}

/// `GET path` from `127.0.0.1:port` over plain HTTP (`Connection: close`) with the server's
/// API key ([`remember_key`]); asserts `200` and returns the body.
pub fn get_text(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let key = key_for(port).map_or_else(String::new, |k| format!("X-Api-Key: {k}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\n{key}Connection: close\r\n\r\n"
    )
    .expect("write request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read response");
    assert!(raw.starts_with("HTTP/1.1 200"), "{path}: {raw}");
    let (_, body) = raw.split_once("\r\n\r\n").expect("a header end");
    body.to_string()
}

/// [`get_text`], the body parsed as JSON.
pub fn get_json(port: u16, path: &str) -> serde_json::Value {
    let text = get_text(port, path);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_written_are_dechunked_with_their_boundaries() {
        let mut message = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        message.extend(chunk(b"hello "));
        write_chunk(&mut message, &[b'x'; 17]);
        message.extend_from_slice(LAST_CHUNK);
        assert!(message.windows(5).any(|w| w == b"\r\n11\r"), "hex sizes");
        let parts = dechunk(&message);
        assert!(parts.head.ends_with(b"chunked\r\n\r\n"));
        assert_eq!(parts.body, [&b"hello "[..], &[b'x'; 17]].concat());
        assert_eq!(parts.boundaries, [6, 23]);
    }

    #[test]
    #[should_panic(expected = "chunk data ends with CRLF")]
    fn a_chunk_longer_than_its_size_is_refused() {
        dechunk(b"POST / HTTP/1.1\r\n\r\n2\r\nabc\r\n0\r\n\r\n");
    }
}
