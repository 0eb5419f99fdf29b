//! The spot emulator: the device side of the spot protocol (`spot emulate`).
//!
//! The flow of one spot: [`spot::Spot`] (sans-IO state machine over a seeded
//! [`population::Population`], or a [`replay::Replay`]) makes events at the time it is
//! given; [`buffer::SpotBuffer`] numbers each (`seq`, per the delivery contract) and keeps
//! it, on disk with `--buffer`, until a `2xx` with `X-Spot-Ack` (or a raw-TCP `ack`) covers
//! it. [`uplink::SpotTask`] runs one spot: its sans-IO session decides what is unsent, what
//! a response or an ack means and which commands follow, with the time passed in; thin
//! HTTP and raw-TCP transports move the bytes; the task redials with
//! [`spot_protocol::backoff`]. Its live counters are a [`stats::SpotStats`], also fed by the
//! [`telnet`] service; [`fleet`] runs many tasks in one runtime and sums them up in a
//! [`fleet::Summary`].
//!
//! Pure parts (unit-tested without sockets): [`population`], [`spot`], [`buffer`], [`wire`],
//! [`faults`], [`replay`], [`rng`], and the uplink's session. I/O parts: the uplink's
//! transports and run loop, [`tls`], [`telnet`], [`fleet`] (tested over loopback in `tests/`).
//!
//! Modules, leaves first (imports run one way, from the bottom of this list to the top):
//!
//! - [`rng`]: the deterministic random generator.
//! - [`stats`]: one spot's live counters, shared by the uplink, telnet and the fleet.
//! - [`faults`]: fault injection specs (`--fault`).
//! - [`wire`]: HTTP/1.1 bytes of the uplink: request head, chunks, response parser.
//! - [`tls`]: TLS for `https://` servers (trusted roots, `--ca-cert`, `--insecure`).
//! - [`population`]: the simulated tag population (seeded, `now` passed in).
//! - [`spot`]: one spot's state machine: `spot create`, `config create`, events, commands.
//! - [`buffer`]: the per-spot delivery buffer (seq numbering, acks, on-disk segments,
//!   fsync and when-full policies).
//! - [`replay`]: replaying a recorded stream instead of the population.
//! - [`telnet`]: the spot's telnet service (raw stream + alive messages).
//! - [`uplink`]: one spot's run: config, sans-IO session, HTTP (spec §4.1) and raw TCP
//!   (§4.2) transports, reconnects.
//! - [`fleet`]: many spots in one runtime, progress line and JSON [`fleet::Summary`].
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
