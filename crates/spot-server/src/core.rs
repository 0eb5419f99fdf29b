//! The core: the one owner of the [`Domain`] and the [`Store`], on two threads of its own.
//!
//! Ingest tasks and the API send it [`CoreMsg`]s through a [`CoreSender`]: one bounded
//! channel plus a budget of queued *events* (a chunk may hold one event or thousands), so
//! that what waits for the core is bounded in work, not in messages. A sender waits for room
//! (backpressure: its socket is not read meanwhile, the spot keeps its events), never drops;
//! the budget is fair (first come, first served), and the core gives an event's share back
//! when it has applied it. The loop takes the first message,
//! drains every other message already queued (up to [`MAX_MESSAGES_PER_COMMIT`]), applies
//! them all to the domain under its write lock — so readers see events as soon as they
//! arrive — then hands the batch's changes to the writer stage (a second thread owning the
//! [`Store`]), which writes it in **one** transaction (group commit) and only then answers
//! the batch's waiters, while the apply stage already works on the next batch. A failed
//! commit keeps the batch and retries: nothing is acknowledged before it is on disk.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use spot_protocol::{Event, Object};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::domain::{unix_millis, Applied, Domain, PutError};
use crate::metrics::Metrics;
use crate::store::Store;

/// Messages drained into one transaction at most.
pub const MAX_MESSAGES_PER_COMMIT: usize = 4096;

/// A flush (every changed row written, see [`crate::domain`]) happens at least this often…
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// …or as soon as this many rows are waiting (bounds memory and the replay after a crash).
pub const FLUSH_AT_DIRTY_ROWS: usize = 50_000;

/// The sending side of the way to the core (see the module docs). Cheap to clone.
#[derive(Debug, Clone)]
pub struct CoreSender {
    tx: mpsc::Sender<CoreMsg>,
    budget: Arc<Semaphore>,
    max_events: usize,
}

/// The core's side: the messages and the event budget it gives back.
#[derive(Debug)]
pub struct CoreReceiver {
    rx: mpsc::Receiver<CoreMsg>,
    budget: Arc<Semaphore>,
    max_events: usize,
}

/// A way to the core holding at most `messages` messages and `events` events (each at least 1).
pub fn channel(messages: usize, events: usize) -> (CoreSender, CoreReceiver) {
    let (tx, rx) = mpsc::channel(messages.max(1));
    let max_events = events.clamp(1, Semaphore::MAX_PERMITS);
    let budget = Arc::new(Semaphore::new(max_events));
    (
        CoreSender {
            tx,
            budget: budget.clone(),
            max_events,
        },
        CoreReceiver {
            rx,
            budget,
            max_events,
        },
    )
}

/// The share of the event budget a message takes (a message larger than the whole budget
/// takes all of it, and goes alone).
fn share(msg: &CoreMsg, max_events: usize) -> usize {
    match msg {
        CoreMsg::Events { events, .. } => events.len().min(max_events),
        _ => 0,
    }
}

impl CoreSender {
    /// Queues `msg`, waiting for room; fails only when the core is gone.
    pub async fn send(&self, msg: CoreMsg) -> Result<(), mpsc::error::SendError<CoreMsg>> {
        let n = share(&msg, self.max_events);
        if n > 0 {
            match self.budget.acquire_many(n as u32).await {
                // Given back by the core once applied.
                Ok(permit) => permit.forget(),
                Err(_) => return Err(mpsc::error::SendError(msg)),
            }
        }
        self.tx.send(msg).await
    }

    /// Queues `msg` if there is room now (for messages without events, e.g. ticks); the
    /// error says whether the queue was full or the core is gone (`msg` is dropped).
    pub fn try_send(&self, msg: CoreMsg) -> Result<(), mpsc::error::TrySendError<()>> {
        debug_assert_eq!(share(&msg, self.max_events), 0, "events go through send");
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
            mpsc::error::TrySendError::Closed(_) => mpsc::error::TrySendError::Closed(()),
        })
    }

    /// Events that may still be queued before senders wait.
    pub fn room(&self) -> usize {
        self.budget.available_permits()
    }
}

