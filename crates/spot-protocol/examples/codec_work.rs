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

#[path = "../benches/common/mod.rs"]
mod common;

use common::{decode_all, encode_all, frames, MIX};
use spot_protocol::Encoding;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "setup".into());
    let rounds: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20);
    let events = decode_all(Encoding::Json, MIX);
    let compact = encode_all(Encoding::Json, &events);
    let pb = encode_all(Encoding::Protobuf, &events);
    let frames = frames(&compact);
    let mut n = 0usize;
    for _ in 0..rounds {
        n += match mode.as_str() {
            "setup" => 0,
            "value" => frames
                .iter()
                .map(|f| {
                    std::hint::black_box(serde_json::from_slice::<serde_json::Value>(f).unwrap());
                })
                .count(),
            "json" => std::hint::black_box(decode_all(Encoding::Json, &compact)).len(),
            "pb" => std::hint::black_box(decode_all(Encoding::Protobuf, &pb)).len(),
            other => panic!("mode {other}: one of setup, value, json, pb"),
        };
    }
    println!("{mode}: {} events, {n} processed", events.len());
}
