//! The stream layer's timestamp rule (docs/protobuf.md, "Field 9"): in every frame, field 9
//! of the event message holds the event timestamp; on the wire it is the difference to the
//! previous field 9 on the stream. This module finds field 9 by walking the wire format
//! generically — envelope fields 1 and 2 are metadata, any other envelope field is the event
//! message — so it works for event messages this version has never heard of.

use super::error::FrameError;
use super::wire::{next_field, put_varint, varint_len, zigzag_decode, zigzag_encode};
use super::wire::{Field, WIRE_LEN, WIRE_VARINT};

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
    ) -> Result<Option<&'s [u8]>, FrameError> {
        rewrite(frame, scratch, |absolute| {
            let delta = absolute.wrapping_sub(self.previous);
            self.previous = absolute;
            delta
        })
    }

    /// Receiver side: the absolute event timestamp of a frame whose field 9 holds `sent`
    /// (`None`: the frame has none, and the state stays as it is). Call it only for a frame
    /// that walked cleanly ([`walk_envelope`], [`walk_event`]): a malformed frame leaves the
    /// state unchanged. The frame itself is not rewritten: the message layer takes the value.
    #[inline]
    pub(crate) fn restore(&mut self, sent: Option<&TimeField>) -> Option<i64> {
        let absolute = self.previous.wrapping_add(sent?.value);
        self.previous = absolute;
        Some(absolute)
    }

    /// Receiver side, byte for byte: `frame` with its field 9 restored (in `scratch`), the
    /// exact inverse of [`TimestampDelta::encode`]. The decoder uses the cheaper
    /// [`TimestampDelta::restore`]; this is the reference the tests hold it to.
    #[cfg(test)]
    pub(crate) fn decode<'s>(
        &mut self,
        frame: &[u8],
        scratch: &'s mut Vec<u8>,
    ) -> Result<Option<&'s [u8]>, FrameError> {
        rewrite(frame, scratch, |delta| {
            let absolute = self.previous.wrapping_add(delta);
            self.previous = absolute;
            absolute
        })
    }
}

/// Where the event message sits in a frame, as found by [`walk_envelope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventAt {
    /// Offset of the event message's key in the envelope, and its field number.
    pub key: usize,
    pub number: u64,
    /// Offset of the event message's first byte, and just past its last.
    pub body: usize,
    pub end: usize,
}

/// Field 9 of an event message, as found by [`walk_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeField {
    /// Offset of its value in the event message, and just past it.
    pub start: usize,
    pub end: usize,
    /// The value as a sint64 (a delta on the wire, absolute inside the codecs).
    pub value: i64,
}

/// Walks `frame` (an envelope) and checks rule 1 of docs/protobuf.md §3.1: every field
/// walks, and exactly one field numbered 3 or more, of wire type 2: the event message.
/// `metadata` sees the other fields (numbers 1 and 2), in order.
#[inline(always)]
pub(crate) fn walk_envelope(
    frame: &[u8],
    mut metadata: impl FnMut(&Field),
) -> Result<EventAt, FrameError> {
    let mut at = 0;
    let mut event = None;
    while at < frame.len() {
        let f = next_field(frame, at).map_err(FrameError::Envelope)?;
        if f.number >= FIRST_EVENT_FIELD {
            if f.wire_type != WIRE_LEN {
                return Err(FrameError::EventWireType {
                    number: f.number,
                    wire_type: f.wire_type,
                });
            }
            if event.is_some() {
                return Err(FrameError::SecondEvent { number: f.number });
            }
            event = Some(EventAt {
                key: f.start,
                number: f.number,
                body: f.value_start,
                end: f.end,
            });
        } else {
            metadata(&f);
        }
        at = f.end;
    }
    event.ok_or(FrameError::NoEvent)
}

