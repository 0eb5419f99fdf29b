//! Golden vectors for the JSON decoder: each `fixtures/<name>.expected.jsonl` holds the
//! expected result of decoding `fixtures/<name>.{http,txt,events}` (HTTP requests are
//! de-chunked first), one line per event in compact JSON or `!` + error. A new fixture is a
//! new pair of files. Run with `BLESS=1` to (re)write the expected files, then review them.
//!
//! Every fixture is decoded whole, one byte at a time, in chunks of several sizes and split
//! at every point (for big inputs: every point of the first `EVERY_SPLIT_MAX` bytes).

mod support;

use std::path::{Path, PathBuf};

use spot_protocol::{Action, EventKind, Proximity, Timestamp};
use support::*;
use test_support::http::dechunk;

const EVERY_SPLIT_MAX: usize = 6 * 1024;

struct Fixture {
    name: String,
    expected_path: PathBuf,
    input: Vec<u8>,
    /// Chunk boundaries of an HTTP capture, in body offsets.
    transport_cuts: Option<Vec<usize>>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(name: &str) -> Fixture {
    let dir = fixtures_dir();
    for ext in ["http", "txt", "events"] {
        let path = dir.join(format!("{name}.{ext}"));
        if let Ok(raw) = std::fs::read(&path) {
            let (input, transport_cuts) = if ext == "http" {
                let message = dechunk(&raw);
                (message.body, Some(message.boundaries))
            } else {
                (raw, None)
            };
            return Fixture {
                name: name.to_string(),
                expected_path: dir.join(format!("{name}.expected.jsonl")),
                input,
                transport_cuts,
            };
        }
    }
    panic!("no input file for fixture {name}");
}

fn all_fixtures() -> Vec<Fixture> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures folder")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".expected.jsonl")?.to_string())
        })
        .collect();
    names.sort();
    names.into_iter().map(|n| load(&n)).collect()
}

fn expected_lines(f: &Fixture) -> Vec<String> {
    let text = std::fs::read_to_string(&f.expected_path).expect("expected file");
    text.lines().map(str::to_string).collect()
}

#[test]
fn every_fixture_decodes_to_its_expected_lines_however_it_is_split() {
    let fixtures = all_fixtures();
    assert!(fixtures.len() >= 6, "fixtures found: {}", fixtures.len());
    let bless = std::env::var_os("BLESS").is_some();
    for f in &fixtures {
        let whole = decode_whole(&f.input);
        let lines = render_all(&whole);
        if bless {
            std::fs::write(&f.expected_path, lines.join("\n") + "\n").expect("write expected");
            continue;
        }
        assert_eq!(lines, expected_lines(f), "{}: decoded whole", f.name);
        assert!(
            decode_bytewise(&f.input) == whole,
            "{}: 1-byte feeds",
            f.name
        );
        for size in [2, 3, 7, 64, 1000, 4096] {
            assert!(
                decode_chunks_of(&f.input, size) == whole,
                "{}: chunks of {size}",
                f.name
            );
        }
        if let Some(cuts) = &f.transport_cuts {
            assert!(
                decode_cut(&f.input, cuts) == whole,
                "{}: HTTP chunks",
                f.name
            );
        }
        // Every split point; a big input is cut down to a prefix first (its own reference).
        let prefix = &f.input[..f.input.len().min(EVERY_SPLIT_MAX)];
        let reference = decode_whole(prefix);
        for cut in 0..=prefix.len() {
            assert!(
                decode_cut(prefix, &[cut]) == reference,
                "{}: split at byte {cut}",
                f.name
            );
        }
    }
}

fn events_of(name: &str) -> Vec<spot_protocol::Event> {
    decode_whole(&load(name).input)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

#[test]
fn telnet_capture_of_spot_201_is_12_events_with_drifted_types() {
    let events = events_of("vendor-telnet-spot201");
    assert_eq!(events.len(), 12);
    let EventKind::Spot(Action::Create, spot) = &events[0].kind else {
        panic!("{:?}", events[0])
    };
    assert_eq!(spot.spot_id.as_deref(), Some("201"));
    assert_eq!(spot.time, Some(Timestamp(0)));
    assert_eq!(spot.extra["input_1"], "false");
    let EventKind::Config(Action::Create, config) = &events[1].kind else {
        panic!()
    };
    assert_eq!(config.hostname.as_deref(), Some("spot201"));
    assert_eq!(config.extra["ip"], serde_json::Value::Null);
    let EventKind::Presence(Action::Create, p) = &events[3].kind else {
        panic!()
    };
    assert_eq!(p.time_started, Timestamp::parse("2014-02-24T08:31:46.290Z"));
    assert_eq!(p.proximity, Some(Proximity::Far));
    let EventKind::Hit(Action::Create, hit) = &events[11].kind else {
        panic!()
    };
    assert_eq!(hit.signal_strength, Some(-428));
    assert_eq!(hit.antenna, Some(3));
}

#[test]
fn http_capture_of_spot_203_is_3_events_even_split_inside_a_key() {
    let f = load("vendor-http-spot203");
    let cuts = f.transport_cuts.clone().expect("an HTTP capture");
    assert!(
        f.input[..cuts[1]].ends_with(b"\"bt_n"),
        "a chunk ends inside \"bt_near\""
    );
    let events: Vec<_> = decode_cut(&f.input, &cuts)
        .into_iter()
        .map(|r| r.expect("valid event"))
        .collect();
    assert_eq!(events.len(), 3);
    let EventKind::Spot(_, spot) = &events[0].kind else {
        panic!()
    };
    assert_eq!(spot.spot_id.as_deref(), Some("203"));
    assert_eq!(
        spot.rfid_swr.as_deref(),
        Some(&[6911, 7935, 839, 601, 5631, 5631, 544][..])
    );
    let EventKind::Config(_, config) = &events[1].kind else {
        panic!()
    };
    assert_eq!(config.extra["bt_near"], -650);
    assert_eq!(config.send_hits, Some(false));
    assert_eq!(config.extra["control_schema"]["links"]["ledfr"], "in2");
}

#[test]
fn realistic_mix_is_spot_config_and_5000_events() {
    let events = events_of("realistic-mix");
    assert_eq!(events.len(), 5002);
    assert!(matches!(events[0].kind, EventKind::Spot(Action::Create, _)));
    assert!(matches!(
        events[1].kind,
        EventKind::Config(Action::Create, _)
    ));
    let hits = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Hit(..)))
        .count();
    assert!((2500..3500).contains(&hits), "{hits} hits");
    assert!(events[2..]
        .iter()
        .all(|e| matches!(e.kind, EventKind::Hit(..) | EventKind::Presence(..))));
}
