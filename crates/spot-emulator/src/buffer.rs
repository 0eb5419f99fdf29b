//! One spot's delivery buffer: every event not yet acknowledged, in order, optionally on disk.
//!
//! Events are numbered here ([`SpotBuffer::append`] assigns the next `seq`, spec §6 and the
//! delivery contract) and stay until an ack covers them ([`SpotBuffer::ack`]). The records
//! are kept in memory for resending (their payloads back to back in recycled blocks, so an
//! event costs no allocation of its own) and, with a directory, also on disk so they survive
//! the emulator's own restart.
//!
//! ## On-disk layout (one directory per spot)
//! - `epoch`: the `seq_epoch` (decimal), written once when the counter is created. Without
//!   it, any segments found are from an unknown counter: they are discarded (and counted).
//! - `acked`: the ack watermark (decimal), replaced atomically (write + rename) on each ack.
//! - `seg-<first seq, 20 digits>.log`: append-only segments of records
//!   `[u32 LE payload length][u64 LE seq][u32 LE FNV-1a of seq+payload][payload]`.
//!   A segment is rolled at [`BufferLimits::segment_bytes`] and deleted once fully acked.
//! - `spot.json`: the spot's counters (boot count, firmware version), see [`SpotBuffer::save_state`].
//!
//! On open, segments are read in order; records at or below the watermark are skipped; a
//! torn record at the end of a segment (the emulator was killed mid-write) is cut off and
//! counted. The next `seq` continues after the highest one seen.
//!
//! ## Durability (fsync policy)
//! [`SpotBuffer::flush`] writes pending records with one `write(2)` and must be called
//! before any of them is sent: a record on the wire is then in the kernel's page cache and
//! survives the emulator being killed (`kill -9`). Segments are fsync'd when rolled, the
//! epoch when created; with [`BufferLimits::fsync`] every flush is fsync'd too (survives a
//! power loss, costs a disk sync per flush). The `acked` file is replaced without fsync on
//! each ack (losing it only makes the spot resend events the server drops as replays), and
//! with fsync (file and directory) before any segment is deleted, because then it is what
//! keeps `seq` from restarting within the epoch.
//!
//! ## When full
//! The buffer holds at most [`BufferLimits::max_bytes`] of unacknowledged records. When
//! full, [`SpotBuffer::append`] refuses with [`BufferError::Full`] and nothing is dropped:
//! the spot stops generating events until acks free space, and the caller counts each event
//! it did not generate (`events_not_generated_buffer_full` in the summary).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::spot::SpotCounters;

const HEADER: usize = 16;

/// Bounds and durability of one spot's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    /// Most bytes of unacknowledged records (headers included) kept (default 8 MiB: at
    /// 200 events/s of ~250 bytes, 2.7 minutes of outage per spot; 8 GiB for 1,000 spots
    /// would be too much, so raise it per run, not by default).
    pub max_bytes: u64,
    /// Size at which a segment file is closed and a new one started (default 1 MiB).
    pub segment_bytes: u64,
    /// fsync after every flush, not only when a segment is rolled.
    pub fsync: bool,
}

impl Default for BufferLimits {
    fn default() -> Self {
        BufferLimits {
            max_bytes: 8 << 20,
            segment_bytes: 1 << 20,
            fsync: false,
        }
    }
}

/// What went wrong in the buffer.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The buffer holds [`BufferLimits::max_bytes`] already; the event was not taken.
    #[error("buffer full ({bytes} bytes unacknowledged, limit {limit})")]
    Full {
        /// Bytes held.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A file of the buffer could not be read or written.
    #[error("buffer file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file of the buffer holds something this version cannot read.
    #[error("buffer file {path}: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BufferError + '_ {
    move |source| BufferError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One unacknowledged event: its sequence number and its stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The event's `seq`.
    pub seq: u64,
    /// The bytes the caller stored (the emulator stores the compact JSON of the event).
    pub payload: &'a [u8],
}

/// Where a record's payload lies in the arena.
#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: u64,
    /// The block, counted from the arena's first block ever.
    block: u64,
    start: u32,
    len: u32,
}

