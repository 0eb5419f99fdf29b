//! The resource rows — the checkpoints of the domain (see [`crate::domain`]) — in a database
//! of their own, `<data>/state.db`, written by a thread of their own.
//!
//! A flush can be tens of thousands of rows. Written in the same database as the journal, it
//! held SQLite's one write lock for its whole transaction, and every acknowledgement and push
//! waited behind it. Here the journal's writer hands each flush over ([`RowWriter::flush`]) and
//! goes on; this thread writes the rows and, in the same transaction, the journal batch they
//! cover (`meta.flushed_journal`) and the id generator's state (`meta.id_last`). Only then may
//! the journal up to that batch be pruned ([`RowWriter::flushed_journal`]). A crash before the
//! rows are written costs a longer replay, never data.
//!
//! A data directory written before `state.db` existed keeps its rows and flush mark in
//! `spot.db`; [`RowWriter::open`] copies them over once.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rusqlite::{params, Connection};

use crate::domain::{RowDoc, Table};
use crate::store::{StoreError, Sync};

/// One flush: every row changed since the previous one.
#[derive(Debug, Default)]
pub struct RowFlush {
    /// Rows to insert or replace: table, id, document (rendered here, off the core thread).
    pub upserts: Vec<(Table, String, RowDoc)>,
    /// Rows to delete.
    pub deletes: Vec<(Table, String)>,
    /// The last journal batch (`upstream_batches.id`) these rows cover.
    pub journal: i64,
    /// The id generator's state they correspond to.
    pub id_last: u64,
}

enum Msg {
    Flush(RowFlush),
    /// Answered once everything sent before is written.
    Barrier(mpsc::Sender<()>),
}

/// The writer of `state.db` (see the module docs). Dropping it writes what was handed over,
/// then stops the thread.
#[derive(Debug)]
pub struct RowWriter {
    tx: Option<mpsc::SyncSender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
    flushed: Arc<AtomicI64>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Flush(_) => "Flush",
            Msg::Barrier(_) => "Barrier",
        })
    }
}

fn ctx(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { context, source }
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

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS spot_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS location_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS item_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS presence_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);";

