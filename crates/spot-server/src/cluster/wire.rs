//! What travels in the input log `SPOT_IN` (sans-IO: payloads and subjects only).
//!
//! A message on `in.<P>.<serial>` is a *group* of journal entries of one spot, one line
//! each, in the journal's line format ([`crate::store::journal`]): the stream's begin, the
//! events of one read, the stream's end, each with the edge's time. A message on
//! `in.<P>.~tick` is a tick of partition P: the owner's time, in decimal milliseconds,
//! for the offline sweep (time comes from the log, so a replay sweeps at the same points).
//! A message on `in.<P>.~api` is a change through the REST API ([`WriteRequest`], JSON),
//! applied in log order like the spots' events; its answer ([`WriteAnswer`]) goes back on
//! core NATS to the request's inbox after the commit that holds it.
//! A message on `in.<P>.~items` holds the [`ItemReport`]s one input message of another
//! partition made for P's items (JSON, one a line, in groups as [`line_groups`] makes them).
//! `~` cannot occur in a serial ([`crate::ingest::valid_serial`]).
//!
//! A message of the derived events log `SPOT_OUT` (on `out.<P>`) is a group of the derived
//! events one input message caused, one document a line ([`line_groups`]); an event's id is
//! made of the message's stream sequence and its place in the group ([`out_event_id`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use spot_protocol::Object;

use crate::domain::{ItemReport, JournalEntry, PutError, Write};
use crate::partition::Partition;
use crate::store::journal::{parse_journal_line, write_journal_line};

/// The input stream.
pub const IN_STREAM: &str = "SPOT_IN";
/// The derived events stream.
pub const OUT_STREAM: &str = "SPOT_OUT";
/// The last part of a tick's subject.
const TICK: &str = "~tick";
/// The last part of a REST change's subject.
const API: &str = "~api";
/// The last part of the subject of reports about a partition's items.
const ITEMS: &str = "~items";

/// The subject of a group of `serial`'s entries.
pub fn group_subject(serial: &str, partitions: u32) -> String {
    format!("in.{}.{serial}", Partition::of_key(serial, partitions))
}

/// The subject of partition `p`'s ticks.
pub fn tick_subject(p: u32) -> String {
    format!("in.{p}.{TICK}")
}

/// The subject of partition `p`'s REST changes.
pub fn write_subject(p: u32) -> String {
    format!("in.{p}.{API}")
}

/// The subject of the reports about partition `p`'s items.
pub fn reports_subject(p: u32) -> String {
    format!("in.{p}.{ITEMS}")
}

/// The core NATS subject of partition `p`'s raw spot events (`--publish-raw`), published
/// by its owner after each commit; every node's push layer takes them ([`RAW_SUBJECTS`]).
pub fn raw_subject(p: u32) -> String {
    format!("raw.{p}")
}

/// Every partition's [`raw_subject`].
pub const RAW_SUBJECTS: &str = "raw.>";

/// A [`raw_subject`] message: the `SPOT_OUT` sequence its events follow (the last message
/// of derived events of their commit: a node pushes them after it), then the raw spot
/// events, `(topic, payload)`, one a line.
pub fn read_raw(
    payload: &[u8],
) -> (
    u64,
    impl Iterator<Item = Result<(String, String), serde_json::Error>> + '_,
) {
    let mut lines = payload.split(|b| *b == b'\n');
    let after = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    (
        after,
        lines
            .filter(|line| !line.is_empty())
            .map(serde_json::from_slice),
    )
}

/// The subjects partition `p`'s owner consumes.
pub fn partition_filter(p: u32) -> String {
    format!("in.{p}.>")
}

/// The subject of partition `p`'s derived events.
pub fn out_subject(p: u32) -> String {
    format!("out.{p}")
}

/// Bits of a derived event's id that hold its place in its `SPOT_OUT` message: the id is
/// `sequence << OUT_PLACE_BITS | place`.
const OUT_PLACE_BITS: u32 = 12;

/// Derived events in one `SPOT_OUT` message at most (the places its ids have room for).
pub const OUT_GROUP_EVENTS: usize = 1 << OUT_PLACE_BITS;

/// Bytes of one `SPOT_OUT` message at most (beyond one document larger than this alone):
/// well under NATS's default largest payload (1 MiB).
pub const OUT_GROUP_BYTES: usize = 512 * 1024;

