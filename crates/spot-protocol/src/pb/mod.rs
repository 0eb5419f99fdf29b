//! The protobuf encoding (spec §2.3). PLACEHOLDER: being written; the API below is the contract.

use crate::codec::{DecodeError, Limits};
use crate::event::Event;

/// Streaming protobuf decoder.
#[derive(Debug)]
pub struct PbDecoder {
    _limits: Limits,
}

impl PbDecoder {
    /// A decoder with the given limits.
    pub fn new(limits: Limits) -> Self {
        PbDecoder { _limits: limits }
    }
    /// Appends bytes.
    pub fn feed(&mut self, _bytes: &[u8]) {
        todo!("PB decoder")
    }
    /// Next event, error, or `None` for "need more".
    pub fn next_event(&mut self) -> Option<Result<Event, DecodeError>> {
        todo!("PB decoder")
    }
    /// End of stream.
    pub fn finish(&mut self) {
        todo!("PB decoder")
    }
}

/// Streaming protobuf encoder (stateful: timestamp deltas and item-code ids).
#[derive(Debug, Default)]
pub struct PbEncoder {}

impl PbEncoder {
    /// A fresh stream.
    pub fn new() -> Self {
        PbEncoder {}
    }
    /// Appends one frame.
    pub fn encode(&mut self, _event: &Event, _out: &mut Vec<u8>) {
        todo!("PB encoder")
    }
}
