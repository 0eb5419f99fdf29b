//! The spot server: ingest → domain → store → push outlets.
//!
//! - [`Server::bind`] opens the store (`<data>/spot.db` for the journal and the derived events,
//!   `<data>/state.db` for the resource rows; SQLite in WAL mode), loads the state (replaying
//!   the journal written after the last row flush),
//!   binds the HTTP listener (and the raw TCP one), and returns the bound addresses; tests
//!   bind port 0 and run it in-process. [`Server::shutdown`] stops accepting, lets in-flight
//!   POSTs finish (bounded by [`ServerLimits::shutdown_grace`]), commits and returns. The
//!   data directory is locked (`spot.lock`) from bind to the end of shutdown.
//! - [`http`]: `POST /api/spots/{serial}/events[/]` streaming ingest, the REST API, `/metrics`
//!   (HTTPS with [`ServerConfig::tls`]).
//! - [`tcp`]: raw TCP ingest (`--tcp-listen`).
//! - [`pull`]: dialling spots' telnet services (`--pull`), ingested like raw TCP.
//! - [`core`]: the one thread owning the [`domain::Domain`] and the [`store::Store`]; group
//!   commit; a `200` leaves only after its events are committed.
//! - [`store`]: the journal and the derived events log; [`rows`]: the resource rows, flushed
//!   every few seconds by a thread of their own.
//! - [`domain`]: spots, locations, items, presences and the derived events log (spec §7).
//! - [`api`]: collection queries (filters, sort, paging).
//! - [`push`]: derived events pushed to applications (`/api/ws`, `/api/stream`,
//!   `/api/subscriptions` webhooks, MQTT with `--mqtt`), fed after each commit.

pub mod api;
pub mod clock;
pub mod core;
pub mod domain;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod pull;
pub mod push;
pub mod rows;
pub mod store;
pub mod tcp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::clock::now_ms;
use crate::core::CoreMsg;
use crate::domain::{Domain, DomainConfig};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

pub use crate::store::Sync as SyncMode;

/// Every bound of the server, with its reason. All configurable.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest single event (bytes of its encoding). Default 64 KiB: a full `config create`
    /// is under 2 KiB. A larger event is skipped and counted like a malformed one.
    pub max_message_bytes: usize,
    /// Deepest nesting of one event. Default 32 (real events nest 4 deep).
    pub max_depth: usize,
    /// Largest POST body. Default 64 MiB (a 1 s POST carries a few KiB; a spot flushing a
    /// long offline buffer more). Past it: `413`, connection closed.
    pub max_body_bytes: u64,
    /// Largest REST request body (PUT). Default 1 MiB. Past it: `413`.
    pub max_api_body_bytes: u64,
    /// Most header lines in a request. Default 64. Past it: `431` (hyper).
    pub max_headers: usize,
    /// Most bytes of request line + headers. Default 16 KiB. Past it: `431` (hyper).
    pub max_header_bytes: usize,
    /// Time to receive a request's headers, also the idle time allowed on a keep-alive
    /// connection between requests. Default 30 s. Past it: the connection is closed.
    pub header_read_timeout: Duration,
    /// Longest gap between two pieces of a request body (slow senders). Default 30 s.
    /// Past it: `408`, connection closed.
    pub body_idle_timeout: Duration,
    /// Longest a POST body may take in total (never-ending bodies; spots end theirs after
    /// about 1 s). Default 300 s. Past it: `408`, connection closed.
    pub max_post_duration: Duration,
    /// Most open connections (HTTP and TCP each). Default 10,000 (stays under a 20,000 open
    /// file limit with both listeners full). Past it: HTTP gets `503`
    /// and is closed; TCP is closed.
    pub max_connections: usize,
    /// Longest idle time of a raw TCP stream (spots send an alive signal every second).
    /// Default 60 s.
    pub tcp_idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests. Default 10 s.
    pub shutdown_grace: Duration,
    /// Messages without events (stream begin and end, API changes, ticks) queued to the
    /// core before senders wait; messages with events count in `core_queue_events`.
    /// Default 4096.
    pub core_queue: usize,
    /// Upstream events queued to the core before ingest waits (and stops reading its
    /// sockets: backpressure to the spots). Bounds the time an event waits to be applied,
    /// hence the acknowledgement latency under overload. Default 4096.
    pub core_queue_events: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_message_bytes: 64 * 1024,
            max_depth: 32,
            max_body_bytes: 64 * 1024 * 1024,
            max_api_body_bytes: 1024 * 1024,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(30),
            max_post_duration: Duration::from_secs(300),
            max_connections: 10_000,
            tcp_idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            core_queue: 4096,
            core_queue_events: 4096,
        }
    }
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// HTTP address (default `0.0.0.0:8080`).
    pub listen: SocketAddr,
    /// Raw TCP ingest address (off by default).
    pub tcp_listen: Option<SocketAddr>,
    /// Serve HTTPS instead of HTTP on `listen` (off by default).
    pub tls: Option<TlsFiles>,
    /// Spots' telnet services (`HOST:PORT`) the server dials and ingests (none by default).
    pub pull: Vec<String>,
    /// Redial delays of `pull`.
    pub pull_backoff: pull::PullBackoff,
    /// Data directory (default `./spot-data`), created if missing.
    pub data_dir: PathBuf,
    /// A spot without traffic for this long goes offline (default 10 s).
    pub offline_after: Duration,
    /// How long derived and upstream events are kept (default 24 h).
    pub events_retention: Duration,
    /// fsync policy of commits (default [`SyncMode::Full`]).
    pub sync: SyncMode,
    /// Bounds.
    pub limits: ServerLimits,
    /// Push to applications (WebSocket, SSE, webhooks, MQTT).
    pub push: push::PushConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tcp_listen: None,
            tls: None,
            pull: Vec::new(),
            pull_backoff: pull::DEFAULT_BACKOFF,
            data_dir: PathBuf::from("spot-data"),
            offline_after: Duration::from_secs(10),
            events_retention: Duration::from_secs(24 * 3600),
            sync: SyncMode::Full,
            limits: ServerLimits::default(),
            push: push::PushConfig::default(),
        }
    }
}

