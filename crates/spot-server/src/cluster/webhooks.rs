//! Webhook subscriptions on a cluster: one `subscriptions` resource for every node, kept in
//! PostgreSQL (`spot_webhooks`, [`SharedSubscriptions`]), and each subscription delivered
//! by exactly one node at a time: the holder of its lease ([`lease::webhook_key`]).
//!
//! The queue is `SPOT_OUT` itself. A subscription keeps a position, `delivered_through`:
//! every event up to it that its filter matches was delivered or given up. Every node runs
//! [`deliver`], which starts a worker per subscription with a target; the worker that
//! takes the lease follows the derived events after the position (a [`Follower`] over the
//! node's hub and `SPOT_OUT`), POSTs each matching one in order through the push crate's
//! [`Sender`], and records the outcome with the new position in one `UPDATE`, guarded by
//! the position it read: a holder that lost its lease without noticing moves nothing.
//!
//! When the holder dies, its lease expires and another node's worker takes it (within the
//! lease TTL and [`TAKE_EVERY`]) and goes on after the last recorded position: an event
//! whose POST was under way may reach its target twice, with the same `Idempotency-Key`;
//! none is skipped, as long as `SPOT_OUT` holds it (24 hours).
//!
//! How it differs from the embedded server's webhooks (`docs/cluster.md`): with no queue of
//! its own there is none to bound or count (`queued_count`, `queued_bytes` and
//! `not_queued_count` stay 0, `state` is `active`); a retried event's hold time
//! (`database_hold_time_h`) counts from its first attempt by its current holder.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Store as Kv;
use async_nats::jetstream::Context as JetStream;
use spot_protocol::lograte::LogRate;
use spot_protocol::Timestamp;
use spot_push::webhook::{
    log_failure, retry_delay, ApiError, Definition, Sender, SubscriptionBook, SubscriptionInput,
    SubscriptionState, WebhookConfig, WebhookSubscription, FAILURE_LOG_EVERY,
};
use spot_push::{BoxFuture, EventLog, Follower, Hub, Published, TopicFilter};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::lease::{self, Lease, TAKE_EVERY};
use super::{events, pg};
use crate::clock::now_ms;
use crate::shutdown::Phase;

/// How often each node looks for new, changed and deleted subscriptions.
pub const SCAN_EVERY: Duration = Duration::from_millis(500);

/// The columns of a subscription as the API shows it.
const SELECT: &str = "SELECT id, topic_filter, description, target_url, target_retry, \
     database_hold_time_h, secret IS NOT NULL, time_created, time_updated, delivered_count, \
     failed_count, last_error, custom FROM spot_webhooks";

/// The subscriptions resource in PostgreSQL, for every node's REST API.
pub struct SharedSubscriptions {
    postgres: String,
    js: JetStream,
    max_subscriptions: usize,
    /// The connection, made at first use and again after it broke.
    client: Mutex<Option<Arc<Client>>>,
}

fn failed(what: &str) -> impl FnOnce(tokio_postgres::Error) -> ApiError + '_ {
    move |e| ApiError::Failed(format!("subscriptions in PostgreSQL: {what}: {e}"))
}

impl SharedSubscriptions {
    /// Over the cluster's PostgreSQL at `postgres` and its `SPOT_OUT` (`js`).
    pub fn new(postgres: String, js: JetStream, max_subscriptions: usize) -> Self {
        SharedSubscriptions {
            postgres,
            js,
            max_subscriptions,
            client: Mutex::new(None),
        }
    }

    async fn client(&self) -> Result<Arc<Client>, ApiError> {
        let mut held = self.client.lock().await;
        if let Some(client) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = Arc::new(
            pg::connect(&self.postgres)
                .await
                .map_err(|e| ApiError::Failed(e.to_string()))?,
        );
        *held = Some(client.clone());
        Ok(client)
    }

    /// The id of the last derived event `SPOT_OUT` holds: a subscription made (or given a
    /// target) now delivers the events after it.
    async fn end_of_events(&self) -> Result<i64, ApiError> {
        let last = events::last_event_id(&self.js)
            .await
            .map_err(ApiError::Failed)?;
        Ok(last as i64)
    }

