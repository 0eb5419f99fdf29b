//! The cluster's queryable state in PostgreSQL: the resource rows of every partition, each
//! partition's position in the input log, and the cluster's fixed settings.
//!
//! - `spot_cluster (key, value)`: `partitions`, written by the first node; a node with
//!   another count refuses to start ([`PgState::migrate`]).
//! - `spot_partitions (partition, applied_seq, time_last, id_last, owner)`: the last
//!   `SPOT_IN` stream sequence whose effects the rows hold, the time of the last entry
//!   applied, the id generator's state and who committed it.
//! - `spot_rows (tbl, id, partition, doc)`: the rows of the live state, as the embedded
//!   store's checkpoints hold them (one JSON document each, [`crate::domain::RowDoc`]).
//!
//! A stage commits a partition's changed rows and its new position in **one transaction**
//! that moves the position only from the value the stage loaded or last committed
//! ([`PgState::commit`]): a second owner of the same partition (one that lost its lease
//! without noticing) finds the position moved and is told [`PgError::Fenced`], so every
//! input message takes effect exactly once.

use tokio_postgres::{Client, NoTls};

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
    time_committed timestamptz
);
CREATE TABLE IF NOT EXISTS spot_rows (
    tbl text NOT NULL,
    id text NOT NULL,
    partition integer NOT NULL,
    doc text NOT NULL,
    PRIMARY KEY (tbl, id)
);
CREATE INDEX IF NOT EXISTS spot_rows_partition ON spot_rows (partition);
";

/// The sum of the partitions' positions: it moves with every commit.
const POSITIONS: &str = "SELECT coalesce(sum(applied_seq), 0)::bigint FROM spot_partitions";

/// The advisory lock key that serialises schema creation across nodes starting together
/// (`CREATE TABLE IF NOT EXISTS` alone races on the catalog).
const SCHEMA_LOCK: i64 = 0x5350_4f54; // "SPOT"

impl PgState {
    /// Connects (the connection is driven by a task on the current runtime).
    pub async fn connect(url: &str) -> Result<PgState, PgError> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(db("connect"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("postgres connection ended: {e}");
            }
        });
        Ok(PgState { client })
    }

    /// Creates the tables if missing and fixes the partition count on first start; refuses
    /// a count other than the cluster's.
    pub async fn migrate(&mut self, partitions: u32) -> Result<(), PgError> {
        let tx = self.client.transaction().await.map_err(db("begin"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(db("lock the schema"))?;
        tx.batch_execute(SCHEMA)
            .await
            .map_err(db("create the tables"))?;
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
        tx.execute(
            "INSERT INTO spot_partitions (partition) SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
            &[&(partitions as i32)],
        )
        .await
        .map_err(db("create the partitions"))?;
        tx.commit().await.map_err(db("commit the schema"))
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
                "SELECT tbl, id, doc FROM spot_rows WHERE partition = $1",
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

    /// Every row of every partition (an API node's read replica), or those of table `only`,
    /// and the sum of the partitions' positions it corresponds to.
    pub async fn all_rows(
        &mut self,
        only: Option<Table>,
    ) -> Result<(u64, Vec<(Table, Vec<(String, String)>)>), PgError> {
        // One snapshot: the position and the rows agree.
        let tx = self
            .client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db("begin a read"))?;
        let version = tx
            .query_one(POSITIONS, &[])
            .await
            .map_err(db("read the positions"))?
            .get::<_, i64>(0) as u64;
        let rows = match only {
            None => tx.query("SELECT tbl, id, doc FROM spot_rows", &[]).await,
            Some(table) => {
                tx.query(
                    "SELECT tbl, id, doc FROM spot_rows WHERE tbl = $1",
                    &[&table.name()],
                )
                .await
            }
        }
        .map_err(db("read the rows"))?;
        tx.commit().await.map_err(db("end a read"))?;
        Ok((
            version,
            by_table(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2)))),
        ))
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
                "DELETE FROM spot_rows r USING unnest($1::text[], $2::text[]) AS d(tbl, id) \
                 WHERE r.tbl = d.tbl AND r.id = d.id",
                &[&tables, &ids],
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
                "INSERT INTO spot_rows (tbl, id, partition, doc) \
                 SELECT tbl, id, $4, doc FROM unnest($1::text[], $2::text[], $3::text[]) AS u(tbl, id, doc) \
                 ON CONFLICT (tbl, id) DO UPDATE SET doc = excluded.doc, partition = excluded.partition",
                &[&tables, &ids, &docs, &(p as i32)],
            )
            .await
            .map_err(db("write rows"))?;
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
