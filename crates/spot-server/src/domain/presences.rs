//! The presence engine: a presence event of a spot creates, strengthens, weakens or withdraws
//! its report of an item at the spot's location; the reports of every spot at one location
//! merge into one presence (the strongest proximity wins; it is deleted when no spot reports
//! it any more); the item is where its strongest presence is ([`Domain::recompute_item`]).

use spot_protocol::{Action, Proximity};

use super::derived::{PresenceTopic, Topic};
use super::json::WriteJson;
use super::{Domain, NamedProximity, PresenceResource, Reporters, Table};
use crate::ids::Id;

/// How one presence of an item changed (see [`Domain::recompute_item`]).
#[derive(Debug, Clone, Copy)]
pub(super) enum PresenceChange {
    /// The presence at this location was created or got stronger (now this proximity).
    Stronger(Id, Proximity),
    /// The presence at this location got weaker or was deleted.
    Weaker(Id),
}

impl Domain {
    /// Loads a stored presence decoded already (as [`Domain::load`] does a JSON one).
    pub fn load_presence(&mut self, p: PresenceResource) {
        self.ids.observe_value(p.id.0);
        self.add_presence_of_item(p.item, p.location, p.id);
        self.presences.insert(p.id, p);
    }

    /// A presence event of the spot `spot_id`, which reports to `location_id`, about the
    /// item `item_id`.
    pub(super) fn apply_presence(
        &mut self,
        (spot_id, location_id): (Id, Id),
        action: Action,
        item_id: Id,
        proximity: Proximity,
        time_event: Option<i64>,
        now: i64,
    ) {
        match (action, self.presence_id(item_id, location_id)) {
            (Action::Delete, Some(presence_id)) => {
                self.withdraw(spot_id, presence_id, time_event, now);
            }
            (Action::Delete, None) => {}
            (_, None) => {
                let id = self.ids.next(now);
                let presence = PresenceResource {
                    id,
                    item: item_id,
                    location: location_id,
                    proximity: NamedProximity(proximity),
                    reporters: Reporters::one(spot_id, NamedProximity(proximity)),
                    time_event,
                    time_created: now,
                    time_updated: now,
                };
                self.presences.insert(id, presence);
                self.add_presence_of_item(item_id, location_id, id);
                // A fresh id: never deleted, nothing to take out of `deleted`.
                self.dirty.insert((Table::Presences, id));
                self.log_row(
                    Topic::Presence {
                        id,
                        item: item_id,
                        location: location_id,
                        change: PresenceTopic::Created(proximity),
                    },
                    time_event,
                    now,
                    Table::Presences,
                    id,
                );
                let change = PresenceChange::Stronger(location_id, proximity);
                self.recompute_item(item_id, change, time_event, now);
            }
            (_, Some(presence_id)) => {
                let Some(p) = self.presences.get_mut(presence_id) else {
                    return;
                };
                p.reporters.insert(spot_id, NamedProximity(proximity));
                p.time_event = time_event.or(p.time_event);
                self.dirty.insert((Table::Presences, presence_id));
                self.reproximate(presence_id, time_event, now);
            }
        }
    }

    /// Records the presence of an item at a location in [`Domain::presences_of_item`].
    pub(super) fn add_presence_of_item(&mut self, item_id: Id, location_id: Id, presence_id: Id) {
        use std::collections::hash_map::Entry;
        match self.presences_of_item.entry(item_id) {
            Entry::Occupied(mut at) => at.get_mut().set(location_id, presence_id),
            Entry::Vacant(at) => {
                let (present, location) = self
                    .items
                    .get(item_id)
                    .map_or((false, None), |i| (i.is_present, i.location));
                at.insert(ItemPresences {
                    first: (location_id, presence_id),
                    more: Vec::new(),
                    present,
                    location,
                });
            }
        }
    }

    /// Takes presence `presence_id` (of `item_id` at `location_id`) out of
    /// [`Domain::presences_of_item`], if it is the one there.
    pub(super) fn forget_presence_of_item(
        &mut self,
        item_id: Id,
        location_id: Id,
        presence_id: Id,
    ) {
        if let Some(at) = self.presences_of_item.get_mut(&item_id) {
            if at.find(location_id) == Some(presence_id) && at.remove(location_id) {
                self.presences_of_item.remove(&item_id);
            }
        }
    }

