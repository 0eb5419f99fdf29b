//! Fuzzes the protobuf decoder: arbitrary bytes fed in pseudo-random splits must never
//! panic and must decode the same as when fed whole; the events that decode, encoded again
//! on a fresh stream and decoded, must come back unchanged. A tight limit and a small
//! item-code table run alongside the defaults so those errors are exercised too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spot_protocol::pb::{PbDecoder, PbEncoder};
use spot_protocol::{DecodeError, Event, Limits};

type Results = Vec<Result<Event, DecodeError>>;

/// Decodes `data` fed in chunks of the given sizes (cycled; 0 = the rest).
fn decode(mut decoder: PbDecoder, data: &[u8], sizes: &[usize]) -> Results {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let size = match sizes.get(i % sizes.len().max(1)) {
            Some(&n) if n > 0 => n.min(rest.len()),
            _ => rest.len(),
        };
        decoder.feed(&rest[..size]);
        rest = &rest[size..];
        i += 1;
        out.extend(std::iter::from_fn(|| decoder.next_event()));
    }
    decoder.finish();
    out.extend(std::iter::from_fn(|| decoder.next_event()));
    out
}

fuzz_target!(|input: &[u8]| {
    // The first bytes choose the chunk sizes, the rest is the stream.
    let (head, data) = input.split_at(input.len().min(4));
    let sizes: Vec<usize> = head.iter().map(|&b| usize::from(b % 17)).collect();

    let tight = Limits {
        max_message_bytes: 64,
        max_depth: 4,
    };
    let decoders = || {
        [
            PbDecoder::new(Limits::default()),
            PbDecoder::with_item_table_slots(tight, 4),
        ]
    };
    for (whole, (split, bytewise)) in decoders()
        .into_iter()
        .zip(decoders().into_iter().zip(decoders()))
    {
        let whole = decode(whole, data, &[]);
        assert!(decode(split, data, &sizes) == whole, "split changed the result");
        assert!(decode(bytewise, data, &[1]) == whole, "1-byte feeds changed the result");
    }

    let events: Vec<Event> = decode(PbDecoder::new(Limits::default()), data, &[])
        .into_iter()
        .flatten()
        .collect();
    let mut encoder = PbEncoder::new();
    let mut bytes = Vec::new();
    for event in &events {
        encoder.encode(event, &mut bytes);
    }
    let again = decode(PbDecoder::new(Limits::default()), &bytes, &[]);
    let expected: Results = events.into_iter().map(Ok).collect();
    assert!(again == expected, "re-encoding changed {expected:?} into {again:?}");
});
