//! `spot keys` and `spot spots` as processes on a running `spot serve`'s data directory,
//! and `spot emulate --spot-secrets` against `--spot-admission secret`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use test_support::free_port;
use test_support::process::{spawn_serve, KillOnDrop};

const SPOT: &str = env!("CARGO_BIN_EXE_spot");

fn spot(args: &[&str], data: &std::path::Path) -> Output {
    let out = Command::new(SPOT)
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run spot");
    assert!(out.status.success(), "spot {args:?}: {out:?}");
    out
}

/// The status of `GET path` with `key` (none: no header).
fn status(port: u16, path: &str, key: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let key = key.map_or_else(String::new, |k| format!("X-Api-Key: {k}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\n{key}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    raw[9..12].parse().unwrap()
}

/// Polls until `GET /api/spots` with `key` answers `want`. The server picks up another
/// process' change within 250 ms; the deadline (10 s) only bounds a broken server, as a
/// loaded CI machine took over a second (a timed assertion is a benchmark's job).
fn await_status(port: u16, key: &str, want: u16) {
    let started = Instant::now();
    while status(port, "/api/spots", Some(key)) != want {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not {want} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn keys_made_and_revoked_by_the_cli_work_on_a_running_server_without_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = KillOnDrop(spawn_serve(SPOT, data.path(), port, &[]));
    assert_eq!(status(port, "/api/spots", None), 401);
    let created = spot(
        &["keys", "create", "--role", "read", "--label", "wall"],
        data.path(),
    );
    let key = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert!(key.starts_with("spot_"), "{key}");
    await_status(port, &key, 200);
    // A read key may not write.
    assert_eq!(status(port, "/api/keys", Some(&key)), 403);
    let listed = String::from_utf8(spot(&["keys", "list"], data.path()).stdout).unwrap();
    assert!(
        listed.contains("wall") && listed.contains("read"),
        "{listed}"
    );
    assert!(
        !listed.contains(&key[18..]),
        "a secret was listed: {listed}"
    );
    let id = &key[5..17];
    spot(&["keys", "revoke", id], data.path());
    await_status(port, &key, 401);
}

#[test]
fn spots_enrolled_with_secrets_by_the_cli_are_admitted_and_others_refused() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = KillOnDrop(spawn_serve(
        SPOT,
        data.path(),
        port,
        &["--spot-admission".as_ref(), "secret".as_ref()],
    ));
    let enrolled = spot(&["spots", "enroll", "--secret", "910", "911"], data.path());
    let secrets = String::from_utf8(enrolled.stdout).unwrap();
    assert_eq!(secrets.lines().count(), 2, "{secrets}");
    let file = data.path().join("secrets.txt");
    std::fs::write(&file, format!("# from spot spots enroll\n{secrets}")).unwrap();
    let emulate = |first: &str, spots: &str| {
        Command::new(SPOT)
            .args(["emulate", "--server", &format!("http://127.0.0.1:{port}")])
            .args(["--spots", spots, "--first-serial", first, "--rate", "20"])
            .args(["--duration-secs", "0.5", "--drain-secs", "10", "--quiet"])
            .arg("--spot-secrets")
            .arg(&file)
            .output()
            .expect("run spot emulate")
    };
    let admitted = emulate("910", "2");
    assert!(admitted.status.success(), "{admitted:?}");
    let summary: serde_json::Value = serde_json::from_slice(&admitted.stdout).expect("JSON");
    let total = &summary["total"];
    assert!(total["events_acked"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(
        total["events_acked"], total["events_generated"],
        "{summary}"
    );
    // 912 has no secret in the file, and is not enrolled: refused, and the emulator says so.
    let refused = emulate("912", "1");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("401") || stderr.contains("403"), "{stderr}");
    let listed = String::from_utf8(spot(&["spots", "list"], data.path()).stdout).unwrap();
    assert_eq!(listed.lines().count(), 2, "{listed}");
}
