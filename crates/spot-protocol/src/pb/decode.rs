//! The receiver's message layer: the bytes of one frame → one [`Event`], in one pass.
//!
//! The stream layer's walk ([`walk_envelope`], [`walk_event`]) checks the frame's structure
//! and finds field 9; the same walk hands every other field to this module. The hot event
//! messages (`Presence`, `Hit`) are decoded from it straight into the model, following
//! prost's rules for each field (its wire type must match, strings must be UTF-8, the last
//! occurrence wins), so the result is what the prost-generated types would give (a test
//! holds it to them), with one deliberate difference: a varint beyond its field's type
//! (`uint32` slots and code references, `int32` enums) is refused, where prost truncates it
//! to the field's width (a wrapped slot would silently name another item). The rarer messages (`Spot`,
//! `Config`, `Firmware`, `Other`) go through their prost-generated types.
//!
//! Order of checks, as the stream rules require: a frame that does not walk leaves all state
//! unchanged; otherwise field 9 updates the timestamp state first, then field errors, then
//! the action, then the item-code table (field 5), then the remaining model checks.

use super::error::FrameError;
use super::items::ItemDecoderTable;
use super::message::hex_text;
use super::proto;
use super::stream::{walk_envelope, walk_event, TimestampDelta};
use super::wire::{zigzag_decode, Field, WIRE_LEN, WIRE_VARINT};
use crate::event::*;
use crate::time::Timestamp;

/// Envelope field numbers (docs/protobuf.md §4.1).
const SEQ: u64 = 1;
const SPOT: u64 = 3;
const CONFIG: u64 = 4;
const PRESENCE: u64 = 5;
const HIT: u64 = 6;
const FIRMWARE: u64 = 7;
const OTHER: u64 = 8;

/// Frame → event, for one stream: the timestamp state and the item-code table.
#[derive(Debug, Clone)]
pub(crate) struct MessageDecoder {
    times: TimestampDelta,
    items: ItemDecoderTable,
    max_depth: usize,
}

impl MessageDecoder {
    pub(crate) fn new(item_table_slots: usize, max_depth: usize) -> Self {
        MessageDecoder {
            times: TimestampDelta::default(),
            items: ItemDecoderTable::new(item_table_slots),
            max_depth,
        }
    }

    /// The event one frame (its body, without the length prefix) carries; errors name the
    /// field. (Inlined into its one caller, so that the event is built where it ends up.)
    #[inline(always)]
    pub(crate) fn event(&mut self, frame: &[u8]) -> Result<Event, FrameError> {
        let mut envelope = Envelope::default();
        let at = walk_envelope(frame, |f| envelope.field(f))?;
        let body = &frame[at.body..at.end];
        let kind = match at.number {
            PRESENCE => {
                let (time, p) = self.walk::<PresenceFields>(body, &envelope)?;
                EventKind::Presence(envelope.action()?, self.presence(&p, time)?)
            }
            HIT => {
                let (time, h) = self.walk::<HitFields>(body, &envelope)?;
                EventKind::Hit(envelope.action()?, self.hit(&h, time)?)
            }
            SPOT => {
                let (time, _) = self.walk::<Skip>(body, &envelope)?;
                let s = prost_decode::<proto::SpotStatus>(body)?;
                EventKind::Spot(envelope.action()?, self.spot(s, time)?)
            }
            CONFIG => {
                self.walk::<Skip>(body, &envelope)?;
                let c = prost_decode::<proto::Config>(body)?;
                EventKind::Config(envelope.action()?, self.config(c)?)
            }
            FIRMWARE => {
                self.walk::<Skip>(body, &envelope)?;
                let f = prost_decode::<proto::Firmware>(body)?;
                EventKind::Firmware(envelope.action()?, self.firmware(f)?)
            }
            OTHER => {
                self.walk::<Skip>(body, &envelope)?;
                // Carries its own action: the envelope's is ignored.
                EventKind::Other(self.other(prost_decode::<proto::OtherEvent>(body)?)?)
            }
            number => {
                // Its field 9 still counts (docs/protobuf.md §3.1).
                self.walk::<Skip>(body, &envelope)?;
                return Err(unsupported(number));
            }
        };
        Ok(Event {
            seq: envelope.seq,
            kind,
        })
    }

