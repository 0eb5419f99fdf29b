//! How the live state is split among a cluster's partitions (sans-IO): a spot, and what it
//! alone changes, belongs to the partition of its serial number; an item, and its
//! presences (the merge of every spot's reports of it), to the partition of its code; a
//! resource made by a partition's owner has an id of that partition ([`Partition::owns`]),
//! so ids are unique across partitions without anyone handing them out, and a REST change
//! of a resource goes to the partition its id names. The embedded server is one partition
//! of one ([`Partition::WHOLE`]): it owns everything.

use crate::ids::Id;

/// One partition of `count`, or [`Partition::WHOLE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// This partition: `0..count`.
    pub index: u32,
    /// How many there are (at least 1).
    pub count: u32,
}

impl Default for Partition {
    fn default() -> Self {
        Partition::WHOLE
    }
}

impl Partition {
    /// The only partition: owns every spot, item and id.
    pub const WHOLE: Partition = Partition { index: 0, count: 1 };

    /// The partition of a serial number or an item code among `count` (FNV-1a: stable
    /// across builds and machines, unlike the standard library's hasher).
    pub fn of_key(key: &str, count: u32) -> u32 {
        let mut hash: u32 = 0x811c_9dc5;
        for b in key.bytes() {
            hash ^= u32::from(b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        hash % count.max(1)
    }

    /// The partition whose owner made the resource with this id.
    pub fn of_id(id: Id, count: u32) -> u32 {
        (id.0 % u64::from(count.max(1))) as u32
    }

    /// Whether the spot with this serial number, or the item with this code, is this
    /// partition's.
    pub fn owns_key(self, key: &str) -> bool {
        self.count <= 1 || Partition::of_key(key, self.count) == self.index
    }

    /// Whether this partition made the resource with this id.
    pub fn owns(self, id: Id) -> bool {
        self.count <= 1 || Partition::of_id(id, self.count) == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_fall_in_stable_partitions_in_range_and_the_whole_owns_everything() {
        assert_eq!(Partition::of_key("anything", 1), 0);
        assert_eq!(Partition::of_key("7", 16), 6);
        assert_eq!(Partition::of_key("spot-0042", 16), 10);
        let mut c = [0; 4];
        for i in 0..4000 {
            c[Partition::of_key(&format!("{i:06}"), 4) as usize] += 1;
        }
        assert!(c.iter().all(|&n| n > 800), "{c:?}");
        assert!(Partition::WHOLE.owns(Id(12345)) && Partition::WHOLE.owns_key("x"));
        let second = Partition { index: 1, count: 3 };
        assert!(second.owns(Id(7)) && !second.owns(Id(8)));
        assert_eq!(Partition::of_id(Id(8), 3), 2);
    }
}
