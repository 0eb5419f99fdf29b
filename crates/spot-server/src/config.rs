//! How to run the server: [`ServerConfig`] (addresses, data directory, [`Durability`],
//! [`PushConfig`], [`AccessConfig`]) and [`ServerLimits`] (every bound, with its reason).
//! Plain data, read by every layer; a leaf (it uses only settings types: the protocol's,
//! the push crate's and access control's).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use spot_protocol::backoff::Backoff;

use crate::access::AccessConfig;
use spot_push::webhook::WebhookConfig;
use spot_push::{HubConfig, MqttConfig, StreamLimits};

/// Default redial delays of `--pull`: from 0.5 s, doubling up to 30 s.
pub const DEFAULT_PULL_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(30),
};

/// How hard a commit is pushed to disk (SQLite's `synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: fsync on every commit (survives power loss).
    Full,
    /// `synchronous=NORMAL`: survives a process crash (kill -9), not a power loss.
    Normal,
}

/// Settings of the push layer.
#[derive(Debug, Clone, Default)]
pub struct PushConfig {
    /// Queue sizes and the subscription limit of the hub.
    pub hub: HubConfig,
    /// Limits of the WebSocket and SSE outlets.
    pub stream: StreamLimits,
    /// Webhook delivery settings.
    pub webhooks: WebhookConfig,
    /// Publish to this MQTT broker (`--mqtt`); off when `None`.
    pub mqtt: Option<MqttConfig>,
    /// Publish the raw spot events too (`--publish-raw`).
    pub publish_raw: bool,
}

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
    /// Time from accepting an HTTP connection to the end of its first request head (the
    /// TLS handshake included; never more than `header_read_timeout`): a connection says
    /// what it is at once or goes. Default
    /// 10 s: a spot on a slow cellular or satellite link needs a few round trips (TCP,
    /// TLS, the head) of up to a second or two each. Past it: the connection is closed.
    pub request_head_timeout: Duration,
    /// Longest gap between two pieces of a request body (slow senders). Default 30 s.
    /// Past it: `408`, connection closed.
    pub body_idle_timeout: Duration,
    /// Longest a POST body may take in total (never-ending bodies; spots end theirs after
    /// about 1 s). Default 300 s. Past it: `408`, connection closed.
    pub max_post_duration: Duration,
    /// Most open connections (HTTP and TCP each). Default 10,000 (stays under a 20,000 open
    /// file limit with both listeners full). Past it: HTTP gets `503` (see
    /// `max_refusals`) and is closed; TCP is closed.
    pub max_connections: usize,
    /// Most open connections from one client address (HTTP and TCP each). Default 1,000:
    /// a site with hundreds of spots behind one NAT address holds one connection per
    /// spot (two while one reconnects), while one address cannot take more than a tenth
    /// of the default `max_connections`. Raise it for more spots behind one address.
    /// Past it: as over `max_connections`.
    pub max_connections_per_address: usize,
    /// Most HTTP connections that have not yet sent their first request head. Default
    /// (`None`): a tenth of `max_connections`, at least 64. Past it, and when
    /// `max_connections` is reached, a new connection takes the slot of the oldest of them,
    /// which is closed: silent connections give way to clients that speak.
    pub max_unidentified_connections: Option<usize>,
    /// Most HTTP connections that are push streams (`/api/ws`, `/api/stream`, counted from
    /// their first request). Default (`None`): a tenth of `max_connections`, at least 64.
    /// Past it: `503`.
    pub max_stream_connections: Option<usize>,
    /// Most HTTP connections that are API clients (any first request other than a spot's
    /// POST and a push stream). Default (`None`): a tenth of `max_connections`, at least
    /// 64. Past it: `503`. Spots are bounded by `max_connections` only: with the defaults,
    /// at least 70% of the connections are theirs whatever the others do.
    pub max_api_connections: Option<usize>,
    /// Most HTTP connections over `max_connections` being answered `503` at once (each
    /// for at most 5 s). Default 64. Past it: closed at once, unanswered, so that a flood
    /// grows neither tasks nor file descriptors.
    pub max_refusals: usize,
    /// Longest idle time of a raw TCP stream (spots send an alive signal every second).
    /// Default 60 s.
    pub tcp_idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests. Default 10 s.
    pub shutdown_grace: Duration,
    /// The newest derived events kept in memory, which the REST API serves
    /// (`/api/events`, a resource's events); the push outlets' resumption reads `spot.db`.
    /// Default 100,000 (see `docs/memory.md` for what they cost).
    pub events_max_in_memory: usize,
    /// Messages without events (stream begin and end, API changes, ticks) queued to the
    /// core before senders wait; messages with events count in `core_queue_events`.
    /// Default 4096.
    pub core_queue: usize,
    /// Upstream events queued to the core before ingest waits (and stops reading its
    /// sockets: backpressure to the spots). Bounds the time an event waits to be applied,
    /// hence the acknowledgement latency under overload. Default 4096.
    pub core_queue_events: usize,
    /// SQLite's page cache of `spot.db` on the writer's connection (the journal and the
    /// events log), in bytes. Default 64 MiB: the pages a group commit and the outlets'
    /// catch-up touch stay in memory. Smaller costs reads, not correctness.
    pub store_cache_bytes: u64,
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
            request_head_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            max_post_duration: Duration::from_secs(300),
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            max_unidentified_connections: None,
            max_stream_connections: None,
            max_api_connections: None,
            max_refusals: 64,
            tcp_idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            events_max_in_memory: 100_000,
            core_queue: 4096,
            core_queue_events: 4096,
            store_cache_bytes: 64 * 1024 * 1024,
        }
    }
}
impl ServerLimits {
    /// The time a new connection has for its TLS handshake and first request head.
    pub fn first_head_timeout(&self) -> Duration {
        self.request_head_timeout.min(self.header_read_timeout)
    }

