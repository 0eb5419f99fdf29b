//! Latency benchmark of the push layer: `Hub::publish` → application receive, over
//! WebSocket (`/api/ws`), SSE (`/api/stream`) and MQTT (outlet → mosquitto → subscriber), at a
//! fixed publish rate. Everything runs on this machine (loopback, a mosquitto on a free port).
//!
//! ```text
//! cargo run --release -p spot-push --example latency -- RATE SECONDS [OUTLETS]
//! e.g. cargo run --release -p spot-push --example latency -- 100000 5 ws,mqtt
//! ```
//!
//! Each payload carries its creation time (ns since the benchmark's start, one clock, one
//! process); a receiver computes `now - t` on arrival. The first second is warm-up and is not
//! counted. Prints p50, p99, p99.9 and max per outlet, and what was received vs published.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use spot_push::tail::SseParser;
use spot_push::{
    stream_router, Hub, HubConfig, MemoryEventLog, MqttConfig, MqttOutlet, Published, StreamLimits,
    StreamState,
};
use tokio::io::{AsyncBufReadExt, BufReader};

static START: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Latencies (µs) of the events created after the warm-up.
#[derive(Default)]
struct Recorder {
    latencies_us: Mutex<Vec<u32>>,
    received: AtomicU64,
}

impl Recorder {
    fn record(&self, json: &[u8], warmup_ns: u64) {
        let arrived = now_ns();
        let Some(t) = created_ns(json) else { return };
        self.received.fetch_add(1, Ordering::Relaxed);
        if t >= warmup_ns {
            let us = (arrived.saturating_sub(t) / 1000) as u32;
            self.latencies_us
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(us);
        }
    }
}

/// Reads `"t_ns":<digits>` from a payload or envelope.
fn created_ns(json: &[u8]) -> Option<u64> {
    let key = b"\"t_ns\":";
    let at = json.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = json[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&json[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn start_mosquitto(dir: &std::path::Path, port: u16) -> tokio::process::Child {
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\nuser root\n\
             max_queued_messages 1000000\nmax_inflight_messages 1000\n"
        ),
    )
    .expect("config");
    let mut child = tokio::process::Command::new("/usr/sbin/mosquitto")
        .arg("-c")
        .arg(&config)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start /usr/sbin/mosquitto");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains(" running") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// A lean MQTT subscriber (rumqttc's codec, batched reads and acks): connect + subscribe.
async fn raw_subscriber(port: u16, qos: QoS) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut out = bytes::BytesMut::new();
    Packet::Connect(rumqttc::Connect::new("bench-subscriber"))
        .write(&mut out, usize::MAX)
        .expect("encode");
    let mut subscribe = rumqttc::Subscribe::new("bench/#", qos);
    subscribe.pkid = 1;
    Packet::Subscribe(subscribe)
        .write(&mut out, usize::MAX)
        .expect("encode");
    stream.write_all(&out).await.expect("write");
    let mut incoming = bytes::BytesMut::new();
    loop {
        assert!(
            stream.read_buf(&mut incoming).await.expect("read") > 0,
            "broker closed the subscriber"
        );
        let mut subscribed = false;
        while let Ok(p) = Packet::read(&mut incoming, 1 << 20) {
            subscribed |= matches!(p, Packet::SubAck(_));
        }
        if subscribed {
            return stream;
        }
    }
}

async fn raw_receive(mut stream: tokio::net::TcpStream, rec: Arc<Recorder>, warmup_ns: u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut incoming = bytes::BytesMut::with_capacity(1 << 20);
    let mut acks = bytes::BytesMut::new();
    loop {
        match stream.read_buf(&mut incoming).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Ok(p) = Packet::read(&mut incoming, 1 << 20) {
            if let Packet::Publish(p) = p {
                rec.record(&p.payload, warmup_ns);
                if p.qos == QoS::AtLeastOnce {
                    Packet::PubAck(rumqttc::PubAck::new(p.pkid))
                        .write(&mut acks, usize::MAX)
                        .expect("encode");
                }
            }
        }
        if !acks.is_empty() {
            if stream.write_all(&acks).await.is_err() {
                return;
            }
            acks.clear();
        }
    }
}

const PAYLOAD_FILLER: &str = r#""resource":{"id":1234,"item":{"id":77,"code_hex":"E2801160600002054C9A3B1F","technology":"EPC Gen2"},"location":{"id":3,"label":"spot203"},"proximity":"near"},"time_event":"2026-11-24T21:00:00.123Z","time_created":"2026-11-24T21:00:00.125Z""#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rate: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let outlets = args.get(3).cloned().unwrap_or_else(|| "ws,mqtt".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(rate, seconds, &outlets));
}

