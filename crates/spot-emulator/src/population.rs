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
//! [`Population::next_json`] makes the same event but writes its JSON bytes straight into a
//! buffer (the emulator's hot path: no [`Event`], no allocation).

use std::collections::{HashSet, VecDeque};

use spot_protocol::{Action, Event, EventKind, Hit, Presence, Proximity, Timestamp, EPC_GEN2};

use crate::rng::{mix, Rng};

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
    /// The 96-bit EPC ([`sgtin96_bits`]); sent as 24 lowercase hex digits.
    code: u128,
    time_started: Timestamp,
    /// The text of `time_started`, made once.
    started: TimeText,
    time_last: Timestamp,
    proximity: Proximity,
    antenna: i64,
    hold_delay_s: i64,
}

/// What one step of the model produced (the event before it is built or written).
#[derive(Debug)]
enum Step {
    /// `presence create` of the item at this index of `present`.
    Create(usize),
    /// `presence update` of the item at this index.
    Update(usize),
    /// `presence delete` of an item that left.
    Delete(Item),
    /// `hit create` of the item at this index, with this signal strength.
    Hit(usize, i64),
}

/// The type of an event [`Population::next_json`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// `presence create`.
    PresenceCreate,
    /// `presence update`.
    PresenceUpdate,
    /// `presence delete`.
    PresenceDelete,
    /// `hit create`.
    Hit,
}

/// A hasher for the 96-bit codes, which are random already: one [`mix`] instead of SipHash
/// (only membership depends on it, never the order of events).
#[derive(Default)]
struct CodeHasher(u64);

impl std::hash::Hasher for CodeHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = mix(self.0 ^ u64::from(*b));
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = mix(v as u64 ^ mix((v >> 64) as u64));
    }
}

type CodeSet = HashSet<u128, std::hash::BuildHasherDefault<CodeHasher>>;

/// One spot's items. See the module docs.
#[derive(Debug, Clone)]
pub struct Population {
    params: PopulationParams,
    rng: Rng,
    present: Vec<Item>,
    present_codes: CodeSet,
    /// Items that left, in the order they left, with the time their delete is due.
    leaving: VecDeque<(Timestamp, Item)>,
    /// The company prefix of this spot's own (not shared) items.
    company: u64,
    /// The text of the last `now` written (the events of one tick share it).
    now_text: TimeText,
}

/// A time's text as the JSON encoder writes it (`len` 0: outside what
/// [`Timestamp::format_into`] covers).
#[derive(Debug, Clone, Copy)]
struct TimeText {
    ms: i64,
    len: u8,
    text: [u8; 24],
}

impl TimeText {
    fn of(t: Timestamp) -> Self {
        let mut text = [0u8; 24];
        let len = t.format_into(&mut text).map_or(0, |s| s.len() as u8);
        TimeText { ms: t.0, len, text }
    }

