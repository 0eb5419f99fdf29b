//! The spot emulator: the device side of the spot protocol (`spot emulate`).
//!
//! The flow of one spot: [`spot::Spot`] (sans-IO state machine over a seeded
//! [`population::Population`], or a [`replay::Replay`]) makes events at the time it is
//! given; [`buffer::SpotBuffer`] numbers each (`seq`, per the delivery contract) and keeps
//! it, on disk with `--buffer`, until a `2xx` with `X-Spot-Ack` covers it;
//! [`uplink::SpotTask`] drives the clock, the HTTP (or raw TCP) connection, acks, commands
//! and reconnects; [`fleet`] runs many tasks in one runtime and sums them up.
//!
//! Pure parts (unit-tested without sockets): [`population`], [`spot`], [`buffer`], [`wire`],
//! [`faults`], [`replay`], [`rng`]. I/O parts: [`uplink`], [`tls`], [`telnet`], [`fleet`] (tested over
//! loopback in `tests/`).
//!
//! - [`spot`]: one spot's state machine: `spot create`, `config create`, events, commands.
//! - [`population`]: the simulated tag population (seeded, `now` passed in).
//! - [`buffer`]: the per-spot delivery buffer (seq numbering, acks, on-disk segments,
//!   fsync and when-full policies).
//! - [`wire`]: HTTP/1.1 bytes of the uplink: request head, chunks, response parser.
//! - [`uplink`]: one spot's async connection loop, HTTP (spec §4.1) or raw TCP (§4.2).
//! - [`telnet`]: the spot's telnet service (raw stream + alive messages).
//! - [`tls`]: TLS for `https://` servers (trusted roots, `--ca-cert`, `--insecure`).
//! - [`faults`]: fault injection specs (`--fault`).
//! - [`replay`]: replaying a recorded stream instead of the population.
//! - [`fleet`]: many spots in one runtime, progress line and JSON [`fleet::Summary`].
//! - [`rng`]: the deterministic random generator.
//!
//! Counting, never silence: every event not generated (buffer full), resent, skipped by a
//! telnet client, every fault injected and every command ignored is a counter in the summary.

pub mod buffer;
pub mod faults;
pub mod fleet;
pub mod population;
pub mod replay;
pub mod rng;
pub mod spot;
pub mod stats;
pub mod telnet;
pub mod tls;
pub mod uplink;
pub mod wire;
