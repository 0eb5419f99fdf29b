//! The protobuf stream as a receiver sees it: round trips, split-anywhere equivalence,
//! zero-length frames, malformed and oversize frames, garbage.

mod pb_support;

use pb_support::*;
use proptest::prelude::*;
use spot_protocol::pb::{PbDecoder, PbEncoder, STREAM_PREAMBLE};
use spot_protocol::testing;
use spot_protocol::{DecodeError, DecodeErrorKind, Event, Limits};
use test_support::split::{every_split, split_at};

const FIXED: usize = 150;

#[test]
fn every_split_point_and_one_byte_feeds_give_the_same_events() {
    let events = fixed_events(FIXED);
    let bytes = encode(&events);
    let expected = oks(&events);
    assert_eq!(decode(&bytes), expected);
    let got = decode_chunks(&mut PbDecoder::new(Limits::default()), bytes.chunks(1));
    assert_eq!(got, expected);
    // Every split point of a shorter stream (each split decodes the whole stream again).
    let events = &events[..25];
    let bytes = encode(events);
    let expected = oks(events);
    for (cut, halves) in every_split(&bytes) {
        let got = decode_chunks(&mut PbDecoder::new(Limits::default()), halves);
        assert_eq!(got, expected, "split at {cut}");
    }
}

#[test]
fn a_raw_tcp_stream_starts_with_one_zero_byte_that_decodes_to_nothing() {
    let events = fixed_events(FIXED);
    let mut enc = PbEncoder::with_stream_preamble();
    let mut out = Vec::new();
    for e in &events {
        enc.encode(e, &mut out);
    }
    assert_eq!(&out[..1], STREAM_PREAMBLE);
    assert_eq!(&out[1..], encode(&events));
    assert_eq!(decode(&out), oks(&events));
}

#[test]
fn zero_length_frames_anywhere_between_frames_are_no_ops() {
    let events = fixed_events(FIXED);
    let mut enc = PbEncoder::new();
    let mut out = vec![0, 0];
    for e in &events {
        enc.encode(e, &mut out);
        out.push(0);
    }
    assert_eq!(decode(&out), oks(&events));
}

/// A frame of the given body: varint length, then the body.
fn frame(body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut f = vec![body.len() as u8];
    f.extend_from_slice(body);
    f
}