    /// Appends `"<time>"`; `false` when the time needs the general form.
    fn put(&self, out: &mut Vec<u8>) -> bool {
        out.push(b'"');
        out.extend_from_slice(&self.text[..usize::from(self.len)]);
        out.push(b'"');
        self.len > 0
    }
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
            present_codes: CodeSet::default(),
            leaving: VecDeque::new(),
            company,
            now_text: TimeText::of(Timestamp(0)),
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
        let step = self.step(now, behaviour);
        self.event(&step)
    }

    /// The same event as [`Population::next_event`] (same model, same random draws), with
    /// `seq`, appended to `out` in the compact JSON form of `spot_protocol`'s encoder, byte
    /// for byte, without building an [`Event`]: the emulator's hot path.
    pub fn next_json(
        &mut self,
        now: Timestamp,
        behaviour: &Behaviour,
        seq: Option<u64>,
        out: &mut Vec<u8>,
    ) -> Made {
        if self.now_text.ms != now.0 {
            self.now_text = TimeText::of(now);
        }
        let step = self.step(now, behaviour);
        let mark = out.len();
        if !self.write_json(&step, seq, out) {
            // A time outside years 0000-9999: the general encoder's form.
            out.truncate(mark);
            let mut event = self.event(&step);
            event.seq = seq;
            spot_protocol::Encoder::new(spot_protocol::Encoding::Json).encode(&event, out);
        }
        match step {
            Step::Create(_) => Made::PresenceCreate,
            Step::Update(_) => Made::PresenceUpdate,
            Step::Delete(_) => Made::PresenceDelete,
            Step::Hit(..) => Made::Hit,
        }
    }

    fn step(&mut self, now: Timestamp, behaviour: &Behaviour) -> Step {
        loop {
            if let Some((due, _)) = self.leaving.front() {
                if *due <= now {
                    if let Some((_, item)) = self.leaving.pop_front() {
                        self.present_codes.remove(&item.code);
                        return Step::Delete(item);
                    }
                }
            }
            let n = self.present.len();
            if n == 0 {
                return self.arrive_step(now);
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
                return self.arrive_step(now);
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
        let step = self.arrive_step(now);
        self.event(&step)
    }

    fn arrive_step(&mut self, now: Timestamp) -> Step {
        let mut code = None;
        if self.rng.chance(self.params.shared_share) {
            // A few tries to find a shared item not already here; else a fresh one.
            for _ in 0..4 {
                let index = self.rng.below(self.params.shared_pool);
                let candidate = shared_code_bits(self.params.shared_seed, index);
                if !self.present_codes.contains(&candidate) {
                    code = Some(candidate);
                    break;
                }
            }
        }
        let code = loop {
            match code {
                Some(c) if !self.present_codes.contains(&c) => break c,
                _ => code = Some(sgtin96_bits(self.company, self.rng.next_u64())),
            }
        };
        let proximity = match self.rng.below(10) {
            0..=4 => Proximity::Far,
            5..=7 => Proximity::Near,
            _ => Proximity::Immediate,
        };
        let item = Item {
            code,
            time_started: now,
            started: if self.now_text.ms == now.0 {
                self.now_text
            } else {
                TimeText::of(now)
            },
            time_last: now,
            proximity,
            antenna: self.rng.range_i64(1, self.params.antennas.max(1)),
            hold_delay_s: 0,
        };
        self.present_codes.insert(code);
        self.present.push(item);
        Step::Create(self.present.len() - 1)
    }

    fn change_proximity(&mut self, index: usize, now: Timestamp, behaviour: &Behaviour) -> Step {
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
        Step::Update(index)
    }

    fn hit(&mut self, index: usize, now: Timestamp, behaviour: &Behaviour) -> Step {
        let noise = self.rng.range_i64(-40, 40);
        let item = &mut self.present[index];
        item.time_last = now;
        let base = match item.proximity {
            Proximity::Immediate => -500,
            Proximity::Near => -600,
            Proximity::Far => -700,
        };
        Step::Hit(index, base + noise + (behaviour.rfid_power_dbm - 30) * 10)
    }

    /// The event of a step.
    fn event(&self, step: &Step) -> Event {
        match step {
            Step::Create(i) => presence_event(Action::Create, &self.present[*i]),
            Step::Update(i) => presence_event(Action::Update, &self.present[*i]),
            Step::Delete(item) => presence_event(Action::Delete, item),
            Step::Hit(i, signal) => {
                let item = &self.present[*i];
                Event::new(EventKind::Hit(
                    Action::Create,
                    Hit {
                        time: Some(item.time_last),
                        item_code: Some(code_hex(item.code).into()),
                        item_codetype: Some(EPC_GEN2.into()),
                        antenna: Some(item.antenna),
                        signal_strength: Some(*signal),
                        extra: Default::default(),
                    },
                ))
            }
        }
    }

    /// Appends `"<t>"` (from the text of `now` when it is `now`); `false` when the time
    /// needs the general form.
    fn put_time(&self, t: Timestamp, out: &mut Vec<u8>) -> bool {
        if t.0 == self.now_text.ms {
            self.now_text.put(out)
        } else {
            TimeText::of(t).put(out)
        }
    }

    /// Writes the step's event as `spot_protocol`'s compact JSON encoder does (typed fields
    /// in struct order, `seq` first, `\n\n` after); `false` (and a partial write) when a
    /// time falls outside what [`Timestamp::format_into`] covers.
    fn write_json(&self, step: &Step, seq: Option<u64>, out: &mut Vec<u8>) -> bool {
        let (head, item): (&[u8], &Item) = match step {
            Step::Create(i) => (b"[\"presence\",\"create\",{", &self.present[*i]),
            Step::Update(i) => (b"[\"presence\",\"update\",{", &self.present[*i]),
            Step::Delete(item) => (b"[\"presence\",\"delete\",{", item),
            Step::Hit(i, _) => (b"[\"hit\",\"create\",{", &self.present[*i]),
        };
        out.extend_from_slice(head);
        if let Some(seq) = seq {
            out.extend_from_slice(b"\"seq\":");
            write_int(out, i128::from(seq));
            out.push(b',');
        }
        match step {
            Step::Hit(_, signal) => {
                out.extend_from_slice(b"\"time\":");
                if !self.put_time(item.time_last, out) {
                    return false;
                }
                out.extend_from_slice(b",\"item_code\":\"");
                write_code(out, item.code);
                out.extend_from_slice(b"\",\"item_codetype\":\"EPC Gen2\",\"antenna\":");
                write_int(out, i128::from(item.antenna));
                out.extend_from_slice(b",\"signal_strength\":");
                write_int(out, i128::from(*signal));
            }
            _ => {
                out.extend_from_slice(b"\"item_code\":\"");
                write_code(out, item.code);
                out.extend_from_slice(b"\",\"item_codetype\":\"EPC Gen2\",\"time_started\":");
                if !(item.started.ms == item.time_started.0 && item.started.put(out)) {
                    return false;
                }
                out.extend_from_slice(b",\"time_last\":");
                if !self.put_time(item.time_last, out) {
                    return false;
                }
                out.extend_from_slice(b",\"proximity\":\"");
                out.extend_from_slice(item.proximity.as_str().as_bytes());
                out.extend_from_slice(b"\",\"hold_delay_s\":");
                write_int(out, i128::from(item.hold_delay_s));
            }
        }
        out.extend_from_slice(b"}]\n\n");
        true
    }
}

fn presence_event(action: Action, item: &Item) -> Event {
    Event::new(EventKind::Presence(
        action,
        Presence {
            item_code: Some(code_hex(item.code).into()),
            item_codetype: Some(EPC_GEN2.into()),
            time_started: Some(item.time_started),
            time_last: Some(item.time_last),
            proximity: Some(item.proximity),
            hold_delay_s: Some(item.hold_delay_s),
            extra: Default::default(),
        },
    ))
}

/// Appends `v` in decimal, as JSON writes an integer.
fn write_int(out: &mut Vec<u8>, v: i128) {
    let mut digits = [0u8; 40];
    let mut at = digits.len();
    let mut n = v.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        at -= 1;
        digits[at] = b'-';
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends a 96-bit code as 24 lowercase hex digits.
fn write_code(out: &mut Vec<u8>, code: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 24];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((code >> (4 * (23 - i))) & 0xF) as usize];
    }
    out.extend_from_slice(&digits);
}

