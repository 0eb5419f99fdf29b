//! End-to-end push latency: spots POST presence events to an in-process server; an
//! application subscribed to `items/+/created` receives the derived events, over WebSocket
//! (`/api/ws`) or MQTT (the server's outlet → a mosquitto started on a free port → a
//! subscriber). Latency = receive time − the time the spot wrote the event's chunk (one
//! clock, one process). Every event has a new item code, so each yields `items/<id>/created`
//! (plus a presence and an `appeared` event: 3 derived events per spot event).
//!
//! ```text
//! cargo run --release -p spot-server --example push_latency -- \
//!     RATE SECONDS [SPOTS] [full|normal] [ws|mqtt0|mqtt1] [MQTT_OUTLET_FILTER]
//! e.g. cargo run --release -p spot-server --example push_latency -- 10000 10 10 normal
//!      cargo run --release -p spot-server --example push_latency -- 10000 10 10 full mqtt1
//! ```
//!
//! `mqtt0` / `mqtt1`: the outlet publishes with QoS 0 / 1 and the subscriber subscribes with
//! the same QoS. The outlet publishes every derived event (filter `#`, as `spot serve --mqtt`
//! does: 3 publishes per spot event reach mosquitto, which forwards the 1 that matches)
//! unless MQTT_OUTLET_FILTER says otherwise (comma-separated filters, e.g. `items/+/created`:
//! 1 publish per spot event). The subscriber is rumqttc's `AsyncClient`, or with `MQTT_SUB=lean` in the
//! environment a leaner one over rumqttc's codec (batched reads and acks). Also prints the
//! CPU mosquitto used over the run (100% = one core). mosquitto runs with `set_tcp_nodelay
//! true` (what a low-latency deployment should set) unless `MOSQUITTO_NODELAY=false`: then
//! Nagle's algorithm holds its writes to a QoS 0 subscriber until the delayed ACK.
//!
//! Each spot holds one keep-alive connection and streams one chunked POST per second
//! (like a real spot), writing its share of the rate every millisecond. The first second is
//! warm-up. Prints p50, p99, p99.9 and max, and received vs sent (waiting at most 10 s after
//! the last write).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use spot_server::outlets::PushConfig;
use spot_server::{Durability, Server, ServerConfig};
use test_support::http::write_chunk;
use test_support::mosquitto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The server binary's allocator, so that allocation costs what it costs in `spot serve`
/// (with the system's, malloc and free were 15 % of the run).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn event(seq: u64) -> Vec<u8> {
    format!(
        "[\"presence\",\"create\",{{\"item_code\":\"{seq:024x}\",\"item_codetype\":\"EPC Gen2\",\
         \"time_started\":\"2024-01-01T00:00:00Z\",\"time_last\":\"2024-01-01T00:00:01Z\",\
         \"proximity\":\"near\",\"hold_delay_s\":4}}]\n\n"
    )
    .into_bytes()
}

/// Reads until the end of one response head (bodies are empty: no commands pending).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    if !buf.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&buf).into_owned(),
        ));
    }
    Ok(())
}

/// Latencies (µs, events written after the warm-up) and the count of events received.
struct Recorder {
    start: Instant,
    sent_at: Arc<Vec<AtomicU64>>,
    latencies_us: Mutex<Vec<u32>>,
    received: AtomicU64,
}

const WARMUP_NS: u64 = 1_000_000_000;

