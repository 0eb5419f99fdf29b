//! The push layer wired into the server: the derived events log as a [`spot_push::EventLog`],
//! the [`Publisher`] that hands every committed derived event to the [`Hub`], and the
//! outlets (`/api/ws`, `/api/stream`, `/api/subscriptions[/{id}]`, MQTT) with their metrics.
//!
//! Event ids: the pushed `id` is dense (1, 2, 3, …, safe as a JSON number): the store numbers
//! the derived events of each commit and keeps the id of a batch's last event with the batch
//! (`event_batches.last_event_id`); its prune keeps the newest batch, so ids continue after
//! a restart. The REST API's string ids stay as they are.
//!
//! Raw spot events (`publish_raw`): every accepted upstream event is also published, after
//! its commit, under `spots/<spot id>/events/<resource_type>/<action>` with the payload
//! `{"resource": <the event's object>, "serial_number", "seq", "time_event",
//! "time_created"}`; they have no push id and are live only (see [`spot_push::Published::raw`]).
//! Off: one branch per commit. On: an event no subscription's filter matches costs a topic
//! and a match, no payload.

use std::path::Path;
use std::sync::Arc;

pub use crate::config::PushConfig;
use crate::store::EventPages;
use serde::Deserialize;
use serde_json::value::RawValue;
use spot_push::webhook::{ApiError, SubscriptionBook, WebhookError, WebhookStore, Webhooks};
use spot_push::{
    stream_router, BoxFuture, EventLog, Hub, HubError, LogError, MqttOutlet, MqttPosition,
    MqttStartError, Published, PublishedError, StreamShutdown, StreamState,
};

