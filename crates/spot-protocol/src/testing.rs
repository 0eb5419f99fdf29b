//! proptest strategies for the event model, shared by this crate's property tests, the
//! other crates' tests and the fuzz targets. Enabled by the `testing` feature.
//!
//! Generated events are in the model's normal form: typed fields hold valid values, and
//! `extra` maps only use keys that no typed struct knows (prefix `x_`), so that encoding and
//! decoding again must give back an equal event.

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::Value;

use crate::event::*;
use crate::time::Timestamp;

/// Any JSON value, nested at most `depth` levels (numbers are integers or halves, which every
/// encoding carries exactly).
pub fn json_value(depth: u32) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1_000_000i64..1_000_000).prop_map(|n| Value::from(n as f64 + 0.5)),
        any::<u64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Short strings with the characters that trouble encoders: quotes, backslashes, control
/// characters, newlines (a `\n\n` inside a string must be escaped), and non-ASCII.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_]{0,12}",
        "[ -~]{0,16}",
        any::<String>().prop_map(|s| s.chars().take(12).collect()),
        Just("a\n\nb\"\\\u{0}\u{1f}é€😀".to_string()),
    ]
}

/// An `extra` map: unknown keys (prefix `x_`) with arbitrary values.
pub fn extra() -> impl Strategy<Value = Object> {
    btree_map("x_[a-z0-9_]{0,8}", json_value(2), 0..3).prop_map(|m| m.into_iter().collect())
}

/// Any timestamp between year 0 and 9999, with realistic ones (1970 and today) more likely.
pub fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        (0i64..10_000).prop_map(Timestamp),
        (1_400_000_000_000i64..1_800_000_000_000).prop_map(Timestamp),
        (-62_135_596_800_000i64..253_402_300_799_999).prop_map(Timestamp),
    ]
}

/// A 24-hex-digit EPC code in lower or upper case, or another code form.
pub fn item_code() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9a-f]{24}",
        1 => "[0-9A-F]{24}",
        1 => "[0-9a-fA-F]{1,40}",
        1 => text(),
    ]
}

/// Any proximity.
pub fn proximity() -> impl Strategy<Value = Proximity> {
    prop_oneof![
        Just(Proximity::Far),
        Just(Proximity::Near),
        Just(Proximity::Immediate)
    ]
}

/// Any action.
pub fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Create),
        Just(Action::Update),
        Just(Action::Delete)
    ]
}

fn code_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("EPC Gen2".to_string()),
        Just("BLE".to_string()),
        text()
    ]
}

/// Any `spot` object.
pub fn spot_status() -> BoxedStrategy<SpotStatus> {
    (
        (
            option::of("[0-9]{1,6}"),
            option::of(text()),
            option::of(any::<i64>()),
            option::of(any::<bool>()),
            option::of(any::<i64>()),
            option::of(vec(any::<i64>(), 0..8)),
        ),
        (
            option::of(any::<i64>()),
            option::of(any::<i64>()),
            option::of(any::<i64>()),
            option::of(timestamp()),
            option::of(timestamp()),
            option::of(any::<u64>()),
            extra(),
        ),
    )
        .prop_map(
            |(
                (spot_id, version, pcb_version, online, dip_mask, rfid_swr),
                (
                    boot_count,
                    watchdog_count,
                    presence_create_count,
                    time_started,
                    time,
                    seq_epoch,
                    extra,
                ),
            )| SpotStatus {
                spot_id,
                version,
                pcb_version,
                online,
                dip_mask,
                rfid_swr,
                boot_count,
                watchdog_count,
                presence_create_count,
                time_started,
                time,
                seq_epoch,
                extra,
            },
        )
        .boxed()
}

/// Any `config` object.
pub fn config() -> BoxedStrategy<Config> {
    (
        option::of(any::<i64>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<i64>()),
        option::of(any::<bool>()),
        option::of(text()),
        option::of(text()),
        option::of(any::<bool>()),
        extra(),
    )
        .prop_map(
            |(
                rfid_power_dbm,
                send_hits,
                auto_hold_delay,
                fixed_hold_delay_s,
                telnet,
                hostname,
                brain_address,
                reset,
                extra,
            )| Config {
                rfid_power_dbm,
                send_hits,
                auto_hold_delay,
                fixed_hold_delay_s,
                telnet,
                hostname,
                brain_address,
                reset,
                extra,
            },
        )
        .boxed()
}

