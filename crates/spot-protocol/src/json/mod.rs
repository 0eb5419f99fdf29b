//! The JSON encoding, `text/x-intellifi-events` (spec §2.1): [`JsonDecoder`] and
//! [`JsonEncoder`].
//!
//! Framing (where a message starts and ends, resynchronisation, limits) lives in `framing`;
//! the mapping of one message onto the typed model in `format`. The decoder yields each
//! event as soon as its closing `]` has arrived, identically for every way the stream is
//! split into chunks.

mod format;
mod framing;

use crate::codec::{DecodeError, Limits};
use crate::event::Event;

use framing::{Frame, Framer};

/// Streaming JSON decoder: [`feed`](Self::feed) bytes as they arrive, then call
/// [`next_event`](Self::next_event) until it returns `None`; at the end of the stream call
/// [`finish`](Self::finish) and drain once more.
///
/// Each `Err` is one malformed message (with its stream offset); the decoder has already
/// skipped to the next blank line and goes on with the rest. Memory is bounded by
/// [`Limits::max_message_bytes`] plus the bytes of one [`feed`](Self::feed).
#[derive(Debug)]
pub struct JsonDecoder {
    framer: Framer,
    /// The last [`next_event`](Self::next_event) returned an event (see
    /// [`last_text`](Self::last_text)).
    last_ok: bool,
}

impl JsonDecoder {
    /// A decoder with the given limits.
    pub fn new(limits: Limits) -> Self {
        JsonDecoder {
            framer: Framer::new(limits),
            last_ok: false,
        }
    }

    /// Appends bytes received from the transport. Boundaries carry no meaning.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.last_ok = false;
        self.framer.feed(bytes);
    }

    /// The text of the event the last [`next_event`](Self::next_event) returned, exactly as
    /// received from its `[` to its `]` (one JSON value, which decodes to that event again;
    /// it may hold white space, newlines too, between its tokens); `None` when that call
    /// returned no event, and after [`feed`](Self::feed).
    pub fn last_text(&self) -> Option<&str> {
        if !self.last_ok {
            return None;
        }
        // Decoding checked the bytes as UTF-8 already; this check is cheap next to that.
        std::str::from_utf8(self.framer.last_message()).ok()
    }

    /// The next event or malformed message; `None` when more bytes are needed (or, after
    /// [`finish`](Self::finish), when the stream is exhausted).
    pub fn next_event(&mut self) -> Option<Result<Event, DecodeError>> {
        self.last_ok = false;
        loop {
            let (offset, tentative, decoded) = match self.framer.next_frame()? {
                Frame::Error(e) => return Some(Err(e)),
                Frame::Message {
                    offset,
                    bytes,
                    tentative,
                } => (offset, tentative, format::decode_event(bytes)),
            };
            return Some(match decoded {
                Ok(event) => {
                    self.last_ok = true;
                    Ok(event)
                }
                Err(_) if tentative => {
                    self.framer.rescan();
                    continue;
                }
                Err(kind) => {
                    self.framer.resync();
                    Err(DecodeError { offset, kind })
                }
            });
        }
    }

    /// Marks the end of the stream: an unfinished message becomes a
    /// [`Truncated`](crate::DecodeErrorKind::Truncated) error on the next
    /// [`next_event`](Self::next_event).
    pub fn finish(&mut self) {
        self.framer.finish();
    }
}

/// JSON encoder: compact (the whole event on one line, `\n\n` after it) or pretty (one key
/// per line, `\n\n` after the event). Typed fields come first in the order of their struct,
/// then `extra` in its order; `seq` comes first. Both forms decode back to equal events.
#[derive(Debug, Default)]
pub struct JsonEncoder {
    pretty: bool,
}

impl JsonEncoder {
    /// Compact form.
    pub fn new() -> Self {
        JsonEncoder { pretty: false }
    }

    /// Human-readable form (indented object, still one `\n\n` per event).
    pub fn pretty() -> Self {
        JsonEncoder { pretty: true }
    }

    /// Appends one message.
    pub fn encode(&mut self, event: &Event, out: &mut Vec<u8>) {
        format::encode_event(event, self.pretty, out);
    }
}
