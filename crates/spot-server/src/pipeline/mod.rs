//! The pipeline: the one owner of the [`Domain`] and the [`Store`], as two stages on two
//! threads of their own: the apply stage (spot-apply, this module's [`run`]) and the writer
//! stage (spot-writer).
//!
//! Ingest tasks and the API send it [`PipelineMsg`]s through a [`PipelineSender`]: one queue
//! bounded by a budget of queued *events* (a chunk may hold one event or thousands), so that
//! what waits is bounded in work, not in messages, plus a number of slots for the messages
//! without events. A sender waits for room (backpressure: its socket is not read meanwhile,
//! the spot keeps its events), never drops; the budget is fair (first come, first served).
//! Handing a message over is cheap: a sender pushes under a short lock and wakes the apply
//! stage only if it is parked; the stage takes the whole queue at once and gives the room of
//! what it applied back once per batch.
//!
//! Call order per batch: take every queued message (up to [`MAX_MESSAGES_PER_COMMIT`]),
//! apply them all to the domain under its write lock (readers see events as soon as they
//! arrive), take the batch's changes, release the lock, then hand the changes to the writer
//! stage, which commits them in **one** transaction (group commit), then publishes the
//! committed derived events to the outlets, then answers the batch's waiters — while the
//! apply stage already works on the next batch. No lock is held across a wait on the writer.
//! A failed commit keeps the batch and retries: nothing is acknowledged before it is on
//! disk. While commits fail (a full disk), [`PipelineSender::commit_failing`] says why (ingest
//! answers new POSTs `503` with `Retry-After` at once), `spot_commit_failures_total` counts
//! the attempts and `spot_store_failing` is 1, and requests already waiting on a commit
//! are told at once ([`PipelineSender::commit_fails`]: a POST answers `503`, a raw TCP
//! stream is closed, both unacknowledged); the log says it when it starts, every
//! [`COMMIT_FAILURE_LOG_EVERY`] while it lasts, and when it ends. A stop gives up on a
//! failing commit once asked to ([`PipelineSender::give_up_commits`], after the shutdown
//! grace): its batch is dropped unanswered (nothing acknowledged: the spots resend). A panic in either stage stops the pipeline for good and says why
//! ([`PipelineSender::failure`]).
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::Duration;

use serde_json::Value;
use spot_protocol::{Event, Object};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::clock::now_ms;
use crate::domain::{Applied, Domain, PutError};
use crate::metrics::Metrics;
use crate::outlets::Publisher;
use crate::store::Store;

/// Messages drained into one transaction at most.
pub const MAX_MESSAGES_PER_COMMIT: usize = 4096;

/// A flush (every changed row written, see [`crate::domain`]) happens at least this often…
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// …or as soon as this many rows are waiting (bounds memory and the replay after a crash).
pub const FLUSH_AT_DIRTY_ROWS: usize = 50_000;

/// While commits keep failing, the log says so again this often (not at every attempt).
pub const COMMIT_FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Wait between two attempts of a failing commit.
const COMMIT_RETRY_DELAY: Duration = Duration::from_millis(200);

/// The sending side of the way to the pipeline (see the module docs). Cheap to clone.
#[derive(Debug)]
pub struct PipelineSender {
    inner: Arc<Inner>,
}

/// The apply stage's side: takes every queued message at once and gives the budget back per batch.
#[derive(Debug)]
pub struct PipelineReceiver {
    inner: Arc<Inner>,
}

/// The queue shared by the senders and the apply stage.
///
/// A plain mutex-guarded deque: a sender locks it once to push, and wakes the apply stage only
/// when the apply stage is parked on it (so a busy apply stage is not signalled per message); the apply stage
/// swaps the whole deque out under one lock. Room is counted by two fair (FIFO) semaphores,
/// taken before pushing and given back by the apply stage per batch: `budget` in events for
/// [`PipelineMsg::Events`], `slots` in messages for every other message.
#[derive(Debug)]
struct Inner {
    queue: Mutex<Queue>,
    wake: Condvar,
    budget: Semaphore,
    slots: Semaphore,
    max_events: usize,
    senders: AtomicUsize,
    /// Why the pipeline stopped for good: a stage panicked ([`Inner::fail`]).
    failure: OnceLock<String>,
    /// The error of the commit failing now, if one is; watched by requests waiting on a
    /// commit ([`PipelineSender::commit_fails`]).
    commit_error: watch::Sender<Option<String>>,
    /// A failing commit is given up instead of retried (the server is stopping).
    give_up: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    msgs: VecDeque<PipelineMsg>,
    /// The apply stage waits on `wake` for a message.
    core_parked: bool,
    /// The pipeline is gone: sends fail.
    closed: bool,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stage panicked: the domain may be half-applied, or nothing commits any more. The
    /// pipeline takes nothing more (sends fail, a parked stage wakes and stops) and
    /// [`PipelineSender::failure`] says why, so that requests are answered `503`.
    fn fail(&self, stage: &str, panic: &(dyn std::any::Any + Send)) {
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let reason = format!("the pipeline's {stage} stage panicked: {message}");
        tracing::error!(
            "{reason}; ingest and the API answer 503 until the server is restarted \
             (it recovers from the journal)"
        );
        let _ = self.failure.set(reason);
        self.budget.close();
        self.slots.close();
        self.lock().closed = true;
        self.wake.notify_all();
    }
}

