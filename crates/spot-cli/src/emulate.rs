//! `spot emulate`. PLACEHOLDER: being written.

use std::process::ExitCode;

/// Flags of `spot emulate`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`spot emulate` is not built yet")
}