/// Why the push layer could not start.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The events log could not be opened for reading.
    #[error("push: events log {path}: {source}")]
    Log {
        /// The database.
        path: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The webhook subscriptions could not be opened or started.
    #[error("push: webhooks: {0}")]
    Webhooks(#[from] WebhookError),
    /// The webhook store could not be opened.
    #[error("push: webhook store: {0}")]
    WebhookStore(#[from] spot_push::webhook::StoreError),
    /// The hub refused an outlet.
    #[error("push: {0}")]
    Hub(#[from] HubError),
    /// The MQTT outlet could not start (its position in `<data>/mqtt.db`).
    #[error("push: mqtt: {0}")]
    Mqtt(#[from] spot_push::MqttStartError),
}

/// The stored JSON of a derived event ([`crate::domain::LogEvent`]), borrowed.
#[derive(Deserialize)]
struct StoredEvent<'a> {
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    time_event: Option<&'a RawValue>,
    #[serde(borrow)]
    time_created: &'a RawValue,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Why a committed event is not pushed (it stays stored; the push skips it and logs why).
#[derive(Debug, thiserror::Error)]
pub enum NotPublishable {
    /// A stored derived event document does not parse.
    #[error("event row {id}: {source}")]
    BadRow {
        /// The event's push id.
        id: u64,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The push crate refused the event (e.g. a wildcard in its topic).
    #[error("event row {id}: {source}")]
    Refused {
        /// The event's push id (0 for a raw event).
        id: u64,
        /// Why.
        source: PublishedError,
    },
    /// A raw spot event of the journal cannot be published.
    #[error("raw event of spot {serial} (seq {seq:?}): {problem}")]
    BadRaw {
        /// The spot's serial number.
        serial: String,
        /// The event's sequence number.
        seq: Option<u64>,
        /// What is wrong.
        problem: RawProblem,
    },
}

/// What is wrong with a raw spot event (see [`NotPublishable::BadRaw`]).
#[derive(Debug, thiserror::Error)]
pub enum RawProblem {
    /// Its JSON text does not parse as `[type, action, object]`.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// The protocol decoder refuses it.
    #[error("{0}")]
    Decode(#[from] spot_protocol::DecodeError),
    /// The text holds no event.
    #[error("no event")]
    Empty,
    /// The event's object is not a JSON object.
    #[error("the event's object is not a JSON object")]
    NotAnObject,
    /// The push crate refused it.
    #[error("{0}")]
    Refused(#[from] PublishedError),
}

/// The pushed form of a stored derived event: its topic and the payload of
/// [`spot_protocol::topics::event_payload`] (`resource`, `time_event`, `time_created`), built
/// from the stored JSON without re-parsing the resource.
///
/// Runs on the commit path for every derived event: a document in the layout the domain
/// writes ([`crate::domain::LogEvent`]'s fields in order, `data` last, the topic and times
/// needing no escapes) is split where its fields are, without a JSON parser; anything else
/// (e.g. an escaped topic) goes through serde.
pub fn to_published(id: u64, doc: &str) -> Result<Published, NotPublishable> {
    let (topic, time_event, time_created, data) = match split_log_doc(doc) {
        Some(parts) => parts,
        None => {
            let event: StoredEvent<'_> = serde_json::from_str(doc)
                .map_err(|source| NotPublishable::BadRow { id, source })?;
            let time_event = event.time_event.map_or("null", RawValue::get);
            return Published::from_json_parts(
                id,
                &event.topic,
                event.data.get(),
                time_event,
                event.time_created.get(),
            )
            .map_err(|source| NotPublishable::Refused { id, source });
        }
    };
    Published::from_json_parts(id, topic, data, time_event, time_created)
        .map_err(|source| NotPublishable::Refused { id, source })
}

/// `"text"` at the start of `rest` (no backslash inside): `(text with its quotes, after)`.
fn plain_json_string(rest: &str) -> Option<(&str, &str)> {
    let inner = rest.strip_prefix('"')?;
    let end = inner.find(['"', '\\'])?;
    (inner.as_bytes()[end] == b'"').then(|| rest.split_at(end + 2))
}

/// The (topic, time_event JSON, time_created JSON, data JSON) of a derived event document
/// `{"id":"..","topic":"..","time_event":".."|null,"time_created":"..","data":{..}}` whose
/// strings have no escapes; `None` for any other text.
fn split_log_doc(doc: &str) -> Option<(&str, &str, &str, &str)> {
    let rest = doc.strip_prefix("{\"id\":")?;
    let (_, rest) = plain_json_string(rest)?;
    let rest = rest.strip_prefix(",\"topic\":")?;
    let (topic, rest) = plain_json_string(rest)?;
    let rest = rest.strip_prefix(",\"time_event\":")?;
    let (time_event, rest) = match rest.strip_prefix("null") {
        Some(rest) => ("null", rest),
        None => plain_json_string(rest)?,
    };
    let rest = rest.strip_prefix(",\"time_created\":")?;
    let (time_created, rest) = plain_json_string(rest)?;
    let data = rest.strip_prefix(",\"data\":")?.strip_suffix('}')?;
    (data.starts_with('{') && data.ends_with('}')).then_some((
        &topic[1..topic.len() - 1],
        time_event,
        time_created,
        data,
    ))
}

/// The event of an upstream row, borrowed: `["<resource_type>","<action>",{...}]`.
#[derive(Deserialize)]
struct RawParts<'a>(
    #[serde(borrow)] std::borrow::Cow<'a, str>,
    #[serde(borrow)] std::borrow::Cow<'a, str>,
    #[serde(borrow)] &'a RawValue,
);

/// The device times of an event object (`time` of a spot status or a hit, `time_last` of a
/// presence: what [`spot_protocol::Event::timestamp`] reads).
#[derive(Deserialize)]
struct DeviceTimes<'a> {
    #[serde(borrow)]
    time: Option<&'a RawValue>,
    #[serde(borrow)]
    time_last: Option<&'a RawValue>,
}

/// The raw event of an accepted upstream row (`--publish-raw`), or `None` when no
/// subscription wants its topic (then no payload is built).
pub fn raw_published(
    row: &crate::domain::UpstreamRow,
    hub: &Hub,
) -> Result<Option<Published>, NotPublishable> {
    let Some((topic, payload)) = raw_event(row, |topic| hub.wants_raw(topic))? else {
        return Ok(None);
    };
    Published::raw(&topic, payload)
        .map(Some)
        .map_err(|e| NotPublishable::BadRaw {
            serial: row.serial.to_string(),
            seq: row.seq,
            problem: e.into(),
        })
}

/// The topic and payload of the raw event of an accepted upstream row, or `None` when
/// `wanted` refuses its topic (then no payload is built).
pub fn raw_event(
    row: &crate::domain::UpstreamRow,
    wanted: impl FnOnce(&str) -> bool,
) -> Result<Option<(String, String)>, NotPublishable> {
    raw_payload(row, wanted).map_err(|problem| NotPublishable::BadRaw {
        serial: row.serial.to_string(),
        seq: row.seq,
        problem,
    })
}

fn raw_payload(
    row: &crate::domain::UpstreamRow,
    wanted: impl FnOnce(&str) -> bool,
) -> Result<Option<(String, String)>, RawProblem> {
    let RawParts(resource_type, action, _) = serde_json::from_str(&row.event_json)?;
    let topic = spot_protocol::topics::raw_spot_event(row.spot_id.text(), &resource_type, &action);
    if !wanted(&topic) {
        return Ok(None);
    }
    // The journal keeps the event as the spot sent it (white space, lenient values such as
    // "30" for 30); applications get the codec's normalised encoding.
    let event = crate::domain::decode_json_event(&row.event_json).ok_or(RawProblem::Empty)??;
    let canonical = crate::domain::encode_json(&event);
    let RawParts(_, _, object) = serde_json::from_str(&canonical)?;
    if !object.get().starts_with('{') {
        return Err(RawProblem::NotAnObject);
    }
    let times: DeviceTimes<'_> = serde_json::from_str(object.get())?;
    let time_event = match &*resource_type {
        "presence" => times.time_last,
        "spot" | "hit" => times.time,
        _ => None,
    }
    .map(RawValue::get)
    .filter(|t| t.starts_with('"'))
    .unwrap_or("null");
    let serial = serde_json::to_string(&*row.serial)?;
    let seq = row
        .seq
        .map_or_else(|| "null".to_string(), |s| s.to_string());
    let payload = format!(
        r#"{{"resource":{},"serial_number":{serial},"seq":{seq},"time_event":{time_event},"time_created":"{}"}}"#,
        object.get(),
        spot_protocol::Timestamp(row.time_received)
    );
    Ok(Some((topic, payload)))
}

/// The derived events log as the push crate reads it: pages of the store's log (by push id)
/// turned into [`Published`] events, off the async runtime.
pub struct StoredEvents {
    pages: Arc<dyn EventPages>,
}

impl StoredEvents {
    /// Over the store's paging reader.
    pub fn new(pages: Arc<dyn EventPages>) -> Self {
        StoredEvents { pages }
    }

    fn read(
        pages: &dyn EventPages,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<Published>, LogError> {
        let page = pages
            .page(after_id, limit)
            .map_err(|e| LogError(format!("events after {after_id}: {e}")))?;
        let mut out = Vec::with_capacity(page.len());
        for (id, doc) in page {
            match to_published(id, &doc) {
                Ok(p) => out.push(p),
                // One bad line is one skipped event, not a broken stream.
                Err(e) => tracing::warn!("events log: skipped: {e}"),
            }
        }
        Ok(out)
    }
}

impl EventLog for StoredEvents {
    fn events_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Published>, LogError>> {
        let pages = self.pages.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || Self::read(pages.as_ref(), after_id, limit))
                .await
                .map_err(|e| LogError(format!("events log task: {e}")))?
        })
    }
}

/// Called by the pipeline after each commit: publishes the commit's derived events (and,
/// with `publish_raw`, its raw spot events).
#[derive(Clone)]
pub struct Publisher {
    hub: Hub,
    raw: bool,
}

impl Publisher {
    /// `log` are the derived events of a commit (id, time, JSON document) in order;
    /// `last_id` the push id of the last one. Never blocks.
    pub fn committed(&self, log: &[(i64, Arc<str>)], last_id: u64) {
        if self.hub.skip_unless_subscribed(last_id, log.len() as u64) {
            return;
        }
        let first = (last_id + 1).saturating_sub(log.len() as u64);
        for (id, (_, doc)) in (first..).zip(log) {
            match to_published(id, doc) {
                Ok(event) => self.hub.publish(event),
                Err(e) => tracing::warn!("push: event not published: {e}"),
            }
        }
    }

    /// A raw spot event made elsewhere ([`raw_event`] on a cluster's stage), published when
    /// `publish_raw` is on and someone wants its topic. Never blocks.
    pub fn raw_made(&self, topic: &str, payload: String) {
        if !self.raw || !self.hub.wants_raw(topic) {
            return;
        }
        match Published::raw(topic, payload) {
            Ok(event) => self.hub.publish(event),
            Err(e) => tracing::warn!("push: raw event {topic}: {e}: not published"),
        }
    }

    /// `rows` are the upstream events of a commit, in order: published as raw spot events
    /// when `publish_raw` is on (nothing is done when it is off). Never blocks.
    pub fn raw_events<'a>(&self, rows: impl IntoIterator<Item = &'a crate::domain::UpstreamRow>) {
        if !self.raw {
            return;
        }
        for row in rows {
            match raw_published(row, &self.hub) {
                Ok(Some(event)) => self.hub.publish(event),
                Ok(None) => {}
                Err(e) => tracing::warn!("push: {e}: not published"),
            }
        }
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publisher")
    }
}

/// The MQTT outlet, while it runs here.
pub type MqttSlot = Arc<std::sync::Mutex<Option<MqttOutlet>>>;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running push layer.
pub struct Outlets {
    hub: Hub,
    router: axum::Router,
    /// The embedded server's webhooks (a cluster node's are [`crate::cluster::webhooks`]).
    webhooks: Option<Arc<Webhooks>>,
    /// The subscriptions resource (`/api/subscriptions`).
    subscriptions: Arc<dyn SubscriptionBook>,
    /// The MQTT outlet while this node runs it (always on the embedded server with
    /// `--mqtt`; on a cluster, while this node holds its lease: [`crate::cluster::mqtt`]).
    mqtt: MqttSlot,
    publish_raw: bool,
    /// Ends the WebSocket connections and SSE streams when the server stops.
    streams: StreamShutdown,
}

impl std::fmt::Debug for Outlets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlets")
            .field("mqtt", &lock(&self.mqtt).is_some())
            .finish_non_exhaustive()
    }
}

