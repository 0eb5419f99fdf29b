//! The simulated tag population of one spot (sans-IO: the caller passes `now`).
//!
//! Items arrive (`presence create`), change proximity (`presence update`), are read
//! (`hit create`, only when the spot's config says `send_hits`), leave, and are deleted
//! (`presence delete`) once they have not been seen for `hold_delay_s` seconds. The number
//! of items present hovers around [`PopulationParams::target_items`]: arrivals come at a
//! constant weight, departures in proportion to the items present.
//!
//! Item codes are 24-hex-digit EPC Gen2 SGTIN-96 codes. A share of arrivals
//! ([`PopulationParams::shared_share`]) draws from a pool of codes that is the same for every
//! spot of a run (derived from [`PopulationParams::shared_seed`]), so several spots report the
//! same items and a server's presence merging is exercised.
//!
//! Every call of [`Population::next_event`] returns exactly one event, so the caller controls
//! the event rate; the model is deterministic for a given seed and sequence of `now` values.

use std::collections::{HashSet, VecDeque};

use spot_protocol::{Action, Event, EventKind, Hit, Presence, Proximity, Timestamp};

use crate::rng::{mix, Rng};

/// The code type every simulated item has.
pub const EPC_GEN2: &str = "EPC Gen2";

/// Shape of the population (fixed for a run).
#[derive(Debug, Clone, PartialEq)]
pub struct PopulationParams {
    /// Mean number of items present at once.
    pub target_items: usize,
    /// Share (0..=1) of arrivals whose code comes from the pool shared by all spots.
    pub shared_share: f64,
    /// Number of codes in the shared pool.
    pub shared_pool: u64,
    /// Seed of the shared pool; the same for all spots of a run.
    pub shared_seed: u64,
    /// Antennas the spot has (hits name one of `1..=antennas`).
    pub antennas: i64,
}

impl Default for PopulationParams {
    fn default() -> Self {
        PopulationParams {
            target_items: 50,
            shared_share: 0.2,
            shared_pool: 500,
            shared_seed: 0x5EED,
            antennas: 4,
        }
    }
}

/// The configuration-dependent behaviour, read from the spot's config at each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behaviour {
    /// Emit a `hit create` per read.
    pub send_hits: bool,
    /// Transmit power; each dBm above 30 adds 10 (tenths of dBm) to read signal strengths.
    pub rfid_power_dbm: i64,
    /// Seconds an item must be unseen before its presence is deleted.
    pub hold_delay_s: i64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            send_hits: false,
            rfid_power_dbm: 30,
            hold_delay_s: 4,
        }
    }
}

#[derive(Debug, Clone)]
struct Item {
    code: String,
    time_started: Timestamp,
    time_last: Timestamp,
    proximity: Proximity,
    antenna: i64,
    hold_delay_s: i64,
}

/// One spot's items. See the module docs.
#[derive(Debug, Clone)]
pub struct Population {
    params: PopulationParams,
    rng: Rng,
    present: Vec<Item>,
    present_codes: HashSet<String>,
    /// Items that left, in the order they left, with the time their delete is due.
    leaving: VecDeque<(Timestamp, Item)>,
    /// The company prefix of this spot's own (not shared) items.
    company: u64,
}

impl Population {
    /// An empty population; `seed` makes the run reproducible.
    pub fn new(params: PopulationParams, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let company = rng.below(1 << 24);
        Population {
            params,
            rng,
            present: Vec::new(),
            present_codes: HashSet::new(),
            leaving: VecDeque::new(),
            company,
        }
    }

    /// Items currently present (not counting those that left and await their delete).
    pub fn present(&self) -> usize {
        self.present.len()
    }

    /// Items that left and whose `presence delete` is not yet sent.
    pub fn leaving(&self) -> usize {
        self.leaving.len()
    }

    /// The next event at time `now`. A due delete comes first; otherwise an arrival,
    /// proximity change or hit, chosen at random by weight.
    pub fn next_event(&mut self, now: Timestamp, behaviour: &Behaviour) -> Event {
        loop {
            if let Some((due, _)) = self.leaving.front() {
                if *due <= now {
                    if let Some((_, item)) = self.leaving.pop_front() {
                        self.present_codes.remove(&item.code);
                        return presence_event(Action::Delete, &item);
                    }
                }
            }
            let n = self.present.len();
            if n == 0 {
                return self.arrive(now);
            }
            let w_arrive = self.params.target_items.max(1) as f64;
            let w_leave = n as f64;
            let w_update = 2.0 * n as f64;
            let w_hit = if behaviour.send_hits {
                8.0 * n as f64
            } else {
                0.0
            };
            let mut pick = self.rng.unit() * (w_arrive + w_leave + w_update + w_hit);
            if pick < w_arrive {
                return self.arrive(now);
            }
            pick -= w_arrive;
            let index = self.rng.below(n as u64) as usize;
            if pick < w_leave {
                // Leaving makes no event now: the delete follows after the hold delay.
                let mut item = self.present.swap_remove(index);
                item.hold_delay_s = behaviour.hold_delay_s;
                let due = Timestamp(item.time_last.0 + behaviour.hold_delay_s.max(0) * 1000);
                self.leaving.push_back((due, item));
                continue;
            }
            pick -= w_leave;
            if pick < w_update {
                return self.change_proximity(index, now, behaviour);
            }
            return self.hit(index, now, behaviour);
        }
    }

