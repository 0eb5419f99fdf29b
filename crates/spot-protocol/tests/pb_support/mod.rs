//! Helpers shared by the protobuf integration tests.
#![allow(dead_code)]

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use spot_protocol::pb::{PbDecoder, PbEncoder};
use spot_protocol::{testing, DecodeError, Event, Limits};

pub type Results = Vec<Result<Event, DecodeError>>;

/// Runs a property over `cases` values of the strategy `make()` builds.
pub fn property<S, F>(cases: u32, make: impl FnOnce() -> S + Send + 'static, test: F)
where
    S: Strategy,
    F: Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&make(), test) {
        panic!("{e}");
    }
}

/// A fixed stream of `n` model events (proptest's deterministic runner).
pub fn fixed_events(n: usize) -> Vec<Event> {
    let mut runner = TestRunner::deterministic();
    proptest::collection::vec(testing::event(), n)
        .new_tree(&mut runner)
        .expect("strategy")
        .current()
}

pub fn encode(events: &[Event]) -> Vec<u8> {
    let mut enc = PbEncoder::new();
    let mut out = Vec::new();
    for e in events {
        enc.encode(e, &mut out);
    }
    out
}

/// Feeds `chunks` one after the other, draining after each, then finishes and drains.
pub fn decode_chunks<'a>(
    decoder: &mut PbDecoder,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Results {
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk);
        while let Some(r) = decoder.next_event() {
            out.push(r);
        }
    }
    decoder.finish();
    while let Some(r) = decoder.next_event() {
        out.push(r);
    }
    out
}

pub fn decode(bytes: &[u8]) -> Results {
    decode_chunks(&mut PbDecoder::new(Limits::default()), [bytes])
}

pub fn oks(events: &[Event]) -> Results {
    events.iter().cloned().map(Ok).collect()
}
