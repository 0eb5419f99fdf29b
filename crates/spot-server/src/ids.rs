//! Chronological resource ids: 16 lower-case hex digits of `(unix_millis << 16) | counter`,
//! so that string order is creation order (and `sort=id` pages never repeat or skip).
//!
//! In memory an id is its integer value ([`Id`]): comparing, hashing and copying it is cheap;
//! it is written (serde, `Display`) as the 16 digits.

use std::fmt;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::partition::Partition;

/// A resource id: its integer value. Text (`Display`, serde) is 16 lower-case hex digits, and
/// integer order is text order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub u64);

impl Id {
    /// The id written as this text ([`id_key`]); `None` for text that is no id of ours.
    pub fn parse(text: &str) -> Option<Id> {
        id_key(text).map(Id)
    }

    /// Appends the 16 hex digits to `out` (hot: several per derived event): two digits at a
    /// time from a table, which costs less than checking [`Id::hex`]'s digits for UTF-8 and
    /// copying them with a call of `memcpy` (or pushing them one by one).
    pub fn push_hex(self, out: &mut String) {
        out.reserve(16);
        for byte in self.0.to_be_bytes() {
            let at = usize::from(byte) * 2;
            out.push_str(&HEX_PAIRS[at..at + 2]);
        }
    }

    /// The 16 hex digits as a `String`.
    pub fn text(self) -> String {
        let mut text = String::with_capacity(16);
        self.push_hex(&mut text);
        text
    }

    /// The 16 hex digits, on the stack: all at once, each nibble spread into a byte of a
    /// `u128`, then turned into its ASCII digit without a branch or a table.
    pub fn hex(self) -> IdText {
        const ONES: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
        let x = u128::from(self.0);
        // Halves into 64-bit lanes, quarters into 32-bit lanes, …, nibbles into bytes; the
        // top nibble ends in the top byte.
        let x = ((x & 0xffff_ffff_0000_0000) << 32) | (x & 0xffff_ffff);
        let x = ((x & 0x0000_0000_ffff_0000_0000_0000_ffff_0000) << 16)
            | (x & 0x0000_0000_0000_ffff_0000_0000_0000_ffff);
        let x = ((x & 0x0000_ff00_0000_ff00_0000_ff00_0000_ff00) << 8)
            | (x & 0x0000_00ff_0000_00ff_0000_00ff_0000_00ff);
        let x = ((x & 0x00f0_00f0_00f0_00f0_00f0_00f0_00f0_00f0) << 4)
            | (x & 0x000f_000f_000f_000f_000f_000f_000f_000f);
        // Digits 10..=15 get b'a' - b'0' - 10 more than the others.
        let letters = ((x + ONES * 6) >> 4) & ONES;
        IdText((x + ONES * u128::from(b'0') + letters * 39).to_be_bytes())
    }
}

/// The two lower-case hex digits of every byte, in byte order: `000102…feff`.
const HEX_PAIRS: &str = match std::str::from_utf8(&HEX_PAIR_BYTES) {
    Ok(text) => text,
    Err(_) => panic!("hex digits are ASCII"),
};

/// [`HEX_PAIRS`]' bytes.
const HEX_PAIR_BYTES: [u8; 512] = {
    let digits = b"0123456789abcdef";
    let mut pairs = [0u8; 512];
    let mut byte = 0;
    while byte < 256 {
        pairs[2 * byte] = digits[byte >> 4];
        pairs[2 * byte + 1] = digits[byte & 15];
        byte += 1;
    }
    pairs
};

/// The text of an [`Id`] without allocating (see [`Id::hex`]).
#[derive(Clone, Copy)]
pub struct IdText([u8; 16]);

impl std::ops::Deref for IdText {
    type Target = str;
    fn deref(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Id::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("not an id (16 lower-case hex digits): {text:?}"))
        })
    }
}

/// Hands out strictly increasing ids. After a restart, [`IdGen::observe`] every stored id so
/// new ids sort after them even if the clock went backwards. The ids of a cluster's
/// partition are all of that partition ([`Partition::owns`]): its owner's never meet
/// another's.
#[derive(Debug, Default, Clone)]
pub struct IdGen {
    last: u64,
    partition: Partition,
}

