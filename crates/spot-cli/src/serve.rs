//! `spot serve`. PLACEHOLDER: being written.

use std::process::ExitCode;

/// Flags of `spot serve`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`spot serve` is not built yet")
}
