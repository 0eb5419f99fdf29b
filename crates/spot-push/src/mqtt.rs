//! MQTT outlet: publishes every hub event to an external broker (rumqttc).
//!
//! Two tasks: the *forwarder* takes events from a hub subscription (bounded queue; with an
//! [`EventLog`], a [`Follower`] that refills overflow from the log) and hands them to the
//! MQTT client; the *driver* polls the connection, reconnects after
//! [`MqttConfig::reconnect_delay`] and keeps unacknowledged publishes across reconnects
//! (rumqttc would discard them when the broker starts a new session).
//!
//! Bounds: hub queue ([`MqttConfig::queue_capacity`]) + client channel
//! ([`MqttConfig::client_capacity`]) + in-flight window ([`MqttConfig::max_inflight`]).
//! While the broker is away the forwarder blocks on the full client channel, the hub queue
//! fills, and further events are dropped *and counted* (outlet `mqtt` in
//! [`crate::Hub::stats`]) — or, with a log, read back from it once the broker returns.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::follow::{EventLog, Follower};
use crate::hub::{Hub, HubError, Published, Subscription};
use crate::topic::{validate_topic_name, TopicFilter};

/// MQTT quality of service of the published events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// 0: fire and forget.
    AtMostOnce,
    /// 1: acknowledged, possibly duplicated (the default).
    AtLeastOnce,
    /// 2: exactly once (two round trips per event).
    ExactlyOnce,
}

impl std::str::FromStr for Qos {
    type Err = MqttConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "0" => Ok(Self::AtMostOnce),
            "1" => Ok(Self::AtLeastOnce),
            "2" => Ok(Self::ExactlyOnce),
            _ => Err(MqttConfigError::Qos(s.to_owned())),
        }
    }
}

impl From<Qos> for QoS {
    fn from(q: Qos) -> Self {
        match q {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
            Qos::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

/// A refused MQTT setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttConfigError {
    /// The URL is not `mqtt://HOST[:PORT][/prefix]`.
    #[error("MQTT URL {url:?}: {reason} (expected mqtt://HOST[:PORT][/prefix])")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// QoS other than 0, 1, 2.
    #[error("MQTT QoS {0:?}: expected 0, 1 or 2")]
    Qos(String),
}

/// Settings of the MQTT outlet.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (1883 by default).
    pub port: u16,
    /// Prepended to every topic as `prefix/topic` (none by default).
    pub prefix: Option<String>,
    /// QoS of the publishes (1 by default).
    pub qos: Qos,
    /// MQTT client id.
    pub client_id: String,
    /// Which events to publish (`#` by default).
    pub filter: TopicFilter,
    /// Hub queue of the outlet: events waiting while the broker is slow or away.
    pub queue_capacity: usize,
    /// Publishes handed to the MQTT client not yet written to the socket.
    pub client_capacity: usize,
    /// Publishes written but not yet acknowledged (QoS 1 and 2).
    pub max_inflight: u16,
    /// Largest payload published; larger events are counted in `too_large_total` and skipped
    /// (most brokers refuse big packets and would drop the connection).
    pub max_payload_bytes: usize,
    /// Wait between two connection attempts.
    pub reconnect_delay: Duration,
    /// MQTT keep-alive interval.
    pub keep_alive: Duration,
}

impl MqttConfig {
    /// Settings from `mqtt://HOST[:PORT][/prefix]`, other fields at their defaults.
    pub fn from_url(url: &str) -> Result<Self, MqttConfigError> {
        let bad = |reason: &str| MqttConfigError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("mqtt://")
            .ok_or_else(|| bad("the scheme must be mqtt://"))?;
        let (authority, prefix) = match rest.split_once('/') {
            Some((a, p)) => (a, p.trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 1883,
            Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
        };
        let prefix = if prefix.is_empty() {
            None
        } else {
            validate_topic_name(prefix).map_err(|e| bad(&format!("prefix: {e}")))?;
            Some(prefix.to_owned())
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            prefix,
            qos: Qos::AtLeastOnce,
            client_id: format!("spot-server-{}", std::process::id()),
            filter: TopicFilter::new("#").map_err(|e| bad(&e.to_string()))?,
            queue_capacity: 65_536,
            client_capacity: 1024,
            max_inflight: 1000,
            max_payload_bytes: 256 * 1024,
            reconnect_delay: Duration::from_secs(1),
            keep_alive: Duration::from_secs(30),
        })
    }

    fn topic_for(&self, topic: &str) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}/{topic}"),
            None => topic.to_owned(),
        }
    }
}

/// Counters of the MQTT outlet (its queue drops are in [`crate::Hub::stats`], outlet `mqtt`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MqttStats {
    /// Connected to the broker now.
    pub connected: bool,
    /// Publishes handed to the MQTT client.
    pub sent_total: u64,
    /// Publishes acknowledged by the broker (QoS 1: PUBACK, QoS 2: PUBCOMP).
    pub acked_total: u64,
    /// Connection attempts or connections that failed.
    pub connection_errors_total: u64,
    /// Events skipped for exceeding `max_payload_bytes`.
    pub too_large_total: u64,
}

#[derive(Default)]
struct Counters {
    connected: AtomicBool,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    too_large: AtomicU64,
}

/// A running MQTT outlet. Dropping it stops it.
pub struct MqttOutlet {
    counters: Arc<Counters>,
    forwarder: JoinHandle<()>,
    driver: JoinHandle<()>,
}

enum Source {
    Live(Subscription),
    Follow(Box<Follower>),
}

