//! The cluster's queryable state in PostgreSQL: the resource rows of every partition, each
//! partition's position in the input log, and the cluster's fixed settings.
//!
//! - `spot_cluster (key, value)`: `partitions`, written by the first node; a node with
//!   another count refuses to start ([`PgState::migrate`]).
//! - `spot_partitions (partition, applied_seq, time_last, id_last, owner, purged_through)`:
//!   the last `SPOT_IN` stream sequence whose effects the rows hold, the time of the last
//!   entry applied, the id generator's state, who committed it, and up to which position
//!   deleted rows are forgotten.
//! - `spot_rows (tbl, id, partition, doc, version)`: the rows of the live state, as the
//!   embedded store's checkpoints hold them (one JSON document each,
//!   [`crate::domain::RowDoc`]), each with the position of the commit that last wrote it.
//!   A deleted row stays for a while as a *tombstone* (`doc` null), so that a read replica
//!   catches up with the rows written since the positions it holds ([`PgState::rows_since`])
//!   instead of reading them all; tombstones older than [`TOMBSTONES_KEPT`] are purged.
//!
//! A stage commits a partition's changed rows and its new position in **one transaction**
//! that moves the position only from the value the stage loaded or last committed
//! ([`PgState::commit`]): a second owner of the same partition (one that lost its lease
//! without noticing) finds the position moved and is told [`PgError::Fenced`], so every
//! input message takes effect exactly once.

use tokio_postgres::{Client, NoTls};

use crate::access::{KeyRecord, SharedEnrolment, SharedKey};
use crate::domain::{Changes, Table};

/// A PostgreSQL failure, and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The database refused or the connection broke.
    #[error("postgres: {context}: {source}")]
    Db {
        /// What was being done.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The cluster was created with another partition count.
    #[error(
        "the cluster at this database has {cluster} partitions, this node is configured \
         for {node}; partition counts are fixed when the cluster is created"
    )]
    PartitionCount {
        /// The cluster's.
        cluster: u32,
        /// This node's.
        node: u32,
    },
    /// Another owner moved the partition's position: this node is not its owner any more.
    #[error("partition {partition}: its position moved to {found} under this owner (expected {expected}): another node owns it now")]
    Fenced {
        /// The partition.
        partition: u32,
        /// The position this owner had.
        expected: u64,
        /// The position found.
        found: u64,
    },
}

fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
    move |source| PgError::Db { context, source }
}

/// A connection to `url`, driven by a task of its own (which logs why it ended).
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, PgError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(db("connect"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("postgres connection ended: {e}");
        }
    });
    Ok(client)
}

/// Where a partition's owner starts: the rows of the last commit and the position they hold.
#[derive(Debug, Default)]
pub struct PartitionState {
    /// Last `SPOT_IN` stream sequence applied.
    pub applied_seq: u64,
    /// Time of the last entry applied (ms): the `now` the rows are loaded at.
    pub time_last: i64,
    /// The id generator's state.
    pub id_last: u64,
    /// The rows, per table, in [`Table::ALL`] order (id, JSON document).
    pub rows: Vec<(Table, Vec<(String, String)>)>,
}

/// A connection to the cluster's database.
pub struct PgState {
    client: Client,
    /// A stage's last purge of tombstones: when, and the position it committed then (the
    /// next purge forgets tombstones up to it).
    purge_mark: Option<(std::time::Instant, u64)>,
}

