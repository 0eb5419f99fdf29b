//! Durability behind the [`Store`] trait; [`SqliteStore`] is the embedded implementation.
//! The pipeline's writer thread is its only caller; it never calls an outlet.
//!
//! The embedded store keeps two SQLite databases in WAL mode in the data directory (the
//! outlets keep a third, `webhooks.db`, of their own):
//!
//! - `spot.db`: the two append-only logs, written **one row per group commit** (a row per
//!   event cost more than the events' bytes): `upstream_batches`, the journal (one line per
//!   entry, in [`journal`]'s format), and `event_batches`, the derived events log (one JSON
//!   document per line, numbered by push id: [`events`]). Each batch row carries the newest
//!   time in it, so retention drops a batch once all of its events are older than the cutoff
//!   (never a journal batch the checkpoint does not cover yet). Batches are LZ4-compressed
//!   ([`batch`]). One [`Store::commit`] is one transaction: what a group commit covers
//!   becomes durable all together or not at all.
//! - `state.db`: the resource rows, written only by a *checkpoint* (a flush: rows are
//!   checkpoints, the journal is the truth in between) on [`checkpoint::RowWriter`]'s thread,
//!   so that a checkpoint never holds up a commit.
//!
//! `spot.db`'s WAL is copied into the database every [`CHECKPOINT_EVERY`] by a thread of its
//! own, and reset by the writer whenever it passes [`WAL_SIZE_LIMIT`]
//! ([`SqliteStore::bound_wal`]), so it stays bounded while the server runs.
//!
//! At start the live state is the last checkpoint ([`Store::take_loaded_rows`]), the
//! derived events still retained ([`Store::load_events`]) and the journal written after the
//! checkpoint, replayed ([`Store::unflushed_journal`]).

pub mod batch;
pub mod checkpoint;
pub mod events;
pub mod journal;

use batch::{for_each_batch, readable, CommitBuffers};
pub use batch::{pack, unpack, BatchError};
pub use events::{EventPages, SqliteEventPages};
use journal::{parse_journal_line, write_journal_line};

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection};

pub use crate::config::Durability;
use crate::domain::{Changes, JournalEntry};
use crate::store::checkpoint::{LoadedRows, RowFlush, RowWriter};

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
    /// Stored data that cannot be read back.
    #[error("store: {context}: {reason}")]
    Corrupt {
        /// What was being read.
        context: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A stored batch cannot be read back.
    #[error("store: {context}: batch {batch}: {source}")]
    Batch {
        /// What was being read.
        context: &'static str,
        /// The batch's key (its row id, or the last event id of an events batch).
        batch: i64,
        /// What is wrong with the batch.
        #[source]
        source: BatchError,
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

/// The value of SQLite's `synchronous` pragma for a durability.
pub(crate) fn synchronous_pragma(durability: Durability) -> &'static str {
    match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    }
}

/// What the pipeline needs of durable storage; [`SqliteStore`] is the embedded one (a
/// PostgreSQL store for cluster mode implements the same). Called from the pipeline's
/// writer thread only (and at start, before it runs); it never calls an outlet: the
/// pipeline publishes what a commit made durable.
pub trait Store: Send {
    /// The resource rows of the last checkpoint, loaded at open (taken once).
    fn take_loaded_rows(&mut self) -> LoadedRows;

    /// The derived event documents of the batches whose newest event is at or after
    /// `since` (Unix ms), oldest first, at most the newest `max` of them, for the live
    /// state's in-memory log.
    fn load_events(&self, since: i64, max: usize) -> Result<Vec<String>, StoreError>;

    /// The journal entries written after the last checkpoint, in order, and the id
    /// generator's state at that checkpoint.
    ///
    /// An entry that cannot be read back is an acknowledged event that would be lost: it is
    /// an error naming where it is stored, unless `repair`, which drops it and logs each
    /// dropped entry at error level (`spot serve --repair-journal`).
    fn unflushed_journal(&self, repair: bool) -> Result<(Vec<JournalEntry>, u64), StoreError>;

    /// Writes one group commit (journal, derived events and, on a flush, the changed rows)
    /// durably and all together, or not at all.
    fn commit(&mut self, changes: &mut Changes) -> Result<Committed, StoreError>;

