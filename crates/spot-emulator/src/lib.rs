//! The spot emulator: the device side of the spot protocol.
//!
//! - [`faults`]: fault injection specs (`--fault`).
//! - [`fleet`]: many spots in one runtime, progress line and JSON [`fleet::Summary`].
//! - [`population`]: the simulated tag population (sans-IO, seeded, `now` passed in).
//! - [`spot`]: one spot's state machine: `spot create`, `config create`, events, commands.
//! - [`buffer`]: the per-spot delivery buffer (seq numbering, acks, on-disk segments).
//! - [`telnet`]: the spot's telnet service (raw stream + alive messages).
//! - [`uplink`]: one spot's async HTTP connection loop ([`uplink::SpotTask`]).
//! - [`wire`]: HTTP/1.1 bytes of the uplink: request head, chunks, response parser.
//! - [`replay`]: replaying a recorded stream instead of the population.
//! - [`rng`]: the deterministic random generator both use.

pub mod buffer;
pub mod faults;
pub mod fleet;
pub mod population;
pub mod replay;
pub mod rng;
pub mod spot;
pub mod telnet;
pub mod uplink;
pub mod wire;
