//! MQTT outlet: publishes every hub event to an external broker (MQTT 3.1.1 over TCP, or
//! TLS with `mqtts://`; user name and password from the URL).
//!
//! One task owns the connection: it takes events from a hub subscription (bounded queue;
//! with an [`EventLog`], a [`Follower`] that refills overflow from the log), writes every
//! ready publish into one buffer (PUBLISH encoded in place: prefix, topic and payload copied
//! once, no allocation per event) and the buffer in one socket write (up to 512 publishes),
//! reads acknowledgements (rumqttc's packet codec), pings, and reconnects after
//! [`MqttConfig::reconnect_delay`]. Publishes not acknowledged when a connection breaks are
//! sent again first on the next one, with the DUP flag (QoS 1/2: at least once; QoS 0: may
//! be lost with it). (rumqttc's own client flushes the socket once per publish, which caps
//! it far below 100,000 events/s on this machine: hence this loop.)
//!
//! Throughput bound: the broker. mosquitto 2.0 handles one packet of a plain TCP client per
//! epoll wake-up and reads it with 3–4 `read` calls (strace: ~11 system calls per QoS 0
//! message, ~20 per QoS 1 message, which has PUBACKs both ways), about 11 / 21 µs of broker
//! CPU per message on the development machine: at most ~90,000 / ~48,000 messages/s on one
//! core, whatever the publisher does (this loop costs ~25 ns to encode a publish). Filter
//! what the outlet publishes ([`MqttConfig::filters`]) to what applications subscribe to.
//!
//! Latency bound: the broker's writes to its subscribers. Our connection to the broker has
//! `TCP_NODELAY`, but mosquitto writes to its clients with Nagle's algorithm unless its
//! configuration says `set_tcp_nodelay true`: a QoS 0 subscriber sends nothing back, so a
//! publish written while an earlier one is unacknowledged waits for the subscriber's
//! delayed ACK (measured with `push_latency` at 10,000 events/s: p50 7–9 ms, p99 14–18 ms
//! without, p50 1.0 ms, p99 4.5–5 ms with; QoS 1 subscribers hide it, their PUBACKs carry
//! the ACKs).
//!
//! Bounds: hub queue ([`MqttConfig::queue_capacity`]) + in-flight window
//! ([`MqttConfig::max_inflight`]). While the broker is away or slow, the hub queue fills and
//! further events are dropped *and counted* (outlet `mqtt` in [`crate::Hub::stats`]) — or,
//! with a log, read back from it once the broker is back.
//!
//! Position: a durable outlet ([`MqttOutlet::spawn_durable`]) keeps the id up to which
//! every event it took was acknowledged (QoS 1/2) or written (QoS 0) in a [`MqttPosition`],
//! saved every [`MqttConfig::position_interval`] and at [`MqttOutlet::shutdown`]; after a
//! restart it resumes from the events log after that id (page by page: [`Follower`]), so
//! events committed while the broker or the server was down are published once it is back,
//! as far as the log still holds them.
//!
//! Here: the outlet, its task and the session loop over one connection. Beside it:
//! `config` (settings from the broker URL), `connection` (TCP/TLS, CONNECT, CONNACK, why a
//! connection ended), `publish` (the PUBLISH packet written in place) and `position` (the
//! stored position).

mod config;
mod connection;
mod position;
mod publish;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use rumqttc::{Packet, PubRel, QoS};
use serde::Serialize;
use spot_protocol::lograte::LogRate;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

pub use config::{MqttConfig, MqttConfigError, Qos, Secret, UrlProblem};
use connection::{connect, encode, Conn, ConnectionError};
pub use position::{MqttPosition, PositionError};
use publish::write_publish;

use crate::follow::{EventLog, Follower};
use crate::hub::{Hub, HubError, Published, Subscription};

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
    /// The settled id the task last reported (see [`MqttOutlet::settled`]).
    settled: Arc<AtomicU64>,
    /// Where a durable outlet saves it.
    position: Option<Arc<MqttPosition>>,
}

/// Why a durable MQTT outlet could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttStartError {
    /// The hub refused the subscription.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The position could not be read or first written.
    #[error(transparent)]
    Position(#[from] PositionError),
}

