//! The per-stream item-code table (docs/protobuf.md, "Item codes"): the sender stores each
//! code it sends in full in a numbered slot and later sends only the slot number.
//!
//! The sender chooses the slot explicitly (field `item_code_slot`), so the receiver never
//! guesses the sender's policy: it stores what it is told, within its own bound. Ours fills
//! slots 0, 1, 2, … and, once all are used, reuses them in the same order (the oldest
//! assignment is evicted first).

use std::collections::HashMap;

use crate::event::ItemCode;

/// Default number of slots, on both sides: 4096 codes cover the items in range of a spot
/// many times over, and bound the table to 4096 × [`MAX_TABLED_CODE_BYTES`] = 512 KiB.
pub const DEFAULT_ITEM_TABLE_SLOTS: usize = 4096;

/// Codes longer than this (in UTF-8 bytes of their text form) never enter the table: they
/// are always sent in full. 128 covers the longest EPC (496 bits, 124 hex digits).
pub const MAX_TABLED_CODE_BYTES: usize = 128;

/// The sender's table: code → slot, and the order in which slots are reused.
#[derive(Debug, Clone)]
pub(crate) struct ItemEncoderTable {
    slots: Vec<String>,
    index: HashMap<String, u32>,
    capacity: usize,
    next: usize,
}

/// How the sender codes one item code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeRef {
    /// Sent before, still in this slot.
    Known(u32),
    /// Send in full; store it in this slot (or nowhere).
    New(Option<u32>),
}

impl ItemEncoderTable {
    pub(crate) fn new(capacity: usize) -> Self {
        ItemEncoderTable {
            slots: Vec::new(),
            index: HashMap::new(),
            capacity: capacity.min(u32::MAX as usize),
            next: 0,
        }
    }

    /// Looks `code` up, assigning it a slot if it is new and may be tabled.
    pub(crate) fn code(&mut self, code: &str) -> CodeRef {
        if let Some(&slot) = self.index.get(code) {
            return CodeRef::Known(slot);
        }
        if self.capacity == 0 || code.len() > MAX_TABLED_CODE_BYTES {
            return CodeRef::New(None);
        }
        let slot = self.next;
        self.next = (self.next + 1) % self.capacity;
        if slot < self.slots.len() {
            let evicted = std::mem::replace(&mut self.slots[slot], code.to_string());
            self.index.remove(&evicted);
        } else {
            self.slots.push(code.to_string());
        }
        self.index.insert(code.to_string(), slot as u32);
        CodeRef::New(Some(slot as u32))
    }
}

/// Why the receiver's table refused a slot: the frame that named it is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ItemTableError {
    /// `item_code_slot` is not below this receiver's number of slots.
    #[error("item_code_slot {slot} is beyond this receiver's table of {slots} slots")]
    SlotBeyondTable {
        /// The slot the frame named.
        slot: u32,
        /// This receiver's number of slots.
        slots: usize,
    },
    /// `item_code_slot` came with a code longer than [`MAX_TABLED_CODE_BYTES`].
    #[error("item_code_slot {slot}: a code of {bytes} bytes may not be tabled (max {MAX_TABLED_CODE_BYTES})")]
    CodeTooLong {
        /// The slot the frame named.
        slot: u32,
        /// The code's length in bytes.
        bytes: usize,
    },
    /// `item_code_ref` names a slot no earlier frame of the stream filled.
    #[error("item_code_ref {slot} names a slot that holds no code")]
    EmptySlot {
        /// The slot the frame named.
        slot: u32,
    },
}

/// The receiver's table: slot → code.
#[derive(Debug, Clone)]
pub(crate) struct ItemDecoderTable {
    slots: Vec<Option<ItemCode>>,
    capacity: usize,
}

impl ItemDecoderTable {
    pub(crate) fn new(capacity: usize) -> Self {
        ItemDecoderTable {
            slots: Vec::new(),
            capacity,
        }
    }

    /// Stores `code` in `slot`, replacing what was there.
    pub(crate) fn store(&mut self, slot: u32, code: &ItemCode) -> Result<(), ItemTableError> {
        let i = slot as usize;
        if i >= self.capacity {
            return Err(ItemTableError::SlotBeyondTable {
                slot,
                slots: self.capacity,
            });
        }
        if code.len() > MAX_TABLED_CODE_BYTES {
            return Err(ItemTableError::CodeTooLong {
                slot,
                bytes: code.len(),
            });
        }
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = Some(code.clone());
        Ok(())
    }

    /// The code in `slot`.
    pub(crate) fn get(&self, slot: u32) -> Result<&ItemCode, ItemTableError> {
        match self.slots.get(slot as usize) {
            Some(Some(code)) => Ok(code),
            _ => Err(ItemTableError::EmptySlot { slot }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_assigned_in_order_then_reused_oldest_first() {
        let mut t = ItemEncoderTable::new(2);
        assert_eq!(t.code("a"), CodeRef::New(Some(0)));
        assert_eq!(t.code("b"), CodeRef::New(Some(1)));
        assert_eq!(t.code("a"), CodeRef::Known(0));
        assert_eq!(t.code("c"), CodeRef::New(Some(0))); // evicts "a"
        assert_eq!(t.code("b"), CodeRef::Known(1));
        assert_eq!(t.code("a"), CodeRef::New(Some(1))); // evicts "b"
        assert_eq!(t.code("c"), CodeRef::Known(0));
        assert_eq!(t.slots.len(), 2);
        assert_eq!(t.index.len(), 2);
    }

    #[test]
    fn long_codes_and_a_zero_table_are_never_tabled() {
        let mut t = ItemEncoderTable::new(4);
        let long = "0".repeat(MAX_TABLED_CODE_BYTES + 1);
        assert_eq!(t.code(&long), CodeRef::New(None));
        assert_eq!(t.code(&long), CodeRef::New(None));
        let mut off = ItemEncoderTable::new(0);
        assert_eq!(off.code("a"), CodeRef::New(None));
    }

    #[test]
    fn the_receiver_enforces_its_own_bounds() {
        let mut t = ItemDecoderTable::new(8);
        assert!(t
            .store(8, &"a".into())
            .unwrap_err()
            .to_string()
            .contains("beyond"));
        let long = "0".repeat(MAX_TABLED_CODE_BYTES + 1);
        assert!(t
            .store(0, &long.as_str().into())
            .unwrap_err()
            .to_string()
            .contains("may not be tabled"));
        assert!(t.get(3).unwrap_err().to_string().contains("holds no code"));
        t.store(3, &"abc".into()).unwrap();
        assert_eq!(t.get(3).map(ItemCode::as_str), Ok("abc"));
        t.store(3, &"def".into()).unwrap();
        assert_eq!(t.get(3).map(ItemCode::as_str), Ok("def"));
        assert!(t.get(2).is_err());
    }
}
