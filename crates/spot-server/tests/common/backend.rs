//! The backends a suite runs against: the embedded server, or a two-node cluster (nodes A
//! and B in this process, on one `nats-server -js` and one fresh PostgreSQL database of
//! their own). A test written once as `async fn name(backend: Backend)` runs on both
//! through [`on_backends!`]; it reaches the nodes through a [`Site`], writing to
//! [`Site::a`] and reading from [`Site::b`] where that is natural (on the embedded
//! backend both are the one server), which shows that any node serves the same state.
//!
//! Each cluster test has a NATS server of its own: the streams (`SPOT_IN`, `SPOT_OUT`) and
//! the lease bucket have fixed names, so two tests on one NATS server would apply each
//! other's input.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use spot_server::{ClusterConfig, Durability, Roles, Server, ServerConfig};
use test_support::nats::NatsCluster;
use test_support::postgres::TestDb;

use super::{presence, remember_key, spot_create, Raw};

/// Where a test's server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One embedded server (`spot serve` without cluster settings).
    Embedded,
    /// Two cluster nodes, A and B, with every role, on one NATS server and one database,
    /// with [`PARTITIONS`] partitions: A owns partition 0 and B partition 1, so the
    /// spots of a test fall in partitions of different owners, and so do their items.
    Cluster,
}

impl Backend {
    /// Whether the REST API serves the derived events log (`/api/events`): not on a
    /// cluster yet (`cluster/replica.rs`: "Not in the replica yet"). The checks of the log
    /// in the tests that run on both backends depend on this.
    pub fn has_events_log(self) -> bool {
        self == Backend::Embedded
    }
}

/// A cluster's partitions in the tests.
pub const PARTITIONS: u32 = 2;

/// A cluster's lease TTL in the tests (a node that stops gives its lease back, so no test
/// waits for it).
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// The servers of one test, and on a cluster the engines under them.
pub struct Site {
    /// Node A, then node B (one server on the embedded backend).
    nodes: Vec<Server>,
    /// Each node's data directory (admin key, access, webhooks, MQTT position).
    dirs: Vec<tempfile::TempDir>,
    /// The database and the NATS server, dropped (removed, killed) after the nodes.
    engines: Option<(TestDb, NatsCluster)>,
    tweak: Tweak,
}

impl Site {
    /// Node A's address: the one the test writes to (the embedded server itself).
    pub fn a(&self) -> SocketAddr {
        self.nodes[0].http_addr()
    }

    /// Node B's address: the one the test reads from (the embedded server itself).
    pub fn b(&self) -> SocketAddr {
        self.nodes[self.nodes.len() - 1].http_addr()
    }

    /// Node A.
    pub fn server(&self) -> &Server {
        &self.nodes[0]
    }

    /// Node A's data directory.
    pub fn dir(&self) -> &Path {
        self.dirs[0].path()
    }

    /// Whether this is the cluster backend.
    pub fn is_cluster(&self) -> bool {
        self.engines.is_some()
    }

    /// On a cluster, the node that last committed each partition, in partition order
    /// (empty before its first commit); none on the embedded server.
    pub fn partition_owners(&self) -> Vec<String> {
        let Some((db, _)) = &self.engines else {
            return Vec::new();
        };
        let owners = db.psql("SELECT coalesce(owner, '') FROM spot_partitions ORDER BY partition");
        owners.lines().map(str::to_string).collect()
    }

    /// Stops every node (together), then the engines.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    /// Stops every node and starts it again on its data directory (and on the cluster's
    /// engines), on new ports: a restart of the whole site.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Stops every node (together); the data directories and engines stay.
    pub async fn stop(&mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        futures_util::future::join_all(nodes.into_iter().map(Server::shutdown)).await;
    }

