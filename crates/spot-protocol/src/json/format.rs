//! One JSON message ⇄ one [`Event`]: the mapping of `["<resource>","<action>",{...}]` onto
//! the typed model, lenient about field-type drift, lossless for what it does not know.
//!
//! Decoding goes straight from the bytes into the typed structs with serde visitors: keys are
//! matched as borrowed `&str`, scalar values are read without allocating unless they end up
//! in an owned `String`, and a `serde_json::Value` is only built for keys the model does not
//! type (they go to `extra`, in order). A typed key whose value cannot be interpreted (e.g.
//! `"time":"yesterday"`) is kept in `extra` verbatim instead of failing the event.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::codec::DecodeErrorKind;
use crate::event::{
    codetype, Action, CodeType, Config, Event, EventKind, Firmware, Hit, ItemCode, Object,
    OtherEvent, Presence, Proximity, SpotStatus,
};
use crate::time::Timestamp;

/// Decodes one complete message (the bytes from its `[` to its `]`) into `event`, in place:
/// an `Event` is a few hundred bytes, and returning it through every serde layer would copy
/// it at each. Whatever `event` held is replaced when this succeeds.
pub(crate) fn decode_event(bytes: &[u8], event: &mut Event) -> Result<(), DecodeErrorKind> {
    event.seq = None;
    // One UTF-8 check of the whole message (vectorised) is cheaper than serde_json's check
    // of each string.
    let text = match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => text,
        // The fast check does not say where: the standard one does, on this rare path.
        Err(_) => {
            let at = std::str::from_utf8(bytes)
                .err()
                .map_or(0, |e| e.valid_up_to());
            return Err(DecodeErrorKind::Syntax(format!(
                "invalid UTF-8 at byte {at} of the message"
            )));
        }
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let decoded = (&mut de)
        .deserialize_seq(EventVisitor { event })
        .and_then(|()| de.end());
    match decoded {
        Ok(()) => Ok(()),
        Err(e) => Err(match e.classify() {
            serde_json::error::Category::Data => DecodeErrorKind::NotAnEvent(e.to_string()),
            _ => DecodeErrorKind::Syntax(e.to_string()),
        }),
    }
}

/// Appends one message: compact (the whole event on one line) or pretty (one key per line),
/// followed by the `\n\n` that ends it. Neither form contains `\n\n` inside the message.
pub(crate) fn encode_event(event: &Event, pretty: bool, out: &mut Vec<u8>) {
    out.push(b'[');
    write_json(out, event.resource_type());
    out.push(b',');
    write_json(out, event.action());
    out.push(b',');
    let mut obj = ObjectWriter::new(out, pretty);
    let seq_key_taken = matches!(&event.kind, EventKind::Other(o) if o.object.contains_key("seq"));
    if let (Some(seq), false) = (event.seq, seq_key_taken) {
        obj.key("seq");
        write_json(obj.out, &seq);
    }
    match &event.kind {
        EventKind::Spot(_, s) => s.write_fields(&mut obj),
        EventKind::Config(_, c) => c.write_fields(&mut obj),
        EventKind::Presence(_, p) => p.write_fields(&mut obj),
        EventKind::Hit(_, h) => h.write_fields(&mut obj),
        EventKind::Firmware(_, f) => f.write_fields(&mut obj),
        EventKind::Other(o) => obj.extra(&o.object),
    }
    obj.end();
    out.extend_from_slice(b"]\n\n");
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// The known resource types.
#[derive(Clone, Copy)]
enum Resource {
    Spot,
    Config,
    Presence,
    Hit,
    Firmware,
}

impl Resource {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "spot" => Resource::Spot,
            "config" => Resource::Config,
            "presence" => Resource::Presence,
            "hit" => Resource::Hit,
            "firmware" => Resource::Firmware,
            _ => return None,
        })
    }
}

struct EventVisitor<'a> {
    event: &'a mut Event,
}

impl<'de> Visitor<'de> for EventVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event array [\"<resource_type>\",\"<action>\",{...}]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let resource = seq
            .next_element_seed(TextSeed("the resource type (a string)"))?
            .ok_or_else(|| {
                de::Error::custom("empty array: expected [resource_type, action, {...}]")
            })?;
        let action = seq
            .next_element_seed(TextSeed("the action (a string)"))?
            .ok_or_else(|| {
                de::Error::custom("array of 1 element: expected [resource_type, action, {...}]")
            })?;
        let known = Resource::parse(&resource).zip(Action::parse(&action));
        let seed = ObjectSeed {
            event: self.event,
            known,
            resource,
            action,
        };
        seq.next_element_seed(seed)?.ok_or_else(|| {
            de::Error::custom("array of 2 elements: expected [resource_type, action, {...}]")
        })?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(
                "array of more than 3 elements: expected [resource_type, action, {...}]",
            ));
        }
        Ok(())
    }
}

