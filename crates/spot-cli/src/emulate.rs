//! `spot emulate`: runs N emulated spots against a server and prints a JSON summary (the
//! total, or with `--summary per-spot` every spot too). The first connection failure of
//! each kind is said on stderr as it happens; the exit status is 2 when events were
//! generated and not acknowledged.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use spot_emulator::buffer::BufferLimits;
use spot_emulator::fleet::{self, FleetConfig};
use spot_emulator::population::PopulationParams;
use spot_emulator::replay::{Recording, ReplayTiming};
use spot_emulator::tls::{TlsClient, Trust};
use spot_emulator::uplink::{ErrorTally, ServerAddr, UplinkConfig};
use spot_emulator::wire::ChunkSplit;

use crate::encode::Format;

/// How event bytes are cut into HTTP chunks.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Split {
    /// One chunk per event.
    Event,
    /// Random chunk lengths, cut anywhere.
    Random,
}

/// How a replay is paced.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Timing {
    /// The recorded times.
    Original,
    /// --rate events per second.
    Rate,
}

/// What the JSON summary on stdout holds.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SummaryKind {
    /// The totals of the run and its settings.
    Total,
    /// The totals, then every spot's counters and `last_error`.
    PerSpot,
}

/// The exit status of a run that ended with events generated and not acknowledged.
const EXIT_UNACKNOWLEDGED: u8 = 2;

/// Flags of `spot emulate` (boxed: they are many, and `Command` holds one of each).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    flags: Box<Flags>,
}

/// The flags themselves.
#[derive(clap::Args)]
struct Flags {
    /// The server, `http://host[:port][/prefix]` or `https://...` (TLS; the public web PKI
    /// roots are trusted unless --ca-cert or --insecure says otherwise).
    #[arg(
        short,
        long,
        required_unless_present = "raw_tcp",
        conflicts_with = "raw_tcp"
    )]
    server: Option<String>,
    /// For an https:// server: trust the certificates of this PEM file (a private CA or the
    /// server's self-signed certificate) instead of the public roots.
    #[arg(long, value_name = "PEM", conflicts_with = "insecure")]
    ca_cert: Option<PathBuf>,
    /// For an https:// server: do not verify its certificate at all (testing only; anyone on
    /// the path can read and change the traffic).
    #[arg(long)]
    insecure: bool,
    /// Stream over plain TCP to HOST:PORT instead of HTTP (spec §4.2; acks come back as
    /// `["ack","update",{"seq":N}]` events).
    #[arg(long, value_name = "HOST:PORT")]
    raw_tcp: Option<String>,
    /// Number of spots.
    #[arg(short = 'n', long, default_value_t = 1)]
    spots: u64,
    /// Serial number of the first spot; the others follow.
    #[arg(long, default_value_t = 1)]
    first_serial: u64,
    /// Events per second per spot; 0 = as fast as the server takes them.
    #[arg(short, long, default_value_t = 10.0)]
    rate: f64,
    /// Seconds to generate events (then buffered events are delivered, see
    /// --drain-secs); none = until Ctrl-C.
    #[arg(
        short,
        long = "duration-secs",
        alias = "duration",
        value_name = "SECONDS"
    )]
    duration: Option<f64>,
    /// After generation stops, keep delivering for at most this many seconds.
    #[arg(
        long = "drain-secs",
        alias = "drain-s",
        value_name = "SECONDS",
        default_value_t = 10.0
    )]
    drain_s: f64,
    /// How long each POST stays open, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    post_ms: u64,
    /// Most bytes of buffered events in one POST body: a POST carrying a backlog ends
    /// early once it holds this many (the next one follows the response at once).
    #[arg(long, default_value_t = spot_emulator::uplink::DEFAULT_MAX_POST_BYTES)]
    max_post_bytes: usize,
    /// Pacing granularity in milliseconds: events of one tick are written together.
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
    /// Encoding of the bodies.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    encoding: Format,
    /// How event bytes are cut into chunks.
    #[arg(long, value_enum, default_value_t = Split::Event)]
    chunk_split: Split,
    /// Keep unacknowledged events (and seq counters, boot counts) in this directory, so a
    /// restart loses nothing. Without it they live in memory only.
    #[arg(long)]
    buffer: Option<PathBuf>,
    /// Most bytes of unacknowledged events per spot; when full the spot stops generating
    /// (counted as events_not_generated_buffer_full).
    #[arg(long, default_value_t = BufferLimits::default().max_bytes)]
    buffer_max_bytes: u64,
    /// fsync the buffer after every write (survives power loss; slower).
    #[arg(long)]
    buffer_fsync: bool,
    /// Seed of the simulated tag populations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Mean number of items present per spot.
    #[arg(long, default_value_t = 50)]
    items: usize,
    /// Share (0..1) of items drawn from a pool shared by all spots.
    #[arg(long, default_value_t = 0.2)]
    shared_share: f64,
    /// Add this many milliseconds to every spot's clock (clock-skew fault).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_skew_ms: i64,
    /// Send 1970 times, like a spot without a clock.
    #[arg(long)]
    no_clock: bool,
    /// Largest reconnect delay in milliseconds (exponential from 100 ms, jittered).
    #[arg(long, default_value_t = 10_000)]
    backoff_max_ms: u64,
    /// Also serve each spot's raw stream (spec §4.2) to whoever connects: spot i on this
    /// address's port + i (port 0: any free port, printed on stderr).
    #[arg(long, value_name = "ADDR")]
    telnet: Option<std::net::SocketAddr>,
    /// Inject a fault (repeatable): cut-mid-chunk:P, stall:P:MS, burst:P:N, malformed:P
    /// (P per POST, or per event for malformed). Each is counted in the summary.
    #[arg(long = "fault", value_name = "SPEC")]
    faults: Vec<String>,
    /// Replay this recorded JSON stream (e.g. `spot decode` output or a telnet capture)
    /// instead of simulating tags; each spot sends it once, then the run ends.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// Pace a replay as recorded (`original`) or at --rate (`rate`; 0 = as fast as possible).
    #[arg(long, value_enum, default_value_t = Timing::Original)]
    replay_timing: Timing,
    /// Runtime worker threads (1 = everything on one core).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// No progress line on stderr.
    #[arg(short, long)]
    quiet: bool,
    /// The JSON summary on stdout: the totals, or the totals and every spot.
    #[arg(long, value_enum, default_value_t = SummaryKind::Total)]
    summary: SummaryKind,
    /// The spots' secret, for a server with `--spot-admission secret` (sent as HTTP Basic
    /// `serial:secret`; on raw TCP as `spot_secret` in the spot create). Every spot sends
    /// it, so it fits one spot (`--spots 1`); for several use --spot-secrets.
    #[arg(long, value_name = "SECRET", conflicts_with = "spot_secrets")]
    spot_secret: Option<String>,
    /// A file of `SERIAL SECRET` lines (what `spot spots enroll --secret` prints; `#`
    /// starts a comment): each spot sends its own.
    #[arg(long, value_name = "FILE")]
    spot_secrets: Option<PathBuf>,
}

