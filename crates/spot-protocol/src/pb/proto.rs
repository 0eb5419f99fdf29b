//! The prost types generated from `proto/spot_events.proto` (see build.rs).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/spot.events.v1.rs"));
