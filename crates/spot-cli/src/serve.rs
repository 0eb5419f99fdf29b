//! `spot serve`: settings → [`spot_server::ServerConfig`], tracing logs, a startup banner,
//! and a graceful stop on Ctrl-C / SIGTERM.
//!
//! Every setting comes, first found wins, from its flag, its `SPOT_*` environment variable,
//! the TOML file named by `--config` (same keys as the flags, e.g. `tcp-listen =
//! "0.0.0.0:7000"`), or the default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use spot_server::{Durability, Server, ServerConfig, ServerLimits, Stopped, TlsFiles};

/// Settings of `spot serve`: the flags, and the keys of the `--config` file.
#[derive(clap::Args, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
#[command(
    after_help = "Each setting is taken from its flag, else its environment variable, \
else the --config file (TOML, the flag names as keys, e.g. max-connections = 5000), else the \
default."
)]
pub struct Args {
    /// TOML file with settings (keys = flag names); flags and environment variables win.
    #[arg(short, long, env = "SPOT_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Check the settings (the --config file, TLS and CA files, MQTT URL) and exit: 0 when
    /// `spot serve` would start with them; nothing is created and no port is bound.
    #[arg(long)]
    #[serde(skip)]
    check_config: bool,
    /// HTTP address for spot POSTs and the REST API; a host name is resolved
    /// (`localhost:8080`) [default: 0.0.0.0:8080].
    #[arg(
        short,
        long,
        env = "SPOT_LISTEN",
        value_name = "HOST:PORT",
        value_parser = host_port
    )]
    listen: Option<String>,
    /// Data directory (SQLite databases `spot.db`: journal and events, `state.db`: resources),
    /// created on first start
    /// [default: spot-data].
    #[arg(short, long, env = "SPOT_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// Raw TCP ingest address, like --listen (off unless given).
    #[arg(long, env = "SPOT_TCP_LISTEN", value_name = "HOST:PORT", value_parser = host_port)]
    tcp_listen: Option<String>,
    /// Serve HTTPS on --listen with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "SPOT_TLS_CERT", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SPOT_TLS_KEY", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// A spot telnet service to dial and ingest (spec §4.2), redialled with backoff.
    /// Repeatable; the environment variable takes a comma-separated list, the file a list.
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "SPOT_PULL",
        value_delimiter = ','
    )]
    pull: Vec<String>,
    /// Seconds without traffic after which a spot is offline [default: 10].
    #[arg(
        long = "offline-after-secs",
        alias = "offline-after",
        env = "SPOT_OFFLINE_AFTER",
        value_name = "SECONDS"
    )]
    #[serde(
        rename = "offline-after-secs",
        alias = "offline-after",
        deserialize_with = "seconds"
    )]
    offline_after: Option<f64>,
    /// Hours of derived and upstream events kept [default: 24].
    #[arg(long, env = "SPOT_EVENTS_RETENTION_HOURS")]
    #[serde(deserialize_with = "hours")]
    events_retention_hours: Option<f64>,
    /// Start even when the journal (`spot.db`) has unreadable lines: drop them, logging
    /// each one; without it the server refuses to start and names them [default: false].
    #[arg(
        long,
        env = "SPOT_REPAIR_JOURNAL",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    repair_journal: Option<bool>,
    /// fsync every commit (`full`, survives power loss) or not (`normal`, survives a crash)
    /// [default: full].
    #[arg(long, env = "SPOT_SYNC", value_parser = ["full", "normal"])]
    sync: Option<String>,
    /// Largest single event in bytes [default: 65536].
    #[arg(long, env = "SPOT_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Largest POST body in bytes [default: 67108864].
    #[arg(long, env = "SPOT_MAX_BODY_BYTES")]
    max_body_bytes: Option<u64>,
    /// Most header lines per request [default: 64].
    #[arg(long, env = "SPOT_MAX_HEADERS")]
    max_headers: Option<usize>,
    /// Seconds to receive request headers (also the keep-alive idle limit) [default: 30].
    #[arg(
        long = "header-timeout-secs",
        alias = "header-timeout",
        env = "SPOT_HEADER_TIMEOUT",
        value_name = "SECONDS"
    )]
    #[serde(
        rename = "header-timeout-secs",
        alias = "header-timeout",
        deserialize_with = "seconds"
    )]
    header_timeout: Option<f64>,
    /// Seconds allowed between two pieces of a request body (checked every quarter of it:
    /// a silent body is cut after 1 to 1.25 times this) [default: 30].
    #[arg(
        long = "body-idle-timeout-secs",
        alias = "body-idle-timeout",
        env = "SPOT_BODY_IDLE_TIMEOUT",
        value_name = "SECONDS"
    )]
    #[serde(
        rename = "body-idle-timeout-secs",
        alias = "body-idle-timeout",
        deserialize_with = "seconds"
    )]
    body_idle_timeout: Option<f64>,
    /// Seconds from accepting an HTTP connection to the end of its first request head (TLS
    /// handshake included); a connection that says nothing is closed [default: 10].
    #[arg(
        long = "request-head-timeout-secs",
        env = "SPOT_REQUEST_HEAD_TIMEOUT",
        value_name = "SECONDS"
    )]
    #[serde(rename = "request-head-timeout-secs", deserialize_with = "seconds")]
    request_head_timeout: Option<f64>,
    /// Most open connections (HTTP and raw TCP each) [default: 10000].
    #[arg(long, env = "SPOT_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most open connections from one client address (HTTP and raw TCP each); a NAT with
    /// hundreds of spots fits the default [default: 1000].
    #[arg(long, env = "SPOT_MAX_CONNECTIONS_PER_ADDRESS")]
    max_connections_per_address: Option<usize>,
    /// Most HTTP connections that have not yet sent a request; past it (or at
    /// max-connections) the oldest of them is closed for a new one [default: a tenth of
    /// max-connections, at least 64].
    #[arg(long, env = "SPOT_MAX_UNIDENTIFIED_CONNECTIONS")]
    max_unidentified_connections: Option<usize>,
    /// Most HTTP connections that are push streams (/api/ws, /api/stream); past it `503`
    /// [default: a tenth of max-connections, at least 64].
    #[arg(long, env = "SPOT_MAX_STREAM_CONNECTIONS")]
    max_stream_connections: Option<usize>,
    /// Most HTTP connections that are API clients (neither a spot's POST nor a push
    /// stream); past it `503`. Spots are bounded by max-connections only
    /// [default: a tenth of max-connections, at least 64].
    #[arg(long, env = "SPOT_MAX_API_CONNECTIONS")]
    max_api_connections: Option<usize>,
    /// Connections over max-connections answered `503` at the same time; past it they are
    /// closed unanswered (a flood costs neither tasks nor descriptors) [default: 64].
    #[arg(long, env = "SPOT_MAX_REFUSALS")]
    max_refusals: Option<usize>,
    /// The newest derived events kept in memory, which the REST API serves (/api/events,
    /// a resource's events); see docs/memory.md [default: 100000].
    #[arg(long, env = "SPOT_EVENTS_MAX_IN_MEMORY", value_name = "N")]
    events_max_in_memory: Option<usize>,
    /// Upstream events waiting for the core before ingest stops reading (backpressure to
    /// the spots, which keep their events); bounds acknowledgement latency under overload
    /// [default: 4096].
    #[arg(long, env = "SPOT_CORE_QUEUE_EVENTS")]
    core_queue_events: Option<usize>,
    /// SQLite's page cache of spot.db (the journal and the events log), in MiB; see
    /// docs/memory.md [default: 64].
    #[arg(long, env = "SPOT_STORE_CACHE_MIB", value_name = "MIB")]
    store_cache_mib: Option<u64>,
    /// Derived events queued per WebSocket or SSE client before further ones are dropped
    /// for it (it then catches up from the events log); see docs/memory.md [default: 8192].
    #[arg(long, env = "SPOT_PUSH_QUEUE_EVENTS", value_name = "N")]
    push_queue_events: Option<usize>,
    /// Seconds a WebSocket or SSE client may leave written data untaken (it stopped
    /// reading) before its connection is closed; it resumes from its last event id
    /// [default: 30].
    #[arg(
        long = "push-send-timeout-secs",
        env = "SPOT_PUSH_SEND_TIMEOUT",
        value_name = "SECONDS"
    )]
    #[serde(rename = "push-send-timeout-secs", deserialize_with = "seconds")]
    push_send_timeout: Option<f64>,
    /// Seconds a stop (SIGTERM, Ctrl-C) waits for in-flight requests before closing the
    /// remaining connections; a second signal stops at once [default: 10].
    #[arg(
        long = "shutdown-grace-secs",
        alias = "shutdown-grace",
        env = "SPOT_SHUTDOWN_GRACE",
        value_name = "SECONDS"
    )]
    #[serde(
        rename = "shutdown-grace-secs",
        alias = "shutdown-grace",
        deserialize_with = "seconds"
    )]
    shutdown_grace: Option<f64>,
    /// Publish every derived event to this MQTT broker:
    /// `mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT][/prefix]` (`mqtts`: TLS, port 8883 by
    /// default; `%`-encode special characters of the user and password).
    #[arg(long, env = "SPOT_MQTT", value_name = "URL")]
    mqtt: Option<String>,
    /// Also trust the certificates of this PEM file for the `mqtts://` broker (a private CA
    /// or a self-signed certificate), besides the public roots.
    #[arg(long, env = "SPOT_MQTT_CA_CERT", value_name = "PEM")]
    mqtt_ca_cert: Option<PathBuf>,
    /// QoS of the MQTT publishes [default: 1].
    #[arg(long, env = "SPOT_MQTT_QOS", value_parser = ["0", "1", "2"])]
    mqtt_qos: Option<String>,
    /// Publish to MQTT only the events whose topic matches this filter (`+`, `#`);
    /// repeatable (an event matching any is published); the environment variable takes a
    /// comma-separated list, the file a list [default: #].
    #[arg(
        long,
        value_name = "FILTER",
        env = "SPOT_MQTT_FILTER",
        value_delimiter = ','
    )]
    mqtt_filter: Vec<String>,
    /// Events the MQTT outlet holds in memory while the broker is slow or away; past it
    /// the outlet reads them back from the events log; see docs/memory.md [default: 65536].
    #[arg(long, env = "SPOT_MQTT_QUEUE_EVENTS", value_name = "N")]
    mqtt_queue_events: Option<usize>,
    /// Also push every raw spot event, under `spots/<id>/events/<resource_type>/<action>`
    /// (MQTT, WebSocket, SSE; live only, no event id) [default: false].
    #[arg(
        long,
        env = "SPOT_PUBLISH_RAW",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    publish_raw: Option<bool>,
    /// Also trust the certificates of this PEM file for `https://` webhook targets (a
    /// private CA or a self-signed certificate), besides the public roots.
    #[arg(long, env = "SPOT_WEBHOOK_CA_CERT", value_name = "PEM")]
    webhook_ca_cert: Option<PathBuf>,
    /// Most deliveries queued per webhook subscription (a target that stops answering costs
    /// at most this much disk); past it the subscription is `overflowed` and, once its
    /// target takes deliveries again, reads on from the events log [default: 100000].
    #[arg(long, env = "SPOT_WEBHOOK_MAX_QUEUED_EVENTS", value_name = "N")]
    webhook_max_queued_events: Option<u64>,
    /// Most bytes of deliveries queued per webhook subscription (as above)
    /// [default: 67108864].
    #[arg(long, env = "SPOT_WEBHOOK_MAX_QUEUED_BYTES", value_name = "BYTES")]
    webhook_max_queued_bytes: Option<u64>,
    /// Log lines as `text` or as one JSON object per line (`json`, for log pipelines);
    /// levels and targets by `RUST_LOG` (e.g. `RUST_LOG=spot_server=debug`) [default: text].
    #[arg(long, env = "SPOT_LOG_FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Colour in text logs: `auto` (only when stderr is a terminal and `NO_COLOR` is unset),
    /// `always` or `never` [default: auto].
    #[arg(long, env = "SPOT_COLOR", value_parser = crate::color::CHOICES)]
    color: Option<String>,
    /// Which spots may stream events in: `open` (any serial, at most --max-spots spots),
    /// `enrolled` (only serials enrolled with `spot spots enroll` or POST /api/spots) or
    /// `secret` (enrolled, and each presents its own secret) [default: open].
    #[arg(long, env = "SPOT_ADMISSION", value_parser = ["open", "enrolled", "secret"])]
    spot_admission: Option<String>,
    /// Most spots the server keeps; a new serial beyond it is refused (403) and creates
    /// nothing [default: 10000].
    #[arg(long, env = "SPOT_MAX_SPOTS")]
    max_spots: Option<usize>,
    /// With `enrolled` or `secret` admission: until this time a new serial that connects is
    /// enrolled (with `secret`, bound to the secret it presents first). An ISO 8601 time
    /// (`2026-12-02T12:00:00Z`) or a span from the start (`+30m`, `+2h`, `+90s`).
    #[arg(long, env = "SPOT_ENROLL_UNTIL", value_name = "TIME")]
    enroll_until: Option<String>,
    /// Serve /metrics without an API key (for a Prometheus on a trusted network)
    /// [default: false].
    #[arg(
        long,
        env = "SPOT_METRICS_PUBLIC",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    metrics_public: Option<bool>,
    /// Let browser pages of this origin (`https://dashboard.example`) call the API
    /// (CORS); repeatable; the environment variable takes a comma-separated list, the file
    /// a list [default: none].
    #[arg(
        long,
        value_name = "ORIGIN",
        env = "SPOT_CORS_ORIGIN",
        value_delimiter = ','
    )]
    cors_origin: Vec<String>,
    /// Run as a node of a cluster on these NATS servers (JetStream; `nats://host:port`,
    /// repeatable; the environment variable takes a comma-separated list, the file a
    /// list); needs --postgres. See docs/cluster.md [default: none, the embedded server].
    #[arg(long, value_name = "URL", env = "SPOT_NATS", value_delimiter = ',')]
    nats: Vec<String>,
    /// The cluster's PostgreSQL database (`postgres://user@host:port/db`); needs --nats.
    #[arg(long, env = "SPOT_POSTGRES", value_name = "URL")]
    postgres: Option<String>,
    /// A cluster node's roles: any of `edge` (spot ingest), `stage` (partition owner),
    /// `api` (REST), comma-separated [default: edge,stage,api].
    #[arg(long, env = "SPOT_ROLE", value_name = "ROLES")]
    role: Option<String>,
    /// Partitions of a cluster's input log (1 to 64), fixed when the cluster is first
    /// created; a node with another count refuses to start [default: 1].
    #[arg(long, env = "SPOT_PARTITIONS")]
    partitions: Option<u32>,
    /// The partitions this cluster node takes at once when it starts (comma-separated);
    /// others it tries to take only a lease TTL later, so that the nodes that prefer them
    /// take them first [default: all at once].
    #[arg(
        long,
        env = "SPOT_PREFER_PARTITIONS",
        value_name = "P",
        value_delimiter = ','
    )]
    prefer_partitions: Vec<u32>,
    /// Seconds a cluster partition owner's lease lasts without renewal: a dead owner's
    /// partitions are taken over after it [default: 5].
    #[arg(long, env = "SPOT_LEASE_TTL_SECS", value_name = "SECONDS")]
    #[serde(deserialize_with = "seconds")]
    lease_ttl_secs: Option<f64>,
    /// This cluster node's name, in leases and commits [default: host name and process id].
    #[arg(long, env = "SPOT_NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
}