impl std::fmt::Debug for PgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgState")
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS spot_cluster (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS spot_partitions (
    partition integer PRIMARY KEY,
    applied_seq bigint NOT NULL DEFAULT 0,
    time_last bigint NOT NULL DEFAULT 0,
    id_last bigint NOT NULL DEFAULT 0,
    owner text,
    time_committed timestamptz,
    purged_through bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS spot_rows (
    tbl text NOT NULL,
    id text NOT NULL,
    partition integer NOT NULL,
    doc text,
    version bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tbl, id)
);
CREATE INDEX IF NOT EXISTS spot_rows_version ON spot_rows (partition, version);
CREATE TABLE IF NOT EXISTS spot_enrolments (
    serial text PRIMARY KEY,
    secret_hash bytea,
    enrolled_ms bigint NOT NULL,
    enrolled_by text NOT NULL,
    removed_ms bigint
);
CREATE TABLE IF NOT EXISTS spot_api_keys (
    id text PRIMARY KEY,
    role text NOT NULL,
    label text NOT NULL,
    hash bytea NOT NULL,
    created_ms bigint NOT NULL,
    created_by text NOT NULL,
    revoked_ms bigint,
    revoked_by text
);
-- Webhook subscriptions (`super::webhooks`): the definition as clients wrote it, and the
-- position of its delivery in `SPOT_OUT` (every matching event up to `delivered_through`
-- was delivered or given up).
CREATE TABLE IF NOT EXISTS spot_webhooks (
    id bigserial PRIMARY KEY,
    topic_filter text NOT NULL,
    description text NOT NULL,
    target_url text NOT NULL,
    target_retry boolean NOT NULL,
    database_hold_time_h double precision NOT NULL,
    secret text,
    custom text,
    time_created bigint NOT NULL,
    time_updated bigint NOT NULL,
    delivered_through bigint NOT NULL,
    delivered_count bigint NOT NULL DEFAULT 0,
    failed_count bigint NOT NULL DEFAULT 0,
    last_error text
);
-- Of an earlier version: `spot_rows_version` serves its queries, and each index costs
-- every row written.
DROP INDEX IF EXISTS spot_rows_partition;
DO $$ BEGIN
    -- Tables of an earlier version (an ALTER TABLE locks the table whole: only when needed).
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'spot_partitions' AND column_name = 'purged_through') THEN
        ALTER TABLE spot_partitions ADD COLUMN purged_through bigint NOT NULL DEFAULT 0;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'spot_rows' AND column_name = 'version') THEN
        ALTER TABLE spot_rows ADD COLUMN version bigint NOT NULL DEFAULT 0;
        ALTER TABLE spot_rows ALTER COLUMN doc DROP NOT NULL;
    END IF;
END $$;
";

/// How long a deleted row's tombstone is kept at least: a replica that last caught up
/// longer ago than this reads every row again.
pub const TOMBSTONES_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

/// Each partition's position (`applied_seq`), by partition.
pub type Positions = std::collections::BTreeMap<i32, u64>;

/// What a read replica reads to catch up ([`PgState::rows_since`]).
#[derive(Debug)]
pub enum Rows {
    /// Every row, per table in [`Table::ALL`] order (id, JSON document).
    Whole(Vec<(Table, Vec<(String, String)>)>),
    /// The rows written since the positions given, in [`Table::ALL`] order: (table, id,
    /// the document, or `None` for a deleted row).
    Changed(Vec<(Table, String, Option<String>)>),
}

/// The sum of the partitions' positions: it moves with every commit.
const POSITIONS: &str = "SELECT coalesce(sum(applied_seq), 0)::bigint FROM spot_partitions";

/// The advisory lock key that serialises schema creation across nodes starting together
/// (`CREATE TABLE IF NOT EXISTS` alone races on the catalog).
const SCHEMA_LOCK: i64 = 0x5350_4f54; // "SPOT"

impl PgState {
    /// Connects (the connection is driven by a task on the current runtime).
    pub async fn connect(url: &str) -> Result<PgState, PgError> {
        Ok(PgState {
            client: connect(url).await?,
            purge_mark: None,
        })
    }

