//! The raw-TCP acknowledgement (spec §4.2): `["ack","update",{"seq":N,"time":"…"}]`,
//! written by the server after it committed a connection's events up to `N`, read by the
//! spot. Built and recognised here only, so both sides agree on its shape.

use crate::event::{Event, EventKind, Object, OtherEvent};
use crate::time::Timestamp;

/// The resource type of an acknowledgement.
pub const ACK_RESOURCE: &str = "ack";

/// The acknowledgement of every event up to `seq`, stamped `now_ms` (Unix milliseconds).
pub fn ack_event(seq: u64, now_ms: i64) -> Event {
    let mut object = Object::new();
    object.insert("seq".into(), seq.into());
    object.insert("time".into(), Timestamp(now_ms).to_string().into());
    Event::new(EventKind::Other(OtherEvent {
        resource_type: ACK_RESOURCE.into(),
        action: "update".into(),
        object,
    }))
}

/// What an incoming event means to a spot reading its server's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckRead {
    /// Not an acknowledgement: a command or something else.
    NotAck,
    /// Every event up to this sequence number is committed.
    Acked(u64),
    /// An `ack` without a usable `seq`: ignore it.
    Malformed,
}

/// Recognises an acknowledgement.
pub fn read_ack(event: &Event) -> AckRead {
    match &event.kind {
        EventKind::Other(o) if o.resource_type == ACK_RESOURCE => {
            match o.object.get("seq").and_then(|v| v.as_u64()) {
                Some(seq) => AckRead::Acked(seq),
                None => AckRead::Malformed,
            }
        }
        _ => AckRead::NotAck,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Decoder, Encoder, Encoding};

    #[test]
    fn an_ack_written_by_the_server_is_read_back_by_the_spot_through_both_encodings() {
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let mut bytes = Vec::new();
            Encoder::new(encoding).encode(&ack_event(41, 1_700_000_000_123), &mut bytes);
            let mut decoder = Decoder::new(encoding, Default::default());
            decoder.feed(&bytes);
            let event = decoder.next_event().expect("one event").expect("valid");
            assert_eq!(read_ack(&event), AckRead::Acked(41), "{encoding:?}");
        }
    }

    #[test]
    fn other_events_and_acks_without_seq_are_told_apart() {
        let mut no_seq = ack_event(1, 0);
        if let EventKind::Other(o) = &mut no_seq.kind {
            o.object.remove("seq");
        }
        assert_eq!(read_ack(&no_seq), AckRead::Malformed);
        let mut other = ack_event(1, 0);
        if let EventKind::Other(o) = &mut other.kind {
            o.resource_type = "spot".into();
        }
        assert_eq!(read_ack(&other), AckRead::NotAck);
    }
}
