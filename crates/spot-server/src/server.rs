//! Wiring: [`Server::bind`] opens the store, loads the state, starts the pipeline, the
//! outlets and the listeners; [`Server::shutdown`] stops them in order. [`Context`] is what
//! every connection task holds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::accept::{Budget, Connections};
use crate::access::{self, Access, AccessError, AdmissionMode};
use crate::clock::now_ms;
use crate::cluster::Cluster;
use crate::config::ServerConfig;
use crate::context::Context;
use crate::domain::{Domain, DomainConfig};
use crate::ingest::{pull, tcp};
use crate::metrics::Metrics;
use crate::pipeline::{self, PipelineMsg};
use crate::shutdown::{phase_reached, Phase};
use crate::store::{self, SqliteStore, Store, StoreError};
use crate::{http, outlets};

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
    /// The access-control database (`access.db`) or the first admin key file failed.
    #[error("access control: {0}")]
    Access(#[from] AccessError),
    /// A stored row does not parse.
    #[error("corrupt stored state: {0}")]
    Corrupt(#[source] crate::domain::RestoreError),
    /// The push layer could not start.
    #[error(transparent)]
    Push(#[from] outlets::PushError),
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
    /// The CA file of `webhook-ca-cert` is unusable.
    #[error("webhook-ca-cert: {0}")]
    WebhookCa(#[source] spot_push::tls::TlsConfigError),
    /// The data directory's path names something that is not a directory.
    #[error(
        "data directory {path}: is a file, not a directory; \
         move it away or choose another --data"
    )]
    DataDirNotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The node cannot join its cluster (`--nats`, `--postgres`).
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}{}", bind_hint(.source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}
/// What to do when a listener can't be bound, by the reason.
fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another program, perhaps another spot server, listens there: stop it or \
             choose another address)"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            " (no network interface of this machine has that address: use one it has, or \
             0.0.0.0 for all)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need privileges: use a port of 1024 or more)"
        }
        _ => "",
    }
}

/// Fails when the data directory's path names something that is not a directory.
fn check_data_dir(config: &ServerConfig) -> Result<(), ServerError> {
    match std::fs::metadata(&config.data_dir) {
        Ok(meta) if !meta.is_dir() => Err(ServerError::DataDirNotADirectory {
            path: config.data_dir.clone(),
        }),
        _ => Ok(()),
    }
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
    shared: Arc<Context>,
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

/// Says in the log where the first admin key is (when this start created it) and whether
/// spot admission is open.
fn announce_access(access: &Access, bootstrapped: Option<&std::path::Path>) {
    if let Some(path) = bootstrapped {
        tracing::warn!(
            "created the first admin API key in {} (mode 0600): send it as \
             `X-Api-Key: $(cat {})` to call the API; make more with `spot keys create`",
            path.display(),
            path.display()
        );
    }
    let admission = &access.config().admission;
    if admission.mode == AdmissionMode::Open {
        tracing::info!(
            max_spots = admission.max_spots,
            "spot admission is open: any serial may stream events in; close it with \
             --spot-admission enrolled (or secret) and enrol spots with `spot spots enroll`"
        );
    }
}

/// Picks up changes other processes make to `access.db` (within
/// [`access::REFRESH_INTERVAL`]) and writes the audit entries of every change into the
/// events log through the pipeline (marked published after its commit: an entry is logged
/// at least once, twice only if the server dies between the two).
async fn watch_access(
    access: Arc<Access>,
    pipeline: pipeline::PipelineSender,
    mut shutdown: watch::Receiver<Phase>,
) {
    let mut interval = tokio::time::interval(access::REFRESH_INTERVAL);
    let mut snapshots = access.subscribe();
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = snapshots.changed() => {}
            _ = phase_reached(&mut shutdown, Phase::Draining) => return,
        }
        let a = access.clone();
        let pending = tokio::task::spawn_blocking(move || {
            a.refresh()?;
            a.read(|db| db.unpublished_audit())
        })
        .await;
        let entries = match pending {
            Ok(Ok(entries)) => entries,
            Ok(Err(e)) => {
                let text = e.to_string();
                if text != last_error {
                    tracing::warn!("access control: {text}");
                    last_error = text;
                }
                continue;
            }
            Err(_) => continue,
        };
        let Some(last) = entries.last().map(|e| e.seq) else {
            continue;
        };
        let (reply, done) = tokio::sync::oneshot::channel();
        let entries = entries.into_iter().map(|e| (e.topic, e.data)).collect();
        if pipeline
            .send(PipelineMsg::Audit { entries, reply })
            .await
            .is_err()
        {
            return;
        }
        if done.await.is_ok() {
            let a = access.clone();
            let _ = tokio::task::spawn_blocking(move || a.read(|db| db.mark_published(last))).await;
        }
    }
}