    /// The spot no longer reports the presence: drop its contribution; delete the presence
    /// when nobody reports it any more.
    pub(super) fn withdraw(
        &mut self,
        spot_id: Id,
        presence_id: Id,
        time_event: Option<i64>,
        now: i64,
    ) {
        let Some(p) = self.presences.get_mut(presence_id) else {
            return;
        };
        p.reporters.remove(spot_id);
        if !p.reporters.is_empty() {
            self.dirty.insert((Table::Presences, presence_id));
            self.reproximate(presence_id, time_event, now);
            return;
        }
        let Some(p) = self.presences.remove(presence_id) else {
            return;
        };
        self.forget_presence_of_item(p.item, p.location, presence_id);
        self.dirty.remove(&(Table::Presences, presence_id));
        self.deleted.insert((Table::Presences, presence_id));
        let topic = Topic::Presence {
            id: p.id,
            item: p.item,
            location: p.location,
            change: PresenceTopic::Deleted(p.proximity.0),
        };
        if let Some((id, mut doc)) = self.log_start(&topic, time_event, now) {
            p.write_json(&mut doc);
            self.log_end(id, now, doc);
        }
        self.recompute_item(p.item, PresenceChange::Weaker(p.location), time_event, now);
    }

    /// Recomputes a presence's proximity from its reporters; logs a change.
    pub(super) fn reproximate(&mut self, presence_id: Id, time_event: Option<i64>, now: i64) {
        let Some(p) = self.presences.get_mut(presence_id) else {
            return;
        };
        let strongest = p.reporters.strongest().unwrap_or(Proximity::Far);
        let previous = p.proximity.0;
        p.time_updated = now;
        if strongest == previous {
            return;
        }
        p.proximity = NamedProximity(strongest);
        let topic = Topic::Presence {
            id: p.id,
            item: p.item,
            location: p.location,
            change: PresenceTopic::ChangedProximity(strongest, previous),
        };
        let (item_id, location_id) = (p.item, p.location);
        self.log_row(topic, time_event, now, Table::Presences, presence_id);
        let change = if strongest > previous {
            PresenceChange::Stronger(location_id, strongest)
        } else {
            PresenceChange::Weaker(location_id)
        };
        self.recompute_item(item_id, change, time_event, now);
    }

    /// The presence of an item at a location.
    pub(super) fn presence_id(&self, item_id: Id, location_id: Id) -> Option<Id> {
        self.presences_of_item.get(&item_id)?.find(location_id)
    }

    /// The location of the item's strongest presence (ties: the latest updated, then the
    /// latest created: a total order, so the order of the presences does not matter).
    pub(super) fn strongest_location(&self, item_id: Id) -> Option<Id> {
        self.presences_of_item.get(&item_id).and_then(|at| {
            at.iter()
                .filter_map(|(_, id)| self.presences.get(*id))
                .max_by(|a, b| {
                    a.proximity
                        .cmp(&b.proximity)
                        .then(a.time_updated.cmp(&b.time_updated))
                        .then(a.id.cmp(&b.id))
                })
                .map(|p| p.location)
        })
    }

    /// Item `location` = location of its strongest presence; `is_present`; moves.
    ///
    /// Incremental: a presence that appeared or got stronger takes the item when it is at
    /// least as strong as the presence where the item is; only when the presence holding
    /// the item weakens or goes are all of the item's presences compared. Where the item is
    /// comes from its [`ItemPresences`] while it has any: an event that leaves the item where
    /// it is (most do) does not read the item.
    pub(super) fn recompute_item(
        &mut self,
        item_id: Id,
        change: PresenceChange,
        time_event: Option<i64>,
        now: i64,
    ) {
        let (present, location) = match self.presences_of_item.get(&item_id) {
            Some(at) => (at.present, at.location),
            None => match self.items.get(item_id) {
                Some(item) => (item.is_present, item.location),
                None => return,
            },
        };
        let current = location.filter(|_| present);
        let strongest = match change {
            PresenceChange::Stronger(location, proximity) => {
                if current == Some(location) {
                    return;
                }
                let holder = current
                    .and_then(|l| self.presence_id(item_id, l))
                    .and_then(|id| self.presences.get(id));
                match holder {
                    Some(h) if h.proximity.0 > proximity => return,
                    Some(_) => Some(location),
                    None => self.strongest_location(item_id),
                }
            }
            PresenceChange::Weaker(location) => {
                if current.is_some() && current != Some(location) {
                    return;
                }
                self.strongest_location(item_id)
            }
        };
        let unchanged = match strongest {
            Some(l) => present && location == Some(l),
            None => !present,
        };
        if unchanged {
            return;
        }
        let Some(item) = self.items.get_mut(item_id) else {
            return;
        };
        // At most two: appeared, then moved.
        let mut topics: [Option<Topic>; 2] = [None, None];
        match strongest {
            Some(location) => {
                if !item.is_present {
                    item.is_present = true;
                    topics[0] = Some(Topic::ItemAppeared(item_id));
                }
                if item.location != Some(location) {
                    if item.location.is_some() {
                        item.move_count += 1;
                        item.time_moved = Some(now);
                        topics[1] = Some(Topic::ItemMovedTo(item_id, location));
                    }
                    item.location = Some(location);
                }
            }
            None => {
                if item.is_present {
                    item.is_present = false;
                    topics[0] = Some(Topic::ItemDisappeared(item_id));
                }
            }
        }
        if topics.iter().all(Option::is_none) {
            return;
        }
        item.time_updated = now;
        let (present, location) = (item.is_present, item.location);
        if let Some(at) = self.presences_of_item.get_mut(&item_id) {
            (at.present, at.location) = (present, location);
        }
        self.dirty.insert((Table::Items, item_id));
        for topic in topics.into_iter().flatten() {
            self.log_row(topic, time_event, now, Table::Items, item_id);
        }
    }
}

