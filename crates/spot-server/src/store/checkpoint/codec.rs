//! The binary encoding of the rows that change with nearly every upstream event — items and
//! presences — in `state.db`'s deltas (a record tagged [`super::BINARY`]). Their JSON document
//! was several times longer than the row: rendering it (times as ISO text, ids as hex) and
//! compressing it were most of the row writer's work, and parsing it back most of a start's.
//! Spots and locations (few, and with free-form JSON objects) stay JSON documents.
//!
//! The row's id is the record's, so it is not repeated. Integers are little-endian: ids
//! `u64` (8 bytes), counts and times LEB128 varints (a time as its `u64` bits), a proximity
//! one byte (0 far, 1 near, 2 immediate), a string its varint length and UTF-8 bytes, an
//! optional JSON value (`label`, `custom`) a varint length (0: none) and its JSON text.
//!
//! - item: [`FORMAT`], flags (bit 0 `is_present`, bit 1 `location` follows, bit 2
//!   `time_moved` follows), `code_hex`, `technology`, `label`, `custom`, `location`,
//!   `move_count`, `time_moved`, `time_created`, `time_updated`.
//! - presence: [`FORMAT`], flags (bit 2 `time_event` follows), `item`, `location`,
//!   `proximity`, reporter count, per reporter its spot id and proximity, `time_event`,
//!   `time_created`, `time_updated`.

use std::sync::Arc;

use serde_json::Value;
use spot_protocol::Proximity;

use crate::domain::{Item, NamedProximity, PresenceResource, Reporters};
use crate::ids::Id;

/// First byte of every encoded row: the layout below (another layout gets another number).
pub const FORMAT: u8 = 1;

const PRESENT: u8 = 1;
const LOCATION: u8 = 2;
const TIME: u8 = 4;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_id(out: &mut Vec<u8>, id: Id) {
    out.extend_from_slice(&id.0.to_le_bytes());
}

fn put_time(out: &mut Vec<u8>, time: i64) {
    put_varint(out, time as u64);
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: Option<&Value>) {
    match value {
        None => out.push(0),
        Some(value) => {
            // Never empty: the shortest JSON text is one byte.
            let text = value.to_string();
            put_str(out, &text);
        }
    }
}

fn prox_byte(p: NamedProximity) -> u8 {
    match p.0 {
        Proximity::Far => 0,
        Proximity::Near => 1,
        Proximity::Immediate => 2,
    }
}

/// Appends the encoding of `item`.
pub fn put_item(out: &mut Vec<u8>, item: &Item) {
    out.push(FORMAT);
    let flags = (u8::from(item.is_present) * PRESENT)
        | (u8::from(item.location.is_some()) * LOCATION)
        | (u8::from(item.time_moved.is_some()) * TIME);
    out.push(flags);
    put_str(out, &item.code_hex);
    put_str(out, &item.technology);
    put_value(out, item.label.as_deref());
    put_value(out, item.custom.as_deref());
    if let Some(location) = item.location {
        put_id(out, location);
    }
    put_varint(out, item.move_count);
    if let Some(time) = item.time_moved {
        put_time(out, time);
    }
    put_time(out, item.time_created);
    put_time(out, item.time_updated);
}

/// Appends the encoding of `presence`.
pub fn put_presence(out: &mut Vec<u8>, presence: &PresenceResource) {
    out.push(FORMAT);
    out.push(u8::from(presence.time_event.is_some()) * TIME);
    put_id(out, presence.item);
    put_id(out, presence.location);
    out.push(prox_byte(presence.proximity));
    put_varint(out, presence.reporters.len() as u64);
    for (spot, proximity) in presence.reporters.iter() {
        put_id(out, *spot);
        out.push(prox_byte(*proximity));
    }
    if let Some(time) = presence.time_event {
        put_time(out, time);
    }
    put_time(out, presence.time_created);
    put_time(out, presence.time_updated);
}