    /// Deletes derived and upstream event batches whose newest event is older than
    /// `cutoff` (Unix ms); never a journal batch the rows do not cover yet.
    fn prune(&mut self, cutoff: i64) -> Result<(), StoreError>;

    /// A reader of the derived events log by push id, usable from any thread.
    fn event_pages(&self) -> Result<Arc<dyn EventPages>, StoreError>;
}

/// What a [`Store::commit`] made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The push id of the last derived event stored (ids are dense, from 1; the commit's
    /// events end here).
    pub last_event_id: u64,
}

/// The embedded store: SQLite in WAL mode, `<data>/spot.db` for the logs and
/// `<data>/state.db` for the checkpoints ([`checkpoint`]).
#[derive(Debug)]
pub struct SqliteStore {
    /// The data directory.
    dir: PathBuf,
    conn: Connection,
    _checkpointer: Checkpointer,
    /// Push event id of the last derived event stored (ids are dense, from 1).
    last_event_id: u64,
    /// Id of the last journal batch written.
    journal_last: i64,
    /// The writer of the rows (`state.db`).
    rows: RowWriter,
    /// What was loaded at open: the rows, until taken ([`Store::take_loaded_rows`]), and the
    /// flush mark (journal batch covered, id generator state).
    loaded: LoadedRows,
    loaded_mark: (i64, u64),
    buffers: CommitBuffers,
    /// `spot.db-wal` and its bound ([`SqliteStore::bound_wal`]).
    wal: PathBuf,
    wal_limit: u64,
}

/// Size of `spot.db-wal` past which the writer resets it ([`SqliteStore::bound_wal`]); also
/// its `journal_size_limit`. As `state.db`'s.
pub const WAL_SIZE_LIMIT: u64 = 64 << 20;

/// How long a WAL reset waits for readers still using the WAL and for the checkpoint thread
/// before it is put off to a later commit (the commit that triggers it waits about that
/// long at most).
const WAL_RESET_WAIT: Duration = Duration::from_millis(100);

/// The busy timeout of the writer's connection otherwise (rusqlite's default).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Copies the WAL back into the database from a second connection, every
/// [`CHECKPOINT_EVERY`], so that the committing thread never pays for it (SQLite's
/// automatic checkpoint runs inside a commit; it is switched off).
#[derive(Debug)]
struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Interval of the background checkpoint. Short, so that each checkpoint copies little:
/// the file system makes the committing thread's WAL fsync wait for the database pages a
/// checkpoint wrote (at 500 ms the spot → WebSocket p99 at 10,000 events/s was 18-211 ms,
/// at 100 ms 10.6-26 ms, same throughput).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

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

impl SqliteStore {
    /// Opens (creating if needed) `<dir>/spot.db` in WAL mode.
    pub fn open(dir: &Path, sync: Durability) -> Result<Self, StoreError> {
        Self::open_with(dir, sync, WAL_SIZE_LIMIT)
    }