    /// Walks an event message, collecting its fields in `F`; applies its field 9 to the
    /// stream's timestamp state (only once the frame walked cleanly); then reports the first
    /// field of the envelope or the message that prost would reject. Returns the absolute
    /// event timestamp and the fields.
    #[inline(always)]
    fn walk<'a, F: Fields<'a>>(
        &mut self,
        body: &'a [u8],
        envelope: &Envelope,
    ) -> Result<(Option<i64>, F), FrameError> {
        let mut fields = F::default();
        let time = walk_event(body, |f| fields.field(body, f))?;
        let time = self.times.restore(time.as_ref());
        if let Some(problem) = envelope.problem.or(fields.problem()) {
            return Err(problem.error());
        }
        Ok((time, fields))
    }

    /// The hot messages' objects are inlined into [`MessageDecoder::event`] like it is into its
    /// caller: built where the event ends up, not copied out of a call (~100 instr/event).
    #[inline(always)]
    fn presence(
        &mut self,
        p: &PresenceFields<'_>,
        time: Option<i64>,
    ) -> Result<Presence, FrameError> {
        let time_last = time.map(Timestamp);
        Ok(Presence {
            item_code: self.code(&p.item, "Presence")?,
            item_codetype: p.item.codetype("Presence")?,
            time_started: absolute(p.time_started, time_last),
            time_last,
            proximity: proximity_from_proto(p.proximity)?,
            hold_delay_s: p.hold_delay_s,
            extra: self.object(p.extra_json, "Presence.extra_json")?,
        })
    }

    #[inline(always)]
    fn hit(&mut self, h: &HitFields<'_>, time: Option<i64>) -> Result<Hit, FrameError> {
        Ok(Hit {
            time: time.map(Timestamp),
            item_code: self.code(&h.item, "Hit")?,
            item_codetype: h.item.codetype("Hit")?,
            antenna: h.antenna,
            signal_strength: h.signal_strength,
            extra: self.object(h.extra_json, "Hit.extra_json")?,
        })
    }

    fn spot(&mut self, s: proto::SpotStatus, time: Option<i64>) -> Result<SpotStatus, FrameError> {
        let time = time.map(Timestamp);
        Ok(SpotStatus {
            spot_id: s.spot_id,
            version: s.version,
            pcb_version: s.pcb_version,
            online: s.online,
            dip_mask: s.dip_mask,
            rfid_swr: s.rfid_swr.map(|l| l.values),
            boot_count: s.boot_count,
            watchdog_count: s.watchdog_count,
            presence_create_count: s.presence_create_count,
            time_started: absolute(s.time_started, time),
            time,
            seq_epoch: s.seq_epoch,
            extra: self.object(&s.extra_json, "SpotStatus.extra_json")?,
        })
    }

    fn config(&mut self, c: proto::Config) -> Result<Config, FrameError> {
        Ok(Config {
            rfid_power_dbm: c.rfid_power_dbm,
            send_hits: c.send_hits,
            auto_hold_delay: c.auto_hold_delay,
            fixed_hold_delay_s: c.fixed_hold_delay_s,
            telnet: c.telnet,
            hostname: c.hostname,
            brain_address: c.brain_address,
            reset: c.reset,
            extra: self.object(&c.extra_json, "Config.extra_json")?,
        })
    }

    fn firmware(&mut self, f: proto::Firmware) -> Result<Firmware, FrameError> {
        Ok(Firmware {
            url: f.url,
            version: f.version,
            reset_counters: f.reset_counters,
            extra: self.object(&f.extra_json, "Firmware.extra_json")?,
        })
    }

    fn other(&mut self, o: proto::OtherEvent) -> Result<OtherEvent, FrameError> {
        Ok(OtherEvent {
            object: self.object(&o.object_json, "OtherEvent.object_json")?,
            resource_type: o.resource_type,
            action: o.action,
        })
    }

    /// The item code of fields 1–5: from the table (a copy of the stored code, inline when
    /// short), or sent in full (and then stored if field 5 says so). Inlined into
    /// [`MessageDecoder::event`] with the objects: ~70 instr/event less than a call.
    #[inline(always)]
    fn code(
        &mut self,
        item: &ItemFields<'_>,
        message: &'static str,
    ) -> Result<Option<ItemCode>, FrameError> {
        let table_error = |error| FrameError::ItemTable { message, error };
        let code = match item.code {
            None if item.slot.is_some() => return Err(FrameError::SlotWithoutCode { message }),
            None => return Ok(None),
            Some(CodeForm::Ref(_)) if item.slot.is_some() => {
                return Err(FrameError::SlotWithRef { message })
            }
            Some(CodeForm::Ref(slot)) => {
                return match self.items.get(slot) {
                    Ok(code) => Ok(Some(code.clone())),
                    Err(e) => Err(table_error(e)),
                }
            }
            Some(CodeForm::Hex(bytes)) => hex_text(bytes, item.upper),
            Some(CodeForm::Text(text)) => ItemCode::from(text),
        };
        if let Some(slot) = item.slot {
            self.items.store(slot, &code).map_err(table_error)?;
        }
        Ok(Some(code))
    }

