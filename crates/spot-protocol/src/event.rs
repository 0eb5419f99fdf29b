//! The typed event model: every upstream event of spec §3.1, every command of §3.2,
//! and a lossless fallback ([`OtherEvent`]) for resource/action pairs we do not know.
//!
//! The model is plain data. How it maps to bytes lives in [`crate::json`] and
//! [`crate::pb`]; both must map every [`Event`] losslessly, so every struct keeps the keys it
//! does not know in an `extra` map (insertion-ordered), and a known key whose value has a
//! type we cannot interpret is kept in `extra` too, verbatim, rather than rejected.
//!
//! Equality is semantic: `2014-02-24T08:31:46.29Z` and `2014-02-24T08:31:46.290Z` are the
//! same [`Timestamp`]; `"spot_id":"201"` and `"spot_id":201` are the same serial.

use std::borrow::Cow;

use crate::time::Timestamp;

/// A JSON object whose key order is kept (serde_json with `preserve_order`).
pub type Object = serde_json::Map<String, serde_json::Value>;

/// The technology of an item code (`item_codetype`, e.g. `EPC Gen2`). Nearly every event
/// carries one of a handful of names: [`codetype`] gives those without an allocation
/// (decoders call it per event), any other is kept as sent.
pub type CodeType = Cow<'static, str>;

/// `EPC Gen2`, the code type of UHF RFID tags (almost every event's).
pub const EPC_GEN2: &str = "EPC Gen2";

/// The [`CodeType`] for `text`: borrowed from a static name where it is a common one
/// (no allocation), else a copy.
pub fn codetype(text: &str) -> CodeType {
    match text {
        EPC_GEN2 => Cow::Borrowed(EPC_GEN2),
        other => Cow::Owned(other.to_owned()),
    }
}

/// An item code (`item_code`): hex digits as sent, 24 for the EPC Gen2 tags of nearly every
/// event. Kept inline up to 24 bytes (no allocation per event, and a clone is a copy);
/// longer codes are stored on the heap.
pub type ItemCode = compact_str::CompactString;

/// One event on a spot stream, upstream (spot → server) or downstream (a command).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Per-spot sequence number: this project's extension (key `"seq"` in the JSON object,
    /// envelope field in protobuf). Sent by our emulator on every event it buffers so the
    /// server can drop replays (spec §6); `None` for spots that do not send one.
    pub seq: Option<u64>,
    /// What happened.
    pub kind: EventKind,
}

/// The resource type and action of an event, with its typed object.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// `["spot", action, {...}]`: `create` (first message after connecting) or `update`
    /// (the alive signal of the telnet stream).
    Spot(Action, SpotStatus),
    /// `["config", action, {...}]`: `create` (all keys), `update` (changed keys, or a command).
    Config(Action, Config),
    /// `["presence", action, {...}]`: an item newly seen, its proximity changed, or gone.
    Presence(Action, Presence),
    /// `["hit", "create", {...}]`: one tag read.
    Hit(Action, Hit),
    /// `["firmware", "update", {...}]`: a command to install firmware or reset counters.
    Firmware(Action, Firmware),
    /// Any other resource type or action, kept verbatim.
    Other(OtherEvent),
}

/// The action of an event: always one of three for known resource types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `create`
    Create,
    /// `update`
    Update,
    /// `delete`
    Delete,
}

impl Action {
    /// The wire name (`create`, `update`, `delete`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }

    /// Parses a wire name; `None` for anything else (the event is then an [`OtherEvent`]).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "create" => Some(Action::Create),
            "update" => Some(Action::Update),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

/// How close an item is to the spot's antennas. Ordered: `Far < Near < Immediate`, so the
/// strongest of several reports is their `max()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proximity {
    /// `far`
    Far,
    /// `near`
    Near,
    /// `immediate`
    Immediate,
}

impl Proximity {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Proximity::Far => "far",
            Proximity::Near => "near",
            Proximity::Immediate => "immediate",
        }
    }

    /// Parses a wire name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "far" => Some(Proximity::Far),
            "near" => Some(Proximity::Near),
            "immediate" => Some(Proximity::Immediate),
            _ => None,
        }
    }
}

