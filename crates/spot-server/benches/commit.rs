//! Group-commit cost of the store, without the rest of the server: batches shaped like the
//! emulator's load (per upstream event one upstream row, ~1.6 derived events, one dirty
//! presence out of 5,000 and every third event a dirty item, handed over as the domain does:
//! snapshots, rendered by the row writer), committed with
//! `synchronous=NORMAL` so the disk's fsync latency does not hide the CPU cost.
//!
//! `cargo bench -p spot-server --bench commit` prints µs per upstream event, and the CPU time
//! of the committing thread and of the whole process (it and the row writer) per event.

use std::sync::Arc;
use std::time::Instant;

use spot_server::domain::{
    Changes, Item, JournalEntry, PresenceResource, RowDoc, Table, UpstreamRow,
};
use spot_server::ids::Id;
use spot_server::store::{Durability, SqliteStore, Store};

const EVENTS_PER_BATCH: usize = 4096;
const BATCHES: usize = 40;
const PRESENCES: u64 = 5_000;

fn id(n: u64) -> Id {
    Id((1_764_000_000_000u64 << 16) + n)
}

fn batch(b: usize) -> Changes {
    let mut changes = Changes {
        flush: true, // every batch's rows go to the row writer too
        ..Changes::default()
    };
    let presence_doc = format!(
        "{{\"id\":\"{}\",\"item\":\"{}\",\"location\":\"{}\",\"proximity\":\"near\",\
         \"reporters\":{{\"{}\":\"near\"}},\"time_event\":\"2026-11-24T22:53:11.466Z\",\
         \"time_created\":\"2026-11-24T22:53:14.572Z\",\"time_updated\":\"2026-11-24T22:53:14.572Z\"}}",
        id(1),
        id(2),
        id(3),
        id(4)
    );
    let log_doc = format!(
        "{{\"id\":\"{}\",\"topic\":\"presences/{}/changed-proximity/{}/{}/near/far/moved-closer\",\
         \"time_event\":\"2026-11-24T22:53:11.466Z\",\"time_created\":\"2026-11-24T22:53:14.572Z\",\
         \"data\":{presence_doc}}}",
        id(5),
        id(1),
        id(2),
        id(3)
    );
    let presence: PresenceResource = serde_json::from_str(&presence_doc).expect("a presence");
    let item: Item = serde_json::from_str(&format!(
        "{{\"id\":\"{}\",\"code_hex\":\"30342e00d5d77ca2bc9a8c94\",\"technology\":\"EPC Gen2\",\
         \"label\":null,\"custom\":null,\"is_present\":true,\"location\":\"{}\",\"move_count\":2,\
         \"time_moved\":\"2026-11-24T22:53:11.466Z\",\"time_created\":\"2026-11-24T22:50:14.572Z\",\
         \"time_updated\":\"2026-11-24T22:53:14.572Z\"}}",
        id(2),
        id(3)
    ))
    .expect("an item");
    let mut rng = (b as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for e in 0..EVENTS_PER_BATCH {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        changes.journal.push(JournalEntry::Event {
            row: UpstreamRow {
                serial: format!("{}", rng % 100).into(),
                spot_id: spot_server::ids::Id(rng % 100),
                seq: Some((b * EVENTS_PER_BATCH + e) as u64),
                time_received: 1_764_000_000_000,
                event_json: format!(
                    "[\"presence\",\"update\",{{\"item_code\":\"30342e00d5d77ca2bc9a8c94\",\
                     \"item_codetype\":\"EPC Gen2\",\"proximity\":\"near\",\
                     \"time_last\":\"2026-11-24T22:53:11.466Z\",\"seq\":{e}}}]"
                ),
            },
            duplicate: false,
        });
        let n = rng % PRESENCES;
        changes.upserts.push((
            Table::Presences,
            id(n),
            RowDoc::Presence(Arc::new(PresenceResource {
                id: id(n),
                ..presence.clone()
            })),
        ));
        if e % 3 == 0 {
            let n = PRESENCES + rng % PRESENCES;
            changes.upserts.push((
                Table::Items,
                id(n),
                RowDoc::Item(Arc::new(Item {
                    id: id(n),
                    ..item.clone()
                })),
            ));
        }
        for _ in 0..(1 + e % 5 / 3) {
            changes
                .log
                .push((1_764_000_000_000, log_doc.as_str().into()));
        }
    }
    changes
}

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut store = SqliteStore::open(dir.path(), Durability::Normal).expect("open store");
    let mut batches: Vec<Changes> = (0..BATCHES).map(batch).collect();
    store.commit(&mut batches[0]).expect("warm-up commit");
    let started = Instant::now();
    let cpu_started = thread_cpu_ns();
    let process_started = process_cpu_ticks();
    for changes in &mut batches[1..] {
        store.commit(changes).expect("commit");
    }
    let committed = started.elapsed();
    let cpu = thread_cpu_ns()
        .zip(cpu_started)
        .map(|(end, start)| end - start);
    store.wait_for_rows();
    let process = process_cpu_ticks()
        .zip(process_started)
        .map(|(end, start)| end - start);
    let events = (BATCHES - 1) * EVENTS_PER_BATCH;
    let elapsed = started.elapsed();
    println!(
        "commit: {events} upstream events in {:.3} s = {:.2} us/event \
         (the committing thread: {:.2} us/event, of it on CPU {} us/event; then the rows); \
         process CPU {} us/event",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / events as f64,
        committed.as_secs_f64() * 1e6 / events as f64,
        cpu.map_or("?".to_string(), |ns| format!(
            "{:.2}",
            ns as f64 / 1e3 / events as f64
        )),
        process.map_or("?".to_string(), |ticks| format!(
            "{:.2}",
            ticks as f64 * 1e4 / events as f64
        )),
    );
}

/// CPU time of the process (user and system) in clock ticks (Linux: 1/100 s).
fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU time of the calling thread in ns (Linux: `/proc/thread-self/schedstat`), so that the
/// result does not depend on what else the machine runs.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