/// Where the task reports and saves its position.
struct Tracker {
    /// Where it is saved (`None`: the outlet's owner reads [`MqttOutlet::settled`]).
    position: Option<Arc<MqttPosition>>,
    /// Every event taken up to this id was acknowledged (or written, QoS 0).
    settled: Arc<AtomicU64>,
    saved: u64,
}

impl Tracker {
    /// Saves the settled id if it moved (off the async threads; saves never move back).
    fn save(&mut self) {
        let settled = self.settled.load(Ordering::Relaxed);
        if settled <= self.saved {
            return;
        }
        let Some(position) = self.position.clone() else {
            return;
        };
        self.saved = settled;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = position.save(settled) {
                tracing::warn!(error = %e, "mqtt outlet: position not saved; a restart publishes again from the last one saved");
            }
        });
    }
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
        let sub =
            hub.subscribe_with_capacity("mqtt", config.filters.clone(), config.queue_capacity)?;
        let source = match log {
            Some(log) => Source::Follow(Box::new(Follower::new(sub, log, None))),
            None => Source::Live(sub),
        };
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(source, config, counters.clone(), None));
        Ok(Self {
            counters,
            task,
            settled: Arc::new(AtomicU64::new(0)),
            position: None,
        })
    }

    /// Like [`MqttOutlet::spawn`] with a log, publishing the events after `after` (read
    /// from the log first); where it has got to ([`MqttOutlet::settled`]) is for the caller
    /// to keep (a cluster keeps it in PostgreSQL for the next node to publish).
    pub fn spawn_after(
        config: MqttConfig,
        hub: &Hub,
        log: Arc<dyn EventLog>,
        after: u64,
    ) -> Result<Self, HubError> {
        let sub =
            hub.subscribe_with_capacity("mqtt", config.filters.clone(), config.queue_capacity)?;
        Ok(Self::follow(config, sub, log, after, None))
    }

    fn follow(
        config: MqttConfig,
        sub: Subscription,
        log: Arc<dyn EventLog>,
        after: u64,
        position: Option<Arc<MqttPosition>>,
    ) -> Self {
        let source = Source::Follow(Box::new(Follower::new(sub, log, Some(after))));
        let settled = Arc::new(AtomicU64::new(after));
        let tracker = Tracker {
            position: position.clone(),
            settled: settled.clone(),
            saved: after,
        };
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(source, config, counters.clone(), Some(tracker)));
        Self {
            counters,
            task,
            settled,
            position,
        }
    }

    /// Every event this outlet took up to this id was acknowledged by the broker (QoS 1/2)
    /// or written to it (QoS 0); 0 for an outlet without a log.
    pub fn settled(&self) -> u64 {
        self.settled.load(Ordering::Relaxed)
    }

    /// Like [`MqttOutlet::spawn`] with a log, keeping its position in `position`: resumes
    /// from the events log after the saved id (at the first start, from now on: the
    /// position is saved at once).
    pub fn spawn_durable(
        config: MqttConfig,
        hub: &Hub,
        log: Arc<dyn EventLog>,
        position: MqttPosition,
    ) -> Result<Self, MqttStartError> {
        let saved = position.load()?;
        let sub =
            hub.subscribe_with_capacity("mqtt", config.filters.clone(), config.queue_capacity)?;
        let start = match saved {
            Some(id) => id,
            None => {
                position.save(sub.start_id())?;
                sub.start_id()
            }
        };
        Ok(Self::follow(
            config,
            sub,
            log,
            start,
            Some(Arc::new(position)),
        ))
    }

    /// Stops publishing and saves the position (a durable outlet; blocks for one small
    /// write).
    pub fn shutdown(&self) {
        self.task.abort();
        if let Some(position) = &self.position {
            if let Err(e) = position.save(self.settled()) {
                tracing::warn!(error = %e, "mqtt outlet: position not saved at shutdown; a restart publishes again from the last one saved");
            }
        }
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
pub(super) const MAX_INCOMING_PACKET: usize = 64 * 1024;
/// Publishes encoded into one socket write at most.
const PUBLISHES_PER_WRITE: usize = 512;

/// Publishes sent and not yet acknowledged, oldest first, and those to resend.
struct Outbox {
    inflight: VecDeque<(u16, Arc<Published>)>,
    resend: VecDeque<Arc<Published>>,
    next_pkid: u16,
    /// Largest id taken from the source.
    taken: u64,
}

impl Outbox {
    /// Every event taken up to this id is acknowledged (or written, QoS 0): the one before
    /// the oldest unacknowledged. Ids increase in both queues; raw events (id 0) are not
    /// counted.
    fn settled(&self) -> u64 {
        let inflight = self.inflight.iter().map(|(_, e)| e.id()).find(|id| *id > 0);
        let resend = self.resend.iter().map(|e| e.id()).find(|id| *id > 0);
        match inflight.into_iter().chain(resend).min() {
            Some(id) => id - 1,
            None => self.taken,
        }
    }

    /// The packet id the next publish gets (1..=65535, then 1 again).
    fn peek_pkid(&self) -> u16 {
        self.next_pkid.checked_add(1).unwrap_or(1)
    }

    /// Uses the id of [`Outbox::peek_pkid`].
    fn take_pkid(&mut self) {
        self.next_pkid = self.peek_pkid();
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

/// While the broker stays unreachable, the warning is repeated after 1, 2, 4 … reconnect
/// delays, then at most once per this interval; each counts the failures since the last.
pub const FAILURE_LOG_MAX_INTERVAL: Duration = Duration::from_secs(300);

async fn run(
    mut source: Source,
    config: MqttConfig,
    counters: Arc<Counters>,
    mut tracker: Option<Tracker>,
) {
    let mut outbox = Outbox {
        inflight: VecDeque::new(),
        resend: VecDeque::new(),
        next_pkid: 0,
        taken: tracker
            .as_ref()
            .map_or(0, |t| t.settled.load(Ordering::Relaxed)),
    };
    let mut failure_log = LogRate::backing_off(config.reconnect_delay, FAILURE_LOG_MAX_INTERVAL);
    loop {
        let error = match connect(&config).await {
            Ok(conn) => {
                counters.connected.store(true, Ordering::Relaxed);
                tracing::info!(
                    host = %config.host,
                    port = config.port,
                    tls = config.tls.is_some(),
                    failures_not_logged = failure_log.reset(),
                    "mqtt outlet: connected"
                );
                let error = match conn {
                    Conn::Plain(stream) => {
                        let (reader, writer) = stream.into_split();
                        let io = (reader, writer);
                        session(
                            io,
                            &mut source,
                            &mut outbox,
                            &config,
                            &counters,
                            &mut tracker,
                        )
                        .await
                    }
                    Conn::Tls(stream) => {
                        let io = tokio::io::split(*stream);
                        session(
                            io,
                            &mut source,
                            &mut outbox,
                            &config,
                            &counters,
                            &mut tracker,
                        )
                        .await
                    }
                };
                counters.connected.store(false, Ordering::Relaxed);
                outbox.requeue_inflight();
                error
            }
            Err(e) => Some(e),
        };
        let Some(error) = error else { return }; // the hub is gone
        counters.errors.fetch_add(1, Ordering::Relaxed);
        if let Some(more) = failure_log.admit(std::time::Instant::now()) {
            tracing::warn!(
                host = %config.host,
                port = config.port,
                error = %error,
                more_since_last_line = more,
                "mqtt outlet: broker connection failed; retrying every {:?} (this warning \
                 less and less often while it lasts)",
                config.reconnect_delay
            );
        }
        tokio::time::sleep(config.reconnect_delay).await;
    }
}

/// Serves one connection until it breaks (`Some(why)`) or the hub is gone (`None`).
async fn session<R, W>(
    (mut reader, mut writer): (R, W),
    source: &mut Source,
    outbox: &mut Outbox,
    config: &MqttConfig,
    counters: &Counters,
    tracker: &mut Option<Tracker>,
) -> Option<ConnectionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut save = tokio::time::interval(config.position_interval);
    save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let qos = QoS::from(config.qos);
    let max_inflight = usize::from(config.max_inflight.max(1));
    let mut incoming = BytesMut::with_capacity(16 * 1024);
    let mut outgoing = BytesMut::with_capacity(64 * 1024);
    let mut ping = tokio::time::interval(config.keep_alive);
    ping.reset();
    let mut last_heard = tokio::time::Instant::now();
    loop {
        let window_open = qos == QoS::AtMostOnce || outbox.inflight.len() < max_inflight;
        let mut sent_in_write: u64 = 0;
        tokio::select! {
            read = reader.read_buf(&mut incoming) => {
                match read {
                    Ok(0) => return Some(ConnectionError::Closed),
                    Err(e) => return Some(ConnectionError::Read(e)),
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
                        Err(e) => return Some(ConnectionError::BadPacket(e)),
                    }
                }
            }
            event = next_event(source, outbox), if window_open => {
                let (mut event, mut resend) = event?;
                let mut in_write = 0;
                loop {
                    if encode_publish(&event, resend, qos, outbox, config, counters, &mut outgoing) {
                        sent_in_write += 1;
                    }
                    in_write += 1;
                    let window_open = qos == QoS::AtMostOnce || outbox.inflight.len() < max_inflight;
                    if in_write >= PUBLISHES_PER_WRITE || !window_open {
                        break;
                    }
                    match next_event(source, outbox).now_or_never() {
                        Some(Some(next)) => (event, resend) = next,
                        _ => break,
                    }
                }
            }
            _ = save.tick(), if tracker.is_some() => {
                if let Some(tracker) = tracker.as_mut() {
                    tracker.save();
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > config.keep_alive * 2 {
                    return Some(ConnectionError::Silent(last_heard.elapsed()));
                }
                if let Err(e) = encode(&Packet::PingReq, &mut outgoing) {
                    return Some(e);
                }
            }
        }
        if !outgoing.is_empty() {
            // `flush`: TLS may hold records back otherwise (a no-op on TCP).
            if let Err(e) = writer.write_all(&outgoing).await {
                return Some(ConnectionError::Write(e));
            }
            if let Err(e) = writer.flush().await {
                return Some(ConnectionError::Write(e));
            }
            outgoing.clear();
            counters.sent.fetch_add(sent_in_write, Ordering::Relaxed);
        }
        if let Some(tracker) = tracker {
            tracker.settled.store(outbox.settled(), Ordering::Relaxed);
        }
    }
}

/// Next event to publish, and whether it is a resend: resends first, then the hub.
/// Cancel-safe.
async fn next_event(source: &mut Source, outbox: &mut Outbox) -> Option<(Arc<Published>, bool)> {
    if let Some(e) = outbox.resend.pop_front() {
        return Some((e, true));
    }
    let e = source.next().await?;
    outbox.taken = outbox.taken.max(e.id());
    Some((e, false))
}

/// Encodes the publish of `event` into `outgoing` (and records it in flight with QoS 1 and
/// 2); an event too large for `max_payload_bytes` or for MQTT is counted and skipped
/// (`false`).
fn encode_publish(
    event: &Arc<Published>,
    resend: bool,
    qos: QoS,
    outbox: &mut Outbox,
    config: &MqttConfig,
    counters: &Counters,
    outgoing: &mut BytesMut,
) -> bool {
    let payload = event.payload_json().as_bytes();
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        outbox.peek_pkid()
    };
    let written = payload.len() <= config.max_payload_bytes
        && write_publish(
            outgoing,
            config.prefix.as_deref(),
            event.topic(),
            qos,
            resend && qos != QoS::AtMostOnce,
            pkid,
            payload,
        )
        .is_some();
    if !written {
        counters.too_large.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            id = event.id(),
            topic = event.topic(),
            bytes = payload.len(),
            "mqtt outlet: event larger than max_payload_bytes (or MQTT's limits), not published"
        );
        return false;
    }
    if qos != QoS::AtMostOnce {
        outbox.take_pkid();
        outbox.inflight.push_back((pkid, event.clone()));
    }
    true
}
