//! The derived events log (spec §7): each change of a resource becomes an event with a topic
//! ([`Topic`], spelled as the §7 topic builders spell it) and the resource as it is after the
//! change; the domain keeps the recent ones in memory and hands new ones to the caller in
//! [`super::Changes::log`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use spot_protocol::Proximity;

use super::journal::RestoreError;
use super::json::{push_json_str, push_opt_id, push_time, WriteJson};
use super::model::iso;
use super::{Domain, Table};
use crate::ids::Id;

/// One entry of the derived events log (spec §7 topics).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogEvent {
    /// Chronological id.
    pub id: Id,
    /// `resource/id/action/arguments…`.
    pub topic: String,
    /// The device's time, where the change came from a device event.
    #[serde(with = "iso::opt")]
    pub time_event: Option<i64>,
    /// Server time.
    #[serde(with = "iso")]
    pub time_created: i64,
    /// The changed resource as it is after the change.
    pub data: Box<RawValue>,
}

/// A derived event in memory: its JSON document (a [`LogEvent`]) and what lookups need.
#[derive(Debug, Clone)]
pub(super) struct DerivedEventDoc {
    /// The event's id.
    pub(super) id: Id,
    /// Its server time (pruning goes by it).
    pub(super) time_created: i64,
    /// The [`LogEvent`] document (shared: a REST page takes it without a copy).
    pub(super) doc: Arc<str>,
}

/// The topic of a derived event (spec §7, spelled as the §7 topic builders spell it). The frequent ones
/// are written straight into the event's document ([`Topic::write_json`]): ids and fixed
/// words, nothing to escape or to replace, no string built first.
#[derive(Debug, Clone, Copy)]
pub(super) enum Topic<'a> {
    /// `items/<id>/created`
    ItemCreated(Id),
    /// `items/<id>/appeared`
    ItemAppeared(Id),
    /// `items/<id>/disappeared`
    ItemDisappeared(Id),
    /// `items/<id>/moved-to/<location-id>`
    ItemMovedTo(Id, Id),
    /// `presences/<id>/<change>/<item-id>/<location-id>/…`
    Presence {
        id: Id,
        item: Id,
        location: Id,
        change: PresenceTopic,
    },
    /// Any other, built by the §7 topic builders.
    Text(&'a str),
}

/// The action of a [`Topic::Presence`] and what follows the location.
#[derive(Debug, Clone, Copy)]
pub(super) enum PresenceTopic {
    /// `created/…/<proximity>`
    Created(Proximity),
    /// `deleted/…/<proximity>`
    Deleted(Proximity),
    /// `changed-proximity/…/<new>/<previous>/<moved-closer|moved-away>`
    ChangedProximity(Proximity, Proximity),
}

impl Topic<'_> {
    /// Appends the topic as a JSON string.
    fn write_json(&self, doc: &mut String) {
        let (id, rest) = match *self {
            Topic::Text(text) => return push_json_str(doc, text),
            Topic::ItemCreated(id) => (id, "/created"),
            Topic::ItemAppeared(id) => (id, "/appeared"),
            Topic::ItemDisappeared(id) => (id, "/disappeared"),
            Topic::ItemMovedTo(id, location) => {
                doc.push_str("\"items/");
                id.push_hex(doc);
                doc.push_str("/moved-to/");
                location.push_hex(doc);
                doc.push('"');
                return;
            }
            Topic::Presence {
                id,
                item,
                location,
                change,
            } => {
                doc.push_str("\"presences/");
                id.push_hex(doc);
                doc.push_str(match change {
                    PresenceTopic::Created(_) => "/created/",
                    PresenceTopic::Deleted(_) => "/deleted/",
                    PresenceTopic::ChangedProximity(..) => "/changed-proximity/",
                });
                item.push_hex(doc);
                doc.push('/');
                location.push_hex(doc);
                doc.push('/');
                match change {
                    PresenceTopic::Created(p) | PresenceTopic::Deleted(p) => {
                        doc.push_str(p.as_str())
                    }
                    PresenceTopic::ChangedProximity(new, previous) => {
                        doc.push_str(new.as_str());
                        doc.push('/');
                        doc.push_str(previous.as_str());
                        doc.push_str(if new > previous {
                            "/moved-closer"
                        } else {
                            "/moved-away"
                        });
                    }
                }
                doc.push('"');
                return;
            }
        };
        doc.push_str("\"items/");
        id.push_hex(doc);
        doc.push_str(rest);
        doc.push('"');
    }
}

