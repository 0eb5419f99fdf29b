//! Durable storage: one embedded SQLite database in WAL mode (`<data>/spot.db`).
//!
//! Tables: `upstream_events` (every accepted upstream event, JSON encoding, with spot serial
//! and sequence key), one table per resource (`spots`, `locations`, `items`, `presences`:
//! `id` + JSON document) and `events` (the derived events log). One [`Store::commit`] is one
//! transaction: what a group commit covers becomes durable all together or not at all.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection};

use crate::domain::{Changes, Table};

/// A storage failure: which operation and the underlying error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("store: {context}: {source}")]
    Sqlite {
        /// What was being done.
        context: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The operating system refused (e.g. a thread could not start).
    #[error("store: {context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn ctx(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { context, source }
}

/// How hard a commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// `synchronous=FULL`: fsync on every commit (survives power loss).
    Full,
    /// `synchronous=NORMAL`: survives a process crash (kill -9), not a power loss.
    Normal,
}

/// The SQLite store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    _checkpointer: Checkpointer,
    publisher: Option<crate::push::Publisher>,
}

/// Copies the WAL back into the database from a second connection, every
/// [`CHECKPOINT_EVERY`], so that the committing thread never pays for it (SQLite's
/// automatic checkpoint runs inside a commit; it is switched off).
#[derive(Debug)]
struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Interval of the background checkpoint.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

