//! The live state of spec §7 — spots, locations, items, presences and the derived events
//! log — as plain data changed by plain functions. No sockets, no clock (`now` is passed in),
//! no database: every change is remembered as a dirty row, and [`Domain::take_changes`] hands
//! the core one [`Changes`] set per group commit (see [`crate::store`]).
//!
//! Durability is a journal plus checkpoints: every commit stores the [`JournalEntry`]s of its
//! batch (the upstream events and the streams' begin and end), and only a *flush* writes the
//! dirty rows. A flush happens every few seconds, and at once after a change that is not in the
//! journal (an API `PUT`, commands handed to a spot, a spot going offline). After a crash the
//! rows of the last flush are loaded and the journal after it is replayed through
//! [`Domain::replay`]: the domain is deterministic given the journal (ids come from `now`, which
//! every entry carries), so the replay rebuilds the same state with the same ids.
//!
//! Call order for one upstream stream (HTTP POST or TCP connection):
//! [`Domain::begin_stream`] → [`Domain::apply_event`]* → [`Domain::end_stream`] (which hands
//! out the spot's pending commands). [`Domain::sweep`] runs periodically and takes spots
//! offline after `offline_after` without traffic, deleting their presences.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use spot_protocol::topics;
use spot_protocol::{
    Action, Decoder, Encoder, Encoding, Event, EventKind, Limits, Object, Proximity,
};

use crate::ids::{Id, IdGen, IdMap};

/// Serde helpers: times are Unix milliseconds in memory and ISO 8601 strings in JSON.
mod iso {
    use serde::{Deserialize, Deserializer, Serializer};
    use spot_protocol::Timestamp;

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 24];
        // Hot: derived events carry three times each.
        match Timestamp(*ms).format_into(&mut buf) {
            Some(text) => s.serialize_str(text),
            None => s.collect_str(&Timestamp(*ms)),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse(&text)
            .map(|t| t.0)
            .ok_or_else(|| serde::de::Error::custom(format!("not a time: {text:?}")))
    }
    pub mod opt {
        use super::*;
        pub fn serialize<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => super::serialize(ms, s),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(text) => Timestamp::parse(&text)
                    .map(|t| Some(t.0))
                    .ok_or_else(|| serde::de::Error::custom(format!("not a time: {text:?}"))),
            }
        }
    }
}

/// Serde helpers: a [`Proximity`] is its name in JSON (`"immediate"`, `"near"`, `"far"`).
mod prox {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use spot_protocol::Proximity;

    /// A proximity, written as its name.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Prox(pub Proximity);

    impl Serialize for Prox {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(self.0.as_str())
        }
    }

    impl<'de> Deserialize<'de> for Prox {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Prox, D::Error> {
            let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
            Proximity::parse(&name)
                .map(Prox)
                .ok_or_else(|| serde::de::Error::custom(format!("not a proximity: {name:?}")))
        }
    }
}
pub use prox::Prox;

/// Serde helpers: an `Arc<str>` is a string in JSON.
mod shared_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(text: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(text)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        Ok(std::borrow::Cow::<'de, str>::deserialize(d)?.into())
    }
}

/// The spots reporting a presence, each with its proximity: a map from spot id, kept sorted
/// by id, the first (lowest) inline and the others in a vector (nearly always one spot: no
/// second allocation to read or copy; smaller and faster than a tree). In JSON an object, as
/// a `BTreeMap<Id, Prox>` would be.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reporters {
    /// The report of the lowest spot id; `None` only when there is none at all.
    first: Option<(Id, Prox)>,
    /// The others, sorted by spot id.
    more: Vec<(Id, Prox)>,
}

impl Reporters {
    /// Only `spot`, with this proximity.
    fn one(spot: Id, proximity: Prox) -> Self {
        Reporters {
            first: Some((spot, proximity)),
            more: Vec::new(),
        }
    }

    /// Sets the proximity reported by `spot`.
    pub fn insert(&mut self, spot: Id, proximity: Prox) {
        match &mut self.first {
            None => self.first = Some((spot, proximity)),
            Some(first) if first.0 == spot => first.1 = proximity,
            Some(first) if spot < first.0 => {
                let was = std::mem::replace(first, (spot, proximity));
                self.more.insert(0, was);
            }
            Some(_) => match self.more.binary_search_by_key(&spot, |(s, _)| *s) {
                Ok(at) => self.more[at].1 = proximity,
                Err(at) => self.more.insert(at, (spot, proximity)),
            },
        }
    }

    /// Drops the report of `spot`.
    pub fn remove(&mut self, spot: Id) {
        match self.first {
            Some((first, _)) if first == spot => {
                self.first = (!self.more.is_empty()).then(|| self.more.remove(0));
            }
            _ => {
                if let Ok(at) = self.more.binary_search_by_key(&spot, |(s, _)| *s) {
                    self.more.remove(at);
                }
            }
        }
    }

    /// Whether `spot` reports it.
    pub fn contains(&self, spot: Id) -> bool {
        self.iter().any(|(s, _)| *s == spot)
    }

    /// The strongest proximity reported.
    pub fn strongest(&self) -> Option<Proximity> {
        self.iter().map(|(_, p)| p.0).max()
    }

    /// The reports in spot id order.
    pub fn iter(&self) -> impl Iterator<Item = &(Id, Prox)> {
        self.first.iter().chain(&self.more)
    }

    /// How many spots report it.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    /// Whether no spot reports it.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

impl FromIterator<(Id, Prox)> for Reporters {
    fn from_iter<I: IntoIterator<Item = (Id, Prox)>>(iter: I) -> Self {
        let mut reporters = Reporters::default();
        for (spot, proximity) in iter {
            reporters.insert(spot, proximity);
        }
        reporters
    }
}

impl Serialize for Reporters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter().map(|(spot, p)| (spot, p)))
    }
}

impl<'de> Deserialize<'de> for Reporters {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Reporters, D::Error> {
        Ok(BTreeMap::<Id, Prox>::deserialize(d)?.into_iter().collect())
    }
}

/// The distinct technologies (code types) of items, so that items share one string per
/// technology. At most [`Technologies::MAX`] are shared (the text comes from spots); an item
/// of any other technology has its own string.
#[derive(Debug, Default)]
struct Technologies(Vec<Arc<str>>);

impl Technologies {
    const MAX: usize = 16;

    /// The position of `tech` among the shared ones.
    fn index(&self, tech: &str) -> Option<u8> {
        self.0.iter().position(|t| **t == *tech).map(|i| i as u8)
    }

    /// The shared string for `tech`.
    fn get(&mut self, tech: &str) -> Arc<str> {
        if let Some(shared) = self.0.iter().find(|t| ***t == *tech) {
            return shared.clone();
        }
        let shared: Arc<str> = tech.into();
        if self.0.len() < Self::MAX {
            self.0.push(shared.clone());
        }
        shared
    }
}

/// One spot (reader), keyed by its chronological `id`, found by `serial_number`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Spot {
    /// Chronological id.
    pub id: Id,
    /// The serial number the spot sends (`spot_id`), as decimal text.
    pub serial_number: String,
    /// The object of the last `spot create`.
    pub status: Object,
    /// `config create`, merged with every later `config update`.
    pub config: Object,
    /// True while the spot streams; false after `offline_after` without traffic.
    pub is_online: bool,
    /// POSTs (and TCP connections) received.
    pub request_counter: u64,
    /// Distinct upstream events accepted (replays not counted).
    pub event_counter: u64,
    /// Firmware version, from `User-Agent` or `spot create`.
    pub version: Option<String>,
    /// Written by an application; sent as a `config update` command, then cleared.
    pub config_request: Option<Object>,
    /// Written by an application; sent as a `firmware update` command, then cleared.
    pub firmware_request: Option<Object>,
    /// The location its presences are reported to.
    pub report_location: Option<Id>,
    /// Per-antenna report locations (settable; antenna presences are a later extension).
    pub antenna_report_locations: Object,
    /// Epoch of the spot's sequence counter (delivery contract).
    pub seq_epoch: Option<u64>,
    /// Highest sequence stored in the current epoch (0: none).
    pub acked_seq: u64,
    /// Created.
    #[serde(with = "iso")]
    pub time_created: i64,
    /// Last changed.
    #[serde(with = "iso")]
    pub time_updated: i64,
    /// Last POST or connection.
    #[serde(with = "iso::opt")]
    pub time_last_request: Option<i64>,
    /// Streams (POSTs, TCP connections) open right now.
    #[serde(skip)]
    pub open_streams: u32,
    /// Server time of the last byte of traffic.
    #[serde(skip)]
    pub last_traffic: i64,
}

/// A place spots report to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Location {
    /// Chronological id.
    pub id: Id,
    /// Human label; `spot<serial>` for a spot's default location.
    pub label: String,
    /// Free-form application data.
    pub custom: Value,
    /// Created.
    #[serde(with = "iso")]
    pub time_created: i64,
    /// Last changed.
    #[serde(with = "iso")]
    pub time_updated: i64,
}

/// A tagged thing, unique by `code_hex` + `technology`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Item {
    /// Chronological id.
    pub id: Id,
    /// The item code (hex).
    pub code_hex: Box<str>,
    /// The code type, e.g. `EPC Gen2` (shared by the items of one type, see [`Technologies`]).
    #[serde(with = "shared_str")]
    pub technology: Arc<str>,
    /// Human label (`None`: null).
    pub label: Option<Box<Value>>,
    /// Free-form application data (`None`: null).
    pub custom: Option<Box<Value>>,
    /// Whether any presence exists for it.
    pub is_present: bool,
    /// Location of its strongest presence; the last known one when gone.
    pub location: Option<Id>,
    /// How often `location` changed.
    pub move_count: u64,
    /// When `location` last changed.
    #[serde(with = "iso::opt")]
    pub time_moved: Option<i64>,
    /// Created.
    #[serde(with = "iso")]
    pub time_created: i64,
    /// Last changed.
    #[serde(with = "iso")]
    pub time_updated: i64,
}

