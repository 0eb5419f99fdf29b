//! The journal: the inputs of the domain in the order applied ([`JournalEntry`]), what one
//! group commit writes ([`Changes`]), and recovery — loading the rows of the last flush
//! ([`Domain::load`]) and replaying the journal written after it ([`Domain::replay`]).

use std::sync::Arc;

use spot_protocol::{Decoder, Encoder, Encoding, Event, Limits};

use super::json::WriteJson;
use super::{Domain, Item, ListKind, Location, MemberList, PresenceResource, Spot, Table};
use crate::ids::Id;

/// One upstream event, as received and journaled.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRow {
    /// The spot's serial number (shared by the events of one stream).
    pub serial: Arc<str>,
    /// The id of the spot resource (not stored; the raw events' push topic).
    pub spot_id: Id,
    /// Its sequence key, if any.
    pub seq: Option<u64>,
    /// Server time of receipt.
    pub time_received: i64,
    /// The event in the JSON encoding.
    pub event_json: String,
}

/// One input of the domain, in the order applied: what [`Domain::replay`] needs to rebuild
/// the state since the last flush.
#[derive(Debug, Clone, PartialEq)]
pub enum JournalEntry {
    /// An upstream event: a new one (`duplicate: false`, stored once) or a replay the spot
    /// sent again (acknowledged, not applied again, but it still counts as traffic).
    Event {
        /// The event.
        row: UpstreamRow,
        /// It was a replay of a stored sequence.
        duplicate: bool,
    },
    /// A stream (POST, TCP connection) of the spot began ([`Domain::begin_stream`]).
    Begin {
        /// Serial number.
        serial: String,
        /// Version from `User-Agent`.
        version: Option<String>,
        /// Server time.
        time: i64,
    },
    /// The stream ended without handing over commands ([`Domain::end_stream`]).
    End {
        /// Serial number.
        serial: String,
        /// Server time.
        time: i64,
    },
}

