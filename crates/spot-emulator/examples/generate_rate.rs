//! How many events one core generates without I/O: the tag model, numbering, JSON encoding
//! and an in-memory buffer (acked every 1,000 events), as the uplink does per event.
//!
//! `cargo run --release -p spot-emulator --example generate_rate -- [EVENTS] [SEND_HITS]`

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
    let send_hits = std::env::args().nth(2).is_some_and(|s| s == "hits");
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
        let mut event = spot.next_event(Timestamp(t0.0 + (i / 200) as i64));
        buffer
            .append(|seq| {
                event.seq = Some(seq);
                let mut out = Vec::with_capacity(256);
                json.encode(&event, &mut out);
                bytes += out.len() as u64;
                out
            })
            .expect("acked often enough to never fill");
        if i % 1000 == 999 {
            buffer.ack(i + 1).expect("in memory");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{events} events ({}) in {secs:.2} s: {:.0} events/s, {:.0} bytes/event",
        if send_hits {
            "with hits"
        } else {
            "presences only"
        },
        events as f64 / secs,
        bytes as f64 / events as f64
    );
}
