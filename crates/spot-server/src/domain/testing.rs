//! Helpers of the domain's tests: events, loading a flush, reading the derived topics.

pub(crate) use serde_json::{json, Value};
pub(crate) use spot_protocol::{Action, Event, EventKind, Object, Proximity};

pub(crate) use super::{
    Applied, Changes, Domain, DomainConfig, Item, LogEvent, NamedProximity, PresenceResource, Table,
};
pub(crate) use crate::ids::Id;
use spot_protocol::Presence;

/// A deterministic pseudo-random source for the domain's randomized tests: each call
/// gives a number in `0..n` (a 64-bit LCG's high bits; the same `seed`, the same steps).
pub(crate) fn numbers(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut x = seed;
    move |n| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % n
    }
}

/// A time of the tests (Unix ms).
pub(crate) const T0: i64 = 1_700_000_000_000;

/// A presence event of the item `code` (EPC Gen2).
pub(crate) fn presence(action: Action, code: &str, proximity: Proximity) -> Event {
    Event::new(EventKind::Presence(
        action,
        Presence {
            item_code: Some(code.into()),
            item_codetype: Some("EPC Gen2".into()),
            proximity: Some(proximity),
            ..Presence::default()
        },
    ))
}

/// Loads a flush's rows into `d`, as a restart loads `state.db`.
pub(crate) fn load_rows(d: &mut Domain, flush: &Changes) {
    for table in Table::ALL {
        let rows = flush
            .upserts
            .iter()
            .filter(|(t, _, _)| *t == table)
            .map(|(_, id, doc)| (id.text(), doc.to_json()))
            .collect();
        d.load(table, rows, T0).unwrap();
    }
}

/// The topics of the derived events in memory, oldest first.
pub(crate) fn topics_of(d: &Domain) -> Vec<String> {
    d.events
        .iter()
        .map(|e| serde_json::from_str::<LogEvent>(&e.doc).unwrap().topic)
        .collect()
}

/// The item with this code.
pub(crate) fn item(d: &Domain, code: &str) -> Item {
    d.items
        .values()
        .find(|i| *i.code_hex == *code)
        .unwrap()
        .clone()
}

/// The report location of the spot.
pub(crate) fn location_of(d: &Domain, serial: &str) -> Id {
    d.spot_by_serial(serial).unwrap().report_location.unwrap()
}

/// Checks what [`super::ItemPresences`] keeps against what it is kept for: an entry per item with
/// presences, holding each of them, and the item's own `is_present` and `location`; an
/// item is present exactly while it has presences, at the location of a strongest one.
pub(crate) fn assert_item_presences_agree(d: &Domain, context: &str) {
    for item in d.items.values() {
        let presences: Vec<&PresenceResource> =
            d.presences.values().filter(|p| p.item == item.id).collect();
        let Some(at) = d.presences_of_item.get(&item.id) else {
            assert!(presences.is_empty(), "{context}: {presences:?} not indexed");
            assert!(!item.is_present, "{context}: present without presences");
            continue;
        };
        let mut indexed: Vec<(Id, Id)> = at.iter().copied().collect();
        indexed.sort();
        let mut expected: Vec<(Id, Id)> = presences.iter().map(|p| (p.location, p.id)).collect();
        expected.sort();
        assert_eq!(indexed, expected, "{context}: presences of {}", item.id);
        assert_eq!(
            (at.present, at.location),
            (item.is_present, item.location),
            "{context}: the copy of item {}",
            item.id
        );
        assert!(item.is_present, "{context}: presences but not present");
        let strongest = presences.iter().map(|p| p.proximity).max();
        assert!(
            presences
                .iter()
                .any(|p| Some(p.location) == item.location && Some(p.proximity) == strongest),
            "{context}: item {} is not at a strongest presence",
            item.id
        );
    }
}
