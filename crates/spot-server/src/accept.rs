//! The one accept loop of the listeners (HTTP and raw TCP): accept until the server leaves
//! [`Phase::Running`], back off on accept errors, admit each connection against the
//! listener's [`Connections`] (its task holds the [`Admitted`] and the server's `done`
//! sender) or refuse it, with the refusals themselves bounded so that a flood grows neither
//! tasks nor file descriptors.
//!
//! [`Connections`] owns a listener's connection budget: the total, a cap per client address,
//! and a budget per [`Class`] of connection. An HTTP connection is *unidentified* until its
//! first request head says what it is (a spot's POST, a push stream, an API call); the
//! unidentified have a small budget of their own, and when the total or that budget is
//! full, a new connection takes the slot of the oldest unidentified one, which is closed
//! ([`Admitted::evicted`]). So silent connections cannot hold the server: a client that
//! speaks at once is served, and an identified connection is never evicted. Of the
//! unidentified, those that have sent nothing yet give way first ([`Admitted::spoke`]): a
//! slow client part-way through its TLS handshake or request head is not evicted by a flood
//! of silent connections, from however many addresses.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::metrics::Metrics;
use crate::shutdown::Phase;

/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// Longest a refusal holds its connection: writing the answer, then reading what the
/// client still sends until it closes (so that it reads the answer rather than a reset).
pub const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The serial of a spot's stream of events, if `method` and `path` (without the query) are
/// one: `POST /api/spots/{serial}/events`, with or without a trailing `/`. The one test of
/// it, for the connection budget ([`Class`]), who may call ([`crate::http::auth::need`])
/// and the way to ingest ([`crate::http::router::direct_ingest_serial`]).
pub fn spot_stream_serial<'a>(method: &str, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix("/api/spots/")?;
    let serial = rest
        .strip_suffix('/')
        .unwrap_or(rest)
        .strip_suffix("/events")?;
    (method == "POST" && !serial.is_empty() && !serial.contains('/')).then_some(serial)
}

/// What a connection is, told by its first request (raw TCP: always a spot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A spot's stream of events (`POST /api/spots/{serial}/events`, raw TCP).
    Spot,
    /// A push stream (`/api/ws`, `/api/stream`).
    Stream,
    /// Anything else: the REST API, `/metrics`.
    Api,
}

impl Class {
    /// The class of an HTTP request head, by its request line (`METHOD TARGET VERSION`;
    /// empty lines before it are skipped, as HTTP allows). What cannot be read is `Api`:
    /// hyper answers it.
    pub fn of_request(head: &[u8]) -> Class {
        let start = head.iter().position(|b| !matches!(b, b'\r' | b'\n'));
        let head = &head[start.unwrap_or(head.len())..];
        let line = head
            .split(|&b| b == b'\r' || b == b'\n')
            .next()
            .unwrap_or(b"");
        let mut parts = line.split(|&b| b == b' ');
        let (method, target) = (parts.next().unwrap_or(b""), parts.next().unwrap_or(b""));
        let path = target.split(|&b| b == b'?').next().unwrap_or(b"");
        let (Ok(method), Ok(path)) = (std::str::from_utf8(method), std::str::from_utf8(path))
        else {
            return Class::Api;
        };
        if spot_stream_serial(method, path).is_some() {
            return Class::Spot;
        }
        match path.trim_end_matches('/') {
            "/api/ws" | "/api/stream" => Class::Stream,
            _ => Class::Api,
        }
    }

    /// The word for it in answers and logs.
    pub fn name(self) -> &'static str {
        match self {
            Class::Spot => "spot",
            Class::Stream => "push stream",
            Class::Api => "API",
        }
    }
}

/// A listener's connection budget (from [`crate::ServerLimits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Open connections in all.
    pub total: usize,
    /// Open connections from one client address.
    pub per_address: usize,
    /// Connections that have not yet sent their first request head.
    pub unidentified: usize,
    /// Push streams (`/api/ws`, `/api/stream`).
    pub streams: usize,
    /// API connections.
    pub api: usize,
}

impl Budget {
    /// The most connections of `class` (spots: the total).
    fn of(&self, class: Class) -> usize {
        match class {
            Class::Spot => self.total,
            Class::Stream => self.streams,
            Class::Api => self.api,
        }
    }
}

