//! The live state of spec §7 — spots, locations, items, presences and the derived events
//! log — as plain data changed by plain functions. No sockets, no clock (`now` is passed in),
//! no database: every change is remembered as a dirty row, and [`Domain::take_changes`] hands
//! the caller one [`Changes`] set per group commit, for the store to write.
//!
//! Durability is a journal plus checkpoints: every commit stores the [`JournalEntry`]s of its
//! batch (the upstream events and the streams' begin and end), and only a *flush* writes the
//! dirty rows. A flush happens every few seconds, and at once after a change that is not in the
//! journal (an API `PUT`, commands handed to a spot, a spot going offline). After a crash the
//! rows of the last flush are loaded and the journal after it is replayed through
//! [`Domain::replay`]: the domain is deterministic given the journal (ids come from `now`, which
//! every entry carries), so the replay rebuilds the same state with the same ids.
//!
//! Call order:
//! - at start: [`Domain::new`] → [`Domain::load`] (and [`Domain::load_item`],
//!   [`Domain::load_presence`]) for the rows of the last flush → [`Domain::restore_ids`] →
//!   [`Domain::load_events`] → [`Domain::replay`] of the journal written after the flush;
//! - for each upstream stream (HTTP POST or TCP connection): [`Domain::begin_stream`] →
//!   [`Domain::apply_event`]* → [`Domain::end_stream`] (which hands out the spot's pending
//!   commands);
//! - periodically: [`Domain::sweep`], which takes spots offline after `offline_after` without
//!   traffic, deleting their presences, and prunes the derived events in memory;
//! - after each batch: [`Domain::take_changes`], whose [`Changes`] the caller commits.
//!
//! REST reads and `PUT`s ([`Domain::rows`], [`Domain::get`], [`Domain::put`]) may come
//! between any of these.
//!
//! Files, one concern each: `model` (the resources and their serde shapes), `spots` (connect,
//! online/offline, sequence dedupe, pending commands), `items` (the item index), `presences`
//! (presence apply / withdraw / merge and where an item is), `derived` (§7 topics and the
//! derived events log), `journal` (journal entries, changes, load and replay), `views` (REST
//! reads and `PUT`s), `sets` (item lists and spot lists), `metadata` (of items and
//! locations), `json` (the hand-written JSON writers of the hot documents).

use std::collections::VecDeque;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
/// The §7 topic builders (the one import of them in the domain).
use spot_protocol::topics;
use spot_protocol::{Action, Event, EventKind, Proximity};

use spots::event_object;

use crate::ids::{Id, IdGen, IdMap};
use crate::partition::Partition;

mod derived;
mod items;
mod journal;
mod json;
mod metadata;
mod model;
#[cfg(test)]
mod model_check;
mod presences;
mod references;
mod reports;
mod sets;
mod spots;
#[cfg(test)]
pub(crate) mod testing;
mod views;

use derived::DerivedEventDoc;
pub use derived::LogEvent;

pub use items::malformed;
use items::{CodeEntry, Technologies};
pub use journal::{
    decode_json_event, encode_json, Changes, JournalEntry, RestoreError, RowDoc, UpstreamRow,
};
pub use model::{Item, Location, NamedProximity, PresenceResource, Reporters, Spot, Table};
use presences::ItemPresences;
pub use reports::ItemReport;
pub use sets::{ListKind, MemberList};
#[cfg(test)]
pub(crate) use views::conversions;
pub use views::{Extras, PutError, Row, Write};