impl Args {
    /// Each setting of `self` (flags and environment), else `lower`'s (the file).
    fn over(self, lower: Args) -> Args {
        Args {
            config: self.config.or(lower.config),
            check_config: self.check_config || lower.check_config,
            listen: self.listen.or(lower.listen),
            data: self.data.or(lower.data),
            tcp_listen: self.tcp_listen.or(lower.tcp_listen),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            pull: if self.pull.is_empty() {
                lower.pull
            } else {
                self.pull
            },
            offline_after: self.offline_after.or(lower.offline_after),
            events_retention_hours: self.events_retention_hours.or(lower.events_retention_hours),
            sync: self.sync.or(lower.sync),
            repair_journal: self.repair_journal.or(lower.repair_journal),
            max_message_bytes: self.max_message_bytes.or(lower.max_message_bytes),
            max_body_bytes: self.max_body_bytes.or(lower.max_body_bytes),
            max_headers: self.max_headers.or(lower.max_headers),
            header_timeout: self.header_timeout.or(lower.header_timeout),
            body_idle_timeout: self.body_idle_timeout.or(lower.body_idle_timeout),
            request_head_timeout: self.request_head_timeout.or(lower.request_head_timeout),
            max_connections: self.max_connections.or(lower.max_connections),
            max_connections_per_address: self
                .max_connections_per_address
                .or(lower.max_connections_per_address),
            max_unidentified_connections: self
                .max_unidentified_connections
                .or(lower.max_unidentified_connections),
            max_stream_connections: self.max_stream_connections.or(lower.max_stream_connections),
            max_api_connections: self.max_api_connections.or(lower.max_api_connections),
            max_refusals: self.max_refusals.or(lower.max_refusals),
            events_max_in_memory: self.events_max_in_memory.or(lower.events_max_in_memory),
            core_queue_events: self.core_queue_events.or(lower.core_queue_events),
            store_cache_mib: self.store_cache_mib.or(lower.store_cache_mib),
            push_queue_events: self.push_queue_events.or(lower.push_queue_events),
            push_send_timeout: self.push_send_timeout.or(lower.push_send_timeout),
            shutdown_grace: self.shutdown_grace.or(lower.shutdown_grace),
            mqtt: self.mqtt.or(lower.mqtt),
            mqtt_ca_cert: self.mqtt_ca_cert.or(lower.mqtt_ca_cert),
            mqtt_qos: self.mqtt_qos.or(lower.mqtt_qos),
            mqtt_queue_events: self.mqtt_queue_events.or(lower.mqtt_queue_events),
            mqtt_filter: if self.mqtt_filter.is_empty() {
                lower.mqtt_filter
            } else {
                self.mqtt_filter
            },
            publish_raw: self.publish_raw.or(lower.publish_raw),
            webhook_ca_cert: self.webhook_ca_cert.or(lower.webhook_ca_cert),
            webhook_max_queued_events: self
                .webhook_max_queued_events
                .or(lower.webhook_max_queued_events),
            webhook_max_queued_bytes: self
                .webhook_max_queued_bytes
                .or(lower.webhook_max_queued_bytes),
            log_format: self.log_format.or(lower.log_format),
            color: self.color.or(lower.color),
            spot_admission: self.spot_admission.or(lower.spot_admission),
            max_spots: self.max_spots.or(lower.max_spots),
            enroll_until: self.enroll_until.or(lower.enroll_until),
            metrics_public: self.metrics_public.or(lower.metrics_public),
            nats: if self.nats.is_empty() {
                lower.nats
            } else {
                self.nats
            },
            postgres: self.postgres.or(lower.postgres),
            role: self.role.or(lower.role),
            partitions: self.partitions.or(lower.partitions),
            prefer_partitions: if self.prefer_partitions.is_empty() {
                lower.prefer_partitions
            } else {
                self.prefer_partitions
            },
            lease_ttl_secs: self.lease_ttl_secs.or(lower.lease_ttl_secs),
            node_name: self.node_name.or(lower.node_name),
            cors_origin: if self.cors_origin.is_empty() {
                lower.cors_origin
            } else {
                self.cors_origin
            },
        }
    }

