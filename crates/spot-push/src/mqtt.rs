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

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::FutureExt;
use rumqttc::{Connect, ConnectReturnCode, Login, Packet, PubRel, QoS};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::filter::{validate_topic_name, TopicError, TopicFilter};
use crate::follow::{EventLog, Follower};
use crate::hub::{Hub, HubError, Published, Subscription};

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
    /// The URL is not `mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT][/prefix]`.
    #[error(
        "MQTT URL {url:?}: {reason} (expected mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT][/prefix])"
    )]
    Url {
        /// The URL given, its password replaced by `***`.
        url: String,
        /// What is wrong.
        reason: UrlProblem,
    },
    /// QoS other than 0, 1, 2.
    #[error("MQTT QoS {0:?}: expected 0, 1 or 2")]
    Qos(String),
    /// A CA file for a broker that is not `mqtts://`.
    #[error("MQTT CA certificate {0}: the broker URL is not mqtts://")]
    CaWithoutTls(String),
    /// The TLS settings are unusable (e.g. the CA file).
    #[error("MQTT TLS: {0}")]
    Tls(#[from] crate::tls::TlsConfigError),
}

/// What is wrong with an MQTT URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    /// Neither `mqtt://` nor `mqtts://`.
    #[error("the scheme must be mqtt:// or mqtts://")]
    Scheme,
    /// A `%` in the user info not followed by two hex digits.
    #[error("bad %-escape at byte {0} of the user info")]
    PercentEscape(usize),
    /// The user info decodes to bytes that are not UTF-8.
    #[error("the user info is not UTF-8 once decoded")]
    NotUtf8,
    /// `@` with an empty user name.
    #[error("a user name is needed before '@'")]
    NoUser,
    /// An IPv6 host `[…` without its `]`.
    #[error("unclosed [")]
    UnclosedBracket,
    /// The host is empty.
    #[error("no host")]
    NoHost,
    /// The port is not a number from 0 to 65535.
    #[error("bad port")]
    Port,
    /// The topic prefix (the URL's path) is not a valid topic name.
    #[error("prefix: {0}")]
    Prefix(TopicError),
}

/// A password: shown as `***` by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// `%XX`-decodes a URL's user name or password.
fn percent_decode(text: &str) -> Result<String, UrlProblem> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(UrlProblem::PercentEscape(i))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlProblem::NotUtf8)
}

