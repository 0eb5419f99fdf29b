//! The hub: fans published events out to subscriptions, each with its own bounded queue.
//!
//! [`Hub::publish`] never blocks and never waits for a consumer: it offers the event to the
//! queue of every subscription whose filters match (`try_send`). A full queue counts the event
//! as dropped for that subscription (visible in [`Hub::stats`]) and marks the subscription
//! *lagged*, so a [`crate::Follower`] refills the gap from the [`crate::EventLog`].
//!
//! Raw spot events ([`Published::raw`], published only with `--publish-raw`) go through the
//! same queues but have no id and are not in the log: they are live only. A dropped raw
//! event is counted but does not mark the subscription lagged (the log cannot refill it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::filter::{validate_topic_name, TopicError, TopicFilter};

/// One derived event (or raw spot event), as every outlet sends it.
///
/// Built once, in one buffer: the envelope `{"id":..,"topic":..,"payload":..}` sent over
/// WebSocket, SSE and webhooks, of which the payload (what MQTT publishes) and, unless it
/// needed escaping, the topic are slices. Cheap to clone (reference counts); a WebSocket
/// frame takes the envelope without a copy ([`Published::envelope_bytes`]). A raw spot
/// event ([`Published::raw`]) has no id: its envelope is `{"topic":..,"payload":..}`.
#[derive(Debug, Clone)]
pub struct Published {
    id: u64,
    envelope: Utf8Bytes,
    topic: TopicText,
    /// Byte range of the payload in the envelope.
    payload: (usize, usize),
}

/// Where the topic name is.
#[derive(Debug, Clone)]
enum TopicText {
    /// This byte range of the envelope (the topic needed no JSON escaping).
    InEnvelope(usize, usize),
    /// Its own copy (its JSON form in the envelope is escaped).
    Own(Arc<str>),
}

impl PartialEq for Published {
    fn eq(&self, other: &Self) -> bool {
        // The envelope holds the topic and the payload.
        self.id == other.id && self.envelope == other.envelope
    }
}

impl Eq for Published {}

/// Why a [`Published`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PublishedError {
    /// The topic is not a valid MQTT topic name.
    #[error("event {id}: bad topic {topic:?}: {source}")]
    Topic {
        /// The event id.
        id: u64,
        /// The refused topic.
        topic: String,
        /// What is wrong with it.
        source: TopicError,
    },
    /// Id 0: ids start at 1 (0 would read as a raw event's missing id).
    #[error("event id 0: ids start at 1")]
    ZeroId,
    /// The payload is not JSON text of an object.
    #[error("event {id}: payload is not a JSON object: {reason}")]
    Payload {
        /// The event id.
        id: u64,
        /// Parser message or "not an object".
        reason: String,
    },
}

