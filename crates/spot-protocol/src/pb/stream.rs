//! The stream layer's timestamp rule (docs/protobuf.md, "Field 9"): in every frame, field 9
//! of the event message holds the event timestamp; on the wire it is the difference to the
//! previous field 9 on the stream. This module finds field 9 by walking the wire format
//! generically — envelope fields 1 and 2 are metadata, any other envelope field is the event
//! message — so it works for event messages this version has never heard of.

use super::wire::{next_field, put_varint, read_varint, varint_len, zigzag_decode, zigzag_encode};
use super::wire::{MAX_FIELD_NUMBER, WIRE_LEN, WIRE_VARINT};

/// The field number of the event timestamp in every event message.
pub(crate) const TIMESTAMP_FIELD: u64 = 9;
/// Envelope fields below this number are metadata; the others are event messages.
pub(crate) const FIRST_EVENT_FIELD: u64 = 3;

/// Per-stream state of the timestamp rule, one for each direction of each stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TimestampDelta {
    /// The last event timestamp seen on the stream (0 before the first).
    previous: i64,
}

impl TimestampDelta {
    /// Sender side: rewrites the absolute field 9 of `frame` as a delta. Returns `None` when
    /// the frame has no field 9 (use it unchanged), else the rewritten frame in `scratch`.
    pub(crate) fn encode<'s>(
        &mut self,
        frame: &[u8],
        scratch: &'s mut Vec<u8>,
    ) -> Result<Option<&'s [u8]>, String> {
        rewrite(frame, scratch, |absolute| {
            let delta = absolute.wrapping_sub(self.previous);
            self.previous = absolute;
            delta
        })
    }

    /// Receiver side: the absolute event timestamp of `frame` (restored from the delta in
    /// its field 9), or `None` when the frame has none. The frame itself is not copied: the
    /// message layer puts the value into field 9 of the message it decodes. A frame whose
    /// envelope or event message does not walk is an error and leaves the state unchanged.
    pub(crate) fn restore(&mut self, frame: &[u8]) -> Result<Option<i64>, String> {
        let Some(l) = locate(frame)? else {
            return Ok(None);
        };
        let absolute = self.previous.wrapping_add(l.time);
        self.previous = absolute;
        Ok(Some(absolute))
    }

    /// Receiver side, byte for byte: `frame` with its field 9 restored (in `scratch`), the
    /// exact inverse of [`TimestampDelta::encode`]. The decoder uses the cheaper
    /// [`TimestampDelta::restore`]; this is the reference the tests hold it to.
    #[cfg(test)]
    pub(crate) fn decode<'s>(
        &mut self,
        frame: &[u8],
        scratch: &'s mut Vec<u8>,
    ) -> Result<Option<&'s [u8]>, String> {
        rewrite(frame, scratch, |delta| {
            let absolute = self.previous.wrapping_add(delta);
            self.previous = absolute;
            absolute
        })
    }
}

/// Where the timestamp sits in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Located {
    /// Offset of the event message's key in the envelope, and its field number.
    event_key: usize,
    event_number: u64,
    /// Offset of the event message's first byte.
    event_body: usize,
    /// Offset just past the event message.
    event_end: usize,
    /// Offset of field 9's value, and just past it.
    value: (usize, usize),
    /// Field 9's value as a sint64.
    time: i64,
}

/// Walks `frame` (an envelope) and finds field 9 of its event message; checks the structure
/// of the envelope and of the event message on the way.
#[inline]
fn locate(frame: &[u8]) -> Result<Option<Located>, String> {
    match locate_fast(frame) {
        Some(found) => Ok(found),
        None => locate_checked(frame),
    }
}

/// The common case, lean: `None` for anything unusual, which [`locate_checked`] then walks
/// again to name the problem (or to accept what this path was too cautious for).
#[inline]
fn locate_fast(frame: &[u8]) -> Option<Option<Located>> {
    /// A varint at `*at`, advancing past it.
    #[inline(always)]
    fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
        let first = *b.get(*at)?;
        if first < 0x80 {
            *at += 1;
            return Some(u64::from(first));
        }
        let (v, n) = read_varint(&b[*at..]).ok()?;
        *at += n;
        Some(v)
    }
    /// Skips the value of a field of `wire_type` at `*at`; the varint or length read.
    #[inline(always)]
    fn skip(b: &[u8], at: &mut usize, wire_type: u8) -> Option<u64> {
        match wire_type {
            WIRE_VARINT => varint(b, at),
            WIRE_LEN => {
                let len = varint(b, at)?;
                if len > (b.len() - *at) as u64 {
                    return None;
                }
                *at += len as usize;
                Some(len)
            }
            _ => None,
        }
    }
    let mut at = 0;
    let mut event = None;
    while at < frame.len() {
        let start = at;
        let key = varint(frame, &mut at)?;
        let (number, wire_type) = (key >> 3, (key & 7) as u8);
        if number == 0
            || number > MAX_FIELD_NUMBER
            || (number >= FIRST_EVENT_FIELD && (wire_type != WIRE_LEN || event.is_some()))
        {
            return None;
        }
        let len = skip(frame, &mut at, wire_type)?;
        if number >= FIRST_EVENT_FIELD {
            event = Some((start, number, at - len as usize, at));
        }
    }
    let (event_key, event_number, event_body, event_end) = event?;
    let body = &frame[event_body..event_end];
    let mut at = 0;
    let mut found = None;
    while at < body.len() {
        let key = varint(body, &mut at)?;
        let (number, wire_type) = (key >> 3, (key & 7) as u8);
        if number == 0 || number > MAX_FIELD_NUMBER {
            return None;
        }
        let value_start = at;
        let value = skip(body, &mut at, wire_type)?;
        if number == TIMESTAMP_FIELD {
            if wire_type != WIRE_VARINT || found.is_some() {
                return None;
            }
            found = Some((value_start, at, value));
        }
    }
    Some(found.map(|(start, end, value)| Located {
        event_key,
        event_number,
        event_body,
        event_end,
        value: (event_body + start, event_body + end),
        time: zigzag_decode(value),
    }))
}

