//! Client side of `GET /api/stream` (used by `spot tail`): a sans-IO Server-Sent Events
//! parser, [`SseParser`], and [`follow`], which reconnects with `Last-Event-ID` so no event
//! is missed across a dropped connection. `https://` servers are verified with the public
//! roots plus [`TailOptions::ca_cert`] ([`crate::tls`]).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::connector::{with_causes, Connector};

/// Largest SSE event (all its lines) the client buffers.
pub const MAX_SSE_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseMessage {
    /// The `id:` field, if any.
    pub id: Option<String>,
    /// The `event:` field (`message` when absent).
    pub event: String,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// What went wrong while following the stream.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// An SSE event exceeded [`MAX_SSE_EVENT_BYTES`].
    #[error("server-sent event larger than {MAX_SSE_EVENT_BYTES} bytes")]
    EventTooLarge,
    /// The stream is not UTF-8.
    #[error("server-sent events stream is not UTF-8 at byte {0} of a line")]
    Utf8(usize),
    /// The server refused the request (e.g. a bad topic filter); retrying will not help.
    #[error("{url}: HTTP {status}: {body}")]
    Refused {
        /// The stream URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Response body (the server's error message).
        body: String,
    },
    /// The server is not `http://HOST[:PORT]` or `https://HOST[:PORT]`.
    #[error("server {server:?}: expected http://HOST[:PORT] or https://HOST[:PORT]")]
    Scheme {
        /// The server given.
        server: String,
    },
    /// The server URL does not form a valid request URI.
    #[error("server {server:?}: {source}")]
    ServerUrl {
        /// The server given.
        server: String,
        /// Why the URI is invalid.
        source: http::uri::InvalidUri,
    },
    /// A CA certificate for a server that is not `https://`.
    #[error("CA certificate {}: the server is not https://", .0.display())]
    CaWithoutHttps(PathBuf),
    /// The TLS settings are unusable (e.g. the CA file).
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsConfigError),
    /// The request could not be built.
    #[error("{0}")]
    Request(#[from] http::Error),
    /// The server sent an `error` event (e.g. its events log failed).
    #[error("server error: {0}")]
    Server(String),
    /// An event's data is not the `{"id":..,"topic":..,"payload":..}` envelope.
    #[error("event {id:?}: bad envelope: {reason}")]
    Envelope {
        /// SSE id.
        id: Option<String>,
        /// Parser message.
        reason: String,
    },
}

/// Incremental SSE parser: feed bytes as they come, take complete events out.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    pending_bytes: usize,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// A parser with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `bytes`; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseMessage>, TailError> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                self.pending_bytes += 1;
                if self.pending_bytes > MAX_SSE_EVENT_BYTES {
                    return Err(TailError::EventTooLarge);
                }
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line)
                .map_err(|e| TailError::Utf8(e.utf8_error().valid_up_to()))?;
            if line.is_empty() {
                self.pending_bytes = 0;
                let event = self.event.take().unwrap_or_else(|| "message".to_owned());
                if let Some(data) = self.data.take() {
                    out.push(SseMessage {
                        id: self.id.clone(),
                        event,
                        data,
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // comment (keep-alive)
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "id" => self.id = Some(value.to_owned()),
                "event" => self.event = Some(value.to_owned()),
                "data" => match &mut self.data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                _ => {} // `retry` and unknown fields
            }
        }
        Ok(out)
    }
}

/// One event received by [`follow`].
#[derive(Debug, Clone, PartialEq)]
pub struct TailEvent {
    /// Event id; `None` for a raw spot event (`--publish-raw`), which has none.
    pub id: Option<u64>,
    /// Topic.
    pub topic: String,
    /// Payload object.
    pub payload: serde_json::Value,
    /// The envelope as received: `{"id":..,"topic":..,"payload":..}` (no `id`: raw event).
    pub json: String,
}

fn parse_envelope(message: SseMessage) -> Result<TailEvent, TailError> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        id: Option<u64>,
        topic: String,
        payload: serde_json::Value,
    }
    let envelope: Envelope =
        serde_json::from_str(&message.data).map_err(|e| TailError::Envelope {
            id: message.id.clone(),
            reason: e.to_string(),
        })?;
    Ok(TailEvent {
        id: envelope.id,
        topic: envelope.topic,
        payload: envelope.payload,
        json: message.data,
    })
}

/// What [`follow`] follows.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Server base URL, e.g. `http://127.0.0.1:8080` or `https://spots.example:8443`.
    pub server: String,
    /// Also trust the certificates of this PEM file for an `https://` server (a private CA
    /// or a self-signed certificate), besides the public roots.
    pub ca_cert: Option<PathBuf>,
    /// Topic filter.
    pub topic_filter: String,
    /// Start after this event id (from the log); `None`: from now.
    pub after_id: Option<u64>,
    /// Wait before reconnecting after the connection broke.
    pub reconnect_delay: Duration,
    /// The API key (sent as `X-Api-Key`), if the server needs one.
    pub key: Option<String>,
}