impl Outlets {
    /// Starts the hub and the outlets over the store's derived events log (`events`, for
    /// resuming and catching up); webhook subscriptions live in `<data_dir>/webhooks.db`, the
    /// MQTT outlet's position (the last event acknowledged by the broker) in
    /// `<data_dir>/mqtt.db`.
    /// Needs a tokio runtime.
    pub fn start(
        data_dir: &Path,
        events: Arc<dyn EventPages>,
        config: &PushConfig,
    ) -> Result<Self, PushError> {
        let log: Arc<dyn EventLog> = Arc::new(StoredEvents::new(events));
        let hub = Hub::new(config.hub.clone());
        let webhooks = Webhooks::start(
            WebhookStore::open(&data_dir.join("webhooks.db"))?,
            &hub,
            log.clone(),
            config.webhooks.clone(),
        )?;
        let subscriptions = webhooks.book();
        let outlets = Self::start_with(hub, log.clone(), config, Some(webhooks), subscriptions);
        if let Some(mqtt) = &config.mqtt {
            let outlet = MqttOutlet::spawn_durable(
                mqtt.clone(),
                &outlets.hub,
                log,
                MqttPosition::open(&data_dir.join("mqtt.db")).map_err(MqttStartError::from)?,
            )?;
            *lock(&outlets.mqtt) = Some(outlet);
        }
        Ok(outlets)
    }