    async fn read(&self, id: i64) -> Result<Option<WebhookSubscription>, ApiError> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("{SELECT} WHERE id = $1"), &[&id])
            .await
            .map_err(failed("read"))?;
        Ok(row.as_ref().map(shown))
    }

    async fn definition(&self, id: i64) -> Result<Option<Definition>, ApiError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT topic_filter, description, target_url, target_retry, \
                 database_hold_time_h, secret, custom FROM spot_webhooks WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(failed("read"))?;
        Ok(row.map(|r| Definition {
            topic_filter: r.get(0),
            description: r.get(1),
            target_url: r.get(2),
            target_retry: r.get(3),
            database_hold_time_h: r.get(4),
            secret: r.get(5),
            custom: r.get(6),
        }))
    }

    async fn insert(&self, input: SubscriptionInput) -> Result<WebhookSubscription, ApiError> {
        let d = Definition::new(input)?;
        let start = self.end_of_events().await?;
        let client = self.client().await?;
        let now = now_ms();
        let max = self.max_subscriptions as i64;
        let row = client
            .query_opt(
                "INSERT INTO spot_webhooks (topic_filter, description, target_url, \
                 target_retry, database_hold_time_h, secret, custom, time_created, \
                 time_updated, delivered_through) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $8, $9 \
                 WHERE (SELECT count(*) FROM spot_webhooks) < $10 RETURNING id",
                &[
                    &d.topic_filter,
                    &d.description,
                    &d.target_url,
                    &d.target_retry,
                    &d.database_hold_time_h,
                    &d.secret,
                    &d.custom,
                    &now,
                    &start,
                    &max,
                ],
            )
            .await
            .map_err(failed("create"))?;
        let Some(row) = row else {
            return Err(ApiError::Conflict(format!(
                "the maximum of {} subscriptions is reached",
                self.max_subscriptions
            )));
        };
        let id: i64 = row.get(0);
        self.read(id)
            .await?
            .ok_or_else(|| ApiError::Failed(format!("subscription {id} gone once made")))
    }

    async fn change(
        &self,
        id: i64,
        input: SubscriptionInput,
    ) -> Result<Option<WebhookSubscription>, ApiError> {
        let Some(current) = self.definition(id).await? else {
            return Ok(None);
        };
        let had_target = !current.target_url.is_empty();
        let d = current.apply(input)?;
        // A subscription given a target delivers the events from now on (as one made now).
        let start = match (had_target, d.target_url.is_empty()) {
            (false, false) => Some(self.end_of_events().await?),
            _ => None,
        };
        let client = self.client().await?;
        client
            .execute(
                "UPDATE spot_webhooks SET topic_filter = $2, description = $3, \
                 target_url = $4, target_retry = $5, database_hold_time_h = $6, secret = $7, \
                 custom = $8, time_updated = greatest($9, time_updated + 1), \
                 delivered_through = coalesce($10, delivered_through) WHERE id = $1",
                &[
                    &id,
                    &d.topic_filter,
                    &d.description,
                    &d.target_url,
                    &d.target_retry,
                    &d.database_hold_time_h,
                    &d.secret,
                    &d.custom,
                    &now_ms(),
                    &start,
                ],
            )
            .await
            .map_err(failed("update"))?;
        self.read(id).await
    }

    async fn remove(&self, id: i64) -> Result<bool, ApiError> {
        let client = self.client().await?;
        let n = client
            .execute("DELETE FROM spot_webhooks WHERE id = $1", &[&id])
            .await
            .map_err(failed("delete"))?;
        Ok(n > 0)
    }

    async fn page(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<WebhookSubscription>, ApiError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("{SELECT} WHERE id > $1 ORDER BY id LIMIT $2"),
                &[&after_id, &(limit as i64)],
            )
            .await
            .map_err(failed("list"))?;
        Ok(rows.iter().map(shown).collect())
    }
}

/// A row of [`SELECT`] as the API shows it.
fn shown(r: &tokio_postgres::Row) -> WebhookSubscription {
    WebhookSubscription {
        id: r.get(0),
        topic_filter: r.get(1),
        description: r.get(2),
        target_url: Some(r.get::<_, String>(3)).filter(|u| !u.is_empty()),
        target_retry: r.get(4),
        database_hold_time_h: r.get(5),
        has_secret: r.get(6),
        time_created: Timestamp::from_millis(r.get(7)).to_string(),
        time_updated: Timestamp::from_millis(r.get(8)).to_string(),
        delivered_count: r.get(9),
        failed_count: r.get(10),
        last_error: r.get(11),
        // The queue is `SPOT_OUT`: nothing of this node's to count or bound.
        queued_count: 0,
        queued_bytes: 0,
        state: SubscriptionState::Active,
        not_queued_count: 0,
        verify_target_certificate: true,
        populate_events: false,
        custom: r
            .get::<_, Option<String>>(12)
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default(),
        url: None,
        events_url: None,
    }
}

