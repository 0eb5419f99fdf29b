//! Apply cost of the domain alone (no I/O), on the emulator's load: 100 spots, each with its
//! own simulated population ([`spot_emulator::population`]: items arrive, change proximity,
//! leave and are deleted after the hold delay; a fifth come from a pool shared by all spots),
//! 1,000 events per second per spot, interleaved, with a group commit's `take_changes` every
//! 1,000 events and a flush every 2 s of simulated time, as the core does.
//!
//! `cargo bench -p spot-server --bench domain` prints µs per upstream event.

use std::time::Instant;

/// The server binary's allocator, so that allocation costs what it costs in `spot serve`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use spot_emulator::population::{Behaviour, Population, PopulationParams};
use spot_protocol::Timestamp;
use spot_server::domain::{encode_json, Domain, DomainConfig};

const SPOTS: usize = 100;
const SECONDS: i64 = 15;
const RATE: i64 = 1_000;

fn main() {
    let serials: Vec<String> = (0..SPOTS).map(|s| (1000 + s).to_string()).collect();
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
    let started = Instant::now();
    for (n, (serial, now, event, json)) in events.into_iter().enumerate() {
        domain.apply_encoded(serial, &event, json, now);
        if n % 1_000 == 999 {
            let flush = now - last_flush >= 2_000;
            if flush {
                last_flush = now;
            }
            std::hint::black_box(domain.take_changes(flush));
        }
    }
    let elapsed = started.elapsed();
    let applied = SPOTS as f64 * (SECONDS * RATE) as f64;
    println!(
        "domain: {applied} events from {SPOTS} spots in {:.3} s = {:.2} us/event",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / applied
    );
}