/// The presences of an item, one per location (most items are at one: the first is kept
/// inline), and a copy of the item's `is_present` and `location`, kept equal to the item's
/// by [`Domain::recompute_item`] (the only place they change while the item has presences),
/// so that an event that leaves the item where it is needs not read the item.
#[derive(Debug, Clone)]
pub(super) struct ItemPresences {
    /// (location id, presence id).
    pub(super) first: (Id, Id),
    /// The others, in no particular order.
    pub(super) more: Vec<(Id, Id)>,
    /// The item's `is_present`.
    pub(super) present: bool,
    /// The item's `location`.
    pub(super) location: Option<Id>,
}

impl ItemPresences {
    /// Every (location id, presence id).
    pub(super) fn iter(&self) -> impl Iterator<Item = &(Id, Id)> {
        std::iter::once(&self.first).chain(&self.more)
    }

    /// The presence at this location.
    fn find(&self, location: Id) -> Option<Id> {
        self.iter().find(|(l, _)| *l == location).map(|(_, p)| *p)
    }

    /// Sets the presence at this location.
    fn set(&mut self, location: Id, presence: Id) {
        match std::iter::once(&mut self.first)
            .chain(&mut self.more)
            .find(|(l, _)| *l == location)
        {
            Some(entry) => entry.1 = presence,
            None => self.more.push((location, presence)),
        }
    }

