//! Sans-IO codecs for the spot protocol (spec §2–§3).
//!
//! No sockets, no async runtime, no clock: bytes in, [`Event`]s out, and back.
//!
//! - [`event`]: the typed model ([`Event`], [`EventKind`], [`Proximity`], …).
//! - [`time`]: [`Timestamp`], Unix milliseconds with the ISO 8601 forms spots send.
//! - [`json`]: the JSON encoding (`text/x-intellifi-events`), framed by the JSON structure.
//! - [`pb`]: this project's protobuf encoding (`application/x-intellifi-events-pb`).
//! - [`ack`]: the raw-TCP acknowledgement both sides build and read.
//! - [`backoff`]: reconnect and retry delays (doubling, capped, jittered), the one implementation.
//! - [`lograte`]: log lines of a repeated condition at most once per (doubling) interval.
//! - [`topics`]: the spec §7 topic names and event payload of the server's derived events.
//! - [`codec`]: one [`Decoder`] / [`Encoder`] over either encoding, chosen by [`Encoding`].
//!
//! The flow for a receiver: [`Decoder::feed`] each chunk as it arrives, then call
//! [`Decoder::next_event`] until it returns `None` ("need more bytes"); at the end of the
//! stream call [`Decoder::finish`] and drain once more. Each `Err` is one bad message: the
//! decoder has already resynchronised and the next call goes on with the rest.

pub mod ack;
pub mod backoff;
pub mod codec;
pub mod event;
pub mod hex;
pub mod json;
pub mod lograte;
pub mod pb;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;
pub mod topics;

pub use codec::{DecodeError, DecodeErrorKind, Decoder, Encoder, Encoding, Limits};
pub use event::{
    codetype, Action, CodeType, Config, Event, EventKind, Firmware, Hit, ItemCode, Object,
    OtherEvent, Presence, Proximity, SpotStatus, EPC_GEN2,
};
pub use time::Timestamp;
