//! Many spots in one runtime: set each up (buffer directory, counters, epoch), run them
//! concurrently, show live progress, and sum up at the end ([`Summary`]).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use spot_protocol::Timestamp;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::buffer::{BufferError, BufferLimits, SpotBuffer};
use crate::population::PopulationParams;
use crate::replay::{Recording, Replay, ReplayTiming};
use crate::rng::mix;
use crate::spot::{Spot, SpotCounters};
use crate::stats::SpotStats;
use crate::uplink::{ErrorKind, SpotReport, SpotTask, UplinkConfig};

/// A run of many spots.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// How each spot talks to the server.
    pub uplink: UplinkConfig,
    /// Number of spots.
    pub spots: u64,
    /// Serial of the first spot; the others follow.
    pub first_serial: u64,
    /// Run time (generation stops then; delivery drains for `uplink.drain_ms`); `None` until stopped.
    pub duration: Option<Duration>,
    /// Seed of the tag populations (same seed, same items and event mix).
    pub seed: u64,
    /// The tag population's shape.
    pub population: PopulationParams,
    /// Directory of the on-disk buffers (`<dir>/spot-<serial>/`); `None` keeps them in memory.
    pub buffer_dir: Option<PathBuf>,
    /// Bounds of each spot's buffer.
    pub buffer_limits: BufferLimits,
    /// A recording every spot replays instead of simulating a population.
    pub replay: Option<(Arc<Recording>, ReplayTiming)>,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A spot's buffer could not be opened.
    #[error("spot {serial}: {source}")]
    Buffer {
        /// The spot.
        serial: u64,
        /// What failed.
        source: BufferError,
    },
}

/// A value from the operating system's randomness (through std's hash keys) and the clock:
/// for `seq_epoch`, which must differ between runs that did not keep their buffer, whatever
/// the seed.
fn fresh_epoch(serial: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(serial);
    let ms = Timestamp::from_system_time(SystemTime::now()).as_millis();
    mix(h.finish() ^ ms as u64).max(1)
}

