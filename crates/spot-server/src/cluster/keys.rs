//! API keys shared by a cluster's nodes: each node keeps its keys in its own `access.db`
//! (what its access control reads, [`crate::access`]), and every [`SHARE_EVERY`] copies
//! them both ways through PostgreSQL's `spot_api_keys`: a key made on one node (through
//! the API, `spot keys create`, or its first start) is taken on every node, and a
//! revocation anywhere revokes it everywhere (keys are never changed otherwise, and a
//! revoked key stays revoked, so copying in any order agrees).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::pg::PgState;
use crate::access::{AccessDb, AccessError, SharedKey};
use crate::shutdown::Phase;

/// How often a node copies keys both ways.
pub const SHARE_EVERY: Duration = Duration::from_millis(500);

/// Shares `data_dir`'s keys with the cluster's until the node stops.
pub async fn run(postgres: String, data_dir: PathBuf, mut phase: watch::Receiver<Phase>) {
    let mut pg: Option<PgState> = None;
    let mut local: Option<Arc<Mutex<AccessDb>>> = None;
    // What was last sent: sent again only when the node's keys changed.
    let mut sent: Option<Vec<SharedKey>> = None;
    loop {
        if let Err(e) = share(&postgres, &data_dir, &mut pg, &mut local, &mut sent).await {
            tracing::warn!("API keys not shared with the cluster: {e}");
            (pg, sent) = (None, None);
        }
        tokio::select! {
            _ = tokio::time::sleep(SHARE_EVERY) => {}
            _ = phase.changed() => {
                if *phase.borrow() != Phase::Running {
                    return;
                }
            }
        }
    }
}

/// One round: this node's keys to PostgreSQL when they changed, then the cluster's here.
async fn share(
    postgres: &str,
    data_dir: &std::path::Path,
    pg: &mut Option<PgState>,
    local: &mut Option<Arc<Mutex<AccessDb>>>,
    sent: &mut Option<Vec<SharedKey>>,
) -> Result<(), String> {
    if pg.is_none() {
        *pg = Some(
            PgState::connect(postgres)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let db = match local {
        Some(db) => db.clone(),
        None => {
            let dir = data_dir.to_path_buf();
            let opened = tokio::task::spawn_blocking(move || AccessDb::open(&dir))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            local.insert(Arc::new(Mutex::new(opened))).clone()
        }
    };
    let pg = pg.as_mut().expect("connected above");
    let mine = blocking(&db, |db| db.shared_keys()).await?;
    if sent.as_ref() != Some(&mine) {
        pg.share_api_keys(&mine).await.map_err(|e| e.to_string())?;
        *sent = Some(mine);
    }
    let cluster = pg.api_keys().await.map_err(|e| e.to_string())?;
    let merged = blocking(&db, move |db| db.merge_keys(&cluster)).await?;
    if merged > 0 {
        tracing::info!(keys = merged, "API keys taken from the cluster");
    }
    Ok(())
}

/// Runs `f` on `access.db` on a blocking thread (SQLite waits for locks and the disk).
async fn blocking<R: Send + 'static>(
    db: &Arc<Mutex<AccessDb>>,
    f: impl FnOnce(&mut AccessDb) -> Result<R, AccessError> + Send + 'static,
) -> Result<R, String> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || f(&mut db.lock().unwrap_or_else(|e| e.into_inner())))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}
