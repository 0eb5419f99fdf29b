//! Helpers shared by the JSON codec tests: decoding a stream under a given chunking (the
//! splitters are test-support's), and rendering the result as the lines of a
//! `<name>.expected.jsonl` file.

#![allow(dead_code)]

use spot_protocol::json::{JsonDecoder, JsonEncoder};
use spot_protocol::{DecodeError, Event, Limits};
use test_support::split::split_at;

/// Decodes `pieces` fed one after the other, draining after each, then finishes.
pub fn decode_pieces<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<Result<Event, DecodeError>> {
    decode_pieces_with(Limits::default(), pieces)
}

/// [`decode_pieces`] with the given limits.
pub fn decode_pieces_with<'a>(
    limits: Limits,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<Result<Event, DecodeError>> {
    let mut decoder = JsonDecoder::new(limits);
    let mut out = Vec::new();
    for piece in pieces {
        decoder.feed(piece);
        out.extend(std::iter::from_fn(|| decoder.next_event()));
    }
    decoder.finish();
    out.extend(std::iter::from_fn(|| decoder.next_event()));
    out
}

/// Decodes `bytes` fed in pieces cut at `cuts` (offsets up to `bytes.len()`).
pub fn decode_cut(bytes: &[u8], cuts: &[usize]) -> Vec<Result<Event, DecodeError>> {
    decode_pieces(split_at(bytes, cuts))
}

/// Decodes `bytes` fed in one piece.
pub fn decode_whole(bytes: &[u8]) -> Vec<Result<Event, DecodeError>> {
    decode_pieces([bytes])
}

/// Decodes `bytes` fed one byte at a time.
pub fn decode_bytewise(bytes: &[u8]) -> Vec<Result<Event, DecodeError>> {
    decode_pieces(bytes.chunks(1))
}

/// Decodes `bytes` fed in chunks of `size` bytes.
pub fn decode_chunks_of(bytes: &[u8], size: usize) -> Vec<Result<Event, DecodeError>> {
    decode_pieces(bytes.chunks(size))
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