/// [`locate`] with every check named.
#[cold]
fn locate_checked(frame: &[u8]) -> Result<Option<Located>, String> {
    let mut at = 0;
    let mut event = None;
    while at < frame.len() {
        let f = next_field(frame, at).map_err(|e| format!("envelope: {e}"))?;
        if f.number >= FIRST_EVENT_FIELD {
            if f.wire_type != WIRE_LEN {
                return Err(format!(
                    "envelope field {}: an event message must have wire type 2, not {}",
                    f.number, f.wire_type
                ));
            }
            if event.is_some() {
                return Err(format!(
                    "envelope field {}: a frame carries exactly one event message",
                    f.number
                ));
            }
            event = Some(f);
        }
        at = f.end;
    }
    let Some(event) = event else {
        return Err("envelope: no event message (fields 3 and up)".to_string());
    };
    let body = &frame[event.value_start..event.end];
    let mut at = 0;
    let mut found = None;
    while at < body.len() {
        let f = next_field(body, at).map_err(|e| format!("event message: {e}"))?;
        if f.number == TIMESTAMP_FIELD {
            if f.wire_type != WIRE_VARINT {
                return Err(format!(
                    "event message: field 9 (timestamp) must have wire type 0, not {}",
                    f.wire_type
                ));
            }
            if found.is_some() {
                return Err("event message: field 9 (timestamp) occurs twice".to_string());
            }
            found = Some(f);
        }
        at = f.end;
    }
    Ok(found.map(|f| Located {
        event_key: event.start,
        event_number: event.number,
        event_body: event.value_start,
        event_end: event.end,
        value: (event.value_start + f.value_start, event.value_start + f.end),
        time: zigzag_decode(f.varint),
    }))
}

