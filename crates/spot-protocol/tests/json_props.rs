//! Property tests of the JSON codec over random event streams (strategies in
//! `spot_protocol::testing`): split-anywhere equivalence, encode → decode round trips,
//! garbage between events, and the offset of a malformed message.

mod support;

use proptest::collection::vec;
use proptest::prelude::*;
use spot_protocol::json::JsonEncoder;
use spot_protocol::testing;
use spot_protocol::{DecodeErrorKind, Event, Limits};
use support::*;
use test_support::split::split_at;

/// Encodes `events`, each compact or pretty as `pretty[i]` says (cycled).
fn encode_stream(events: &[Event], pretty: &[bool]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let mut encoder = if pretty.get(i % pretty.len().max(1)) == Some(&true) {
            JsonEncoder::pretty()
        } else {
            JsonEncoder::new()
        };
        encoder.encode(event, &mut out);
    }
    out
}

fn oks(results: Vec<Result<Event, spot_protocol::DecodeError>>) -> Vec<Event> {
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("unexpected error: {e}")))
        .collect()
}

/// Turns fractions in [0, 1) into sorted cut offsets of a `len`-byte stream.
fn cuts(len: usize, fractions: &[f64]) -> Vec<usize> {
    let mut cuts: Vec<usize> = fractions
        .iter()
        .map(|f| (f * len as f64) as usize)
        .collect();
    cuts.sort_unstable();
    cuts
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    }
}

#[test]
fn any_split_of_a_stream_decodes_to_the_same_events() {
    proptest!(config(), |(events in testing::events(12), pretty in vec(any::<bool>(), 1..4), fractions in vec(0.0..1.0f64, 0..40))| {
        let bytes = encode_stream(&events, &pretty);
        let whole = oks(decode_whole(&bytes));
        prop_assert_eq!(&whole, &events);
        prop_assert_eq!(oks(decode_cut(&bytes, &cuts(bytes.len(), &fractions))), events);
    });
}

/// The depth limit is checked on the decoded event when the message was framed at its blank
/// line, and by the structural scan otherwise: both must agree, however the stream is split.
#[test]
fn a_tight_depth_limit_gives_the_same_results_whole_split_and_bytewise() {
    proptest!(config(), |(events in testing::events(8), pretty in vec(any::<bool>(), 1..4), fractions in vec(0.0..1.0f64, 0..40), max_depth in 2usize..6)| {
        let bytes = encode_stream(&events, &pretty);
        let limits = Limits { max_depth, ..Limits::default() };
        let whole = decode_pieces_with(limits, [&bytes[..]]);
        prop_assert_eq!(whole.len(), events.len());
        for (got, event) in whole.iter().zip(&events) {
            match got {
                Ok(decoded) => prop_assert_eq!(decoded, event),
                Err(e) => prop_assert_eq!(&e.kind, &DecodeErrorKind::TooDeep { limit: max_depth }),
            }
        }
        let split = decode_pieces_with(limits, split_at(&bytes, &cuts(bytes.len(), &fractions)));
        prop_assert_eq!(&split, &whole);
        prop_assert_eq!(&decode_pieces_with(limits, bytes.chunks(1)), &whole);
    });
}

#[test]
fn compact_and_pretty_round_trip_even_fed_bytewise() {
    proptest!(config(), |(event in testing::event())| {
        for mut encoder in [JsonEncoder::new(), JsonEncoder::pretty()] {
            let mut bytes = Vec::new();
            encoder.encode(&event, &mut bytes);
            prop_assert!(bytes.ends_with(b"\n\n"));
            let body = &bytes[..bytes.len() - 2];
            prop_assert!(!body.windows(2).any(|w| w == b"\n\n"), "no blank line inside");
            prop_assert_eq!(oks(decode_bytewise(&bytes)), vec![event.clone()]);
        }
        let mut compact = Vec::new();
        JsonEncoder::new().encode(&event, &mut compact);
        prop_assert!(!compact[..compact.len() - 2].contains(&b'\n'), "compact is one line");
    });
}

#[test]
fn garbage_between_events_never_loses_the_events_around_it() {
    proptest!(config(), |(
        items in vec((testing::event(), proptest::option::of(vec(any::<u8>(), 0..40))), 0..10),
        fractions in vec(0.0..1.0f64, 0..10),
    )| {
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (event, garbage) in &items {
            JsonEncoder::new().encode(event, &mut bytes);
            expected.push(event.clone());
            if let Some(garbage) = garbage {
                bytes.extend_from_slice(garbage);
                bytes.extend_from_slice(b"\n\n");
            }
        }
        let results = decode_cut(&bytes, &cuts(bytes.len(), &fractions));
        prop_assert!(results == decode_whole(&bytes), "split-independent");
        // Every valid event comes out, in order (garbage may decode to extra events).
        let mut wanted = expected.iter().peekable();
        for event in results.iter().flatten() {
            if wanted.peek() == Some(&event) {
                wanted.next();
            }
        }
        prop_assert!(wanted.peek().is_none(), "lost {:?}", wanted.peek());
    });
}

#[test]
fn a_malformed_message_is_one_error_at_its_offset() {
    proptest!(config(), |(before in testing::events(4), after in testing::events(4), bad in prop_oneof![ Just(&b"[1,2,3]"[..]), Just(&b"[\"spot\",\"create\",{\"a\":}]"[..]), Just(&b"[\"spot\",\"create\",{\"a\":1"[..]), Just(&b"[\"spot\",\"create\",\"x\"]"[..]), Just(&b"{\"spot_id\":201}"[..]), Just(&b"[\"unterminated"[..]), Just(&b"\xff\xfe binary"[..]), Just(&b"[\"a\",\"b\",{}] trailing"[..]), ], fractions in vec(0.0..1.0f64, 0..10))| {
        let mut bytes = encode_stream(&before, &[false, true]);
        let offset = bytes.len() as u64;
        bytes.extend_from_slice(bad);
        bytes.extend_from_slice(b"\n\n");
        bytes.extend_from_slice(&encode_stream(&after, &[true, false]));
        let results = decode_cut(&bytes, &cuts(bytes.len(), &fractions));
        let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        prop_assert_eq!(errors.len(), 1, "{:?}", errors);
        // A trailing-garbage message is a valid event followed by garbage.
        let error_offset = if bad.starts_with(b"[\"a\"") {
            offset + 13
        } else {
            offset
        };
        prop_assert_eq!(errors[0].offset, error_offset);
        let events: Vec<Event> = results.into_iter().flatten().collect();
        let mut expected = before.clone();
        if bad.starts_with(b"[\"a\"") {
            expected.push(oks(decode_whole(b"[\"a\",\"b\",{}]")).remove(0));
        }
        expected.extend(after);
        prop_assert_eq!(events, expected);
    });
}