impl SubscriptionBook for SharedSubscriptions {
    fn list(
        &self,
        after_id: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<WebhookSubscription>, ApiError>> {
        Box::pin(self.page(after_id, limit))
    }

    fn get(&self, id: i64) -> BoxFuture<'_, Result<Option<WebhookSubscription>, ApiError>> {
        Box::pin(self.read(id))
    }

    fn create(
        &self,
        input: SubscriptionInput,
    ) -> BoxFuture<'_, Result<WebhookSubscription, ApiError>> {
        Box::pin(self.insert(input))
    }

    fn update(
        &self,
        id: i64,
        input: SubscriptionInput,
    ) -> BoxFuture<'_, Result<Option<WebhookSubscription>, ApiError>> {
        Box::pin(self.change(id, input))
    }

    fn delete(&self, id: i64) -> BoxFuture<'_, Result<bool, ApiError>> {
        Box::pin(self.remove(id))
    }
}

/// What a node's delivery workers share.
pub struct Delivery {
    /// The cluster's PostgreSQL.
    pub postgres: String,
    /// The lease bucket.
    pub leases: Kv,
    /// The lease TTL.
    pub lease_ttl: Duration,
    /// This node's name (the lease holder's).
    pub node: String,
    /// This node's hub, fed from `SPOT_OUT`.
    pub hub: Hub,
    /// `SPOT_OUT` as the events log.
    pub log: Arc<dyn EventLog>,
    /// Timeouts, retries, TLS.
    pub config: WebhookConfig,
    /// POSTs the events.
    pub sender: Sender,
}

/// A running worker: its subscription's `time_updated` as last seen (a change tells it to
/// read the definition again; dropping it ends the worker).
struct Worker {
    updated: watch::Sender<i64>,
    task: JoinHandle<()>,
}

