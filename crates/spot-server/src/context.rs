//! [`Context`]: what the connection tasks of ingest, the REST API and the listener share.

use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;

use crate::config::ServerLimits;
use crate::domain::Domain;
use crate::metrics::Metrics;
use crate::{outlets, pipeline};

/// What every connection task holds: the way to the pipeline, the live state's read
/// side, the counters, the bounds, the connection slots and the outlets.
#[derive(Debug)]
pub struct Context {
    /// Sender to the pipeline.
    pub pipeline: pipeline::PipelineSender,
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
    pub outlets: outlets::Outlets,
}
