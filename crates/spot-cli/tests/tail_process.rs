//! `spot tail` as a process against `spot serve` as a process: a spot POSTs a presence and
//! tail prints its derived event as a JSON line (stdout is a pipe).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use test_support::fixtures::localhost_cert;
use test_support::free_port;
use test_support::http::chunk;
use test_support::process::{spawn_serve, spawn_serve_tls, KillOnDrop};

const SPOT: &str = env!("CARGO_BIN_EXE_spot");

/// A spot's POST of a `presence create` (item `ab01`, proximity `immediate`), answered 200.
fn post_presence(port: u16) {
    let mut spot = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut request = b"POST /api/spots/900/events/ HTTP/1.1\r\nHost: t\r\n\
        Transfer-Encoding: chunked\r\nContent-Type: text/x-intellifi-events\r\n\r\n"
        .to_vec();
    request.extend(chunk(
        b"[\"spot\",\"create\",{\"spot_id\":900,\"version\":\"t\"}]\n\n",
    ));
    request.extend(chunk(
        b"[\"presence\",\"create\",{\"item_code\":\"ab01\",\"item_codetype\":\"EPC Gen2\",\
\"time_started\":\"2024-01-01T00:00:00Z\",\"time_last\":\"2024-01-01T00:00:01Z\",\
\"proximity\":\"immediate\",\"hold_delay_s\":4}]\n\n",
    ));
    request.extend_from_slice(b"0\r\n\r\n");
    spot.write_all(&request).expect("POST");
    let mut head = [0u8; 12];
    spot.read_exact(&mut head).expect("response");
    assert_eq!(&head, b"HTTP/1.1 200");
}

#[test]
fn tail_prints_the_presence_a_spot_posts_as_a_json_line() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _server = KillOnDrop(spawn_serve(SPOT, data.path(), port, &[]));
    // From id 0: tail replays from the events log, so the POST may come before it listens.
    let mut tail = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_spot"))
            .args(["tail", "--server", &format!("http://127.0.0.1:{port}")])
            .args(["--after-id", "0", "presences/#", "--data"])
            .arg(data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn spot tail"),
    );
    post_presence(port);

    let stdout = tail.0.stdout.take().expect("stdout");
    let line = BufReader::new(stdout)
        .lines()
        .next()
        .expect("a line")
        .expect("text");
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    let topic = event["topic"].as_str().expect("topic");
    assert!(topic.starts_with("presences/"), "{topic}");
    assert!(
        topic.contains("/created/") && topic.ends_with("/immediate"),
        "{topic}"
    );
    assert_eq!(event["payload"]["resource"]["proximity"], "immediate");
    assert_eq!(event["payload"]["time_event"], "2024-01-01T00:00:01Z");
    assert!(event["id"].as_u64().is_some_and(|id| id > 0), "{line}");
}

/// `spot serve` over HTTPS with the self-signed test certificate for `localhost`.
fn spawn_tls_server(data: &std::path::Path, port: u16) -> KillOnDrop {
    KillOnDrop(spawn_serve_tls(SPOT, data, port))
}

/// A spot (`spot emulate` over HTTPS) posts events; `spot tail --server https://…
/// --ca-cert` prints their derived events from the first id on.
#[test]
fn tail_over_https_with_ca_cert_prints_the_derived_events() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _server = spawn_tls_server(data.path(), port);
    let server = format!("https://localhost:{port}");
    let ca = localhost_cert();
    let admin_key = std::fs::read_to_string(data.path().join("admin.key")).expect("admin.key");
    let emulate = Command::new(env!("CARGO_BIN_EXE_spot"))
        .args(["emulate", "--server", &server, "--ca-cert"])
        .arg(&ca)
        .args(["--spots", "1", "--first-serial", "830", "--rate", "50"])
        .args([
            "--duration",
            "0.3",
            "--drain-s",
            "20",
            "--quiet",
            "--post-ms",
            "100",
        ])
        .output()
        .expect("run spot emulate");
    assert!(
        emulate.status.success(),
        "{}",
        String::from_utf8_lossy(&emulate.stderr)
    );
    let mut tail = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_spot"))
            .args(["tail", "--server", &server, "--ca-cert"])
            .arg(&ca)
            .args(["--after-id", "0", "#"])
            .env("SPOT_KEY", admin_key.trim())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn spot tail"),
    );
    let stdout = tail.0.stdout.take().expect("stdout");
    let events: Vec<serde_json::Value> = BufReader::new(stdout)
        .lines()
        .take(4)
        .map(|line| serde_json::from_str(&line.expect("text")).expect("a JSON line"))
        .collect();
    let ids: Vec<u64> = events
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, [1, 2, 3, 4], "{events:?}");
    // First the audit entry of the first admin key, then the spot's events.
    let topic = events[0]["topic"].as_str().expect("topic");
    assert!(
        topic.starts_with("keys/") && topic.ends_with("/created"),
        "{topic}"
    );
    let topic = events[1]["topic"].as_str().expect("topic");
    assert!(
        topic.starts_with("spots/") && topic.ends_with("/connected/830"),
        "{topic}"
    );
}

