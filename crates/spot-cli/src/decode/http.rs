//! Captured HTTP/1.1 requests taken apart for `spot decode`: request heads (parsed by
//! `httparse`), bodies de-chunked (`Transfer-Encoding: chunked`) or cut by `Content-Length`,
//! one request after another as on a keep-alive connection. Sans-IO: bytes in, [`Part`]s out.

/// How an input is framed, told from its first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// HTTP requests: the input starts with a request line (`POST /… HTTP/1.1`).
    Requests,
    /// A chunked body without its head: the input starts with a chunk-size line.
    ChunkedBody,
    /// Neither: a bare event stream.
    Plain,
}

/// Longest first line [`sniff`] waits for before deciding the input is [`Framing::Plain`].
const SNIFF_BYTES: usize = 8 * 1024;
/// Largest request head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The framing of an input starting with `start`; `None` when more bytes are needed to tell
/// (`at_end`: no more will come).
pub fn sniff(start: &[u8], at_end: bool) -> Option<Framing> {
    let Some(line_end) = start.iter().position(|&b| b == b'\n') else {
        return (at_end || start.len() >= SNIFF_BYTES).then_some(Framing::Plain);
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    if request.parse(start).is_ok() && request.version.is_some() {
        Some(Framing::Requests)
    } else if start[0].is_ascii_hexdigit() && chunk_size(&start[..=line_end]).is_some() {
        Some(Framing::ChunkedBody)
    } else {
        Some(Framing::Plain)
    }
}

/// A chunk-size line (`1f4\r\n`, `1f4;ext\r\n`, or with a bare `\n` as in captures whose
/// line ends were converted): its length and the size.
fn chunk_size(line: &[u8]) -> Option<(usize, u64)> {
    let text = line.strip_suffix(b"\n")?;
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let mut crlf = text.to_vec();
    crlf.extend_from_slice(b"\r\n");
    match httparse::parse_chunk_size(&crlf) {
        Ok(httparse::Status::Complete((_, size))) => Some((line.len(), size)),
        _ => None,
    }
}

/// What a capture holds, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Part<'a> {
    /// A request head.
    Head(Head),
    /// Bytes of the current request's body, de-chunked.
    Body(&'a [u8]),
    /// The current request's body has ended.
    End,
}

/// What the decoder needs of a request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// The request line without its line end, e.g. `POST /api/spots/203/events/ HTTP/1.1`.
    pub request_line: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
}

/// Why a capture cannot be read on: its framing is broken, so nothing after it is.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// The bytes where a request head should start are not one.
    #[error("at byte {offset} of the capture: not an HTTP request head ({reason})")]
    BadHead {
        /// Where the head starts.
        offset: u64,
        /// What `httparse` found wrong.
        reason: httparse::Error,
    },
    /// A request head longer than the limit.
    #[error("at byte {offset} of the capture: request head longer than {MAX_HEAD_BYTES} bytes")]
    HeadTooLong {
        /// Where the head starts.
        offset: u64,
    },
    /// A `Content-Length` or `Transfer-Encoding` this reader cannot follow.
    #[error("at byte {offset} of the capture: cannot find the body's end: {what}")]
    BodyLength {
        /// Where the head starts.
        offset: u64,
        /// The header and its value.
        what: String,
    },
    /// A line where a chunk size should be that is not one.
    #[error("at byte {offset} of the capture: bad chunk size line {line:?}")]
    BadChunkSize {
        /// Where the line starts.
        offset: u64,
        /// The line, lossily as text.
        line: String,
    },
    /// Chunk data not followed by a line end: the size was wrong.
    #[error("at byte {offset} of the capture: chunk data does not end where its size says")]
    ChunkOverrun {
        /// Where the line end should be.
        offset: u64,
    },
    /// The capture ends before the request does.
    #[error("the capture ends inside a request ({0})")]
    Truncated(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    ChunkSize,
    ChunkData {
        left: u64,
    },
    ChunkEnd,
    Trailers,
    Fixed {
        left: u64,
    },
    /// The body has ended: [`Part::End`] is next.
    End,
    Failed,
}

/// Takes a capture apart as it arrives: [`feed`](Self::feed) bytes, then call
/// [`next_part`](Self::next_part) until it returns `None`; at the end call
/// [`finish`](Self::finish).
#[derive(Debug)]
pub struct Unframer {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    pos: usize,
    /// Capture offset of `buf[0]`.
    base: u64,
    state: State,
    at_end: bool,
}