    /// [`SqliteStore::open`] with a bound of its own on `spot.db-wal`.
    pub(crate) fn open_with(
        dir: &Path,
        sync: Durability,
        wal_limit: u64,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open(dir.join("spot.db")).map_err(ctx("open database"))?;
        let sync_pragma = synchronous_pragma(sync);
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous={sync_pragma};
             PRAGMA wal_autocheckpoint=0;
             PRAGMA journal_size_limit={wal_limit};
             PRAGMA cache_size=-65536;
             CREATE TABLE IF NOT EXISTS upstream_batches (
                 id INTEGER PRIMARY KEY,
                 time_last INTEGER NOT NULL,
                 lines TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS event_batches (
                 id INTEGER PRIMARY KEY,
                 time_last INTEGER NOT NULL,
                 docs TEXT NOT NULL,
                 last_event_id INTEGER NOT NULL DEFAULT 0);"
        ))
        .map_err(ctx("create schema"))?;
        events::migrate(&conn).map_err(ctx("add event ids to the events log"))?;
        let last_event_id: i64 = conn
            .query_row(
                "SELECT coalesce(max(last_event_id), 0) FROM event_batches",
                [],
                |r| r.get(0),
            )
            .map_err(ctx("read the last event id"))?;
        let journal_last: i64 = conn
            .query_row(
                "SELECT coalesce(max(id), 0) FROM upstream_batches",
                [],
                |r| r.get(0),
            )
            .map_err(ctx("read the last journal batch"))?;
        let (rows, loaded, flushed, id_last) = RowWriter::open(dir, sync)?;
        let checkpointer = Checkpointer::start(dir)?;
        Ok(SqliteStore {
            dir: dir.to_path_buf(),
            conn,
            _checkpointer: checkpointer,
            last_event_id: last_event_id.max(0) as u64,
            journal_last,
            rows,
            loaded,
            loaded_mark: (flushed, id_last),
            buffers: CommitBuffers::default(),
            wal: dir.join("spot.db-wal"),
            wal_limit,
        })
    }

    /// Sets SQLite's page cache of the writer's connection to `bytes` (at least one page);
    /// [`SqliteStore::open`] starts with 64 MiB.
    pub fn set_cache_bytes(&self, bytes: u64) -> Result<(), StoreError> {
        let kib = (bytes / 1024).max(1);
        self.conn
            .execute_batch(&format!("PRAGMA cache_size=-{kib};"))
            .map_err(ctx("set the page cache size"))
    }

    /// Keeps `spot.db-wal` bounded. The background checkpoint ([`Checkpointer`]) copies the
    /// WAL into the database, but SQLite starts the file over only when a commit finds all
    /// of it copied and no reader in it, which commits arriving all the time rarely allow:
    /// it grew without bound between clean stops (183 MB for a 10 MB database after 19k
    /// commits). Past `wal_limit`, the writer copies the rest and truncates the file
    /// (`wal_checkpoint(TRUNCATE)`; most of it is copied already), waiting at most
    /// [`WAL_RESET_WAIT`] for readers, else it tries again after a later commit.
    fn bound_wal(&mut self) {
        let size = std::fs::metadata(&self.wal).map_or(0, |m| m.len());
        if size <= self.wal_limit {
            return;
        }
        // The busy handler waits for readers; a checkpoint under way on the checkpoint
        // thread answers "busy" at once: try again until it is done.
        let _ = self.conn.busy_timeout(WAL_RESET_WAIT);
        let deadline = std::time::Instant::now() + WAL_RESET_WAIT;
        loop {
            match self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                }) {
                Ok(0) => break,
                Ok(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(_) => {
                    tracing::debug!(size, "spot.db-wal reset put off: readers are in it");
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        size,
                        "spot.db-wal could not be reset (tried again after the next commit): {e}"
                    );
                    break;
                }
            }
        }
        let _ = self.conn.busy_timeout(BUSY_TIMEOUT);
    }

    /// Waits until every flush handed to the row writer is written.
    pub fn wait_for_rows(&self) {
        self.rows.wait();
    }

    /// Stored upstream events of one spot, oldest first: (seq, JSON event). A full scan
    /// (for inspection and tests, not the ingest path).
    pub fn upstream_events(&self, serial: &str) -> Result<Vec<(Option<u64>, String)>, StoreError> {
        let mut out = Vec::new();
        for_each_batch(
            &self.conn,
            "SELECT id, lines FROM upstream_batches ORDER BY id",
            [],
            "read upstream events",
            |id, lines| {
                for line in readable("read upstream events", id, lines)?.lines() {
                    if let Some(JournalEntry::Event {
                        row,
                        duplicate: false,
                    }) = parse_journal_line(line)
                    {
                        if *row.serial == *serial {
                            out.push((row.seq, row.event_json));
                        }
                    }
                }
                Ok(ControlFlow::Continue(()))
            },
        )?;
        Ok(out)
    }
}

impl Store for SqliteStore {
    /// The rows of every table as loaded at open; empty after the first call.
    fn take_loaded_rows(&mut self) -> LoadedRows {
        std::mem::take(&mut self.loaded)
    }

    /// The derived events at or after `since` (Unix ms), oldest first, at most the newest
    /// `max` (older ones are let go while reading: a day of events is never held at once).
    ///
    /// A batch is returned whole when its newest event is at or after `since` (its older
    /// events are dropped by the domain's own retention sweep).
    fn load_events(&self, since: i64, max: usize) -> Result<Vec<String>, StoreError> {
        let mut docs = std::collections::VecDeque::new();
        for_each_batch(
            &self.conn,
            "SELECT id, docs FROM event_batches WHERE time_last >= ?1 ORDER BY id",
            [since],
            "load events",
            |id, batch| {
                docs.extend(
                    readable("load events", id, batch)?
                        .lines()
                        .map(str::to_string),
                );
                while docs.len() > max {
                    docs.pop_front();
                }
                Ok(ControlFlow::Continue(()))
            },
        )?;
        Ok(docs.into())
    }

