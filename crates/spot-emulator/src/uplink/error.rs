//! Why a connection of the uplink ended badly ([`UplinkError`]). Every variant costs the
//! same: the connection is closed, the unacknowledged events stay in the buffer, and the
//! spot redials after a backoff. Its Display is the report's `last_error`. [`ErrorTally`]
//! counts them by [`ErrorKind`] across a fleet and says the first of each kind on stderr.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

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

/// The kinds [`ErrorTally`] counts: what an operator would fix differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Nothing listens on the server's port.
    ConnectionRefused,
    /// Any other failure to open the TCP connection (no route, DNS, ...).
    Connect,
    /// The TCP connection or TLS handshake did not finish in time.
    ConnectTimeout,
    /// The TLS handshake failed.
    Tls,
    /// The connection broke while writing or reading, or the server closed it.
    ConnectionLost,
    /// No response in time, or a write the server did not read.
    Timeout,
    /// A response that could not be parsed.
    BadResponse,
    /// A status outside `2xx` (to a POST or a firmware download).
    HttpStatus,
    /// A firmware image over the limit.
    Firmware,
    /// A fault injected on purpose.
    InjectedFault,
}

impl ErrorKind {
    /// Every kind, in [`ErrorTally`]'s order.
    const ALL: [ErrorKind; 10] = [
        ErrorKind::ConnectionRefused,
        ErrorKind::Connect,
        ErrorKind::ConnectTimeout,
        ErrorKind::Tls,
        ErrorKind::ConnectionLost,
        ErrorKind::Timeout,
        ErrorKind::BadResponse,
        ErrorKind::HttpStatus,
        ErrorKind::Firmware,
        ErrorKind::InjectedFault,
    ];

    /// Its name in the summary's `errors` and on stderr.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::ConnectionRefused => "connection_refused",
            ErrorKind::Connect => "connect",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Tls => "tls",
            ErrorKind::ConnectionLost => "connection_lost",
            ErrorKind::Timeout => "timeout",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::Firmware => "firmware",
            ErrorKind::InjectedFault => "injected_fault",
        }
    }
}

impl UplinkError {
    /// The kind it is counted as.
    pub fn kind(&self) -> ErrorKind {
        match self {
            UplinkError::Connect { source, .. }
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                ErrorKind::ConnectionRefused
            }
            UplinkError::Connect { .. } => ErrorKind::Connect,
            UplinkError::ConnectTimeout { .. } | UplinkError::HandshakeTimeout { .. } => {
                ErrorKind::ConnectTimeout
            }
            UplinkError::Handshake(_) => ErrorKind::Tls,
            UplinkError::Write(_) | UplinkError::Read { .. } | UplinkError::Closed(_) => {
                ErrorKind::ConnectionLost
            }
            UplinkError::WriteStalled(_) | UplinkError::NoResponse => ErrorKind::Timeout,
            UplinkError::Response(_) => ErrorKind::BadResponse,
            UplinkError::Status(_) | UplinkError::FirmwareStatus { .. } => ErrorKind::HttpStatus,
            UplinkError::FirmwareTooLarge { .. } => ErrorKind::Firmware,
            UplinkError::CutMidChunk => ErrorKind::InjectedFault,
        }
    }
}

/// Connection failures by kind, shared by every spot of a fleet (one atomic counter per
/// kind, no lock). When it speaks, the first failure of each kind is said on stderr at
/// once; later ones are only counted.
#[derive(Debug, Default)]
pub struct ErrorTally {
    counts: [AtomicU64; ErrorKind::ALL.len()],
    speaks: bool,
}

impl ErrorTally {
    /// A tally that says the first failure of each kind on stderr.
    pub fn speaking() -> Self {
        ErrorTally {
            speaks: true,
            ..ErrorTally::default()
        }
    }

    /// Counts `error` of spot `serial`; says it when it is the first of its kind.
    pub fn record(&self, serial: u64, error: &UplinkError) {
        let kind = error.kind();
        let first = self.counts[kind as usize].fetch_add(1, Relaxed) == 0;
        if first && self.speaks {
            eprintln!(
                "spot emulate: spot {serial}: {error} (first {} error; more are counted in the summary)",
                kind.name()
            );
        }
    }

    /// The count of each kind seen at least once.
    pub fn counts(&self) -> Vec<(ErrorKind, u64)> {
        ErrorKind::ALL
            .iter()
            .map(|&k| (k, self.counts[k as usize].load(Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_counted_apart_and_listed_in_order() {
        let tally = ErrorTally::default();
        let refused = || UplinkError::Connect {
            addr: "127.0.0.1:9".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        tally.record(1, &refused());
        tally.record(2, &refused());
        tally.record(1, &UplinkError::Status(503));
        tally.record(1, &UplinkError::NoResponse);
        assert_eq!(
            tally.counts(),
            vec![
                (ErrorKind::ConnectionRefused, 2),
                (ErrorKind::Timeout, 1),
                (ErrorKind::HttpStatus, 1)
            ]
        );
    }
}
