//! Helpers shared by the JSON codec tests: decoding a stream under a given chunking, and
//! rendering the result as the lines of a `<name>.expected.jsonl` file.

#![allow(dead_code)]

use spot_protocol::json::{JsonDecoder, JsonEncoder};
use spot_protocol::{DecodeError, Event, Limits};

/// Decodes `bytes` fed in pieces ending at `cuts` (ascending offsets; the rest follows).
pub fn decode_cut(bytes: &[u8], cuts: &[usize]) -> Vec<Result<Event, DecodeError>> {
    let mut decoder = JsonDecoder::new(Limits::default());
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let cut = cut.clamp(from, bytes.len());
        decoder.feed(&bytes[from..cut]);
        from = cut;
        out.extend(std::iter::from_fn(|| decoder.next_event()));
    }
    decoder.finish();
    out.extend(std::iter::from_fn(|| decoder.next_event()));
    out
}

/// Decodes `bytes` fed in one piece.
pub fn decode_whole(bytes: &[u8]) -> Vec<Result<Event, DecodeError>> {
    decode_cut(bytes, &[])
}

/// Decodes `bytes` fed one byte at a time.
pub fn decode_bytewise(bytes: &[u8]) -> Vec<Result<Event, DecodeError>> {
    let cuts: Vec<usize> = (1..bytes.len()).collect();
    decode_cut(bytes, &cuts)
}

/// Decodes `bytes` fed in chunks of `size` bytes.
pub fn decode_chunks_of(bytes: &[u8], size: usize) -> Vec<Result<Event, DecodeError>> {
    let cuts: Vec<usize> = (size..bytes.len()).step_by(size).collect();
    decode_cut(bytes, &cuts)
}

/// One line of an expected file: an event in compact JSON (without its `\n\n`), or `!` and
/// the error (`!at byte 17: invalid JSON: …`).
pub fn render(result: &Result<Event, DecodeError>) -> String {
    match result {
        Ok(event) => {
            let mut out = Vec::new();
            JsonEncoder::new().encode(event, &mut out);
            let text = String::from_utf8(out).expect("the encoder writes UTF-8");
            text.strip_suffix("\n\n")
                .expect("compact form ends with a blank line")
                .to_string()
        }
        Err(e) => format!("!{e}"),
    }
}

pub fn render_all(results: &[Result<Event, DecodeError>]) -> Vec<String> {
    results.iter().map(render).collect()
}

/// The body of an HTTP/1.1 request with `Transfer-Encoding: chunked`, de-chunked.
pub fn dechunk_http(request: &[u8]) -> Vec<u8> {
    let header_end = find(request, b"\r\n\r\n").expect("the request has a header end") + 4;
    let mut rest = &request[header_end..];
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").expect("a chunk size line");
        let size_text = std::str::from_utf8(&rest[..line_end]).expect("ASCII size line");
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).expect("a hex chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[..size]);
        assert_eq!(&rest[size..size + 2], b"\r\n", "chunk data ends with CRLF");
        rest = &rest[size + 2..];
    }
}

/// The chunk boundaries of a chunked HTTP body, as offsets in the de-chunked body.
pub fn chunk_boundaries(request: &[u8]) -> Vec<usize> {
    let header_end = find(request, b"\r\n\r\n").expect("the request has a header end") + 4;
    let mut rest = &request[header_end..];
    let mut at = 0;
    let mut cuts = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").expect("a chunk size line");
        let size_text = std::str::from_utf8(&rest[..line_end]).expect("ASCII size line");
        let size = usize::from_str_radix(size_text.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return cuts;
        }
        at += size;
        cuts.push(at);
        rest = &rest[line_end + 2 + size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