/// Why a connection was not admitted (said in the `503`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The listener's total is taken by identified connections.
    #[error("too many connections (limit {0}); retry later")]
    Total(usize),
    /// Its address holds its cap.
    #[error(
        "too many connections from {address} (limit {limit} per address, \
         max-connections-per-address); close some or retry later"
    )]
    Address {
        /// The client address.
        address: IpAddr,
        /// The cap.
        limit: usize,
    },
    /// Its class holds its budget.
    #[error("too many {} connections (limit {limit}); retry later", .class.name())]
    Class {
        /// What it is.
        class: Class,
        /// The budget.
        limit: usize,
    },
}

/// The open connections of a listener, counted against its [`Budget`].
#[derive(Debug)]
pub struct Connections {
    budget: Budget,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Open, unidentified included.
    open: usize,
    /// Open spots, streams, API connections.
    classes: [usize; 3],
    per_address: HashMap<IpAddr, usize>,
    /// The unidentified that have sent nothing yet, oldest first, each with the sender its
    /// eviction drops.
    unidentified: BTreeMap<u64, oneshot::Sender<()>>,
    /// The unidentified that have sent something (their head is under way), likewise:
    /// evicted only when no silent one is left.
    speaking: BTreeMap<u64, oneshot::Sender<()>>,
    next: u64,
}

fn index(class: Class) -> usize {
    match class {
        Class::Spot => 0,
        Class::Stream => 1,
        Class::Api => 2,
    }
}