async fn run(rate: u64, seconds: u64, outlets: &str) {
    START.get_or_init(Instant::now);
    let warmup_ns = 1_000_000_000;
    let hub = Hub::new(HubConfig {
        queue_capacity: 65_536,
        max_subscriptions: 100,
    });
    let log = Arc::new(MemoryEventLog::new(4_000_000));
    let router = stream_router(StreamState {
        hub: hub.clone(),
        log: log.clone(),
        limits: StreamLimits::default(),
        shutdown: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // TCP_NODELAY on accepted sockets: without it, Nagle's algorithm holds small
    // WebSocket frames back for milliseconds.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, router).await });

    let mut recorders: Vec<(&'static str, Arc<Recorder>)> = Vec::new();
    if outlets.contains("ws") {
        let rec = Arc::new(Recorder::default());
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
            .await
            .expect("ws connect");
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            r##"{"subscribe":"#"}"##,
        ))
        .await
        .expect("subscribe");
        let _ack = ws.next().await;
        let r = rec.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = ws.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                    r.record(text.as_bytes(), warmup_ns);
                }
            }
        });
        recorders.push(("websocket", rec));
    }
    if outlets.contains("sse") {
        let rec = Arc::new(Recorder::default());
        let response = reqwest::get(format!("http://{addr}/api/stream?topic_filter=%23"))
            .await
            .expect("sse connect");
        let r = rec.clone();
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut parser = SseParser::new();
            while let Some(Ok(chunk)) = body.next().await {
                for m in parser.push(&chunk).expect("sse") {
                    r.record(m.data.as_bytes(), warmup_ns);
                }
            }
        });
        recorders.push(("sse", rec));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut _broker = None;
    let mut _outlet = None;
    if outlets.contains("mqtt") {
        let port = free_port();
        _broker = Some(start_mosquitto(dir.path(), port).await);
        let rec = Arc::new(Recorder::default());
        let sub_qos = match std::env::var("BENCH_SUB_QOS").as_deref() {
            Ok("0") => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let r = rec.clone();
        if std::env::var("BENCH_SUB").as_deref() == Ok("rumqttc") {
            let mut options = MqttOptions::new("bench-subscriber", "127.0.0.1", port);
            options.set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut eventloop) = AsyncClient::new(options, 100);
            client
                .subscribe("bench/#", sub_qos)
                .await
                .expect("subscribe");
            loop {
                if let Ok(Event::Incoming(Packet::SubAck(_))) = eventloop.poll().await {
                    break;
                }
            }
            tokio::spawn(async move {
                let _client = client;
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => r.record(&p.payload, warmup_ns),
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("bench subscriber: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        } else {
            let stream = raw_subscriber(port, sub_qos).await;
            tokio::spawn(raw_receive(stream, r, warmup_ns));
        }
        let mut config =
            MqttConfig::from_url(&format!("mqtt://127.0.0.1:{port}/bench")).expect("url");
        config.client_id = "bench-outlet".into();
        if let Ok(qos) = std::env::var("BENCH_MQTT_QOS") {
            config.qos = qos.parse().expect("BENCH_MQTT_QOS: 0, 1 or 2");
        }
        _outlet = Some(MqttOutlet::spawn(config, &hub, Some(log.clone())).expect("outlet"));
        recorders.push(("mqtt", rec));
    }

    // The publisher: its own thread, like the server's commit path.
    let publisher = {
        let hub = hub.clone();
        let log = log.clone();
        std::thread::spawn(move || {
            let begin = Instant::now();
            let total = rate * seconds;
            let mut sent = 0u64;
            while sent < total {
                let due = ((begin.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
                while sent < due {
                    sent += 1;
                    let payload = format!(r#"{{"t_ns":{},{PAYLOAD_FILLER}}}"#, now_ns());
                    let event = Published::new(
                        sent,
                        "presences/1234/changed-proximity/77/3/near/far/moved-closer",
                        payload,
                    )
                    .expect("event");
                    log.append(event.clone());
                    hub.publish(event);
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            sent
        })
    };
    let published = tokio::task::spawn_blocking(move || publisher.join().expect("publisher"))
        .await
        .expect("join");
    if let Some(outlet) = &_outlet {
        println!(
            "mqtt outlet when publishing ended: {}",
            serde_json::to_string(&outlet.stats()).unwrap_or_default()
        );
    }
    // Drain: until every receiver has everything, at most 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && recorders
            .iter()
            .any(|(_, r)| r.received.load(Ordering::Relaxed) < published)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "rate {rate}/s for {seconds} s: {published} events published (first second = warm-up, not counted)"
    );
    println!("outlet        received    p50 µs    p99 µs  p99.9 µs    max µs");
    for (name, rec) in &recorders {
        let mut lat = rec
            .latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        lat.sort_unstable();
        println!(
            "{name:<12} {:>9} {:>9} {:>9} {:>9} {:>9}",
            rec.received.load(Ordering::Relaxed),
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            percentile(&lat, 0.999),
            lat.last().copied().unwrap_or(0),
        );
    }
    println!(
        "hub: {}",
        serde_json::to_string(&hub.stats()).unwrap_or_default()
    );
    if let Some(outlet) = &_outlet {
        println!(
            "mqtt: {}",
            serde_json::to_string(&outlet.stats()).unwrap_or_default()
        );
    }
}