    /// An extras blob (or a whole object): empty is `{}`; nesting within `max_depth`,
    /// counting the event's array and object as the first two levels.
    fn object(&self, bytes: &[u8], field: &'static str) -> Result<Object, FrameError> {
        if bytes.is_empty() {
            return Ok(Object::new());
        }
        let object: Object = serde_json::from_slice(bytes).map_err(|e| FrameError::Json {
            field,
            reason: e.to_string(),
        })?;
        let depth = object_depth(&object);
        if depth > self.max_depth {
            return Err(FrameError::TooDeep {
                field,
                depth,
                limit: self.max_depth,
            });
        }
        Ok(object)
    }
}

/// A message decoded by its prost-generated type.
fn prost_decode<M: prost::Message + Default>(body: &[u8]) -> Result<M, FrameError> {
    Ok(M::decode(body)?)
}

#[cold]
fn unsupported(number: u64) -> FrameError {
    let name = match number {
        10 => "antenna_presence",
        11 => "hit_report",
        12 => "sense_change",
        13 => "brain_sense",
        14 => "item_set_change",
        15 => "test_ping",
        16 => "log_message",
        _ => return FrameError::UnknownEvent,
    };
    FrameError::Unsupported { number, name }
}

/// A field whose wire type or content prost's generated decoder rejects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Problem {
    /// `Message.field`.
    field: &'static str,
    kind: ProblemKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProblemKind {
    WireType { got: u8, expected: u8 },
    Utf8,
    OutOfRange { value: u64 },
}

impl Problem {
    #[cold]
    fn error(self) -> FrameError {
        let field = self.field;
        match self.kind {
            ProblemKind::WireType { got, expected } => FrameError::WireType {
                field,
                got,
                expected,
            },
            ProblemKind::Utf8 => FrameError::Utf8 { field },
            ProblemKind::OutOfRange { value } => FrameError::OutOfRange { field, value },
        }
    }
}

/// The value of a varint field, all 64 bits.
#[inline(always)]
fn varint(f: &Field, field: &'static str) -> Result<u64, Problem> {
    if f.wire_type == WIRE_VARINT {
        Ok(f.varint)
    } else {
        Err(wire_type_problem(f, field, WIRE_VARINT))
    }
}

/// The value of a `uint32` field; a varint beyond 32 bits is refused (prost would truncate it).
#[inline(always)]
fn uint32(f: &Field, field: &'static str) -> Result<u32, Problem> {
    let value = varint(f, field)?;
    u32::try_from(value).map_err(|_| out_of_range(field, value))
}

/// The value of an `int32` (or enum) field: on the wire, the value sign-extended to 64 bits;
/// any other varint is refused (prost would truncate it).
#[inline(always)]
fn int32(f: &Field, field: &'static str) -> Result<i32, Problem> {
    let value = varint(f, field)?;
    i32::try_from(value as i64).map_err(|_| out_of_range(field, value))
}

#[cold]
fn out_of_range(field: &'static str, value: u64) -> Problem {
    Problem {
        field,
        kind: ProblemKind::OutOfRange { value },
    }
}

/// The value of a `sint64` field.
#[inline(always)]
fn sint64(f: &Field, field: &'static str) -> Result<i64, Problem> {
    varint(f, field).map(zigzag_decode)
}

/// The bytes of a length-delimited field of `body`.
#[inline(always)]
fn bytes<'a>(body: &'a [u8], f: &Field, field: &'static str) -> Result<&'a [u8], Problem> {
    if f.wire_type == WIRE_LEN {
        Ok(&body[f.value_start..f.end])
    } else {
        Err(wire_type_problem(f, field, WIRE_LEN))
    }
}

/// The text of a `string` field of `body`.
#[inline(always)]
fn text<'a>(body: &'a [u8], f: &Field, field: &'static str) -> Result<&'a str, Problem> {
    std::str::from_utf8(bytes(body, f, field)?).map_err(|_| Problem {
        field,
        kind: ProblemKind::Utf8,
    })
}

#[cold]
fn wire_type_problem(f: &Field, field: &'static str, expected: u8) -> Problem {
    Problem {
        field,
        kind: ProblemKind::WireType {
            got: f.wire_type,
            expected,
        },
    }
}

/// What one walk collects from the fields of one message (field 9 aside).
trait Fields<'a>: Default {
    /// Takes one field; remembers the first problem.
    fn field(&mut self, body: &'a [u8], f: &Field);
    /// The first field prost would reject.
    fn problem(&self) -> Option<Problem>;
}