    /// Creates the tables if missing and fixes the partition count on first start; refuses
    /// a count other than the cluster's.
    pub async fn migrate(&mut self, partitions: u32) -> Result<(), PgError> {
        let tx = self.client.transaction().await.map_err(db("begin"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(db("lock the schema"))?;
        // A node joining a running cluster finds the schema made and leaves it be: its
        // statements would lock tables a running stage's commit locks too (a deadlock).
        let made = tx
            .query_one(
                "SELECT count(*) = 5 FROM information_schema.columns WHERE table_schema = current_schema() \
                 AND ((table_name = 'spot_rows' AND column_name = 'version') \
                 OR (table_name = 'spot_partitions' AND column_name = 'purged_through') \
                 OR (table_name = 'spot_api_keys' AND column_name = 'revoked_by') \
                 OR (table_name = 'spot_enrolments' AND column_name = 'removed_ms') \
                 OR (table_name = 'spot_webhooks' AND column_name = 'delivered_through'))",
                &[],
            )
            .await
            .map_err(db("look for the tables"))?
            .get::<_, bool>(0);
        if !made {
            tx.batch_execute(SCHEMA)
                .await
                .map_err(db("create the tables"))?;
        }
        tx.execute(
            "INSERT INTO spot_cluster (key, value) VALUES ('partitions', $1) ON CONFLICT DO NOTHING",
            &[&partitions.to_string()],
        )
        .await
        .map_err(db("record the partition count"))?;
        let row = tx
            .query_one(
                "SELECT value FROM spot_cluster WHERE key = 'partitions'",
                &[],
            )
            .await
            .map_err(db("read the partition count"))?;
        let cluster: u32 = row.get::<_, String>(0).parse().unwrap_or(0);
        if cluster != partitions {
            return Err(PgError::PartitionCount {
                cluster,
                node: partitions,
            });
        }
        let have = tx
            .query_one("SELECT count(*) FROM spot_partitions", &[])
            .await
            .map_err(db("count the partitions"))?
            .get::<_, i64>(0);
        if have != i64::from(partitions) {
            tx.execute(
                "INSERT INTO spot_partitions (partition) SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
                &[&(partitions as i32)],
            )
            .await
            .map_err(db("create the partitions"))?;
        }
        tx.commit().await.map_err(db("commit the schema"))
    }

    /// Every API key of the cluster, revoked ones included.
    pub async fn api_keys(&self) -> Result<Vec<SharedKey>, PgError> {
        let rows = self
            .client
            .query(
                "SELECT id, role, label, created_ms, created_by, revoked_ms, revoked_by, hash \
                 FROM spot_api_keys",
                &[],
            )
            .await
            .map_err(db("read the API keys"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(SharedKey {
                    record: KeyRecord {
                        id: r.get(0),
                        role: r.get::<_, String>(1).parse().ok()?,
                        label: r.get(2),
                        created: r.get(3),
                        created_by: r.get(4),
                        revoked: r.get(5),
                        revoked_by: r.get(6),
                    },
                    hash: r.get(7),
                })
            })
            .collect())
    }

    /// Adds a node's API keys to the cluster's, and their revocations (a revoked key stays
    /// revoked).
    pub async fn share_api_keys(&mut self, keys: &[SharedKey]) -> Result<(), PgError> {
        let tx = self.client.transaction().await.map_err(db("begin"))?;
        for k in keys {
            let r = &k.record;
            tx.execute(
                "INSERT INTO spot_api_keys (id, role, label, hash, created_ms, created_by, \
                 revoked_ms, revoked_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (id) DO UPDATE SET revoked_ms = excluded.revoked_ms, \
                 revoked_by = excluded.revoked_by \
                 WHERE spot_api_keys.revoked_ms IS NULL AND excluded.revoked_ms IS NOT NULL",
                &[
                    &r.id,
                    &r.role.as_str(),
                    &r.label,
                    &k.hash,
                    &r.created,
                    &r.created_by,
                    &r.revoked,
                    &r.revoked_by,
                ],
            )
            .await
            .map_err(db("share the API keys"))?;
        }
        tx.commit().await.map_err(db("commit the API keys"))
    }

    /// The cluster's spot enrolments, and its removals (serial, when).
    pub async fn enrolments(&self) -> Result<(Vec<SharedEnrolment>, Vec<(String, i64)>), PgError> {
        let rows = self
            .client
            .query(
                "SELECT serial, secret_hash, enrolled_ms, enrolled_by, removed_ms \
                 FROM spot_enrolments",
                &[],
            )
            .await
            .map_err(db("read the enrolments"))?;
        let (mut enrolled, mut removed) = (Vec::new(), Vec::new());
        for r in &rows {
            match r.get::<_, Option<i64>>(4) {
                Some(at) => removed.push((r.get(0), at)),
                None => enrolled.push(SharedEnrolment {
                    serial: r.get(0),
                    secret_hash: r.get(1),
                    enrolled: r.get(2),
                    enrolled_by: r.get(3),
                }),
            }
        }
        Ok((enrolled, removed))
    }

    /// Adds a node's enrolments and removals (serial, when) to the cluster's, the later
    /// one winning.
    pub async fn share_enrolments(
        &mut self,
        enrolled: &[SharedEnrolment],
        removed: &[(String, i64)],
    ) -> Result<(), PgError> {
        let tx = self.client.transaction().await.map_err(db("begin"))?;
        for e in enrolled {
            tx.execute(
                "INSERT INTO spot_enrolments (serial, secret_hash, enrolled_ms, enrolled_by) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (serial) DO UPDATE SET \
                 secret_hash = excluded.secret_hash, enrolled_ms = excluded.enrolled_ms, \
                 enrolled_by = excluded.enrolled_by, removed_ms = NULL \
                 WHERE excluded.enrolled_ms > greatest(spot_enrolments.enrolled_ms, \
                 coalesce(spot_enrolments.removed_ms, 0))",
                &[&e.serial, &e.secret_hash, &e.enrolled, &e.enrolled_by],
            )
            .await
            .map_err(db("share the enrolments"))?;
        }
        for (serial, at) in removed {
            tx.execute(
                "UPDATE spot_enrolments SET removed_ms = $2 WHERE serial = $1 \
                 AND enrolled_ms < $2 AND (removed_ms IS NULL OR removed_ms < $2)",
                &[serial, at],
            )
            .await
            .map_err(db("share the removed enrolments"))?;
        }
        tx.commit().await.map_err(db("commit the enrolments"))
    }

    /// The state partition `p`'s new owner starts from.
    pub async fn load(&self, p: u32) -> Result<PartitionState, PgError> {
        let row = self
            .client
            .query_one(
                "SELECT applied_seq, time_last, id_last FROM spot_partitions WHERE partition = $1",
                &[&(p as i32)],
            )
            .await
            .map_err(db("read a partition's position"))?;
        let rows = self
            .client
            .query(
                "SELECT tbl, id, doc FROM spot_rows WHERE partition = $1 AND doc IS NOT NULL",
                &[&(p as i32)],
            )
            .await
            .map_err(db("read a partition's rows"))?;
        Ok(PartitionState {
            applied_seq: row.get::<_, i64>(0) as u64,
            time_last: row.get(1),
            id_last: row.get::<_, i64>(2) as u64,
            rows: by_table(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2)))),
        })
    }

    /// What a read replica holding `seen` (each partition's position; `None`: nothing yet)
    /// reads to hold the last commit: the rows written since (tombstones included), or
    /// every row when it holds nothing or tombstones it would need were purged. Only the
    /// rows of table `only` when given. Read in one snapshot with the positions it brings
    /// the replica to.
    pub async fn rows_since(
        &mut self,
        seen: Option<&Positions>,
        only: Option<Table>,
    ) -> Result<(Positions, Rows), PgError> {
        let tx = self
            .client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db("begin a read"))?;
        let partitions = tx
            .query(
                "SELECT partition, applied_seq, purged_through FROM spot_partitions",
                &[],
            )
            .await
            .map_err(db("read the positions"))?;
        let mut positions = Positions::new();
        let mut purged = false;
        for row in &partitions {
            let p: i32 = row.get(0);
            let purged_through = row.get::<_, i64>(2) as u64;
            positions.insert(p, row.get::<_, i64>(1) as u64);
            purged |= seen.is_some_and(|s| s.get(&p).copied().unwrap_or(0) < purged_through);
        }
        let only = only.map(|t| t.name());
        let rows = match seen.filter(|_| !purged) {
            None => {
                let rows = tx
                    .query(
                        "SELECT tbl, id, doc FROM spot_rows \
                         WHERE doc IS NOT NULL AND ($1::text IS NULL OR tbl = $1)",
                        &[&only],
                    )
                    .await
                    .map_err(db("read the rows"))?;
                Rows::Whole(by_table(
                    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))),
                ))
            }
            Some(seen) => {
                let (ps, since): (Vec<i32>, Vec<i64>) = positions
                    .iter()
                    .filter(|(p, at)| seen.get(p).copied().unwrap_or(0) < **at)
                    .map(|(p, _)| (*p, seen.get(p).copied().unwrap_or(0) as i64))
                    .unzip();
                let rows = tx
                    .query(
                        "SELECT r.tbl, r.id, r.doc FROM spot_rows r \
                         JOIN unnest($1::int[], $2::bigint[]) AS s(partition, since) \
                         ON r.partition = s.partition AND r.version > s.since \
                         WHERE $3::text IS NULL OR r.tbl = $3",
                        &[&ps, &since, &only],
                    )
                    .await
                    .map_err(db("read the rows changed"))?;
                let mut changed: Vec<(Table, String, Option<String>)> = rows
                    .iter()
                    .filter_map(|r| {
                        let table: String = r.get(0);
                        let known = Table::ALL.iter().find(|t| t.name() == table);
                        known.map(|t| (*t, r.get(1), r.get(2)))
                    })
                    .collect();
                changed.sort_by_key(|(t, _, _)| Table::ALL.iter().position(|a| a == t));
                Rows::Changed(changed)
            }
        };
        tx.commit().await.map_err(db("end a read"))?;
        Ok((positions, rows))
    }

    /// The sum of the partitions' positions: it moves with every commit.
    pub async fn version(&self) -> Result<u64, PgError> {
        Ok(self
            .client
            .query_one(POSITIONS, &[])
            .await
            .map_err(db("read the positions"))?
            .get::<_, i64>(0) as u64)
    }

    /// Commits partition `p`'s changes and its position moving from `from` to `to`, in one
    /// transaction, or nothing: [`PgError::Fenced`] when the position is no longer `from`.
    pub async fn commit(
        &mut self,
        p: u32,
        changes: &Changes,
        (from, to): (u64, u64),
        time_last: i64,
        owner: &str,
    ) -> Result<(), PgError> {
        let tx = self.client.transaction().await.map_err(db("begin"))?;
        let moved = tx
            .execute(
                "UPDATE spot_partitions SET applied_seq = $2, time_last = $3, id_last = $4, \
                 owner = $5, time_committed = now() WHERE partition = $1 AND applied_seq = $6",
                &[
                    &(p as i32),
                    &(to as i64),
                    &time_last,
                    &(changes.id_last as i64),
                    &owner,
                    &(from as i64),
                ],
            )
            .await
            .map_err(db("move the partition's position"))?;
        if moved != 1 {
            let found = tx
                .query_one(
                    "SELECT applied_seq FROM spot_partitions WHERE partition = $1",
                    &[&(p as i32)],
                )
                .await
                .map_err(db("read a partition's position"))?
                .get::<_, i64>(0) as u64;
            return Err(PgError::Fenced {
                partition: p,
                expected: from,
                found,
            });
        }
        if !changes.deletes.is_empty() {
            let (tables, ids): (Vec<&str>, Vec<String>) = changes
                .deletes
                .iter()
                .map(|(t, id)| (t.name(), id.text()))
                .unzip();
            tx.execute(
                "UPDATE spot_rows r SET doc = NULL, version = $3 \
                 FROM unnest($1::text[], $2::text[]) AS d(tbl, id) \
                 WHERE r.tbl = d.tbl AND r.id = d.id",
                &[&tables, &ids, &(to as i64)],
            )
            .await
            .map_err(db("delete rows"))?;
        }
        if !changes.upserts.is_empty() {
            let mut tables = Vec::with_capacity(changes.upserts.len());
            let mut ids = Vec::with_capacity(changes.upserts.len());
            let mut docs = Vec::with_capacity(changes.upserts.len());
            for (table, id, doc) in &changes.upserts {
                tables.push(table.name());
                ids.push(id.text());
                docs.push(doc.to_json());
            }
            tx.execute(
                "INSERT INTO spot_rows (tbl, id, partition, doc, version) \
                 SELECT tbl, id, $4, doc, $5 FROM unnest($1::text[], $2::text[], $3::text[]) AS u(tbl, id, doc) \
                 ON CONFLICT (tbl, id) DO UPDATE SET doc = excluded.doc, \
                 partition = excluded.partition, version = excluded.version",
                &[&tables, &ids, &docs, &(p as i32), &(to as i64)],
            )
            .await
            .map_err(db("write rows"))?;
        }
        let now = std::time::Instant::now();
        match self.purge_mark {
            Some((at, through)) if now.duration_since(at) >= TOMBSTONES_KEPT => {
                tx.execute(
                    "DELETE FROM spot_rows WHERE partition = $1 AND doc IS NULL AND version <= $2",
                    &[&(p as i32), &(through as i64)],
                )
                .await
                .map_err(db("purge old tombstones"))?;
                tx.execute(
                    "UPDATE spot_partitions SET purged_through = $2 WHERE partition = $1",
                    &[&(p as i32), &(through as i64)],
                )
                .await
                .map_err(db("record the purge"))?;
                self.purge_mark = Some((now, to));
            }
            Some(_) => {}
            None => self.purge_mark = Some((now, to)),
        }
        tx.commit().await.map_err(db("commit"))
    }
}

