//! Length-delimited framing (docs/protobuf.md, "Frames"): each frame is a varint length,
//! then that many bytes. Knows nothing of what a frame holds.
//!
//! Zero-length frames are skipped. A length over the limit is one error; the frame's bytes
//! are then discarded as they arrive, never buffered. A length varint longer than 10 bytes
//! is one error; the rest of that run of continuation bytes is discarded with it.

use std::ops::Range;

use super::error::FrameError;
use super::wire::{read_varint, VarintError, MAX_VARINT_BYTES};
use crate::codec::{DecodeError, DecodeErrorKind};

/// A complete frame found by [`FrameReader::next_frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrameAt {
    /// Stream offset of the frame's length prefix.
    pub offset: u64,
    /// Where the frame's body lies in [`FrameReader::bytes`].
    pub body: Range<usize>,
}

/// Splits a byte stream into frames. Feed bytes in any pieces.
#[derive(Debug)]
pub(crate) struct FrameReader {
    /// Received bytes not yet consumed start at `buf[start]`.
    buf: Vec<u8>,
    start: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
    /// Bytes of an oversize frame still to discard.
    skip: u64,
    /// An overlong length varint is being discarded up to its last byte.
    skip_varint: bool,
    /// No more bytes will come.
    finished: bool,
    max_frame_bytes: usize,
}

impl FrameReader {
    pub(crate) fn new(max_frame_bytes: usize) -> Self {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            offset: 0,
            skip: 0,
            skip_varint: false,
            finished: false,
            max_frame_bytes,
        }
    }

    /// Appends received bytes; bytes of a frame being discarded are dropped at once.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            let n = discard(&mut self.skip, &mut self.skip_varint, bytes);
            self.offset += n as u64;
            bytes = &bytes[n..];
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Marks the end of the stream.
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }

    /// The bytes a [`FrameAt::body`] refers to (valid until the next `feed`).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The next frame, or an error for one bad frame, or `None` when more bytes are needed
    /// (after [`FrameReader::finish`]: when the stream is exhausted).
    pub(crate) fn next_frame(&mut self) -> Option<Result<FrameAt, DecodeError>> {
        loop {
            // Oversize frames and overlong varints fed before `next_frame` saw them.
            if self.skip > 0 || self.skip_varint {
                let n = discard(
                    &mut self.skip,
                    &mut self.skip_varint,
                    &self.buf[self.start..],
                );
                self.consume(n);
                if self.skip > 0 || self.skip_varint {
                    return None;
                }
            }
            let pending = &self.buf[self.start..];
            if pending.is_empty() {
                return None;
            }
            let offset = self.offset;
            let (len, prefix) = match read_varint(pending) {
                Ok(v) => v,
                Err(VarintError::Incomplete) => return self.truncated(),
                Err(VarintError::Overlong) => {
                    let prefix = &pending[..MAX_VARINT_BYTES];
                    // The run goes on if its 10th byte has the continuation bit.
                    self.skip_varint = prefix[MAX_VARINT_BYTES - 1] >= 0x80;
                    self.consume(MAX_VARINT_BYTES);
                    return Some(Err(DecodeError {
                        offset,
                        kind: DecodeErrorKind::Protobuf(FrameError::OverlongLength),
                    }));
                }
            };
            if len == 0 {
                self.consume(prefix);
                continue;
            }
            if len > self.max_frame_bytes as u64 {
                self.consume(prefix);
                self.skip = len;
                return Some(Err(DecodeError {
                    offset,
                    kind: DecodeErrorKind::TooLarge {
                        limit: self.max_frame_bytes,
                    },
                }));
            }
            let len = len as usize;
            if pending.len() - prefix < len {
                return self.truncated();
            }
            let body = self.start + prefix..self.start + prefix + len;
            self.consume(prefix + len);
            return Some(Ok(FrameAt { offset, body }));
        }
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.offset += n as u64;
    }

    /// An incomplete frame: "need more", or after `finish` one `Truncated` error.
    fn truncated(&mut self) -> Option<Result<FrameAt, DecodeError>> {
        if !self.finished {
            return None;
        }
        let bytes = self.buf.len() - self.start;
        let offset = self.offset;
        self.consume(bytes);
        Some(Err(DecodeError {
            offset,
            kind: DecodeErrorKind::Truncated { bytes },
        }))
    }
}