/// The payloads of the unacknowledged records, back to back in blocks of [`Arena::BLOCK`]
/// bytes (a larger payload gets a block of its own), oldest first. A block whose records
/// are all acknowledged is cleared and kept for reuse, so appending and acknowledging cost
/// no allocation in the steady state and the memory in use stays put (no growing and
/// shrinking of large allocations, whose fresh pages the kernel must zero each time).
#[derive(Debug, Default)]
struct Arena {
    blocks: VecDeque<Vec<u8>>,
    /// Number of `blocks[0]`, counted from the first block ever.
    first_block: u64,
    slots: VecDeque<Slot>,
    /// Cleared blocks kept for reuse (at most [`Arena::SPARE`]).
    spare: Vec<Vec<u8>>,
    /// Where a payload is written before it is placed.
    scratch: Vec<u8>,
}

impl Arena {
    const BLOCK: usize = 16 << 10;
    const SPARE: usize = 2;

    fn get(&self, slot: &Slot) -> Record<'_> {
        let block = &self.blocks[(slot.block - self.first_block) as usize];
        let at = slot.start as usize;
        Record {
            seq: slot.seq,
            payload: &block[at..at + slot.len as usize],
        }
    }

    /// Appends a record whose payload `write` appends to the (empty) vector it is given;
    /// returns the payload.
    fn push(&mut self, seq: u64, write: impl FnOnce(&mut Vec<u8>)) -> &[u8] {
        self.scratch.clear();
        write(&mut self.scratch);
        let len = self.scratch.len();
        let fits = self
            .blocks
            .back()
            .is_some_and(|b| b.capacity() - b.len() >= len);
        if !fits {
            let block = match self.spare.pop() {
                Some(b) if len <= b.capacity() => b,
                _ => Vec::with_capacity(Self::BLOCK.max(len)),
            };
            self.blocks.push_back(block);
        }
        let block_no = self.first_block + self.blocks.len() as u64 - 1;
        let block = self.blocks.back_mut().expect("a block was just ensured");
        let at = block.len();
        block.extend_from_slice(&self.scratch);
        if self.scratch.capacity() > Self::BLOCK {
            self.scratch = Vec::new(); // a large payload: do not keep its room
        }
        self.slots.push_back(Slot {
            seq,
            block: block_no,
            start: at as u32,
            len: len as u32,
        });
        &block[at..]
    }

    /// Drops the newest record (just pushed).
    fn pop_back(&mut self) {
        if let Some(slot) = self.slots.pop_back() {
            if let Some(block) = self.blocks.back_mut() {
                block.truncate(slot.start as usize);
            }
        }
    }

    /// Drops the front record (its bytes stay until [`Arena::release`]).
    fn pop_front(&mut self) -> Option<Slot> {
        self.slots.pop_front()
    }

    /// Recycles the blocks that hold no unacknowledged record any more.
    fn release(&mut self) {
        let keep_from = match self.slots.front() {
            Some(s) => s.block,
            // Nothing left: even the newest block is free.
            None => self.first_block + self.blocks.len() as u64,
        };
        while self.first_block < keep_from {
            let Some(mut block) = self.blocks.pop_front() else {
                break;
            };
            self.first_block += 1;
            if self.spare.len() < Self::SPARE && block.capacity() == Self::BLOCK {
                block.clear();
                self.spare.push(block);
            }
        }
    }
}

/// What [`SpotBuffer::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Unacknowledged records recovered (to be resent).
    pub records: u64,
    /// Bytes of torn records cut off the end of segments.
    pub torn_bytes: u64,
    /// Segments discarded because the epoch file was missing.
    pub orphan_segments: u64,
    /// The epoch is new (no counter existed).
    pub new_epoch: bool,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
}

#[derive(Debug)]
struct Disk {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    current: Option<(File, u64)>,
    pending: Vec<u8>,
}

/// One spot's buffer. See the module docs.
#[derive(Debug)]
pub struct SpotBuffer {
    limits: BufferLimits,
    epoch: u64,
    next_seq: u64,
    acked: u64,
    records: Arena,
    bytes: u64,
    disk: Option<Disk>,
}

impl SpotBuffer {
    /// A buffer in memory only (lost when the emulator stops).
    pub fn in_memory(epoch: u64, limits: BufferLimits) -> Self {
        SpotBuffer {
            limits,
            epoch,
            next_seq: 1,
            acked: 0,
            records: Arena::default(),
            bytes: 0,
            disk: None,
        }
    }

