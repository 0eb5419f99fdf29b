//! The JSON encoding (spec §2.1). PLACEHOLDER: being written; the API below is the contract.

use crate::codec::{DecodeError, Limits};
use crate::event::Event;

/// Streaming JSON decoder.
#[derive(Debug)]
pub struct JsonDecoder {
    _limits: Limits,
}

impl JsonDecoder {
    /// A decoder with the given limits.
    pub fn new(limits: Limits) -> Self {
        JsonDecoder { _limits: limits }
    }
    /// Appends bytes.
    pub fn feed(&mut self, _bytes: &[u8]) {
        todo!("JSON decoder")
    }
    /// Next event, error, or `None` for "need more".
    pub fn next_event(&mut self) -> Option<Result<Event, DecodeError>> {
        todo!("JSON decoder")
    }
    /// End of stream.
    pub fn finish(&mut self) {
        todo!("JSON decoder")
    }
}

/// JSON encoder: compact (one line per event, `\n\n` after each) or pretty.
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
    pub fn encode(&mut self, _event: &Event, _out: &mut Vec<u8>) {
        let _ = self.pretty;
        todo!("JSON encoder")
    }
}