/// Settings of the domain.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// A spot without traffic for this long (ms) and no open stream goes offline.
    pub offline_after_ms: i64,
    /// Derived events older than this (ms) are dropped.
    pub events_retention_ms: i64,
    /// At most this many derived events are kept in memory (oldest dropped first).
    pub events_max_in_memory: usize,
    /// Largest JSON size (bytes) a spot's `config` may reach by merging `config update`s into
    /// it (default 64 KiB, the largest message a spot may send: a full `config create` is under
    /// 2 KiB). Each update merges its keys into the config, so updates with ever new keys grew
    /// it, and every copy of the spot (rows, derived events, REST), without bound. An update
    /// that would take the config past this is not merged (the event is still stored and
    /// acknowledged) and a warning says so; a `config create` replaces the config whole.
    pub spot_config_max_bytes: usize,
    /// A spot whose streams sent nothing for this long (ms) counts as having none open, when
    /// set. A cluster sets it (its body idle timeout): a stream whose edge died never ends
    /// in the log, and would keep its spot online for good. The embedded server ends every
    /// stream it began (a restart forgets them all), so it leaves this `None`.
    pub stream_idle_ms: Option<i64>,
    /// Most members an item list or a spot list holds (default 100,000): a list is one row,
    /// written whole with each change of it; adding past this is refused (`409`).
    pub list_max_members: usize,
    /// The share of the state this domain owns ([`crate::partition`]): a cluster's stage
    /// owns one partition, and reports events about other partitions' items to them
    /// ([`Domain::take_reports`]); everything else owns the whole.
    pub partition: Partition,
}

impl Default for DomainConfig {
    fn default() -> Self {
        DomainConfig {
            offline_after_ms: 10_000,
            events_retention_ms: 24 * 3600 * 1000,
            events_max_in_memory: 100_000,
            spot_config_max_bytes: 64 * 1024,
            stream_idle_ms: None,
            list_max_members: 100_000,
            partition: Partition::WHOLE,
        }
    }
}

/// What [`Domain::apply_event`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// New: applied and to be stored.
    Stored,
    /// A replay (seq at or below the acknowledged one): acknowledged, not applied again.
    Duplicate,
}

/// The whole live state. See the module docs for the call order.
#[derive(Debug)]
pub struct Domain {
    config: DomainConfig,
    ids: IdGen,
    spots: IdMap<Spot>,
    /// How many of `spots` are online (kept as they go online and offline, for `/metrics`).
    spots_online: usize,
    spot_by_serial: HashMap<String, Id>,
    /// The last spot [`Domain::ensure_spot`] found: a stream's events come one after the
    /// other (an entry of `spot_by_serial`; serial numbers never change their spot).
    last_spot: Option<(String, Id)>,
    locations: IdMap<Location>,
    items: IdMap<Item>,
    /// Item ids, found by `code_hex` and `technology` (see [`CodeEntry`]).
    item_by_code: hashbrown::HashTable<CodeEntry>,
    /// The shared technology strings of items.
    technologies: Technologies,
    presences: IdMap<PresenceResource>,
    /// Item id → its presences, one per location (see [`ItemPresences`]).
    presences_of_item: HashMap<Id, ItemPresences>,
    events: VecDeque<DerivedEventDoc>,
    /// Item lists (`sets/itemlists`, see `sets`).
    item_lists: IdMap<MemberList>,
    /// Spot lists (`sets/spotlists`).
    spot_lists: IdMap<MemberList>,
    /// Item id → the item lists it is in, in id order (items in none have no entry).
    sets_of_item: HashMap<Id, std::sync::Arc<[Id]>>,
    /// Item or location id → its `metadata` (those with none have no entry).
    metadata: IdMap<spot_protocol::Object>,
    /// Rows changed since the last flush: table and id.
    dirty: HashSet<(Table, Id)>,
    /// Rows deleted since the last flush.
    deleted: HashSet<(Table, Id)>,
    journal: Vec<JournalEntry>,
    pending_log: Vec<(i64, std::sync::Arc<str>)>,
    /// A change not in the journal happened: the next commit must flush.
    must_flush: bool,
    /// [`Domain::replay`] is running: derived events are not logged again.
    replaying: bool,
    /// Reports to other partitions not taken yet ([`Domain::take_reports`]).
    reports: Vec<(u32, ItemReport)>,
}

