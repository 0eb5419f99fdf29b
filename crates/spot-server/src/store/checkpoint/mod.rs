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
//! `tag: u8` (the table's index in [`Table::ALL`], plus [`DELETE`] for a delete and [`BINARY`]
//! for an encoded row), `id: u64` (little-endian, the [`Id`]'s value), and for an upsert
//! `len: u32` (little-endian) and the row: items and presences in their binary encoding
//! ([`codec`]: a fraction of the bytes to render, compress and read back), spots, locations
//! and the item and spot lists as their JSON document. Reading folds the deltas in order: the last record of a row wins, a
//! delete removes it (`fold_live` goes newest first and keeps the first record of each row).
//! A flush is encoded (and its rows' snapshots let go) before its transaction, which is then
//! retried with the same blobs until it succeeds.
//!
//! SQLite's transaction makes each flush crash-safe: all its blobs and its flush mark, or
//! none of it (then the previous flush is what is read back), fsynced as [`Durability`] says.
//!
//! Deltas pile up: when they hold more than twice the live rows (plus a floor of 1,000,000:
//! a dead encoded record costs a start little, a compaction rewrites every live row)
//! or more than 4,096 blobs, this thread folds them into one base of the live rows and
//! deletes the rest, in one transaction (`compact`). Since the stored rows had at least
//! doubled since the previous base, its cost is at most twice the rows flushed since. It reads
//! the blobs back one at a time (into one buffer kept by the thread) and keeps only a set of
//! the row ids seen, so the rows are never held in memory twice; records are copied as they
//! are, not decoded.
//!
//! Items and presences written as JSON documents (before [`codec`]) still load; a compaction
//! converts them, and one runs as soon as the rows are opened when any are live. A data
//! directory written before the deltas keeps a table of rows per resource table in
//! `state.db` (converted once, `convert_row_tables`), and an even older one its rows and
//! flush mark in `spot.db` (`migrate_from_spot_db`).

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rusqlite::{params, Connection};
use rustc_hash::FxHashSet;

use crate::domain::{Item, PresenceResource, RowDoc, Table};
use crate::ids::Id;
use crate::store::{Durability, StoreError};

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

pub mod codec;

use codec::RowError;

/// A row as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredRow {
    /// A JSON document (spots and locations; items and presences written before [`codec`]).
    Json(String),
    /// An item, decoded.
    Item(Item),
    /// A presence, decoded.
    Presence(PresenceResource),
}

/// The rows of every table as stored, in id order.
pub type LoadedRows = Vec<(Table, Vec<(Id, StoredRow)>)>;

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

/// Tag bit of an upsert whose document is the row's binary encoding ([`codec`]).
pub const BINARY: u8 = 0x40;

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
            floor: 1_000_000,
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
    /// Items and presences among the live rows stored as JSON documents (written before
    /// [`codec`]; converted by the next compaction).
    legacy: u64,
}

