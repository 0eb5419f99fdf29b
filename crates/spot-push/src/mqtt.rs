//! MQTT outlet: publishes every hub event to an external broker (MQTT 3.1.1 over TCP).
//!
//! One task owns the connection: it takes events from a hub subscription (bounded queue;
//! with an [`EventLog`], a [`Follower`] that refills overflow from the log), encodes them
//! with rumqttc's packet codec and writes every ready publish in one socket write (up to
//! 512), reads acknowledgements, pings, and reconnects after
//! [`MqttConfig::reconnect_delay`]. Publishes not acknowledged when a connection breaks are
//! sent again first on the next one (QoS 1/2: at least once; QoS 0: may be lost with it).
//! (rumqttc's own client flushes the socket once per publish, which caps it far below
//! 100,000 events/s on this machine: hence this loop.)
//!
//! Bounds: hub queue ([`MqttConfig::queue_capacity`]) + in-flight window
//! ([`MqttConfig::max_inflight`]). While the broker is away or slow, the hub queue fills and
//! further events are dropped *and counted* (outlet `mqtt` in [`crate::Hub::stats`]) — or,
//! with a log, read back from it once the broker is back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use rumqttc::{Connect, ConnectReturnCode, Packet, PubRel, Publish, QoS};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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
    /// Publishes written but not yet acknowledged (QoS 1 and 2): the in-flight window.
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
    /// Publishes written to the broker connection (resends included).
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
    task: JoinHandle<()>,
}

enum Source {
    Live(Subscription),
    Follow(Box<Follower>),
}

impl Source {
    /// Next event; cancel-safe.
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
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(source, config, counters.clone()));
        Ok(Self { counters, task })
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
        self.task.abort();
    }
}

/// Largest packet accepted from the broker (acks and pings are a few bytes).
const MAX_INCOMING_PACKET: usize = 64 * 1024;
/// Publishes encoded into one socket write at most.
const PUBLISHES_PER_WRITE: usize = 512;

/// Publishes sent and not yet acknowledged, oldest first, and those to resend.
struct Outbox {
    inflight: VecDeque<(u16, Arc<Published>)>,
    resend: VecDeque<Arc<Published>>,
    next_pkid: u16,
}

impl Outbox {
    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }

    /// Removes an acknowledged publish; says whether it was in flight.
    fn ack(&mut self, pkid: u16) -> bool {
        if self.inflight.front().map(|(p, _)| *p) == Some(pkid) {
            self.inflight.pop_front();
            return true;
        }
        match self.inflight.iter().position(|(p, _)| *p == pkid) {
            Some(i) => self.inflight.remove(i).is_some(),
            None => false,
        }
    }

    /// After a broken connection: everything unacknowledged is sent again, first.
    fn requeue_inflight(&mut self) {
        let mut again: VecDeque<Arc<Published>> = self.inflight.drain(..).map(|(_, e)| e).collect();
        again.append(&mut self.resend);
        self.resend = again;
    }
}

async fn run(mut source: Source, config: MqttConfig, counters: Arc<Counters>) {
    let mut outbox = Outbox {
        inflight: VecDeque::new(),
        resend: VecDeque::new(),
        next_pkid: 0,
    };
    loop {
        let error = match connect(&config).await {
            Ok(stream) => {
                counters.connected.store(true, Ordering::Relaxed);
                tracing::info!(host = %config.host, port = config.port, "mqtt outlet: connected");
                let error = session(stream, &mut source, &mut outbox, &config, &counters).await;
                counters.connected.store(false, Ordering::Relaxed);
                outbox.requeue_inflight();
                error
            }
            Err(e) => e,
        };
        let Some(error) = error else { return }; // the hub is gone
        counters.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %error, "mqtt outlet: broker connection failed; retrying");
        tokio::time::sleep(config.reconnect_delay).await;
    }
}

fn encode(packet: &Packet, buffer: &mut BytesMut) -> Result<(), String> {
    packet
        .write(buffer, usize::MAX)
        .map(|_| ())
        .map_err(|e| format!("encoding {packet:?}: {e:?}"))
}

