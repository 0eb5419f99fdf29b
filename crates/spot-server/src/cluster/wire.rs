//! What travels in the input log `SPOT_IN` (sans-IO: payloads and subjects only).
//!
//! A message on `in.<P>.<serial>` is a *group* of journal entries of one spot, one line
//! each, in the journal's line format ([`crate::store::journal`]): the stream's begin, the
//! events of one read, the stream's end, each with the edge's time. A message on
//! `in.<P>.~tick` is a tick of partition P: the owner's time, in decimal milliseconds,
//! for the offline sweep (time comes from the log, so a replay sweeps at the same points).
//! `~` cannot occur in a serial ([`crate::ingest::valid_serial`]).

use crate::domain::JournalEntry;
use crate::store::journal::{parse_journal_line, write_journal_line};

/// The input stream.
pub const IN_STREAM: &str = "SPOT_IN";
/// The derived events stream.
pub const OUT_STREAM: &str = "SPOT_OUT";
/// The last part of a tick's subject.
const TICK: &str = "~tick";

/// The partition of a serial number among `partitions` (FNV-1a: stable across builds and
/// machines, unlike the standard library's hasher).
pub fn partition_of(serial: &str, partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in serial.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions.max(1)
}

/// The subject of a group of `serial`'s entries.
pub fn group_subject(serial: &str, partitions: u32) -> String {
    format!("in.{}.{serial}", partition_of(serial, partitions))
}

/// The subject of partition `p`'s ticks.
pub fn tick_subject(p: u32) -> String {
    format!("in.{p}.{TICK}")
}

/// The subjects partition `p`'s owner consumes.
pub fn partition_filter(p: u32) -> String {
    format!("in.{p}.>")
}

/// The subject of partition `p`'s derived events.
pub fn out_subject(p: u32) -> String {
    format!("out.{p}")
}

/// One message of the input log, read back.
#[derive(Debug, PartialEq)]
pub enum InMessage {
    /// A group of one spot's entries.
    Group(Vec<JournalEntry>),
    /// A tick at this time (ms).
    Tick(i64),
}

/// Why a message of the input log cannot be read (it is skipped and logged: it was
/// written by something that is not an edge of this version).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    /// A line that is not a journal entry.
    #[error("line {line} is not a journal entry")]
    Line {
        /// 1-based line number.
        line: usize,
    },
    /// Not UTF-8.
    #[error("the payload is not UTF-8")]
    Utf8,
    /// A tick whose time is not a number.
    #[error("a tick whose time is not a number")]
    Tick,
}

/// Appends `entry` to a group's payload.
pub fn push_entry(payload: &mut String, entry: &JournalEntry) {
    write_journal_line(payload, entry);
}

/// A tick's payload.
pub fn tick_payload(time: i64) -> String {
    time.to_string()
}

/// Reads a message of subject `subject`.
pub fn read_message(subject: &str, payload: &[u8]) -> Result<InMessage, WireError> {
    let text = std::str::from_utf8(payload).map_err(|_| WireError::Utf8)?;
    if subject.ends_with(TICK) {
        return text
            .trim()
            .parse()
            .map(InMessage::Tick)
            .map_err(|_| WireError::Tick);
    }
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        entries.push(parse_journal_line(line).ok_or(WireError::Line { line: i + 1 })?);
    }
    Ok(InMessage::Group(entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UpstreamRow;
    use crate::ids::Id;

    #[test]
    fn a_group_round_trips_begin_events_and_end() {
        let entries = vec![
            JournalEntry::Begin {
                serial: "7".into(),
                version: Some("1.2".into()),
                time: 10,
            },
            JournalEntry::Event {
                row: UpstreamRow {
                    serial: "7".into(),
                    spot_id: Id::default(),
                    seq: Some(3),
                    time_received: 11,
                    event_json: r#"{"seq":3}"#.into(),
                },
                duplicate: false,
            },
            JournalEntry::End {
                serial: "7".into(),
                time: 12,
            },
        ];
        let mut payload = String::new();
        for e in &entries {
            push_entry(&mut payload, e);
        }
        let read = read_message(&group_subject("7", 4), payload.as_bytes()).unwrap();
        assert_eq!(read, InMessage::Group(entries));
    }

    #[test]
    fn a_tick_is_read_by_its_subject_and_bad_payloads_are_named() {
        assert_eq!(
            read_message(&tick_subject(2), b"1700000000000").unwrap(),
            InMessage::Tick(1_700_000_000_000)
        );
        assert_eq!(read_message(&tick_subject(2), b"x"), Err(WireError::Tick));
        assert_eq!(
            read_message("in.0.7", b"7\t+\t1\t\nnot a line"),
            Err(WireError::Line { line: 2 })
        );
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        assert_eq!(partition_of("anything", 1), 0);
        // Fixed values: a change of the hash would move every spot to another partition.
        assert_eq!(partition_of("7", 16), 6);
        assert_eq!(partition_of("spot-0042", 16), 10);
        let counts = (0..1000).fold([0u32; 4], |mut c, i| {
            c[partition_of(&format!("{i:06}"), 4) as usize] += 1;
            c
        });
        assert!(counts.iter().all(|&n| n > 150), "{counts:?}");
    }
}