impl Connections {
    /// An empty listener with `budget`.
    pub fn new(budget: Budget) -> Arc<Connections> {
        Arc::new(Connections {
            budget,
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `address`, unidentified until [`Admitted::identify`]
    /// (`None`) or as `class`. A full total or unidentified budget evicts the oldest
    /// unidentified connection to make room.
    pub fn admit(
        self: &Arc<Self>,
        address: IpAddr,
        class: Option<Class>,
    ) -> Result<Admitted, Refused> {
        let mut counts = self.counts();
        let from_address = counts.per_address.get(&address).copied().unwrap_or(0);
        if from_address >= self.budget.per_address {
            return Err(Refused::Address {
                address,
                limit: self.budget.per_address,
            });
        }
        if let Some(class) = class {
            let limit = self.budget.of(class);
            if counts.classes[index(class)] >= limit {
                return Err(Refused::Class { class, limit });
            }
        }
        if class.is_none() && counts.unidentified() >= self.budget.unidentified {
            counts.evict_oldest();
        }
        if counts.open >= self.budget.total && !counts.evict_oldest() {
            return Err(Refused::Total(self.budget.total));
        }
        counts.open += 1;
        *counts.per_address.entry(address).or_default() += 1;
        let (stage, evicted) = match class {
            Some(class) => {
                counts.classes[index(class)] += 1;
                (Stage::Identified(class), None)
            }
            None => {
                let (tx, rx) = oneshot::channel();
                let id = counts.next;
                counts.next += 1;
                counts.unidentified.insert(id, tx);
                (Stage::Unidentified(id), Some(rx))
            }
        };
        Ok(Admitted {
            connections: self.clone(),
            address,
            stage,
            evicted,
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.counts().open
    }

    /// Unidentified connections now: (silent, speaking), see [`Admitted::spoke`].
    pub fn unidentified(&self) -> (usize, usize) {
        let counts = self.counts();
        (counts.unidentified.len(), counts.speaking.len())
    }
}

impl Counts {
    /// Evicts the oldest unidentified connection that has sent nothing, else the oldest
    /// unidentified one: its slot is free now (its task closes it when it sees the
    /// eviction). False if there is none.
    fn evict_oldest(&mut self) -> bool {
        if self.unidentified.pop_first().is_none() && self.speaking.pop_first().is_none() {
            return false;
        }
        self.open -= 1;
        true
    }

    /// Unidentified connections, silent or speaking.
    fn unidentified(&self) -> usize {
        self.unidentified.len() + self.speaking.len()
    }

    /// Takes unidentified connection `id` out (silent or speaking); false if it was evicted.
    fn remove_unidentified(&mut self, id: u64) -> bool {
        self.unidentified.remove(&id).is_some() || self.speaking.remove(&id).is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Unidentified(u64),
    Identified(Class),
    /// Evicted, or refused by its class: counted only against its address.
    Out,
}

/// An admitted connection's place in its listener's budget, given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    connections: Arc<Connections>,
    address: IpAddr,
    stage: Stage,
    evicted: Option<oneshot::Receiver<()>>,
}

impl Admitted {
    /// Resolves when this unidentified connection has been evicted to make room for a new
    /// one (then it must close); never once identified.
    pub async fn evicted(&mut self) {
        match self.evicted.as_mut() {
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    }

    /// This unidentified connection has sent its first bytes: it gives way to a new
    /// connection only after every silent one has.
    pub fn spoke(&mut self) {
        let Stage::Unidentified(id) = self.stage else {
            return;
        };
        let mut counts = self.connections.counts();
        if let Some(evicted) = counts.unidentified.remove(&id) {
            counts.speaking.insert(id, evicted);
        }
    }

    /// Counts this connection as `class` from now on; refused when its budget is full (or
    /// when it has been evicted meanwhile: then as the total).
    pub fn identify(&mut self, class: Class) -> Result<(), Refused> {
        let Stage::Unidentified(id) = self.stage else {
            return Ok(());
        };
        let budget = &self.connections.budget;
        let mut counts = self.connections.counts();
        self.evicted = None;
        if !counts.remove_unidentified(id) {
            self.stage = Stage::Out;
            return Err(Refused::Total(budget.total));
        }
        let limit = budget.of(class);
        if counts.classes[index(class)] >= limit {
            counts.open -= 1;
            self.stage = Stage::Out;
            return Err(Refused::Class { class, limit });
        }
        counts.classes[index(class)] += 1;
        self.stage = Stage::Identified(class);
        Ok(())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.connections.counts();
        match self.stage {
            Stage::Unidentified(id) => {
                if counts.remove_unidentified(id) {
                    counts.open -= 1;
                }
            }
            Stage::Identified(class) => {
                counts.open -= 1;
                counts.classes[index(class)] -= 1;
            }
            Stage::Out => {}
        }
        if let Some(n) = counts.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.per_address.remove(&self.address);
            }
        }
    }
}

/// How a listener answers a connection it does not admit.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Close it (raw TCP: a spot retries later).
    Close,
    /// Write an HTTP `503` saying why ([`answer_503`]), then close; while every permit of
    /// `under_way` is taken ([`crate::ServerLimits::max_refusals`] refusals), close at once
    /// instead.
    Answer {
        /// A permit per refusal under way.
        under_way: Arc<Semaphore>,
    },
}

/// One listener's bounds.
#[derive(Debug)]
pub struct Slots {
    /// The open connections and their budget.
    pub connections: Arc<Connections>,
    /// The class of every connection of this listener (raw TCP: spots); `None`: each is
    /// unidentified until its first request head.
    pub class: Option<Class>,
    /// What a connection not admitted gets.
    pub refusal: Refusal,
}

/// Accepts connections on `listener` until the phase changes, running `connection` for
/// each admitted one in a task of its own that holds its [`Admitted`] and `done`; refuses
/// the others.
pub async fn serve<C, F>(
    listener: TcpListener,
    slots: Slots,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<Phase>,
    done: mpsc::Sender<()>,
    mut connection: C,
) where
    C: FnMut(TcpStream, SocketAddr, Admitted) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let admitted = match slots.connections.admit(peer.ip(), slots.class) {
            Ok(admitted) => admitted,
            Err(why) => {
                refuse(stream, peer, &why, &slots, &metrics);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let task = connection(stream, peer, admitted);
        let done = done.clone();
        tokio::spawn(async move {
            task.await;
            drop(done);
        });
    }
}

/// Refuses a connection not admitted: answers it in a task of its own if a refusal slot
/// is free, else closes it now.
fn refuse(stream: TcpStream, peer: SocketAddr, why: &Refused, slots: &Slots, metrics: &Metrics) {
    metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
    let Refusal::Answer { under_way } = &slots.refusal else {
        tracing::debug!(%peer, "{why}: closed");
        return;
    };
    let Ok(permit) = under_way.clone().try_acquire_owned() else {
        metrics
            .connections_refused_unanswered
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "{why}, and too many refusals: closed unanswered");
        return;
    };
    metrics.requests_refused.fetch_add(1, Ordering::Relaxed);
    let answer = answer_503(&why.to_string());
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, answer_and_close(stream, &answer)).await;
        drop(permit);
    });
}

