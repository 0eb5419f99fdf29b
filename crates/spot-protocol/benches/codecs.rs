//! Codec throughput on the realistic mix (tests/fixtures/realistic-mix.events), all in one run:
//! JSON decode, PB decode, JSON encode, PB encode, and the baseline
//! `serde_json::from_slice::<serde_json::Value>` over the same JSON frames.
//!
//! Run: `cargo bench -p spot-protocol --bench codecs`. Criterion reports events/s (every
//! benchmark processes the whole mix); the stream sizes printed first turn that into MB/s.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
mod common;

use common::{decode_all, decode_each, encode_all, frames, MIX};
use spot_protocol::Encoding;

fn codecs(c: &mut Criterion) {
    let events = decode_all(Encoding::Json, MIX);
    let compact = encode_all(Encoding::Json, &events);
    let pb = encode_all(Encoding::Protobuf, &events);
    assert_eq!(decode_all(Encoding::Protobuf, &pb), events);
    assert_eq!(decode_all(Encoding::Json, &compact), events);
    let frames = frames(&compact);
    assert_eq!(frames.len(), events.len());
    eprintln!(
        "realistic mix: {} events; vendor-style JSON {} B, compact JSON {} B, PB {} B \
         (PB = {:.1} % of compact JSON)",
        events.len(),
        MIX.len(),
        compact.len(),
        pb.len(),
        100.0 * pb.len() as f64 / compact.len() as f64
    );

    let mut group = c.benchmark_group("realistic-mix");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("baseline serde_json Value", |b| {
        b.iter(|| {
            for frame in &frames {
                black_box(serde_json::from_slice::<serde_json::Value>(frame).unwrap());
            }
        })
    });
    group.bench_function("json decode", |b| {
        b.iter(|| decode_each(Encoding::Json, black_box(&compact)))
    });
    group.bench_function("pb decode", |b| {
        b.iter(|| decode_each(Encoding::Protobuf, black_box(&pb)))
    });
    group.bench_function("json encode", |b| {
        b.iter(|| encode_all(Encoding::Json, black_box(&events)))
    });
    group.bench_function("pb encode", |b| {
        b.iter(|| encode_all(Encoding::Protobuf, black_box(&events)))
    });
    group.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
