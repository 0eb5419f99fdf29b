//! Webhooks: the `subscriptions` resource and the delivery of matching events to their
//! `target_url`.
//!
//! Raw spot events (`--publish-raw`) are not delivered to webhooks: they have no event id
//! (the idempotency key and the queue's order) and are not in the log the queue refills
//! from; applications take them over MQTT, WebSocket or SSE.
//!
//! Flow: hub → *dispatcher* (a [`Follower`] starting after the persistent cursor, so events
//! published while the server was down are read from the log) → matching against every
//! subscription (only events after its creation) → `push_deliveries` rows + cursor in one
//! transaction → one *worker* per subscription, delivering its rows in order:
//!
//! The dispatcher's hub subscription holds the subscriptions' filters (each once), so only
//! events some subscription may want are queued to it: with no subscription, publishing
//! costs it one empty check per event and nothing else. When idle for
//! [`WebhookConfig::cursor_checkpoint`], it moves the stored cursor past the events nobody
//! wanted ([`crate::Hub::fanned_out_id`]), so a restart does not re-read them from the log.
//!
//! Delivery:
//! `POST target_url` with the envelope `{"id","topic","payload"}` as JSON body and headers
//! `Idempotency-Key: <event id>`, `X-Spot-Event-Id`, `X-Spot-Topic` and, with a secret,
//! `X-Spot-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
//! `https://` targets are verified against the public web PKI roots plus, optionally, the
//! certificates of [`WebhookConfig::ca_cert`] (see [`crate::tls`]).
//! A 2xx counts as delivered. Otherwise, with `target_retry` the row stays and is retried
//! with jittered exponential backoff (the next rows wait: order per subscription), until
//! `database_hold_time_h` has passed since it was queued; without `target_retry` it is
//! given up at once. Every failed attempt counts in `failed_count` and sets `last_error`;
//! failures are logged at WARN, at most one line per subscription per [`FAILURE_LOG_EVERY`].
//!
//! Each subscription's queue is bounded ([`WebhookConfig::max_queued_events`],
//! [`WebhookConfig::max_queued_bytes`]): a target that stops answering costs at most that
//! much disk. Past it the subscription shows `"state": "overflowed"` and counts the matching
//! events it did not queue (`not_queued_count`); once its queue has drained (the target
//! accepts deliveries again, or they were given up), its worker reads the events after the
//! last one queued from the events log, page by page within the bound, and when it has
//! caught up with the dispatcher the subscription is `active` again. Events the log no
//! longer holds (older than its retention) are not delivered.

mod api;
pub use api::{router, ApiBase, ApiError};
mod client;
pub mod store;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use spot_protocol::backoff::Backoff;
use spot_protocol::lograte::LogRate;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::filter::TopicFilter;
use crate::follow::{BoxFuture, EventLog, Follower};
use crate::hub::{FilterHandle, Hub, HubError};
pub use store::{
    Backlog, Definition, Delivery, InputError, StoreError, SubscriptionInput, SubscriptionState,
    WebhookStore, WebhookSubscription, WriteError,
};

/// The `subscriptions` resource the REST API ([`router`]) serves: the embedded server's
/// [`Webhooks`] ([`Webhooks::book`]), or a cluster's subscriptions shared by its nodes.
pub trait SubscriptionBook: Send + Sync + 'static {
    /// Up to `limit` subscriptions with `id > after_id`, by id.
    fn list(
        &self,
        after_id: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<WebhookSubscription>, ApiError>>;
    /// One subscription.
    fn get(&self, id: i64) -> BoxFuture<'_, Result<Option<WebhookSubscription>, ApiError>>;
    /// Creates one; it receives the events stored after its creation.
    fn create(
        &self,
        input: SubscriptionInput,
    ) -> BoxFuture<'_, Result<WebhookSubscription, ApiError>>;
    /// Changes the given fields; `None` when there is no such subscription.
    fn update(
        &self,
        id: i64,
        input: SubscriptionInput,
    ) -> BoxFuture<'_, Result<Option<WebhookSubscription>, ApiError>>;
    /// Deletes one; says whether it existed.
    fn delete(&self, id: i64) -> BoxFuture<'_, Result<bool, ApiError>>;
}

/// POSTs one event to a subscription's target: the envelope as the body, with
/// `Idempotency-Key`, `X-Spot-Event-Id`, `X-Spot-Topic` and, with a secret,
/// `X-Spot-Signature-256` (see the module doc). What every delivering worker sends through,
/// the embedded server's and a cluster's.
#[derive(Clone)]
pub struct Sender {
    client: client::HttpClient,
}