/// A way to the pipeline holding at most `messages` messages without events and `events`
/// events (each at least 1; a message with events counts only in `events`).
pub fn channel(messages: usize, events: usize) -> (PipelineSender, PipelineReceiver) {
    let max_events = events.clamp(1, Semaphore::MAX_PERMITS);
    let inner = Arc::new(Inner {
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
        budget: Semaphore::new(max_events),
        slots: Semaphore::new(messages.clamp(1, Semaphore::MAX_PERMITS)),
        max_events,
        senders: AtomicUsize::new(1),
        failure: OnceLock::new(),
        commit_error: watch::Sender::new(None),
        give_up: AtomicBool::new(false),
    });
    (
        PipelineSender {
            inner: inner.clone(),
        },
        PipelineReceiver { inner },
    )
}

/// The share of the event budget a message takes (a message larger than the whole budget
/// takes all of it, and goes alone); 0 for a message without events, which takes a slot.
fn share(msg: &PipelineMsg, max_events: usize) -> usize {
    match msg {
        PipelineMsg::Events { events, .. } => events.len().clamp(1, max_events),
        _ => 0,
    }
}

impl Clone for PipelineSender {
    fn clone(&self) -> Self {
        self.inner.senders.fetch_add(1, Ordering::Relaxed);
        PipelineSender {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for PipelineSender {
    fn drop(&mut self) {
        if self.inner.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last sender: a parked apply stage sees that nothing more can come.
            drop(self.inner.lock());
            self.inner.wake.notify_one();
        }
    }
}

impl PipelineSender {
    /// Queues `msg`, waiting for room; fails only when the pipeline is gone.
    pub async fn send(&self, msg: PipelineMsg) -> Result<(), mpsc::error::SendError<PipelineMsg>> {
        let n = share(&msg, self.inner.max_events);
        let room = if n > 0 {
            &self.inner.budget
        } else {
            &self.inner.slots
        };
        match room.acquire_many(n.max(1) as u32).await {
            // Given back by the apply stage once applied.
            Ok(permit) => permit.forget(),
            Err(_) => return Err(mpsc::error::SendError(msg)),
        }
        match self.push(msg) {
            None => Ok(()),
            Some(msg) => Err(mpsc::error::SendError(msg)),
        }
    }

    /// Queues `msg` if there is room now (for messages without events, e.g. ticks); the
    /// error says whether the queue was full or the pipeline is gone (`msg` is dropped).
    pub fn try_send(&self, msg: PipelineMsg) -> Result<(), mpsc::error::TrySendError<()>> {
        debug_assert_eq!(
            share(&msg, self.inner.max_events),
            0,
            "events go through send"
        );
        match self.inner.slots.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                return Err(mpsc::error::TrySendError::Full(()))
            }
            Err(tokio::sync::TryAcquireError::Closed) => {
                return Err(mpsc::error::TrySendError::Closed(()))
            }
        }
        match self.push(msg) {
            None => Ok(()),
            Some(_) => Err(mpsc::error::TrySendError::Closed(())),
        }
    }

    /// Pushes a message whose room is taken; wakes the apply stage if it is parked. Hands `msg`
    /// back when the pipeline is gone.
    fn push(&self, msg: PipelineMsg) -> Option<PipelineMsg> {
        let mut queue = self.inner.lock();
        if queue.closed {
            return Some(msg);
        }
        queue.msgs.push_back(msg);
        let wake = std::mem::take(&mut queue.core_parked);
        drop(queue);
        if wake {
            self.inner.wake.notify_one();
        }
        None
    }

    /// Why the pipeline stopped for good (a stage panicked), if it did.
    pub fn failure(&self) -> Option<&str> {
        self.inner.failure.get().map(String::as_str)
    }

    /// The store's error while commits fail (e.g. a full disk); `None` once one succeeds.
    pub fn commit_failing(&self) -> Option<String> {
        self.inner.commit_error.borrow().clone()
    }

    /// Resolves with the store's error once a commit fails (at once if one is failing
    /// now): a request waiting on a commit answers instead of waiting for the disk
    /// (nothing of it is acknowledged; what is queued commits later or not at all).
    pub async fn commit_fails(&self) -> String {
        let mut rx = self.inner.commit_error.subscribe();
        let failing = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|error| error.clone());
        match failing {
            Some(error) => error,
            // The sender lives as long as `self`: not reached.
            None => std::future::pending().await,
        }
    }

    /// From now on a failing commit is given up (its batch unanswered) instead of retried:
    /// the server is stopping and its grace is over.
    pub fn give_up_commits(&self) {
        self.inner.give_up.store(true, Ordering::Relaxed);
    }

    /// Events that may still be queued before senders wait.
    pub fn room(&self) -> usize {
        self.inner.budget.available_permits()
    }

    /// Events queued now, not yet applied (the queue depth `/metrics` shows).
    pub fn queued_events(&self) -> usize {
        self.inner.max_events.saturating_sub(self.room())
    }
}