impl RowWriter {
    /// Opens (creating, or copying over from an older `spot.db`) `<dir>/state.db` and starts
    /// its writer. Returns the writer, the rows of every table and the flush mark:
    /// (journal batch covered, id generator state).
    #[allow(clippy::type_complexity)]
    pub fn open(
        dir: &Path,
        sync: Sync,
    ) -> Result<(RowWriter, Vec<(Table, Vec<(String, String)>)>, i64, u64), StoreError> {
        let conn = Connection::open(dir.join("state.db")).map_err(ctx("open state.db"))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={}; {SCHEMA}",
            sync.pragma()
        ))
        .map_err(ctx("create state schema"))?;
        migrate_from_spot_db(&conn, dir)?;
        let meta = |key: &str| -> Result<i64, StoreError> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .map_err(ctx("read flush mark"))
        };
        let (journal, id_last) = (meta("flushed_journal")?, meta("id_last")?.max(0) as u64);
        let mut tables = Vec::new();
        for table in Table::ALL {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT id, doc FROM {} ORDER BY id",
                    sql_table(table)
                ))
                .map_err(ctx("load rows"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((crate::ids::id_text(r.get::<_, i64>(0)? as u64), r.get(1)?))
                })
                .map_err(ctx("load rows"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(ctx("load row"))?;
            tables.push((table, rows));
        }
        let flushed = Arc::new(AtomicI64::new(journal));
        // One flush may wait while another is written: the journal's writer does not.
        let (tx, rx) = mpsc::sync_channel(1);
        let mark = flushed.clone();
        let thread = std::thread::Builder::new()
            .name("spot-rows".into())
            .spawn(move || run(conn, rx, mark))
            .map_err(|source| StoreError::Io {
                context: "start the row writer",
                source,
            })?;
        Ok((
            RowWriter {
                tx: Some(tx),
                thread: Some(thread),
                flushed,
            },
            tables,
            journal,
            id_last,
        ))
    }

    /// Hands a flush over (waits only while an earlier one is still being written).
    pub fn flush(&self, flush: RowFlush) {
        if let Some(tx) = &self.tx {
            if tx.send(Msg::Flush(flush)).is_err() {
                tracing::error!("row writer gone: flush not written (the journal keeps it)");
            }
        }
    }

    /// Waits until every flush handed over is written.
    pub fn wait(&self) {
        let (done, wait) = mpsc::channel();
        if let Some(tx) = &self.tx {
            if tx.send(Msg::Barrier(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }

    /// The last journal batch the written rows cover: the journal up to it may go.
    pub fn flushed_journal(&self) -> i64 {
        self.flushed.load(Ordering::Acquire)
    }
}

impl Drop for RowWriter {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut conn: Connection, rx: mpsc::Receiver<Msg>, flushed: Arc<AtomicI64>) {
    for msg in rx {
        let flush = match msg {
            Msg::Flush(flush) => flush,
            Msg::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let started = std::time::Instant::now();
        while let Err(e) = write(&mut conn, &flush) {
            tracing::error!("row flush failed, retrying (the journal keeps everything): {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
        flushed.fetch_max(flush.journal, Ordering::AcqRel);
        tracing::debug!(
            rows = flush.upserts.len() + flush.deletes.len(),
            journal = flush.journal,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "rows flushed"
        );
    }
}

fn write(conn: &mut Connection, flush: &RowFlush) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(ctx("begin flush"))?;
    for (table, id, doc) in &flush.upserts {
        let Some(key) = row_key(*table, id) else {
            continue;
        };
        tx.prepare_cached(&format!(
            "INSERT INTO {} (id, doc) VALUES (?1, ?2)
             ON CONFLICT(id) DO UPDATE SET doc = excluded.doc",
            sql_table(*table)
        ))
        .map_err(ctx("prepare upsert"))?
        .execute(params![key, doc.to_json()])
        .map_err(ctx("upsert"))?;
    }
    for (table, id) in &flush.deletes {
        let Some(key) = row_key(*table, id) else {
            continue;
        };
        tx.prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", sql_table(*table)))
            .map_err(ctx("prepare delete"))?
            .execute(params![key])
            .map_err(ctx("delete"))?;
    }
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('flushed_journal', ?1), ('id_last', ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )
    .map_err(ctx("prepare flush mark"))?
    .execute(params![flush.journal, flush.id_last as i64])
    .map_err(ctx("write flush mark"))?;
    tx.commit().map_err(ctx("commit flush"))
}

/// Fills a new `state.db` from the rows and flush mark an older `spot.db` kept (a database
/// from before the journal has rows covering every journal batch); a new data directory
/// starts at journal batch 0.
fn migrate_from_spot_db(conn: &Connection, dir: &Path) -> Result<(), StoreError> {
    let has_mark: bool = conn
        .query_row("SELECT count(*) FROM meta", [], |r| r.get::<_, i64>(0))
        .map_err(ctx("read flush mark"))?
        > 0;
    if has_mark {
        return Ok(());
    }
    let spot_db = dir.join("spot.db");
    let legacy = spot_db.exists() && {
        let old = Connection::open(&spot_db).map_err(ctx("open spot.db"))?;
        old.query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'spot_rows'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(ctx("look for rows in spot.db"))?
            > 0
    };
    if !legacy {
        return conn
            .execute_batch(
                "INSERT INTO meta (key, value) VALUES ('flushed_journal', 0), ('id_last', 0);",
            )
            .map_err(ctx("initialise flush mark"));
    }
    let path = spot_db.to_string_lossy().replace('\'', "''");
    conn.execute_batch(&format!(
        "ATTACH DATABASE '{path}' AS old;
         BEGIN;
         INSERT INTO spot_rows SELECT id, doc FROM old.spot_rows;
         INSERT INTO location_rows SELECT id, doc FROM old.location_rows;
         INSERT INTO item_rows SELECT id, doc FROM old.item_rows;
         INSERT INTO presence_rows SELECT id, doc FROM old.presence_rows;
         INSERT INTO meta (key, value) VALUES
             ('flushed_journal', coalesce((SELECT max(id) FROM old.upstream_batches), 0)),
             ('id_last', 0);
         COMMIT;
         DETACH DATABASE old;"
    ))
    .map_err(ctx("copy rows from spot.db"))?;
    tracing::info!("rows moved from spot.db to state.db");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_an_older_spot_db_are_moved_once_and_cover_its_whole_journal() {
        let dir = tempfile::tempdir().unwrap();
        let old = Connection::open(dir.path().join("spot.db")).unwrap();
        old.execute_batch(
            "CREATE TABLE upstream_batches (id INTEGER PRIMARY KEY, time_last INTEGER, lines TEXT);
             INSERT INTO upstream_batches VALUES (1, 1, ''), (2, 2, '');
             CREATE TABLE spot_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE location_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE item_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE presence_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
             INSERT INTO item_rows VALUES (10, '{\"i\":1}');",
        )
        .unwrap();
        drop(old);
        let (writer, tables, journal, id_last) = RowWriter::open(dir.path(), Sync::Normal).unwrap();
        assert_eq!((journal, id_last), (2, 0));
        let items = &tables.iter().find(|(t, _)| *t == Table::Items).unwrap().1;
        assert_eq!(
            items,
            &vec![(crate::ids::id_text(10), "{\"i\":1}".to_string())]
        );
        writer.flush(RowFlush {
            upserts: vec![(Table::Items, crate::ids::id_text(11), "{}".into())],
            deletes: vec![(Table::Items, crate::ids::id_text(10))],
            journal: 3,
            id_last: 77,
        });
        writer.wait();
        assert_eq!(writer.flushed_journal(), 3);
        drop(writer);
        let (_writer, tables, journal, id_last) =
            RowWriter::open(dir.path(), Sync::Normal).unwrap();
        assert_eq!((journal, id_last), (3, 77), "not copied again");
        let items = &tables.iter().find(|(t, _)| *t == Table::Items).unwrap().1;
        assert_eq!(items, &vec![(crate::ids::id_text(11), "{}".to_string())]);
    }
}