impl Source {
    async fn next(&mut self) -> Option<Arc<Published>> {
        match self {
            Source::Live(sub) => sub.recv().await,
            Source::Follow(follower) => loop {
                match follower.next().await {
                    Ok(e) => return e,
                    Err(e) => {
                        tracing::warn!(error = %e, "mqtt outlet: cannot refill from the events log");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            },
        }
    }
}

impl MqttOutlet {
    /// Subscribes to `hub` and starts publishing to the broker (on the current tokio runtime).
    /// With `log`, events the queue had to drop are read back from it (nothing is lost while
    /// the log holds them); without, they are only counted.
    pub fn spawn(
        config: MqttConfig,
        hub: &Hub,
        log: Option<Arc<dyn EventLog>>,
    ) -> Result<Self, HubError> {
        let sub = hub.subscribe_with_capacity(
            "mqtt",
            vec![config.filter.clone()],
            config.queue_capacity,
        )?;
        let source = match log {
            Some(log) => Source::Follow(Box::new(Follower::new(sub, log, None))),
            None => Source::Live(sub),
        };
        let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
        options
            .set_keep_alive(config.keep_alive)
            .set_inflight(config.max_inflight.max(1))
            .set_max_packet_size(64 * 1024, config.max_payload_bytes + 64 * 1024);
        let (client, eventloop) = AsyncClient::new(options, config.client_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let driver = tokio::spawn(drive(eventloop, counters.clone(), config.reconnect_delay));
        let forwarder = tokio::spawn(forward(source, client, config, counters.clone()));
        Ok(Self {
            counters,
            forwarder,
            driver,
        })
    }

    /// Current counters.
    pub fn stats(&self) -> MqttStats {
        let c = &self.counters;
        MqttStats {
            connected: c.connected.load(Ordering::Relaxed),
            sent_total: c.sent.load(Ordering::Relaxed),
            acked_total: c.acked.load(Ordering::Relaxed),
            connection_errors_total: c.errors.load(Ordering::Relaxed),
            too_large_total: c.too_large.load(Ordering::Relaxed),
        }
    }
}

impl Drop for MqttOutlet {
    fn drop(&mut self) {
        self.forwarder.abort();
        self.driver.abort();
    }
}

async fn forward(
    mut source: Source,
    client: AsyncClient,
    config: MqttConfig,
    counters: Arc<Counters>,
) {
    let qos = QoS::from(config.qos);
    while let Some(event) = source.next().await {
        if event.payload_json().len() > config.max_payload_bytes {
            counters.too_large.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                id = event.id(),
                topic = event.topic(),
                bytes = event.payload_json().len(),
                "mqtt outlet: payload larger than max_payload_bytes, not published"
            );
            continue;
        }
        let topic = config.topic_for(event.topic());
        if client
            .publish(topic, qos, false, event.payload_json().as_bytes().to_vec())
            .await
            .is_err()
        {
            return; // the driver is gone
        }
        counters.sent.fetch_add(1, Ordering::Relaxed);
    }
}

async fn drive(mut eventloop: EventLoop, counters: Arc<Counters>, reconnect_delay: Duration) {
    loop {
        let connected = counters.connected.load(Ordering::Relaxed);
        // rumqttc clears its pending publishes when the broker starts a new session: keep
        // them aside during (re)connection and give them back afterwards.
        let mut kept = if connected {
            Default::default()
        } else {
            std::mem::take(&mut eventloop.pending)
        };
        let result = eventloop.poll().await;
        if let Ok(Event::Incoming(Packet::ConnAck(ack))) = &result {
            if !ack.session_present {
                // A new session knows no QoS 2 exchange to release; publishes are resent.
                kept.retain(|r| !matches!(r, rumqttc::Request::PubRel(_)));
            }
        }
        if !kept.is_empty() {
            let newer = std::mem::replace(&mut eventloop.pending, kept);
            eventloop.pending.extend(newer);
        }
        match result {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                counters.connected.store(true, Ordering::Relaxed);
                tracing::info!("mqtt outlet: connected");
            }
            Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                counters.connected.store(false, Ordering::Relaxed);
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "mqtt outlet: broker connection failed; retrying");
                tokio::time::sleep(reconnect_delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_port_and_prefix() {
        let c = MqttConfig::from_url("mqtt://broker.local:1884/site/a/").expect("valid");
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_deref()),
            ("broker.local", 1884, Some("site/a"))
        );
        assert_eq!(c.topic_for("items/1/created"), "site/a/items/1/created");
        assert_eq!(c.qos, Qos::AtLeastOnce);
    }

    #[test]
    fn url_defaults_and_ipv6() {
        let c = MqttConfig::from_url("mqtt://10.0.0.1").expect("valid");
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_deref()),
            ("10.0.0.1", 1883, None)
        );
        assert_eq!(c.topic_for("items/1/created"), "items/1/created");
        let c = MqttConfig::from_url("mqtt://[::1]:2000/p").expect("valid");
        assert_eq!((c.host.as_str(), c.port), ("::1", 2000));
    }

    #[test]
    fn bad_urls_and_qos_are_refused() {
        for url in [
            "http://h:1",
            "mqtt://",
            "mqtt://h:port",
            "mqtt://h:99999",
            "mqtt://h/a/+",
            "mqtt://[::1",
        ] {
            assert!(
                matches!(MqttConfig::from_url(url), Err(MqttConfigError::Url { .. })),
                "{url}"
            );
        }
        assert_eq!("2".parse::<Qos>(), Ok(Qos::ExactlyOnce));
        assert_eq!("3".parse::<Qos>(), Err(MqttConfigError::Qos("3".into())));
    }
}