/// Without `--ca-cert` only the public roots are trusted: the self-signed server is
/// refused with the TLS reason (and tail keeps retrying); `--ca-cert` for an `http://`
/// server is refused at once.
#[test]
fn tail_names_the_certificate_error_and_refuses_a_ca_for_plain_http() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _server = spawn_tls_server(data.path(), port);
    let mut tail = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_spot"))
            .args(["tail", "--server", &format!("https://localhost:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn spot tail"),
    );
    let stderr = tail.0.stderr.take().expect("stderr");
    let line = BufReader::new(stderr)
        .lines()
        .next()
        .expect("a line")
        .expect("text");
    assert!(
        line.contains("the server's certificate is not signed by a CA this client trusts")
            && line.contains("--ca-cert PEM")
            && line.ends_with("; reconnecting"),
        "{line}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_spot"))
        .args(["tail", "--server", "http://127.0.0.1:9", "--ca-cert"])
        .arg(localhost_cert())
        .output()
        .expect("run spot tail");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the server is not https://"), "{stderr}");
}

/// `-C N` ends tail after N events (exit 0), `--timestamps` puts the receive time before
/// each JSON line.
#[test]
fn tail_with_a_count_exits_after_that_many_events_each_with_its_time() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _server = KillOnDrop(spawn_serve(SPOT, data.path(), port, &[]));
    post_presence(port);
    let out = Command::new(SPOT)
        .args(["tail", "-s", &format!("http://127.0.0.1:{port}")])
        .args([
            "-a",
            "0",
            "-C",
            "2",
            "-W",
            "60",
            "--timestamps",
            "#",
            "--data",
        ])
        .arg(data.path())
        .output()
        .expect("run spot tail");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for line in lines {
        let (time, json) = line.split_once(' ').expect("a time column");
        assert!(
            spot_protocol::Timestamp::parse(time).is_some() && time.ends_with('Z'),
            "{line}"
        );
        let event: serde_json::Value = serde_json::from_str(json).expect("a JSON line");
        assert!(event["id"].as_u64().is_some(), "{line}");
    }
}

/// `-W` ends tail: status 1 when `-C` events had not arrived, 0 without `-C`.
#[test]
fn tail_with_a_timeout_exits_by_itself() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _server = KillOnDrop(spawn_serve(SPOT, data.path(), port, &[]));
    let server = format!("http://127.0.0.1:{port}");
    let out = Command::new(SPOT)
        .args([
            "tail",
            "-s",
            &server,
            "-C",
            "1",
            "-W",
            "0.5",
            "nothing/#",
            "--data",
        ])
        .arg(data.path())
        .output()
        .expect("run spot tail");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("before 1 events"), "{stderr}");
    let out = Command::new(SPOT)
        .args(["tail", "-s", &server, "-W", "0.5", "nothing/#", "--data"])
        .arg(data.path())
        .output()
        .expect("run spot tail");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// `spot completions SHELL` and `spot man [COMMAND]` print what shells and `man` read.
#[test]
fn completions_and_manual_pages_are_printed() {
    let out = Command::new(SPOT)
        .args(["completions", "bash"])
        .output()
        .expect("run spot completions");
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("_spot()") && script.contains("--timestamps"),
        "{script}"
    );
    let out = Command::new(SPOT)
        .args(["man", "tail"])
        .output()
        .expect("run spot man");
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") && page.contains(".TH spot-tail"),
        "{page}"
    );
    assert!(page.contains("\\-\\-count"), "{page}");
}