/// Rows grouped by table, in [`Table::ALL`] order (the order the domain loads them in:
/// locations before the spots reporting to them, items before their presences).
fn by_table(
    rows: impl Iterator<Item = (String, String, String)>,
) -> Vec<(Table, Vec<(String, String)>)> {
    let mut grouped: Vec<(Table, Vec<(String, String)>)> =
        Table::ALL.iter().map(|&t| (t, Vec::new())).collect();
    for (table, id, doc) in rows {
        if let Some((_, list)) = grouped.iter_mut().find(|(t, _)| t.name() == table) {
            list.push((id, doc));
        } else {
            tracing::warn!(table, id, "a row of an unknown table is skipped");
        }
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::{presence, T0};
    use crate::domain::{Domain, DomainConfig};
    use spot_protocol::{Action, Proximity};

    fn presences_in(rows: &Rows) -> Vec<(String, bool)> {
        match rows {
            Rows::Whole(tables) => tables
                .iter()
                .filter(|(t, _)| *t == Table::Presences)
                .flat_map(|(_, rows)| rows.iter().map(|(id, _)| (id.clone(), true)))
                .collect(),
            Rows::Changed(rows) => rows
                .iter()
                .filter(|(t, _, _)| *t == Table::Presences)
                .map(|(_, id, doc)| (id.clone(), doc.is_some()))
                .collect(),
        }
    }

    /// A replica catches up with the rows written since its positions, a deleted row
    /// included (a tombstone); once tombstones it would need are purged, it reads all.
    #[tokio::test]
    async fn a_replica_reads_the_rows_changed_since_its_positions_or_all_once_tombstones_are_purged(
    ) {
        let db = test_support::postgres::TestDb::create();
        let mut pg = PgState::connect(db.url()).await.expect("connect");
        pg.migrate(1).await.expect("migrate");
        pg.migrate(1)
            .await
            .expect("a second migration changes nothing");
        let mut d = Domain::new(DomainConfig::default());
        let code = "0000000000000000000000aa";
        let commit = async |pg: &mut PgState, d: &mut Domain, from: u64, action| {
            d.apply_event("1", &presence(action, code, Proximity::Near), T0);
            let changes = d.take_changes(true);
            pg.commit(0, &changes, (from, from + 1), T0, "test")
                .await
                .expect("commit");
        };
        commit(&mut pg, &mut d, 0, Action::Create).await;
        let (positions, rows) = pg.rows_since(None, None).await.expect("read");
        assert_eq!(positions, Positions::from([(0, 1)]));
        let created = presences_in(&rows);
        assert!(
            matches!(rows, Rows::Whole(_)) && created.len() == 1,
            "{rows:?}"
        );
        let presence = created[0].0.clone();

        commit(&mut pg, &mut d, 1, Action::Delete).await;
        let (positions, rows) = pg.rows_since(Some(&positions), None).await.expect("read");
        assert_eq!(positions, Positions::from([(0, 2)]));
        assert!(matches!(rows, Rows::Changed(_)), "{rows:?}");
        assert_eq!(
            presences_in(&rows),
            [(presence.clone(), false)],
            "a tombstone"
        );
        let at_two = positions;

        // The next commit purges the tombstones up to the last mark (forced old here).
        let long_ago =
            std::time::Instant::now() - TOMBSTONES_KEPT - std::time::Duration::from_secs(1);
        pg.purge_mark = Some((long_ago, 2));
        commit(&mut pg, &mut d, 2, Action::Create).await;
        let stale = Positions::from([(0, 1)]);
        let (_, rows) = pg.rows_since(Some(&stale), None).await.expect("read");
        assert!(
            matches!(rows, Rows::Whole(_)),
            "behind the purge: every row ({rows:?})"
        );
        assert!(!presences_in(&rows).contains(&(presence.clone(), true)));
        let (positions, rows) = pg.rows_since(Some(&at_two), None).await.expect("read");
        assert_eq!(positions, Positions::from([(0, 3)]));
        assert!(matches!(rows, Rows::Changed(_)), "{rows:?}");
        let spots_only = pg.rows_since(Some(&at_two), Some(Table::Spots)).await;
        let (_, Rows::Changed(rows)) = spots_only.expect("read") else {
            panic!("changed rows")
        };
        assert!(rows.iter().all(|(t, _, _)| *t == Table::Spots) && !rows.is_empty());
    }
}