#[test]
fn a_malformed_frame_is_one_error_at_its_offset_and_the_next_frames_decode() {
    let events = fixed_events(FIXED);
    let (before, after) = events.split_at(20);
    let mut bytes = Vec::new();
    let mut enc = PbEncoder::new();
    for e in before {
        enc.encode(e, &mut bytes);
    }
    let bad_at = bytes.len() as u64;
    // Envelope field 5 (presence) whose body claims 9 bytes but has 2.
    bytes.extend_from_slice(&frame(&[0x2a, 0x09, 0x08, 0x01]));
    for e in after {
        enc.encode(e, &mut bytes);
    }
    let got = decode(&bytes);
    assert_eq!(got.len(), events.len() + 1);
    assert_eq!(&got[..20], &oks(before)[..]);
    let err = got[20].as_ref().unwrap_err();
    assert_eq!(err.offset, bad_at);
    match &err.kind {
        DecodeErrorKind::Protobuf(reason) => {
            let reason = reason.to_string();
            assert!(reason.contains("field 5"), "{reason}");
            assert!(reason.contains("runs past the end"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(&got[21..], &oks(after)[..]);
}

#[test]
fn errors_from_the_message_layer_name_the_field() {
    // A presence whose proximity (field 8) is 9: no such proximity.
    let got = decode(&frame(&[0x2a, 0x02, 0x40, 0x09]));
    let err = got[0].as_ref().unwrap_err();
    assert_eq!(err.offset, 0);
    assert!(
        err.to_string()
            .contains("Presence.proximity: unknown value 9"),
        "{err}"
    );
    // A hit whose signal_strength (field 10, sint64) has wire type 2: prost names it.
    let got = decode(&frame(&[0x32, 0x03, 0x52, 0x01, 0x00]));
    let err = got[0].as_ref().unwrap_err();
    assert!(err.to_string().contains("signal_strength"), "{err}");
}

#[test]
fn an_oversize_frame_is_skipped_as_it_streams_by_and_the_next_event_decodes() {
    let limits = Limits {
        max_message_bytes: 1024,
        ..Limits::default()
    };
    let events = fixed_events(FIXED);
    let mut dec = PbDecoder::new(limits);
    let mut head = Vec::new();
    // A frame of 100 MB: its length prefix, then its bytes fed in 64 KiB pieces.
    const HUGE: usize = 100 << 20;
    let mut n = HUGE;
    while n >= 0x80 {
        head.push(n as u8 | 0x80);
        n >>= 7;
    }
    head.push(n as u8);
    let chunk = vec![0x55u8; 64 << 10];
    let tail = encode(&events[..3]);
    let mut chunks: Vec<&[u8]> = vec![&head];
    chunks.extend(std::iter::repeat_n(&chunk[..], HUGE / chunk.len()));
    chunks.push(&tail);
    let got = decode_chunks(&mut dec, chunks);
    assert_eq!(
        got[0],
        Err(DecodeError {
            offset: 0,
            kind: DecodeErrorKind::TooLarge { limit: 1024 }
        })
    );
    assert_eq!(&got[1..], &oks(&events[..3])[..]);
}

#[test]
fn a_length_varint_over_10_bytes_is_one_error_then_decoding_goes_on() {
    let events = fixed_events(FIXED);
    let mut bytes = vec![0x80; 14];
    bytes.push(0x01);
    bytes.extend_from_slice(&encode(&events[..5]));
    let got = decode(&bytes);
    assert_eq!(got.len(), 6);
    let err = got[0].as_ref().unwrap_err();
    assert_eq!(err.offset, 0);
    assert!(err.to_string().contains("longer than 10 bytes"), "{err}");
    assert_eq!(&got[1..], &oks(&events[..5])[..]);
}

#[test]
fn a_stream_cut_inside_a_frame_ends_with_one_truncated_error() {
    let events = fixed_events(FIXED);
    let bytes = encode(&events[..4]);
    let three = encode(&events[..3]).len();
    let got = decode(&bytes[..bytes.len() - 1]);
    assert_eq!(&got[..3], &oks(&events[..3])[..]);
    assert_eq!(
        got[3],
        Err(DecodeError {
            offset: three as u64,
            kind: DecodeErrorKind::Truncated {
                bytes: bytes.len() - 1 - three
            }
        })
    );
    assert_eq!(got.len(), 4);
}

#[test]
fn a_receiver_with_a_smaller_item_table_reports_the_slot_and_goes_on() {
    let codes: Vec<String> = (0..6).map(|i| format!("{i:024x}")).collect();
    let hit = |code: &str| {
        Event::new(spot_protocol::EventKind::Hit(
            spot_protocol::Action::Create,
            spot_protocol::Hit {
                item_code: Some(code.into()),
                ..Default::default()
            },
        ))
    };
    let events: Vec<Event> = codes.iter().chain(&codes).map(|c| hit(c)).collect();
    let bytes = encode(&events);
    let got = decode_chunks(
        &mut PbDecoder::with_item_table_slots(Limits::default(), 4),
        [&bytes[..]],
    );
    assert_eq!(got.len(), 12);
    // Slots 0..3 fit; the codes sent for slots 4 and 5 are errors, once and when referred to.
    for (i, r) in got.iter().enumerate() {
        if i % 6 < 4 {
            assert_eq!(r.as_ref().ok(), Some(&events[i]), "event {i}");
        } else {
            let err = r.as_ref().unwrap_err().to_string();
            let expected = if i < 6 { "beyond" } else { "holds no code" };
            assert!(err.contains(expected), "event {i}: {err}");
        }
    }
}

#[test]
fn a_small_encoder_table_evicts_the_oldest_code_and_still_round_trips() {
    let events = fixed_events(FIXED);
    let mut enc = PbEncoder::with_item_table_slots(3);
    let mut bytes = Vec::new();
    for e in &events {
        enc.encode(e, &mut bytes);
    }
    assert_eq!(decode(&bytes), oks(&events));
    let mut enc = PbEncoder::with_item_table_slots(0);
    let mut bytes = Vec::new();
    for e in &events {
        enc.encode(e, &mut bytes);
    }
    assert_eq!(decode(&bytes), oks(&events));
}

#[test]
fn events_round_trip_exactly() {
    property(
        128,
        || testing::events(40),
        |events| {
            prop_assert_eq!(decode(&encode(&events)), oks(&events));
            Ok(())
        },
    );
}

#[test]
fn any_split_gives_the_same_results() {
    property(
        128,
        || {
            (
                testing::events(30),
                proptest::collection::vec(any::<usize>(), 0..12),
            )
        },
        |(events, cuts)| {
            let bytes = encode(&events);
            let got = decode_chunks(
                &mut PbDecoder::new(Limits::default()),
                split_at(&bytes, &cuts),
            );
            prop_assert_eq!(got, oks(&events));
            Ok(())
        },
    );
}

#[test]
fn random_bytes_never_panic_and_split_anywhere_alike() {
    property(
        1024,
        || {
            (
                proptest::collection::vec(any::<u8>(), 0..400),
                proptest::collection::vec(any::<usize>(), 0..8),
            )
        },
        |(garbage, cuts)| {
            let whole = decode(&garbage);
            let split = decode_chunks(
                &mut PbDecoder::new(Limits::default()),
                split_at(&garbage, &cuts),
            );
            prop_assert_eq!(whole, split);
            Ok(())
        },
    );
}

#[test]
fn a_garbage_frame_costs_one_result_and_keeps_the_events_around_it() {
    property(
        256,
        || {
            (
                testing::events(20),
                any::<prop::sample::Index>(),
                proptest::collection::vec(any::<u8>(), 1..100),
            )
        },
        |(events, at, garbage)| {
            let at = at.index(events.len() + 1);
            let mut enc = PbEncoder::new();
            let mut bytes = Vec::new();
            for e in &events[..at] {
                enc.encode(e, &mut bytes);
            }
            bytes.extend_from_slice(&frame(&garbage));
            for e in &events[at..] {
                enc.encode(e, &mut bytes);
            }
            let got = decode(&bytes);
            prop_assert_eq!(got.len(), events.len() + 1);
            prop_assert_eq!(&got[..at], &oks(&events[..at])[..]);
            // A garbage frame that happens to be valid may shift later timestamps or re-fill
            // a slot (it is a frame like any other), but every later frame still decodes,
            // with its own seq and type.
            for (r, e) in got[at + 1..].iter().zip(&events[at..]) {
                let r = r.as_ref().expect("a frame after the garbage");
                prop_assert_eq!(r.seq, e.seq);
                prop_assert_eq!(r.resource_type(), e.resource_type());
                prop_assert_eq!(r.action(), e.action());
            }
            Ok(())
        },
    );
}

#[test]
fn an_event_type_from_a_newer_sender_is_one_error_and_keeps_the_timestamps_in_step() {
    let hit = |ms: i64| {
        Event::new(spot_protocol::EventKind::Hit(
            spot_protocol::Action::Create,
            spot_protocol::Hit {
                time: Some(spot_protocol::Timestamp(ms)),
                antenna: Some(1),
                ..Default::default()
            },
        ))
    };
    let mut enc = PbEncoder::new();
    let mut first = Vec::new();
    enc.encode(&hit(1_000), &mut first);
    // A frame of a future event type (envelope field 20) with its field 9: built from a hit
    // frame by giving its event message the key of field 20.
    let mut future_hit = Vec::new();
    enc.encode(&hit(1_500), &mut future_hit);
    assert_eq!(future_hit[1], 0x32, "envelope field 6, wire type 2");
    let mut future = vec![future_hit[0] + 1, 0xa2, 0x01];
    future.extend_from_slice(&future_hit[2..]);
    let mut last = Vec::new();
    enc.encode(&hit(1_700), &mut last);

    let got = decode(&[first, future, last].concat());
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], Ok(hit(1_000)));
    let err = got[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("no event message this version knows"), "{err}");
    // The unknown message's field 9 (+500) was applied, so +200 lands on 1 700.
    assert_eq!(got[2], Ok(hit(1_700)));
}
