//! Transparent huge pages off for the server's process: what `spot serve` (and the benchmarks
//! that stand for it) call first thing.
//!
//! mimalloc asks for huge pages for its arenas, and the server's many small allocations from
//! several threads left them partly used, and each first touch of one zeroed 2 MiB on the
//! thread that touched it. At 1,000 spots × 200 events/s (the bench's spotload, 8 s) the peak
//! resident set was 520–630 MB with them and 440–510 MB without; at 1,000 × 50 the ack p99
//! was 142–200 ms with them and 33–46 ms without (three runs each), events/s and CPU per
//! event within the runs' spread.

/// Turns transparent huge pages off for this process (Linux; `prctl(PR_SET_THP_DISABLE)`,
/// inherited by children), unless `MIMALLOC_ALLOW_THP` is set: then mimalloc's own option
/// decides. Call it before the process has allocated much: memory already faulted in as
/// huge pages stays so.
pub fn turn_off() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory; it only sets
        // a flag of the process. A failure leaves THP as it was.
        let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}
