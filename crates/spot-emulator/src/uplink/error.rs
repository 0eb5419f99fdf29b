//! Why a connection of the uplink ended badly ([`UplinkError`]). Every variant costs the
//! same: the connection is closed, the unacknowledged events stay in the buffer, and the
//! spot redials after a backoff. Its Display is the report's `last_error`.

use crate::tls::HandshakeError;
use crate::wire::ResponseError;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The TCP connection could not be opened.
    #[error("connect {addr}: {source}")]
    Connect {
        /// The server's `host:port`.
        addr: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The TCP connection did not open within `connect_timeout_ms`.
    #[error("connect {addr}: timed out")]
    ConnectTimeout {
        /// The server's `host:port`.
        addr: String,
    },
    /// The TLS handshake did not finish within `connect_timeout_ms`.
    #[error("TLS handshake with {addr}: timed out")]
    HandshakeTimeout {
        /// The server's `host:port`.
        addr: String,
    },
    /// The TLS handshake failed (untrusted certificate, protocol error).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// Writing to the server failed.
    #[error("write: {0}")]
    Write(std::io::Error),
    /// A write made no progress for `response_timeout_ms`: the server is not reading.
    #[error("write stalled for {0} ms (server not reading)")]
    WriteStalled(u64),
    /// Reading from the server failed; `what` says what was being read.
    #[error("{what}: {source}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The server closed the connection; the text says when.
    #[error("server closed {0}")]
    Closed(&'static str),
    /// No complete response within `response_timeout_ms` of the body's end.
    #[error("no response in time")]
    NoResponse,
    /// The response could not be parsed.
    #[error(transparent)]
    Response(#[from] ResponseError),
    /// The server answered a POST with a status outside `2xx`.
    #[error("server answered HTTP {0}")]
    Status(u16),
    /// The server answered a firmware download with a status outside `2xx`.
    #[error("firmware {url}: HTTP {status}")]
    FirmwareStatus {
        /// The image's path.
        url: String,
        /// The status.
        status: u16,
    },
    /// The firmware image is over `max_firmware_bytes`.
    #[error("firmware {url}: {bytes} bytes, over the limit of {limit}")]
    FirmwareTooLarge {
        /// The image's path.
        url: String,
        /// Its length.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The `cut-mid-chunk` fault fired.
    #[error("fault injected: connection cut mid-chunk")]
    CutMidChunk,
}
