//! The protobuf wire format at its lowest level: varints, zigzag, field keys, skipping a
//! field without knowing its type. Shared by the framing and the stream layer.

/// Wire type 0: a varint.
pub(crate) const WIRE_VARINT: u8 = 0;
/// Wire type 1: 8 bytes.
pub(crate) const WIRE_FIXED64: u8 = 1;
/// Wire type 2: a varint length, then that many bytes.
pub(crate) const WIRE_LEN: u8 = 2;
/// Wire type 5: 4 bytes.
pub(crate) const WIRE_FIXED32: u8 = 5;

/// The largest field number protobuf allows (2^29 - 1).
pub(crate) const MAX_FIELD_NUMBER: u64 = (1 << 29) - 1;

/// The longest varint: 10 bytes carry 64 bits.
pub(crate) const MAX_VARINT_BYTES: usize = 10;

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    /// The bytes end before the varint does (more may come; inside a complete message,
    /// it runs past the message's end).
    #[error("varint runs past the end of its message")]
    Incomplete,
    /// Ten bytes and still not ended, or the tenth byte carries bits beyond 64.
    #[error("varint is longer than 10 bytes or exceeds 64 bits")]
    Overlong,
}

/// Reads a varint at the start of `bytes`: its value and how many bytes it took.
#[inline(always)]
pub(crate) fn read_varint(bytes: &[u8]) -> Result<(u64, usize), VarintError> {
    if let Some(&b) = bytes.first() {
        if b < 0x80 {
            return Ok((u64::from(b), 1));
        }
    }
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(MAX_VARINT_BYTES) {
        if i == MAX_VARINT_BYTES - 1 && b > 1 {
            return Err(VarintError::Overlong);
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok((value, i + 1));
        }
    }
    if bytes.len() >= MAX_VARINT_BYTES {
        Err(VarintError::Overlong)
    } else {
        Err(VarintError::Incomplete)
    }
}