/// TCP connection, CONNECT, CONNACK.
async fn connect(config: &MqttConfig) -> Result<TcpStream, Option<String>> {
    let broker = format!("{}:{}", config.host, config.port);
    let attempt = async {
        let mut stream = TcpStream::connect((config.host.as_str(), config.port))
            .await
            .map_err(|e| format!("{broker}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut connect = Connect::new(config.client_id.clone());
        connect.keep_alive = config.keep_alive.as_secs().clamp(1, u16::MAX as u64) as u16;
        connect.clean_session = true;
        let mut buffer = BytesMut::new();
        encode(&Packet::Connect(connect), &mut buffer)?;
        stream
            .write_all(&buffer)
            .await
            .map_err(|e| format!("{broker}: {e}"))?;
        let mut incoming = BytesMut::with_capacity(1024);
        loop {
            match Packet::read(&mut incoming, MAX_INCOMING_PACKET) {
                Ok(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {
                    return Ok(stream)
                }
                Ok(Packet::ConnAck(ack)) => {
                    return Err(format!("{broker}: connection refused: {:?}", ack.code))
                }
                Ok(other) => return Err(format!("{broker}: expected CONNACK, got {other:?}")),
                Err(rumqttc::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(format!("{broker}: bad CONNACK: {e:?}")),
            }
            if stream
                .read_buf(&mut incoming)
                .await
                .map_err(|e| format!("{broker}: {e}"))?
                == 0
            {
                return Err(format!("{broker}: closed before CONNACK"));
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(r) => r.map_err(Some),
        Err(_) => Err(Some(format!(
            "{broker}: no CONNACK within {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// Time allowed for TCP connect + CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection until it breaks (`Some(reason)`) or the hub is gone (`None`).
async fn session(
    stream: TcpStream,
    source: &mut Source,
    outbox: &mut Outbox,
    config: &MqttConfig,
    counters: &Counters,
) -> Option<String> {
    let (mut reader, mut writer) = stream.into_split();
    let qos = QoS::from(config.qos);
    let max_inflight = usize::from(config.max_inflight.max(1));
    let mut incoming = BytesMut::with_capacity(16 * 1024);
    let mut outgoing = BytesMut::with_capacity(64 * 1024);
    let mut ping = tokio::time::interval(config.keep_alive);
    ping.reset();
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let window_open = qos == QoS::AtMostOnce || outbox.inflight.len() < max_inflight;
        tokio::select! {
            read = reader.read_buf(&mut incoming) => {
                match read {
                    Ok(0) => return Some("broker closed the connection".into()),
                    Err(e) => return Some(format!("read: {e}")),
                    Ok(_) => last_heard = tokio::time::Instant::now(),
                }
                loop {
                    match Packet::read(&mut incoming, MAX_INCOMING_PACKET) {
                        Ok(Packet::PubAck(ack)) => {
                            if outbox.ack(ack.pkid) {
                                counters.acked.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(Packet::PubRec(rec)) => {
                            if let Err(e) = encode(&Packet::PubRel(PubRel::new(rec.pkid)), &mut outgoing) {
                                return Some(e);
                            }
                        }
                        Ok(Packet::PubComp(comp)) => {
                            if outbox.ack(comp.pkid) {
                                counters.acked.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(_) => {}
                        Err(rumqttc::Error::InsufficientBytes(_)) => break,
                        Err(e) => return Some(format!("bad packet from the broker: {e:?}")),
                    }
                }
            }
            event = next_event(source, outbox), if window_open => {
                let mut event = event?;
                let mut in_write = 0;
                loop {
                    if let Err(e) = encode_publish(&event, qos, outbox, config, counters, &mut outgoing) {
                        return Some(e);
                    }
                    in_write += 1;
                    let window_open = qos == QoS::AtMostOnce || outbox.inflight.len() < max_inflight;
                    if in_write >= PUBLISHES_PER_WRITE || !window_open {
                        break;
                    }
                    match next_event(source, outbox).now_or_never() {
                        Some(Some(e)) => event = e,
                        _ => break,
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > config.keep_alive * 2 {
                    return Some(format!("broker silent for {:?}", last_heard.elapsed()));
                }
                if let Err(e) = encode(&Packet::PingReq, &mut outgoing) {
                    return Some(e);
                }
            }
        }
        if !outgoing.is_empty() {
            if let Err(e) = writer.write_all(&outgoing).await {
                return Some(format!("write: {e}"));
            }
            outgoing.clear();
        }
    }
}

/// Next event to publish: resends first, then the hub. Cancel-safe.
async fn next_event(source: &mut Source, outbox: &mut Outbox) -> Option<Arc<Published>> {
    if let Some(e) = outbox.resend.pop_front() {
        return Some(e);
    }
    source.next().await
}

fn encode_publish(
    event: &Arc<Published>,
    qos: QoS,
    outbox: &mut Outbox,
    config: &MqttConfig,
    counters: &Counters,
    outgoing: &mut BytesMut,
) -> Result<(), String> {
    if event.payload_json().len() > config.max_payload_bytes {
        counters.too_large.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            id = event.id(),
            topic = event.topic(),
            bytes = event.payload_json().len(),
            "mqtt outlet: payload larger than max_payload_bytes, not published"
        );
        return Ok(());
    }
    let mut publish = Publish::from_bytes(
        config.topic_for(event.topic()),
        qos,
        Bytes::copy_from_slice(event.payload_json().as_bytes()),
    );
    if qos != QoS::AtMostOnce {
        publish.pkid = outbox.pkid();
        outbox.inflight.push_back((publish.pkid, event.clone()));
    }
    encode(&Packet::Publish(publish), outgoing)?;
    counters.sent.fetch_add(1, Ordering::Relaxed);
    Ok(())
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