/// Replaces field 9 of the event message by `map(field 9)`, re-sizing the event message's
/// length prefix. The state behind `map` is only touched once the frame walked cleanly.
fn rewrite<'s>(
    frame: &[u8],
    scratch: &'s mut Vec<u8>,
    map: impl FnOnce(i64) -> i64,
) -> Result<Option<&'s [u8]>, String> {
    let Some(l) = locate(frame)? else {
        return Ok(None);
    };
    let new_value = zigzag_encode(map(l.time));
    let old_value_len = l.value.1 - l.value.0;
    let new_body_len = (l.event_end - l.event_body) - old_value_len + varint_len(new_value);
    scratch.clear();
    scratch.reserve(frame.len() + 2 * super::wire::MAX_VARINT_BYTES);
    scratch.extend_from_slice(&frame[..l.event_key]);
    put_varint(scratch, l.event_number << 3 | u64::from(WIRE_LEN));
    put_varint(scratch, new_body_len as u64);
    scratch.extend_from_slice(&frame[l.event_body..l.value.0]);
    put_varint(scratch, new_value);
    scratch.extend_from_slice(&frame[l.value.1..l.event_end]);
    scratch.extend_from_slice(&frame[l.event_end..]);
    Ok(Some(scratch.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_fast_walk_accepts_only_what_the_checked_walk_accepts(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(0x48u8), Just(0x2a), Just(0x08), Just(0x10)],
                0..40,
            ),
        ) {
            if let Some(fast) = locate_fast(&bytes) {
                let checked = locate_checked(&bytes);
                prop_assert_eq!(checked, Ok(fast));
            }
        }

        #[test]
        fn the_fast_walk_takes_every_frame_of_the_common_shapes(
            seq in proptest::option::of(any::<u64>()),
            event_field in 3u8..16,
            time in proptest::option::of(any::<i64>()),
            other in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut b = vec![0x08, 0x07];
            if let Some(t) = time {
                b.push(0x48);
                put_varint(&mut b, zigzag_encode(t));
            }
            b.push(0x1a);
            put_varint(&mut b, other.len() as u64);
            b.extend_from_slice(&other);
            let mut f = Vec::new();
            if let Some(s) = seq {
                f.push(0x08);
                put_varint(&mut f, s);
            }
            f.extend_from_slice(&frame(None, event_field, &b));
            let fast = locate_fast(&f).expect("common shape takes the fast path");
            prop_assert_eq!(locate_checked(&f), Ok(fast));
            prop_assert_eq!(fast.map(|l| l.time), time);
        }
    }

    /// A frame with an event message in envelope field `event_field`, whose body is `body`.
    fn frame(seq: Option<u8>, event_field: u8, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        if let Some(s) = seq {
            f.extend_from_slice(&[0x08, s]);
        }
        put_varint(&mut f, u64::from(event_field) << 3 | 2);
        put_varint(&mut f, body.len() as u64);
        f.extend_from_slice(body);
        f
    }

    /// An event body: field 1 = 7, field 9 = `t` (sint64), field 2 = "ab".
    fn body(t: i64) -> Vec<u8> {
        let mut b = vec![0x08, 0x07, 0x48];
        put_varint(&mut b, zigzag_encode(t));
        b.extend_from_slice(&[0x12, 0x02, b'a', b'b']);
        b
    }

    #[test]
    fn deltas_are_restored_for_an_event_message_the_layer_does_not_know() {
        // Field 40 is no message of this schema: the rule must not care.
        let times = [
            1_418_127_173_000i64,
            1_418_127_173_012,
            1_418_127_172_000,
            0,
        ];
        let mut enc = TimestampDelta::default();
        let mut dec = TimestampDelta::default();
        let (mut s1, mut s2) = (Vec::new(), Vec::new());
        let mut wire_deltas = Vec::new();
        for t in times {
            let original = frame(Some(5), 40, &body(t));
            let sent = enc.encode(&original, &mut s1).unwrap().unwrap().to_vec();
            wire_deltas.push(locate(&sent).unwrap().unwrap().time);
            let restored = dec.decode(&sent, &mut s2).unwrap().unwrap().to_vec();
            assert_eq!(restored, original);
        }
        assert_eq!(
            wire_deltas,
            [1_418_127_173_000, 12, -1012, -1_418_127_172_000]
        );
    }

    #[test]
    fn restore_gives_the_value_the_byte_rewrite_puts_in_field_9() {
        let mut enc = TimestampDelta::default();
        let (mut by_bytes, mut by_value) = (TimestampDelta::default(), TimestampDelta::default());
        let (mut s1, mut s2) = (Vec::new(), Vec::new());
        for t in [5i64, -7, i64::MAX, i64::MIN, 0, 1_418_127_173_000] {
            let sent = enc
                .encode(&frame(None, 6, &body(t)), &mut s1)
                .unwrap()
                .unwrap()
                .to_vec();
            let restored = by_bytes.decode(&sent, &mut s2).unwrap().unwrap();
            let expected = locate(restored).unwrap().unwrap().time;
            assert_eq!(by_value.restore(&sent), Ok(Some(expected)));
            assert_eq!(expected, t);
        }
    }

    #[test]
    fn frames_without_field_9_pass_unchanged_and_keep_the_state() {
        let mut dec = TimestampDelta::default();
        let mut s = Vec::new();
        assert_eq!(dec.decode(&frame(None, 4, &[0x08, 0x01]), &mut s), Ok(None));
        assert_eq!(dec.restore(&frame(None, 4, &[0x08, 0x01])), Ok(None));
        assert_eq!(dec, TimestampDelta::default());
    }

    #[test]
    fn malformed_frames_are_errors_that_leave_the_state_unchanged() {
        let mut dec = TimestampDelta::default();
        let mut s = Vec::new();
        let cases: [(Vec<u8>, &str); 5] = [
            (vec![0x08, 0x01], "no event message"),
            (vec![0x28, 0x01], "wire type 2"),
            (
                [frame(None, 5, &body(1)), frame(None, 6, &body(2))].concat(),
                "exactly one",
            ),
            (
                frame(None, 5, &[0x49, 0, 0, 0, 0, 0, 0, 0, 0]),
                "field 9 (timestamp) must",
            ),
            (frame(None, 5, &[0x48, 0x01, 0x48, 0x02]), "occurs twice"),
        ];
        for (bytes, expected) in cases {
            let err = dec.decode(&bytes, &mut s).unwrap_err();
            assert!(err.contains(expected), "{err} should say {expected}");
            assert_eq!(dec.restore(&bytes), Err(err));
            assert_eq!(dec, TimestampDelta::default());
        }
    }

    #[test]
    fn a_growing_delta_resizes_the_event_length_prefix() {
        // 120 bytes of other fields + field 9: the event body crosses 127 bytes only after
        // the absolute time is restored, so its length prefix must grow to 2 bytes.
        let mut b = vec![0x1a, 118];
        b.extend_from_slice(&[b'x'; 118]);
        b.extend_from_slice(&[0x48, 0x02]); // delta +1
        let sent = frame(None, 5, &b);
        let mut dec = TimestampDelta {
            previous: i64::MAX / 2,
        };
        let mut s = Vec::new();
        let restored = dec.decode(&sent, &mut s).unwrap().unwrap().to_vec();
        let l = locate(&restored).unwrap().unwrap();
        assert_eq!(l.time, i64::MAX / 2 + 1);
        assert_eq!(l.event_end, restored.len());
        assert_eq!(restored.len(), 1 + 2 + 120 + 1 + 10);
    }
}