impl PipelineReceiver {
    /// Moves every queued message to the back of `into` (empty: it is swapped with the
    /// queue, so both keep their allocation). With `wait`, parks while nothing is queued.
    /// False when nothing was taken: nothing queued (without `wait`), or every sender gone.
    pub(crate) fn take_all(&self, into: &mut VecDeque<PipelineMsg>, wait: bool) -> bool {
        debug_assert!(into.is_empty());
        let mut queue = self.inner.lock();
        while queue.msgs.is_empty() {
            if !wait || queue.closed || self.inner.senders.load(Ordering::Acquire) == 0 {
                return false;
            }
            queue.core_parked = true;
            queue = self
                .inner
                .wake
                .wait(queue)
                .unwrap_or_else(|e| e.into_inner());
        }
        queue.core_parked = false;
        std::mem::swap(&mut queue.msgs, into);
        true
    }

    /// Gives back the room `msg` took, once it is handed on (a cluster's edge: published).
    pub(crate) fn give_back_for(&self, msg: &PipelineMsg) {
        match share(msg, self.inner.max_events) {
            0 => self.give_back(0, 1),
            n => self.give_back(n, 0),
        }
    }

    /// Gives back the room taken by applied messages: `events` of the budget, `slots`.
    pub(crate) fn give_back(&self, events: usize, slots: usize) {
        if events > 0 {
            self.inner.budget.add_permits(events);
        }
        if slots > 0 {
            self.inner.slots.add_permits(slots);
        }
    }
}

impl Drop for PipelineReceiver {
    fn drop(&mut self) {
        // Later and waiting sends fail; queued messages are dropped (their waiters see
        // the pipeline gone).
        self.inner.budget.close();
        self.inner.slots.close();
        let msgs = {
            let mut queue = self.inner.lock();
            queue.closed = true;
            std::mem::take(&mut queue.msgs)
        };
        drop(msgs);
    }
}

/// What the pipeline answers when a stream ends (or a spot asks where it stands).
#[derive(Debug)]
pub struct EndReply {
    /// Highest sequence durably stored for the spot in its current epoch.
    pub acked_seq: u64,
    /// Commands to hand to the spot now.
    pub commands: Vec<Event>,
}

/// A request to the pipeline.
#[derive(Debug)]
pub enum PipelineMsg {
    /// A stream of `serial` opened (counts a request, creates the spot).
    Begin {
        /// Serial number.
        serial: String,
        /// Firmware version from `User-Agent`.
        version: Option<String>,
    },
    /// Decoded events of `serial`. With `ack`, the acknowledged sequence is published on
    /// it after the commit that covers them (raw TCP).
    Events {
        /// Serial number (shared by the messages of one stream).
        serial: Arc<str>,
        /// The events, in stream order, each with the JSON it is journaled with
        /// ([`crate::ingest::journal_json`]: as received, or encoded).
        events: Vec<(Event, String)>,
        /// Where to publish the acknowledged sequence after commit.
        ack: Option<watch::Sender<u64>>,
    },
    /// Answer after everything sent before is committed. `end_stream` closes a stream
    /// opened by `Begin`; `take_commands` hands the pending commands over.
    Sync {
        /// Serial number.
        serial: String,
        /// Close the stream opened by `Begin`.
        end_stream: bool,
        /// Take (and clear) pending commands.
        take_commands: bool,
        /// The answer, sent after the commit.
        reply: oneshot::Sender<EndReply>,
    },
    /// A change through the REST API, answered after commit.
    Put {
        /// What it does (`PUT`, `POST`, `DELETE`).
        method: crate::domain::Write,
        /// Collection.
        collection: String,
        /// Resource id.
        id: String,
        /// The JSON body.
        body: Object,
        /// The answer.
        reply: oneshot::Sender<Result<Value, PutError>>,
    },
    /// A raw TCP stream of `serial` wants commands as soon as they are queued. Of several
    /// streams of one serial, the newest attached one gets them.
    AttachCommands {
        /// Serial number.
        serial: String,
        /// The stream ([`crate::ingest::tcp`] numbers them).
        connection: u64,
        /// Where to send them.
        sink: mpsc::Sender<Vec<Event>>,
    },
    /// The raw TCP stream `connection` is gone (the serial's other streams keep theirs).
    DetachCommands {
        /// Serial number.
        serial: String,
        /// The stream that attached.
        connection: u64,
    },
    /// Audit entries of access control, each a derived event's topic and data (JSON), for
    /// the events log; answered after the commit that stores them.
    Audit {
        /// `(topic, data)` of each entry, in order.
        entries: Vec<(String, String)>,
        /// The answer.
        reply: oneshot::Sender<()>,
    },
    /// Periodic housekeeping: offline sweep, retention.
    Tick,
    /// Commit what is queued before this and stop; later sends fail.
    Shutdown,
    /// Panics in the apply stage, holding the domain's write lock (tests of a failed
    /// state owner).
    #[cfg(test)]
    Panic,
}

