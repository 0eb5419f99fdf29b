//! The MQTT outlet on a cluster: one node at a time publishes the derived events to the
//! broker, the holder of the lease [`MQTT_KEY`] among the nodes given `--mqtt`, from a
//! position kept in PostgreSQL (`spot_cluster`, key `mqtt_position`): every event up to it
//! was acknowledged by the broker (QoS 1/2) or written to it (QoS 0).
//!
//! The holder runs the push crate's outlet ([`MqttOutlet::spawn_after`]) from the stored
//! position and, with each lease renewal, stores how far the outlet has got, guarded by
//! the value it stored last (a holder that lost its lease without noticing stores
//! nothing); it stores it once more when it stops. A node that takes over publishes from
//! the stored position: the events published since the last store reach the broker twice
//! (MQTT at QoS 1 is at least once anyway); none is skipped while `SPOT_OUT` holds it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Store as Kv;
use async_nats::jetstream::Context as JetStream;
use spot_push::{EventLog, Hub, MqttConfig, MqttOutlet};
use tokio::sync::watch;
use tokio_postgres::Client;

use super::events;
use super::lease::{Lease, MQTT_KEY, TAKE_EVERY};
use super::pg;
use crate::outlets::MqttSlot;
use crate::shutdown::Phase;

/// What this node's MQTT task needs.
pub struct MqttSetup {
    /// The cluster's PostgreSQL.
    pub postgres: String,
    /// `SPOT_OUT` (where the cluster's first outlet starts: its end).
    pub js: JetStream,
    /// The lease bucket.
    pub leases: Kv,
    /// The lease TTL.
    pub lease_ttl: Duration,
    /// This node's name.
    pub node: String,
    /// This node's hub, fed from `SPOT_OUT`.
    pub hub: Hub,
    /// `SPOT_OUT` as the events log.
    pub log: Arc<dyn EventLog>,
    /// The broker and what to publish.
    pub config: MqttConfig,
    /// Where the outlet runs while this node holds the lease (its metrics are read there).
    pub slot: MqttSlot,
}

fn lock(slot: &MqttSlot) -> std::sync::MutexGuard<'_, Option<MqttOutlet>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the MQTT lease whenever it is free and publishes while holding it, until the node
/// stops.
pub async fn run(setup: MqttSetup, mut phase: watch::Receiver<Phase>) {
    loop {
        if *phase.borrow() != Phase::Running {
            return;
        }
        match Lease::try_take(&setup.leases, MQTT_KEY.into(), &setup.node, setup.lease_ttl).await {
            Ok(Some(mut lease)) => {
                tracing::info!(node = setup.node, "publishing to the MQTT broker");
                let published = publish(&setup, &mut lease, &mut phase).await;
                lease.release(&setup.leases).await;
                if let Err(why) = published {
                    tracing::warn!("mqtt outlet: stopped publishing: {why}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("mqtt outlet: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(TAKE_EVERY) => {}
            _ = phase.changed() => {}
        }
    }
}

/// Publishes while `lease` holds and the node runs (`Ok`), or until something fails.
async fn publish(
    setup: &MqttSetup,
    lease: &mut Lease,
    phase: &mut watch::Receiver<Phase>,
) -> Result<(), String> {
    let client = pg::connect(&setup.postgres)
        .await
        .map_err(|e| e.to_string())?;
    let end = events::last_event_id(&setup.js).await?;
    let mut stored = position(&client, end).await?;
    let outlet =
        MqttOutlet::spawn_after(setup.config.clone(), &setup.hub, setup.log.clone(), stored)
            .map_err(|e| e.to_string())?;
    *lock(&setup.slot) = Some(outlet);
    let mut renew = tokio::time::interval(setup.lease_ttl / 3);
    renew.tick().await;
    let held = loop {
        tokio::select! {
            _ = renew.tick() => {
                if let Err(e) = lease.renew(&setup.leases, &setup.node, setup.lease_ttl).await {
                    break Err(e.to_string());
                }
                if let Err(e) = store(&client, &setup.slot, &mut stored).await {
                    break Err(e);
                }
            }
            _ = phase.changed() => {
                if *phase.borrow() != Phase::Running {
                    break Ok(());
                }
            }
        }
    };
    let last = lock(&setup.slot).take().map(|outlet| {
        outlet.shutdown();
        outlet.settled()
    });
    if let Some(settled) = last.filter(|&s| s > stored) {
        save(&client, stored, settled).await?;
    }
    held
}

/// The stored position; at the cluster's first outlet, `end` (stored now).
async fn position(client: &Client, end: u64) -> Result<u64, String> {
    client
        .execute(
            "INSERT INTO spot_cluster (key, value) VALUES ('mqtt_position', $1) \
             ON CONFLICT DO NOTHING",
            &[&end.to_string()],
        )
        .await
        .map_err(|e| format!("postgres: store the first MQTT position: {e}"))?;
    let row = client
        .query_one(
            "SELECT value FROM spot_cluster WHERE key = 'mqtt_position'",
            &[],
        )
        .await
        .map_err(|e| format!("postgres: read the MQTT position: {e}"))?;
    let text: String = row.get(0);
    text.parse()
        .map_err(|_| format!("the stored MQTT position {text:?} is not a number"))
}

/// Stores how far the running outlet has got, if further than `stored`.
async fn store(client: &Client, slot: &MqttSlot, stored: &mut u64) -> Result<(), String> {
    let Some(settled) = lock(slot).as_ref().map(MqttOutlet::settled) else {
        return Ok(());
    };
    if settled > *stored {
        save(client, *stored, settled).await?;
        *stored = settled;
    }
    Ok(())
}

/// Moves the stored position from `from` to `to`; an error when it is not `from` any more.
async fn save(client: &Client, from: u64, to: u64) -> Result<(), String> {
    let n = client
        .execute(
            "UPDATE spot_cluster SET value = $2 WHERE key = 'mqtt_position' AND value = $1",
            &[&from.to_string(), &to.to_string()],
        )
        .await
        .map_err(|e| format!("postgres: store the MQTT position: {e}"))?;
    if n == 1 {
        Ok(())
    } else {
        Err(format!(
            "the stored MQTT position is no longer {from}: another node publishes now"
        ))
    }
}
