//! `spot serve --mqtt` as a process against a real mosquitto (started on a free port with
//! its own config) and a real subscriber (`mosquitto_sub`): the outlet's topic filters.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use test_support::free_port;
use test_support::http::{chunk, get_text};
use test_support::mosquitto::Broker;
use test_support::process::{wait_listening, KillOnDrop};

/// `mosquitto_sub` on `#`: each received topic on the channel, once subscribed.
fn subscribe_all(port: u16) -> (KillOnDrop, mpsc::Receiver<String>) {
    let mut child = Command::new("/usr/bin/mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "#",
            "-F",
            "%t",
        ])
        .args(["-q", "1", "-i", "filter-test-subscriber"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto_sub");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let subscriber = KillOnDrop(child);
    // Subscribed once a probe published after it started comes back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = Command::new("/usr/bin/mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "probe",
                "-m",
                "x",
            ])
            .status()
            .expect("mosquitto_pub");
        assert!(status.success());
        if let Ok(topic) = rx.recv_timeout(Duration::from_millis(200)) {
            assert_eq!(topic, "probe");
            break;
        }
        assert!(Instant::now() < deadline, "mosquitto_sub did not subscribe");
    }
    (subscriber, rx)
}

/// The value of the metric line `name value`.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

/// The filters come comma-separated from `SPOT_MQTT_FILTER`: the broker gets the events
/// matching one of them and none of the others (the server derives more).
#[test]
fn the_broker_gets_only_the_events_matching_the_mqtt_filters() {
    let dir = tempfile::tempdir().unwrap();
    let (broker_port, port) = (free_port(), free_port());
    let _broker = Broker::start(dir.path(), broker_port);
    let (_subscriber, topics) = subscribe_all(broker_port);
    let server = Command::new(env!("CARGO_BIN_EXE_spot"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path().join("data"))
        .args(["--mqtt", &format!("mqtt://127.0.0.1:{broker_port}")])
        .env("SPOT_MQTT_FILTER", "items/+/created,spots/+/connected/#")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spot serve");
    let _server = KillOnDrop(server);
    wait_listening(port, "spot serve");
    test_support::http::remember_key(port, &dir.path().join("data"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get_text(port, "/metrics").contains("spot_push_mqtt_connected 1") {
        assert!(Instant::now() < deadline, "outlet did not connect");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut body = chunk(b"[\"spot\",\"create\",{\"spot_id\":900,\"seq_epoch\":1}]\n\n");
    for seq in 1..=3u64 {
        body.extend(chunk(
            format!(
                "[\"presence\",\"create\",{{\"item_code\":\"{seq:024x}\",\
                 \"item_codetype\":\"EPC Gen2\",\"proximity\":\"near\",\"seq\":{seq}}}]\n\n"
            )
            .as_bytes(),
        ));
    }
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(
        b"POST /api/spots/900/events/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
          Transfer-Encoding: chunked\r\nContent-Type: text/x-intellifi-events\r\n\r\n",
    )
    .unwrap();
    s.write_all(&body).unwrap();
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // 1 spot connected + 3 items created; then a while longer for anything that should not
    // come.
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.len() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        match topics.recv_timeout(left) {
            Ok(topic) => received.push(topic),
            Err(_) => panic!("only {received:?} reached the broker"),
        }
    }
    while let Ok(topic) = topics.recv_timeout(Duration::from_millis(500)) {
        received.push(topic);
    }
    let connected: Vec<_> = received
        .iter()
        .filter(|t| t.starts_with("spots/") && t.ends_with("/connected/900"))
        .collect();
    let created: Vec<_> = received
        .iter()
        .filter(|t| t.starts_with("items/") && t.ends_with("/created"))
        .collect();
    assert_eq!(
        (connected.len(), created.len(), received.len()),
        (1, 3, 4),
        "exactly the matching events: {received:?}"
    );
    let metrics = get_text(port, "/metrics");
    assert_eq!(
        metric(&metrics, "spot_push_mqtt_sent_total"),
        4,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "spot_push_published_total") > 4,
        "the server derived more than it published to MQTT: {metrics}"
    );
}