/// `url` with the password of its user info replaced by `***` (for messages).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, _)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{}", &rest[userinfo.len() + 1..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Settings of the MQTT outlet.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (1883 by default, 8883 with `mqtts://`).
    pub port: u16,
    /// User name (from the URL's user info); none by default.
    pub username: Option<String>,
    /// Password (from the URL's user info; needs a user name); none by default.
    pub password: Option<Secret>,
    /// TLS client settings (`mqtts://`: public roots, see [`MqttConfig::trust_ca_file`]);
    /// `None`: plain TCP. The host is the name checked against the certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Prepended to every topic as `prefix/topic` (none by default).
    pub prefix: Option<String>,
    /// QoS of the publishes (1 by default).
    pub qos: Qos,
    /// MQTT client id.
    pub client_id: String,
    /// Which events to publish: those matching any of these filters (`#` by default; none:
    /// nothing is published). The broker costs CPU per message (see the module docs):
    /// restrict this to what applications subscribe to.
    pub filters: Vec<TopicFilter>,
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
    /// Settings from `mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT][/prefix]` (user and password
    /// `%`-encoded where needed), other fields at their defaults.
    pub fn from_url(url: &str) -> Result<Self, MqttConfigError> {
        let bad = |reason: UrlProblem| MqttConfigError::Url {
            url: redact(url),
            reason,
        };
        let (rest, tls) = if let Some(rest) = url.strip_prefix("mqtt://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (rest, true)
        } else {
            return Err(bad(UrlProblem::Scheme));
        };
        let (authority, prefix) = match rest.split_once('/') {
            Some((a, p)) => (a, p.trim_end_matches('/')),
            None => (rest, ""),
        };
        let (userinfo, authority) = match authority.rsplit_once('@') {
            Some((u, a)) => (Some(u), a),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let user = percent_decode(user).map_err(bad)?;
                if user.is_empty() {
                    return Err(bad(UrlProblem::NoUser));
                }
                let password = match password {
                    Some(p) => Some(Secret(percent_decode(p).map_err(bad)?)),
                    None => None,
                };
                (Some(user), password)
            }
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad(UrlProblem::UnclosedBracket))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad(UrlProblem::NoHost));
        }
        let port = match port {
            None if tls => 8883,
            None => 1883,
            Some(p) => p.parse::<u16>().map_err(|_| bad(UrlProblem::Port))?,
        };
        let tls = if tls {
            Some(crate::tls::client_config(None, &[])?)
        } else {
            None
        };
        let prefix = if prefix.is_empty() {
            None
        } else {
            validate_topic_name(prefix).map_err(|e| bad(UrlProblem::Prefix(e)))?;
            Some(prefix.to_owned())
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            username,
            password,
            tls,
            prefix,
            qos: Qos::AtLeastOnce,
            client_id: format!("spot-server-{}", std::process::id()),
            filters: vec![TopicFilter::new("#").expect("`#` is a valid filter")],
            queue_capacity: 65_536,
            max_inflight: 1000,
            max_payload_bytes: 256 * 1024,
            reconnect_delay: Duration::from_secs(1),
            keep_alive: Duration::from_secs(30),
        })
    }

    /// Also trusts the certificates of the PEM file `path` (a private CA or a self-signed
    /// broker certificate), besides the public roots. Only for `mqtts://`.
    pub fn trust_ca_file(&mut self, path: &Path) -> Result<(), MqttConfigError> {
        if self.tls.is_none() {
            return Err(MqttConfigError::CaWithoutTls(path.display().to_string()));
        }
        self.tls = Some(crate::tls::client_config(Some(path), &[])?);
        Ok(())
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
        let sub =
            hub.subscribe_with_capacity("mqtt", config.filters.clone(), config.queue_capacity)?;
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

async fn run(mut source: Source, config: MqttConfig, counters: Arc<Counters>) {
    let mut outbox = Outbox {
        inflight: VecDeque::new(),
        resend: VecDeque::new(),
        next_pkid: 0,
    };
    loop {
        let error = match connect(&config).await {
            Ok(conn) => {
                counters.connected.store(true, Ordering::Relaxed);
                tracing::info!(
                    host = %config.host,
                    port = config.port,
                    tls = config.tls.is_some(),
                    "mqtt outlet: connected"
                );
                let error = match conn {
                    Conn::Plain(stream) => {
                        let (reader, writer) = stream.into_split();
                        session(reader, writer, &mut source, &mut outbox, &config, &counters).await
                    }
                    Conn::Tls(stream) => {
                        let (reader, writer) = tokio::io::split(*stream);
                        session(reader, writer, &mut source, &mut outbox, &config, &counters).await
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
        tracing::warn!(
            host = %config.host,
            port = config.port,
            error = %error,
            "mqtt outlet: broker connection failed; retrying"
        );
        tokio::time::sleep(config.reconnect_delay).await;
    }
}

/// Why a broker connection failed or ended: logged and counted
/// ([`MqttStats::connection_errors_total`]), then the outlet reconnects.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    /// The TCP connection could not be opened.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The broker's host is not a name TLS can check a certificate against.
    #[error("not a TLS server name: {0}")]
    ServerName(rustls_pki_types::InvalidDnsNameError),
    /// The TLS handshake failed (e.g. an untrusted certificate).
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    /// No CONNACK within [`CONNECT_TIMEOUT`].
    #[error("no CONNACK within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout,
    /// The broker refused the CONNECT (e.g. a wrong password).
    #[error("connection refused: {code:?} (user {user})")]
    Refused {
        /// The CONNACK's return code.
        code: ConnectReturnCode,
        /// The user name sent, or `(none)`.
        user: String,
    },
    /// The broker's first packet was not a CONNACK.
    #[error("expected CONNACK, got {0}")]
    NotConnAck(String),
    /// The broker closed the connection before its CONNACK.
    #[error("closed before CONNACK")]
    ClosedBeforeConnAck,
    /// The broker closed the connection.
    #[error("broker closed the connection")]
    Closed,
    /// Reading from the connection failed.
    #[error("read: {0}")]
    Read(std::io::Error),
    /// Writing to the connection failed.
    #[error("write: {0}")]
    Write(std::io::Error),
    /// The broker sent bytes that are no MQTT packet (or one too large).
    #[error("bad packet from the broker: {0}")]
    BadPacket(rumqttc::Error),
    /// A packet of ours could not be encoded.
    #[error("encoding {packet}: {source}")]
    Encode {
        /// The packet, as `Debug` shows it.
        packet: String,
        /// rumqttc's reason.
        source: rumqttc::Error,
    },
    /// Nothing heard from the broker for two keep-alive intervals.
    #[error("broker silent for {0:?}")]
    Silent(Duration),
}

fn encode(packet: &Packet, buffer: &mut BytesMut) -> Result<(), ConnectionError> {
    packet
        .write(buffer, usize::MAX)
        .map(|_| ())
        .map_err(|source| ConnectionError::Encode {
            packet: format!("{packet:?}"),
            source,
        })
}

/// A broker connection: plain TCP or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// CONNECT (with the login, if any), then CONNACK.
async fn handshake<S>(stream: &mut S, config: &MqttConfig) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut connect = Connect::new(config.client_id.clone());
    connect.keep_alive = config.keep_alive.as_secs().clamp(1, u16::MAX as u64) as u16;
    connect.clean_session = true;
    if let Some(user) = &config.username {
        let password = config.password.as_ref().map_or("", |p| p.0.as_str());
        connect.login = Some(Login::new(user.as_str(), password));
    }
    let mut buffer = BytesMut::new();
    encode(&Packet::Connect(connect), &mut buffer)?;
    stream
        .write_all(&buffer)
        .await
        .map_err(ConnectionError::Write)?;
    stream.flush().await.map_err(ConnectionError::Write)?;
    let mut incoming = BytesMut::with_capacity(1024);
    loop {
        match Packet::read(&mut incoming, MAX_INCOMING_PACKET) {
            Ok(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => return Ok(()),
            Ok(Packet::ConnAck(ack)) => {
                return Err(ConnectionError::Refused {
                    code: ack.code,
                    user: config.username.as_deref().unwrap_or("(none)").to_owned(),
                });
            }
            Ok(other) => return Err(ConnectionError::NotConnAck(format!("{other:?}"))),
            Err(rumqttc::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(ConnectionError::BadPacket(e)),
        }
        let read = stream.read_buf(&mut incoming).await;
        if read.map_err(ConnectionError::Read)? == 0 {
            return Err(ConnectionError::ClosedBeforeConnAck);
        }
    }
}

/// TCP connection, TLS handshake (`mqtts://`), CONNECT, CONNACK.
async fn connect(config: &MqttConfig) -> Result<Conn, ConnectionError> {
    let attempt = async {
        let mut stream = TcpStream::connect((config.host.as_str(), config.port))
            .await
            .map_err(ConnectionError::Connect)?;
        let _ = stream.set_nodelay(true);
        match &config.tls {
            None => {
                handshake(&mut stream, config).await?;
                Ok(Conn::Plain(stream))
            }
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(config.host.clone())
                    .map_err(ConnectionError::ServerName)?;
                let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, stream)
                    .await
                    .map_err(ConnectionError::Tls)?;
                handshake(&mut stream, config).await?;
                Ok(Conn::Tls(Box::new(stream)))
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .unwrap_or(Err(ConnectionError::ConnectTimeout))
}

/// Time allowed for TCP connect + CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection until it breaks (`Some(why)`) or the hub is gone (`None`).
async fn session<R, W>(
    mut reader: R,
    mut writer: W,
    source: &mut Source,
    outbox: &mut Outbox,
    config: &MqttConfig,
    counters: &Counters,
) -> Option<ConnectionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
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
    }
}

/// Next event to publish, and whether it is a resend: resends first, then the hub.
/// Cancel-safe.
async fn next_event(source: &mut Source, outbox: &mut Outbox) -> Option<(Arc<Published>, bool)> {
    if let Some(e) = outbox.resend.pop_front() {
        return Some((e, true));
    }
    source.next().await.map(|e| (e, false))
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

/// Largest "remaining length" of an MQTT packet (four length bytes).
const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Appends a PUBLISH packet (MQTT 3.1.1 §3.3) to `out`: topic `prefix/topic` (or `topic`),
/// packet id `pkid` when `qos` is not 0, `payload`. Written in place: no topic string, no
/// payload copy but the one into `out`. `None` (nothing written) when the topic or packet is
/// larger than MQTT allows.
fn write_publish(
    out: &mut BytesMut,
    prefix: Option<&str>,
    topic: &str,
    qos: QoS,
    dup: bool,
    pkid: u16,
    payload: &[u8],
) -> Option<()> {
    let topic_len = prefix.map_or(0, |p| p.len() + 1) + topic.len();
    let topic_len16 = u16::try_from(topic_len).ok()?;
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + topic_len + id_len + payload.len();
    if remaining > MAX_REMAINING_LENGTH {
        return None;
    }
    out.reserve(5 + remaining);
    out.put_u8(0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1));
    let mut length = remaining;
    loop {
        let byte = (length % 128) as u8;
        length /= 128;
        if length == 0 {
            out.put_u8(byte);
            break;
        }
        out.put_u8(byte | 0x80);
    }
    out.put_u16(topic_len16);
    if let Some(prefix) = prefix {
        out.put_slice(prefix.as_bytes());
        out.put_u8(b'/');
    }
    out.put_slice(topic.as_bytes());
    if id_len != 0 {
        out.put_u16(pkid);
    }
    out.put_slice(payload);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::MAX_TOPIC_LEN;

    #[test]
    fn url_with_port_and_prefix() {
        let c = MqttConfig::from_url("mqtt://broker.local:1884/site/a/").expect("valid");
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_deref()),
            ("broker.local", 1884, Some("site/a"))
        );
        assert_eq!(c.qos, Qos::AtLeastOnce);
    }

    /// The in-place PUBLISH is what rumqttc's codec encodes and decodes, at every QoS, with
    /// and without a prefix, DUP, and remaining lengths of 1, 2 and 3 bytes.
    #[test]
    fn publishes_are_encoded_as_rumqttc_encodes_them() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for prefix in [None, Some("site/a")] {
                for payload_len in [0, 100, 127, 128, 16_000, 16_383, 16_384, 300_000] {
                    let dup = qos != QoS::AtMostOnce && payload_len % 2 == 0;
                    let pkid = if qos == QoS::AtMostOnce { 0 } else { 65_535 };
                    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
                    let mut ours = BytesMut::new();
                    write_publish(
                        &mut ours,
                        prefix,
                        "items/7/created",
                        qos,
                        dup,
                        pkid,
                        &payload,
                    )
                    .expect("fits");
                    let topic = match prefix {
                        Some(p) => format!("{p}/items/7/created"),
                        None => "items/7/created".to_owned(),
                    };
                    let mut expected = rumqttc::Publish::new(topic.clone(), qos, payload.clone());
                    expected.pkid = pkid;
                    expected.dup = dup;
                    let mut theirs = BytesMut::new();
                    Packet::Publish(expected.clone())
                        .write(&mut theirs, usize::MAX)
                        .expect("encode");
                    assert_eq!(ours, theirs, "{qos:?} {prefix:?} {payload_len}");
                    match Packet::read(&mut ours, usize::MAX).expect("decodes") {
                        Packet::Publish(p) => assert_eq!(p, expected),
                        other => panic!("{other:?}"),
                    }
                    assert!(ours.is_empty(), "one packet, nothing more");
                }
            }
        }
    }

    #[test]
    fn a_topic_longer_than_mqtt_allows_is_not_written() {
        let topic = "a".repeat(MAX_TOPIC_LEN - 3);
        let mut out = BytesMut::new();
        assert_eq!(
            write_publish(
                &mut out,
                Some("pre"),
                &topic,
                QoS::AtLeastOnce,
                false,
                1,
                b"{}"
            ),
            None
        );
        assert!(out.is_empty());
        write_publish(
            &mut out,
            Some("pr"),
            &topic,
            QoS::AtLeastOnce,
            false,
            1,
            b"{}",
        )
        .expect("65,535 bytes fit");
    }

    #[test]
    fn url_defaults_and_ipv6() {
        let c = MqttConfig::from_url("mqtt://10.0.0.1").expect("valid");
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_deref()),
            ("10.0.0.1", 1883, None)
        );
        let c = MqttConfig::from_url("mqtt://[::1]:2000/p").expect("valid");
        assert_eq!((c.host.as_str(), c.port), ("::1", 2000));
    }

    #[test]
    fn user_password_and_tls_from_the_url() {
        let c = MqttConfig::from_url("mqtts://spot:p%40ss%3Aword@broker.local/site").expect("ok");
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_deref()),
            ("broker.local", 8883, Some("site"))
        );
        assert_eq!(c.username.as_deref(), Some("spot"));
        assert_eq!(c.password, Some(Secret("p@ss:word".into())));
        assert!(c.tls.is_some());
        assert!(
            !format!("{c:?}").contains("p@ss"),
            "Debug does not show the password"
        );
        let c = MqttConfig::from_url("mqtt://only-user@h:1884").expect("ok");
        assert_eq!(
            (c.username.as_deref(), c.password.is_none(), c.port),
            (Some("only-user"), true, 1884)
        );
        assert!(c.tls.is_none());
    }

    #[test]
    fn a_ca_file_needs_mqtts_and_a_bad_one_is_named() {
        let mut plain = MqttConfig::from_url("mqtt://h").expect("ok");
        assert_eq!(
            plain.trust_ca_file(Path::new("/ca.pem")),
            Err(MqttConfigError::CaWithoutTls("/ca.pem".into()))
        );
        let mut tls = MqttConfig::from_url("mqtts://h").expect("ok");
        let err = tls
            .trust_ca_file(Path::new("/nonexistent/ca.pem"))
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn errors_do_not_show_the_password() {
        let err = MqttConfig::from_url("mqtt://u:secret@h:port").expect_err("bad port");
        let text = err.to_string();
        assert!(text.contains("mqtt://u:***@h:port"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        for url in ["mqtt://:pw@h", "mqtt://u:%zz@h"] {
            assert!(
                matches!(MqttConfig::from_url(url), Err(MqttConfigError::Url { .. })),
                "{url}"
            );
        }
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