    /// The settings with the `--config` file (if any) under them.
    fn with_file(self) -> anyhow::Result<Args> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        Ok(self.over(read_file(&path)?))
    }

    /// The server configuration, defaults filled in.
    fn server_config(self) -> anyhow::Result<ServerConfig> {
        let defaults = ServerConfig::default();
        let limits = ServerLimits::default();
        let sync = match self.sync.as_deref() {
            None | Some("full") => Durability::Full,
            Some("normal") => Durability::Normal,
            Some(other) => anyhow::bail!("sync {other:?}: must be \"full\" or \"normal\""),
        };
        let secs_or = |name: &str, value: Option<f64>, default: Duration| match value {
            Some(v) => secs(name, v),
            None => Ok(default),
        };
        let push_defaults = spot_server::outlets::PushConfig::default();
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => anyhow::bail!("tls-cert and tls-key go together: give both or neither"),
        };
        let cluster = match (self.nats.is_empty(), self.postgres) {
            (true, None) => {
                if self.role.is_some()
                    || self.partitions.is_some()
                    || !self.prefer_partitions.is_empty()
                {
                    anyhow::bail!("role, partitions and prefer-partitions are settings of a cluster node: give nats and postgres too");
                }
                None
            }
            (false, Some(postgres)) => Some(spot_server::ClusterConfig {
                nats: self.nats,
                postgres,
                roles: match &self.role {
                    Some(roles) => roles
                        .parse()
                        .map_err(|e: String| anyhow::anyhow!("role: {e}"))?,
                    None => spot_server::Roles::default(),
                },
                partitions: self.partitions.unwrap_or(1),
                prefer_partitions: self.prefer_partitions,
                lease_ttl: secs_or(
                    "lease-ttl-secs",
                    self.lease_ttl_secs,
                    Duration::from_secs(5),
                )?,
                node: self.node_name,
            }),
            _ => anyhow::bail!("nats and postgres go together: a cluster node needs both"),
        };
        Ok(ServerConfig {
            cluster,
            listen: match &self.listen {
                Some(listen) => resolve("listen", listen)?,
                None => defaults.listen,
            },
            tcp_listen: self
                .tcp_listen
                .as_deref()
                .map(|addr| resolve("tcp-listen", addr))
                .transpose()?,
            tls,
            pull: self.pull,
            pull_backoff: defaults.pull_backoff,
            data_dir: self.data.unwrap_or(defaults.data_dir),
            offline_after: secs_or(
                "offline-after-secs",
                self.offline_after,
                defaults.offline_after,
            )?,
            events_retention: secs_or(
                "events-retention-hours",
                self.events_retention_hours.map(|h| h * 3600.0),
                defaults.events_retention,
            )?,
            sync,
            repair_journal: self.repair_journal.unwrap_or(false),
            limits: ServerLimits {
                max_message_bytes: self.max_message_bytes.unwrap_or(limits.max_message_bytes),
                max_body_bytes: self.max_body_bytes.unwrap_or(limits.max_body_bytes),
                max_headers: self.max_headers.unwrap_or(limits.max_headers),
                header_read_timeout: secs_or(
                    "header-timeout-secs",
                    self.header_timeout,
                    limits.header_read_timeout,
                )?,
                body_idle_timeout: secs_or(
                    "body-idle-timeout-secs",
                    self.body_idle_timeout,
                    limits.body_idle_timeout,
                )?,
                request_head_timeout: secs_or(
                    "request-head-timeout-secs",
                    self.request_head_timeout,
                    limits.request_head_timeout,
                )?,
                max_connections: self.max_connections.unwrap_or(limits.max_connections),
                max_connections_per_address: self
                    .max_connections_per_address
                    .unwrap_or(limits.max_connections_per_address),
                max_unidentified_connections: self.max_unidentified_connections,
                max_stream_connections: self.max_stream_connections,
                max_api_connections: self.max_api_connections,
                max_refusals: self.max_refusals.unwrap_or(limits.max_refusals),
                events_max_in_memory: self
                    .events_max_in_memory
                    .unwrap_or(limits.events_max_in_memory),
                core_queue_events: self.core_queue_events.unwrap_or(limits.core_queue_events),
                store_cache_bytes: self
                    .store_cache_mib
                    .map_or(limits.store_cache_bytes, |mib| {
                        mib.saturating_mul(1024 * 1024)
                    }),
                shutdown_grace: secs_or(
                    "shutdown-grace-secs",
                    self.shutdown_grace,
                    limits.shutdown_grace,
                )?,
                ..limits
            },
            push: spot_server::outlets::PushConfig {
                mqtt: match mqtt_config(
                    self.mqtt.as_deref(),
                    self.mqtt_qos.as_deref(),
                    self.mqtt_ca_cert.as_deref(),
                    &self.mqtt_filter,
                )? {
                    Some(mut mqtt) => {
                        if let Some(n) = self.mqtt_queue_events {
                            mqtt.queue_capacity = n.max(1);
                        }
                        Some(mqtt)
                    }
                    None => match self.mqtt_queue_events {
                        Some(n) => anyhow::bail!("mqtt-queue-events {n}: no mqtt broker is set"),
                        None => None,
                    },
                },
                publish_raw: self.publish_raw.unwrap_or(false),
                hub: spot_push::HubConfig {
                    queue_capacity: self
                        .push_queue_events
                        .unwrap_or(push_defaults.hub.queue_capacity),
                    ..push_defaults.hub
                },
                stream: spot_push::StreamLimits {
                    ws_send_timeout: secs_or(
                        "push-send-timeout-secs",
                        self.push_send_timeout,
                        push_defaults.stream.ws_send_timeout,
                    )?,
                    ..push_defaults.stream
                },
                webhooks: {
                    let defaults = spot_push::webhook::WebhookConfig::default();
                    spot_push::webhook::WebhookConfig {
                        ca_cert: self.webhook_ca_cert,
                        max_queued_events: self
                            .webhook_max_queued_events
                            .unwrap_or(defaults.max_queued_events),
                        max_queued_bytes: self
                            .webhook_max_queued_bytes
                            .unwrap_or(defaults.max_queued_bytes),
                        ..defaults
                    }
                },
            },
            access: access_config(
                self.spot_admission.as_deref(),
                self.max_spots,
                self.enroll_until.as_deref(),
                self.metrics_public.unwrap_or(false),
                self.cors_origin,
            )?,
        })
    }
}

