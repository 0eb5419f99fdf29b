//! `spot serve`: flags (and `SPOT_*` environment variables) → [`spot_server::ServerConfig`],
//! tracing logs, a startup banner, and a graceful stop on Ctrl-C / SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use spot_server::{Server, ServerConfig, ServerLimits, SyncMode};

/// Flags of `spot serve`.
#[derive(clap::Args)]
pub struct Args {
    /// HTTP address for spot POSTs and the REST API.
    #[arg(long, env = "SPOT_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Data directory (SQLite database `spot.db`), created on first start.
    #[arg(long, env = "SPOT_DATA", default_value = "spot-data")]
    data: PathBuf,
    /// Raw TCP ingest address (off unless given).
    #[arg(long, env = "SPOT_TCP_LISTEN")]
    tcp_listen: Option<SocketAddr>,
    /// A spot telnet service to dial and ingest (spec §4.2), redialled with backoff.
    /// Repeatable; the environment variable takes a comma-separated list.
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "SPOT_PULL",
        value_delimiter = ','
    )]
    pull: Vec<String>,
    /// Seconds without traffic after which a spot is offline.
    #[arg(long, env = "SPOT_OFFLINE_AFTER", default_value_t = 10.0)]
    offline_after: f64,
    /// Hours of derived and upstream events kept.
    #[arg(long, env = "SPOT_EVENTS_RETENTION_HOURS", default_value_t = 24.0)]
    events_retention_hours: f64,
    /// fsync every commit (`full`, survives power loss) or not (`normal`, survives a crash).
    #[arg(long, env = "SPOT_SYNC", default_value = "full", value_parser = ["full", "normal"])]
    sync: String,
    /// Largest single event in bytes.
    #[arg(long, env = "SPOT_MAX_MESSAGE_BYTES", default_value_t = ServerLimits::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Largest POST body in bytes.
    #[arg(long, env = "SPOT_MAX_BODY_BYTES", default_value_t = ServerLimits::default().max_body_bytes)]
    max_body_bytes: u64,
    /// Most header lines per request.
    #[arg(long, env = "SPOT_MAX_HEADERS", default_value_t = ServerLimits::default().max_headers)]
    max_headers: usize,
    /// Seconds to receive request headers (also the keep-alive idle limit).
    #[arg(long, env = "SPOT_HEADER_TIMEOUT", default_value_t = 30.0)]
    header_timeout: f64,
    /// Seconds allowed between two pieces of a request body.
    #[arg(long, env = "SPOT_BODY_IDLE_TIMEOUT", default_value_t = 30.0)]
    body_idle_timeout: f64,
    /// Most open connections (HTTP and raw TCP each).
    #[arg(long, env = "SPOT_MAX_CONNECTIONS", default_value_t = ServerLimits::default().max_connections)]
    max_connections: usize,
    /// Seconds a stop (SIGTERM, Ctrl-C) waits for in-flight requests before closing the
    /// remaining connections. A second signal stops at once.
    #[arg(long, env = "SPOT_SHUTDOWN_GRACE", default_value_t = 10.0)]
    shutdown_grace: f64,
}

fn secs(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("--{name} {value}: not a duration"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = ServerConfig {
        listen: args.listen,
        tcp_listen: args.tcp_listen,
        pull: args.pull,
        pull_backoff: Default::default(),
        data_dir: args.data,
        offline_after: secs("offline-after", args.offline_after)?,
        events_retention: secs(
            "events-retention-hours",
            args.events_retention_hours * 3600.0,
        )?,
        sync: if args.sync == "normal" {
            SyncMode::Normal
        } else {
            SyncMode::Full
        },
        limits: ServerLimits {
            max_message_bytes: args.max_message_bytes,
            max_body_bytes: args.max_body_bytes,
            max_headers: args.max_headers,
            header_read_timeout: secs("header-timeout", args.header_timeout)?,
            body_idle_timeout: secs("body-idle-timeout", args.body_idle_timeout)?,
            max_connections: args.max_connections,
            shutdown_grace: secs("shutdown-grace", args.shutdown_grace)?,
            ..ServerLimits::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let data_dir = config.data_dir.clone();
        let grace = config.limits.shutdown_grace;
        let pull = config.pull.clone();
        let server = Server::bind(config).await?;
        tracing::info!(
            "spot server {} ready: HTTP on http://{} (POST /api/spots/{{serial}}/events/, REST /api/…, /metrics){}{}; data in {}",
            env!("CARGO_PKG_VERSION"),
            server.http_addr(),
            server
                .tcp_addr()
                .map(|a| format!(", raw TCP on {a}"))
                .unwrap_or_default(),
            if pull.is_empty() { String::new() } else { format!(", pulling {}", pull.join(", ")) },
            data_dir.display()
        );
        let mut stop = StopSignals::new()?;
        stop.recv().await?;
        tracing::info!(
            "stopping: no new connections, finishing in-flight requests (at most {:?}; a second signal stops at once)",
            grace
        );
        tokio::select! {
            _ = server.shutdown() => {
                tracing::info!("stopped");
                Ok(ExitCode::SUCCESS)
            }
            r = stop.recv() => {
                r?;
                // Safe for the data: SQLite's WAL is crash-proof and spots keep every
                // unacknowledged event.
                tracing::warn!("second stop signal: exiting without waiting");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

/// Ctrl-C and SIGTERM, each delivery observed (the handlers stay installed, so a signal
/// during the shutdown is seen rather than ignored).
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<Self> {
        Ok(StopSignals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) -> anyhow::Result<()> {
        #[cfg(unix)]
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("Ctrl-C handler")?,
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await.context("Ctrl-C handler")?;
        Ok(())
    }
}