    /// A new item arrives now (`presence create`), whatever the weights say (bursts).
    pub fn arrive(&mut self, now: Timestamp) -> Event {
        let mut code = String::new();
        if self.rng.chance(self.params.shared_share) {
            // A few tries to find a shared item not already here; else a fresh one.
            for _ in 0..4 {
                let index = self.rng.below(self.params.shared_pool);
                let candidate = shared_code(self.params.shared_seed, index);
                if !self.present_codes.contains(&candidate) {
                    code = candidate;
                    break;
                }
            }
        }
        while code.is_empty() || self.present_codes.contains(&code) {
            code = sgtin96(self.company, self.rng.next_u64());
        }
        let proximity = match self.rng.below(10) {
            0..=4 => Proximity::Far,
            5..=7 => Proximity::Near,
            _ => Proximity::Immediate,
        };
        let item = Item {
            code: code.clone(),
            time_started: now,
            time_last: now,
            proximity,
            antenna: self.rng.range_i64(1, self.params.antennas.max(1)),
            hold_delay_s: 0,
        };
        self.present_codes.insert(code);
        let event = presence_event(Action::Create, &item);
        self.present.push(item);
        event
    }

    fn change_proximity(&mut self, index: usize, now: Timestamp, behaviour: &Behaviour) -> Event {
        let step_up = self.rng.chance(0.5);
        let item = &mut self.present[index];
        item.proximity = match (item.proximity, step_up) {
            (Proximity::Far, _) => Proximity::Near,
            (Proximity::Immediate, _) => Proximity::Near,
            (Proximity::Near, true) => Proximity::Immediate,
            (Proximity::Near, false) => Proximity::Far,
        };
        item.time_last = now;
        item.hold_delay_s = behaviour.hold_delay_s;
        presence_event(Action::Update, item)
    }

    fn hit(&mut self, index: usize, now: Timestamp, behaviour: &Behaviour) -> Event {
        let noise = self.rng.range_i64(-40, 40);
        let item = &mut self.present[index];
        item.time_last = now;
        let base = match item.proximity {
            Proximity::Immediate => -500,
            Proximity::Near => -600,
            Proximity::Far => -700,
        };
        Event::new(EventKind::Hit(
            Action::Create,
            Hit {
                time: Some(now),
                item_code: Some(item.code.clone()),
                item_codetype: Some(EPC_GEN2.into()),
                antenna: Some(item.antenna),
                signal_strength: Some(base + noise + (behaviour.rfid_power_dbm - 30) * 10),
                extra: Default::default(),
            },
        ))
    }
}

fn presence_event(action: Action, item: &Item) -> Event {
    Event::new(EventKind::Presence(
        action,
        Presence {
            item_code: Some(item.code.clone()),
            item_codetype: Some(EPC_GEN2.into()),
            time_started: Some(item.time_started),
            time_last: Some(item.time_last),
            proximity: Some(item.proximity),
            hold_delay_s: Some(item.hold_delay_s),
            extra: Default::default(),
        },
    ))
}

/// Code number `index` of the pool shared by all spots seeded with `seed`.
pub fn shared_code(seed: u64, index: u64) -> String {
    let h = mix(seed ^ mix(index.wrapping_add(1)));
    // Shared items come from a handful of companies, like the goods of one shop.
    sgtin96(h >> 61, h)
}