/// Follows `GET /api/stream` and calls `on_event` for each event, in order, reconnecting
/// (with `Last-Event-ID`) when the connection breaks. Returns `Ok` when `on_event` returns
/// `false` (e.g. stdout closed), an error when the server refuses the request.
pub async fn follow(
    options: &TailOptions,
    mut on_event: impl FnMut(TailEvent) -> bool,
    mut on_reconnect: impl FnMut(&str),
) -> Result<(), TailError> {
    let server = options.server.trim_end_matches('/');
    let https = match server.split_once("://") {
        Some(("https", _)) => true,
        Some(("http", _)) => false,
        _ => {
            return Err(TailError::Scheme {
                server: server.to_owned(),
            })
        }
    };
    if let (Some(ca), false) = (&options.ca_cert, https) {
        return Err(TailError::CaWithoutHttps(ca.clone()));
    }
    let tls = crate::tls::client_config(options.ca_cert.as_deref(), &[b"http/1.1"])?;
    let url = format!("{server}/api/stream");
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("topic_filter", &options.topic_filter)
        .finish();
    let stream_url: http::Uri =
        format!("{url}?{query}")
            .parse()
            .map_err(|source| TailError::ServerUrl {
                server: server.to_owned(),
                source,
            })?;
    let client: Client<Connector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(Connector::new(tls));
    let mut last_id = options.after_id;
    let side = spot_tls::Side::Client {
        ca_option: "--ca-cert",
        ca_given: options.ca_cert.is_some(),
    };
    loop {
        let mut request =
            http::Request::get(stream_url.clone()).header("Accept", "text/event-stream");
        if let Some(key) = &options.key {
            request = request.header("X-Api-Key", key.as_str());
        }
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let request = request.body(Empty::new())?;
        let broken = match client.request(request).await {
            Err(e) => format!("{url}: {}", with_causes(&e, side)),
            Ok(response) if response.status().is_client_error() => {
                let status = response.status().as_u16();
                let body = Limited::new(response.into_body(), 64 * 1024)
                    .collect()
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                    .unwrap_or_default();
                return Err(TailError::Refused { url, status, body });
            }
            Ok(response) if !response.status().is_success() => {
                format!("{url}: HTTP {}", response.status())
            }
            Ok(response) => {
                let mut parser = SseParser::new();
                let mut body = response.into_body();
                'stream: loop {
                    match body.frame().await {
                        None => break format!("{url}: stream ended"),
                        Some(Err(e)) => break format!("{url}: {}", with_causes(&e, side)),
                        Some(Ok(frame)) => {
                            let Some(chunk) = frame.data_ref() else {
                                continue;
                            };
                            for message in parser.push(chunk)? {
                                match message.event.as_str() {
                                    "message" => {}
                                    "error" => return Err(TailError::Server(message.data)),
                                    // The server is stopping: reconnect (and resume).
                                    "shutdown" => break 'stream format!("{url}: {}", message.data),
                                    _ => continue, // event types of later servers
                                }
                                let event = parse_envelope(message)?;
                                // Raw events have no id: resumption continues after the
                                // last derived event, like a browser's EventSource.
                                if event.id.is_some() {
                                    last_id = event.id;
                                }
                                if !on_event(event) {
                                    return Ok(());
                                }
                            }
                        }
                    }
                }
            }
        };
        on_reconnect(&broken);
        tokio::time::sleep(options.reconnect_delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = ": keep-alive\n\nid: 7\ndata: {\"id\":7}\n\r\nevent: error\ndata: a\ndata: b\n\nid:8\ndata:x\n\n";

    fn expected() -> Vec<SseMessage> {
        vec![
            SseMessage {
                id: Some("7".into()),
                event: "message".into(),
                data: "{\"id\":7}".into(),
            },
            SseMessage {
                id: Some("7".into()),
                event: "error".into(),
                data: "a\nb".into(),
            },
            SseMessage {
                id: Some("8".into()),
                event: "message".into(),
                data: "x".into(),
            },
        ]
    }

    #[test]
    fn parses_every_split_point_the_same() {
        let bytes = STREAM.as_bytes();
        for split in 0..=bytes.len() {
            let mut parser = SseParser::new();
            let mut got = parser.push(&bytes[..split]).expect("ok");
            got.extend(parser.push(&bytes[split..]).expect("ok"));
            assert_eq!(got, expected(), "split at {split}");
        }
        let mut parser = SseParser::new();
        let mut got = Vec::new();
        for b in bytes {
            got.extend(parser.push(std::slice::from_ref(b)).expect("ok"));
        }
        assert_eq!(got, expected(), "one byte at a time");
    }

    #[test]
    fn oversize_event_is_refused() {
        let mut parser = SseParser::new();
        let big = vec![b'a'; MAX_SSE_EVENT_BYTES + 1];
        assert!(matches!(parser.push(&big), Err(TailError::EventTooLarge)));
    }

    #[test]
    fn envelope_is_checked() {
        let ok = parse_envelope(SseMessage {
            id: Some("3".into()),
            event: "message".into(),
            data: r#"{"id":3,"topic":"items/1/created","payload":{"a":1}}"#.into(),
        })
        .expect("valid");
        assert_eq!((ok.id, ok.topic.as_str()), (Some(3), "items/1/created"));
        let raw = parse_envelope(SseMessage {
            id: Some("3".into()),
            event: "message".into(),
            data: r#"{"topic":"spots/a/events/hit/create","payload":{}}"#.into(),
        })
        .expect("a raw event has no id");
        assert_eq!(raw.id, None);
        assert!(matches!(
            parse_envelope(SseMessage {
                id: None,
                event: "message".into(),
                data: "{}".into()
            }),
            Err(TailError::Envelope { .. })
        ));
    }
}
