//! `spot emulate` as a process when delivery fails, and when it does not: the first
//! failure of each kind on stderr, the exit status, and the summary's shape.

use std::process::{Command, Output};

use serde_json::Value;
use test_support::free_port;
use test_support::process::spawn_serve;

fn emulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spot"))
        .arg("emulate")
        .args(args)
        .args(["--quiet", "--post-ms", "100", "--backoff-max-ms", "100"])
        .output()
        .expect("run spot emulate")
}

fn summary(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("JSON summary on stdout")
}

/// Against a closed port: the refusal is said once (though every spot retries many times),
/// counted in the total, and the run exits 2; the summary is the total only.
#[test]
fn emulate_against_a_closed_port_says_why_once_and_exits_2() {
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let out = emulate(&[
        "--server",
        &server,
        "--spots",
        "3",
        "--rate",
        "100",
        "--duration",
        "0.5",
        "--drain-s",
        "0.5",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let said = stderr
        .lines()
        .filter(|l| l.contains("first connection_refused error"))
        .collect::<Vec<_>>();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].contains(&format!("connect 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("events not acknowledged"), "{stderr}");
    let json = summary(&out);
    let refused = json["total"]["errors"]["connection_refused"]
        .as_u64()
        .unwrap();
    assert!(refused > 3, "every attempt counted: {refused}");
    assert!(json["total"]["events_generated"].as_u64().unwrap() > 0);
    assert_eq!(json["total"]["events_acked"], 0);
    assert!(json.get("per_spot").is_none(), "total only by default");

    let out = emulate(&[
        "--server",
        &server,
        "--spots",
        "2",
        "--duration",
        "0.2",
        "--drain-s",
        "0",
        "--summary",
        "per-spot",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let json = summary(&out);
    let spots = json["per_spot"].as_array().unwrap();
    assert_eq!(spots.len(), 2);
    assert!(spots[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("connect 127.0.0.1"));
}

/// Against `spot serve`: everything acknowledged, nothing on stderr, exit 0, and both ack
/// latencies (from generation and from the end of the POST body) reported.
#[test]
fn emulate_against_spot_serve_exits_0_with_both_latencies() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = spawn_serve(env!("CARGO_BIN_EXE_spot"), dir.path(), port, &[]);
    let out = emulate(&[
        "--server",
        &format!("http://127.0.0.1:{port}"),
        "--rate",
        "100",
        "--duration",
        "0.5",
        "--drain-s",
        "20",
    ]);
    server.kill().unwrap();
    server.wait().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("first "), "{stderr}");
    let json = summary(&out);
    let total = &json["total"];
    let generated = total["events_generated"].as_u64().unwrap();
    assert!(generated > 0);
    assert_eq!(total["events_acked"], generated);
    assert_eq!(total["errors"], serde_json::json!({}));
    let from_body_end = total["ack_latency_from_body_end_ms"]["max"]
        .as_f64()
        .unwrap();
    let from_generation = total["ack_latency_ms"]["max"].as_f64().unwrap();
    assert!(from_body_end > 0.0 && from_generation > 0.0, "{total}");
}