impl Checkpointer {
    fn start(dir: &Path) -> Result<Self, StoreError> {
        let conn =
            Connection::open(dir.join("spot.db")).map_err(ctx("open checkpoint connection"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("spot-checkpoint".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::park_timeout(CHECKPOINT_EVERY);
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!("WAL checkpoint: {e}");
                    }
                }
            })
            .map_err(|source| StoreError::Io {
                context: "start checkpoint thread",
                source,
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Store {
    /// Opens (creating if needed) `<dir>/spot.db` in WAL mode.
    pub fn open(dir: &Path, sync: Sync) -> Result<Self, StoreError> {
        let conn = Connection::open(dir.join("spot.db")).map_err(ctx("open database"))?;
        let sync = match sync {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous={sync};
             PRAGMA wal_autocheckpoint=0;
             PRAGMA cache_size=-65536;
             CREATE TABLE IF NOT EXISTS upstream_events (
                 id INTEGER PRIMARY KEY,
                 spot TEXT NOT NULL,
                 seq INTEGER,
                 time_received INTEGER NOT NULL,
                 event TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS upstream_events_time ON upstream_events(time_received);
             CREATE TABLE IF NOT EXISTS spots (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS locations (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS presences (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS events (
                 row INTEGER PRIMARY KEY, id TEXT NOT NULL,
                 time_created INTEGER NOT NULL, doc TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS events_time ON events(time_created);"
        ))
        .map_err(ctx("create schema"))?;
        let checkpointer = Checkpointer::start(dir)?;
        Ok(Store {
            conn,
            _checkpointer: checkpointer,
            publisher: None,
        })
    }

    /// Every row of a resource table: (id, JSON document).
    pub fn load(&self, table: Table) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT id, doc FROM {} ORDER BY id", table.name()))
            .map_err(ctx("load"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(ctx("load"))?;
        rows.collect::<Result<_, _>>().map_err(ctx("load row"))
    }

    /// The derived events at or after `since` (Unix ms), oldest first.
    pub fn load_events(&self, since: i64) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT doc FROM events WHERE time_created >= ?1 ORDER BY row")
            .map_err(ctx("load events"))?;
        let rows = stmt
            .query_map([since], |r| r.get(0))
            .map_err(ctx("load events"))?;
        rows.collect::<Result<_, _>>()
            .map_err(ctx("load events row"))
    }

    /// After each commit, hands its derived events (and their last row) to `publisher`.
    pub fn set_publisher(&mut self, publisher: crate::push::Publisher) {
        self.publisher = Some(publisher);
    }

    /// Writes one group commit in one transaction.
    pub fn commit(&mut self, changes: &Changes) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(ctx("begin"))?;
        let mut last_event_row = 0;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO upstream_events (spot, seq, time_received, event)
                     VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(ctx("prepare upstream insert"))?;
            for row in &changes.upstream {
                insert
                    .execute(params![
                        row.serial,
                        row.seq.map(|s| s as i64),
                        row.time_received,
                        row.event_json
                    ])
                    .map_err(ctx("insert upstream event"))?;
            }
            for (table, id, doc) in &changes.upserts {
                tx.prepare_cached(&format!(
                    "INSERT OR REPLACE INTO {} (id, doc) VALUES (?1, ?2)",
                    table.name()
                ))
                .map_err(ctx("prepare upsert"))?
                .execute(params![id, doc])
                .map_err(ctx("upsert"))?;
            }
            for (table, id) in &changes.deletes {
                tx.prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", table.name()))
                    .map_err(ctx("prepare delete"))?
                    .execute(params![id])
                    .map_err(ctx("delete"))?;
            }
            let mut log = tx
                .prepare_cached("INSERT INTO events (id, time_created, doc) VALUES (?1, ?2, ?3)")
                .map_err(ctx("prepare event insert"))?;
            for (id, time, doc) in &changes.log {
                log.execute(params![id, time, doc])
                    .map_err(ctx("insert event"))?;
                last_event_row = tx.last_insert_rowid();
            }
        }
        tx.commit().map_err(ctx("commit"))?;
        if let Some(publisher) = &self.publisher {
            publisher.committed(&changes.log, last_event_row);
        }
        Ok(())
    }

    /// Deletes derived and upstream events older than `cutoff` (Unix ms).
    pub fn prune(&mut self, cutoff: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                // The newest row stays: rowids (the pushed event ids) never restart.
                "DELETE FROM events WHERE time_created < ?1 AND row < (SELECT max(row) FROM events)",
                [cutoff],
            )
            .map_err(ctx("prune events"))?;
        self.conn
            .execute(
                "DELETE FROM upstream_events WHERE time_received < ?1",
                [cutoff],
            )
            .map_err(ctx("prune upstream events"))?;
        Ok(())
    }

    /// Stored upstream events of one spot, oldest first: (seq, JSON event).
    pub fn upstream_events(&self, serial: &str) -> Result<Vec<(Option<u64>, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, event FROM upstream_events WHERE spot = ?1 ORDER BY id")
            .map_err(ctx("read upstream events"))?;
        let rows = stmt
            .query_map([serial], |r| {
                Ok((r.get::<_, Option<i64>>(0)?.map(|s| s as u64), r.get(1)?))
            })
            .map_err(ctx("read upstream events"))?;
        rows.collect::<Result<_, _>>()
            .map_err(ctx("read upstream event row"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UpstreamRow;

    #[test]
    fn a_commit_is_read_back_after_reopening_and_prune_drops_old_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = Store::open(dir.path(), Sync::Normal).unwrap();
            let changes = Changes {
                upstream: vec![UpstreamRow {
                    serial: "203".into(),
                    seq: Some(7),
                    time_received: 1_000,
                    event_json: r#"["hit","create",{}]"#.into(),
                }],
                upserts: vec![(Table::Items, "a".into(), "{}".into())],
                deletes: vec![],
                log: vec![("e1".into(), 1_000, "{\"x\":1}".into())],
            };
            store.commit(&changes).unwrap();
            store
                .commit(&Changes {
                    deletes: vec![(Table::Items, "a".into())],
                    upserts: vec![(Table::Items, "b".into(), "{}".into())],
                    ..Changes::default()
                })
                .unwrap();
        }
        let mut store = Store::open(dir.path(), Sync::Normal).unwrap();
        assert_eq!(
            store.upstream_events("203").unwrap(),
            vec![(Some(7), r#"["hit","create",{}]"#.to_string())]
        );
        assert_eq!(
            store.load(Table::Items).unwrap(),
            vec![("b".to_string(), "{}".to_string())]
        );
        assert_eq!(store.load_events(0).unwrap().len(), 1);
        store.prune(2_000).unwrap();
        assert!(store.upstream_events("203").unwrap().is_empty());
        // The newest event row survives pruning, so event ids never restart.
        assert_eq!(store.load_events(0).unwrap().len(), 1);
    }
}