/// The object of `spot create` / `spot update`: information about the spot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpotStatus {
    /// Serial number. Sent as a number by newer firmware and as a string by older; kept as
    /// its decimal text.
    pub spot_id: Option<String>,
    /// Firmware version, e.g. `35-42-g0388fd9-dirty`.
    pub version: Option<String>,
    /// Hardware revision.
    pub pcb_version: Option<i64>,
    /// Always `true` when sent.
    pub online: Option<bool>,
    /// DIP switch positions as a bit mask.
    pub dip_mask: Option<i64>,
    /// Standing-wave ratio per antenna.
    pub rfid_swr: Option<Vec<i64>>,
    /// How often the spot booted; grows by one every boot.
    pub boot_count: Option<i64>,
    /// How often the watchdog restarted the spot.
    pub watchdog_count: Option<i64>,
    /// Presences created since production.
    pub presence_create_count: Option<i64>,
    /// When the spot started.
    pub time_started: Option<Timestamp>,
    /// The spot's clock when it sent this.
    pub time: Option<Timestamp>,
    /// Our extension: identifies the spot's sequence counter (see [`Event::seq`]). A spot
    /// that lost its counter picks a new epoch, which tells the server to restart its
    /// replay watermark for the spot.
    pub seq_epoch: Option<u64>,
    /// Every other key (`output_1`, `input_1`, …), verbatim, in order.
    pub extra: Object,
}

/// The object of `config create` / `config update`: configuration keys and values.
///
/// The keys the server and emulator act on are typed; all others stay in `extra`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// Transmit power in dBm.
    pub rfid_power_dbm: Option<i64>,
    /// Whether the spot sends a `hit create` per tag read.
    pub send_hits: Option<bool>,
    /// Whether the hold delay adapts automatically.
    pub auto_hold_delay: Option<bool>,
    /// Seconds without a read before a presence is deleted, when not automatic.
    pub fixed_hold_delay_s: Option<i64>,
    /// Whether the telnet stream is served.
    pub telnet: Option<bool>,
    /// The spot's host name.
    pub hostname: Option<String>,
    /// The server address the spot connects to.
    pub brain_address: Option<String>,
    /// In a downstream `config update` command: restore factory defaults.
    pub reset: Option<bool>,
    /// Every other key, verbatim, in order (nested objects such as `control_schema` too).
    pub extra: Object,
}

/// The object of a `presence` event: one item seen by one spot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Presence {
    /// The item code as sent: hex digits (24 for EPC Gen2).
    pub item_code: Option<ItemCode>,
    /// The code's technology, e.g. `EPC Gen2`.
    pub item_codetype: Option<CodeType>,
    /// When the item was first seen in this presence.
    pub time_started: Option<Timestamp>,
    /// When the item was last seen.
    pub time_last: Option<Timestamp>,
    /// How close the item is.
    pub proximity: Option<Proximity>,
    /// Seconds without a read before the spot deletes the presence.
    pub hold_delay_s: Option<i64>,
    /// Every other key, verbatim, in order.
    pub extra: Object,
}

/// The object of a `hit create`: one single tag read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hit {
    /// When the tag was read.
    pub time: Option<Timestamp>,
    /// The item code as sent.
    pub item_code: Option<ItemCode>,
    /// The code's technology.
    pub item_codetype: Option<CodeType>,
    /// The antenna that read it.
    pub antenna: Option<i64>,
    /// Received signal strength (e.g. `-428`, tenths of dBm).
    pub signal_strength: Option<i64>,
    /// Every other key, verbatim, in order.
    pub extra: Object,
}

/// The object of a `firmware update` command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Firmware {
    /// Where to download the image, relative to the server.
    pub url: Option<String>,
    /// The version the image carries.
    pub version: Option<String>,
    /// Reset boot and watchdog counters to 0.
    pub reset_counters: Option<bool>,
    /// Every other key, verbatim, in order.
    pub extra: Object,
}

/// An event whose resource type or action this version does not know, kept verbatim.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OtherEvent {
    /// The first element of the JSON array.
    pub resource_type: String,
    /// The second element.
    pub action: String,
    /// The object, every key (including any `seq`, which is only lifted out of known events).
    pub object: Object,
}

impl Event {
    /// An event without a sequence number.
    pub fn new(kind: EventKind) -> Self {
        Event { seq: None, kind }
    }

    /// The wire name of the resource type (`spot`, `config`, …).
    pub fn resource_type(&self) -> &str {
        match &self.kind {
            EventKind::Spot(..) => "spot",
            EventKind::Config(..) => "config",
            EventKind::Presence(..) => "presence",
            EventKind::Hit(..) => "hit",
            EventKind::Firmware(..) => "firmware",
            EventKind::Other(o) => &o.resource_type,
        }
    }

    /// The wire name of the action (`create`, `update`, `delete`, or an unknown one).
    pub fn action(&self) -> &str {
        match &self.kind {
            EventKind::Spot(a, _)
            | EventKind::Config(a, _)
            | EventKind::Presence(a, _)
            | EventKind::Hit(a, _)
            | EventKind::Firmware(a, _) => a.as_str(),
            EventKind::Other(o) => &o.action,
        }
    }