/// A string from the input, borrowed when it holds no escapes.
struct TextSeed(&'static str);

impl<'de> DeserializeSeed<'de> for TextSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(TextVisitor(self.0))
    }
}

struct TextVisitor(&'static str);

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// The third element, read into the typed object of a known event or verbatim otherwise.
struct ObjectSeed<'a, 'de> {
    event: &'a mut Event,
    known: Option<(Resource, Action)>,
    resource: Cow<'de, str>,
    action: Cow<'de, str>,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let Event { seq, kind } = self.event;
        /// Puts a default object of the variant in place, then fills it from the map.
        macro_rules! typed {
            ($variant:ident, $action:expr) => {{
                *kind = EventKind::$variant($action, Default::default());
                match kind {
                    EventKind::$variant(_, object) => {
                        d.deserialize_map(TypedVisitor { object, seq })
                    }
                    _ => unreachable!("the variant was just set"),
                }
            }};
        }
        match self.known {
            Some((Resource::Spot, a)) => typed!(Spot, a),
            Some((Resource::Config, a)) => typed!(Config, a),
            Some((Resource::Presence, a)) => typed!(Presence, a),
            Some((Resource::Hit, a)) => typed!(Hit, a),
            Some((Resource::Firmware, a)) => typed!(Firmware, a),
            None => {
                let object = d.deserialize_map(OtherObjectVisitor)?;
                *kind = EventKind::Other(OtherEvent {
                    resource_type: self.resource.into_owned(),
                    action: self.action.into_owned(),
                    object,
                });
                Ok(())
            }
        }
    }
}

struct OtherObjectVisitor;

impl<'de> Visitor<'de> for OtherObjectVisitor {
    type Value = Object;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the event's object {...} as third element")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
        let mut object = Object::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            object.insert(k, v);
        }
        Ok(object)
    }
}

/// A typed event object: which keys it types and where the others go.
trait TypedObject: Default {
    /// Stores `value` in the typed field named `key`; gives the value back when `key` is not
    /// a typed field or its value does not fit the field's type.
    fn take<'de>(&mut self, key: &str, value: Scalar<'de>) -> Result<(), Scalar<'de>>;
    /// The map of every other key.
    fn extra_mut(&mut self) -> &mut Object;
    /// Writes the typed fields (struct order), then `extra`.
    fn write_fields(&self, obj: &mut ObjectWriter<'_>);
}

/// Fills a typed object (and the event's `seq`) from a JSON object.
struct TypedVisitor<'a, T> {
    object: &'a mut T,
    seq: &'a mut Option<u64>,
}

impl<'de, T: TypedObject> Visitor<'de> for TypedVisitor<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the event's object {...} as third element")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(TextSeed("a key"))? {
            let value: Scalar<'de> = map.next_value()?;
            let rejected = if key == "seq" {
                value.into_u64().map(|n| *self.seq = Some(n))
            } else {
                self.object.take(&key, value)
            };
            if let Err(value) = rejected {
                self.object
                    .extra_mut()
                    .insert(key.into_owned(), value.into_value());
            }
        }
        Ok(())
    }
}

/// A JSON value read without allocating for scalars (strings stay borrowed when they can).
#[derive(Debug)]
enum Scalar<'de> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(Cow<'de, str>),
    /// An array or object: rare in events, and boxed so that the common values move in a few
    /// words (an unboxed `Value`, whose map variant holds an `IndexMap`, would more than
    /// double every `Scalar`: ~130 instr/event).
    Composite(Box<Value>),
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F64(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Value>()? {
            items.push(v);
        }
        Ok(Scalar::Composite(Box::new(Value::Array(items))))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        OtherObjectVisitor
            .visit_map(map)
            .map(|o| Scalar::Composite(Box::new(Value::Object(o))))
    }
}