/// An item at a location, merged over every spot reporting there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PresenceRes {
    /// Chronological id.
    pub id: Id,
    /// Item id.
    pub item: Id,
    /// Location id.
    pub location: Id,
    /// The strongest proximity of the reporting spots.
    pub proximity: Prox,
    /// Reporting spot id → its proximity.
    pub reporters: Reporters,
    /// The device's time of the last report (`time_last`).
    #[serde(with = "iso::opt")]
    pub time_event: Option<i64>,
    /// Created.
    #[serde(with = "iso")]
    pub time_created: i64,
    /// Last changed.
    #[serde(with = "iso")]
    pub time_updated: i64,
}

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
struct Logged {
    id: Id,
    time_created: i64,
    doc: Box<str>,
}

/// The tables of the store (one JSON document per row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Spots.
    Spots,
    /// Locations.
    Locations,
    /// Items.
    Items,
    /// Presences.
    Presences,
}

impl Table {
    /// All tables, in load order.
    pub const ALL: [Table; 4] = [
        Table::Spots,
        Table::Locations,
        Table::Items,
        Table::Presences,
    ];

    /// SQL table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Spots => "spots",
            Table::Locations => "locations",
            Table::Items => "items",
            Table::Presences => "presences",
        }
    }
}

/// One upstream event, as received and journaled.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamRow {
    /// The spot's serial number.
    pub serial: String,
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

/// The document of a row to write: a snapshot of the resource, rendered by the row writer's
/// thread (items and presences in [`crate::store::checkpoint::codec`]'s encoding, the others as JSON,
/// [`RowDoc::to_json`]) — on the core's thread the rendering of a large
/// flush held up every event behind it. The snapshot is shared with the live state (see
/// [`IdMap`]): taking it costs a reference count, and a row changed again while the writer
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
    Presence(Arc<PresenceRes>),
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
    /// With `flush`: the id generator's state ([`IdGen::last`]) the rows correspond to.
    pub id_last: u64,
    /// Rows to insert or replace: table, id, document (only in a flush).
    pub upserts: Vec<(Table, Id, RowDoc)>,
    /// Rows to delete (only in a flush).
    pub deletes: Vec<(Table, Id)>,
    /// Derived events, in id order: time_created, JSON document (which holds the id; the
    /// store numbers them as they come).
    pub log: Vec<(i64, String)>,
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

/// Settings of the domain.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// A spot without traffic for this long (ms) and no open stream goes offline.
    pub offline_after_ms: i64,
    /// Derived events older than this (ms) are dropped.
    pub events_retention_ms: i64,
    /// At most this many derived events are kept in memory (oldest dropped first).
    pub events_max_in_memory: usize,
}

impl Default for DomainConfig {
    fn default() -> Self {
        DomainConfig {
            offline_after_ms: 10_000,
            events_retention_ms: 24 * 3600 * 1000,
            events_max_in_memory: 100_000,
        }
    }
}

/// How one presence of an item changed (see [`Domain::recompute_item`]).
#[derive(Debug, Clone, Copy)]
enum PresenceChange {
    /// The presence at this location was created or got stronger (now this proximity).
    Stronger(Id, Proximity),
    /// The presence at this location got weaker or was deleted.
    Weaker(Id),
}

/// The topic of a derived event (spec §7, spelled as [`topics`] spells it). The frequent ones
/// are written straight into the event's document ([`Topic::write_json`]): ids and fixed
/// words, nothing to escape or to replace, no string built first.
#[derive(Debug, Clone, Copy)]
enum Topic<'a> {
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
    /// Any other, built by [`topics`].
    Text(&'a str),
}

/// The action of a [`Topic::Presence`] and what follows the location.
#[derive(Debug, Clone, Copy)]
enum PresenceTopic {
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

/// What [`Domain::apply_event`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// New: applied and to be stored.
    Stored,
    /// A replay (seq at or below the acknowledged one): acknowledged, not applied again.
    Duplicate,
}

/// A REST change that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// No such resource.
    #[error("{collection} {id:?} not found")]
    NotFound {
        /// The collection.
        collection: String,
        /// The id asked for.
        id: String,
    },
    /// The collection does not accept PUT.
    #[error("PUT is not allowed on {0}")]
    MethodNotAllowed(String),
    /// A field that cannot be set, or a value of the wrong type.
    #[error("field {field:?}: {reason}")]
    BadField {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
}

/// The whole live state. See the module docs for the call order.
#[derive(Debug)]
pub struct Domain {
    config: DomainConfig,
    ids: IdGen,
    spots: IdMap<Spot>,
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
    presences: IdMap<PresenceRes>,
    /// Item id → its presences, one per location (see [`ItemPresences`]).
    presences_of_item: HashMap<Id, ItemPresences>,
    events: VecDeque<Logged>,
    /// Rows changed since the last flush: table and id.
    dirty: HashSet<(Table, Id)>,
    /// Rows deleted since the last flush.
    deleted: HashSet<(Table, Id)>,
    journal: Vec<JournalEntry>,
    pending_log: Vec<(i64, String)>,
    /// A change not in the journal happened: the next commit must flush.
    must_flush: bool,
    /// [`Domain::replay`] is running: derived events are not logged again.
    replaying: bool,
}

impl Domain {
    /// An empty state.
    pub fn new(config: DomainConfig) -> Self {
        Domain {
            config,
            ids: IdGen::default(),
            spots: IdMap::new(),
            spot_by_serial: HashMap::default(),
            last_spot: None,
            locations: IdMap::new(),
            items: IdMap::new(),
            item_by_code: hashbrown::HashTable::new(),
            technologies: Technologies::default(),
            presences: IdMap::new(),
            presences_of_item: HashMap::default(),
            events: VecDeque::new(),
            dirty: HashSet::default(),
            deleted: HashSet::default(),
            journal: Vec::new(),
            pending_log: Vec::new(),
            must_flush: false,
            replaying: false,
        }
    }

    /// Loads stored rows (as written by [`Domain::take_changes`]). Spots that were online get
    /// `offline_after` from `now` to come back before [`Domain::sweep`] takes them offline.
    pub fn load(
        &mut self,
        table: Table,
        rows: Vec<(String, String)>,
        now: i64,
    ) -> Result<(), String> {
        for (id, doc) in rows {
            self.ids.observe(&id);
            let bad = |e: serde_json::Error| format!("{} row {id}: {e}", table.name());
            match table {
                Table::Spots => {
                    let mut s: Spot = serde_json::from_str(&doc).map_err(bad)?;
                    s.last_traffic = now;
                    self.last_spot = None;
                    self.spot_by_serial.insert(s.serial_number.clone(), s.id);
                    self.spots.insert(s.id, s);
                }
                Table::Locations => {
                    let l: Location = serde_json::from_str(&doc).map_err(bad)?;
                    self.locations.insert(l.id, l);
                }
                Table::Items => self.load_item(serde_json::from_str(&doc).map_err(bad)?),
                Table::Presences => self.load_presence(serde_json::from_str(&doc).map_err(bad)?),
            }
        }
        Ok(())
    }

    /// Loads a stored item decoded already (as [`Domain::load`] does a JSON one).
    pub fn load_item(&mut self, mut i: Item) {
        self.ids.observe_value(i.id.0);
        i.technology = self.technologies.get(&i.technology);
        let (id, known) = (i.id, self.item_id(&i.code_hex, &i.technology));
        if let Some(at) = self.presences_of_item.get_mut(&id) {
            (at.present, at.location) = (i.is_present, i.location);
        }
        self.items.insert(id, i);
        if known.is_none() {
            self.index_item(id);
        }
    }

    /// Loads a stored presence decoded already (as [`Domain::load`] does a JSON one).
    pub fn load_presence(&mut self, p: PresenceRes) {
        self.ids.observe_value(p.id.0);
        self.add_presence_of_item(p.item, p.location, p.id);
        self.presences.insert(p.id, p);
    }

