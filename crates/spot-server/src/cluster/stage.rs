//! The stage role: the owner of a partition applies its input log to the domain and
//! commits the result. For each partition, at most one node at a time holds its lease
//! ([`super::lease`]); the holder
//!
//! 1. loads the partition's rows and position from PostgreSQL ([`super::pg`]) into a fresh
//!    [`Domain`] (at the time of the last entry applied: replay is deterministic);
//! 2. reads `SPOT_IN` from the next sequence on (an ordered consumer filtered to the
//!    partition's subjects), and applies each message's entries at their own times — the
//!    same [`Domain::apply_entry`] the embedded server's journal replay uses — and each
//!    tick's offline sweep ([`Domain::sweep`]), each REST change ([`Domain::write`],
//!    answered on core NATS after the commit) and each other partition's reports about
//!    its items ([`Domain::apply_report`]);
//! 3. per batch (what has arrived, at most [`BATCH_MESSAGES`]): publishes the batch's
//!    derived events to `SPOT_OUT`, those of one input message in one message
//!    ([`wire::line_groups`]), and its reports to other partitions into their part of
//!    `SPOT_IN` (`in.<Q>.~items`), with message ids made of the input sequence that caused
//!    them (a replay after a crash makes the same ones, which JetStream drops), waits for
//!    their acknowledgement, then commits the changed rows and the new position in one
//!    transaction. The commit runs while the next batch is applied and published (one
//!    commit at a time, in order: PostgreSQL's writes are the stage's largest cost). A
//!    commit refused because the position moved means another node owns the partition
//!    now: this owner stops at once, without its uncommitted batches;
//! 4. renews its lease every third of the TTL, publishes a tick into its partition every
//!    second (and starts over when not even its ticks come back: its reader is gone), and
//!    gives the lease back when it stops owning the partition.
//!
//! Anything failing (NATS, PostgreSQL, the lease) ends the ownership; the node tries to
//! take the partition again, from what PostgreSQL holds.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::kv::Store as Kv;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::Context as JetStream;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;

use super::lease::{self, Lease, TAKE_EVERY};
use super::pg::PgState;
use super::wire::{self, InMessage, WriteAnswer, WriteRefusal};
use crate::clock::now_ms;
use crate::domain::{Domain, DomainConfig};
use crate::partition::Partition;
use crate::shutdown::Phase;

/// Input messages applied in one batch at most (one commit).
pub const BATCH_MESSAGES: usize = 1024;

/// How often the owner publishes a tick into its partition.
const TICK_EVERY: Duration = Duration::from_secs(1);

/// An owner that read nothing for this long (its ticks come back every [`TICK_EVERY`])
/// gives the partition up and reads it again from PostgreSQL's position.
const READER_SILENT_AFTER: Duration = Duration::from_secs(3);

/// What a stage needs.
#[derive(Clone)]
pub struct StageSetup {
    /// JetStream.
    pub js: JetStream,
    /// The lease bucket.
    pub leases: Kv,
    /// The database's address (each ownership opens its own connection).
    pub postgres: String,
    /// The lease's time to live.
    pub lease_ttl: Duration,
    /// This node's name (the lease's value, the rows' committer).
    pub node: String,
    /// The domain's settings.
    pub domain: DomainConfig,
    /// How many partitions the cluster has.
    pub partitions: u32,
    /// The partitions this node takes at once (empty: all).
    pub prefer: Vec<u32>,
    /// Publish the raw spot events of each commit on core NATS (`--publish-raw`).
    pub publish_raw: bool,
}

/// Whether a node preferring `prefer` prefers partition `p` (an empty list: every one).
fn prefers(prefer: &[u32], p: u32) -> bool {
    prefer.is_empty() || prefer.contains(&p)
}

/// After handing a partition back, a node hands it back again only this much later (if
/// the node that prefers it could not keep it, the partition is not passed to and fro).
const HAND_BACK_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// How an ownership ended, when nothing failed.
enum Ended {
    /// The node stops.
    Stopped,
    /// A node that prefers the partition is up: it takes it over.
    HandedBack,
}

