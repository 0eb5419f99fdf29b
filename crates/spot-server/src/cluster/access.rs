//! Access control shared by a cluster's nodes: each node keeps its API keys and spot
//! enrolments in its own `access.db` (what its access control reads, [`crate::access`]),
//! and every [`SHARE_EVERY`] copies them both ways through PostgreSQL.
//!
//! - Keys (`spot_api_keys`): a key made on one node (through the API, `spot keys create`,
//!   or its first start) is taken on every node, and a revocation anywhere revokes it
//!   everywhere (keys are never changed otherwise, and a revoked key stays revoked, so
//!   copying in any order agrees).
//! - Enrolments (`spot_enrolments`): an enrolment, or its removal (`spot spots
//!   unenroll`, seen as a serial gone since the last round), replaces what other nodes
//!   hold when it is later (each node's clock: the later of two changes of one serial
//!   within a clock's skew of each other may lose).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::pg::PgState;
use crate::access::{AccessDb, AccessError, SharedEnrolment, SharedKey};
use crate::clock::now_ms;
use crate::shutdown::Phase;

/// How often a node copies keys both ways.
pub const SHARE_EVERY: Duration = Duration::from_millis(500);

/// Shares `data_dir`'s keys with the cluster's until the node stops.
pub async fn run(postgres: String, data_dir: PathBuf, mut phase: watch::Receiver<Phase>) {
    let mut pg: Option<PgState> = None;
    let mut local: Option<Arc<Mutex<AccessDb>>> = None;
    let mut sent = Sent::default();
    loop {
        if let Err(e) = share(&postgres, &data_dir, &mut pg, &mut local, &mut sent).await {
            tracing::warn!("access control not shared with the cluster: {e}");
            (pg, sent) = (None, Sent::default());
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

/// What this node's `access.db` held after the last round.
#[derive(Default)]
struct Sent {
    /// Its keys, as last sent (sent again only when they changed).
    keys: Option<Vec<SharedKey>>,
    /// Its enrolments (serial, when), to tell new ones and removed ones from.
    enrolments: Option<Vec<(String, i64)>>,
}

/// One round: this node's changes to PostgreSQL, then the cluster's here.
async fn share(
    postgres: &str,
    data_dir: &std::path::Path,
    pg: &mut Option<PgState>,
    local: &mut Option<Arc<Mutex<AccessDb>>>,
    sent: &mut Sent,
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
    if sent.keys.as_ref() != Some(&mine) {
        pg.share_api_keys(&mine).await.map_err(|e| e.to_string())?;
        sent.keys = Some(mine);
    }
    let cluster = pg.api_keys().await.map_err(|e| e.to_string())?;
    let merged = blocking(&db, move |db| db.merge_keys(&cluster)).await?;
    if merged > 0 {
        tracing::info!(keys = merged, "API keys taken from the cluster");
    }

    let mine = blocking(&db, |db| db.shared_enrolments()).await?;
    let (enrolled, removed) = enrolment_changes(sent.enrolments.as_deref(), &mine, now_ms());
    if !enrolled.is_empty() || !removed.is_empty() {
        pg.share_enrolments(&enrolled, &removed)
            .await
            .map_err(|e| e.to_string())?;
    }
    // What this round read, with what the merge changes (not this node's own changes):
    // a change made here meanwhile differs from it, and goes out next round.
    let mut seen: std::collections::BTreeMap<String, i64> =
        mine.into_iter().map(|e| (e.serial, e.enrolled)).collect();
    let (enrolled, removed) = pg.enrolments().await.map_err(|e| e.to_string())?;
    let merged = blocking(&db, move |db| db.merge_enrolments(&enrolled, &removed)).await?;
    if !merged.is_empty() {
        tracing::info!(
            enrolments = merged.len(),
            "spot enrolments taken from the cluster"
        );
    }
    for (serial, enrolled) in merged {
        match enrolled {
            Some(at) => seen.insert(serial, at),
            None => seen.remove(&serial),
        };
    }
    sent.enrolments = Some(seen.into_iter().collect());
    Ok(())
}

/// This node's enrolments that are new or changed since `before` (all of them in a
/// first round), and the serials enrolled `before` that are gone, removed `now`.
fn enrolment_changes(
    before: Option<&[(String, i64)]>,
    mine: &[SharedEnrolment],
    now: i64,
) -> (Vec<SharedEnrolment>, Vec<(String, i64)>) {
    let Some(before) = before else {
        return (mine.to_vec(), Vec::new());
    };
    let was: std::collections::HashMap<&str, i64> =
        before.iter().map(|(s, at)| (s.as_str(), *at)).collect();
    let is: std::collections::HashSet<&str> = mine.iter().map(|e| e.serial.as_str()).collect();
    let enrolled = mine
        .iter()
        .filter(|e| was.get(e.serial.as_str()) != Some(&e.enrolled))
        .cloned()
        .collect();
    let removed = before
        .iter()
        .filter(|(serial, _)| !is.contains(serial.as_str()))
        .map(|(serial, _)| (serial.clone(), now))
        .collect();
    (enrolled, removed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rounds_changes_are_new_enrolments_and_serials_gone_since_the_last() {
        let e = |serial: &str, at| SharedEnrolment {
            serial: serial.into(),
            secret_hash: None,
            enrolled: at,
            enrolled_by: "cli".into(),
        };
        let mine = [e("1", 10), e("2", 30), e("4", 40)];
        let (first, none) = enrolment_changes(None, &mine, 99);
        assert_eq!((first.len(), none.len()), (3, 0), "a first round sends all");
        let before = [("1".to_string(), 10), ("2".into(), 20), ("3".into(), 5)];
        let (enrolled, removed) = enrolment_changes(Some(&before), &mine, 99);
        let serials: Vec<&str> = enrolled.iter().map(|e| e.serial.as_str()).collect();
        assert_eq!(serials, ["2", "4"], "enrolled again, and new");
        assert_eq!(removed, [("3".to_string(), 99)]);
    }
}