impl Domain {
    /// An empty state.
    pub fn new(config: DomainConfig) -> Self {
        let partition = config.partition;
        Domain {
            config,
            ids: IdGen::of(partition),
            spots: IdMap::new(),
            spots_online: 0,
            spot_by_serial: HashMap::default(),
            last_spot: None,
            locations: IdMap::new(),
            items: IdMap::new(),
            item_by_code: hashbrown::HashTable::new(),
            technologies: Technologies::default(),
            presences: IdMap::new(),
            presences_of_item: HashMap::default(),
            events: VecDeque::new(),
            item_lists: IdMap::new(),
            spot_lists: IdMap::new(),
            sets_of_item: HashMap::default(),
            metadata: IdMap::new(),
            dirty: HashSet::default(),
            deleted: HashSet::default(),
            journal: Vec::new(),
            pending_log: Vec::new(),
            must_flush: false,
            replaying: false,
            reports: Vec::new(),
        }
    }

    /// A spot opened a stream (POST or TCP connection): creates it on first sight, counts
    /// the request, records the version from `User-Agent`.
    pub fn begin_stream(&mut self, serial: &str, version: Option<&str>, now: i64) {
        self.journal.push(JournalEntry::Begin {
            serial: serial.to_string(),
            version: version.map(str::to_string),
            time: now,
        });
        let id = self.ensure_spot(serial, now);
        self.touch(id, now, None);
        if let Some(spot) = self.spots.get_mut(id) {
            spot.open_streams += 1;
            spot.request_counter += 1;
            spot.time_last_request = Some(now);
            if let Some(v) = version {
                spot.version = Some(v.to_string());
            }
            self.dirty.insert((Table::Spots, id));
        }
    }

    /// The stream ended (or broke). With `take_commands`, returns the spot's pending
    /// commands and clears them (they count as handed over).
    pub fn end_stream(&mut self, serial: &str, now: i64, take_commands: bool) -> Vec<Event> {
        let Some(&id) = self.spot_by_serial.get(serial) else {
            return Vec::new();
        };
        if let Some(spot) = self.spots.get_mut(id) {
            spot.open_streams = spot.open_streams.saturating_sub(1);
            spot.last_traffic = now;
        }
        self.journal.push(JournalEntry::End {
            serial: serial.to_string(),
            time: now,
        });
        if take_commands {
            self.take_commands(serial, now)
        } else {
            Vec::new()
        }
    }

    /// Applies one upstream event of the spot `serial` (which must have begun a stream or
    /// will be created now).
    pub fn apply_event(&mut self, serial: &str, event: &Event, now: i64) -> Applied {
        self.apply_encoded(&serial.into(), event, encode_json(event), now)
    }

    /// [`Domain::apply_event`] with the event's JSON text made by the caller, which the
    /// journal stores: the text as received (what the ingest keeps where it can) or
    /// [`encode_json`]'s; it must decode to `event`.
    pub fn apply_encoded(
        &mut self,
        serial: &std::sync::Arc<str>,
        event: &Event,
        event_json: String,
        now: i64,
    ) -> Applied {
        let spot_id = self.ensure_spot(serial, now);
        // The spot is looked up once on the way of most events (see `touch` for the others).
        let online = match self.spots.get_mut(spot_id) {
            Some(spot) => {
                spot.last_traffic = now;
                spot.is_online
            }
            None => true,
        };
        if !online {
            self.touch(spot_id, now, event.timestamp().map(|t| t.0));
        }
        let Some(spot) = self.spots.get_mut(spot_id) else {
            // Not reached: `ensure_spot` made it.
            self.journal_event(serial, spot_id, event.seq, now, event_json, false);
            return Applied::Stored;
        };
        if !spot.accept(event) {
            self.journal_event(serial, spot_id, event.seq, now, event_json, true);
            return Applied::Duplicate;
        }
        if let EventKind::Spot(Action::Create, _) | EventKind::Config(..) = &event.kind {
            let object = event_object(&event_json);
            spot.apply_own_event(&event.kind, object, self.config.spot_config_max_bytes, now);
        }
        let report_location = spot.report_location;
        self.dirty.insert((Table::Spots, spot_id));
        match &event.kind {
            EventKind::Presence(action, p) => {
                if let Some(code) = &p.item_code {
                    let tech = p.item_codetype.as_deref().unwrap_or_default();
                    let proximity = p.proximity.unwrap_or(Proximity::Far);
                    let time_event = p.time_last.map(|t| t.0);
                    let at = (spot_id, report_location);
                    let presence = Some((*action, proximity));
                    self.item_event(at, (code, tech), presence, time_event, now);
                }
            }
            EventKind::Hit(_, h) => {
                if let Some(code) = &h.item_code {
                    let tech = h.item_codetype.as_deref().unwrap_or_default();
                    let at = (spot_id, report_location);
                    self.item_event(at, (code, tech), None, h.time.map(|t| t.0), now);
                }
            }
            _ => {}
        }
        self.journal_event(serial, spot_id, event.seq, now, event_json, false);
        Applied::Stored
    }