impl<'de> Scalar<'de> {
    fn into_value(self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::I64(n) => Value::from(n),
            Scalar::U64(n) => Value::from(n),
            Scalar::F64(n) => Value::from(n),
            Scalar::Str(s) => Value::String(s.into_owned()),
            Scalar::Composite(v) => *v,
        }
    }

    fn into_string(self) -> Result<String, Self> {
        match self {
            Scalar::Str(s) => Ok(s.into_owned()),
            other => Err(other),
        }
    }

    /// A string, as an [`ItemCode`] (inline, without an allocation, when short).
    fn into_item_code(self) -> Result<ItemCode, Self> {
        match self {
            Scalar::Str(s) => Ok(ItemCode::from(s)),
            other => Err(other),
        }
    }

    /// A string, as a [`CodeType`] (a common one without an allocation).
    fn into_codetype(self) -> Result<CodeType, Self> {
        match self {
            Scalar::Str(s) => Ok(codetype(&s)),
            other => Err(other),
        }
    }

    /// A number, or a string holding one (`"30"`).
    fn into_i64(self) -> Result<i64, Self> {
        let n = match &self {
            Scalar::I64(n) => Some(*n),
            Scalar::U64(n) => i64::try_from(*n).ok(),
            Scalar::Str(s) => s.parse().ok(),
            _ => None,
        };
        n.ok_or(self)
    }

    fn into_u64(self) -> Result<u64, Self> {
        let n = match &self {
            Scalar::U64(n) => Some(*n),
            Scalar::I64(n) => u64::try_from(*n).ok(),
            Scalar::Str(s) => s.parse().ok(),
            _ => None,
        };
        n.ok_or(self)
    }

    /// `true`/`false`, or the strings `"true"`/`"false"` older firmware sends.
    fn into_bool(self) -> Result<bool, Self> {
        match &self {
            Scalar::Bool(b) => Ok(*b),
            Scalar::Str(s) if s == "true" => Ok(true),
            Scalar::Str(s) if s == "false" => Ok(false),
            _ => Err(self),
        }
    }

    /// A date-time in years 0000–9999 (the range whose formatted form parses back: a leap
    /// second or an offset can carry a parsed time just outside it).
    fn into_timestamp(self) -> Result<Timestamp, Self> {
        const RANGE: std::ops::RangeInclusive<i64> = -62_167_219_200_000..=253_402_300_799_999;
        match &self {
            Scalar::Str(s) => match Timestamp::parse(s) {
                Some(t) if RANGE.contains(&t.as_millis()) => Ok(t),
                _ => Err(self),
            },
            _ => Err(self),
        }
    }

    fn into_proximity(self) -> Result<Proximity, Self> {
        match &self {
            Scalar::Str(s) => Proximity::parse(s).ok_or(self),
            _ => Err(self),
        }
    }

    /// A serial number: a non-negative integer, or a string of decimal digits, as its text.
    fn into_serial(self) -> Result<String, Self> {
        match self {
            Scalar::U64(n) => Ok(n.to_string()),
            Scalar::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(s.into_owned())
            }
            other => Err(other),
        }
    }

    /// An array of integers (each possibly a string of digits).
    fn into_i64_list(self) -> Result<Vec<i64>, Self> {
        let Scalar::Composite(value) = &self else {
            return Err(self);
        };
        let Value::Array(items) = &**value else {
            return Err(self);
        };
        let list: Option<Vec<i64>> = items
            .iter()
            .map(|v| match v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            })
            .collect();
        list.ok_or(self)
    }
}

impl TypedObject for SpotStatus {
    fn take<'de>(&mut self, key: &str, v: Scalar<'de>) -> Result<(), Scalar<'de>> {
        match key {
            "spot_id" => self.spot_id = Some(v.into_serial()?),
            "version" => self.version = Some(v.into_string()?),
            "pcb_version" => self.pcb_version = Some(v.into_i64()?),
            "online" => self.online = Some(v.into_bool()?),
            "dip_mask" => self.dip_mask = Some(v.into_i64()?),
            "rfid_swr" => self.rfid_swr = Some(v.into_i64_list()?),
            "boot_count" => self.boot_count = Some(v.into_i64()?),
            "watchdog_count" => self.watchdog_count = Some(v.into_i64()?),
            "presence_create_count" => self.presence_create_count = Some(v.into_i64()?),
            "time_started" => self.time_started = Some(v.into_timestamp()?),
            "time" => self.time = Some(v.into_timestamp()?),
            "seq_epoch" => self.seq_epoch = Some(v.into_u64()?),
            _ => return Err(v),
        }
        Ok(())
    }
    fn extra_mut(&mut self) -> &mut Object {
        &mut self.extra
    }
    fn write_fields(&self, obj: &mut ObjectWriter<'_>) {
        if let Some(id) = &self.spot_id {
            obj.key("spot_id");
            if is_canonical_u64(id) {
                obj.out.extend_from_slice(id.as_bytes());
            } else {
                write_json(obj.out, id);
            }
        }
        obj.field("version", &self.version);
        obj.field("pcb_version", &self.pcb_version);
        obj.field("online", &self.online);
        obj.field("dip_mask", &self.dip_mask);
        obj.field("rfid_swr", &self.rfid_swr);
        obj.field("boot_count", &self.boot_count);
        obj.field("watchdog_count", &self.watchdog_count);
        obj.field("presence_create_count", &self.presence_create_count);
        obj.time("time_started", self.time_started);
        obj.time("time", self.time);
        obj.field("seq_epoch", &self.seq_epoch);
        obj.extra(&self.extra);
    }
}