/// Keeps trying to own partition `p` until the node stops, every [`TAKE_EVERY`]; a
/// partition the node does not prefer only after a lease TTL (a node that prefers it and
/// is up takes it first; one that died is replaced as fast as by any other node), and, once
/// owned, only while no node that prefers it is up ([`lease::Presence`]: it is handed back
/// then, and tried again a TTL later).
pub async fn run(setup: StageSetup, p: u32, mut phase: watch::Receiver<Phase>) {
    let mut handed_back: Option<std::time::Instant> = None;
    let mut wait = !prefers(&setup.prefer, p);
    loop {
        if std::mem::take(&mut wait) {
            tokio::select! {
                _ = tokio::time::sleep(setup.lease_ttl) => {}
                _ = phase.changed() => {}
            }
        }
        if *phase.borrow() != Phase::Running {
            return;
        }
        match Lease::try_take(
            &setup.leases,
            lease::partition_key(p),
            &setup.node,
            setup.lease_ttl,
        )
        .await
        {
            Ok(Some(mut lease)) => {
                tracing::info!(partition = p, node = setup.node, "took the partition");
                let may_hand_back = !prefers(&setup.prefer, p)
                    && handed_back.is_none_or(|at| at.elapsed() > HAND_BACK_AGAIN_AFTER);
                let owned = own(&setup, p, &mut lease, may_hand_back, &mut phase).await;
                // Given back either way: after a failure, the next owner (maybe this node,
                // from what PostgreSQL holds) need not wait for the TTL.
                lease.release(&setup.leases).await;
                match owned {
                    Ok(Ended::Stopped) => return,
                    Ok(Ended::HandedBack) => {
                        handed_back = Some(std::time::Instant::now());
                        wait = true;
                    }
                    Err(why) => tracing::warn!(partition = p, "gave the partition up: {why}"),
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(TAKE_EVERY) => {}
            _ = phase.changed() => {}
        }
    }
}

/// Owns partition `p` until the node stops, or (`may_hand_back`) a node that prefers it
/// is up, or something fails (`Err`, why).
async fn own(
    setup: &StageSetup,
    p: u32,
    lease: &mut Lease,
    may_hand_back: bool,
    phase: &mut watch::Receiver<Phase>,
) -> Result<Ended, String> {
    let pg = PgState::connect(&setup.postgres)
        .await
        .map_err(|e| e.to_string())?;
    let loaded = pg.load(p).await.map_err(|e| e.to_string())?;
    // The connection, or the batch whose commit holds it now.
    let mut pg = Some(pg);
    let mut committing: Option<Committing> = None;
    let mut domain = Domain::new(DomainConfig {
        partition: Partition {
            index: p,
            count: setup.partitions,
        },
        ..setup.domain.clone()
    });
    for (table, rows) in loaded.rows {
        domain
            .load(table, rows, loaded.time_last)
            .map_err(|e| format!("partition {p}: a stored row does not load: {e}"))?;
    }
    domain.restore_ids(loaded.id_last);
    domain.close_all_streams();
    let mut position = loaded.applied_seq;
    let mut time_last = loaded.time_last;
    let stream = setup
        .js
        .get_stream(wire::IN_STREAM)
        .await
        .map_err(|e| format!("{}: {e}", wire::IN_STREAM))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: wire::partition_filter(p),
            deliver_policy: if position == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: position + 1,
                }
            },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("a consumer of partition {p}: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("reading partition {p}: {e}"))?;
    let mut renew = tokio::time::interval(setup.lease_ttl / 3);
    renew.tick().await;
    let mut tick = tokio::time::interval(TICK_EVERY);
    let mut heard = std::time::Instant::now();
    tracing::info!(partition = p, from = position, "applying the input log");
    loop {
        let first = tokio::select! {
            m = messages.next() => m,
            _ = renew.tick() => {
                lease.renew(&setup.leases, &setup.node, setup.lease_ttl).await.map_err(|e| e.to_string())?;
                if may_hand_back {
                    let preferring = lease::Presence::preferring(&setup.leases, p, &setup.node).await;
                    if let Some(node) = preferring {
                        // Its last batch commits (and answers) first.
                        if let Some(last) = committing.take() {
                            last.wait(setup, p).await?;
                        }
                        tracing::info!(partition = p, to = node, "handing the partition back to a node that prefers it");
                        return Ok(Ended::HandedBack);
                    }
                }
                continue;
            }
            _ = tick.tick() => {
                // The owner's own ticks come back through the reader every second: silence
                // means the reader is gone (its consumer lived on a NATS server that died,
                // which the client notices only after missed heartbeats, 30 s).
                if heard.elapsed() > READER_SILENT_AFTER {
                    return Err(format!(
                        "nothing read from partition {p} for {} s, not even its ticks: reading it again",
                        READER_SILENT_AFTER.as_secs()
                    ));
                }
                let message = PublishMessage::build().payload(wire::tick_payload(now_ms()).into());
                // A lost tick only delays the sweep to the next one.
                if let Ok(ack) = setup.js.send_publish(wire::tick_subject(p), message).await {
                    drop(ack);
                }
                continue;
            }
            joined = async { (&mut committing.as_mut().expect("checked").task).await },
                if committing.is_some() =>
            {
                let done = committing.take().expect("checked");
                pg = Some(done.finish(setup, p, joined).await?);
                continue;
            }
            _ = phase.changed() => {
                // The last batch's answers leave, if it commits.
                if let Some(last) = committing.take() {
                    last.wait(setup, p).await?;
                }
                return Ok(Ended::Stopped);
            }
        };
        heard = std::time::Instant::now();
        if !lease.valid() {
            return Err(format!(
                "the lease of partition {p} ran out before it was renewed"
            ));
        }
        // The batch: this message and whatever else has arrived already.
        let mut batch = vec![first];
        while batch.len() < BATCH_MESSAGES {
            match messages.next().now_or_never() {
                Some(m) => batch.push(m),
                None => break,
            }
        }
        let from = position;
        let (started, messages_in) = (std::time::Instant::now(), batch.len());
        let mut out = Vec::new();
        let mut answers = Vec::new();
        let mut notes = Vec::new();
        for message in batch {
            let message = match message {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(format!("reading partition {p}: {e}")),
                None => return Err(format!("the reader of partition {p} ended")),
            };
            let seq = message
                .info()
                .map_err(|e| format!("a message of partition {p} without its position: {e}"))?
                .stream_sequence;
            match wire::read_message(message.subject.as_str(), &message.payload) {
                Ok(InMessage::Group(entries)) => {
                    for entry in entries {
                        time_last = time_last.max(entry_time(&entry));
                        if let Err(e) = domain.apply_entry(entry) {
                            tracing::error!(partition = p, seq, "an entry is skipped: {e}");
                        }
                    }
                }
                Ok(InMessage::Reports(reports)) => {
                    for report in reports {
                        time_last = time_last.max(report.time());
                        if let Err(e) = domain.apply_report(report) {
                            tracing::error!(partition = p, seq, "a report is skipped: {e}");
                        }
                    }
                }
                Ok(InMessage::Tick(time)) => {
                    time_last = time_last.max(time);
                    domain.sweep(time);
                }
                Ok(InMessage::Write(w)) if w.method == wire::TAKE_COMMANDS => {
                    time_last = time_last.max(w.time);
                    let request = |key| w.body.get(key).and_then(|v| v.as_object()).cloned();
                    let handed = (request("config"), request("firmware"));
                    domain.take_handed_commands(&w.id, &handed, w.time);
                }
                Ok(InMessage::Write(w)) if w.method == wire::AUDIT => {
                    time_last = time_last.max(w.time);
                    let entries = w.body.get("entries").and_then(|e| e.as_array());
                    for entry in entries.into_iter().flatten() {
                        match (
                            entry.get(0).and_then(|t| t.as_str()),
                            entry.get(1).and_then(|d| d.as_str()),
                        ) {
                            (Some(topic), Some(data)) => domain.log_audit(topic, data, w.time),
                            _ => tracing::error!(
                                partition = p,
                                seq,
                                "an audit entry is skipped: {entry}"
                            ),
                        }
                    }
                }
                Ok(InMessage::Write(w)) => {
                    time_last = time_last.max(w.time);
                    let result = match wire::write_method(&w.method) {
                        Some(method) => domain
                            .write(method, &w.collection, &w.id, &w.body, w.time)
                            .map_err(Into::into),
                        None => Err(WriteRefusal::Conflict {
                            reason: format!("unknown change {:?}", w.method),
                        }),
                    };
                    if let (true, Ok(spot)) = (w.collection == "spots", &result) {
                        if let Some(serial) = spot.get("serial_number").and_then(|s| s.as_str()) {
                            notes.push(serial.to_string());
                        }
                    }
                    answers.push((w.reply, result));
                }
                Err(e) => tracing::error!(
                    partition = p,
                    seq,
                    subject = message.subject.as_str(),
                    "a message of the input log is skipped: {e}"
                ),
            }
            let derived = domain.take_log();
            let groups = wire::line_groups(derived.iter().map(|(_, doc)| doc));
            for (k, group) in groups.into_iter().enumerate() {
                out.push((wire::out_subject(p), format!("{p}.{seq}.{k}"), group));
            }
            // Reports to each other partition, in the order they were made.
            let mut reports = std::collections::BTreeMap::<u32, Vec<String>>::new();
            for (to, report) in domain.take_reports() {
                let line = serde_json::to_string(&report)
                    .map_err(|e| format!("a report of partition {p}: {e}"))?;
                reports.entry(to).or_default().push(line);
            }
            for (to, lines) in reports {
                for (k, group) in wire::line_groups(lines).into_iter().enumerate() {
                    let id = format!("{p}.{seq}.r{to}.{k}");
                    out.push((wire::reports_subject(to), id, group));
                }
            }
            position = seq;
        }
        // The derived events and the reports are stored before the position moves past
        // what caused them.
        // At most `OUT_IN_FLIGHT` messages wait for their acknowledgement at once: the
        // client holds a permit per unacknowledged publish (5,000), and a batch may make
        // more messages than that; sending them all before awaiting any waited for a
        // permit forever.
        let (applied, messages_out) = (started.elapsed(), out.len());
        let mut acks = std::collections::VecDeque::with_capacity(OUT_IN_FLIGHT);
        // The last `SPOT_OUT` message of the batch (raw events follow it, `raw_lines`).
        let mut out_seq = 0;
        for (subject, id, doc) in out {
            if acks.len() == OUT_IN_FLIGHT {
                out_seq = out_seq.max(stored(acks.pop_front()).await?);
            }
            let message = PublishMessage::build()
                .payload(bytes::Bytes::from(doc))
                .message_id(id);
            let ack = setup
                .js
                .send_publish(subject, message)
                .await
                .map_err(|e| format!("publishing derived events and reports: {e}"))?;
            acks.push_back(ack);
        }
        while let Some(ack) = acks.pop_front() {
            out_seq = out_seq.max(stored(Some(ack)).await?);
        }
        let published = started.elapsed();
        // Commits go one at a time, in order, each beside the next batch's apply and
        // publish: the previous one has finished (and its answers left) before this one
        // starts.
        if let Some(previous) = committing.take() {
            pg = Some(previous.wait(setup, p).await?);
        }
        let changes = domain.take_changes(true);
        let raw = if setup.publish_raw {
            raw_lines(&changes.journal)
        } else {
            Vec::new()
        };
        let raw = (out_seq, raw);
        let mut conn = pg.take().expect("no commit is running");
        let node = setup.node.clone();
        let range = (from, position);
        let task = tokio::spawn(async move {
            let result = conn.commit(p, &changes, range, time_last, &node).await;
            let rows = changes.upserts.len() + changes.deletes.len();
            (conn, result.map(|()| rows))
        });
        tracing::debug!(
            partition = p,
            position,
            messages_in,
            messages_out,
            apply_us = applied.as_micros() as u64,
            publish_us = (published - applied).as_micros() as u64,
            "a batch applied and published"
        );
        committing = Some(Committing {
            task,
            notes,
            answers,
            raw,
            position,
            started: std::time::Instant::now(),
        });
    }
}

/// A batch whose commit is running: what leaves once it has committed.
struct Committing {
    /// The commit, with the connection it gives back.
    task: tokio::task::JoinHandle<(PgState, Result<usize, super::pg::PgError>)>,
    /// Spots whose pending commands changed.
    notes: Vec<String>,
    /// REST changes' inboxes and answers.
    answers: Vec<(String, Result<serde_json::Value, WriteRefusal>)>,
    /// The raw spot events of the batch ([`raw_lines`]), published after the commit, and
    /// the batch's last `SPOT_OUT` message, which they follow.
    raw: (u64, Vec<String>),
    /// The position the commit moves to.
    position: u64,
    /// When the commit started.
    started: std::time::Instant,
}

impl Committing {
    /// Waits for the commit, then [`Committing::finish`].
    async fn wait(mut self, setup: &StageSetup, p: u32) -> Result<PgState, String> {
        let joined = (&mut self.task).await;
        self.finish(setup, p, joined).await
    }

    /// After the commit (`joined`): the answers leave, the connection comes back. A failed
    /// commit (another owner moved the position) ends the ownership.
    async fn finish(
        self,
        setup: &StageSetup,
        p: u32,
        joined: Result<(PgState, Result<usize, super::pg::PgError>), tokio::task::JoinError>,
    ) -> Result<PgState, String> {
        let (pg, result) =
            joined.map_err(|e| format!("partition {p}: the commit task failed: {e}"))?;
        let rows = result.map_err(|e| e.to_string())?;
        let position = self.position;
        tracing::debug!(
            partition = p,
            position,
            rows,
            commit_us = self.started.elapsed().as_micros() as u64,
            "a batch committed"
        );
        // Answers leave after the commit; one lost (the API node gave up) is only late.
        let client = setup.js.client();
        for serial in self.notes {
            let note = wire::RequestNote { serial, position };
            if let Ok(payload) = serde_json::to_vec(&note) {
                let _ = client.publish(wire::COMMANDS_SUBJECT, payload.into()).await;
            }
        }
        for (inbox, result) in self.answers.into_iter().filter(|(i, _)| !i.is_empty()) {
            let answer = WriteAnswer { result, position };
            if let Ok(payload) = serde_json::to_vec(&answer) {
                let _ = client.publish(inbox, payload.into()).await;
            }
        }
        // Live only, as on the embedded server: a node that misses them misses them.
        let (after, raw) = self.raw;
        for group in wire::line_groups(raw) {
            let payload = format!("{after}\n{group}");
            let _ = client.publish(wire::raw_subject(p), payload.into()).await;
        }
        Ok(pg)
    }
}

/// The raw spot events of a batch's journal (its new upstream events), each a line
/// `[topic, payload]` ([`wire::read_raw`]).
fn raw_lines(journal: &[crate::domain::JournalEntry]) -> Vec<String> {
    use crate::domain::JournalEntry;
    let mut lines = Vec::new();
    for entry in journal {
        let JournalEntry::Event {
            row,
            duplicate: false,
        } = entry
        else {
            continue;
        };
        match crate::outlets::raw_event(row, |_| true) {
            Ok(Some(event)) => lines.extend(serde_json::to_string(&event).ok()),
            Ok(None) => {}
            Err(e) => tracing::warn!("push: {e}: not published"),
        }
    }
    lines
}

/// Messages of derived events and reports published and not yet acknowledged, at most.
const OUT_IN_FLIGHT: usize = 1024;

/// Waits for the acknowledgement of a group of derived events or reports: its `SPOT_OUT`
/// sequence (0 for reports, which go to `SPOT_IN`).
async fn stored(
    ack: Option<async_nats::jetstream::context::PublishAckFuture>,
) -> Result<u64, String> {
    match ack {
        Some(ack) => ack
            .await
            .map(|ack| match ack.stream == wire::OUT_STREAM {
                true => ack.sequence,
                false => 0,
            })
            .map_err(|e| {
                format!("JetStream did not store a group of derived events or reports: {e}")
            }),
        None => Ok(0),
    }
}

fn entry_time(entry: &crate::domain::JournalEntry) -> i64 {
    use crate::domain::JournalEntry;
    match entry {
        JournalEntry::Event { row, .. } => row.time_received,
        JournalEntry::Begin { time, .. } | JournalEntry::End { time, .. } => *time,
    }
}
