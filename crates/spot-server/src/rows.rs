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
//! # Format
//!
//! The file is only read at startup, so a flush is not upserted row by row (SQLite's b-tree
//! updates into random pages were the server's largest cost) but appended as a *delta*: its
//! upserts, then its deletes, encoded one after the other and LZ4-compressed into blobs of at
//! most [`CHUNK_BYTES`] (uncompressed), rows of `row_deltas`, in id order. A record is
//! `tag: u8` (the table's index in [`Table::ALL`], plus [`DELETE`] for a delete), `id: u64`
//! (little-endian, the [`Id`]'s value), and for an upsert `len: u32` (little-endian) and the
//! row's JSON document. Reading folds the deltas in order: the last record of a row wins, a
//! delete removes it (`fold_live` goes newest first and keeps the first record of each row).
//!
//! SQLite's transaction makes each flush crash-safe: all its blobs and its flush mark, or
//! none of it (then the previous flush is what is read back), fsynced as [`Sync`] says.
//!
//! Deltas pile up: when they hold more than twice the live rows (plus a floor of 200,000)
//! or more than 4,096 blobs, this thread folds them into one base of the live rows and
//! deletes the rest, in one transaction (`compact`). Since the stored rows had at least doubled since the previous base, its cost
//! is at most twice the rows flushed since. It reads the blobs back one at a time and keeps
//! only a set of the row ids seen, so the rows are never held in memory twice.
//!
//! A data directory written before the deltas keeps a table of rows per resource table in
//! `state.db` (converted once, `convert_row_tables`), and an even older one its rows and
//! flush mark in `spot.db` (`migrate_from_spot_db`).

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rusqlite::{params, Connection};
use rustc_hash::FxHashSet;

use crate::domain::{RowDoc, Table};
use crate::ids::Id;
use crate::store::{StoreError, Sync};

/// One flush: every row changed since the previous one.
#[derive(Debug, Default)]
pub struct RowFlush {
    /// Rows to insert or replace: table, id, document (rendered here, off the core thread).
    pub upserts: Vec<(Table, Id, RowDoc)>,
    /// Rows to delete.
    pub deletes: Vec<(Table, Id)>,
    /// The last journal batch (`upstream_batches.id`) these rows cover.
    pub journal: i64,
    /// The id generator's state they correspond to.
    pub id_last: u64,
}

/// The rows of every table as stored: (id, JSON document) each, in id order.
pub type LoadedRows = Vec<(Table, Vec<(String, String)>)>;

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

/// Uncompressed size after which a delta's blob is closed and the next one begun: bounds the
/// memory a flush, a load or a compaction holds besides the rows.
pub const CHUNK_BYTES: usize = 4 << 20;

/// Tag bit of a delete record.
pub const DELETE: u8 = 0x80;

/// When the deltas are folded into one base (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Compaction {
    /// Stored records allowed beyond twice the live rows.
    floor: u64,
    /// Blobs allowed (many small flushes make many blobs: each costs a read at startup).
    max_chunks: u64,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            floor: 200_000,
            max_chunks: 4096,
        }
    }
}

/// What `row_deltas` holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Stats {
    /// Records stored.
    stored: u64,
    /// Live rows when they were last counted (at open or by a compaction).
    live: u64,
    /// Blobs stored.
    chunks: u64,
}

impl Stats {
    fn wants_compaction(&self, policy: Compaction) -> bool {
        self.stored > 2 * self.live + policy.floor
            || (self.chunks > policy.max_chunks && self.chunks > 1)
    }
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS row_deltas (id INTEGER PRIMARY KEY, blob BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);";

/// The tables of rows of the format before the deltas (in `state.db`, and before that in
/// `spot.db`).
const ROW_TABLES: [(Table, &str); 4] = [
    (Table::Spots, "spot_rows"),
    (Table::Locations, "location_rows"),
    (Table::Items, "item_rows"),
    (Table::Presences, "presence_rows"),
];

impl RowWriter {
    /// Opens (creating, or converting from an older format) `<dir>/state.db` and starts its
    /// writer. Returns the writer, the rows of every table and the flush mark: (journal batch
    /// covered, id generator state).
    pub fn open(dir: &Path, sync: Sync) -> Result<(RowWriter, LoadedRows, i64, u64), StoreError> {
        Self::open_with(dir, sync, Compaction::default())
    }

