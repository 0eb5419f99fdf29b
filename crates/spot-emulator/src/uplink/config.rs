//! Where a spot sends and how ([`UplinkConfig`]): the server's address ([`ServerAddr`],
//! parsed from `http[s]://host[:port][/prefix]` or a raw `host:port`), the encoding, the
//! pacing of POSTs and events, timeouts, reconnect backoff, every per-spot limit, the faults
//! to inject and the TLS client. Plain data, read by every other part of the uplink, but
//! for one shared counter: the fleet's [`ErrorTally`] (cloning the config shares it).

use std::sync::Arc;

use spot_protocol::Encoding;

use super::error::ErrorTally;

use crate::faults::Faults;
use crate::tls::{TlsClient, Trust};
use crate::wire::ChunkSplit;

/// Why a server address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// A raw TCP address that is not `HOST:PORT`.
    #[error("{0}: expected HOST:PORT")]
    NotHostPort(String),
    /// A URL that is neither `http://` nor `https://`.
    #[error("{0}: expected an http:// or https:// URL")]
    NotHttpUrl(String),
    /// A URL without a host.
    #[error("{0}: no host")]
    NoHost(String),
}

/// Where the server is: parsed from `http[s]://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// `host:port` to connect to.
    pub connect: String,
    /// The `Host` header value (and the spot's `brain_address`).
    pub host: String,
    /// A path prefix before `/api/spots/...` (empty for none).
    pub path_prefix: String,
    /// `https://`: HTTP over TLS.
    pub tls: bool,
}

impl ServerAddr {
    /// A raw TCP address `host:port` (no HTTP).
    pub fn raw_tcp(host_port: &str) -> Result<Self, AddrError> {
        match host_port.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(ServerAddr {
                    connect: host_port.to_string(),
                    host: host.to_string(),
                    path_prefix: String::new(),
                    tls: false,
                })
            }
            _ => Err(AddrError::NotHostPort(host_port.to_string())),
        }
    }

    /// Parses an `http://` or `https://` URL (default ports 80 and 443); anything else is
    /// refused.
    pub fn parse(url: &str) -> Result<Self, AddrError> {
        let (rest, tls) = if let Some(rest) = url.strip_prefix("http://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (rest, true)
        } else {
            return Err(AddrError::NotHttpUrl(url.to_string()));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(AddrError::NoHost(url.to_string()));
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let connect = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        Ok(ServerAddr {
            connect,
            host: authority.to_string(),
            path_prefix: path.to_string(),
            tls,
        })
    }

    /// The host without port or IPv6 brackets: the TLS server name (SNI, certificate check).
    pub fn name(&self) -> &str {
        let host = &self.host;
        if let Some(v6) = host.strip_prefix('[') {
            return v6.split(']').next().unwrap_or(v6);
        }
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    }
}