    /// The journal batches the rows loaded at open do not cover, oldest first, and the id
    /// generator's state at their flush. An unreadable line is an error naming `spot.db`,
    /// the batch and the line, unless `repair` (see the trait).
    fn unflushed_journal(&self, repair: bool) -> Result<(Vec<JournalEntry>, u64), StoreError> {
        let (flushed, id_last) = self.loaded_mark;
        let mut entries = Vec::new();
        for_each_batch(
            &self.conn,
            "SELECT id, lines FROM upstream_batches WHERE id > ?1 ORDER BY id",
            [flushed],
            "read journal",
            |id, lines| {
                let lines = match lines {
                    Ok(lines) => lines,
                    Err(e) if repair => {
                        tracing::error!(
                            "repair: spot.db journal batch {id}: unreadable, dropped: {e}"
                        );
                        return Ok(ControlFlow::Continue(()));
                    }
                    Err(source) => {
                        return Err(StoreError::Corrupt {
                            context: "read journal",
                            reason: format!(
                                "spot.db: journal batch {id} unreadable ({source}): acknowledged \
                                 events would be lost; start with --repair-journal to drop it"
                            ),
                        })
                    }
                };
                for (n, line) in lines.lines().enumerate() {
                    match parse_journal_line(line) {
                        Some(entry) => entries.push(entry),
                        None if repair => tracing::error!(
                            "repair: spot.db journal batch {id} line {}: unreadable, dropped: \
                             {line:?}",
                            n + 1
                        ),
                        None => {
                            let start: String = line.chars().take(120).collect();
                            return Err(StoreError::Corrupt {
                                context: "read journal",
                                reason: format!(
                                    "spot.db: journal batch {id} line {} unreadable ({start:?}): \
                                     acknowledged events would be lost; start with \
                                     --repair-journal to drop it",
                                    n + 1
                                ),
                            });
                        }
                    }
                }
                Ok(ControlFlow::Continue(()))
            },
        )?;
        Ok((entries, id_last))
    }

    /// Writes one group commit (journal and derived events) in one transaction; a flush's
    /// rows are then taken out of `changes` and handed to the row writer.
    fn commit(&mut self, changes: &mut Changes) -> Result<Committed, StoreError> {
        let last_event_id = self.last_event_id + changes.log.len() as u64;
        let mut journal_last = self.journal_last;
        let tx = self.conn.transaction().map_err(ctx("begin"))?;
        let CommitBuffers { text, packed } = &mut self.buffers;
        if !changes.journal.is_empty() {
            text.clear();
            let mut time_last = i64::MIN;
            for entry in &changes.journal {
                time_last = time_last.max(write_journal_line(text, entry));
            }
            tx.prepare_cached("INSERT INTO upstream_batches (time_last, lines) VALUES (?1, ?2)")
                .map_err(ctx("prepare upstream insert"))?
                .execute(params![time_last, pack(text.as_bytes(), packed)])
                .map_err(ctx("insert upstream events"))?;
            journal_last = tx.last_insert_rowid();
        }
        if !changes.log.is_empty() {
            text.clear();
            let mut time_last = i64::MIN;
            for (time, doc) in &changes.log {
                text.push_str(doc);
                text.push('\n');
                time_last = time_last.max(*time);
            }
            tx.prepare_cached(
                "INSERT INTO event_batches (time_last, docs, last_event_id)
                 VALUES (?1, ?2, ?3)",
            )
            .map_err(ctx("prepare event insert"))?
            .execute(params![
                time_last,
                pack(text.as_bytes(), packed),
                last_event_id as i64
            ])
            .map_err(ctx("insert events"))?;
        }
        self.buffers.trim();
        tx.commit().map_err(ctx("commit"))?;
        self.last_event_id = last_event_id;
        self.journal_last = journal_last;
        self.bound_wal();
        if changes.flush {
            self.rows.flush(RowFlush {
                upserts: std::mem::take(&mut changes.upserts),
                deletes: std::mem::take(&mut changes.deletes),
                journal: journal_last,
                id_last: changes.id_last,
            });
        }
        Ok(Committed { last_event_id })
    }