/// Walks `body` (an event message of any type) and checks rule 2 of docs/protobuf.md §3.1:
/// every field walks, and field 9, if present, has wire type 0 and occurs once. Returns
/// field 9; `visit` sees every other field, in order.
#[inline(always)]
pub(crate) fn walk_event(
    body: &[u8],
    mut visit: impl FnMut(&Field),
) -> Result<Option<TimeField>, FrameError> {
    let mut at = 0;
    let mut time = None;
    while at < body.len() {
        let f = next_field(body, at).map_err(FrameError::EventField)?;
        if f.number == TIMESTAMP_FIELD {
            if f.wire_type != WIRE_VARINT {
                return Err(FrameError::TimestampWireType {
                    wire_type: f.wire_type,
                });
            }
            if time.is_some() {
                return Err(FrameError::TimestampTwice);
            }
            time = Some(TimeField {
                start: f.value_start,
                end: f.end,
                value: zigzag_decode(f.varint),
            });
        } else {
            visit(&f);
        }
        at = f.end;
    }
    Ok(time)
}

/// Where the timestamp sits in a frame (for the byte rewrite of the sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Located {
    event: EventAt,
    /// Field 9, its offsets relative to `event.body`.
    time: TimeField,
}

/// Walks `frame` (envelope and event message) and finds field 9 of its event message.
fn locate(frame: &[u8]) -> Result<Option<Located>, FrameError> {
    let event = walk_envelope(frame, |_| {})?;
    let time = walk_event(&frame[event.body..event.end], |_| {})?;
    Ok(time.map(|time| Located { event, time }))
}

/// Replaces field 9 of the event message by `map(field 9)`, re-sizing the event message's
/// length prefix. The state behind `map` is only touched once the frame walked cleanly.
fn rewrite<'s>(
    frame: &[u8],
    scratch: &'s mut Vec<u8>,
    map: impl FnOnce(i64) -> i64,
) -> Result<Option<&'s [u8]>, FrameError> {
    let Some(l) = locate(frame)? else {
        return Ok(None);
    };
    let (e, t) = (l.event, l.time);
    let new_value = zigzag_encode(map(t.value));
    let old_value_len = t.end - t.start;
    let new_body_len = (e.end - e.body) - old_value_len + varint_len(new_value);
    scratch.clear();
    scratch.reserve(frame.len() + 2 * super::wire::MAX_VARINT_BYTES);
    scratch.extend_from_slice(&frame[..e.key]);
    put_varint(scratch, e.number << 3 | u64::from(WIRE_LEN));
    put_varint(scratch, new_body_len as u64);
    scratch.extend_from_slice(&frame[e.body..e.body + t.start]);
    put_varint(scratch, new_value);
    scratch.extend_from_slice(&frame[e.body + t.end..e.end]);
    scratch.extend_from_slice(&frame[e.end..]);
    Ok(Some(scratch.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_walk_finds_field_9_in_every_frame_of_the_common_shapes(
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
            let located = locate(&f).expect("a well-formed frame walks");
            prop_assert_eq!(located.map(|l| l.time.value), time);
        }
    }

    /// The receiver's whole timestamp rule on one frame: walk it, then restore.
    fn restore(dec: &mut TimestampDelta, frame: &[u8]) -> Result<Option<i64>, FrameError> {
        Ok(locate(frame)?.and_then(|l| dec.restore(Some(&l.time))))
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
            wire_deltas.push(locate(&sent).unwrap().unwrap().time.value);
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
            let expected = locate(restored).unwrap().unwrap().time.value;
            assert_eq!(restore(&mut by_value, &sent), Ok(Some(expected)));
            assert_eq!(expected, t);
        }
    }

    #[test]
    fn frames_without_field_9_pass_unchanged_and_keep_the_state() {
        let mut dec = TimestampDelta::default();
        let mut s = Vec::new();
        assert_eq!(dec.decode(&frame(None, 4, &[0x08, 0x01]), &mut s), Ok(None));
        assert_eq!(restore(&mut dec, &frame(None, 4, &[0x08, 0x01])), Ok(None));
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
            assert!(
                err.to_string().contains(expected),
                "{err} should say {expected}"
            );
            assert_eq!(restore(&mut dec, &bytes), Err(err));
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
        assert_eq!(l.time.value, i64::MAX / 2 + 1);
        assert_eq!(l.event.end, restored.len());
        assert_eq!(restored.len(), 1 + 2 + 120 + 1 + 10);
    }
}
