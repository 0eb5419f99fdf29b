//! The message layer: one [`Event`] ↔ one envelope ([`proto::Frame`]), with absolute times
//! in field 9 (the stream layer delta-codes them afterwards) and item codes through the
//! stream's table. Stateful only through that table.

use serde_json::Value;

use super::items::{CodeRef, ItemDecoderTable, ItemEncoderTable};
use super::proto::{self, frame::Event as Msg};
use crate::event::*;
use crate::time::Timestamp;

/// The code type sent as [`proto::ItemCodeType::EpcGen2`].
const EPC_GEN2: &str = "EPC Gen2";

/// An item code as carried by fields 1–3 of `Presence` and `Hit`.
enum CodeForm {
    Ref(u32),
    Hex(Vec<u8>),
    Text(String),
}

impl From<proto::presence::ItemCode> for CodeForm {
    fn from(c: proto::presence::ItemCode) -> Self {
        use proto::presence::ItemCode as C;
        match c {
            C::ItemCodeRef(r) => CodeForm::Ref(r),
            C::ItemCodeHex(h) => CodeForm::Hex(h),
            C::ItemCodeText(t) => CodeForm::Text(t),
        }
    }
}

impl From<proto::hit::ItemCode> for CodeForm {
    fn from(c: proto::hit::ItemCode) -> Self {
        use proto::hit::ItemCode as C;
        match c {
            C::ItemCodeRef(r) => CodeForm::Ref(r),
            C::ItemCodeHex(h) => CodeForm::Hex(h),
            C::ItemCodeText(t) => CodeForm::Text(t),
        }
    }
}

impl From<CodeForm> for proto::presence::ItemCode {
    fn from(c: CodeForm) -> Self {
        match c {
            CodeForm::Ref(r) => Self::ItemCodeRef(r),
            CodeForm::Hex(h) => Self::ItemCodeHex(h),
            CodeForm::Text(t) => Self::ItemCodeText(t),
        }
    }
}

impl From<CodeForm> for proto::hit::ItemCode {
    fn from(c: CodeForm) -> Self {
        match c {
            CodeForm::Ref(r) => Self::ItemCodeRef(r),
            CodeForm::Hex(h) => Self::ItemCodeHex(h),
            CodeForm::Text(t) => Self::ItemCodeText(t),
        }
    }
}

/// The item-code fields 1–5 of one message.
struct CodeFields {
    form: Option<CodeForm>,
    upper: bool,
    slot: Option<u32>,
}

/// Event → envelope, for one stream.
#[derive(Debug, Clone)]
pub(crate) struct MessageEncoder {
    items: ItemEncoderTable,
}

impl MessageEncoder {
    pub(crate) fn new(item_table_slots: usize) -> Self {
        MessageEncoder {
            items: ItemEncoderTable::new(item_table_slots),
        }
    }

    /// The envelope for `event`, times absolute.
    pub(crate) fn frame(&mut self, event: &Event) -> proto::Frame {
        let (action, msg) = match &event.kind {
            EventKind::Spot(a, s) => (*a, Msg::Spot(spot_to_proto(s))),
            EventKind::Config(a, c) => (*a, Msg::Config(config_to_proto(c))),
            EventKind::Presence(a, p) => (*a, Msg::Presence(self.presence(p))),
            EventKind::Hit(a, h) => (*a, Msg::Hit(self.hit(h))),
            EventKind::Firmware(a, f) => (*a, Msg::Firmware(firmware_to_proto(f))),
            EventKind::Other(o) => (
                Action::Create,
                Msg::Other(proto::OtherEvent {
                    resource_type: o.resource_type.clone(),
                    action: o.action.clone(),
                    object_json: json_bytes(&o.object),
                    time: None,
                }),
            ),
        };
        proto::Frame {
            seq: event.seq,
            action: action_to_proto(action) as i32,
            event: Some(msg),
        }
    }