enum Waiter {
    Reply(oneshot::Sender<EndReply>, EndReply),
    Put(
        oneshot::Sender<Result<Value, PutError>>,
        Result<Value, PutError>,
    ),
    Ack(watch::Sender<u64>, u64),
    Done(oneshot::Sender<()>),
}

/// The pipeline; returns after [`PipelineMsg::Shutdown`] or when every sender is gone, each
/// time after a final commit. A panic in either stage stops the pipeline for good
/// ([`PipelineSender::failure`]): the apply stage's leaves the domain lock poisoned.
pub fn run(
    rx: PipelineReceiver,
    domain: Arc<RwLock<Domain>>,
    store: Box<dyn Store>,
    publisher: Publisher,
    metrics: Arc<Metrics>,
) {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    // Two stages: this thread applies batch N+1 while the writer commits batch N. Waiters
    // travel with their batch, so every answer still leaves after the commit covering it.
    let (jobs, job_rx) = std::sync::mpsc::sync_channel::<Job>(1);
    std::thread::scope(|scope| {
        let writer_metrics = metrics.clone();
        let inner = rx.inner.clone();
        let writer = std::thread::Builder::new()
            .name("spot-writer".into())
            .spawn_scoped(scope, move || {
                let writing = catch_unwind(AssertUnwindSafe(|| {
                    write(job_rx, store, publisher, writer_metrics, &inner)
                }));
                if let Err(panic) = writing {
                    inner.fail("writer", &*panic);
                }
            });
        if let Err(e) = writer {
            tracing::error!("cannot start the writer thread: {e}");
            return;
        }
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| apply(&rx, &domain, &metrics, &jobs)))
        {
            rx.inner.fail("apply", &*panic);
        }
        drop(jobs);
    });
    tracing::debug!("pipeline stopped");
}

/// Work for the writer stage.
enum Job {
    /// Commit, then answer.
    Commit {
        changes: crate::domain::Changes,
        waiters: Vec<Waiter>,
        apply_time: Duration,
    },
    /// Drop stored events older than the cutoff.
    Prune(i64),
}

