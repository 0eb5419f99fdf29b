//! The PUBLISH packet written in place (MQTT 3.1.1 §3.3): the one packet the outlet encodes
//! itself, so that a batch of publishes costs one buffer and no allocation per event.

use bytes::{BufMut, BytesMut};
use rumqttc::QoS;

/// Largest "remaining length" of an MQTT packet (four length bytes).
const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Appends a PUBLISH packet (MQTT 3.1.1 §3.3) to `out`: topic `prefix/topic` (or `topic`),
/// packet id `pkid` when `qos` is not 0, `payload`. Written in place: no topic string, no
/// payload copy but the one into `out`. `None` (nothing written) when the topic or packet is
/// larger than MQTT allows.
pub(super) fn write_publish(
    out: &mut BytesMut,
    prefix: Option<&str>,
    topic: &str,
    qos: QoS,
    dup: bool,
    pkid: u16,
    payload: &[u8],
) -> Option<()> {
    let topic_len = prefix.map_or(0, |p| p.len() + 1) + topic.len();
    let topic_len16 = u16::try_from(topic_len).ok()?;
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + topic_len + id_len + payload.len();
    if remaining > MAX_REMAINING_LENGTH {
        return None;
    }
    out.reserve(5 + remaining);
    out.put_u8(0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1));
    let mut length = remaining;
    loop {
        let byte = (length % 128) as u8;
        length /= 128;
        if length == 0 {
            out.put_u8(byte);
            break;
        }
        out.put_u8(byte | 0x80);
    }
    out.put_u16(topic_len16);
    if let Some(prefix) = prefix {
        out.put_slice(prefix.as_bytes());
        out.put_u8(b'/');
    }
    out.put_slice(topic.as_bytes());
    if id_len != 0 {
        out.put_u16(pkid);
    }
    out.put_slice(payload);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::MAX_TOPIC_LEN;
    use rumqttc::Packet;

    /// The in-place PUBLISH is what rumqttc's codec encodes and decodes, at every QoS, with
    /// and without a prefix, DUP, and remaining lengths of 1, 2 and 3 bytes.
    #[test]
    fn publishes_are_encoded_as_rumqttc_encodes_them() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for prefix in [None, Some("site/a")] {
                for payload_len in [0, 100, 127, 128, 16_000, 16_383, 16_384, 300_000] {
                    let dup = qos != QoS::AtMostOnce && payload_len % 2 == 0;
                    let pkid = if qos == QoS::AtMostOnce { 0 } else { 65_535 };
                    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
                    let mut ours = BytesMut::new();
                    write_publish(
                        &mut ours,
                        prefix,
                        "items/7/created",
                        qos,
                        dup,
                        pkid,
                        &payload,
                    )
                    .expect("fits");
                    let topic = match prefix {
                        Some(p) => format!("{p}/items/7/created"),
                        None => "items/7/created".to_owned(),
                    };
                    let mut expected = rumqttc::Publish::new(topic.clone(), qos, payload.clone());
                    expected.pkid = pkid;
                    expected.dup = dup;
                    let mut theirs = BytesMut::new();
                    Packet::Publish(expected.clone())
                        .write(&mut theirs, usize::MAX)
                        .expect("encode");
                    assert_eq!(ours, theirs, "{qos:?} {prefix:?} {payload_len}");
                    match Packet::read(&mut ours, usize::MAX).expect("decodes") {
                        Packet::Publish(p) => assert_eq!(p, expected),
                        other => panic!("{other:?}"),
                    }
                    assert!(ours.is_empty(), "one packet, nothing more");
                }
            }
        }
    }

    #[test]
    fn a_topic_longer_than_mqtt_allows_is_not_written() {
        let topic = "a".repeat(MAX_TOPIC_LEN - 3);
        let mut out = BytesMut::new();
        assert_eq!(
            write_publish(
                &mut out,
                Some("pre"),
                &topic,
                QoS::AtLeastOnce,
                false,
                1,
                b"{}"
            ),
            None
        );
        assert!(out.is_empty());
        write_publish(
            &mut out,
            Some("pr"),
            &topic,
            QoS::AtLeastOnce,
            false,
            1,
            b"{}",
        )
        .expect("65,535 bytes fit");
    }
}