/// Whether `text` goes into a JSON string as it is (no quote, backslash or control byte).
fn json_plain(text: &str) -> bool {
    // Without an early exit the check vectorizes (topics are tens of bytes).
    !text.bytes().fold(false, |bad, b| {
        bad | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

impl Published {
    /// Builds an event from its id (strictly increasing across the server, from 1), its
    /// topic (spec §7; a topic name, no wildcards) and its payload: the JSON text of an
    /// object (checked).
    pub fn new(id: u64, topic: &str, payload_json: String) -> Result<Self, PublishedError> {
        if id == 0 {
            return Err(PublishedError::ZeroId);
        }
        Self::checked(id, topic, &payload_json)
    }

    /// Builds a raw spot event (topic `spots/<id>/events/<resource_type>/<action>`): no id,
    /// not in the events log, delivered live only. [`Published::id`] is 0.
    pub fn raw(topic: &str, payload_json: String) -> Result<Self, PublishedError> {
        Self::checked(0, topic, &payload_json)
    }

    /// Builds a derived event whose payload is the spec's
    /// `{"resource":..,"time_event":..,"time_created":..}` (see
    /// [`spot_protocol::topics::event_payload`]) from the JSON texts of its three values, written
    /// into the envelope as they are. The topic is checked; the JSON texts are **not** (a
    /// caller passes what a JSON writer or parser produced: `resource` an object,
    /// `time_event` a string or `null`, `time_created` a string), which saves parsing every
    /// event a second time on the commit path.
    pub fn from_json_parts(
        id: u64,
        topic: &str,
        resource: &str,
        time_event: &str,
        time_created: &str,
    ) -> Result<Self, PublishedError> {
        if id == 0 {
            return Err(PublishedError::ZeroId);
        }
        let parts = [
            "{\"resource\":",
            resource,
            ",\"time_event\":",
            time_event,
            ",\"time_created\":",
            time_created,
            "}",
        ];
        let event = Self::assemble(id, topic, &parts)?;
        debug_assert!(
            serde_json::from_str::<&RawValue>(event.payload_json())
                .is_ok_and(|v| v.get().starts_with('{')),
            "not JSON: {}",
            event.payload_json()
        );
        Ok(event)
    }

    fn checked(id: u64, topic: &str, payload_json: &str) -> Result<Self, PublishedError> {
        let raw: &RawValue =
            serde_json::from_str(payload_json).map_err(|e| PublishedError::Payload {
                id,
                reason: e.to_string(),
            })?;
        if !raw.get().starts_with('{') {
            return Err(PublishedError::Payload {
                id,
                reason: "not an object".into(),
            });
        }
        Self::assemble(id, topic, &[raw.get()])
    }

    /// Checks the topic and writes the envelope, the payload being `payload` concatenated.
    fn assemble(id: u64, topic: &str, payload: &[&str]) -> Result<Self, PublishedError> {
        validate_topic_name(topic).map_err(|source| PublishedError::Topic {
            id,
            topic: topic.to_owned(),
            source,
        })?;
        let escaped = (!json_plain(topic))
            .then(|| serde_json::to_string(topic).expect("a string always serializes"));
        let topic_json_len = escaped.as_ref().map_or(topic.len() + 2, String::len);
        let payload_len: usize = payload.iter().map(|p| p.len()).sum();
        let id_len = if id == 0 {
            0
        } else {
            // `"id":` digits `,`
            6 + id.checked_ilog10().unwrap_or(0) as usize + 1
        };
        // `{` id `"topic":` topic `,"payload":` payload `}`
        let len = 1 + id_len + 8 + topic_json_len + 11 + payload_len + 1;
        let mut out = String::with_capacity(len);
        out.push('{');
        if id != 0 {
            use std::fmt::Write as _;
            let _ = write!(out, "\"id\":{id},");
        }
        out.push_str("\"topic\":");
        let topic_text = match escaped {
            Some(json) => {
                out.push_str(&json);
                TopicText::Own(Arc::from(topic))
            }
            None => {
                out.push('"');
                let start = out.len();
                out.push_str(topic);
                let end = out.len();
                out.push('"');
                TopicText::InEnvelope(start, end)
            }
        };
        out.push_str(",\"payload\":");
        let payload_start = out.len();
        for part in payload {
            out.push_str(part);
        }
        let payload_end = out.len();
        out.push('}');
        debug_assert_eq!(out.len(), len, "envelope length computed exactly");
        Ok(Self {
            id,
            envelope: Utf8Bytes::from(out),
            topic: topic_text,
            payload: (payload_start, payload_end),
        })
    }

    /// Same as [`Published::new`] from a JSON value (which must be an object).
    pub fn from_value(
        id: u64,
        topic: &str,
        payload: &serde_json::Value,
    ) -> Result<Self, PublishedError> {
        Self::new(id, topic, payload.to_string())
    }

    /// The event id; 0 for a raw spot event.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether this is a raw spot event ([`Published::raw`]): no id, live only.
    pub fn is_raw(&self) -> bool {
        self.id == 0
    }

    /// The topic name.
    pub fn topic(&self) -> &str {
        match &self.topic {
            TopicText::InEnvelope(start, end) => &self.envelope.as_str()[*start..*end],
            TopicText::Own(topic) => topic,
        }
    }

    /// The payload: JSON text of an object (what MQTT publishes).
    pub fn payload_json(&self) -> &str {
        &self.envelope.as_str()[self.payload.0..self.payload.1]
    }

    /// `{"id":..,"topic":..,"payload":{..}}` (no `id` for a raw event): what WebSocket, SSE
    /// and webhooks send.
    pub fn envelope_json(&self) -> &str {
        self.envelope.as_str()
    }

    /// The envelope as a WebSocket text frame's content: shared, not copied.
    pub fn envelope_bytes(&self) -> Utf8Bytes {
        self.envelope.clone()
    }
}

/// Limits of a [`Hub`].
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Events queued per subscription before further ones are dropped (and counted).
    /// Bounds memory per consumer: a stalled WebSocket reader holds at most this many.
    pub queue_capacity: usize,
    /// Maximum live subscriptions (WebSocket + SSE connections + outlets): bounds memory
    /// and the per-publish fan-out cost.
    pub max_subscriptions: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 8192,
            max_subscriptions: 10_000,
        }
    }
}

