//! The MQTT outlet's durable position: the id up to which every event it took has been
//! acknowledged by the broker (QoS 1/2) or written to it (QoS 0), in a SQLite table of its
//! own (`mqtt_position`), so that after a restart the outlet resumes from the events log
//! where it stopped instead of from live events.
//!
//! Saved now and then (see [`super::MqttConfig::position_interval`]), not per event: after a
//! crash the events of the last interval are published again (at least once, as MQTT's
//! QoS 1 is).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension};

/// The position table could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[error("mqtt position {path}: {what}: {source}")]
pub struct PositionError {
    /// The database file.
    pub path: String,
    /// What was being done.
    pub what: &'static str,
    /// SQLite's error.
    pub source: rusqlite::Error,
}

/// The stored position (one row).
pub struct MqttPosition {
    conn: Mutex<Connection>,
    path: String,
}

impl MqttPosition {
    /// Opens (creating it if needed) the position table in the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, PositionError> {
        let shown = path.display().to_string();
        let fail = |what| {
            let path = shown.clone();
            move |source| PositionError { path, what, source }
        };
        let conn = Connection::open(path).map_err(fail("open"))?;
        // WAL without fsync per write: a position lost in a power cut only means events
        // published again.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail("set WAL"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(fail("set synchronous"))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS mqtt_position (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 last_event_id INTEGER NOT NULL
             )",
        )
        .map_err(fail("create table"))?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: shown,
        })
    }

    fn fail(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> PositionError + '_ {
        move |source| PositionError {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// The saved position (`None` before the first save).
    pub fn load(&self) -> Result<Option<u64>, PositionError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row(
            "SELECT last_event_id FROM mqtt_position WHERE id = 1",
            [],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map(|id| id.map(|id| id as u64))
        .map_err(self.fail("read"))
    }

    /// Saves `id` (never moves back: saves may finish out of order).
    pub fn save(&self, id: u64) -> Result<(), PositionError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT INTO mqtt_position (id, last_event_id) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET last_event_id = MAX(last_event_id, ?1)",
            [id as i64],
        )
        .map(drop)
        .map_err(self.fail("write"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_survives_reopening_and_never_moves_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mqtt.db");
        let position = MqttPosition::open(&path).expect("open");
        assert_eq!(position.load().expect("load"), None);
        position.save(7).expect("save");
        position.save(5).expect("save");
        drop(position);
        let position = MqttPosition::open(&path).expect("reopen");
        assert_eq!(position.load().expect("load"), Some(7));
    }
}
