//! A minimal spot server for the emulator's tests: decodes chunked event POSTs with the real
//! `Decoder` as they stream in, commits a POST's events when its body ends (dropping replays
//! by seq, per the delivery contract), answers with `X-Spot-Ack` and any queued commands,
//! serves firmware downloads, and can be killed and restarted on the same port with its
//! state kept (as if that state were its database).

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use spot_protocol::{Decoder, Encoder, Encoding, Event, EventKind, Limits};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// What the server holds for one spot.
#[derive(Debug, Default)]
pub struct SpotLog {
    /// Current seq epoch and the highest seq committed in it.
    pub epoch: u64,
    pub acked: u64,
    /// Committed events, in order (replays excluded).
    pub events: Vec<Event>,
    /// Every `spot create` received.
    pub spot_creates: Vec<Event>,
    /// Events dropped as replays.
    pub duplicates: u64,
    /// Malformed messages.
    pub malformed: u64,
    /// Commands for the next response.
    pub commands: VecDeque<Event>,
}

#[derive(Debug, Default)]
pub struct State {
    pub spots: HashMap<u64, SpotLog>,
    pub firmware_downloads: Vec<String>,
    /// Events received in bodies not yet ended (lost if the server is killed now).
    pub uncommitted: usize,
}

/// The state, shared across restarts, with a notification on every commit.
#[derive(Clone, Default)]
pub struct Shared {
    pub state: Arc<Mutex<State>>,
    pub changed: Arc<Notify>,
}

impl Shared {
    /// Waits until `cond` holds on the state.
    pub async fn wait_for(&self, mut cond: impl FnMut(&State) -> bool) {
        loop {
            let notified = self.changed.notified();
            if cond(&self.state.lock().unwrap()) {
                return;
            }
            notified.await;
        }
    }

    pub fn queue(&self, serial: u64, command: Event) {
        let mut st = self.state.lock().unwrap();
        st.spots
            .entry(serial)
            .or_default()
            .commands
            .push_back(command);
    }
}

/// A running server; dropping or [`TestServer::kill`] closes the listener and every
/// connection at once.
pub struct TestServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Starts on `addr` (port 0 for a free one).
    pub async fn start(addr: SocketAddr, shared: Shared) -> TestServer {
        let listener = TcpListener::bind(addr).await.expect("bind test server");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(req, shared.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestServer { addr, task }
    }

    /// Kills the server: listener and connections close; no response is sent.
    pub async fn kill(mut self) {
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        task.abort();
        let _ = task.await;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Shared,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if req.method() == hyper::Method::GET && path.starts_with("/firmware/") {
        shared.state.lock().unwrap().firmware_downloads.push(path);
        shared.changed.notify_waiters();
        return Ok(Response::new(Full::new(Bytes::from(vec![0xAB; 4096]))));
    }
    let serial = path
        .strip_prefix("/api/spots/")
        .and_then(|s| s.trim_end_matches('/').strip_suffix("/events"))
        .and_then(|s| s.parse::<u64>().ok());
    let Some(serial) = serial else {
        return Ok(status(404));
    };
    let encoding = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(Encoding::from_media_type)
        .unwrap_or(Encoding::Json);
    let mut decoder = Decoder::new(encoding, Limits::default());
    let mut pending = Vec::new();
    let mut malformed = 0;
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Ok(status(400)); // the body broke off: nothing of it is committed
        };
        if let Ok(data) = frame.into_data() {
            decoder.feed(&data);
            let before = pending.len();
            drain(&mut decoder, &mut pending, &mut malformed);
            if pending.len() > before {
                shared.state.lock().unwrap().uncommitted += pending.len() - before;
                shared.changed.notify_waiters();
            }
        }
    }
    decoder.finish();
    drain(&mut decoder, &mut pending, &mut malformed);

    // Commit: the whole POST at once, replays dropped by seq.
    let (ack, commands) = {
        let mut st = shared.state.lock().unwrap();
        st.uncommitted = st.uncommitted.saturating_sub(pending.len());
        let log = st.spots.entry(serial).or_default();
        log.malformed += malformed;
        for event in pending {
            if let EventKind::Spot(_, s) = &event.kind {
                if let Some(epoch) = s.seq_epoch {
                    if epoch != log.epoch {
                        log.epoch = epoch;
                        log.acked = 0;
                    }
                }
                log.spot_creates.push(event);
                continue;
            }
            match event.seq {
                Some(seq) if seq <= log.acked => log.duplicates += 1,
                Some(seq) => {
                    log.acked = seq;
                    log.events.push(event);
                }
                None => log.events.push(event),
            }
        }
        (log.acked, log.commands.drain(..).collect::<Vec<_>>())
    };
    shared.changed.notify_waiters();
    let mut out = Vec::new();
    let mut encoder = Encoder::new(encoding);
    for c in &commands {
        encoder.encode(c, &mut out);
    }
    let mut response = Response::new(Full::new(Bytes::from(out)));
    let headers = response.headers_mut();
    headers.insert("x-spot-ack", ack.to_string().parse().unwrap());
    headers.insert("content-type", encoding.media_type().parse().unwrap());
    Ok(response)
}

fn drain(decoder: &mut Decoder, pending: &mut Vec<Event>, malformed: &mut u64) {
    while let Some(item) = decoder.next_event() {
        match item {
            Ok(e) => pending.push(e),
            Err(_) => *malformed += 1,
        }
    }
}

fn status(code: u16) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
    r
}