    /// Drops the presence at this location; true when none is left.
    fn remove(&mut self, location: Id) -> bool {
        if self.first.0 == location {
            match self.more.pop() {
                Some(last) => self.first = last,
                None => return true,
            }
        } else {
            self.more.retain(|(l, _)| *l != location);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::*;
    #[test]
    fn presences_merge_per_location_the_strongest_wins_and_deletion_needs_every_reporter() {
        let mut d = Domain::new(DomainConfig::default());
        d.begin_stream("1", None, T0);
        d.begin_stream("2", None, T0);
        let shared = location_of(&d, "1");
        let mut body = Object::new();
        body.insert("report_location".into(), shared.to_string().into());
        d.put("spots", "2", &body, T0).unwrap();
        let code = "00000000000000000000000a";
        d.apply_event("1", &presence(Action::Create, code, Proximity::Far), T0);
        d.apply_event(
            "2",
            &presence(Action::Create, code, Proximity::Immediate),
            T0,
        );
        assert_eq!(d.presences.len(), 1);
        let p = d.presences.values().next().unwrap().clone();
        assert_eq!(p.proximity.0, Proximity::Immediate);
        assert_eq!(p.location, shared);
        d.apply_event(
            "2",
            &presence(Action::Delete, code, Proximity::Immediate),
            T0 + 1,
        );
        let p = d
            .presences
            .values()
            .next()
            .expect("spot 1 still reports it");
        assert_eq!(p.proximity.0, Proximity::Far);
        assert!(item(&d, code).is_present);
        d.apply_event("1", &presence(Action::Delete, code, Proximity::Far), T0 + 2);
        assert!(d.presences.is_empty());
        let i = item(&d, code);
        assert!(!i.is_present);
        assert_eq!(i.location, Some(shared));
        let t = topics_of(&d);
        assert!(
            t.iter()
                .any(|t| t.contains("/changed-proximity/")
                    && t.ends_with("/far/immediate/moved-away")),
            "{t:?}"
        );
        assert!(t.last().unwrap().ends_with("/disappeared"));
    }

    #[test]
    fn an_item_moves_to_the_location_of_its_strongest_presence() {
        let mut d = Domain::new(DomainConfig::default());
        let code = "00000000000000000000000b";
        d.apply_event("1", &presence(Action::Create, code, Proximity::Near), T0);
        assert_eq!(item(&d, code).location, Some(location_of(&d, "1")));
        d.apply_event(
            "2",
            &presence(Action::Create, code, Proximity::Immediate),
            T0 + 5,
        );
        let i = item(&d, code);
        let to = location_of(&d, "2");
        assert_eq!(i.location, Some(to));
        assert_eq!(i.move_count, 1);
        assert_eq!(i.time_moved, Some(T0 + 5));
        assert!(topics_of(&d).contains(&format!("items/{}/moved-to/{to}", i.id)));
    }

    #[test]
    fn an_item_follows_its_strongest_presence_when_the_holder_weakens_or_goes() {
        let mut d = Domain::new(DomainConfig::default());
        let code = "000000000000000000000010";
        d.apply_event("1", &presence(Action::Create, code, Proximity::Near), T0);
        let (l1, l2) = (location_of(&d, "1"), {
            d.begin_stream("2", None, T0);
            location_of(&d, "2")
        });
        d.apply_event("2", &presence(Action::Create, code, Proximity::Far), T0 + 1);
        assert_eq!(item(&d, code).location.as_ref(), Some(&l1), "a weaker one");
        d.apply_event(
            "2",
            &presence(Action::Update, code, Proximity::Immediate),
            T0 + 2,
        );
        assert_eq!(
            item(&d, code).location.as_ref(),
            Some(&l2),
            "a stronger one"
        );
        d.apply_event("1", &presence(Action::Update, code, Proximity::Far), T0 + 3);
        assert_eq!(
            item(&d, code).location.as_ref(),
            Some(&l2),
            "another weakens"
        );
        d.apply_event("2", &presence(Action::Update, code, Proximity::Far), T0 + 4);
        assert_eq!(
            item(&d, code).location.as_ref(),
            Some(&l2),
            "equally strong: the latest updated"
        );
        d.apply_event(
            "1",
            &presence(Action::Update, code, Proximity::Near),
            T0 + 5,
        );
        d.apply_event(
            "2",
            &presence(Action::Update, code, Proximity::Near),
            T0 + 6,
        );
        assert_eq!(item(&d, code).location.as_ref(), Some(&l2));
        d.apply_event("2", &presence(Action::Update, code, Proximity::Far), T0 + 7);
        assert_eq!(
            item(&d, code).location.as_ref(),
            Some(&l1),
            "the holder weakens below another"
        );
        d.apply_event(
            "1",
            &presence(Action::Delete, code, Proximity::Near),
            T0 + 8,
        );
        let i = item(&d, code);
        assert_eq!(i.location.as_ref(), Some(&l2), "the holder goes");
        assert!(i.is_present);
        d.apply_event("2", &presence(Action::Delete, code, Proximity::Far), T0 + 9);
        let i = item(&d, code);
        assert!(!i.is_present);
        assert_eq!(i.location.as_ref(), Some(&l2), "the last known location");
        assert_eq!(i.move_count, 5, "L2, L1, L2, L1, L2");
    }

    #[test]
    fn an_items_presences_and_its_place_stay_in_step_with_the_item_through_any_events() {
        let mut d = Domain::new(DomainConfig::default());
        let mut next = numbers(0x9e37_79b9_7f4a_7c15u64);
        for i in 0..3_000i64 {
            let now = T0 + i * 10;
            if next(200) == 0 {
                // Every spot silent: offline, their presences withdrawn.
                d.sweep(now + 60_000);
            } else {
                let serial = (1 + next(4)).to_string();
                let code = format!("{:024x}", next(6));
                let action = [Action::Create, Action::Update, Action::Delete][next(3) as usize];
                let proximity =
                    [Proximity::Far, Proximity::Near, Proximity::Immediate][next(3) as usize];
                d.apply_event(&serial, &presence(action, &code, proximity), now);
            }
            assert_item_presences_agree(&d, &format!("step {i}"));
            if i % 500 == 499 {
                let flushed = d.take_changes(true);
                let mut loaded = Domain::new(DomainConfig::default());
                load_rows(&mut loaded, &flushed);
                assert_item_presences_agree(&loaded, &format!("loaded at step {i}"));
                d = loaded;
            }
        }
        assert!(d.presences.len() > 1 && d.items.values().any(|i| i.move_count > 0));
    }

    #[test]
    fn item_presences_keep_each_location_once_whichever_goes_first() {
        let (a, b, c) = ((Id(1), Id(10)), (Id(2), Id(20)), (Id(3), Id(30)));
        let mut at = ItemPresences {
            first: a,
            more: Vec::new(),
            present: true,
            location: Some(a.0),
        };
        at.set(b.0, b.1);
        at.set(c.0, c.1);
        at.set(b.0, Id(21));
        assert_eq!(at.find(b.0), Some(Id(21)), "replaced, not added");
        assert_eq!(at.iter().count(), 3);
        assert!(!at.remove(a.0), "the first goes, another takes its place");
        assert_eq!(at.find(a.0), None);
        assert_eq!(at.find(c.0), Some(c.1));
        assert!(!at.remove(Id(99)), "no presence there: nothing changes");
        assert!(!at.remove(Id(2)));
        assert_eq!(at.iter().copied().collect::<Vec<_>>(), vec![c]);
        assert!(at.remove(c.0), "the last one");
    }
}