impl Sender {
    /// A sender with `config`'s request timeout, verifying `https://` targets with the
    /// public roots and `config.ca_cert`.
    pub fn new(config: &WebhookConfig) -> Result<Self, crate::tls::TlsConfigError> {
        let tls = crate::tls::client_config(config.ca_cert.as_deref(), &[b"http/1.1"])?;
        Ok(Sender {
            client: client::HttpClient::new(tls, config.request_timeout, config.ca_cert.is_some()),
        })
    }

    /// POSTs event `event_id`'s `envelope` to `url`: `Ok` when the target answered 2xx,
    /// else what went wrong (naming the event and the target).
    pub async fn send(
        &self,
        url: &str,
        secret: Option<&str>,
        event_id: u64,
        envelope: &str,
    ) -> Result<(), String> {
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            ("idempotency-key", event_id.to_string()),
            ("x-spot-event-id", event_id.to_string()),
        ];
        if let Some(topic) = topic_of(envelope) {
            headers.push(("x-spot-topic", topic));
        }
        if let Some(secret) = secret {
            headers.push((
                "x-spot-signature-256",
                signature(secret, envelope.as_bytes()),
            ));
        }
        match self.client.post(url, &headers, envelope.to_owned()).await {
            Ok(status) if status.is_success() => Ok(()),
            Ok(status) => Err(format!("event {event_id}: {url}: HTTP {status}")),
            Err(e) => Err(format!("event {event_id}: {url}: {e}")),
        }
    }
}

/// Limits and timings of webhook delivery.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Timeout of one POST (a hanging target costs at most this per attempt).
    pub request_timeout: Duration,
    /// First retry delay; doubles per attempt. Each wait is drawn between half and all of
    /// the doubled delay ([`spot_protocol::backoff`]).
    pub retry_base: Duration,
    /// Longest retry delay (before jitter).
    pub retry_max: Duration,
    /// Subscriptions allowed (each has a worker task and is matched per event).
    pub max_subscriptions: usize,
    /// Largest request body accepted by the REST handlers.
    pub max_api_body_bytes: usize,
    /// Events matched and queued per transaction (also the page read from the events log
    /// when an overflowed subscription catches up).
    pub enqueue_batch: usize,
    /// Most deliveries waiting per subscription; past it the subscription overflows (see
    /// the module doc): bounds the disk a dead target costs.
    pub max_queued_events: u64,
    /// Most bytes of delivery bodies waiting per subscription; past it the subscription
    /// overflows.
    pub max_queued_bytes: u64,
    /// After this long without a matching event, the stored cursor moves past the events
    /// nobody wanted (one small write; bounds what a restart re-reads from the log).
    pub cursor_checkpoint: Duration,
    /// Also trust the certificates of this PEM file for `https://` targets (a private CA
    /// or a self-signed certificate); none by default (public roots only).
    pub ca_cert: Option<std::path::PathBuf>,
}

impl WebhookConfig {
    /// The per-subscription queue bound.
    pub fn backlog(&self) -> Backlog {
        Backlog {
            max_events: self.max_queued_events,
            max_bytes: self.max_queued_bytes,
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            max_subscriptions: 1000,
            max_api_body_bytes: 64 * 1024,
            enqueue_batch: 256,
            // 100,000 events of a few hundred bytes (tens of MB, ~2 minutes of a site
            // producing 1,000/s) ride out a target's restart in the queue; a longer outage
            // is read back from the events log (within its retention).
            max_queued_events: 100_000,
            max_queued_bytes: 64 * 1024 * 1024,
            cursor_checkpoint: Duration::from_secs(1),
            ca_cert: None,
        }
    }
}

/// Why webhooks could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The hub refused the subscription.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The TLS settings are unusable (e.g. the CA file).
    #[error("webhook TLS: {0}")]
    Tls(#[from] crate::tls::TlsConfigError),
}

struct Matcher {
    id: i64,
    filter: TopicFilter,
    start_event_id: u64,
}

/// Each filter of `matchers` once, plus `extra`: what the dispatcher's hub subscription
/// needs.
fn union(matchers: &[Matcher], extra: Option<&TopicFilter>) -> Vec<TopicFilter> {
    let mut filters: Vec<TopicFilter> = Vec::new();
    for f in matchers.iter().map(|m| &m.filter).chain(extra) {
        if !filters.contains(f) {
            filters.push(f.clone());
        }
    }
    filters
}