impl TypedObject for Config {
    fn take<'de>(&mut self, key: &str, v: Scalar<'de>) -> Result<(), Scalar<'de>> {
        match key {
            "rfid_power_dbm" => self.rfid_power_dbm = Some(v.into_i64()?),
            "send_hits" => self.send_hits = Some(v.into_bool()?),
            "auto_hold_delay" => self.auto_hold_delay = Some(v.into_bool()?),
            "fixed_hold_delay_s" => self.fixed_hold_delay_s = Some(v.into_i64()?),
            "telnet" => self.telnet = Some(v.into_bool()?),
            "hostname" => self.hostname = Some(v.into_string()?),
            "brain_address" => self.brain_address = Some(v.into_string()?),
            "reset" => self.reset = Some(v.into_bool()?),
            _ => return Err(v),
        }
        Ok(())
    }
    fn extra_mut(&mut self) -> &mut Object {
        &mut self.extra
    }
    fn write_fields(&self, obj: &mut ObjectWriter<'_>) {
        obj.field("rfid_power_dbm", &self.rfid_power_dbm);
        obj.field("send_hits", &self.send_hits);
        obj.field("auto_hold_delay", &self.auto_hold_delay);
        obj.field("fixed_hold_delay_s", &self.fixed_hold_delay_s);
        obj.field("telnet", &self.telnet);
        obj.field("hostname", &self.hostname);
        obj.field("brain_address", &self.brain_address);
        obj.field("reset", &self.reset);
        obj.extra(&self.extra);
    }
}

impl TypedObject for Presence {
    fn take<'de>(&mut self, key: &str, v: Scalar<'de>) -> Result<(), Scalar<'de>> {
        match key {
            "item_code" => self.item_code = Some(v.into_item_code()?),
            "item_codetype" => self.item_codetype = Some(v.into_codetype()?),
            "time_started" => self.time_started = Some(v.into_timestamp()?),
            "time_last" => self.time_last = Some(v.into_timestamp()?),
            "proximity" => self.proximity = Some(v.into_proximity()?),
            "hold_delay_s" => self.hold_delay_s = Some(v.into_i64()?),
            _ => return Err(v),
        }
        Ok(())
    }
    fn extra_mut(&mut self) -> &mut Object {
        &mut self.extra
    }
    fn write_fields(&self, obj: &mut ObjectWriter<'_>) {
        obj.field("item_code", &self.item_code);
        obj.field("item_codetype", &self.item_codetype);
        obj.time("time_started", self.time_started);
        obj.time("time_last", self.time_last);
        obj.field("proximity", &self.proximity.map(Proximity::as_str));
        obj.field("hold_delay_s", &self.hold_delay_s);
        obj.extra(&self.extra);
    }
}

impl TypedObject for Hit {
    fn take<'de>(&mut self, key: &str, v: Scalar<'de>) -> Result<(), Scalar<'de>> {
        match key {
            "time" => self.time = Some(v.into_timestamp()?),
            "item_code" => self.item_code = Some(v.into_item_code()?),
            "item_codetype" => self.item_codetype = Some(v.into_codetype()?),
            "antenna" => self.antenna = Some(v.into_i64()?),
            "signal_strength" => self.signal_strength = Some(v.into_i64()?),
            _ => return Err(v),
        }
        Ok(())
    }
    fn extra_mut(&mut self) -> &mut Object {
        &mut self.extra
    }
    fn write_fields(&self, obj: &mut ObjectWriter<'_>) {
        obj.time("time", self.time);
        obj.field("item_code", &self.item_code);
        obj.field("item_codetype", &self.item_codetype);
        obj.field("antenna", &self.antenna);
        obj.field("signal_strength", &self.signal_strength);
        obj.extra(&self.extra);
    }
}