/// Why [`Hub::subscribe`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// [`HubConfig::max_subscriptions`] are already live.
    #[error("too many subscriptions: the maximum is {0}")]
    TooManySubscriptions(usize),
}

/// The hub's entry for one subscription: what it wants, the sending end of its queue and
/// its counters (read through the [`Subscription`]).
struct SubscriptionEntry {
    key: u64,
    outlet: String,
    filters: RwLock<Vec<TopicFilter>>,
    tx: mpsc::Sender<Arc<Published>>,
    dropped: AtomicU64,
    lagged: AtomicBool,
    /// Takes raw spot events too (the default).
    raw: AtomicBool,
}

impl SubscriptionEntry {
    fn wants(&self, topic: &str) -> bool {
        read(&self.filters).iter().any(|f| f.matches(topic))
    }

    fn wants_event(&self, event: &Published) -> bool {
        (!event.is_raw() || self.raw.load(Ordering::Relaxed)) && self.wants(event.topic())
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The hub's state, shared by its clones and its subscriptions.
struct HubState {
    config: HubConfig,
    subscriptions: RwLock<Vec<Arc<SubscriptionEntry>>>,
    next_key: AtomicU64,
    published_total: AtomicU64,
    raw_published_total: AtomicU64,
    last_id: AtomicU64,
    /// Id of the last event whose fan-out is complete.
    fanned_out_id: AtomicU64,
    /// Dropped counts of subscriptions that have ended, by outlet name.
    dropped_by_ended: Mutex<HashMap<String, u64>>,
}

/// Fan-out point between the server's commit path and the outlets. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    state: Arc<HubState>,
}

/// Counters of one outlet (all subscriptions with the same outlet name added up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutletStats {
    /// Outlet name: `ws`, `sse`, `mqtt`, `webhooks`.
    pub outlet: String,
    /// Live subscriptions of this outlet.
    pub subscriptions: usize,
    /// Events queued now.
    pub queued: usize,
    /// Events dropped since start because a queue was full.
    pub dropped_total: u64,
}

/// Counters of the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubStats {
    /// Derived events published since start.
    pub published_total: u64,
    /// Raw spot events published since start (`--publish-raw`).
    pub raw_published_total: u64,
    /// Id of the last published event (0 before any).
    pub last_id: u64,
    /// Per outlet, sorted by name.
    pub outlets: Vec<OutletStats>,
}

impl HubStats {
    /// Prometheus text (each family with `# HELP` and `# TYPE`): `spot_push_published_total`,
    /// `spot_push_raw_published_total`, `spot_push_last_event_id`, and per outlet
    /// `spot_push_subscriptions`, `spot_push_queued`, `spot_push_dropped_total`.
    pub fn render_prometheus(&self) -> String {
        let mut out = format!(
            "# HELP spot_push_published_total Derived events published to the outlets.\n\
             # TYPE spot_push_published_total counter\n\
             spot_push_published_total {}\n\
             # HELP spot_push_raw_published_total Raw spot events published (--publish-raw).\n\
             # TYPE spot_push_raw_published_total counter\n\
             spot_push_raw_published_total {}\n\
             # HELP spot_push_last_event_id Id of the last published event (0 before any).\n\
             # TYPE spot_push_last_event_id gauge\n\
             spot_push_last_event_id {}\n",
            self.published_total, self.raw_published_total, self.last_id
        );
        let outlet = |o: &OutletStats| o.outlet.replace(['"', '\\', '\n'], "_");
        type Per = fn(&OutletStats) -> u64;
        let families: [(&str, &str, &str, Per); 3] = [
            (
                "spot_push_subscriptions",
                "gauge",
                "Live subscriptions per outlet.",
                |o| o.subscriptions as u64,
            ),
            (
                "spot_push_queued",
                "gauge",
                "Events queued per outlet.",
                |o| o.queued as u64,
            ),
            (
                "spot_push_dropped_total",
                "counter",
                "Events dropped per outlet because a queue was full.",
                |o| o.dropped_total,
            ),
        ];
        for (name, kind, help, value) in families {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for o in &self.outlets {
                out.push_str(&format!(
                    "{name}{{outlet=\"{}\"}} {}\n",
                    outlet(o),
                    value(o)
                ));
            }
        }
        out
    }
}

