//! Spot ingest: the one stream session every transport shares (decode, the journal text of
//! each event, malformed-event accounting), and the transports that only move bytes:
//! [`http`] (streaming POSTs), [`tcp`] (raw TCP streams) and [`pull`] (dialling a spot's
//! telnet service).

pub mod http;
pub mod pull;
pub mod tcp;

use std::sync::atomic::Ordering;

use spot_protocol::{Decoder, Event, EventKind, Limits};

use crate::access::{AdmissionRefusal, Admitted};
use crate::clock::now_ms;
use crate::context::Context;
use crate::domain::encode_json;

/// Whether a serial number is acceptable in a path (and as a key).
pub fn valid_serial(serial: &str) -> bool {
    !serial.is_empty()
        && serial.len() <= 64
        && serial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Spot admission ([`crate::access::admission`]) of a stream of `serial` presenting
/// `secret`, before anything of it is applied; a spot the enrolment window admits is
/// enrolled (stored) first.
pub async fn admit(
    shared: &Context,
    serial: &str,
    secret: Option<&str>,
) -> Result<(), AdmissionRefusal> {
    let now = now_ms();
    if let Admitted::Enroll { secret_hash } = shared.access.admit(serial, secret, now)? {
        let (access, serial) = (shared.access.clone(), serial.to_string());
        let enrol = move || access.enrol_by_window(&serial, secret_hash, now);
        if let Err(e) = tokio::task::spawn_blocking(enrol).await {
            tracing::warn!("enrolment by the window failed: {e}");
        }
    }
    Ok(())
}

/// The JSON an event just returned by `decoder` is journaled with (see
/// [`crate::domain::JournalEntry`]): the message's text as received, which decodes to the
/// same event again, so that ingest encodes nothing per event; its newlines and carriage
/// returns (white space between tokens: a valid message has none inside a string) become
/// spaces, as the journal is split into lines. The encoding ([`encode_json`]) instead for
/// protobuf (its frames depend on the frames before them), for a text larger than the
/// replay's decoder takes ([`Limits::default`]), and for the spot status and config events,
/// whose object the domain keeps as a document (normalised, e.g. `"30"` → `30`).
pub fn journal_json(decoder: &Decoder, event: &Event) -> String {
    match decoder.last_json() {
        Some(text)
            if text.len() <= Limits::default().max_message_bytes
                && !matches!(event.kind, EventKind::Spot(..) | EventKind::Config(..)) =>
        {
            if text.bytes().any(|b| b == b'\n' || b == b'\r') {
                text.replace(['\n', '\r'], " ")
            } else {
                text.to_string()
            }
        }
        _ => encode_json(event),
    }
}

/// The events `decoder` has ready, each with its journal text (HTTP and raw TCP ingest);
/// malformed ones (not decoded, or malformed for the domain: [`crate::domain::malformed`])
/// are logged, counted and skipped.
pub fn decoded_events(
    decoder: &mut Decoder,
    serial: &str,
    shared: &Context,
    malformed: &mut u64,
) -> Vec<(Event, String)> {
    let mut events = Vec::new();
    while let Some(next) = decoder.next_event() {
        match next {
            Ok(event) => match crate::domain::malformed(&event) {
                None => {
                    let json = journal_json(decoder, &event);
                    events.push((event, json));
                    continue;
                }
                Some(why) => tracing::warn!(spot = %serial, "malformed event skipped: {why}"),
            },
            Err(e) => {
                tracing::warn!(spot = %serial, offset = e.offset, "malformed event skipped: {}", e.kind);
            }
        }
        *malformed += 1;
        shared
            .metrics
            .events_malformed
            .fetch_add(1, Ordering::Relaxed);
    }
    shared
        .metrics
        .events_received
        .fetch_add(events.len() as u64, Ordering::Relaxed);
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use spot_protocol::Encoding;

    #[test]
    fn events_journaled_as_received_replay_after_a_restart_to_the_same_state() {
        use crate::domain::{Domain, DomainConfig, JournalEntry};
        use crate::store::{Durability, SqliteStore, Store};
        const T0: i64 = 1_764_000_000_000;
        // Compact, pretty with CRLF, an escaped newline and a `]` in a string, lenient
        // values (`"30"`, `"true"`) that the encoding would normalise, a spot status and a
        // config (journaled as encoded), an event type the model does not know.
        let stream = concat!(
            r#"["spot","create",{"spot_id":"7","seq_epoch":1,"version":"1.0","rssi":"30"}]"#,
            "\n\n",
            r#"["config","create",{"seq":1,"rfid_power_dbm":"30","send_hits":"true"}]"#,
            "\r\n\r\n",
            "[\"presence\",\"create\",{\r\n  \"seq\": 2,\r\n  \"item_code\": \"a\\n]\",\r\n",
            "  \"proximity\": \"near\",\r\n  \"time_last\": \"2026-11-24T22:53:11.466+01:00\"\r\n}]",
            "\n\n",
            r#"[ "hit" , "create" , { "seq" : "3" , "item_code" : "b" , "rssi" : "30" , "x" : [1, {"y": true}] } ]"#,
            "\n\n",
            r#"["presence","update",{"seq":4,"item_code":"a\n]","proximity":"far","extra":"true"}]"#,
            "\n\n",
            r#"["gadget","create",{"seq":5,"tab":"a\tb"}]"#,
            "\n\n",
        );
        let dir = tempfile::tempdir().unwrap();
        let mut live = Domain::new(DomainConfig::default());
        let mut journaled = Vec::new();
        {
            let mut store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
            let mut decoder = Decoder::new(Encoding::Json, Limits::default());
            live.begin_stream("7", None, T0);
            for (i, chunk) in stream.as_bytes().chunks(5).enumerate() {
                decoder.feed(chunk);
                while let Some(next) = decoder.next_event() {
                    let event = next.expect("every message is an event");
                    let json = journal_json(&decoder, &event);
                    assert!(!json.contains(['\n', '\r']), "one line: {json:?}");
                    journaled.push(json.clone());
                    live.apply_encoded(&"7".into(), &event, json, T0 + i as i64);
                }
            }
            live.end_stream("7", T0 + 10_000, false);
            let mut changes = live.take_changes(false);
            assert!(
                changes.upserts.is_empty(),
                "no flush: the journal is the truth"
            );
            store.commit(&mut changes).unwrap();
        }
        assert_eq!(journaled.len(), 6);
        assert!(
            journaled[0].contains(r#""spot_id":7,"#),
            "encoded: {}",
            journaled[0]
        );
        assert!(
            journaled[1].contains(r#""rfid_power_dbm":30,"send_hits":true"#),
            "encoded: {}",
            journaled[1]
        );
        assert!(
            journaled[2].starts_with("[\"presence\",\"create\",{    \"seq\": 2,"),
            "as received: {}",
            journaled[2]
        );
        assert!(
            journaled[3].starts_with(r#"[ "hit" , "create" , { "seq" : "3""#),
            "as received: {}",
            journaled[3]
        );
        assert!(
            journaled[5].contains(r#""tab":"a\tb""#),
            "as received: {}",
            journaled[5]
        );

        let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
        let (journal, _) = store.unflushed_journal(false).unwrap();
        let texts: Vec<&str> = journal
            .iter()
            .filter_map(|e| match e {
                JournalEntry::Event { row, .. } => Some(row.event_json.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, journaled, "the journal reads back line by line");
        let mut rebuilt = Domain::new(DomainConfig::default());
        rebuilt
            .load_events(store.load_events(0, usize::MAX).unwrap())
            .unwrap();
        rebuilt.replay(journal).unwrap();
        for c in ["spots", "locations", "items", "presences", "events"] {
            let original = live.collection(c);
            assert!(
                original.as_ref().is_some_and(|docs| !docs.is_empty()),
                "{c}"
            );
            assert_eq!(rebuilt.collection(c), original, "{c}");
        }
        assert_eq!(
            live.acked_seq("7"),
            4,
            "an unknown event's `seq` is its own key"
        );
        assert_eq!(rebuilt.acked_seq("7"), 4);
    }

    #[test]
    fn serials_are_bounded_and_plain() {
        assert!(valid_serial("203"));
        assert!(valid_serial("spot-7_a"));
        assert!(!valid_serial(""));
        assert!(!valid_serial("a/b"));
        assert!(!valid_serial(&"9".repeat(65)));
    }
}