impl TypedObject for Firmware {
    fn take<'de>(&mut self, key: &str, v: Scalar<'de>) -> Result<(), Scalar<'de>> {
        match key {
            "url" => self.url = Some(v.into_string()?),
            "version" => self.version = Some(v.into_string()?),
            "reset_counters" => self.reset_counters = Some(v.into_bool()?),
            _ => return Err(v),
        }
        Ok(())
    }
    fn extra_mut(&mut self) -> &mut Object {
        &mut self.extra
    }
    fn write_fields(&self, obj: &mut ObjectWriter<'_>) {
        obj.field("url", &self.url);
        obj.field("version", &self.version);
        obj.field("reset_counters", &self.reset_counters);
        obj.extra(&self.extra);
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Writes the keys of one object, compact (`{"a":1,"b":2}`) or pretty (one key per line).
struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    pretty: bool,
    empty: bool,
}

impl<'a> ObjectWriter<'a> {
    fn new(out: &'a mut Vec<u8>, pretty: bool) -> Self {
        out.push(b'{');
        ObjectWriter {
            out,
            pretty,
            empty: true,
        }
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        if self.pretty {
            self.out.extend_from_slice(b"\n  ");
        }
        write_json(self.out, key);
        self.out
            .extend_from_slice(if self.pretty { b": " } else { b":" });
    }

    fn field<T: serde::Serialize>(&mut self, key: &str, value: &Option<T>) {
        if let Some(value) = value {
            self.key(key);
            write_json(self.out, value);
        }
    }

    fn time(&mut self, key: &str, value: Option<Timestamp>) {
        if let Some(t) = value {
            self.key(key);
            write!(self.out, "\"{t}\"").expect("writing to a Vec cannot fail");
        }
    }

    fn extra(&mut self, extra: &Object) {
        for (key, value) in extra {
            self.key(key);
            write_json(self.out, value);
        }
    }

    fn end(self) {
        if self.pretty && !self.empty {
            self.out.push(b'\n');
        }
        self.out.push(b'}');
    }
}

/// Appends `value` as compact JSON (strings escaped; never a raw newline).
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serializing strings, integers, booleans and `Value`s (whose map keys are strings and
    // whose numbers are finite) into a Vec has no failure case.
    serde_json::to_writer(out, value).expect("serializing JSON into a Vec cannot fail");
}