    /// [`Outlets::start`] over another derived events log (a cluster's `SPOT_OUT`,
    /// [`crate::cluster::events`]), with webhook subscriptions kept and delivered elsewhere:
    /// `subscriptions` makes them, given the hub and the log (a cluster's,
    /// [`crate::cluster::webhooks`]); no MQTT outlet runs until one is put in
    /// [`Outlets::mqtt_slot`].
    pub fn start_shared(
        log: Arc<dyn EventLog>,
        config: &PushConfig,
        subscriptions: impl FnOnce(
            &Hub,
            Arc<dyn EventLog>,
        ) -> Result<Arc<dyn SubscriptionBook>, WebhookError>,
    ) -> Result<Self, PushError> {
        let hub = Hub::new(config.hub.clone());
        let subscriptions = subscriptions(&hub, log.clone())?;
        Ok(Self::start_with(hub, log, config, None, subscriptions))
    }

    fn start_with(
        hub: Hub,
        log: Arc<dyn EventLog>,
        config: &PushConfig,
        webhooks: Option<Arc<Webhooks>>,
        subscriptions: Arc<dyn SubscriptionBook>,
    ) -> Self {
        let streams = StreamShutdown::new();
        let router = stream_router(StreamState {
            hub: hub.clone(),
            log: log.clone(),
            limits: config.stream.clone(),
            shutdown: streams.clone(),
        })
        .merge(spot_push::webhook::router(
            subscriptions.clone(),
            config.webhooks.max_api_body_bytes,
        ));
        Self {
            hub,
            router,
            webhooks,
            subscriptions,
            mqtt: MqttSlot::default(),
            publish_raw: config.publish_raw,
            streams,
        }
    }

