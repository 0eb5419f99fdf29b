//! Apply cost of the domain alone (no I/O), on the emulator's load: 100 spots, each with its
//! own simulated population ([`spot_emulator::population`]: items arrive, change proximity,
//! leave and are deleted after the hold delay; a fifth come from a pool shared by all spots),
//! 1,000 events per second per spot, interleaved, with a group commit's `take_changes` every
//! 1,000 events and a flush every 2 s of simulated time, as the core does.
//!
//! `cargo bench -p spot-server --bench domain` prints µs per upstream event (`events`), then:
//!
//! - the *flush stall* (`stall`): the time [`Domain::take_changes`] takes on the core's thread to
//!   snapshot about 50,000 dirty rows (the core flushes at that many), the median of 5;
//! - *bytes per item* (`memory`): the growth of the resident set per item created (each item arrives
//!   at a spot and leaves again, so what stays is the item), measured after the in-memory
//!   events log is full so that only what grows with the items counts.

use std::time::Instant;

/// The server binary's allocator, so that allocation costs what it costs in `spot serve`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use spot_emulator::population::{Behaviour, Population, PopulationParams};
use spot_protocol::{Action, Event, EventKind, Presence, Proximity, Timestamp};
use spot_server::domain::{encode_json, Domain, DomainConfig};

const SPOTS: usize = 100;
const SECONDS: i64 = 15;
const RATE: i64 = 1_000;

fn main() {
    // As `spot serve` does.
    spot_server::huge_pages::turn_off();
    // `cargo bench -p spot-server --bench domain -- stall` runs only what names "stall".
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if run("events") {
        events();
    }
    if run("stall") {
        flush_stall();
    }
    if run("memory") {
        bytes_per_item();
    }
}

/// µs per event of the emulator's load.
fn events() {
    let serials: Vec<std::sync::Arc<str>> =
        (0..SPOTS).map(|s| (1000 + s).to_string().into()).collect();
    let mut populations: Vec<Population> = (0..SPOTS)
        .map(|s| Population::new(PopulationParams::default(), s as u64 + 1))
        .collect();
    let behaviour = Behaviour::default();
    let now0 = 1_764_000_000_000i64;
    // Generate first, so that only the domain is timed.
    let mut events = Vec::with_capacity(SPOTS * (SECONDS * RATE) as usize);
    for tick in 0..SECONDS * RATE {
        let now = now0 + tick * 1_000 / RATE;
        for (serial, population) in serials.iter().zip(&mut populations) {
            let event = population.next_event(Timestamp(now), &behaviour);
            let json = encode_json(&event);
            events.push((serial, now, event, json));
        }
    }
    let mut domain = Domain::new(DomainConfig::default());
    let mut last_flush = now0;
    // The row writer holds a flush's rows until it has written them: here until the next
    // flush, so that rows changed meanwhile cost what they cost (a copy on write).
    let mut held = None;
    let (started, cpu) = (Instant::now(), cpu_ns());
    for (n, (serial, now, event, json)) in events.into_iter().enumerate() {
        domain.apply_encoded(serial, &event, json, now);
        if n % 1_000 == 999 {
            let flush = now - last_flush >= 2_000;
            let changes = std::hint::black_box(domain.take_changes(flush));
            if flush {
                last_flush = now;
                held = Some(changes);
            }
        }
    }
    drop(held);
    let elapsed = started.elapsed();
    let cpu = (cpu_ns() - cpu) as f64 / 1e9;
    let applied = SPOTS as f64 * (SECONDS * RATE) as f64;
    println!(
        "domain: {applied} events from {SPOTS} spots in {:.3} s = {:.2} us/event \
         (on CPU {:.2} us/event)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / applied,
        cpu * 1e6 / applied,
    );
}

/// A `presence <action>` of item `code` (the emulator's form).
fn presence(action: Action, code: u64) -> Event {
    Event::new(EventKind::Presence(
        action,
        Presence {
            item_code: Some(format!("{code:024x}").into()),
            item_codetype: Some("EPC Gen2".into()),
            proximity: Some(Proximity::Near),
            time_last: Some(Timestamp(1_764_000_000_000)),
            ..Presence::default()
        },
    ))
}

/// Applies `n` fresh items at `spots` spots: each arrives (`presence create`), and with
/// `leave` leaves again (`presence delete`); commits every 1,000 events, with `flush` a
/// flush when 50,000 rows are dirty (as the core does).
fn fresh_items(domain: &mut Domain, first: u64, n: u64, leave: bool, flush: bool) {
    let (spots, now) = (100, 1_764_000_000_000);
    for code in first..first + n {
        let serial = (1000 + code % spots).to_string();
        domain.apply_event(&serial, &presence(Action::Create, code), now);
        if leave {
            domain.apply_event(&serial, &presence(Action::Delete, code), now);
        }
        if code % 1_000 == 999 {
            let flush = flush && domain.dirty_rows() >= 50_000;
            std::hint::black_box(domain.take_changes(flush));
        }
    }
}

/// The time of the snapshot of a flush of ~50,000 dirty rows (25,000 new items and their
/// presences at 100 spots), the median of 5.
fn flush_stall() {
    let mut domain = Domain::new(DomainConfig::default());
    let mut stalls = Vec::new();
    for round in 0..5u64 {
        fresh_items(&mut domain, round * 25_000, 25_000, false, false);
        let rows = domain.dirty_rows();
        let (started, cpu) = (Instant::now(), cpu_ns());
        let changes = domain.take_changes(true);
        let cpu = (cpu_ns() - cpu) as f64 / 1e6;
        stalls.push((started.elapsed().as_secs_f64() * 1e3, cpu, rows));
        drop(changes);
    }
    stalls.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ms, cpu, rows) = stalls[stalls.len() / 2];
    println!(
        "flush stall: {rows} dirty rows snapshot in {ms:.2} ms (on CPU {cpu:.2} ms; median of 5)"
    );
}

/// Time this thread has been on a CPU, in ns (Linux; 0 elsewhere): what it costs, without
/// the time other processes of a busy machine took.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resident set size of this process in bytes (Linux; 0 elsewhere).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Resident set growth per item created, once the events log is full.
fn bytes_per_item() {
    const N: u64 = 300_000;
    let mut domain = Domain::new(DomainConfig::default());
    // Fills the in-memory events log (bounded) and the allocator's caches.
    fresh_items(&mut domain, 0, 100_000, true, true);
    std::hint::black_box(domain.take_changes(true));
    let before = rss();
    fresh_items(&mut domain, 100_000, N, true, true);
    std::hint::black_box(domain.take_changes(true));
    let after = rss();
    println!(
        "memory: {} bytes per item ({N} items, resident {:.1} -> {:.1} MB)",
        (after.saturating_sub(before)) / N,
        before as f64 / 1e6,
        after as f64 / 1e6
    );
}
