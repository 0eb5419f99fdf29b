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
    /// A protobuf frame that does not decode; it names the field or the problem.
    #[error("invalid protobuf frame: {0}")]
    Protobuf(pb::FrameError),
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

    /// The JSON text, as received, of the event the last [`Decoder::next_event`] returned
    /// (see [`json::JsonDecoder::last_text`]); `None` for protobuf, whose frames depend on
    /// the stream before them.
    pub fn last_json(&self) -> Option<&str> {
        match self {
            Decoder::Json(d) => d.last_text(),
            Decoder::Protobuf(_) => None,
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

    /// Decodes `text` as one message.
    fn decode_one(text: &str) -> Event {
        let mut d = Decoder::new(Encoding::Json, Limits::default());
        d.feed(text.as_bytes());
        d.finish();
        d.next_event().expect("a message").expect("an event")
    }

    #[test]
    fn last_json_is_the_received_text_of_each_event_and_decodes_to_it_again() {
        let messages = [
            r#"["hit","create",{"item_code":"A","seq":1}]"#,
            "[ \"presence\" ,\n \"update\",\r\n\t{\"item_code\" : \"b\\n]\", \"rssi\":\"30\"} ]",
            r#"["thing","update",{"x":[1,{"y":"]"}]}]"#,
        ];
        let stream = format!(
            "{}\n\n[\"hit\",\"create\",nonsense]\n\n{}\n\n{}\n\n",
            messages[0], messages[1], messages[2]
        );
        for chunk in [1, 7, stream.len()] {
            let mut d = Decoder::new(Encoding::Json, Limits::default());
            let mut texts = Vec::new();
            let mut errors = 0;
            for piece in stream.as_bytes().chunks(chunk) {
                d.feed(piece);
                assert_eq!(d.last_json(), None, "nothing returned since the feed");
                while let Some(next) = d.next_event() {
                    match next {
                        Ok(event) => {
                            let text = d.last_json().expect("the event's text").to_string();
                            assert_eq!(decode_one(&text), event);
                            texts.push(text);
                        }
                        Err(_) => {
                            assert_eq!(d.last_json(), None, "no text for a bad message");
                            errors += 1;
                        }
                    }
                }
                assert_eq!(d.last_json(), None, "the last call returned no event");
            }
            assert_eq!(texts, messages, "chunks of {chunk} bytes");
            assert_eq!(errors, 1);
        }
    }

    #[test]
    fn protobuf_has_no_last_json() {
        let event = decode_one(r#"["hit","create",{"item_code":"A","seq":1}]"#);
        let mut bytes = Vec::new();
        Encoder::new(Encoding::Protobuf).encode(&event, &mut bytes);
        let mut d = Decoder::new(Encoding::Protobuf, Limits::default());
        d.feed(&bytes);
        assert_eq!(d.next_event(), Some(Ok(event)));
        assert_eq!(d.last_json(), None);
    }
}