/// Appends `value` as a varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// How many bytes `value` takes as a varint.
pub(crate) fn varint_len(value: u64) -> usize {
    // 1 byte per started group of 7 bits, at least 1.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// sint64 → the unsigned value on the wire.
pub(crate) fn zigzag_encode(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The unsigned value on the wire → sint64.
pub(crate) fn zigzag_decode(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// One field read by [`next_field`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    /// Field number.
    pub number: u64,
    /// Wire type.
    pub wire_type: u8,
    /// Offset of the field's key in the message.
    pub start: usize,
    /// Offset of the field's value (after the key; for wire type 2, after the length).
    pub value_start: usize,
    /// Offset just past the field.
    pub end: usize,
    /// The varint value (wire type 0) or the length (wire type 2); 0 otherwise.
    pub varint: u64,
}

/// Why a field could not be read: small and `Copy`, so the walk stays cheap; rendered as
/// text only when a frame is rejected. Every `at` is the offset of the field's key in its
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// The key's varint is cut or overlong.
    #[error("field key at {at}: {problem}")]
    Key {
        /// Offset of the key.
        at: usize,
        /// What is wrong with the varint.
        problem: VarintError,
    },
    /// Field number 0 or above the protobuf maximum.
    #[error("field number {number} at {at} is out of range")]
    Number {
        /// Offset of the key.
        at: usize,
        /// The field number read.
        number: u64,
    },
    /// The value's varint (wire type 0) or length (wire type 2) is cut or overlong.
    #[error("field {number} at {at}: {problem}")]
    Value {
        /// Offset of the key.
        at: usize,
        /// The field number.
        number: u64,
        /// What is wrong with the varint.
        problem: VarintError,
    },
    /// The value runs past the end of its message.
    #[error("field {number} at {at}: runs past the end of its message")]
    PastEnd {
        /// Offset of the key.
        at: usize,
        /// The field number.
        number: u64,
    },
    /// Wire types 3, 4 (groups), 6 and 7.
    #[error("field {number} at {at}: wire type {wire_type} is not supported")]
    WireType {
        /// Offset of the key.
        at: usize,
        /// The field number.
        number: u64,
        /// The wire type read.
        wire_type: u8,
    },
}

/// Reads the field starting at `at` in the complete message `msg`.
#[inline(always)]
pub(crate) fn next_field(msg: &[u8], at: usize) -> Result<Field, FieldError> {
    // The common case first: a one-byte key (fields 1–15) of wire type 0 or 2 whose value
    // reads cleanly. Anything else takes the general path, which gives the same answer.
    if let Some(&key) = msg.get(at) {
        if (8..0x80).contains(&key) {
            let value_start = at + 1;
            let wire_type = key & 7;
            let number = u64::from(key >> 3);
            let rest = &msg[value_start..];
            if wire_type == WIRE_VARINT {
                if let Ok((varint, n)) = read_varint(rest) {
                    return Ok(Field {
                        number,
                        wire_type,
                        start: at,
                        value_start,
                        end: value_start + n,
                        varint,
                    });
                }
            } else if wire_type == WIRE_LEN {
                if let Ok((len, n)) = read_varint(rest) {
                    if len <= (rest.len() - n) as u64 {
                        return Ok(Field {
                            number,
                            wire_type,
                            start: at,
                            value_start: value_start + n,
                            end: value_start + n + len as usize,
                            varint: len,
                        });
                    }
                }
            }
        }
    }
    next_field_general(msg, at)
}

/// [`next_field`] for every key and wire type.
fn next_field_general(msg: &[u8], at: usize) -> Result<Field, FieldError> {
    let (key, key_len) =
        read_varint(&msg[at..]).map_err(|problem| FieldError::Key { at, problem })?;
    let number = key >> 3;
    let wire_type = (key & 7) as u8;
    if number == 0 || number > MAX_FIELD_NUMBER {
        return Err(FieldError::Number { at, number });
    }
    let value_start = at + key_len;
    let rest = &msg[value_start..];
    let value_error = |problem| FieldError::Value {
        at,
        number,
        problem,
    };
    let (varint, value_start, end) = match wire_type {
        WIRE_VARINT => {
            let (v, n) = read_varint(rest).map_err(value_error)?;
            (v, value_start, value_start + n)
        }
        WIRE_FIXED64 | WIRE_FIXED32 => {
            let n = if wire_type == WIRE_FIXED64 { 8 } else { 4 };
            if rest.len() < n {
                return Err(FieldError::PastEnd { at, number });
            }
            (0, value_start, value_start + n)
        }
        WIRE_LEN => {
            let (len, n) = read_varint(rest).map_err(value_error)?;
            if len > (rest.len() - n) as u64 {
                return Err(FieldError::PastEnd { at, number });
            }
            (len, value_start + n, value_start + n + len as usize)
        }
        _ => {
            return Err(FieldError::WireType {
                at,
                number,
                wire_type,
            })
        }
    };
    Ok(Field {
        number,
        wire_type,
        start: at,
        value_start,
        end,
        varint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varint_edge_cases() {
        assert_eq!(read_varint(&[0]), Ok((0, 1)));
        assert_eq!(read_varint(&[0x96, 0x01]), Ok((150, 2)));
        assert_eq!(read_varint(&[0x96]), Err(VarintError::Incomplete));
        assert_eq!(read_varint(&[]), Err(VarintError::Incomplete));
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(read_varint(&max), Ok((u64::MAX, 10)));
        let too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(read_varint(&too_big), Err(VarintError::Overlong));
        assert_eq!(read_varint(&[0x80; 11]), Err(VarintError::Overlong));
        assert_eq!(read_varint(&[0x80; 9]), Err(VarintError::Incomplete));
    }

    #[test]
    fn next_field_rejects_groups_and_lengths_past_the_end() {
        let text = |bytes: &[u8]| next_field(bytes, 0).unwrap_err().to_string();
        assert!(text(&[0x0b]).contains("wire type 3"));
        assert!(text(&[0x0a, 0x05, 1, 2]).contains("runs past the end"));
        assert!(text(&[0x00, 0x01]).contains("field number 0"));
        assert!(text(&[0x08, 0x80]).contains("field 1 at 0: varint runs past the end"));
    }

    proptest! {
        #[test]
        fn varint_round_trips_with_predicted_length(v in any::<u64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            prop_assert_eq!(read_varint(&out), Ok((v, out.len())));
        }

        #[test]
        fn the_common_case_reads_fields_as_the_general_path_does(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), 0u8..4, Just(0x08), Just(0x12), Just(0x80)],
                1..16,
            ),
        ) {
            prop_assert_eq!(next_field(&bytes, 0), next_field_general(&bytes, 0));
        }

        #[test]
        fn zigzag_round_trips(v in any::<i64>()) {
            prop_assert_eq!(zigzag_decode(zigzag_encode(v)), v);
        }
    }
}