/// The access-control settings.
fn access_config(
    admission: Option<&str>,
    max_spots: Option<usize>,
    enroll_until: Option<&str>,
    metrics_public: bool,
    cors_origins: Vec<String>,
) -> anyhow::Result<spot_server::access::AccessConfig> {
    use spot_server::access::{AccessConfig, AdmissionConfig, AdmissionMode};
    let defaults = AdmissionConfig::default();
    let mode: AdmissionMode = match admission {
        Some(text) => text
            .parse()
            .map_err(|e| anyhow::anyhow!("spot-admission: {e}"))?,
        None => defaults.mode,
    };
    let enroll_until = enroll_until
        .map(|text| enroll_time(text, spot_server::clock::now_ms()))
        .transpose()?;
    if enroll_until.is_some() && mode == AdmissionMode::Open {
        anyhow::bail!(
            "enroll-until needs --spot-admission enrolled or secret (with open admission \
             every spot is admitted anyway)"
        );
    }
    for origin in &cors_origins {
        let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
            && !origin.trim_end_matches('/').contains(['?', '#'])
            && origin.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            anyhow::bail!(
                "cors-origin {origin:?}: an origin is scheme://host[:port], e.g. \
                 https://dashboard.example"
            );
        }
    }
    Ok(AccessConfig {
        admission: AdmissionConfig {
            mode,
            max_spots: max_spots.unwrap_or(defaults.max_spots),
            enroll_until,
        },
        metrics_public,
        cors_origins,
        ..AccessConfig::default()
    })
}