    /// Loads stored derived events (oldest first).
    pub fn load_events(&mut self, docs: Vec<String>) -> Result<(), String> {
        for doc in docs {
            let e: LogEvent =
                serde_json::from_str(&doc).map_err(|err| format!("events row: {err}"))?;
            self.events.push_back(Logged {
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

    /// The spot with this serial number.
    pub fn spot_by_serial(&self, serial: &str) -> Option<&Spot> {
        self.spot_by_serial
            .get(serial)
            .and_then(|id| self.spots.get(*id))
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

    /// The highest sequence stored for the spot in its current epoch (0: none or unknown).
    pub fn acked_seq(&self, serial: &str) -> u64 {
        self.spot_by_serial(serial).map_or(0, |s| s.acked_seq)
    }

    /// Takes the spot's pending commands (clearing `config_request` / `firmware_request`).
    pub fn take_commands(&mut self, serial: &str, now: i64) -> Vec<Event> {
        let Some(&id) = self.spot_by_serial.get(serial) else {
            return Vec::new();
        };
        let Some(spot) = self.spots.get_mut(id) else {
            return Vec::new();
        };
        let mut commands = Vec::new();
        if let Some(obj) = spot.config_request.take() {
            commands.push(command_event("config", obj));
        }
        if let Some(obj) = spot.firmware_request.take() {
            commands.push(command_event("firmware", obj));
        }
        if !commands.is_empty() {
            spot.time_updated = now;
            self.dirty.insert((Table::Spots, id));
            self.must_flush = true;
        }
        commands
    }

    /// Applies one upstream event of the spot `serial` (which must have begun a stream or
    /// will be created now).
    pub fn apply_event(&mut self, serial: &str, event: &Event, now: i64) -> Applied {
        self.apply_encoded(serial, event, encode_json(event), now)
    }

    /// [`Domain::apply_event`] with the event's JSON text made by the caller, which the
    /// journal stores: the text as received or [`encode_json`]'s (see
    /// `http::journal_json`); it must decode to `event`.
    pub fn apply_encoded(
        &mut self,
        serial: &str,
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
        if let EventKind::Spot(Action::Create, status) = &event.kind {
            if status.seq_epoch.is_some() && status.seq_epoch != spot.seq_epoch {
                spot.seq_epoch = status.seq_epoch;
                spot.acked_seq = 0;
            }
        }
        if event.seq.is_some_and(|seq| seq <= spot.acked_seq) {
            self.journal_event(serial, spot_id, event.seq, now, event_json, true);
            return Applied::Duplicate;
        }
        // Counted before the event is applied: nothing below reads the counters.
        if let Some(seq) = event.seq {
            spot.acked_seq = spot.acked_seq.max(seq);
        }
        spot.event_counter += 1;
        let report_location = spot.report_location;
        self.dirty.insert((Table::Spots, spot_id));
        match &event.kind {
            EventKind::Spot(Action::Create, status) => {
                let object = event_object(&event_json);
                if let Some(spot) = self.spots.get_mut(spot_id) {
                    spot.status = object;
                    if let Some(v) = &status.version {
                        spot.version = Some(v.clone());
                    }
                    spot.time_updated = now;
                }
            }
            EventKind::Config(action, _) => {
                let object = event_object(&event_json);
                if let Some(spot) = self.spots.get_mut(spot_id) {
                    if *action == Action::Create {
                        spot.config = object;
                    } else {
                        for (k, v) in object {
                            if k != "seq" {
                                spot.config.insert(k, v);
                            }
                        }
                    }
                    spot.time_updated = now;
                }
            }
            EventKind::Presence(action, p) => {
                if let Some(code) = &p.item_code {
                    let tech = p.item_codetype.as_deref().unwrap_or_default();
                    let proximity = p.proximity.unwrap_or(Proximity::Far);
                    let time_event = p.time_last.map(|t| t.0);
                    let item_id = self.ensure_item(code, tech, now, time_event);
                    if let Some(location_id) = report_location {
                        let at = (spot_id, location_id);
                        self.apply_presence(at, *action, item_id, proximity, time_event, now);
                    }
                }
            }
            EventKind::Hit(_, h) => {
                if let Some(code) = &h.item_code {
                    let tech = h.item_codetype.as_deref().unwrap_or_default();
                    self.ensure_item(code, tech, now, h.time.map(|t| t.0));
                }
            }
            _ => {}
        }
        self.journal_event(serial, spot_id, event.seq, now, event_json, false);
        Applied::Stored
    }

    /// Journals an upstream event as received (see [`JournalEntry::Event`]).
    fn journal_event(
        &mut self,
        serial: &str,
        spot_id: Id,
        seq: Option<u64>,
        now: i64,
        event_json: String,
        duplicate: bool,
    ) {
        self.journal.push(JournalEntry::Event {
            row: UpstreamRow {
                serial: serial.to_string(),
                spot_id,
                seq,
                time_received: now,
                event_json,
            },
            duplicate,
        });
    }

    /// Takes spots offline that have no open stream and no traffic for `offline_after`,
    /// deleting the presences they reported; prunes the events log.
    pub fn sweep(&mut self, now: i64) {
        let stale: Vec<Id> = self
            .spots
            .values()
            .filter(|s| {
                s.is_online
                    && s.open_streams == 0
                    && now - s.last_traffic >= self.config.offline_after_ms
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

    /// The cutoff below which stored derived and upstream events may be pruned.
    pub fn retention_cutoff(&self, now: i64) -> i64 {
        now - self.config.events_retention_ms
    }

    /// Changes a resource through the API (`PUT /api/<collection>/<id>`); returns it.
    pub fn put(
        &mut self,
        collection: &str,
        id: &str,
        body: &Object,
        now: i64,
    ) -> Result<Value, PutError> {
        let not_found = || PutError::NotFound {
            collection: collection.to_string(),
            id: id.to_string(),
        };
        let bad = |field: &str, reason: &str| PutError::BadField {
            field: field.to_string(),
            reason: reason.to_string(),
        };
        let (table, real_id) = match collection {
            "spots" => {
                let real_id = self.resolve_spot_id(id).ok_or_else(not_found)?;
                // Validate everything before changing anything.
                for (k, v) in body {
                    match k.as_str() {
                        "config_request" | "firmware_request" | "antenna_report_locations"
                            if v.is_object() || v.is_null() => {}
                        "config_request" | "firmware_request" | "antenna_report_locations" => {
                            return Err(bad(k, "must be an object or null"))
                        }
                        "report_location" => match v.as_str() {
                            Some(l) if self.locations.get_str(l).is_some() => {}
                            _ => return Err(bad(k, "must be the id of an existing location")),
                        },
                        _ => return Err(bad(k, "cannot be set")),
                    }
                }
                let spot = self.spots.get_mut(real_id).ok_or_else(not_found)?;
                for (k, v) in body {
                    match k.as_str() {
                        "config_request" => spot.config_request = v.as_object().cloned(),
                        "firmware_request" => spot.firmware_request = v.as_object().cloned(),
                        "antenna_report_locations" => {
                            spot.antenna_report_locations =
                                v.as_object().cloned().unwrap_or_default()
                        }
                        "report_location" => spot.report_location = v.as_str().and_then(Id::parse),
                        _ => {}
                    }
                }
                spot.time_updated = now;
                (Table::Spots, real_id)
            }
            "locations" | "items" => {
                for (k, v) in body {
                    match k.as_str() {
                        "custom" => {}
                        "label" if v.is_string() || v.is_null() => {}
                        "label" => return Err(bad(k, "must be a string or null")),
                        _ => return Err(bad(k, "cannot be set")),
                    }
                }
                let real_id = Id::parse(id).ok_or_else(not_found)?;
                if collection == "locations" {
                    let l = self.locations.get_mut(real_id).ok_or_else(not_found)?;
                    for (k, v) in body {
                        match k.as_str() {
                            "label" => l.label = v.as_str().unwrap_or_default().to_string(),
                            _ => l.custom = v.clone(),
                        }
                    }
                    l.time_updated = now;
                    (Table::Locations, real_id)
                } else {
                    let i = self.items.get_mut(real_id).ok_or_else(not_found)?;
                    for (k, v) in body {
                        match k.as_str() {
                            "label" => i.label = boxed(v),
                            _ => i.custom = boxed(v),
                        }
                    }
                    i.time_updated = now;
                    (Table::Items, real_id)
                }
            }
            _ => return Err(PutError::MethodNotAllowed(collection.to_string())),
        };
        self.dirty.insert((table, real_id));
        self.must_flush = true;
        let value = self.get(collection, &real_id.hex()).unwrap_or(Value::Null);
        let data = value.to_string();
        let topic = topics::api_change(collection, real_id, "updated", "PUT");
        if let Some((id, mut doc)) = self.log_start(&Topic::Text(&topic), None, now) {
            doc.push_str(&data);
            self.log_end(id, now, doc);
        }
        Ok(value)
    }

    /// Every resource of a collection as JSON, in id order; `None` for an unknown collection.
    pub fn collection(&self, collection: &str) -> Option<Vec<Value>> {
        fn all<T: Serialize>(m: &IdMap<T>) -> Vec<Value> {
            m.values()
                .filter_map(|v| serde_json::to_value(v).ok())
                .collect()
        }
        Some(match collection {
            "spots" => all(&self.spots),
            "locations" => all(&self.locations),
            "items" => all(&self.items),
            "presences" => all(&self.presences),
            "events" => self
                .events
                .iter()
                .filter_map(|e| serde_json::from_str(&e.doc).ok())
                .collect(),
            _ => return None,
        })
    }

    /// One resource as JSON (spots also by serial number).
    pub fn get(&self, collection: &str, id: &str) -> Option<Value> {
        match collection {
            "spots" => self
                .resolve_spot_id(id)
                .and_then(|id| self.spots.get(id))
                .and_then(|v| serde_json::to_value(v).ok()),
            "locations" => self
                .locations
                .get_str(id)
                .and_then(|v| serde_json::to_value(v).ok()),
            "items" => self
                .items
                .get_str(id)
                .and_then(|v| serde_json::to_value(v).ok()),
            "presences" => self
                .presences
                .get_str(id)
                .and_then(|v| serde_json::to_value(v).ok()),
            "events" => Id::parse(id)
                .and_then(|id| self.events.binary_search_by(|e| e.id.cmp(&id)).ok())
                .and_then(|i| serde_json::from_str(&self.events[i].doc).ok()),
            _ => None,
        }
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
    pub fn replay(&mut self, entries: Vec<JournalEntry>) -> Result<(), String> {
        self.replaying = true;
        for entry in entries {
            match entry {
                JournalEntry::Event { row, .. } => match decode_json_event(&row.event_json) {
                    Some(Ok(event)) => {
                        self.apply_encoded(&row.serial, &event, row.event_json, row.time_received);
                    }
                    Some(Err(e)) => {
                        self.replaying = false;
                        return Err(format!(
                            "journal event of spot {} at {}: {e}",
                            row.serial, row.time_received
                        ));
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
        }
        self.replaying = false;
        self.journal.clear();
        // No stream of the crashed run is open in this one.
        for spot in self.spots.values_mut_unordered() {
            spot.open_streams = 0;
        }
        for e in &self.events {
            self.ids.observe_value(e.id.0);
        }
        Ok(())
    }

    /// Whether a change outside the journal happened, so the next commit must flush.
    pub fn must_flush(&self) -> bool {
        self.must_flush
    }

    /// Rows changed since the last flush (a flush writes this many).
    pub fn dirty_rows(&self) -> usize {
        self.dirty.len() + self.deleted.len()
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
            };
            if let Some(doc) = doc {
                changes.upserts.push((table, id, doc));
            }
        }
        changes.deletes = self.deleted.drain().collect();
        changes
    }

    fn resolve_spot_id(&self, id: &str) -> Option<Id> {
        match Id::parse(id) {
            Some(id) if self.spots.contains_key(id) => Some(id),
            _ => self.spot_by_serial.get(id).copied(),
        }
    }

    fn ensure_spot(&mut self, serial: &str, now: i64) -> Id {
        if let Some((last, id)) = &self.last_spot {
            if last == serial {
                return *id;
            }
        }
        if let Some(&id) = self.spot_by_serial.get(serial) {
            match &mut self.last_spot {
                Some((last, last_id)) => {
                    last.clear();
                    last.push_str(serial);
                    *last_id = id;
                }
                None => self.last_spot = Some((serial.to_string(), id)),
            }
            return id;
        }
        let location_id = self.ids.next(now);
        self.locations.insert(
            location_id,
            Location {
                id: location_id,
                label: format!("spot{serial}"),
                custom: Value::Null,
                time_created: now,
                time_updated: now,
            },
        );
        self.dirty.insert((Table::Locations, location_id));
        let id = self.ids.next(now);
        self.spots.insert(
            id,
            Spot {
                id,
                serial_number: serial.to_string(),
                status: Object::new(),
                config: Object::new(),
                is_online: false,
                request_counter: 0,
                event_counter: 0,
                version: None,
                config_request: None,
                firmware_request: None,
                report_location: Some(location_id),
                antenna_report_locations: Object::new(),
                seq_epoch: None,
                acked_seq: 0,
                time_created: now,
                time_updated: now,
                time_last_request: None,
                open_streams: 0,
                last_traffic: now,
            },
        );
        self.spot_by_serial.insert(serial.to_string(), id);
        self.dirty.insert((Table::Spots, id));
        id
    }

    fn touch(&mut self, spot_id: Id, now: i64, time_event: Option<i64>) {
        let Some(spot) = self.spots.get_mut(spot_id) else {
            return;
        };
        spot.last_traffic = now;
        if spot.is_online {
            return;
        }
        spot.is_online = true;
        spot.time_updated = now;
        tracing::info!(spot = %spot.serial_number, "spot connected");
        let topic = topics::spot_connected(spot.id, &spot.serial_number);
        self.dirty.insert((Table::Spots, spot_id));
        self.log_row(Topic::Text(&topic), time_event, now, Table::Spots, spot_id);
    }

    fn go_offline(&mut self, spot_id: Id, now: i64) {
        let Some(spot) = self.spots.get_mut(spot_id) else {
            return;
        };
        self.must_flush = true;
        spot.is_online = false;
        spot.time_updated = now;
        tracing::info!(spot = %spot.serial_number, "spot disconnected (offline)");
        let topic = topics::spot_disconnected(spot.id, &spot.serial_number);
        self.dirty.insert((Table::Spots, spot_id));
        self.log_row(Topic::Text(&topic), None, now, Table::Spots, spot_id);
        let reported: Vec<Id> = self
            .presences
            .values()
            .filter(|p| p.reporters.contains(spot_id))
            .map(|p| p.id)
            .collect();
        for presence_id in reported {
            self.withdraw(spot_id, presence_id, None, now);
        }
    }

    fn ensure_item(&mut self, code: &str, tech: &str, now: i64, time_event: Option<i64>) -> Id {
        let shared = self.technologies.index(tech);
        let key = pack_code(code, shared);
        let hash = code_hash(key, code, tech);
        if let Some(id) = self.find_item(code, tech, key, hash) {
            return id;
        }
        let id = self.ids.next(now);
        let item = Item {
            id,
            code_hex: code.into(),
            technology: self.technologies.get(tech),
            label: None,
            custom: None,
            is_present: false,
            location: None,
            move_count: 0,
            time_moved: None,
            time_created: now,
            time_updated: now,
        };
        self.items.insert(id, item);
        if shared.is_some() {
            self.index_item_at(id, key, hash);
        } else {
            // Its technology may be shared from now on, which changes its key.
            self.index_item(id);
        }
        self.dirty.insert((Table::Items, id));
        self.log_row(Topic::ItemCreated(id), time_event, now, Table::Items, id);
        id
    }

    /// The item with this code and technology.
    fn item_id(&self, code: &str, tech: &str) -> Option<Id> {
        let key = pack_code(code, self.technologies.index(tech));
        self.find_item(code, tech, key, code_hash(key, code, tech))
    }

    /// [`Domain::item_id`] with the code's key and hash ([`pack_code`], [`code_hash`]).
    fn find_item(&self, code: &str, tech: &str, key: u128, hash: u64) -> Option<Id> {
        let items = &self.items;
        self.item_by_code
            .find(hash, |e| {
                e.key == key
                    && (key != 0
                        || items
                            .get(e.id)
                            .is_some_and(|i| *i.code_hex == *code && *i.technology == *tech))
            })
            .map(|e| e.id)
    }

    /// Adds the item (in [`Domain::items`] already, with a code no other item has, its
    /// technology from [`Domain::technologies`]) to [`Domain::item_by_code`].
    fn index_item(&mut self, id: Id) {
        let Some(item) = self.items.get(id) else {
            return;
        };
        let key = pack_code(&item.code_hex, self.technologies.index(&item.technology));
        let hash = code_hash(key, &item.code_hex, &item.technology);
        self.index_item_at(id, key, hash);
    }

    /// [`Domain::index_item`] with the item's key and hash ([`pack_code`], [`code_hash`]).
    fn index_item_at(&mut self, id: Id, key: u128, hash: u64) {
        let items = &self.items;
        self.item_by_code
            .insert_unique(hash, CodeEntry { id, key }, |e| {
                if e.key != 0 {
                    code_hash(e.key, "", "")
                } else {
                    items
                        .get(e.id)
                        .map_or(0, |i| code_hash(0, &i.code_hex, &i.technology))
                }
            });
    }

    /// A presence event of the spot `spot_id`, which reports to `location_id`, about the
    /// item `item_id`.
    fn apply_presence(
        &mut self,
        (spot_id, location_id): (Id, Id),
        action: Action,
        item_id: Id,
        proximity: Proximity,
        time_event: Option<i64>,
        now: i64,
    ) {
        match (action, self.presence_id(item_id, location_id)) {
            (Action::Delete, Some(presence_id)) => {
                self.withdraw(spot_id, presence_id, time_event, now);
            }
            (Action::Delete, None) => {}
            (_, None) => {
                let id = self.ids.next(now);
                let presence = PresenceRes {
                    id,
                    item: item_id,
                    location: location_id,
                    proximity: Prox(proximity),
                    reporters: Reporters::one(spot_id, Prox(proximity)),
                    time_event,
                    time_created: now,
                    time_updated: now,
                };
                self.presences.insert(id, presence);
                self.add_presence_of_item(item_id, location_id, id);
                // A fresh id: never deleted, nothing to take out of `deleted`.
                self.dirty.insert((Table::Presences, id));
                self.log_row(
                    Topic::Presence {
                        id,
                        item: item_id,
                        location: location_id,
                        change: PresenceTopic::Created(proximity),
                    },
                    time_event,
                    now,
                    Table::Presences,
                    id,
                );
                let change = PresenceChange::Stronger(location_id, proximity);
                self.recompute_item(item_id, change, time_event, now);
            }
            (_, Some(presence_id)) => {
                let Some(p) = self.presences.get_mut(presence_id) else {
                    return;
                };
                p.reporters.insert(spot_id, Prox(proximity));
                p.time_event = time_event.or(p.time_event);
                self.dirty.insert((Table::Presences, presence_id));
                self.reproximate(presence_id, time_event, now);
            }
        }
    }

    /// Records the presence of an item at a location in [`Domain::presences_of_item`].
    fn add_presence_of_item(&mut self, item_id: Id, location_id: Id, presence_id: Id) {
        use std::collections::hash_map::Entry;
        match self.presences_of_item.entry(item_id) {
            Entry::Occupied(mut at) => at.get_mut().set(location_id, presence_id),
            Entry::Vacant(at) => {
                let (present, location) = self
                    .items
                    .get(item_id)
                    .map_or((false, None), |i| (i.is_present, i.location));
                at.insert(ItemPresences {
                    first: (location_id, presence_id),
                    more: Vec::new(),
                    present,
                    location,
                });
            }
        }
    }

    /// The spot no longer reports the presence: drop its contribution; delete the presence
    /// when nobody reports it any more.
    fn withdraw(&mut self, spot_id: Id, presence_id: Id, time_event: Option<i64>, now: i64) {
        let Some(p) = self.presences.get_mut(presence_id) else {
            return;
        };
        p.reporters.remove(spot_id);
        if !p.reporters.is_empty() {
            self.dirty.insert((Table::Presences, presence_id));
            self.reproximate(presence_id, time_event, now);
            return;
        }
        let Some(p) = self.presences.remove(presence_id) else {
            return;
        };
        if let Some(at) = self.presences_of_item.get_mut(&p.item) {
            if at.remove(p.location) {
                self.presences_of_item.remove(&p.item);
            }
        }
        self.dirty.remove(&(Table::Presences, presence_id));
        self.deleted.insert((Table::Presences, presence_id));
        let topic = Topic::Presence {
            id: p.id,
            item: p.item,
            location: p.location,
            change: PresenceTopic::Deleted(p.proximity.0),
        };
        if let Some((id, mut doc)) = self.log_start(&topic, time_event, now) {
            p.write_json(&mut doc);
            self.log_end(id, now, doc);
        }
        self.recompute_item(p.item, PresenceChange::Weaker(p.location), time_event, now);
    }

    /// Recomputes a presence's proximity from its reporters; logs a change.
    fn reproximate(&mut self, presence_id: Id, time_event: Option<i64>, now: i64) {
        let Some(p) = self.presences.get_mut(presence_id) else {
            return;
        };
        let strongest = p.reporters.strongest().unwrap_or(Proximity::Far);
        let previous = p.proximity.0;
        p.time_updated = now;
        if strongest == previous {
            return;
        }
        p.proximity = Prox(strongest);
        let topic = Topic::Presence {
            id: p.id,
            item: p.item,
            location: p.location,
            change: PresenceTopic::ChangedProximity(strongest, previous),
        };
        let (item_id, location_id) = (p.item, p.location);
        self.log_row(topic, time_event, now, Table::Presences, presence_id);
        let change = if strongest > previous {
            PresenceChange::Stronger(location_id, strongest)
        } else {
            PresenceChange::Weaker(location_id)
        };
        self.recompute_item(item_id, change, time_event, now);
    }

    /// The presence of an item at a location.
    fn presence_id(&self, item_id: Id, location_id: Id) -> Option<Id> {
        self.presences_of_item.get(&item_id)?.find(location_id)
    }

    /// The location of the item's strongest presence (ties: the latest updated, then the
    /// latest created: a total order, so the order of the presences does not matter).
    fn strongest_location(&self, item_id: Id) -> Option<Id> {
        self.presences_of_item.get(&item_id).and_then(|at| {
            at.iter()
                .filter_map(|(_, id)| self.presences.get(*id))
                .max_by(|a, b| {
                    a.proximity
                        .cmp(&b.proximity)
                        .then(a.time_updated.cmp(&b.time_updated))
                        .then(a.id.cmp(&b.id))
                })
                .map(|p| p.location)
        })
    }

    /// Item `location` = location of its strongest presence; `is_present`; moves.
    ///
    /// Incremental: a presence that appeared or got stronger takes the item when it is at
    /// least as strong as the presence where the item is; only when the presence holding
    /// the item weakens or goes are all of the item's presences compared. Where the item is
    /// comes from its [`ItemPresences`] while it has any: an event that leaves the item where
    /// it is (most do) does not read the item.
    fn recompute_item(
        &mut self,
        item_id: Id,
        change: PresenceChange,
        time_event: Option<i64>,
        now: i64,
    ) {
        let (present, location) = match self.presences_of_item.get(&item_id) {
            Some(at) => (at.present, at.location),
            None => match self.items.get(item_id) {
                Some(item) => (item.is_present, item.location),
                None => return,
            },
        };
        let current = location.filter(|_| present);
        let strongest = match change {
            PresenceChange::Stronger(location, proximity) => {
                if current == Some(location) {
                    return;
                }
                let holder = current
                    .and_then(|l| self.presence_id(item_id, l))
                    .and_then(|id| self.presences.get(id));
                match holder {
                    Some(h) if h.proximity.0 > proximity => return,
                    Some(_) => Some(location),
                    None => self.strongest_location(item_id),
                }
            }
            PresenceChange::Weaker(location) => {
                if current.is_some() && current != Some(location) {
                    return;
                }
                self.strongest_location(item_id)
            }
        };
        let unchanged = match strongest {
            Some(l) => present && location == Some(l),
            None => !present,
        };
        if unchanged {
            return;
        }
        let Some(item) = self.items.get_mut(item_id) else {
            return;
        };
        // At most two: appeared, then moved.
        let mut topics: [Option<Topic>; 2] = [None, None];
        match strongest {
            Some(location) => {
                if !item.is_present {
                    item.is_present = true;
                    topics[0] = Some(Topic::ItemAppeared(item_id));
                }
                if item.location != Some(location) {
                    if item.location.is_some() {
                        item.move_count += 1;
                        item.time_moved = Some(now);
                        topics[1] = Some(Topic::ItemMovedTo(item_id, location));
                    }
                    item.location = Some(location);
                }
            }
            None => {
                if item.is_present {
                    item.is_present = false;
                    topics[0] = Some(Topic::ItemDisappeared(item_id));
                }
            }
        }
        if topics.iter().all(Option::is_none) {
            return;
        }
        item.time_updated = now;
        let (present, location) = (item.is_present, item.location);
        if let Some(at) = self.presences_of_item.get_mut(&item_id) {
            (at.present, at.location) = (present, location);
        }
        self.dirty.insert((Table::Items, item_id));
        for topic in topics.into_iter().flatten() {
            self.log_row(topic, time_event, now, Table::Items, item_id);
        }
    }

    /// Logs a derived event whose data is the row `row` of `table` as it is now.
    fn log_row(&mut self, topic: Topic, time_event: Option<i64>, now: i64, table: Table, row: Id) {
        fn write<T: Doc>(doc: &mut String, row: Option<&T>) {
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
        }
        self.log_end(id, now, doc);
    }

    /// Takes the id of a derived event and starts its document ([`log_doc_head`]); the
    /// caller writes the data into it and hands it to [`Domain::log_end`]. `None` in a replay:
    /// the event is stored already, with the journal entry that caused it; only the id is
    /// taken again, so that what follows gets the ids it had.
    fn log_start(
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
    fn log_end(&mut self, id: Id, now: i64, mut doc: String) {
        doc.push('}');
        // The events log in memory keeps a copy of the exact size (it keeps many); the
        // document itself, with room to spare, is written and dropped by the writer.
        self.events.push_back(Logged {
            id,
            time_created: now,
            doc: doc.as_str().into(),
        });
        self.pending_log.push((now, doc));
        while self.events.len() > self.config.events_max_in_memory {
            self.events.pop_front();
        }
    }
}

/// The presences of an item, one per location (most items are at one: the first is kept
/// inline), and a copy of the item's `is_present` and `location`, kept equal to the item's
/// by [`Domain::recompute_item`] (the only place they change while the item has presences),
/// so that an event that leaves the item where it is needs not read the item.
#[derive(Debug, Clone)]
struct ItemPresences {
    /// (location id, presence id).
    first: (Id, Id),
    /// The others, in no particular order.
    more: Vec<(Id, Id)>,
    /// The item's `is_present`.
    present: bool,
    /// The item's `location`.
    location: Option<Id>,
}

impl ItemPresences {
    /// Every (location id, presence id).
    fn iter(&self) -> impl Iterator<Item = &(Id, Id)> {
        std::iter::once(&self.first).chain(&self.more)
    }

    /// The presence at this location.
    fn find(&self, location: Id) -> Option<Id> {
        self.iter().find(|(l, _)| *l == location).map(|(_, p)| *p)
    }

    /// Sets the presence at this location.
    fn set(&mut self, location: Id, presence: Id) {
        match std::iter::once(&mut self.first)
            .chain(&mut self.more)
            .find(|(l, _)| *l == location)
        {
            Some(entry) => entry.1 = presence,
            None => self.more.push((location, presence)),
        }
    }

    /// Drops the presence at this location; true when none is left.
    fn remove(&mut self, location: Id) -> bool {
        if self.first.0 == location {
            match self.more.pop() {
                Some(last) => self.first = last,
                None => return true,
            }
        } else {
            self.more.retain(|(l, _)| *l != location);
        }
        false
    }
}

/// An entry of [`Domain::item_by_code`]: the item's id and, where they fit, its code and
/// technology packed into an integer ([`pack_code`]), so that finding an item compares them
/// in the table, without reading the item (each read of it is a cache miss).
#[derive(Debug, Clone, Copy)]
struct CodeEntry {
    id: Id,
    /// [`pack_code`] of the item's code and technology; 0: they do not fit, compare the item.
    key: u128,
}

/// A code of at most 28 hex digits, all letters of one case, of a shared technology (its
/// [`Technologies::index`]), packed into an integer that is equal only for the same code
/// text and technology: digits, technology, case, length. 0 for any other.
fn pack_code(code: &str, tech: Option<u8>) -> u128 {
    let Some(tech) = tech else {
        return 0;
    };
    let bytes = code.as_bytes();
    if bytes.is_empty() || bytes.len() > 28 {
        return 0;
    }
    let mut digits = 0u128;
    let Some(upper) = spot_protocol::hex::one_case_hex(bytes, |digit| {
        digits = (digits << 4) | u128::from(digit);
    }) else {
        return 0;
    };
    (digits << 16) | (u128::from(tech) << 8) | (u128::from(upper) << 7) | bytes.len() as u128
}

/// The hash of an item's code and technology in [`Domain::item_by_code`]: of the packed
/// key where there is one ([`pack_code`]), of the text otherwise.
fn code_hash(key: u128, code: &str, tech: &str) -> u64 {
    use std::hash::BuildHasher;
    if key != 0 {
        rustc_hash::FxBuildHasher.hash_one(key)
    } else {
        rustc_hash::FxBuildHasher.hash_one((code, tech))
    }
}

/// A JSON value as an optional field (`null`: none).
fn boxed(value: &Value) -> Option<Box<Value>> {
    match value {
        Value::Null => None,
        v => Some(Box::new(v.clone())),
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

/// The JSON document of a resource: what `serde_json::to_string` writes. Items and presences
/// change with nearly every upstream event, so theirs is written directly (the field names
/// need no escaping, ids and times none either); tests pin it to serde's text.
trait Doc: Serialize {
    /// Appends the document to `doc`.
    fn write_json(&self, doc: &mut String) {
        match to_json(self) {
            Ok(text) => doc.push_str(&text),
            Err(_) => doc.push_str("null"),
        }
    }

    /// The document (tests compare it with serde's).
    #[cfg(test)]
    fn json(&self) -> String {
        let mut doc = String::new();
        self.write_json(&mut doc);
        doc
    }
}

impl Doc for Spot {}

impl Doc for Location {}

impl Doc for Item {
    fn write_json(&self, doc: &mut String) {
        doc.reserve(320 + self.code_hex.len());
        doc.push_str("{\"id\":\"");
        self.id.push_hex(doc);
        doc.push_str("\",\"code_hex\":");
        push_json_str(doc, &self.code_hex);
        doc.push_str(",\"technology\":");
        push_json_str(doc, &self.technology);
        doc.push_str(",\"label\":");
        push_json_value(doc, self.label.as_deref());
        doc.push_str(",\"custom\":");
        push_json_value(doc, self.custom.as_deref());
        doc.push_str(if self.is_present {
            ",\"is_present\":true,\"location\":"
        } else {
            ",\"is_present\":false,\"location\":"
        });
        push_opt_id(doc, self.location);
        doc.push_str(",\"move_count\":");
        doc.push_str(itoa_u64(&mut [0u8; 20], self.move_count));
        doc.push_str(",\"time_moved\":");
        push_opt_time(doc, self.time_moved);
        doc.push_str(",\"time_created\":");
        push_time(doc, self.time_created);
        doc.push_str(",\"time_updated\":");
        push_time(doc, self.time_updated);
        doc.push('}');
    }
}

impl Doc for PresenceRes {
    fn write_json(&self, doc: &mut String) {
        doc.reserve(240 + 30 * self.reporters.len());
        doc.push_str("{\"id\":\"");
        self.id.push_hex(doc);
        doc.push_str("\",\"item\":\"");
        self.item.push_hex(doc);
        doc.push_str("\",\"location\":\"");
        self.location.push_hex(doc);
        doc.push_str("\",\"proximity\":");
        push_json_str(doc, self.proximity.0.as_str());
        doc.push_str(",\"reporters\":{");
        for (n, (spot, proximity)) in self.reporters.iter().enumerate() {
            if n > 0 {
                doc.push(',');
            }
            doc.push('"');
            spot.push_hex(doc);
            doc.push_str("\":");
            push_json_str(doc, proximity.0.as_str());
        }
        doc.push_str("},\"time_event\":");
        push_opt_time(doc, self.time_event);
        doc.push_str(",\"time_created\":");
        push_time(doc, self.time_created);
        doc.push_str(",\"time_updated\":");
        push_time(doc, self.time_updated);
        doc.push('}');
    }
}

/// An optional id as JSON.
fn push_opt_id(doc: &mut String, id: Option<Id>) {
    match id {
        Some(id) => {
            doc.push('"');
            id.push_hex(doc);
            doc.push('"');
        }
        None => doc.push_str("null"),
    }
}

/// A time as JSON, as [`iso`] writes it. The text up to the second is remembered for several
/// seconds: the times written one after the other are mostly of a few seconds (`now`, device
/// times a little behind it, the last sighting of an item that left a few seconds ago).
fn push_time(doc: &mut String, ms: i64) {
    /// Seconds remembered.
    const SECONDS: usize = 8;
    /// Seconds (Unix) and their text `YYYY-MM-DDTHH:MM:SS`, and the next one to replace.
    type Cache = ([(i64, String); SECONDS], usize);
    thread_local! {
        static CACHE: std::cell::RefCell<Cache> = const {
            std::cell::RefCell::new(([const { (i64::MIN, String::new()) }; SECONDS], 0))
        };
    }
    let (second, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000) as u32);
    let cached = CACHE.with_borrow_mut(|(seconds, next)| {
        let at = match seconds.iter().position(|(s, _)| *s == second) {
            Some(at) => at,
            None => {
                let mut buf = [0u8; 24];
                let Some(formatted) = spot_protocol::Timestamp(second * 1000).format_into(&mut buf)
                else {
                    return false;
                };
                let at = *next;
                *next = (at + 1) % SECONDS;
                let (cached, text) = &mut seconds[at];
                text.clear();
                text.push_str(&formatted[..19]);
                *cached = second;
                at
            }
        };
        doc.push('"');
        doc.push_str(&seconds[at].1);
        true
    });
    if !cached {
        return push_json_str(doc, &spot_protocol::Timestamp(ms).to_string());
    }
    if millis != 0 {
        doc.push('.');
        for digit in [millis / 100, millis / 10 % 10, millis % 10] {
            doc.push(char::from(b'0' + digit as u8));
        }
    }
    doc.push_str("Z\"");
}

/// An optional time as JSON, as [`iso::opt`] writes it.
fn push_opt_time(doc: &mut String, ms: Option<i64>) {
    match ms {
        Some(ms) => push_time(doc, ms),
        None => doc.push_str("null"),
    }
}

/// An optional JSON value as serde_json writes it (`null` without the serializer).
fn push_json_value(doc: &mut String, value: Option<&Value>) {
    match value {
        None | Some(Value::Null) => doc.push_str("null"),
        Some(Value::String(text)) => push_json_str(doc, text),
        Some(other) => doc.push_str(&other.to_string()),
    }
}

/// The decimal digits of `v`, written in `buf`.
fn itoa_u64(buf: &mut [u8; 20], mut v: u64) -> &str {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[start..]).unwrap_or("0")
}

/// The JSON document of a [`LogEvent`], written directly (the same text serde writes; the
/// resource is JSON already).
#[cfg(test)]
fn log_doc(
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
fn log_doc_head(
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

/// `text` as a JSON string, as serde_json writes it (quoted as is when nothing needs escaping).
fn push_json_str(doc: &mut String, text: &str) {
    // Without an early exit the check vectorizes (topics, codes: tens of bytes).
    let plain = !text.bytes().fold(false, |bad, b| {
        bad | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        doc.push('"');
        doc.push_str(text);
        doc.push('"');
    } else {
        doc.push_str(&Value::from(text).to_string());
    }
}

/// `serde_json::to_string` (which needs no UTF-8 check of what it wrote; a fresh large
/// buffer per row cost more in page faults than the few regrowths).
fn to_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string(value)
}

/// The object of an encoded event (`["r","a",{obj}]`), via serde_json.
fn event_object(encoded: &str) -> Object {
    match serde_json::from_str::<Value>(encoded) {
        Ok(Value::Array(mut parts)) if parts.len() == 3 => match parts.pop() {
            Some(Value::Object(mut o)) => {
                o.remove("seq");
                o
            }
            _ => Object::new(),
        },
        _ => Object::new(),
    }
}

fn trim_separator(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && bytes[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    &bytes[..end]
}

/// A downstream command (`<resource> update`) with the given object, typed by the codec.
fn command_event(resource: &str, object: Object) -> Event {
    let text = json!([resource, "update", Value::Object(object.clone())]).to_string();
    match decode_json_event(&text) {
        Some(Ok(event)) => event,
        _ => Event::new(EventKind::Other(spot_protocol::OtherEvent {
            resource_type: resource.to_string(),
            action: "update".to_string(),
            object,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spot_protocol::{Presence, SpotStatus};

    const T0: i64 = 1_700_000_000_000;

    fn presence(action: Action, code: &str, proximity: Proximity) -> Event {
        Event::new(EventKind::Presence(
            action,
            Presence {
                item_code: Some(code.into()),
                item_codetype: Some("EPC Gen2".into()),
                proximity: Some(proximity),
                ..Presence::default()
            },
        ))
    }

    /// Loads a flush's rows into `d`, as a restart loads `state.db`.
    fn load_rows(d: &mut Domain, flush: &Changes) {
        for table in Table::ALL {
            let rows = flush
                .upserts
                .iter()
                .filter(|(t, _, _)| *t == table)
                .map(|(_, id, doc)| (id.text(), doc.to_json()))
                .collect();
            d.load(table, rows, T0).unwrap();
        }
    }

    fn topics(d: &Domain) -> Vec<String> {
        d.events
            .iter()
            .map(|e| serde_json::from_str::<LogEvent>(&e.doc).unwrap().topic)
            .collect()
    }

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

    #[test]
    fn times_are_written_as_serde_writes_them() {
        let times = [
            T0,
            T0 + 4,
            T0,
            0,
            -1,
            4,
            253_402_300_800_000,
            -62_167_219_200_001,
            T0 + 1000,
            T0 + 1001,
            T0 + 1010,
            T0 + 1100,
            T0 + 1999,
            T0 + 2000,
        ];
        // And runs of nearby times (the same second, the next, …) anywhere in 0000–9999.
        let mut random = Vec::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Years 0000–9999 and a little beyond.
            let (low, high) = (-62_167_219_300_000i64, 253_402_300_900_000i64);
            let base = low + (x % (high - low) as u64) as i64;
            for step in [0, 1, 999, 1000, 1, 60_000, 86_400_000] {
                random.push(base + step);
            }
        }
        for ms in times.iter().chain(times.iter().rev()).chain(&random) {
            let mut doc = String::new();
            push_time(&mut doc, *ms);
            let mut opt = String::new();
            push_opt_time(&mut opt, Some(*ms));
            let expected = serde_json::to_string(&TimeField { t: *ms }).unwrap();
            assert_eq!(format!("{{\"t\":{doc}}}"), expected);
            assert_eq!(doc, opt);
        }

        #[derive(Serialize)]
        struct TimeField {
            #[serde(with = "iso")]
            t: i64,
        }
    }

    #[test]
    fn items_and_presences_are_written_as_serde_writes_them() {
        let odd = "q\"uo\\te \u{1} \u{e9} \u{2028} /";
        let times = [
            T0,
            0,
            -1,
            253_402_300_800_000,
            -62_167_219_200_001,
            i64::MAX / 4,
        ];
        for (n, &time) in times.iter().enumerate() {
            let item = Item {
                id: Id(0xabcdef0123456789 + n as u64),
                code_hex: if n % 2 == 0 {
                    "00000000000000000000000a".into()
                } else {
                    odd.into()
                },
                technology: if n % 3 == 0 {
                    "EPC Gen2".into()
                } else {
                    odd.into()
                },
                label: [
                    None,
                    Some(json!("L\n")),
                    Some(json!(1.5)),
                    Some(json!([1, {"z": 1, "a": null}])),
                ][n % 4]
                    .clone()
                    .map(Box::new),
                custom: [
                    Some(json!({"b": [true], "a": "\t"})),
                    Some(Value::Null),
                    Some(json!(-3)),
                    Some(json!("x")),
                ][n % 4]
                    .clone()
                    .map(Box::new),
                is_present: n % 2 == 1,
                location: [None, Some(Id(7))][n % 2],
                move_count: [0, 1, 9, 10, 12345, u64::MAX][n],
                time_moved: [None, Some(time)][n % 2],
                time_created: time,
                time_updated: T0 + n as i64,
            };
            assert_eq!(item.json(), serde_json::to_string(&item).unwrap());
            let presence = PresenceRes {
                id: Id(n as u64),
                item: Id(u64::MAX - n as u64),
                location: Id(0x10),
                proximity: Prox([Proximity::Far, Proximity::Near, Proximity::Immediate][n % 3]),
                reporters: (0..n as u64)
                    .map(|r| {
                        (
                            Id(r * 0x1111),
                            Prox([Proximity::Near, Proximity::Far][r as usize % 2]),
                        )
                    })
                    .collect(),
                time_event: [Some(time), None][n % 2],
                time_created: T0,
                time_updated: time,
            };
            assert_eq!(presence.json(), serde_json::to_string(&presence).unwrap());
        }
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

    fn item(d: &Domain, code: &str) -> Item {
        d.items
            .values()
            .find(|i| *i.code_hex == *code)
            .unwrap()
            .clone()
    }

    fn location_of(d: &Domain, serial: &str) -> Id {
        d.spot_by_serial(serial).unwrap().report_location.unwrap()
    }

    #[test]
    fn an_item_is_one_per_code_and_technology_and_items_share_their_technology_text() {
        let mut d = Domain::new(DomainConfig::default());
        let hit = |code: &str, tech: &str| {
            Event::new(EventKind::Hit(
                Action::Create,
                spot_protocol::Hit {
                    item_code: Some(code.into()),
                    item_codetype: Some(tech.into()),
                    ..Default::default()
                },
            ))
        };
        let mut codes: Vec<(String, String)> = [
            ("0a", "EPC Gen2"),
            ("0b", "EPC Gen2"),
            ("0a", "ISO 15693"),
            ("0A", "EPC Gen2"),
            ("00a", "EPC Gen2"),
            ("a", "EPC Gen2"),
            ("aA", "EPC Gen2"),
            ("Aa", "EPC Gen2"),
            ("x-1", "EPC Gen2"),
            ("", "EPC Gen2"),
            ("0a", ""),
        ]
        .iter()
        .map(|(c, t)| (c.to_string(), t.to_string()))
        .collect();
        for digits in [27, 28, 29, 40] {
            codes.push(("f".repeat(digits), "EPC Gen2".into()));
            codes.push(("F".repeat(digits), "EPC Gen2".into()));
        }
        // More technologies than are shared.
        for t in 0..Technologies::MAX + 3 {
            codes.push(("0a".into(), format!("tech {t}")));
        }
        for round in 0..2 {
            for (code, tech) in &codes {
                d.apply_event("1", &hit(code, tech), T0 + round);
            }
        }
        let items: Vec<Item> = d.items.values().cloned().collect();
        assert_eq!(items.len(), codes.len(), "one item per code and technology");
        for ((code, tech), item) in codes.iter().zip(&items) {
            assert_eq!((&*item.code_hex, &*item.technology), (&**code, &**tech));
            assert_eq!(d.item_id(code, tech), Some(item.id), "{code:?} {tech:?}");
        }
        assert!(Arc::ptr_eq(&items[0].technology, &items[1].technology));
        assert_eq!(d.item_id("0a", "EPC"), None);
        assert_eq!(d.item_id("000a", "EPC Gen2"), None);

        // The same after loading the rows into a new domain.
        let mut loaded = Domain::new(DomainConfig::default());
        load_rows(&mut loaded, &d.take_changes(true));
        for ((code, tech), item) in codes.iter().zip(&items) {
            assert_eq!(
                loaded.item_id(code, tech),
                Some(item.id),
                "{code:?} {tech:?}"
            );
        }
    }

    #[test]
    fn a_spot_is_created_on_first_sight_with_its_own_location() {
        let mut d = Domain::new(DomainConfig::default());
        d.begin_stream("203", Some("35-42"), T0);
        let spot = d.spot_by_serial("203").unwrap().clone();
        assert_eq!(spot.request_counter, 1);
        assert_eq!(spot.version.as_deref(), Some("35-42"));
        assert!(spot.is_online);
        let location = d.locations.get(spot.report_location.unwrap()).unwrap();
        assert_eq!(location.label, "spot203");
        assert!(spot.id > location.id, "ids are chronological");
        assert_eq!(topics(&d), vec![format!("spots/{}/connected/203", spot.id)]);
    }

    #[test]
    fn presences_merge_per_location_the_strongest_wins_and_deletion_needs_every_reporter() {
        let mut d = Domain::new(DomainConfig::default());
        d.begin_stream("1", None, T0);
        d.begin_stream("2", None, T0);
        let shared = location_of(&d, "1");
        let mut body = Object::new();
        body.insert("report_location".into(), shared.to_string().into());
        d.put("spots", "2", &body, T0).unwrap();
        let code = "00000000000000000000000a";
        d.apply_event("1", &presence(Action::Create, code, Proximity::Far), T0);
        d.apply_event(
            "2",
            &presence(Action::Create, code, Proximity::Immediate),
            T0,
        );
        assert_eq!(d.presences.len(), 1);
        let p = d.presences.values().next().unwrap().clone();
        assert_eq!(p.proximity.0, Proximity::Immediate);
        assert_eq!(p.location, shared);
        d.apply_event(
            "2",
            &presence(Action::Delete, code, Proximity::Immediate),
            T0 + 1,
        );
        let p = d
            .presences
            .values()
            .next()
            .expect("spot 1 still reports it");
        assert_eq!(p.proximity.0, Proximity::Far);
        assert!(item(&d, code).is_present);
        d.apply_event("1", &presence(Action::Delete, code, Proximity::Far), T0 + 2);
        assert!(d.presences.is_empty());
        let i = item(&d, code);
        assert!(!i.is_present);
        assert_eq!(i.location, Some(shared));
        let t = topics(&d);
        assert!(
            t.iter()
                .any(|t| t.contains("/changed-proximity/")
                    && t.ends_with("/far/immediate/moved-away")),
            "{t:?}"
        );
        assert!(t.last().unwrap().ends_with("/disappeared"));
    }

    #[test]
    fn an_item_moves_to_the_location_of_its_strongest_presence() {
        let mut d = Domain::new(DomainConfig::default());
        let code = "00000000000000000000000b";
        d.apply_event("1", &presence(Action::Create, code, Proximity::Near), T0);
        assert_eq!(item(&d, code).location, Some(location_of(&d, "1")));
        d.apply_event(
            "2",
            &presence(Action::Create, code, Proximity::Immediate),
            T0 + 5,
        );
        let i = item(&d, code);
        let to = location_of(&d, "2");
        assert_eq!(i.location, Some(to));
        assert_eq!(i.move_count, 1);
        assert_eq!(i.time_moved, Some(T0 + 5));
        assert!(topics(&d).contains(&format!("items/{}/moved-to/{to}", i.id)));
    }

    #[test]
    fn an_item_follows_its_strongest_presence_when_the_holder_weakens_or_goes() {
        let mut d = Domain::new(DomainConfig::default());
        let code = "000000000000000000000010";
        d.apply_event("1", &presence(Action::Create, code, Proximity::Near), T0);
        let (l1, l2) = (location_of(&d, "1"), {
            d.begin_stream("2", None, T0);
            location_of(&d, "2")
        });
        d.apply_event("2", &presence(Action::Create, code, Proximity::Far), T0 + 1);
        assert_eq!(item(&d, code).location.as_ref(), Some(&l1), "a weaker one");
        d.apply_event(
            "2",
            &presence(Action::Update, code, Proximity::Immediate),
            T0 + 2,
        );
        assert_eq!(
            item(&d, code).location.as_ref(),
            Some(&l2),
            "a stronger one"
        );
        d.apply_event("1", &presence(Action::Update, code, Proximity::Far), T0 + 3);
        assert_eq!(
            item(&d, code).location.as_ref(),
            Some(&l2),
            "another weakens"
        );
        d.apply_event("2", &presence(Action::Update, code, Proximity::Far), T0 + 4);
        assert_eq!(
            item(&d, code).location.as_ref(),
            Some(&l2),
            "equally strong: the latest updated"
        );
        d.apply_event(
            "1",
            &presence(Action::Update, code, Proximity::Near),
            T0 + 5,
        );
        d.apply_event(
            "2",
            &presence(Action::Update, code, Proximity::Near),
            T0 + 6,
        );
        assert_eq!(item(&d, code).location.as_ref(), Some(&l2));
        d.apply_event("2", &presence(Action::Update, code, Proximity::Far), T0 + 7);
        assert_eq!(
            item(&d, code).location.as_ref(),
            Some(&l1),
            "the holder weakens below another"
        );
        d.apply_event(
            "1",
            &presence(Action::Delete, code, Proximity::Near),
            T0 + 8,
        );
        let i = item(&d, code);
        assert_eq!(i.location.as_ref(), Some(&l2), "the holder goes");
        assert!(i.is_present);
        d.apply_event("2", &presence(Action::Delete, code, Proximity::Far), T0 + 9);
        let i = item(&d, code);
        assert!(!i.is_present);
        assert_eq!(i.location.as_ref(), Some(&l2), "the last known location");
        assert_eq!(i.move_count, 5, "L2, L1, L2, L1, L2");
    }

    #[test]
    fn a_silent_spot_goes_offline_and_its_presences_are_withdrawn() {
        let mut d = Domain::new(DomainConfig::default());
        let code = "00000000000000000000000c";
        d.begin_stream("1", None, T0);
        d.apply_event("1", &presence(Action::Create, code, Proximity::Near), T0);
        d.sweep(T0 + 60_000);
        assert!(
            d.spot_by_serial("1").unwrap().is_online,
            "an open stream keeps it online"
        );
        d.end_stream("1", T0 + 1_000, true);
        d.sweep(T0 + 10_999);
        assert!(d.spot_by_serial("1").unwrap().is_online, "not yet 10 s");
        d.sweep(T0 + 11_000);
        let spot = d.spot_by_serial("1").unwrap().clone();
        assert!(!spot.is_online);
        assert!(d.presences.is_empty());
        assert!(!item(&d, code).is_present);
        assert!(topics(&d).contains(&format!("spots/{}/disconnected/1", spot.id)));
        let changes = d.take_changes(true);
        assert_eq!(changes.deletes.len(), 1, "the presence row is deleted");
    }

    #[test]
    fn replays_are_dropped_until_the_epoch_changes() {
        let mut d = Domain::new(DomainConfig::default());
        let create = |epoch| {
            Event::new(EventKind::Spot(
                Action::Create,
                SpotStatus {
                    spot_id: Some("5".into()),
                    seq_epoch: Some(epoch),
                    ..SpotStatus::default()
                },
            ))
        };
        let mut p = presence(Action::Create, "00000000000000000000000d", Proximity::Far);
        p.seq = Some(3);
        assert_eq!(d.apply_event("5", &create(1), T0), Applied::Stored);
        assert_eq!(d.apply_event("5", &p, T0), Applied::Stored);
        assert_eq!(d.apply_event("5", &p, T0), Applied::Duplicate);
        assert_eq!(d.acked_seq("5"), 3);
        assert_eq!(d.apply_event("5", &create(2), T0), Applied::Stored);
        assert_eq!(d.acked_seq("5"), 0);
        assert_eq!(d.apply_event("5", &p, T0), Applied::Stored);
        let changes = d.take_changes(true);
        assert_eq!(changes.upstream().count(), 4, "the replay is not stored");
        assert_eq!(d.spot_by_serial("5").unwrap().event_counter, 4);
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
        log.extend(flushed.log.iter().map(|(_, doc)| doc.clone()));
        let mut journal = Vec::new();
        for i in 20..60 {
            step(&mut original, i);
            let changes = original.take_changes(false);
            assert!(
                !changes.flush && changes.upserts.is_empty(),
                "no flush was due"
            );
            journal.extend(changes.journal);
            log.extend(changes.log.iter().map(|(_, doc)| doc.clone()));
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

    /// Checks what [`ItemPresences`] keeps against what it is kept for: an entry per item with
    /// presences, holding each of them, and the item's own `is_present` and `location`; an
    /// item is present exactly while it has presences, at the location of a strongest one.
    fn assert_item_presences_agree(d: &Domain, context: &str) {
        for item in d.items.values() {
            let presences: Vec<&PresenceRes> =
                d.presences.values().filter(|p| p.item == item.id).collect();
            let Some(at) = d.presences_of_item.get(&item.id) else {
                assert!(presences.is_empty(), "{context}: {presences:?} not indexed");
                assert!(!item.is_present, "{context}: present without presences");
                continue;
            };
            let mut indexed: Vec<(Id, Id)> = at.iter().copied().collect();
            indexed.sort();
            let mut expected: Vec<(Id, Id)> =
                presences.iter().map(|p| (p.location, p.id)).collect();
            expected.sort();
            assert_eq!(indexed, expected, "{context}: presences of {}", item.id);
            assert_eq!(
                (at.present, at.location),
                (item.is_present, item.location),
                "{context}: the copy of item {}",
                item.id
            );
            assert!(item.is_present, "{context}: presences but not present");
            let strongest = presences.iter().map(|p| p.proximity).max();
            assert!(
                presences
                    .iter()
                    .any(|p| Some(p.location) == item.location && Some(p.proximity) == strongest),
                "{context}: item {} is not at a strongest presence",
                item.id
            );
        }
    }

    #[test]
    fn an_items_presences_and_its_place_stay_in_step_with_the_item_through_any_events() {
        let mut d = Domain::new(DomainConfig::default());
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        for i in 0..3_000i64 {
            let now = T0 + i * 10;
            if next(200) == 0 {
                // Every spot silent: offline, their presences withdrawn.
                d.sweep(now + 60_000);
            } else {
                let serial = (1 + next(4)).to_string();
                let code = format!("{:024x}", next(6));
                let action = [Action::Create, Action::Update, Action::Delete][next(3) as usize];
                let proximity =
                    [Proximity::Far, Proximity::Near, Proximity::Immediate][next(3) as usize];
                d.apply_event(&serial, &presence(action, &code, proximity), now);
            }
            assert_item_presences_agree(&d, &format!("step {i}"));
            if i % 500 == 499 {
                let flushed = d.take_changes(true);
                let mut loaded = Domain::new(DomainConfig::default());
                load_rows(&mut loaded, &flushed);
                assert_item_presences_agree(&loaded, &format!("loaded at step {i}"));
                d = loaded;
            }
        }
        assert!(d.presences.len() > 1 && d.items.values().any(|i| i.move_count > 0));
    }

    #[test]
    fn item_presences_keep_each_location_once_whichever_goes_first() {
        let (a, b, c) = ((Id(1), Id(10)), (Id(2), Id(20)), (Id(3), Id(30)));
        let mut at = ItemPresences {
            first: a,
            more: Vec::new(),
            present: true,
            location: Some(a.0),
        };
        at.set(b.0, b.1);
        at.set(c.0, c.1);
        at.set(b.0, Id(21));
        assert_eq!(at.find(b.0), Some(Id(21)), "replaced, not added");
        assert_eq!(at.iter().count(), 3);
        assert!(!at.remove(a.0), "the first goes, another takes its place");
        assert_eq!(at.find(a.0), None);
        assert_eq!(at.find(c.0), Some(c.1));
        assert!(!at.remove(Id(99)), "no presence there: nothing changes");
        assert!(!at.remove(Id(2)));
        assert_eq!(at.iter().copied().collect::<Vec<_>>(), vec![c]);
        assert!(at.remove(c.0), "the last one");
    }

    #[test]
    fn reporters_are_a_map_by_spot_id_in_id_order_whichever_spot_comes_or_goes_first() {
        let proximities = [Proximity::Far, Proximity::Near, Proximity::Immediate];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut reporters = Reporters::default();
        let mut model = BTreeMap::new();
        for step in 0..5_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let spot = Id((x >> 40) % 6);
            if (x >> 20).is_multiple_of(3) {
                reporters.remove(spot);
                model.remove(&spot);
            } else {
                let p = Prox(proximities[((x >> 30) % 3) as usize]);
                reporters.insert(spot, p);
                model.insert(spot, p);
            }
            let expected: Vec<(Id, Prox)> = model.iter().map(|(s, p)| (*s, *p)).collect();
            assert_eq!(
                reporters.iter().copied().collect::<Vec<_>>(),
                expected,
                "{step}"
            );
            assert_eq!(reporters.len(), model.len());
            assert_eq!(reporters.is_empty(), model.is_empty());
            assert_eq!(reporters.contains(spot), model.contains_key(&spot));
            assert_eq!(reporters.strongest(), model.values().map(|p| p.0).max());
            assert_eq!(
                reporters,
                expected.iter().copied().collect::<Reporters>(),
                "one form per content"
            );
            let json = serde_json::to_string(&reporters).unwrap();
            assert_eq!(json, serde_json::to_string(&model).unwrap());
            assert_eq!(serde_json::from_str::<Reporters>(&json).unwrap(), reporters);
        }
    }

    #[test]
    fn events_of_interleaved_spots_count_on_their_own_spot() {
        let mut d = Domain::new(DomainConfig::default());
        let serials = ["1", "2", "2", "10", "1", "2", "10", "10", "10"];
        for (i, serial) in serials.iter().enumerate() {
            let code = format!("{i:024x}");
            d.apply_event(
                serial,
                &presence(Action::Create, &code, Proximity::Near),
                T0,
            );
        }
        for (serial, n) in [("1", 2), ("2", 3), ("10", 4)] {
            let spot = d.spot_by_serial(serial).unwrap();
            assert_eq!(spot.event_counter, n, "spot {serial}");
            let at = d
                .presences
                .values()
                .filter(|p| Some(p.location) == spot.report_location)
                .count();
            assert_eq!(at, n as usize, "presences at spot {serial}'s location");
        }
        assert_eq!(d.spots.len(), 3);
    }
}
