//! Raw TCP ingest (spec §4.2, delivery contract): a spot streams its encoding on a plain
//! socket. Encoding detection: the first byte `0x00` (a zero-length protobuf frame, which the
//! protobuf decoder skips) means protobuf; anything else is JSON. The first event must be a
//! `spot create` naming the serial (`spot_id`); otherwise the connection is closed. Spot
//! admission applies to it; with `--spot-admission secret` it carries the spot's secret in
//! [`SECRET_FIELD`] (taken out before anything is stored). A refused spot's connection is
//! closed without an answer.
//!
//! While commits to the store fail (a full disk), a new stream is closed before anything
//! of it is read and an open one as soon as a commit fails (raw TCP has no status to
//! answer; HTTP's equivalent is `503` with `Retry-After`): nothing unstored is acknowledged,
//! and the spot reconnects with its backoff, keeping its events. Each is logged at `debug`
//! (the pipeline logs the failing commits once per interval).
//!
//! Written back on the same socket, in the stream's encoding: after every commit covering
//! the connection's events an `["ack","update",{"seq":N,"time":"…"}]`, and the spot's
//! commands as soon as they are queued.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use spot_protocol::ack::ack_event;
use spot_protocol::{Action, Decoder, Encoder, Encoding, Event, EventKind, Limits};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::accept;
use crate::clock::now_ms;
use crate::context::Context;
use crate::pipeline::PipelineMsg;
use crate::shutdown::{phase_reached, Phase};

/// Read buffer per connection.
const READ_BUFFER: usize = 16 * 1024;
/// Command batches queued per connection before commands stay queued on the spot.
const COMMAND_QUEUE: usize = 16;

/// The number of the next stream that takes commands (its key in the pipeline's sinks).
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// Accepts raw TCP spot streams until `shutdown` ([`accept`]); a stream over the limit is
/// closed.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Context>,
    shutdown: watch::Receiver<Phase>,
    done: mpsc::Sender<()>,
) {
    let slots = accept::Slots {
        connections: shared.tcp_connections.clone(),
        class: Some(accept::Class::Spot),
        refusal: accept::Refusal::Close,
    };
    let connection = |stream, peer: std::net::SocketAddr, admitted| {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        async move {
            match ingest(stream, &shared, shutdown, WriteBack::AcksAndCommands).await {
                Ok(()) => {}
                Err(e @ StreamError::StoreFailing(_)) => {
                    shared
                        .metrics
                        .requests_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "tcp stream closed: {e}");
                }
                Err(e) => tracing::info!(%peer, "tcp stream ended: {e}"),
            }
            drop(admitted);
        }
    };
    let metrics = shared.metrics.clone();
    accept::serve(listener, slots, metrics, shutdown.clone(), done, connection).await;
}

/// The first event, when it is a `spot create` with a serial.
fn serial_of(event: &Event) -> Option<(String, Option<String>)> {
    match &event.kind {
        EventKind::Spot(Action::Create, status) => status
            .spot_id
            .clone()
            .map(|serial| (serial, status.version.clone())),
        _ => None,
    }
}

/// The field of the first `spot create` on raw TCP that carries the spot's secret
/// (`--spot-admission secret`; the HTTP transport uses Basic authentication instead).
pub const SECRET_FIELD: &str = "spot_secret";

/// Removes the spot's secret from its `spot create`.
fn take_secret(event: &mut Event) -> Option<String> {
    match &mut event.kind {
        EventKind::Spot(_, status) => match status.extra.shift_remove(SECRET_FIELD)? {
            serde_json::Value::String(secret) => Some(secret),
            _ => Some(String::new()),
        },
        _ => None,
    }
}