/// Why the state cannot be restored from what the store kept (the rows of the last flush,
/// the derived events, the journal after the flush). Each stops the start: going on would
/// serve a state that lost what was acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A stored row is not the JSON document of its resource.
    #[error("{table} row {id}: {source}")]
    Row {
        /// The table ([`Table::name`]).
        table: &'static str,
        /// The row's id.
        id: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A stored derived event is not the document of a [`super::LogEvent`].
    #[error("events row: {0}")]
    Event(#[source] serde_json::Error),
    /// A journaled upstream event no longer decodes.
    #[error("journal event of spot {serial} at {time}: {source}")]
    JournalEvent {
        /// The spot's serial number.
        serial: String,
        /// When it was received (Unix ms).
        time: i64,
        /// Why it does not decode.
        #[source]
        source: spot_protocol::DecodeError,
    },
}

/// The document of a row to write: a snapshot of the resource, rendered by the store's row
/// writer (in its own encoding or as JSON, [`RowDoc::to_json`]) on its own thread — on the
/// thread that applies events, the rendering of a large flush held up every event behind it. The snapshot is shared with the live state (see
/// [`crate::ids::IdMap`]): taking it costs a reference count, and a row changed again while the writer
/// still holds it is copied then.
#[derive(Debug, Clone, PartialEq)]
pub enum RowDoc {
    /// Rendered already.
    Json(String),
    /// A spot.
    Spot(Arc<Spot>),
    /// A location.
    Location(Arc<Location>),
    /// An item.
    Item(Arc<Item>),
    /// A presence.
    Presence(Arc<PresenceResource>),
    /// An item list or a spot list.
    List(Arc<MemberList>),
    /// The metadata of an item or location.
    Metadata(Arc<spot_protocol::Object>),
}

impl RowDoc {
    /// The row's JSON document (what [`Domain::load`] reads back).
    pub fn to_json(&self) -> String {
        let mut doc = String::new();
        self.write_json(&mut doc);
        doc
    }

    /// Appends [`RowDoc::to_json`]'s document to `doc`.
    pub fn write_json(&self, doc: &mut String) {
        match self {
            RowDoc::Json(json) => doc.push_str(json),
            RowDoc::Spot(r) => r.write_json(doc),
            RowDoc::Location(r) => r.write_json(doc),
            RowDoc::Item(r) => r.write_json(doc),
            RowDoc::Presence(r) => r.write_json(doc),
            RowDoc::List(r) => r.write_json(doc),
            RowDoc::Metadata(r) => r.write_json(doc),
        }
    }
}

impl From<&str> for RowDoc {
    fn from(json: &str) -> Self {
        RowDoc::Json(json.to_string())
    }
}

impl From<String> for RowDoc {
    fn from(json: String) -> Self {
        RowDoc::Json(json)
    }
}

/// Everything one group commit writes.
#[derive(Debug, Default)]
pub struct Changes {
    /// The journal of this batch.
    pub journal: Vec<JournalEntry>,
    /// A flush: the rows below are every row changed since the previous flush, and the
    /// journal up to and including this batch is covered by them.
    pub flush: bool,
    /// With `flush`: the id generator's state ([`crate::ids::IdGen::last`]) the rows correspond to.
    pub id_last: u64,
    /// Rows to insert or replace: table, id, document (only in a flush).
    pub upserts: Vec<(Table, Id, RowDoc)>,
    /// Rows to delete (only in a flush).
    pub deletes: Vec<(Table, Id)>,
    /// Derived events, in id order: time_created, JSON document (which holds the id; the
    /// store numbers them as they come).
    pub log: Vec<(i64, Arc<str>)>,
}

impl Changes {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.journal.is_empty()
            && !self.flush
            && self.upserts.is_empty()
            && self.deletes.is_empty()
            && self.log.is_empty()
    }

    /// The upstream events stored by this batch (replays of stored sequences left out).
    pub fn upstream(&self) -> impl Iterator<Item = &UpstreamRow> {
        self.journal.iter().filter_map(|e| match e {
            JournalEntry::Event {
                row,
                duplicate: false,
            } => Some(row),
            _ => None,
        })
    }
}

impl Domain {
    /// Loads stored rows (as written by [`Domain::take_changes`]). Spots that were online get
    /// `offline_after` from `now` to come back before [`Domain::sweep`] takes them offline.
    pub fn load(
        &mut self,
        table: Table,
        rows: Vec<(String, String)>,
        now: i64,
    ) -> Result<(), RestoreError> {
        for (id, doc) in rows {
            self.ids.observe(&id);
            let bad = |source| RestoreError::Row {
                table: table.name(),
                id: id.clone(),
                source,
            };
            match table {
                Table::Spots => {
                    let mut s: Spot = serde_json::from_str(&doc).map_err(bad)?;
                    s.last_traffic = now;
                    self.last_spot = None;
                    self.spot_by_serial.insert(s.serial_number.clone(), s.id);
                    if let Some(old) = self.spots.get(s.id) {
                        self.spots_online -= usize::from(old.is_online);
                    }
                    self.spots_online += usize::from(s.is_online);
                    self.spots.insert(s.id, s);
                }
                Table::Locations => {
                    let l: Location = serde_json::from_str(&doc).map_err(bad)?;
                    self.locations.insert(l.id, l);
                }
                Table::Items => self.load_item(serde_json::from_str(&doc).map_err(bad)?),
                Table::Presences => self.load_presence(serde_json::from_str(&doc).map_err(bad)?),
                Table::ItemLists => {
                    self.load_list(ListKind::Items, serde_json::from_str(&doc).map_err(bad)?)
                }
                Table::SpotLists => {
                    self.load_list(ListKind::Spots, serde_json::from_str(&doc).map_err(bad)?)
                }
                Table::Metadata => {
                    let metadata = serde_json::from_str(&doc).map_err(bad)?;
                    if let Some(id) = Id::parse(&id) {
                        self.load_metadata(id, metadata);
                    }
                }
            }
        }
        Ok(())
    }

