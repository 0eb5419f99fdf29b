//! The derived events log, paged by push id: what outlets read to resume a client or catch
//! up a subscription ([`EventPages`]), and its SQLite implementation ([`SqliteEventPages`])
//! on a read-only connection of its own (WAL: reads never wait for the writer).
//!
//! Ids are dense (1, 2, 3, …): each `event_batches` row keeps the id of its last event
//! (`last_event_id`), so a batch of `n` documents holds ids `last - n + 1 ..= last`.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

use std::ops::ControlFlow;

use super::batch::{for_each_batch, readable};
use super::StoreError;

/// Reads the derived events log by push id.
pub trait EventPages: Send + Sync {
    /// At most `limit` events with an id above `after_id`, in id order: `(id, document)`.
    fn page(&self, after_id: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError>;
}

/// Adds the push id column (and its index) to an events log from before push ids.
/// batches keep 0: they have no push ids and are not replayed), and its index.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_column: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('event_batches') WHERE name = 'last_event_id'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_column {
        conn.execute_batch(
            "ALTER TABLE event_batches ADD COLUMN last_event_id INTEGER NOT NULL DEFAULT 0",
        )?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS event_batches_last_event_id
         ON event_batches(last_event_id)",
    )
}

/// The page query: a range of the `last_event_id` index (ids increase with the batches, so
/// its order is the log's), from the batch holding `after_id + 1` on. (`ORDER BY id` made
/// SQLite scan the table from its first batch for every page: a catch-up slowed down as
/// the log grew.)
const PAGE_SQL: &str = "SELECT last_event_id, docs FROM event_batches
    WHERE last_event_id > ?1 ORDER BY last_event_id";

/// [`EventPages`] over `<data>/spot.db`.
#[derive(Debug)]
pub struct SqliteEventPages {
    conn: Mutex<Connection>,
}

impl SqliteEventPages {
    /// Opens `<data_dir>/spot.db` read-only (the store must have created it).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join("spot.db");
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sqlite {
            context: "open the events log for reading",
            source,
        })?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }
}

impl EventPages for SqliteEventPages {
    fn page(&self, after_id: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for_each_batch(
            &conn,
            PAGE_SQL,
            [after_id as i64],
            "read events page",
            |last, docs| {
                let docs = readable("read events page", last, docs)?;
                let last = last.max(0) as u64;
                let first = (last + 1).saturating_sub(docs.lines().count() as u64);
                for (id, doc) in (first..).zip(docs.lines()) {
                    if id > after_id && out.len() < limit {
                        out.push((id, doc.to_string()));
                    }
                }
                Ok(if out.len() < limit {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                })
            },
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, SqliteStore, Store};

    fn topic(doc: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(doc).expect("JSON");
        v["topic"].as_str().expect("topic").to_string()
    }

    fn doc(topic: &str) -> String {
        format!(r#"{{"topic":"{topic}","time_event":null,"time_created":"t","data":{{}}}}"#)
    }

    fn commit(store: &mut SqliteStore, topics: &[&str]) {
        let mut changes = crate::domain::Changes {
            log: topics.iter().map(|t| (1, doc(t).into())).collect(),
            ..Default::default()
        };
        store.commit(&mut changes).expect("commit");
    }

    #[test]
    fn the_log_pages_through_batches_by_dense_id_and_ids_continue_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = SqliteStore::open(dir.path(), Durability::Normal).expect("open");
        commit(&mut store, &["a/1", "a/2", "a/3"]);
        commit(&mut store, &[]);
        commit(&mut store, &["b/4", "b/5"]);
        let log = SqliteEventPages::open(dir.path()).expect("log");
        let page = |after, limit| {
            log.page(after, limit)
                .expect("read")
                .iter()
                .map(|(id, doc)| (*id, topic(doc)))
                .collect::<Vec<_>>()
        };
        let all = page(0, 100);
        assert_eq!(
            all,
            [(1, "a/1"), (2, "a/2"), (3, "a/3"), (4, "b/4"), (5, "b/5")]
                .map(|(i, t)| (i, t.to_string()))
        );
        assert_eq!(
            page(1, 2),
            all[1..3],
            "mid-batch start, limit across batches"
        );
        assert_eq!(page(5, 10), []);
        drop(store);
        let mut store = SqliteStore::open(dir.path(), Durability::Normal).expect("reopen");
        store.prune(i64::MAX).expect("prune everything old");
        drop(store);
        let mut store = SqliteStore::open(dir.path(), Durability::Normal).expect("reopen");
        commit(&mut store, &["c/6"]);
        assert_eq!(page(5, 10), [(6, "c/6".to_string())], "ids never restart");
    }

    #[test]
    fn a_page_is_a_range_read_of_the_index_not_a_scan_of_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(SqliteStore::open(dir.path(), Durability::Normal).expect("open"));
        let conn = Connection::open(dir.path().join("spot.db")).expect("db");
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {PAGE_SQL}"))
            .expect("plan")
            .query_map([5], |r| r.get::<_, String>(3))
            .expect("plan rows")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        assert_eq!(
            plan,
            ["SEARCH event_batches USING INDEX event_batches_last_event_id (last_event_id>?)"]
        );
    }

    #[test]
    fn a_database_from_before_push_ids_gets_the_column_and_new_events_are_logged() {
        let dir = tempfile::tempdir().expect("tempdir");
        Connection::open(dir.path().join("spot.db"))
            .expect("db")
            .execute_batch(
                "CREATE TABLE event_batches (id INTEGER PRIMARY KEY,
                 time_last INTEGER NOT NULL, docs TEXT NOT NULL);
                 INSERT INTO event_batches (time_last, docs) VALUES (1, '{}');",
            )
            .expect("old schema");
        let mut store = SqliteStore::open(dir.path(), Durability::Normal).expect("open migrates");
        commit(&mut store, &["a/1"]);
        let log = SqliteEventPages::open(dir.path()).expect("log");
        let got = log.page(0, 10).expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0, topic(&got[0].1).as_str()), (1, "a/1"));
    }
}
