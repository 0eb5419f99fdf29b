//! `<data>/access.db`: the API keys (hashes only), the spot enrolments and the audit entries
//! of their changes, in SQLite (WAL). A file of its own, so that `spot keys` and
//! `spot spots` change it beside a running server (which notices within a second through
//! `PRAGMA data_version`), and a stopped one.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;

use super::admission::Enrolments;
use super::keys::{hash_token, secret_text, NewKey, Role, TokenHash, ID_BYTES, SECRET_BYTES};

/// The database's file name in the data directory.
pub const ACCESS_DB: &str = "access.db";
/// The file the first start writes the first admin key to.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// Why an access change or read failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The database failed.
    #[error("{path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// Writing the first admin key, or setting the mode of `access.db`, failed.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The system's random generator failed.
    #[error("the system's random generator failed")]
    Random,
    /// No key has this id.
    #[error("no API key has the id {0:?}")]
    NoSuchKey(String),
    /// No spot with this serial is enrolled.
    #[error("no spot with serial {0:?} is enrolled")]
    NotEnrolled(String),
}

/// An API key as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Id (12 hex digits, also in the token).
    pub id: String,
    /// Role.
    pub role: Role,
    /// What it is for.
    pub label: String,
    /// Created at (ms).
    pub created: i64,
    /// Who created it: a key id, `cli` or `bootstrap`.
    pub created_by: String,
    /// Revoked at (ms), if revoked.
    pub revoked: Option<i64>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

impl KeyRecord {
    /// The JSON the API and the audit entries show.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "role": self.role.as_str(),
            "label": self.label,
            "time_created": iso(self.created),
            "created_by": self.created_by,
            "time_revoked": self.revoked.map(iso),
            "revoked_by": self.revoked_by,
        })
    }
}

/// An API key with its hash, as a cluster's nodes share it ([`AccessDb::shared_keys`],
/// [`AccessDb::merge_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKey {
    /// The key.
    pub record: KeyRecord,
    /// The hash of its token.
    pub hash: Vec<u8>,
}

/// A spot's enrolment with its secret's hash, as a cluster's nodes share it
/// ([`AccessDb::shared_enrolments`], [`AccessDb::merge_enrolments`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEnrolment {
    /// Serial number.
    pub serial: String,
    /// The hash of its secret, if it has one.
    pub secret_hash: Option<Vec<u8>>,
    /// Enrolled at (ms).
    pub enrolled: i64,
    /// Who enrolled it.
    pub enrolled_by: String,
}

/// An enrolled spot as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolmentRecord {
    /// Serial number.
    pub serial: String,
    /// Whether it has a secret.
    pub has_secret: bool,
    /// Enrolled at (ms).
    pub enrolled: i64,
    /// Who enrolled it: a key id, `cli` or `window`.
    pub enrolled_by: String,
}

impl EnrolmentRecord {
    /// The JSON the API shows.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "serial_number": self.serial,
            "has_secret": self.has_secret,
            "time_enrolled": iso(self.enrolled),
            "enrolled_by": self.enrolled_by,
        })
    }
}

/// An audit entry not yet in the events log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its position in `access.db`.
    pub seq: i64,
    /// The derived event's topic (`keys/<id>/created`, …).
    pub topic: String,
    /// The derived event's data (JSON).
    pub data: String,
}

fn iso(ms: i64) -> String {
    spot_protocol::Timestamp::from_millis(ms).to_string()
}

/// Draws random bytes from the system's generator.
pub fn random<const N: usize>() -> Result<[u8; N], AccessError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AccessError::Random)?;
    Ok(bytes)
}

/// A new spot secret and its hash.
pub fn new_spot_secret() -> Result<(String, TokenHash), AccessError> {
    let secret = secret_text(&random::<SECRET_BYTES>()?);
    let hash = hash_token(&secret);
    Ok((secret, hash))
}

