//! The edge role: spot streams into the input log. The ingest of the embedded server runs
//! unchanged and sends its [`PipelineMsg`]s to the pipeline's queue; on a cluster node the
//! edge drains that queue instead of the apply stage, and publishes each stream's entries
//! to `SPOT_IN` ([`super::wire`]).
//!
//! A POST's entries (its begin, its events, its end, each stamped with this node's time)
//! go as **one** message when it ends, so a POST is stored whole or not at all. A POST
//! larger than [`GROUP_MAX_BYTES`], and every read of a raw TCP stream (whose
//! acknowledgement moves per read), go as several messages, published one after the other
//! per serial: a group is published only after the one before it was acknowledged, so a
//! failed publish never leaves a later group of the stream stored before it (which would
//! mark the failed one's sequences as done). The answer to the spot (`200`, `X-Spot-Ack`)
//! leaves only after JetStream acknowledged every group of the stream.
//!
//! Each group's `Nats-Msg-Id` is this node's run id and a counter, so a publish retried
//! after a lost acknowledgement is dropped by JetStream's duplicate window. A spot's own
//! retransmission (a new POST with events already stored) carries new times and is a new
//! message: the stage drops its events by the spot's acknowledged sequence, as the
//! embedded server does.
//!
//! A REST change goes the same way ([`wire::WriteRequest`]); the stage's answer comes
//! back on core NATS after its commit, and the change is answered once this node's
//! replica holds it (so the caller reads what it wrote), or `503` after
//! [`WRITE_ANSWER_WITHIN`] without a stage.
//!
//! A stream that ends hands the spot its pending requests (`config_request`,
//! `firmware_request`) as this node's replica holds them, then tells the owner which ones
//! it handed over ([`wire::TAKE_COMMANDS`]); a request made meanwhile stays pending. The
//! replica is read only once it holds the serial's mark ([`CommandMarks`]): the commit of
//! its newest request (the owner's [`wire::RequestNote`]) and this node's last hand-over.
//! So a command reaches its spot whichever node the spot reaches next, once.
//!
//! Not on this path yet: access control's audit events (not logged).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context as JetStream;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use futures_util::StreamExt;

use super::replica::Replica;
use super::wire::{self, WriteAnswer, WriteRequest};
use crate::clock::now_ms;
use crate::domain::{Domain, JournalEntry, PutError, UpstreamRow};
use crate::ids::Id;
use crate::pipeline::{EndReply, PipelineMsg, PipelineReceiver};
use serde_json::Value;

/// A POST's entries beyond this many bytes go as several messages (JetStream's default
/// largest message is 1 MiB).
pub const GROUP_MAX_BYTES: usize = 512 * 1024;

/// Attempts of one publish before the stream is given up (answered `503`: the spot sends
/// it again); the same message id each time. Twenty, half a second apart: a stream's
/// leader election after a NATS server died took up to about 5 s here.
const PUBLISH_ATTEMPTS: u32 = 20;

/// Wait before the next attempt of a failed publish.
const PUBLISH_RETRY_DELAY: Duration = Duration::from_millis(500);

/// The outcome of a group's publish, and of every group of the stream before it.
type Published = Shared<BoxFuture<'static, Result<(), Arc<str>>>>;

/// One open stream of a serial on this node.
#[derive(Default)]
struct Open {
    /// Entries not published yet.
    payload: String,
    /// The last publish of the stream (each waits for the one before).
    last: Option<Published>,
    /// The stream's last sequence key.
    last_seq: u64,
}

/// What publishing needs.
#[derive(Clone)]
struct Publisher {
    js: JetStream,
    partitions: u32,
    /// This run's id (message ids).
    run: Arc<str>,
    counter: Arc<AtomicU64>,
}

