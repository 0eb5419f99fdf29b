//! The item index: one item per code and technology, found without reading the item
//! ([`CodeEntry`], [`pack_code`]), created on first sight; items share their technology text
//! ([`Technologies`]).

use std::sync::Arc;

use spot_protocol::Event;

use super::derived::Topic;
use super::{Domain, Item, Table};
use crate::ids::Id;

/// The distinct technologies (code types) of items, so that items share one string per
/// technology. At most [`Technologies::MAX`] are shared (the text comes from spots); an item
/// of any other technology has its own string.
#[derive(Debug, Default)]
pub(super) struct Technologies(Vec<Arc<str>>);

impl Technologies {
    const MAX: usize = 16;

    /// The position of `tech` among the shared ones.
    fn index(&self, tech: &str) -> Option<u8> {
        self.0.iter().position(|t| **t == *tech).map(|i| i as u8)
    }

    /// The shared string for `tech`.
    fn get(&mut self, tech: &str) -> Arc<str> {
        if let Some(shared) = self.0.iter().find(|t| ***t == *tech) {
            return shared.clone();
        }
        let shared: Arc<str> = tech.into();
        if self.0.len() < Self::MAX {
            self.0.push(shared.clone());
        }
        shared
    }
}

/// Why a decoded `event` is malformed for the domain, if it is: an item code that is not
/// hex digits (`"zz"`, `""`) names no item, and would otherwise create one. Ingest counts
/// such an event as malformed and skips it, as it does one that does not decode.
pub fn malformed(event: &Event) -> Option<String> {
    let code = event.item_code()?;
    if !code.is_empty() && code.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!(
        "item_code {code:?} is not a hex string (the digits 0-9 and a-f)"
    ))
}

impl Domain {
    /// Loads a stored item decoded already (as [`Domain::load`] does a JSON one).
    pub fn load_item(&mut self, mut i: Item) {
        self.ids.observe_value(i.id.0);
        i.technology = self.technologies.get(&i.technology);
        let (id, known) = (i.id, self.item_id(&i.code_hex, &i.technology));
        if let Some(at) = self.presences_of_item.get_mut(&id) {
            (at.present, at.location) = (i.is_present, i.location);
        }
        self.items.insert(id, i);
        if known.is_none() {
            self.index_item(id);
        }
    }

    pub(super) fn ensure_item(
        &mut self,
        code: &str,
        tech: &str,
        now: i64,
        time_event: Option<i64>,
    ) -> Id {
        let shared = self.technologies.index(tech);
        let key = pack_code(code, shared);
        let hash = code_hash(key, code, tech);
        if let Some(id) = self.find_item(code, tech, key, hash) {
            return id;
        }
        let id = self.ids.next(now);
        let item = Item {
            id,
            code_hex: code.into(),
            technology: self.technologies.get(tech),
            label: None,
            custom: None,
            is_present: false,
            location: None,
            move_count: 0,
            time_moved: None,
            time_created: now,
            time_updated: now,
        };
        self.items.insert(id, item);
        if shared.is_some() {
            self.index_item_at(id, key, hash);
        } else {
            // Its technology may be shared from now on, which changes its key.
            self.index_item(id);
        }
        self.dirty.insert((Table::Items, id));
        self.log_row(Topic::ItemCreated(id), time_event, now, Table::Items, id);
        id
    }

    /// The item with this code and technology.
    pub(super) fn item_id(&self, code: &str, tech: &str) -> Option<Id> {
        let key = pack_code(code, self.technologies.index(tech));
        self.find_item(code, tech, key, code_hash(key, code, tech))
    }

    /// [`Domain::item_id`] with the code's key and hash ([`pack_code`], [`code_hash`]).
    pub(super) fn find_item(&self, code: &str, tech: &str, key: u128, hash: u64) -> Option<Id> {
        let items = &self.items;
        self.item_by_code
            .find(hash, |e| {
                e.key == key
                    && (key != 0
                        || items
                            .get(e.id)
                            .is_some_and(|i| *i.code_hex == *code && *i.technology == *tech))
            })
            .map(|e| e.id)
    }

    /// Adds the item (in [`Domain::items`] already, with a code no other item has, its
    /// technology from [`Domain::technologies`]) to [`Domain::item_by_code`].
    pub(super) fn index_item(&mut self, id: Id) {
        let Some(item) = self.items.get(id) else {
            return;
        };
        let key = pack_code(&item.code_hex, self.technologies.index(&item.technology));
        let hash = code_hash(key, &item.code_hex, &item.technology);
        self.index_item_at(id, key, hash);
    }

    /// Removes the item from [`Domain::item_by_code`] (before it is deleted).
    pub(super) fn unindex_item(&mut self, id: Id) {
        let Some(item) = self.items.get(id) else {
            return;
        };
        let key = pack_code(&item.code_hex, self.technologies.index(&item.technology));
        let hash = code_hash(key, &item.code_hex, &item.technology);
        if let Ok(entry) = self.item_by_code.find_entry(hash, |e| e.id == id) {
            entry.remove();
        }
    }