/// Runs this node's part of the cluster's webhook delivery until the node stops: every
/// [`SCAN_EVERY`], a worker for each subscription with a target, told of its changes, and
/// ended when it is deleted or has no target any more.
pub async fn deliver(delivery: Delivery, mut phase: watch::Receiver<Phase>) {
    let delivery = Arc::new(delivery);
    let mut client: Option<Client> = None;
    let mut workers: HashMap<i64, Worker> = HashMap::new();
    loop {
        match scan(&delivery.postgres, &mut client).await {
            Ok(targeted) => {
                workers.retain(|id, w| targeted.contains_key(id) && !w.task.is_finished());
                for (id, updated) in targeted {
                    match workers.get(&id) {
                        Some(w) => {
                            w.updated.send_if_modified(|seen| {
                                std::mem::replace(seen, updated) != updated
                            });
                        }
                        None => {
                            let (tx, rx) = watch::channel(updated);
                            let task = tokio::spawn(work(delivery.clone(), id, rx, phase.clone()));
                            workers.insert(id, Worker { updated: tx, task });
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!("webhooks: cannot read the subscriptions: {e}");
                client = None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SCAN_EVERY) => {}
            _ = phase.changed() => {
                if *phase.borrow() != Phase::Running {
                    return;
                }
            }
        }
    }
}

/// The subscriptions with a target: id → `time_updated`.
async fn scan(postgres: &str, client: &mut Option<Client>) -> Result<HashMap<i64, i64>, String> {
    if client.as_ref().is_none_or(Client::is_closed) {
        *client = Some(pg::connect(postgres).await.map_err(|e| e.to_string())?);
    }
    let Some(c) = client.as_ref() else {
        return Err("no connection".into());
    };
    let rows = c
        .query(
            "SELECT id, time_updated FROM spot_webhooks WHERE target_url <> ''",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Why a holder stopped delivering.
enum Stop {
    /// The subscription was deleted or lost its target (the worker ends).
    Gone,
    /// Something failed; the worker gives the lease back and tries again.
    Failed(String),
}

/// One subscription's worker: takes its lease whenever free, and delivers while it holds
/// it, until the subscription is gone or the node stops.
async fn work(
    delivery: Arc<Delivery>,
    id: i64,
    mut updated: watch::Receiver<i64>,
    mut phase: watch::Receiver<Phase>,
) {
    let key = lease::webhook_key(id);
    loop {
        if *phase.borrow() != Phase::Running {
            return;
        }
        match Lease::try_take(
            &delivery.leases,
            key.clone(),
            &delivery.node,
            delivery.lease_ttl,
        )
        .await
        {
            Ok(Some(mut lease)) => {
                tracing::info!(
                    subscription = id,
                    node = delivery.node,
                    "delivering the subscription"
                );
                let stop = tokio::select! {
                    stop = hold(&delivery, id, &mut updated) => stop,
                    lost = keep(&delivery, &mut lease) => Stop::Failed(lost),
                    _ = phase.changed() => Stop::Failed("the node stops".into()),
                };
                lease.release(&delivery.leases).await;
                match stop {
                    Stop::Gone => return,
                    Stop::Failed(why) => {
                        tracing::warn!(subscription = id, "webhooks: stopped delivering: {why}")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("webhooks: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(TAKE_EVERY) => {}
            changed = updated.changed() => {
                if changed.is_err() {
                    return; // deleted, or no target any more
                }
            }
            _ = phase.changed() => {}
        }
    }
}

/// Renews `lease` every third of its TTL; returns why it was lost.
async fn keep(delivery: &Delivery, lease: &mut Lease) -> String {
    let mut renew = tokio::time::interval(delivery.lease_ttl / 3);
    renew.tick().await;
    loop {
        renew.tick().await;
        if let Err(e) = lease
            .renew(&delivery.leases, &delivery.node, delivery.lease_ttl)
            .await
        {
            return e.to_string();
        }
        if !lease.valid() {
            return "the lease ran out before it was renewed".into();
        }
    }
}

/// What the holder delivers for a subscription.
struct Target {
    url: String,
    secret: Option<String>,
    retry: bool,
    hold_ms: i64,
    filter: TopicFilter,
}

/// Delivers subscription `id` while this node holds its lease: from its recorded position,
/// each matching event in order; reads the definition again when it changes.
async fn hold(delivery: &Delivery, id: i64, updated: &mut watch::Receiver<i64>) -> Stop {
    let mut client: Option<Client> = None;
    let mut failure_log = LogRate::every(FAILURE_LOG_EVERY);
    loop {
        updated.borrow_and_update();
        let (target, mut position) = match read_target(delivery, &mut client, id).await {
            Ok(Some(read)) => read,
            Ok(None) => return Stop::Gone,
            Err(e) => return Stop::Failed(e),
        };
        let sub = match delivery
            .hub
            .subscribe("webhooks", vec![target.filter.clone()])
        {
            Ok(sub) => sub,
            Err(e) => return Stop::Failed(e.to_string()),
        };
        // Deliveries are keyed by event id: raw spot events (no id) are not sent.
        sub.set_receive_raw(false);
        let mut follower = Follower::new(sub, delivery.log.clone(), Some(position));
        loop {
            let next = tokio::select! {
                next = follower.next() => next,
                changed = updated.changed() => {
                    if changed.is_err() {
                        return Stop::Gone;
                    }
                    break; // read the definition again
                }
                () = tokio::time::sleep(delivery.config.cursor_checkpoint) => {
                    // Idle: move the position past the events nobody wanted, so a takeover
                    // does not read them again (see `Follower::caught_up`).
                    let upto = delivery.hub.fanned_out_id();
                    if upto > position && follower.caught_up() {
                        follower.advance_to(upto);
                        let Some(c) = client.as_ref() else { break };
                        if let Err(e) = record(c, id, position, upto, Outcome::Passed).await {
                            return Stop::Failed(e);
                        }
                        position = upto;
                    }
                    continue;
                }
            };
            let event = match next {
                Ok(Some(event)) => event,
                Ok(None) => return Stop::Failed("the hub is gone".into()),
                Err(e) => return Stop::Failed(e.to_string()),
            };
            let Some(c) = client.as_ref() else { break };
            match send(
                delivery,
                c,
                id,
                &target,
                position,
                &event,
                updated,
                &mut failure_log,
            )
            .await
            {
                Ok(Some(to)) => position = to,
                Ok(None) => break, // changed while retrying: read it again
                Err(stop) => return stop,
            }
        }
    }
}

/// The subscription's target and recorded position (`None`: gone, or no target).
async fn read_target(
    delivery: &Delivery,
    client: &mut Option<Client>,
    id: i64,
) -> Result<Option<(Target, u64)>, String> {
    if client.as_ref().is_none_or(Client::is_closed) {
        *client = Some(
            pg::connect(&delivery.postgres)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let Some(c) = client.as_ref() else {
        return Err("no connection".into());
    };
    let row = c
        .query_opt(
            "SELECT target_url, secret, target_retry, database_hold_time_h, topic_filter, \
             delivered_through FROM spot_webhooks WHERE id = $1 AND target_url <> ''",
            &[&id],
        )
        .await
        .map_err(|e| e.to_string())?;
    let Some(row) = row else {
        return Ok(None);
    };
    let filter: String = row.get(4);
    let filter = TopicFilter::new(&filter)
        .map_err(|e| format!("its topic filter {filter:?} is not one: {e}"))?;
    let target = Target {
        url: row.get(0),
        secret: row.get(1),
        retry: row.get(2),
        hold_ms: (row.get::<_, f64>(3) * 3_600_000.0) as i64,
        filter,
    };
    Ok(Some((target, row.get::<_, i64>(5) as u64)))
}

/// What happened to an event, as recorded.
enum Outcome<'a> {
    /// The target accepted it.
    Delivered,
    /// Given up (no retry, or past the hold time).
    GivenUp(&'a str),
    /// Nothing was delivered: the position moves past events nobody wanted.
    Passed,
}

/// Moves subscription `id`'s position from `from` to `to` with `outcome` counted; an error
/// when the position is not `from` any more (another node delivers it now) or the row is
/// gone.
async fn record(
    c: &Client,
    id: i64,
    from: u64,
    to: u64,
    outcome: Outcome<'_>,
) -> Result<(), String> {
    let (delivered, failed, error): (i64, i64, Option<&str>) = match outcome {
        Outcome::Delivered => (1, 0, None),
        Outcome::GivenUp(error) => (0, 1, Some(error)),
        Outcome::Passed => (0, 0, None),
    };
    let n = c
        .execute(
            "UPDATE spot_webhooks SET delivered_through = $3, \
             delivered_count = delivered_count + $4, failed_count = failed_count + $5, \
             last_error = coalesce($6, last_error) WHERE id = $1 AND delivered_through = $2",
            &[
                &id,
                &(from as i64),
                &(to as i64),
                &delivered,
                &failed,
                &error,
            ],
        )
        .await
        .map_err(|e| format!("recording the delivery: {e}"))?;
    if n == 1 {
        Ok(())
    } else {
        Err(format!(
            "its position is no longer {from}: deleted, or delivered by another node"
        ))
    }
}

/// Delivers `event` (retrying as the subscription says): the new position, `None` when the
/// subscription changed meanwhile (not recorded: read it again and start over).
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn send(
    delivery: &Delivery,
    c: &Client,
    id: i64,
    target: &Target,
    position: u64,
    event: &Published,
    updated: &mut watch::Receiver<i64>,
    failure_log: &mut LogRate,
) -> Result<Option<u64>, Stop> {
    let first = now_ms();
    let mut attempts: i64 = 0;
    loop {
        let sent = delivery
            .sender
            .send(
                &target.url,
                target.secret.as_deref(),
                event.id(),
                event.envelope_json(),
            )
            .await;
        let error = match sent {
            Ok(()) => {
                if attempts > 0 {
                    let more = failure_log.reset();
                    tracing::info!(
                        subscription = id,
                        more_failures_not_logged = more,
                        "webhooks: delivering again"
                    );
                }
                record(c, id, position, event.id(), Outcome::Delivered)
                    .await
                    .map_err(Stop::Failed)?;
                return Ok(Some(event.id()));
            }
            Err(error) => error,
        };
        let expired = now_ms() - first > target.hold_ms;
        let error = if expired {
            format!(
                "event {} given up: not delivered within database_hold_time_h",
                event.id()
            )
        } else {
            error
        };
        let retried = target.retry && !expired;
        log_failure(failure_log, id, &error, retried);
        if !retried {
            record(c, id, position, event.id(), Outcome::GivenUp(&error))
                .await
                .map_err(Stop::Failed)?;
            return Ok(Some(event.id()));
        }
        // Counted now (the subscription shows it failing), the position stays.
        let n = c
            .execute(
                "UPDATE spot_webhooks SET failed_count = failed_count + 1, last_error = $3 \
                 WHERE id = $1 AND delivered_through = $2",
                &[&id, &(position as i64), &error],
            )
            .await
            .map_err(|e| Stop::Failed(format!("recording the failure: {e}")))?;
        if n != 1 {
            return Err(Stop::Failed(format!(
                "its position is no longer {position}: deleted, or delivered by another node"
            )));
        }
        let wait = retry_delay(&delivery.config, attempts);
        attempts += 1;
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // A PUT (a new target, say) is tried at once.
            changed = updated.changed() => {
                return if changed.is_err() { Err(Stop::Gone) } else { Ok(None) };
            }
        }
    }
}