    fn code(&mut self, code: Option<&str>) -> CodeFields {
        let Some(code) = code else {
            return CodeFields {
                form: None,
                upper: false,
                slot: None,
            };
        };
        let slot = match self.items.code(code) {
            CodeRef::Known(slot) => {
                return CodeFields {
                    form: Some(CodeForm::Ref(slot)),
                    upper: false,
                    slot: None,
                }
            }
            CodeRef::New(slot) => slot,
        };
        let (form, upper) = match hex_bytes(code) {
            Some((bytes, upper)) => (CodeForm::Hex(bytes), upper),
            None => (CodeForm::Text(code.to_string()), false),
        };
        CodeFields {
            form: Some(form),
            upper,
            slot,
        }
    }

    fn presence(&mut self, p: &Presence) -> proto::Presence {
        let code = self.code(p.item_code.as_deref());
        let (codetype, codetype_text) = codetype_to_proto(p.item_codetype.as_deref());
        proto::Presence {
            item_code: code.form.map(Into::into),
            item_code_upper: code.upper,
            item_code_slot: code.slot,
            item_codetype: codetype as i32,
            item_codetype_text: codetype_text,
            proximity: proximity_to_proto(p.proximity) as i32,
            time_last: p.time_last.map(Timestamp::as_millis),
            time_started: relative(p.time_started, p.time_last),
            hold_delay_s: p.hold_delay_s,
            extra_json: json_bytes(&p.extra),
        }
    }

    fn hit(&mut self, h: &Hit) -> proto::Hit {
        let code = self.code(h.item_code.as_deref());
        let (codetype, codetype_text) = codetype_to_proto(h.item_codetype.as_deref());
        proto::Hit {
            item_code: code.form.map(Into::into),
            item_code_upper: code.upper,
            item_code_slot: code.slot,
            item_codetype: codetype as i32,
            item_codetype_text: codetype_text,
            antenna: h.antenna,
            time: h.time.map(Timestamp::as_millis),
            signal_strength: h.signal_strength,
            extra_json: json_bytes(&h.extra),
        }
    }
}

fn spot_to_proto(s: &SpotStatus) -> proto::SpotStatus {
    proto::SpotStatus {
        spot_id: s.spot_id.clone(),
        version: s.version.clone(),
        pcb_version: s.pcb_version,
        online: s.online,
        dip_mask: s.dip_mask,
        rfid_swr: s
            .rfid_swr
            .as_ref()
            .map(|v| proto::Int64List { values: v.clone() }),
        boot_count: s.boot_count,
        watchdog_count: s.watchdog_count,
        time: s.time.map(Timestamp::as_millis),
        presence_create_count: s.presence_create_count,
        time_started: relative(s.time_started, s.time),
        seq_epoch: s.seq_epoch,
        extra_json: json_bytes(&s.extra),
    }
}

fn config_to_proto(c: &Config) -> proto::Config {
    proto::Config {
        rfid_power_dbm: c.rfid_power_dbm,
        send_hits: c.send_hits,
        auto_hold_delay: c.auto_hold_delay,
        fixed_hold_delay_s: c.fixed_hold_delay_s,
        telnet: c.telnet,
        hostname: c.hostname.clone(),
        brain_address: c.brain_address.clone(),
        reset: c.reset,
        time: None,
        extra_json: json_bytes(&c.extra),
    }
}

fn firmware_to_proto(f: &Firmware) -> proto::Firmware {
    proto::Firmware {
        url: f.url.clone(),
        version: f.version.clone(),
        reset_counters: f.reset_counters,
        time: None,
        extra_json: json_bytes(&f.extra),
    }
}

/// Envelope → event, for one stream.
#[derive(Debug, Clone)]
pub(crate) struct MessageDecoder {
    items: ItemDecoderTable,
    max_depth: usize,
}

impl MessageDecoder {
    pub(crate) fn new(item_table_slots: usize, max_depth: usize) -> Self {
        MessageDecoder {
            items: ItemDecoderTable::new(item_table_slots),
            max_depth,
        }
    }

