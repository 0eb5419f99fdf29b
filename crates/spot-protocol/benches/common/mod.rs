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
