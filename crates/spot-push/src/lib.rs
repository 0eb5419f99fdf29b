//! Push of the server's derived events to applications.
//!
//! # Flow
//!
//! ```text
//! server commit ──► EventLog (server's events table)      ◄── Follower reads gaps / resumes
//!        └────────► Hub::publish(Published) ──► one bounded queue per subscription
//!                      ├─► SSE   GET /api/stream?topic_filter=F   (stream_router)
//!                      ├─► WS    GET /api/ws                      (stream_router)
//!                      ├─► MQTT  MqttOutlet::spawn                (external broker)
//!                      └─► webhooks (subscriptions resource)
//! ```
//!
//! # What the server does
//!
//! 1. Create one [`Hub`] (`Hub::new(HubConfig::default())`) at start.
//! 2. Implement [`EventLog`] over its events log (`events_after(after_id, limit)`: events with
//!    a larger id, increasing, at most `limit`), or use [`MemoryEventLog`].
//! 3. After each store commit, for every derived event, in id order:
//!    `hub.publish(Published::new(id, &topic, payload_json)?)` (or `Published::from_value`,
//!    or, from JSON texts already known valid, `Published::from_json_parts`: no re-parse).
//!    Ids start at 1 and strictly increase; the event must already be readable through the
//!    `EventLog`. `publish` never blocks. Build topics with [`spot_protocol::topics`] (spec §7
//!    spelling) and payloads with [`spot_protocol::topics::event_payload`] (`resource`,
//!    `time_event`, `time_created`).
//!    Raw spot events (optional): `hub.publish(Published::raw(&topic, payload)?)` with
//!    [`spot_protocol::topics::raw_spot_event`]; no id, not logged, live only (ask [`Hub::wants_raw`]
//!    first to skip building what nobody receives).
//! 4. Mount [`stream_router`] (an `axum::Router`). On plain hyper: for paths where
//!    [`is_push_path`] holds, answer with [`call_router`]; serve connections
//!    `.with_upgrades()` (WebSocket) and set `TCP_NODELAY` (see [`mount`]).
//! 5. With `--mqtt URL`: `MqttOutlet::spawn(MqttConfig::from_url(URL)?, &hub, Some(log))`
//!    (set `qos` from a `--mqtt-qos` flag, `filters` from `--mqtt-filter`, `trust_ca_file`
//!    from `--mqtt-ca-cert`; keep the returned handle alive). To resume after a restart
//!    where it stopped: `MqttOutlet::spawn_durable(config, &hub, log, MqttPosition::open(path)?)`
//!    and `shutdown()` it when stopping. `mqtts://` is TLS ([`tls`]), `user:password@` logs in.
//! 6. Webhooks: `Webhooks::start(WebhookStore::open(path)?, &hub, log, WebhookConfig::default())`
//!    and mount `webhooks.router()` (`/api/subscriptions[/{id}]`); `https://` targets are
//!    verified with the public roots plus `WebhookConfig::ca_cert` (`--webhook-ca-cert`).
//! 7. Append `hub.stats().render_prometheus()` to `/metrics`: drops are counted there.
//!
//! # Main types
//!
//! - [`TopicFilter`] ([`filter`]): the one MQTT-semantics matcher every outlet uses.
//! - [`Published`]: an event (id, topic, JSON payload), envelope serialized once.
//! - [`Hub`], [`Subscription`]: non-blocking fan-out with bounded queues and drop counters.
//! - [`EventLog`], [`Follower`]: gap-free following with resumption from the log.
//! - [`stream_router`] ([`stream`]): the SSE and WebSocket outlets.
//! - [`MqttOutlet`]: publishing to an external broker.
//! - [`webhook::Webhooks`]: the `subscriptions` resource and webhook deliveries.
//! - [`tail`]: the SSE client behind `spot tail`.
//! - [`tls`]: the TLS client settings of `mqtts://`, `https://` webhook targets and `spot tail`.

mod connector;
pub mod filter;
pub mod follow;
pub mod hub;
pub mod mount;
pub mod mqtt;
pub mod stream;
pub mod tail;
pub mod tls;
pub mod webhook;

pub use filter::{validate_topic_name, TopicError, TopicFilter, MAX_TOPIC_LEN};
pub use follow::{BoxFuture, EventLog, Follower, LogError, MemoryEventLog};
pub use hub::{
    FilterHandle, Hub, HubConfig, HubError, HubStats, OutletStats, Published, PublishedError,
    Subscription,
};
pub use mount::{call_router, is_push_path};
pub use mqtt::{
    MqttConfig, MqttConfigError, MqttOutlet, MqttPosition, MqttStartError, MqttStats,
    PositionError, Qos, UrlProblem,
};
pub use stream::{
    stream_router, StreamEnd, StreamLimits, StreamShutdown, StreamState, SHUTDOWN_REASON,
};