    /// Brings one row of a replica up to date with its stored state: `Some(doc)` is the
    /// row as now stored (new or changed), `None` that it was deleted. A cluster's read
    /// replica applies the rows changed since its last refresh with this (rows of one table
    /// in any order; a presence before or after its item). Nothing is logged or marked
    /// dirty for a deletion; a changed row goes through [`Domain::load`].
    pub fn refresh_row(
        &mut self,
        table: Table,
        id: &str,
        doc: Option<String>,
        now: i64,
    ) -> Result<(), RestoreError> {
        let Some(key) = Id::parse(id) else {
            return Err(RestoreError::Row {
                table: table.name(),
                id: id.to_string(),
                source: serde::de::Error::custom("not an id"),
            });
        };
        // A list's old members leave its index before the new ones join.
        if doc.is_none() || matches!(table, Table::ItemLists | Table::SpotLists) {
            self.unload(table, key);
        }
        match doc {
            Some(doc) => self.load(table, vec![(id.to_string(), doc)], now),
            None => Ok(()),
        }
    }

    /// Forgets row `id` of `table` and what indexes it (see [`Domain::refresh_row`]).
    fn unload(&mut self, table: Table, id: Id) {
        match table {
            Table::Spots => {
                if let Some(spot) = self.spots.remove(id) {
                    self.spots_online -= usize::from(spot.is_online);
                    self.spot_by_serial.remove(&spot.serial_number);
                    self.last_spot = None;
                }
            }
            Table::Locations => {
                self.locations.remove(id);
            }
            Table::Items => {
                self.unindex_item(id);
                self.items.remove(id);
            }
            Table::Presences => {
                if let Some(p) = self.presences.remove(id) {
                    self.forget_presence_of_item(p.item, p.location, id);
                }
            }
            Table::ItemLists | Table::SpotLists => self.unload_list(table, id),
            Table::Metadata => {
                self.metadata.remove(id);
            }
        }
    }

    /// Journals an upstream event as received (see [`JournalEntry::Event`]).
    pub(super) fn journal_event(
        &mut self,
        serial: &Arc<str>,
        spot_id: Id,
        seq: Option<u64>,
        now: i64,
        event_json: String,
        duplicate: bool,
    ) {
        self.journal.push(JournalEntry::Event {
            row: UpstreamRow {
                serial: serial.clone(),
                spot_id,
                seq,
                time_received: now,
                event_json,
            },
            duplicate,
        });
    }

    /// Continues the id sequence of an earlier run: `last` is the [`Changes::id_last`] of its
    /// last flush. Call after [`Domain::load`], before [`Domain::replay`].
    pub fn restore_ids(&mut self, last: u64) {
        self.ids.observe_value(last);
    }

    /// Applies the journal written after the last flush again (each entry at its own time),
    /// rebuilding the state the crashed run had. The derived events it causes are not logged
    /// again (they were stored with their entries); the rebuilt rows stay dirty, for the
    /// next flush. Entries are not journaled again.
    pub fn replay(&mut self, entries: Vec<JournalEntry>) -> Result<(), RestoreError> {
        self.replaying = true;
        for entry in entries {
            if let Err(e) = self.apply_entry(entry) {
                self.replaying = false;
                return Err(e);
            }
        }
        self.replaying = false;
        self.journal.clear();
        self.close_all_streams();
        for e in &self.events {
            self.ids.observe_value(e.id.0);
        }
        Ok(())
    }
}

impl Domain {
    /// No stream of a crashed run (or of a partition's earlier owner) is open in this one:
    /// every spot's open streams are forgotten, so that each goes offline after
    /// `offline_after` without traffic.
    pub fn close_all_streams(&mut self) {
        for spot in self.spots.values_mut_unordered() {
            spot.open_streams = 0;
        }
    }

