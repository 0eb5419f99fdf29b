//! `spot`: the one binary. Thin: each subcommand parses its flags and calls a crate.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the server allocates and frees across threads (ingest tasks decode, the core
/// frees); glibc malloc spent about half of the core thread's time there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod access;
mod decode;
mod emulate;
mod encode;
mod serve;
mod tail;

/// Spot protocol tools: server, emulator and codecs for RFID / BLE readers.
#[derive(Parser)]
#[command(name = "spot", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: ingest from spots, keep the live state, serve the REST API.
    Serve(Box<serve::Args>),
    /// Emulate one or many spots against a server.
    Emulate(emulate::Args),
    /// Decode a spot event stream and print one compact JSON event per line.
    ///
    /// Each event is printed normalised, as the server understands it: values typed
    /// (`"spot_id":"201"` → `201`), times with milliseconds (`.29Z` → `.290Z`), known fields
    /// first, compact JSON. `--raw` prints each message's text as received instead.
    ///
    /// Input: a JSON event stream, a protobuf stream (`--from pb`), or captured HTTP/1.1
    /// POSTs (`--from http`, chosen by itself when the input starts with a request line or a
    /// chunk-size line): heads read, bodies de-chunked, each decoded by its `Content-Type`.
    Decode(decode::Args),
    /// Read a JSON event stream and write it in the chosen encoding.
    Encode(encode::Args),
    /// Follow the server's event stream: one event per line (JSON lines when piped).
    Tail(tail::Args),
    /// Manage the API keys of a server's data directory (stopped or running).
    #[command(subcommand)]
    Keys(access::KeysCommand),
    /// Enrol spots for `--spot-admission enrolled|secret` (stopped or running server).
    #[command(subcommand)]
    Spots(access::SpotsCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Emulate(args) => emulate::run(args),
        Command::Decode(args) => decode::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Tail(args) => tail::run(args),
        Command::Keys(command) => access::keys(command),
        Command::Spots(command) => access::spots(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spot: {e:#}");
            ExitCode::from(2)
        }
    }
}
