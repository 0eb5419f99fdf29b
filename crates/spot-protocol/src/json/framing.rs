//! Finding JSON messages in a byte stream (spec §2.1), without parsing them.
//!
//! A message starts at a `[` and ends where the JSON structure closes it (depth back to 0,
//! outside strings). Between messages any white space (spaces, tabs, `\r`, `\n`) is skipped,
//! so `\n\n`, `\r\n\r\n` and lines of spaces all separate messages. The scan position is kept
//! across [`Framer::feed`] calls: a message split over many chunks is scanned once.
//!
//! Malformed input costs one error and a resynchronisation at the next blank line (`\n`, then
//! only spaces, tabs or `\r`, then `\n`; `\n\n` is the plain case). A `\n\n` inside an
//! unfinished message ends it as malformed: it may not occur in a valid message (outside a
//! string it ends the message, inside one a raw newline is invalid JSON anyway). A message
//! longer than [`Limits::max_message_bytes`] or nesting deeper than [`Limits::max_depth`] is
//! an error as soon as the limit is crossed; its remaining bytes are discarded as they arrive,
//! never buffered.

use std::sync::LazyLock;

use crate::codec::{DecodeError, DecodeErrorKind, Limits};

/// One framing result.
#[derive(Debug)]
pub(crate) enum Frame<'a> {
    /// A message, from its `[` to its `]`, and its stream offset. A `tentative` message was
    /// cut at the next `\n\n` without a structural scan: if it does not decode, or nests
    /// deeper than [`Limits::max_depth`], call [`Framer::rescan`] (it may have been framed
    /// wrongly) rather than [`Framer::resync`].
    Message {
        offset: u64,
        bytes: &'a [u8],
        tentative: bool,
    },
    /// Bytes that cannot be a message; the framer is already resynchronising.
    Error(DecodeError),
}

/// The streaming splitter: bytes in, complete messages (or framing errors) out.
#[derive(Debug)]
pub(crate) struct Framer {
    limits: Limits,
    buf: Vec<u8>,
    /// Index in `buf` of the first byte not yet consumed (in a message: its `[`).
    pos: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Index in `buf` of the last message returned (for [`Framer::rescan`]).
    last_start: usize,
    state: State,
    finished: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Skipping white space to the next `[`.
    Between,
    /// Inside a message that starts at `buf[pos]`.
    Message(Scan),
    /// After a malformed message: discarding up to and including the next blank line.
    Resync {
        /// A `\n` was seen and since then only spaces, tabs or `\r`.
        line_blank: bool,
    },
}

/// How far a message has been scanned, so that new bytes continue the scan.
#[derive(Debug, Clone, Copy)]
struct Scan {
    /// Index in `buf` of the next byte to look at.
    next: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    after_newline: bool,
}

impl Scan {
    /// A fresh scan of the message starting at `start`.
    fn at(start: usize) -> Self {
        Scan {
            next: start,
            depth: 0,
            in_string: false,
            escaped: false,
            after_newline: false,
        }
    }
}

/// What scanning a message found.
enum Outcome {
    /// The `]` closing the message is at this index.
    Complete(usize),
    /// A `\n\n` ends at this index before the message was complete.
    BlankLine(usize),
    /// The bracket at this index nests deeper than allowed.
    TooDeep(usize),
    /// The message reached the size limit without being complete.
    TooLarge,
    /// All bytes scanned, the message goes on.
    NeedMore,
}

/// Searches for `\n\n` (built once: building a searcher costs more than a search).
static BLANK_LINE: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\n\n"));

/// Bytes that matter inside a string: its end, an escape, a newline (a blank line ends a
/// message even there).
static IN_STRING: [bool; 256] = byte_set(b"\"\\\n");
/// Bytes that matter outside strings.
static IN_STRUCTURE: [bool; 256] = byte_set(b"\"[]{}\n");

const fn byte_set(bytes: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        set[bytes[i] as usize] = true;
        i += 1;
    }
    set
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

impl Framer {
    pub(crate) fn new(limits: Limits) -> Self {
        Framer {
            limits,
            buf: Vec::new(),
            pos: 0,
            base: 0,
            last_start: 0,
            state: State::Between,
            finished: false,
        }
    }