fn code_hex(code: u128) -> String {
    format!("{code:024x}")
}

/// Code number `index` of the pool shared by all spots seeded with `seed`.
pub fn shared_code(seed: u64, index: u64) -> String {
    code_hex(shared_code_bits(seed, index))
}

fn shared_code_bits(seed: u64, index: u64) -> u128 {
    let h = mix(seed ^ mix(index.wrapping_add(1)));
    // Shared items come from a handful of companies, like the goods of one shop.
    sgtin96_bits(h >> 61, h)
}

/// An SGTIN-96 EPC as 24 hex digits: header 0x30, filter 1 (point of sale item),
/// partition 5 (24-bit company prefix, 20-bit item reference), then a 38-bit serial.
pub fn sgtin96(company: u64, random: u64) -> String {
    code_hex(sgtin96_bits(company, random))
}

/// The 96 bits of [`sgtin96`].
fn sgtin96_bits(company: u64, random: u64) -> u128 {
    let item_reference = (random >> 38) & ((1 << 20) - 1);
    let serial = random & ((1 << 38) - 1);
    let hi: u32 = (0x30 << 24) | (1 << 21) | (5 << 18) | ((company >> 6) as u32 & 0x3_FFFF);
    let lo: u64 = ((company & 0x3F) << 58) | (item_reference << 38) | serial;
    (u128::from(hi) << 64) | u128::from(lo)
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
    fn next_json_writes_the_bytes_the_encoder_writes_for_next_event() {
        let mut encoder = spot_protocol::Encoder::new(spot_protocol::Encoding::Json);
        let behaviours = [
            Behaviour::default(),
            Behaviour {
                send_hits: true,
                rfid_power_dbm: 33,
                hold_delay_s: 10,
            },
            Behaviour {
                send_hits: true,
                rfid_power_dbm: -5,
                hold_delay_s: -2,
            },
        ];
        // 1970 (no clock), today, and years the fast time format does not cover.
        let starts = [
            0,
            1_764_000_000_123,
            253_402_300_790_000,
            -62_167_219_200_500,
        ];
        let (mut made, mut fallbacks) = (std::collections::HashSet::new(), 0);
        for (n, b) in behaviours.iter().enumerate() {
            for start in starts {
                let params = PopulationParams {
                    shared_share: 0.5,
                    target_items: 10,
                    ..Default::default()
                };
                let mut slow = Population::new(params.clone(), n as u64);
                let mut fast = Population::new(params, n as u64);
                for i in 0..5000i64 {
                    let now = Timestamp(start + i * 7);
                    let mut event = slow.next_event(now, b);
                    let seq = (i % 3 != 0).then_some(i as u64 * 1_000_003);
                    event.seq = seq;
                    let mut want = Vec::new();
                    encoder.encode(&event, &mut want);
                    let mut got = b"prefix".to_vec();
                    let m = fast.next_json(now, b, seq, &mut got);
                    assert_eq!(
                        String::from_utf8_lossy(&got[6..]),
                        String::from_utf8_lossy(&want),
                        "event {i} from {start}"
                    );
                    let kind = match (&event.kind, m) {
                        (EventKind::Presence(Action::Create, _), Made::PresenceCreate)
                        | (EventKind::Presence(Action::Update, _), Made::PresenceUpdate)
                        | (EventKind::Presence(Action::Delete, _), Made::PresenceDelete)
                        | (EventKind::Hit(..), Made::Hit) => m,
                        other => panic!("{other:?}"),
                    };
                    made.insert(format!("{kind:?}"));
                    fallbacks += usize::from(!(0..253_402_300_800_000).contains(&now.0));
                }
            }
        }
        assert_eq!(made.len(), 4, "{made:?}");
        assert!(fallbacks > 1000);
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
        let mut live: std::collections::HashMap<spot_protocol::ItemCode, Timestamp> =
            Default::default();
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