/// `--enroll-until`: an ISO 8601 time, or `+N[s|m|h]` from `now` (ms).
fn enroll_time(text: &str, now: i64) -> anyhow::Result<i64> {
    let bad = || {
        anyhow::anyhow!(
            "enroll-until {text:?}: give an ISO 8601 time (2026-12-02T12:00:00Z) or a span \
             from now (+30m, +2h, +90s)"
        )
    };
    if let Some(span) = text.strip_prefix('+') {
        let (number, unit) = span.split_at(span.len().saturating_sub(1));
        let factor = match unit {
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(bad()),
        };
        let n: f64 = number.parse().map_err(|_| bad())?;
        if !(n.is_finite() && n >= 0.0) {
            return Err(bad());
        }
        return Ok(now + (n * factor) as i64);
    }
    spot_protocol::Timestamp::parse(text)
        .map(|t| t.as_millis())
        .ok_or_else(bad)
}

/// Reads a `--config` file; unknown keys and wrong types are errors naming the key.
fn read_file(path: &Path) -> anyhow::Result<Args> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

fn mqtt_config(
    url: Option<&str>,
    qos: Option<&str>,
    ca_cert: Option<&Path>,
    filters: &[String],
) -> anyhow::Result<Option<spot_push::MqttConfig>> {
    let Some(url) = url else {
        if let Some(ca) = ca_cert {
            anyhow::bail!("mqtt-ca-cert {}: no mqtt broker is set", ca.display());
        }
        if let Some(filter) = filters.first() {
            anyhow::bail!("mqtt-filter {filter:?}: no mqtt broker is set");
        }
        return Ok(None);
    };
    let mut config = spot_push::MqttConfig::from_url(url).context("mqtt")?;
    config.qos = qos.unwrap_or("1").parse().context("mqtt-qos")?;
    if !filters.is_empty() {
        config.filters = filters
            .iter()
            .map(|f| {
                spot_push::TopicFilter::new(f)
                    .with_context(|| format!("mqtt-filter {f:?}: not a topic filter"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(ca) = ca_cert {
        config.trust_ca_file(ca).context("mqtt-ca-cert")?;
    }
    Ok(Some(config))
}

/// A number of seconds in the `--config` file (an integer or not); the error says so
/// rather than serde's `expected f64`.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    d.deserialize_any(Number("a number of seconds, e.g. 2.5 (no unit)"))
        .map(Some)
}

/// A number of hours in the `--config` file, as [`seconds`].
fn hours<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    d.deserialize_any(Number("a number of hours, e.g. 24 (no unit)"))
        .map(Some)
}

/// Reads an integer or a float as `f64`; expects what its text says.
struct Number(&'static str);

impl serde::de::Visitor<'_> for Number {
    type Value = f64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.0)
    }

    fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
}

/// `HOST:PORT` (or `IP:PORT`, `[IPv6]:PORT`) in form; [`resolve`] looks the host up.
fn host_port(addr: &str) -> Result<String, String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(addr.to_string())
        }
        _ => Err("expected HOST:PORT, e.g. 0.0.0.0:8080 or localhost:8080".into()),
    }
}

