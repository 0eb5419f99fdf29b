//! The api role's read side: a replica of the live state, kept up to date from
//! PostgreSQL's rows whenever a stage committed (the sum of the partitions' positions
//! moved), so that the REST API answers from any node with the embedded server's own query
//! code and results.
//!
//! A refresh reads, in one snapshot, the rows written since the positions the replica
//! holds (deleted ones as tombstones, [`super::pg`]) and applies them under the write lock
//! ([`Domain::refresh_row`]): readers see one commit's state or a later one's, never a mix.
//! The first refresh, and one whose tombstones were purged meanwhile, reads every row into
//! a new [`Domain`] instead. At most one refresh per [`REFRESH_EVERY`], and one when a REST
//! read waits for it ([`ReadBarrier`]). A node without the api role keeps only the spots
//! (what its edge reads a spot's pending commands from, [`Scope::Spots`]).
//! Not in the replica yet: the derived events log (`/api/events` is empty on a cluster).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::pg::{PgState, Positions, Rows};
use crate::clock::now_ms;
use crate::domain::{Domain, DomainConfig};
use crate::shutdown::Phase;

/// How often the replica looks for a new commit.
/// (A REST read does not wait for it: it asks for a refresh when the replica is behind.)
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What the replica holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every row (the api role: REST).
    All,
    /// The spots only (an edge without the api role: pending commands).
    Spots,
}

/// The replica's progress, for those who wait for it to hold a commit.
#[derive(Debug, Clone)]
pub struct Replica {
    /// The position (sum of the partitions') the replica holds.
    held: watch::Receiver<u64>,
    /// Asks for a refresh now.
    poke: Arc<Notify>,
}

/// The replica's side of [`Replica`].
#[derive(Debug)]
pub struct Progress {
    held: watch::Sender<u64>,
    poke: Arc<Notify>,
}

/// A [`Replica`] and its [`Progress`].
pub fn progress() -> (Replica, Progress) {
    let (held, rx) = watch::channel(0);
    let poke = Arc::new(Notify::new());
    (
        Replica {
            held: rx,
            poke: poke.clone(),
        },
        Progress { held, poke },
    )
}

/// How long [`Replica::reach`] waits at most.
const REACH_WITHIN: Duration = Duration::from_secs(5);

impl Replica {
    /// Waits (at most [`REACH_WITHIN`]) until the replica holds position `position`.
    pub async fn reach(mut self, position: u64) {
        self.poke.notify_one();
        let reached = self.held.wait_for(|held| *held >= position);
        let _ = tokio::time::timeout(REACH_WITHIN, reached).await;
    }
}

/// How long a read waits for the replica to catch up at most; past it, it is served from
/// what the replica holds (and a warning says so).
pub const CATCH_UP_WITHIN: Duration = Duration::from_secs(5);

/// What makes a REST read see everything acknowledged before it (as on the embedded
/// server, where a `200` means the state holds the events): the read waits until the
/// replica holds the input log's last position at the time of the read.
#[derive(Debug, Clone)]
pub struct ReadBarrier {
    /// The input log.
    pub(super) js: async_nats::jetstream::Context,
    /// The replica.
    pub(super) replica: Replica,
}

impl ReadBarrier {
    /// Waits until the replica holds what the input log holds now (at most
    /// [`CATCH_UP_WITHIN`]).
    pub async fn catch_up(&self) {
        let last = match self.js.get_stream(super::wire::IN_STREAM).await {
            Ok(mut stream) => match stream.info().await {
                Ok(info) => info.state.last_sequence,
                Err(e) => {
                    tracing::warn!("a read does not wait for the replica: {e}");
                    return;
                }
            },
            Err(e) => {
                tracing::warn!("a read does not wait for the replica: {e}");
                return;
            }
        };
        let mut held = self.replica.held.clone();
        if *held.borrow() >= last {
            return;
        }
        self.replica.poke.notify_one();
        if tokio::time::timeout(CATCH_UP_WITHIN, held.wait_for(|h| *h >= last))
            .await
            .is_err()
        {
            tracing::warn!(
                position = last,
                "a read is served from a replica that is behind the input log (no stage applied it within {} s)",
                CATCH_UP_WITHIN.as_secs()
            );
        }
    }
}

/// Keeps `domain` a replica of PostgreSQL's rows until the node stops.
pub async fn run(
    postgres: String,
    domain: Arc<RwLock<Domain>>,
    config: DomainConfig,
    scope: Scope,
    progress: Progress,
    mut phase: watch::Receiver<Phase>,
) {
    let mut seen: Option<Positions> = None;
    let mut pg = None;
    loop {
        if pg.is_none() {
            match PgState::connect(&postgres).await {
                Ok(c) => pg = Some(c),
                Err(e) => tracing::warn!("the read replica cannot reach PostgreSQL: {e}"),
            }
        }
        if let Some(conn) = pg.as_mut() {
            match refresh(conn, &domain, &config, scope, seen.as_ref()).await {
                Ok(Some(positions)) => {
                    progress.held.send_replace(positions.values().sum());
                    seen = Some(positions);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("the read replica is not refreshed: {e}");
                    // It reads every row again.
                    (pg, seen) = (None, None);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_EVERY) => {}
            _ = progress.poke.notified() => {}
            _ = phase.changed() => {
                if *phase.borrow() != Phase::Running {
                    return;
                }
            }
        }
    }
}

/// Brings the replica from `seen` to the last commit, if the rows moved past it; returns
/// the positions it holds now (`None`: nothing moved).
async fn refresh(
    pg: &mut PgState,
    domain: &RwLock<Domain>,
    config: &DomainConfig,
    scope: Scope,
    seen: Option<&Positions>,
) -> Result<Option<Positions>, String> {
    let version = pg.version().await.map_err(|e| e.to_string())?;
    if seen.is_some_and(|s| s.values().sum::<u64>() == version) {
        return Ok(None);
    }
    let only = match scope {
        Scope::All => None,
        Scope::Spots => Some(crate::domain::Table::Spots),
    };
    let (positions, rows) = pg.rows_since(seen, only).await.map_err(|e| e.to_string())?;
    let now = now_ms();
    let bad = |e| format!("a stored row does not load: {e}");
    match rows {
        Rows::Whole(tables) => {
            let mut replica = Domain::new(config.clone());
            for (table, rows) in tables {
                replica.load(table, rows, now).map_err(bad)?;
            }
            *domain.write().unwrap_or_else(|e| e.into_inner()) = replica;
        }
        Rows::Changed(rows) => {
            let mut replica = domain.write().unwrap_or_else(|e| e.into_inner());
            for (table, id, doc) in rows {
                replica.refresh_row(table, &id, doc, now).map_err(bad)?;
            }
        }
    }
    Ok(Some(positions))
}