/// For messages decoded by prost afterwards: the walk only checks the structure.
#[derive(Default)]
struct Skip;

impl Fields<'_> for Skip {
    #[inline(always)]
    fn field(&mut self, _: &[u8], _: &Field) {}
    fn problem(&self) -> Option<Problem> {
        None
    }
}

/// Envelope fields 1 (`seq`) and 2 (`action`).
#[derive(Debug, Default)]
struct Envelope {
    seq: Option<u64>,
    action: i32,
    problem: Option<Problem>,
}

impl Envelope {
    /// Takes field 1 or 2 (the walk passes no others).
    #[inline(always)]
    fn field(&mut self, f: &Field) {
        let taken = if f.number == SEQ {
            varint(f, "Frame.seq").map(|v| self.seq = Some(v))
        } else {
            int32(f, "Frame.action").map(|v| self.action = v)
        };
        if let Err(p) = taken {
            self.problem.get_or_insert(p);
        }
    }

    #[inline]
    fn action(&self) -> Result<Action, FrameError> {
        action_from_proto(self.action)
    }
}

/// An item code as carried by fields 1–3 of `Presence` and `Hit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeForm<'a> {
    Ref(u32),
    Hex(&'a [u8]),
    Text(&'a str),
}

/// Fields 1–7 of `Presence` and `Hit`: the item code and its type.
#[derive(Debug, Default)]
struct ItemFields<'a> {
    code: Option<CodeForm<'a>>,
    upper: bool,
    slot: Option<u32>,
    codetype: i32,
    codetype_text: Option<&'a str>,
}

/// The names of fields 1–7 in one message, for errors.
type ItemFieldNames = [&'static str; 7];

const PRESENCE_ITEM_FIELDS: ItemFieldNames = [
    "Presence.item_code_ref",
    "Presence.item_code_hex",
    "Presence.item_code_text",
    "Presence.item_code_upper",
    "Presence.item_code_slot",
    "Presence.item_codetype",
    "Presence.item_codetype_text",
];

const HIT_ITEM_FIELDS: ItemFieldNames = [
    "Hit.item_code_ref",
    "Hit.item_code_hex",
    "Hit.item_code_text",
    "Hit.item_code_upper",
    "Hit.item_code_slot",
    "Hit.item_codetype",
    "Hit.item_codetype_text",
];

impl<'a> ItemFields<'a> {
    /// Takes field 1–7 (`f.number`).
    #[inline(always)]
    fn field(&mut self, body: &'a [u8], f: &Field, names: &ItemFieldNames) -> Result<(), Problem> {
        let name = names[(f.number - 1) as usize];
        match f.number {
            1 => self.code = Some(CodeForm::Ref(uint32(f, name)?)),
            2 => self.code = Some(CodeForm::Hex(bytes(body, f, name)?)),
            3 => self.code = Some(CodeForm::Text(text(body, f, name)?)),
            4 => self.upper = varint(f, name)? != 0,
            5 => self.slot = Some(uint32(f, name)?),
            6 => self.codetype = int32(f, name)?,
            _ => self.codetype_text = Some(text(body, f, name)?),
        }
        Ok(())
    }

    /// `item_codetype`: the common one from field 6 (its static name), any other from
    /// field 7.
    #[inline]
    fn codetype(&self, message: &'static str) -> Result<Option<CodeType>, FrameError> {
        const UNSPECIFIED: i32 = proto::ItemCodeType::Unspecified as i32;
        const EPC: i32 = proto::ItemCodeType::EpcGen2 as i32;
        match (self.codetype, self.codetype_text) {
            (UNSPECIFIED, text) => Ok(text.map(codetype)),
            (EPC, None) => Ok(Some(CodeType::Borrowed(EPC_GEN2))),
            (EPC, Some(_)) => Err(FrameError::BothCodetypes { message }),
            (value, _) => Err(FrameError::UnknownCodetype { message, value }),
        }
    }
}

/// The fields of a `Presence` (docs/protobuf.md §4.4), field 9 aside.
#[derive(Debug, Default)]
struct PresenceFields<'a> {
    item: ItemFields<'a>,
    proximity: i32,
    time_started: Option<i64>,
    hold_delay_s: Option<i64>,
    extra_json: &'a [u8],
    problem: Option<Problem>,
}

