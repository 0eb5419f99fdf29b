//! Model checks of the whole domain: random runs of several spots (shared items, a spot
//! reporting to another's location, duplicates and retransmits of sequence numbers, epoch
//! changes, streams, silences that take spots offline) against a small in-memory model of
//! what the presences and items must be; and the same runs crashed and rebuilt from the
//! flushed rows and the journal after them.

use std::collections::BTreeMap;

use proptest::prelude::*;
use spot_protocol::SpotStatus;

use super::testing::*;
use super::JournalEntry;

/// Spots in a run (serials `1`..=`SPOTS`).
const SPOTS: u8 = 4;
/// Item codes in a run.
const ITEMS: u8 = 5;

/// One step of a run. `wait`: how far the clock moves first (ms).
#[derive(Debug, Clone)]
enum Op {
    /// A presence event of a spot, with a sequence number or none.
    Presence {
        spot: u8,
        seq: Option<u64>,
        item: u8,
        action: Action,
        proximity: Proximity,
        wait: i64,
    },
    /// An event sent before, sent again as it was (`back` events ago).
    Retransmit { back: usize, wait: i64 },
    /// `spot create` with a sequence epoch (a new one restarts the sequence).
    Epoch { spot: u8, epoch: u64, wait: i64 },
    /// A stream (POST, TCP connection) of the spot opens.
    Begin { spot: u8, wait: i64 },
    /// A stream of the spot ends.
    End { spot: u8, wait: i64 },
    /// The spot reports to the location of spot `to` from now on (`PUT`).
    ReportTo { spot: u8, to: u8 },
    /// The periodic sweep.
    Sweep { wait: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    let spot = 0..SPOTS;
    let action = prop_oneof![
        Just(Action::Create),
        Just(Action::Update),
        Just(Action::Delete)
    ];
    let proximity = prop_oneof![
        Just(Proximity::Far),
        Just(Proximity::Near),
        Just(Proximity::Immediate)
    ];
    let wait = 0..4_000i64;
    prop_oneof![
        10 => (spot.clone(), proptest::option::of(1..8u64), 0..ITEMS, action, proximity, wait.clone())
            .prop_map(|(spot, seq, item, action, proximity, wait)| Op::Presence {
                spot, seq, item, action, proximity, wait,
            }),
        3 => (0..16usize, wait.clone()).prop_map(|(back, wait)| Op::Retransmit { back, wait }),
        1 => (spot.clone(), 1..3u64, wait.clone())
            .prop_map(|(spot, epoch, wait)| Op::Epoch { spot, epoch, wait }),
        1 => (spot.clone(), wait.clone()).prop_map(|(spot, wait)| Op::Begin { spot, wait }),
        1 => (spot.clone(), wait).prop_map(|(spot, wait)| Op::End { spot, wait }),
        1 => (spot.clone(), spot).prop_map(|(spot, to)| Op::ReportTo { spot, to }),
        2 => (0..15_000i64).prop_map(|wait| Op::Sweep { wait }),
    ]
}

fn serial(spot: u8) -> String {
    (spot + 1).to_string()
}

fn code(item: u8) -> String {
    format!("{item:024x}")
}

/// The label of the own location of spot `spot`.
fn home(spot: u8) -> String {
    format!("spot{}", serial(spot))
}

/// What the model keeps of a spot.
#[derive(Debug)]
struct ModelSpot {
    acked: u64,
    epoch: Option<u64>,
    /// The spot whose own location it reports to.
    reports_to: u8,
    online: bool,
    open_streams: u32,
    last_traffic: i64,
}

/// The model: spots, and presences as (item, location's spot) → reporting spot → proximity.
#[derive(Debug, Default)]
struct Model {
    spots: BTreeMap<u8, ModelSpot>,
    presences: BTreeMap<(u8, u8), BTreeMap<u8, Proximity>>,
}

impl Model {
    /// Traffic of the spot: created on first sight, online.
    fn traffic(&mut self, spot: u8, now: i64) -> &mut ModelSpot {
        let s = self.spots.entry(spot).or_insert(ModelSpot {
            acked: 0,
            epoch: None,
            reports_to: spot,
            online: false,
            open_streams: 0,
            last_traffic: now,
        });
        s.online = true;
        s.last_traffic = now;
        s
    }

