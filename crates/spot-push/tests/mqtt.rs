//! MQTT outlet against a real mosquitto started on a free port with its own config.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use spot_push::{Hub, HubConfig, MqttConfig, MqttOutlet, Published};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

struct Broker {
    child: Child,
}

impl Broker {
    /// Starts mosquitto on `port` with persistence in `dir`; returns once it is listening.
    /// (`user root`: when started as root, mosquitto would otherwise switch to the user
    /// `mosquitto`, which cannot write the temp dir; ignored when not root.)
    async fn start(dir: &Path, port: u16) -> Self {
        let config: PathBuf = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nlog_dest stderr\nlog_type all\nuser root\n",
                dir.display()
            ),
        )
        .expect("write config");
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start mosquitto");
        // stderr: unbuffered, unlike stdout into a pipe.
        let log = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(log).lines();
        loop {
            let line = lines
                .next_line()
                .await
                .expect("read mosquitto log")
                .expect("mosquitto exited before it was running");
            if line.contains(" running") {
                break;
            }
        }
        // Keep draining the log so mosquitto never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child }
    }

    /// SIGTERM (mosquitto saves its persistence file) and wait for the exit.
    async fn stop(mut self) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        self.child.wait().await.expect("wait mosquitto");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A real MQTT subscriber (persistent session) delivering (topic, payload, qos).
async fn subscriber(port: u16, filter: &str) -> mpsc::UnboundedReceiver<(String, Value, QoS)> {
    let mut options = MqttOptions::new("test-subscriber", "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, mut subscribed_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client; // keep the request channel open
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let payload = serde_json::from_slice(&p.payload).expect("json payload");
                    if tx.send((p.topic.clone(), payload, p.qos)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // The broker restarts in one test: reconnect.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    subscribed_rx.recv().await.expect("suback");
    rx
}

fn event(id: u64, topic: &str) -> Published {
    Published::from_value(id, topic, &json!({ "n": id, "resource": {"id": 1} })).expect("event")
}

fn outlet_config(port: u16, prefix: &str) -> MqttConfig {
    let mut config =
        MqttConfig::from_url(&format!("mqtt://127.0.0.1:{port}/{prefix}")).expect("url");
    config.reconnect_delay = Duration::from_millis(20);
    config.client_id = "spot-push-test".into();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_topics_and_payloads_under_the_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _broker = Broker::start(dir.path(), port).await;
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
    let broker = Broker::start(dir.path(), port).await;
    let mut received = subscriber(port, "#").await;
    let hub = Hub::new(HubConfig::default());
    let outlet = MqttOutlet::spawn(outlet_config(port, "p"), &hub, None).expect("outlet");
    hub.publish(event(1, "items/1/created"));
    assert_eq!(received.recv().await.expect("message").1["n"], 1);
    broker.stop().await;
    for id in 2..=11 {
        hub.publish(event(id, "items/1/appeared"));
    }
    let _broker = Broker::start(dir.path(), port).await;
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