    /// [`RowWriter::open`] with a compaction policy of its own.
    fn open_with(
        dir: &Path,
        sync: Sync,
        policy: Compaction,
    ) -> Result<(RowWriter, LoadedRows, i64, u64), StoreError> {
        let mut conn = Connection::open(dir.join("state.db")).map_err(ctx("open state.db"))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={};
             PRAGMA journal_size_limit={}; {SCHEMA}",
            sync.pragma(),
            64 << 20
        ))
        .map_err(ctx("create state schema"))?;
        convert_row_tables(&mut conn)?;
        migrate_from_spot_db(&mut conn, dir)?;
        let meta = |key: &str| -> Result<i64, StoreError> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .map_err(ctx("read flush mark"))
        };
        let (journal, id_last) = (meta("flushed_journal")?, meta("id_last")?.max(0) as u64);
        let (tables, stats) = load(&conn)?;
        let flushed = Arc::new(AtomicI64::new(journal));
        // One flush may wait while another is written: the journal's writer does not.
        let (tx, rx) = mpsc::sync_channel(1);
        let mark = flushed.clone();
        let thread = std::thread::Builder::new()
            .name("spot-rows".into())
            .spawn(move || run(conn, rx, mark, stats, policy))
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

    /// Waits until every flush handed over is written (and the compaction it caused done).
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