fn apply(
    rx: &PipelineReceiver,
    domain: &RwLock<Domain>,
    metrics: &Metrics,
    jobs: &std::sync::mpsc::SyncSender<Job>,
) {
    let mut command_sinks = CommandSinks::default();
    let mut ticks: u64 = 0;
    let mut stop = false;
    let mut last_flush = std::time::Instant::now();
    // Messages taken from the queue and not applied yet (over MAX_MESSAGES_PER_COMMIT).
    let mut pending = VecDeque::new();
    loop {
        if rx.inner.failure.get().is_some()
            || (pending.is_empty() && !rx.take_all(&mut pending, true))
        {
            break;
        }
        let mut waiters = Vec::new();
        let apply_started = std::time::Instant::now();
        // No lock is held across a wait on the writer (a stuck commit would freeze every
        // reader): what the batch hands over is sent after the domain lock is released.
        let mut prune = None;
        let changes = {
            let mut domain = domain.write().unwrap_or_else(|e| e.into_inner());
            let now = now_ms();
            let mut handled = 0;
            // Room given back once per batch (each give-back locks the semaphore).
            let (mut events_back, mut slots_back) = (0, 0);
            while handled < MAX_MESSAGES_PER_COMMIT && !stop {
                let Some(msg) = pending.pop_front() else {
                    if rx.take_all(&mut pending, false) {
                        continue;
                    }
                    break;
                };
                handled += 1;
                match share(&msg, rx.inner.max_events) {
                    0 => slots_back += 1,
                    n => events_back += n,
                }
                match msg {
                    PipelineMsg::Begin { serial, version } => {
                        domain.begin_stream(&serial, version.as_deref(), now)
                    }
                    PipelineMsg::Events {
                        serial,
                        mut events,
                        ack,
                    } => {
                        // By reference: moving each event out of the vector copied it whole.
                        for (event, json) in &mut events {
                            let json = std::mem::take(json);
                            if domain.apply_encoded(&serial, event, json, now) == Applied::Duplicate
                            {
                                metrics.events_duplicate.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if let Some(ack) = ack {
                            waiters.push(Waiter::Ack(ack, domain.acked_seq(&serial)));
                        }
                    }
                    PipelineMsg::Sync {
                        serial,
                        end_stream,
                        take_commands,
                        reply,
                    } => {
                        let commands = if end_stream {
                            domain.end_stream(&serial, now, take_commands)
                        } else if take_commands {
                            domain.take_commands(&serial, now)
                        } else {
                            Vec::new()
                        };
                        let acked_seq = domain.acked_seq(&serial);
                        waiters.push(Waiter::Reply(
                            reply,
                            EndReply {
                                acked_seq,
                                commands,
                            },
                        ));
                    }
                    PipelineMsg::Put {
                        method,
                        collection,
                        id,
                        body,
                        reply,
                    } => {
                        let result = domain.write(method, &collection, &id, &body, now);
                        if collection == "spots" && result.is_ok() {
                            push_commands(&mut domain, &command_sinks, &id, now);
                        }
                        waiters.push(Waiter::Put(reply, result));
                    }
                    PipelineMsg::Audit { entries, reply } => {
                        for (topic, data) in &entries {
                            domain.log_audit(topic, data, now);
                        }
                        waiters.push(Waiter::Done(reply));
                    }
                    PipelineMsg::AttachCommands {
                        serial,
                        connection,
                        sink,
                    } => {
                        command_sinks.attach(&serial, connection, sink);
                        push_commands(&mut domain, &command_sinks, &serial, now);
                    }
                    PipelineMsg::DetachCommands { serial, connection } => {
                        command_sinks.detach(&serial, connection);
                    }
                    PipelineMsg::Shutdown => stop = true,
                    #[cfg(test)]
                    PipelineMsg::Panic => panic!("injected by a test"),
                    PipelineMsg::Tick => {
                        ticks += 1;
                        domain.sweep(now);
                        if ticks.is_multiple_of(60) {
                            // Sent once the lock is released: the writer may be busy.
                            prune = Some(domain.retention_cutoff(now));
                        }
                    }
                }
            }
            rx.give_back(events_back, slots_back);
            let flush = stop
                || last_flush.elapsed() >= FLUSH_EVERY
                || domain.dirty_rows() >= FLUSH_AT_DIRTY_ROWS;
            domain.take_changes(flush)
        };
        if changes.flush {
            last_flush = std::time::Instant::now();
        }
        let apply_time = apply_started.elapsed();
        if let Some(cutoff) = prune {
            if jobs.send(Job::Prune(cutoff)).is_err() {
                tracing::error!("writer stage gone; stopping");
                break;
            }
        }
        let job = Job::Commit {
            changes,
            waiters,
            apply_time,
        };
        if jobs.send(job).is_err() {
            tracing::error!("writer stage gone; stopping");
            break;
        }
        if stop {
            break;
        }
    }
}

/// What the writer knows of a run of failing commits (for the log and the metrics).
#[derive(Default)]
struct CommitFailures {
    /// Attempts failed in a row, and when the last log line about them was written.
    failed: u64,
    logged: Option<std::time::Instant>,
}

impl CommitFailures {
    fn failed(&mut self, error: &crate::store::StoreError, inner: &Inner, metrics: &Metrics) {
        self.failed += 1;
        metrics.commit_failures.fetch_add(1, Ordering::Relaxed);
        metrics.store_failing.store(1, Ordering::Relaxed);
        inner.commit_error.send_replace(Some(error.to_string()));
        if self
            .logged
            .is_none_or(|at| at.elapsed() >= COMMIT_FAILURE_LOG_EVERY)
        {
            self.logged = Some(std::time::Instant::now());
            tracing::error!(
                attempts = self.failed,
                "commit failing, retrying every {COMMIT_RETRY_DELAY:?}; ingest answers 503 \
                 meanwhile and nothing is acknowledged (free disk space if it is full): {error}"
            );
        }
    }

    fn succeeded(&mut self, inner: &Inner, metrics: &Metrics) {
        if self.failed == 0 {
            return;
        }
        tracing::info!(attempts = self.failed, "commits succeed again");
        *self = Self::default();
        metrics.store_failing.store(0, Ordering::Relaxed);
        inner.commit_error.send_replace(None);
    }
}

fn write(
    jobs: std::sync::mpsc::Receiver<Job>,
    mut store: Box<dyn Store>,
    publisher: Publisher,
    metrics: Arc<Metrics>,
    inner: &Inner,
) {
    let mut failures = CommitFailures::default();
    for job in jobs {
        let (mut changes, waiters, apply_time) = match job {
            Job::Prune(cutoff) => {
                if let Err(e) = store.prune(cutoff) {
                    tracing::warn!("retention: {e}");
                }
                continue;
            }
            Job::Commit {
                changes,
                waiters,
                apply_time,
            } => (changes, waiters, apply_time),
        };
        if !changes.is_empty() {
            let started = std::time::Instant::now();
            let rows = changes.upserts.len() + changes.deletes.len();
            let committed = loop {
                match store.commit(&mut changes) {
                    Ok(committed) => break committed,
                    Err(e) => {
                        failures.failed(&e, inner, &metrics);
                        if inner.give_up.load(Ordering::Relaxed) {
                            tracing::error!(
                                events = changes.journal.len(),
                                "stopping with the commit failing: its events are not \
                                 acknowledged (the spots resend them): {e}"
                            );
                            return;
                        }
                        std::thread::sleep(COMMIT_RETRY_DELAY);
                    }
                }
            };
            failures.succeeded(inner, &metrics);
            metrics.commits.fetch_add(1, Ordering::Relaxed);
            // Durable now: the outlets may see it (before the spots hear their answer).
            publisher.committed(&changes.log, committed.last_event_id);
            publisher.raw_events(changes.upstream());
            tracing::debug!(
                journal = changes.journal.len(),
                flush = changes.flush,
                rows,
                log = changes.log.len(),
                waiters = waiters.len(),
                apply_ms = crate::clock::log_ms(apply_time),
                commit_ms = crate::clock::log_ms(started.elapsed()),
                "group commit"
            );
        }
        for waiter in waiters {
            match waiter {
                Waiter::Reply(tx, reply) => {
                    let _ = tx.send(reply);
                }
                Waiter::Put(tx, result) => {
                    let _ = tx.send(result);
                }
                Waiter::Ack(tx, seq) => {
                    tx.send_replace(seq);
                }
                Waiter::Done(tx) => {
                    let _ = tx.send(());
                }
            }
        }
    }
}

/// The raw TCP streams that take commands, per serial, oldest first, each under its
/// connection number: a second stream of one serial neither replaces the first's sink nor
/// is removed by the first's close.
#[derive(Debug, Default)]
struct CommandSinks {
    by_serial: std::collections::HashMap<String, Vec<(u64, CommandSink)>>,
}

/// Where a raw TCP stream takes its spot's commands.
type CommandSink = mpsc::Sender<Vec<Event>>;

impl CommandSinks {
    fn attach(&mut self, serial: &str, connection: u64, sink: CommandSink) {
        self.by_serial
            .entry(serial.to_string())
            .or_default()
            .push((connection, sink));
    }

    fn detach(&mut self, serial: &str, connection: u64) {
        if let Some(sinks) = self.by_serial.get_mut(serial) {
            sinks.retain(|(c, _)| *c != connection);
            if sinks.is_empty() {
                self.by_serial.remove(serial);
            }
        }
    }

    /// The newest stream of `serial` still open.
    fn newest(&self, serial: &str) -> Option<&CommandSink> {
        self.by_serial
            .get(serial)?
            .iter()
            .rev()
            .map(|(_, sink)| sink)
            .find(|sink| !sink.is_closed())
    }
}

/// Hands a spot's pending commands to its newest raw TCP stream, if it has one.
fn push_commands(domain: &mut Domain, sinks: &CommandSinks, spot: &str, now: i64) {
    let serial = match domain.get("spots", spot) {
        Some(v) => v
            .get("serial_number")
            .and_then(Value::as_str)
            .unwrap_or(spot)
            .to_string(),
        None => return,
    };
    // Commands stay queued on the spot while its stream's queue is full or gone.
    let Some(sink) = sinks.newest(&serial).filter(|s| s.capacity() > 0) else {
        return;
    };
    let commands = domain.take_commands(&serial, now);
    if !commands.is_empty() {
        if let Err(e) = sink.try_send(commands) {
            tracing::warn!(spot = %serial, "command queue of TCP stream refused commands: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn events(n: usize) -> PipelineMsg {
        PipelineMsg::Events {
            serial: Arc::from("1"),
            events: (0..n)
                .map(|_| {
                    (
                        Event::new(spot_protocol::EventKind::Other(Default::default())),
                        String::new(),
                    )
                })
                .collect(),
            ack: None,
        }
    }

    /// What the apply stage does with the messages it applied: gives their room back.
    fn apply_all(rx: &PipelineReceiver) -> usize {
        let mut msgs = VecDeque::new();
        rx.take_all(&mut msgs, false);
        let (mut events, mut slots) = (0, 0);
        for msg in &msgs {
            match share(msg, rx.inner.max_events) {
                0 => slots += 1,
                n => events += n,
            }
        }
        rx.give_back(events, slots);
        msgs.len()
    }

    /// A store that runs `before_write` before each commit and prune: a writer stage that
    /// panics or stalls.
    struct FaultyStore {
        inner: crate::store::SqliteStore,
        before_write: Box<dyn FnMut() + Send>,
        /// While set, commits fail as on a full disk.
        full: Arc<AtomicBool>,
    }

    impl Store for FaultyStore {
        fn take_loaded_rows(&mut self) -> crate::store::checkpoint::LoadedRows {
            self.inner.take_loaded_rows()
        }
        fn load_events(
            &self,
            since: i64,
            max: usize,
        ) -> Result<Vec<String>, crate::store::StoreError> {
            self.inner.load_events(since, max)
        }
        fn unflushed_journal(
            &self,
            repair: bool,
        ) -> Result<(Vec<crate::domain::JournalEntry>, u64), crate::store::StoreError> {
            self.inner.unflushed_journal(repair)
        }
        fn commit(
            &mut self,
            changes: &mut crate::domain::Changes,
        ) -> Result<crate::store::Committed, crate::store::StoreError> {
            (self.before_write)();
            if self.full.load(Ordering::Relaxed) {
                return Err(crate::store::StoreError::Sqlite {
                    context: "commit",
                    source: rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                        Some("database or disk is full".into()),
                    ),
                });
            }
            self.inner.commit(changes)
        }
        fn prune(&mut self, cutoff: i64) -> Result<(), crate::store::StoreError> {
            (self.before_write)();
            self.inner.prune(cutoff)
        }
        fn event_pages(
            &self,
        ) -> Result<Arc<dyn crate::store::EventPages>, crate::store::StoreError> {
            self.inner.event_pages()
        }
    }

    /// A pipeline over a [`FaultyStore`] in `dir`, on a thread of its own.
    fn faulty_pipeline(
        dir: &std::path::Path,
        rx: PipelineReceiver,
        domain: Arc<RwLock<Domain>>,
        before_write: Box<dyn FnMut() + Send>,
    ) -> std::thread::JoinHandle<()> {
        let full = Arc::new(AtomicBool::new(false));
        faulty_pipeline_with(dir, rx, domain, before_write, Arc::default(), full)
    }

    /// [`faulty_pipeline`] counting in `metrics`.
    fn faulty_pipeline_with(
        dir: &std::path::Path,
        rx: PipelineReceiver,
        domain: Arc<RwLock<Domain>>,
        before_write: Box<dyn FnMut() + Send>,
        metrics: Arc<Metrics>,
        full: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        let inner = crate::store::SqliteStore::open(dir, crate::store::Durability::Normal).unwrap();
        let outlets = crate::outlets::Outlets::start(
            dir,
            inner.event_pages().unwrap(),
            &crate::outlets::PushConfig::default(),
        )
        .unwrap();
        let publisher = outlets.publisher();
        std::thread::spawn(move || {
            let _outlets = outlets;
            let store = FaultyStore {
                inner,
                before_write,
                full,
            };
            run(rx, domain, Box::new(store), publisher, metrics)
        })
    }

    /// Risk 2 of issue 11: the retention prune was handed to the writer while the apply
    /// stage held the domain's write lock, so a writer stuck in the store (a commit
    /// retrying, a slow disk) froze every reader of the live state (REST, tests, tools).
    #[tokio::test]
    async fn a_stuck_writer_does_not_freeze_the_readers_of_the_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let domain = Arc::new(RwLock::new(Domain::new(Default::default())));
        let (tx, rx) = channel(1000, 16);
        // Queued before the pipeline starts: one batch, three retention prunes (one per 60
        // ticks), more than the writer (stuck in the first) and its one-job queue take.
        for _ in 0..200 {
            tx.try_send(PipelineMsg::Tick).expect("room");
        }
        let (stuck_tx, stuck) = std::sync::mpsc::channel::<()>();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let core = faulty_pipeline(
            dir.path(),
            rx,
            domain.clone(),
            Box::new(move || {
                let _ = stuck_tx.send(());
                let _ = gate.recv(); // until `release` is dropped
            }),
        );
        let stuck = tokio::task::spawn_blocking(move || stuck.recv());
        stuck
            .await
            .unwrap()
            .expect("the writer is stuck in the store");
        let reader = {
            let domain = domain.clone();
            tokio::task::spawn_blocking(move || drop(domain.read()))
        };
        tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("a reader gets the live state while the writer is stuck")
            .unwrap();
        drop(release);
        drop(tx);
        tokio::task::spawn_blocking(move || core.join())
            .await
            .unwrap()
            .expect("the pipeline stops once released");
    }

    /// Risk 7 of issue 11, the writer's side: a panic in the writer stage stopped nothing
    /// visible (the apply stage went on serving a state that was never committed).
    #[tokio::test]
    async fn a_panic_in_the_writer_stage_stops_the_pipeline_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let domain = Arc::new(RwLock::new(Domain::new(Default::default())));
        let (tx, rx) = channel(16, 16);
        let core = faulty_pipeline(
            dir.path(),
            rx,
            domain.clone(),
            Box::new(|| panic!("commit injected to panic")),
        );
        tx.send(PipelineMsg::Begin {
            serial: "5".into(),
            version: None,
        })
        .await
        .unwrap();
        let (reply, answer) = oneshot::channel();
        tx.send(PipelineMsg::Sync {
            serial: "5".into(),
            end_stream: true,
            take_commands: false,
            reply,
        })
        .await
        .unwrap();
        assert!(answer.await.is_err(), "nothing answered without a commit");
        let join = tokio::task::spawn_blocking(move || core.join());
        tokio::time::timeout(Duration::from_secs(10), join)
            .await
            .expect("the core stops")
            .unwrap()
            .expect("the core thread ends without a panic");
        let failure = tx.failure().expect("the pipeline says it failed");
        assert!(
            failure.contains("writer") && failure.contains("commit injected to panic"),
            "{failure}"
        );
        assert!(tx.send(PipelineMsg::Tick).await.is_err(), "sends fail");
    }

    /// A `Sync` of spot "5" (after its `Begin`): answered once its commit is done.
    async fn sync(tx: &PipelineSender) -> oneshot::Receiver<EndReply> {
        tx.send(PipelineMsg::Begin {
            serial: "5".into(),
            version: None,
        })
        .await
        .unwrap();
        let (reply, answer) = oneshot::channel();
        tx.send(PipelineMsg::Sync {
            serial: "5".into(),
            end_stream: false,
            take_commands: false,
            reply,
        })
        .await
        .unwrap();
        answer
    }

    /// Issue 13 item 4: on a full disk nothing said commits failed; ingest waited.
    #[tokio::test]
    async fn failing_commits_are_said_counted_and_cleared_once_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let domain = Arc::new(RwLock::new(Domain::new(Default::default())));
        let (tx, rx) = channel(16, 16);
        let (metrics, full) = (
            Arc::new(Metrics::default()),
            Arc::new(AtomicBool::new(true)),
        );
        let core = faulty_pipeline_with(
            dir.path(),
            rx,
            domain,
            Box::new(|| {}),
            metrics.clone(),
            full.clone(),
        );
        let mut answer = sync(&tx).await;
        for _ in 0..1000 {
            if tx.commit_failing().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let error = tx.commit_failing().expect("the failing commit is said");
        assert!(error.contains("disk is full"), "{error}");
        let text = metrics.render();
        assert!(text.contains("\nspot_store_failing 1\n"), "{text}");
        assert!(!text.contains("\nspot_commit_failures_total 0\n"), "{text}");
        assert!(answer.try_recv().is_err(), "nothing answered meanwhile");
        full.store(false, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("answered once the commit succeeds")
            .expect("an answer");
        assert_eq!(tx.commit_failing(), None);
        assert!(metrics.render().contains("\nspot_store_failing 0\n"));
        tx.send(PipelineMsg::Shutdown).await.unwrap();
        tokio::task::spawn_blocking(move || core.join())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_stop_gives_up_a_failing_commit_when_told_and_acknowledges_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let domain = Arc::new(RwLock::new(Domain::new(Default::default())));
        let (tx, rx) = channel(16, 16);
        let full = Arc::new(AtomicBool::new(true));
        let core = faulty_pipeline_with(
            dir.path(),
            rx,
            domain,
            Box::new(|| {}),
            Arc::default(),
            full,
        );
        let answer = sync(&tx).await;
        tx.send(PipelineMsg::Shutdown).await.unwrap();
        while tx.commit_failing().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.give_up_commits();
        let join = tokio::task::spawn_blocking(move || core.join());
        tokio::time::timeout(Duration::from_secs(10), join)
            .await
            .expect("the pipeline stops")
            .unwrap()
            .expect("without a panic");
        assert!(answer.await.is_err(), "nothing acknowledged");
    }

    #[tokio::test]
    async fn events_wait_for_room_in_the_budget_which_the_core_gives_back() {
        let (tx, rx) = channel(100, 10);
        tx.send(events(8)).await.expect("room for 8");
        assert_eq!(tx.room(), 2);
        assert!(
            tx.send(events(5)).now_or_never().is_none(),
            "5 more wait while only 2 are free"
        );
        tx.send(PipelineMsg::Tick)
            .now_or_never()
            .expect("no events: no wait")
            .unwrap();
        assert_eq!(apply_all(&rx), 2, "the core takes every queued message");
        tx.send(events(5))
            .now_or_never()
            .expect("room again")
            .unwrap();
        assert!(
            tx.send(events(50)).now_or_never().is_none(),
            "a message over the budget waits for all of it"
        );
        apply_all(&rx);
        tx.send(events(50))
            .now_or_never()
            .expect("the whole budget")
            .unwrap();
        assert_eq!(tx.room(), 0);
    }

    #[tokio::test]
    async fn messages_without_events_wait_for_a_slot_and_ticks_are_refused_when_full() {
        let (tx, rx) = channel(2, 10);
        tx.send(PipelineMsg::Tick).await.unwrap();
        tx.try_send(PipelineMsg::Tick).expect("a second slot");
        assert!(matches!(
            tx.try_send(PipelineMsg::Tick),
            Err(mpsc::error::TrySendError::Full(()))
        ));
        assert!(tx.send(PipelineMsg::Tick).now_or_never().is_none(), "waits");
        tx.send(events(10))
            .now_or_never()
            .expect("events count in the budget, not in the slots")
            .unwrap();
        assert_eq!(apply_all(&rx), 3);
        tx.try_send(PipelineMsg::Tick).expect("slots given back");
    }

    #[tokio::test]
    async fn sends_fail_once_the_core_is_gone_and_the_core_sees_the_senders_gone() {
        let (tx, rx) = channel(4, 4);
        tx.send(events(4)).await.unwrap();
        let waiting = tx.send(events(1));
        let mut waiting = std::pin::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        drop(rx);
        assert!(waiting.await.is_err(), "a waiting send fails");
        assert!(tx.send(PipelineMsg::Tick).await.is_err());
        assert!(matches!(
            tx.try_send(PipelineMsg::Tick),
            Err(mpsc::error::TrySendError::Closed(()))
        ));

        let (tx, rx) = channel(4, 4);
        let core = std::thread::spawn(move || {
            let mut msgs = VecDeque::new();
            let mut taken = 0;
            while rx.take_all(&mut msgs, true) {
                taken += msgs.len();
                msgs.clear();
            }
            taken
        });
        let tx2 = tx.clone();
        tx.send(PipelineMsg::Tick).await.unwrap();
        drop(tx);
        tx2.send(PipelineMsg::Tick).await.unwrap();
        drop(tx2);
        assert_eq!(
            core.join().unwrap(),
            2,
            "the parked core wakes, takes all, stops"
        );
    }
}
