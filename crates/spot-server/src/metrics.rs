//! Named counters and the acknowledgement-latency histogram, and the exposition of
//! everything `/metrics` serves in the Prometheus text format (0.0.4): each family with its
//! `# HELP` and `# TYPE` ([`family`]), the gauges read at scrape time ([`Gauges`]), the
//! build info and the process metrics (CPU, memory, open fds, start time; Linux `/proc`).
//!
//! The hot path only adds to atomics; everything else is read when scraped. The exposition
//! is written here rather than by a metrics crate: the counters are plain atomics bumped from
//! the hot path, and the few lines of text around them cost less than adapting them to a
//! registry's types.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the `spot_ack_seconds` buckets.
const ACK_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];

/// The server's counters. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Upstream events decoded (including replays).
    pub events_received: AtomicU64,
    /// Malformed messages skipped.
    pub events_malformed: AtomicU64,
    /// Replayed events acknowledged but not stored again.
    pub events_duplicate: AtomicU64,
    /// Ingest POSTs answered 200.
    pub posts_ok: AtomicU64,
    /// Requests refused by a limit (413, 408, 431, 503 …).
    pub requests_refused: AtomicU64,
    /// Group commits written.
    pub commits: AtomicU64,
    /// Commit attempts that failed (each retried; e.g. a full disk).
    pub commit_failures: AtomicU64,
    /// 1 while commits fail (the last attempt failed), else 0.
    pub store_failing: AtomicU64,
    /// Connections over `max-connections` (HTTP and raw TCP), answered or not.
    pub connections_refused: AtomicU64,
    /// Of those, HTTP connections closed without the `503` because `max-refusals`
    /// refusals were under way.
    pub connections_refused_unanswered: AtomicU64,
    /// HTTP connections closed before their first request head to make room for a new
    /// connection.
    pub connections_evicted: AtomicU64,
    /// HTTP connections closed for sending no request head within
    /// `request_head_timeout`.
    pub connections_head_timeouts: AtomicU64,
    /// HTTP connections closed because their client took nothing written for the write
    /// timeout (it stopped reading).
    pub connections_write_stalled: AtomicU64,
    ack_buckets: [AtomicU64; ACK_BUCKETS.len()],
    ack_count: AtomicU64,
    ack_sum_micros: AtomicU64,
}

/// Values read when `/metrics` is scraped (not counted on the hot path).
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Spots online now; `None` while the live state is unavailable (the series is left out).
    pub spots_online: Option<usize>,
    /// Spots, items, presences and derived events in memory held by the live state
    /// (`None` as for `spots_online`).
    pub state_sizes: Option<[usize; 4]>,
    /// Open HTTP connections (TLS included).
    pub connections_http: usize,
    /// Open raw TCP connections.
    pub connections_tcp: usize,
    /// Events queued for the pipeline, not yet applied.
    pub pipeline_queued_events: usize,
}

/// Writes the `# HELP` and `# TYPE` lines of the family `name`; its samples follow.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