/// The id of the derived event at `place` in the `SPOT_OUT` message at `sequence`. Ids
/// grow with the log's order, as push clients need (they resume after the last id they
/// saw), and are unique across the cluster without a counter anyone must keep: they are
/// not consecutive between messages. Below 2^53 (a JSON number read as a double) for the
/// first 2^41 messages.
pub fn out_event_id(sequence: u64, place: usize) -> u64 {
    sequence << OUT_PLACE_BITS | place as u64
}

/// The `SPOT_OUT` sequence and place of a derived event's id ([`out_event_id`]).
pub fn out_event_position(id: u64) -> (u64, usize) {
    (
        id >> OUT_PLACE_BITS,
        (id & (OUT_GROUP_EVENTS as u64 - 1)) as usize,
    )
}

/// The payloads of the documents one input message caused, in order (the derived events
/// of a `SPOT_OUT` message, the reports to one partition): one document a line, at most [`OUT_GROUP_EVENTS`] and (unless one document is larger)
/// [`OUT_GROUP_BYTES`] each. Documents are compact JSON, where a line break only occurs
/// escaped. The same documents give the same payloads, so a replay's messages carry the
/// ids of the first try's.
pub fn line_groups<S: AsRef<str>>(docs: impl IntoIterator<Item = S>) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    let mut count = 0;
    for doc in docs {
        let doc = doc.as_ref();
        debug_assert!(
            !doc.contains('\n'),
            "a derived event's document is one line"
        );
        let fits = groups.last().is_some_and(|g| {
            count < OUT_GROUP_EVENTS && g.len() + 1 + doc.len() <= OUT_GROUP_BYTES
        });
        if fits {
            let group = groups.last_mut().expect("checked");
            group.push('\n');
            group.push_str(doc);
            count += 1;
        } else {
            groups.push(doc.to_string());
            count = 1;
        }
    }
    groups
}

/// The documents of a message made by [`line_groups`], in order.
pub fn lines_of(payload: &[u8]) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
    payload.split(|b| *b == b'\n').map(String::from_utf8_lossy)
}

/// One message of the input log, read back.
#[derive(Debug, PartialEq)]
pub enum InMessage {
    /// A group of one spot's entries.
    Group(Vec<JournalEntry>),
    /// A tick at this time (ms).
    Tick(i64),
    /// A change through the REST API.
    Write(WriteRequest),
    /// Reports of another partition about this one's items.
    Reports(Vec<ItemReport>),
}

/// A change through the REST API, as [`crate::domain::Domain::write`] takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteRequest {
    /// `put`, `post`, `delete`, `add_members`, `remove_member`.
    pub method: String,
    /// The collection.
    pub collection: String,
    /// The resource id.
    pub id: String,
    /// The JSON body.
    pub body: Object,
    /// The API node's time (ms): the change's `now`.
    pub time: i64,
    /// Where the answer goes (a core NATS inbox).
    pub reply: String,
}

/// The method of the [`WriteRequest`] an edge sends after handing a spot its pending
/// requests (body `{"config": …, "firmware": …}`, id the serial): the owner clears each
/// that is still the pending one ([`crate::domain::Domain::take_handed_commands`]). It has
/// no answer (`reply` empty).
pub const TAKE_COMMANDS: &str = "take_commands";

/// The method of the [`WriteRequest`] an edge sends with access control's audit entries
/// (body `{"entries": [[topic, data], …]}`, collection and id empty: partition 0): the
/// owner logs each as a derived event at the request's time
/// ([`crate::domain::Domain::log_audit`]). It has no answer.
pub const AUDIT: &str = "audit";

/// The core NATS subject on which an owner says, after its commit, that a spot's pending
/// requests changed ([`RequestNote`]): edges then read them only from a replica that holds
/// that commit.
pub const COMMANDS_SUBJECT: &str = "spot.requests";

/// A spot's pending requests changed, in the commit that ends at `position`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestNote {
    /// The spot's serial number.
    pub serial: String,
    /// The input log position of the commit.
    pub position: u64,
}

/// The partition whose owner makes the change `request` asks for: a new item's is its
/// code's, any other new resource's partition 0's; a spot's hand-over is its serial's; a
/// change of a resource goes to the partition that made it (its id says which, see
/// [`crate::partition`]; a spot named by serial number, the serial's).
pub fn write_partition(request: &WriteRequest, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    if request.method == TAKE_COMMANDS {
        return Partition::of_key(&request.id, partitions);
    }
    if request.method == write_name(Write::Post) {
        return match (request.collection.as_str(), request.body.get("code_hex")) {
            ("items", Some(Value::String(code))) => Partition::of_key(code, partitions),
            _ => 0,
        };
    }
    match crate::ids::Id::parse(&request.id) {
        Some(id) => Partition::of_id(id, partitions),
        None if request.collection == "spots" => Partition::of_key(&request.id, partitions),
        None => 0,
    }
}

