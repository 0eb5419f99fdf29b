//! Why one protobuf frame was rejected ([`FrameError`]): every layer's reasons in one enum,
//! each naming the field or the rule that failed. A rejected frame costs only itself: the
//! decoder goes on with the next frame.

use super::items::ItemTableError;
use super::wire::FieldError;

/// Why one frame was rejected; the text names the field (`Message.field`) or the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame length prefix is longer than 10 bytes or exceeds 64 bits.
    #[error("frame length varint is longer than 10 bytes or exceeds 64 bits")]
    OverlongLength,
    /// An envelope field does not walk (cut, overlong, bad number or wire type).
    #[error("envelope: {0}")]
    Envelope(FieldError),
    /// The event message (envelope field 3 and up) is not length-delimited.
    #[error("envelope field {number}: an event message must have wire type 2, not {wire_type}")]
    EventWireType {
        /// The envelope field number.
        number: u64,
        /// Its wire type.
        wire_type: u8,
    },
    /// A second event message in one frame.
    #[error("envelope field {number}: a frame carries exactly one event message")]
    SecondEvent {
        /// The second event message's field number.
        number: u64,
    },
    /// The envelope has no field 3 or up.
    #[error("envelope: no event message (fields 3 and up)")]
    NoEvent,
    /// A field of the event message does not walk.
    #[error("event message: {0}")]
    EventField(FieldError),
    /// Field 9 (the timestamp) is not a varint.
    #[error("event message: field 9 (timestamp) must have wire type 0, not {wire_type}")]
    TimestampWireType {
        /// Its wire type.
        wire_type: u8,
    },
    /// Field 9 (the timestamp) occurs more than once.
    #[error("event message: field 9 (timestamp) occurs twice")]
    TimestampTwice,
    /// An event message this version announces but does not decode yet (fields 10–16).
    #[error("envelope field {number} ({name}): this announced event is not supported yet")]
    Unsupported {
        /// The envelope field number.
        number: u64,
        /// The event message's name in the schema.
        name: &'static str,
    },
    /// An envelope field no version of the schema defines.
    #[error("envelope: no event message this version knows")]
    UnknownEvent,
    /// A field of the wrong wire type (what prost's generated decoder rejects).
    #[error("{field}: wire type {got}, expected {expected}")]
    WireType {
        /// `Message.field`.
        field: &'static str,
        /// The wire type sent.
        got: u8,
        /// The field's wire type.
        expected: u8,
    },
    /// A `string` field that is not UTF-8.
    #[error("{field}: invalid string value: not UTF-8")]
    Utf8 {
        /// `Message.field`.
        field: &'static str,
    },
    /// A varint beyond the range of its field's type (`uint32` or `int32`/enum): refused,
    /// never truncated, so that a slot or a value is never silently another one.
    #[error("{field}: {value} is out of range for the field's type")]
    OutOfRange {
        /// `Message.field`.
        field: &'static str,
        /// The varint sent.
        value: u64,
    },
    /// An enum field holding a value the schema does not define.
    #[error("{field}: unknown value {value}")]
    UnknownValue {
        /// `Message.field`.
        field: &'static str,
        /// The value sent.
        value: i32,
    },
    /// `item_codetype` holds a value the schema does not define.
    #[error("{message}.item_codetype: unknown value {value}")]
    UnknownCodetype {
        /// `Presence` or `Hit`.
        message: &'static str,
        /// The value sent.
        value: i32,
    },
    /// Both `item_codetype` and `item_codetype_text` are set.
    #[error("{message}: both item_codetype and item_codetype_text are set")]
    BothCodetypes {
        /// `Presence` or `Hit`.
        message: &'static str,
    },
    /// `item_code_slot` without an item code sent in full.
    #[error("{message}.item_code_slot without an item code")]
    SlotWithoutCode {
        /// `Presence` or `Hit`.
        message: &'static str,
    },
    /// `item_code_slot` together with `item_code_ref`.
    #[error("{message}.item_code_slot given with item_code_ref")]
    SlotWithRef {
        /// `Presence` or `Hit`.
        message: &'static str,
    },
    /// The item-code table refused a slot.
    #[error("{message}.{error}")]
    ItemTable {
        /// `Presence` or `Hit`.
        message: &'static str,
        /// What the table refused.
        error: ItemTableError,
    },
    /// A JSON field (extras or a whole object) that is not a JSON object.
    #[error("{field}: {reason}")]
    Json {
        /// `Message.field`.
        field: &'static str,
        /// serde_json's description.
        reason: String,
    },
    /// A JSON field nesting deeper than the decoder's limit.
    #[error("{field}: nests {depth} levels deep, more than the limit of {limit}")]
    TooDeep {
        /// `Message.field`.
        field: &'static str,
        /// Levels, counting the event's array and object as the first two.
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// A rarer message (`Spot`, `Config`, `Firmware`, `Other`) that prost's generated
    /// decoder rejects; its text names the field.
    #[error("{0}")]
    Prost(#[from] prost::DecodeError),
}
