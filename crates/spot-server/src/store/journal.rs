//! The journal's line format (one line per [`JournalEntry`] in a journal batch), its one
//! writer and its one reader:
//!
//! - an upstream event: `serial TAB seq TAB time_received TAB json` (seq empty when absent;
//!   json the text as received, newlines as spaces, or its encoding, see
//!   `crate::ingest::journal_json`);
//! - a replay the spot sent again: `serial TAB !seq TAB time TAB json`;
//! - a stream's begin: `serial TAB + TAB time TAB version` (a JSON string or empty);
//! - a stream's end: `serial TAB - TAB time TAB`.

use crate::domain::{JournalEntry, UpstreamRow};
use crate::ids::Id;

/// Appends one journal line (see the module docs); returns the entry's time.
pub fn write_journal_line(lines: &mut String, entry: &JournalEntry) -> i64 {
    let mut int = itoa::Buffer::new();
    match entry {
        JournalEntry::Event { row, duplicate } => {
            lines.push_str(&row.serial);
            lines.push('\t');
            if *duplicate {
                lines.push('!');
            }
            if let Some(seq) = row.seq {
                lines.push_str(int.format(seq));
            }
            lines.push('\t');
            lines.push_str(int.format(row.time_received));
            lines.push('\t');
            lines.push_str(&row.event_json);
            lines.push('\n');
            row.time_received
        }
        JournalEntry::Begin {
            serial,
            version,
            time,
        } => {
            let version = version
                .as_ref()
                .map(|v| serde_json::Value::from(v.as_str()).to_string())
                .unwrap_or_default();
            lines.push_str(serial);
            lines.push_str("\t+\t");
            lines.push_str(int.format(*time));
            lines.push('\t');
            lines.push_str(&version);
            lines.push('\n');
            *time
        }
        JournalEntry::End { serial, time } => {
            lines.push_str(serial);
            lines.push_str("\t-\t");
            lines.push_str(int.format(*time));
            lines.push_str("\t\n");
            *time
        }
    }
}

/// Reads one journal line back; `None` when it is not one.
pub fn parse_journal_line(line: &str) -> Option<JournalEntry> {
    let mut fields = line.splitn(4, '\t');
    let (serial, seq, time, rest) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let serial = serial.to_string();
    let time: i64 = time.parse().ok()?;
    match seq {
        "+" => Some(JournalEntry::Begin {
            serial,
            version: if rest.is_empty() {
                None
            } else {
                Some(serde_json::from_str(rest).ok()?)
            },
            time,
        }),
        "-" => Some(JournalEntry::End { serial, time }),
        _ => {
            let (duplicate, seq) = match seq.strip_prefix('!') {
                Some(s) => (true, s),
                None => (false, seq),
            };
            let seq = if seq.is_empty() {
                None
            } else {
                Some(seq.parse().ok()?)
            };
            Some(JournalEntry::Event {
                row: UpstreamRow {
                    serial: serial.into(),
                    // Not journaled: the raw events of a replay are not published again.
                    spot_id: Id::default(),
                    seq,
                    time_received: time,
                    event_json: rest.to_string(),
                },
                duplicate,
            })
        }
    }
}