    /// A share of `max_connections`: `configured`, else a tenth but at least 64 (a small
    /// server's clients connecting at once do not crowd each other out); never more than
    /// `max_connections`, never 0.
    pub fn connection_share(&self, configured: Option<usize>) -> usize {
        configured
            .unwrap_or((self.max_connections / 10).max(64))
            .clamp(1, self.max_connections.max(1))
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
    pub pull_backoff: Backoff,
    /// Data directory (default `./spot-data`), created if missing.
    pub data_dir: PathBuf,
    /// A spot without traffic for this long goes offline (default 10 s).
    pub offline_after: Duration,
    /// How long derived and upstream events are kept (default 24 h).
    pub events_retention: Duration,
    /// fsync policy of commits (default [`Durability::Full`]).
    pub sync: Durability,
    /// Start even when the journal has unreadable lines, dropping them (each logged);
    /// without it the server refuses to start, naming them (default off).
    pub repair_journal: bool,
    /// Bounds.
    pub limits: ServerLimits,
    /// Push to applications (WebSocket, SSE, webhooks, MQTT).
    pub push: PushConfig,
    /// API keys, spot admission, CORS.
    pub access: AccessConfig,
    /// Run as a node of a cluster (`--nats`, `--postgres`; [`crate::cluster`]); `None`:
    /// the embedded server.
    pub cluster: Option<ClusterConfig>,
}
impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tcp_listen: None,
            tls: None,
            pull: Vec::new(),
            pull_backoff: DEFAULT_PULL_BACKOFF,
            data_dir: PathBuf::from("spot-data"),
            offline_after: Duration::from_secs(10),
            events_retention: Duration::from_secs(24 * 3600),
            sync: Durability::Full,
            repair_journal: false,
            limits: ServerLimits::default(),
            push: PushConfig::default(),
            access: AccessConfig::default(),
            cluster: None,
        }
    }
}

/// Which roles a node plays (`--role edge,stage,api`; all three by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Spot ingest into the input log.
    pub edge: bool,
    /// Partition owners.
    pub stage: bool,
    /// The REST API's replica.
    pub api: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Roles {
            edge: true,
            stage: true,
            api: true,
        }
    }
}

impl std::str::FromStr for Roles {
    type Err = String;

    /// `edge,stage,api` in any order and combination.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut roles = Roles {
            edge: false,
            stage: false,
            api: false,
        };
        for role in s.split(',').map(str::trim) {
            match role {
                "edge" => roles.edge = true,
                "stage" => roles.stage = true,
                "api" => roles.api = true,
                other => {
                    return Err(format!(
                        "unknown role {other:?}: the roles are edge, stage and api"
                    ))
                }
            }
        }
        if roles
            == (Roles {
                edge: false,
                stage: false,
                api: false,
            })
        {
            return Err("no role given: the roles are edge, stage and api".into());
        }
        Ok(roles)
    }
}

/// How a node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS servers (`nats://host:port`), any of the cluster's.
    pub nats: Vec<String>,
    /// PostgreSQL (`postgres://user@host:port/db`).
    pub postgres: String,
    /// This node's roles.
    pub roles: Roles,
    /// Partitions of the input log, fixed when the cluster is created.
    pub partitions: u32,
    /// The partitions this node takes at once when it starts; others only a lease TTL
    /// later (empty: all at once). Spreads the partitions over the nodes instead of
    /// leaving them to whoever is first; an owner that dies is replaced as fast either way.
    pub prefer_partitions: Vec<u32>,
    /// A partition owner's lease lasts this long without renewal (default 5 s): the time a
    /// dead owner's partitions wait before another node takes them.
    pub lease_ttl: Duration,
    /// This node's name (default: host name and process id).
    pub node: Option<String>,
}

/// PEM files of the HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}
