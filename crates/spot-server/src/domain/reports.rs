//! What a spot's partition tells an item's partition (a cluster of several partitions, see
//! [`crate::partition`]). A partition's owner applies its spots' events; an event about an
//! item of another partition becomes an [`ItemReport`] to that partition, whose owner
//! merges it with every other spot's reports of the item ([`Domain::apply_report`]), as
//! one domain would have. A spot going offline withdraws its reports everywhere: in its
//! own partition at once, in every other by a report; a deleted item leaves the item lists
//! of every partition the same way.
//!
//! Reports are made in input order from the input alone, so a replay makes the same ones;
//! the embedded server's domain ([`crate::partition::Partition::WHOLE`]) makes none.

use serde::{Deserialize, Serialize};
use spot_protocol::{Action, Proximity};

use super::Domain;
use crate::ids::Id;
use crate::partition::Partition;

/// One change a spot's partition asks an item's partition for, at the time `now` of the
/// input that caused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum ItemReport {
    /// An item was seen without a location to be present at (a hit, or a presence of a
    /// spot reporting to none): it exists from now on.
    Seen {
        /// Its code.
        code: String,
        /// Its code type (technology).
        tech: String,
        /// The event's own time, if it said.
        time_event: Option<i64>,
        /// The input's time.
        now: i64,
    },
    /// A presence event of spot `spot`, which reports to `location`.
    Presence {
        /// The spot.
        spot: Id,
        /// Its location.
        location: Id,
        /// `create`, `update` or `delete`.
        action: String,
        /// The item's code.
        code: String,
        /// Its code type.
        tech: String,
        /// `far`, `near` or `immediate`.
        proximity: String,
        /// The event's own time, if it said.
        time_event: Option<i64>,
        /// The input's time.
        now: i64,
    },
    /// Spot `spot` went offline: every report of it ends.
    Offline {
        /// The spot.
        spot: Id,
        /// The input's time.
        now: i64,
    },
    /// Item `item` was deleted (through the API): it leaves every item list.
    Deleted {
        /// The item.
        item: Id,
        /// The input's time.
        now: i64,
    },
}

impl ItemReport {
    /// The input's time.
    pub fn time(&self) -> i64 {
        match self {
            ItemReport::Seen { now, .. }
            | ItemReport::Presence { now, .. }
            | ItemReport::Offline { now, .. }
            | ItemReport::Deleted { now, .. } => *now,
        }
    }
}

impl Domain {
    /// This domain's share of the state.
    pub fn partition(&self) -> Partition {
        self.config.partition
    }

    /// The reports made since the last call, each with the partition it goes to, in the
    /// order they were made.
    pub fn take_reports(&mut self) -> Vec<(u32, ItemReport)> {
        std::mem::take(&mut self.reports)
    }

    /// An upstream event of spot `spot_id` (reporting to `location`) about item `code`:
    /// a presence event (with its action and proximity) or a sighting (`None`). Applied
    /// here when the item is this partition's, reported to its partition otherwise.
    pub(super) fn item_event(
        &mut self,
        (spot_id, location): (Id, Option<Id>),
        (code, tech): (&str, &str),
        presence: Option<(Action, Proximity)>,
        time_event: Option<i64>,
        now: i64,
    ) {
        let partition = self.config.partition;
        if partition.owns_key(code) {
            let item_id = self.ensure_item(code, tech, now, time_event);
            if let (Some(location), Some((action, proximity))) = (location, presence) {
                self.apply_presence(
                    (spot_id, location),
                    action,
                    item_id,
                    proximity,
                    time_event,
                    now,
                );
            }
            return;
        }
        let to = Partition::of_key(code, partition.count);
        let (code, tech) = (code.to_string(), tech.to_string());
        let report = match (location, presence) {
            (Some(location), Some((action, proximity))) => ItemReport::Presence {
                spot: spot_id,
                location,
                action: action.as_str().to_string(),
                code,
                tech,
                proximity: proximity.as_str().to_string(),
                time_event,
                now,
            },
            _ => ItemReport::Seen {
                code,
                tech,
                time_event,
                now,
            },
        };
        self.reports.push((to, report));
    }

    /// Spot `spot_id` went offline: its reports of items of other partitions end too.
    pub(super) fn report_offline(&mut self, spot_id: Id, now: i64) {
        self.report_to_others(ItemReport::Offline { spot: spot_id, now });
    }