/// What the core answers when a stream ends (or a spot asks where it stands).
#[derive(Debug)]
pub struct EndReply {
    /// Highest sequence durably stored for the spot in its current epoch.
    pub acked_seq: u64,
    /// Commands to hand to the spot now.
    pub commands: Vec<Event>,
}

/// A request to the core.
#[derive(Debug)]
pub enum CoreMsg {
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
        /// Serial number.
        serial: String,
        /// The events, in stream order, each with the JSON it is journaled with
        /// ([`crate::http::journal_json`]: as received, or encoded).
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
        /// Collection.
        collection: String,
        /// Resource id.
        id: String,
        /// The JSON body.
        body: Object,
        /// The answer.
        reply: oneshot::Sender<Result<Value, PutError>>,
    },
    /// A raw TCP stream of `serial` wants commands as soon as they are queued.
    AttachCommands {
        /// Serial number.
        serial: String,
        /// Where to send them.
        sink: mpsc::Sender<Vec<Event>>,
    },
    /// The raw TCP stream is gone.
    DetachCommands {
        /// Serial number.
        serial: String,
    },
    /// Periodic housekeeping: offline sweep, retention.
    Tick,
    /// Commit what is queued before this and stop; later sends fail.
    Shutdown,
}

enum Waiter {
    Reply(oneshot::Sender<EndReply>, EndReply),
    Put(
        oneshot::Sender<Result<Value, PutError>>,
        Result<Value, PutError>,
    ),
    Ack(watch::Sender<u64>, u64),
}

