//! Raw TCP ingest (spec §4.2, delivery contract): a spot streams its encoding on a plain
//! socket. Encoding detection: the first byte `0x00` (a zero-length protobuf frame, which the
//! protobuf decoder skips) means protobuf; anything else is JSON. The first event must be a
//! `spot create` naming the serial (`spot_id`); otherwise the connection is closed.
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
use crate::shutdown::{reached, Phase};

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
        connections: shared.tcp_slots.clone(),
        refusal: accept::Refusal::Close,
    };
    let connection = |stream, peer: std::net::SocketAddr| {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        async move {
            if let Err(e) = ingest(stream, &shared, shutdown, WriteBack::AcksAndCommands).await {
                tracing::info!(%peer, "tcp stream ended: {e}");
            }
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
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut force = shutdown.clone();
    tokio::select! {
        r = handle(stream, shared, &mut shutdown, write_back) => r,
        _ = reached(&mut force, Phase::Closing) => Err("server stopped".into()),
    }
}

async fn handle<S>(
    stream: S,
    shared: &Context,
    shutdown: &mut watch::Receiver<Phase>,
    write_back: WriteBack,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let limits = &shared.limits;
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
                .map_err(|_| "no spot create within the header timeout".to_string())?
                .map_err(|e| e.to_string())?,
            _ = reached(shutdown, Phase::Draining) => return Err("server stopping".into()),
        };
        if n == 0 {
            return Err("closed before a spot create".into());
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
            return Err("no decoder".into());
        };
        d.feed(&buf[..n]);
        while let Some(next) = d.next_event() {
            let event = next.map_err(|e| format!("first event malformed: {e}"))?;
            if serial_and_version.is_none() {
                let (serial, version) = serial_of(&event)
                    .ok_or("the first event must be a spot create with spot_id")?;
                if !crate::ingest::valid_serial(&serial) {
                    return Err(format!(
                        "bad spot_id {serial:?}: 1 to 64 letters, digits, '-' or '_'"
                    ));
                }
                serial_and_version = Some((serial, version));
            }
            let json = crate::ingest::journal_json(d, &event);
            pending.push((event, json));
        }
    }
    let (Some((serial, version)), Some(mut decoder)) = (serial_and_version, decoder) else {
        return Err("no spot create".into());
    };
    tracing::info!(spot = %serial, ?encoding, "tcp stream opened");
    // One allocation for the serial of every message of this stream.
    let stream_serial: Arc<str> = Arc::from(serial.as_str());
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let send = |msg| async {
        shared
            .pipeline
            .send(msg)
            .await
            .map_err(|_| match shared.pipeline.failure() {
                Some(failure) => format!("server failed: {failure}"),
                None => "server stopping".to_string(),
            })
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
                    .map_err(|_| format!("idle for {:?}", limits.tcp_idle_timeout))?
                    .map_err(|e| e.to_string())?,
                // Draining: what was received is committed and acknowledged below.
                _ = reached(shutdown, Phase::Draining) => return Ok(()),
            };
            if n == 0 {
                decoder.finish();
            } else {
                decoder.feed(&buf[..n]);
            }
            let mut malformed = 0;
            let events = crate::ingest::drain(&mut decoder, &serial, shared, &mut malformed);
            if !events.is_empty() {
                send(PipelineMsg::Events {
                    serial: stream_serial.clone(),
                    events,
                    ack: Some(ack_tx.clone()),
                })
                .await?;
            }
            if n == 0 {
                return Ok::<(), String>(());
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
    let _ = rx.await;
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