    /// Item `item_id` was deleted: it leaves the item lists of other partitions too.
    pub(super) fn report_deleted(&mut self, item_id: Id, now: i64) {
        self.report_to_others(ItemReport::Deleted { item: item_id, now });
    }

    /// Sends `report` to every other partition.
    fn report_to_others(&mut self, report: ItemReport) {
        let Partition { index, count } = self.config.partition;
        for to in (0..count).filter(|&to| to != index) {
            self.reports.push((to, report.clone()));
        }
    }

    /// Applies a report of another partition's spot. A report naming an item of another
    /// partition, or an action or proximity that is none, is refused (and changes nothing).
    pub fn apply_report(&mut self, report: ItemReport) -> Result<(), String> {
        match report {
            ItemReport::Seen {
                code,
                tech,
                time_event,
                now,
            } => {
                self.check_owned(&code)?;
                self.ensure_item(&code, &tech, now, time_event);
            }
            ItemReport::Presence {
                spot,
                location,
                action,
                code,
                tech,
                proximity,
                time_event,
                now,
            } => {
                self.check_owned(&code)?;
                let action =
                    Action::parse(&action).ok_or_else(|| format!("no action {action:?}"))?;
                let proximity = Proximity::parse(&proximity)
                    .ok_or_else(|| format!("no proximity {proximity:?}"))?;
                let item_id = self.ensure_item(&code, &tech, now, time_event);
                self.apply_presence(
                    (spot, location),
                    action,
                    item_id,
                    proximity,
                    time_event,
                    now,
                );
            }
            ItemReport::Offline { spot, now } => self.withdraw_reports_of(spot, now),
            ItemReport::Deleted { item, now } => self.leave_lists(item, now),
        }
        Ok(())
    }