/// The core loop; returns after [`CoreMsg::Shutdown`] or when every sender is gone, each
/// time after a final commit.
pub fn run(rx: CoreReceiver, domain: Arc<RwLock<Domain>>, store: Store, metrics: Arc<Metrics>) {
    // Two stages: this thread applies batch N+1 while the writer commits batch N. Waiters
    // travel with their batch, so every answer still leaves after the commit covering it.
    let (jobs, job_rx) = std::sync::mpsc::sync_channel::<Job>(1);
    std::thread::scope(|scope| {
        let writer_metrics = metrics.clone();
        let writer = std::thread::Builder::new()
            .name("spot-writer".into())
            .spawn_scoped(scope, move || write(job_rx, store, writer_metrics));
        if let Err(e) = writer {
            tracing::error!("cannot start the writer thread: {e}");
            return;
        }
        apply(rx, &domain, &metrics, &jobs);
        drop(jobs);
    });
    tracing::debug!("core stopped");
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
    rx: CoreReceiver,
    domain: &RwLock<Domain>,
    metrics: &Metrics,
    jobs: &std::sync::mpsc::SyncSender<Job>,
) {
    let mut command_sinks: std::collections::HashMap<String, mpsc::Sender<Vec<Event>>> =
        std::collections::HashMap::new();
    let mut ticks: u64 = 0;
    let mut stop = false;
    let mut last_flush = std::time::Instant::now();
    let CoreReceiver {
        mut rx,
        budget,
        max_events,
    } = rx;
    while let Some(first) = rx.blocking_recv() {
        let mut waiters = Vec::new();
        let apply_started = std::time::Instant::now();
        let changes = {
            let mut domain = domain.write().unwrap_or_else(|e| e.into_inner());
            let now = unix_millis(SystemTime::now());
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(msg) = next.take() {
                handled += 1;
                let taken = share(&msg, max_events);
                match msg {
                    CoreMsg::Begin { serial, version } => {
                        domain.begin_stream(&serial, version.as_deref(), now)
                    }
                    CoreMsg::Events {
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
                        budget.add_permits(taken);
                    }
                    CoreMsg::Sync {
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
                    CoreMsg::Put {
                        collection,
                        id,
                        body,
                        reply,
                    } => {
                        let result = domain.put(&collection, &id, &body, now);
                        if collection == "spots" && result.is_ok() {
                            push_commands(&mut domain, &command_sinks, &id, now);
                        }
                        waiters.push(Waiter::Put(reply, result));
                    }
                    CoreMsg::AttachCommands { serial, sink } => {
                        command_sinks.insert(serial.clone(), sink);
                        push_commands(&mut domain, &command_sinks, &serial, now);
                    }
                    CoreMsg::DetachCommands { serial } => {
                        command_sinks.remove(&serial);
                    }
                    CoreMsg::Shutdown => stop = true,
                    CoreMsg::Tick => {
                        ticks += 1;
                        domain.sweep(now);
                        if ticks.is_multiple_of(60) {
                            let _ = jobs.send(Job::Prune(domain.retention_cutoff(now)));
                        }
                    }
                }
                if handled < MAX_MESSAGES_PER_COMMIT && !stop {
                    next = rx.try_recv().ok();
                }
            }
            let flush = stop
                || last_flush.elapsed() >= FLUSH_EVERY
                || domain.dirty_rows() >= FLUSH_AT_DIRTY_ROWS;
            domain.take_changes(flush)
        };
        if changes.flush {
            last_flush = std::time::Instant::now();
        }
        let apply_time = apply_started.elapsed();
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

fn write(jobs: std::sync::mpsc::Receiver<Job>, mut store: Store, metrics: Arc<Metrics>) {
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
            while let Err(e) = store.commit(&mut changes) {
                tracing::error!("commit failed, retrying (nothing acknowledged meanwhile): {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            metrics.commits.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                journal = changes.journal.len(),
                flush = changes.flush,
                rows,
                log = changes.log.len(),
                waiters = waiters.len(),
                apply_ms = apply_time.as_secs_f64() * 1e3,
                commit_ms = started.elapsed().as_secs_f64() * 1e3,
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
            }
        }
    }
}

/// Hands a spot's pending commands to its raw TCP stream, if it has one.
fn push_commands(
    domain: &mut Domain,
    sinks: &std::collections::HashMap<String, mpsc::Sender<Vec<Event>>>,
    spot: &str,
    now: i64,
) {
    let serial = match domain.get("spots", spot) {
        Some(v) => v
            .get("serial_number")
            .and_then(Value::as_str)
            .unwrap_or(spot)
            .to_string(),
        None => return,
    };
    // Commands stay queued on the spot while its stream's queue is full or gone.
    let Some(sink) = sinks
        .get(&serial)
        .filter(|s| s.capacity() > 0 && !s.is_closed())
    else {
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

    fn events(n: usize) -> CoreMsg {
        CoreMsg::Events {
            serial: "1".into(),
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

    #[tokio::test]
    async fn events_wait_for_room_in_the_budget_which_the_core_gives_back() {
        let (tx, mut rx) = channel(100, 10);
        tx.send(events(8)).await.expect("room for 8");
        assert_eq!(tx.room(), 2);
        assert!(
            tx.send(events(5)).now_or_never().is_none(),
            "5 more wait while only 2 are free"
        );
        tx.send(CoreMsg::Tick)
            .now_or_never()
            .expect("no events: no wait")
            .unwrap();
        // What the core does with a message it applied.
        let msg = rx.rx.recv().await.expect("queued");
        rx.budget.add_permits(share(&msg, rx.max_events));
        tx.send(events(5))
            .now_or_never()
            .expect("room again")
            .unwrap();
        assert!(
            tx.send(events(50)).now_or_never().is_none(),
            "a message over the budget waits for all of it"
        );
        for _ in 0..2 {
            let msg = rx.rx.recv().await.expect("queued");
            rx.budget.add_permits(share(&msg, rx.max_events));
        }
        tx.send(events(50))
            .now_or_never()
            .expect("the whole budget")
            .unwrap();
        assert_eq!(tx.room(), 0);
    }
}