    /// The event an envelope carries, given its event timestamp as restored by the stream
    /// layer (it replaces the delta in field 9); errors name the field.
    pub(crate) fn event(
        &mut self,
        frame: proto::Frame,
        time: Option<i64>,
    ) -> Result<Event, String> {
        let action = || action_from_proto(frame.action);
        let mut event = frame.event;
        if let Some(time) = time {
            match &mut event {
                Some(Msg::Spot(s)) => s.time = Some(time),
                Some(Msg::Presence(p)) => p.time_last = Some(time),
                Some(Msg::Hit(h)) => h.time = Some(time),
                // Messages whose field 9 this version ignores.
                _ => {}
            }
        }
        let kind = match event {
            Some(Msg::Spot(s)) => EventKind::Spot(action()?, self.spot(s)?),
            Some(Msg::Config(c)) => EventKind::Config(action()?, self.config(c)?),
            Some(Msg::Presence(p)) => EventKind::Presence(action()?, self.presence(p)?),
            Some(Msg::Hit(h)) => EventKind::Hit(action()?, self.hit(h)?),
            Some(Msg::Firmware(f)) => EventKind::Firmware(action()?, self.firmware(f)?),
            Some(Msg::Other(o)) => EventKind::Other(OtherEvent {
                object: self.object(&o.object_json, "OtherEvent.object_json")?,
                resource_type: o.resource_type,
                action: o.action,
            }),
            Some(announced) => {
                let (number, name) = match announced {
                    Msg::AntennaPresence(_) => (10, "antenna_presence"),
                    Msg::HitReport(_) => (11, "hit_report"),
                    Msg::SenseChange(_) => (12, "sense_change"),
                    Msg::BrainSense(_) => (13, "brain_sense"),
                    Msg::ItemSetChange(_) => (14, "item_set_change"),
                    Msg::TestPing(_) => (15, "test_ping"),
                    _ => (16, "log_message"),
                };
                return Err(format!(
                    "envelope field {number} ({name}): this announced event is not supported yet"
                ));
            }
            None => {
                return Err("envelope: no event message this version knows".to_string());
            }
        };
        Ok(Event {
            seq: frame.seq,
            kind,
        })
    }

    fn spot(&mut self, s: proto::SpotStatus) -> Result<SpotStatus, String> {
        let time = s.time.map(Timestamp);
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

    fn config(&mut self, c: proto::Config) -> Result<Config, String> {
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

    fn firmware(&mut self, f: proto::Firmware) -> Result<Firmware, String> {
        Ok(Firmware {
            url: f.url,
            version: f.version,
            reset_counters: f.reset_counters,
            extra: self.object(&f.extra_json, "Firmware.extra_json")?,
        })
    }

    fn presence(&mut self, p: proto::Presence) -> Result<Presence, String> {
        let code = CodeFields {
            form: p.item_code.map(Into::into),
            upper: p.item_code_upper,
            slot: p.item_code_slot,
        };
        let time_last = p.time_last.map(Timestamp);
        Ok(Presence {
            item_code: self.code(code, "Presence")?,
            item_codetype: codetype_from_proto(p.item_codetype, p.item_codetype_text, "Presence")?,
            time_started: absolute(p.time_started, time_last),
            time_last,
            proximity: proximity_from_proto(p.proximity)?,
            hold_delay_s: p.hold_delay_s,
            extra: self.object(&p.extra_json, "Presence.extra_json")?,
        })
    }

    fn hit(&mut self, h: proto::Hit) -> Result<Hit, String> {
        let code = CodeFields {
            form: h.item_code.map(Into::into),
            upper: h.item_code_upper,
            slot: h.item_code_slot,
        };
        Ok(Hit {
            time: h.time.map(Timestamp),
            item_code: self.code(code, "Hit")?,
            item_codetype: codetype_from_proto(h.item_codetype, h.item_codetype_text, "Hit")?,
            antenna: h.antenna,
            signal_strength: h.signal_strength,
            extra: self.object(&h.extra_json, "Hit.extra_json")?,
        })
    }

    fn code(&mut self, c: CodeFields, message: &str) -> Result<Option<String>, String> {
        let code = match c.form {
            None if c.slot.is_some() => {
                return Err(format!("{message}.item_code_slot without an item code"))
            }
            None => return Ok(None),
            Some(CodeForm::Ref(_)) if c.slot.is_some() => {
                return Err(format!("{message}.item_code_slot given with item_code_ref"))
            }
            Some(CodeForm::Ref(slot)) => {
                let code = self.items.get(slot).map_err(|e| format!("{message}.{e}"))?;
                return Ok(Some(code.to_string()));
            }
            Some(CodeForm::Hex(bytes)) => hex_text(&bytes, c.upper),
            Some(CodeForm::Text(text)) => text,
        };
        if let Some(slot) = c.slot {
            self.items
                .store(slot, &code)
                .map_err(|e| format!("{message}.{e}"))?;
        }
        Ok(Some(code))
    }

    /// An extras blob (or a whole object): empty is `{}`; nesting within `max_depth`,
    /// counting the event's array and object as the first two levels.
    fn object(&self, bytes: &[u8], field: &str) -> Result<Object, String> {
        if bytes.is_empty() {
            return Ok(Object::new());
        }
        let object: Object = serde_json::from_slice(bytes).map_err(|e| format!("{field}: {e}"))?;
        let depth = 2 + object.values().map(depth).max().unwrap_or(0);
        if depth > self.max_depth {
            return Err(format!(
                "{field}: nests {depth} levels deep, more than the limit of {}",
                self.max_depth
            ));
        }
        Ok(object)
    }
}

/// Levels of arrays/objects in `v` (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn json_bytes(object: &Object) -> Vec<u8> {
    if object.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(object).expect("a JSON object with string keys always serialises")
    }
}

