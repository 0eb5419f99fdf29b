//! End-to-end push latency: spots POST presence events to an in-process server; a
//! WebSocket application subscribed to `items/+/created` receives the derived events.
//! Latency = receive time − the time the spot wrote the event's chunk (one clock, one
//! process). Every event has a new item code, so each yields `items/<id>/created` (plus a
//! presence and an `appeared` event: 3 derived events per spot event).
//!
//! ```text
//! cargo run --release -p spot-server --example push_latency -- RATE SECONDS [SPOTS] [full|normal]
//! e.g. cargo run --release -p spot-server --example push_latency -- 10000 10 10 normal
//! ```
//!
//! Each spot holds one keep-alive connection and streams one chunked POST per second
//! (like a real spot), writing its share of the rate every millisecond. The first second is
//! warm-up. Prints p50, p99, p99.9 and max, and received vs sent (waiting at most 10 s after
//! the last write).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use spot_server::{Server, ServerConfig, SyncMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

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
        chunk(
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
                chunk(&mut out, &body);
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let rate: u64 = arg(0, "10000").parse().expect("RATE");
    let seconds: u64 = arg(1, "10").parse().expect("SECONDS");
    let spots: u64 = arg(2, "10").parse().expect("SPOTS");
    let sync = match arg(3, "normal").as_str() {
        "full" => SyncMode::Full,
        _ => SyncMode::Normal,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = Server::bind(ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.path().to_path_buf(),
            sync,
            ..ServerConfig::default()
        })
        .await
        .expect("server");
        let addr = server.http_addr();
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws"))
            .await
            .expect("ws");
        ws.send(Message::text(r#"{"subscribe":"items/+/created"}"#))
            .await
            .expect("subscribe");
        ws.next().await.expect("ack").expect("ack frame");

        let capacity = (rate * (seconds + 2)) as usize;
        let sent_at: Arc<Vec<AtomicU64>> =
            Arc::new((0..capacity).map(|_| AtomicU64::new(0)).collect());
        let sent = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let until = start + Duration::from_secs(seconds);
        let warmup_ns = 1_000_000_000u64;
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
        let receiver = {
            let sent_at = sent_at.clone();
            tokio::spawn(async move {
                let mut latencies_us = Vec::new();
                let mut received = 0u64;
                let key = "\"code_hex\":\"";
                loop {
                    // Whatever has not arrived 10 s after the last write counts as lost.
                    let deadline = tokio::time::Instant::from_std(until + Duration::from_secs(10));
                    let frame = tokio::time::timeout_at(deadline, ws.next()).await;
                    let Ok(Some(Ok(Message::Text(text)))) = frame else {
                        break;
                    };
                    let now_ns = start.elapsed().as_nanos() as u64;
                    let Some(at) = text.find(key) else { continue };
                    let code = &text[at + key.len()..at + key.len() + 24];
                    let Ok(seq) = u64::from_str_radix(code, 16) else {
                        continue;
                    };
                    received += 1;
                    let t = sent_at
                        .get(seq as usize)
                        .map_or(0, |s| s.load(Ordering::Relaxed));
                    if t >= warmup_ns {
                        latencies_us.push(((now_ns.saturating_sub(t)) / 1000) as u32);
                    }
                }
                (latencies_us, received)
            })
        };
        for t in tasks {
            t.await.expect("spot task").expect("spot I/O");
        }
        let (mut latencies, received) = receiver.await.expect("receiver");
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        println!(
            "rate {rate}/s over {seconds}s, {spots} spots, sync {:?}: sent {}, received {received} \
             items/+/created over WebSocket; latency spot write -> WS receive (ms): \
             p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (n={})",
            sync,
            sent.load(Ordering::Relaxed),
            pct(0.50),
            pct(0.99),
            pct(0.999),
            latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
            latencies.len()
        );
        print!("{}", spot_server::push::metrics(server.shared()));
        server.shutdown().await;
    });
}