/// Why a spot stream ended other than by the spot closing it after its spot create.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The server is draining: what was received is committed and acknowledged.
    #[error("server stopping")]
    Stopping,
    /// The server's shutdown grace is over: the stream is dropped.
    #[error("server stopped")]
    Stopped,
    /// The pipeline failed (see [`crate::pipeline::PipelineSender::failure`]).
    #[error("server failed: {0}")]
    Failed(String),
    /// No spot create arrived within the header timeout.
    #[error("no spot create within the header timeout")]
    NoCreateInTime,
    /// The peer closed before its spot create.
    #[error("closed before a spot create")]
    ClosedBeforeCreate,
    /// The first event does not decode.
    #[error("first event malformed: {0}")]
    FirstMalformed(spot_protocol::DecodeError),
    /// The first event is not a spot create naming the spot.
    #[error("the first event must be a spot create with spot_id")]
    NotSpotCreate,
    /// The spot's serial is not acceptable.
    #[error("bad spot_id {0:?}: 1 to 64 letters, digits, '-' or '_'")]
    BadSerial(String),
    /// Spot admission refused the spot (nothing of the stream is stored).
    #[error("spot refused: {0}")]
    Refused(crate::access::AdmissionRefusal),
    /// Commits to the store fail (a full disk): the stream is closed before anything of it
    /// is read, or as soon as a commit fails while it streams; what it sent since its last
    /// ack is not acknowledged (the spot resends it once it reconnects).
    #[error("the server cannot store events now: {0}")]
    StoreFailing(String),
    /// Nothing arrived for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(std::time::Duration),
    /// Reading the socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What the server writes back on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteBack {
    /// Acks after commits and the spot's commands (a spot streaming to `--tcp-listen`).
    AcksAndCommands,
    /// Nothing: a spot's telnet service (`--pull`) is a one-way debugging stream; the
    /// spot's commands stay queued for its own uplink.
    Nothing,
}

/// Ingests one spot stream (accepted on `--tcp-listen` or dialled by `--pull`) until it
/// ends, fails, or the server drains: then the events received so far are committed, the
/// last ack is written and the stream is closed. When the server force-closes (after the
/// shutdown grace) the stream is dropped at once.
pub async fn ingest<S>(
    stream: S,
    shared: &Context,
    mut shutdown: watch::Receiver<Phase>,
    write_back: WriteBack,
) -> Result<(), StreamError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut force = shutdown.clone();
    tokio::select! {
        r = handle(stream, shared, &mut shutdown, write_back) => r,
        _ = phase_reached(&mut force, Phase::Closing) => Err(StreamError::Stopped),
    }
}