/// The secrets of `--spot-secret` (for each of `serials`) or `--spot-secrets`.
fn spot_secrets(
    one: Option<&str>,
    file: Option<&std::path::Path>,
    serials: std::ops::Range<u64>,
) -> anyhow::Result<std::collections::HashMap<u64, String>> {
    if let Some(secret) = one {
        return Ok(serials.map(|s| (s, secret.to_string())).collect());
    }
    let Some(path) = file else {
        return Ok(Default::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut secrets = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let parsed = line
            .split_once(char::is_whitespace)
            .and_then(|(serial, secret)| Some((serial.parse::<u64>().ok()?, secret.trim())));
        match parsed {
            Some((serial, secret)) if !secret.is_empty() => {
                secrets.insert(serial, secret.to_string());
            }
            _ => anyhow::bail!(
                "{}:{}: expected `SERIAL SECRET` (a numeric serial, a space, the secret)",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(secrets)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let args = *args.flags;
    anyhow::ensure!(args.rate >= 0.0, "--rate must be >= 0");
    anyhow::ensure!(
        args.post_ms > 0 && args.tick_ms > 0,
        "--post-ms and --tick-ms must be > 0"
    );
    anyhow::ensure!(args.max_post_bytes > 0, "--max-post-bytes must be > 0");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.shared_share),
        "--shared-share must be within 0..1"
    );
    let server = match (&args.server, &args.raw_tcp) {
        (Some(url), _) => ServerAddr::parse(url)?,
        (None, Some(addr)) => ServerAddr::raw_tcp(addr)?,
        (None, None) => anyhow::bail!("--server or --raw-tcp is required"),
    };
    anyhow::ensure!(
        server.tls || (args.ca_cert.is_none() && !args.insecure),
        "--ca-cert and --insecure apply to an https:// --server only"
    );
    let trust = match (&args.ca_cert, args.insecure) {
        (Some(path), _) => Trust::CaFile(path.clone()),
        (None, true) => Trust::Insecure,
        (None, false) => Trust::PublicRoots,
    };
    let mut uplink = UplinkConfig::new(server);
    uplink.errors = std::sync::Arc::new(ErrorTally::speaking());
    if uplink.server.tls {
        if trust == Trust::Insecure {
            eprintln!(
                "spot emulate: WARNING: --insecure: the server's TLS certificate is NOT verified; \
                 anyone on the network path can impersonate the server and read or change the events"
            );
        }
        uplink.tls = Some(TlsClient::new(trust.clone()).context("--ca-cert")?);
    }
    uplink.raw_tcp = args.raw_tcp.is_some();
    uplink.secrets = std::sync::Arc::new(spot_secrets(
        args.spot_secret.as_deref(),
        args.spot_secrets.as_deref(),
        args.first_serial..args.first_serial.saturating_add(args.spots),
    )?);
    uplink.encoding = args.encoding.encoding();
    uplink.post_ms = args.post_ms;
    uplink.tick_ms = args.tick_ms;
    uplink.max_post_bytes = args.max_post_bytes;
    uplink.rate = args.rate;
    uplink.chunk_split = match args.chunk_split {
        Split::Event => ChunkSplit::Event,
        Split::Random => ChunkSplit::Random,
    };
    uplink.drain_ms = (args.drain_s * 1000.0) as u64;
    uplink.backoff_max_ms = args.backoff_max_ms.max(uplink.backoff_min_ms);
    uplink.clock_offset_ms = (!args.no_clock).then_some(args.clock_skew_ms);
    for spec in &args.faults {
        uplink.faults.add(spec)?;
    }
    anyhow::ensure!(
        uplink.faults.malformed == 0.0 || uplink.encoding == spot_protocol::Encoding::Json,
        "--fault malformed:P is only implemented for --encoding json"
    );
    let replay = match &args.replay {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let recording = Recording::parse(&bytes);
            eprintln!(
                "spot emulate: {}: {} events to replay, {} connection/alive messages skipped, {} malformed",
                path.display(),
                recording.events.len(),
                recording.skipped,
                recording.malformed
            );
            let timing = match args.replay_timing {
                Timing::Original => ReplayTiming::Original,
                Timing::Rate => ReplayTiming::Rate,
            };
            Some((std::sync::Arc::new(recording), timing))
        }
        None => None,
    };
    let cfg = FleetConfig {
        replay,
        uplink,
        spots: args.spots,
        first_serial: args.first_serial,
        duration: args.duration.map(Duration::from_secs_f64),
        seed: args.seed,
        population: PopulationParams {
            target_items: args.items,
            shared_share: args.shared_share,
            shared_seed: args.seed,
            ..PopulationParams::default()
        },
        buffer_dir: args.buffer,
        buffer_limits: BufferLimits {
            max_bytes: args.buffer_max_bytes,
            fsync: args.buffer_fsync,
            ..BufferLimits::default()
        },
    };
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    }
    .enable_all()
    .build()
    .context("starting the async runtime")?;
    let summary = runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = fleet::prepare(&cfg, &stop_rx)?;
        if let Some(addr) = args.telnet {
            for (serial, bound) in fleet::bind_telnet(&mut tasks, addr)
                .await
                .with_context(|| format!("binding telnet on {addr}"))?
            {
                eprintln!("spot {serial}: telnet on {bound}");
            }
        }
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\nspot emulate: stopping; delivering buffered events (Ctrl-C again to quit)"
                );
                let _ = stop_tx.send(true);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        anyhow::Ok(fleet::run(tasks, !args.quiet).await)
    })?;
    let mut json = summary.to_json();
    if args.summary == SummaryKind::Total {
        if let Some(map) = json.as_object_mut() {
            map.remove("per_spot");
        }
    }
    json["settings"] = serde_json::json!({
        "server": cfg.uplink.server.connect,
        "transport": match (cfg.uplink.raw_tcp, cfg.uplink.server.tls) {
            (true, _) => "raw-tcp",
            (false, true) => "https",
            (false, false) => "http",
        },
        "tls_trust": cfg.uplink.tls.as_ref().map(|t| match t.trust() {
            Trust::PublicRoots => "public-roots".to_string(),
            Trust::CaFile(path) => format!("ca-cert {}", path.display()),
            Trust::Insecure => "insecure (not verified)".to_string(),
        }),
        "encoding": cfg.uplink.encoding.media_type(),
        "spots": cfg.spots,
        "first_serial": cfg.first_serial,
        "rate": cfg.uplink.rate,
        "post_ms": cfg.uplink.post_ms,
        "tick_ms": cfg.uplink.tick_ms,
        "max_post_bytes": cfg.uplink.max_post_bytes,
        "seed": cfg.seed,
        "clock_offset_ms": cfg.uplink.clock_offset_ms,
        "faults": {
            "cut_mid_chunk": cfg.uplink.faults.cut_mid_chunk,
            "stall": cfg.uplink.faults.stall,
            "burst": cfg.uplink.faults.burst,
            "malformed": cfg.uplink.faults.malformed,
        },
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    let unacknowledged = summary.unacknowledged();
    if unacknowledged > 0 {
        let errors: Vec<String> = summary
            .errors
            .iter()
            .map(|(kind, n)| format!("{} {n}", kind.name()))
            .collect();
        eprintln!(
            "spot emulate: {unacknowledged} events not acknowledged; connection failures: {}",
            if errors.is_empty() {
                "none".to_string()
            } else {
                errors.join(", ")
            }
        );
    }
    Ok(if !summary.panics.is_empty() {
        ExitCode::from(1)
    } else if unacknowledged > 0 {
        ExitCode::from(EXIT_UNACKNOWLEDGED)
    } else {
        ExitCode::SUCCESS
    })
}
