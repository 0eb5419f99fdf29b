//! `spot tail`: follows the server's event stream (SSE, over HTTP or HTTPS) and prints one
//! event per line.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use spot_push::tail::{follow, TailEvent, TailOptions};

/// Flags of `spot tail`.
#[derive(clap::Args)]
pub struct Args {
    /// Server base URL (`http://` or `https://`).
    #[arg(long, env = "SPOT_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Also trust the certificates of this PEM file for an https:// server (a private CA or
    /// a self-signed certificate), besides the public web PKI roots.
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<std::path::PathBuf>,
    /// Topic filter with MQTT semantics (`+` one level, `#` the rest).
    #[arg(default_value = "#")]
    topic_filter: String,
    /// Start after this event id (replayed from the server's events log).
    #[arg(long)]
    after_id: Option<u64>,
    /// Print JSON lines even on a terminal.
    #[arg(long)]
    json: bool,
    /// Wait before reconnecting after the connection broke, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    reconnect_delay_ms: u64,
    #[command(flatten)]
    key: crate::access::KeyArgs,
}

/// One event for a person: `#id topic payload` (`#-` for a raw spot event, which has no
/// id), colored unless NO_COLOR is set.
fn pretty(event: &TailEvent, color: bool) -> String {
    let payload = event.payload.to_string();
    let id = event
        .id
        .map_or_else(|| "-".to_string(), |id| id.to_string());
    if color {
        format!(
            "\x1b[2m#{id}\x1b[0m \x1b[1;36m{}\x1b[0m {}",
            event.topic, payload
        )
    } else {
        format!("#{id} {} {}", event.topic, payload)
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let human = stdout.is_terminal() && !args.json;
    let color = human && std::env::var_os("NO_COLOR").is_none();
    let options = TailOptions {
        server: args.server,
        ca_cert: args.ca_cert,
        topic_filter: args.topic_filter,
        after_id: args.after_id,
        reconnect_delay: Duration::from_millis(args.reconnect_delay_ms),
        key: args.key.resolve()?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(follow(
        &options,
        |event| {
            let line = if human {
                pretty(&event, color)
            } else {
                event.json
            };
            let mut out = stdout.lock();
            // A closed stdout (e.g. `| head`) ends the command.
            writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
        },
        |why| eprintln!("spot tail: {why}; reconnecting"),
    ))?;
    Ok(ExitCode::SUCCESS)
}
