//! The realistic mix and the whole-stream decode and encode that the codec bench
//! (`benches/codecs.rs`) times and `examples/codec_work.rs` counts instructions of.

use spot_protocol::{Decoder, Encoder, Encoding, Event, Limits};

/// Captured spot output: every event type, vendor-style pretty JSON.
pub const MIX: &[u8] = include_bytes!("../../tests/fixtures/realistic-mix.events");

/// Every event of `bytes`.
pub fn decode_all(encoding: Encoding, bytes: &[u8]) -> Vec<Event> {
    let mut decoder = Decoder::new(encoding, Limits::default());
    decoder.feed(bytes);
    decoder.finish();
    let mut events = Vec::new();
    while let Some(item) = decoder.next_event() {
        events.push(item.expect("the realistic mix decodes"));
    }
    events
}

/// Decodes every event of `bytes` and drops each as it comes, as the `serde_json::Value`
/// baseline drops each value: the decoder's work alone, without a growing `Vec<Event>`
/// (whose reallocations cost ~200 instructions per event). Returns how many.
pub fn decode_each(encoding: Encoding, bytes: &[u8]) -> usize {
    let mut decoder = Decoder::new(encoding, Limits::default());
    decoder.feed(bytes);
    decoder.finish();
    let mut n = 0;
    while let Some(item) = decoder.next_event() {
        std::hint::black_box(item.expect("the realistic mix decodes"));
        n += 1;
    }
    n
}

/// `events` as one stream.
pub fn encode_all(encoding: Encoding, events: &[Event]) -> Vec<u8> {
    let mut encoder = Encoder::new(encoding);
    let mut out = Vec::with_capacity(1 << 20);
    for event in events {
        encoder.encode(event, &mut out);
    }
    out
}

/// The compact JSON frames of the mix, each without its separator: the baseline's input.
pub fn frames(compact: &[u8]) -> Vec<&[u8]> {
    compact
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .collect()
}