/// Whether `s` is a u64 in canonical decimal form (no sign, no leading zero), which a JSON
/// number carries unchanged.
fn is_canonical_u64(s: &str) -> bool {
    !s.is_empty() && (s == "0" || !s.starts_with('0')) && s.parse::<u64>().is_ok() && {
        s.bytes().all(|b| b.is_ascii_digit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<Event, DecodeErrorKind> {
        decode_bytes(s.as_bytes())
    }

    fn decode_bytes(bytes: &[u8]) -> Result<Event, DecodeErrorKind> {
        let mut event = Event::new(EventKind::Other(OtherEvent::default()));
        decode_event(bytes, &mut event).map(|()| event)
    }

    fn compact(e: &Event) -> String {
        let mut out = Vec::new();
        encode_event(e, false, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn presence_maps_to_typed_fields_and_unknown_keys_stay_in_order() {
        let e = decode(r#"["presence","update",{"z":1,"item_code":"ab","proximity":"near","a":[1],"hold_delay_s":"4","seq":7}]"#).unwrap();
        assert_eq!(e.seq, Some(7));
        let EventKind::Presence(Action::Update, p) = &e.kind else {
            panic!("{e:?}")
        };
        assert_eq!(p.item_code.as_deref(), Some("ab"));
        assert_eq!(p.proximity, Some(Proximity::Near));
        assert_eq!(p.hold_delay_s, Some(4));
        assert_eq!(p.extra.keys().collect::<Vec<_>>(), ["z", "a"]);
        assert_eq!(
            compact(&e),
            "[\"presence\",\"update\",{\"seq\":7,\"item_code\":\"ab\",\"proximity\":\"near\",\"hold_delay_s\":4,\"z\":1,\"a\":[1]}]\n\n"
        );
    }

    #[test]
    fn uninterpretable_known_values_are_kept_verbatim_in_extra() {
        let e = decode(r#"["hit","create",{"time":"yesterday","antenna":1.5,"seq":-1}]"#).unwrap();
        assert_eq!(e.seq, None);
        let EventKind::Hit(_, h) = &e.kind else {
            panic!()
        };
        assert_eq!(h.time, None);
        assert_eq!(h.extra["time"], "yesterday");
        assert_eq!(h.extra["antenna"], 1.5);
        assert_eq!(h.extra["seq"], -1);
    }

    #[test]
    fn times_outside_years_0000_to_9999_stay_verbatim_in_extra() {
        for (time, typed) in [
            ("0000-01-01T00:00:00Z", true),
            ("9999-12-31T23:59:59.999Z", true),
            ("9999-12-31T23:59:60Z", false),
            ("0000-01-01T00:00:00+01:00", false),
        ] {
            let e = decode(&format!("[\"hit\",\"create\",{{\"time\":\"{time}\"}}]")).unwrap();
            let EventKind::Hit(_, h) = &e.kind else {
                panic!()
            };
            assert_eq!(h.time.is_some(), typed, "{time}");
            assert_eq!(h.extra.contains_key("time"), !typed, "{time}");
        }
    }

    #[test]
    fn spot_id_is_a_number_only_when_canonical() {
        for (input, id, out) in [
            ("203", "203", "203"),
            ("\"201\"", "201", "201"),
            ("\"007\"", "007", "\"007\""),
            (
                "\"99999999999999999999\"",
                "99999999999999999999",
                "\"99999999999999999999\"",
            ),
        ] {
            let e = decode(&format!("[\"spot\",\"create\",{{\"spot_id\":{input}}}]")).unwrap();
            let EventKind::Spot(_, s) = &e.kind else {
                panic!()
            };
            assert_eq!(s.spot_id.as_deref(), Some(id));
            assert_eq!(
                compact(&e),
                format!("[\"spot\",\"create\",{{\"spot_id\":{out}}}]\n\n")
            );
        }
    }

    #[test]
    fn unknown_resource_or_action_is_kept_verbatim_with_seq() {
        let e = decode(r#"["spot","explode",{"seq":3,"b":null}]"#).unwrap();
        assert_eq!(e.seq, None);
        let EventKind::Other(o) = &e.kind else {
            panic!()
        };
        assert_eq!(
            (o.resource_type.as_str(), o.action.as_str()),
            ("spot", "explode")
        );
        assert_eq!(o.object["seq"], 3);
        assert_eq!(
            compact(&e),
            "[\"spot\",\"explode\",{\"seq\":3,\"b\":null}]\n\n"
        );
    }

    #[test]
    fn shape_errors_are_not_an_event_and_bad_json_is_syntax() {
        for bad in [
            "[]",
            "[1,\"create\",{}]",
            "[\"spot\"]",
            "[\"spot\",\"create\"]",
            "[\"spot\",\"create\",5]",
            "[\"x\",\"y\",[]]",
            "[\"spot\",\"create\",{},1]",
        ] {
            assert!(
                matches!(decode(bad), Err(DecodeErrorKind::NotAnEvent(_))),
                "{bad}: {:?}",
                decode(bad)
            );
        }
        for bad in [
            "[\"spot\",\"create\",{]",
            "[\"a\",\"b\",{}}",
            "[\"\u{1}\",\"b\",{}]",
        ] {
            assert!(
                matches!(decode(bad), Err(DecodeErrorKind::Syntax(_))),
                "{bad}: {:?}",
                decode(bad)
            );
        }
        assert_eq!(
            decode_bytes(b"[\"a\xff\",\"b\",{}]"),
            Err(DecodeErrorKind::Syntax(
                "invalid UTF-8 at byte 3 of the message".into()
            ))
        );
    }

    #[test]
    fn pretty_puts_one_key_per_line_and_decodes_back() {
        let e = decode(r#"["config","update",{"reset":true,"x":"a\n\nb"}]"#).unwrap();
        let mut out = Vec::new();
        encode_event(&e, true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "[\"config\",\"update\",{\n  \"reset\": true,\n  \"x\": \"a\\n\\nb\"\n}]\n\n"
        );
        assert_eq!(decode(text.trim_end()).unwrap(), e);
    }
}