/// How a spot talks to the server. Every limit is per spot.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// The server.
    pub server: ServerAddr,
    /// Encoding of request and response bodies.
    pub encoding: Encoding,
    /// How long one POST stays open (spec: about one second).
    pub post_ms: u64,
    /// Generation and write granularity: events that happen within one tick go out together.
    pub tick_ms: u64,
    /// Events per second; 0 = as fast as the connection takes them.
    pub rate: f64,
    /// How event bytes are cut into chunks.
    pub chunk_split: ChunkSplit,
    /// First reconnect delay; doubles per failure up to `backoff_max_ms`, each delay drawn
    /// between half and all of it ([`spot_protocol::backoff`]).
    pub backoff_min_ms: u64,
    /// Largest reconnect delay.
    pub backoff_max_ms: u64,
    /// Give up a connection attempt after this long.
    pub connect_timeout_ms: u64,
    /// Give up waiting for a response (after the body ended) after this long.
    pub response_timeout_ms: u64,
    /// Most event bytes written at once (default 256 KiB): a backlog after a reconnect goes
    /// out over several ticks instead of as one huge write.
    pub max_write_bytes: usize,
    /// Most event bytes in one POST body (default 256 KiB): a POST with a backlog ends
    /// early, so that what one POST leaves in flight (socket buffers hold megabytes on
    /// loopback) is taken by an overloaded server within `response_timeout_ms`; the next
    /// POST follows the `200` at once. A single larger event still goes out whole.
    pub max_post_bytes: usize,
    /// Largest response body (commands) accepted: 1 MiB by default.
    pub max_response_body: u64,
    /// Largest firmware image downloaded: 64 MiB by default.
    pub max_firmware_bytes: u64,
    /// After generation stops, keep delivering buffered events for at most this long.
    pub drain_ms: u64,
    /// Added to the spot's clock (clock-skew fault); `None` sends 1970 times (no clock).
    pub clock_offset_ms: Option<i64>,
    /// Faults to inject.
    pub faults: Faults,
    /// Stream over plain TCP (spec §4.2, acks as `["ack","update",{"seq":N}]` events)
    /// instead of HTTP.
    pub raw_tcp: bool,
    /// The TLS client for an `https://` server (`None` for `http://`).
    pub tls: Option<TlsClient>,
    /// Connection failures by kind, shared by every spot given (a clone of) this config.
    pub errors: Arc<ErrorTally>,
    /// Each spot's secret, by serial, for a server with `--spot-admission secret`: sent as
    /// HTTP Basic `serial:secret`, or on raw TCP as `spot_secret` in the `spot create`.
    pub secrets: Arc<std::collections::HashMap<u64, String>>,
}

impl UplinkConfig {
    /// Defaults for `server`.
    pub fn new(server: ServerAddr) -> Self {
        UplinkConfig {
            encoding: Encoding::Json,
            post_ms: 1000,
            tick_ms: 10,
            rate: 10.0,
            chunk_split: ChunkSplit::Event,
            backoff_min_ms: 100,
            backoff_max_ms: 10_000,
            connect_timeout_ms: 5_000,
            response_timeout_ms: 30_000,
            max_write_bytes: 256 << 10,
            max_post_bytes: DEFAULT_MAX_POST_BYTES,
            max_response_body: 1 << 20,
            max_firmware_bytes: 64 << 20,
            drain_ms: 10_000,
            clock_offset_ms: Some(0),
            faults: Faults::default(),
            raw_tcp: false,
            tls: server.tls.then(|| {
                TlsClient::new(Trust::PublicRoots)
                    .expect("the ring provider supports the default protocol versions")
            }),
            errors: Arc::default(),
            secrets: Arc::default(),
            server,
        }
    }
}

/// [`UplinkConfig::max_post_bytes`] by default.
pub const DEFAULT_MAX_POST_BYTES: usize = 256 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_parse_http_and_https_with_their_default_ports() {
        let a = ServerAddr::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            a,
            ServerAddr {
                connect: "127.0.0.1:8080".into(),
                host: "127.0.0.1:8080".into(),
                path_prefix: "".into(),
                tls: false,
            }
        );
        let b = ServerAddr::parse("http://spots.example/base").unwrap();
        assert_eq!(
            (b.connect.as_str(), b.path_prefix.as_str()),
            ("spots.example:80", "/base")
        );
        let v6 = ServerAddr::parse("http://[::1]:9000").unwrap();
        assert_eq!((v6.connect.as_str(), v6.name()), ("[::1]:9000", "::1"));
        let s = ServerAddr::parse("https://spots.example/base").unwrap();
        assert_eq!(
            (s.connect.as_str(), s.name(), s.path_prefix.as_str(), s.tls),
            ("spots.example:443", "spots.example", "/base", true)
        );
        let s = ServerAddr::parse("https://localhost:8443").unwrap();
        assert_eq!(
            (s.connect.as_str(), s.name()),
            ("localhost:8443", "localhost")
        );
        assert_eq!(
            ServerAddr::parse("https://[::1]").unwrap().connect,
            "[::1]:443"
        );
        // An https server gets a TLS client (public roots) by default; http none.
        assert!(UplinkConfig::new(s).tls.is_some());
        assert!(UplinkConfig::new(a).tls.is_none());
        assert!(ServerAddr::parse("ftp://x")
            .unwrap_err()
            .to_string()
            .contains("https://"));
        assert!(ServerAddr::parse("http://").is_err());
    }
}