/// A secondary time as sent: relative to the event timestamp when there is one.
fn relative(t: Option<Timestamp>, base: Option<Timestamp>) -> Option<i64> {
    let t = t?.as_millis();
    Some(match base {
        Some(b) => t.wrapping_sub(b.as_millis()),
        None => t,
    })
}

/// Inverse of [`relative`].
fn absolute(t: Option<i64>, base: Option<Timestamp>) -> Option<Timestamp> {
    let t = t?;
    Some(Timestamp(match base {
        Some(b) => b.as_millis().wrapping_add(t),
        None => t,
    }))
}

fn action_to_proto(a: Action) -> proto::Action {
    match a {
        Action::Create => proto::Action::Create,
        Action::Update => proto::Action::Update,
        Action::Delete => proto::Action::Delete,
    }
}

fn action_from_proto(a: i32) -> Result<Action, String> {
    match proto::Action::try_from(a) {
        Ok(proto::Action::Create) => Ok(Action::Create),
        Ok(proto::Action::Update) => Ok(Action::Update),
        Ok(proto::Action::Delete) => Ok(Action::Delete),
        Err(_) => Err(format!("Frame.action: unknown value {a}")),
    }
}

fn proximity_to_proto(p: Option<Proximity>) -> proto::Proximity {
    match p {
        None => proto::Proximity::Unspecified,
        Some(Proximity::Far) => proto::Proximity::Far,
        Some(Proximity::Near) => proto::Proximity::Near,
        Some(Proximity::Immediate) => proto::Proximity::Immediate,
    }
}

fn proximity_from_proto(p: i32) -> Result<Option<Proximity>, String> {
    match proto::Proximity::try_from(p) {
        Ok(proto::Proximity::Unspecified) => Ok(None),
        Ok(proto::Proximity::Far) => Ok(Some(Proximity::Far)),
        Ok(proto::Proximity::Near) => Ok(Some(Proximity::Near)),
        Ok(proto::Proximity::Immediate) => Ok(Some(Proximity::Immediate)),
        Err(_) => Err(format!("Presence.proximity: unknown value {p}")),
    }
}

fn codetype_to_proto(t: Option<&str>) -> (proto::ItemCodeType, Option<String>) {
    match t {
        Some(EPC_GEN2) => (proto::ItemCodeType::EpcGen2, None),
        other => (proto::ItemCodeType::Unspecified, other.map(str::to_string)),
    }
}

fn codetype_from_proto(
    known: i32,
    text: Option<String>,
    message: &str,
) -> Result<Option<String>, String> {
    match (proto::ItemCodeType::try_from(known), text) {
        (Ok(proto::ItemCodeType::Unspecified), text) => Ok(text),
        (Ok(proto::ItemCodeType::EpcGen2), None) => Ok(Some(EPC_GEN2.to_string())),
        (Ok(_), Some(_)) => Err(format!(
            "{message}: both item_codetype and item_codetype_text are set"
        )),
        (Err(_), _) => Err(format!("{message}.item_codetype: unknown value {known}")),
    }
}