    /// Takes spots offline that have no open stream and no traffic for `offline_after`,
    /// deleting the presences they reported; prunes the events log.
    pub fn sweep(&mut self, now: i64) {
        let stale: Vec<Id> = self
            .spots
            .values()
            .filter(|s| {
                s.is_online
                    && now - s.last_traffic >= self.config.offline_after_ms
                    && (s.open_streams == 0
                        || self
                            .config
                            .stream_idle_ms
                            .is_some_and(|idle| now - s.last_traffic >= idle))
            })
            .map(|s| s.id)
            .collect();
        for id in stale {
            self.go_offline(id, now);
        }
        let cutoff = now - self.config.events_retention_ms;
        while self.events.front().is_some_and(|e| e.time_created < cutoff) {
            self.events.pop_front();
        }
    }

    /// Whether a change outside the journal happened, so the next commit must flush.
    pub fn must_flush(&self) -> bool {
        self.must_flush
    }

    /// Rows changed since the last flush (a flush writes this many).
    pub fn dirty_rows(&self) -> usize {
        self.dirty.len() + self.deleted.len()
    }

    /// The derived events since the last call of this or [`Domain::take_changes`], alone
    /// (a cluster's stage publishes them per input message; the rows stay dirty for the
    /// batch's commit).
    pub fn take_log(&mut self) -> Vec<(i64, std::sync::Arc<str>)> {
        std::mem::take(&mut self.pending_log)
    }

    /// The journal and derived events since the last call; with `flush` (or when
    /// [`Domain::must_flush`]) also every row changed since the last flush.
    pub fn take_changes(&mut self, flush: bool) -> Changes {
        // The next batch gets room for as many as this one had: growing them entry by entry
        // copied them over and over, into fresh memory each time.
        let journal = Vec::with_capacity(self.journal.len());
        let log = Vec::with_capacity(self.pending_log.len());
        let mut changes = Changes {
            journal: std::mem::replace(&mut self.journal, journal),
            log: std::mem::replace(&mut self.pending_log, log),
            ..Changes::default()
        };
        if !flush && !self.must_flush {
            return changes;
        }
        self.must_flush = false;
        changes.flush = true;
        changes.id_last = self.ids.last();
        changes.upserts.reserve_exact(self.dirty.len());
        for (table, id) in self.dirty.drain() {
            let doc = match table {
                Table::Spots => self.spots.get_shared(id).map(RowDoc::Spot),
                Table::Locations => self.locations.get_shared(id).map(RowDoc::Location),
                Table::Items => self.items.get_shared(id).map(RowDoc::Item),
                Table::Presences => self.presences.get_shared(id).map(RowDoc::Presence),
                Table::ItemLists => self.item_lists.get_shared(id).map(RowDoc::List),
                Table::SpotLists => self.spot_lists.get_shared(id).map(RowDoc::List),
                Table::Metadata => self.metadata.get_shared(id).map(RowDoc::Metadata),
            };
            if let Some(doc) = doc {
                changes.upserts.push((table, id, doc));
            }
        }
        changes.deletes = self.deleted.drain().collect();
        changes
    }
}
