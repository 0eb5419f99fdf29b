//! The worked example of docs/protobuf.md, byte for byte: if the encoding changes, this test
//! and the document change together.

mod pb_support;

use pb_support::*;
use spot_protocol::json::JsonDecoder;
use spot_protocol::pb::PbEncoder;
use spot_protocol::{Event, Limits};

/// The four events of the example, as JSON.
const EXAMPLE_JSON: &str = r#"["hit","create",{"time":"2014-12-09T12:12:53.009Z","item_code":"303474d3702127ea4f78377d","item_codetype":"EPC Gen2","antenna":2,"signal_strength":-415}]

["hit","create",{"time":"2014-12-09T12:12:53.021Z","item_code":"303474d3702127ea4f78377d","item_codetype":"EPC Gen2","antenna":1,"signal_strength":-430}]

["presence","update",{"item_code":"303474d3702127ea4f78377d","item_codetype":"EPC Gen2","time_started":"2014-12-09T12:12:52Z","time_last":"2014-12-09T12:12:53.021Z","proximity":"near","hold_delay_s":4,"seq":7}]

["config","update",{"brain_address":"192.168.0.120","led":"on"}]

"#;

/// The bytes docs/protobuf.md shows for them on a raw TCP stream, one line per `encode`.
const EXAMPLE_HEX: [&str; 4] = [
    "00 20 32 1e 12 0c 30 34 74 d3 70 21 27 ea 4f 78 37 7d 28 00 30 01 40 04 48 a2 96 bb ef c5 52 50 bd 06",
    "0d 32 0b 08 00 30 01 40 02 48 18 50 db 06",
    "13 08 07 10 01 2a 0d 08 00 30 01 40 02 48 00 50 f9 0f 58 08",
    "21 10 01 22 1d 3a 0d 31 39 32 2e 31 36 38 2e 30 2e 31 32 30 7a 0c 7b 22 6c 65 64 22 3a 22 6f 6e 22 7d",
];

fn example_events() -> Vec<Event> {
    let mut decoder = JsonDecoder::new(Limits::default());
    decoder.feed(EXAMPLE_JSON.as_bytes());
    decoder.finish();
    std::iter::from_fn(|| decoder.next_event())
        .map(|r| r.expect("the example is valid JSON"))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unhex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
        .collect()
}

#[test]
fn the_documented_example_encodes_to_the_documented_bytes() {
    let events = example_events();
    assert_eq!(events.len(), 4);
    let mut encoder = PbEncoder::with_stream_preamble();
    for (event, expected) in events.iter().zip(EXAMPLE_HEX) {
        let mut out = Vec::new();
        encoder.encode(event, &mut out);
        assert_eq!(hex(&out), expected);
    }
}

#[test]
fn the_documented_bytes_decode_to_the_example_events() {
    let bytes: Vec<u8> = EXAMPLE_HEX.iter().flat_map(|line| unhex(line)).collect();
    assert_eq!(decode(&bytes), oks(&example_events()));
}

#[test]
fn the_documented_item_code_forms_keep_their_case() {
    // Upper-case hex: field 4 (item_code_upper) = 1; mixed case: text (field 3).
    let json = r#"["hit","create",{"item_code":"303474D3702127EA4F78377D"}]

["hit","create",{"item_code":"303474d3702127EA4F78377D"}]

"#;
    let mut decoder = JsonDecoder::new(Limits::default());
    decoder.feed(json.as_bytes());
    decoder.finish();
    let events: Vec<Event> = std::iter::from_fn(|| decoder.next_event())
        .map(|r| r.expect("valid JSON"))
        .collect();
    let mut encoder = PbEncoder::new();
    let mut upper = Vec::new();
    encoder.encode(&events[0], &mut upper);
    assert_eq!(
        hex(&upper),
        "14 32 12 12 0c 30 34 74 d3 70 21 27 ea 4f 78 37 7d 20 01 28 00"
    );
    let mut mixed = Vec::new();
    encoder.encode(&events[1], &mut mixed);
    assert_eq!(&mixed[..5], &unhex("1e 32 1c 1a 18")[..]);
    assert_eq!(&mixed[5..29], b"303474d3702127EA4F78377D");
    assert_eq!(&mixed[29..], &unhex("28 01")[..]);
    assert_eq!(decode(&[upper, mixed].concat()), oks(&events));
}
