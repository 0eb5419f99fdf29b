//! Cluster mode (`spot serve --nats … --postgres …`): several nodes on NATS JetStream and
//! PostgreSQL, each with any of three roles (see `docs/cluster.md`):
//!
//! - [`edge`]: the embedded ingest, whose streams go to the input log `SPOT_IN` instead of
//!   the local pipeline; a spot's `200` leaves after JetStream acknowledged its events.
//! - [`stage`]: per partition, the one owner ([`lease`]) applies the input log to the
//!   sans-IO domain and commits rows and position in one PostgreSQL transaction
//!   ([`pg`]); derived events go to `SPOT_OUT`, reports about other partitions' items
//!   ([`crate::partition`], [`crate::domain::ItemReport`]) to their part of `SPOT_IN`.
//! - [`replica`]: the REST API's read side, rebuilt from PostgreSQL's rows.
//! - [`events`]: every node's push outlets fed from `SPOT_OUT`, and resumed from it (an
//!   event's id is its stream sequence).
//! - [`access`]: every node's API keys and spot enrolments copied to and from
//!   PostgreSQL, so a key and an enrolment work on every node.
//! - [`webhooks`]: the webhook subscriptions, in PostgreSQL, each delivered by the one node
//!   holding its lease.
//! - [`mqtt`]: the MQTT outlet, run by the one node (of those given `--mqtt`) holding its
//!   lease, from a position in PostgreSQL.
//!
//! [`wire`] is what the input log holds. [`Cluster::connect`] creates the streams, the
//! lease bucket and the tables when they are missing (idempotent, any node may be first)
//! and refuses a partition count other than the cluster's.

pub mod access;
pub mod edge;
pub mod events;
pub mod lease;
pub mod mqtt;
pub mod pg;
pub mod replica;
pub mod stage;
pub mod webhooks;
pub mod wire;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tokio::sync::watch;

use crate::config::ClusterConfig;
pub use crate::config::Roles;
use crate::domain::{Domain, DomainConfig};
use crate::pipeline::PipelineReceiver;
use crate::shutdown::Phase;

/// Input log retention: a partition without an owner for longer than this loses input.
pub const IN_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// JetStream's duplicate window on both streams: a publish retried within it, and a
/// derived event made again by a replay within it, is dropped.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Most partitions a cluster has (each is a stage task on every node with the stage role,
/// and a partition's ids share a millisecond's 65,536 with the others).
pub const MAX_PARTITIONS: u32 = 64;

/// JetStream API requests that create the streams and the lease bucket wait this long
/// for an answer, and are tried [`SETUP_ATTEMPTS`] times, [`SETUP_RETRY`] apart (a NATS
/// cluster that has just started refuses to place a stream's replicas for a few seconds:
/// "no suitable peers for placement").
const SETUP_TIMEOUT: Duration = Duration::from_secs(1);
const SETUP_ATTEMPTS: u32 = 20;
const SETUP_RETRY: Duration = Duration::from_millis(500);

/// Why a node cannot join the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS unreachable or refusing.
    #[error("NATS {what}: {reason}")]
    Nats {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// PostgreSQL.
    #[error(transparent)]
    Pg(#[from] pg::PgError),
    /// A setting that cannot work.
    #[error("cluster settings: {0}")]
    Config(String),
}

fn nats(what: &'static str) -> impl FnOnce(String) -> ClusterError {
    move |reason| ClusterError::Nats { what, reason }
}

/// A node's connections to the cluster's engines.
pub struct Cluster {
    config: ClusterConfig,
    js: jetstream::Context,
    leases: async_nats::jetstream::kv::Store,
    node: String,
    /// The read replica's progress (REST changes wait for it), until the replica starts.
    replica: (
        replica::Replica,
        std::sync::Mutex<Option<replica::Progress>>,
    ),
    /// How far the node's `/api/events` holds `SPOT_OUT` (written by the feed).
    events_held: (watch::Sender<u64>, watch::Receiver<u64>),
    /// `--publish-raw`: owners publish their spots' raw events, every node pushes them.
    publish_raw: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.node).finish()
    }
}

