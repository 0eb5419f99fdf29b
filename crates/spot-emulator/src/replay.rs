//! Replaying a recorded stream (`--replay FILE`, e.g. what `spot decode` printed or a raw
//! telnet capture) instead of the simulated population, with its original timing or
//! compressed to the event rate.
//!
//! Connection messages (`spot create`, `config create`) and telnet alive messages
//! (`spot update`) in the recording are skipped and counted: the spot makes its own on each
//! connection. A message that does not decode is counted and skipped. Recorded `seq` values
//! are dropped: the replaying spot numbers events itself.

use std::sync::Arc;

use spot_protocol::{Action, Decoder, Encoding, Event, EventKind, Limits};

/// A recorded stream, decoded.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// The events to replay, in order.
    pub events: Vec<Event>,
    /// Each event's time from the first event's, in ms (an event without a time takes the
    /// previous one's).
    pub offsets_ms: Vec<i64>,
    /// Connection and alive messages skipped.
    pub skipped: u64,
    /// Messages that did not decode.
    pub malformed: u64,
}

impl Recording {
    /// Decodes a JSON event stream.
    pub fn parse(bytes: &[u8]) -> Recording {
        let mut decoder = Decoder::new(Encoding::Json, Limits::default());
        decoder.feed(bytes);
        decoder.finish();
        let mut rec = Recording::default();
        let mut first = None;
        let mut last = 0;
        while let Some(item) = decoder.next_event() {
            let Ok(mut event) = item else {
                rec.malformed += 1;
                continue;
            };
            match event.kind {
                EventKind::Spot(..) | EventKind::Config(Action::Create, _) => {
                    rec.skipped += 1;
                    continue;
                }
                _ => {}
            }
            event.seq = None;
            if let Some(t) = event.timestamp() {
                let first = *first.get_or_insert(t.as_millis());
                last = t.as_millis() - first;
            }
            rec.events.push(event);
            rec.offsets_ms.push(last.max(0));
        }
        rec
    }
}

/// How a replay is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayTiming {
    /// As recorded: each event at its offset from the first.
    Original,
    /// At the spot's event rate (0: as fast as the connection takes them).
    Rate,
}

/// A replay in progress.
#[derive(Debug, Clone)]
pub struct Replay {
    recording: Arc<Recording>,
    next: usize,
    /// Pacing.
    pub timing: ReplayTiming,
}

impl Replay {
    /// Starts at the first event.
    pub fn new(recording: Arc<Recording>, timing: ReplayTiming) -> Self {
        Replay {
            recording,
            next: 0,
            timing,
        }
    }

    /// With original timing: how many events are due `elapsed_ms` after the start.
    pub fn due(&self, elapsed_ms: i64) -> u64 {
        let offsets = &self.recording.offsets_ms[self.next.min(self.recording.offsets_ms.len())..];
        offsets.iter().take_while(|&&o| o <= elapsed_ms).count() as u64
    }

    /// The next event, `None` when the recording is over.
    pub fn next_event(&mut self) -> Option<Event> {
        let e = self.recording.events.get(self.next).cloned();
        if e.is_some() {
            self.next += 1;
        }
        e
    }

    /// Every event replayed.
    pub fn is_over(&self) -> bool {
        self.next >= self.recording.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURE: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../spot-protocol/tests/fixtures/vendor-telnet-spot201.txt"
    ));

    #[test]
    fn telnet_capture_replays_tag_events_with_their_offsets() {
        let rec = Recording::parse(CAPTURE);
        // 12 messages: spot create, config create and 5 alive messages are skipped.
        assert_eq!(rec.skipped, 7);
        assert_eq!(rec.malformed, 0);
        assert_eq!(rec.events.len(), 5);
        assert!(rec.events.iter().all(|e| e.seq.is_none()));
        assert_eq!(rec.offsets_ms[0], 0);
        // Second presence: time_last 08:31:49.141 vs the first's 08:31:52.156.
        assert_eq!(rec.offsets_ms[1], 0, "an earlier time never goes below 0");
        let mut replay = Replay::new(Arc::new(rec), ReplayTiming::Original);
        assert!(replay.due(0) >= 2);
        let all = replay.due(i64::MAX);
        assert_eq!(all, 5);
        for _ in 0..all {
            assert!(replay.next_event().is_some());
        }
        assert!(replay.is_over());
        assert_eq!(replay.next_event(), None);
        assert_eq!(replay.due(i64::MAX), 0);
    }
}
