//! MQTT outlet against a real mosquitto started on a free port with its own config.

use std::time::Duration;

use rumqttc::QoS;
use serde_json::json;
use std::sync::Arc;

use spot_push::{Hub, HubConfig, MemoryEventLog, MqttConfig, MqttOutlet, MqttPosition, Published};
use test_support::fixtures::{localhost_cert, localhost_key};
use test_support::free_port;
use test_support::mosquitto::{subscriber, subscriber_as, Broker, Options};

fn event(id: u64, topic: &str) -> Published {
    Published::from_value(id, topic, &json!({ "n": id, "resource": {"id": 1} })).expect("event")
}

fn outlet_config(port: u16, prefix: &str) -> MqttConfig {
    outlet_config_for(&format!("mqtt://127.0.0.1:{port}/{prefix}"))
}

fn outlet_config_for(url: &str) -> MqttConfig {
    let mut config = MqttConfig::from_url(url).expect("url");
    config.reconnect_delay = Duration::from_millis(20);
    config.client_id = "spot-push-test".into();
    config
}

/// Waits until the outlet has failed `n` connection attempts (it retries every 20 ms).
async fn wait_connection_errors(outlet: &MqttOutlet, n: u64) {
    for _ in 0..2000 {
        if outlet.stats().connection_errors_total >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no failed connection attempt: {:?}", outlet.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_with_the_user_and_password_of_the_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let users = vec![
        ("spot".to_string(), "p@ss:w/rd".to_string()),
        ("reader".to_string(), "r".to_string()),
    ];
    let _broker = Broker::start_with(
        dir.path(),
        port,
        &Options {
            users,
            ..Options::default()
        },
    );
    let mut received = subscriber_as(port, "#", Some(("reader", "r"))).await;
    let hub = Hub::new(HubConfig::default());
    // A wrong password: refused by the broker, retried, counted, nothing published.
    let wrong = MqttOutlet::spawn(
        outlet_config_for(&format!("mqtt://spot:wrong@127.0.0.1:{port}/a")),
        &hub,
        None,
    )
    .expect("outlet");
    wait_connection_errors(&wrong, 2).await;
    assert!(!wrong.stats().connected);
    drop(wrong);
    // No login at all: refused too (anonymous clients are not allowed).
    let anonymous = MqttOutlet::spawn(outlet_config(port, "a"), &hub, None).expect("outlet");
    wait_connection_errors(&anonymous, 1).await;
    drop(anonymous);
    // The right one, %-encoded in the URL.
    let _outlet = MqttOutlet::spawn(
        outlet_config_for(&format!("mqtt://spot:p%40ss%3Aw%2Frd@127.0.0.1:{port}/a")),
        &hub,
        None,
    )
    .expect("outlet");
    hub.publish(event(1, "items/1/created"));
    let (topic, payload, _) = received.recv().await.expect("message");
    assert_eq!(topic, "a/items/1/created");
    assert_eq!(payload["n"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_over_tls_to_a_broker_with_a_private_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, tls_port) = (free_port(), free_port());
    let options = Options {
        users: Vec::new(),
        tls: Some((tls_port, localhost_cert(), localhost_key())),
        ..Options::default()
    };
    let _broker = Broker::start_with(dir.path(), port, &options);
    let mut received = subscriber(port, "#").await; // on the plain listener
    let hub = Hub::new(HubConfig::default());
    let url = format!("mqtts://localhost:{tls_port}/tls");
    // The public roots alone do not vouch for the test certificate: handshakes fail.
    let untrusted = MqttOutlet::spawn(outlet_config_for(&url), &hub, None).expect("outlet");
    wait_connection_errors(&untrusted, 2).await;
    assert!(!untrusted.stats().connected);
    drop(untrusted);
    // Trusting it (--mqtt-ca-cert): published over TLS.
    let mut config = outlet_config_for(&url);
    config.trust_ca_file(&localhost_cert()).expect("CA file");
    let outlet = MqttOutlet::spawn(config, &hub, None).expect("outlet");
    hub.publish(event(1, "items/1/created"));
    let (topic, payload, _) = received.recv().await.expect("message");
    assert_eq!(topic, "tls/items/1/created");
    assert_eq!(payload["n"], 1);
    assert!(outlet.stats().connected);
    assert_eq!(outlet.stats().connection_errors_total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_topics_and_payloads_under_the_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _broker = Broker::start(dir.path(), port);
    let mut received = subscriber(port, "site/#").await;
    let hub = Hub::new(HubConfig::default());
    let _outlet = MqttOutlet::spawn(outlet_config(port, "site"), &hub, None).expect("outlet");
    hub.publish(event(1, "spots/1/connected/203"));
    hub.publish(event(2, "presences/4/created/2/1/near"));
    let (topic, payload, qos) = received.recv().await.expect("message");
    assert_eq!(topic, "site/spots/1/connected/203");
    assert_eq!(payload, json!({"n": 1, "resource": {"id": 1}}));
    assert_eq!(qos, QoS::AtLeastOnce);
    let (topic, payload, _) = received.recv().await.expect("message");
    assert_eq!(topic, "site/presences/4/created/2/1/near");
    assert_eq!(payload["n"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_events_published_while_the_broker_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let broker = Broker::start(dir.path(), port);
    let mut received = subscriber(port, "#").await;
    let hub = Hub::new(HubConfig::default());
    let outlet = MqttOutlet::spawn(outlet_config(port, "p"), &hub, None).expect("outlet");
    hub.publish(event(1, "items/1/created"));
    assert_eq!(received.recv().await.expect("message").1["n"], 1);
    broker.stop();
    for id in 2..=11 {
        hub.publish(event(id, "items/1/appeared"));
    }
    let _broker = Broker::start(dir.path(), port);
    let mut seen = vec![1];
    while seen.len() < 11 {
        let (topic, payload, _) = received.recv().await.expect("message");
        assert_eq!(topic, "p/items/1/appeared");
        let n = payload["n"].as_u64().expect("n");
        if !seen.contains(&n) {
            seen.push(n); // QoS 1 may deliver twice
        }
    }
    assert_eq!(seen, (1..=11).collect::<Vec<_>>(), "all, in order");
    assert!(
        outlet.stats().connection_errors_total > 0,
        "the outage was seen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_raw_spot_events_like_derived_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _broker = Broker::start(dir.path(), port);
    let mut received = subscriber(port, "site/spots/+/events/#").await;
    let hub = Hub::new(HubConfig::default());
    let _outlet = MqttOutlet::spawn(outlet_config(port, "site"), &hub, None).expect("outlet");
    let raw = Published::raw(
        "spots/01a2/events/hit/create",
        json!({"resource": {"item_code": "ab"}, "seq": null}).to_string(),
    )
    .expect("raw event");
    hub.publish(raw);
    let (topic, payload, _) = received.recv().await.expect("message");
    assert_eq!(topic, "site/spots/01a2/events/hit/create");
    assert_eq!(
        payload,
        json!({"resource": {"item_code": "ab"}, "seq": null})
    );
}

/// No broker at all, a 4-event queue, a current-thread runtime (the outlet cannot run while
/// the test publishes): exactly the overflow is counted.
#[tokio::test]
async fn overflow_while_the_broker_is_away_is_counted() {
    let hub = Hub::new(HubConfig::default());
    let mut config = outlet_config(free_port(), "p");
    config.queue_capacity = 4;
    let _outlet = MqttOutlet::spawn(config, &hub, None).expect("outlet");
    for id in 1..=50 {
        hub.publish(event(id, "items/1/created"));
    }
    let mqtt = hub
        .stats()
        .outlets
        .into_iter()
        .find(|o| o.outlet == "mqtt")
        .expect("mqtt outlet");
    assert_eq!((mqtt.queued, mqtt.dropped_total), (4, 46));
}

/// The server's order: the log, then the hub.
fn commit(hub: &Hub, log: &MemoryEventLog, id: u64) {
    log.append(event(id, "items/1/appeared"));
    hub.publish(event(id, "items/1/appeared"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_outlet_publishes_after_a_restart_what_was_committed_while_the_broker_was_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let position = dir.path().join("mqtt.db");
    let port = free_port();
    let broker = Broker::start(dir.path(), port);
    let mut received = subscriber(port, "#").await;
    let log = Arc::new(MemoryEventLog::new(10_000));
    let mut config = outlet_config(port, "p");
    config.position_interval = Duration::from_millis(10);
    let start = |hub: &Hub| {
        let position = MqttPosition::open(&position).expect("position");
        MqttOutlet::spawn_durable(config.clone(), hub, log.clone(), position).expect("outlet")
    };
    let hub = Hub::new(HubConfig::default());
    let outlet = start(&hub);
    for id in 1..=3 {
        commit(&hub, &log, id);
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let n = received.recv().await.expect("message").1["n"]
            .as_u64()
            .expect("n");
        if !seen.contains(&n) {
            seen.push(n);
        }
    }
    broker.stop();
    for id in 4..=10 {
        commit(&hub, &log, id);
    }
    // The server stops with 4..=10 unpublished, and starts again with the broker back.
    outlet.shutdown();
    drop((outlet, hub));
    let _broker = Broker::start(dir.path(), port);
    let hub = Hub::new(HubConfig::default());
    let _outlet = start(&hub);
    commit(&hub, &log, 11);
    while seen.len() < 11 {
        let next = tokio::time::timeout(Duration::from_secs(10), received.recv());
        let message = next
            .await
            .unwrap_or_else(|_| panic!("only {seen:?} arrived"));
        let n = message.expect("message").1["n"].as_u64().expect("n");
        if !seen.contains(&n) {
            seen.push(n); // QoS 1 may deliver twice
        }
    }
    assert_eq!(
        seen,
        (1..=11).collect::<Vec<_>>(),
        "all, once each, in order"
    );
}
