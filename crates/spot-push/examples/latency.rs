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
//! counted. Prints p50, p99, p99.9 and max per outlet, and what was received vs published,
//! and with MQTT the CPU mosquitto used while publishing (100% = one core).
//!
//! MQTT settings from the environment: `BENCH_MQTT_QOS` (0, 1 or 2; default 1) is the
//! outlet's QoS, `BENCH_SUB_QOS` (0 or 1; default 1) the subscription's, and `BENCH_SUB=rumqttc`
//! subscribes with rumqttc's `AsyncClient` instead of the lean codec-level subscriber;
//! `MOSQUITTO_NODELAY=false` runs mosquitto without `set_tcp_nodelay true` (Nagle's
//! algorithm on its writes to the subscriber: see the `mqtt` module docs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rumqttc::QoS;
use spot_push::tail::SseParser;
use spot_push::{
    stream_router, Hub, HubConfig, MemoryEventLog, MqttConfig, MqttOutlet, Published, StreamLimits,
    StreamState,
};
use test_support::mosquitto;

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
    let mut broker = None;
    let mut _outlet = None;
    if outlets.contains("mqtt") {
        let started = mosquitto::Broker::start_bench(dir.path());
        let port = started.port;
        broker = Some(started);
        let rec = Arc::new(Recorder::default());
        let sub_qos = match std::env::var("BENCH_SUB_QOS").as_deref() {
            Ok("0") => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let r = rec.clone();
        let on_payload = move |payload: &[u8]| r.record(payload, warmup_ns);
        if std::env::var("BENCH_SUB").as_deref() == Ok("rumqttc") {
            mosquitto::client_subscriber(port, "bench/#", sub_qos, on_payload).await;
        } else {
            mosquitto::lean_subscriber(port, "bench/#", sub_qos, on_payload).await;
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
    let broker_cpu_before = broker.as_ref().map(|b| (b.cpu_time(), Instant::now()));

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
    let broker_cpu = match (&broker, broker_cpu_before) {
        (Some(b), Some((cpu, at))) => {
            Some(100.0 * (b.cpu_time() - cpu).as_secs_f64() / at.elapsed().as_secs_f64())
        }
        _ => None,
    };
    if let Some(outlet) = &_outlet {
        println!(
            "mqtt outlet when publishing ended: {}",
            serde_json::to_string(&outlet.stats()).unwrap_or_default()
        );
    }
    if let Some(cpu) = broker_cpu {
        println!("mosquitto CPU while publishing: {cpu:.0}% of a core");
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
