//! HTTP/1.1 bytes of the spot uplink (spec §4.1), sans-IO: the request head, chunk framing
//! (one chunk per event, or split at random offsets) and an incremental response parser.

use spot_protocol::Encoding;

use crate::rng::Rng;

/// How event bytes are cut into HTTP chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSplit {
    /// One chunk per event (what real spots do for small events).
    Event,
    /// Chunks of random length (1–256 bytes), cut anywhere, across event boundaries too.
    Random,
}

/// The head of one event POST, exactly the headers of spec §4.1, and with a `secret`
/// HTTP Basic `serial:secret` (spot admission `secret`).
pub fn request_head(
    path_prefix: &str,
    serial: u64,
    host: &str,
    version: &str,
    encoding: Encoding,
    secret: Option<&str>,
) -> Vec<u8> {
    use base64::Engine as _;
    let media = encoding.media_type();
    let authorization = secret.map_or_else(String::new, |secret| {
        let credentials = format!("{serial}:{secret}");
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    });
    format!(
        "POST {path_prefix}/api/spots/{serial}/events/ HTTP/1.1\r\n\
         Host: {host}\r\n\
         User-Agent: spot/{version}\r\n\
         Transfer-Encoding: chunked\r\n\
         Accept: {media}\r\n\
         Content-Type: {media}\r\n\
         {authorization}\
         Cache-Control: no-cache\r\n\r\n"
    )
    .into_bytes()
}

/// The head of a firmware download (`GET url`, relative to the server).
pub fn firmware_request(path_prefix: &str, url: &str, host: &str, version: &str) -> Vec<u8> {
    let sep = if url.starts_with('/') { "" } else { "/" };
    format!(
        "GET {path_prefix}{sep}{url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: spot/{version}\r\n\r\n"
    )
    .into_bytes()
}

/// The zero-length chunk that ends a body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends `data` to `out` as chunks: with [`ChunkSplit::Event`] one chunk per event, the
/// events ending at the offsets `ends` (bytes after the last end form one more chunk).
/// An empty `data` writes nothing (a zero-length chunk would end the body).
pub fn push_chunks(
    out: &mut Vec<u8>,
    data: &[u8],
    ends: &[usize],
    split: ChunkSplit,
    rng: &mut Rng,
) {
    match split {
        ChunkSplit::Event => {
            let mut start = 0;
            for &end in ends.iter().chain(std::iter::once(&data.len())) {
                let end = end.min(data.len());
                if end > start {
                    push_chunk(out, &data[start..end]);
                    start = end;
                }
            }
        }
        ChunkSplit::Random => {
            let mut rest = data;
            while !rest.is_empty() {
                let n = (1 + rng.below(256) as usize).min(rest.len());
                push_chunk(out, &rest[..n]);
                rest = &rest[n..];
            }
        }
    }
}

fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    push_chunk_size(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends a chunk-size line: the length in lowercase hex, then CRLF.
pub fn push_chunk_size(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = HEX[n & 0xF];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `X-Spot-Ack`, when present and a number.
    pub ack: Option<u64>,
    /// `Content-Type`, when present.
    pub content_type: Option<String>,
    /// The server closes the connection after this response.
    pub close: bool,
    /// The body (decoded from chunks, if chunked). For a body over the limit only its
    /// length is counted and the bytes are dropped ([`Response::body_len`]).
    pub body: Vec<u8>,
    /// The body's length in bytes.
    pub body_len: u64,
}

/// Why a response could not be parsed; the connection is closed after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The head is not HTTP/1.x.
    #[error("malformed response head: {0}")]
    Head(String),
    /// The head exceeds the limit.
    #[error("response head over {0} bytes")]
    HeadTooLarge(usize),
    /// A chunk size line is not hex or too long.
    #[error("malformed chunk size line at body byte {0}")]
    ChunkSize(u64),
    /// The body is larger than the limit and must be kept.
    #[error("response body over {0} bytes")]
    BodyTooLarge(u64),
}

#[derive(Debug)]
enum BodyState {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    UntilClose,
    Done,
}

/// Incremental response parser: [`ResponseParser::feed`] bytes, [`ResponseParser::poll`]
/// until it gives the response. Bounded by `max_head` and `max_body`.
#[derive(Debug)]
pub struct ResponseParser {
    buf: Vec<u8>,
    head: Option<Response>,
    body: BodyState,
    max_head: usize,
    max_body: u64,
    keep_body: bool,
    consumed_body: u64,
}