/// The open database.
#[derive(Debug)]
pub struct AccessDb {
    conn: Connection,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    label TEXT NOT NULL,
    hash BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    revoked_ms INTEGER,
    revoked_by TEXT
);
CREATE TABLE IF NOT EXISTS spot_enrolments (
    serial TEXT PRIMARY KEY,
    secret_hash BLOB,
    enrolled_ms INTEGER NOT NULL,
    enrolled_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    data TEXT NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
";

impl AccessDb {
    /// Opens (creating if missing) `<dir>/access.db`.
    pub fn open(dir: &Path) -> Result<AccessDb, AccessError> {
        let path = dir.join(ACCESS_DB);
        let db_err = |source| AccessError::Db {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(db_err)?;
        #[cfg(unix)]
        {
            // Hashes only, but nobody else's business: owner only (SQLite gives its -wal
            // and -shm files the same mode).
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(&path, private).map_err(|source| AccessError::File {
                path: path.clone(),
                source,
            })?;
        }
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(AccessDb { conn, path })
    }

    fn err(&self, source: rusqlite::Error) -> AccessError {
        AccessError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` in one transaction, committed when it succeeds.
    fn in_tx<R>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<R>,
    ) -> Result<R, AccessError> {
        let run = |conn: &mut Connection| {
            // The write lock first: a transaction that reads, then writes after another
            // connection (a cluster node's sharing, `spot keys` in another process) wrote
            // meanwhile fails at once with "database is locked", not after the busy wait.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let r = f(&tx)?;
            tx.commit()?;
            Ok(r)
        };
        run(&mut self.conn).map_err(|source| AccessError::Db {
            path: self.path.clone(),
            source,
        })
    }

    /// A number that changes when another connection commits (`PRAGMA data_version`).
    pub fn data_version(&self) -> Result<i64, AccessError> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Creates a key; returns it and its token (shown once).
    pub fn create_key(
        &mut self,
        role: Role,
        label: &str,
        actor: &str,
        now: i64,
    ) -> Result<(KeyRecord, String), AccessError> {
        let key = NewKey::from_random(&random::<{ ID_BYTES + SECRET_BYTES }>()?);
        let record = KeyRecord {
            id: key.id.clone(),
            role,
            label: label.to_string(),
            created: now,
            created_by: actor.to_string(),
            revoked: None,
            revoked_by: None,
        };
        self.in_tx(|tx| {
            tx.execute(
                "INSERT INTO api_keys (id, role, label, hash, created_ms, created_by) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![key.id, role.as_str(), label, &key.hash[..], now, actor],
            )?;
            audit(tx, &format!("keys/{}/created", key.id), &record, actor)
        })?;
        Ok((record, key.token))
    }

    /// Revokes the key `id` (revoking a revoked key changes nothing).
    pub fn revoke_key(
        &mut self,
        id: &str,
        actor: &str,
        now: i64,
    ) -> Result<KeyRecord, AccessError> {
        let record = self.in_tx(|tx| {
            let changed = tx.execute(
                "UPDATE api_keys SET revoked_ms = ?2, revoked_by = ?3 \
                 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, now, actor],
            )?;
            let record = key_by_id(tx, id)?;
            if let (1, Some(record)) = (changed, &record) {
                audit(tx, &format!("keys/{id}/revoked"), record, actor)?;
            }
            Ok(record)
        })?;
        record.ok_or_else(|| AccessError::NoSuchKey(id.to_string()))
    }

    /// Every key, revoked ones included, oldest first.
    pub fn keys(&self) -> Result<Vec<KeyRecord>, AccessError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("{KEY_SELECT} ORDER BY created_ms, id"))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], key_row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }

    /// Every key with its hash, revoked ones included, in id order.
    pub fn shared_keys(&self) -> Result<Vec<SharedKey>, AccessError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, role, label, created_ms, created_by, revoked_ms, revoked_by, hash \
                 FROM api_keys ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(SharedKey {
                    record: key_row(r)?,
                    hash: r.get(7)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }

    /// Takes in keys made or revoked on other nodes: a key not here is added, a revocation
    /// not here is made (a revoked key stays revoked). Writes only when something is new;
    /// returns how many keys changed. Not audited: the node that made the change did.
    pub fn merge_keys(&mut self, keys: &[SharedKey]) -> Result<usize, AccessError> {
        let here: std::collections::HashMap<String, Option<i64>> = self
            .shared_keys()?
            .into_iter()
            .map(|k| (k.record.id, k.record.revoked))
            .collect();
        let new: Vec<&SharedKey> = keys
            .iter()
            .filter(|k| match here.get(&k.record.id) {
                None => true,
                Some(revoked) => revoked.is_none() && k.record.revoked.is_some(),
            })
            .collect();
        if new.is_empty() {
            return Ok(0);
        }
        self.in_tx(|tx| {
            for k in &new {
                let r = &k.record;
                tx.execute(
                    "INSERT INTO api_keys (id, role, label, hash, created_ms, created_by, \
                     revoked_ms, revoked_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                     ON CONFLICT (id) DO UPDATE SET revoked_ms = excluded.revoked_ms, \
                     revoked_by = excluded.revoked_by WHERE api_keys.revoked_ms IS NULL",
                    params![
                        r.id,
                        r.role.as_str(),
                        r.label,
                        k.hash,
                        r.created,
                        r.created_by,
                        r.revoked,
                        r.revoked_by
                    ],
                )?;
            }
            Ok(())
        })?;
        Ok(new.len())
    }

    /// The key `id`.
    pub fn key(&self, id: &str) -> Result<KeyRecord, AccessError> {
        key_by_id(&self.conn, id)
            .map_err(|e| self.err(e))?
            .ok_or_else(|| AccessError::NoSuchKey(id.to_string()))
    }

    /// The active keys with their hashes.
    pub fn active_keys(&self) -> Result<Vec<(String, Role, TokenHash)>, AccessError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, role, hash FROM api_keys WHERE revoked_ms IS NULL")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                let role: String = r.get(1)?;
                let hash: Vec<u8> = r.get(2)?;
                Ok((r.get::<_, String>(0)?, role, hash))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, role, hash)| {
                let role = role.parse().ok()?;
                let hash: TokenHash = hash.try_into().ok()?;
                Some((id, role, hash))
            })
            .collect())
    }

    /// Enrols `serial` (again: its secret is replaced); true when it was not enrolled.
    pub fn enrol(
        &mut self,
        serial: &str,
        secret_hash: Option<TokenHash>,
        actor: &str,
        now: i64,
    ) -> Result<bool, AccessError> {
        self.in_tx(|tx| {
            let existed: bool = tx
                .query_row(
                    "SELECT 1 FROM spot_enrolments WHERE serial = ?1",
                    [serial],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            tx.execute(
                "INSERT OR REPLACE INTO spot_enrolments \
                 (serial, secret_hash, enrolled_ms, enrolled_by) VALUES (?1, ?2, ?3, ?4)",
                params![serial, secret_hash.as_ref().map(|h| &h[..]), now, actor],
            )?;
            let data = json!({
                "serial_number": serial,
                "has_secret": secret_hash.is_some(),
                "actor": actor,
            });
            tx.execute(
                "INSERT INTO audit (topic, data) VALUES (?1, ?2)",
                params![format!("enrolments/{serial}/created"), data.to_string()],
            )?;
            Ok(!existed)
        })
    }

    /// Removes the enrolment of `serial`.
    pub fn unenrol(&mut self, serial: &str, actor: &str) -> Result<(), AccessError> {
        let n = self.in_tx(|tx| {
            let n = tx.execute("DELETE FROM spot_enrolments WHERE serial = ?1", [serial])?;
            if n == 1 {
                let data = json!({ "serial_number": serial, "actor": actor });
                tx.execute(
                    "INSERT INTO audit (topic, data) VALUES (?1, ?2)",
                    params![format!("enrolments/{serial}/deleted"), data.to_string()],
                )?;
            }
            Ok(n)
        })?;
        if n == 0 {
            return Err(AccessError::NotEnrolled(serial.to_string()));
        }
        Ok(())
    }

    /// The enrolments with their secrets' hashes.
    pub fn enrolments(&self) -> Result<Enrolments, AccessError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT serial, secret_hash FROM spot_enrolments")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .map(|(serial, hash)| (serial, hash.and_then(|h| h.try_into().ok())))
            .collect())
    }

    /// Every enrolment with its secret's hash, by serial.
    pub fn shared_enrolments(&self) -> Result<Vec<SharedEnrolment>, AccessError> {
        enrolments_of(&self.conn).map_err(|e| self.err(e))
    }

    /// Takes in enrolments and removals made on other nodes, the later one winning: an
    /// enrolment replaces this node's of the same serial when it was made later, a removal
    /// (serial, when) removes one made before it. Writes only when something changes;
    /// returns what it changed: (serial, its enrolment time now, or `None` if removed).
    pub fn merge_enrolments(
        &mut self,
        enrolled: &[SharedEnrolment],
        removed: &[(String, i64)],
    ) -> Result<Vec<(String, Option<i64>)>, AccessError> {
        // Most rounds bring nothing new: no write lock for them.
        let stale = |here: &std::collections::HashMap<String, i64>| {
            enrolled
                .iter()
                .any(|e| here.get(&e.serial).is_none_or(|&at| at < e.enrolled))
                || removed
                    .iter()
                    .any(|(s, at)| here.get(s).is_some_and(|&enrolled| enrolled < *at))
        };
        let here: std::collections::HashMap<String, i64> = enrolments_of(&self.conn)
            .map_err(|e| self.err(e))?
            .into_iter()
            .map(|e| (e.serial, e.enrolled))
            .collect();
        if !stale(&here) {
            return Ok(Vec::new());
        }
        self.in_tx(|tx| {
            let here: std::collections::HashMap<String, i64> = enrolments_of(tx)?
                .into_iter()
                .map(|e| (e.serial, e.enrolled))
                .collect();
            let mut changed = Vec::new();
            for e in enrolled {
                if here.get(&e.serial).is_none_or(|&at| at < e.enrolled) {
                    tx.execute(
                        "INSERT OR REPLACE INTO spot_enrolments \
                         (serial, secret_hash, enrolled_ms, enrolled_by) VALUES (?1, ?2, ?3, ?4)",
                        params![e.serial, e.secret_hash, e.enrolled, e.enrolled_by],
                    )?;
                    changed.push((e.serial.clone(), Some(e.enrolled)));
                }
            }
            for (serial, at) in removed {
                if here.get(serial).is_some_and(|&enrolled| enrolled < *at) {
                    tx.execute("DELETE FROM spot_enrolments WHERE serial = ?1", [serial])?;
                    changed.push((serial.clone(), None));
                }
            }
            Ok(changed)
        })
    }

    /// The enrolments as listed, by serial.
    pub fn enrolment_list(&self) -> Result<Vec<EnrolmentRecord>, AccessError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT serial, secret_hash IS NOT NULL, enrolled_ms, enrolled_by \
                 FROM spot_enrolments ORDER BY serial",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(EnrolmentRecord {
                    serial: r.get(0)?,
                    has_secret: r.get(1)?,
                    enrolled: r.get(2)?,
                    enrolled_by: r.get(3)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }

    /// The audit entries not yet marked published, oldest first.
    pub fn unpublished_audit(&self) -> Result<Vec<AuditEntry>, AccessError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, topic, data FROM audit WHERE published = 0 ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AuditEntry {
                    seq: r.get(0)?,
                    topic: r.get(1)?,
                    data: r.get(2)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
        rows.map_err(|e| self.err(e))
    }

    /// Marks the audit entries up to `seq` published (they are in the events log).
    pub fn mark_published(&self, seq: i64) -> Result<(), AccessError> {
        self.conn
            .execute(
                "UPDATE audit SET published = 1 WHERE seq <= ?1 AND published = 0",
                [seq],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// On a data directory without any key: creates an admin key and writes it to
    /// `<dir>/admin.key` (mode 0600). Returns that file when it did.
    pub fn bootstrap(&mut self, dir: &Path, now: i64) -> Result<Option<PathBuf>, AccessError> {
        let count: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM api_keys", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if count > 0 {
            return Ok(None);
        }
        let path = dir.join(ADMIN_KEY_FILE);
        let (_, token) = self.create_key(Role::Admin, "first admin key", "bootstrap", now)?;
        write_private(&path, &format!("{token}\n")).map_err(|source| AccessError::File {
            path: path.clone(),
            source,
        })?;
        Ok(Some(path))
    }
}

/// Writes `text` to `path`, readable and writable by its owner only; whole or not at all
/// (written beside it, then renamed: a reader never sees half a key).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let partial = path.with_extension("key.partial");
    write_private_file(&partial, text)?;
    std::fs::rename(&partial, path)
}

fn write_private_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let mut file = options.open(path)?;
        // An older file keeps its mode through open: set it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    }
    #[cfg(not(unix))]
    {
        let mut file = options.open(path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    }
}

/// Every enrolment, by serial.
fn enrolments_of(conn: &Connection) -> rusqlite::Result<Vec<SharedEnrolment>> {
    let mut stmt = conn.prepare_cached(
        "SELECT serial, secret_hash, enrolled_ms, enrolled_by FROM spot_enrolments ORDER BY serial",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(SharedEnrolment {
            serial: r.get(0)?,
            secret_hash: r.get(1)?,
            enrolled: r.get(2)?,
            enrolled_by: r.get(3)?,
        })
    })?;
    rows.collect()
}

const KEY_SELECT: &str =
    "SELECT id, role, label, created_ms, created_by, revoked_ms, revoked_by FROM api_keys";

fn key_row(r: &rusqlite::Row) -> rusqlite::Result<KeyRecord> {
    let role: String = r.get(1)?;
    Ok(KeyRecord {
        id: r.get(0)?,
        role: role.parse().map_err(|e: super::keys::BadRole| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
        })?,
        label: r.get(2)?,
        created: r.get(3)?,
        created_by: r.get(4)?,
        revoked: r.get(5)?,
        revoked_by: r.get(6)?,
    })
}

fn key_by_id(conn: &Connection, id: &str) -> rusqlite::Result<Option<KeyRecord>> {
    conn.query_row(&format!("{KEY_SELECT} WHERE id = ?1"), [id], key_row)
        .optional()
}

fn audit(
    tx: &rusqlite::Transaction,
    topic: &str,
    record: &KeyRecord,
    actor: &str,
) -> rusqlite::Result<()> {
    let mut data = record.to_json();
    data["actor"] = actor.into();
    tx.execute(
        "INSERT INTO audit (topic, data) VALUES (?1, ?2)",
        params![topic, data.to_string()],
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_as_hashes_listed_without_secrets_and_revoked_with_an_audit() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = AccessDb::open(dir.path()).unwrap();
        let (record, token) = db
            .create_key(Role::Read, "dashboard", "cli", 1_000)
            .unwrap();
        let raw = std::fs::read(dir.path().join(ACCESS_DB)).unwrap();
        let wal = std::fs::read(dir.path().join("access.db-wal")).unwrap_or_default();
        let secret = token.rsplit('_').next().unwrap().as_bytes();
        for bytes in [&raw, &wal] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret));
        }
        assert_eq!(db.keys().unwrap(), vec![record.clone()]);
        assert_eq!(db.active_keys().unwrap()[0].2, hash_token(&token));
        let revoked = db.revoke_key(&record.id, "abc", 2_000).unwrap();
        assert_eq!(revoked.revoked, Some(2_000));
        assert!(db.active_keys().unwrap().is_empty());
        // Again: unchanged, not audited twice.
        assert_eq!(db.revoke_key(&record.id, "x", 3_000).unwrap(), revoked);
        let topics: Vec<String> = db
            .unpublished_audit()
            .unwrap()
            .into_iter()
            .map(|a| a.topic)
            .collect();
        let id = &record.id;
        assert_eq!(
            topics,
            [format!("keys/{id}/created"), format!("keys/{id}/revoked")]
        );
        assert!(matches!(
            db.revoke_key("000000000000", "x", 0),
            Err(AccessError::NoSuchKey(_))
        ));
    }

    /// What a cluster's nodes copy between them: a key made on one works on the other, a
    /// revocation is taken in, and an older copy does not bring a revoked key back.
    #[test]
    fn merged_keys_are_added_and_their_revocations_taken_but_never_undone() {
        let (one, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = AccessDb::open(one.path()).unwrap();
        let mut b = AccessDb::open(other.path()).unwrap();
        let (record, token) = a.create_key(Role::Read, "shared", "cli", 1_000).unwrap();
        let before = a.shared_keys().unwrap();
        assert_eq!(b.merge_keys(&before).unwrap(), 1);
        assert_eq!(b.active_keys().unwrap()[0].2, hash_token(&token));
        assert_eq!(b.keys().unwrap(), vec![record.clone()]);
        assert_eq!(b.merge_keys(&before).unwrap(), 0, "nothing new: no write");
        b.revoke_key(&record.id, "x", 2_000).unwrap();
        assert_eq!(a.merge_keys(&b.shared_keys().unwrap()).unwrap(), 1);
        assert!(a.active_keys().unwrap().is_empty(), "revoked on a too");
        assert_eq!(b.merge_keys(&before).unwrap(), 0, "an older copy");
        assert!(b.active_keys().unwrap().is_empty(), "still revoked");
        assert_eq!(b.keys().unwrap()[0].revoked, Some(2_000));
    }

    /// Enrolments copied between nodes: the later change of a serial wins, an enrolment
    /// or a removal alike.
    #[test]
    fn merged_enrolments_and_removals_win_when_later() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = AccessDb::open(dir.path()).unwrap();
        db.enrol("1", None, "cli", 100).unwrap();
        db.enrol("2", None, "cli", 100).unwrap();
        let e = |serial: &str, at| SharedEnrolment {
            serial: serial.into(),
            secret_hash: Some(vec![7; 32]),
            enrolled: at,
            enrolled_by: "other".into(),
        };
        let changed = db
            .merge_enrolments(&[e("1", 50), e("2", 200), e("3", 10)], &[])
            .unwrap();
        let taken = [("2".to_string(), Some(200)), ("3".to_string(), Some(10))];
        assert_eq!(changed, taken, "an older one is not taken");
        let now = db.shared_enrolments().unwrap();
        let by: Vec<(&str, i64)> = now
            .iter()
            .map(|e| (e.serial.as_str(), e.enrolled))
            .collect();
        assert_eq!(by, [("1", 100), ("2", 200), ("3", 10)]);
        assert_eq!(now[1].secret_hash.as_deref(), Some(&[7u8; 32][..]));
        let removed = [("1".to_string(), 99), ("3".to_string(), 11)];
        let changed = db.merge_enrolments(&[], &removed).unwrap();
        let gone = [("3".to_string(), None)];
        assert_eq!(
            changed, gone,
            "a removal older than the enrolment is not taken"
        );
        let serials: Vec<String> = db
            .shared_enrolments()
            .unwrap()
            .into_iter()
            .map(|e| e.serial)
            .collect();
        assert_eq!(serials, ["1", "2"]);
        assert!(db.merge_enrolments(&[e("2", 200)], &[]).unwrap().is_empty());
    }

    #[test]
    fn bootstrap_writes_an_admin_key_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = AccessDb::open(dir.path()).unwrap();
        let path = db.bootstrap(dir.path(), 0).unwrap().expect("created");
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(db.active_keys().unwrap()[0].2, hash_token(token.trim()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(db.bootstrap(dir.path(), 1).unwrap(), None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), token);
    }
}
