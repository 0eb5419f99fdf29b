//! What the dashboard reads of the live state that the REST API does not answer in one
//! call: the counts of its overview with the items present per location ([`overview`]),
//! and items found by a code prefix or a piece of their label ([`search_items`]). Sans-IO:
//! each takes the domain (read-locked by the caller) and returns JSON; each walks the rows
//! once without building the JSON of the rows it does not return.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::Bound;

use serde_json::{json, Value};

use crate::domain::{Domain, Row};
use crate::ids::Id;

/// Most locations an overview lists (the ones with the most items first).
pub const MAX_OVERVIEW_LOCATIONS: usize = 10_000;
/// Most items a search returns.
pub const MAX_SEARCH_LIMIT: usize = 1_000;
/// Items a search returns unless asked for fewer or more.
pub const DEFAULT_SEARCH_LIMIT: usize = 50;

const ALL: (Bound<Id>, Bound<Id>) = (Bound::Unbounded, Bound::Unbounded);

/// Calls `each` on every row of `collection`, collecting none.
fn walk(domain: &Domain, collection: &str, each: &dyn Fn(&Row)) {
    let _ = domain.rows(collection, ALL, false, usize::MAX, &|row| {
        each(row);
        false
    });
}

/// `{"spots": {"total", "online"}, "items": {"total", "present"}, "locations": [{"id",
/// "label", "items_present"}…], "locations_listed_all"}`: every location, those with the
/// most items present first (then by id), at most [`MAX_OVERVIEW_LOCATIONS`].
pub fn overview(domain: &Domain) -> Value {
    let (spots, online) = (Cell::new(0usize), Cell::new(0usize));
    walk(domain, "spots", &|row| {
        if let Row::Spot(spot) = row {
            spots.set(spots.get() + 1);
            online.set(online.get() + usize::from(spot.is_online));
        }
    });
    let (items, present) = (Cell::new(0usize), Cell::new(0usize));
    let per_location: RefCell<HashMap<Id, usize>> = RefCell::default();
    walk(domain, "items", &|row| {
        if let Row::Item(item, _) = row {
            items.set(items.get() + 1);
            if item.is_present {
                present.set(present.get() + 1);
                if let Some(location) = item.location {
                    *per_location.borrow_mut().entry(location).or_default() += 1;
                }
            }
        }
    });
    let per_location = per_location.into_inner();
    let locations: RefCell<Vec<(usize, Id, String)>> = RefCell::default();
    walk(domain, "locations", &|row| {
        if let Row::Location(location, _) = row {
            let count = per_location.get(&location.id).copied().unwrap_or(0);
            locations
                .borrow_mut()
                .push((count, location.id, location.label.clone()));
        }
    });
    let mut locations = locations.into_inner();
    let total_locations = locations.len();
    locations.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    locations.truncate(MAX_OVERVIEW_LOCATIONS);
    let listed: Vec<Value> = locations
        .iter()
        .map(|(count, id, label)| json!({"id": id.hex().to_string(), "label": label, "items_present": count}))
        .collect();
    json!({
        "spots": {"total": spots.get(), "online": online.get()},
        "items": {"total": items.get(), "present": present.get()},
        "locations": listed,
        "locations_listed_all": total_locations <= MAX_OVERVIEW_LOCATIONS,
    })
}

/// The items whose `code_hex` starts with `text` or whose label contains it (both
/// ignoring case), present ones first, at most `limit`: `{"results": [...], "is_limited"}`
/// (`is_limited`: more matched).
pub fn search_items(domain: &Domain, text: &str, limit: usize) -> Value {
    let wanted = text.to_lowercase();
    let found: RefCell<Vec<Row>> = RefCell::default();
    let matched = Cell::new(0usize);
    // Each row is looked at once; at most `limit` present and `limit` absent ones are kept.
    let absent: RefCell<Vec<Row>> = RefCell::default();
    walk(domain, "items", &|row| {
        let Row::Item(item, _) = row else { return };
        let code = item.code_hex.len() >= wanted.len()
            && item.code_hex[..wanted.len()].eq_ignore_ascii_case(&wanted);
        let label = || {
            item.label
                .as_deref()
                .and_then(Value::as_str)
                .is_some_and(|l| l.to_lowercase().contains(&wanted))
        };
        if !(code || label()) {
            return;
        }
        matched.set(matched.get() + 1);
        let list = if item.is_present { &found } else { &absent };
        let mut list = list.borrow_mut();
        if list.len() < limit {
            list.push(row.clone());
        }
    });
    let mut rows = found.into_inner();
    rows.extend(absent.into_inner());
    rows.truncate(limit);
    let results: Vec<Value> = rows.iter().filter_map(Row::value).collect();
    json!({"results": results, "is_limited": matched.get() > results.len()})
}

#[cfg(test)]
mod tests {
    use super::*;
    use spot_protocol::{Action, Event, EventKind, Presence, Proximity};

    use crate::domain::DomainConfig;

    const T0: i64 = 1_700_000_000_000;

    fn presence(code: &str) -> Event {
        Event::new(EventKind::Presence(
            Action::Create,
            Presence {
                item_code: Some(code.into()),
                item_codetype: Some("EPC Gen2".into()),
                proximity: Some(Proximity::Near),
                ..Presence::default()
            },
        ))
    }

    /// A domain where spot 1 sees two items and spot 2 one; spot 2's item gets a label.
    fn domain() -> Domain {
        let mut domain = Domain::new(DomainConfig::default());
        for (serial, codes) in [("1", vec!["aabb01", "aabb02"]), ("2", vec!["ccdd03"])] {
            domain.begin_stream(serial, None, T0);
            for code in codes {
                let event = presence(code);
                domain.apply_event(serial, &event, T0);
            }
        }
        let item = domain.rows(
            "items",
            ALL,
            false,
            usize::MAX,
            &|r| matches!(r, Row::Item(i, _) if &*i.code_hex == "ccdd03"),
        );
        let id = item.unwrap()[0].id().hex();
        let mut label = spot_protocol::Object::new();
        label.insert("label".into(), "Blue Pallet".into());
        domain.put("items", &id, &label, T0 + 1).unwrap();
        domain
    }

    #[test]
    fn the_overview_counts_spots_items_and_items_per_location_busiest_first() {
        let overview = overview(&domain());
        assert_eq!(overview["spots"], json!({"total": 2, "online": 2}));
        assert_eq!(overview["items"], json!({"total": 3, "present": 3}));
        let counts: Vec<(&str, u64)> = overview["locations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["label"].as_str().unwrap(),
                    l["items_present"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(counts, [("spot1", 2), ("spot2", 1)]);
        assert_eq!(overview["locations_listed_all"], true);
    }

    #[test]
    fn items_are_found_by_code_prefix_or_label_ignoring_case() {
        let domain = domain();
        let codes = |found: &Value| -> Vec<String> {
            found["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["code_hex"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            codes(&search_items(&domain, "AABB", 10)),
            ["aabb01", "aabb02"]
        );
        assert_eq!(codes(&search_items(&domain, "pallet", 10)), ["ccdd03"]);
        assert!(codes(&search_items(&domain, "bb01x", 10)).is_empty());
        let limited = search_items(&domain, "aa", 1);
        assert_eq!(codes(&limited), ["aabb01"]);
        assert_eq!(limited["is_limited"], true);
        assert_eq!(search_items(&domain, "aa", 2)["is_limited"], false);
    }
}