    /// Appends bytes. Consumed bytes are dropped first when they are at least half of the
    /// buffer, so the cost of moving the rest is amortised over what was consumed.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.last_start = self.last_start.saturating_sub(self.pos);
            if let State::Message(scan) = &mut self.state {
                scan.next -= self.pos;
            }
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Marks the end of the stream: an unfinished message becomes a `Truncated` error.
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }

    /// After the caller rejected a tentative message: frame it again by its structure.
    pub(crate) fn rescan(&mut self) {
        self.pos = self.last_start;
        self.state = State::Message(Scan::at(self.pos));
    }

    /// The bytes of the message returned last, from its `[` to its `]`. Only meaningful
    /// right after [`Framer::next_frame`] returned a [`Frame::Message`] (before the next
    /// call or [`Framer::feed`]): the message ends where the scan position now stands.
    pub(crate) fn last_message(&self) -> &[u8] {
        self.buf.get(self.last_start..self.pos).unwrap_or_default()
    }

    /// After the caller rejected the last message: skip to the next blank line.
    pub(crate) fn resync(&mut self) {
        self.state = State::Resync { line_blank: false };
    }

    fn offset_of(&self, index: usize) -> u64 {
        self.base + index as u64
    }

    fn error(&self, index: usize, kind: DecodeErrorKind) -> Option<Frame<'_>> {
        Some(Frame::Error(DecodeError {
            offset: self.offset_of(index),
            kind,
        }))
    }

    /// The next complete message or framing error; `None` when more bytes are needed.
    pub(crate) fn next_frame(&mut self) -> Option<Frame<'_>> {
        loop {
            match self.state {
                State::Between => {
                    let skipped = self.buf[self.pos..].iter().position(|&b| !is_space(b));
                    let Some(skipped) = skipped else {
                        self.pos = self.buf.len();
                        return None;
                    };
                    self.pos += skipped;
                    let byte = self.buf[self.pos];
                    if byte == b'[' {
                        let start = self.pos;
                        self.last_start = start;
                        if let Some(end) = self.tentative_end(start) {
                            self.pos = end + 1;
                            return Some(Frame::Message {
                                offset: self.offset_of(start),
                                bytes: &self.buf[start..=end],
                                tentative: true,
                            });
                        }
                        self.state = State::Message(Scan::at(start));
                    } else {
                        let at = self.pos;
                        self.pos += 1;
                        self.state = State::Resync { line_blank: false };
                        let what = match byte {
                            0x21..=0x7e => format!("`{}`", byte as char),
                            _ => format!("byte 0x{byte:02x}"),
                        };
                        return self.error(
                            at,
                            DecodeErrorKind::Syntax(format!(
                                "expected `[` to start a message, found {what}"
                            )),
                        );
                    }
                }
                State::Message(mut scan) => {
                    let start = self.pos;
                    let outcome = self.scan(start, &mut scan);
                    match outcome {
                        Outcome::Complete(end) => {
                            self.pos = end + 1;
                            self.state = State::Between;
                            return Some(Frame::Message {
                                offset: self.offset_of(start),
                                bytes: &self.buf[start..=end],
                                tentative: false,
                            });
                        }
                        Outcome::BlankLine(end) => {
                            self.pos = end + 1;
                            self.state = State::Between;
                            return self.error(
                                start,
                                DecodeErrorKind::Syntax(format!(
                                    "message ended by a blank line after {} bytes, before its JSON was complete",
                                    end - 1 - start
                                )),
                            );
                        }
                        Outcome::TooDeep(at) => {
                            self.pos = at + 1;
                            self.state = State::Resync { line_blank: false };
                            let limit = self.limits.max_depth;
                            return self.error(start, DecodeErrorKind::TooDeep { limit });
                        }
                        Outcome::TooLarge => {
                            self.pos = scan.next;
                            self.state = State::Resync {
                                line_blank: scan.after_newline,
                            };
                            let limit = self.limits.max_message_bytes;
                            return self.error(start, DecodeErrorKind::TooLarge { limit });
                        }
                        Outcome::NeedMore if self.finished => {
                            let bytes = self.buf.len() - start;
                            self.pos = self.buf.len();
                            self.state = State::Between;
                            return self.error(start, DecodeErrorKind::Truncated { bytes });
                        }
                        Outcome::NeedMore => {
                            self.state = State::Message(scan);
                            return None;
                        }
                    }
                }
                State::Resync { mut line_blank } => {
                    let mut found = None;
                    for (i, &b) in self.buf[self.pos..].iter().enumerate() {
                        match b {
                            b'\n' if line_blank => {
                                found = Some(self.pos + i);
                                break;
                            }
                            b'\n' => line_blank = true,
                            b' ' | b'\t' | b'\r' => {}
                            _ => line_blank = false,
                        }
                    }
                    match found {
                        Some(end) => {
                            self.pos = end + 1;
                            self.state = State::Between;
                        }
                        None => {
                            self.pos = self.buf.len();
                            self.state = State::Resync { line_blank };
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// The fast path for a message whose `\n\n` has already arrived: the message is taken to
    /// end at the last non-space byte before the first `\n\n`, found with a vectorised
    /// search instead of the byte-by-byte structural scan. Only offered when the bytes fit
    /// the size limit; their nesting is not checked here (the decoded event's depth is
    /// cheaper to check than the bytes' brackets). If they do not decode, or nest deeper
    /// than [`Limits::max_depth`], the caller asks for a [`Framer::rescan`]: the structural
    /// scan then reports exactly what is wrong.
    fn tentative_end(&self, start: usize) -> Option<usize> {
        let window_end = self
            .buf
            .len()
            .min(start.saturating_add(self.limits.max_message_bytes));
        let window = &self.buf[start..window_end];
        let blank = BLANK_LINE.find(window)?;
        let message = &window[..blank];
        let len = message.iter().rposition(|&b| !is_space(b))? + 1;
        Some(start + len - 1)
    }

    /// Everything up to `end` is scanned: the size limit is reached or more bytes are needed.
    fn incomplete(&self, end: usize, limit_end: usize) -> Outcome {
        if end == limit_end {
            Outcome::TooLarge
        } else {
            Outcome::NeedMore
        }
    }

    /// Scans the message starting at `start` from `scan.next` on, up to the size limit.
    fn scan(&self, start: usize, scan: &mut Scan) -> Outcome {
        let limit_end = start.saturating_add(self.limits.max_message_bytes);
        let end = self.buf.len().min(limit_end);
        let bytes = &self.buf[..end];
        let Scan {
            mut next,
            mut depth,
            mut in_string,
            mut escaped,
            mut after_newline,
        } = *scan;
        let outcome = loop {
            if escaped {
                // The byte after a backslash in a string: never special, except as a newline.
                let Some(&b) = bytes.get(next) else {
                    break self.incomplete(end, limit_end);
                };
                escaped = false;
                if b == b'\n' {
                    after_newline = true;
                    next += 1;
                    continue;
                }
                after_newline = false;
                next += 1;
            }
            // Skip the bytes that cannot change the state.
            let table = if in_string { &IN_STRING } else { &IN_STRUCTURE };
            let run_start = next;
            while next < end && !table[usize::from(bytes[next])] {
                next += 1;
            }
            if next > run_start {
                after_newline = false;
            }
            let Some(&b) = bytes.get(next) else {
                break self.incomplete(end, limit_end);
            };
            if b == b'\n' {
                if after_newline {
                    break Outcome::BlankLine(next);
                }
                after_newline = true;
            } else {
                after_newline = false;
            }
            match (in_string, b) {
                (true, b'\\') => escaped = true,
                (true, b'"') => in_string = false,
                (false, b'"') => in_string = true,
                (false, b'[' | b'{') => {
                    depth += 1;
                    if depth > self.limits.max_depth {
                        break Outcome::TooDeep(next);
                    }
                }
                (false, b']' | b'}') => {
                    depth -= 1;
                    if depth == 0 {
                        break Outcome::Complete(next);
                    }
                }
                _ => {}
            }
            next += 1;
        };
        *scan = Scan {
            next,
            depth,
            in_string,
            escaped,
            after_newline,
        };
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames `input` fed in one piece, as `Ok(message text)` / `Err((offset, kind))`.
    fn frames(limits: Limits, input: &[u8]) -> Vec<Result<String, (u64, DecodeErrorKind)>> {
        let mut framer = Framer::new(limits);
        framer.feed(input);
        framer.finish();
        let mut out = Vec::new();
        loop {
            let frame = match framer.next_frame() {
                None => return out,
                Some(Frame::Message {
                    tentative: true, ..
                }) => None,
                Some(Frame::Message { bytes, .. }) => {
                    Some(Ok(String::from_utf8_lossy(bytes).into_owned()))
                }
                Some(Frame::Error(e)) => Some(Err((e.offset, e.kind))),
            };
            // Tentative frames are refused here, to test the structural scan.
            match frame {
                Some(frame) => out.push(frame),
                None => framer.rescan(),
            }
        }
    }

    #[test]
    fn a_message_whose_blank_line_has_arrived_is_cut_there_tentatively() {
        let mut framer = Framer::new(Limits::default());
        framer.feed(b"  [\"a\\\"]\", {}] \t\n\n[1] [2]\n\n[");
        let Some(Frame::Message {
            offset: 2,
            bytes,
            tentative: true,
        }) = framer.next_frame()
        else {
            panic!("expected a tentative frame")
        };
        assert_eq!(bytes, b"[\"a\\\"]\", {}]");
        // Wrongly cut (two messages on one line): refused, then framed by structure.
        assert!(matches!(
            framer.next_frame(),
            Some(Frame::Message {
                bytes: b"[1] [2]",
                tentative: true,
                ..
            })
        ));
        framer.rescan();
        assert!(matches!(
            framer.next_frame(),
            Some(Frame::Message {
                bytes: b"[1]",
                tentative: false,
                ..
            })
        ));
        assert!(matches!(
            framer.next_frame(),
            Some(Frame::Message {
                bytes: b"[2]",
                tentative: true,
                ..
            })
        ));
        assert!(framer.next_frame().is_none());
    }

    #[test]
    fn no_tentative_frame_beyond_the_size_limit_and_a_rescan_finds_what_nests_too_deep() {
        let limits = Limits {
            max_message_bytes: 16,
            max_depth: 2,
        };
        let mut framer = Framer::new(limits);
        framer.feed(b"[[[1]]]\n\n[\"0123456789abcdef\"]\n\n");
        // The nesting is the decoder's to check: it asks for a rescan.
        assert!(matches!(
            framer.next_frame(),
            Some(Frame::Message {
                tentative: true,
                ..
            })
        ));
        framer.rescan();
        assert!(matches!(
            framer.next_frame(),
            Some(Frame::Error(DecodeError {
                offset: 0,
                kind: DecodeErrorKind::TooDeep { .. }
            }))
        ));
        assert!(matches!(
            framer.next_frame(),
            Some(Frame::Error(DecodeError {
                offset: 9,
                kind: DecodeErrorKind::TooLarge { .. }
            }))
        ));
    }

    #[test]
    fn brackets_and_quotes_inside_strings_do_not_end_a_message() {
        let got = frames(
            Limits::default(),
            b"[\"a]\\\"]\",{\"}\":\"\\\\\"}]  \r\n\r\n[1]",
        );
        assert_eq!(
            got,
            [
                Ok("[\"a]\\\"]\",{\"}\":\"\\\\\"}]".to_string()),
                Ok("[1]".into())
            ]
        );
    }

    #[test]
    fn blank_line_inside_a_message_is_an_error_and_the_next_message_survives() {
        let got = frames(Limits::default(), b"[1,\n\n[2]");
        assert!(matches!(got[0], Err((0, DecodeErrorKind::Syntax(_)))));
        assert_eq!(got[1], Ok("[2]".into()));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn garbage_between_messages_is_one_error_then_resync_at_a_blank_line() {
        let got = frames(Limits::default(), b"[1]\n\nxx [3] yy\n \n[2]\n");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Ok("[1]".into()));
        assert!(matches!(got[1], Err((5, DecodeErrorKind::Syntax(_)))));
        assert_eq!(got[2], Ok("[2]".into()));
    }

    #[test]
    fn too_large_and_too_deep_are_errors_and_skipped_to_the_blank_line() {
        let limits = Limits {
            max_message_bytes: 8,
            max_depth: 2,
        };
        let got = frames(limits, b"[\"0123456789\"]\n\n[[[1]]]\n\n[[1]]");
        assert_eq!(
            got,
            [
                Err((0, DecodeErrorKind::TooLarge { limit: 8 })),
                Err((16, DecodeErrorKind::TooDeep { limit: 2 })),
                Ok("[[1]]".into()),
            ]
        );
    }

    #[test]
    fn oversize_message_is_not_buffered() {
        let limits = Limits {
            max_message_bytes: 100,
            max_depth: 8,
        };
        let mut framer = Framer::new(limits);
        framer.feed(b"[\"");
        for _ in 0..1000 {
            framer.feed(&[b'x'; 64]);
            while let Some(frame) = framer.next_frame() {
                assert!(matches!(frame, Frame::Error(_)));
            }
            assert!(framer.buf.len() <= 200, "{}", framer.buf.len());
        }
    }

    #[test]
    fn unfinished_message_at_the_end_is_truncated() {
        let got = frames(Limits::default(), b"[1]\n\n  [\"abc\",");
        assert_eq!(
            got,
            [
                Ok("[1]".into()),
                Err((7, DecodeErrorKind::Truncated { bytes: 7 }))
            ]
        );
    }
}
