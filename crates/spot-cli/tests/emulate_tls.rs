//! `spot emulate --server https://...` as processes against `spot serve --tls-cert`: the
//! `--ca-cert` and `--insecure` flags, and their refusals.
//!
//! The certificate in `fixtures/` is a self-signed test certificate for `localhost` (EC P-256,
//! valid until 2126), made with
//! `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500
//! -subj /CN=localhost -addext subjectAltName=DNS:localhost
//! -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=serverAuth`.

use serde_json::Value;
use std::process::{Child, Command, Output};

use test_support::fixtures::{localhost_cert, localhost_key};
use test_support::free_port;
use test_support::http::get_json;
use test_support::process::{spawn_serve, spawn_serve_tls};

/// `spot serve`, with the test certificate when `tls`.
fn spawn_server(data: &std::path::Path, port: u16, tls: bool) -> Child {
    let spot = env!("CARGO_BIN_EXE_spot");
    if tls {
        spawn_serve_tls(spot, data, port)
    } else {
        spawn_serve(spot, data, port, &[])
    }
}

fn emulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spot"))
        .arg("emulate")
        .args(args)
        .args(["--quiet", "--post-ms", "100"])
        .output()
        .expect("run spot emulate")
}

fn summary(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON summary on stdout")
}

/// Every event reaches `spot serve --tls-cert` with `--ca-cert`; the server, killed and
/// restarted without TLS on the same data, holds each of them (seq and count).
#[test]
fn emulate_over_https_with_ca_cert_delivers_everything_to_spot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = spawn_server(dir.path(), port, true);
    let ca = localhost_cert();
    let out = emulate(&[
        "--server",
        &format!("https://localhost:{port}"),
        "--ca-cert",
        ca.to_str().unwrap(),
        "--spots",
        "2",
        "--first-serial",
        "810",
        "--rate",
        "200",
        "--duration",
        "0.5",
        "--drain-s",
        "20",
        "--summary",
        "per-spot",
    ]);
    server.kill().unwrap();
    server.wait().unwrap();
    let json = summary(&out);
    assert_eq!(json["settings"]["transport"], "https");
    let total = &json["total"];
    let generated = total["events_generated"].as_u64().unwrap();
    assert!(generated > 50, "generated {generated}");
    assert_eq!(total["events_acked"], generated);
    // A reconnect (seen once in CI, cause not kept) is allowed: delivery is the claim.
    if total["reconnects"] != 0 {
        let errors: Vec<&Value> = json["per_spot"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["last_error"])
            .collect();
        eprintln!("reconnects {}: last errors {errors:?}", total["reconnects"]);
    }

    let mut server = spawn_server(dir.path(), port, false);
    for spot in json["per_spot"].as_array().unwrap() {
        let serial = spot["serial"].as_u64().unwrap();
        let generated = spot["events_generated"].as_u64().unwrap();
        let held = get_json(
            port,
            &format!("/api/spots?serial_number={serial}&results_only=true"),
        );
        // Each event once, plus the connection's spot create and config create.
        assert_eq!(held[0]["event_counter"], generated + 2, "spot {serial}");
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

/// `--insecure` connects to a certificate nobody vouched for, and says so loudly.
#[test]
fn emulate_insecure_warns_and_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = spawn_server(dir.path(), port, true);
    let out = emulate(&[
        "--server",
        &format!("https://127.0.0.1:{port}"),
        "--insecure",
        "--rate",
        "100",
        "--duration",
        "0.3",
        "--drain-s",
        "20",
    ]);
    server.kill().unwrap();
    server.wait().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WARNING: --insecure") && stderr.contains("NOT verified"),
        "{stderr}"
    );
    let json = summary(&out);
    let generated = json["total"]["events_generated"].as_u64().unwrap();
    assert!(generated > 0);
    assert_eq!(json["total"]["events_acked"], generated);
    assert_eq!(json["settings"]["tls_trust"], "insecure (not verified)");
}

/// Without --ca-cert the public roots are trusted, which a self-signed certificate is not:
/// the run ends with nothing acked (exit 2), every attempt counted, and the TLS reason in
/// last_error and (once) on stderr.
#[test]
fn emulate_without_ca_cert_refuses_a_self_signed_server_with_a_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = spawn_server(dir.path(), port, true);
    let out = emulate(&[
        "--server",
        &format!("https://localhost:{port}"),
        "--rate",
        "100",
        "--duration",
        "0.3",
        "--drain-s",
        "0.3",
        "--summary",
        "per-spot",
    ]);
    server.kill().unwrap();
    server.wait().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.matches("first tls error").count(), 1, "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON summary on stdout");
    assert_eq!(json["total"]["events_acked"], 0);
    assert!(json["total"]["reconnects"].as_u64().unwrap() >= 1);
    let error = json["per_spot"][0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("TLS handshake with localhost: the server's certificate is not signed by a CA this client trusts")
            && error.contains("with --ca-cert PEM"),
        "{error}"
    );
}

#[test]
fn tls_flags_are_refused_where_they_do_not_apply_or_the_file_is_unusable() {
    let out = emulate(&["--server", "http://127.0.0.1:9", "--insecure"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("apply to an https:// --server only"),
        "{stderr}"
    );

    let missing = localhost_cert().with_file_name("no-such-ca.pem");
    let out = emulate(&[
        "--server",
        "https://127.0.0.1:9",
        "--ca-cert",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-ca.pem"), "{stderr}");

    // A private key is not a certificate.
    let key = localhost_key();
    let out = emulate(&[
        "--server",
        "https://127.0.0.1:9",
        "--ca-cert",
        key.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("localhost-key.pem") && stderr.contains("no CERTIFICATE"),
        "{stderr}"
    );
}
