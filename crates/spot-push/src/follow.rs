//! Resumption: the [`EventLog`] the server implements, an in-memory one, and the
//! [`Follower`] that turns a hub subscription plus the log into a gap-free, ordered stream.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::filter::TopicFilter;
use crate::hub::{Published, Subscription};

/// A boxed future, as returned by [`EventLog`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The events log could not be read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("events log: {0}")]
pub struct LogError(pub String);

/// Read access to the server's events log, used to resume and to refill gaps.
pub trait EventLog: Send + Sync + 'static {
    /// Up to `limit` events with `id > after_id`, in increasing id order. Fewer than `limit`
    /// means the end of the log was reached. Events older than the log's hold time may be
    /// gone: the log then simply starts later.
    fn events_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Published>, LogError>>;
}

/// A bounded in-memory [`EventLog`] (for tests, and for a server without a persistent log).
pub struct MemoryEventLog {
    events: Mutex<VecDeque<Published>>,
    max_events: usize,
}

impl MemoryEventLog {
    /// Keeps the last `max_events` events.
    pub fn new(max_events: usize) -> Self {
        Self {
            events: Mutex::new(VecDeque::new()),
            max_events,
        }
    }

    /// Appends an event (ids must increase), forgetting the oldest beyond the maximum.
    pub fn append(&self, event: Published) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.push_back(event);
        while events.len() > self.max_events {
            events.pop_front();
        }
    }
}

impl EventLog for MemoryEventLog {
    fn events_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Published>, LogError>> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let start = events.partition_point(|e| e.id() <= after_id);
        let batch: Vec<Published> = events.range(start..).take(limit).cloned().collect();
        Box::pin(async move { Ok(batch) })
    }
}

/// Events read from the log per call.
const LOG_BATCH: usize = 1000;

struct Replay {
    filter: TopicFilter,
    /// Last id read from the log for this replay.
    cursor: u64,
    /// Replay stops after this id (what was delivered live when the replay was asked).
    upto: u64,
    /// Filters active when the replay was asked: their events were delivered already.
    exclude: Vec<TopicFilter>,
}

/// A hub subscription followed without gaps: events come out in increasing id order, each
/// once; when the hub dropped events (queue full), they are read back from the log.
///
/// Raw spot events ([`Published::raw`]) are passed through as they come from the queue:
/// they have no id, are never read from the log (not on resumption, not to fill a gap) and,
/// while a gap is being filled, wait in the queue behind it.
pub struct Follower {
    sub: Subscription,
    log: Arc<dyn EventLog>,
    last_id: u64,
    refill: bool,
    backlog: VecDeque<Arc<Published>>,
    replays: VecDeque<Replay>,
}

impl Follower {
    /// Follows `sub`. With `after_id`, first delivers the logged events after it that match
    /// the subscription's filters (resumption); without, starts with live events.
    pub fn new(sub: Subscription, log: Arc<dyn EventLog>, after_id: Option<u64>) -> Self {
        let last_id = after_id.unwrap_or(sub.start_id());
        Self {
            sub,
            log,
            last_id,
            refill: after_id.is_some(),
            backlog: VecDeque::new(),
            replays: VecDeque::new(),
        }
    }

