//! Fuzzes the JSON decoder: arbitrary bytes fed in pseudo-random splits must never panic,
//! must decode the same as when fed whole, and every event that decodes must survive
//! encode → decode (compact and pretty) unchanged. Tight limits run alongside the defaults
//! so the size and depth errors are exercised too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spot_protocol::json::{JsonDecoder, JsonEncoder};
use spot_protocol::{DecodeError, Event, Limits};

type Results = Vec<Result<Event, DecodeError>>;

/// Decodes `data` fed in chunks of the given sizes (cycled; 0 = the rest).
fn decode(limits: Limits, data: &[u8], sizes: &[usize]) -> Results {
    let mut decoder = JsonDecoder::new(limits);
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

    for limits in [
        Limits::default(),
        Limits {
            max_message_bytes: 200,
            max_depth: 4,
        },
    ] {
        let whole = decode(limits, data, &[]);
        assert!(decode(limits, data, &sizes) == whole, "split changed the result");
        assert!(decode(limits, data, &[1]) == whole, "1-byte feeds changed the result");
    }

    for event in decode(Limits::default(), data, &[]).into_iter().flatten() {
        for mut encoder in [JsonEncoder::new(), JsonEncoder::pretty()] {
            let mut bytes = Vec::new();
            encoder.encode(&event, &mut bytes);
            let again = decode(Limits::default(), &bytes, &[]);
            assert!(
                matches!(again.as_slice(), [Ok(e)] if *e == event),
                "round trip changed {event:?} into {again:?} via {}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
});