impl Domain {
    /// Loads stored derived events (oldest first).
    pub fn load_events(&mut self, docs: Vec<String>) -> Result<(), RestoreError> {
        for doc in docs {
            let e: LogEvent = serde_json::from_str(&doc).map_err(RestoreError::Event)?;
            self.events.push_back(DerivedEventDoc {
                id: e.id,
                time_created: e.time_created,
                doc: doc.into(),
            });
        }
        while self.events.len() > self.config.events_max_in_memory {
            self.events.pop_front();
        }
        Ok(())
    }

    /// Keeps a derived event made elsewhere (by a cluster's stage, read from `SPOT_OUT`) for
    /// this domain's `/api/events`: in id order and once (an event held already is
    /// skipped); the oldest beyond `events_max_in_memory`, or older than the retention at
    /// `now`, are dropped.
    pub fn keep_event(&mut self, doc: &str, now: i64) -> Result<(), serde_json::Error> {
        let e: LogEvent = serde_json::from_str(doc)?;
        // Events of several partitions come interleaved: mostly near the end.
        let at = self.events.partition_point(|held| held.id < e.id);
        if self.events.get(at).is_none_or(|held| held.id != e.id) {
            self.events.insert(
                at,
                DerivedEventDoc {
                    id: e.id,
                    time_created: e.time_created,
                    doc: doc.into(),
                },
            );
        }
        let cutoff = self.retention_cutoff(now);
        while self.events.len() > self.config.events_max_in_memory
            || self.events.front().is_some_and(|e| e.time_created < cutoff)
        {
            self.events.pop_front();
        }
        Ok(())
    }

    /// Takes the derived events `other` holds (a replica rebuilt from its rows keeps the
    /// events its predecessor held).
    pub fn take_events(&mut self, other: &mut Domain) {
        self.events = std::mem::take(&mut other.events);
    }

    /// The cutoff below which stored derived and upstream events may be pruned.
    pub fn retention_cutoff(&self, now: i64) -> i64 {
        now - self.config.events_retention_ms
    }

    /// Logs a derived event whose data is the row `row` of `table` as it is now.
    pub(super) fn log_row(
        &mut self,
        topic: Topic,
        time_event: Option<i64>,
        now: i64,
        table: Table,
        row: Id,
    ) {
        fn write<T: WriteJson>(doc: &mut String, row: Option<&T>) {
            match row {
                Some(row) => row.write_json(doc),
                None => doc.push_str("null"),
            }
        }
        let Some((id, mut doc)) = self.log_start(&topic, time_event, now) else {
            return;
        };
        match table {
            Table::Spots => write(&mut doc, self.spots.get(row)),
            Table::Locations => write(&mut doc, self.locations.get(row)),
            Table::Items => write(&mut doc, self.items.get(row)),
            Table::Presences => write(&mut doc, self.presences.get(row)),
            Table::ItemLists => write(&mut doc, self.item_lists.get(row)),
            Table::SpotLists => write(&mut doc, self.spot_lists.get(row)),
            Table::Metadata => write(&mut doc, self.metadata.get(row)),
        }
        self.log_end(id, now, doc);
    }

    /// Logs an audit event of access control (`keys/<id>/created`, …) with `data`, a JSON
    /// document (`null` if it is not one). Not journaled: like a change through the API it
    /// forces the next flush, which stores the ids taken.
    pub fn log_audit(&mut self, topic: &str, data: &str, now: i64) {
        let Some((id, mut doc)) = self.log_start(&Topic::Text(topic), None, now) else {
            return;
        };
        if serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok() {
            doc.push_str(data);
        } else {
            doc.push_str("null");
        }
        self.log_end(id, now, doc);
        self.must_flush = true;
    }

    /// Takes the id of a derived event and starts its document ([`log_doc_head`]); the
    /// caller writes the data into it and hands it to [`Domain::log_end`]. `None` in a replay:
    /// the event is stored already, with the journal entry that caused it; only the id is
    /// taken again, so that what follows gets the ids it had.
    pub(super) fn log_start(
        &mut self,
        topic: &Topic,
        time_event: Option<i64>,
        now: i64,
    ) -> Option<(Id, String)> {
        let id = self.ids.next(now);
        if self.replaying {
            return None;
        }
        Some((id, log_doc_head(id, topic, time_event, now, 512)))
    }