    /// Applies one journal entry at its own time, as it was applied when it was received:
    /// the one way back from an entry to the domain, shared by [`Domain::replay`] and a
    /// cluster's stage, whose input log is made of these entries (`crate::cluster`).
    /// An event whose JSON does not decode is an error naming the spot and the time.
    pub fn apply_entry(&mut self, entry: JournalEntry) -> Result<(), RestoreError> {
        match entry {
            JournalEntry::Event { row, .. } => match decode_json_event(&row.event_json) {
                Some(Ok(event)) => {
                    self.apply_encoded(&row.serial, &event, row.event_json, row.time_received);
                }
                Some(Err(source)) => {
                    return Err(RestoreError::JournalEvent {
                        serial: row.serial.to_string(),
                        time: row.time_received,
                        source,
                    });
                }
                None => {}
            },
            JournalEntry::Begin {
                serial,
                version,
                time,
            } => self.begin_stream(&serial, version.as_deref(), time),
            JournalEntry::End { serial, time } => {
                self.end_stream(&serial, time, false);
            }
        }
        Ok(())
    }
}

/// The first event of a JSON text (a journal line, a command), decoded as the ingest does.
pub fn decode_json_event(text: &str) -> Option<Result<Event, spot_protocol::DecodeError>> {
    let mut decoder = Decoder::new(Encoding::Json, Limits::default());
    decoder.feed(text.as_bytes());
    decoder.finish();
    decoder.next_event()
}