/// Why a stored row or checkpoint record cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The row's format byte is not one this version reads.
    #[error("row format {0}")]
    Format(u8),
    /// The bytes end inside a field.
    #[error("{what} cut short at byte {at} of {len}")]
    CutShort {
        /// A row or a record.
        what: &'static str,
        /// Where the missing field starts.
        at: usize,
        /// Bytes there are.
        len: usize,
    },
    /// A varint runs past 64 bits.
    #[error("varint too long at byte {0}")]
    VarintTooLong(usize),
    /// A length that does not fit this machine's `usize`.
    #[error("length {0} too large")]
    Length(u64),
    /// A text field is not UTF-8.
    #[error("row text: {0}")]
    Text(#[from] std::str::Utf8Error),
    /// A JSON field does not parse.
    #[error("row value: {0}")]
    Value(#[from] serde_json::Error),
    /// A proximity byte out of range.
    #[error("proximity {0}")]
    Proximity(u8),
    /// Bytes left over after the last field.
    #[error("{0} bytes after the row")]
    Trailing(usize),
    /// A record's table tag is unknown.
    #[error("record tag {0:#x}")]
    RecordTag(u8),
    /// A compressed blob shorter than its size header.
    #[error("blob of {0} bytes")]
    BlobHead(usize),
    /// A compressed blob does not decompress.
    #[error("blob does not decompress: {0}")]
    Lz4(#[from] lz4_flex::block::DecompressError),
    /// A blob decompressed to another size than its header says.
    #[error("{got} bytes where {announced} were announced")]
    SizeMismatch {
        /// Bytes decompressed.
        got: usize,
        /// Bytes the header announced.
        announced: usize,
    },
}

/// Reads an encoding back.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, RowError> {
        let mut r = Reader { bytes, at: 0 };
        match r.byte()? {
            FORMAT => Ok(r),
            other => Err(RowError::Format(other)),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RowError> {
        let bytes =
            self.bytes
                .get(self.at..self.at.saturating_add(n))
                .ok_or(RowError::CutShort {
                    what: "row",
                    at: self.at,
                    len: self.bytes.len(),
                })?;
        self.at += n;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, RowError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, RowError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(RowError::VarintTooLong(self.at))
    }

    fn id(&mut self) -> Result<Id, RowError> {
        let bytes = self.take(8)?;
        Ok(Id(u64::from_le_bytes(bytes.try_into().unwrap_or_default())))
    }

    fn time(&mut self) -> Result<i64, RowError> {
        Ok(self.varint()? as i64)
    }

    fn str(&mut self) -> Result<&'a str, RowError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| RowError::Length(len))?;
        Ok(std::str::from_utf8(self.take(len)?)?)
    }

    fn value(&mut self) -> Result<Option<Box<Value>>, RowError> {
        match self.str()? {
            "" => Ok(None),
            text => Ok(Some(serde_json::from_str(text)?)),
        }
    }

    fn prox(&mut self) -> Result<NamedProximity, RowError> {
        Ok(NamedProximity(match self.byte()? {
            0 => Proximity::Far,
            1 => Proximity::Near,
            2 => Proximity::Immediate,
            other => return Err(RowError::Proximity(other)),
        }))
    }

    fn end(self) -> Result<(), RowError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(RowError::Trailing(self.bytes.len() - self.at))
        }
    }
}

/// The item `id` encoded in `bytes`.
pub fn item(id: Id, bytes: &[u8]) -> Result<Item, RowError> {
    let mut r = Reader::new(bytes)?;
    let flags = r.byte()?;
    let code_hex = r.str()?.into();
    let technology: Arc<str> = r.str()?.into();
    let label = r.value()?;
    let custom = r.value()?;
    let location = if flags & LOCATION != 0 {
        Some(r.id()?)
    } else {
        None
    };
    let move_count = r.varint()?;
    let time_moved = if flags & TIME != 0 {
        Some(r.time()?)
    } else {
        None
    };
    let item = Item {
        id,
        code_hex,
        technology,
        label,
        custom,
        is_present: flags & PRESENT != 0,
        location,
        move_count,
        time_moved,
        time_created: r.time()?,
        time_updated: r.time()?,
    };
    r.end()?;
    Ok(item)
}

