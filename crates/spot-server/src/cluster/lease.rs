//! Ownership of what one node at a time may run: a lease per partition ([`partition_key`])
//! and per webhook subscription ([`webhook_key`]) in the JetStream KV bucket `spot_leases`,
//! whose `max_age` is the lease's time to live. The bucket also says which stage nodes are
//! up and which partitions they prefer ([`Presence`]). A node takes a free lease by creating its
//! key (create-if-absent: one winner), keeps it by updating the key at the revision it
//! holds (every third of the TTL), and gives it back by deleting it at that revision. A
//! dead owner's key expires after the TTL and the next node to try takes the partition.
//!
//! The lease alone is not the guard of exactly-once: an owner that stalls past its TTL may
//! still be running. Its commits are refused by PostgreSQL instead (the partition's
//! position moved, [`super::pg::PgError::Fenced`]).

use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Store};

use async_nats::jetstream::Context as JetStream;

/// The bucket.
pub const BUCKET: &str = "spot_leases";

/// How often a node tries to take a lease another node holds.
pub const TAKE_EVERY: Duration = Duration::from_millis(500);

/// The key of the MQTT outlet's lease ([`super::mqtt`]).
pub const MQTT_KEY: &str = "mqtt";

/// A lease failure (the caller logs it and tries again later).
#[derive(Debug, thiserror::Error)]
#[error("lease {key}: {what}: {reason}")]
pub struct LeaseError {
    /// The lease's key.
    pub key: String,
    /// What was being done.
    pub what: &'static str,
    /// The error.
    pub reason: String,
}

/// Opens (creating it when missing, through `setup`'s short API timeout) the lease bucket
/// with `ttl` as its `max_age`.
pub async fn bucket(
    js: &JetStream,
    setup: &JetStream,
    ttl: Duration,
    replicas: usize,
) -> Result<Store, String> {
    if let Ok(store) = js.get_key_value(BUCKET).await {
        return Ok(store);
    }
    // The bucket's stream, made as the client's `create_key_value` makes it. That call
    // first asks for the account's limits, whose answer from Debian's nats-server 2.9 the
    // client cannot parse; the stream itself is the same.
    let config = async_nats::jetstream::stream::Config {
        name: format!("KV_{BUCKET}"),
        description: Some("spot serve: which node owns which partition".into()),
        subjects: vec![format!("$KV.{BUCKET}.>")],
        max_messages_per_subject: 1,
        max_age: ttl,
        duplicate_window: ttl.min(Duration::from_secs(120)),
        allow_rollup: true,
        deny_delete: true,
        // Reads through the stream API: a read by the direct API (`DIRECT.GET.<stream>.<key>`)
        // of a taken lease sometimes went unanswered until the client's 10 s timeout on
        // Debian's nats-server 2.9, and a node waited that long before trying again.
        allow_direct: false,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    };
    if let Err(e) = setup.create_stream(config).await {
        // Another node may have created it meanwhile: opening it says.
        return js
            .get_key_value(BUCKET)
            .await
            .map_err(|_| format!("cannot create the lease bucket {BUCKET}: {e}"));
    }
    js.get_key_value(BUCKET)
        .await
        .map_err(|e| format!("cannot open the lease bucket {BUCKET}: {e}"))
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    key: String,
    revision: u64,
    /// Held until this instant unless renewed (the TTL from the last write, less a margin).
    valid_until: Instant,
}

/// The key of partition `p`'s lease.
pub fn partition_key(p: u32) -> String {
    format!("p{p}")
}

/// The key of webhook subscription `id`'s lease ([`super::webhooks`]).
pub fn webhook_key(id: i64) -> String {
    format!("w{id}")
}