/// PEM files of the HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database could not be opened or loaded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored row does not parse.
    #[error("corrupt stored state: {0}")]
    Corrupt(#[source] crate::domain::RestoreError),
    /// The push layer could not start.
    #[error(transparent)]
    Push(#[from] push::PushError),
    /// Another server holds the data directory.
    #[error(
        "data directory {path} is in use by another spot server ({holder}); \
         stop it first or use another --data"
    )]
    DataDirLocked {
        /// The directory.
        path: PathBuf,
        /// Who holds the lock, as written in the lock file.
        holder: String,
    },
    /// The TLS certificate or key is unusable.
    #[error("TLS {path}: {reason}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A listener could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Where the server is in its life; connection tasks watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// Stopping: listeners closed, in-flight requests finish, idle connections close.
    Draining,
    /// The grace period is over: remaining connections are dropped.
    Closing,
}

/// What every connection task shares.
#[derive(Debug)]
pub struct Shared {
    /// Sender to the core.
    pub core: core::CoreSender,
    /// The live state (read side; the core writes).
    pub domain: Arc<RwLock<Domain>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Bounds.
    pub limits: ServerLimits,
    /// HTTP connection slots.
    pub http_slots: Arc<Semaphore>,
    /// TCP connection slots.
    pub tcp_slots: Arc<Semaphore>,
    /// The push layer (hub, outlets, their router).
    pub push: push::Push,
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    http_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    https: bool,
    shutdown: watch::Sender<Phase>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    connections_done: mpsc::Receiver<()>,
    core_thread: std::thread::JoinHandle<()>,
    shared: Arc<Shared>,
    /// Held (exclusively locked) until the server has stopped.
    _data_lock: std::fs::File,
}

/// Name of the lock file in the data directory.
pub const LOCK_FILE: &str = "spot.lock";

/// Takes the exclusive lock on `<data>/spot.lock` (released when the file is closed, also
/// when the process dies), so two servers never share a data directory.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let io_err = |source| ServerError::DataDir {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(ServerError::DataDirLocked {
                path: dir.to_path_buf(),
                holder: holder.trim().to_string(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
    }
    file.set_len(0).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    write!(file, "pid {}", std::process::id()).map_err(io_err)?;
    Ok(file)
}

/// Connections a listener queues before they are accepted. Hundreds of spots connect at
/// once after a server restart or a network outage; tokio's default (1,024) overflowed in
/// such a storm (connections reset mid-POST). The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 8192;