impl Hub {
    /// A hub with the given limits.
    pub fn new(config: HubConfig) -> Self {
        Self {
            state: Arc::new(HubState {
                config,
                subscriptions: RwLock::new(Vec::new()),
                next_key: AtomicU64::new(0),
                published_total: AtomicU64::new(0),
                raw_published_total: AtomicU64::new(0),
                last_id: AtomicU64::new(0),
                fanned_out_id: AtomicU64::new(0),
                dropped_by_ended: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Offers `event` to every matching subscription. Never blocks.
    ///
    /// Call it after the event is committed, i.e. readable through the [`crate::EventLog`]
    /// (a lagged consumer refills from there), with ids strictly increasing. Raw spot events
    /// ([`Published::raw`]) need neither.
    pub fn publish(&self, event: Published) {
        let event = Arc::new(event);
        let raw = event.is_raw();
        if raw {
            self.state
                .raw_published_total
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.state.last_id.fetch_max(event.id, Ordering::AcqRel);
            self.state.published_total.fetch_add(1, Ordering::Relaxed);
        }
        let mut closed = false;
        for sub in read(&self.state.subscriptions).iter() {
            if !sub.wants_event(&event) {
                continue;
            }
            match sub.tx.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.dropped.fetch_add(1, Ordering::Relaxed);
                    if !raw {
                        sub.lagged.store(true, Ordering::Release);
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
            }
        }
        if closed {
            write(&self.state.subscriptions).retain(|s| !s.tx.is_closed());
        }
        if !raw {
            self.state
                .fanned_out_id
                .fetch_max(event.id, Ordering::AcqRel);
        }
    }

    /// When no subscription has a filter, accounts for `count` derived events up to
    /// `last_id` as published (ids, counters, fan-out mark) without their being built, and
    /// returns `true`; otherwise returns `false` and the caller publishes them. Holds the
    /// subscription list and every filter list while it does, so a subscription made or
    /// given a filter meanwhile starts after `last_id` (and reads anything older from the log).
    pub fn skip_unless_subscribed(&self, last_id: u64, count: u64) -> bool {
        let subscriptions = read(&self.state.subscriptions);
        let mut filters = Vec::with_capacity(subscriptions.len());
        for sub in subscriptions.iter() {
            let list = read(&sub.filters);
            if !list.is_empty() {
                return false;
            }
            filters.push(list);
        }
        self.state.last_id.fetch_max(last_id, Ordering::AcqRel);
        self.state
            .published_total
            .fetch_add(count, Ordering::Relaxed);
        self.state
            .fanned_out_id
            .fetch_max(last_id, Ordering::AcqRel);
        drop(filters);
        drop(subscriptions);
        true
    }

    /// Id of the last event whose fan-out is complete: every subscription that wanted it
    /// and every earlier event (one publishing thread) has it queued, or counted it dropped
    /// and is marked lagged. A consumer whose queue is empty and not lagged after reading
    /// this has seen every event it wants up to it.
    pub fn fanned_out_id(&self) -> u64 {
        self.state.fanned_out_id.load(Ordering::Acquire)
    }

    /// Whether a live subscription taking raw events has a filter matching `topic`: lets a
    /// producer skip building raw events nobody receives.
    pub fn wants_raw(&self, topic: &str) -> bool {
        read(&self.state.subscriptions)
            .iter()
            .any(|s| s.raw.load(Ordering::Relaxed) && s.wants(topic))
    }

    /// Id of the last published event (0 before any).
    pub fn last_id(&self) -> u64 {
        self.state.last_id.load(Ordering::Acquire)
    }

    /// Opens a subscription for an outlet named `outlet` (used in stats) with `filters`
    /// (may be empty and changed later). It ends when the [`Subscription`] is dropped.
    pub fn subscribe(
        &self,
        outlet: &str,
        filters: Vec<TopicFilter>,
    ) -> Result<Subscription, HubError> {
        self.subscribe_with_capacity(outlet, filters, self.state.config.queue_capacity)
    }

    /// Same as [`Hub::subscribe`] with a queue of `queue_capacity` events instead of
    /// [`HubConfig::queue_capacity`] (e.g. a larger one for the MQTT outlet).
    pub fn subscribe_with_capacity(
        &self,
        outlet: &str,
        filters: Vec<TopicFilter>,
        queue_capacity: usize,
    ) -> Result<Subscription, HubError> {
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let entry = Arc::new(SubscriptionEntry {
            key: self.state.next_key.fetch_add(1, Ordering::Relaxed),
            outlet: outlet.to_owned(),
            filters: RwLock::new(filters),
            tx,
            dropped: AtomicU64::new(0),
            lagged: AtomicBool::new(false),
            raw: AtomicBool::new(true),
        });
        let start_id = self.last_id();
        {
            let mut subs = write(&self.state.subscriptions);
            subs.retain(|s| !s.tx.is_closed());
            if subs.len() >= self.state.config.max_subscriptions {
                return Err(HubError::TooManySubscriptions(
                    self.state.config.max_subscriptions,
                ));
            }
            subs.push(entry.clone());
        }
        Ok(Subscription {
            entry,
            rx,
            hub: self.state.clone(),
            start_id,
        })
    }

    /// Counters per outlet.
    pub fn stats(&self) -> HubStats {
        let mut by_outlet: HashMap<String, OutletStats> = HashMap::new();
        let ended = self
            .state
            .dropped_by_ended
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (outlet, dropped) in ended.iter() {
            by_outlet.insert(
                outlet.clone(),
                OutletStats {
                    outlet: outlet.clone(),
                    subscriptions: 0,
                    queued: 0,
                    dropped_total: *dropped,
                },
            );
        }
        drop(ended);
        for sub in read(&self.state.subscriptions).iter() {
            if sub.tx.is_closed() {
                continue;
            }
            let entry = by_outlet
                .entry(sub.outlet.clone())
                .or_insert_with(|| OutletStats {
                    outlet: sub.outlet.clone(),
                    subscriptions: 0,
                    queued: 0,
                    dropped_total: 0,
                });
            entry.subscriptions += 1;
            entry.queued += sub.tx.max_capacity() - sub.tx.capacity();
            entry.dropped_total += sub.dropped.load(Ordering::Relaxed);
        }
        let mut outlets: Vec<OutletStats> = by_outlet.into_values().collect();
        outlets.sort_by(|a, b| a.outlet.cmp(&b.outlet));
        HubStats {
            published_total: self.state.published_total.load(Ordering::Relaxed),
            raw_published_total: self.state.raw_published_total.load(Ordering::Relaxed),
            last_id: self.last_id(),
            outlets,
        }
    }
}

/// The receiving end of one hub subscription: a bounded queue plus its filters.
pub struct Subscription {
    entry: Arc<SubscriptionEntry>,
    rx: mpsc::Receiver<Arc<Published>>,
    hub: Arc<HubState>,
    start_id: u64,
}

impl Subscription {
    /// Next queued event; `None` only if the hub is gone.
    pub async fn recv(&mut self) -> Option<Arc<Published>> {
        self.rx.recv().await
    }

    /// Next queued event if one is ready.
    pub fn try_recv(&mut self) -> Option<Arc<Published>> {
        self.rx.try_recv().ok()
    }

    /// Whether events were dropped since the last call (and clears the mark).
    pub fn take_lagged(&self) -> bool {
        self.entry.lagged.swap(false, Ordering::AcqRel)
    }

    /// Whether events were dropped since the last [`Subscription::take_lagged`] (keeps the
    /// mark).
    pub fn is_lagged(&self) -> bool {
        self.entry.lagged.load(Ordering::Acquire)
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Whether raw spot events reach this subscription (by default they do, when a filter
    /// matches them); e.g. webhooks, which deliver by event id, turn them off.
    pub fn set_receive_raw(&self, receive: bool) {
        self.entry.raw.store(receive, Ordering::Relaxed);
    }

    /// Events dropped for this subscription because its queue was full.
    pub fn dropped_total(&self) -> u64 {
        self.entry.dropped.load(Ordering::Relaxed)
    }

    /// The hub's last id when this subscription started: events after it are queued.
    pub fn start_id(&self) -> u64 {
        self.start_id
    }

    /// Adds a filter (no effect if already present).
    pub fn add_filter(&self, filter: TopicFilter) {
        let mut filters = write(&self.entry.filters);
        if !filters.contains(&filter) {
            filters.push(filter);
        }
    }

    /// Replaces every filter (no filter: no event is queued, and publishing costs this
    /// subscription one empty check).
    pub fn set_filters(&self, filters: Vec<TopicFilter>) {
        *write(&self.entry.filters) = filters;
    }

    /// A handle changing this subscription's filters from elsewhere (e.g. while a task
    /// owns the subscription).
    pub fn filter_handle(&self) -> FilterHandle {
        FilterHandle {
            entry: self.entry.clone(),
        }
    }

    /// Removes a filter; says whether it was present.
    pub fn remove_filter(&self, filter: &str) -> bool {
        let mut filters = write(&self.entry.filters);
        let before = filters.len();
        filters.retain(|f| f.as_str() != filter);
        filters.len() != before
    }

    /// Whether any current filter matches `topic`.
    pub fn wants(&self, topic: &str) -> bool {
        self.entry.wants(topic)
    }

    /// The current filters.
    pub fn filters(&self) -> Vec<TopicFilter> {
        read(&self.entry.filters).clone()
    }
}

/// Changes the filters of a [`Subscription`] owned elsewhere ([`Subscription::filter_handle`]).
#[derive(Clone)]
pub struct FilterHandle {
    entry: Arc<SubscriptionEntry>,
}

impl FilterHandle {
    /// Replaces every filter, like [`Subscription::set_filters`].
    pub fn set(&self, filters: Vec<TopicFilter>) {
        *write(&self.entry.filters) = filters;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let key = self.entry.key;
        write(&self.hub.subscriptions).retain(|s| s.key != key);
        let dropped = self.entry.dropped.load(Ordering::Relaxed);
        let mut ended = self
            .hub
            .dropped_by_ended
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *ended.entry(self.entry.outlet.clone()).or_insert(0) += dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: u64, topic: &str) -> Published {
        Published::new(id, topic, format!(r#"{{"n":{id}}}"#)).expect("valid event")
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).expect("valid filter")
    }

    #[test]
    fn published_builds_the_envelope_once() {
        let e = ev(7, "items/3/created");
        assert_eq!(
            e.envelope_json(),
            r#"{"id":7,"topic":"items/3/created","payload":{"n":7}}"#
        );
        assert_eq!(e.payload_json(), r#"{"n":7}"#);
    }

    /// The envelope is what serde writes for `{"id","topic","payload"}`, escapes included,
    /// and the topic and payload read back are the ones given, for every id length.
    #[test]
    fn the_envelope_is_serdes_and_topic_and_payload_are_read_back() {
        for id in [1, 9, 10, 99, 100, 12_345, u64::MAX] {
            for topic in ["items/3/created", "spots/1/connected/a\"b\\c\u{1}d", "é/✓"] {
                let payload = r#"{"resource":{"n":"\u00e9"},"x":[1,2]}"#;
                let e = Published::new(id, topic, payload.to_owned()).expect("valid");
                let expected = serde_json::json!({
                    "id": id,
                    "topic": topic,
                    "payload": serde_json::from_str::<serde_json::Value>(payload).unwrap(),
                });
                let envelope: serde_json::Value =
                    serde_json::from_str(e.envelope_json()).expect("JSON");
                assert_eq!(envelope, expected, "{id} {topic}");
                assert_eq!((e.id(), e.topic(), e.payload_json()), (id, topic, payload));
                assert_eq!(e.envelope_bytes().as_str(), e.envelope_json());
                let mut keys = Vec::new();
                let map: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(e.envelope_json()).unwrap();
                keys.extend(map.keys().cloned());
                assert_eq!(keys.len(), 3);
                assert!(e
                    .envelope_json()
                    .starts_with(&format!("{{\"id\":{id},\"topic\":")));
            }
        }
    }

    #[test]
    fn an_event_from_json_parts_is_the_same_as_from_its_payload_text() {
        let parts = Published::from_json_parts(
            5,
            "items/7/created",
            r#"{"id":"7","label":null}"#,
            "null",
            r#""2026-01-01T00:00:00.000Z""#,
        )
        .expect("valid");
        let text = Published::new(
            5,
            "items/7/created",
            r#"{"resource":{"id":"7","label":null},"time_event":null,"time_created":"2026-01-01T00:00:00.000Z"}"#
                .to_owned(),
        )
        .expect("valid");
        assert_eq!(parts, text);
        assert_eq!(parts.payload_json(), text.payload_json());
        assert!(matches!(
            Published::from_json_parts(6, "items/#", "{}", "null", "\"t\""),
            Err(PublishedError::Topic { id: 6, .. })
        ));
        assert!(matches!(
            Published::from_json_parts(0, "items/1/created", "{}", "null", "\"t\""),
            Err(PublishedError::ZeroId)
        ));
    }

    #[test]
    fn published_refuses_wildcard_topics_and_non_objects() {
        assert!(matches!(
            Published::new(1, "items/+/created", "{}".into()),
            Err(PublishedError::Topic { id: 1, .. })
        ));
        assert!(matches!(
            Published::new(2, "items/1/created", "[1]".into()),
            Err(PublishedError::Payload { id: 2, .. })
        ));
        assert!(matches!(
            Published::new(3, "items/1/created", "{".into()),
            Err(PublishedError::Payload { id: 3, .. })
        ));
    }

    #[tokio::test]
    async fn publish_reaches_only_matching_subscriptions() {
        let hub = Hub::new(HubConfig::default());
        let mut items = hub.subscribe("ws", vec![filter("items/#")]).expect("sub");
        let mut spots = hub
            .subscribe("ws", vec![filter("spots/+/connected/+")])
            .expect("sub");
        hub.publish(ev(1, "items/1/created"));
        hub.publish(ev(2, "spots/1/connected/203"));
        assert_eq!(items.recv().await.map(|e| e.id()), Some(1));
        assert_eq!(spots.recv().await.map(|e| e.id()), Some(2));
        assert!(items.try_recv().is_none());
        assert!(spots.try_recv().is_none());
    }

    #[test]
    fn full_queue_counts_drops_and_marks_lagged_without_blocking() {
        let hub = Hub::new(HubConfig {
            queue_capacity: 2,
            max_subscriptions: 10,
        });
        let mut sub = hub.subscribe("sse", vec![filter("#")]).expect("sub");
        for id in 1..=5 {
            hub.publish(ev(id, "items/1/created"));
        }
        assert_eq!(sub.dropped_total(), 3);
        assert!(sub.take_lagged());
        assert!(!sub.take_lagged(), "the lagged mark is cleared once taken");
        let stats = hub.stats();
        assert_eq!(stats.published_total, 5);
        assert_eq!(stats.raw_published_total, 0);
        assert_eq!(stats.last_id, 5);
        assert_eq!(
            stats.outlets,
            vec![OutletStats {
                outlet: "sse".into(),
                subscriptions: 1,
                queued: 2,
                dropped_total: 3
            }]
        );
        let samples: Vec<String> = stats
            .render_prometheus()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect();
        assert_eq!(
            samples,
            [
                "spot_push_published_total 5",
                "spot_push_raw_published_total 0",
                "spot_push_last_event_id 5",
                "spot_push_subscriptions{outlet=\"sse\"} 1",
                "spot_push_queued{outlet=\"sse\"} 2",
                "spot_push_dropped_total{outlet=\"sse\"} 3",
            ]
        );
        assert_eq!(sub.try_recv().map(|e| e.id()), Some(1));
        drop(sub);
        let stats = hub.stats();
        assert_eq!(stats.outlets[0].subscriptions, 0);
        assert_eq!(
            stats.outlets[0].dropped_total, 3,
            "drops of ended subscriptions stay counted"
        );
    }

    fn raw(topic: &str) -> Published {
        Published::raw(topic, r#"{"resource":{}}"#.into()).expect("valid raw event")
    }

    #[test]
    fn a_raw_event_has_no_id_in_its_envelope_and_id_0_is_refused_for_derived_ones() {
        let e = raw("spots/ab/events/hit/create");
        assert!(e.is_raw());
        assert_eq!(
            e.envelope_json(),
            r#"{"topic":"spots/ab/events/hit/create","payload":{"resource":{}}}"#
        );
        assert!(matches!(
            Published::new(0, "items/1/created", "{}".into()),
            Err(PublishedError::ZeroId)
        ));
        assert!(!ev(1, "items/1/created").is_raw());
    }

    #[test]
    fn raw_events_keep_the_id_sequence_and_their_drops_do_not_ask_for_a_refill() {
        let hub = Hub::new(HubConfig {
            queue_capacity: 1,
            max_subscriptions: 10,
        });
        let mut all = hub.subscribe("ws", vec![filter("#")]).expect("sub");
        let mut derived_only = hub.subscribe("webhooks", vec![filter("#")]).expect("sub");
        derived_only.set_receive_raw(false);
        assert!(hub.wants_raw("spots/ab/events/hit/create"));
        hub.publish(ev(1, "items/1/created"));
        assert_eq!(all.try_recv().map(|e| e.id()), Some(1));
        assert_eq!(derived_only.try_recv().map(|e| e.id()), Some(1));
        hub.publish(raw("spots/ab/events/hit/create"));
        hub.publish(raw("spots/ab/events/hit/create"));
        assert_eq!(hub.last_id(), 1, "raw events take no id");
        assert_eq!(
            all.dropped_total(),
            1,
            "the second raw event found the queue full"
        );
        assert!(!all.take_lagged(), "the log cannot refill raw events");
        assert!(all.try_recv().is_some_and(|e| e.is_raw()));
        assert!(derived_only.try_recv().is_none(), "raw events turned off");
        let stats = hub.stats();
        assert_eq!((stats.published_total, stats.raw_published_total), (1, 2));
        drop(all);
        assert!(
            !hub.wants_raw("spots/ab/events/hit/create"),
            "only a subscription without raw events is left"
        );
    }

    #[test]
    fn subscription_limit_is_enforced_and_freed_on_drop() {
        let hub = Hub::new(HubConfig {
            queue_capacity: 4,
            max_subscriptions: 1,
        });
        let first = hub.subscribe("ws", vec![]).expect("first");
        assert_eq!(
            hub.subscribe("ws", vec![]).err(),
            Some(HubError::TooManySubscriptions(1))
        );
        drop(first);
        assert!(hub.subscribe("ws", vec![]).is_ok());
    }

    #[test]
    fn without_subscriptions_events_are_only_counted_and_with_one_they_are_delivered() {
        let hub = Hub::new(HubConfig::default());
        assert!(hub.skip_unless_subscribed(5, 5));
        assert_eq!(hub.fanned_out_id(), 5);
        assert_eq!(hub.stats().published_total, 5);
        let mut sub = hub.subscribe("ws", vec![]).expect("sub");
        assert!(
            hub.skip_unless_subscribed(6, 1),
            "no filter: nobody wants it"
        );
        sub.add_filter(filter("#"));
        assert!(
            !hub.skip_unless_subscribed(7, 1),
            "a subscriber must get it"
        );
        hub.publish(ev(7, "items/a/created"));
        assert_eq!(sub.try_recv().map(|e| e.id()), Some(7));
    }

    #[test]
    fn fanned_out_id_follows_derived_events_and_a_handle_sets_filters() {
        let hub = Hub::new(HubConfig::default());
        let mut sub = hub.subscribe("webhooks", vec![]).expect("sub");
        let handle = sub.filter_handle();
        hub.publish(ev(1, "items/1/created"));
        assert_eq!(hub.fanned_out_id(), 1);
        assert!(sub.is_empty(), "no filter: nothing queued");
        handle.set(vec![filter("items/#")]);
        hub.publish(ev(2, "items/1/created"));
        hub.publish(raw("spots/a/events/hit/create"));
        assert_eq!(hub.fanned_out_id(), 2, "raw events have no id");
        assert!(!sub.is_empty());
        assert_eq!(sub.try_recv().map(|e| e.id()), Some(2));
        handle.set(Vec::new());
        assert!(sub.filters().is_empty());
    }

    #[test]
    fn filters_can_change_while_subscribed() {
        let hub = Hub::new(HubConfig::default());
        let mut sub = hub.subscribe("ws", vec![]).expect("sub");
        hub.publish(ev(1, "items/1/created"));
        assert!(sub.try_recv().is_none());
        sub.add_filter(filter("items/#"));
        hub.publish(ev(2, "items/1/created"));
        assert_eq!(sub.try_recv().map(|e| e.id()), Some(2));
        assert!(sub.remove_filter("items/#"));
        assert!(!sub.remove_filter("items/#"));
        hub.publish(ev(3, "items/1/created"));
        assert!(sub.try_recv().is_none());
    }
}
