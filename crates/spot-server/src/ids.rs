//! Chronological resource ids: 16 lower-case hex digits of `(unix_millis << 16) | counter`,
//! so that string order is creation order (and `sort=id` pages never repeat or skip).

/// Hands out strictly increasing ids. After a restart, [`IdGen::observe`] every stored id so
/// new ids sort after them even if the clock went backwards.
#[derive(Debug, Default, Clone)]
pub struct IdGen {
    last: u64,
}

impl IdGen {
    /// The next id for a resource created at `now_ms`.
    pub fn next(&mut self, now_ms: i64) -> String {
        let base = (now_ms.max(0) as u64) << 16;
        self.last = base.max(self.last + 1);
        id_text(self.last)
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
        for v in [0, 1, 0xabc, u64::MAX, 1_764_000_000_000 << 16] {
            assert_eq!(id_text(v), format!("{v:016x}"));
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
        restarted.observe(&d);
        assert!(restarted.next(5) > d);
    }
}

/// The id with this integer value: 16 lower-case hex digits (`format!("{v:016x}")`, without
/// the formatting machinery: ids are made for every derived event).
pub fn id_text(v: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(16);
    for shift in (0..16).rev() {
        text.push(HEX[((v >> (shift * 4)) & 0xf) as usize] as char);
    }
    text
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

/// Resources by id, in id (= creation) order, keyed by the id's integer value: a lookup
/// compares integers instead of strings.
#[derive(Debug, Clone)]
pub struct IdMap<T> {
    map: std::collections::BTreeMap<u64, T>,
}

impl<T> Default for IdMap<T> {
    fn default() -> Self {
        IdMap {
            map: std::collections::BTreeMap::new(),
        }
    }
}

impl<T> IdMap<T> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The resource with this id.
    pub fn get(&self, id: impl AsRef<str>) -> Option<&T> {
        self.map.get(&id_key(id.as_ref())?)
    }

    /// The resource with this id's integer value ([`id_key`]).
    pub fn get_by_key(&self, key: u64) -> Option<&T> {
        self.map.get(&key)
    }

    /// The resource with this id, to change.
    pub fn get_mut(&mut self, id: impl AsRef<str>) -> Option<&mut T> {
        self.map.get_mut(&id_key(id.as_ref())?)
    }

    /// Whether a resource has this id.
    pub fn contains_key(&self, id: impl AsRef<str>) -> bool {
        self.get(id).is_some()
    }

    /// Adds or replaces a resource; an id not made by [`IdGen`] is refused (`false`).
    pub fn insert(&mut self, id: impl AsRef<str>, value: T) -> bool {
        match id_key(id.as_ref()) {
            Some(k) => {
                self.map.insert(k, value);
                true
            }
            None => false,
        }
    }

    /// Removes and returns the resource with this id.
    pub fn remove(&mut self, id: impl AsRef<str>) -> Option<T> {
        self.map.remove(&id_key(id.as_ref())?)
    }

    /// The resources in id order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.map.values()
    }

    /// Every value, mutable, in id order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.map.values_mut()
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

#[cfg(test)]
mod id_map_tests {
    use super::*;

    #[test]
    fn only_generated_ids_are_keys_and_values_come_in_id_order() {
        let mut g = IdGen::default();
        let (a, b) = (g.next(1), g.next(1));
        let mut m = IdMap::new();
        assert!(m.insert(&b, "b"));
        assert!(m.insert(&a, "a"));
        assert!(!m.insert("ab", "short"), "not 16 digits");
        assert!(!m.insert("000000000001000A", "upper case"));
        assert_eq!(m.values().copied().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(m.get(&a), Some(&"a"));
        assert_eq!(m.get(a.trim_start_matches('0')), None, "no short aliases");
        assert_eq!(m.get("+000000000010000"), None);
        assert_eq!(m.remove(&b), Some("b"));
        assert_eq!(m.len(), 1);
    }
}