/// A listening socket on `addr` with [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Server {
    /// Opens the store, loads the state, binds the listeners and starts serving.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let tls = match &config.tls {
            Some(files) => Some(http::tls_acceptor(&files.cert, &files.key)?),
            None => None,
        };
        let data_lock = lock_data_dir(&config.data_dir)?;
        let mut store = Store::open(&config.data_dir, config.sync)?;
        let push = push::Push::start(&config.data_dir, &config.push)?;
        store.set_publisher(push.publisher());
        let now = now_ms();
        let mut domain = Domain::new(DomainConfig {
            offline_after_ms: config.offline_after.as_millis() as i64,
            events_retention_ms: config.events_retention.as_millis() as i64,
            ..DomainConfig::default()
        });
        let started = std::time::Instant::now();
        for (table, rows) in store.take_loaded_rows() {
            let mut json = Vec::new();
            for (id, row) in rows {
                match row {
                    rows::StoredRow::Json(doc) => json.push((id.text(), doc)),
                    rows::StoredRow::Item(item) => domain.load_item(item),
                    rows::StoredRow::Presence(presence) => domain.load_presence(presence),
                }
            }
            domain
                .load(table, json, now)
                .map_err(ServerError::Corrupt)?;
        }
        tracing::info!(
            ms = started.elapsed().as_secs_f64() * 1e3,
            "rows loaded into the live state"
        );
        let (journal, id_last) = store.unflushed_journal()?;
        domain.restore_ids(id_last);
        domain
            .load_events(store.load_events(domain.retention_cutoff(now))?)
            .map_err(ServerError::Corrupt)?;
        if !journal.is_empty() {
            let entries = journal.len();
            domain.replay(journal).map_err(ServerError::Corrupt)?;
            store.commit(&mut domain.take_changes(true))?;
            tracing::info!("replayed {entries} journal entries written after the last flush");
        } else {
            domain.replay(Vec::new()).map_err(ServerError::Corrupt)?;
        }
        let domain = Arc::new(RwLock::new(domain));
        let metrics = Arc::new(Metrics::default());
        let (core_tx, core_rx) =
            core::channel(config.limits.core_queue, config.limits.core_queue_events);
        let core_thread = {
            let domain = domain.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("spot-core".into())
                .spawn(move || core::run(core_rx, domain, store, metrics))
                .map_err(|source| ServerError::DataDir {
                    path: config.data_dir.clone(),
                    source,
                })?
        };
        let http_listener = listen(config.listen).map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let tcp_listener = match config.tcp_listen {
            Some(addr) => Some(listen(addr).map_err(|source| ServerError::Bind { addr, source })?),
            None => None,
        };
        let tcp_addr = tcp_listener.as_ref().and_then(|l| l.local_addr().ok());
        let shared = Arc::new(Shared {
            core: core_tx,
            domain,
            metrics,
            http_slots: Arc::new(Semaphore::new(config.limits.max_connections)),
            tcp_slots: Arc::new(Semaphore::new(config.limits.max_connections)),
            limits: config.limits.clone(),
            push,
        });
        let (shutdown, shutdown_rx) = watch::channel(Phase::Running);
        let (done_tx, connections_done) = mpsc::channel(1);
        let mut tasks = vec![tokio::spawn(http::serve(
            http_listener,
            shared.clone(),
            shutdown_rx.clone(),
            done_tx.clone(),
            tls,
        ))];
        if let Some(listener) = tcp_listener {
            tasks.push(tokio::spawn(tcp::serve(
                listener,
                shared.clone(),
                shutdown_rx.clone(),
                done_tx.clone(),
            )));
        }
        // Like connection tasks: awaited through `done`, within the shutdown grace.
        for target in &config.pull {
            tokio::spawn(pull::run(
                target.clone(),
                shared.clone(),
                shutdown_rx.clone(),
                config.pull_backoff,
                done_tx.clone(),
            ));
        }
        drop(done_tx);
        {
            let core = shared.core.clone();
            let mut shutdown_rx = shutdown_rx;
            tasks.push(tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        // A full queue means a busy core: that tick is skipped, and the
                        // task never blocks shutdown.
                        _ = interval.tick() => {
                            if let Err(mpsc::error::TrySendError::Closed(_)) =
                                core.try_send(CoreMsg::Tick)
                            {
                                break;
                            }
                        }
                        _ = shutdown_rx.changed() => break,
                    }
                }
            }));
        }
        Ok(Server {
            http_addr,
            tcp_addr,
            https: config.tls.is_some(),
            shutdown,
            tasks,
            connections_done,
            core_thread,
            shared,
            _data_lock: data_lock,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Whether `http_addr` serves HTTPS.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The bound raw TCP address, when enabled.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The shared state (for tests and a later push layer).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Graceful stop: the listeners close at once (the port is free), in-flight POSTs and
    /// TCP streams finish within [`ServerLimits::shutdown_grace`]; after it, the remaining
    /// connections are dropped (their spots keep the unacknowledged events and resend
    /// them). Then the core commits what it received and stops, and the data directory
    /// lock is released.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(Phase::Draining);
        self.shared.push.close_streams();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let grace = self.shared.limits.shutdown_grace;
        if tokio::time::timeout(grace, self.connections_done.recv())
            .await
            .is_err()
        {
            let open = self.shared.limits.max_connections * 2
                - self.shared.http_slots.available_permits()
                - self.shared.tcp_slots.available_permits();
            tracing::warn!("shutdown: {open} connections still open after {grace:?}; closing them");
            let _ = self.shutdown.send(Phase::Closing);
            // Dropped connection tasks release their slots at once.
            let _ = self.connections_done.recv().await;
        }
        // WebSocket clients got their close frame; their handshakes are bounded by
        // `ws_close_timeout`, the wait here by the grace again.
        if tokio::time::timeout(grace, self.shared.push.streams_closed())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: WebSocket connections still open after {grace:?}");
        }
        let Server {
            shared,
            core_thread,
            _data_lock,
            ..
        } = self;
        // Nothing else sends now: the queued messages are applied and committed, then the
        // core stops.
        let _ = shared.core.send(CoreMsg::Shutdown).await;
        shared.push.shutdown();
        drop(shared);
        let _ = tokio::task::spawn_blocking(move || core_thread.join()).await;
        drop(_data_lock);
    }
}
