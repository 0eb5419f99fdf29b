//! The api role's read side: a replica of the live state, rebuilt from PostgreSQL's rows
//! whenever a stage committed (the sum of the partitions' positions moved), so that the
//! REST API answers from any node with the embedded server's own query code and results.
//!
//! The rebuild reads every row in one snapshot and swaps the new [`Domain`] in under the
//! write lock: readers see one commit's state or the next one's, never a mix. It costs
//! the whole state per change (at most one per [`REFRESH_EVERY`]); reading only the rows
//! changed since the last refresh is the next step for large sites.
//! Not in the replica yet: the derived events log (`/api/events` is empty on a cluster).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::pg::PgState;
use crate::clock::now_ms;
use crate::domain::{Domain, DomainConfig};
use crate::shutdown::Phase;

/// How often the replica looks for a new commit.
pub const REFRESH_EVERY: Duration = Duration::from_millis(200);

/// Keeps `domain` a replica of PostgreSQL's rows until the node stops.
pub async fn run(
    postgres: String,
    domain: Arc<RwLock<Domain>>,
    config: DomainConfig,
    mut phase: watch::Receiver<Phase>,
) {
    let mut seen = None;
    let mut pg = None;
    loop {
        if pg.is_none() {
            match PgState::connect(&postgres).await {
                Ok(c) => pg = Some(c),
                Err(e) => tracing::warn!("the read replica cannot reach PostgreSQL: {e}"),
            }
        }
        if let Some(conn) = pg.as_mut() {
            match refresh(conn, &domain, &config, seen).await {
                Ok(version) => seen = Some(version),
                Err(e) => {
                    tracing::warn!("the read replica is not refreshed: {e}");
                    pg = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_EVERY) => {}
            _ = phase.changed() => {
                if *phase.borrow() != Phase::Running {
                    return;
                }
            }
        }
    }
}

/// Rebuilds the replica if the rows moved past `seen`; returns the version it holds.
async fn refresh(
    pg: &mut PgState,
    domain: &RwLock<Domain>,
    config: &DomainConfig,
    seen: Option<u64>,
) -> Result<u64, String> {
    let version = pg.version().await.map_err(|e| e.to_string())?;
    if seen == Some(version) {
        return Ok(version);
    }
    let (version, tables) = pg.all_rows().await.map_err(|e| e.to_string())?;
    let mut replica = Domain::new(config.clone());
    let now = now_ms();
    for (table, rows) in tables {
        replica
            .load(table, rows, now)
            .map_err(|e| format!("a stored row does not load: {e}"))?;
    }
    *domain.write().unwrap_or_else(|e| e.into_inner()) = replica;
    Ok(version)
}