    /// Deletes derived and upstream event batches whose newest event is older than `cutoff`
    /// (Unix ms).
    fn prune(&mut self, cutoff: i64) -> Result<(), StoreError> {
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
                // The journal the rows do not cover yet stays, whatever its age.
                "DELETE FROM upstream_batches WHERE time_last < ?1 AND id <= ?2",
                params![cutoff, self.rows.flushed_journal()],
            )
            .map_err(ctx("prune upstream events"))?;
        Ok(())
    }

    fn event_pages(&self) -> Result<Arc<dyn EventPages>, StoreError> {
        Ok(Arc::new(SqliteEventPages::open(&self.dir)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Table;
    use crate::domain::UpstreamRow;
    use crate::ids::Id;
    use crate::store::checkpoint::StoredRow;

    const A: Id = Id(0x0123456789abcdef);
    const B: Id = Id(0x01a20fc369cc1f93);

    fn upstream(serial: &str, seq: Option<u64>, time: i64, json: &str) -> JournalEntry {
        JournalEntry::Event {
            row: UpstreamRow {
                serial: serial.into(),
                spot_id: Id::default(),
                seq,
                time_received: time,
                event_json: json.into(),
            },
            duplicate: false,
        }
    }

    #[test]
    fn the_wal_stays_bounded_while_commits_keep_coming() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 256 * 1024;
        let mut store = SqliteStore::open_with(dir.path(), Durability::Normal, limit).unwrap();
        // Readers of the log in between, as the outlets' are.
        let pages = store.event_pages().unwrap();
        let wal = dir.path().join("spot.db-wal");
        let (mut largest, mut written) = (0, 0);
        for n in 0..3_000u64 {
            let docs: Vec<(i64, Arc<str>)> = (0..8)
                .map(|i| (1, format!("{{\"n\":{n},\"i\":{i}}}").repeat(64).into()))
                .collect();
            written += docs.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
            let mut changes = Changes {
                log: docs,
                ..Default::default()
            };
            store.commit(&mut changes).unwrap();
            if n % 100 == 0 {
                pages.page(n * 8, 10).unwrap();
            }
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        assert!(written > 20 * limit, "enough written: {written} bytes");
        assert!(
            largest <= limit + 128 * 1024,
            "spot.db-wal reached {largest} bytes (limit {limit})"
        );
    }

    #[test]
    fn a_commit_is_read_back_after_reopening_and_prune_drops_old_batches() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
            let mut changes = Changes {
                journal: vec![
                    upstream("203", Some(7), 1_000, r#"["hit","create",{}]"#),
                    upstream("204", None, 1_000, r#"["hit","create",{"a":"\t"}]"#),
                    upstream("203", None, 1_001, r#"["hit","delete",{}]"#),
                ],
                upserts: vec![(Table::Spots, A, "{}".into())],
                deletes: vec![],
                log: vec![(1_000, "{\"x\":1}".into()), (1_001, "{\"x\":2}".into())],
                ..Changes::default()
            };
            store.commit(&mut changes).unwrap();
            store
                .commit(&mut Changes {
                    deletes: vec![(Table::Spots, A)],
                    upserts: vec![
                        (Table::Spots, B, "{}".into()),
                        (Table::Spots, B, "{\"v\":2}".into()),
                    ],
                    journal: vec![upstream("203", Some(8), 5_000, "[]")],
                    log: vec![(5_000, "{\"x\":3}".into())],
                    flush: true,
                    ..Changes::default()
                })
                .unwrap();
        }
        let mut store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
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
        let spots = store
            .take_loaded_rows()
            .into_iter()
            .find(|(t, _)| *t == Table::Spots)
            .map(|(_, rows)| rows);
        assert_eq!(
            spots,
            Some(vec![(B, StoredRow::Json("{\"v\":2}".to_string()))]),
            "a flush's rows, written by the row writer"
        );
        assert_eq!(
            store.load_events(0, usize::MAX).unwrap(),
            vec!["{\"x\":1}", "{\"x\":2}", "{\"x\":3}"]
        );
        assert_eq!(
            store.load_events(1_001, usize::MAX).unwrap().len(),
            3,
            "a batch with a recent event is loaded whole"
        );
        assert_eq!(
            store.load_events(0, 2).unwrap(),
            vec!["{\"x\":2}", "{\"x\":3}"],
            "the newest, at most max"
        );
        store.prune(2_000).unwrap();
        assert_eq!(store.upstream_events("203").unwrap().len(), 1);
        assert_eq!(store.load_events(0, usize::MAX).unwrap(), vec!["{\"x\":3}"]);
    }

    #[test]
    fn the_journal_after_the_last_flush_reads_back_in_order_and_outlives_retention() {
        let dir = tempfile::tempdir().unwrap();
        let begin = |time, version: Option<&str>| JournalEntry::Begin {
            serial: "7".into(),
            version: version.map(String::from),
            time,
        };
        let end = |time| JournalEntry::End {
            serial: "7".into(),
            time,
        };
        let replayed = JournalEntry::Event {
            row: UpstreamRow {
                serial: "7".into(),
                spot_id: Id::default(),
                seq: Some(3),
                time_received: 1_003,
                event_json: r#"["hit","create",{"x":"a\tb"}]"#.into(),
            },
            duplicate: true,
        };
        {
            let mut store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
            assert_eq!(store.unflushed_journal(false).unwrap(), (vec![], 0));
            store
                .commit(&mut Changes {
                    journal: vec![begin(1_000, None), upstream("7", Some(3), 1_001, "[1]")],
                    flush: true,
                    id_last: 99,
                    ..Changes::default()
                })
                .unwrap();
            store
                .commit(&mut Changes {
                    journal: vec![
                        begin(1_002, Some("1.2 \"beta\"\t")),
                        replayed.clone(),
                        upstream("7", None, 1_004, "[2]"),
                    ],
                    ..Changes::default()
                })
                .unwrap();
            store
                .commit(&mut Changes {
                    journal: vec![end(1_005)],
                    ..Changes::default()
                })
                .unwrap();
        }
        let mut store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
        let expected = vec![
            begin(1_002, Some("1.2 \"beta\"\t")),
            replayed,
            upstream("7", None, 1_004, "[2]"),
            end(1_005),
        ];
        assert_eq!(
            store.unflushed_journal(false).unwrap(),
            (expected.clone(), 99)
        );
        assert_eq!(
            store.upstream_events("7").unwrap(),
            vec![(Some(3), "[1]".to_string()), (None, "[2]".to_string())],
            "replays and stream marks are not stored events"
        );
        store.prune(10_000).unwrap();
        assert_eq!(
            store.unflushed_journal(false).unwrap(),
            (expected, 99),
            "retention never drops what the rows do not cover"
        );
        assert_eq!(store.upstream_events("7").unwrap().len(), 1);
    }

    #[test]
    fn batches_are_stored_compressed_and_uncompressed_ones_of_older_databases_still_read() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
            store
                .conn
                .execute_batch(
                    "INSERT INTO upstream_batches (time_last, lines)
                         VALUES (1, '203	1	1	[\"old\"]
');
                     INSERT INTO event_batches (time_last, docs) VALUES (1, '{\"old\":1}
');",
                )
                .unwrap();
            let doc = format!("{{\"new\":\"{}\"}}", "x".repeat(2_000));
            store
                .commit(&mut Changes {
                    journal: vec![upstream(
                        "203",
                        Some(2),
                        2,
                        &format!("[\"{}\"]", "y".repeat(2_000)),
                    )],
                    log: vec![(2, doc.as_str().into())],
                    ..Changes::default()
                })
                .unwrap();
            let (kind, size): (String, i64) = store
                .conn
                .query_row(
                    "SELECT typeof(docs), length(docs) FROM event_batches ORDER BY id DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!(kind, "blob");
            assert!(size < 200, "2 kB of repetitive JSON stored in {size} bytes");
            assert_eq!(
                store.load_events(0, usize::MAX).unwrap(),
                vec!["{\"old\":1}".to_string(), doc]
            );
        }
        let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
        let events = store.upstream_events("203").unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0], (Some(1), "[\"old\"]".to_string()));
        assert_eq!(events[1].0, Some(2));
    }
}