impl<'a> Fields<'a> for PresenceFields<'a> {
    #[inline(always)]
    fn field(&mut self, body: &'a [u8], f: &Field) {
        let taken = match f.number {
            1..=7 => self.item.field(body, f, &PRESENCE_ITEM_FIELDS),
            8 => int32(f, "Presence.proximity").map(|v| self.proximity = v),
            10 => sint64(f, "Presence.time_started").map(|v| self.time_started = Some(v)),
            11 => sint64(f, "Presence.hold_delay_s").map(|v| self.hold_delay_s = Some(v)),
            15 => bytes(body, f, "Presence.extra_json").map(|b| self.extra_json = b),
            _ => Ok(()),
        };
        if let Err(p) = taken {
            self.problem.get_or_insert(p);
        }
    }

    fn problem(&self) -> Option<Problem> {
        self.problem
    }
}

/// The fields of a `Hit` (docs/protobuf.md §4.5), field 9 aside.
#[derive(Debug, Default)]
struct HitFields<'a> {
    item: ItemFields<'a>,
    antenna: Option<i64>,
    signal_strength: Option<i64>,
    extra_json: &'a [u8],
    problem: Option<Problem>,
}

impl<'a> Fields<'a> for HitFields<'a> {
    #[inline(always)]
    fn field(&mut self, body: &'a [u8], f: &Field) {
        let taken = match f.number {
            1..=7 => self.item.field(body, f, &HIT_ITEM_FIELDS),
            8 => sint64(f, "Hit.antenna").map(|v| self.antenna = Some(v)),
            10 => sint64(f, "Hit.signal_strength").map(|v| self.signal_strength = Some(v)),
            15 => bytes(body, f, "Hit.extra_json").map(|b| self.extra_json = b),
            _ => Ok(()),
        };
        if let Err(p) = taken {
            self.problem.get_or_insert(p);
        }
    }

    fn problem(&self) -> Option<Problem> {
        self.problem
    }
}

/// A secondary time as sent (relative to the event timestamp when there is one), absolute.
fn absolute(t: Option<i64>, base: Option<Timestamp>) -> Option<Timestamp> {
    let t = t?;
    Some(Timestamp(match base {
        Some(b) => b.as_millis().wrapping_add(t),
        None => t,
    }))
}

fn action_from_proto(a: i32) -> Result<Action, FrameError> {
    match proto::Action::try_from(a) {
        Ok(proto::Action::Create) => Ok(Action::Create),
        Ok(proto::Action::Update) => Ok(Action::Update),
        Ok(proto::Action::Delete) => Ok(Action::Delete),
        Err(_) => Err(FrameError::UnknownValue {
            field: "Frame.action",
            value: a,
        }),
    }
}