impl IdGen {
    /// A generator of `partition`'s ids.
    pub fn of(partition: Partition) -> IdGen {
        IdGen { last: 0, partition }
    }

    /// The next id for a resource created at `now_ms`.
    pub fn next(&mut self, now_ms: i64) -> Id {
        let base = (now_ms.max(0) as u64) << 16;
        let mut next = base.max(self.last + 1);
        let Partition { index, count } = self.partition;
        if count > 1 {
            let (index, count) = (u64::from(index), u64::from(count));
            next += (index + count - next % count) % count;
        }
        self.last = next;
        Id(self.last)
    }

    /// Remembers an id that exists already (loaded from the store).
    pub fn observe(&mut self, id: &str) {
        if let Ok(v) = u64::from_str_radix(id, 16) {
            self.observe_value(v);
        }
    }

    /// The value of the last id handed out (0: none).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Remembers the value of an id handed out already ([`IdGen::last`] of an earlier run).
    pub fn observe_value(&mut self, last: u64) {
        self.last = self.last.max(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_text_is_the_16_digit_lower_hex_form_and_id_key_reads_it_back() {
        let mut v = 0x9e37_79b9_7f4a_7c15u64;
        let mut values = vec![
            0,
            1,
            0xabc,
            u64::MAX,
            1_764_000_000_000 << 16,
            0x0123456789abcdef,
        ];
        for _ in 0..1000 {
            v = v
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            values.push(v);
        }
        for v in values {
            assert_eq!(id_text(v), format!("{v:016x}"));
            let mut pushed = String::from("x");
            Id(v).push_hex(&mut pushed);
            assert_eq!(pushed, format!("x{v:016x}"));
            assert_eq!(id_key(&id_text(v)), Some(v));
        }
    }

    #[test]
    fn ids_sort_in_creation_order_even_within_one_millisecond_and_after_clock_steps_back() {
        let mut g = IdGen::default();
        let a = g.next(1_000);
        let b = g.next(1_000);
        let c = g.next(999);
        let d = g.next(2_000);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        let mut restarted = IdGen::default();
        restarted.observe(&d.to_string());
        assert!(restarted.next(5) > d);
    }

    #[test]
    fn a_partitions_ids_are_its_own_and_still_in_creation_order() {
        for index in 0..3 {
            let partition = Partition { index, count: 3 };
            let mut g = IdGen::of(partition);
            let ids: Vec<Id> = [1_000, 1_000, 999, 2_000, 2_000]
                .into_iter()
                .map(|t| g.next(t))
                .collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
            assert!(ids.iter().all(|&id| partition.owns(id)), "{ids:?}");
            assert_eq!(ids[0].0 >> 16, 1_000, "an id still says when it was made");
        }
    }
}

/// The id with this integer value: 16 lower-case hex digits (`format!("{v:016x}")`, without
/// the formatting machinery: ids are made for every derived event).
pub fn id_text(v: u64) -> String {
    Id(v).text()
}

/// The integer value of an id made by [`IdGen`]: exactly 16 lower-case hex digits
/// (anything else is no id of ours).
pub fn id_key(id: &str) -> Option<u64> {
    let bytes = id.as_bytes();
    if bytes.len() != 16 {
        return None;
    }
    let mut v = 0u64;
    for &b in bytes {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(digit);
    }
    Some(v)
}

/// Resources by id: a hash map of the id's integer value (lookups are the hot path: one
/// hash, no tree walk), and the ids in order beside it, so that lists are in id (= creation)
/// order, nothing depends on hash order, and a page of a list ([`IdMap::range`]) costs its
/// length, not the map's. The order is a sorted vector: ids are chronological, so a new
/// resource's id is nearly always the largest yet (a push; loads come sorted too); a removed
/// id stays in it, skipped when read, until removed ids are half of it (then one pass drops
/// them): neither costs a tree node or a tree walk per resource.
///
/// Values are shared ([`Arc`]): growing the table moves pointers, not resources, and a
/// snapshot of a resource ([`IdMap::get_shared`], what a flush hands the row writer) is a
/// reference count, not a copy. [`IdMap::get_mut`] copies a resource only while such a
/// snapshot of it is still held (copy on write).
#[derive(Debug, Clone)]
pub struct IdMap<T> {
    map: rustc_hash::FxHashMap<Id, Arc<T>>,
    /// The keys of `map` in increasing order, and removed ones not dropped yet.
    order: Vec<Id>,
    /// How many ids in `order` are not in `map`.
    removed: usize,
}

impl<T> Default for IdMap<T> {
    fn default() -> Self {
        IdMap {
            map: rustc_hash::FxHashMap::default(),
            order: Vec::new(),
            removed: 0,
        }
    }
}

impl<T> IdMap<T> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The resource with this id.
    pub fn get(&self, id: Id) -> Option<&T> {
        self.map.get(&id).map(|v| &**v)
    }

    /// The resource with this id, shared: a snapshot that later changes do not touch.
    pub fn get_shared(&self, id: Id) -> Option<Arc<T>> {
        self.map.get(&id).cloned()
    }

    /// The resource with this id, written as text (no resource for text that is no id).
    pub fn get_str(&self, id: &str) -> Option<&T> {
        self.map.get(&Id::parse(id)?).map(|v| &**v)
    }

    /// Whether a resource has this id.
    pub fn contains_key(&self, id: Id) -> bool {
        self.map.contains_key(&id)
    }

    /// Adds or replaces a resource.
    pub fn insert(&mut self, id: Id, value: T) {
        if self.map.insert(id, Arc::new(value)).is_some() {
            return;
        }
        if self.order.last().is_none_or(|&last| last < id) {
            self.order.push(id);
            return;
        }
        match self.order.binary_search(&id) {
            Ok(_) => self.removed -= 1, // a removed id back: it is still in place
            Err(at) => self.order.insert(at, id),
        }
    }

    /// Removes and returns the resource with this id.
    pub fn remove(&mut self, id: Id) -> Option<Arc<T>> {
        let removed = self.map.remove(&id)?;
        self.removed += 1;
        if self.removed > 64 && self.removed * 2 > self.order.len() {
            let map = &self.map;
            self.order.retain(|id| map.contains_key(id));
            self.removed = 0;
        }
        Some(removed)
    }

    /// The resources in id order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.range(..).map(|v| &**v)
    }