/// The address to listen on for `addr` (`IP:PORT`, or `HOST:PORT` resolved, IPv4 first).
fn resolve(name: &str, addr: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(ip) = addr.parse() {
        return Ok(ip);
    }
    let found: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .with_context(|| format!("{name} {addr:?}: the host name can't be resolved"))?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .with_context(|| format!("{name} {addr:?}: the host name has no address"))
}

fn secs(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{name} {value}: not a duration"))
}

/// How the server logs: to stderr, as text (coloured or not) or as JSON lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Logs {
    json: bool,
    ansi: bool,
}

impl Logs {
    fn from_args(args: &Args) -> anyhow::Result<Logs> {
        let json = match args.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => anyhow::bail!("log-format {other:?}: must be \"text\" or \"json\""),
        };
        let ansi = crate::color::enabled(
            args.color.as_deref(),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )?;
        Ok(Logs {
            json,
            ansi: ansi && !json,
        })
    }

    fn init(self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(self.ansi);
        if self.json {
            logs.json().init();
        } else {
            logs.init();
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let check_only = args.check_config;
    let args = args.with_file()?;
    let logs = Logs::from_args(&args)?;
    let config = args.server_config()?;
    if check_only {
        Server::check(&config)?;
        println!("configuration OK");
        return Ok(ExitCode::SUCCESS);
    }
    logs.init();
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
            "spot server {} ready: HTTP on {}://{} (POST /api/spots/{{serial}}/events/, REST /api/…, /metrics){}{}; data in {}",
            env!("CARGO_PKG_VERSION"),
            if server.is_https() { "https" } else { "http" },
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
            stopped = server.shutdown() => match stopped {
                Stopped::Clean => {
                    tracing::info!("stopped");
                    Ok(ExitCode::SUCCESS)
                }
                Stopped::CommitFailing => {
                    tracing::error!(
                        "stopped with the last commit failing (is the disk full?): its events \
                         were not acknowledged, the spots resend them after the restart"
                    );
                    Ok(ExitCode::FAILURE)
                }
            },
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(flags: &[&str]) -> Args {
        Cli::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
            .expect("flags parse")
            .args
    }

    fn file(text: &str) -> (tempfile::NamedTempFile, String) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        let path = f.path().display().to_string();
        (f, path)
    }

    #[test]
    fn a_flag_beats_the_file_which_beats_the_default() {
        let (_f, path) = file(
            "listen = \"127.0.0.1:9001\"\nmax-connections = 7\nmax-refusals = 3\nsync = \"normal\"\n\
             pull = [\"10.0.0.5:23\", \"10.0.0.6:23\"]\nshutdown-grace = 2.5\n",
        );
        let config = parse(&["--config", &path, "--listen", "127.0.0.1:9002"])
            .with_file()
            .unwrap()
            .server_config()
            .unwrap();
        assert_eq!(
            config.listen,
            "127.0.0.1:9002".parse().unwrap(),
            "flag wins"
        );
        assert_eq!(config.limits.max_connections, 7, "file beats default");
        assert_eq!(config.limits.max_refusals, 3, "file beats default");
        assert_eq!(config.sync, Durability::Normal);
        assert_eq!(config.pull, ["10.0.0.5:23", "10.0.0.6:23"]);
        assert_eq!(config.limits.shutdown_grace, Duration::from_millis(2500));
        assert_eq!(config.data_dir, PathBuf::from("spot-data"), "default");
        assert_eq!(
            config.limits.max_body_bytes,
            ServerLimits::default().max_body_bytes
        );
    }

    #[test]
    fn flags_replace_the_files_pull_list() {
        let (_f, path) = file("pull = [\"10.0.0.5:23\"]\n");
        let args = parse(&["--config", &path, "--pull", "a:1", "--pull", "b:2"]);
        assert_eq!(args.with_file().unwrap().pull, ["a:1", "b:2"]);
    }

    #[test]
    fn tls_needs_both_files() {
        let (_f, path) = file("tls-cert = \"/etc/spot/cert.pem\"\n");
        let err = parse(&["--config", &path])
            .with_file()
            .and_then(Args::server_config)
            .unwrap_err();
        assert!(err.to_string().contains("give both"), "{err}");
        let config = parse(&["--config", &path, "--tls-key", "/k.pem"])
            .with_file()
            .and_then(Args::server_config)
            .unwrap();
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                cert: "/etc/spot/cert.pem".into(),
                key: "/k.pem".into()
            })
        );
    }

    #[test]
    fn no_settings_give_the_embedded_defaults() {
        let config = parse(&[]).with_file().unwrap().server_config().unwrap();
        let defaults = ServerConfig::default();
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.data_dir, defaults.data_dir);
        assert_eq!(config.offline_after, defaults.offline_after);
        assert_eq!(config.tcp_listen, None);
    }

    #[test]
    fn mqtt_login_tls_and_ca_file() {
        let mqtt = |flags: &[&str]| {
            parse(flags)
                .with_file()
                .and_then(Args::server_config)
                .map(|c| c.push.mqtt)
        };
        let ca = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/localhost-cert.pem"
        );
        let config = mqtt(&["--mqtt", "mqtts://u:p@broker", "--mqtt-ca-cert", ca])
            .expect("valid")
            .expect("mqtt on");
        assert_eq!((config.port, config.username.as_deref()), (8883, Some("u")));
        assert!(config.tls.is_some());
        let err = mqtt(&["--mqtt", "mqtt://broker", "--mqtt-ca-cert", ca]).expect_err("plain");
        assert!(format!("{err:#}").contains("not mqtts://"), "{err:#}");
        let err = mqtt(&["--mqtt-ca-cert", ca]).expect_err("no broker");
        assert!(format!("{err:#}").contains("no mqtt broker"), "{err:#}");
        let err = mqtt(&["--mqtt", "mqtts://b", "--mqtt-ca-cert", "/nonexistent.pem"])
            .expect_err("missing file");
        assert!(format!("{err:#}").contains("/nonexistent.pem"), "{err:#}");
    }

    #[test]
    fn mqtt_filters_from_repeated_flags_or_the_file() {
        let filters = |flags: &[&str]| {
            parse(flags)
                .with_file()
                .and_then(Args::server_config)
                .map(|c| {
                    c.push
                        .mqtt
                        .expect("mqtt on")
                        .filters
                        .iter()
                        .map(|f| f.as_str().to_owned())
                        .collect::<Vec<_>>()
                })
        };
        assert_eq!(filters(&["--mqtt", "mqtt://b"]).unwrap(), ["#"], "default");
        assert_eq!(
            filters(&[
                "--mqtt",
                "mqtt://b",
                "--mqtt-filter",
                "items/+/created",
                "--mqtt-filter",
                "spots/#"
            ])
            .unwrap(),
            ["items/+/created", "spots/#"]
        );
        let (_f, path) =
            file("mqtt = \"mqtt://b\"\nmqtt-filter = [\"presences/#\", \"items/#\"]\n");
        assert_eq!(
            filters(&["--config", &path]).unwrap(),
            ["presences/#", "items/#"]
        );
        assert_eq!(
            filters(&["--config", &path, "--mqtt-filter", "spots/#"]).unwrap(),
            ["spots/#"],
            "the flags replace the file's list"
        );
        let err = filters(&["--mqtt", "mqtt://b", "--mqtt-filter", "items/a#"]).expect_err("bad");
        assert!(format!("{err:#}").contains("items/a#"), "{err:#}");
        let err = parse(&["--mqtt-filter", "items/#"])
            .with_file()
            .and_then(Args::server_config)
            .expect_err("no broker");
        assert!(format!("{err:#}").contains("no mqtt broker"), "{err:#}");
    }

    #[test]
    fn webhook_queue_bounds_from_the_flag_the_file_or_the_default() {
        let (_f, path) = file("webhook-max-queued-events = 500\nwebhook-max-queued-bytes = 9\n");
        let bounds = |flags: &[&str]| {
            let w = parse(flags)
                .with_file()
                .and_then(Args::server_config)
                .unwrap()
                .push
                .webhooks;
            (w.max_queued_events, w.max_queued_bytes)
        };
        let defaults = spot_push::webhook::WebhookConfig::default();
        assert_eq!(
            bounds(&[]),
            (defaults.max_queued_events, defaults.max_queued_bytes)
        );
        assert_eq!(bounds(&["--config", &path]), (500, 9));
        assert_eq!(
            bounds(&["--config", &path, "--webhook-max-queued-events", "7"]),
            (7, 9)
        );
    }

    #[test]
    fn memory_bounds_from_the_flag_the_file_or_the_default() {
        let (_f, path) =
            file("store-cache-mib = 8\npush-queue-events = 100\npush-send-timeout-secs = 2.5\n");
        let bounds = |flags: &[&str]| {
            let c = parse(flags)
                .with_file()
                .and_then(Args::server_config)
                .unwrap();
            (
                c.limits.store_cache_bytes,
                c.push.hub.queue_capacity,
                c.push.stream.ws_send_timeout,
            )
        };
        let mqtt_queue = |flags: &[&str]| {
            parse(flags)
                .server_config()
                .map(|c| c.push.mqtt.map(|m| m.queue_capacity))
        };
        assert_eq!(
            mqtt_queue(&["--mqtt", "mqtt://b", "--mqtt-queue-events", "10"]).unwrap(),
            Some(10)
        );
        assert!(mqtt_queue(&["--mqtt-queue-events", "10"]).is_err());
        assert_eq!(
            bounds(&[]),
            (64 << 20, 8192, std::time::Duration::from_secs(30))
        );
        assert_eq!(
            bounds(&["--config", &path]),
            (8 << 20, 100, std::time::Duration::from_millis(2500))
        );
        assert_eq!(
            bounds(&["--config", &path, "--push-send-timeout-secs", "1"]).2,
            std::time::Duration::from_secs(1)
        );
    }

    #[test]
    fn webhook_ca_cert_from_the_file() {
        let (_f, path) = file("webhook-ca-cert = \"/etc/spot/ca.pem\"\n");
        let config = parse(&["--config", &path])
            .with_file()
            .and_then(Args::server_config)
            .unwrap();
        assert_eq!(
            config.push.webhooks.ca_cert,
            Some(PathBuf::from("/etc/spot/ca.pem"))
        );
    }

    #[test]
    fn publish_raw_from_the_flag_the_file_or_off() {
        let raw = |flags: &[&str]| {
            parse(flags)
                .with_file()
                .and_then(Args::server_config)
                .unwrap()
                .push
                .publish_raw
        };
        assert!(!raw(&[]), "off by default");
        assert!(raw(&["--publish-raw"]));
        let (_f, path) = file("publish-raw = true\n");
        assert!(raw(&["--config", &path]));
        assert!(
            !raw(&["--config", &path, "--publish-raw=false"]),
            "the flag beats the file"
        );
    }

    #[test]
    fn repair_journal_from_the_flag_the_file_or_off() {
        let repair = |flags: &[&str]| {
            parse(flags)
                .with_file()
                .and_then(Args::server_config)
                .unwrap()
                .repair_journal
        };
        assert!(!repair(&[]), "off by default");
        assert!(repair(&["--repair-journal"]));
        let (_f, path) = file("repair-journal = true\n");
        assert!(repair(&["--config", &path]));
        assert!(
            !repair(&["--config", &path, "--repair-journal=false"]),
            "the flag beats the file"
        );
    }

    #[test]
    fn a_bad_file_names_the_key() {
        for (text, needle) in [
            ("lisen = \"1.2.3.4:5\"\n", "lisen"),
            ("max-connections = \"many\"\n", "max-connections"),
            ("sync = \"sometimes\"\n", "sometimes"),
        ] {
            let (_f, path) = file(text);
            let err = parse(&["--config", &path])
                .with_file()
                .and_then(Args::server_config)
                .unwrap_err();
            assert!(format!("{err:#}").contains(needle), "{text}: {err:#}");
        }
    }
}