impl Recorder {
    /// One received `items/+/created` event (its JSON, envelope or payload).
    fn record(&self, json: &[u8]) {
        let now_ns = self.start.elapsed().as_nanos() as u64;
        let key = b"\"code_hex\":\"";
        let Some(at) = json.windows(key.len()).position(|w| w == key) else {
            return;
        };
        let Some(seq) = json
            .get(at + key.len()..at + key.len() + 24)
            .and_then(|code| std::str::from_utf8(code).ok())
            .and_then(|code| u64::from_str_radix(code, 16).ok())
        else {
            return;
        };
        self.received.fetch_add(1, Ordering::Relaxed);
        let t = self
            .sent_at
            .get(seq as usize)
            .map_or(0, |s| s.load(Ordering::Relaxed));
        if t >= WARMUP_NS {
            self.latencies_us
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(((now_ns.saturating_sub(t)) / 1000) as u32);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn spot(
    addr: std::net::SocketAddr,
    index: u64,
    spots: u64,
    rate: u64,
    until: Instant,
    start: Instant,
    sent_at: Arc<Vec<AtomicU64>>,
    sent: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let serial = 500_000 + index;
    let mut count: u64 = 0; // this spot's events so far
    while Instant::now() < until {
        let post_start = Instant::now();
        let mut out = format!(
            "POST /api/spots/{serial}/events/ HTTP/1.1\r\nHost: b\r\n\
             Transfer-Encoding: chunked\r\nContent-Type: text/x-intellifi-events\r\n\r\n"
        )
        .into_bytes();
        write_chunk(
            &mut out,
            format!("[\"spot\",\"create\",{{\"spot_id\":{serial},\"version\":\"b\"}}]\n\n")
                .as_bytes(),
        );
        stream.write_all(&out).await?;
        while post_start.elapsed() < Duration::from_secs(1) && Instant::now() < until {
            // This spot's share of the rate: events due by now.
            let due = (start.elapsed().as_secs_f64() * rate as f64 / spots as f64) as u64;
            if due > count {
                let mut body = Vec::new();
                let now_ns = start.elapsed().as_nanos() as u64;
                for n in count..due {
                    let seq = n * spots + index;
                    if let Some(slot) = sent_at.get(seq as usize) {
                        slot.store(now_ns, Ordering::Relaxed);
                    }
                    body.extend(event(seq));
                }
                count = due;
                let mut out = Vec::new();
                write_chunk(&mut out, &body);
                stream.write_all(&out).await?;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stream.write_all(b"0\r\n\r\n").await?;
        read_head(&mut stream).await?;
    }
    sent.fetch_add(count, Ordering::Relaxed);
    Ok(())
}

/// Where the application receives the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outlet {
    WebSocket,
    Mqtt(spot_push::Qos),
}

fn main() {
    // As `spot serve` does.
    spot_server::huge_pages::turn_off();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let rate: u64 = arg(0, "10000").parse().expect("RATE");
    let seconds: u64 = arg(1, "10").parse().expect("SECONDS");
    let spots: u64 = arg(2, "10").parse().expect("SPOTS");
    let sync = match arg(3, "normal").as_str() {
        "full" => Durability::Full,
        _ => Durability::Normal,
    };
    let outlet = match arg(4, "ws").as_str() {
        "ws" => Outlet::WebSocket,
        "mqtt0" => Outlet::Mqtt(spot_push::Qos::AtMostOnce),
        "mqtt1" => Outlet::Mqtt(spot_push::Qos::AtLeastOnce),
        other => panic!("outlet {other:?}: ws, mqtt0 or mqtt1"),
    };
    let outlet_filter = arg(5, "#");
    let lean_subscriber = std::env::var("MQTT_SUB").as_deref() == Ok("lean");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut push = PushConfig::default();
        let mut broker = None;
        if let Outlet::Mqtt(qos) = outlet {
            let started = mosquitto::Broker::start_bench(dir.path());
            let port = started.port;
            broker = Some(started);
            let mut mqtt = spot_push::MqttConfig::from_url(&format!("mqtt://127.0.0.1:{port}"))
                .expect("mqtt url");
            mqtt.qos = qos;
            mqtt.filters = outlet_filter
                .split(',')
                .map(|f| spot_push::TopicFilter::new(f).expect("outlet filter"))
                .collect();
            push.mqtt = Some(mqtt);
        }
        let server = Server::bind(ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.path().join("data"),
            sync,
            push,
            ..ServerConfig::default()
        })
        .await
        .expect("server");
        let addr = server.http_addr();

        let capacity = (rate * (seconds + 2)) as usize;
        let sent_at: Arc<Vec<AtomicU64>> =
            Arc::new((0..capacity).map(|_| AtomicU64::new(0)).collect());
        let start = Instant::now();
        let recorder = Arc::new(Recorder {
            start,
            sent_at: sent_at.clone(),
            latencies_us: Mutex::new(Vec::new()),
            received: AtomicU64::new(0),
        });
        match (outlet, &broker) {
            (Outlet::WebSocket, _) => {
                let key = std::fs::read_to_string(dir.path().join("data/admin.key"))
                    .expect("the first admin key");
                let url = format!("ws://{addr}/api/ws?key={}", key.trim());
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
                ws.send(Message::text(r#"{"subscribe":"items/+/created"}"#))
                    .await
                    .expect("subscribe");
                ws.next().await.expect("ack").expect("ack frame");
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    while let Some(Ok(frame)) = ws.next().await {
                        if let Message::Text(text) = frame {
                            recorder.record(text.as_bytes());
                        }
                    }
                });
            }
            (Outlet::Mqtt(qos), Some(broker)) => {
                let qos = match qos {
                    spot_push::Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
                    _ => rumqttc::QoS::AtLeastOnce,
                };
                let recorder = recorder.clone();
                let on_payload = move |payload: &[u8]| recorder.record(payload);
                if lean_subscriber {
                    mosquitto::lean_subscriber(broker.port, "items/+/created", qos, on_payload)
                        .await;
                } else {
                    mosquitto::client_subscriber(broker.port, "items/+/created", qos, on_payload)
                        .await;
                }
            }
            (Outlet::Mqtt(_), None) => unreachable!("the broker is started for MQTT"),
        }
        let broker_cpu_before = broker.as_ref().map(|b| (b.cpu_time(), Instant::now()));

        let sent = Arc::new(AtomicU64::new(0));
        let until = start + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for index in 0..spots {
            tasks.push(tokio::spawn(spot(
                addr,
                index,
                spots,
                rate,
                until,
                start,
                sent_at.clone(),
                sent.clone(),
            )));
        }
        for t in tasks {
            t.await.expect("spot task").expect("spot I/O");
        }
        // Whatever has not arrived 10 s after the last write counts as lost.
        let sent = sent.load(Ordering::Relaxed);
        let deadline = until + Duration::from_secs(10);
        while recorder.received.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let broker_cpu = match (&broker, broker_cpu_before) {
            (Some(b), Some((cpu, at))) => format!(
                "; mosquitto CPU {:.0}% of a core",
                100.0 * (b.cpu_time() - cpu).as_secs_f64() / at.elapsed().as_secs_f64()
            ),
            _ => String::new(),
        };
        let received = recorder.received.load(Ordering::Relaxed);
        let mut latencies = std::mem::take(
            &mut *recorder
                .latencies_us
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        let via = match outlet {
            Outlet::WebSocket => "WebSocket".to_string(),
            Outlet::Mqtt(qos) => format!(
                "MQTT QoS {} (outlet filter {outlet_filter}, {} subscriber)",
                qos as u8,
                if lean_subscriber {
                    "lean"
                } else {
                    "rumqttc AsyncClient"
                }
            ),
        };
        println!(
            "rate {rate}/s over {seconds}s, {spots} spots, sync {sync:?}: sent {sent}, received \
             {received} items/+/created over {via}; latency spot write -> receive (ms): \
             p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (n={}){broker_cpu}",
            pct(0.50),
            pct(0.99),
            pct(0.999),
            latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
            latencies.len()
        );
        print!("{}", spot_server::api::metrics_text(server.context()));
        server.shutdown().await;
    });
}