impl Unframer {
    /// An unframer for an input of the given framing (not [`Framing::Plain`]).
    pub fn new(framing: Framing) -> Self {
        Unframer {
            buf: Vec::new(),
            pos: 0,
            base: 0,
            state: match framing {
                Framing::ChunkedBody => State::ChunkSize,
                _ => State::Head,
            },
            at_end: false,
        }
    }

    /// Appends captured bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.drain(..self.pos);
        self.base += self.pos as u64;
        self.pos = 0;
        self.buf.extend_from_slice(bytes);
    }

    /// Marks the end of the capture.
    pub fn finish(&mut self) {
        self.at_end = true;
    }

    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn fail(&mut self, e: FramingError) -> Option<Result<Part<'_>, FramingError>> {
        self.state = State::Failed;
        Some(Err(e))
    }

    /// The next part; `None` when more bytes are needed (or, after [`finish`](Self::finish),
    /// when the capture is exhausted). After an `Err` there are no more parts.
    pub fn next_part(&mut self) -> Option<Result<Part<'_>, FramingError>> {
        let rest = &self.buf[self.pos..];
        match self.state {
            State::Failed => None,
            State::End => {
                self.state = State::Head;
                Some(Ok(Part::End))
            }
            State::Head => {
                // Line ends between requests (and at the end) carry nothing.
                let blank = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
                self.pos += blank;
                if blank == rest.len() {
                    return None;
                }
                self.head()
            }
            State::ChunkSize => {
                let Some(line_end) = rest.iter().position(|&b| b == b'\n') else {
                    return self.need("a chunk size line");
                };
                match chunk_size(&rest[..=line_end]) {
                    Some((len, 0)) => {
                        self.pos += len;
                        self.state = State::Trailers;
                        self.next_part()
                    }
                    Some((len, size)) => {
                        self.pos += len;
                        self.state = State::ChunkData { left: size };
                        self.next_part()
                    }
                    None => {
                        let line = String::from_utf8_lossy(&rest[..line_end]).into_owned();
                        let offset = self.offset();
                        self.fail(FramingError::BadChunkSize { offset, line })
                    }
                }
            }
            State::ChunkData { left } | State::Fixed { left } => {
                if rest.is_empty() {
                    return self.need("a body");
                }
                let n = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let left = left - n as u64;
                self.state = match (self.state, left) {
                    (State::ChunkData { .. }, 0) => State::ChunkEnd,
                    (State::ChunkData { .. }, _) => State::ChunkData { left },
                    (_, 0) => State::End,
                    _ => State::Fixed { left },
                };
                let start = self.pos;
                self.pos += n;
                Some(Ok(Part::Body(&self.buf[start..start + n])))
            }
            State::ChunkEnd => {
                let len = if rest.starts_with(b"\r\n") {
                    2
                } else if rest.starts_with(b"\n") {
                    1
                } else if rest.is_empty() || rest == b"\r" {
                    return self.need("a chunk's line end");
                } else {
                    let offset = self.offset();
                    return self.fail(FramingError::ChunkOverrun { offset });
                };
                self.pos += len;
                self.state = State::ChunkSize;
                self.next_part()
            }
            State::Trailers => {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                match httparse::parse_headers(rest, &mut headers) {
                    Ok(httparse::Status::Complete((len, _))) => {
                        self.pos += len;
                        self.state = State::Head;
                        Some(Ok(Part::End))
                    }
                    Ok(httparse::Status::Partial) => self.need("the end of a chunked body"),
                    Err(reason) => {
                        let offset = self.offset();
                        self.fail(FramingError::BadHead { offset, reason })
                    }
                }
            }
        }
    }

    /// `None` (wait for more), or after the end of the capture the error saying what is missing.
    fn need(&mut self, what: &'static str) -> Option<Result<Part<'_>, FramingError>> {
        if self.at_end {
            self.fail(FramingError::Truncated(what))
        } else {
            None
        }
    }

    fn head(&mut self) -> Option<Result<Part<'_>, FramingError>> {
        let offset = self.offset();
        let rest = &self.buf[self.pos..];
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let len = match request.parse(rest) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if rest.len() > MAX_HEAD_BYTES => {
                return self.fail(FramingError::HeadTooLong { offset });
            }
            Ok(httparse::Status::Partial) => return self.need("a request head"),
            Err(reason) => return self.fail(FramingError::BadHead { offset, reason }),
        };
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
        };
        let chunked = header("transfer-encoding");
        let state = match (chunked, header("content-length")) {
            (Some(te), _) => match te.rsplit(',').next().map(str::trim) {
                Some(last) if last.eq_ignore_ascii_case("chunked") => State::ChunkSize,
                _ => {
                    let what = format!("Transfer-Encoding: {te}");
                    return self.fail(FramingError::BodyLength { offset, what });
                }
            },
            (None, Some(cl)) => match cl.parse::<u64>() {
                Ok(0) => State::End,
                Ok(left) => State::Fixed { left },
                Err(_) => {
                    let what = format!("Content-Length: {cl}");
                    return self.fail(FramingError::BodyLength { offset, what });
                }
            },
            (None, None) => State::End,
        };
        let head = Head {
            request_line: format!(
                "{} {} HTTP/1.{}",
                request.method.unwrap_or_default(),
                request.path.unwrap_or_default(),
                request.version.unwrap_or_default()
            ),
            content_type: header("content-type"),
        };
        self.pos += len;
        self.state = state;
        Some(Ok(Part::Head(head)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::captures::{http_spot203_body, HTTP_SPOT203};
    use test_support::split::every_split;

    /// The heads' request lines and the bodies of `pieces` fed one after another.
    fn unframe(pieces: &[&[u8]]) -> (Vec<String>, Vec<Vec<u8>>) {
        let mut unframer = Unframer::new(Framing::Requests);
        let (mut heads, mut bodies) = (Vec::new(), vec![Vec::new()]);
        let mut take = |unframer: &mut Unframer| {
            while let Some(part) = unframer.next_part() {
                match part.expect("valid framing") {
                    Part::Head(head) => heads.push(head.request_line),
                    Part::Body(bytes) => bodies.last_mut().unwrap().extend_from_slice(bytes),
                    Part::End => bodies.push(Vec::new()),
                }
            }
        };
        for piece in pieces {
            unframer.feed(piece);
            take(&mut unframer);
        }
        unframer.finish();
        take(&mut unframer);
        bodies.pop();
        (heads, bodies)
    }

    #[test]
    fn the_capture_gives_its_head_and_body_however_it_is_cut() {
        let line = "POST /api/spots/203/events/ HTTP/1.1";
        for (at, pieces) in every_split(HTTP_SPOT203) {
            let (heads, bodies) = unframe(&pieces);
            assert_eq!(heads, [line], "cut at {at}");
            assert_eq!(bodies, [http_spot203_body()], "cut at {at}");
        }
    }

    #[test]
    fn the_first_line_tells_the_framing() {
        assert_eq!(sniff(HTTP_SPOT203, false), Some(Framing::Requests));
        assert_eq!(sniff(b"GET / HTTP/1.1\n", false), Some(Framing::Requests));
        assert_eq!(
            sniff(b"1f4\r\n[\"spot\"", false),
            Some(Framing::ChunkedBody)
        );
        assert_eq!(sniff(b"1f4;ext=1\n", false), Some(Framing::ChunkedBody));
        assert_eq!(
            sniff(b"[\"spot\",\"create\",{\n", false),
            Some(Framing::Plain)
        );
        assert_eq!(sniff(b"\n\n[\"spot\"", false), Some(Framing::Plain));
        assert_eq!(sniff(b"POST /api/spo", false), None, "wait for the line");
        assert_eq!(sniff(b"[]", true), Some(Framing::Plain));
    }

    #[test]
    fn broken_framing_is_an_error_that_ends_the_capture() {
        let mut unframer = Unframer::new(Framing::ChunkedBody);
        unframer.feed(b"2\r\nabc\r\n0\r\n\r\n");
        assert_eq!(unframer.next_part().unwrap().unwrap(), Part::Body(b"ab"));
        let e = unframer.next_part().unwrap().unwrap_err();
        assert!(matches!(e, FramingError::ChunkOverrun { offset: 5 }), "{e}");
        assert!(unframer.next_part().is_none());

        let mut unframer = Unframer::new(Framing::Requests);
        unframer.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
        let e = unframer.next_part().unwrap().unwrap_err();
        assert_eq!(
            e.to_string(),
            "at byte 0 of the capture: cannot find the body's end: Transfer-Encoding: gzip"
        );
    }
}
