//! TLS failures as a user reads them on stderr, in words: `spot emulate` against a server
//! whose certificate is the CA certificate the usual `openssl req -x509` one-liner makes,
//! and `spot serve`'s log of the refused handshakes, rate limited.
//!
//! `fixtures/ca-as-server-*.pem` were made with that one-liner (openssl 3 marks the result
//! `basicConstraints CA:TRUE`): `openssl req -x509 -newkey ec -pkeyopt
//! ec_paramgen_curve:P-256 -nodes -keyout ca-as-server-key.pem -out ca-as-server-cert.pem
//! -days 36500 -subj /CN=localhost -addext subjectAltName=DNS:localhost`.

use std::process::{Command, Stdio};

use std::time::Duration;

use test_support::free_port;
use test_support::process::{wait_listening, KillOnDrop};

const SPOT: &str = env!("CARGO_BIN_EXE_spot");
const CERT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ca-as-server-cert.pem"
);
const KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ca-as-server-key.pem"
);

#[test]
fn a_ca_certificate_served_as_the_servers_is_said_in_words_by_both_sides() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(SPOT)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data.path())
        .args(["--tls-cert", CERT, "--tls-key", KEY, "--color", "never"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spot serve");
    let lines = test_support::process::stderr_lines(&mut child);
    let _server = KillOnDrop(child);
    wait_listening(port, "spot serve");

    let out = Command::new(SPOT)
        .args(["emulate", "--server", &format!("https://localhost:{port}")])
        .args(["--ca-cert", CERT, "--rate", "50", "--duration-secs", "0.5"])
        .args(["--drain-secs", "1", "--quiet", "--post-ms", "100"])
        .output()
        .expect("run spot emulate");
    let emulate_stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{emulate_stderr}");
    assert!(
        emulate_stderr.contains(
            "the server's certificate is a CA certificate (basicConstraints CA:TRUE) used as a \
             server certificate"
        ) && emulate_stderr.contains("make a leaf certificate"),
        "{emulate_stderr}"
    );
    assert!(!emulate_stderr.contains("OtherError"), "{emulate_stderr}");

    // The emulator redialled several times; the server said so once (then counts).
    let refused: Vec<String> =
        std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(2)).ok())
            .filter(|line| line.contains("TLS handshake failed"))
            .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    // The emulator's rustls closes without sending its alert: the server hears the close.
    assert!(
        refused[0].contains("WARN") && refused[0].contains("trust"),
        "{refused:?}"
    );
}
