//! The configurations README.md shows load as written (`spot serve --check-config`), and
//! `spot serve` refuses bad settings before it creates anything.

use std::path::Path;
use std::process::{Command, Output};

const SPOT: &str = env!("CARGO_BIN_EXE_spot");
const README: &str = include_str!("../../../README.md");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// The ```` ```toml ```` blocks of `markdown`, with the line each starts on.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        match current.as_mut() {
            None if line.trim() == "```toml" => current = Some((n + 2, String::new())),
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    assert!(
        current.is_none(),
        "README.md: a ```toml block is not closed"
    );
    blocks
}

/// Lines outside the toml blocks that look like a setting of the file (`key = value`):
/// a configuration the test would not load.
fn stray_settings(markdown: &str) -> Vec<String> {
    let mut inside = false;
    let mut stray = Vec::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            inside = !inside && trimmed == "```toml";
            continue;
        }
        let key = trimmed.split(" = ").next().unwrap_or_default();
        if !inside
            && trimmed.contains(" = ")
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '-')
        {
            stray.push(line.to_owned());
        }
    }
    stray
}

/// `spot serve ARGS` with no `SPOT_*` variable of the environment.
fn serve(args: &[&str]) -> Output {
    let mut command = Command::new(SPOT);
    command.arg("serve").args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SPOT_") {
            command.env_remove(name);
        }
    }
    command.output().expect("spot runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn every_configuration_of_the_readme_loads() {
    let blocks = toml_blocks(README);
    assert!(
        !blocks.is_empty(),
        "README.md shows no ```toml configuration"
    );
    let stray = stray_settings(README);
    assert!(
        stray.is_empty(),
        "README.md settings outside a ```toml block (not checked): {stray:#?}"
    );
    // The README's /etc/spot/*.pem stand for the reader's files: here, real ones.
    let etc = tempfile::tempdir().unwrap();
    for (name, fixture) in [
        ("cert.pem", "localhost-cert.pem"),
        ("key.pem", "localhost-key.pem"),
        ("ca.pem", "localhost-cert.pem"),
    ] {
        std::fs::copy(Path::new(FIXTURES).join(fixture), etc.path().join(name)).unwrap();
    }
    let data = etc.path().join("not-created");
    for (line, text) in blocks {
        let text = text
            .replace("/etc/spot/", &format!("{}/", etc.path().display()))
            .replace(
                "\"/var/lib/spot\"",
                &format!("{:?}", data.display().to_string()),
            );
        let file = etc.path().join("spot.toml");
        std::fs::write(&file, &text).unwrap();
        let output = serve(&["--check-config", "--config", file.to_str().unwrap()]);
        assert!(
            output.status.success(),
            "README.md line {line}: the configuration is refused: {}\n{text}",
            stderr(&output)
        );
        assert!(!data.exists(), "--check-config created the data directory");
    }
}

#[test]
fn check_config_refuses_what_serve_would() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["--tls-cert", missing, "--tls-key", missing],
            "missing.pem",
        ),
        (vec!["--webhook-ca-cert", missing], "missing.pem"),
        (
            vec![
                "--mqtt",
                "mqtt://broker",
                "--mqtt-ca-cert",
                &format!("{FIXTURES}/localhost-cert.pem"),
            ],
            "mqtts://",
        ),
    ] {
        let output = serve(&[&["--check-config"][..], &args].concat());
        assert!(!output.status.success(), "{args:?} accepted");
        assert!(
            stderr(&output).contains(needle),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn missing_tls_files_are_refused_before_the_data_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cert = dir.path().join("cert.pem");
    let output = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        dir.path().join("key.pem").to_str().unwrap(),
    ]);
    assert!(!output.status.success(), "started without its TLS files");
    assert!(stderr(&output).contains("cert.pem"), "{}", stderr(&output));
    assert!(
        !data.exists(),
        "the data directory was created before the check"
    );
}