/// Sets up every spot (opening buffers, counting a boot) without running them.
pub fn prepare(
    cfg: &FleetConfig,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<SpotTask>, FleetError> {
    let uplink = Arc::new(cfg.uplink.clone());
    let mut tasks = Vec::with_capacity(cfg.spots as usize);
    for serial in cfg.first_serial..cfg.first_serial + cfg.spots {
        let (buffer, counters) = match &cfg.buffer_dir {
            Some(dir) => {
                let err = |source| FleetError::Buffer { serial, source };
                let (buffer, _recovery) = SpotBuffer::open(
                    &dir.join(format!("spot-{serial}")),
                    cfg.buffer_limits,
                    || fresh_epoch(serial),
                )
                .map_err(err)?;
                let mut counters = buffer
                    .load_state()
                    .map_err(err)?
                    .unwrap_or_else(SpotCounters::factory);
                counters.boot();
                buffer.save_state(&counters).map_err(err)?;
                (buffer, counters)
            }
            None => {
                let mut counters = SpotCounters::factory();
                counters.boot();
                (
                    SpotBuffer::in_memory(fresh_epoch(serial), cfg.buffer_limits),
                    counters,
                )
            }
        };
        let seed = mix(cfg.seed ^ mix(serial));
        let host = cfg.uplink.server.host.split(':').next().unwrap_or_default();
        let spot = Spot::new(
            serial,
            buffer.epoch(),
            counters,
            cfg.population.clone(),
            seed,
            host,
            match cfg.uplink.clock_offset_ms {
                Some(offset) => {
                    Timestamp(Timestamp::from_system_time(SystemTime::now()).as_millis() + offset)
                }
                None => Timestamp(0), // no clock: 1970, like the spot's own times
            },
        );
        let mut task = SpotTask::new(
            spot,
            buffer,
            uplink.clone(),
            mix(seed),
            cfg.duration,
            stop.clone(),
        );
        if let Some((recording, timing)) = &cfg.replay {
            task.replay(Replay::new(recording.clone(), *timing));
        }
        tasks.push(task);
    }
    Ok(tasks)
}

/// Binds a telnet service per spot: spot `i` (from 0) on `addr`'s port + `i` (port 0: any
/// free port each). Returns each spot's serial and address.
pub async fn bind_telnet(
    tasks: &mut [SpotTask],
    addr: std::net::SocketAddr,
) -> std::io::Result<Vec<(u64, std::net::SocketAddr)>> {
    let mut bound = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter_mut().enumerate() {
        let mut a = addr;
        if a.port() != 0 {
            let port = u16::try_from(usize::from(a.port()) + i).map_err(|_| {
                std::io::Error::other(format!("telnet port {} + {i} is over 65535", a.port()))
            })?;
            a.set_port(port);
        }
        let listener = tokio::net::TcpListener::bind(a).await?;
        bound.push((task.serial(), listener.local_addr()?));
        task.serve_telnet(listener);
    }
    Ok(bound)
}

/// Runs every task to its end, printing a progress line to stderr when it is a terminal.
/// Dropping the returned future (or aborting the task running it) aborts every spot.
pub async fn run(tasks: Vec<SpotTask>, progress: bool) -> Summary {
    let started = Instant::now();
    let stats: Vec<Arc<SpotStats>> = tasks.iter().map(|t| t.stats()).collect();
    // Every task of a fleet shares its config's tally.
    let errors = tasks.first().map(|t| t.errors());
    let mut set = tokio::task::JoinSet::new();
    for t in tasks {
        set.spawn(t.run());
    }
    let show = progress && std::io::stderr().is_terminal();
    let ticker = show.then(|| AbortOnDrop(tokio::spawn(progress_line(stats, started))));
    let mut reports = Vec::with_capacity(set.len());
    let mut panics = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(r) => reports.push(r),
            Err(e) => panics.push(e.to_string()),
        }
    }
    reports.sort_by_key(|r| r.serial);
    if ticker.is_some() {
        eprintln!();
    }
    Summary {
        reports,
        panics,
        errors: errors.map(|e| e.counts()).unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn progress_line(stats: Vec<Arc<SpotStats>>, started: Instant) {
    let mut last = (0u64, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let sum = |f: fn(&SpotStats) -> u64| stats.iter().map(|s| f(s)).sum::<u64>();
        let generated = sum(|s| s.events_generated.load(Relaxed));
        let now = Instant::now();
        let rate = (generated - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
        last = (generated, now);
        eprint!(
            "\r{:>6.1}s  {:>9.0} ev/s  generated {}  acked {}  buffered {}  reconnects {}   ",
            started.elapsed().as_secs_f64(),
            rate,
            generated,
            sum(|s| s.events_acked.load(Relaxed)),
            sum(|s| s.events_buffered.load(Relaxed)),
            sum(|s| s.reconnects.load(Relaxed)),
        );
    }
}

/// The end of a run.
#[derive(Debug)]
pub struct Summary {
    /// One report per spot.
    pub reports: Vec<SpotReport>,
    /// Spot tasks that panicked (a bug; reported, not hidden).
    pub panics: Vec<String>,
    /// Connection failures of every spot, by kind (kinds never seen left out).
    pub errors: Vec<(ErrorKind, u64)>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Median, 99th percentile and maximum of a histogram of microseconds, in milliseconds.
fn latency_json(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "p50": ms(h.value_at_quantile(0.5)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
    })
}

/// A spot's (or the total's) counters; `ack` and `response` are its latency histograms
/// (from generation, and from the end of the POST body, to the `2xx`).
fn counters_json(s: &SpotStats, ack: &Histogram<u64>, response: &Histogram<u64>) -> Value {
    json!({
        "events_generated": s.events_generated.load(Relaxed),
        "events_acked": s.events_acked.load(Relaxed),
        "events_buffered": s.events_buffered.load(Relaxed),
        "events_resent": s.events_resent.load(Relaxed),
        "events_not_generated_buffer_full": s.events_not_generated_buffer_full.load(Relaxed),
        "posts": s.posts.load(Relaxed),
        "reconnects": s.reconnects.load(Relaxed),
        "responses_not_2xx": s.responses_not_2xx.load(Relaxed),
        "commands_applied": s.commands_applied.load(Relaxed),
        "commands_ignored": s.commands_ignored.load(Relaxed),
        "firmware_updates": s.firmware_updates.load(Relaxed),
        "buffer_errors": s.buffer_errors.load(Relaxed),
        "bytes_sent": s.bytes_sent.load(Relaxed),
        "telnet": {
            "clients": s.telnet_clients.load(Relaxed),
            "refused": s.telnet_refused.load(Relaxed),
            "events_skipped": s.telnet_events_skipped.load(Relaxed),
        },
        "faults": {
            "cuts_mid_chunk": s.fault_cuts_mid_chunk.load(Relaxed),
            "stalls": s.fault_stalls.load(Relaxed),
            "bursts": s.fault_bursts.load(Relaxed),
            "burst_events": s.fault_burst_events.load(Relaxed),
            "malformed": s.fault_malformed.load(Relaxed),
        },
        // From generation: includes the time an event waited in the buffer or in its POST.
        "ack_latency_ms": latency_json(ack),
        // From the end of the POST body: the server's own time.
        "ack_latency_from_body_end_ms": latency_json(response),
    })
}

impl Summary {
    /// Sum of every spot's counters.
    pub fn total(&self) -> SpotStats {
        let t = SpotStats::default();
        for r in &self.reports {
            let s = &r.stats;
            macro_rules! add {
                ($($f:ident),*) => {$( t.$f.fetch_add(s.$f.load(Relaxed), Relaxed); )*};
            }
            add!(
                events_generated,
                events_acked,
                events_buffered,
                events_resent,
                events_not_generated_buffer_full,
                posts,
                reconnects,
                responses_not_2xx,
                commands_applied,
                commands_ignored,
                firmware_updates,
                buffer_errors,
                bytes_sent,
                fault_cuts_mid_chunk,
                fault_stalls,
                fault_bursts,
                fault_burst_events,
                fault_malformed,
                telnet_clients,
                telnet_refused,
                telnet_events_skipped
            );
        }
        t
    }

    /// Events generated and not acknowledged by the end of the run: still buffered (with
    /// `--buffer`, those of an earlier run included).
    pub fn unacknowledged(&self) -> u64 {
        self.reports
            .iter()
            .map(|r| r.stats.events_buffered.load(Relaxed))
            .sum()
    }

    /// The JSON summary: totals (with the failures by kind), then one entry per spot.
    pub fn to_json(&self) -> Value {
        let mut all = Histogram::<u64>::new(3).expect("valid precision");
        let mut all_responses = Histogram::<u64>::new(3).expect("valid precision");
        for r in &self.reports {
            let _ = all.add(&r.ack_latency_us);
            let _ = all_responses.add(&r.response_latency_us);
        }
        let total = self.total();
        let elapsed = self.elapsed.as_secs_f64();
        let mut total_json = counters_json(&total, &all, &all_responses);
        total_json["errors"] = self
            .errors
            .iter()
            .map(|(kind, n)| (kind.name().to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        // Delivered throughput is what was acknowledged: under overload far fewer events
        // are acked than generated (the rest stay buffered when the drain gives up).
        let per_second = |n: &AtomicU64| json!(n.load(Relaxed) as f64 / elapsed.max(1e-9));
        total_json["acked_per_second"] = per_second(&total.events_acked);
        total_json["generated_per_second"] = per_second(&total.events_generated);
        json!({
            "spots": self.reports.len(),
            "elapsed_s": elapsed,
            "total": total_json,
            "panics": self.panics,
            "per_spot": self.reports.iter().map(|r| {
                let mut v = counters_json(&r.stats, &r.ack_latency_us, &r.response_latency_us);
                v["serial"] = json!(r.serial);
                v["last_error"] = json!(r.last_error);
                v
            }).collect::<Vec<_>>(),
        })
    }
}
