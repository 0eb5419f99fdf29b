//! JSON → protobuf → JSON: the golden fixtures and the realistic mix come back as the same
//! events and the same compact JSON; the protobuf form of the mix is at most 25 % of its
//! compact JSON; the mix decodes alike under every split point and 1-byte feeds.

mod pb_support;

use pb_support::*;
use proptest::prelude::*;
use spot_protocol::json::{JsonDecoder, JsonEncoder};
use spot_protocol::pb::PbDecoder;
use spot_protocol::{testing, Event, Limits};
use test_support::split::every_split;

const MIX: &[u8] = include_bytes!("fixtures/realistic-mix.events");

fn json_decode(bytes: &[u8]) -> Vec<Event> {
    let mut decoder = JsonDecoder::new(Limits::default());
    decoder.feed(bytes);
    decoder.finish();
    std::iter::from_fn(|| decoder.next_event())
        .map(|r| r.expect("the fixture decodes as JSON"))
        .collect()
}

fn json_compact(events: &[Event]) -> Vec<u8> {
    let mut encoder = JsonEncoder::new();
    let mut out = Vec::new();
    for e in events {
        encoder.encode(e, &mut out);
    }
    out
}

/// Every event of the golden fixtures: the event lines of the `*.expected.jsonl` files.
fn fixture_events() -> Vec<Event> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".expected.jsonl"))
        .collect();
    names.sort();
    assert!(names.len() >= 5, "fixtures missing: {names:?}");
    let mut events = Vec::new();
    for name in names {
        let text = std::fs::read_to_string(&name).expect("fixture");
        let lines: String = text
            .lines()
            .filter(|l| !l.starts_with('!'))
            .map(|l| format!("{l}\n\n"))
            .collect();
        events.extend(json_decode(lines.as_bytes()));
    }
    events
}

#[test]
fn every_fixture_event_survives_json_to_pb_to_json() {
    let events = fixture_events();
    assert!(events.len() > 5_000);
    let pb = encode(&events);
    let back: Vec<Event> = decode(&pb)
        .into_iter()
        .map(|r| r.expect("our own stream decodes"))
        .collect();
    assert_eq!(back, events);
    assert_eq!(json_compact(&back), json_compact(&events));
}

#[test]
fn each_fixture_event_survives_alone_on_a_fresh_stream() {
    for event in fixture_events().iter().take(300) {
        let got = decode(&encode(std::slice::from_ref(event)));
        assert_eq!(got, oks(std::slice::from_ref(event)));
    }
}

#[test]
fn the_realistic_mix_in_protobuf_is_at_most_a_quarter_of_compact_json() {
    let events = json_decode(MIX);
    let compact = json_compact(&events);
    let pb = encode(&events);
    let ratio = pb.len() as f64 / compact.len() as f64;
    eprintln!(
        "realistic mix: {} events, compact JSON {} B, PB {} B = {:.1} %",
        events.len(),
        compact.len(),
        pb.len(),
        100.0 * ratio
    );
    assert!(
        ratio <= 0.25,
        "PB is {:.1} % of compact JSON",
        100.0 * ratio
    );
}

#[test]
fn the_realistic_mix_decodes_alike_fed_whole_bytewise_and_split_anywhere() {
    let events = json_decode(MIX);
    let pb = encode(&events);
    let expected = oks(&events);
    assert_eq!(decode(&pb), expected);
    let bytewise = decode_chunks(&mut PbDecoder::new(Limits::default()), pb.chunks(1));
    assert_eq!(bytewise, expected);
    // Every split point of the first 60 events (spot, config, presences, hits; first uses
    // and references of item codes).
    let head = &events[..60];
    let pb = encode(head);
    let expected = oks(head);
    for (cut, halves) in every_split(&pb) {
        let got = decode_chunks(&mut PbDecoder::new(Limits::default()), halves);
        assert_eq!(got, expected, "split at {cut}");
    }
}

#[test]
fn generated_events_go_json_to_pb_to_json_unchanged() {
    property(
        128,
        || testing::events(30),
        |events| {
            let json = json_compact(&events);
            let from_json = json_decode(&json);
            let back: Vec<Event> = decode(&encode(&from_json))
                .into_iter()
                .map(|r| r.expect("our own stream decodes"))
                .collect();
            prop_assert_eq!(&back, &from_json);
            prop_assert_eq!(json_compact(&back), json);
            Ok(())
        },
    );
}
