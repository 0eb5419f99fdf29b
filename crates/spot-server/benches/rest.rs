//! Cost of REST lists (risk 3 of issue 11): `GET /api/spots?limit=1` over 20,000 spots and
//! `GET /api/events?…` over 100,000 derived events, as `api::list` answers them: the rows
//! taken under the domain's read lock ([`Query::rows`]), then the page built after it
//! ([`Query::page`]), and serialized. For comparison, `every` does it the way lists did
//! before: every resource of the collection to JSON under the lock, then the query over them.
//!
//! `cargo bench -p spot-server --bench rest` prints, per request, the milliseconds the read
//! lock is held and in all (the median of 5); then what the API key check of every `/api`
//! request ([`Access::authorize`]) costs beside the cheapest of those lists.

use std::ops::Bound;
use std::time::{Duration, Instant};

/// The server binary's allocator, so that allocation costs what it costs in `spot serve`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use serde_json::{json, Value};
use spot_protocol::Timestamp;
use spot_server::access::{Access, AccessConfig, Role};
use spot_server::api::query::Query;
use spot_server::domain::{Domain, DomainConfig, Row};
use spot_server::ids::Id;

const T0: i64 = 1_764_000_000_000;

fn main() {
    let mut domain = Domain::new(DomainConfig::default());
    for i in 0..20_000 {
        domain.begin_stream(&(1000 + i).to_string(), Some("1.0"), T0 + i);
    }
    let docs = (0..100_000i64)
        .map(|i| {
            let data = json!({"id": Id(((T0 + i) as u64) << 16), "code_hex": format!("{i:024x}"),
                              "technology": "EPC Gen2", "is_present": true, "move_count": i % 9,
                              "time_created": Timestamp(T0).to_string()});
            json!({"id": Id(((T0 + i) as u64) << 17), "topic": format!("items/{i:016x}/appeared"),
                   "time_event": null, "time_created": Timestamp(T0 + i).to_string(), "data": data})
            .to_string()
        })
        .collect();
    domain.load_events(docs).expect("events");
    let mut cheapest = None;
    for (collection, q) in [
        ("spots", "limit=1"),
        ("spots", "limit=100"),
        ("events", "limit=10"),
        ("events", "limit=10000"),
        ("events", "topic=items/00000000000003e8/appeared&limit=10"),
        // The vendor's forms (issue 16): a wildcard, a part of the topic.
        ("spots", "serial_number=*999&limit=10"),
        ("events", "topic.resource=00000000000003e8&limit=10"),
    ] {
        let query = Query::parse(collection, &params(q)).expect("query");
        let (paged_lock, paged_all) = median(|| {
            let start = Instant::now();
            let rows = query.rows(&domain).expect("collection");
            let total = query.count(&domain);
            let locked = start.elapsed();
            let page = query.page(rows, "/", total, &|c, id| domain.get(c, id));
            std::hint::black_box(page.to_string());
            (locked, start.elapsed())
        });
        let (every_lock, every_all) = median(|| {
            let start = Instant::now();
            let all = (Bound::Unbounded, Bound::Unbounded);
            let rows = domain.rows(collection, all, false, usize::MAX, &|_| true);
            let docs: Vec<Value> = rows
                .expect("collection")
                .iter()
                .filter_map(Row::value)
                .collect();
            let locked = start.elapsed();
            let page = query.page(docs, "/", None, &|c, id| domain.get(c, id));
            std::hint::black_box(page.to_string());
            (locked, start.elapsed())
        });
        println!(
            "{collection}?{q}: paged {:.3} ms under the lock, {:.3} ms in all; \
             every {:.3} ms under the lock, {:.3} ms in all",
            ms(paged_lock),
            ms(paged_all),
            ms(every_lock),
            ms(every_all)
        );
        if q == "limit=1" {
            cheapest.get_or_insert(paged_all);
        }
    }
    let cheapest = cheapest.expect("spots?limit=1 measured");
    let dir = tempfile::tempdir().expect("tempdir");
    let (access, _) =
        Access::open(dir.path(), AccessConfig::default(), Vec::new(), T0).expect("access.db");
    let (_, key) = access
        .change(|db| db.create_key(Role::Read, "bench", "bench", T0))
        .expect("a key");
    let peer = std::net::IpAddr::from([127, 0, 0, 1]);
    let (_, check) = median(|| {
        const N: u32 = 100_000;
        let start = Instant::now();
        for _ in 0..N {
            let caller = access.authorize(Some(&key), peer, Role::Read, T0);
            std::hint::black_box(caller.expect("valid"));
        }
        let per = start.elapsed() / N;
        (per, per)
    });
    println!(
        "API key check: {:.3} us per request, {:.1} % of spots?limit=1 ({:.3} ms)",
        check.as_secs_f64() * 1e6,
        check.as_secs_f64() / cheapest.as_secs_f64() * 100.0,
        ms(cheapest)
    );
}

fn params(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// The median of 5 runs of `f` (the lock time and the whole time of each).
fn median(f: impl Fn() -> (Duration, Duration)) -> (Duration, Duration) {
    let mut runs: Vec<(Duration, Duration)> = (0..5).map(|_| f()).collect();
    runs.sort_by_key(|(_, all)| *all);
    runs[2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
