//! The hand-written JSON writers: the documents of items and presences (written with nearly
//! every upstream event) and the parts of derived events, byte for byte what serde_json
//! writes (the tests pin them to it).

use serde::Serialize;
use serde_json::Value;

use super::{Item, Location, PresenceResource, Spot};
use crate::ids::Id;

/// The JSON document of a resource: what `serde_json::to_string` writes. Items and presences
/// change with nearly every upstream event, so theirs is written directly (the field names
/// need no escaping, ids and times none either); tests pin it to serde's text.
pub(super) trait WriteJson: Serialize {
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

impl WriteJson for Spot {}

impl WriteJson for Location {}

impl WriteJson for Item {
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
        doc.push_str(itoa::Buffer::new().format(self.move_count));
        doc.push_str(",\"time_moved\":");
        push_opt_time(doc, self.time_moved);
        doc.push_str(",\"time_created\":");
        push_time(doc, self.time_created);
        doc.push_str(",\"time_updated\":");
        push_time(doc, self.time_updated);
        doc.push('}');
    }
}

impl WriteJson for PresenceResource {
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
pub(super) fn push_opt_id(doc: &mut String, id: Option<Id>) {
    match id {
        Some(id) => {
            doc.push('"');
            id.push_hex(doc);
            doc.push('"');
        }
        None => doc.push_str("null"),
    }
}

/// A time as JSON, as [`super::model::iso`] writes it. The text up to the second is remembered for several
/// seconds: the times written one after the other are mostly of a few seconds (`now`, device
/// times a little behind it, the last sighting of an item that left a few seconds ago).
pub(super) fn push_time(doc: &mut String, ms: i64) {
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

/// An optional time as JSON, as [`super::model::iso::opt`] writes it.
pub(super) fn push_opt_time(doc: &mut String, ms: Option<i64>) {
    match ms {
        Some(ms) => push_time(doc, ms),
        None => doc.push_str("null"),
    }
}

/// An optional JSON value as serde_json writes it (`null` without the serializer).
pub(super) fn push_json_value(doc: &mut String, value: Option<&Value>) {
    match value {
        None | Some(Value::Null) => doc.push_str("null"),
        Some(Value::String(text)) => push_json_str(doc, text),
        Some(other) => doc.push_str(&other.to_string()),
    }
}

/// `text` as a JSON string, as serde_json writes it (quoted as is when nothing needs escaping).
pub(super) fn push_json_str(doc: &mut String, text: &str) {
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
pub(super) fn to_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::*;

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
            #[serde(with = "crate::domain::model::iso")]
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
            let presence = PresenceResource {
                id: Id(n as u64),
                item: Id(u64::MAX - n as u64),
                location: Id(0x10),
                proximity: NamedProximity(
                    [Proximity::Far, Proximity::Near, Proximity::Immediate][n % 3],
                ),
                reporters: (0..n as u64)
                    .map(|r| {
                        (
                            Id(r * 0x1111),
                            NamedProximity([Proximity::Near, Proximity::Far][r as usize % 2]),
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
}