fn proximity_from_proto(p: i32) -> Result<Option<Proximity>, FrameError> {
    match proto::Proximity::try_from(p) {
        Ok(proto::Proximity::Unspecified) => Ok(None),
        Ok(proto::Proximity::Far) => Ok(Some(Proximity::Far)),
        Ok(proto::Proximity::Near) => Ok(Some(Proximity::Near)),
        Ok(proto::Proximity::Immediate) => Ok(Some(Proximity::Immediate)),
        Err(_) => Err(FrameError::UnknownValue {
            field: "Presence.proximity",
            value: p,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::proto::frame::Event as Msg;
    use crate::pb::wire::{put_varint, zigzag_encode};
    use proptest::prelude::*;
    use prost::Message as _;

    /// A frame holding `event`, as prost encodes it.
    fn frame(seq: Option<u64>, action: i32, event: Msg) -> Vec<u8> {
        proto::Frame {
            seq,
            action,
            event: Some(event),
        }
        .encode_to_vec()
    }

    #[test]
    fn secondary_times_are_absolute_or_relative_to_the_event_timestamp() {
        assert_eq!(
            absolute(Some(-4_000), Some(Timestamp(5_000))),
            Some(Timestamp(1_000))
        );
        assert_eq!(absolute(Some(7), None), Some(Timestamp(7)));
    }

    #[test]
    fn errors_name_the_field() {
        let mut dec = MessageDecoder::new(16, 32);
        let cases = [
            (
                frame(
                    None,
                    0,
                    Msg::Presence(proto::Presence {
                        proximity: 9,
                        ..Default::default()
                    }),
                ),
                "Presence.proximity: unknown value 9",
            ),
            (
                frame(
                    None,
                    0,
                    Msg::Hit(proto::Hit {
                        item_code: Some(proto::hit::ItemCode::ItemCodeRef(3)),
                        ..Default::default()
                    }),
                ),
                "Hit.item_code_ref 3 names a slot that holds no code",
            ),
            (
                frame(
                    None,
                    0,
                    Msg::Config(proto::Config {
                        extra_json: b"[1]".to_vec(),
                        ..Default::default()
                    }),
                ),
                "Config.extra_json: invalid type",
            ),
            (
                frame(None, 0, Msg::TestPing(proto::TestPing::default())),
                "envelope field 15 (test_ping)",
            ),
            (
                frame(None, 7, Msg::Spot(proto::SpotStatus::default())),
                "Frame.action: unknown value 7",
            ),
            // Field 3 (item_code_text) of a hit, not UTF-8.
            (vec![0x32, 0x03, 0x1a, 0x01, 0xff], "Hit.item_code_text"),
            // Envelope field 1 (seq) with wire type 2.
            (vec![0x0a, 0x00, 0x2a, 0x00], "Frame.seq: wire type 2"),
        ];
        for (frame, expected) in cases {
            let err = dec.event(&frame).unwrap_err().to_string();
            assert!(
                err.starts_with(expected),
                "{err:?} should start with {expected:?}"
            );
        }
    }

    /// A `uint32` slot or code reference, or an `int32` enum, sent as a varint beyond its
    /// type used to be truncated: slot 2^32 + 1 was slot 1, so a frame overwrote or named
    /// another item's code, and action 2^32 + 1 was `create`. Now the frame is refused,
    /// naming the field, and the table keeps what it held.
    #[test]
    fn varints_beyond_their_field_type_are_refused_not_wrapped() {
        let message = |key: u8, fields: &[u8]| {
            let mut m = vec![key];
            put_varint(&mut m, fields.len() as u64);
            m.extend_from_slice(fields);
            m
        };
        let hit = |fields: &[u8]| message(0x32, fields);
        let presence = |fields: &[u8]| message(0x2a, fields);
        let field = |key: u8, value: u64| {
            let mut f = vec![key];
            put_varint(&mut f, value);
            f
        };
        let code_of = |event: Event| match event.kind {
            EventKind::Hit(_, h) => h.item_code,
            other => panic!("{other:?}"),
        };
        let mut dec = MessageDecoder::new(16, 32);
        let abc_in_slot_1 = hit(&[&[0x1a, 3, b'a', b'b', b'c'][..], &field(0x28, 1)].concat());
        dec.event(&abc_in_slot_1).expect("stores slot 1");
        let wraps_to_1 = (1u64 << 32) + 1;
        let cases = [
            (
                hit(&field(0x08, wraps_to_1)),
                "Hit.item_code_ref: 4294967297 is out of range",
            ),
            (
                hit(&[&[0x1a, 1, b'x'][..], &field(0x28, wraps_to_1)].concat()),
                "Hit.item_code_slot: 4294967297 is out of range",
            ),
            (
                presence(&[&[0x1a, 1, b'x'][..], &field(0x28, wraps_to_1)].concat()),
                "Presence.item_code_slot: 4294967297 is out of range",
            ),
            (
                hit(&field(0x30, wraps_to_1)),
                "Hit.item_codetype: 4294967297 is out of range",
            ),
            (
                presence(&field(0x40, wraps_to_1 + 1)),
                "Presence.proximity: 4294967298 is out of range",
            ),
            (
                [field(0x10, wraps_to_1), hit(&[])].concat(),
                "Frame.action: 4294967297 is out of range",
            ),
            // A negative int32 is sign-extended to 64 bits on the wire: in range.
            (
                [field(0x10, u64::MAX), hit(&[])].concat(),
                "Frame.action: unknown value -1",
            ),
        ];
        for (frame, expected) in cases {
            let err = dec.event(&frame).unwrap_err().to_string();
            assert!(
                err.starts_with(expected),
                "{err:?} should start with {expected:?}"
            );
        }
        let ref_1 = dec.event(&hit(&field(0x08, 1))).expect("slot 1");
        assert_eq!(code_of(ref_1).as_deref(), Some("abc"));
    }

    #[test]
    fn extras_deeper_than_the_limit_are_rejected() {
        let dec = MessageDecoder::new(16, 4);
        assert!(dec.object(br#"{"a":[[1]]}"#, "X").is_ok());
        let err = dec
            .object(br#"{"a":[[[1]]]}"#, "X")
            .unwrap_err()
            .to_string();
        assert!(err.contains("5 levels"), "{err}");
    }

    /// The decoding the one-pass walk replaced, kept as its reference: the stream layer's
    /// walk for field 9, then prost's generated decoder for the whole envelope, then the
    /// same mapping into the model. Prost truncates a varint to its field's width; the
    /// decoder refuses it, and so does this reference, before prost sees the frame.
    fn reference(dec: &mut MessageDecoder, frame: &[u8]) -> Result<Event, FrameError> {
        let mut out_of_range = false;
        let mut check = |f: &Field, fits: fn(u64) -> bool| {
            out_of_range |= f.wire_type == WIRE_VARINT && !fits(f.varint);
        };
        let fits_u32 = |v: u64| u32::try_from(v).is_ok();
        let fits_i32 = |v: u64| i32::try_from(v as i64).is_ok();
        let at = walk_envelope(frame, |f| {
            if f.number == 2 {
                check(f, fits_i32);
            }
        })?;
        let time = walk_event(&frame[at.body..at.end], |f| match (at.number, f.number) {
            (PRESENCE | HIT, 1 | 5) => check(f, fits_u32),
            (PRESENCE | HIT, 6) | (PRESENCE, 8) => check(f, fits_i32),
            _ => {}
        })?;
        let time = dec.times.restore(time.as_ref());
        if out_of_range {
            // Which field, the property does not compare: only that both sides refuse.
            return Err(FrameError::OutOfRange {
                field: "(reference)",
                value: 0,
            });
        }
        let envelope = proto::Frame::decode(frame)?;
        let action = || action_from_proto(envelope.action);
        let kind = match envelope.event {
            Some(Msg::Presence(p)) => {
                let fields = PresenceFields {
                    item: item_fields(p.item_code.as_ref().map(|c| match c {
                        proto::presence::ItemCode::ItemCodeRef(r) => CodeForm::Ref(*r),
                        proto::presence::ItemCode::ItemCodeHex(h) => CodeForm::Hex(h),
                        proto::presence::ItemCode::ItemCodeText(t) => CodeForm::Text(t),
                    }))
                    .with(p.item_code_upper, p.item_code_slot, p.item_codetype)
                    .text(p.item_codetype_text.as_deref()),
                    proximity: p.proximity,
                    time_started: p.time_started,
                    hold_delay_s: p.hold_delay_s,
                    extra_json: &p.extra_json,
                    problem: None,
                };
                EventKind::Presence(action()?, dec.presence(&fields, time)?)
            }
            Some(Msg::Hit(h)) => {
                let fields = HitFields {
                    item: item_fields(h.item_code.as_ref().map(|c| match c {
                        proto::hit::ItemCode::ItemCodeRef(r) => CodeForm::Ref(*r),
                        proto::hit::ItemCode::ItemCodeHex(h) => CodeForm::Hex(h),
                        proto::hit::ItemCode::ItemCodeText(t) => CodeForm::Text(t),
                    }))
                    .with(h.item_code_upper, h.item_code_slot, h.item_codetype)
                    .text(h.item_codetype_text.as_deref()),
                    antenna: h.antenna,
                    signal_strength: h.signal_strength,
                    extra_json: &h.extra_json,
                    problem: None,
                };
                EventKind::Hit(action()?, dec.hit(&fields, time)?)
            }
            Some(Msg::Spot(s)) => EventKind::Spot(action()?, dec.spot(s, time)?),
            Some(Msg::Config(c)) => EventKind::Config(action()?, dec.config(c)?),
            Some(Msg::Firmware(f)) => EventKind::Firmware(action()?, dec.firmware(f)?),
            Some(Msg::Other(o)) => EventKind::Other(dec.other(o)?),
            Some(_) | None => return Err(FrameError::UnknownEvent),
        };
        Ok(Event {
            seq: envelope.seq,
            kind,
        })
    }

    fn item_fields(code: Option<CodeForm<'_>>) -> ItemFields<'_> {
        ItemFields {
            code,
            ..ItemFields::default()
        }
    }

    impl<'a> ItemFields<'a> {
        fn with(self, upper: bool, slot: Option<u32>, codetype: i32) -> Self {
            ItemFields {
                upper,
                slot,
                codetype,
                ..self
            }
        }

        fn text(self, codetype_text: Option<&'a str>) -> Self {
            ItemFields {
                codetype_text,
                ..self
            }
        }
    }

    /// A value of some wire type, for generated fields.
    #[derive(Debug, Clone)]
    enum Value {
        Varint(u64),
        Len(Vec<u8>),
        Fixed32,
        Fixed64,
    }

    fn value() -> impl Strategy<Value = Value> {
        let len = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..14),
            proptest::collection::vec(prop_oneof![Just(0x30u8), Just(0x74), Just(0xea)], 1..13),
            "[a-zA-Z0-9 ]{0,12}".prop_map(String::into_bytes),
            Just(br#"{"a":1,"b":[true]}"#.to_vec()),
            Just(br#"{"a":[[[[1]]]]}"#.to_vec()),
            Just(b"[1]".to_vec()),
            Just(b"EPC Gen2".to_vec()),
        ];
        prop_oneof![
            5 => prop_oneof![
                0u64..6,
                any::<u64>(),
                Just(u64::from(u32::MAX) + 2),
                Just(zigzag_encode(-1_000)),
            ]
            .prop_map(Value::Varint),
            4 => len.prop_map(Value::Len),
            1 => Just(Value::Fixed32),
            1 => Just(Value::Fixed64),
        ]
    }

    fn put_field(out: &mut Vec<u8>, number: u64, value: &Value) {
        let wire_type = match value {
            Value::Varint(_) => 0,
            Value::Fixed64 => 1,
            Value::Len(_) => 2,
            Value::Fixed32 => 5,
        };
        put_varint(out, number << 3 | wire_type);
        match value {
            Value::Varint(v) => put_varint(out, *v),
            Value::Fixed64 => out.extend_from_slice(&[7; 8]),
            Value::Len(b) => {
                put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Value::Fixed32 => out.extend_from_slice(&[7; 4]),
        }
    }

    /// A value that fits field `number` of a presence or hit (so that whole frames decode
    /// often), or once in a while any value.
    fn field_value(number: u64) -> BoxedStrategy<Value> {
        let varint = |r: std::ops::Range<u64>| r.prop_map(Value::Varint).boxed();
        let typed = match number {
            1 => varint(0..6),
            2 => proptest::collection::vec(any::<u8>(), 1..13)
                .prop_map(Value::Len)
                .boxed(),
            3 | 7 => "[a-zA-Z0-9 ]{0,12}"
                .prop_map(|s| Value::Len(s.into_bytes()))
                .boxed(),
            4 => varint(0..4),
            5 => prop_oneof![4 => 0u64..6, 1 => Just(u64::from(u32::MAX) + 2)]
                .prop_map(Value::Varint)
                .boxed(),
            6 => varint(0..3),
            8 => varint(0..5),
            15 => prop_oneof![
                Just(Vec::new()),
                Just(br#"{"a":1,"b":[true]}"#.to_vec()),
                Just(br#"{"a":[[[[1]]]]}"#.to_vec()),
            ]
            .prop_map(Value::Len)
            .boxed(),
            _ => any::<u64>().prop_map(Value::Varint).boxed(),
        };
        prop_oneof![6 => typed, 1 => value()].boxed()
    }

    /// Frames built field by field: mostly presences and hits, every field of them with
    /// values of right and wrong wire types, sometimes cut short.
    fn arbitrary_frame() -> impl Strategy<Value = Vec<u8>> {
        let event_field = prop_oneof![
            6 => prop_oneof![Just(5u64), Just(6)],
            1 => prop_oneof![Just(3u64), Just(4), Just(7), Just(8), Just(9), Just(10), Just(20)],
        ];
        let message_field = prop_oneof![6 => 1u64..12, 1 => Just(15u64), 1 => 12u64..40]
            .prop_flat_map(|number| (Just(number), field_value(number)));
        let meta_field = (
            1u64..3,
            prop_oneof![6 => (0u64..4).prop_map(Value::Varint), 1 => value()],
        );
        (
            proptest::collection::vec(meta_field, 0..3),
            event_field,
            proptest::collection::vec(message_field, 0..7),
            proptest::option::weighted(0.05, any::<prop::sample::Index>()),
        )
            .prop_map(|(meta, event_field, fields, cut)| {
                let mut body = Vec::new();
                for (number, value) in &fields {
                    put_field(&mut body, *number, value);
                }
                let mut frame = Vec::new();
                for (number, value) in &meta {
                    put_field(&mut frame, *number, value);
                }
                put_field(&mut frame, event_field, &Value::Len(body));
                if let Some(cut) = cut {
                    frame.truncate(cut.index(frame.len() + 1));
                }
                frame
            })
    }

    proptest! {
        #[test]
        fn the_one_pass_decoder_agrees_with_prosts_generated_decoder(
            frames in proptest::collection::vec(arbitrary_frame(), 1..12),
        ) {
            // A small table, so that slots beyond it occur too.
            let mut fast = MessageDecoder::new(4, 5);
            let mut slow = MessageDecoder::new(4, 5);
            for frame in &frames {
                let got = fast.event(frame);
                let expected = reference(&mut slow, frame);
                match (&got, &expected) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(_), Err(_)) => {}
                    _ => prop_assert!(false, "{frame:02x?}: {got:?} but prost gives {expected:?}"),
                }
                prop_assert_eq!(fast.times, slow.times);
            }
        }
    }
}