    /// An upstream event: the epoch, the sequence dedupe, then the presence.
    fn event(&mut self, spot: u8, event: &Event, now: i64) -> Applied {
        let s = self.traffic(spot, now);
        if let EventKind::Spot(Action::Create, status) = &event.kind {
            if status.seq_epoch.is_some() && status.seq_epoch != s.epoch {
                s.epoch = status.seq_epoch;
                s.acked = 0;
            }
        }
        if let Some(seq) = event.seq {
            if seq <= s.acked {
                return Applied::Duplicate;
            }
            s.acked = seq;
        }
        let location = s.reports_to;
        if let EventKind::Presence(action, p) = &event.kind {
            let item = u8::from_str_radix(p.item_code.as_deref().unwrap_or_default(), 16).unwrap();
            let key = (item, location);
            match action {
                Action::Delete => {
                    if let Some(reporters) = self.presences.get_mut(&key) {
                        reporters.remove(&spot);
                        if reporters.is_empty() {
                            self.presences.remove(&key);
                        }
                    }
                }
                _ => {
                    let proximity = p.proximity.unwrap_or(Proximity::Far);
                    self.presences
                        .entry(key)
                        .or_default()
                        .insert(spot, proximity);
                }
            }
        }
        Applied::Stored
    }

    /// Spots silent for `offline_after` without an open stream go offline; their reports go.
    fn sweep(&mut self, now: i64, offline_after: i64) {
        for (spot, s) in &mut self.spots {
            if s.online && s.open_streams == 0 && now - s.last_traffic >= offline_after {
                s.online = false;
                for reporters in self.presences.values_mut() {
                    reporters.remove(spot);
                }
            }
        }
        self.presences.retain(|_, reporters| !reporters.is_empty());
    }
}

/// Runs `ops` on `d` (and on `model`), calling `after` after each step with the time.
fn run(
    d: &mut Domain,
    mut model: Option<&mut Model>,
    ops: &[Op],
    mut after: impl FnMut(&mut Domain, Option<&Model>, usize),
) {
    let offline_after = DomainConfig::default().offline_after_ms;
    let mut now = T0;
    let mut sent: Vec<(u8, Event)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        // The upstream event of this step, if it has one.
        let event = match op {
            Op::Presence {
                spot,
                seq,
                item,
                action,
                proximity,
                wait,
            } => {
                now += wait;
                let mut event = presence(*action, &code(*item), *proximity);
                event.seq = *seq;
                Some((*spot, event))
            }
            Op::Retransmit { back, wait } => {
                now += wait;
                (!sent.is_empty()).then(|| sent[sent.len() - 1 - back % sent.len()].clone())
            }
            Op::Epoch { spot, epoch, wait } => {
                now += wait;
                let event = Event::new(EventKind::Spot(
                    Action::Create,
                    SpotStatus {
                        spot_id: Some(serial(*spot)),
                        seq_epoch: Some(*epoch),
                        ..SpotStatus::default()
                    },
                ));
                Some((*spot, event))
            }
            Op::Begin { spot, wait } => {
                now += wait;
                d.begin_stream(&serial(*spot), Some("1.0"), now);
                if let Some(model) = &mut model {
                    model.traffic(*spot, now).open_streams += 1;
                }
                None
            }
            Op::End { spot, wait } => {
                now += wait;
                d.end_stream(&serial(*spot), now, true);
                if let Some(s) = model.as_mut().and_then(|m| m.spots.get_mut(spot)) {
                    s.open_streams = s.open_streams.saturating_sub(1);
                    s.last_traffic = now;
                }
                None
            }
            Op::ReportTo { spot, to } => {
                let target = d
                    .locations
                    .values()
                    .find(|l| l.label == home(*to))
                    .map(|l| l.id);
                if let (Some(target), Some(_)) = (target, d.spot_by_serial(&serial(*spot))) {
                    let mut body = Object::new();
                    body.insert("report_location".into(), target.to_string().into());
                    d.put("spots", &serial(*spot), &body, now).unwrap();
                    if let Some(s) = model.as_mut().and_then(|m| m.spots.get_mut(spot)) {
                        s.reports_to = *to;
                    }
                }
                None
            }
            Op::Sweep { wait } => {
                now += wait;
                d.sweep(now);
                if let Some(model) = &mut model {
                    model.sweep(now, offline_after);
                }
                None
            }
        };
        if let Some((spot, event)) = event {
            let applied = d.apply_event(&serial(spot), &event, now);
            if let Some(model) = &mut model {
                assert_eq!(
                    applied,
                    model.event(spot, &event, now),
                    "step {step}: {op:?}"
                );
            }
            sent.push((spot, event));
        }
        after(d, model.as_deref(), step);
    }
}

