//! The protobuf encoding (`application/x-intellifi-events-pb`, spec §2.3), specified in
//! `docs/protobuf.md`, schema in `proto/spot_events.proto`.
//!
//! Three layers, each its own module:
//! - framing ([`frame`]): varint length prefix, zero-length frames skipped, limits;
//! - stream ([`stream`]): field 9 of the event message delta-coded against the previous
//!   event's, found by walking the wire format without knowing the message type;
//! - message: [`Event`] → the prost-generated envelope when sending ([`message`]); when
//!   receiving ([`decode`]), the frame's bytes → [`Event`] in the stream layer's one walk
//!   (the decoder restores field 9 as a value instead of rewriting the frame's bytes);
//!   item codes through the per-stream table ([`items`]).
//!
//! A malformed frame is one [`FrameError`] (inside [`DecodeErrorKind::Protobuf`]), naming
//! the field or the rule; the decoder goes on with the next frame.
//!
//! [`PbEncoder`] and [`PbDecoder`] hold the state of ONE stream (one HTTP body, one TCP
//! direction): never share one between streams.

mod decode;
mod error;
mod frame;
mod items;
mod message;
mod proto;
mod stream;
mod wire;

use prost::Message as _;

use crate::codec::{DecodeError, DecodeErrorKind, Limits};
use crate::event::Event;

pub use error::FrameError;
pub use items::{ItemTableError, DEFAULT_ITEM_TABLE_SLOTS, MAX_TABLED_CODE_BYTES};
pub use wire::{FieldError, VarintError};

/// What a protobuf stream on raw TCP starts with: one zero-length frame, so that a receiver
/// tells it from JSON (which starts with `[`) by its first byte.
pub const STREAM_PREAMBLE: &[u8] = &[0x00];

/// Streaming protobuf decoder: feed bytes in any pieces, take events out.
#[derive(Debug)]
pub struct PbDecoder {
    frames: frame::FrameReader,
    messages: decode::MessageDecoder,
}

impl PbDecoder {
    /// A decoder with the given limits and an item-code table of
    /// [`DEFAULT_ITEM_TABLE_SLOTS`].
    pub fn new(limits: Limits) -> Self {
        Self::with_item_table_slots(limits, DEFAULT_ITEM_TABLE_SLOTS)
    }

    /// A decoder whose item-code table has `slots` slots (bounds its memory to
    /// `slots` × [`MAX_TABLED_CODE_BYTES`]). A sender must not use more slots than this.
    pub fn with_item_table_slots(limits: Limits, slots: usize) -> Self {
        PbDecoder {
            frames: frame::FrameReader::new(limits.max_message_bytes),
            messages: decode::MessageDecoder::new(slots, limits.max_depth),
        }
    }

    /// Appends bytes received from the transport. Boundaries carry no meaning.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.frames.feed(bytes);
    }

    /// The next event, or one malformed frame (already skipped), or `None` when more bytes
    /// are needed (after [`PbDecoder::finish`]: when the stream is exhausted).
    pub fn next_event(&mut self) -> Option<Result<Event, DecodeError>> {
        let at = match self.frames.next_frame()? {
            Ok(at) => at,
            Err(e) => return Some(Err(e)),
        };
        let body = &self.frames.bytes()[at.body];
        Some(self.messages.event(body).map_err(|reason| DecodeError {
            offset: at.offset,
            kind: DecodeErrorKind::Protobuf(reason),
        }))
    }

    /// Marks the end of the stream: a trailing partial frame becomes a
    /// [`DecodeErrorKind::Truncated`] error on the next call to [`PbDecoder::next_event`].
    pub fn finish(&mut self) {
        self.frames.finish();
    }
}

/// Streaming protobuf encoder (stateful: timestamp deltas and item-code slots).
#[derive(Debug)]
pub struct PbEncoder {
    messages: message::MessageEncoder,
    times: stream::TimestampDelta,
    preamble_pending: bool,
    absolute: Vec<u8>,
    scratch: Vec<u8>,
}

impl Default for PbEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl PbEncoder {
    /// A fresh stream, item-code table of [`DEFAULT_ITEM_TABLE_SLOTS`], no preamble (for an
    /// HTTP body, whose `Content-Type` names the encoding).
    pub fn new() -> Self {
        Self::with_item_table_slots(DEFAULT_ITEM_TABLE_SLOTS)
    }

    /// A fresh stream whose item-code table has `slots` slots (0: never send a short id).
    /// The receiver's table must be at least as large.
    pub fn with_item_table_slots(slots: usize) -> Self {
        PbEncoder {
            messages: message::MessageEncoder::new(slots),
            times: stream::TimestampDelta::default(),
            preamble_pending: false,
            absolute: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// A fresh stream for raw TCP: the first [`PbEncoder::encode`] writes
    /// [`STREAM_PREAMBLE`] before its frame.
    pub fn with_stream_preamble() -> Self {
        PbEncoder {
            preamble_pending: true,
            ..Self::new()
        }
    }

    /// Appends one frame (length prefix and envelope) for `event` to `out`.
    pub fn encode(&mut self, event: &Event, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.preamble_pending) {
            out.extend_from_slice(STREAM_PREAMBLE);
        }
        self.absolute.clear();
        self.messages
            .frame(event)
            .encode(&mut self.absolute)
            .expect("a Vec grows as needed");
        let frame = match self.times.encode(&self.absolute, &mut self.scratch) {
            Ok(Some(delta_coded)) => delta_coded,
            Ok(None) => &self.absolute,
            Err(e) => unreachable!("the stream layer rejects our own frame: {e}"),
        };
        wire::put_varint(out, frame.len() as u64);
        out.extend_from_slice(frame);
    }
}
