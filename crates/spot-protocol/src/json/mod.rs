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
use crate::event::{Event, EventKind, OtherEvent};

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
    /// [`Limits::max_depth`].
    max_depth: usize,
    /// The last [`next_event`](Self::next_event) returned an event (see
    /// [`last_text`](Self::last_text)).
    last_ok: bool,
}

impl JsonDecoder {
    /// A decoder with the given limits.
    pub fn new(limits: Limits) -> Self {
        JsonDecoder {
            framer: Framer::new(limits),
            max_depth: limits.max_depth,
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
        // The event is decoded in place, in the value this returns: an `Event` is a few
        // hundred bytes, and each move would copy it.
        let mut next = Some(Ok(Event::new(EventKind::Other(OtherEvent::default()))));
        let Some(Ok(event)) = &mut next else {
            unreachable!("just built")
        };
        loop {
            let (offset, tentative, decoded) = match self.framer.next_frame()? {
                Frame::Error(e) => return Some(Err(e)),
                Frame::Message {
                    offset,
                    bytes,
                    tentative,
                } => (offset, tentative, format::decode_event(bytes, event)),
            };
            match decoded {
                // A tentative frame's nesting is checked here, on the event (no bracket
                // count of its bytes): too deep, the structural scan reports it.
                Ok(()) if tentative && event.depth() > self.max_depth => self.framer.rescan(),
                Ok(()) => {
                    self.last_ok = true;
                    return next;
                }
                Err(_) if tentative => self.framer.rescan(),
                Err(kind) => {
                    self.framer.resync();
                    return Some(Err(DecodeError { offset, kind }));
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::DecodeErrorKind;

    /// Every event or error kind of `input` fed in pieces of `step` bytes.
    fn decode(limits: Limits, input: &[u8], step: usize) -> Vec<Result<(), DecodeErrorKind>> {
        let mut decoder = JsonDecoder::new(limits);
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            decoder.feed(chunk);
            while let Some(item) = decoder.next_event() {
                out.push(item.map(|_| ()).map_err(|e| e.kind));
            }
        }
        decoder.finish();
        while let Some(item) = decoder.next_event() {
            out.push(item.map(|_| ()).map_err(|e| e.kind));
        }
        out
    }

    #[test]
    fn nesting_beyond_the_depth_limit_is_too_deep_whole_or_split() {
        let input = b"[\"x\",\"y\",{\"a\":[1]}]\n\n[\"x\",\"y\",{\"a\":[[1]]}]\n\n\
            [\"spot\",\"update\",{\"rfid_swr\":[1]}]\n\n[\"hit\",\"create\",{\"z\":{\"b\":1}}]\n\n";
        let limits = |max_depth| Limits {
            max_depth,
            ..Limits::default()
        };
        let too_deep = |limit| Err(DecodeErrorKind::TooDeep { limit });
        // Whole (the tentative frames), and byte by byte (the structural scan).
        for step in [input.len(), 1] {
            assert_eq!(
                decode(limits(3), input, step),
                [Ok(()), too_deep(3), Ok(()), Ok(())],
                "step {step}"
            );
            // A typed list and an extra object count as a level too.
            assert_eq!(
                decode(limits(2), input, step),
                [too_deep(2), too_deep(2), too_deep(2), too_deep(2)],
                "step {step}"
            );
        }
    }
}
