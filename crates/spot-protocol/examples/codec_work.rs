//! One codec's work on the realistic mix, repeated, for an instruction counter: the
//! criterion bench (`benches/codecs.rs`) measures time, which a busy machine distorts;
//! `valgrind --tool=callgrind` counts the same instructions whatever else runs.
//!
//! ```sh
//! cargo build --release -p spot-protocol --example codec_work
//! for mode in setup value json pb; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!         target/release/examples/codec_work $mode 20 2>&1 | grep refs
//! done
//! ```
//! A mode's instructions minus `setup`'s, divided by 20 × 5,002 events, is its cost per event.
//! Each mode hands out and drops one value (event) at a time, as a consumer does; add
//! `--toggle-collect=codec_work::measured` for a profile of the mode alone.

#[path = "../benches/common/mod.rs"]
mod common;

use common::{decode_all, decode_each, encode_all, frames, MIX};
use spot_protocol::Encoding;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "setup".into());
    let rounds: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20);
    let events = decode_all(Encoding::Json, MIX);
    let compact = encode_all(Encoding::Json, &events);
    let pb = encode_all(Encoding::Protobuf, &events);
    let frames = frames(&compact);
    let n = measured(&mode, rounds, &frames, &compact, &pb);
    println!("{mode}: {} events, {n} processed", events.len());
}

/// The counted work, apart from the setup (see the module doc for its profile).
#[inline(never)]
fn measured(mode: &str, rounds: usize, frames: &[&[u8]], compact: &[u8], pb: &[u8]) -> usize {
    let mut n = 0usize;
    for _ in 0..rounds {
        n += match mode {
            "setup" => 0,
            "value" => frames
                .iter()
                .map(|f| {
                    std::hint::black_box(serde_json::from_slice::<serde_json::Value>(f).unwrap());
                })
                .count(),
            "json" => decode_each(Encoding::Json, compact),
            "pb" => decode_each(Encoding::Protobuf, pb),
            other => panic!("mode {other}: one of setup, value, json, pb"),
        };
    }
    n
}