    /// Ends and keeps the document of [`Domain::log_start`].
    pub(super) fn log_end(&mut self, id: Id, now: i64, mut doc: String) {
        doc.push('}');
        // One copy of the exact size, shared by the events log in memory (it keeps many)
        // and the writer; the document with room to spare is dropped here, on the thread
        // that made it (freeing it on the writer's thread cost the allocator more).
        let doc: Arc<str> = doc.into();
        self.events.push_back(DerivedEventDoc {
            id,
            time_created: now,
            doc: doc.clone(),
        });
        self.pending_log.push((now, doc));
        while self.events.len() > self.config.events_max_in_memory {
            self.events.pop_front();
        }
    }
}

/// The JSON document of a [`LogEvent`], written directly (the same text serde writes; the
/// resource is JSON already).
#[cfg(test)]
pub(super) fn log_doc(
    id: Id,
    topic: &Topic,
    time_event: Option<i64>,
    time_created: i64,
    data: &str,
) -> String {
    let mut doc = log_doc_head(id, topic, time_event, time_created, data.len());
    doc.push_str(data);
    doc.push('}');
    doc
}

/// A [`LogEvent`] document up to its `data` (which comes last), with room for `data_len`
/// bytes of data.
pub(super) fn log_doc_head(
    id: Id,
    topic: &Topic,
    time_event: Option<i64>,
    time_created: i64,
    data_len: usize,
) -> String {
    let mut doc = String::with_capacity(data_len + 256);
    doc.push_str("{\"id\":");
    push_opt_id(&mut doc, Some(id));
    doc.push_str(",\"topic\":");
    topic.write_json(&mut doc);
    doc.push_str(",\"time_event\":");
    match time_event {
        Some(ms) => push_time(&mut doc, ms),
        None => doc.push_str("null"),
    }
    doc.push_str(",\"time_created\":");
    push_time(&mut doc, time_created);
    doc.push_str(",\"data\":");
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::*;
    use crate::domain::topics;
    #[test]
    fn topics_written_into_documents_are_spelled_as_the_topics_module_spells_them() {
        let (id, item, location) = (Id(0x0123456789abcdef), Id(0xfedc), Id(u64::MAX));
        let all = [Proximity::Far, Proximity::Near, Proximity::Immediate];
        let mut cases = vec![
            (Topic::ItemCreated(id), topics::item_created(id)),
            (Topic::ItemAppeared(id), topics::item_appeared(id)),
            (Topic::ItemDisappeared(id), topics::item_disappeared(id)),
            (
                Topic::ItemMovedTo(id, location),
                topics::item_moved_to(id, location),
            ),
        ];
        let presence = |change| Topic::Presence {
            id,
            item,
            location,
            change,
        };
        for p in all {
            cases.push((
                presence(PresenceTopic::Created(p)),
                topics::presence_created(id, item, location, p.as_str()),
            ));
            cases.push((
                presence(PresenceTopic::Deleted(p)),
                topics::presence_deleted(id, item, location, p.as_str()),
            ));
            for previous in all {
                cases.push((
                    presence(PresenceTopic::ChangedProximity(p, previous)),
                    topics::presence_changed_proximity(
                        id,
                        item,
                        location,
                        p.as_str(),
                        previous.as_str(),
                    ),
                ));
            }
        }
        for (topic, expected) in &cases {
            let mut written = String::new();
            topic.write_json(&mut written);
            assert_eq!(written, Value::from(expected.as_str()).to_string());
        }
        let mut odd = String::new();
        Topic::Text("spots/x/connected/\"1\"").write_json(&mut odd);
        assert_eq!(odd, r#""spots/x/connected/\"1\"""#);
    }

    #[test]
    fn a_log_document_is_what_serde_writes_for_the_log_event() {
        for (topic, time_event) in [
            ("items/0123456789abcdef/created", Some(T0 + 1)),
            ("spots/x/updated/PUT \"odd\" \\ \t", None),
        ] {
            let doc = log_doc(
                Id(0x0123456789abcdef),
                &Topic::Text(topic),
                time_event,
                T0,
                r#"{"a":[1,"\u00e9"]}"#,
            );
            let event: LogEvent = serde_json::from_str(&doc).expect(&doc);
            assert_eq!(event.topic, topic);
            assert_eq!(event.time_event, time_event);
            assert_eq!(serde_json::to_string(&event).unwrap(), doc);
        }
    }
}
