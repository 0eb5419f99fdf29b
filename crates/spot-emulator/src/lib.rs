//! The spot emulator: the device side of the spot protocol.
//!
//! - [`population`]: the simulated tag population (sans-IO, seeded, `now` passed in).
//! - [`spot`]: one spot's state machine: `spot create`, `config create`, events, commands.
//! - [`rng`]: the deterministic random generator both use.

pub mod population;
pub mod rng;
pub mod spot;