/// How many leading bytes of `bytes` belong to something being discarded (the rest of an
/// oversize frame, the rest of an overlong varint); updates the discard state for them.
fn discard(skip: &mut u64, skip_varint: &mut bool, bytes: &[u8]) -> usize {
    let mut n = 0;
    if *skip > 0 {
        n = (*skip).min(bytes.len() as u64) as usize;
        *skip -= n as u64;
    }
    while *skip_varint && n < bytes.len() {
        *skip_varint = bytes[n] >= 0x80;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes, then finishes; every frame body or error.
    fn frames(input: &[u8], max: usize, step: usize) -> Vec<Result<(u64, Vec<u8>), DecodeError>> {
        let mut r = FrameReader::new(max);
        let mut out = Vec::new();
        let mut drain = |r: &mut FrameReader| {
            while let Some(f) = r.next_frame() {
                out.push(f.map(|f| (f.offset, r.bytes()[f.body].to_vec())));
            }
        };
        for chunk in input.chunks(step.max(1)) {
            r.feed(chunk);
            drain(&mut r);
        }
        r.finish();
        drain(&mut r);
        out
    }

    #[test]
    fn zero_length_frames_are_skipped() {
        let input = [0, 0, 2, 0xaa, 0xbb, 0, 1, 0xcc];
        for step in 1..=input.len() {
            assert_eq!(
                frames(&input, 100, step),
                vec![Ok((2, vec![0xaa, 0xbb])), Ok((6, vec![0xcc]))]
            );
        }
    }

    #[test]
    fn an_oversize_frame_is_one_error_and_its_bytes_are_skipped_unbuffered() {
        let mut input = vec![0x80, 0x01]; // 128 bytes
        input.extend_from_slice(&[0x55; 128]);
        input.extend_from_slice(&[1, 0x77]);
        for step in [1, 3, 7, 200] {
            assert_eq!(
                frames(&input, 100, step),
                vec![
                    Err(DecodeError {
                        offset: 0,
                        kind: DecodeErrorKind::TooLarge { limit: 100 }
                    }),
                    Ok((130, vec![0x77])),
                ]
            );
        }
        // Fed after the length was seen, the skipped bytes never reach the buffer.
        let mut r = FrameReader::new(100);
        r.feed(&[0xff, 0xff, 0x03]); // 65535 bytes
        assert!(matches!(r.next_frame(), Some(Err(_))));
        r.feed(&[0x55; 60000]);
        assert!(r.buf.len() - r.start == 0 && r.buf.capacity() < 1000);
        assert_eq!(r.next_frame(), None);
    }

    #[test]
    fn an_overlong_length_varint_is_one_error_then_decoding_resumes() {
        let mut input = vec![0xff; 25];
        input.push(0x01); // ends the run
        input.extend_from_slice(&[1, 0x77]);
        for step in [1, 2, 10, 30] {
            let got = frames(&input, 100, step);
            assert_eq!(got.len(), 2, "{got:?}");
            let err = got[0].as_ref().unwrap_err();
            assert_eq!(err.offset, 0);
            assert!(err.to_string().contains("longer than 10 bytes"));
            assert_eq!(got[1], Ok((26, vec![0x77])));
        }
    }

    #[test]
    fn a_frame_cut_by_the_end_of_the_stream_is_truncated() {
        assert_eq!(
            frames(&[1, 0x77, 5, 1, 2], 100, 2),
            vec![
                Ok((0, vec![0x77])),
                Err(DecodeError {
                    offset: 2,
                    kind: DecodeErrorKind::Truncated { bytes: 3 }
                })
            ]
        );
        // A half length prefix too.
        assert_eq!(
            frames(&[0x80], 100, 1),
            vec![Err(DecodeError {
                offset: 0,
                kind: DecodeErrorKind::Truncated { bytes: 1 }
            })]
        );
    }
}
