//! The one batch codec of the logs: a group commit's lines (journal entries or derived
//! event documents) stored as one LZ4-compressed BLOB ([`pack`]; JSON text compresses
//! several times, and the bytes written — twice, to the WAL and then the database — were the
//! store's main cost). A TEXT batch of an older database is read as it is ([`unpack`]).
//! Every reader of the logs goes through [`for_each_batch`]: query, unpack, hand over.

use std::borrow::Cow;
use std::ops::ControlFlow;

use rusqlite::{Connection, Params};

use super::StoreError;

/// Why a stored batch cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The LZ4 block does not decompress.
    #[error("batch of {bytes} bytes does not decompress: {source}")]
    Lz4 {
        /// Size of the stored BLOB.
        bytes: usize,
        /// The decompressor's error.
        source: lz4_flex::block::DecompressError,
    },
    /// The batch text is not UTF-8.
    #[error("batch text is not UTF-8: {0}")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// The column holds neither a BLOB nor TEXT.
    #[error("batch stored as {0}")]
    Type(String),
}

/// A log batch as stored: LZ4 block with its uncompressed size in front (little endian
/// `u32`, as `lz4_flex::compress_prepend_size` writes it), in `out` (reused: its length only
/// grows, so no page is zeroed again).
pub fn pack<'o>(bytes: &[u8], out: &'o mut Vec<u8>) -> &'o [u8] {
    let need = 4 + lz4_flex::block::get_maximum_output_size(bytes.len());
    if out.len() < need {
        out.resize(need, 0);
    }
    out[..4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    match lz4_flex::block::compress_into(bytes, &mut out[4..]) {
        Ok(n) => &out[..4 + n],
        // Not reached: `out` has room for the worst case.
        Err(_) => {
            *out = lz4_flex::compress_prepend_size(bytes);
            out
        }
    }
}

/// A stored log batch back as text: a BLOB is [`pack`]ed, TEXT is from before compression.
pub fn unpack(value: rusqlite::types::ValueRef<'_>) -> Result<Cow<'_, str>, BatchError> {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Text(bytes) => std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(BatchError::NotUtf8),
        ValueRef::Blob(bytes) => {
            let text =
                lz4_flex::decompress_size_prepended(bytes).map_err(|source| BatchError::Lz4 {
                    bytes: bytes.len(),
                    source,
                })?;
            String::from_utf8(text)
                .map(Cow::Owned)
                .map_err(|e| BatchError::NotUtf8(e.utf8_error()))
        }
        other => Err(BatchError::Type(other.data_type().to_string())),
    }
}

/// The buffers of [`Store::commit`], kept from one commit to the next: a batch is megabytes,
/// and buffers allocated afresh for each had their pages zeroed by the kernel every time.
#[derive(Debug, Default)]
pub(super) struct CommitBuffers {
    /// The text of a batch (journal lines or derived events).
    pub(super) text: String,
    /// Its [`pack`]ed form.
    pub(super) packed: Vec<u8>,
}

impl CommitBuffers {
    /// Larger buffers (left by a rare huge batch, e.g. the replay after a crash) are not kept.
    const MAX_KEPT: usize = 64 << 20;

    pub(super) fn trim(&mut self) {
        if self.text.capacity() > Self::MAX_KEPT {
            self.text = String::new();
        }
        if self.packed.len() > Self::MAX_KEPT {
            self.packed = Vec::new();
        }
    }
}

/// Runs `sql` (selecting a key and a batch column, in the order to read them) and hands
/// each batch's key and text, unpacked, to `each`, until `each` breaks or the rows end.
/// A batch that does not unpack is handed over as its error, to refuse ([`readable`]) or to
/// skip. `context` names the read in errors.
pub fn for_each_batch<P: Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    context: &'static str,
    mut each: impl FnMut(i64, Result<&str, BatchError>) -> Result<ControlFlow<()>, StoreError>,
) -> Result<(), StoreError> {
    let sqlite = |source| StoreError::Sqlite { context, source };
    let mut stmt = conn.prepare_cached(sql).map_err(sqlite)?;
    let mut rows = stmt.query(params).map_err(sqlite)?;
    while let Some(row) = rows.next().map_err(sqlite)? {
        let key = row.get::<_, i64>(0).map_err(sqlite)?;
        let unpacked = unpack(row.get_ref(1).map_err(sqlite)?);
        let text = match unpacked {
            Ok(ref text) => Ok(&**text),
            Err(e) => Err(e),
        };
        if each(key, text)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// The text of batch `key`, or the error that refuses it, naming the read and the batch.
pub fn readable<'t>(
    context: &'static str,
    key: i64,
    text: Result<&'t str, BatchError>,
) -> Result<&'t str, StoreError> {
    text.map_err(|source| StoreError::Batch {
        context,
        batch: key,
        source,
    })
}
