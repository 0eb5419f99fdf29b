//! How many events one core generates without I/O: the tag model, numbering, JSON encoding
//! and an in-memory buffer (acked every 1,000 events), as the uplink does per event
//! (`Spot::next_json`); with `general`, through an `Event` and the protocol's JSON encoder.
//!
//! `cargo run --release -p spot-emulator --example generate_rate -- [EVENTS] [hits] [general]`

use std::time::Instant;

use spot_emulator::buffer::{BufferLimits, SpotBuffer};
use spot_emulator::population::PopulationParams;
use spot_emulator::spot::{Spot, SpotCounters};
use spot_protocol::{Action, Config, Encoder, Encoding, Event, EventKind, Timestamp};

fn main() {
    let events: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let send_hits = std::env::args().skip(2).any(|s| s == "hits");
    let general = std::env::args().skip(2).any(|s| s == "general");
    let t0 = Timestamp(1_764_000_000_000);
    let mut spot = Spot::new(
        1,
        1,
        SpotCounters::factory(),
        PopulationParams::default(),
        1,
        "h",
        t0,
    );
    if send_hits {
        let update = Config {
            send_hits: Some(true),
            ..Config::default()
        };
        spot.apply_command(&Event::new(EventKind::Config(Action::Update, update)));
    }
    let mut buffer = SpotBuffer::in_memory(1, BufferLimits::default());
    let mut json = Encoder::new(Encoding::Json);
    let mut bytes = 0u64;
    let start = Instant::now();
    for i in 0..events {
        let now = Timestamp(t0.0 + (i / 200) as i64);
        if general {
            let mut event = spot.next_event(now);
            buffer.append_with(|seq, out| {
                event.seq = Some(seq);
                let at = out.len();
                json.encode(&event, out);
                bytes += (out.len() - at) as u64;
            })
        } else {
            buffer.append_with(|seq, out| {
                let at = out.len();
                spot.next_json(now, seq, out);
                bytes += (out.len() - at) as u64;
            })
        }
        .expect("acked often enough to never fill");
        if i % 1000 == 999 {
            buffer.ack(i + 1).expect("in memory");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{events} events ({}, {}) in {secs:.2} s: {:.0} events/s, {:.0} bytes/event",
        if general {
            "general encoder"
        } else {
            "next_json"
        },
        if send_hits {
            "with hits"
        } else {
            "presences only"
        },
        events as f64 / secs,
        bytes as f64 / events as f64
    );
}
