//! `SPOT_OUT`, a cluster's derived events log, as this node's push layer and REST API see
//! it: the feed of its hub ([`feed`]: every event the stages store, live, to this node's
//! WebSocket, SSE and MQTT outlets and webhooks) and of its `/api/events` (the recent
//! events kept in its replica's domain, [`EventsView`]), and the log its outlets resume and
//! catch up from ([`JetStreamEvents`]). A `SPOT_OUT` message holds the derived events of one
//! input message; an event's push id is made of the message's stream sequence and the
//! event's place in it ([`wire::out_event_id`]), so a client resumes with `Last-Event-ID`
//! on any node.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::Context as JetStream;
use futures_util::{FutureExt, StreamExt};
use spot_push::{BoxFuture, EventLog, LogError, Published};
use tokio::sync::watch;

use super::wire;
use crate::clock::now_ms;
use crate::domain::Domain;
use crate::outlets::{to_published, Publisher};
use crate::shutdown::Phase;

/// `SPOT_OUT` messages read at once at most.
const FEED_BATCH: usize = 256;

/// Wait before the feed starts again after its reader failed.
const FEED_RETRY: Duration = Duration::from_millis(500);

/// The derived events this node's REST API serves (`/api/events`): the replica's domain
/// keeps the recent ones ([`Domain::keep_event`]), as the embedded server's domain keeps
/// its own.
pub struct EventsView {
    /// The node's replica.
    pub domain: Arc<RwLock<Domain>>,
    /// At start, the last this many `SPOT_OUT` messages are read into it (each holds one
    /// event at least: the domain's `events_max_in_memory`).
    pub history: u64,
    /// Every `SPOT_OUT` message up to this sequence is in the domain ([`events_held`]).
    pub held: watch::Sender<u64>,
}

/// A reader of how far an [`EventsView`] holds `SPOT_OUT` (0 until its history is read).
pub fn events_held() -> (watch::Sender<u64>, watch::Receiver<u64>) {
    watch::channel(0)
}

/// Feeds `publisher` every event stored in `SPOT_OUT` from now on, and keeps them in
/// `view` (first reading the recent history into it), until the node stops; `fed` says up
/// to which message it has pushed. A reader that
/// fails starts again after the last event it handed over (the hub's subscribers never see
/// a gap, or an event twice).
pub async fn feed(
    js: JetStream,
    publisher: Publisher,
    view: Option<EventsView>,
    fed: watch::Sender<u64>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut last: Option<u64> = None;
    loop {
        let reading = follow(&js, &publisher, view.as_ref(), &fed, &mut last);
        tokio::select! {
            why = reading => tracing::warn!("the push feed from {} stopped: {why}", wire::OUT_STREAM),
            _ = phase.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(FEED_RETRY) => {}
            _ = phase.changed() => return,
        }
    }
}

