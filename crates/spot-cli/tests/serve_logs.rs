//! `spot serve`'s logs as a log pipeline reads them: JSON lines with `--log-format json`,
//! no ANSI colour codes when stderr is not a terminal (unless `--color always`), durations
//! rounded, and repeated failures (webhook deliveries, an MQTT broker down) not logged once
//! each.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use test_support::free_port;
use test_support::http::{chunk, get_json, get_text};
use test_support::process::{wait_listening, KillOnDrop};

const SPOT: &str = env!("CARGO_BIN_EXE_spot");

/// The first `n` lines `spot serve` writes on stderr (piped: not a terminal).
fn first_log_lines(extra: &[&str], n: usize) -> Vec<String> {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(SPOT)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .args(extra)
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spot serve");
    let rx = test_support::process::stderr_lines(&mut child);
    let _server = KillOnDrop(child);
    (0..n)
        .map(|_| {
            rx.recv_timeout(Duration::from_secs(20))
                .expect("a log line")
        })
        .collect()
}

#[test]
fn json_logs_are_one_json_object_per_line() {
    for line in first_log_lines(&["--log-format", "json"], 2) {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

#[test]
fn text_logs_have_no_colour_codes_unless_asked_for() {
    for line in first_log_lines(&[], 2) {
        assert!(!line.contains('\u{1b}'), "{line:?}");
    }
    let coloured = first_log_lines(&["--color", "always"], 2);
    assert!(
        coloured.iter().any(|l| l.contains('\u{1b}')),
        "{coloured:?}"
    );
}

#[test]
fn durations_in_logs_are_rounded_to_whole_microseconds() {
    let lines = first_log_lines(&[], 3);
    let values: Vec<&str> = lines
        .iter()
        .flat_map(|l| l.split(' '))
        .filter_map(|field| field.strip_prefix("ms="))
        .collect();
    assert!(!values.is_empty(), "{lines:?}");
    for value in values {
        let decimals = value.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 3, "ms={value} in {lines:?}");
    }
}

/// `spot serve` (and its data directory) on a free port with `extra` flags, its stderr
/// lines as they come.
fn serve_logging(extra: &[&str]) -> (KillOnDrop, tempfile::TempDir, u16, mpsc::Receiver<String>) {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(SPOT)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data.path())
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spot serve");
    let rx = test_support::process::stderr_lines(&mut child);
    wait_listening(port, "spot serve");
    test_support::http::remember_key(port, data.path());
    (KillOnDrop(child), data, port, rx)
}

/// One HTTP/1.1 request (`Connection: close`); the response's status line and body.
fn request(port: u16, head: &str, body: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(body).expect("body");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// Polls `done` (the server's state over HTTP) until it holds, 30 s at most.
fn await_state(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lines `rx` holds now (waiting at most 0.5 s for the last of them).
fn lines_so_far(rx: &mpsc::Receiver<String>) -> Vec<String> {
    std::iter::from_fn(|| rx.recv_timeout(Duration::from_millis(500)).ok()).collect()
}

#[test]
fn failed_webhook_deliveries_are_logged_once_per_minute_per_subscription() {
    let (_server, _data, port, rx) = serve_logging(&[]);
    let dead = free_port();
    let body = format!(
        "{{\"topic_filter\":\"#\",\"target_url\":\"http://127.0.0.1:{dead}/hook\",\
         \"target_retry\":false}}"
    );
    let (status, created) = request(
        port,
        &format!(
            "POST /api/subscriptions HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
             Content-Type: application/json\r\nX-Api-Key: {}\r\nContent-Length: {}\r\n\r\n",
            test_support::http::key_for(port).expect("the server's key"),
            body.len()
        ),
        body.as_bytes(),
    );
    assert!(status.contains(" 20"), "{status}: {created}");
    let id = serde_json::from_str::<serde_json::Value>(&created).expect("JSON")["id"].clone();
    let id = id.as_str().map_or_else(|| id.to_string(), str::to_string);
    let mut events = Vec::new();
    events.extend(chunk(
        b"[\"spot\",\"create\",{\"spot_id\":77,\"version\":\"t\"}]\n\n",
    ));
    for n in 1..=4 {
        let presence = format!(
            "[\"presence\",\"create\",{{\"item_code\":\"{n:024x}\",\"proximity\":\"near\"}}]\n\n"
        );
        events.extend(chunk(presence.as_bytes()));
    }
    events.extend_from_slice(b"0\r\n\r\n");
    let (status, _) = request(
        port,
        "POST /api/spots/77/events/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\nContent-Type: text/x-intellifi-events\r\n\r\n",
        &events,
    );
    assert!(status.contains(" 200"), "{status}");
    await_state("3 failed deliveries", || {
        get_json(port, &format!("/api/subscriptions/{id}"))["failed_count"]
            .as_i64()
            .is_some_and(|n| n >= 3)
    });
    let logged: Vec<String> = lines_so_far(&rx)
        .into_iter()
        .filter(|l| l.contains("webhooks: delivery failed"))
        .collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].contains("WARN") && logged[0].contains(&format!("127.0.0.1:{dead}")),
        "{logged:?}"
    );
}

#[test]
fn an_unreachable_mqtt_broker_is_warned_about_less_and_less_often() {
    let broker = format!("mqtt://127.0.0.1:{}/site", free_port());
    let (_server, _data, port, rx) = serve_logging(&["--mqtt", &broker]);
    let errors = || {
        get_text(port, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix("spot_push_mqtt_connection_errors_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    await_state("6 failed connections", || errors() >= 6);
    let warned = lines_so_far(&rx)
        .iter()
        .filter(|l| l.contains("mqtt outlet: broker connection failed"))
        .count();
    // After 1, 2, 4 … reconnect delays: the 1st, 2nd, 4th, 8th failure, not every one.
    assert!(
        (1..=4).contains(&warned),
        "{warned} warnings for 6+ failures"
    );
}