    /// [`Domain::index_item`] with the item's key and hash ([`pack_code`], [`code_hash`]).
    pub(super) fn index_item_at(&mut self, id: Id, key: u128, hash: u64) {
        let items = &self.items;
        self.item_by_code
            .insert_unique(hash, CodeEntry { id, key }, |e| {
                if e.key != 0 {
                    code_hash(e.key, "", "")
                } else {
                    items
                        .get(e.id)
                        .map_or(0, |i| code_hash(0, &i.code_hex, &i.technology))
                }
            });
    }
}

/// An entry of [`Domain::item_by_code`]: the item's id and, where they fit, its code and
/// technology packed into an integer ([`pack_code`]), so that finding an item compares them
/// in the table, without reading the item (each read of it is a cache miss).
#[derive(Debug, Clone, Copy)]
pub(super) struct CodeEntry {
    id: Id,
    /// [`pack_code`] of the item's code and technology; 0: they do not fit, compare the item.
    key: u128,
}

/// A code of at most 28 hex digits, all letters of one case, of a shared technology (its
/// [`Technologies::index`]), packed into an integer that is equal only for the same code
/// text and technology: digits, technology, case, length. 0 for any other.
pub(super) fn pack_code(code: &str, tech: Option<u8>) -> u128 {
    let Some(tech) = tech else {
        return 0;
    };
    let bytes = code.as_bytes();
    if bytes.is_empty() || bytes.len() > 28 {
        return 0;
    }
    let mut digits = 0u128;
    let Some(upper) = spot_protocol::hex::one_case_hex(bytes, |digit| {
        digits = (digits << 4) | u128::from(digit);
    }) else {
        return 0;
    };
    (digits << 16) | (u128::from(tech) << 8) | (u128::from(upper) << 7) | bytes.len() as u128
}

/// The hash of an item's code and technology in [`Domain::item_by_code`]: of the packed
/// key where there is one ([`pack_code`]), of the text otherwise.
pub(super) fn code_hash(key: u128, code: &str, tech: &str) -> u64 {
    use std::hash::BuildHasher;
    if key != 0 {
        rustc_hash::FxBuildHasher.hash_one(key)
    } else {
        rustc_hash::FxBuildHasher.hash_one((code, tech))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::*;
    #[test]
    fn an_item_is_one_per_code_and_technology_and_items_share_their_technology_text() {
        let mut d = Domain::new(DomainConfig::default());
        let hit = |code: &str, tech: &str| {
            Event::new(EventKind::Hit(
                Action::Create,
                spot_protocol::Hit {
                    item_code: Some(code.into()),
                    item_codetype: Some(spot_protocol::codetype(tech)),
                    ..Default::default()
                },
            ))
        };
        let mut codes: Vec<(String, String)> = [
            ("0a", "EPC Gen2"),
            ("0b", "EPC Gen2"),
            ("0a", "ISO 15693"),
            ("0A", "EPC Gen2"),
            ("00a", "EPC Gen2"),
            ("a", "EPC Gen2"),
            ("aA", "EPC Gen2"),
            ("Aa", "EPC Gen2"),
            ("x-1", "EPC Gen2"),
            ("", "EPC Gen2"),
            ("0a", ""),
        ]
        .iter()
        .map(|(c, t)| (c.to_string(), t.to_string()))
        .collect();
        for digits in [27, 28, 29, 40] {
            codes.push(("f".repeat(digits), "EPC Gen2".into()));
            codes.push(("F".repeat(digits), "EPC Gen2".into()));
        }
        // More technologies than are shared.
        for t in 0..Technologies::MAX + 3 {
            codes.push(("0a".into(), format!("tech {t}")));
        }
        for round in 0..2 {
            for (code, tech) in &codes {
                d.apply_event("1", &hit(code, tech), T0 + round);
            }
        }
        let items: Vec<Item> = d.items.values().cloned().collect();
        assert_eq!(items.len(), codes.len(), "one item per code and technology");
        for ((code, tech), item) in codes.iter().zip(&items) {
            assert_eq!((&*item.code_hex, &*item.technology), (&**code, &**tech));
            assert_eq!(d.item_id(code, tech), Some(item.id), "{code:?} {tech:?}");
        }
        assert!(Arc::ptr_eq(&items[0].technology, &items[1].technology));
        assert_eq!(d.item_id("0a", "EPC"), None);
        assert_eq!(d.item_id("000a", "EPC Gen2"), None);

        // The same after loading the rows into a new domain.
        let mut loaded = Domain::new(DomainConfig::default());
        load_rows(&mut loaded, &d.take_changes(true));
        for ((code, tech), item) in codes.iter().zip(&items) {
            assert_eq!(
                loaded.item_id(code, tech),
                Some(item.id),
                "{code:?} {tech:?}"
            );
        }
    }
}
