//! The sender's message layer: one [`Event`] → one envelope ([`proto::Frame`]), with
//! absolute times in field 9 (the stream layer delta-codes them afterwards) and item codes
//! through the stream's table. Stateful only through that table. The item-code text forms
//! live here too; the receiver's side is [`super::decode`].

use super::items::{CodeRef, ItemEncoderTable};
use super::proto::{self, frame::Event as Msg};
use crate::event::EPC_GEN2;
use crate::event::*;
use crate::time::Timestamp;

/// An item code as carried by fields 1–3 of `Presence` and `Hit`.
enum CodeForm {
    Ref(u32),
    Hex(Vec<u8>),
    Text(String),
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

fn action_to_proto(a: Action) -> proto::Action {
    match a {
        Action::Create => proto::Action::Create,
        Action::Update => proto::Action::Update,
        Action::Delete => proto::Action::Delete,
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

fn codetype_to_proto(t: Option<&str>) -> (proto::ItemCodeType, Option<String>) {
    match t {
        Some(EPC_GEN2) => (proto::ItemCodeType::EpcGen2, None),
        other => (proto::ItemCodeType::Unspecified, other.map(str::to_string)),
    }
}

/// A code of an even number (≥ 2) of hex digits, all letters of one case, as bytes; and
/// whether its letters are upper case. `None` for any other code.
fn hex_bytes(code: &str) -> Option<(Vec<u8>, bool)> {
    let b = code.as_bytes();
    if b.is_empty() || b.len() & 1 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 2);
    let mut high = None;
    let upper = crate::hex::one_case_hex(b, |digit| match high.take() {
        None => high = Some(digit),
        Some(h) => out.push(h << 4 | digit),
    })?;
    Some((out, upper))
}

/// Bytes as hex digits in the given case (inline, without an allocation, up to 12 bytes).
pub(super) fn hex_text(bytes: &[u8], upper: bool) -> ItemCode {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut text = ItemCode::with_capacity(bytes.len() * 2);
    // 12 bytes at a time through a stack buffer: an EPC Gen2 code in one step.
    for chunk in bytes.chunks(12) {
        let mut buf = [0u8; 24];
        for (pair, &b) in buf.chunks_exact_mut(2).zip(chunk) {
            pair.copy_from_slice(&[digits[usize::from(b >> 4)], digits[usize::from(b & 15)]]);
        }
        text.push_str(std::str::from_utf8(&buf[..2 * chunk.len()]).expect("hex digits are ASCII"));
    }
    text
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
            // Longer than the 12 bytes hex_text converts at a time.
            "303474d3702127ea4f78377d303474d3702127ea4f78377d0a",
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
    }
}
