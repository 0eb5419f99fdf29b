//! Durable storage: one embedded SQLite database in WAL mode (`<data>/spot.db`).
//!
//! Tables: one per resource (`spot_rows`, `location_rows`, `item_rows`, `presence_rows`:
//! the id's integer value ([`crate::ids::id_key`]) as the row key + JSON document, so an
//! update rewrites one row of one b-tree in place), and two append-only logs written **one row per group commit** (a row per event
//! cost more than the events' bytes): `upstream_batches` (every accepted upstream event, one
//! line each: `serial TAB seq TAB time_received TAB json`, seq empty when absent) and
//! `event_batches` (the derived events log, one JSON document per line; compact JSON has no
//! raw newline). Each batch row carries the newest time in it, so retention drops a batch
//! once all of its events are older than the cutoff. One [`Store::commit`] is one
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

/// The SQL table of a resource table.
fn sql_table(table: Table) -> &'static str {
    match table {
        Table::Spots => "spot_rows",
        Table::Locations => "location_rows",
        Table::Items => "item_rows",
        Table::Presences => "presence_rows",
    }
}

/// The row key of a resource id. Every id the domain makes is one of [`crate::ids::IdGen`]'s
/// (its maps refuse others), so `None` is a bug: logged, the row skipped.
fn row_key(table: Table, id: &str) -> Option<i64> {
    let key = crate::ids::id_key(id).and_then(|k| i64::try_from(k).ok());
    if key.is_none() {
        tracing::error!(
            "{} row {id:?}: not a generated id; not stored",
            table.name()
        );
    }
    key
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
    /// Push event id of the last derived event stored (ids are dense, from 1).
    last_event_id: u64,
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
             CREATE TABLE IF NOT EXISTS upstream_batches (
                 id INTEGER PRIMARY KEY,
                 time_last INTEGER NOT NULL,
                 lines TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS spot_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS location_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS item_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS presence_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS event_batches (
                 id INTEGER PRIMARY KEY,
                 time_last INTEGER NOT NULL,
                 docs TEXT NOT NULL,
                 last_event_id INTEGER NOT NULL DEFAULT 0);"
        ))
        .map_err(ctx("create schema"))?;
        crate::push::migrate(&conn).map_err(ctx("add event ids to the events log"))?;
        let last_event_id: i64 = conn
            .query_row(
                "SELECT coalesce(max(last_event_id), 0) FROM event_batches",
                [],
                |r| r.get(0),
            )
            .map_err(ctx("read the last event id"))?;
        let checkpointer = Checkpointer::start(dir)?;
        Ok(Store {
            conn,
            _checkpointer: checkpointer,
            last_event_id: last_event_id.max(0) as u64,
            publisher: None,
        })
    }

    /// Every row of a resource table: (id, JSON document).
    pub fn load(&self, table: Table) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT id, doc FROM {} ORDER BY id",
                sql_table(table)
            ))
            .map_err(ctx("load"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((format!("{:016x}", r.get::<_, i64>(0)?), r.get(1)?))
            })
            .map_err(ctx("load"))?;
        rows.collect::<Result<_, _>>().map_err(ctx("load row"))
    }

    /// The derived events at or after `since` (Unix ms), oldest first.
    ///
    /// A batch is returned whole when its newest event is at or after `since` (its older
    /// events are dropped by the domain's own retention sweep).
    pub fn load_events(&self, since: i64) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT docs FROM event_batches WHERE time_last >= ?1 ORDER BY id")
            .map_err(ctx("load events"))?;
        let batches = stmt
            .query_map([since], |r| r.get::<_, String>(0))
            .map_err(ctx("load events"))?;
        let mut docs = Vec::new();
        for batch in batches {
            let batch = batch.map_err(ctx("load events row"))?;
            docs.extend(batch.lines().map(str::to_string));
        }
        Ok(docs)
    }

    /// After each commit, hands its derived events and the id of the last to `publisher`.
    pub fn set_publisher(&mut self, publisher: crate::push::Publisher) {
        self.publisher = Some(publisher);
    }

    /// Writes one group commit in one transaction.
    pub fn commit(&mut self, changes: &Changes) -> Result<(), StoreError> {
        let last_event_id = self.last_event_id + changes.log.len() as u64;
        let tx = self.conn.transaction().map_err(ctx("begin"))?;
        {
            if !changes.upstream.is_empty() {
                let mut lines = String::with_capacity(
                    changes
                        .upstream
                        .iter()
                        .map(|r| r.serial.len() + r.event_json.len() + 40)
                        .sum(),
                );
                let mut time_last = i64::MIN;
                for row in &changes.upstream {
                    use std::fmt::Write as _;
                    let _ = write!(lines, "{}\t", row.serial);
                    if let Some(seq) = row.seq {
                        let _ = write!(lines, "{seq}");
                    }
                    let _ = writeln!(lines, "\t{}\t{}", row.time_received, row.event_json);
                    time_last = time_last.max(row.time_received);
                }
                tx.prepare_cached(
                    "INSERT INTO upstream_batches (time_last, lines) VALUES (?1, ?2)",
                )
                .map_err(ctx("prepare upstream insert"))?
                .execute(params![time_last, lines])
                .map_err(ctx("insert upstream events"))?;
            }
            for (table, id, doc) in &changes.upserts {
                let Some(key) = row_key(*table, id) else {
                    continue;
                };
                tx.prepare_cached(&format!(
                    "INSERT INTO {} (id, doc) VALUES (?1, ?2)
                     ON CONFLICT(id) DO UPDATE SET doc = excluded.doc",
                    sql_table(*table)
                ))
                .map_err(ctx("prepare upsert"))?
                .execute(params![key, doc])
                .map_err(ctx("upsert"))?;
            }
            for (table, id) in &changes.deletes {
                let Some(key) = row_key(*table, id) else {
                    continue;
                };
                tx.prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", sql_table(*table)))
                    .map_err(ctx("prepare delete"))?
                    .execute(params![key])
                    .map_err(ctx("delete"))?;
            }
            if !changes.log.is_empty() {
                let mut docs = String::with_capacity(
                    changes.log.iter().map(|(_, _, doc)| doc.len() + 1).sum(),
                );
                let mut time_last = i64::MIN;
                for (_, time, doc) in &changes.log {
                    docs.push_str(doc);
                    docs.push('\n');
                    time_last = time_last.max(*time);
                }
                tx.prepare_cached(
                    "INSERT INTO event_batches (time_last, docs, last_event_id)
                     VALUES (?1, ?2, ?3)",
                )
                .map_err(ctx("prepare event insert"))?
                .execute(params![time_last, docs, last_event_id as i64])
                .map_err(ctx("insert events"))?;
            }
        }
        tx.commit().map_err(ctx("commit"))?;
        self.last_event_id = last_event_id;
        if let Some(publisher) = &self.publisher {
            publisher.committed(&changes.log, last_event_id);
            publisher.raw_events(&changes.upstream);
        }
        Ok(())
    }

    /// Deletes derived and upstream event batches whose newest event is older than `cutoff`
    /// (Unix ms).
    pub fn prune(&mut self, cutoff: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                // The newest batch stays, so event ids continue after a restart.
                "DELETE FROM event_batches WHERE time_last < ?1
                 AND id < (SELECT max(id) FROM event_batches)",
                [cutoff],
            )
            .map_err(ctx("prune events"))?;
        self.conn
            .execute(
                "DELETE FROM upstream_batches WHERE time_last < ?1",
                [cutoff],
            )
            .map_err(ctx("prune upstream events"))?;
        Ok(())
    }

    /// Stored upstream events of one spot, oldest first: (seq, JSON event). A full scan
    /// (for inspection and tests, not the ingest path).
    pub fn upstream_events(&self, serial: &str) -> Result<Vec<(Option<u64>, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT lines FROM upstream_batches ORDER BY id")
            .map_err(ctx("read upstream events"))?;
        let batches = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(ctx("read upstream events"))?;
        let mut out = Vec::new();
        for batch in batches {
            let batch = batch.map_err(ctx("read upstream event row"))?;
            for line in batch.lines() {
                let mut fields = line.splitn(4, '\t');
                let (Some(spot), Some(seq), Some(_time), Some(json)) =
                    (fields.next(), fields.next(), fields.next(), fields.next())
                else {
                    continue;
                };
                if spot == serial {
                    out.push((seq.parse().ok(), json.to_string()));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UpstreamRow;

    const A: &str = "0123456789abcdef";
    const B: &str = "01a20fc369cc1f93";

    fn upstream(serial: &str, seq: Option<u64>, time: i64, json: &str) -> UpstreamRow {
        UpstreamRow {
            serial: serial.into(),
            spot_id: String::new(),
            seq,
            time_received: time,
            event_json: json.into(),
        }
    }

    #[test]
    fn a_commit_is_read_back_after_reopening_and_prune_drops_old_batches() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = Store::open(dir.path(), Sync::Normal).unwrap();
            let changes = Changes {
                upstream: vec![
                    upstream("203", Some(7), 1_000, r#"["hit","create",{}]"#),
                    upstream("204", None, 1_000, r#"["hit","create",{"a":"\t"}]"#),
                    upstream("203", None, 1_001, r#"["hit","delete",{}]"#),
                ],
                upserts: vec![(Table::Items, A.into(), "{}".into())],
                deletes: vec![],
                log: vec![
                    ("e1".into(), 1_000, "{\"x\":1}".into()),
                    ("e2".into(), 1_001, "{\"x\":2}".into()),
                ],
            };
            store.commit(&changes).unwrap();
            store
                .commit(&Changes {
                    deletes: vec![(Table::Items, A.into())],
                    upserts: vec![
                        (Table::Items, B.into(), "{}".into()),
                        (Table::Items, B.into(), "{\"v\":2}".into()),
                    ],
                    upstream: vec![upstream("203", Some(8), 5_000, "[]")],
                    log: vec![("e3".into(), 5_000, "{\"x\":3}".into())],
                })
                .unwrap();
        }
        let mut store = Store::open(dir.path(), Sync::Normal).unwrap();
        assert_eq!(
            store.upstream_events("203").unwrap(),
            vec![
                (Some(7), r#"["hit","create",{}]"#.to_string()),
                (None, r#"["hit","delete",{}]"#.to_string()),
                (Some(8), "[]".to_string()),
            ]
        );
        assert_eq!(
            store.upstream_events("204").unwrap(),
            vec![(None, r#"["hit","create",{"a":"\t"}]"#.to_string())]
        );
        assert_eq!(
            store.load(Table::Items).unwrap(),
            vec![(B.to_string(), "{\"v\":2}".to_string())]
        );
        assert_eq!(
            store.load_events(0).unwrap(),
            vec!["{\"x\":1}", "{\"x\":2}", "{\"x\":3}"]
        );
        assert_eq!(
            store.load_events(1_001).unwrap().len(),
            3,
            "a batch with a recent event is loaded whole"
        );
        store.prune(2_000).unwrap();
        assert_eq!(store.upstream_events("203").unwrap().len(), 1);
        assert_eq!(store.load_events(0).unwrap(), vec!["{\"x\":3}"]);
    }
}