    /// The resources whose ids are in `ids`, in id order (`.rev()` for the newest first),
    /// shared: each costs a lookup when it is reached, nothing before.
    pub fn range(&self, ids: impl RangeBounds<Id>) -> impl DoubleEndedIterator<Item = &Arc<T>> {
        let order = &self.order;
        let start = match ids.start_bound() {
            Bound::Included(first) => order.partition_point(|id| id < first),
            Bound::Excluded(after) => order.partition_point(|id| id <= after),
            Bound::Unbounded => 0,
        };
        let end = match ids.end_bound() {
            Bound::Included(last) => order.partition_point(|id| id <= last),
            Bound::Excluded(before) => order.partition_point(|id| id < before),
            Bound::Unbounded => order.len(),
        };
        order[start..end.max(start)]
            .iter()
            .filter_map(|id| self.map.get(id))
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl<T: Clone> IdMap<T> {
    /// The resource with this id, to change (a copy if a snapshot of it is still held).
    pub fn get_mut(&mut self, id: Id) -> Option<&mut T> {
        self.map.get_mut(&id).map(Arc::make_mut)
    }

    /// Every value, mutable, in no particular order.
    pub fn values_mut_unordered(&mut self) -> impl Iterator<Item = &mut T> {
        self.map.values_mut().map(Arc::make_mut)
    }
}

#[cfg(test)]
mod id_map_tests {
    use super::*;

    #[test]
    fn text_ids_are_only_generated_ones_and_values_come_in_id_order() {
        let mut g = IdGen::default();
        let (a, b) = (g.next(1), g.next(1));
        let mut m = IdMap::new();
        m.insert(b, "b");
        m.insert(a, "a");
        assert_eq!(m.values().copied().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(m.get_str(&a.to_string()), Some(&"a"));
        assert_eq!(
            m.get_str(a.to_string().trim_start_matches('0')),
            None,
            "no short aliases"
        );
        assert_eq!(m.get_str("+000000000010000"), None);
        m.insert(Id(0xab), "ab");
        assert_eq!(m.get_str("00000000000000ab"), Some(&"ab"));
        assert_eq!(m.get_str("00000000000000AB"), None, "upper case");
        assert_eq!(m.remove(Id(0xab)).as_deref(), Some(&"ab"));
        assert_eq!(m.remove(b).as_deref(), Some(&"b"));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn a_range_is_in_id_order_both_ways_and_forgets_removed_ids() {
        let mut m = IdMap::new();
        for v in [5, 1, 9, 3, 7] {
            m.insert(Id(v), v);
        }
        m.insert(Id(3), 33);
        assert_eq!(m.remove(Id(7)).as_deref(), Some(&7));
        assert_eq!(m.remove(Id(7)), None);
        let got = |it: &mut dyn Iterator<Item = &Arc<u64>>| it.map(|v| **v).collect::<Vec<_>>();
        assert_eq!(got(&mut m.range(..)), vec![1, 33, 5, 9]);
        assert_eq!(got(&mut m.range(Id(2)..).rev()), vec![9, 5, 33]);
        assert_eq!(got(&mut m.range(..=Id(5)).rev().take(2)), vec![5, 33]);
        assert_eq!(m.values().copied().collect::<Vec<_>>(), vec![1, 33, 5, 9]);
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn the_order_survives_removals_compactions_returns_and_late_ids() {
        let mut m = IdMap::new();
        for v in 1..=1000u64 {
            m.insert(Id(v * 10), v);
        }
        // Removed ids are skipped, then dropped in one pass (past half of the order).
        for v in 1..=600u64 {
            assert_eq!(m.remove(Id(v * 10)).as_deref(), Some(&v));
        }
        assert!(m.order.len() < 1000, "compacted");
        m.insert(Id(6000), 600); // a removed id back, in place
        m.insert(Id(5), 0); // older than every id
        m.insert(Id(6005), 601); // between two ids
        let ids: Vec<u64> = m.range(..).map(|v| **v).collect();
        assert_eq!(ids[..3], [0, 600, 601]);
        assert_eq!(ids[3..], (601..=1000).collect::<Vec<_>>()[..]);
        assert_eq!(m.len(), 403);
        let page: Vec<u64> = m.range(Id(6001)..=Id(6020)).map(|v| **v).collect();
        assert_eq!(page, [601, 601, 602]);
    }

    #[test]
    fn a_shared_snapshot_keeps_its_value_while_the_map_changes_a_copy() {
        let mut m = IdMap::new();
        m.insert(Id(1), vec![1]);
        let snapshot = m.get_shared(Id(1)).unwrap();
        m.get_mut(Id(1)).unwrap().push(2);
        assert_eq!(*snapshot, vec![1], "the snapshot is not changed");
        assert_eq!(m.get(Id(1)), Some(&vec![1, 2]));
        drop(snapshot);
        let before: *const Vec<i32> = m.get(Id(1)).unwrap();
        m.get_mut(Id(1)).unwrap().push(3);
        assert!(
            std::ptr::eq(m.get(Id(1)).unwrap(), before),
            "no snapshot held: changed in place"
        );
        let copied: *const Vec<i32> = m.get_mut(Id(1)).unwrap();
        let _snapshot = m.get_shared(Id(1)).unwrap();
        m.get_mut(Id(1)).unwrap().push(4);
        assert!(
            !std::ptr::eq(m.get(Id(1)).unwrap(), copied),
            "a snapshot held: changed in a copy"
        );
    }

    #[test]
    fn an_id_is_written_and_read_as_its_16_digits_by_serde() {
        for v in [0, 0xabc, u64::MAX] {
            let json = serde_json::to_string(&Id(v)).unwrap();
            assert_eq!(json, format!("\"{v:016x}\""));
            assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), Id(v));
            let map = std::collections::BTreeMap::from([(Id(v), 1)]);
            let json = serde_json::to_string(&map).unwrap();
            assert_eq!(json, format!("{{\"{v:016x}\":1}}"));
            assert_eq!(
                serde_json::from_str::<std::collections::BTreeMap<Id, i32>>(&json).unwrap(),
                map
            );
        }
        let err = serde_json::from_str::<Id>("\"00ab\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an id") && err.contains("00ab"), "{err}");
    }
}