/// Reads `SPOT_OUT` after `last` (from its end when `None`, after reading the history
/// into `view`) into the hub and `view`; returns why it stopped.
async fn follow(
    js: &JetStream,
    publisher: &Publisher,
    view: Option<&EventsView>,
    fed: &watch::Sender<u64>,
    last: &mut Option<u64>,
) -> String {
    let mut stream = match js.get_stream(wire::OUT_STREAM).await {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    if last.is_none() {
        let (first, end) = match stream.info().await {
            Ok(info) => (info.state.first_sequence, info.state.last_sequence),
            Err(e) => return e.to_string(),
        };
        if let Some(view) = view {
            if let Err(e) = read_history(&stream, view, first, end).await {
                return format!("reading the recent events: {e}");
            }
            view.held.send_replace(end);
        }
        // Pushed from there on: what came before is history (pushed when it came).
        *last = Some(end);
        fed.send_replace(end);
    }
    let deliver_policy = DeliverPolicy::ByStartSequence {
        start_sequence: last.unwrap_or(0) + 1,
    };
    let consumer = match stream
        .create_consumer(OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
    {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let mut messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => return e.to_string(),
    };
    loop {
        let Some(first) = messages.next().await else {
            return "the reader ended".into();
        };
        let mut batch = vec![first];
        while batch.len() < FEED_BATCH {
            match messages.next().now_or_never() {
                Some(Some(m)) => batch.push(m),
                _ => break,
            }
        }
        for message in batch {
            let message = match message {
                Ok(m) => m,
                Err(e) => return e.to_string(),
            };
            let seq = match message.info() {
                Ok(info) => info.stream_sequence,
                Err(e) => return e.to_string(),
            };
            let log: Vec<(i64, Arc<str>)> = wire::lines_of(&message.payload)
                .map(|doc| (0, Arc::from(doc)))
                .collect();
            if let Some(view) = view {
                keep(view, log.iter().map(|(_, doc)| &**doc));
            }
            // The hub numbers a message's events back from the last one's id.
            if let Some(places) = log.len().checked_sub(1) {
                publisher.committed(&log, wire::out_event_id(seq, places));
            }
            *last = Some(seq);
            fed.send_replace(seq);
            if let Some(view) = view {
                view.held.send_replace(seq);
            }
        }
    }
}

/// How long raw spot events wait at most for the node's feed to push the derived events
/// of their commit (see [`raw_feed`]).
const RAW_WAITS_AT_MOST: Duration = Duration::from_secs(1);

/// Hands `publisher` the raw spot events every partition's owner publishes after its
/// commits (`--publish-raw`; live only, as on the embedded server), until the node stops;
/// each message after the node's [`feed`] (`fed`) has pushed the derived events of its
/// commit (at most [`RAW_WAITS_AT_MOST`] later), as the embedded server orders them.
pub async fn raw_feed(
    js: JetStream,
    publisher: Publisher,
    fed: watch::Receiver<u64>,
    mut phase: watch::Receiver<Phase>,
) {
    loop {
        let reading = async {
            let mut raw = js
                .client()
                .subscribe(wire::RAW_SUBJECTS)
                .await
                .map_err(|e| e.to_string())?;
            while let Some(message) = raw.next().await {
                let (after, events) = wire::read_raw(&message.payload);
                let mut fed = fed.clone();
                let _ =
                    tokio::time::timeout(RAW_WAITS_AT_MOST, fed.wait_for(|&at| at >= after)).await;
                for event in events {
                    match event {
                        Ok((topic, payload)) => publisher.raw_made(&topic, payload),
                        Err(e) => tracing::warn!("a raw spot event does not parse: {e}"),
                    }
                }
            }
            Ok::<(), String>(())
        };
        tokio::select! {
            result = reading => tracing::warn!("the raw events feed stopped: {:?}", result.err()),
            _ = phase.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(FEED_RETRY) => {}
            _ = phase.changed() => return,
        }
    }
}

/// The id of the last derived event `SPOT_OUT` holds now (a new webhook subscription, or
/// the cluster's first MQTT outlet, starts after it).
pub async fn last_event_id(js: &JetStream) -> Result<u64, String> {
    let mut stream = js
        .get_stream(wire::OUT_STREAM)
        .await
        .map_err(|e| format!("{}: {e}", wire::OUT_STREAM))?;
    let last = stream
        .info()
        .await
        .map_err(|e| format!("{}: {e}", wire::OUT_STREAM))?
        .state
        .last_sequence;
    Ok(wire::out_event_id(last + 1, 0) - 1)
}

/// Keeps `docs` in `view`'s domain (a document that does not parse is logged and skipped).
fn keep<'a>(view: &EventsView, docs: impl Iterator<Item = &'a str>) {
    let now = now_ms();
    let mut domain = view.domain.write().unwrap_or_else(|e| e.into_inner());
    for doc in docs {
        if let Err(e) = domain.keep_event(doc, now) {
            tracing::warn!(
                "{}: an event does not parse, not kept: {e}",
                wire::OUT_STREAM
            );
        }
    }
}

/// Reads the last [`EventsView::history`] messages of `SPOT_OUT` up to `end` (the stream
/// holding `first..=end`) into `view`.
async fn read_history(
    stream: &async_nats::jetstream::stream::Stream,
    view: &EventsView,
    first: u64,
    end: u64,
) -> Result<(), String> {
    if end == 0 || first > end {
        return Ok(());
    }
    let start = (end.saturating_sub(view.history.max(1)) + 1).max(first);
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        let info = message.info().map_err(|e| e.to_string())?;
        let seq = info.stream_sequence;
        if seq > end {
            break;
        }
        let docs: Vec<String> = wire::lines_of(&message.payload).map(String::from).collect();
        keep(view, docs.iter().map(String::as_str));
        if seq == end || info.pending == 0 {
            break;
        }
    }
    Ok(())
}

/// `SPOT_OUT` as the log the outlets resume and catch up from.
pub struct JetStreamEvents {
    js: JetStream,
}

impl JetStreamEvents {
    /// Over `js`'s `SPOT_OUT`.
    pub fn new(js: JetStream) -> Self {
        JetStreamEvents { js }
    }

    async fn read(&self, after_id: u64, limit: usize) -> Result<Vec<Published>, String> {
        let mut stream = self
            .js
            .get_stream(wire::OUT_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        let last = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .last_sequence;
        // The message holding the event `after_id` may hold later ones too.
        let (first, _) = wire::out_event_position(after_id);
        if last < first.max(1) || limit == 0 {
            return Ok(Vec::new());
        }
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: first.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(message) = messages.next().await else {
                break;
            };
            let message = message.map_err(|e| e.to_string())?;
            let info = message.info().map_err(|e| e.to_string())?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            for (place, doc) in wire::lines_of(&message.payload).enumerate() {
                let id = wire::out_event_id(seq, place);
                if id <= after_id || out.len() == limit {
                    continue;
                }
                match to_published(id, &doc) {
                    Ok(p) => out.push(p),
                    Err(e) => tracing::warn!("events log: skipped: {e}"),
                }
            }
            if pending == 0 || seq >= last {
                break;
            }
        }
        Ok(out)
    }
}

impl EventLog for JetStreamEvents {
    fn events_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Published>, LogError>> {
        async move {
            self.read(after_id, limit)
                .await
                .map_err(|e| LogError(format!("{} after {after_id}: {e}", wire::OUT_STREAM)))
        }
        .boxed()
    }
}