/// Any `presence` object.
pub fn presence() -> BoxedStrategy<Presence> {
    (
        option::of(item_code()),
        option::of(code_type()),
        option::of(timestamp()),
        option::of(timestamp()),
        option::of(proximity()),
        option::of(any::<i64>()),
        extra(),
    )
        .prop_map(
            |(
                item_code,
                item_codetype,
                time_started,
                time_last,
                proximity,
                hold_delay_s,
                extra,
            )| {
                Presence {
                    item_code: item_code.map(Into::into),
                    item_codetype: item_codetype.map(Into::into),
                    time_started,
                    time_last,
                    proximity,
                    hold_delay_s,
                    extra,
                }
            },
        )
        .boxed()
}

/// Any `hit` object.
pub fn hit() -> BoxedStrategy<Hit> {
    (
        option::of(timestamp()),
        option::of(item_code()),
        option::of(code_type()),
        option::of(any::<i64>()),
        option::of(any::<i64>()),
        extra(),
    )
        .prop_map(
            |(time, item_code, item_codetype, antenna, signal_strength, extra)| Hit {
                time,
                item_code: item_code.map(Into::into),
                item_codetype: item_codetype.map(Into::into),
                antenna,
                signal_strength,
                extra,
            },
        )
        .boxed()
}

/// Any `firmware` object.
pub fn firmware() -> BoxedStrategy<Firmware> {
    (
        option::of(text()),
        option::of(text()),
        option::of(any::<bool>()),
        extra(),
    )
        .prop_map(|(url, version, reset_counters, extra)| Firmware {
            url,
            version,
            reset_counters,
            extra,
        })
        .boxed()
}

/// An event of a resource type or action the model does not know.
pub fn other_event() -> BoxedStrategy<OtherEvent> {
    (
        prop_oneof!["[a-z_]{1,10}", text()],
        prop_oneof!["[a-z_]{1,10}", text()],
        btree_map(text(), json_value(2), 0..4),
    )
        .prop_filter(
            "known resource with known action is not Other",
            |(r, a, _)| {
                !(matches!(
                    r.as_str(),
                    "spot" | "config" | "presence" | "hit" | "firmware"
                ) && Action::parse(a).is_some())
            },
        )
        .prop_map(|(resource_type, action, object)| OtherEvent {
            resource_type,
            action,
            object: object.into_iter().collect(),
        })
        .boxed()
}

/// Any event, presences and hits the most likely as on a real stream.
pub fn event() -> BoxedStrategy<Event> {
    let kind = prop_oneof![
        1 => (action(), spot_status()).prop_map(|(a, s)| EventKind::Spot(a, s)),
        1 => (action(), config()).prop_map(|(a, c)| EventKind::Config(a, c)),
        4 => (action(), presence()).prop_map(|(a, p)| EventKind::Presence(a, p)),
        4 => (action(), hit()).prop_map(|(a, h)| EventKind::Hit(a, h)),
        1 => (action(), firmware()).prop_map(|(a, f)| EventKind::Firmware(a, f)),
        1 => other_event().prop_map(EventKind::Other),
    ];
    (option::of(any::<u64>()), kind)
        .prop_map(|(seq, kind)| {
            // `seq` is lifted out of known events only; an unknown event keeps it in its object.
            let seq = if matches!(kind, EventKind::Other(_)) {
                None
            } else {
                seq
            };
            Event { seq, kind }
        })
        .boxed()
}

/// A stream of events.
pub fn events(max: usize) -> impl Strategy<Value = Vec<Event>> {
    vec(event(), 0..max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    /// Regression: generating events overflowed the default 2 MiB test-thread stack in debug
    /// builds before the strategies were boxed.
    #[test]
    fn generating_events_fits_the_default_test_stack() {
        let mut runner = TestRunner::deterministic();
        let strategy = events(32);
        for _ in 0..64 {
            let stream = strategy.new_tree(&mut runner).unwrap().current();
            assert!(stream.len() < 32);
        }
    }
}