impl Lease {
    /// Takes the lease `key` ([`partition_key`], [`webhook_key`]) for `owner` if nobody
    /// holds it.
    pub async fn try_take(
        store: &Store,
        key: String,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        let started = Instant::now();
        // Bounded: a try that hangs delays a takeover by as long (see `bucket`).
        let within = (ttl / 3).max(Duration::from_secs(1));
        let created = tokio::time::timeout(within, store.create(&key, owner.to_string().into()))
            .await
            .map_err(|_| LeaseError {
                key: key.clone(),
                what: "take",
                reason: format!("no answer within {} ms", within.as_millis()),
            })?;
        match created {
            Ok(revision) => Ok(Some(Lease {
                key,
                revision,
                valid_until: started + margin(ttl),
            })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(LeaseError {
                key,
                what: "take",
                reason: e.to_string(),
            }),
        }
    }

    /// Keeps the lease for another TTL; an error means it is lost (expired and taken, or
    /// the bucket unreachable for longer than the lease lasts).
    pub async fn renew(
        &mut self,
        store: &Store,
        owner: &str,
        ttl: Duration,
    ) -> Result<(), LeaseError> {
        let started = Instant::now();
        match store
            .update(&self.key, owner.to_string().into(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                self.valid_until = started + margin(ttl);
                Ok(())
            }
            Err(e) => Err(LeaseError {
                key: self.key.clone(),
                what: "renew",
                reason: e.to_string(),
            }),
        }
    }

    /// Whether the lease still holds by this node's clock.
    pub fn valid(&self) -> bool {
        Instant::now() < self.valid_until
    }

    /// Gives the lease back (a clean stop: the next owner need not wait for the TTL).
    pub async fn release(&self, store: &Store) {
        if let Err(e) = store
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
        {
            tracing::warn!(lease = self.key, "giving the lease back failed: {e}");
        }
    }
}

/// How long a lease is trusted after a write: its TTL less a fifth (clock drift between
/// this node and the NATS servers, and the write's own delay).
fn margin(ttl: Duration) -> Duration {
    ttl - ttl / 5
}

/// A stage node's entry in the lease bucket, rewritten every third of the TTL while it
/// runs (so it is gone a TTL after the node died): its name and the partitions it prefers
/// (`--prefer-partitions`; empty: every one). A node holding a partition it does not
/// prefer hands it back when a node that prefers it is up.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Presence {
    /// The node's name.
    pub node: String,
    /// The partitions it prefers.
    pub prefer: Vec<u32>,
}

impl Presence {
    /// The key of `node`'s entry: `n` and the name, each character outside a KV key's
    /// alphabet as `=` and its code in hex.
    fn key(node: &str) -> String {
        let mut key = String::from("n");
        for c in node.chars() {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                key.push(c);
            } else {
                key.push_str(&format!("={:x}=", c as u32));
            }
        }
        key
    }

    /// Writes this node's entry every third of `ttl` until the node stops, then deletes it.
    pub async fn advertise(
        self,
        store: Store,
        ttl: Duration,
        mut phase: tokio::sync::watch::Receiver<crate::shutdown::Phase>,
    ) {
        let key = Self::key(&self.node);
        let Ok(value) = serde_json::to_vec(&self) else {
            return;
        };
        let mut every = tokio::time::interval(ttl / 3);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    if let Err(e) = store.put(&key, value.clone().into()).await {
                        tracing::debug!("the node's presence is not written: {e}");
                    }
                }
                _ = phase.changed() => {
                    if *phase.borrow() != crate::shutdown::Phase::Running {
                        let _ = store.delete(&key).await;
                        return;
                    }
                }
            }
        }
    }

    /// A node other than `node` that is up and prefers partition `p`, if any (`None` too
    /// when the bucket cannot be read).
    pub async fn preferring(store: &Store, p: u32, node: &str) -> Option<String> {
        use futures_util::StreamExt;
        let mut keys = store.keys().await.ok()?;
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if !key.starts_with('n') {
                continue;
            }
            let Ok(Some(value)) = store.get(&key).await else {
                continue;
            };
            let Ok(presence) = serde_json::from_slice::<Presence>(&value) else {
                continue;
            };
            if presence.node != node && (presence.prefer.is_empty() || presence.prefer.contains(&p))
            {
                return Some(presence.node);
            }
        }
        None
    }
}