impl Publisher {
    /// Publishes `payload` for `serial` after `before`, retrying with the same message id.
    fn publish(&self, serial: &str, payload: String, before: Option<Published>) -> Published {
        let this = self.clone();
        let subject = wire::group_subject(serial, self.partitions);
        let id = format!(
            "{}.{}",
            self.run,
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let payload = bytes::Bytes::from(payload);
        async move {
            if let Some(before) = before {
                before.await?;
            }
            let mut last_error = String::new();
            for attempt in 0..PUBLISH_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(PUBLISH_RETRY_DELAY).await;
                }
                let message = PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(&id);
                match this.js.send_publish(subject.clone(), message).await {
                    Ok(ack) => match ack.await {
                        Ok(_) => return Ok(()),
                        Err(e) => last_error = e.to_string(),
                    },
                    Err(e) => last_error = e.to_string(),
                }
                tracing::warn!(
                    subject,
                    id,
                    attempt,
                    "publish to {} failed: {last_error}",
                    wire::IN_STREAM
                );
            }
            Err(Arc::from(format!(
                "{} did not acknowledge {subject} after {PUBLISH_ATTEMPTS} attempts: {last_error}",
                wire::IN_STREAM
            )))
        }
        .boxed()
        .shared()
    }
}

impl Publisher {
    /// Tells the partition's owner that `serial` was handed these requests; returns the
    /// input log position of that message.
    async fn handed(
        &self,
        serial: &str,
        (config, firmware): (Option<spot_protocol::Object>, Option<spot_protocol::Object>),
    ) -> Result<u64, String> {
        let mut body = spot_protocol::Object::new();
        body.insert("config".into(), config.map_or(Value::Null, Value::Object));
        body.insert(
            "firmware".into(),
            firmware.map_or(Value::Null, Value::Object),
        );
        let request = WriteRequest {
            method: wire::TAKE_COMMANDS.into(),
            collection: "spots".into(),
            id: serial.to_string(),
            body,
            time: now_ms(),
            reply: String::new(),
        };
        self.send_write(&request).await
    }

    /// Publishes a REST change (or a hand-over) to its partition's part of the input log
    /// ([`wire::write_partition`]); its position there.
    async fn send_write(&self, request: &WriteRequest) -> Result<u64, String> {
        let payload = serde_json::to_string(request).map_err(|e| e.to_string())?;
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(self.next_id());
        let p = wire::write_partition(request, self.partitions);
        self.js
            .send_publish(wire::write_subject(p), message)
            .await
            .map_err(|e| e.to_string())?
            .await
            .map(|ack| ack.sequence)
            .map_err(|e| e.to_string())
    }

