//! `spot serve`'s logs as a log pipeline reads them: JSON lines with `--log-format json`,
//! and no ANSI colour codes when stderr is not a terminal (unless `--color always`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use test_support::process::KillOnDrop;

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
    let stderr = child.stderr.take().unwrap();
    let _server = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
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
