//! One decoder and one encoder over both encodings, and the error and limit types they share.

use std::fmt;

use crate::event::Event;
use crate::{json, pb};

/// The two encodings of spec §2, named by their media types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `text/x-intellifi-events`: JSON arrays separated by blank lines.
    Json,
    /// `application/x-intellifi-events-pb`: length-prefixed protobuf frames (docs/protobuf.md).
    Protobuf,
}

impl Encoding {
    /// The media type used in `Content-Type` and `Accept`.
    pub fn media_type(self) -> &'static str {
        match self {
            Encoding::Json => "text/x-intellifi-events",
            Encoding::Protobuf => "application/x-intellifi-events-pb",
        }
    }

    /// The encoding named by a media type, ignoring parameters (`; charset=utf-8`) and case.
    pub fn from_media_type(value: &str) -> Option<Self> {
        let essence = value.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case(Encoding::Json.media_type()) {
            Some(Encoding::Json)
        } else if essence.eq_ignore_ascii_case(Encoding::Protobuf.media_type()) {
            Some(Encoding::Protobuf)
        } else {
            None
        }
    }
}

/// Explicit bounds on what one message may cost a decoder. Exceeding one is an error for
/// that message (the decoder skips it and goes on), never unbounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message, in bytes of its encoding (default 64 KiB: a full `config create` is
    /// under 2 KiB, so this leaves room for growth while bounding a hostile sender).
    pub max_message_bytes: usize,
    /// Deepest nesting of arrays/objects (default 32: real events nest at most 4 deep).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_depth: 32,
        }
    }
}

/// One malformed message: where it started in the stream and why it was rejected. The
/// decoder has skipped it; decoding goes on with the next message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset, from the start of the stream, of the first byte of the bad message.
    pub offset: u64,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

/// Why a message was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    /// The bytes are not valid JSON (or not UTF-8); the text says where and what.
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// Valid JSON, but not `["<resource_type>","<action>",{...}]`.
    #[error("not an event: {0}")]
    NotAnEvent(String),
    /// The message is longer than [`Limits::max_message_bytes`].
    #[error("message exceeds {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The message nests deeper than [`Limits::max_depth`].
    #[error("message nests deeper than {limit} levels")]
    TooDeep {
        /// The configured limit.
        limit: usize,
    },
    /// The stream ended in the middle of a message.
    #[error("stream ended inside a message ({bytes} bytes unterminated)")]
    Truncated {
        /// How many bytes of the unfinished message were received.
        bytes: usize,
    },
    /// A protobuf frame that does not decode; the text names the field or the problem.
    #[error("invalid protobuf frame: {0}")]
    Protobuf(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.kind)
    }
}

impl std::error::Error for DecodeError {}

/// A streaming decoder for either encoding. See the crate docs for the call order.
#[derive(Debug)]
pub enum Decoder {
    /// JSON frames.
    Json(json::JsonDecoder),
    /// Protobuf frames.
    Protobuf(pb::PbDecoder),
}

impl Decoder {
    /// A decoder for `encoding` with the given limits.
    pub fn new(encoding: Encoding, limits: Limits) -> Self {
        match encoding {
            Encoding::Json => Decoder::Json(json::JsonDecoder::new(limits)),
            Encoding::Protobuf => Decoder::Protobuf(pb::PbDecoder::new(limits)),
        }
    }

    /// Appends bytes received from the transport. Boundaries carry no meaning.
    pub fn feed(&mut self, bytes: &[u8]) {
        match self {
            Decoder::Json(d) => d.feed(bytes),
            Decoder::Protobuf(d) => d.feed(bytes),
        }
    }

    /// The next complete event or malformed message; `None` when more bytes are needed
    /// (or, after [`Decoder::finish`], when the stream is exhausted).
    pub fn next_event(&mut self) -> Option<Result<Event, DecodeError>> {
        match self {
            Decoder::Json(d) => d.next_event(),
            Decoder::Protobuf(d) => d.next_event(),
        }
    }

    /// Marks the end of the stream: a trailing partial message becomes a
    /// [`DecodeErrorKind::Truncated`] error on the next call to [`Decoder::next_event`].
    pub fn finish(&mut self) {
        match self {
            Decoder::Json(d) => d.finish(),
            Decoder::Protobuf(d) => d.finish(),
        }
    }
}

/// A streaming encoder for either encoding. The protobuf encoder keeps per-stream state
/// (timestamp deltas, item-code ids), so use one encoder per stream (one HTTP body, one
/// TCP connection) and never interleave its output with another's.
#[derive(Debug)]
pub enum Encoder {
    /// JSON frames.
    Json(json::JsonEncoder),
    /// Protobuf frames.
    Protobuf(pb::PbEncoder),
}

impl Encoder {
    /// A compact encoder for `encoding`.
    pub fn new(encoding: Encoding) -> Self {
        match encoding {
            Encoding::Json => Encoder::Json(json::JsonEncoder::new()),
            Encoding::Protobuf => Encoder::Protobuf(pb::PbEncoder::new()),
        }
    }

    /// Appends the encoding of `event` (one complete, self-delimiting message) to `out`.
    pub fn encode(&mut self, event: &Event, out: &mut Vec<u8>) {
        match self {
            Encoder::Json(e) => e.encode(event, out),
            Encoder::Protobuf(e) => e.encode(event, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_name_encodings_case_and_parameters_ignored() {
        assert_eq!(
            Encoding::from_media_type("text/x-intellifi-events"),
            Some(Encoding::Json)
        );
        assert_eq!(
            Encoding::from_media_type("Application/X-Intellifi-Events-PB; q=1"),
            Some(Encoding::Protobuf)
        );
        assert_eq!(Encoding::from_media_type("application/json"), None);
    }
}