/// A code of an even number (≥ 2) of hex digits, all letters of one case, as bytes; and
/// whether its letters are upper case. `None` for any other code.
fn hex_bytes(code: &str) -> Option<(Vec<u8>, bool)> {
    let b = code.as_bytes();
    if b.is_empty() || b.len() & 1 == 1 {
        return None;
    }
    let (mut lower, mut upper) = (false, false);
    let mut out = Vec::with_capacity(b.len() / 2);
    for pair in b.chunks_exact(2) {
        let mut byte = 0u8;
        for &c in pair {
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => {
                    lower = true;
                    c - b'a' + 10
                }
                b'A'..=b'F' => {
                    upper = true;
                    c - b'A' + 10
                }
                _ => return None,
            };
            byte = byte << 4 | v;
        }
        out.push(byte);
    }
    if lower && upper {
        return None;
    }
    Some((out, upper))
}

/// Bytes as hex digits in the given case.
fn hex_text(bytes: &[u8], upper: bool) -> String {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(digits[usize::from(b >> 4)]));
        s.push(char::from(digits[usize::from(b & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_codes_of_one_case_go_as_bytes_and_come_back_in_that_case() {
        for code in [
            "303474d3702127ea4f78377d",
            "303474D3702127EA4F78377D",
            "0123",
        ] {
            let (bytes, upper) = hex_bytes(code).unwrap();
            assert_eq!(bytes.len(), code.len() / 2);
            assert_eq!(hex_text(&bytes, upper), code);
        }
        for not_hex in ["", "abc", "aB", "xy", "12 4", "é0"] {
            assert_eq!(hex_bytes(not_hex), None, "{not_hex:?}");
        }
    }

    #[test]
    fn secondary_times_are_relative_to_the_event_timestamp() {
        let p = Presence {
            time_started: Some(Timestamp(1_000)),
            time_last: Some(Timestamp(5_000)),
            ..Presence::default()
        };
        let mut enc = MessageEncoder::new(16);
        let Some(Msg::Presence(m)) = enc
            .frame(&Event::new(EventKind::Presence(Action::Create, p)))
            .event
        else {
            panic!("not a presence");
        };
        assert_eq!(m.time_started, Some(-4_000));
        assert_eq!(
            absolute(Some(-4_000), Some(Timestamp(5_000))),
            Some(Timestamp(1_000))
        );
        assert_eq!(absolute(Some(7), None), Some(Timestamp(7)));
    }

    #[test]
    fn errors_name_the_field() {
        let mut dec = MessageDecoder::new(16, 32);
        let bad = |event| proto::Frame {
            seq: None,
            action: 0,
            event: Some(event),
        };
        let cases = [
            (
                bad(Msg::Presence(proto::Presence {
                    proximity: 9,
                    ..Default::default()
                })),
                "Presence.proximity: unknown value 9",
            ),
            (
                bad(Msg::Hit(proto::Hit {
                    item_code: Some(proto::hit::ItemCode::ItemCodeRef(3)),
                    ..Default::default()
                })),
                "Hit.item_code_ref 3 names a slot that holds no code",
            ),
            (
                bad(Msg::Config(proto::Config {
                    extra_json: b"[1]".to_vec(),
                    ..Default::default()
                })),
                "Config.extra_json: invalid type",
            ),
            (
                bad(Msg::TestPing(proto::TestPing::default())),
                "envelope field 15 (test_ping)",
            ),
            (
                proto::Frame {
                    seq: None,
                    action: 7,
                    event: Some(Msg::Spot(proto::SpotStatus::default())),
                },
                "Frame.action: unknown value 7",
            ),
        ];
        for (frame, expected) in cases {
            let err = dec.event(frame, None).unwrap_err();
            assert!(
                err.starts_with(expected),
                "{err:?} should start with {expected:?}"
            );
        }
    }

    #[test]
    fn extras_deeper_than_the_limit_are_rejected() {
        let dec = MessageDecoder::new(16, 4);
        assert!(dec.object(br#"{"a":[[1]]}"#, "X").is_ok());
        let err = dec.object(br#"{"a":[[[1]]]}"#, "X").unwrap_err();
        assert!(err.contains("5 levels"), "{err}");
    }
}
