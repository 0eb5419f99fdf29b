//! [`Context`]: what the connection tasks of ingest, the REST API and the listener share.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::watch;

use crate::accept::Connections;
use crate::access::Access;
use crate::config::ServerLimits;
use crate::domain::Domain;
use crate::metrics::Metrics;
use crate::shutdown::Phase;
use crate::{outlets, pipeline};

/// What every connection task holds: the way to the pipeline, the live state's read
/// side, the counters, the bounds, the open connections, the outlets, access control and
/// the server's phase.
#[derive(Debug)]
pub struct Context {
    /// Sender to the pipeline.
    pub pipeline: pipeline::PipelineSender,
    /// The live state (read side; the pipeline writes).
    pub domain: Arc<RwLock<Domain>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Bounds.
    pub limits: ServerLimits,
    /// The open HTTP connections and their budget.
    pub http_connections: Arc<Connections>,
    /// The open raw TCP connections and their budget.
    pub tcp_connections: Arc<Connections>,
    /// The push layer (hub, outlets, their router).
    pub outlets: outlets::Outlets,
    /// API keys and spot admission.
    pub access: Arc<Access>,
    /// The server's phase (`/readyz` says not ready once it is stopping).
    pub phase: watch::Receiver<Phase>,
    /// A cluster node: what a REST read waits for first (its replica holding everything
    /// acknowledged before the read); `None` on the embedded server.
    pub read_barrier: Option<crate::cluster::replica::ReadBarrier>,
}

/// Why the live state is not served: its owner (the pipeline) failed, and what it holds may
/// be half-applied. The server must be restarted; it recovers from its journal.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server's state owner failed ({0}); it must be restarted, and recovers from its journal"
)]
pub struct StateUnavailable(pub String);

impl Context {
    /// The live state for reading; never read through after its owner failed (a panic in
    /// the pipeline leaves it half-applied and its lock poisoned).
    pub fn live_state(&self) -> Result<RwLockReadGuard<'_, Domain>, StateUnavailable> {
        if let Some(failure) = self.pipeline.failure() {
            return Err(StateUnavailable(failure.to_string()));
        }
        self.domain
            .read()
            .map_err(|_| StateUnavailable("a panic while it held the live state".into()))
    }
}