/// An SGTIN-96 EPC as 24 hex digits: header 0x30, filter 1 (point of sale item),
/// partition 5 (24-bit company prefix, 20-bit item reference), then a 38-bit serial.
pub fn sgtin96(company: u64, random: u64) -> String {
    let item_reference = (random >> 38) & ((1 << 20) - 1);
    let serial = random & ((1 << 38) - 1);
    let hi: u32 = (0x30 << 24) | (1 << 21) | (5 << 18) | ((company >> 6) as u32 & 0x3_FFFF);
    let lo: u64 = ((company & 0x3F) << 58) | (item_reference << 38) | serial;
    format!("{hi:08x}{lo:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pop: &mut Population, behaviour: &Behaviour, events: usize, step_ms: i64) -> Vec<Event> {
        (0..events)
            .map(|i| pop.next_event(Timestamp(1_700_000_000_000 + i as i64 * step_ms), behaviour))
            .collect()
    }

    fn presence(e: &Event) -> Option<(Action, &Presence)> {
        match &e.kind {
            EventKind::Presence(a, p) => Some((*a, p)),
            _ => None,
        }
    }

    #[test]
    fn codes_are_24_lowercase_hex_digits_with_sgtin96_header() {
        for i in 0..100 {
            for code in [shared_code(9, i), sgtin96(i, mix(i))] {
                assert_eq!(code.len(), 24, "{code}");
                assert!(code
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
                assert!(code.starts_with("30"), "{code}");
            }
        }
    }

    #[test]
    fn same_seed_gives_same_events_other_seed_differs() {
        let b = Behaviour {
            send_hits: true,
            ..Behaviour::default()
        };
        let a = run(
            &mut Population::new(PopulationParams::default(), 42),
            &b,
            500,
            10,
        );
        let again = run(
            &mut Population::new(PopulationParams::default(), 42),
            &b,
            500,
            10,
        );
        let other = run(
            &mut Population::new(PopulationParams::default(), 43),
            &b,
            500,
            10,
        );
        assert_eq!(a, again);
        assert_ne!(a, other);
    }

    #[test]
    fn every_presence_is_created_before_updated_and_deleted_after_hold_delay() {
        let b = Behaviour {
            hold_delay_s: 3,
            ..Behaviour::default()
        };
        let mut pop = Population::new(
            PopulationParams {
                target_items: 20,
                ..Default::default()
            },
            1,
        );
        let mut live: std::collections::HashMap<String, Timestamp> = Default::default();
        let mut deletes = 0;
        for i in 0..20_000i64 {
            let now = Timestamp(i * 10);
            let e = pop.next_event(now, &b);
            let (action, p) = presence(&e).expect("no hits without send_hits");
            let code = p.item_code.clone().unwrap();
            match action {
                Action::Create => assert!(live.insert(code, now).is_none(), "created twice"),
                Action::Update => assert!(live.contains_key(&code), "update before create"),
                Action::Delete => {
                    assert!(live.remove(&code).is_some(), "delete before create");
                    let last = p.time_last.unwrap();
                    assert!(
                        now.0 - last.0 >= 3000,
                        "deleted {} ms after last seen",
                        now.0 - last.0
                    );
                    assert_eq!(p.hold_delay_s, Some(3));
                    deletes += 1;
                }
            }
        }
        assert!(deletes > 100, "only {deletes} deletes");
        assert_eq!(live.len(), pop.present() + pop.leaving());
        assert!(pop.present() < 60, "population grew to {}", pop.present());
    }

    #[test]
    fn hits_only_when_send_hits_and_power_raises_signal() {
        let quiet = run(
            &mut Population::new(PopulationParams::default(), 5),
            &Behaviour::default(),
            2000,
            10,
        );
        assert!(quiet.iter().all(|e| !matches!(e.kind, EventKind::Hit(..))));

        let signals = |power| {
            let b = Behaviour {
                send_hits: true,
                rfid_power_dbm: power,
                ..Behaviour::default()
            };
            let events = run(
                &mut Population::new(PopulationParams::default(), 5),
                &b,
                2000,
                10,
            );
            let s: Vec<i64> = events
                .iter()
                .filter_map(|e| match &e.kind {
                    EventKind::Hit(_, h) => h.signal_strength,
                    _ => None,
                })
                .collect();
            assert!(
                s.len() > 1000,
                "hits are the bulk when send_hits: {}",
                s.len()
            );
            s.iter().sum::<i64>() / s.len() as i64
        };
        assert_eq!(signals(33) - signals(30), 30);
    }

    #[test]
    fn a_configured_share_of_items_comes_from_the_shared_pool() {
        let params = PopulationParams {
            shared_share: 0.5,
            shared_pool: 1000,
            ..Default::default()
        };
        let pool: HashSet<String> = (0..1000)
            .map(|i| shared_code(params.shared_seed, i))
            .collect();
        let events = run(
            &mut Population::new(params.clone(), 3),
            &Behaviour::default(),
            5000,
            10,
        );
        let creates: Vec<&str> = events
            .iter()
            .filter_map(|e| presence(e).filter(|(a, _)| *a == Action::Create))
            .map(|(_, p)| p.item_code.as_deref().unwrap())
            .collect();
        let shared = creates.iter().filter(|c| pool.contains(**c)).count();
        let share = shared as f64 / creates.len() as f64;
        assert!((0.35..0.6).contains(&share), "shared share {share}");

        // Two spots with different seeds meet on shared items.
        let other = run(
            &mut Population::new(params, 4),
            &Behaviour::default(),
            5000,
            10,
        );
        let other_codes: HashSet<&str> = other.iter().filter_map(|e| e.item_code()).collect();
        assert!(creates.iter().any(|c| other_codes.contains(c)));
    }
}
