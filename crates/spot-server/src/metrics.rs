//! Named counters and the acknowledgement-latency histogram, exported at `/metrics` in the
//! Prometheus text format.

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
    ack_buckets: [AtomicU64; ACK_BUCKETS.len()],
    ack_count: AtomicU64,
    ack_sum_micros: AtomicU64,
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

    /// The Prometheus text exposition.
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
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP spot_store_failing 1 while commits fail (ingest answers 503).\n\
             # TYPE spot_store_failing gauge\nspot_store_failing {}",
            self.store_failing.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP spot_ack_seconds End of POST body to 200.\n# TYPE spot_ack_seconds histogram"
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
}