    /// Where the MQTT outlet runs while this node runs it.
    pub fn mqtt_slot(&self) -> MqttSlot {
        self.mqtt.clone()
    }

    /// The hook the pipeline calls after each commit.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            hub: self.hub.clone(),
            raw: self.publish_raw,
        }
    }

    /// The topic filter of webhook subscription `id` (`None`: no such subscription), for
    /// `GET /api/subscriptions/{id}/events`.
    pub async fn subscription_filter(&self, id: i64) -> Result<Option<String>, ApiError> {
        Ok(self.subscriptions.get(id).await?.map(|s| s.topic_filter))
    }

    /// The hub (for tests and in-process consumers).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The router of `/api/ws`, `/api/stream`, `/api/subscriptions[/{id}]`.
    pub fn router(&self) -> &axum::Router {
        &self.router
    }

    /// Prometheus lines of the hub (per-outlet queues and drops) and the MQTT outlet.
    pub fn render_metrics(&self) -> String {
        let mut out = self.hub.stats().render_prometheus();
        if let Some(s) = lock(&self.mqtt).as_ref().map(MqttOutlet::stats) {
            let series = [
                (
                    "spot_push_mqtt_connected",
                    "gauge",
                    "1 while connected to the broker.",
                    u64::from(s.connected),
                ),
                (
                    "spot_push_mqtt_sent_total",
                    "counter",
                    "Events published to the broker.",
                    s.sent_total,
                ),
                (
                    "spot_push_mqtt_acked_total",
                    "counter",
                    "Publications the broker acknowledged.",
                    s.acked_total,
                ),
                (
                    "spot_push_mqtt_connection_errors_total",
                    "counter",
                    "Failed connections to the broker.",
                    s.connection_errors_total,
                ),
                (
                    "spot_push_mqtt_too_large_total",
                    "counter",
                    "Events too large for the broker, not sent.",
                    s.too_large_total,
                ),
            ];
            for (name, kind, help, value) in series {
                crate::metrics::family(&mut out, name, kind, help);
                out.push_str(&format!("{name} {value}\n"));
            }
        }
        out
    }

    /// Ends the open event streams (the server is stopping): WebSocket connections get a
    /// close frame 1001, SSE streams a `shutdown` event; new ones get `503`. Event streams
    /// never end by themselves, so without this the graceful stop would wait for
    /// `shutdown_grace` (clients resume by id).
    pub fn close_streams(&self) {
        self.streams.shut_down();
    }

    /// Resolves when every WebSocket connection has finished its close handshake (they are
    /// not HTTP connections any more once upgraded, so the HTTP drain does not wait for
    /// them).
    pub async fn streams_closed(&self) {
        self.streams.closed().await;
    }

    /// Stops the webhook workers (queued deliveries stay stored) and the MQTT outlet (its
    /// position saved).
    pub fn shutdown(&self) {
        if let Some(webhooks) = &self.webhooks {
            webhooks.shutdown();
        }
        if let Some(mqtt) = lock(&self.mqtt).take() {
            mqtt.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spot_push::HubConfig;

    fn doc(topic: &str) -> String {
        format!(r#"{{"topic":"{topic}","time_event":null,"time_created":"t","data":{{}}}}"#)
    }
    use serde_json::{json, Value};

    #[test]
    fn a_stored_event_becomes_the_topic_and_the_spec_payload() {
        let doc = r#"{"id":"0001","topic":"items/0001/created","time_event":"2024-01-01T00:00:01.000Z","time_created":"2026-11-24T21:00:00.002Z","data":{"id":"0001","label":null}}"#;
        let p = to_published(7, doc).expect("valid");
        assert_eq!(p.id(), 7);
        assert_eq!(p.topic(), "items/0001/created");
        let payload: Value = serde_json::from_str(p.payload_json()).expect("json");
        assert_eq!(
            payload,
            spot_protocol::topics::event_payload(
                json!({"id": "0001", "label": null}),
                Some("2024-01-01T00:00:01.000Z"),
                "2026-11-24T21:00:00.002Z"
            )
        );
        let no_device_time = r#"{"id":"2","topic":"spots/1/connected/7","time_event":null,"time_created":"2026-11-24T21:00:00.002Z","data":{}}"#;
        let p = to_published(8, no_device_time).expect("valid");
        let payload: Value = serde_json::from_str(p.payload_json()).expect("json");
        assert_eq!(payload["time_event"], Value::Null);
    }

    /// The split of the domain's layout and serde's parse give the same event; a document
    /// the split does not take (escapes, other layout) is parsed.
    #[test]
    fn the_layout_split_and_the_parser_agree() {
        let docs = [
            r#"{"id":"0001","topic":"items/0001/created","time_event":"2024-01-01T00:00:01.000Z","time_created":"2026-11-24T21:00:00.002Z","data":{"id":"0001","label":null,"x":{"y":"}"}}}"#,
            r#"{"id":"2","topic":"spots/1/connected/7","time_event":null,"time_created":"2026-11-24T21:00:00.002Z","data":{}}"#,
            // Escaped topic, pretty layout, other key order: the parser's.
            r#"{"id":"3","topic":"spots/1/connected/a\"b","time_event":null,"time_created":"t","data":{}}"#,
            "{ \"id\": \"4\", \"topic\": \"a/b\", \"time_event\": null, \"time_created\": \"t\", \"data\": {} }",
            r#"{"topic":"a/b","id":"5","time_created":"t","time_event":null,"data":{"k":1}}"#,
        ];
        for (n, doc) in docs.iter().enumerate() {
            assert_eq!(split_log_doc(doc).is_some(), n < 2, "{doc}");
            let event: StoredEvent<'_> = serde_json::from_str(doc).expect("test doc is JSON");
            let expected = Published::from_value(
                9,
                &event.topic,
                &spot_protocol::topics::event_payload(
                    serde_json::from_str(event.data.get()).unwrap(),
                    event
                        .time_event
                        .map(|t| serde_json::from_str::<&str>(t.get()).unwrap()),
                    serde_json::from_str::<&str>(event.time_created.get()).unwrap(),
                ),
            )
            .expect("valid");
            let got = to_published(9, doc).expect("valid");
            assert_eq!((got.topic(), got.id()), (expected.topic(), 9), "{doc}");
            assert_eq!(
                serde_json::from_str::<Value>(got.envelope_json()).unwrap(),
                serde_json::from_str::<Value>(expected.envelope_json()).unwrap(),
                "{doc}"
            );
        }
        for bad in [
            r#"{"id":"1","topic":"a/b","time_event":null,"time_created":"t","data":{}"#,
            r#"{"id":"1","topic":"a/b","time_event":null,"time_created":"t","data":7}"#,
        ] {
            assert!(split_log_doc(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_bad_row_is_an_error_naming_the_event() {
        let e = to_published(9, "{").expect_err("not JSON").to_string();
        assert!(e.contains("event row 9"), "{e}");
        let e = to_published(10, r#"{"topic":"a/+","time_created":"t","data":{}}"#)
            .expect_err("wildcard topic")
            .to_string();
        assert!(e.contains("10"), "{e}");
    }

    fn row(json: &str, seq: Option<u64>) -> crate::domain::UpstreamRow {
        crate::domain::UpstreamRow {
            serial: "20\"3".into(),
            spot_id: crate::ids::Id(0x01a2),
            seq,
            time_received: 1_764_000_000_002,
            event_json: json.into(),
        }
    }

    fn subscribe_all(hub: &Hub) -> spot_push::Subscription {
        hub.subscribe("test", vec![spot_push::TopicFilter::new("#").expect("f")])
            .expect("sub")
    }

    #[test]
    fn a_raw_event_gets_its_topic_and_the_documented_payload() {
        let hub = Hub::new(HubConfig::default());
        let _sub = subscribe_all(&hub);
        let presence = r#"["presence","update",{"item_code":"ab","proximity":"near","time_started":"2024-01-01T00:00:00Z","time_last":"2024-01-01T00:00:01.500Z","seq":9}]"#;
        let event = raw_published(&row(presence, Some(9)), &hub)
            .expect("valid")
            .expect("wanted");
        assert!(event.is_raw());
        assert_eq!(
            event.topic(),
            "spots/00000000000001a2/events/presence/update"
        );
        let payload: Value = serde_json::from_str(event.payload_json()).expect("json");
        assert_eq!(
            payload,
            json!({
                "resource": {"item_code": "ab", "proximity": "near",
                    "time_started": "2024-01-01T00:00:00Z",
                    "time_last": "2024-01-01T00:00:01.500Z", "seq": 9},
                "serial_number": "20\"3",
                "seq": 9,
                "time_event": "2024-01-01T00:00:01.500Z",
                "time_created": "2025-11-24T16:00:00.002Z",
            })
        );
        let hit = r#"["hit","create",{"time":"2024-01-01T00:00:02Z","item_code":"ab"}]"#;
        let payload: Value = serde_json::from_str(
            raw_published(&row(hit, None), &hub)
                .expect("valid")
                .expect("wanted")
                .payload_json(),
        )
        .expect("json");
        assert_eq!(
            (&payload["time_event"], &payload["seq"]),
            (&json!("2024-01-01T00:00:02Z"), &Value::Null)
        );
        // Applications get the codec's normalised object, not the text as the spot sent it.
        let lenient =
            "[\"hit\", \"create\",\r\n {\"time\": \"2024-01-01T00:00:02Z\", \"antenna\": \"2\"}]";
        let event = raw_published(&row(lenient, None), &hub)
            .expect("valid")
            .expect("wanted");
        let payload: Value = serde_json::from_str(event.payload_json()).expect("json");
        assert_eq!(
            payload["resource"],
            json!({"time": "2024-01-01T00:00:02Z", "antenna": 2})
        );
        // A config has no device time; a spot's `time` that is not a string is not one.
        for json in [
            r#"["config","create",{"time":"2024-01-01T00:00:02Z"}]"#,
            r#"["spot","create",{"time":5}]"#,
        ] {
            let event = raw_published(&row(json, None), &hub)
                .expect("valid")
                .expect("wanted");
            let payload: Value = serde_json::from_str(event.payload_json()).expect("json");
            assert_eq!(payload["time_event"], Value::Null, "{json}");
        }
    }

    #[test]
    fn a_raw_event_nobody_wants_is_not_built_and_a_bad_one_names_the_spot() {
        let hub = Hub::new(HubConfig::default());
        let _items = hub
            .subscribe(
                "test",
                vec![spot_push::TopicFilter::new("items/#").expect("f")],
            )
            .expect("sub");
        let hit = r#"["hit","create",{}]"#;
        assert!(raw_published(&row(hit, None), &hub)
            .expect("valid")
            .is_none());
        let _all = subscribe_all(&hub);
        for bad in [r#"{"hit":1}"#, r#"["hit","create",[1]]"#] {
            let e = raw_published(&row(bad, Some(4)), &hub)
                .expect_err("bad row")
                .to_string();
            assert!(e.contains("spot 20\"3 (seq Some(4))"), "{e}");
        }
    }

    #[test]
    fn raw_events_are_published_only_when_switched_on() {
        let hub = Hub::new(HubConfig::default());
        let mut sub = subscribe_all(&hub);
        let rows = [row(r#"["hit","create",{}]"#, Some(1))];
        let publisher = |raw| Publisher {
            hub: hub.clone(),
            raw,
        };
        publisher(false).raw_events(&rows);
        assert!(sub.try_recv().is_none());
        assert_eq!(hub.stats().raw_published_total, 0);
        publisher(true).raw_events(&rows);
        let event = sub.try_recv().expect("raw event");
        assert_eq!(event.topic(), "spots/00000000000001a2/events/hit/create");
        assert_eq!(hub.last_id(), 0, "no push id taken");
    }

    #[test]
    fn one_commit_maps_to_consecutive_ids_ending_at_the_last_row() {
        let hub = Hub::new(HubConfig::default());
        let mut sub = hub
            .subscribe("test", vec![spot_push::TopicFilter::new("#").expect("f")])
            .expect("sub");
        let log = vec![
            (0, doc("items/1/created").into()),
            (0, doc("items/1/appeared").into()),
        ];
        Publisher {
            hub: hub.clone(),
            raw: false,
        }
        .committed(&log, 42);
        let first = sub.try_recv().expect("first");
        let second = sub.try_recv().expect("second");
        assert_eq!((first.id(), first.topic()), (41, "items/1/created"));
        assert_eq!((second.id(), second.topic()), (42, "items/1/appeared"));
    }
}
