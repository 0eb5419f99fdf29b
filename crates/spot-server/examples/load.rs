//! Load generator for `spot serve`: many spots, each on its own keep-alive connection,
//! POSTing chunked bodies of presence events with sequence numbers as fast as the server
//! acknowledges them. Reports events/s and the time from end of body to `200` (p50/p99).
//! With `--post-interval-ms N` each spot starts one POST every N ms (real spots: 1000), so
//! the offered load is `spots × events-per-post × 1000 / N` events/s.
//! With `--idle N --server-pid PID` it instead opens N spots that POST once and then stay
//! connected idle, and reports the server's RSS growth per connection.
//!
//! ```text
//! cargo run --release -p spot-cli -- serve --listen 127.0.0.1:8080 --data /tmp/spot-load &
//! cargo run --release -p spot-server --example load -- --addr 127.0.0.1:8080 --spots 100 --seconds 10
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use test_support::http::write_chunk;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Opts {
    addr: SocketAddr,
    spots: usize,
    seconds: u64,
    events_per_post: usize,
    events_per_chunk: usize,
    idle: usize,
    server_pid: Option<u32>,
    serial_base: u64,
    post_interval_ms: u64,
}

fn opts() -> Opts {
    let mut o = Opts {
        addr: "127.0.0.1:8080".parse().unwrap(),
        spots: 100,
        seconds: 10,
        events_per_post: 200,
        events_per_chunk: 20,
        idle: 0,
        server_pid: None,
        serial_base: 100_000,
        post_interval_ms: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).map(String::as_str).unwrap_or("");
        let bad = || -> ! { panic!("bad value for {}: {v:?}", pair[0]) };
        match pair[0].as_str() {
            "--addr" => o.addr = v.parse().unwrap_or_else(|_| bad()),
            "--spots" => o.spots = v.parse().unwrap_or_else(|_| bad()),
            "--seconds" => o.seconds = v.parse().unwrap_or_else(|_| bad()),
            "--events-per-post" => o.events_per_post = v.parse().unwrap_or_else(|_| bad()),
            "--events-per-chunk" => o.events_per_chunk = v.parse().unwrap_or_else(|_| bad()),
            "--idle" => o.idle = v.parse().unwrap_or_else(|_| bad()),
            "--server-pid" => o.server_pid = Some(v.parse().unwrap_or_else(|_| bad())),
            "--serial-base" => o.serial_base = v.parse().unwrap_or_else(|_| bad()),
            "--post-interval-ms" => o.post_interval_ms = v.parse().unwrap_or_else(|_| bad()),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// Reads one response; returns its `X-Spot-Ack` value.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u64> {
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            if !head.starts_with("http/1.1 200") {
                return Err(std::io::Error::other(head));
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            let ack = head
                .lines()
                .find_map(|l| l.strip_prefix("x-spot-ack:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut tmp).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            buf.drain(..end + 4 + len);
            return Ok(ack);
        }
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

struct Spot {
    serial: u64,
    seq: u64,
    stream: TcpStream,
    buf: Vec<u8>,
    first: bool,
}

impl Spot {
    async fn connect(addr: SocketAddr, serial: u64) -> std::io::Result<Spot> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Spot {
            serial,
            seq: 0,
            stream,
            buf: Vec::new(),
            first: true,
        })
    }

    /// One POST of `events` presence updates; returns the time from end of body to 200.
    async fn post(&mut self, events: usize, per_chunk: usize) -> std::io::Result<Duration> {
        let mut out = format!(
            "POST /api/spots/{}/events/ HTTP/1.1\r\nHost: load\r\nUser-Agent: spot/load-1\r\n\
             Transfer-Encoding: chunked\r\nContent-Type: text/x-intellifi-events\r\n\
             Accept: text/x-intellifi-events\r\n\r\n",
            self.serial
        )
        .into_bytes();
        if self.first {
            self.first = false;
            let create = format!(
                "[\"spot\",\"create\",{{\"spot_id\":{},\"version\":\"load-1\",\"seq_epoch\":{}}}]\n\n",
                self.serial,
                std::process::id()
            );
            write_chunk(&mut out, create.as_bytes());
        }
        let mut data = Vec::new();
        for i in 0..events {
            self.seq += 1;
            let proximity = ["far", "near", "immediate"][(self.seq % 3) as usize];
            data.extend_from_slice(
                format!(
                    "[\"presence\",\"update\",{{\"item_code\":\"{:012x}{:012x}\",\
                     \"item_codetype\":\"EPC Gen2\",\"time_started\":\"2024-05-06T09:38:37.151Z\",\
                     \"time_last\":\"2024-05-06T09:38:38.151Z\",\"proximity\":\"{proximity}\",\
                     \"hold_delay_s\":4,\"seq\":{}}}]\n\n",
                    self.serial,
                    self.seq % 50,
                    self.seq
                )
                .as_bytes(),
            );
            if (i + 1) % per_chunk == 0 || i + 1 == events {
                write_chunk(&mut out, &data);
                data.clear();
            }
        }
        self.stream.write_all(&out).await?;
        self.stream.write_all(b"0\r\n\r\n").await?;
        let ended = Instant::now();
        let ack = read_response(&mut self.stream, &mut self.buf).await?;
        if ack != self.seq {
            return Err(std::io::Error::other(format!(
                "spot {}: X-Spot-Ack {ack} != last seq {}",
                self.serial, self.seq
            )));
        }
        Ok(ended.elapsed())
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let o = opts();
    if o.idle > 0 {
        let pid = o.server_pid.expect("--idle needs --server-pid");
        let before = rss_kib(pid);
        let mut spots = Vec::new();
        for i in 0..o.idle {
            let mut s = Spot::connect(o.addr, o.serial_base + i as u64)
                .await
                .expect("connect");
            s.post(1, 1).await.expect("post");
            spots.push(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(pid);
        println!(
            "idle connected spots: {}  server RSS {} KiB -> {} KiB  = {:.1} KiB per idle spot",
            o.idle,
            before,
            after,
            (after.saturating_sub(before)) as f64 / o.idle as f64
        );
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..o.spots {
        let (stop, events) = (stop.clone(), events.clone());
        let (addr, per_post, per_chunk) = (o.addr, o.events_per_post, o.events_per_chunk);
        let interval = Duration::from_millis(o.post_interval_ms);
        // Spread the spots' POST cycles over the interval, as real spots are.
        let offset = interval.mul_f64(i as f64 / o.spots as f64);
        let serial = o.serial_base + i as u64;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut spot = Spot::connect(addr, serial).await.expect("connect");
            tokio::time::sleep(offset).await;
            while !stop.load(Ordering::Relaxed) {
                let cycle = Instant::now();
                let result = spot.post(per_post, per_chunk).await;
                if let Some(rest) = interval.checked_sub(cycle.elapsed()) {
                    tokio::time::sleep(rest).await;
                }
                match result {
                    Ok(l) => {
                        latencies.push(l);
                        events.fetch_add(per_post as u64, Ordering::Relaxed);
                    }
                    Err(e) => panic!("spot {serial}: {e}"),
                }
            }
            latencies
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let counted = events.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("spot task"));
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "spots {}  events/POST {}  events/chunk {}  duration {:.1}s",
        o.spots,
        o.events_per_post,
        o.events_per_chunk,
        elapsed.as_secs_f64()
    );
    println!(
        "events/s {:.0}  POSTs {}  ack after end of body: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        counted as f64 / elapsed.as_secs_f64(),
        latencies.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    );
}
