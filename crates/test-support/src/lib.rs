//! What the workspace's tests, examples and benchmarks share, in one place instead of
//! `#[path]` includes and per-file copies:
//!
//! - [`captures`]: the vendor captures (real spot output) and [`fixtures`]: the golden
//!   fixtures and the `localhost` test certificate, found from the workspace checkout;
//! - [`split`]: a byte stream cut at given points, and at every point in two;
//! - [`http`]: HTTP/1.1 chunked bodies written and de-chunked, and a blocking `GET`;
//! - [`free_port`]: a loopback port nobody listens on;
//! - [`process`]: a tool run with piped stdin ([`process::run_with_stdin`]); `spot serve`
//!   (or any server process) started and waited for, and killed when dropped;
//! - `mosquitto` (feature `mqtt`): a real mosquitto on a free port with its own config, and
//!   real MQTT subscribers;
//! - [`webhook`]: a webhook target on loopback that records what it answered;
//! - the cluster mode's engines, as plain child processes on free loopback ports:
//!   [`nats`]: `n` clustered `nats-server -js`, killed and restarted one by one;
//!   [`postgres`]: a fresh database per test on the machine's PostgreSQL (or a private one);
//!   [`nginx`]: a streaming reverse proxy in front of the nodes.
//!
//! It depends on no crate of the workspace: each crate's own helpers (an in-process server,
//! a decoder fed piecewise) stay in that crate's `tests/`.

pub mod captures;
pub mod disk;
pub mod fixtures;
pub mod http;
#[cfg(feature = "mqtt")]
pub mod mosquitto;
pub mod nats;
pub mod nginx;
pub mod postgres;
pub mod process;
pub mod split;
pub mod webhook;

/// What a test's receiver (a webhook target, an MQTT subscriber) recorded, in order, and a
/// wake-up for each record.
pub type Received<T> = std::sync::Arc<(std::sync::Mutex<Vec<T>>, std::sync::Condvar)>;

/// Waits (`within` at most) until `done` holds for what `received` holds, checking at each
/// record.
pub fn wait_until<T>(
    received: &(std::sync::Mutex<Vec<T>>, std::sync::Condvar),
    within: std::time::Duration,
    done: impl Fn(&[T]) -> bool,
) {
    let deadline = std::time::Instant::now() + within;
    let (lock, changed) = received;
    let mut held = lock.lock().unwrap_or_else(|e| e.into_inner());
    while !done(&held) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        held = changed
            .wait_timeout(held, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// A loopback port nobody listens on right now (the OS picks it; it stays free until
/// someone binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