    /// Starts a node on each data directory (after [`Site::stop`], on new ports):
    /// `embedded`, or cluster nodes `a` and `b`.
    pub async fn start_again(&mut self) {
        assert!(self.nodes.is_empty(), "the nodes are running");
        let mut configs = Vec::new();
        for (i, dir) in self.dirs.iter().enumerate() {
            let name = match &self.engines {
                None => "embedded".to_string(),
                Some(_) => ((b'a' + i as u8) as char).to_string(),
            };
            let mut config = node_config(dir.path());
            (self.tweak)(&mut config);
            if let Some((db, nats)) = &self.engines {
                config.cluster = Some(ClusterConfig {
                    nats: vec![nats.urls()],
                    postgres: db.url().to_string(),
                    roles: Roles::default(),
                    partitions: PARTITIONS,
                    prefer_partitions: vec![i as u32 % PARTITIONS],
                    lease_ttl: LEASE_TTL,
                    node: Some(name.clone()),
                });
                if let Some(mqtt) = &mut config.push.mqtt {
                    mqtt.client_id = format!("{}-{name}", mqtt.client_id);
                }
            }
            configs.push((name, config));
        }
        // Together: each node takes the partition it prefers as it starts, and waits a
        // lease TTL before it tries the other's (a node started after the first's wait
        // would find its partition taken).
        let started =
            futures_util::future::join_all(configs.into_iter().map(|(name, config)| async move {
                Server::bind(config)
                    .await
                    .unwrap_or_else(|e| panic!("node {name} starts: {e}"))
            }))
            .await;
        for (server, dir) in started.into_iter().zip(&self.dirs) {
            remember_key(server.http_addr(), dir.path());
            self.nodes.push(server);
        }
    }
}

/// The config of a node on 127.0.0.1:0 with the data directory `dir`.
fn node_config(dir: &Path) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        sync: Durability::Normal,
        ..ServerConfig::default()
    }
}

/// What configures a test's nodes, kept for [`Site::restart`].
type Tweak = Box<dyn Fn(&mut ServerConfig) + Send + Sync>;

/// Starts `backend`, each node configured by `tweak`, and [`remember_key`]s each node's
/// first admin key. On the cluster, an MQTT outlet's client id gets the node's name
/// appended (a broker keeps one connection per client id).
pub async fn start_on(
    backend: Backend,
    tweak: impl Fn(&mut ServerConfig) + Send + Sync + 'static,
) -> Site {
    let engines = (backend == Backend::Cluster).then(|| (TestDb::create(), NatsCluster::single()));
    let nodes = match backend {
        Backend::Embedded => 1,
        Backend::Cluster => 2,
    };
    let mut site = Site {
        nodes: Vec::new(),
        dirs: (0..nodes)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect(),
        engines,
        tweak: Box::new(tweak),
    };
    site.start_again().await;
    site
}

/// [`start_on`] with spot 300 and `items` items present at its location, posted to node A.
pub async fn seeded_on(backend: Backend, items: usize) -> Site {
    let site = start_on(backend, |_| {}).await;
    let mut conn = Raw::connect(site.a()).await;
    let mut body = spot_create(300, 1);
    for i in 0..items {
        body.extend(presence("create", &format!("{i:024x}"), "near", None));
    }
    assert_eq!(conn.post("300", &[&body]).await.status, 200);
    site
}

/// For each `name` listed (an `async fn name(backend: Backend)` of the calling file), the
/// tests `embedded::name` and `cluster::name`, each with the runtime attribute given first
/// (`#[tokio::test]`, or a multi-threaded one). `name => #[ignore = "cluster: why"]` puts
/// that attribute on the cluster variant only.
macro_rules! on_backends {
    (#[$runtime:meta] $($name:ident $(=> #[$cluster:meta])?),* $(,)?) => {
        mod embedded {
            $(
                #[$runtime]
                async fn $name() {
                    super::$name($crate::common::Backend::Embedded).await
                }
            )*
        }
        mod cluster {
            $(
                #[$runtime]
                $(#[$cluster])?
                async fn $name() {
                    super::$name($crate::common::Backend::Cluster).await
                }
            )*
        }
    };
}
pub(crate) use on_backends;