/// The HTTPS acceptor of `config.tls`, if set: the files read and checked to match.
fn tls_acceptor(config: &ServerConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, ServerError> {
    let Some(files) = &config.tls else {
        return Ok(None);
    };
    http::tls::tls_acceptor(&files.cert, &files.key)
        .map(Some)
        .map_err(|e| ServerError::Tls {
            path: e.path,
            reason: e.reason,
        })
}

/// Reads the `webhook-ca-cert` file, if set, as the webhook client will.
fn check_webhook_ca(config: &ServerConfig) -> Result<(), ServerError> {
    if let Some(ca) = &config.push.webhooks.ca_cert {
        spot_push::tls::client_config(Some(ca), &[]).map_err(ServerError::WebhookCa)?;
    }
    Ok(())
}

impl Server {
    /// Checks what [`Server::bind`] can check without creating, opening or binding
    /// anything: the TLS certificate and key (readable, matching), the webhook CA file and
    /// that the data directory is not a file. `bind` does these checks first too.
    pub fn check(config: &ServerConfig) -> Result<(), ServerError> {
        tls_acceptor(config)?;
        check_webhook_ca(config)?;
        if let Some(cluster) = &config.cluster {
            crate::cluster::check(cluster)?;
        }
        check_data_dir(config)
    }

    /// Binds the listeners, opens the store, loads the state and starts serving.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        // Everything checkable without side effects comes before the first thing created,
        // then the listeners (a port in use leaves nothing created behind); connections wait
        // in the listen backlog while the state loads.
        let tls = tls_acceptor(&config)?;
        check_webhook_ca(&config)?;
        check_data_dir(&config)?;
        // A cluster node joins (and creates what is missing) before it listens: a node that
        // cannot reach its engines never takes a connection it cannot serve.
        let cluster = match &config.cluster {
            Some(c) => Some(Cluster::connect(c.clone(), config.push.publish_raw).await?),
            None => None,
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
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let data_lock = lock_data_dir(&config.data_dir)?;
        let mut store = SqliteStore::open(&config.data_dir, config.sync)?;
        store.set_cache_bytes(config.limits.store_cache_bytes)?;
        let (shutdown, shutdown_rx) = watch::channel(Phase::Running);
        let push = match &cluster {
            None => outlets::Outlets::start(&config.data_dir, store.event_pages()?, &config.push)?,
            Some(cluster) => {
                outlets::Outlets::start_shared(cluster.events_log(), &config.push, |hub, log| {
                    cluster.start_webhooks(
                        hub,
                        log,
                        config.push.webhooks.clone(),
                        shutdown_rx.clone(),
                    )
                })?
            }
        };
        let now = now_ms();
        let domain_config = DomainConfig {
            offline_after_ms: config.offline_after.as_millis() as i64,
            events_retention_ms: config.events_retention.as_millis() as i64,
            events_max_in_memory: config.limits.events_max_in_memory,
            // A cluster's log has no end for a stream whose edge died: such a stream counts
            // as over once it sent nothing for as long as an edge waits for a body's next
            // piece (after that, a living edge ends it itself).
            stream_idle_ms: config.cluster.as_ref().map(|_| {
                config
                    .limits
                    .body_idle_timeout
                    .max(config.offline_after)
                    .as_millis() as i64
            }),
            ..DomainConfig::default()
        };
        let mut domain = Domain::new(domain_config.clone());
        let started = std::time::Instant::now();
        for (table, rows) in store.take_loaded_rows() {
            let mut json = Vec::new();
            for (id, row) in rows {
                match row {
                    store::checkpoint::StoredRow::Json(doc) => json.push((id.text(), doc)),
                    store::checkpoint::StoredRow::Item(item) => domain.load_item(item),
                    store::checkpoint::StoredRow::Presence(presence) => {
                        domain.load_presence(presence)
                    }
                }
            }
            domain
                .load(table, json, now)
                .map_err(ServerError::Corrupt)?;
        }
        tracing::info!(
            ms = crate::clock::log_ms(started.elapsed()),
            "rows loaded into the live state"
        );
        let (journal, id_last) = store.unflushed_journal(config.repair_journal)?;
        domain.restore_ids(id_last);
        domain
            .load_events(store.load_events(
                domain.retention_cutoff(now),
                config.limits.events_max_in_memory,
            )?)
            .map_err(ServerError::Corrupt)?;
        if !journal.is_empty() {
            let entries = journal.len();
            domain.replay(journal).map_err(ServerError::Corrupt)?;
            let mut changes = domain.take_changes(true);
            let committed = store.commit(&mut changes)?;
            // The outlets' positions are before these events: they are pushed like any.
            push.publisher()
                .committed(&changes.log, committed.last_event_id);
            tracing::info!("replayed {entries} journal entries written after the last flush");
        } else {
            domain.replay(Vec::new()).map_err(ServerError::Corrupt)?;
        }
        let (access, bootstrapped) = Access::open(
            &config.data_dir,
            config.access.clone(),
            domain.spot_serials().map(str::to_string),
            now,
        )?;
        announce_access(&access, bootstrapped.as_deref());
        // Access changes made while the server was stopped (and the first key's) are in
        // the events log before anything else happens.
        // Not on a cluster node: its push ids come from `SPOT_OUT`, where a local event has
        // no place; its edge sends them through the input log (`watch_access`).
        let audit = match cluster {
            None => access.read(|db| db.unpublished_audit())?,
            Some(_) => Vec::new(),
        };
        if let Some(last) = audit.last().map(|e| e.seq) {
            for entry in &audit {
                domain.log_audit(&entry.topic, &entry.data, now);
            }
            let mut changes = domain.take_changes(true);
            let committed = store.commit(&mut changes)?;
            // Pushed too (the first admin key's `keys/<id>/created` reached no outlet).
            push.publisher()
                .committed(&changes.log, committed.last_event_id);
            access.read(|db| db.mark_published(last))?;
        }
        let access = Arc::new(access);
        let domain = Arc::new(RwLock::new(domain));
        let metrics = Arc::new(Metrics::default());
        let (core_tx, core_rx) =
            pipeline::channel(config.limits.core_queue, config.limits.core_queue_events);
        let publisher = push.publisher();
        let thread_error = |source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        };
        let core_thread = match &cluster {
            None => {
                let domain = domain.clone();
                let metrics = metrics.clone();
                std::thread::Builder::new()
                    .name("spot-apply".into())
                    .spawn(move || {
                        pipeline::run(core_rx, domain, Box::new(store), publisher, metrics)
                    })
                    .map_err(thread_error)?
            }
            // A cluster node: the edge drains the queue into the input log; the stage and
            // the read replica take the place of the local pipeline and store.
            Some(cluster) => {
                let roles = cluster.roles();
                if roles.stage {
                    cluster.start_stage(domain_config.clone(), shutdown_rx.clone());
                }
                // Every node pushes what the stages store, whoever applied it.
                cluster.start_feed(
                    push.publisher(),
                    domain.clone(),
                    config.limits.events_max_in_memory,
                    shutdown_rx.clone(),
                );
                // One node at a time publishes to the MQTT broker.
                if let Some(mqtt) = &config.push.mqtt {
                    cluster.start_mqtt(
                        push.hub(),
                        push.mqtt_slot(),
                        mqtt.clone(),
                        shutdown_rx.clone(),
                    );
                }
                // A key or an enrolment made on any node works on every node.
                cluster.start_access_sharing(config.data_dir.clone(), shutdown_rx.clone());
                // The replica serves REST, and tells an edge a spot's pending commands.
                if roles.api || roles.edge {
                    cluster.start_replica(domain.clone(), domain_config, shutdown_rx.clone());
                }
                if roles.edge {
                    cluster
                        .start_edge(core_rx, domain.clone())
                        .map_err(thread_error)?
                } else {
                    // No edge: the queue is closed, spot streams are answered `503`.
                    drop(core_rx);
                    std::thread::Builder::new()
                        .name("spot-no-edge".into())
                        .spawn(|| {})
                        .map_err(thread_error)?
                }
            }
        };
        let shared = Arc::new(Context {
            pipeline: core_tx,
            domain,
            metrics,
            http_connections: Connections::new(http_budget(&config.limits)),
            tcp_connections: Connections::new(Budget {
                unidentified: 0,
                ..http_budget(&config.limits)
            }),
            limits: config.limits.clone(),
            outlets: push,
            access: access.clone(),
            phase: shutdown_rx.clone(),
            read_barrier: cluster.as_ref().map(Cluster::read_barrier),
        });
        let (done_tx, connections_done) = mpsc::channel(1);
        let mut tasks = vec![tokio::spawn(http::serve(
            http_listener,
            shared.clone(),
            shutdown_rx.clone(),
            done_tx.clone(),
            tls,
            config.push.stream.ws_send_timeout,
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
        tasks.push(tokio::spawn(watch_access(
            access,
            shared.pipeline.clone(),
            shutdown_rx.clone(),
        )));
        {
            let core = shared.pipeline.clone();
            let mut shutdown_rx = shutdown_rx;
            tasks.push(tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        // A full queue means a busy core: that tick is skipped, and the
                        // task never blocks shutdown.
                        _ = interval.tick() => {
                            if let Err(mpsc::error::TrySendError::Closed(_)) =
                                core.try_send(PipelineMsg::Tick)
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

    /// What the connection tasks share (for tests and tools in the same process).
    pub fn context(&self) -> &Arc<Context> {
        &self.shared
    }

    /// Graceful stop: the listeners close at once (the port is free), in-flight POSTs and
    /// TCP streams finish within [`crate::ServerLimits::shutdown_grace`]; after it, the remaining
    /// connections are dropped (their spots keep the unacknowledged events and resend
    /// them). Then the pipeline commits what it received and stops, and the data directory
    /// lock is released. A commit still failing (a full disk) after the grace again is given
    /// up: its events are not acknowledged (the spots resend them), and the answer is
    /// [`Stopped::CommitFailing`].
    pub async fn shutdown(mut self) -> Stopped {
        let _ = self.shutdown.send(Phase::Draining);
        self.shared.outlets.close_streams();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let grace = self.shared.limits.shutdown_grace;
        if tokio::time::timeout(grace, self.connections_done.recv())
            .await
            .is_err()
        {
            let open = self.shared.http_connections.open() + self.shared.tcp_connections.open();
            tracing::warn!("shutdown: {open} connections still open after {grace:?}; closing them");
            let _ = self.shutdown.send(Phase::Closing);
            // Dropped connection tasks release their slots at once.
            let _ = self.connections_done.recv().await;
        }
        // WebSocket clients got their close frame; their handshakes are bounded by
        // `ws_close_timeout`, the wait here by the grace again.
        if tokio::time::timeout(grace, self.shared.outlets.streams_closed())
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
        let _ = shared.pipeline.send(PipelineMsg::Shutdown).await;
        let pipeline = shared.pipeline.clone();
        shared.outlets.shutdown();
        drop(shared);
        let mut core = tokio::task::spawn_blocking(move || core_thread.join());
        let stopped = match tokio::time::timeout(grace, &mut core).await {
            Ok(_) => Stopped::Clean,
            Err(_) => {
                let failing = pipeline.commit_failing();
                tracing::warn!(
                    "shutdown: the last commit is not done after {grace:?}{}; giving up on it",
                    failing
                        .as_deref()
                        .map(|e| format!(" (failing: {e})"))
                        .unwrap_or_default()
                );
                pipeline.give_up_commits();
                let _ = core.await;
                match pipeline.commit_failing() {
                    Some(_) => Stopped::CommitFailing,
                    None => Stopped::Clean,
                }
            }
        };
        drop(_data_lock);
        stopped
    }
}

/// How [`Server::shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Everything received was committed.
    Clean,
    /// The last commit kept failing (e.g. a full disk) and was given up after the grace:
    /// its events were not acknowledged (the spots resend them).
    CommitFailing,
}

/// The HTTP listener's connection budget (the raw TCP listener's too: there every
/// connection is a spot).
fn http_budget(limits: &crate::ServerLimits) -> Budget {
    Budget {
        total: limits.max_connections,
        per_address: limits.max_connections_per_address,
        unidentified: limits.connection_share(limits.max_unidentified_connections),
        streams: limits.connection_share(limits.max_stream_connections),
        api: limits.connection_share(limits.max_api_connections),
    }
}