    fn check_owned(&self, code: &str) -> Result<(), String> {
        let partition = self.config.partition;
        if partition.owns_key(code) {
            Ok(())
        } else {
            Err(format!(
                "item {code:?} is partition {}'s, not {}'s",
                Partition::of_key(code, partition.count),
                partition.index
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::testing::*;

    /// Where every item is, as one picture of several domains (ids differ between a
    /// whole domain and partitioned ones, so resources are named by serial, code and label):
    /// per item code, whether it is present, its location's label, its move count and its
    /// presences (location label, proximity, reporting serials); per serial, whether the
    /// spot is online and how many events it sent.
    fn picture(parts: &[&Domain]) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let label = |id: Id| {
            parts
                .iter()
                .find_map(|d| d.locations.get(id).map(|l| l.label.clone()))
                .unwrap_or_else(|| format!("unknown location {id}"))
        };
        let serial = |id: Id| {
            parts
                .iter()
                .find_map(|d| d.spots.get(id).map(|s| s.serial_number.clone()))
                .unwrap_or_else(|| format!("unknown spot {id}"))
        };
        let (mut items, mut spots) = (BTreeMap::new(), BTreeMap::new());
        for d in parts {
            for item in d.items.values() {
                let mut presences: Vec<String> = d
                    .presences
                    .values()
                    .filter(|p| p.item == item.id)
                    .map(|p| {
                        let mut by: Vec<String> =
                            p.reporters.iter().map(|(s, _)| serial(*s)).collect();
                        by.sort();
                        format!("{} {} {by:?}", label(p.location), p.proximity.0.as_str())
                    })
                    .collect();
                presences.sort();
                let picture = format!(
                    "present {} at {:?} moved {} {presences:?}",
                    item.is_present,
                    item.location.map(label),
                    item.move_count
                );
                let code = item.code_hex.to_string();
                assert!(
                    items.insert(code, picture).is_none(),
                    "an item in two domains"
                );
            }
            for s in d.spots.values() {
                let picture = format!("online {} events {}", s.is_online, s.event_counter);
                spots.insert(s.serial_number.clone(), picture);
            }
        }
        (items, spots)
    }

    /// The merge of an item seen by spots of different partitions gives what one domain
    /// gives, when each partition's reports reach the item's partition: random presence
    /// events and hits of 6 spots about 12 items, with spots going offline.
    #[test]
    fn partitioned_domains_merge_items_as_one_domain_does() {
        const COUNT: u32 = 3;
        let mut whole = Domain::new(DomainConfig::default());
        let mut parts: Vec<Domain> = (0..COUNT)
            .map(|index| {
                Domain::new(DomainConfig {
                    partition: Partition {
                        index,
                        count: COUNT,
                    },
                    ..DomainConfig::default()
                })
            })
            .collect();
        let serials: Vec<String> = (0..6).map(|i| format!("spot-{i}")).collect();
        let codes: Vec<String> = (0..12).map(|i| format!("e2{i:022x}")).collect();
        let spread = |keys: &[String]| {
            let mut seen: Vec<u32> = keys.iter().map(|k| Partition::of_key(k, COUNT)).collect();
            seen.sort();
            seen.dedup();
            seen.len()
        };
        assert_eq!(spread(&serials), 3, "spots of every partition");
        assert_eq!(spread(&codes), 3, "items of every partition");
        let mut next = numbers(0x9e37_79b9_7f4a_7c15u64);
        let (mut reported, mut offline) = (0, 0);
        let mut now = T0;
        for _ in 0..3_000 {
            now += 10;
            if next(50) == 0 {
                // A spot goes offline (one at a time: the item's location after a
                // withdrawal depends on the order of withdrawals, which a sweep of several
                // spots makes differently in one domain and in several).
                let serial = &serials[next(6) as usize];
                let own = Partition::of_key(serial, COUNT) as usize;
                if let (Some(a), Some(b)) = (
                    whole.spot_by_serial(serial).map(|s| s.id),
                    parts[own].spot_by_serial(serial).map(|s| s.id),
                ) {
                    whole.go_offline(a, now);
                    parts[own].go_offline(b, now);
                }
            } else {
                let serial = &serials[next(6) as usize];
                let code = &codes[next(12) as usize];
                let event = match next(5) {
                    0 => presence(Action::Delete, code, Proximity::Far),
                    1 => presence(Action::Update, code, Proximity::Near),
                    2 => presence(Action::Create, code, Proximity::Immediate),
                    3 => presence(Action::Create, code, Proximity::Far),
                    _ => Event::new(EventKind::Hit(
                        Action::Create,
                        spot_protocol::Hit {
                            item_code: Some(code.as_str().into()),
                            item_codetype: Some("EPC Gen2".into()),
                            ..Default::default()
                        },
                    )),
                };
                whole.apply_event(serial, &event, now);
                let own = Partition::of_key(serial, COUNT) as usize;
                parts[own].apply_event(serial, &event, now);
            }
            // Reports reach their partition before the next input (a cluster's come later,
            // but in the same order from each partition).
            loop {
                let sent: Vec<(u32, ItemReport)> =
                    parts.iter_mut().flat_map(|d| d.take_reports()).collect();
                if sent.is_empty() {
                    break;
                }
                for (to, report) in sent {
                    match report {
                        ItemReport::Offline { .. } => offline += 1,
                        _ => reported += 1,
                    }
                    parts[to as usize].apply_report(report).unwrap();
                }
            }
            let parts: Vec<&Domain> = parts.iter().collect();
            assert_eq!(picture(&[&whole]), picture(&parts));
            for d in parts {
                assert_item_presences_agree(d, "a partition");
            }
        }
        assert!(reported > 1_000 && offline > 10, "{reported} {offline}");
        assert!(whole.presences.len() > 3, "items are present at the end");
        for (index, d) in parts.iter().enumerate() {
            let partition = Partition {
                index: index as u32,
                count: COUNT,
            };
            assert!(d.items.values().all(|i| partition.owns_key(&i.code_hex)));
            let ids = d.spots.values().map(|s| s.id);
            let ids = ids.chain(d.items.values().map(|i| i.id));
            let ids = ids.chain(d.presences.values().map(|p| p.id));
            assert!(
                ids.into_iter().all(|id| partition.owns(id)),
                "ids of {index}"
            );
        }
    }

    #[test]
    fn a_report_about_another_partitions_item_is_refused() {
        let mut d = Domain::new(DomainConfig {
            partition: Partition { index: 0, count: 2 },
            ..DomainConfig::default()
        });
        let code = (0..)
            .map(|i| format!("{i:024x}"))
            .find(|c| Partition::of_key(c, 2) == 1)
            .unwrap();
        let seen = ItemReport::Seen {
            code,
            tech: "EPC Gen2".into(),
            time_event: None,
            now: T0,
        };
        assert!(d.apply_report(seen).unwrap_err().contains("partition 1's"));
        assert!(d.items.is_empty());
    }
}
