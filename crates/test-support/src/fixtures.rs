//! Fixture files found from the workspace checkout (relative to this crate's manifest, so a
//! clean clone finds them wherever it is): spot-protocol's golden fixtures (the vendor
//! captures among them; `json_golden` blesses the expected files there) and the self-signed
//! `localhost` test certificate kept beside spot-cli's tests (its unit tests read it too).

use std::path::PathBuf;

/// The workspace's `crates/` folder.
fn crates_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The path of spot-protocol's golden fixture `name` (e.g. `realistic-mix.events`).
pub fn protocol(name: &str) -> PathBuf {
    crates_dir().join("spot-protocol/tests/fixtures").join(name)
}

/// The bytes of spot-protocol's golden fixture `name`; panics naming the path.
pub fn read_protocol(name: &str) -> Vec<u8> {
    let path = protocol(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The self-signed test certificate for `localhost` (EC P-256, valid until 2126, PEM).
pub fn localhost_cert() -> PathBuf {
    crates_dir().join("spot-cli/tests/fixtures/localhost-cert.pem")
}

/// The private key of [`localhost_cert`] (PEM).
pub fn localhost_key() -> PathBuf {
    crates_dir().join("spot-cli/tests/fixtures/localhost-key.pem")
}