impl ResponseParser {
    /// A parser for one response. Heads over `max_head` fail; bodies over `max_body` fail
    /// unless `keep_body` is false, in which case bytes are only counted (firmware images).
    pub fn new(max_head: usize, max_body: u64, keep_body: bool) -> Self {
        ResponseParser {
            buf: Vec::new(),
            head: None,
            body: BodyState::Done,
            max_head,
            max_body,
            keep_body,
            consumed_body: 0,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet parsed.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.head.is_none()
    }

    /// The end of the stream: a body delimited by the connection's close is complete.
    pub fn eof(&mut self) -> Option<Response> {
        if matches!(self.body, BodyState::UntilClose) {
            self.body = BodyState::Done;
            return self.head.take();
        }
        None
    }

    /// The response once complete; `Ok(None)` means more bytes are needed.
    pub fn poll(&mut self) -> Result<Option<Response>, ResponseError> {
        if self.head.is_none() {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            let n = match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > self.max_head {
                        return Err(ResponseError::HeadTooLarge(self.max_head));
                    }
                    return Ok(None);
                }
                Err(e) => return Err(ResponseError::Head(e.to_string())),
            };
            let status = parsed.code.unwrap_or(0);
            let mut response = Response {
                status,
                ack: None,
                content_type: None,
                close: parsed.version == Some(0),
                body: Vec::new(),
                body_len: 0,
            };
            let mut length = None;
            let mut chunked = false;
            for h in parsed.headers.iter() {
                let value = String::from_utf8_lossy(h.value);
                let value = value.trim();
                if h.name.eq_ignore_ascii_case("x-spot-ack") {
                    response.ack = value.parse().ok();
                } else if h.name.eq_ignore_ascii_case("content-type") {
                    response.content_type = Some(value.to_string());
                } else if h.name.eq_ignore_ascii_case("connection") {
                    response.close = value.eq_ignore_ascii_case("close");
                } else if h.name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.parse::<u64>().map_err(|_| {
                        ResponseError::Head(format!("bad Content-Length {value:?}"))
                    })?);
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.to_ascii_lowercase().ends_with("chunked");
                }
            }
            self.buf.drain(..n);
            self.body = if status == 204 || status == 304 || (100..200).contains(&status) {
                BodyState::Length(0)
            } else if chunked {
                BodyState::ChunkSize
            } else if let Some(len) = length {
                BodyState::Length(len)
            } else {
                response.close = true;
                BodyState::UntilClose
            };
            self.head = Some(response);
        }
        loop {
            match self.body {
                BodyState::Length(0) | BodyState::Done => {
                    self.body = BodyState::Done;
                    return Ok(self.head.take());
                }
                BodyState::Length(left) => {
                    let n = left.min(self.buf.len() as u64);
                    if n == 0 {
                        return Ok(None);
                    }
                    self.take_body(n as usize)?;
                    self.body = BodyState::Length(left - n);
                }
                BodyState::UntilClose => {
                    let n = self.buf.len();
                    if n == 0 {
                        return Ok(None);
                    }
                    self.take_body(n)?;
                }
                BodyState::ChunkSize => {
                    let Some(end) = find_crlf(&self.buf) else {
                        if self.buf.len() > 1024 {
                            return Err(ResponseError::ChunkSize(self.consumed_body));
                        }
                        return Ok(None);
                    };
                    let line = std::str::from_utf8(&self.buf[..end]).unwrap_or("");
                    let digits = line.split(';').next().unwrap_or("").trim();
                    let size = (digits.len() <= 15)
                        .then(|| u64::from_str_radix(digits, 16).ok())
                        .flatten()
                        .ok_or(ResponseError::ChunkSize(self.consumed_body))?;
                    self.buf.drain(..end + 2);
                    self.body = if size == 0 {
                        BodyState::Trailers
                    } else {
                        BodyState::ChunkData(size)
                    };
                }
                BodyState::ChunkData(left) => {
                    let n = left.min(self.buf.len() as u64);
                    if n == 0 {
                        return Ok(None);
                    }
                    self.take_body(n as usize)?;
                    self.body = if left == n {
                        BodyState::ChunkDataEnd
                    } else {
                        BodyState::ChunkData(left - n)
                    };
                }
                BodyState::ChunkDataEnd => {
                    if self.buf.len() < 2 {
                        return Ok(None);
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(ResponseError::ChunkSize(self.consumed_body));
                    }
                    self.buf.drain(..2);
                    self.body = BodyState::ChunkSize;
                }
                BodyState::Trailers => {
                    let Some(end) = find_crlf(&self.buf) else {
                        return Ok(None);
                    };
                    self.buf.drain(..end + 2);
                    if end == 0 {
                        self.body = BodyState::Done;
                    }
                }
            }
        }
    }

    fn take_body(&mut self, n: usize) -> Result<(), ResponseError> {
        self.consumed_body += n as u64;
        if self.consumed_body > self.max_body && self.keep_body {
            return Err(ResponseError::BodyTooLarge(self.max_body));
        }
        if let Some(head) = &mut self.head {
            head.body_len += n as u64;
            if self.keep_body {
                head.body.extend_from_slice(&self.buf[..n]);
            }
        }
        self.buf.drain(..n);
        Ok(())
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_has_exactly_the_spec_headers() {
        let head = request_head(
            "",
            203,
            "127.0.0.1",
            "35-42-g0388fd9-dirty",
            Encoding::Json,
            None,
        );
        let capture = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../spot-protocol/tests/fixtures/vendor-http-spot203.http"
        ));
        let end = capture.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(
            String::from_utf8(head).unwrap(),
            String::from_utf8(capture[..end].to_vec()).unwrap()
        );
        let pb =
            String::from_utf8(request_head("/x", 1, "h", "v", Encoding::Protobuf, None)).unwrap();
        assert!(pb.starts_with("POST /x/api/spots/1/events/ HTTP/1.1\r\n"));
        assert!(pb.contains("\r\nContent-Type: application/x-intellifi-events-pb\r\n"));
        assert!(pb.contains("\r\nAccept: application/x-intellifi-events-pb\r\n"));
    }

    /// Decodes a chunked body, checking the framing.
    fn dechunk(mut b: &[u8]) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut chunks = 0;
        loop {
            let end = find_crlf(b).unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap(), 16).unwrap();
            b = &b[end + 2..];
            if size == 0 {
                assert_eq!(b, b"\r\n");
                return (out, chunks);
            }
            out.extend_from_slice(&b[..size]);
            assert_eq!(&b[size..size + 2], b"\r\n");
            b = &b[size + 2..];
            chunks += 1;
        }
    }

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        for len in [
            0,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            4095,
            65_536,
            1 << 40,
            usize::MAX,
        ] {
            let mut out = Vec::new();
            push_chunk_size(&mut out, len);
            assert_eq!(out, format!("{len:x}\r\n").into_bytes());
        }
    }

    #[test]
    fn chunks_carry_the_bytes_one_per_event_or_random() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let ends = [100, 2500, 4999];
        let mut rng = Rng::new(3);
        for (split, min_chunks) in [(ChunkSplit::Event, 4), (ChunkSplit::Random, 20)] {
            let mut out = Vec::new();
            push_chunks(&mut out, &data, &ends, split, &mut rng);
            push_chunks(&mut out, &[], &[], split, &mut rng);
            out.extend_from_slice(LAST_CHUNK);
            let (back, chunks) = dechunk(&out);
            assert_eq!(back, data);
            assert!(chunks >= min_chunks, "{split:?}: {chunks} chunks");
            if split == ChunkSplit::Event {
                assert_eq!(chunks, 4, "three events and the trailing byte");
            }
        }
    }

    fn parse_split_everywhere(bytes: &[u8], keep: bool) -> Response {
        let mut whole = None;
        for cut in 0..=bytes.len() {
            let mut p = ResponseParser::new(4096, 1024, keep);
            p.feed(&bytes[..cut]);
            let first = p.poll().unwrap();
            if cut < bytes.len() {
                assert_eq!(first, None, "complete before byte {cut}");
            }
            p.feed(&bytes[cut..]);
            let r = p.poll().unwrap().or(first).expect("complete");
            if let Some(w) = &whole {
                assert_eq!(&r, w);
            }
            whole = Some(r);
        }
        whole.unwrap()
    }

    #[test]
    fn parses_content_length_and_chunked_responses_split_anywhere() {
        let r = parse_split_everywhere(
            b"HTTP/1.1 200 OK\r\nX-Spot-Ack: 42\r\nContent-Length: 5\r\nDate: x\r\n\r\nhello",
            true,
        );
        assert_eq!((r.status, r.ack, r.close), (200, Some(42), false));
        assert_eq!(r.body, b"hello");
        let r = parse_split_everywhere(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            true,
        );
        assert_eq!((r.status, r.ack, r.close), (200, None, true));
        assert_eq!(r.body, b"abcde");
        let r = parse_split_everywhere(b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n", true);
        assert_eq!(r.status, 503);
    }

    #[test]
    fn body_over_limit_fails_when_kept_and_is_counted_when_not() {
        let mut body = b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', 2000));
        let mut p = ResponseParser::new(4096, 1024, true);
        p.feed(&body);
        assert_eq!(p.poll(), Err(ResponseError::BodyTooLarge(1024)));
        let mut p = ResponseParser::new(4096, 1024, false);
        p.feed(&body);
        let r = p.poll().unwrap().unwrap();
        assert_eq!((r.body_len, r.body.len()), (2000, 0));
    }

    #[test]
    fn malformed_heads_and_chunk_sizes_are_errors() {
        let mut p = ResponseParser::new(4096, 1024, true);
        p.feed(b"HTTX/1.1 200 OK\r\n\r\n");
        assert!(matches!(p.poll(), Err(ResponseError::Head(_))));
        let mut p = ResponseParser::new(4096, 1024, true);
        p.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n");
        assert_eq!(p.poll(), Err(ResponseError::ChunkSize(0)));
        let mut p = ResponseParser::new(64, 1024, true);
        p.feed(&[b'a'; 100]);
        assert!(p.poll().is_err());
    }
}