/// [`Write`]'s name in a [`WriteRequest`].
pub fn write_name(method: Write) -> &'static str {
    match method {
        Write::Put => "put",
        Write::Post => "post",
        Write::Delete => "delete",
        Write::AddMembers => "add_members",
        Write::RemoveMember => "remove_member",
    }
}

/// The [`Write`] a [`WriteRequest`] names.
pub fn write_method(name: &str) -> Option<Write> {
    Some(match name {
        "put" => Write::Put,
        "post" => Write::Post,
        "delete" => Write::Delete,
        "add_members" => Write::AddMembers,
        "remove_member" => Write::RemoveMember,
        _ => return None,
    })
}

/// The answer to a [`WriteRequest`]: the domain's, and the input log position whose
/// commit holds the change (the API node waits for its replica to reach it, so that the
/// caller reads what it wrote).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteAnswer {
    /// The resource as it is now, or why the change was not made.
    pub result: Result<Value, WriteRefusal>,
    /// The position.
    pub position: u64,
}

/// [`PutError`] on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WriteRefusal {
    /// [`PutError::NotFound`].
    NotFound {
        /// The collection.
        collection: String,
        /// The id.
        id: String,
    },
    /// [`PutError::MethodNotAllowed`].
    MethodNotAllowed {
        /// The collection.
        collection: String,
    },
    /// [`PutError::Conflict`].
    Conflict {
        /// Why.
        reason: String,
    },
    /// [`PutError::BadField`].
    BadField {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
}

impl From<PutError> for WriteRefusal {
    fn from(e: PutError) -> Self {
        match e {
            PutError::NotFound { collection, id } => WriteRefusal::NotFound { collection, id },
            PutError::MethodNotAllowed(collection) => WriteRefusal::MethodNotAllowed { collection },
            PutError::Conflict(reason) => WriteRefusal::Conflict { reason },
            PutError::BadField { field, reason } => WriteRefusal::BadField { field, reason },
        }
    }
}

impl From<WriteRefusal> for PutError {
    fn from(e: WriteRefusal) -> Self {
        match e {
            WriteRefusal::NotFound { collection, id } => PutError::NotFound { collection, id },
            WriteRefusal::MethodNotAllowed { collection } => PutError::MethodNotAllowed(collection),
            WriteRefusal::Conflict { reason } => PutError::Conflict(reason),
            WriteRefusal::BadField { field, reason } => PutError::BadField { field, reason },
        }
    }
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
    /// A REST change that does not parse.
    #[error("a REST change that does not parse: {0}")]
    Write(String),
    /// A line of reports that does not parse.
    #[error("report {line} does not parse: {reason}")]
    Report {
        /// 1-based line number.
        line: usize,
        /// Why.
        reason: String,
    },
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
    if subject.ends_with(ITEMS) {
        return text
            .lines()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|e| WireError::Report {
                    line: i + 1,
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()
            .map(InMessage::Reports);
    }
    if subject.ends_with(API) {
        return serde_json::from_str(text)
            .map(InMessage::Write)
            .map_err(|e| WireError::Write(e.to_string()));
    }
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        entries.push(parse_journal_line(line).ok_or(WireError::Line { line: i + 1 })?);
    }
    Ok(InMessage::Group(entries))
}

#[cfg(test)]
mod tests {
    #[test]
    fn derived_events_go_in_groups_whose_ids_grow_with_the_log() {
        use super::*;
        let docs: Vec<String> = (0..OUT_GROUP_EVENTS + 3)
            .map(|i| format!("{{\"topic\":\"t/{i}\"}}"))
            .collect();
        let groups = line_groups(&docs);
        assert_eq!(groups.len(), 2, "a group holds OUT_GROUP_EVENTS at most");
        let back: Vec<String> = groups
            .iter()
            .flat_map(|g| lines_of(g.as_bytes()).map(|d| d.into_owned()))
            .collect();
        assert_eq!(back, docs, "every document, in order");
        assert_eq!(lines_of(groups[1].as_bytes()).count(), 3);
        assert_eq!(
            line_groups(&docs),
            groups,
            "the same documents, the same groups"
        );

        let big = "x".repeat(OUT_GROUP_BYTES / 2);
        let groups = line_groups([&big, &big, &big]);
        assert_eq!(groups.len(), 3, "a group holds OUT_GROUP_BYTES at most");
        let huge = "y".repeat(OUT_GROUP_BYTES + 1);
        let alone = line_groups([&huge]);
        assert!(
            alone.len() == 1 && alone[0] == huge,
            "a larger document alone"
        );
        assert!(line_groups(Vec::<String>::new()).is_empty());

        let ids = [
            out_event_id(7, 0),
            out_event_id(7, OUT_GROUP_EVENTS - 1),
            out_event_id(8, 0),
        ];
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_eq!(out_event_position(ids[1]), (7, OUT_GROUP_EVENTS - 1));
        assert_eq!(out_event_position(ids[2]), (8, 0));
        assert_eq!(out_event_position(0), (0, 0));
    }