impl Stats {
    fn wants_compaction(&self, policy: Compaction) -> bool {
        self.stored > 2 * self.live + policy.floor
            || (self.chunks > policy.max_chunks && self.chunks > 1)
            || self.legacy > 0
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
    pub fn open(
        dir: &Path,
        sync: Durability,
    ) -> Result<(RowWriter, LoadedRows, i64, u64), StoreError> {
        Self::open_with(dir, sync, Compaction::default())
    }

    /// [`RowWriter::open`] with a compaction policy of its own.
    fn open_with(
        dir: &Path,
        sync: Durability,
        policy: Compaction,
    ) -> Result<(RowWriter, LoadedRows, i64, u64), StoreError> {
        let mut conn = Connection::open(dir.join("state.db")).map_err(ctx("open state.db"))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={};
             PRAGMA journal_size_limit={}; {SCHEMA}",
            crate::store::synchronous_pragma(sync),
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
        let started = std::time::Instant::now();
        let (tables, stats) = load(&conn)?;
        tracing::info!(
            rows = stats.live,
            stored = stats.stored,
            ms = crate::clock::log_ms(started.elapsed()),
            "rows read"
        );
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
    let mut chunks = Chunks::default();
    maybe_compact(&mut conn, &mut stats, policy, &mut chunks);
    let mut blobs = Blobs::default();
    for msg in rx {
        let mut flush = match msg {
            Msg::Flush(flush) => flush,
            Msg::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let started = std::time::Instant::now();
        // Encoded once (each row's snapshot let go as soon as it is), written until it is.
        let (rows, chunks_written) = encode(&mut chunks, &mut flush, &mut blobs);
        while let Err(e) = write(&mut conn, blobs.packed(), &flush) {
            tracing::error!("row flush failed, retrying (the journal keeps everything): {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
        flushed.fetch_max(flush.journal, Ordering::AcqRel);
        stats.stored += rows;
        stats.chunks += chunks_written;
        tracing::debug!(
            rows,
            journal = flush.journal,
            ms = crate::clock::log_ms(started.elapsed()),
            "rows flushed"
        );
        drop(flush);
        maybe_compact(&mut conn, &mut stats, policy, &mut chunks);
    }
}

/// Compacts when [`Stats::wants_compaction`]; a failure is logged (the deltas stay as they
/// are, and the next flush tries again).
fn maybe_compact(
    conn: &mut Connection,
    stats: &mut Stats,
    policy: Compaction,
    chunks: &mut Chunks,
) {
    if !stats.wants_compaction(policy) {
        return;
    }
    let started = std::time::Instant::now();
    match compact(conn, chunks) {
        Ok(compacted) => {
            tracing::info!(
                stored = stats.stored,
                live = compacted.live,
                converted = stats.legacy,
                chunks = compacted.chunks,
                ms = crate::clock::log_ms(started.elapsed()),
                "row deltas compacted"
            );
            *stats = compacted;
        }
        Err(e) => tracing::error!("row deltas not compacted (tried again later): {e}"),
    }
}

/// Where [`Chunks`] hands each blob it closes, [`crate::store::pack`]ed.
type Sink<'s> = dyn FnMut(&[u8]) -> Result<(), StoreError> + 's;

/// The blobs of one delta: records are added, and each blob is packed and handed to a sink
/// once it reaches [`CHUNK_BYTES`]. The row thread keeps one from flush to flush
/// ([`Chunks::begin`]): its buffers are megabytes, and buffers allocated afresh for each
/// blob had their pages zeroed by the kernel every time.
#[derive(Default)]
struct Chunks {
    buf: Vec<u8>,
    /// A row's JSON document being rendered.
    doc: String,
    /// A blob compressed ([`crate::store::pack`]).
    packed: Vec<u8>,
    /// A blob read back, uncompressed ([`unpack_into`]).
    read: Vec<u8>,
    /// Where the records of the blob read begin.
    starts: Vec<usize>,
    /// Records added since [`Chunks::begin`].
    rows: u64,
    /// Blobs handed over since [`Chunks::begin`].
    chunks: u64,
}

impl Chunks {
    /// Starts the blobs of another delta (keeps the buffers).
    fn begin(&mut self) {
        self.buf.clear();
        self.rows = 0;
        self.chunks = 0;
    }

    /// Adds the upsert of a row: items and presences in their binary encoding ([`codec`]),
    /// the others as their JSON document.
    fn upsert_row(
        &mut self,
        table: Table,
        id: u64,
        doc: &RowDoc,
        sink: &mut Sink<'_>,
    ) -> Result<(), StoreError> {
        match doc {
            RowDoc::Item(item) => {
                self.upsert_binary(table, id, sink, |out| codec::put_item(out, item))
            }
            RowDoc::Presence(p) => {
                self.upsert_binary(table, id, sink, |out| codec::put_presence(out, p))
            }
            _ => {
                let mut text = std::mem::take(&mut self.doc);
                text.clear();
                doc.write_json(&mut text);
                let added = self.upsert(table, id, text.as_bytes(), sink);
                self.doc = text;
                added
            }
        }
    }

    /// Adds an upsert encoded in place by `encode`.
    fn upsert_binary(
        &mut self,
        table: Table,
        id: u64,
        sink: &mut Sink<'_>,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), StoreError> {
        let at = self.buf.len();
        self.buf.push(table as u8 | BINARY);
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        encode(&mut self.buf);
        let len = self.buf.len() - at - 13;
        let Ok(len) = u32::try_from(len) else {
            self.buf.truncate(at);
            return Err(too_long(table, id, len));
        };
        self.buf[at + 9..at + 13].copy_from_slice(&len.to_le_bytes());
        self.added(sink)
    }

    /// Adds the upsert of a JSON document.
    fn upsert(
        &mut self,
        table: Table,
        id: u64,
        doc: &[u8],
        sink: &mut Sink<'_>,
    ) -> Result<(), StoreError> {
        let len = u32::try_from(doc.len()).map_err(|_| too_long(table, id, doc.len()))?;
        self.buf.push(table as u8);
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(doc);
        self.added(sink)
    }

    fn delete(&mut self, table: Table, id: u64, sink: &mut Sink<'_>) -> Result<(), StoreError> {
        self.buf.push(table as u8 | DELETE);
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.added(sink)
    }

    /// Adds a record as read ([`Record::raw`]).
    fn raw(&mut self, raw: &[u8], sink: &mut Sink<'_>) -> Result<(), StoreError> {
        self.buf.extend_from_slice(raw);
        self.added(sink)
    }

    fn added(&mut self, sink: &mut Sink<'_>) -> Result<(), StoreError> {
        self.rows += 1;
        if self.buf.len() >= CHUNK_BYTES {
            self.finish(sink)?;
        }
        Ok(())
    }

    /// Hands over the blob begun, if any.
    fn finish(&mut self, sink: &mut Sink<'_>) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        sink(crate::store::pack(&self.buf, &mut self.packed))?;
        self.buf.clear();
        self.chunks += 1;
        Ok(())
    }
}

fn too_long(table: Table, id: u64, len: usize) -> StoreError {
    StoreError::Corrupt {
        context: "write a row",
        reason: format!("{} row {} of {len} bytes", table.name(), Id(id)),
    }
}

/// A sink inserting each blob into `row_deltas`.
fn insert_into(conn: &Connection) -> impl FnMut(&[u8]) -> Result<(), StoreError> + '_ {
    move |blob| {
        conn.prepare_cached("INSERT INTO row_deltas (blob) VALUES (?1)")
            .map_err(ctx("prepare delta insert"))?
            .execute([blob])
            .map_err(ctx("insert delta"))?;
        Ok(())
    }
}

/// The packed blobs of one flush, their buffers kept from flush to flush (see [`Chunks`]).
#[derive(Default)]
struct Blobs {
    buffers: Vec<Vec<u8>>,
    used: usize,
}

impl Blobs {
    fn clear(&mut self) {
        self.used = 0;
    }

    fn push(&mut self, blob: &[u8]) {
        if self.used == self.buffers.len() {
            self.buffers.push(Vec::new());
        }
        let buffer = &mut self.buffers[self.used];
        buffer.clear();
        buffer.extend_from_slice(blob);
        self.used += 1;
    }

    fn packed(&self) -> &[Vec<u8>] {
        &self.buffers[..self.used]
    }
}

/// Encodes one flush's delta into `blobs` (packed), taking its upserts (each row's snapshot is
/// let go once encoded); returns the records and blobs. A row that cannot be stored (a
/// document of 4 GiB) is left out, logged.
fn encode(chunks: &mut Chunks, flush: &mut RowFlush, blobs: &mut Blobs) -> (u64, u64) {
    chunks.begin();
    blobs.clear();
    let mut sink = |blob: &[u8]| -> Result<(), StoreError> {
        blobs.push(blob);
        Ok(())
    };
    let added = |result: Result<(), StoreError>| {
        if let Err(e) = result {
            tracing::error!("row not written: {e}");
        }
    };
    for (table, id, doc) in flush.upserts.drain(..) {
        added(chunks.upsert_row(table, id.0, &doc, &mut sink));
    }
    // After the upserts: a row both changed and deleted since the last flush is deleted.
    for (table, id) in &flush.deletes {
        added(chunks.delete(*table, id.0, &mut sink));
    }
    added(chunks.finish(&mut sink));
    (chunks.rows, chunks.chunks)
}

/// Writes one flush: its delta's blobs and its mark, in one transaction.
fn write(conn: &mut Connection, blobs: &[Vec<u8>], flush: &RowFlush) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(ctx("begin flush"))?;
    {
        let mut insert = insert_into(&tx);
        for blob in blobs {
            insert(blob)?;
        }
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

/// One record of a delta.
struct Record<'a> {
    table: Table,
    id: u64,
    /// The document: the row's binary encoding ([`codec`]) when `binary`, else its JSON
    /// document; `None` for a delete.
    doc: Option<&'a [u8]>,
    binary: bool,
    /// The record's bytes.
    raw: &'a [u8],
}

impl Record<'_> {
    /// An upsert of an item or presence as a JSON document (written before [`codec`]).
    fn is_legacy(&self) -> bool {
        !self.binary && self.doc.is_some() && matches!(self.table, Table::Items | Table::Presences)
    }
}

/// The record of `blob` at byte `at`.
fn record_at(blob: &[u8], at: usize) -> Result<Record<'_>, RowError> {
    fn take<'a>(blob: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], RowError> {
        let bytes = blob
            .get(*at..at.saturating_add(n))
            .ok_or(RowError::CutShort {
                what: "record",
                at: *at,
                len: blob.len(),
            })?;
        *at += n;
        Ok(bytes)
    }
    let start = at;
    let mut at = at;
    let head = take(blob, &mut at, 9)?;
    let table = *Table::ALL
        .get(usize::from(head[0] & !(DELETE | BINARY)))
        .ok_or(RowError::RecordTag(head[0]))?;
    let id = u64::from_le_bytes(head[1..9].try_into().unwrap_or_default());
    let doc = if head[0] & DELETE != 0 {
        None
    } else {
        let len = take(blob, &mut at, 4)?;
        let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
        Some(take(blob, &mut at, len)?)
    };
    Ok(Record {
        table,
        id,
        doc,
        binary: head[0] & BINARY != 0,
        raw: &blob[start..at],
    })
}

/// Where the records of a delta's (uncompressed) blob begin, in order, into `starts`.
fn record_starts(blob: &[u8], starts: &mut Vec<usize>) -> Result<(), RowError> {
    starts.clear();
    let mut at = 0;
    while at < blob.len() {
        starts.push(at);
        at += record_at(blob, at)?.raw.len();
    }
    Ok(())
}

/// Uncompresses a [`crate::store::pack`]ed blob into `out` (reused: its length only grows,
/// so its pages are not zeroed again); returns the blob's length.
fn unpack_into(packed: &[u8], out: &mut Vec<u8>) -> Result<usize, RowError> {
    let (size, block) = packed
        .split_first_chunk::<4>()
        .ok_or(RowError::BlobHead(packed.len()))?;
    let size = u32::from_le_bytes(*size) as usize;
    if out.len() < size {
        out.resize(size, 0);
    }
    let n = lz4_flex::block::decompress_into(block, &mut out[..size])?;
    if n != size {
        return Err(RowError::SizeMismatch {
            got: n,
            announced: size,
        });
    }
    Ok(size)
}

/// Visits the live rows of the deltas up to `upto` (newest first: the first record of a row
/// met is its last write; a delete hides the older ones). Holds one blob at a time (in
/// `chunks`' read buffer) and the set of ids met. Returns the records and blobs read.
fn fold_live(
    conn: &Connection,
    upto: i64,
    read_buf: &mut Vec<u8>,
    starts: &mut Vec<usize>,
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
    let mut seen: [FxHashSet<u64>; Table::ALL.len()] = Default::default();
    let mut stats = Stats::default();
    let mut read = conn
        .prepare("SELECT blob FROM row_deltas WHERE id = ?1")
        .map_err(ctx("prepare delta read"))?;
    for id in ids {
        let len = read
            .query_row([id], |r| {
                Ok(match r.get_ref(0)? {
                    rusqlite::types::ValueRef::Blob(bytes) => {
                        unpack_into(bytes, read_buf).map_err(|e| format!("delta {id}: {e}"))
                    }
                    other => Err(format!("delta {id} of type {}", other.data_type())),
                })
            })
            .map_err(ctx("read delta"))?
            .map_err(bad)?;
        let blob = &read_buf[..len];
        record_starts(blob, starts).map_err(|e| bad(format!("delta {id}: {e}")))?;
        stats.chunks += 1;
        stats.stored += starts.len() as u64;
        for &at in starts.iter().rev() {
            let record = record_at(blob, at).map_err(|e| bad(format!("delta {id}: {e}")))?;
            if seen[record.table as usize].insert(record.id) && record.doc.is_some() {
                stats.live += 1;
                stats.legacy += u64::from(record.is_legacy());
                visit(&record)?;
            }
        }
    }
    Ok(stats)
}

/// Reads the rows of every table, and what the deltas hold.
fn load(conn: &Connection) -> Result<(LoadedRows, Stats), StoreError> {
    let mut rows: [Vec<(Id, StoredRow)>; Table::ALL.len()] = Default::default();
    let (mut read, mut starts) = (Vec::new(), Vec::new());
    let stats = fold_live(conn, i64::MAX, &mut read, &mut starts, |record| {
        let id = Id(record.id);
        let bad = |e: String| StoreError::Corrupt {
            context: "read row deltas",
            reason: format!("{} row {id}: {e}", record.table.name()),
        };
        let doc = record.doc.unwrap_or_default();
        let row = match (record.binary, record.table) {
            (false, _) => {
                StoredRow::Json(String::from_utf8(doc.to_vec()).map_err(|e| bad(e.to_string()))?)
            }
            (true, Table::Items) => {
                StoredRow::Item(codec::item(id, doc).map_err(|e| bad(e.to_string()))?)
            }
            (true, Table::Presences) => {
                StoredRow::Presence(codec::presence(id, doc).map_err(|e| bad(e.to_string()))?)
            }
            (true, _) => return Err(bad("a binary row of a table without one".into())),
        };
        rows[record.table as usize].push((id, row));
        Ok(())
    })?;
    let tables = Table::ALL
        .into_iter()
        .zip(rows)
        .map(|(table, mut rows)| {
            rows.sort_unstable_by_key(|(id, _)| *id);
            (table, rows)
        })
        .collect();
    Ok((tables, stats))
}

/// Folds every delta into one base of the live rows, in one transaction; items and presences
/// stored as JSON documents (written before [`codec`]) are converted to their encoding.
fn compact(conn: &mut Connection, chunks: &mut Chunks) -> Result<Stats, StoreError> {
    let tx = conn.transaction().map_err(ctx("begin compaction"))?;
    let newest: i64 = tx
        .query_row("SELECT coalesce(max(id), 0) FROM row_deltas", [], |r| {
            r.get(0)
        })
        .map_err(ctx("find the newest delta"))?;
    let mut read = std::mem::take(&mut chunks.read);
    let mut starts = std::mem::take(&mut chunks.starts);
    chunks.begin();
    let mut sink = insert_into(&tx);
    let folded = fold_live(&tx, newest, &mut read, &mut starts, |record| {
        if record.is_legacy() {
            convert(chunks, record, &mut sink)
        } else {
            chunks.raw(record.raw, &mut sink)
        }
    });
    (chunks.read, chunks.starts) = (read, starts);
    folded?;
    chunks.finish(&mut sink)?;
    drop(sink);
    tx.execute("DELETE FROM row_deltas WHERE id <= ?1", [newest])
        .map_err(ctx("delete compacted deltas"))?;
    tx.commit().map_err(ctx("commit compaction"))?;
    Ok(Stats {
        stored: chunks.rows,
        live: chunks.rows,
        chunks: chunks.chunks,
        legacy: 0,
    })
}

/// Adds the upsert of a [`Record::is_legacy`] row in its binary encoding.
fn convert(
    chunks: &mut Chunks,
    record: &Record<'_>,
    sink: &mut Sink<'_>,
) -> Result<(), StoreError> {
    let bad = |e: serde_json::Error| StoreError::Corrupt {
        context: "convert a row",
        reason: format!("{} row {}: {e}", record.table.name(), Id(record.id)),
    };
    let doc = record.doc.unwrap_or_default();
    let row = match record.table {
        Table::Items => RowDoc::Item(Arc::new(serde_json::from_slice(doc).map_err(bad)?)),
        _ => RowDoc::Presence(Arc::new(serde_json::from_slice(doc).map_err(bad)?)),
    };
    chunks.upsert_row(record.table, record.id, &row, sink)
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
    let mut sink = insert_into(conn);
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
            base.upsert(table, id as u64, doc, &mut sink)?;
        }
    }
    base.finish(&mut sink)?;
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
    use crate::domain::NamedProximity;
    use spot_protocol::Proximity;

    fn id(n: u64) -> Id {
        Id((1_764_000_000_000u64 << 16) + n)
    }

    fn rows_of(tables: &LoadedRows, table: Table) -> Vec<(Id, StoredRow)> {
        tables
            .iter()
            .find(|(t, _)| *t == table)
            .map(|(_, rows)| rows.clone())
            .unwrap_or_default()
    }

    /// A JSON row as loaded.
    fn row(n: u64, doc: &str) -> (Id, StoredRow) {
        (id(n), StoredRow::Json(doc.to_string()))
    }

    /// The upsert of a JSON document.
    fn upsert(table: Table, n: u64, doc: &str) -> (Table, Id, RowDoc) {
        (table, id(n), doc.into())
    }

    /// Item `n` in version `v` (its move count).
    fn item(n: u64, v: u64) -> Item {
        Item {
            id: id(n),
            code_hex: format!("3034{n:020x}").into(),
            technology: "EPC Gen2".into(),
            label: None,
            custom: None,
            is_present: true,
            location: Some(id(1_000)),
            move_count: v,
            time_moved: Some(1_764_000_000_100 + v as i64),
            time_created: 1_764_000_000_000,
            time_updated: 1_764_000_000_200 + v as i64,
        }
    }

    fn presence(n: u64, v: u64) -> PresenceResource {
        PresenceResource {
            id: id(n),
            item: id(n + 1),
            location: id(1_000),
            proximity: NamedProximity(Proximity::Near),
            reporters: [(id(2_000), NamedProximity(Proximity::Near))]
                .into_iter()
                .collect(),
            time_event: Some(1_764_000_000_000 + v as i64),
            time_created: 1_764_000_000_000,
            time_updated: 1_764_000_000_000 + v as i64,
        }
    }

    fn upsert_item(n: u64, v: u64) -> (Table, Id, RowDoc) {
        (Table::Items, id(n), RowDoc::Item(Arc::new(item(n, v))))
    }

    fn upsert_presence(n: u64, v: u64) -> (Table, Id, RowDoc) {
        (
            Table::Presences,
            id(n),
            RowDoc::Presence(Arc::new(presence(n, v))),
        )
    }

    fn loaded_item(n: u64, v: u64) -> (Id, StoredRow) {
        (id(n), StoredRow::Item(item(n, v)))
    }

    /// (records, blobs) in `row_deltas`, and how many records are binary.
    fn stored_records(dir: &Path) -> (usize, usize, usize) {
        let conn = Connection::open(dir.join("state.db")).unwrap();
        let mut stmt = conn.prepare("SELECT blob FROM row_deltas").unwrap();
        let blobs: Vec<Vec<u8>> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let (mut records, mut binary) = (0, 0);
        for b in &blobs {
            let blob = lz4_flex::decompress_size_prepended(b).unwrap();
            let mut starts = vec![];
            record_starts(&blob, &mut starts).unwrap();
            records += starts.len();
            binary += starts
                .iter()
                .filter(|&&at| record_at(&blob, at).unwrap().binary)
                .count();
        }
        (records, blobs.len(), binary)
    }

    /// (records, blobs) in `row_deltas`.
    fn stored(dir: &Path) -> (usize, usize) {
        let (records, blobs, _) = stored_records(dir);
        (records, blobs)
    }

    const NEVER: Compaction = Compaction {
        floor: u64::MAX / 4,
        max_chunks: u64::MAX,
    };

    #[test]
    fn flushes_fold_in_order_last_write_wins_and_deletes_remove() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, tables, journal, id_last) =
            RowWriter::open_with(dir.path(), Durability::Normal, NEVER).unwrap();
        assert_eq!((journal, id_last), (0, 0), "a new directory");
        assert!(tables.iter().all(|(_, rows)| rows.is_empty()));
        writer.flush(RowFlush {
            upserts: vec![
                upsert_item(3, 0),
                upsert_item(1, 0),
                upsert_item(2, 0),
                upsert(Table::Spots, 1, "{\"s\":1}"),
                upsert_presence(9, 0),
            ],
            deletes: vec![],
            journal: 4,
            id_last: 10,
        });
        writer.flush(RowFlush {
            upserts: vec![
                upsert_item(1, 1),
                upsert_item(1, 2),
                upsert(Table::Locations, 5, "{\"l\":5}"),
                upsert_presence(8, 0),
            ],
            deletes: vec![(Table::Items, id(2)), (Table::Presences, id(8))],
            journal: 7,
            id_last: 12,
        });
        writer.flush(RowFlush {
            upserts: vec![upsert_item(2, 3)],
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
            stored_records(dir.path()),
            (14, 3, 8),
            "an empty flush writes no delta; items and presences are encoded"
        );
        let (_writer, tables, journal, id_last) =
            RowWriter::open_with(dir.path(), Durability::Normal, NEVER).unwrap();
        assert_eq!((journal, id_last), (11, 14));
        assert_eq!(
            rows_of(&tables, Table::Items),
            vec![loaded_item(1, 2), loaded_item(2, 3), loaded_item(3, 0)],
            "in id order"
        );
        assert_eq!(rows_of(&tables, Table::Spots), vec![]);
        assert_eq!(
            rows_of(&tables, Table::Locations),
            vec![row(5, "{\"l\":5}")]
        );
        assert_eq!(
            rows_of(&tables, Table::Presences),
            vec![(id(9), StoredRow::Presence(presence(9, 0)))]
        );
    }

    #[test]
    fn a_flush_larger_than_a_blob_is_split_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, ..) = RowWriter::open_with(dir.path(), Durability::Normal, NEVER).unwrap();
        let doc = format!("\"{}\"", "x".repeat(1000));
        let n = 2 * CHUNK_BYTES as u64 / 1000 + 10;
        writer.flush(RowFlush {
            upserts: (0..n).map(|i| upsert(Table::Spots, i, &doc)).collect(),
            journal: 1,
            ..RowFlush::default()
        });
        drop(writer);
        let (records, blobs) = stored(dir.path());
        assert_eq!((records, blobs), (n as usize, 3));
        let (_writer, tables, ..) =
            RowWriter::open_with(dir.path(), Durability::Normal, NEVER).unwrap();
        let spots = rows_of(&tables, Table::Spots);
        assert_eq!(spots.len() as u64, n);
        assert!(spots
            .iter()
            .all(|(_, d)| *d == StoredRow::Json(doc.clone())));
    }

    #[test]
    fn compaction_keeps_exactly_the_live_rows_and_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Compaction {
            floor: 5,
            max_chunks: u64::MAX,
        };
        let (writer, ..) = RowWriter::open_with(dir.path(), Durability::Normal, policy).unwrap();
        // 4 live items, rewritten again and again; item 5 comes and goes.
        for round in 0..3u64 {
            writer.flush(RowFlush {
                upserts: (1..=5).map(|i| upsert_item(i, round)).collect(),
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
            RowWriter::open_with(dir.path(), Durability::Normal, policy).unwrap();
        assert_eq!((journal, id_last), (9, 200));
        assert_eq!(
            rows_of(&tables, Table::Items),
            (1..=4).map(|i| loaded_item(i, 2)).collect::<Vec<_>>()
        );
        assert_eq!(rows_of(&tables, Table::Spots), vec![row(7, "{}")]);
    }

    #[test]
    fn many_small_deltas_are_compacted_at_open_too() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, ..) = RowWriter::open_with(dir.path(), Durability::Normal, NEVER).unwrap();
        for i in 0..6 {
            writer.flush(RowFlush {
                upserts: vec![upsert(Table::Spots, i, "{}")],
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
        let (writer, tables, ..) =
            RowWriter::open_with(dir.path(), Durability::Normal, policy).unwrap();
        writer.wait();
        assert_eq!(stored(dir.path()), (6, 1));
        assert_eq!(rows_of(&tables, Table::Spots).len(), 6);
    }

    #[test]
    fn a_written_flush_survives_a_writer_that_never_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, ..) = RowWriter::open(dir.path(), Durability::Normal).unwrap();
        writer.flush(RowFlush {
            upserts: vec![upsert_item(1, 7)],
            journal: 3,
            id_last: 4,
            ..RowFlush::default()
        });
        writer.wait();
        // As after a crash: the connection is never closed, its WAL never checkpointed.
        std::mem::forget(writer);
        let (_writer, tables, journal, id_last) =
            RowWriter::open(dir.path(), Durability::Normal).unwrap();
        assert_eq!((journal, id_last), (3, 4));
        assert_eq!(rows_of(&tables, Table::Items), vec![loaded_item(1, 7)]);
    }

    #[test]
    fn a_corrupt_delta_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(RowWriter::open(dir.path(), Durability::Normal).unwrap());
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        let truncated = lz4_flex::compress_prepend_size(&[0u8, 1, 2]);
        conn.execute("INSERT INTO row_deltas (blob) VALUES (?1)", [truncated])
            .unwrap();
        drop(conn);
        let err = RowWriter::open(dir.path(), Durability::Normal).unwrap_err();
        assert!(err.to_string().contains("cut short"), "{err}");
    }

    #[test]
    fn a_corrupt_encoded_row_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(RowWriter::open(dir.path(), Durability::Normal).unwrap());
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        let mut record = vec![Table::Items as u8 | BINARY];
        record.extend_from_slice(&id(1).0.to_le_bytes());
        record.extend_from_slice(&2u32.to_le_bytes());
        record.extend_from_slice(&[codec::FORMAT, 0]);
        conn.execute(
            "INSERT INTO row_deltas (blob) VALUES (?1)",
            [lz4_flex::compress_prepend_size(&record)],
        )
        .unwrap();
        drop(conn);
        let err = RowWriter::open(dir.path(), Durability::Normal).unwrap_err();
        assert!(err.to_string().contains("items row"), "{err}");
    }

    #[test]
    fn json_items_and_presences_of_older_deltas_load_and_a_compaction_encodes_them_once() {
        let dir = tempfile::tempdir().unwrap();
        let (it, p) = (item(1, 4), presence(2, 5));
        let (it_json, p_json) = (
            RowDoc::Item(Arc::new(it.clone())).to_json(),
            RowDoc::Presence(Arc::new(p.clone())).to_json(),
        );
        {
            // As the deltas were written before the encoding: every row a JSON document.
            let (writer, ..) = RowWriter::open_with(dir.path(), Durability::Normal, NEVER).unwrap();
            writer.flush(RowFlush {
                upserts: vec![
                    upsert(Table::Items, 1, &it_json),
                    upsert(Table::Presences, 2, &p_json),
                    upsert(Table::Spots, 3, "{\"s\":3}"),
                ],
                journal: 5,
                id_last: 6,
                ..RowFlush::default()
            });
            // Not compacted: a flush's JSON rows are not counted (only those read at open).
            drop(writer);
        }
        assert_eq!(stored_records(dir.path()), (3, 1, 0), "no record encoded");
        let (writer, tables, journal, id_last) =
            RowWriter::open_with(dir.path(), Durability::Normal, NEVER).unwrap();
        assert_eq!((journal, id_last), (5, 6));
        assert_eq!(rows_of(&tables, Table::Items), vec![row(1, &it_json)]);
        assert_eq!(rows_of(&tables, Table::Presences), vec![row(2, &p_json)]);
        writer.wait();
        assert_eq!(
            stored_records(dir.path()),
            (3, 1, 2),
            "compacted at open, the item and the presence encoded"
        );
        drop(writer);
        let (_writer, tables, journal, id_last) =
            RowWriter::open_with(dir.path(), Durability::Normal, NEVER).unwrap();
        assert_eq!((journal, id_last), (5, 6));
        assert_eq!(
            rows_of(&tables, Table::Items),
            vec![(id(1), StoredRow::Item(it))]
        );
        assert_eq!(
            rows_of(&tables, Table::Presences),
            vec![(id(2), StoredRow::Presence(p))]
        );
        assert_eq!(rows_of(&tables, Table::Spots), vec![row(3, "{\"s\":3}")]);
        assert_eq!(stored_records(dir.path()), (3, 1, 2), "not compacted again");
    }

    const OLD_ROW_TABLES: &str = "
        CREATE TABLE spot_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
        CREATE TABLE location_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
        CREATE TABLE item_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
        CREATE TABLE presence_rows (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);";

    fn item_json(n: u64) -> String {
        RowDoc::Item(Arc::new(item(n, 0))).to_json()
    }

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
        let presence_json = RowDoc::Presence(Arc::new(presence(4, 0))).to_json();
        for (table, n, doc) in [
            ("spot_rows", 1, "{\"s\":1}".to_string()),
            ("item_rows", 3, item_json(3)),
            ("item_rows", 2, item_json(2)),
            ("presence_rows", 4, presence_json.clone()),
        ] {
            old.execute(
                &format!("INSERT INTO {table} VALUES (?1, ?2)"),
                params![id(n).0 as i64, doc],
            )
            .unwrap();
        }
        drop(old);
        let (writer, tables, journal, id_last) =
            RowWriter::open(dir.path(), Durability::Normal).unwrap();
        assert_eq!((journal, id_last), (41, 99));
        assert_eq!(rows_of(&tables, Table::Spots), vec![row(1, "{\"s\":1}")]);
        assert_eq!(
            rows_of(&tables, Table::Items),
            vec![row(2, &item_json(2)), row(3, &item_json(3))]
        );
        assert_eq!(
            rows_of(&tables, Table::Presences),
            vec![row(4, &presence_json)]
        );
        writer.wait();
        assert_eq!(stored_records(dir.path()), (4, 1, 3), "and then encoded");
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
            RowWriter::open(dir.path(), Durability::Normal).unwrap();
        assert_eq!((journal, id_last), (42, 100));
        assert_eq!(rows_of(&tables, Table::Items), vec![loaded_item(2, 0)]);
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
            "INSERT INTO item_rows VALUES (?1, ?2)",
            params![id(10).0 as i64, item_json(10)],
        )
        .unwrap();
        drop(old);
        let (writer, tables, journal, id_last) =
            RowWriter::open(dir.path(), Durability::Normal).unwrap();
        assert_eq!((journal, id_last), (2, 0));
        assert_eq!(
            rows_of(&tables, Table::Items),
            vec![row(10, &item_json(10))]
        );
        writer.flush(RowFlush {
            upserts: vec![upsert_item(11, 0)],
            deletes: vec![(Table::Items, id(10))],
            journal: 3,
            id_last: 77,
        });
        writer.wait();
        assert_eq!(writer.flushed_journal(), 3);
        drop(writer);
        let (_writer, tables, journal, id_last) =
            RowWriter::open(dir.path(), Durability::Normal).unwrap();
        assert_eq!((journal, id_last), (3, 77), "not copied again");
        assert_eq!(rows_of(&tables, Table::Items), vec![loaded_item(11, 0)]);
    }

    #[test]
    fn a_spot_db_without_rows_starts_at_journal_batch_zero() {
        let dir = tempfile::tempdir().unwrap();
        let old = Connection::open(dir.path().join("spot.db")).unwrap();
        old.execute_batch("CREATE TABLE upstream_batches (id INTEGER PRIMARY KEY);")
            .unwrap();
        drop(old);
        let (_writer, tables, journal, id_last) =
            RowWriter::open(dir.path(), Durability::Normal).unwrap();
        assert_eq!((journal, id_last), (0, 0));
        assert!(tables.iter().all(|(_, rows)| rows.is_empty()));
    }
}