    /// The next message id of this run.
    fn next_id(&self) -> String {
        format!(
            "{}.{}",
            self.run,
            self.counter.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Sends a REST change through the input log and waits for the stage's answer, then
    /// for this node's replica to hold it (when the node has one).
    async fn write(
        &self,
        mut request: WriteRequest,
        replica: Option<Replica>,
    ) -> Result<Result<serde_json::Value, PutError>, String> {
        let client = self.js.client();
        request.reply = client.new_inbox();
        let mut answers = client
            .subscribe(request.reply.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.send_write(&request).await?;
        let answer = tokio::time::timeout(WRITE_ANSWER_WITHIN, answers.next())
            .await
            .map_err(|_| {
                format!(
                    "no stage answered within {} s (the change is in the log and is applied when a stage owns the partition)",
                    WRITE_ANSWER_WITHIN.as_secs()
                )
            })?
            .ok_or("the answer's subscription ended")?;
        let answer: WriteAnswer =
            serde_json::from_slice(&answer.payload).map_err(|e| e.to_string())?;
        if let Some(replica) = replica {
            let p = wire::write_partition(&request, self.partitions);
            replica.reach(p, answer.position).await;
        }
        Ok(answer.result.map_err(Into::into))
    }
}

/// How long a REST change waits for the stage's answer before it is answered `503`.
const WRITE_ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Per serial, the input log position this node's replica must hold before the serial's
/// pending requests are read from it: a request's commit (the owner says so on
/// [`wire::COMMANDS_SUBJECT`]), or this node's last hand-over (so that the same request is
/// not handed over twice while the replica still shows it).
type CommandMarks = Arc<std::sync::Mutex<HashMap<String, u64>>>;

/// The commands to hand `serial` now: its pending requests as the replica holds them once
/// it reached the serial's mark; the owner is told which were handed over.
async fn hand_over(
    serial: &str,
    state: &RwLock<Domain>,
    replica: Option<Replica>,
    marks: &CommandMarks,
    publisher: &Publisher,
) -> Vec<spot_protocol::Event> {
    let mark = marks.lock().map(|m| m.get(serial).copied()).unwrap_or(None);
    if let (Some(mark), Some(replica)) = (mark, replica) {
        let p = crate::partition::Partition::of_key(serial, publisher.partitions);
        replica.reach(p, mark).await;
    }
    let requests = state
        .read()
        .map(|d| d.pending_requests(serial))
        .unwrap_or_default();
    let commands = Domain::commands_of(&requests);
    if !commands.is_empty() {
        match publisher.handed(serial, requests).await {
            Ok(position) => {
                if let Ok(mut m) = marks.lock() {
                    let at = m.entry(serial.to_string()).or_default();
                    *at = (*at).max(position);
                }
            }
            // They are handed over again with the next stream.
            Err(why) => tracing::warn!(serial, "handed commands not marked as taken: {why}"),
        }
    }
    commands
}

/// Keeps `marks` up to date with the owners' word of new requests, until the node stops.
async fn follow_requests(js: JetStream, marks: CommandMarks) {
    let mut notes = match js.client().subscribe(wire::COMMANDS_SUBJECT).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("commands are handed over without the owners' word: {e}");
            return;
        }
    };
    while let Some(note) = notes.next().await {
        let Ok(note) = serde_json::from_slice::<wire::RequestNote>(&note.payload) else {
            continue;
        };
        if let Ok(mut m) = marks.lock() {
            let at = m.entry(note.serial).or_default();
            *at = (*at).max(note.position);
        }
    }
}

/// Drains the pipeline's queue into `SPOT_IN` until every sender is gone or
/// [`PipelineMsg::Shutdown`]; runs on a thread of its own, spawning the publishes on
/// `runtime`.
pub fn run(
    rx: PipelineReceiver,
    js: JetStream,
    runtime: tokio::runtime::Handle,
    partitions: u32,
    run_id: String,
    replica: Option<Replica>,
    state: Option<Arc<RwLock<Domain>>>,
) {
    let publisher = Publisher {
        js,
        partitions,
        run: run_id.into(),
        counter: Arc::new(AtomicU64::new(0)),
    };
    let mut open: HashMap<String, Open> = HashMap::new();
    let mut pending = VecDeque::new();
    let _guard = runtime.enter();
    let marks = CommandMarks::default();
    tokio::spawn(follow_requests(publisher.js.clone(), marks.clone()));
    'outer: while rx.take_all(&mut pending, true) {
        while let Some(msg) = pending.pop_front() {
            rx.give_back_for(&msg);
            match msg {
                PipelineMsg::Begin { serial, version } => {
                    let o = open.entry(serial.clone()).or_default();
                    wire::push_entry(
                        &mut o.payload,
                        &JournalEntry::Begin {
                            serial,
                            version,
                            time: now_ms(),
                        },
                    );
                }
                PipelineMsg::Events {
                    serial,
                    events,
                    ack,
                } => {
                    let o = open.entry(serial.to_string()).or_default();
                    let now = now_ms();
                    for (event, event_json) in events {
                        if let Some(seq) = event.seq {
                            o.last_seq = seq;
                        }
                        wire::push_entry(
                            &mut o.payload,
                            &JournalEntry::Event {
                                row: UpstreamRow {
                                    serial: serial.clone(),
                                    spot_id: Id::default(),
                                    seq: event.seq,
                                    time_received: now,
                                    event_json,
                                },
                                duplicate: false,
                            },
                        );
                    }
                    if ack.is_some() || o.payload.len() >= GROUP_MAX_BYTES {
                        let payload = std::mem::take(&mut o.payload);
                        let done = publisher.publish(&serial, payload, o.last.take());
                        o.last = Some(done.clone());
                        let seq = o.last_seq;
                        tokio::spawn(async move {
                            if done.await.is_ok() {
                                if let Some(ack) = ack {
                                    ack.send_replace(seq);
                                }
                            }
                        });
                    }
                }
                PipelineMsg::Sync {
                    serial,
                    end_stream,
                    take_commands,
                    reply,
                } => {
                    let mut o = if end_stream {
                        open.remove(&serial).unwrap_or_default()
                    } else {
                        std::mem::take(open.entry(serial.clone()).or_default())
                    };
                    if end_stream {
                        wire::push_entry(
                            &mut o.payload,
                            &JournalEntry::End {
                                serial: serial.clone(),
                                time: now_ms(),
                            },
                        );
                    }
                    let last = if o.payload.is_empty() {
                        o.last.take()
                    } else {
                        let payload = std::mem::take(&mut o.payload);
                        Some(publisher.publish(&serial, payload, o.last.take()))
                    };
                    let acked_seq = o.last_seq;
                    if !end_stream {
                        // The stream goes on: keep its chain and sequence.
                        let kept = open.entry(serial.clone()).or_default();
                        kept.last = last.clone();
                        kept.last_seq = acked_seq;
                    }
                    let publisher = publisher.clone();
                    let (state, replica, marks) = (state.clone(), replica.clone(), marks.clone());
                    tokio::spawn(async move {
                        let outcome = match last {
                            Some(done) => done.await,
                            None => Ok(()),
                        };
                        if let Err(why) = outcome {
                            // Dropping the reply answers `503`: nothing acknowledged.
                            tracing::warn!("a stream is not acknowledged: {why}");
                            return;
                        }
                        let commands = match (state, take_commands) {
                            (Some(state), true) => {
                                hand_over(&serial, &state, replica, &marks, &publisher).await
                            }
                            _ => Vec::new(),
                        };
                        let _ = reply.send(EndReply {
                            acked_seq,
                            commands,
                        });
                    });
                }
                PipelineMsg::Put {
                    method,
                    collection,
                    id,
                    mut body,
                    reply,
                } => {
                    // Several partitions: references to other partitions' resources are
                    // checked here, on the whole state, and members named by id.
                    if let (true, Some(state)) = (publisher.partitions > 1, &state) {
                        let checked = match state.read() {
                            Ok(d) => d.resolve_references(method, &collection, &id, &mut body),
                            Err(_) => Ok(()),
                        };
                        if let Err(refused) = checked {
                            let _ = reply.send(Err(refused));
                            continue;
                        }
                    }
                    // A spot named by serial number goes by its id, which says its partition
                    // (as the serial does, but a serial may look like an id).
                    let spot = |d: &Domain| d.resolve_spot_id(&id).map(|real| real.text());
                    let id = match (&state, collection == "spots") {
                        (Some(state), true) => state.read().ok().and_then(|d| spot(&d)),
                        _ => None,
                    }
                    .unwrap_or(id);
                    let request = WriteRequest {
                        method: wire::write_name(method).into(),
                        collection,
                        id,
                        body,
                        time: now_ms(),
                        reply: String::new(),
                    };
                    let (publisher, replica) = (publisher.clone(), replica.clone());
                    tokio::spawn(async move {
                        match publisher.write(request, replica).await {
                            Ok(result) => {
                                let _ = reply.send(result);
                            }
                            // Dropping the reply answers `503`.
                            Err(why) => tracing::warn!("a REST change is not answered: {why}"),
                        }
                    });
                }
                PipelineMsg::Audit { entries, reply } => {
                    let entries: Vec<Value> = entries
                        .into_iter()
                        .map(|(topic, data)| Value::from(vec![topic, data]))
                        .collect();
                    let mut body = spot_protocol::Object::new();
                    body.insert("entries".into(), entries.into());
                    let request = WriteRequest {
                        method: wire::AUDIT.into(),
                        collection: String::new(),
                        id: String::new(),
                        body,
                        time: now_ms(),
                        reply: String::new(),
                    };
                    let publisher = publisher.clone();
                    tokio::spawn(async move {
                        // Answered once the input log holds them (then they are logged as
                        // surely as a change); unanswered, they are sent again later.
                        match publisher.send_write(&request).await {
                            Ok(_) => {
                                let _ = reply.send(());
                            }
                            Err(e) => {
                                tracing::warn!("audit entries not sent to the input log: {e}")
                            }
                        }
                    });
                }
                PipelineMsg::AttachCommands { .. }
                | PipelineMsg::DetachCommands { .. }
                | PipelineMsg::Tick => {}
                PipelineMsg::Shutdown => break 'outer,
                #[cfg(test)]
                PipelineMsg::Panic => panic!("asked to panic"),
            }
        }
    }
}