/// An HTTP `503` with `{"error": message}`, closing the connection.
pub fn answer_503(message: &str) -> Bytes {
    let body = serde_json::json!({ "error": message }).to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    Bytes::from(head + &body)
}

/// Writes `answer`, ends the writing side, and reads until the client closes.
pub async fn answer_and_close<S>(mut stream: S, answer: &[u8]) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(answer).await?;
    stream.shutdown().await?;
    let mut discard = [0u8; 1024];
    while stream.read(&mut discard).await? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn budget() -> Budget {
        Budget {
            total: 4,
            per_address: 3,
            unidentified: 2,
            streams: 1,
            api: 2,
        }
    }

    #[test]
    fn request_lines_are_classified_by_method_and_path() {
        let cases: [(&[u8], Class); 10] = [
            (b"POST /api/spots/12/events HTTP/1.1\r\n", Class::Spot),
            (b"POST /api/spots/12/events/ HTTP/1.1\r\n", Class::Spot),
            (
                b"\r\nPOST /api/spots/12/events?x=1 HTTP/1.1\r\n",
                Class::Spot,
            ),
            (b"GET /api/spots/12/events HTTP/1.1\r\n", Class::Api),
            (b"GET /api/stream?key=k HTTP/1.1\r\n", Class::Stream),
            (b"GET /api/ws/ HTTP/1.1\r\n", Class::Stream),
            (b"GET /api/spots HTTP/1.1\r\n", Class::Api),
            (b"GET /metrics HTTP/1.1\r\n", Class::Api),
            (b"POST /api/spots/12/events/extra HTTP/1.1\r\n", Class::Api),
            (b"\x16\x03\x01garbage", Class::Api),
        ];
        for (line, class) in cases {
            assert_eq!(
                Class::of_request(line),
                class,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn a_new_connection_evicts_the_oldest_unidentified_one_when_that_budget_is_full() {
        let connections = Connections::new(budget());
        let mut first = connections.admit(A, None).unwrap();
        let second = connections.admit(B, None).unwrap();
        let third = connections.admit(B, None).unwrap();
        assert_eq!(connections.open(), 2);
        assert!(
            first.identify(Class::Spot).is_err(),
            "the first was evicted"
        );
        drop((first, second, third));
        assert_eq!(connections.open(), 0);
    }

    #[test]
    fn a_full_total_evicts_an_unidentified_connection_but_never_an_identified_one() {
        let connections = Connections::new(Budget {
            per_address: 10,
            ..budget()
        });
        let mut spots = Vec::new();
        for _ in 0..3 {
            spots.push(connections.admit(A, Some(Class::Spot)).unwrap());
        }
        let mut silent = connections.admit(A, None).unwrap();
        let mut talking = connections.admit(A, None).unwrap();
        assert_eq!(connections.open(), 4);
        talking.identify(Class::Spot).unwrap();
        assert!(
            silent.identify(Class::Spot).is_err(),
            "the silent one was evicted"
        );
        assert_eq!(connections.admit(A, None).unwrap_err(), Refused::Total(4));
        drop(spots.pop());
        assert!(connections.admit(A, None).is_ok());
    }

    #[test]
    fn each_class_and_each_address_has_its_cap() {
        let connections = Connections::new(Budget {
            total: 10,
            unidentified: 10,
            ..budget()
        });
        let mut stream = connections.admit(A, None).unwrap();
        stream.identify(Class::Stream).unwrap();
        let mut second = connections.admit(A, None).unwrap();
        let refused = second.identify(Class::Stream).unwrap_err();
        assert_eq!(
            refused,
            Refused::Class {
                class: Class::Stream,
                limit: 1
            }
        );
        assert_eq!(connections.open(), 1, "a refused connection frees its slot");
        let _third = connections.admit(A, None).unwrap();
        assert!(matches!(
            connections.admit(A, None),
            Err(Refused::Address { limit: 3, .. })
        ));
        assert!(
            connections.admit(B, None).is_ok(),
            "another address is admitted"
        );
        drop(second);
        assert!(connections.admit(A, None).is_ok(), "the refused one left");
    }
}