impl Cluster {
    /// Connects to NATS and PostgreSQL and creates what is missing of the streams, the
    /// lease bucket and the tables.
    pub async fn connect(
        config: ClusterConfig,
        publish_raw: bool,
    ) -> Result<Cluster, ClusterError> {
        check(&config)?;
        let node = config.node.clone().unwrap_or_else(default_node_name);
        let client = async_nats::ConnectOptions::new()
            .name(format!("spot serve {node}"))
            // No retry of the first connection: the node says at once that NATS is not
            // reachable (and exits) instead of waiting without answering; the server's
            // details are there once it returns (the replica count needs them).
            // Every server given (the client tries them in turn and learns the others).
            .connect(server_list(&config.nats))
            .await
            .map_err(|e| nats("connect")(e.to_string()))?;
        let js = jetstream::new(client.clone());
        // Replicas: as many as the NATS cluster has servers, at most 3.
        let servers = client
            .server_info()
            .connect_urls
            .len()
            .max(server_list(&config.nats).len());
        let replicas = servers.clamp(1, 3);
        // Made with short API timeouts: when nodes start together, the request of the one
        // that loses the race to create a stream went unanswered until the client's 10 s
        // timeout (seen with three NATS servers), and that node joined 10 s late.
        let mut setup_js = js.clone();
        setup_js.set_timeout(SETUP_TIMEOUT);
        for (name, subjects, max_age) in [
            (wire::IN_STREAM, "in.>", IN_MAX_AGE),
            (wire::OUT_STREAM, "out.>", Duration::from_secs(24 * 3600)),
        ] {
            let config = stream::Config {
                name: name.into(),
                subjects: vec![subjects.into()],
                max_age,
                duplicate_window: DUPLICATE_WINDOW,
                num_replicas: replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            };
            let mut attempt = 1;
            while let Err(e) = setup_js.get_or_create_stream(config.clone()).await {
                // Nodes starting together: another one created it between this node's
                // look and its creation. Opening it says whether it exists now.
                tokio::time::sleep(SETUP_RETRY).await;
                if setup_js.get_stream(name).await.is_ok() {
                    break;
                }
                if attempt == SETUP_ATTEMPTS {
                    return Err(nats("create the streams")(format!("{name}: {e}")));
                }
                tracing::info!(stream = name, attempt, "the stream is not there yet: {e}");
                attempt += 1;
            }
        }
        let leases = lease::bucket(&js, &setup_js, config.lease_ttl, replicas)
            .await
            .map_err(nats("create the lease bucket"))?;
        let mut pg = pg::PgState::connect(&config.postgres).await?;
        pg.migrate(config.partitions).await?;
        tracing::info!(
            node,
            roles = ?config.roles,
            partitions = config.partitions,
            replicas,
            "joined the cluster"
        );
        let (replica, progress) = replica::progress();
        Ok(Cluster {
            config,
            js,
            leases,
            node,
            replica: (replica, std::sync::Mutex::new(Some(progress))),
            events_held: events::events_held(),
            publish_raw,
        })
    }

    /// This node's roles.
    pub fn roles(&self) -> Roles {
        self.config.roles
    }

    /// Starts the edge on a thread of its own: it drains the pipeline's queue into the
    /// input log.
    pub fn start_edge(
        &self,
        rx: PipelineReceiver,
        state: Arc<RwLock<Domain>>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let (js, partitions) = (self.js.clone(), self.config.partitions);
        let run_id = format!("{}.{}", self.node, crate::clock::now_ms());
        let runtime = tokio::runtime::Handle::current();
        let replica = Some(self.replica.0.clone());
        std::thread::Builder::new()
            .name("spot-edge".into())
            .spawn(move || edge::run(rx, js, runtime, partitions, run_id, replica, Some(state)))
    }

    /// Starts the stage: one task per partition, each trying to own it.
    pub fn start_stage(&self, domain: DomainConfig, phase: watch::Receiver<Phase>) {
        let setup = stage::StageSetup {
            js: self.js.clone(),
            leases: self.leases.clone(),
            postgres: self.config.postgres.clone(),
            lease_ttl: self.config.lease_ttl,
            node: self.node.clone(),
            domain,
            partitions: self.config.partitions,
            prefer: self.config.prefer_partitions.clone(),
            publish_raw: self.publish_raw,
        };
        let presence = lease::Presence {
            node: self.node.clone(),
            prefer: self.config.prefer_partitions.clone(),
        };
        tokio::spawn(presence.advertise(self.leases.clone(), self.config.lease_ttl, phase.clone()));
        for p in 0..self.config.partitions {
            tokio::spawn(stage::run(setup.clone(), p, phase.clone()));
        }
    }

    /// What makes this node's REST reads see everything acknowledged before them.
    pub fn read_barrier(&self) -> replica::ReadBarrier {
        replica::ReadBarrier {
            js: self.js.clone(),
            replica: self.replica.0.clone(),
            partitions: self.config.partitions,
            events: self.events_held.1.clone(),
        }
    }

    /// The derived events log the outlets resume from (`SPOT_OUT`).
    pub fn events_log(&self) -> Arc<dyn spot_push::EventLog> {
        Arc::new(events::JetStreamEvents::new(self.js.clone()))
    }

    /// Starts sharing this node's API keys and spot enrolments (in `data_dir`) with the
    /// cluster's.
    pub fn start_access_sharing(
        &self,
        data_dir: std::path::PathBuf,
        phase: watch::Receiver<Phase>,
    ) {
        tokio::spawn(access::run(self.config.postgres.clone(), data_dir, phase));
    }