/// The compact JSON encoding of an event, without the trailing separator (as stored).
pub fn encode_json(event: &Event) -> String {
    let mut encoded = Vec::with_capacity(256);
    Encoder::new(Encoding::Json).encode(event, &mut encoded);
    let end = trim_separator(&encoded).len();
    encoded.truncate(end);
    // The JSON encoder writes UTF-8 only; the lossy path is never taken.
    String::from_utf8(encoded)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn trim_separator(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && bytes[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::*;
    use crate::domain::Write;

    /// A cluster's read replica applies each commit's changed and deleted rows one by one
    /// (`refresh_row`); it must answer as a domain loaded whole from the same rows does.
    #[test]
    fn a_replica_refreshed_row_by_row_answers_as_one_loaded_from_all_rows() {
        let mut d = Domain::new(DomainConfig::default());
        let mut replica = Domain::new(DomainConfig::default());
        let mut stored: std::collections::BTreeMap<(usize, String), String> = Default::default();
        let mut next = numbers(0x2545_f491_4f6c_dd1du64);
        let body = |v: Value| v.as_object().cloned().unwrap_or_default();
        let tables = |d: &Domain| {
            [
                "spots",
                "locations",
                "items",
                "presences",
                "itemlists",
                "spotlists",
            ]
            .map(|c| (c, d.collection(c).unwrap()))
        };
        let mut lists: Vec<String> = Vec::new();
        for i in 0..2_000i64 {
            let now = T0 + i * 10;
            let items: Vec<String> = d.items.values().map(|i| i.id.text()).collect();
            match next(40) {
                0 => d.sweep(now + 60_000),
                1 => {
                    let list = d.write(Write::Post, "itemlists", "", &Object::new(), now);
                    lists.push(list.unwrap()["id"].as_str().unwrap().to_string());
                }
                2 | 3 if !lists.is_empty() && !items.is_empty() => {
                    let list = &lists[next(lists.len() as u64) as usize];
                    let item = &items[next(items.len() as u64) as usize];
                    let ids = body(json!({ "ids": [item] }));
                    let _ = d.write(Write::AddMembers, "itemlists", list, &ids, now);
                }
                4 if !lists.is_empty() && !items.is_empty() => {
                    let list = &lists[next(lists.len() as u64) as usize];
                    let item = &items[next(items.len() as u64) as usize];
                    let id = body(json!({ "id": item }));
                    let _ = d.write(Write::RemoveMember, "itemlists", list, &id, now);
                }
                5 if !lists.is_empty() => {
                    let list = lists.swap_remove(next(lists.len() as u64) as usize);
                    d.write(Write::Delete, "itemlists", &list, &Object::new(), now)
                        .unwrap();
                }
                6 if !items.is_empty() => {
                    let item = &items[next(items.len() as u64) as usize];
                    // Refused while the item is present.
                    let _ = d.write(Write::Delete, "items", item, &Object::new(), now);
                }
                7 if !items.is_empty() => {
                    let item = &items[next(items.len() as u64) as usize];
                    let label = body(json!({ "label": format!("label {i}") }));
                    d.write(Write::Put, "items", item, &label, now).unwrap();
                }
                _ => {
                    let serial = (1 + next(4)).to_string();
                    let code = format!("{:024x}", next(8));
                    let action = [Action::Create, Action::Update, Action::Delete][next(3) as usize];
                    let proximity =
                        [Proximity::Far, Proximity::Near, Proximity::Immediate][next(3) as usize];
                    d.apply_event(&serial, &presence(action, &code, proximity), now);
                }
            }
            if i % 25 != 24 {
                continue;
            }
            let commit = d.take_changes(true);
            for (table, id) in &commit.deletes {
                let at = Table::ALL.iter().position(|t| t == table).unwrap();
                stored.remove(&(at, id.text()));
                replica.refresh_row(*table, &id.text(), None, T0).unwrap();
            }
            for (table, id, doc) in &commit.upserts {
                let at = Table::ALL.iter().position(|t| t == table).unwrap();
                stored.insert((at, id.text()), doc.to_json());
                replica
                    .refresh_row(*table, &id.text(), Some(doc.to_json()), T0)
                    .unwrap();
            }
            let mut whole = Domain::new(DomainConfig::default());
            for ((at, id), doc) in &stored {
                whole
                    .load(Table::ALL[*at], vec![(id.clone(), doc.clone())], T0)
                    .unwrap();
            }
            assert_eq!(tables(&replica), tables(&whole), "after step {i}");
            assert_eq!(replica.spots_online, whole.spots_online, "after step {i}");
            assert_item_presences_agree(&replica, &format!("after step {i}"));
        }
        assert!(
            stored
                .keys()
                .any(|(at, _)| Table::ALL[*at] == Table::ItemLists),
            "some lists were made"
        );
    }
    #[test]
    fn rows_written_by_earlier_versions_load_and_are_written_back_unchanged() {
        let rows = [
            (
                Table::Items,
                "0000018fd1e2a3b4",
                r#"{"id":"0000018fd1e2a3b4","code_hex":"00000000000000000000000a","technology":"EPC Gen2","label":null,"custom":{"x":1},"is_present":true,"location":"0000018fd1e2a3b3","move_count":2,"time_moved":"2024-05-01T10:00:00.001Z","time_created":"2024-05-01T09:00:00Z","time_updated":"2024-05-01T10:00:00.001Z"}"#,
            ),
            (
                Table::Presences,
                "0000018fd1e2a3b5",
                r#"{"id":"0000018fd1e2a3b5","item":"0000018fd1e2a3b4","location":"0000018fd1e2a3b3","proximity":"near","reporters":{"0000018fd1e2a3b2":"near","0000018fd1e2a3b6":"far"},"time_event":null,"time_created":"2024-05-01T09:00:00Z","time_updated":"2024-05-01T10:00:00.001Z"}"#,
            ),
        ];
        let mut d = Domain::new(DomainConfig::default());
        for (table, id, doc) in rows {
            d.load(table, vec![(id.to_string(), doc.to_string())], T0)
                .unwrap();
        }
        let item = d.items.values().next().unwrap();
        assert_eq!(item.json(), rows[0].2);
        let presence = d.presences.values().next().unwrap();
        assert_eq!(presence.json(), rows[1].2);
        assert_eq!(d.presence_id(item.id, presence.location), Some(presence.id));
    }

    #[test]
    fn changes_hold_each_dirty_row_once_and_are_empty_after_taking() {
        let mut d = Domain::new(DomainConfig::default());
        for i in 0..10 {
            d.apply_event(
                "1",
                &presence(
                    Action::Update,
                    "00000000000000000000000e",
                    if i % 2 == 0 {
                        Proximity::Far
                    } else {
                        Proximity::Near
                    },
                ),
                T0 + i,
            );
        }
        let changes = d.take_changes(true);
        assert_eq!(changes.upstream().count(), 10);
        let spots = changes
            .upserts
            .iter()
            .filter(|(t, _, _)| *t == Table::Spots)
            .count();
        assert_eq!(spots, 1);
        assert!(d.take_changes(false).is_empty());
    }

    #[test]
    fn stored_rows_load_back_into_an_equal_state() {
        let mut d = Domain::new(DomainConfig::default());
        d.apply_event(
            "1",
            &presence(Action::Create, "00000000000000000000000f", Proximity::Near),
            T0,
        );
        let changes = d.take_changes(true);
        let mut loaded = Domain::new(DomainConfig::default());
        load_rows(&mut loaded, &changes);
        for c in ["spots", "locations", "items", "presences"] {
            assert_eq!(loaded.collection(c), d.collection(c), "{c}");
        }
        let next = loaded.ids.next(0);
        assert!(
            d.items.values().all(|i| i.id < next),
            "new ids sort after loaded ones"
        );
    }

    /// Feeds one step of a run that exercises every kind of journal entry.
    fn step(d: &mut Domain, i: i64) {
        let now = T0 + i * 7;
        let serial = ["1", "2"][(i % 2) as usize];
        let code = format!("{:024x}", i % 5);
        let proximity = [Proximity::Far, Proximity::Near, Proximity::Immediate][(i % 3) as usize];
        let action = match i % 4 {
            0 => Action::Create,
            3 => Action::Delete,
            _ => Action::Update,
        };
        d.begin_stream(serial, Some("1.0"), now);
        let mut event = presence(action, &code, proximity);
        event.seq = Some(i as u64 / 2 + 1);
        d.apply_event(serial, &event, now);
        d.apply_event(serial, &event, now + 1); // sent again: a duplicate
        d.end_stream(serial, now + 2, true);
    }

    #[test]
    fn replaying_the_journal_after_the_last_flush_rebuilds_the_same_state_and_ids() {
        let mut original = Domain::new(DomainConfig::default());
        let mut log = Vec::new();
        for i in 0..20 {
            step(&mut original, i);
        }
        let flushed = original.take_changes(true);
        log.extend(flushed.log.iter().map(|(_, doc)| doc.to_string()));
        let mut journal = Vec::new();
        for i in 20..60 {
            step(&mut original, i);
            let changes = original.take_changes(false);
            assert!(
                !changes.flush && changes.upserts.is_empty(),
                "no flush was due"
            );
            journal.extend(changes.journal);
            log.extend(changes.log.iter().map(|(_, doc)| doc.to_string()));
        }
        assert!(journal
            .iter()
            .any(|e| matches!(e, JournalEntry::Begin { .. })));
        assert!(journal.iter().any(|e| matches!(
            e,
            JournalEntry::Event {
                duplicate: true,
                ..
            }
        )));

        // The crash: only the flushed rows, the whole events log and the journal survive.
        let mut rebuilt = Domain::new(DomainConfig::default());
        load_rows(&mut rebuilt, &flushed);
        rebuilt.restore_ids(flushed.id_last);
        rebuilt.load_events(log).unwrap();
        rebuilt.replay(journal).unwrap();

        for c in ["spots", "locations", "items", "presences", "events"] {
            assert_eq!(rebuilt.collection(c), original.collection(c), "{c}");
        }
        assert_eq!(
            rebuilt.ids.next(T0),
            original.ids.next(T0),
            "the id sequence goes on"
        );
        let again = rebuilt.take_changes(false);
        assert!(again.journal.is_empty(), "a replay is not journaled again");
        assert!(
            again.log.is_empty(),
            "a replay does not log its derived events again"
        );
        assert!(
            rebuilt.take_changes(true).upserts.len() > 1,
            "the rebuilt rows are flushed"
        );
    }
}
