//! `spot serve`'s refusals as a user sees them on stderr: each says once what is wrong, names
//! the setting (and the environment variable a value came from), and nothing is created
//! when the port is taken; host names are accepted where addresses are.

use std::process::{Command, Output, Stdio};

use test_support::free_port;
use test_support::process::{wait_listening, KillOnDrop};

const SPOT: &str = env!("CARGO_BIN_EXE_spot");

/// Runs `spot serve ARGS` with `env` set, to its end; stderr as text.
fn serve(args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let output = Command::new(SPOT)
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run spot serve");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stderr)
}

#[test]
fn a_port_in_use_is_said_once_with_what_to_do_and_nothing_is_created() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (output, stderr) = serve(&["--listen", &addr, "--data", data.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains(&addr) && stderr.contains("another address"),
        "{stderr}"
    );
    assert!(!data.exists(), "the data directory was created: {stderr}");
}

#[test]
fn a_data_directory_that_is_a_file_is_named_as_such() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let port = free_port().to_string();
    let (output, stderr) = serve(
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data",
            file.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is a file, not a directory"), "{stderr}");
    assert!(!stderr.contains("File exists"), "{stderr}");
}

#[test]
fn a_bad_environment_variable_is_named() {
    let (output, stderr) = serve(&["--check-config"], &[("SPOT_LISTEN", "8080")]);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("SPOT_LISTEN") && stderr.contains("--listen"),
        "{stderr}"
    );
    let (_, stderr) = serve(&["--check-config"], &[("SPOT_MAX_CONNECTIONS", "many")]);
    assert!(stderr.contains("SPOT_MAX_CONNECTIONS"), "{stderr}");
}

#[test]
fn a_duration_with_a_unit_in_the_config_file_asks_for_a_number_of_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spot.toml");
    std::fs::write(&config, "offline-after = \"10s\"\n").unwrap();
    let (output, stderr) = serve(
        &["--config", config.to_str().unwrap(), "--check-config"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("a number of seconds"), "{stderr}");
    assert!(!stderr.contains("f64"), "{stderr}");
}

#[test]
fn listen_takes_a_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(SPOT)
        .args(["serve", "--listen", &format!("localhost:{port}"), "--data"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spot serve");
    let _server = KillOnDrop(child);
    wait_listening(port, "spot serve --listen localhost:PORT");
}