impl Metrics {
    /// Records the time from the end of a POST body to its `200`.
    pub fn observe_ack(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        for (bucket, bound) in self.ack_buckets.iter().zip(ACK_BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.ack_count.fetch_add(1, Ordering::Relaxed);
        self.ack_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of the counters and the histogram.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "spot_events_received_total",
                "Upstream events decoded.",
                &self.events_received,
            ),
            (
                "spot_events_malformed_total",
                "Malformed messages skipped.",
                &self.events_malformed,
            ),
            (
                "spot_events_duplicate_total",
                "Replayed events acknowledged, not stored again.",
                &self.events_duplicate,
            ),
            (
                "spot_posts_total",
                "Ingest POSTs answered 200.",
                &self.posts_ok,
            ),
            (
                "spot_requests_refused_total",
                "Requests refused by a limit.",
                &self.requests_refused,
            ),
            ("spot_commits_total", "Group commits.", &self.commits),
            (
                "spot_commit_failures_total",
                "Commit attempts that failed (retried; nothing acknowledged meanwhile).",
                &self.commit_failures,
            ),
            (
                "spot_connections_refused_total",
                "Connections over the connection limit.",
                &self.connections_refused,
            ),
            (
                "spot_connections_refused_unanswered_total",
                "Connections over the limit closed without an answer (refusals bounded).",
                &self.connections_refused_unanswered,
            ),
            (
                "spot_connections_evicted_total",
                "Connections closed before their first request to make room for a new one.",
                &self.connections_evicted,
            ),
            (
                "spot_connections_head_timeouts_total",
                "Connections closed for sending no request head in time.",
                &self.connections_head_timeouts,
            ),
            (
                "spot_connections_write_stalled_total",
                "Connections closed because their client stopped reading.",
                &self.connections_write_stalled,
            ),
        ];
        for (name, help, value) in counters {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        family(
            &mut out,
            "spot_store_failing",
            "gauge",
            "1 while commits fail (ingest answers 503).",
        );
        let _ = writeln!(
            out,
            "spot_store_failing {}",
            self.store_failing.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "spot_ack_seconds",
            "histogram",
            "End of POST body to 200.",
        );
        for (bucket, bound) in self.ack_buckets.iter().zip(ACK_BUCKETS) {
            let _ = writeln!(
                out,
                "spot_ack_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.ack_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "spot_ack_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "spot_ack_seconds_sum {}",
            self.ack_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "spot_ack_seconds_count {count}");
        out
    }
}

impl Gauges {
    /// The gauges, then `spot_build_info`, in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        if let Some(online) = self.spots_online {
            family(out, "spot_spots_online", "gauge", "Spots online now.");
            let _ = writeln!(out, "spot_spots_online {online}");
        }
        if let Some(sizes) = self.state_sizes {
            let names = [
                ("spot_spots", "Spots the live state holds."),
                (
                    "spot_items",
                    "Items the live state holds (every item ever seen).",
                ),
                ("spot_presences", "Presences the live state holds."),
                (
                    "spot_events_in_memory",
                    "Derived events held in memory for the REST API (events-max-in-memory).",
                ),
            ];
            for ((name, help), value) in names.into_iter().zip(sizes) {
                family(out, name, "gauge", help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
        family(
            out,
            "spot_connections_open",
            "gauge",
            "Open connections per transport (http includes TLS).",
        );
        let _ = writeln!(
            out,
            "spot_connections_open{{transport=\"http\"}} {}\n\
             spot_connections_open{{transport=\"tcp\"}} {}",
            self.connections_http, self.connections_tcp
        );
        family(
            out,
            "spot_pipeline_queued_events",
            "gauge",
            "Events queued for the pipeline, not yet applied.",
        );
        let _ = writeln!(
            out,
            "spot_pipeline_queued_events {}",
            self.pipeline_queued_events
        );
        family(
            out,
            "spot_build_info",
            "gauge",
            "The server's version (the value is always 1).",
        );
        let _ = writeln!(
            out,
            "spot_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
    }
}

/// The standard process metrics (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_open_fds`, `process_start_time_seconds`), read
/// from `/proc/self` with the `procfs` crate; nothing where `/proc` can't be read.
#[cfg(target_os = "linux")]
pub fn render_process(out: &mut String) {
    let Ok(me) = procfs::process::Process::myself() else {
        return;
    };
    if let Ok(stat) = me.stat() {
        let ticks = procfs::ticks_per_second() as f64;
        family(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds.",
        );
        let _ = writeln!(
            out,
            "process_cpu_seconds_total {}",
            (stat.utime + stat.stime) as f64 / ticks
        );
        family(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(
            out,
            "process_resident_memory_bytes {}",
            stat.rss * procfs::page_size()
        );
        if let Ok(boot) = procfs::boot_time_secs() {
            family(
                out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
            );
            let _ = writeln!(
                out,
                "process_start_time_seconds {}",
                boot as f64 + stat.starttime as f64 / ticks
            );
        }
    }
    if let Ok(fds) = me.fd_count() {
        family(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        let _ = writeln!(out, "process_open_fds {fds}");
    }
}

/// No process metrics where there is no `/proc`.
#[cfg(not(target_os = "linux"))]
pub fn render_process(_out: &mut String) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_every_counter_and_buckets_are_cumulative() {
        let m = Metrics::default();
        m.events_received.fetch_add(3, Ordering::Relaxed);
        m.observe_ack(Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("spot_events_received_total 3"));
        assert!(text.contains("spot_events_malformed_total 0"));
        assert!(text.contains("spot_events_duplicate_total 0"));
        assert!(text.contains("spot_ack_seconds_bucket{le=\"0.002\"} 0"));
        assert!(text.contains("spot_ack_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("spot_ack_seconds_bucket{le=\"5\"} 1"));
        assert!(text.contains("spot_ack_seconds_count 1"));
    }

    #[test]
    fn gauges_render_per_transport_and_leave_out_an_unknown_online_count() {
        let mut out = String::new();
        Gauges {
            spots_online: None,
            state_sizes: None,
            connections_http: 2,
            connections_tcp: 1,
            pipeline_queued_events: 7,
        }
        .render(&mut out);
        assert!(!out.contains("spot_spots_online"), "{out}");
        assert!(out.contains("spot_connections_open{transport=\"http\"} 2"));
        assert!(out.contains("spot_connections_open{transport=\"tcp\"} 1"));
        assert!(out.contains("spot_pipeline_queued_events 7"));
        assert!(out.contains("spot_build_info{version=\""));
    }
}