/// The domain's spots, presences and items say what the model says.
fn assert_agrees(d: &Domain, model: &Model, context: &str) {
    assert_eq!(d.spots.len(), model.spots.len(), "{context}: spots");
    for (spot, m) in &model.spots {
        let s = d.spot_by_serial(&serial(*spot)).unwrap();
        assert_eq!(
            (s.acked_seq, s.seq_epoch, s.is_online),
            (m.acked, m.epoch, m.online),
            "{context}: spot {}",
            serial(*spot)
        );
    }
    let serial_of = |id: Id| d.spots.get(id).unwrap().serial_number.clone();
    let label_of = |id: Id| d.locations.get(id).unwrap().label.clone();
    let mut presences = BTreeMap::new();
    for p in d.presences.values() {
        let reporters: BTreeMap<String, Proximity> = p
            .reporters
            .iter()
            .map(|(s, n)| (serial_of(*s), n.0))
            .collect();
        assert_eq!(
            Some(p.proximity.0),
            reporters.values().max().copied(),
            "{context}: a presence is as strong as its strongest reporter"
        );
        let code = d.items.get(p.item).unwrap().code_hex.to_string();
        presences.insert((code, label_of(p.location)), reporters);
    }
    let expected: BTreeMap<(String, String), BTreeMap<String, Proximity>> = model
        .presences
        .iter()
        .map(|((item, location), reporters)| {
            let reporters = reporters.iter().map(|(s, p)| (serial(*s), *p)).collect();
            ((code(*item), home(*location)), reporters)
        })
        .collect();
    assert_eq!(presences, expected, "{context}: presences");
    for item in d.items.values() {
        let at: Vec<(&String, Proximity)> = expected
            .iter()
            .filter(|((code, _), _)| **code == *item.code_hex)
            .map(|((_, location), reporters)| (location, *reporters.values().max().unwrap()))
            .collect();
        assert_eq!(item.is_present, !at.is_empty(), "{context}: {item:?}");
        if let Some(strongest) = at.iter().map(|(_, p)| *p).max() {
            let location = label_of(item.location.unwrap());
            assert!(
                at.contains(&(&location, strongest)),
                "{context}: {item:?} is at {location}, not at a strongest presence {at:?}"
            );
        }
    }
    assert_item_presences_agree(d, context);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn presences_and_items_follow_a_simple_model_through_duplicates_retransmits_and_offline_spots(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut d = Domain::new(DomainConfig::default());
        let mut model = Model::default();
        run(&mut d, Some(&mut model), &ops, |d, model, step| {
            assert_agrees(d, model.unwrap(), &format!("step {step}"));
        });
    }

    #[test]
    fn replaying_the_journal_after_any_run_rebuilds_the_same_state_and_ids(
        ops in proptest::collection::vec(op(), 1..80),
        flushes in proptest::collection::vec(proptest::bool::weighted(0.15), 80),
    ) {
        // What the store keeps: the rows of every flush, the journal after the last one, the
        // derived events, the id generator's state at the last flush.
        let mut rows: BTreeMap<(Table, Id), String> = BTreeMap::new();
        let mut journal: Vec<JournalEntry> = Vec::new();
        let mut log: Vec<String> = Vec::new();
        let mut id_last = 0;
        let mut original = Domain::new(DomainConfig::default());
        run(&mut original, None, &ops, |d, _, step| {
            let changes = d.take_changes(flushes[step]);
            log.extend(changes.log.into_iter().map(|(_, doc)| doc.to_string()));
            if changes.flush {
                for (table, id, doc) in &changes.upserts {
                    rows.insert((*table, *id), doc.to_json());
                }
                for key in &changes.deletes {
                    rows.remove(key);
                }
                id_last = changes.id_last;
                journal.clear();
            } else {
                journal.extend(changes.journal);
            }
        });

        let mut rebuilt = Domain::new(DomainConfig::default());
        for table in Table::ALL {
            let table_rows = rows
                .iter()
                .filter(|((t, _), _)| *t == table)
                .map(|((_, id), doc)| (id.text(), doc.clone()))
                .collect();
            rebuilt.load(table, table_rows, T0).unwrap();
        }
        rebuilt.restore_ids(id_last);
        rebuilt.load_events(log).unwrap();
        rebuilt.replay(journal).unwrap();
        for c in ["spots", "locations", "items", "presences", "events"] {
            prop_assert_eq!(rebuilt.collection(c), original.collection(c), "{}", c);
        }
        prop_assert_eq!(rebuilt.ids.next(T0), original.ids.next(T0), "the id sequence goes on");
    }
}
