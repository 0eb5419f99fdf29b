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
        format!("{:016x}", self.last)
    }

    /// Remembers an id that exists already (loaded from the store).
    pub fn observe(&mut self, id: &str) {
        if let Ok(v) = u64::from_str_radix(id, 16) {
            self.last = self.last.max(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
