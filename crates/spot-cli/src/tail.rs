//! `spot tail`: follows the server's event stream (SSE, over HTTP or HTTPS) and prints one
//! event per line; optionally only `--count` events, for at most `--timeout` seconds, with
//! the time each was received.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use spot_protocol::Timestamp;
use spot_push::tail::{follow, TailEvent, TailOptions};

/// Flags of `spot tail`.
#[derive(clap::Args)]
#[command(
    after_help = "Exit status: 0 when the stream ends as asked (--count events \
printed, --timeout reached without --count, stdout closed), 1 when --timeout ends it before \
--count events, 2 on an error."
)]
pub struct Args {
    /// Server base URL (`http://` or `https://`).
    #[arg(
        short,
        long,
        env = "SPOT_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Also trust the certificates of this PEM file for an https:// server (a private CA or
    /// a self-signed certificate), besides the public web PKI roots.
    #[arg(long, value_name = "PEM")]
    ca_cert: Option<std::path::PathBuf>,
    /// Topic filter with MQTT semantics (`+` one level, `#` the rest).
    #[arg(default_value = "#")]
    topic_filter: String,
    /// Start after this event id (replayed from the server's events log).
    #[arg(short, long, value_name = "ID")]
    after_id: Option<u64>,
    /// Exit after printing this many events.
    #[arg(short = 'C', long, value_name = "N")]
    count: Option<u64>,
    /// Exit after this many seconds (status 1 if --count events had not arrived by then).
    #[arg(short = 'W', long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Begin each line with the time the event was received (UTC, RFC 3339, milliseconds).
    #[arg(short = 'T', long)]
    timestamps: bool,
    /// Print JSON lines even on a terminal.
    #[arg(short, long)]
    json: bool,
    /// Colour the lines: `auto` (on a terminal without `NO_COLOR`), `always` or `never`.
    #[arg(long, value_name = "WHEN", value_parser = crate::color::CHOICES, default_value = "auto")]
    color: String,
    /// Wait before reconnecting after the connection broke, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    reconnect_delay_ms: u64,
    #[command(flatten)]
    key: crate::access::KeyArgs,
}

/// One event for a person: `#id topic payload` (`#-` for a raw spot event, which has no
/// id), coloured or not.
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
    let color = human && crate::color::enabled(Some(&args.color), stdout.is_terminal())?;
    let timeout = args
        .timeout
        .map(|secs| {
            Duration::try_from_secs_f64(secs)
                .map_err(|_| anyhow::anyhow!("--timeout {secs}: not a number of seconds"))
        })
        .transpose()?;
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
    let mut printed = 0u64;
    let on_event = |event: TailEvent| {
        let line = if human {
            pretty(&event, color)
        } else {
            event.json
        };
        let mut out = stdout.lock();
        let written = if args.timestamps {
            let now = Timestamp::from_system_time(SystemTime::now());
            match color {
                true => writeln!(out, "\x1b[2m{now}\x1b[0m {line}"),
                false => writeln!(out, "{now} {line}"),
            }
        } else {
            writeln!(out, "{line}")
        };
        printed += 1;
        // A closed stdout (e.g. `| head`) ends the command, and so does the count.
        written.and_then(|()| out.flush()).is_ok() && args.count.is_none_or(|n| printed < n)
    };
    let on_reconnect = |why: &str| eprintln!("spot tail: {why}; reconnecting");
    if args.count == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    let followed = runtime.block_on(async {
        let following = follow(&options, on_event, on_reconnect);
        match timeout {
            Some(limit) => tokio::time::timeout(limit, following).await.ok(),
            None => Some(following.await),
        }
    });
    match (followed, args.count) {
        (Some(result), _) => result?,
        (None, None) => {}
        (None, Some(count)) => {
            eprintln!(
                "spot tail: --timeout {}s reached before {count} events",
                args.timeout.unwrap_or_default()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
