//! One broker connection: TCP, TLS for `mqtts://`, CONNECT with the login and its CONNACK,
//! and why a connection failed or ended ([`ConnectionError`]).

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::{Connect, ConnectReturnCode, Login, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::MqttConfig;
use super::MAX_INCOMING_PACKET;

/// Why a broker connection failed or ended: logged and counted
/// ([`MqttStats::connection_errors_total`]), then the outlet reconnects.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectionError {
    /// The TCP connection could not be opened.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The broker's host is not a name TLS can check a certificate against.
    #[error("not a TLS server name: {0}")]
    ServerName(rustls_pki_types::InvalidDnsNameError),
    /// The TLS handshake failed (e.g. an untrusted certificate); said in words, the flag
    /// telling whether `mqtt-ca-cert` was given.
    #[error("TLS handshake: {}", tls_words(.0, *.1))]
    Tls(std::io::Error, bool),
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

/// A failed handshake in words ([`spot_tls::explain`]).
fn tls_words(error: &std::io::Error, ca_given: bool) -> String {
    let side = spot_tls::Side::Client {
        ca_option: "mqtt-ca-cert",
        ca_given,
    };
    spot_tls::explain(error, side).unwrap_or_else(|| error.to_string())
}

pub(super) fn encode(packet: &Packet, buffer: &mut BytesMut) -> Result<(), ConnectionError> {
    packet
        .write(buffer, usize::MAX)
        .map(|_| ())
        .map_err(|source| ConnectionError::Encode {
            packet: format!("{packet:?}"),
            source,
        })
}

/// A broker connection: plain TCP or TLS.
pub(super) enum Conn {
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
pub(super) async fn connect(config: &MqttConfig) -> Result<Conn, ConnectionError> {
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
                    .map_err(|e| ConnectionError::Tls(e, config.ca_given))?;
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