/// The presence `id` encoded in `bytes`.
pub fn presence(id: Id, bytes: &[u8]) -> Result<PresenceResource, RowError> {
    let mut r = Reader::new(bytes)?;
    let flags = r.byte()?;
    let item = r.id()?;
    let location = r.id()?;
    let proximity = r.prox()?;
    let n = r.varint()?;
    let mut reporters = Reporters::default();
    for _ in 0..n {
        let spot = r.id()?;
        reporters.insert(spot, r.prox()?);
    }
    let time_event = if flags & TIME != 0 {
        Some(r.time()?)
    } else {
        None
    };
    let presence = PresenceResource {
        id,
        item,
        location,
        proximity,
        reporters,
        time_event,
        time_created: r.time()?,
        time_updated: r.time()?,
    };
    r.end()?;
    Ok(presence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item_of(n: u64) -> Item {
        Item {
            id: Id(0x0123_4567_89ab_0000 + n),
            code_hex: "30342e00d5d77ca2bc9a8c94".into(),
            technology: "EPC Gen2".into(),
            label: None,
            custom: None,
            is_present: true,
            location: Some(Id(0x0123_4567_89ab_1111)),
            move_count: 3,
            time_moved: Some(1_764_000_000_123),
            time_created: 1_764_000_000_000,
            time_updated: 1_764_000_000_456,
        }
    }

    #[test]
    fn items_read_back_as_written_with_and_without_their_optional_fields() {
        let full = Item {
            label: Some(Box::new(Value::from("shelf \"A\""))),
            custom: Some(Box::new(serde_json::json!({"k": [1, null, "ü"]}))),
            ..item_of(1)
        };
        let bare = Item {
            is_present: false,
            location: None,
            time_moved: None,
            move_count: u64::MAX,
            time_created: -1,
            time_updated: 0,
            code_hex: "".into(),
            ..item_of(2)
        };
        for it in [item_of(0), full, bare] {
            let mut bytes = vec![];
            put_item(&mut bytes, &it);
            assert_eq!(item(it.id, &bytes).unwrap(), it);
        }
        let mut bytes = vec![];
        put_item(&mut bytes, &item_of(0));
        assert!(bytes.len() < 80, "{} bytes (its JSON is ~320)", bytes.len());
    }

    #[test]
    fn presences_read_back_as_written() {
        let spot = |n: u64| Id(0x0aaa_0000_0000_0000 + n);
        let full = PresenceResource {
            id: Id(7),
            item: Id(8),
            location: Id(9),
            proximity: NamedProximity(Proximity::Immediate),
            reporters: [
                (spot(2), NamedProximity(Proximity::Far)),
                (spot(1), NamedProximity(Proximity::Immediate)),
                (spot(3), NamedProximity(Proximity::Near)),
            ]
            .into_iter()
            .collect(),
            time_event: Some(1_764_000_000_001),
            time_created: 1_764_000_000_000,
            time_updated: 1_764_000_000_002,
        };
        let bare = PresenceResource {
            reporters: Reporters::default(),
            time_event: None,
            ..full.clone()
        };
        for p in [full, bare] {
            let mut bytes = vec![];
            put_presence(&mut bytes, &p);
            assert_eq!(presence(p.id, &bytes).unwrap(), p);
        }
    }

    #[test]
    fn damaged_encodings_are_refused_not_misread() {
        let mut bytes = vec![];
        put_item(&mut bytes, &item_of(0));
        for cut in 0..bytes.len() {
            assert!(item(Id(1), &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(item(Id(1), &longer)
            .unwrap_err()
            .to_string()
            .contains("after the row"));
        let mut other = bytes.clone();
        other[0] = FORMAT + 1;
        assert!(item(Id(1), &other)
            .unwrap_err()
            .to_string()
            .contains("row format"));
        let mut p = vec![];
        put_presence(
            &mut p,
            &PresenceResource {
                id: Id(1),
                item: Id(2),
                location: Id(3),
                proximity: NamedProximity(Proximity::Far),
                reporters: Reporters::default(),
                time_event: None,
                time_created: 0,
                time_updated: 0,
            },
        );
        p[18] = 9; // the proximity
        assert!(presence(Id(1), &p)
            .unwrap_err()
            .to_string()
            .contains("proximity 9"));
    }
}
