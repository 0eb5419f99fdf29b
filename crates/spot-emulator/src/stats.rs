//! The live counters of one spot ([`SpotStats`]): written by the uplink (events, posts,
//! acks, reconnects, faults) and by the telnet service (clients, skipped events), read by
//! the fleet's progress line and summed up in its summary. A leaf: it imports nothing of
//! the crate, so both writers can use it without importing each other.

use std::sync::atomic::AtomicU64;

/// Live counters of one spot (read by the progress display while it runs).
#[derive(Debug, Default)]
pub struct SpotStats {
    /// Events numbered and buffered.
    pub events_generated: AtomicU64,
    /// Events acknowledged by a `2xx`.
    pub events_acked: AtomicU64,
    /// Events in the buffer now.
    pub events_buffered: AtomicU64,
    /// Events written again after a reconnect or a short ack.
    pub events_resent: AtomicU64,
    /// Events not generated because the buffer was full.
    pub events_not_generated_buffer_full: AtomicU64,
    /// POST bodies completed.
    pub posts: AtomicU64,
    /// Connections lost or refused (each followed by a reconnect).
    pub reconnects: AtomicU64,
    /// Responses that were not `2xx`.
    pub responses_not_2xx: AtomicU64,
    /// Commands applied.
    pub commands_applied: AtomicU64,
    /// Commands ignored (unknown) or malformed.
    pub commands_ignored: AtomicU64,
    /// Firmware images installed.
    pub firmware_updates: AtomicU64,
    /// Buffer files that could not be written (the spot stops).
    pub buffer_errors: AtomicU64,
    /// Request bytes written.
    pub bytes_sent: AtomicU64,
    /// Fault: connections cut in the middle of a chunk.
    pub fault_cuts_mid_chunk: AtomicU64,
    /// Fault: POSTs stalled.
    pub fault_stalls: AtomicU64,
    /// Fault: bursts of arrivals.
    pub fault_bursts: AtomicU64,
    /// Fault: events generated in bursts (also in `events_generated`).
    pub fault_burst_events: AtomicU64,
    /// Fault: malformed messages written.
    pub fault_malformed: AtomicU64,
    /// Telnet clients served.
    pub telnet_clients: AtomicU64,
    /// Telnet clients refused (too many).
    pub telnet_refused: AtomicU64,
    /// Events slow telnet clients skipped.
    pub telnet_events_skipped: AtomicU64,
}