fn run(
    mut conn: Connection,
    rx: mpsc::Receiver<Msg>,
    flushed: Arc<AtomicI64>,
    mut stats: Stats,
    policy: Compaction,
) {
    maybe_compact(&mut conn, &mut stats, policy);
    let mut chunks = Chunks::default();
    for msg in rx {
        let flush = match msg {
            Msg::Flush(flush) => flush,
            Msg::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let started = std::time::Instant::now();
        let written = loop {
            match write(&mut conn, &flush, &mut chunks) {
                Ok(()) => break &chunks,
                Err(e) => {
                    tracing::error!(
                        "row flush failed, retrying (the journal keeps everything): {e}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        flushed.fetch_max(flush.journal, Ordering::AcqRel);
        stats.stored += written.rows;
        stats.chunks += written.chunks;
        tracing::debug!(
            rows = written.rows,
            journal = flush.journal,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "rows flushed"
        );
        drop(flush);
        maybe_compact(&mut conn, &mut stats, policy);
    }
}

/// Compacts when [`Stats::wants_compaction`]; a failure is logged (the deltas stay as they
/// are, and the next flush tries again).
fn maybe_compact(conn: &mut Connection, stats: &mut Stats, policy: Compaction) {
    if !stats.wants_compaction(policy) {
        return;
    }
    let started = std::time::Instant::now();
    match compact(conn) {
        Ok(compacted) => {
            tracing::info!(
                stored = stats.stored,
                live = compacted.live,
                chunks = compacted.chunks,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "row deltas compacted"
            );
            *stats = compacted;
        }
        Err(e) => tracing::error!("row deltas not compacted (tried again later): {e}"),
    }
}

/// The blobs written by one transaction: records are added, and each blob is inserted once
/// it reaches [`CHUNK_BYTES`]. The row thread keeps one from flush to flush
/// ([`Chunks::begin`]): its buffers are megabytes, and buffers allocated afresh for each
/// blob had their pages zeroed by the kernel every time.
#[derive(Default)]
struct Chunks {
    buf: Vec<u8>,
    /// A row's document being rendered.
    doc: String,
    /// A blob compressed ([`crate::store::pack`]).
    packed: Vec<u8>,
    /// Records written, in total.
    rows: u64,
    /// Blobs written.
    chunks: u64,
}

impl Chunks {
    /// Starts the blobs of another transaction (keeps the buffers).
    fn begin(&mut self) {
        self.buf.clear();
        self.rows = 0;
        self.chunks = 0;
    }

    /// Adds the upsert of `doc`, rendered in place.
    fn upsert_doc(
        &mut self,
        conn: &Connection,
        table: Table,
        id: u64,
        doc: &RowDoc,
    ) -> Result<(), StoreError> {
        let mut text = std::mem::take(&mut self.doc);
        text.clear();
        doc.write_json(&mut text);
        let added = self.upsert(conn, table, id, text.as_bytes());
        self.doc = text;
        added
    }

    fn upsert(
        &mut self,
        conn: &Connection,
        table: Table,
        id: u64,
        doc: &[u8],
    ) -> Result<(), StoreError> {
        let len = u32::try_from(doc.len()).map_err(|_| StoreError::Corrupt {
            context: "write a row",
            reason: format!("{} row {} of {} bytes", table.name(), Id(id), doc.len()),
        })?;
        self.buf.push(table as u8);
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(doc);
        self.added(conn)
    }

    fn delete(&mut self, conn: &Connection, table: Table, id: u64) -> Result<(), StoreError> {
        self.buf.push(table as u8 | DELETE);
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.added(conn)
    }

    /// Adds a record as read ([`Record::raw`]).
    fn raw(&mut self, conn: &Connection, raw: &[u8]) -> Result<(), StoreError> {
        self.buf.extend_from_slice(raw);
        self.added(conn)
    }

    fn added(&mut self, conn: &Connection) -> Result<(), StoreError> {
        self.rows += 1;
        if self.buf.len() >= CHUNK_BYTES {
            self.write(conn)?;
        }
        Ok(())
    }

    /// Inserts the blob begun, if any.
    fn write(&mut self, conn: &Connection) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        conn.prepare_cached("INSERT INTO row_deltas (blob) VALUES (?1)")
            .map_err(ctx("prepare delta insert"))?
            .execute([crate::store::pack(&self.buf, &mut self.packed)])
            .map_err(ctx("insert delta"))?;
        self.buf.clear();
        self.chunks += 1;
        Ok(())
    }
}

/// Writes one flush: its delta and its mark, in one transaction; `chunks` counts what was
/// written.
fn write(conn: &mut Connection, flush: &RowFlush, chunks: &mut Chunks) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(ctx("begin flush"))?;
    chunks.begin();
    for (table, id, doc) in &flush.upserts {
        chunks.upsert_doc(&tx, *table, id.0, doc)?;
    }
    // After the upserts: a row both changed and deleted since the last flush is deleted.
    for (table, id) in &flush.deletes {
        chunks.delete(&tx, *table, id.0)?;
    }
    chunks.write(&tx)?;
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('flushed_journal', ?1), ('id_last', ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )
    .map_err(ctx("prepare flush mark"))?
    .execute(params![flush.journal, flush.id_last as i64])
    .map_err(ctx("write flush mark"))?;
    tx.commit().map_err(ctx("commit flush"))
}

/// One record of a delta.
struct Record<'a> {
    table: Table,
    id: u64,
    /// The JSON document; `None` for a delete.
    doc: Option<&'a [u8]>,
    /// The record's bytes.
    raw: &'a [u8],
}

/// The records of a delta's (uncompressed) blob, in order.
fn records(blob: &[u8]) -> Result<Vec<Record<'_>>, String> {
    fn take<'a>(blob: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], String> {
        let bytes = blob
            .get(*at..*at + n)
            .ok_or_else(|| format!("record cut short at byte {at} of {}", blob.len()))?;
        *at += n;
        Ok(bytes)
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at < blob.len() {
        let start = at;
        let head = take(blob, &mut at, 9)?;
        let table = *Table::ALL
            .get(usize::from(head[0] & !DELETE))
            .ok_or_else(|| format!("record tag {:#x}", head[0]))?;
        let id = u64::from_le_bytes(head[1..9].try_into().unwrap_or_default());
        let doc = if head[0] & DELETE != 0 {
            None
        } else {
            let len = take(blob, &mut at, 4)?;
            let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
            Some(take(blob, &mut at, len)?)
        };
        out.push(Record {
            table,
            id,
            doc,
            raw: &blob[start..at],
        });
    }
    Ok(out)
}

/// Visits the live rows of the deltas up to `upto` (newest first: the first record of a row
/// met is its last write; a delete hides the older ones). Holds one blob at a time and the set
/// of ids met. Returns the records and blobs read.
fn fold_live(
    conn: &Connection,
    upto: i64,
    mut visit: impl FnMut(&Record<'_>) -> Result<(), StoreError>,
) -> Result<Stats, StoreError> {
    let ids = conn
        .prepare("SELECT id FROM row_deltas WHERE id <= ?1 ORDER BY id DESC")
        .map_err(ctx("list deltas"))?
        .query_map([upto], |r| r.get::<_, i64>(0))
        .map_err(ctx("list deltas"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(ctx("list deltas"))?;
    let bad = |reason: String| StoreError::Corrupt {
        context: "read row deltas",
        reason,
    };
    let mut seen: [FxHashSet<u64>; 4] = Default::default();
    let mut stats = Stats::default();
    let mut read = conn
        .prepare("SELECT blob FROM row_deltas WHERE id = ?1")
        .map_err(ctx("prepare delta read"))?;
    for id in ids {
        let blob = read
            .query_row([id], |r| {
                Ok(match r.get_ref(0)? {
                    rusqlite::types::ValueRef::Blob(bytes) => {
                        lz4_flex::decompress_size_prepended(bytes)
                            .map_err(|e| format!("delta {id}: {e}"))
                    }
                    other => Err(format!("delta {id} of type {}", other.data_type())),
                })
            })
            .map_err(ctx("read delta"))?
            .map_err(bad)?;
        let records = records(&blob).map_err(|e| bad(format!("delta {id}: {e}")))?;
        stats.chunks += 1;
        stats.stored += records.len() as u64;
        for record in records.iter().rev() {
            if seen[record.table as usize].insert(record.id) && record.doc.is_some() {
                stats.live += 1;
                visit(record)?;
            }
        }
    }
    Ok(stats)
}

/// Reads the rows of every table, and what the deltas hold.
fn load(conn: &Connection) -> Result<(LoadedRows, Stats), StoreError> {
    let mut rows: [Vec<(String, String)>; 4] = Default::default();
    let stats = fold_live(conn, i64::MAX, |record| {
        let doc = String::from_utf8(record.doc.unwrap_or_default().to_vec()).map_err(|e| {
            StoreError::Corrupt {
                context: "read row deltas",
                reason: format!("{} row {}: {e}", record.table.name(), Id(record.id)),
            }
        })?;
        rows[record.table as usize].push((Id(record.id).text(), doc));
        Ok(())
    })?;
    let tables = Table::ALL
        .into_iter()
        .zip(rows)
        .map(|(table, mut rows)| {
            // An id's text sorts as its value.
            rows.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
            (table, rows)
        })
        .collect();
    Ok((tables, stats))
}

/// Folds every delta into one base of the live rows, in one transaction.
fn compact(conn: &mut Connection) -> Result<Stats, StoreError> {
    let tx = conn.transaction().map_err(ctx("begin compaction"))?;
    let newest: i64 = tx
        .query_row("SELECT coalesce(max(id), 0) FROM row_deltas", [], |r| {
            r.get(0)
        })
        .map_err(ctx("find the newest delta"))?;
    let mut base = Chunks::default();
    fold_live(&tx, newest, |record| base.raw(&tx, record.raw))?;
    base.write(&tx)?;
    tx.execute("DELETE FROM row_deltas WHERE id <= ?1", [newest])
        .map_err(ctx("delete compacted deltas"))?;
    tx.commit().map_err(ctx("commit compaction"))?;
    Ok(Stats {
        stored: base.rows,
        live: base.rows,
        chunks: base.chunks,
    })
}

/// Whether `schema` (`main` or an attached database) has the row tables of the old format.
fn has_row_tables(conn: &Connection, schema: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT count(*) FROM {schema}.sqlite_master WHERE name = 'spot_rows'"),
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(ctx("look for row tables"))?
        > 0)
}

/// Appends the rows of the old format's tables in `schema` as one delta.
fn import_row_tables(conn: &Connection, schema: &str) -> Result<u64, StoreError> {
    let mut base = Chunks::default();
    for (table, sql_table) in ROW_TABLES {
        let mut stmt = conn
            .prepare(&format!("SELECT id, doc FROM {schema}.{sql_table}"))
            .map_err(ctx("read old rows"))?;
        let mut rows = stmt.query([]).map_err(ctx("read old rows"))?;
        while let Some(row) = rows.next().map_err(ctx("read old row"))? {
            let id: i64 = row.get(0).map_err(ctx("read old row"))?;
            let doc = row.get_ref(1).map_err(ctx("read old row"))?;
            let doc = doc.as_bytes().map_err(|e| StoreError::Corrupt {
                context: "read old rows",
                reason: format!("{} row {}: {e}", table.name(), Id(id as u64)),
            })?;
            base.upsert(conn, table, id as u64, doc)?;
        }
    }
    base.write(conn)?;
    Ok(base.rows)
}

/// Converts a `state.db` of the format before the deltas (a table of rows per resource table)
/// once: its rows become the first delta and the tables go, in one transaction (then the file
/// is compacted).
fn convert_row_tables(conn: &mut Connection) -> Result<(), StoreError> {
    if !has_row_tables(conn, "main")? {
        return Ok(());
    }
    let tx = conn.transaction().map_err(ctx("begin row conversion"))?;
    let rows = import_row_tables(&tx, "main")?;
    tx.execute_batch(
        "DROP TABLE spot_rows; DROP TABLE location_rows;
         DROP TABLE item_rows; DROP TABLE presence_rows;",
    )
    .map_err(ctx("drop old row tables"))?;
    tx.commit().map_err(ctx("commit row conversion"))?;
    // The old tables' pages would stay in the file, free, several times the deltas' size.
    conn.execute_batch("VACUUM")
        .map_err(ctx("give back the old row tables' space"))?;
    tracing::info!("{rows} rows of state.db converted to deltas");
    Ok(())
}

/// Fills a new `state.db` from the rows and flush mark an older `spot.db` kept (a database
/// from before the journal has rows covering every journal batch); a new data directory
/// starts at journal batch 0.
fn migrate_from_spot_db(conn: &mut Connection, dir: &Path) -> Result<(), StoreError> {
    let has_mark: bool = conn
        .query_row("SELECT count(*) FROM meta", [], |r| r.get::<_, i64>(0))
        .map_err(ctx("read flush mark"))?
        > 0;
    if has_mark {
        return Ok(());
    }
    let spot_db = dir.join("spot.db");
    if spot_db.exists() {
        let path = spot_db.to_string_lossy().replace('\'', "''");
        conn.execute_batch(&format!("ATTACH DATABASE '{path}' AS old;"))
            .map_err(ctx("open spot.db"))?;
        let copied = copy_from_spot_db(conn);
        conn.execute_batch("DETACH DATABASE old;")
            .map_err(ctx("close spot.db"))?;
        if copied? {
            tracing::info!("rows moved from spot.db to state.db");
            return Ok(());
        }
    }
    conn.execute_batch(
        "INSERT INTO meta (key, value) VALUES ('flushed_journal', 0), ('id_last', 0);",
    )
    .map_err(ctx("initialise flush mark"))
}

/// Copies the rows and flush mark of the attached `old` (`spot.db`) if it has rows.
fn copy_from_spot_db(conn: &mut Connection) -> Result<bool, StoreError> {
    if !has_row_tables(conn, "old")? {
        return Ok(false);
    }
    let tx = conn.transaction().map_err(ctx("begin copy from spot.db"))?;
    import_row_tables(&tx, "old")?;
    tx.execute_batch(
        "INSERT INTO meta (key, value) VALUES
             ('flushed_journal', coalesce((SELECT max(id) FROM old.upstream_batches), 0)),
             ('id_last', 0);",
    )
    .map_err(ctx("copy the flush mark from spot.db"))?;
    tx.commit().map_err(ctx("commit copy from spot.db"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> Id {
        Id((1_764_000_000_000u64 << 16) + n)
    }

    fn rows_of(tables: &LoadedRows, table: Table) -> Vec<(String, String)> {
        tables
            .iter()
            .find(|(t, _)| *t == table)
            .map(|(_, rows)| rows.clone())
            .unwrap_or_default()
    }

    fn row(n: u64, doc: &str) -> (String, String) {
        (id(n).text(), doc.to_string())
    }

    fn upsert(table: Table, n: u64, doc: &str) -> (Table, Id, RowDoc) {
        (table, id(n), doc.into())
    }

    /// (records, blobs) in `row_deltas`.
    fn stored(dir: &Path) -> (usize, usize) {
        let conn = Connection::open(dir.join("state.db")).unwrap();
        let mut stmt = conn.prepare("SELECT blob FROM row_deltas").unwrap();
        let blobs: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let records = blobs
            .iter()
            .map(|b| {
                records(&lz4_flex::decompress_size_prepended(b).unwrap())
                    .unwrap()
                    .len()
            })
            .sum();
        (records, blobs.len())
    }

    const NEVER: Compaction = Compaction {
        floor: u64::MAX / 4,
        max_chunks: u64::MAX,
    };

    #[test]
    fn flushes_fold_in_order_last_write_wins_and_deletes_remove() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, tables, journal, id_last) =
            RowWriter::open_with(dir.path(), Sync::Normal, NEVER).unwrap();
        assert_eq!((journal, id_last), (0, 0), "a new directory");
        assert!(tables.iter().all(|(_, rows)| rows.is_empty()));
        writer.flush(RowFlush {
            upserts: vec![
                upsert(Table::Items, 3, "{\"i\":3}"),
                upsert(Table::Items, 1, "{\"i\":1}"),
                upsert(Table::Items, 2, "{\"i\":2}"),
                upsert(Table::Spots, 1, "{\"s\":1}"),
                upsert(Table::Presences, 9, "{\"p\":9}"),
            ],
            deletes: vec![],
            journal: 4,
            id_last: 10,
        });
        writer.flush(RowFlush {
            upserts: vec![
                upsert(Table::Items, 1, "{\"i\":\"1b\"}"),
                upsert(Table::Items, 1, "{\"i\":\"1c\"}"),
                upsert(Table::Locations, 5, "{\"l\":5}"),
                upsert(Table::Presences, 8, "{\"p\":8}"),
            ],
            deletes: vec![(Table::Items, id(2)), (Table::Presences, id(8))],
            journal: 7,
            id_last: 12,
        });
        writer.flush(RowFlush {
            upserts: vec![upsert(Table::Items, 2, "{\"i\":\"2b\"}")],
            deletes: vec![(Table::Spots, id(1)), (Table::Locations, id(99))],
            journal: 9,
            id_last: 13,
        });
        writer.flush(RowFlush {
            journal: 11,
            id_last: 14,
            ..RowFlush::default()
        });
        writer.wait();
        assert_eq!(writer.flushed_journal(), 11);
        drop(writer);
        assert_eq!(
            stored(dir.path()),
            (14, 3),
            "an empty flush writes no delta"
        );
        let (_writer, tables, journal, id_last) =
            RowWriter::open_with(dir.path(), Sync::Normal, NEVER).unwrap();
        assert_eq!((journal, id_last), (11, 14));
        assert_eq!(
            rows_of(&tables, Table::Items),
            vec![
                row(1, "{\"i\":\"1c\"}"),
                row(2, "{\"i\":\"2b\"}"),
                row(3, "{\"i\":3}")
            ],
            "in id order"
        );
        assert_eq!(rows_of(&tables, Table::Spots), vec![]);
        assert_eq!(
            rows_of(&tables, Table::Locations),
            vec![row(5, "{\"l\":5}")]
        );
        assert_eq!(
            rows_of(&tables, Table::Presences),
            vec![row(9, "{\"p\":9}")]
        );
    }

    #[test]
    fn a_flush_larger_than_a_blob_is_split_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, ..) = RowWriter::open_with(dir.path(), Sync::Normal, NEVER).unwrap();
        let doc = format!("\"{}\"", "x".repeat(1000));
        let n = 2 * CHUNK_BYTES as u64 / 1000 + 10;
        writer.flush(RowFlush {
            upserts: (0..n).map(|i| upsert(Table::Items, i, &doc)).collect(),
            journal: 1,
            ..RowFlush::default()
        });
        drop(writer);
        let (records, blobs) = stored(dir.path());
        assert_eq!((records, blobs), (n as usize, 3));
        let (_writer, tables, ..) = RowWriter::open_with(dir.path(), Sync::Normal, NEVER).unwrap();
        let items = rows_of(&tables, Table::Items);
        assert_eq!(items.len() as u64, n);
        assert!(items.iter().all(|(_, d)| *d == doc));
    }

    #[test]
    fn compaction_keeps_exactly_the_live_rows_and_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Compaction {
            floor: 5,
            max_chunks: u64::MAX,
        };
        let (writer, ..) = RowWriter::open_with(dir.path(), Sync::Normal, policy).unwrap();
        // 4 live items, rewritten again and again; item 5 comes and goes.
        for round in 0..3u64 {
            writer.flush(RowFlush {
                upserts: (1..=5)
                    .map(|i| upsert(Table::Items, i, &format!("{{\"r\":{round}}}")))
                    .collect(),
                deletes: vec![(Table::Items, id(5))],
                journal: round as i64 + 1,
                id_last: 100 + round,
            });
        }
        writer.wait();
        // Compacted after the first flush (6 records > 2 × 0 + 5), not after the second
        // (4 + 6 <= 2 × 4 + 5), after the third (16 > 13).
        assert_eq!(stored(dir.path()), (4, 1), "compacted into one base");
        writer.flush(RowFlush {
            upserts: vec![upsert(Table::Spots, 7, "{}")],
            journal: 9,
            id_last: 200,
            ..RowFlush::default()
        });
        writer.wait();
        assert_eq!(stored(dir.path()), (5, 2), "deltas follow the base");
        drop(writer);
        let (_writer, tables, journal, id_last) =
            RowWriter::open_with(dir.path(), Sync::Normal, policy).unwrap();
        assert_eq!((journal, id_last), (9, 200));
        assert_eq!(
            rows_of(&tables, Table::Items),
            (1..=4).map(|i| row(i, "{\"r\":2}")).collect::<Vec<_>>()
        );
        assert_eq!(rows_of(&tables, Table::Spots), vec![row(7, "{}")]);
    }

    #[test]
    fn many_small_deltas_are_compacted_at_open_too() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, ..) = RowWriter::open_with(dir.path(), Sync::Normal, NEVER).unwrap();
        for i in 0..6 {
            writer.flush(RowFlush {
                upserts: vec![upsert(Table::Items, i, "{}")],
                journal: i as i64,
                ..RowFlush::default()
            });
        }
        drop(writer);
        assert_eq!(stored(dir.path()), (6, 6));
        let policy = Compaction {
            floor: 1000,
            max_chunks: 4,
        };
        let (writer, tables, ..) = RowWriter::open_with(dir.path(), Sync::Normal, policy).unwrap();
        writer.wait();
        assert_eq!(stored(dir.path()), (6, 1));
        assert_eq!(rows_of(&tables, Table::Items).len(), 6);
    }

    #[test]
    fn a_written_flush_survives_a_writer_that_never_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, ..) = RowWriter::open(dir.path(), Sync::Normal).unwrap();
        writer.flush(RowFlush {
            upserts: vec![upsert(Table::Items, 1, "{\"a\":1}")],
            journal: 3,
            id_last: 4,
            ..RowFlush::default()
        });
        writer.wait();
        // As after a crash: the connection is never closed, its WAL never checkpointed.
        std::mem::forget(writer);
        let (_writer, tables, journal, id_last) =
            RowWriter::open(dir.path(), Sync::Normal).unwrap();
        assert_eq!((journal, id_last), (3, 4));
        assert_eq!(rows_of(&tables, Table::Items), vec![row(1, "{\"a\":1}")]);
    }

    #[test]
    fn a_corrupt_delta_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(RowWriter::open(dir.path(), Sync::Normal).unwrap());
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        let truncated = lz4_flex::compress_prepend_size(&[0u8, 1, 2]);
        conn.execute("INSERT INTO row_deltas (blob) VALUES (?1)", [truncated])
            .unwrap();
        drop(conn);
        let err = RowWriter::open(dir.path(), Sync::Normal).unwrap_err();
        assert!(err.to_string().contains("cut short"), "{err}");
    }

    const OLD_ROW_TABLES: &str = "
        CREATE TABLE spot_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
        CREATE TABLE location_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
        CREATE TABLE item_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
        CREATE TABLE presence_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);";

    #[test]
    fn a_state_db_of_row_tables_is_converted_once_with_its_rows_and_mark() {
        let dir = tempfile::tempdir().unwrap();
        let old = Connection::open(dir.path().join("state.db")).unwrap();
        old.execute_batch(OLD_ROW_TABLES).unwrap();
        old.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO meta VALUES ('flushed_journal', 41), ('id_last', 99);",
        )
        .unwrap();
        for (table, n, doc) in [
            ("spot_rows", 1, "{\"s\":1}"),
            ("item_rows", 3, "{\"i\":3}"),
            ("item_rows", 2, "{\"i\":2}"),
            ("presence_rows", 4, "{\"p\":4}"),
        ] {
            old.execute(
                &format!("INSERT INTO {table} VALUES (?1, ?2)"),
                params![id(n).0 as i64, doc],
            )
            .unwrap();
        }
        drop(old);
        let (writer, tables, journal, id_last) = RowWriter::open(dir.path(), Sync::Normal).unwrap();
        assert_eq!((journal, id_last), (41, 99));
        assert_eq!(rows_of(&tables, Table::Spots), vec![row(1, "{\"s\":1}")]);
        assert_eq!(
            rows_of(&tables, Table::Items),
            vec![row(2, "{\"i\":2}"), row(3, "{\"i\":3}")]
        );
        assert_eq!(
            rows_of(&tables, Table::Presences),
            vec![row(4, "{\"p\":4}")]
        );
        assert_eq!(stored(dir.path()), (4, 1));
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        assert!(!has_row_tables(&conn, "main").unwrap(), "old tables gone");
        let free: i64 = conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap();
        assert_eq!(free, 0, "and their space given back");
        writer.flush(RowFlush {
            deletes: vec![(Table::Items, id(3))],
            journal: 42,
            id_last: 100,
            ..RowFlush::default()
        });
        drop(writer);
        let (_writer, tables, journal, id_last) =
            RowWriter::open(dir.path(), Sync::Normal).unwrap();
        assert_eq!((journal, id_last), (42, 100));
        assert_eq!(rows_of(&tables, Table::Items), vec![row(2, "{\"i\":2}")]);
        assert_eq!(stored(dir.path()), (5, 2), "not converted again");
    }

    #[test]
    fn rows_of_an_older_spot_db_are_moved_once_and_cover_its_whole_journal() {
        let dir = tempfile::tempdir().unwrap();
        let old = Connection::open(dir.path().join("spot.db")).unwrap();
        old.execute_batch(OLD_ROW_TABLES).unwrap();
        old.execute_batch(
            "CREATE TABLE upstream_batches (id INTEGER PRIMARY KEY, time_last INTEGER, lines TEXT);
             INSERT INTO upstream_batches VALUES (1, 1, ''), (2, 2, '');",
        )
        .unwrap();
        old.execute(
            "INSERT INTO item_rows VALUES (?1, '{\"i\":1}')",
            [id(10).0 as i64],
        )
        .unwrap();
        drop(old);
        let (writer, tables, journal, id_last) = RowWriter::open(dir.path(), Sync::Normal).unwrap();
        assert_eq!((journal, id_last), (2, 0));
        assert_eq!(rows_of(&tables, Table::Items), vec![row(10, "{\"i\":1}")]);
        writer.flush(RowFlush {
            upserts: vec![upsert(Table::Items, 11, "{}")],
            deletes: vec![(Table::Items, id(10))],
            journal: 3,
            id_last: 77,
        });
        writer.wait();
        assert_eq!(writer.flushed_journal(), 3);
        drop(writer);
        let (_writer, tables, journal, id_last) =
            RowWriter::open(dir.path(), Sync::Normal).unwrap();
        assert_eq!((journal, id_last), (3, 77), "not copied again");
        assert_eq!(rows_of(&tables, Table::Items), vec![row(11, "{}")]);
    }

    #[test]
    fn a_spot_db_without_rows_starts_at_journal_batch_zero() {
        let dir = tempfile::tempdir().unwrap();
        let old = Connection::open(dir.path().join("spot.db")).unwrap();
        old.execute_batch("CREATE TABLE upstream_batches (id INTEGER PRIMARY KEY);")
            .unwrap();
        drop(old);
        let (_writer, tables, journal, id_last) =
            RowWriter::open(dir.path(), Sync::Normal).unwrap();
        assert_eq!((journal, id_last), (0, 0));
        assert!(tables.iter().all(|(_, rows)| rows.is_empty()));
    }
}