struct Worker {
    notify: Arc<Notify>,
    task: JoinHandle<()>,
}

/// The running webhook service: owns the dispatcher and the per-subscription workers.
pub struct Webhooks {
    store: Arc<WebhookStore>,
    /// The server's events log: where overflowed subscriptions catch up from.
    log: Arc<dyn EventLog>,
    hub: Hub,
    config: WebhookConfig,
    sender: Sender,
    /// Locked while a batch is matched and while subscriptions change, so a new
    /// subscription gets exactly the events published after its creation.
    matchers: Mutex<Vec<Matcher>>,
    /// The filters of the dispatcher's hub subscription: [`union`] of `matchers`.
    filters: FilterHandle,
    workers: Mutex<HashMap<i64, Worker>>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn blocking<T: Send + 'static>(
    store: &Arc<WebhookStore>,
    f: impl FnOnce(&WebhookStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(r) => r,
        Err(e) => Err(StoreError {
            what: "store task",
            source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        }),
    }
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body).
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhooks {
    /// Starts the dispatcher and one worker per stored subscription (on the current tokio
    /// runtime). `log` is the server's events log.
    pub fn start(
        store: WebhookStore,
        hub: &Hub,
        log: Arc<dyn EventLog>,
        config: WebhookConfig,
    ) -> Result<Arc<Self>, WebhookError> {
        let sender = Sender::new(&config)?;
        let store = Arc::new(store);
        let matchers = store
            .matchers()?
            .into_iter()
            .map(|(id, filter, start_event_id)| Matcher {
                id,
                filter,
                start_event_id,
            })
            .collect::<Vec<_>>();
        let sub = hub.subscribe("webhooks", union(&matchers, None))?;
        // Deliveries are keyed by event id: raw spot events (no id, live only) are not sent.
        sub.set_receive_raw(false);
        let filters = sub.filter_handle();
        let cursor = store.cursor()?;
        let follower = Follower::new(sub, log.clone(), cursor);
        let ids: Vec<i64> = matchers.iter().map(|m| m.id).collect();
        let this = Arc::new(Self {
            store,
            log,
            hub: hub.clone(),
            config,
            sender,
            matchers: Mutex::new(matchers),
            filters,
            workers: Mutex::new(HashMap::new()),
            dispatcher: Mutex::new(None),
        });
        for id in ids {
            this.spawn_worker(id);
        }
        let task = tokio::spawn(dispatch(
            Arc::downgrade(&this),
            follower,
            cursor.unwrap_or(0),
        ));
        *lock(&this.dispatcher) = Some(task);
        Ok(this)
    }

    /// The subscriptions resource these webhooks deliver, for [`router`].
    pub fn book(self: &Arc<Self>) -> Arc<dyn SubscriptionBook> {
        Arc::new(Book(self.clone()))
    }

    /// The REST router: `GET/POST /api/subscriptions`, `GET/PUT/DELETE /api/subscriptions/{id}`.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        router(self.book(), self.config.max_api_body_bytes)
    }

    /// The store (e.g. to list subscriptions elsewhere).
    pub fn store(&self) -> &Arc<WebhookStore> {
        &self.store
    }

    /// Stops the dispatcher and the workers (queued deliveries stay in the store).
    pub fn shutdown(&self) {
        if let Some(task) = lock(&self.dispatcher).take() {
            task.abort();
        }
        for (_, worker) in lock(&self.workers).drain() {
            worker.task.abort();
        }
    }

    fn spawn_worker(self: &Arc<Self>, id: i64) {
        let notify = Arc::new(Notify::new());
        let task = tokio::spawn(deliver(Arc::downgrade(self), id, notify.clone()));
        if let Some(old) = lock(&self.workers).insert(id, Worker { notify, task }) {
            old.task.abort();
        }
    }

    fn create(self: &Arc<Self>, input: SubscriptionInput) -> Result<WebhookSubscription, ApiError> {
        let created = {
            let mut matchers = lock(&self.matchers);
            if matchers.len() >= self.config.max_subscriptions {
                return Err(ApiError::Conflict(format!(
                    "the maximum of {} subscriptions is reached",
                    self.config.max_subscriptions
                )));
            }
            // The hub queues the new filter's events before the start id is read: every
            // event after it reaches the dispatcher.
            let filter = input
                .topic_filter
                .as_deref()
                .and_then(|t| TopicFilter::new(t).ok());
            self.filters.set(union(&matchers, filter.as_ref()));
            let start_event_id = self.hub.last_id();
            let created = match self.store.create(input, start_event_id) {
                Ok(created) => created,
                Err(e) => {
                    self.filters.set(union(&matchers, None));
                    return Err(e.into());
                }
            };
            let filter = TopicFilter::new(&created.topic_filter);
            if let (Some(_), Ok(filter)) = (&created.target_url, filter) {
                matchers.push(Matcher {
                    id: created.id,
                    filter,
                    start_event_id,
                });
            }
            self.filters.set(union(&matchers, None));
            created
        };
        if created.target_url.is_some() {
            self.spawn_worker(created.id);
        }
        Ok(created)
    }

    fn update(
        self: &Arc<Self>,
        id: i64,
        input: SubscriptionInput,
    ) -> Result<Option<WebhookSubscription>, ApiError> {
        let mut matchers = lock(&self.matchers);
        let filter = input
            .topic_filter
            .as_deref()
            .and_then(|t| TopicFilter::new(t).ok());
        self.filters.set(union(&matchers, filter.as_ref()));
        // As at a create: the hub queues the filter's events before the start id is read.
        let start_event_id = self.hub.last_id();
        let updated = self.store.update(id, input);
        // (Whether it now has a target, and had one.)
        let mut targeted = None;
        if let Ok(Some(updated)) = &updated {
            let had = matchers.iter().position(|m| m.id == id);
            match (
                TopicFilter::new(&updated.topic_filter),
                &updated.target_url,
                had,
            ) {
                (Ok(filter), Some(_), Some(at)) => matchers[at].filter = filter,
                (Ok(filter), Some(_), None) => {
                    matchers.push(Matcher {
                        id,
                        filter,
                        start_event_id,
                    });
                    targeted = Some(true);
                }
                (_, None, Some(at)) => {
                    matchers.remove(at);
                    targeted = Some(false);
                }
                _ => {}
            }
        }
        self.filters.set(union(&matchers, None));
        drop(matchers);
        let updated = updated?;
        match targeted {
            Some(true) => self.spawn_worker(id),
            Some(false) => {
                // Store-only now: nothing more is delivered, what was queued is dropped.
                if let Some(worker) = lock(&self.workers).remove(&id) {
                    worker.task.abort();
                }
                self.store.clear_queue(id)?;
            }
            None => {
                if let Some(worker) = lock(&self.workers).get(&id) {
                    worker.notify.notify_one(); // the target may have changed: retry now
                }
            }
        }
        match updated {
            // Its queue was dropped: as it is now.
            Some(_) if targeted == Some(false) => Ok(self.store.get(id)?),
            other => Ok(other),
        }
    }

    fn delete(self: &Arc<Self>, id: i64) -> Result<bool, ApiError> {
        let existed = {
            let mut matchers = lock(&self.matchers);
            matchers.retain(|m| m.id != id);
            self.filters.set(union(&matchers, None));
            self.store.delete(id)?
        };
        if let Some(worker) = lock(&self.workers).remove(&id) {
            worker.task.abort();
        }
        Ok(existed)
    }

    /// Queues one page of the events after `after` matching `filter` from the events log
    /// for the overflowed subscription `id` (see [`WebhookStore::refill`]).
    async fn refill(&self, id: i64, filter: &str, after: u64) -> Result<(), String> {
        let Ok(filter) = TopicFilter::new(filter) else {
            return Ok(()); // validated when written: never
        };
        // Read before the log: every event up to it is in the log (or gone from it).
        let cursor = blocking(&self.store, |s| s.cursor())
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or(0);
        let page = (self.config.enqueue_batch as u64)
            .min(self.config.max_queued_events)
            .max(1) as usize;
        let events = self
            .log
            .events_after(after, page)
            .await
            .map_err(|e| e.to_string())?;
        let last = events.last().map_or(after, |e| e.id());
        let read_through = if events.len() < page {
            last.max(cursor)
        } else {
            last
        };
        let rows: Vec<(u64, String)> = events
            .iter()
            .filter(|e| filter.matches(e.topic()))
            .map(|e| (e.id(), e.envelope_json().to_owned()))
            .collect();
        let backlog = self.config.backlog();
        blocking(&self.store, move |s| {
            let refs: Vec<(u64, &str)> = rows.iter().map(|(i, b)| (*i, b.as_str())).collect();
            s.refill(id, &refs, read_through, backlog)
        })
        .await
        .map(drop)
        .map_err(|e| e.to_string())
    }

    fn notify(&self, ids: &[i64]) {
        let workers = lock(&self.workers);
        for id in ids {
            if let Some(w) = workers.get(id) {
                w.notify.notify_one();
            }
        }
    }
}

