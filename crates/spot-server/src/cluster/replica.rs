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

use async_nats::jetstream::stream::LastRawMessageErrorKind;

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
    /// The partitions' positions the replica holds.
    held: watch::Receiver<Positions>,
    /// Asks for a refresh now.
    poke: Arc<Notify>,
}

/// The replica's side of [`Replica`].
#[derive(Debug)]
pub struct Progress {
    held: watch::Sender<Positions>,
    poke: Arc<Notify>,
}

/// A [`Replica`] and its [`Progress`].
pub fn progress() -> (Replica, Progress) {
    let (held, rx) = watch::channel(Positions::new());
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
    /// Waits (at most [`REACH_WITHIN`]) until the replica holds partition `p`'s commit at
    /// `position`.
    pub async fn reach(mut self, p: u32, position: u64) {
        self.poke.notify_one();
        let reached = self.held.wait_for(|held| holds(held, p, position));
        let _ = tokio::time::timeout(REACH_WITHIN, reached).await;
    }
}

/// Whether `held` holds partition `p`'s commit at `position`.
fn holds(held: &Positions, p: u32, position: u64) -> bool {
    held.get(&(p as i32)).is_some_and(|&at| at >= position)
}

/// How long a read waits for the replica to catch up at most; past it, it is served from
/// what the replica holds (and a warning says so).
pub const CATCH_UP_WITHIN: Duration = Duration::from_secs(5);

/// What makes a REST read see everything acknowledged before it (as on the embedded
/// server, where a `200` means the state holds the events): the read waits until the
/// replica holds, of every partition, the last message the input log holds of it at the
/// time of the read.
#[derive(Debug, Clone)]
pub struct ReadBarrier {
    /// The input log.
    pub(super) js: async_nats::jetstream::Context,
    /// The replica.
    pub(super) replica: Replica,
    /// How many partitions the cluster has.
    pub(super) partitions: u32,
    /// How far the node's `/api/events` holds `SPOT_OUT` ([`super::events::EventsView`]).
    pub(super) events: watch::Receiver<u64>,
}

impl ReadBarrier {
    /// Waits until the replica holds what the input log holds now (at most
    /// [`CATCH_UP_WITHIN`]).
    pub async fn catch_up(&self) {
        self.catch_up_once().await;
        // With several partitions, a commit waited for may have reported to another
        // partition's part of the log after its last position was read: once more.
        if self.partitions > 1 {
            self.catch_up_once().await;
        }
    }

    async fn catch_up_once(&self) {
        let last = match self.last_positions().await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!("a read does not wait for the replica: {e}");
                return;
            }
        };
        let caught_up = |held: &Positions| last.iter().all(|&(p, at)| holds(held, p, at));
        let mut held = self.replica.held.clone();
        if caught_up(&held.borrow()) {
            return;
        }
        self.replica.poke.notify_one();
        if tokio::time::timeout(CATCH_UP_WITHIN, held.wait_for(caught_up))
            .await
            .is_err()
        {
            tracing::warn!(
                positions = ?last,
                "a read is served from a replica that is behind the input log (no stage applied it within {} s)",
                CATCH_UP_WITHIN.as_secs()
            );
        }
    }

    /// Waits until the node's derived events (`/api/events`) hold what `SPOT_OUT` holds
    /// now (at most [`CATCH_UP_WITHIN`]). After [`ReadBarrier::catch_up`]: a commit the
    /// replica holds had its events stored in `SPOT_OUT` before it.
    pub async fn catch_up_events(&self) {
        let last = async {
            let mut stream = self
                .js
                .get_stream(super::wire::OUT_STREAM)
                .await
                .map_err(|e| e.to_string())?;
            let info = stream.info().await.map_err(|e| e.to_string())?;
            Ok::<u64, String>(info.state.last_sequence)
        };
        let last = match last.await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!("a read of the events does not wait for them: {e}");
                return;
            }
        };
        let mut held = self.events.clone();
        if tokio::time::timeout(CATCH_UP_WITHIN, held.wait_for(|&at| at >= last))
            .await
            .is_err()
        {
            tracing::warn!(
                sequence = last,
                "a read of the events is served without the last ones of {} (not read within {} s)",
                super::wire::OUT_STREAM,
                CATCH_UP_WITHIN.as_secs()
            );
        }
    }

    /// The position of each partition's last message in the input log (none: 0).
    async fn last_positions(&self) -> Result<Vec<(u32, u64)>, String> {
        let stream = self
            .js
            .get_stream(super::wire::IN_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        let lasts = (0..self.partitions).map(|p| {
            let stream = &stream;
            async move {
                let subject = super::wire::partition_filter(p);
                match stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(message) => Ok((p, message.sequence)),
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok((p, 0)),
                    Err(e) => Err(format!("the last message of partition {p}: {e}")),
                }
            }
        });
        futures_util::future::try_join_all(lasts).await
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
                    progress.held.send_replace(positions.clone());
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
            let mut held = domain.write().unwrap_or_else(|e| e.into_inner());
            // The derived events are not rows: they come from `SPOT_OUT` (`events::feed`).
            replica.take_events(&mut held);
            *held = replica;
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
