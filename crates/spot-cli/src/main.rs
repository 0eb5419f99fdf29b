//! `spot`: the one binary. Thin: each subcommand parses its flags and calls a crate.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// mimalloc: the server allocates and frees across threads (ingest tasks decode, the core
/// frees); glibc malloc spent about half of the core thread's time there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod access;
mod color;
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
    /// Print the shell completion script for SHELL on stdout, e.g.
    /// `spot completions bash > /etc/bash_completion.d/spot`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) of spot or of one of its commands on stdout, e.g.
    /// `spot man serve | man -l -`.
    Man {
        /// The command (none: spot itself).
        command: Option<String>,
    },
}

fn main() -> ExitCode {
    spot_server::huge_pages::turn_off();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `--help` and `--version` print and exit 0; errors name the environment variable
            // a wrong value came from.
            let e = with_env_name(e);
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Emulate(args) => emulate::run(args),
        Command::Decode(args) => decode::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Tail(args) => tail::run(args),
        Command::Keys(command) => access::keys(command),
        Command::Spots(command) => access::spots(command),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "spot", &mut script);
            print_bytes(&script)
        }
        Command::Man { command } => man(command.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spot: {}", error_text(&e));
            ExitCode::from(2)
        }
    }
}

/// Writes the manual page of `spot` or of `spot COMMAND` to stdout.
fn man(command: Option<&str>) -> anyhow::Result<ExitCode> {
    let spot = Cli::command();
    let page = match command {
        None => spot,
        Some(name) => {
            let Some(sub) = spot.find_subcommand(name) else {
                let names: Vec<&str> = spot.get_subcommands().map(|c| c.get_name()).collect();
                anyhow::bail!("no command {name:?}; the commands: {}", names.join(", "));
            };
            sub.clone()
                .display_name(format!("spot-{name}"))
                .bin_name(format!("spot {name}"))
                .version(env!("CARGO_PKG_VERSION"))
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    print_bytes(&out)
}

/// Writes `bytes` to stdout; a reader that stopped early (`| head`) is no error.
fn print_bytes(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    match std::io::Write::write_all(&mut std::io::stdout(), bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `e` and its causes joined by `: `, leaving out a cause whose text is said already (an
/// error that puts its source's text into its own message prints it once).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// A clap error about an invalid value, saying which environment variable the value came
/// from when it came from one (clap names only the flag).
fn with_env_name(e: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return e;
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        e.get(ContextKind::InvalidArg),
        e.get(ContextKind::InvalidValue),
    ) else {
        return e;
    };
    let cli = Cli::command();
    let mut commands = vec![&cli];
    commands.extend(cli.get_subcommands());
    let from_env = commands
        .iter()
        .flat_map(|c| c.get_arguments())
        .filter(|a| {
            // `--listen <HOST:PORT>` names `listen`, not `--listen-x`'s argument.
            a.get_long().is_some_and(|long| {
                arg.strip_prefix("--")
                    .and_then(|rest| rest.strip_prefix(long))
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
            })
        })
        .filter_map(|a| a.get_env())
        .find(|var| std::env::var_os(var).is_some_and(|v| v.to_string_lossy() == *value));
    let Some(var) = from_env else {
        return e;
    };
    let message = e.to_string().replacen(
        &format!("'{arg}'"),
        &format!(
            "'{arg}' (from the environment variable {})",
            var.to_string_lossy()
        ),
        1,
    );
    clap::Error::raw(e.kind(), message.trim_start_matches("error: "))
}