    /// Opens (or creates) the buffer in `dir`; `new_epoch` is called when no counter exists.
    pub fn open(
        dir: &Path,
        limits: BufferLimits,
        new_epoch: impl FnOnce() -> u64,
    ) -> Result<(Self, Recovery), BufferError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut recovery = Recovery::default();
        let mut segment_paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_prefix("seg-")
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                segment_paths.push((first, entry.path()));
            }
        }
        segment_paths.sort();

        let epoch_path = dir.join("epoch");
        let epoch = match read_number(&epoch_path)? {
            Some(e) => e,
            None => {
                for (_, path) in segment_paths.drain(..) {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    recovery.orphan_segments += 1;
                }
                let _ = fs::remove_file(dir.join("acked"));
                let e = new_epoch();
                write_atomic(&epoch_path, e.to_string().as_bytes(), true)?;
                recovery.new_epoch = true;
                e
            }
        };
        let acked = read_number(&dir.join("acked"))?.unwrap_or(0);

        let mut buffer = SpotBuffer {
            limits,
            epoch,
            next_seq: acked + 1,
            acked,
            records: Arena::default(),
            bytes: 0,
            disk: None,
        };
        let mut segments = VecDeque::new();
        for (first_seq, path) in segment_paths {
            let (records, valid_len, file_len) = read_segment(&path)?;
            if valid_len < file_len {
                recovery.torn_bytes += file_len - valid_len;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(valid_len).map_err(io_err(&path))?;
            }
            for (seq, payload) in records {
                buffer.next_seq = buffer.next_seq.max(seq + 1);
                if seq > acked {
                    buffer.bytes += (HEADER + payload.len()) as u64;
                    buffer
                        .records
                        .push(seq, |out| out.extend_from_slice(&payload));
                    recovery.records += 1;
                }
            }
            segments.push_back(Segment { first_seq, path });
        }
        buffer.disk = Some(Disk {
            dir: dir.to_path_buf(),
            segments,
            current: None,
            pending: Vec::new(),
        });
        buffer.drop_acked_segments()?;
        Ok((buffer, recovery))
    }

    /// The epoch of this buffer's sequence counter.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The highest acknowledged `seq` (0 if none).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The `seq` the next appended event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Unacknowledged records, in order.
    pub fn records(&self) -> impl DoubleEndedIterator<Item = Record<'_>> + ExactSizeIterator {
        self.records_from(0)
    }

    /// Unacknowledged records from the `index`-th on (0 is the oldest), in order.
    pub fn records_from(
        &self,
        index: usize,
    ) -> impl DoubleEndedIterator<Item = Record<'_>> + ExactSizeIterator {
        let arena = &self.records;
        let index = index.min(arena.slots.len());
        arena.slots.range(index..).map(move |s| arena.get(s))
    }

    /// How many records are unacknowledged.
    pub fn len(&self) -> usize {
        self.records.slots.len()
    }

    /// No record is unacknowledged.
    pub fn is_empty(&self) -> bool {
        self.records.slots.is_empty()
    }

    /// The `seq` of the oldest unacknowledged record.
    pub fn first_seq(&self) -> Option<u64> {
        self.records.slots.front().map(|s| s.seq)
    }

    /// The newest record.
    pub fn last(&self) -> Option<Record<'_>> {
        self.records.slots.back().map(|s| self.records.get(s))
    }

    /// Bytes held (records and their headers).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// No room for another record.
    pub fn is_full(&self) -> bool {
        self.bytes >= self.limits.max_bytes
    }

    /// Numbers the next event and stores the payload `encode(seq)` returns; refuses with
    /// [`BufferError::Full`] (without calling `encode`) when full. Call [`SpotBuffer::flush`]
    /// before sending it.
    pub fn append(&mut self, encode: impl FnOnce(u64) -> Vec<u8>) -> Result<u64, BufferError> {
        self.append_with(|seq, out| out.extend_from_slice(&encode(seq)))
    }

    /// [`SpotBuffer::append`] where `encode(seq, out)` appends the payload to `out` (the
    /// buffer's own storage: no allocation per event). `encode` must only append.
    pub fn append_with(
        &mut self,
        encode: impl FnOnce(u64, &mut Vec<u8>),
    ) -> Result<u64, BufferError> {
        if self.is_full() {
            return Err(BufferError::Full {
                bytes: self.bytes,
                limit: self.limits.max_bytes,
            });
        }
        let seq = self.next_seq;
        let payload = self.records.push(seq, |out| encode(seq, out));
        let Ok(len) = u32::try_from(payload.len()) else {
            let what = format!("record of {} bytes is too large", payload.len());
            self.records.pop_back();
            return Err(BufferError::Corrupt {
                path: self
                    .disk
                    .as_ref()
                    .map(|d| d.dir.clone())
                    .unwrap_or_default(),
                what,
            });
        };
        if let Some(disk) = &mut self.disk {
            disk.pending.extend_from_slice(&len.to_le_bytes());
            disk.pending.extend_from_slice(&seq.to_le_bytes());
            disk.pending
                .extend_from_slice(&checksum(seq, payload).to_le_bytes());
            disk.pending.extend_from_slice(payload);
        }
        self.next_seq += 1;
        self.bytes += HEADER as u64 + u64::from(len);
        Ok(seq)
    }

    /// Writes appended records to the current segment (one write), rolling it when large.
    pub fn flush(&mut self) -> Result<(), BufferError> {
        let Some(disk) = &mut self.disk else {
            return Ok(());
        };
        if disk.pending.is_empty() {
            return Ok(());
        }
        if disk.current.is_none() {
            // The first record in `pending` is the oldest not yet on disk.
            let first = self.next_seq - pending_records(&disk.pending);
            let path = disk.dir.join(format!("seg-{first:020}.log"));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            disk.segments.push_back(Segment {
                first_seq: first,
                path,
            });
            disk.current = Some((file, 0));
        }
        let path = disk
            .segments
            .back()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        if let Some((file, len)) = &mut disk.current {
            file.write_all(&disk.pending).map_err(io_err(&path))?;
            *len += disk.pending.len() as u64;
            disk.pending.clear();
            let roll = *len >= self.limits.segment_bytes;
            if self.limits.fsync || roll {
                file.sync_data().map_err(io_err(&path))?;
            }
            if roll {
                disk.current = None;
            }
        }
        Ok(())
    }

    /// Drops every record with `seq <= upto` (a `2xx` with `X-Spot-Ack: upto`), persists the
    /// watermark and deletes fully acknowledged segments. Returns how many were dropped.
    /// A watermark above the highest `seq` given out is clamped to it.
    pub fn ack(&mut self, upto: u64) -> Result<usize, BufferError> {
        let upto = upto.min(self.next_seq - 1);
        if upto <= self.acked {
            return Ok(0);
        }
        self.flush()?;
        self.acked = upto;
        let mut dropped = 0;
        while self.records.slots.front().is_some_and(|r| r.seq <= upto) {
            if let Some(r) = self.records.pop_front() {
                self.bytes -= HEADER as u64 + u64::from(r.len);
                dropped += 1;
            }
        }
        self.records.release();
        if let Some(disk) = &self.disk {
            let path = disk.dir.join("acked");
            write_atomic(&path, upto.to_string().as_bytes(), false)?;
        }
        self.drop_acked_segments()?;
        Ok(dropped)
    }

    fn drop_acked_segments(&mut self) -> Result<(), BufferError> {
        let next_seq = self.next_seq;
        let acked = self.acked;
        let limit = self.limits.segment_bytes / 8;
        let Some(disk) = &mut self.disk else {
            return Ok(());
        };
        let mut doomed = Vec::new();
        // Every segment but the last ends where the next one starts.
        while disk.segments.len() >= 2 && disk.segments[1].first_seq <= acked + 1 {
            doomed.extend(disk.segments.pop_front());
        }
        // The last one: when all is acked, drop it (if closed, or open but already large).
        let all_acked = acked + 1 == next_seq && disk.pending.is_empty();
        let current_len = disk.current.as_ref().map(|(_, len)| *len);
        if all_acked && disk.segments.len() == 1 && current_len.is_none_or(|len| len >= limit) {
            disk.current = None;
            doomed.extend(disk.segments.pop_front());
        }
        if doomed.is_empty() {
            return Ok(());
        }
        // Once segments are gone the watermark is what keeps `seq` from restarting inside
        // the epoch (which would make the server drop new events as replays): make it
        // durable first.
        write_atomic(&disk.dir.join("acked"), acked.to_string().as_bytes(), true)?;
        File::open(&disk.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&disk.dir))?;
        for s in doomed {
            fs::remove_file(&s.path).map_err(io_err(&s.path))?;
        }
        Ok(())
    }

    /// Reads the spot's counters saved by [`SpotBuffer::save_state`], if any.
    pub fn load_state(&self) -> Result<Option<SpotCounters>, BufferError> {
        let Some(disk) = &self.disk else {
            return Ok(None);
        };
        let path = disk.dir.join("spot.json");
        match fs::read(&path) {
            Ok(bytes) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| BufferError::Corrupt {
                        path: path.clone(),
                        what: e.to_string(),
                    })?;
                Ok(Some(SpotCounters::from_json(&v)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Saves the spot's counters (atomically; no-op in memory).
    pub fn save_state(&self, counters: &SpotCounters) -> Result<(), BufferError> {
        let Some(disk) = &self.disk else {
            return Ok(());
        };
        let path = disk.dir.join("spot.json");
        write_atomic(&path, counters.to_json().to_string().as_bytes(), false)
    }
}

/// How many records `pending` holds (it holds whole records only).
fn pending_records(mut pending: &[u8]) -> u64 {
    let mut n = 0;
    while pending.len() >= HEADER {
        let len = u32::from_le_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        pending = &pending[(HEADER + len).min(pending.len())..];
        n += 1;
    }
    n
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut h: u32 = 0x811C_9DC5;
    for b in seq.to_le_bytes().iter().chain(payload) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Reads a segment: its valid records, the length they cover, and the file's length.
#[allow(clippy::type_complexity)]
fn read_segment(path: &Path) -> Result<(Vec<(u64, Vec<u8>)>, u64, u64), BufferError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= HEADER {
        let h = &bytes[at..at + HEADER];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let seq = u64::from_le_bytes([h[4], h[5], h[6], h[7], h[8], h[9], h[10], h[11]]);
        let sum = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if checksum(seq, payload) != sum {
            break;
        }
        records.push((seq, payload.to_vec()));
        at += HEADER + len;
    }
    Ok((records, at as u64, bytes.len() as u64))
}

fn read_number(path: &Path) -> Result<Option<u64>, BufferError> {
    match fs::read_to_string(path) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| BufferError::Corrupt {
                path: path.to_path_buf(),
                what: format!("not a number: {e}"),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> Result<(), BufferError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    if sync {
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(seq: u64) -> Vec<u8> {
        format!("event {seq}").into_bytes()
    }

    fn seqs(b: &SpotBuffer) -> Vec<u64> {
        b.records().map(|r| r.seq).collect()
    }

    fn open(dir: &Path, limits: BufferLimits) -> (SpotBuffer, Recovery) {
        SpotBuffer::open(dir, limits, || 4242).unwrap()
    }

    #[test]
    fn seq_starts_at_one_and_ack_drops_a_prefix() {
        let mut b = SpotBuffer::in_memory(1, BufferLimits::default());
        for want in 1..=5 {
            assert_eq!(b.append(payload).unwrap(), want);
        }
        assert_eq!(b.ack(3).unwrap(), 3);
        assert_eq!(seqs(&b), [4, 5]);
        assert_eq!(b.ack(2).unwrap(), 0, "an older ack changes nothing");
        assert_eq!(b.ack(99).unwrap(), 2, "clamped to the highest seq");
        assert_eq!(b.acked(), 5);
        assert_eq!(b.bytes(), 0);
    }

    #[test]
    fn payloads_stay_intact_as_acks_free_the_arena_front() {
        // Mostly small payloads, now and then one larger than a block.
        let body = |seq: u64| {
            let len = if seq.is_multiple_of(97) {
                20_000
            } else {
                seq % 700
            };
            vec![(seq % 251) as u8; len as usize]
        };
        let mut b = SpotBuffer::in_memory(1, BufferLimits::default());
        let mut acked = 0;
        for round in 0..200u64 {
            for _ in 0..(50 + round % 37) {
                b.append_with(|seq, out| out.extend_from_slice(&body(seq)))
                    .unwrap();
            }
            // Ack most, sometimes all, of what is there.
            let upto = if round % 5 == 0 {
                b.next_seq() - 1
            } else {
                acked + (b.next_seq() - 1 - acked) * 3 / 4
            };
            b.ack(upto).unwrap();
            acked = upto;
            let want: Vec<u64> = (acked + 1..b.next_seq()).collect();
            assert_eq!(seqs(&b), want);
            assert_eq!(b.len(), want.len());
            assert_eq!(b.first_seq(), want.first().copied());
            for r in b.records() {
                assert_eq!(r.payload, body(r.seq), "seq {}", r.seq);
            }
            let from = want.len() / 2;
            assert_eq!(
                b.records_from(from).map(|r| r.seq).collect::<Vec<_>>(),
                want[from..]
            );
            let held: u64 = b.records().map(|r| (HEADER + r.payload.len()) as u64).sum();
            assert_eq!(b.bytes(), held);
        }
        assert!(b.records.first_block > 0, "blocks were recycled");
        assert!(!b.records.spare.is_empty());
    }

    #[test]
    fn full_buffer_refuses_without_dropping_then_accepts_after_ack() {
        let limits = BufferLimits {
            max_bytes: 3 * (HEADER as u64 + 7),
            ..Default::default()
        };
        let mut b = SpotBuffer::in_memory(1, limits);
        for _ in 0..3 {
            b.append(payload).unwrap();
        }
        assert!(b.is_full());
        let mut called = false;
        assert!(matches!(
            b.append(|_| {
                called = true;
                vec![]
            }),
            Err(BufferError::Full { .. })
        ));
        assert!(!called, "the event is not even encoded");
        assert_eq!(seqs(&b), [1, 2, 3]);
        b.ack(1).unwrap();
        assert_eq!(b.append(payload).unwrap(), 4);
    }

    #[test]
    fn restart_recovers_unacked_records_epoch_and_seq() {
        let dir = tempfile::tempdir().unwrap();
        let limits = BufferLimits {
            segment_bytes: 64,
            ..Default::default()
        };
        {
            let (mut b, rec) = open(dir.path(), limits);
            assert!(rec.new_epoch);
            for _ in 0..10 {
                b.append(payload).unwrap();
                b.flush().unwrap();
            }
            b.ack(4).unwrap();
            b.save_state(&SpotCounters {
                boot_count: 7,
                ..SpotCounters::factory()
            })
            .unwrap();
        }
        let (mut b, rec) = SpotBuffer::open(dir.path(), limits, || panic!("epoch exists")).unwrap();
        assert_eq!(rec.records, 6);
        assert!(!rec.new_epoch);
        assert_eq!(b.epoch(), 4242);
        assert_eq!(seqs(&b), [5, 6, 7, 8, 9, 10]);
        assert_eq!(b.records().next().unwrap().payload, payload(5));
        assert_eq!(b.append(payload).unwrap(), 11);
        assert_eq!(b.load_state().unwrap().unwrap().boot_count, 7);
    }

    #[test]
    fn acked_segments_are_deleted_and_seq_survives_an_empty_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let limits = BufferLimits {
            segment_bytes: 64,
            ..Default::default()
        };
        let count = || {
            fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("seg-")
                })
                .count()
        };
        {
            let (mut b, _) = open(dir.path(), limits);
            for _ in 0..20 {
                b.append(payload).unwrap();
                b.flush().unwrap();
            }
            assert!(count() > 3, "segments rolled: {}", count());
            b.ack(20).unwrap();
            assert_eq!(count(), 0);
        }
        let (mut b, rec) = open(dir.path(), limits);
        assert_eq!(rec.records, 0);
        assert_eq!(
            b.append(payload).unwrap(),
            21,
            "seq never reused in an epoch"
        );
    }

    #[test]
    fn torn_tail_is_cut_and_counted_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut b, _) = open(dir.path(), BufferLimits::default());
            for _ in 0..3 {
                b.append(payload).unwrap();
            }
            b.flush().unwrap();
        }
        let seg = dir.path().join(format!("seg-{:020}.log", 1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[40, 0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap(); // a record cut mid-header
        drop(f);
        let (mut b, rec) = open(dir.path(), BufferLimits::default());
        assert_eq!(rec.torn_bytes, 10);
        assert_eq!(seqs(&b), [1, 2, 3]);
        b.append(payload).unwrap();
        b.flush().unwrap();
        let (b, rec) = open(dir.path(), BufferLimits::default());
        assert_eq!(rec.torn_bytes, 0);
        assert_eq!(seqs(&b), [1, 2, 3, 4]);
    }

    #[test]
    fn unflushed_records_are_not_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut b, _) = open(dir.path(), BufferLimits::default());
            b.append(payload).unwrap();
            b.flush().unwrap();
            b.append(payload).unwrap();
        }
        let (b, _) = open(dir.path(), BufferLimits::default());
        assert_eq!(seqs(&b), [1]);
    }

    #[test]
    fn lost_epoch_means_new_counter_and_orphans_discarded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut b, _) = open(dir.path(), BufferLimits::default());
            b.append(payload).unwrap();
            b.flush().unwrap();
        }
        fs::remove_file(dir.path().join("epoch")).unwrap();
        let (b, rec) = SpotBuffer::open(dir.path(), BufferLimits::default(), || 9).unwrap();
        assert_eq!(rec.orphan_segments, 1);
        assert!(rec.new_epoch);
        assert_eq!(b.epoch(), 9);
        assert_eq!(b.next_seq(), 1);
    }
}