async fn handle<S>(
    stream: S,
    shared: &Context,
    shutdown: &mut watch::Receiver<Phase>,
    write_back: WriteBack,
) -> Result<(), StreamError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let limits = &shared.limits;
    if let Some(failing) = shared.pipeline.commit_failing() {
        // Like HTTP's 503: closed before a byte is read, nothing acknowledged.
        return Err(StreamError::StoreFailing(failing));
    }
    let (mut reader, writer) = tokio::io::split(stream);
    let mut buf = vec![0u8; READ_BUFFER];
    let mut first_read = true;
    let mut decoder: Option<Decoder> = None;
    let mut encoding = Encoding::Json;
    let mut pending: Vec<(Event, String)> = Vec::new();
    let mut serial_and_version = None;
    // Until the first event names the spot, bytes must arrive within the header timeout.
    while serial_and_version.is_none() {
        let n = tokio::select! {
            r = tokio::time::timeout(limits.header_read_timeout, reader.read(&mut buf)) => r
                .map_err(|_| StreamError::NoCreateInTime)??,
            _ = phase_reached(shutdown, Phase::Draining) => return Err(StreamError::Stopping),
        };
        if n == 0 {
            return Err(StreamError::ClosedBeforeCreate);
        }
        if first_read {
            first_read = false;
            encoding = if buf[0] == 0 {
                Encoding::Protobuf
            } else {
                Encoding::Json
            };
            decoder = Some(Decoder::new(
                encoding,
                Limits {
                    max_message_bytes: limits.max_message_bytes,
                    max_depth: limits.max_depth,
                },
            ));
        }
        let Some(d) = decoder.as_mut() else {
            return Err(StreamError::ClosedBeforeCreate);
        };
        d.feed(&buf[..n]);
        while let Some(next) = d.next_event() {
            let mut event = next.map_err(StreamError::FirstMalformed)?;
            if serial_and_version.is_none() {
                let (serial, version) = serial_of(&event).ok_or(StreamError::NotSpotCreate)?;
                if !crate::ingest::valid_serial(&serial) {
                    return Err(StreamError::BadSerial(serial));
                }
                // Taken out before the event is journaled: a secret is never stored.
                let secret = take_secret(&mut event);
                if write_back == WriteBack::AcksAndCommands {
                    crate::ingest::admit(shared, &serial, secret.as_deref())
                        .await
                        .map_err(StreamError::Refused)?;
                }
                serial_and_version = Some((serial, version));
            }
            let json = crate::ingest::journal_json(d, &event);
            pending.push((event, json));
        }
    }
    let (Some((serial, version)), Some(mut decoder)) = (serial_and_version, decoder) else {
        return Err(StreamError::ClosedBeforeCreate);
    };
    tracing::info!(spot = %serial, ?encoding, "tcp stream opened");
    // One allocation for the serial of every message of this stream.
    let stream_serial: Arc<str> = Arc::from(serial.as_str());
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let send = |msg| async {
        tokio::select! {
            biased;
            sent = shared.pipeline.send(msg) => sent.map_err(|_| match shared.pipeline.failure() {
                Some(failure) => StreamError::Failed(failure.to_string()),
                None => StreamError::Stopping,
            }),
            failing = shared.pipeline.commit_fails() => Err(StreamError::StoreFailing(failing)),
        }
    };
    send(PipelineMsg::Begin {
        serial: serial.clone(),
        version,
    })
    .await?;
    let connection = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
    let writer_task = if write_back == WriteBack::AcksAndCommands {
        send(PipelineMsg::AttachCommands {
            serial: serial.clone(),
            connection,
            sink: command_tx,
        })
        .await?;
        Some(tokio::spawn(write_acks_and_commands(
            writer, encoding, ack_rx, command_rx,
        )))
    } else {
        None
    };
    let result = async {
        shared
            .metrics
            .events_received
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        send(PipelineMsg::Events {
            serial: stream_serial.clone(),
            events: std::mem::take(&mut pending),
            ack: Some(ack_tx.clone()),
        })
        .await?;
        loop {
            let n = tokio::select! {
                r = tokio::time::timeout(limits.tcp_idle_timeout, reader.read(&mut buf)) => r
                    .map_err(|_| StreamError::Idle(limits.tcp_idle_timeout))??,
                // Draining: what was received is committed and acknowledged below.
                _ = phase_reached(shutdown, Phase::Draining) => return Ok(()),
                failing = shared.pipeline.commit_fails() => {
                    return Err(StreamError::StoreFailing(failing));
                }
            };
            if n == 0 {
                decoder.finish();
            } else {
                decoder.feed(&buf[..n]);
            }
            let mut malformed = 0;
            let events =
                crate::ingest::decoded_events(&mut decoder, &serial, shared, &mut malformed);
            if !events.is_empty() {
                send(PipelineMsg::Events {
                    serial: stream_serial.clone(),
                    events,
                    ack: Some(ack_tx.clone()),
                })
                .await?;
            }
            if n == 0 {
                return Ok::<(), StreamError>(());
            }
        }
    }
    .await;
    if writer_task.is_some() {
        let _ = send(PipelineMsg::DetachCommands {
            serial: serial.clone(),
            connection,
        })
        .await;
    }
    let (reply, rx) = oneshot::channel();
    let _ = send(PipelineMsg::Sync {
        serial: serial.clone(),
        end_stream: true,
        take_commands: false,
        reply,
    })
    .await;
    // Not for as long as commits fail: the stream ends unacknowledged then.
    tokio::select! {
        _ = rx => {}
        _ = shared.pipeline.commit_fails() => {}
    }
    drop(ack_tx);
    if let Some(writer_task) = writer_task {
        let _ = writer_task.await;
    }
    tracing::info!(spot = %serial, "tcp stream closed");
    result
}

/// Writes acks (after commits) and commands (when queued) in the stream's encoding, until
/// the acks end (the stream's last ack is written even when its commands ended first).
async fn write_acks_and_commands<W: AsyncWrite>(
    writer: W,
    encoding: Encoding,
    mut acks: watch::Receiver<u64>,
    mut commands: mpsc::Receiver<Vec<Event>>,
) {
    let mut writer = std::pin::pin!(writer);
    let mut encoder = Encoder::new(encoding);
    let mut out = Vec::new();
    if encoding == Encoding::Protobuf {
        out.push(0); // the stream marker, as the spot sends it
    }
    let mut commands_open = true;
    loop {
        tokio::select! {
            changed = acks.changed() => {
                if changed.is_err() { break; }
                let seq = *acks.borrow_and_update();
                encoder.encode(&ack_event(seq, now_ms()), &mut out);
            }
            batch = commands.recv(), if commands_open => match batch {
                Some(batch) => for c in &batch { encoder.encode(c, &mut out) },
                None => {
                    commands_open = false;
                    continue;
                }
            },
        }
        if writer.write_all(&out).await.is_err() {
            break;
        }
        out.clear();
    }
    let _ = writer.shutdown().await;
}