    /// The event's own timestamp, where its type has one: `time` of a spot status or a
    /// hit, `time_last` of a presence. This is the field the protobuf stream delta-codes.
    pub fn timestamp(&self) -> Option<Timestamp> {
        match &self.kind {
            EventKind::Spot(_, s) => s.time,
            EventKind::Presence(_, p) => p.time_last,
            EventKind::Hit(_, h) => h.time,
            _ => None,
        }
    }

    /// Levels of arrays and objects in the event's JSON form: its array and its object are
    /// the first two, a typed list (`rfid_swr`) a third, then the nesting of extra values.
    pub(crate) fn depth(&self) -> usize {
        let (extra, typed_list) = match &self.kind {
            EventKind::Spot(_, s) => (&s.extra, s.rfid_swr.is_some()),
            EventKind::Config(_, c) => (&c.extra, false),
            EventKind::Presence(_, p) => (&p.extra, false),
            EventKind::Hit(_, h) => (&h.extra, false),
            EventKind::Firmware(_, f) => (&f.extra, false),
            EventKind::Other(o) => (&o.object, false),
        };
        object_depth(extra).max(2 + usize::from(typed_list))
    }

    /// The item code of a presence or hit.
    pub fn item_code(&self) -> Option<&str> {
        match &self.kind {
            EventKind::Presence(_, p) => p.item_code.as_deref(),
            EventKind::Hit(_, h) => h.item_code.as_deref(),
            _ => None,
        }
    }
}

/// Levels of arrays and objects in an event whose object holds `object`, counting the
/// event's array and object as the first two.
pub(crate) fn object_depth(object: &Object) -> usize {
    2 + object.values().map(value_depth).max().unwrap_or(0)
}

/// Levels of arrays and objects in `v` (a scalar is 0).
fn value_depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(value_depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_code_type_is_borrowed_and_any_other_kept_as_sent() {
        assert!(matches!(codetype("EPC Gen2"), Cow::Borrowed(EPC_GEN2)));
        assert!(matches!(codetype("BLE"), Cow::Owned(s) if s == "BLE"));
        // The JSON and protobuf decoders both give the borrowed one.
        for encoding in [crate::Encoding::Json, crate::Encoding::Protobuf] {
            let event = Event::new(EventKind::Hit(
                Action::Create,
                Hit {
                    item_code: Some("ab01".into()),
                    item_codetype: Some(EPC_GEN2.into()),
                    ..Hit::default()
                },
            ));
            let mut bytes = Vec::new();
            crate::Encoder::new(encoding).encode(&event, &mut bytes);
            let mut decoder = crate::Decoder::new(encoding, crate::Limits::default());
            decoder.feed(&bytes);
            decoder.finish();
            let decoded = decoder.next_event().unwrap().unwrap();
            let EventKind::Hit(_, hit) = decoded.kind else {
                panic!("{decoded:?}")
            };
            assert!(
                matches!(hit.item_codetype, Some(Cow::Borrowed(_))),
                "{encoding:?}"
            );
        }
    }

    #[test]
    fn both_decoders_give_an_epc_item_code_without_an_allocation() {
        let code = "303474d3702127ea4f78377d";
        let event = Event::new(EventKind::Presence(
            Action::Create,
            Presence {
                item_code: Some(code.into()),
                ..Presence::default()
            },
        ));
        for encoding in [crate::Encoding::Json, crate::Encoding::Protobuf] {
            let mut encoder = crate::Encoder::new(encoding);
            let mut bytes = Vec::new();
            // Twice: protobuf sends the code in full, then by its table slot.
            encoder.encode(&event, &mut bytes);
            encoder.encode(&event, &mut bytes);
            let mut decoder = crate::Decoder::new(encoding, crate::Limits::default());
            decoder.feed(&bytes);
            decoder.finish();
            for _ in 0..2 {
                let decoded = decoder.next_event().unwrap().unwrap();
                assert_eq!(decoded, event, "{encoding:?}");
                let EventKind::Presence(_, p) = decoded.kind else {
                    panic!("{decoded:?}")
                };
                assert!(!p.item_code.unwrap().is_heap_allocated(), "{encoding:?}");
            }
        }
    }

    #[test]
    fn proximity_orders_far_near_immediate() {
        assert!(Proximity::Far < Proximity::Near);
        assert!(Proximity::Near < Proximity::Immediate);
        assert_eq!(
            [Proximity::Near, Proximity::Immediate, Proximity::Far]
                .into_iter()
                .max(),
            Some(Proximity::Immediate)
        );
        for p in [Proximity::Far, Proximity::Near, Proximity::Immediate] {
            assert_eq!(Proximity::parse(p.as_str()), Some(p));
        }
        assert_eq!(Proximity::parse("close"), None);
    }

    #[test]
    fn action_names_round_trip_and_unknown_is_none() {
        for a in [Action::Create, Action::Update, Action::Delete] {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("upsert"), None);
    }
}