    use super::*;
    use crate::domain::UpstreamRow;
    use crate::ids::Id;

    #[test]
    fn a_change_goes_to_the_partition_of_its_resource() {
        let request = |method: &str, collection: &str, id: &str, body: Value| WriteRequest {
            method: method.into(),
            collection: collection.into(),
            id: id.into(),
            body: body.as_object().cloned().unwrap_or_default(),
            time: 0,
            reply: String::new(),
        };
        let none = Value::Null;
        let at = |r: &WriteRequest| write_partition(r, 4);
        let id = Id(0x0190_0000_0000_0006);
        assert_eq!(at(&request("put", "items", &id.text(), none.clone())), 2);
        assert_eq!(
            at(&request("delete", "locations", &id.text(), none.clone())),
            2
        );
        let add = request("add_members", "itemlists", &id.text(), none.clone());
        assert_eq!(at(&add), 2);
        let code = serde_json::json!({ "code_hex": "e2000001" });
        let code_at = Partition::of_key("e2000001", 4);
        assert_eq!(at(&request("post", "items", "", code)), code_at);
        assert_eq!(at(&request("post", "locations", "", none.clone())), 0);
        let serial_at = Partition::of_key("spot-7", 4);
        assert_eq!(
            at(&request("put", "spots", "spot-7", none.clone())),
            serial_at
        );
        assert_eq!(
            at(&request(TAKE_COMMANDS, "spots", "spot-7", none.clone())),
            serial_at
        );
        assert_eq!(
            write_partition(&request("put", "items", &id.text(), none), 1),
            0
        );
    }

    #[test]
    fn reports_round_trip_one_a_line() {
        let reports = vec![
            ItemReport::Presence {
                spot: Id(7),
                location: Id(9),
                action: "create".into(),
                code: "e2\n01".into(),
                tech: "EPC Gen2".into(),
                proximity: "near".into(),
                time_event: Some(5),
                now: 6,
            },
            ItemReport::Offline {
                spot: Id(7),
                now: 8,
            },
        ];
        let lines = reports.iter().map(|r| serde_json::to_string(r).unwrap());
        let payload = line_groups(lines).remove(0);
        assert_eq!(payload.lines().count(), 2);
        let back = read_message(&reports_subject(3), payload.as_bytes()).unwrap();
        assert_eq!(back, InMessage::Reports(reports));
        assert!(matches!(
            read_message(&reports_subject(3), b"{\"report\":\"nothing\"}"),
            Err(WireError::Report { line: 1, .. })
        ));
    }

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
    fn a_rest_change_and_its_refusal_round_trip() {
        let request = WriteRequest {
            method: write_name(Write::AddMembers).into(),
            collection: "locations".into(),
            id: "x".into(),
            body: serde_json::from_str(r#"{"label":"dock"}"#).unwrap(),
            time: 5,
            reply: "_INBOX.1".into(),
        };
        let payload = serde_json::to_string(&request).unwrap();
        assert_eq!(
            read_message(&write_subject(0), payload.as_bytes()).unwrap(),
            InMessage::Write(request)
        );
        assert_eq!(write_method("add_members"), Some(Write::AddMembers));
        let refusal = PutError::BadField {
            field: "label".into(),
            reason: "not a string".into(),
        };
        let answer = WriteAnswer {
            result: Err(refusal.into()),
            position: 9,
        };
        let back: WriteAnswer =
            serde_json::from_str(&serde_json::to_string(&answer).unwrap()).unwrap();
        assert_eq!(back, answer);
        let Err(refusal) = back.result else { panic!() };
        assert_eq!(
            PutError::from(refusal).to_string(),
            "field \"label\": not a string"
        );
    }
}
