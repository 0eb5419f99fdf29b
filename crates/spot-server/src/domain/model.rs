//! The resources of spec §7 — [`Spot`], [`Location`], [`Item`], [`PresenceResource`] — and
//! their serde shapes (times as ISO 8601 text, proximities by name), and the [`Table`] of
//! each kind of resource (the item and spot lists of `sets` are in `sets`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use spot_protocol::{Object, Proximity};

use crate::ids::Id;

/// Serde helpers: times are Unix milliseconds in memory and ISO 8601 strings in JSON.
pub(super) mod iso {
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
mod named_proximity {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use spot_protocol::Proximity;

    /// A proximity, written as its name.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub struct NamedProximity(pub Proximity);

    impl Serialize for NamedProximity {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(self.0.as_str())
        }
    }

    impl<'de> Deserialize<'de> for NamedProximity {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NamedProximity, D::Error> {
            let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
            Proximity::parse(&name)
                .map(NamedProximity)
                .ok_or_else(|| serde::de::Error::custom(format!("not a proximity: {name:?}")))
        }
    }
}
pub use named_proximity::NamedProximity;

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
/// a `BTreeMap<Id, NamedProximity>` would be.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reporters {
    /// The report of the lowest spot id; `None` only when there is none at all.
    first: Option<(Id, NamedProximity)>,
    /// The others, sorted by spot id.
    more: Vec<(Id, NamedProximity)>,
}

impl Reporters {
    /// Only `spot`, with this proximity.
    pub(super) fn one(spot: Id, proximity: NamedProximity) -> Self {
        Reporters {
            first: Some((spot, proximity)),
            more: Vec::new(),
        }
    }

    /// Sets the proximity reported by `spot`.
    pub fn insert(&mut self, spot: Id, proximity: NamedProximity) {
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
    pub fn iter(&self) -> impl Iterator<Item = &(Id, NamedProximity)> {
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

impl FromIterator<(Id, NamedProximity)> for Reporters {
    fn from_iter<I: IntoIterator<Item = (Id, NamedProximity)>>(iter: I) -> Self {
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
        Ok(BTreeMap::<Id, NamedProximity>::deserialize(d)?
            .into_iter()
            .collect())
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
    /// The code type, e.g. `EPC Gen2` (shared by the items of one type, see `Technologies` in the item index).
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
pub struct PresenceResource {
    /// Chronological id.
    pub id: Id,
    /// Item id.
    pub item: Id,
    /// Location id.
    pub location: Id,
    /// The strongest proximity of the reporting spots.
    pub proximity: NamedProximity,
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
    /// Item lists (the vendor's `sets/itemlists`).
    ItemLists,
    /// Spot lists (the vendor's `sets/spotlists`).
    SpotLists,
    /// The `metadata` of items and locations, by their id (see `metadata`).
    Metadata,
}

impl Table {
    /// All tables, in load order. A table's index here is its tag in stored rows (see
    /// `store::checkpoint`): new tables go at the end.
    pub const ALL: [Table; 7] = [
        Table::Spots,
        Table::Locations,
        Table::Items,
        Table::Presences,
        Table::ItemLists,
        Table::SpotLists,
        Table::Metadata,
    ];

    /// SQL table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Spots => "spots",
            Table::Locations => "locations",
            Table::Items => "items",
            Table::Presences => "presences",
            Table::ItemLists => "item_lists",
            Table::SpotLists => "spot_lists",
            Table::Metadata => "metadata",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
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
                let p = NamedProximity(proximities[((x >> 30) % 3) as usize]);
                reporters.insert(spot, p);
                model.insert(spot, p);
            }
            let expected: Vec<(Id, NamedProximity)> = model.iter().map(|(s, p)| (*s, *p)).collect();
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
}