    /// The subscription (to change filters).
    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }

    /// Adds `filter`; with `after_id`, the logged events after it matching `filter` and no
    /// filter active before (those were delivered already) are delivered before further
    /// live events. Such replayed events have ids below ones already delivered.
    pub fn subscribe(&mut self, filter: TopicFilter, after_id: Option<u64>) {
        let exclude = self.sub.filters();
        self.sub.add_filter(filter.clone());
        if let Some(after_id) = after_id {
            // Events after `last_id` matching the new filter may not have been queued:
            // read them from the log (queued duplicates are skipped by id).
            self.refill = true;
            if after_id < self.last_id {
                self.replays.push_back(Replay {
                    filter,
                    cursor: after_id,
                    upto: self.last_id,
                    exclude,
                });
            }
        }
    }

    /// Id of the last event delivered (or skipped as not matching).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Whether nothing is waiting: no queued, lagged, replayed or refilled event. Read
    /// [`crate::Hub::fanned_out_id`] *before*: if this then holds, every wanted event up to
    /// that id has been delivered (see [`Follower::advance_to`]).
    pub fn caught_up(&self) -> bool {
        self.backlog.is_empty()
            && self.replays.is_empty()
            && !self.refill
            && !self.sub.is_lagged()
            && self.sub.is_empty()
    }

    /// Moves the cursor to `id` (never back): a later gap refill reads the log after it.
    /// Only when [`Follower::caught_up`] held after `id` was read from
    /// [`crate::Hub::fanned_out_id`].
    pub fn advance_to(&mut self, id: u64) {
        self.last_id = self.last_id.max(id);
    }

    /// The next event. `Ok(None)` when the hub is gone. Cancel-safe (usable in `select!`).
    pub async fn next(&mut self) -> Result<Option<Arc<Published>>, LogError> {
        loop {
            if let Some(replay) = self.replays.front_mut() {
                let batch = self.log.events_after(replay.cursor, LOG_BATCH).await?;
                let mut done = batch.len() < LOG_BATCH;
                for e in batch {
                    if e.id() > replay.upto {
                        done = true;
                        break;
                    }
                    replay.cursor = e.id();
                    if replay.filter.matches(e.topic())
                        && !replay.exclude.iter().any(|f| f.matches(e.topic()))
                    {
                        self.backlog.push_back(Arc::new(e));
                    }
                }
                if done {
                    self.replays.pop_front();
                }
                if let Some(e) = self.backlog.pop_front() {
                    return Ok(Some(e));
                }
                continue;
            }
            if let Some(e) = self.backlog.pop_front() {
                self.last_id = self.last_id.max(e.id());
                return Ok(Some(e));
            }
            if self.sub.take_lagged() {
                // Set before awaiting the log, so a cancelled `next` keeps the mark.
                self.refill = true;
            }
            if self.refill {
                let batch = self.log.events_after(self.last_id, LOG_BATCH).await?;
                self.refill = batch.len() == LOG_BATCH;
                for e in batch {
                    self.last_id = self.last_id.max(e.id());
                    if self.sub.wants(e.topic()) {
                        self.backlog.push_back(Arc::new(e));
                    }
                }
                continue;
            }
            match self.sub.recv().await {
                None => return Ok(None),
                Some(e) if e.is_raw() => return Ok(Some(e)),
                Some(e) if e.id() <= self.last_id => continue,
                Some(e) => {
                    self.last_id = e.id();
                    return Ok(Some(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, HubConfig};

    fn ev(id: u64, topic: &str) -> Published {
        Published::new(id, topic, format!(r#"{{"n":{id}}}"#)).expect("valid event")
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).expect("valid filter")
    }

    /// Publishes like the server: log first, then hub.
    fn commit(hub: &Hub, log: &MemoryEventLog, id: u64, topic: &str) {
        log.append(ev(id, topic));
        hub.publish(ev(id, topic));
    }

    async fn take(f: &mut Follower, n: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(f.next().await.expect("log ok").expect("hub alive").id());
        }
        ids
    }

    #[tokio::test]
    async fn memory_log_pages_after_an_id() {
        let log = MemoryEventLog::new(3);
        for id in [2, 4, 6, 8] {
            log.append(ev(id, "a"));
        }
        let ids = |v: Vec<Published>| v.iter().map(Published::id).collect::<Vec<_>>();
        assert_eq!(ids(log.events_after(0, 10).await.expect("ok")), [4, 6, 8]);
        assert_eq!(ids(log.events_after(4, 1).await.expect("ok")), [6]);
        assert_eq!(
            ids(log.events_after(8, 10).await.expect("ok")),
            [] as [u64; 0]
        );
    }

    #[tokio::test]
    async fn overflow_is_refilled_from_the_log_in_order() {
        let hub = Hub::new(HubConfig {
            queue_capacity: 3,
            max_subscriptions: 10,
        });
        let log = Arc::new(MemoryEventLog::new(10_000));
        let sub = hub.subscribe("ws", vec![filter("items/#")]).expect("sub");
        let mut follower = Follower::new(sub, log.clone(), None);
        for id in 1..=20 {
            let topic = if id % 2 == 0 {
                "items/1/created"
            } else {
                "spots/1/connected/2"
            };
            commit(&hub, &log, id, topic);
        }
        assert!(
            hub.stats().outlets[0].dropped_total > 0,
            "the queue overflowed"
        );
        let got = take(&mut follower, 10).await;
        assert_eq!(got, (1..=10).map(|i| i * 2).collect::<Vec<_>>());
        commit(&hub, &log, 21, "items/2/created");
        assert_eq!(take(&mut follower, 1).await, [21]);
    }

    #[tokio::test]
    async fn resumes_after_an_id_then_goes_live_without_duplicates() {
        let hub = Hub::new(HubConfig::default());
        let log = Arc::new(MemoryEventLog::new(100));
        for id in 1..=5 {
            commit(&hub, &log, id, "items/1/created");
        }
        let sub = hub.subscribe("sse", vec![filter("#")]).expect("sub");
        let mut follower = Follower::new(sub, log.clone(), Some(2));
        commit(&hub, &log, 6, "items/1/created");
        assert_eq!(take(&mut follower, 4).await, [3, 4, 5, 6]);
        commit(&hub, &log, 7, "items/1/created");
        assert_eq!(take(&mut follower, 1).await, [7]);
    }

    #[tokio::test]
    async fn raw_events_pass_through_live_between_derived_ones() {
        let hub = Hub::new(HubConfig::default());
        let log = Arc::new(MemoryEventLog::new(100));
        commit(&hub, &log, 1, "items/1/created");
        let sub = hub.subscribe("sse", vec![filter("#")]).expect("sub");
        let mut follower = Follower::new(sub, log.clone(), Some(0));
        let raw = Published::raw("spots/a/events/hit/create", "{}".into()).expect("raw");
        hub.publish(raw.clone());
        commit(&hub, &log, 2, "items/1/appeared");
        // The resumption reads 1 and 2 from the log; the raw event waited in the queue.
        assert_eq!(take(&mut follower, 3).await, [1, 2, 0]);
        hub.publish(raw.clone());
        commit(&hub, &log, 3, "items/1/appeared");
        hub.publish(raw);
        // Live: in publication order.
        assert_eq!(take(&mut follower, 3).await, [0, 3, 0]);
        assert_eq!(follower.last_id(), 3, "raw events do not move the cursor");
    }

    #[tokio::test]
    async fn replay_of_a_new_filter_skips_what_other_filters_delivered() {
        let hub = Hub::new(HubConfig::default());
        let log = Arc::new(MemoryEventLog::new(100));
        let sub = hub.subscribe("ws", vec![filter("items/#")]).expect("sub");
        let mut follower = Follower::new(sub, log.clone(), None);
        commit(&hub, &log, 1, "items/1/created");
        commit(&hub, &log, 2, "spots/1/connected/9");
        assert_eq!(take(&mut follower, 1).await, [1]);
        follower.subscribe(filter("#"), Some(0));
        commit(&hub, &log, 3, "spots/1/disconnected/9");
        // 2 comes from the log (1 was delivered under items/#), then 3 live.
        assert_eq!(take(&mut follower, 2).await, [2, 3]);
    }
}