/// The wait before retrying a delivery that failed after `attempts` earlier attempts: the
/// protocol crate's one backoff, jittered so that the retries of many deliveries that failed
/// together spread out.
pub fn retry_delay(config: &WebhookConfig, attempts: i64) -> Duration {
    let failures = u32::try_from(attempts.saturating_add(1)).unwrap_or(u32::MAX);
    let backoff = Backoff {
        initial: config.retry_base,
        max: config.retry_max,
    };
    backoff.delay(failures, RandomState::new().hash_one(failures))
}

async fn dispatch(webhooks: std::sync::Weak<Webhooks>, mut follower: Follower, mut saved: u64) {
    let Some(checkpoint) = webhooks.upgrade().map(|w| w.config.cursor_checkpoint) else {
        return;
    };
    loop {
        let next = tokio::select! {
            next = follower.next() => next,
            () = tokio::time::sleep(checkpoint) => {
                let Some(this) = webhooks.upgrade() else {
                    return;
                };
                // Read before looking at the queue: see `Follower::caught_up`.
                let upto = this.hub.fanned_out_id();
                if upto > saved && follower.caught_up() {
                    follower.advance_to(upto);
                    let backlog = this.config.backlog();
                    match blocking(&this.store, move |s| s.enqueue(&[], upto, backlog)).await {
                        Ok(()) => saved = upto,
                        Err(e) => tracing::warn!(error = %e, "webhooks: cannot store the cursor"),
                    }
                }
                continue;
            }
        };
        let first = match next {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: events log unreadable; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(this) = webhooks.upgrade() else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < this.config.enqueue_batch {
            match follower.next().now_or_never() {
                Some(Ok(Some(e))) => batch.push(e),
                _ => break,
            }
        }
        let cursor = batch.iter().map(|e| e.id()).max().unwrap_or(0);
        let rows: Vec<(i64, u64, String)> = {
            let matchers = lock(&this.matchers);
            batch
                .iter()
                .flat_map(|e| {
                    matchers
                        .iter()
                        .filter(|m| e.id() > m.start_event_id && m.filter.matches(e.topic()))
                        .map(|m| (m.id, e.id(), e.envelope_json().to_owned()))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let mut ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let backlog = this.config.backlog();
        loop {
            let rows = rows.clone();
            let result = blocking(&this.store, move |s| {
                let refs: Vec<(i64, u64, &str)> =
                    rows.iter().map(|(a, b, c)| (*a, *b, c.as_str())).collect();
                s.enqueue(&refs, cursor, backlog)
            })
            .await;
            match result {
                Ok(()) => {
                    saved = saved.max(cursor);
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "webhooks: cannot queue deliveries; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        this.notify(&ids);
    }
}

/// A subscription's failed deliveries are logged at most once per this interval, each line
/// counting the failures since the one before (`failed_count` and `last_error` of the
/// subscription have every one).
pub const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Delivers the queue of one subscription, in order, until it is deleted.
async fn deliver(webhooks: std::sync::Weak<Webhooks>, id: i64, notify: Arc<Notify>) {
    let mut failure_log = LogRate::every(FAILURE_LOG_EVERY);
    let mut failing = false;
    loop {
        let Some(this) = webhooks.upgrade() else {
            return;
        };
        let next = blocking(&this.store, move |s| {
            Ok(match s.target(id)? {
                None => None,
                Some(target) => Some((target, s.next_delivery(id)?)),
            })
        })
        .await;
        let (target, delivery) = match next {
            Ok(Some((target, Some(delivery)))) => (target, delivery),
            Ok(Some((target, None))) => {
                if let Some(after) = target.resume_after {
                    // Overflowed, and the queue has drained: read on from the events log.
                    if let Err(e) = this.refill(id, &target.topic_filter, after).await {
                        tracing::warn!(error = %e, subscription = id, "webhooks: cannot catch up from the events log; retrying in 1 s");
                        drop(this);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
                drop(this);
                notify.notified().await;
                continue;
            }
            Ok(None) => return, // deleted
            Err(e) => {
                tracing::error!(error = %e, subscription = id, "webhooks: store unreadable");
                drop(this);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let now = store::now_ms();
        if now - delivery.queued_ms > target.hold_ms {
            let error = format!(
                "event {} given up: not delivered within database_hold_time_h",
                delivery.event_id
            );
            log_failure(&mut failure_log, id, &error, false);
            failing = true;
            let _ = blocking(&this.store, move |s| s.failed(&delivery, &error, None)).await;
            continue;
        }
        if delivery.next_attempt_ms > now {
            let wait = Duration::from_millis((delivery.next_attempt_ms - now) as u64);
            drop(this);
            // A PUT (new target) wakes the worker early.
            let _ = tokio::time::timeout(wait, notify.notified()).await;
            continue;
        }
        let outcome = this
            .sender
            .send(
                &target.url,
                target.secret.as_deref(),
                delivery.event_id,
                &delivery.body,
            )
            .await;
        let result = match outcome {
            Ok(()) => {
                if std::mem::take(&mut failing) {
                    let more = failure_log.reset();
                    tracing::info!(
                        subscription = id,
                        more_failures_not_logged = more,
                        "webhooks: delivering again"
                    );
                }
                blocking(&this.store, move |s| s.delivered(&delivery)).await
            }
            Err(error) => {
                log_failure(&mut failure_log, id, &error, target.retry);
                failing = true;
                let retry_at = target.retry.then(|| {
                    store::now_ms()
                        + retry_delay(&this.config, delivery.attempts).as_millis() as i64
                });
                blocking(&this.store, move |s| s.failed(&delivery, &error, retry_at)).await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, subscription = id, "webhooks: cannot record delivery");
            drop(this);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Logs a failed delivery of subscription `id`, rate limited by `log`.
pub fn log_failure(log: &mut LogRate, id: i64, error: &str, retried: bool) {
    if let Some(more) = log.admit(std::time::Instant::now()) {
        tracing::warn!(
            subscription = id,
            more_since_last_line = more,
            "webhooks: delivery failed: {error}{}",
            if retried { "; retrying" } else { "" }
        );
    }
}

fn topic_of(envelope: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Topic {
        topic: String,
    }
    serde_json::from_str::<Topic>(envelope)
        .ok()
        .map(|t| t.topic)
}

/// [`Webhooks`] as the REST API's [`SubscriptionBook`] (SQLite answers at once: the
/// futures are ready when made).
struct Book(Arc<Webhooks>);

impl SubscriptionBook for Book {
    fn list(
        &self,
        after_id: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<WebhookSubscription>, ApiError>> {
        let listed = self.0.store.list(after_id, limit).map_err(ApiError::from);
        Box::pin(std::future::ready(listed))
    }

    fn get(&self, id: i64) -> BoxFuture<'_, Result<Option<WebhookSubscription>, ApiError>> {
        Box::pin(std::future::ready(
            self.0.store.get(id).map_err(ApiError::from),
        ))
    }

    fn create(
        &self,
        input: SubscriptionInput,
    ) -> BoxFuture<'_, Result<WebhookSubscription, ApiError>> {
        Box::pin(std::future::ready(self.0.create(input)))
    }

    fn update(
        &self,
        id: i64,
        input: SubscriptionInput,
    ) -> BoxFuture<'_, Result<Option<WebhookSubscription>, ApiError>> {
        Box::pin(std::future::ready(self.0.update(id, input)))
    }

    fn delete(&self, id: i64) -> BoxFuture<'_, Result<bool, ApiError>> {
        Box::pin(std::future::ready(self.0.delete(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn topic_is_read_from_the_envelope() {
        assert_eq!(
            topic_of(r#"{"id":1,"topic":"items/1/created","payload":{}}"#).as_deref(),
            Some("items/1/created")
        );
        assert_eq!(topic_of("{}"), None);
    }

    #[test]
    fn retry_delays_double_up_to_the_max_and_are_jittered_between_half_and_all() {
        let config = WebhookConfig {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            ..WebhookConfig::default()
        };
        for (attempts, base) in [(0, 1), (1, 2), (2, 4), (8, 256), (9, 300), (1_000, 300)] {
            let base = Duration::from_secs(base);
            let delays: Vec<Duration> = (0..50).map(|_| retry_delay(&config, attempts)).collect();
            assert!(
                delays.iter().all(|d| *d >= base / 2 && *d <= base),
                "after {attempts} attempts: {delays:?} not within [{:?}, {base:?}]",
                base / 2
            );
            assert!(
                delays.iter().any(|d| *d != delays[0]),
                "after {attempts} attempts: no jitter in {delays:?}"
            );
        }
    }
}