    /// The cluster's webhook subscriptions (for the REST API), and this node's part of
    /// their delivery (started here, on `hub`, until the node stops).
    pub fn start_webhooks(
        &self,
        hub: &spot_push::Hub,
        log: Arc<dyn spot_push::EventLog>,
        config: spot_push::webhook::WebhookConfig,
        phase: watch::Receiver<Phase>,
    ) -> Result<Arc<dyn spot_push::webhook::SubscriptionBook>, spot_push::webhook::WebhookError>
    {
        let delivery = webhooks::Delivery {
            postgres: self.config.postgres.clone(),
            leases: self.leases.clone(),
            lease_ttl: self.config.lease_ttl,
            node: self.node.clone(),
            hub: hub.clone(),
            log,
            sender: spot_push::webhook::Sender::new(&config)?,
            config: config.clone(),
        };
        tokio::spawn(webhooks::deliver(delivery, phase));
        Ok(Arc::new(webhooks::SharedSubscriptions::new(
            self.config.postgres.clone(),
            self.js.clone(),
            config.max_subscriptions,
        )))
    }

    /// Starts this node's bid for the MQTT outlet: while it holds the outlet's lease, it
    /// publishes `hub`'s events to `config`'s broker, the outlet in `slot`.
    pub fn start_mqtt(
        &self,
        hub: &spot_push::Hub,
        slot: crate::outlets::MqttSlot,
        config: spot_push::MqttConfig,
        phase: watch::Receiver<Phase>,
    ) {
        let setup = mqtt::MqttSetup {
            postgres: self.config.postgres.clone(),
            js: self.js.clone(),
            leases: self.leases.clone(),
            lease_ttl: self.config.lease_ttl,
            node: self.node.clone(),
            hub: hub.clone(),
            log: self.events_log(),
            config,
            slot,
        };
        tokio::spawn(mqtt::run(setup, phase));
    }

    /// Starts feeding this node's push hub from `SPOT_OUT`, and, on a node with the API
    /// role, the derived events of its REST API (kept in `domain`, at most
    /// `events_max_in_memory`).
    pub fn start_feed(
        &self,
        publisher: crate::outlets::Publisher,
        domain: Arc<RwLock<Domain>>,
        events_max_in_memory: usize,
        phase: watch::Receiver<Phase>,
    ) {
        let view = self.config.roles.api.then(|| events::EventsView {
            domain,
            history: events_max_in_memory as u64,
            held: self.events_held.0.clone(),
        });
        let (fed, fed_rx) = watch::channel(0);
        if self.publish_raw {
            tokio::spawn(events::raw_feed(
                self.js.clone(),
                publisher.clone(),
                fed_rx,
                phase.clone(),
            ));
        }
        tokio::spawn(events::feed(self.js.clone(), publisher, view, fed, phase));
    }

    /// Starts the read replica behind `domain`.
    pub fn start_replica(
        &self,
        domain: Arc<RwLock<Domain>>,
        config: DomainConfig,
        phase: watch::Receiver<Phase>,
    ) {
        let progress = self
            .replica
            .1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(progress) = progress else {
            return;
        };
        let scope = if self.config.roles.api {
            replica::Scope::All
        } else {
            replica::Scope::Spots
        };
        tokio::spawn(replica::run(
            self.config.postgres.clone(),
            domain,
            config,
            scope,
            progress,
            phase,
        ));
    }
}

/// Refuses settings a node cannot run with, before anything is created.
pub fn check(config: &ClusterConfig) -> Result<(), ClusterError> {
    if !(1..=MAX_PARTITIONS).contains(&config.partitions) {
        return Err(ClusterError::Config(format!(
            "{} partitions: a cluster has 1 to {MAX_PARTITIONS}",
            config.partitions
        )));
    }
    if config.lease_ttl < Duration::from_secs(1) {
        return Err(ClusterError::Config(
            "the lease TTL must be at least 1 s".into(),
        ));
    }
    if server_list(&config.nats).is_empty() {
        return Err(ClusterError::Config("no NATS server given".into()));
    }
    Ok(())
}

/// The NATS servers of `nats`, whose entries may each hold several separated by commas.
fn server_list(nats: &[String]) -> Vec<String> {
    nats.iter()
        .flat_map(|urls| urls.split(','))
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string)
        .collect()
}

/// `<host name>-<process id>`.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_refuses_what_a_cluster_cannot_run() {
        let config = ClusterConfig {
            nats: vec!["nats://a:4222".into()],
            postgres: "postgres://p@h/d".into(),
            roles: Roles::default(),
            partitions: 1,
            prefer_partitions: Vec::new(),
            lease_ttl: Duration::from_secs(5),
            node: None,
        };
        assert!(check(&config).is_ok());
        let refused = |c: &ClusterConfig| check(c).unwrap_err().to_string();
        for partitions in [2, MAX_PARTITIONS] {
            let more = ClusterConfig {
                partitions,
                ..config.clone()
            };
            assert!(check(&more).is_ok());
        }
        for partitions in [0, MAX_PARTITIONS + 1] {
            let wrong = ClusterConfig {
                partitions,
                ..config.clone()
            };
            assert!(refused(&wrong).contains(&format!("{partitions} partitions")));
        }
        let none = ClusterConfig {
            nats: vec![" ".into()],
            ..config
        };
        assert!(refused(&none).contains("no NATS server"));
    }

    #[test]
    fn every_nats_server_given_is_one_address() {
        let given = [
            "nats://a:4222,nats://b:4222".to_string(),
            " nats://c:4222 ".into(),
        ];
        assert_eq!(
            server_list(&given),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
    }
}
