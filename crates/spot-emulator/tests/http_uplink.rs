//! The emulator against a server over loopback: the exact byte stream, commands, and
//! delivery across a server kill and an emulator kill.

mod support;

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spot_emulator::buffer::{BufferLimits, SpotBuffer};
use spot_emulator::fleet::{self, FleetConfig, Summary};
use spot_emulator::population::PopulationParams;
use spot_emulator::replay::{Recording, ReplayTiming};
use spot_emulator::spot::DEFAULT_FIRMWARE;
use spot_emulator::stats::SpotStats;
use spot_emulator::uplink::{ServerAddr, UplinkConfig};
use spot_emulator::wire::ChunkSplit;
use spot_protocol::{Action, Config, Decoder, Encoding, Event, EventKind, Firmware, Limits};
use support::{Shared, State, TestServer};
use test_support::captures::TELNET_SPOT201;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;

fn config(url: &str, spots: u64, rate: f64, duration_s: Option<f64>) -> FleetConfig {
    let mut uplink = UplinkConfig::new(ServerAddr::parse(url).unwrap());
    uplink.post_ms = 100;
    uplink.tick_ms = 5;
    uplink.rate = rate;
    uplink.backoff_min_ms = 10;
    uplink.backoff_max_ms = 100;
    uplink.drain_ms = 20_000;
    FleetConfig {
        uplink,
        spots,
        first_serial: 200,
        duration: duration_s.map(Duration::from_secs_f64),
        seed: 7,
        population: PopulationParams::default(),
        buffer_dir: None,
        buffer_limits: BufferLimits::default(),
        replay: None,
    }
}

fn start(
    cfg: &FleetConfig,
) -> (
    tokio::task::JoinHandle<Summary>,
    Vec<Arc<SpotStats>>,
    watch::Sender<bool>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks = fleet::prepare(cfg, &stop_rx).unwrap();
    let stats = tasks.iter().map(|t| t.stats()).collect();
    (tokio::spawn(fleet::run(tasks, false)), stats, stop_tx)
}

fn total(summary: &Summary, f: fn(&SpotStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(&summary.total()).load(Relaxed)
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().filter_map(|e| e.seq).collect()
}

/// Reads one request from a raw socket, checking the framing byte by byte; returns the
/// body and the chunk boundaries (offsets into the body), or `None` at end of stream.
async fn read_raw_request(
    r: &mut BufReader<tokio::net::TcpStream>,
    serial: u64,
) -> Option<(Vec<u8>, Vec<usize>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap() == 0 {
            assert!(head.is_empty(), "stream ended inside a head");
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let addr = r.get_ref().local_addr().unwrap();
    assert_eq!(
        head,
        format!(
            "POST /api/spots/{serial}/events/ HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: spot/{DEFAULT_FIRMWARE}\r\n\
             Transfer-Encoding: chunked\r\nAccept: text/x-intellifi-events\r\n\
             Content-Type: text/x-intellifi-events\r\nCache-Control: no-cache\r\n\r\n"
        )
    );
    let mut body = Vec::new();
    let mut boundaries = Vec::new();
    loop {
        let mut size_line = String::new();
        r.read_line(&mut size_line).await.unwrap();
        let hex = size_line
            .strip_suffix("\r\n")
            .expect("size line ends with CRLF");
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{hex:?}"
        );
        let size = usize::from_str_radix(hex, 16).unwrap();
        let mut data = vec![0; size + 2];
        r.read_exact(&mut data).await.unwrap();
        assert_eq!(&data[size..], b"\r\n", "chunk data ends with CRLF");
        if size == 0 {
            return Some((body, boundaries));
        }
        body.extend_from_slice(&data[..size]);
        boundaries.push(body.len());
    }
}

/// Answers a request read by [`read_raw_request`]: `200`, `X-Spot-Ack: ack`, no commands.
async fn answer_ok(r: &mut BufReader<tokio::net::TcpStream>, ack: u64) {
    r.get_mut()
        .write_all(
            format!("HTTP/1.1 200 OK\r\nX-Spot-Ack: {ack}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn byte_stream_has_spec_head_chunk_framing_and_event_order() {
    for split in [ChunkSplit::Event, ChunkSplit::Random] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut cfg = config(
            &format!("http://{}", listener.local_addr().unwrap()),
            1,
            300.0,
            Some(0.4),
        );
        cfg.uplink.chunk_split = split;
        let (run, _, _stop) = start(&cfg);
        let (sock, _) = listener.accept().await.unwrap();
        let mut r = BufReader::new(sock);
        let mut events = Vec::new();
        let mut mid_event_cuts = 0;
        let mut multi_event_chunks = 0;
        let mut posts = 0;
        while let Some((body, boundaries)) = read_raw_request(&mut r, 200).await {
            posts += 1;
            mid_event_cuts += boundaries
                .iter()
                .filter(|&&b| !body[..b].ends_with(b"\n\n"))
                .count();
            let mut start = 0;
            for &end in &boundaries {
                if body[start..end].windows(2).filter(|w| w == b"\n\n").count() > 1 {
                    multi_event_chunks += 1;
                }
                start = end;
            }
            let mut decoder = Decoder::new(Encoding::Json, Limits::default());
            decoder.feed(&body);
            decoder.finish();
            while let Some(e) = decoder.next_event() {
                events.push(e.expect("well-formed event"));
            }
            let ack = seqs(&events).into_iter().max().unwrap_or(0);
            answer_ok(&mut r, ack).await;
        }
        let summary = run.await.unwrap();
        assert!(posts >= 3, "{split:?}: {posts} posts");
        assert!(matches!(events[0].kind, EventKind::Spot(Action::Create, _)));
        assert!(matches!(
            events[1].kind,
            EventKind::Config(Action::Create, _)
        ));
        assert_eq!(
            (events[0].seq, events[1].seq),
            (None, None),
            "connect messages carry no seq"
        );
        let generated = total(&summary, |s| &s.events_generated);
        assert_eq!(
            generated, 120,
            "300 events/s for 0.4 s, however late the task woke"
        );
        assert_eq!(seqs(&events[2..]), (1..=generated).collect::<Vec<_>>());
        assert_eq!(
            events.len() as u64,
            generated + 2,
            "every other event has a seq"
        );
        assert_eq!(total(&summary, |s| &s.events_acked), generated);
        match split {
            ChunkSplit::Event => {
                assert_eq!(mid_event_cuts, 0, "chunks end at event ends");
                assert_eq!(multi_event_chunks, 0, "one chunk per event");
            }
            ChunkSplit::Random => assert!(mid_event_cuts > 10, "random cuts: {mid_event_cuts}"),
        }
    }
}

fn command(kind: EventKind) -> Event {
    Event::new(kind)
}

#[tokio::test]
async fn commands_are_applied_echoed_and_firmware_is_fetched_and_reported() {
    let shared = Shared::default();
    let server = TestServer::start("127.0.0.1:0".parse().unwrap(), shared.clone()).await;
    let mut update = Config {
        send_hits: Some(true),
        rfid_power_dbm: Some(20),
        ..Config::default()
    };
    update.extra.insert("rfid_near".into(), json!(-600));
    shared.queue(200, command(EventKind::Config(Action::Update, update)));
    shared.queue(
        200,
        command(EventKind::Firmware(
            Action::Update,
            Firmware {
                reset_counters: Some(true),
                ..Default::default()
            },
        )),
    );
    shared.queue(
        200,
        command(EventKind::Firmware(
            Action::Update,
            Firmware {
                url: Some("/firmware/beta/beta22.bin".into()),
                version: Some("beta22".into()),
                ..Default::default()
            },
        )),
    );
    let cfg = config(&server.url(), 1, 200.0, Some(0.8));
    let (run, _, _stop) = start(&cfg);
    let summary = run.await.unwrap();

    let st = shared.state.lock().unwrap();
    let log = &st.spots[&200];
    assert_eq!(st.firmware_downloads, ["/firmware/beta/beta22.bin"]);
    let versions: Vec<_> = log
        .spot_creates
        .iter()
        .map(|e| match &e.kind {
            EventKind::Spot(_, s) => (s.version.clone().unwrap(), s.boot_count.unwrap()),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(versions.first(), Some(&(DEFAULT_FIRMWARE.to_string(), 1)));
    assert_eq!(
        versions.last(),
        Some(&("beta22".to_string(), 1)),
        "counters reset, then one reboot"
    );
    let echo = log
        .events
        .iter()
        .position(|e| matches!(&e.kind, EventKind::Config(Action::Update, c) if c.send_hits == Some(true)))
        .expect("config update echoed");
    let EventKind::Config(_, c) = &log.events[echo].kind else {
        unreachable!()
    };
    assert_eq!(c.rfid_power_dbm, Some(20));
    assert_eq!(c.extra.get("rfid_near"), Some(&json!(-600)));
    assert!(
        log.events[echo].seq.is_some(),
        "the echo is buffered like any event"
    );
    let is_hit = |e: &Event| matches!(e.kind, EventKind::Hit(..));
    assert!(
        !log.events[..echo].iter().any(is_hit),
        "no hits before send_hits"
    );
    assert!(
        log.events[echo..].iter().filter(|e| is_hit(e)).count() > 20,
        "hits after send_hits"
    );
    let t = summary.total();
    assert_eq!(t.commands_applied.load(Relaxed), 3);
    assert_eq!(t.firmware_updates.load(Relaxed), 1);
    assert_eq!(
        t.events_acked.load(Relaxed),
        t.events_generated.load(Relaxed)
    );
}

fn assert_each_event_stored_once(
    st: &State,
    serials: impl Iterator<Item = u64>,
    generated: &[u64],
) {
    for (serial, &n) in serials.zip(generated) {
        let log = &st.spots[&serial];
        let s = seqs(&log.events);
        assert_eq!(
            s.len() as u64,
            n,
            "spot {serial}: stored {} of {n}",
            s.len()
        );
        assert_eq!(
            s,
            (1..=n).collect::<Vec<_>>(),
            "spot {serial}: in order, once each"
        );
        let epochs: HashSet<_> = log
            .spot_creates
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Spot(_, s) => s.seq_epoch,
                _ => None,
            })
            .collect();
        assert_eq!(epochs.len(), 1, "spot {serial}: one epoch");
    }
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn server_killed_and_restarted_mid_run_loses_and_duplicates_nothing() {
    let shared = Shared::default();
    let server = TestServer::start("127.0.0.1:0".parse().unwrap(), shared.clone()).await;
    let addr = server.addr;
    let cfg = config(&server.url(), 3, 300.0, Some(1.5));
    let (run, stats, _stop) = start(&cfg);
    shared
        .wait_for(|st| {
            st.spots.values().map(|l| l.events.len()).sum::<usize>() >= 150 && st.uncommitted >= 20
        })
        .await;
    server.kill().await;
    wait_until(|| stats.iter().all(|s| s.reconnects.load(Relaxed) >= 2)).await;
    let _server = TestServer::start(addr, shared.clone()).await;
    let summary = run.await.unwrap();

    let generated: Vec<u64> = summary
        .reports
        .iter()
        .map(|r| r.stats.events_generated.load(Relaxed))
        .collect();
    assert_eq!(
        total(&summary, |s| &s.events_acked),
        generated.iter().sum::<u64>()
    );
    assert!(
        total(&summary, |s| &s.events_resent) > 0,
        "nothing in flight: {:#}",
        summary.to_json()["total"]
    );
    let st = shared.state.lock().unwrap();
    assert_each_event_stored_once(&st, 200.., &generated);
}

#[tokio::test]
async fn emulator_killed_and_restarted_with_its_buffer_loses_nothing() {
    let shared = Shared::default();
    let server = TestServer::start("127.0.0.1:0".parse().unwrap(), shared.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&server.url(), 2, 300.0, None);
    cfg.buffer_dir = Some(dir.path().to_path_buf());

    let (run, stats, _stop) = start(&cfg);
    shared
        .wait_for(|st| st.spots.values().map(|l| l.events.len()).sum::<usize>() >= 200)
        .await;
    // The server goes down first, so no ack can come; the spots buffer; then the emulator
    // is killed: every spot task is dropped where it stands (its files are what kill -9 leaves).
    let addr = server.addr;
    server.kill().await;
    wait_until(|| stats.iter().all(|s| s.events_buffered.load(Relaxed) > 0)).await;
    run.abort();
    let _ = run.await;
    let first: Vec<u64> = stats
        .iter()
        .map(|s| s.events_generated.load(Relaxed))
        .collect();
    for serial in [200, 201] {
        let dir = dir.path().join(format!("spot-{serial}"));
        let (buffer, recovery) =
            SpotBuffer::open(&dir, BufferLimits::default(), || unreachable!()).unwrap();
        assert!(
            recovery.records > 0,
            "spot {serial}: the kill left events unacknowledged on disk"
        );
        assert_eq!(buffer.next_seq() - 1, first[serial as usize - 200]);
    }
    let _server = TestServer::start(addr, shared.clone()).await;

    cfg.duration = Some(Duration::from_secs_f64(0.5));
    let (run, _, _stop) = start(&cfg);
    let summary = run.await.unwrap();
    let generated: Vec<u64> = summary
        .reports
        .iter()
        .zip(&first)
        .map(|(r, a)| a + r.stats.events_generated.load(Relaxed))
        .collect();
    assert_eq!(total(&summary, |s| &s.events_buffered), 0);
    let st = shared.state.lock().unwrap();
    assert_each_event_stored_once(&st, 200.., &generated);
    let boots: Vec<i64> = st.spots[&200]
        .spot_creates
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Spot(_, s) => s.boot_count,
            _ => None,
        })
        .collect();
    assert_eq!(boots.first(), Some(&1));
    assert_eq!(boots.last(), Some(&2), "boot_count grows each run");
}

#[tokio::test]
async fn injected_faults_are_counted_and_still_nothing_is_lost_or_doubled() {
    let shared = Shared::default();
    let server = TestServer::start("127.0.0.1:0".parse().unwrap(), shared.clone()).await;
    let mut cfg = config(&server.url(), 2, 300.0, Some(1.5));
    for spec in [
        "cut-mid-chunk:0.4",
        "stall:0.4:150",
        "burst:0.4:300",
        "malformed:0.05",
    ] {
        cfg.uplink.faults.add(spec).unwrap();
    }
    let (run, _, _stop) = start(&cfg);
    let summary = run.await.unwrap();
    let t = summary.total();
    for (name, n) in [
        ("cuts", &t.fault_cuts_mid_chunk),
        ("stalls", &t.fault_stalls),
        ("bursts", &t.fault_bursts),
        ("malformed", &t.fault_malformed),
    ] {
        assert!(n.load(Relaxed) > 0, "no {name} injected");
    }
    assert!(t.fault_burst_events.load(Relaxed) >= 300);
    let generated: Vec<u64> = summary
        .reports
        .iter()
        .map(|r| r.stats.events_generated.load(Relaxed))
        .collect();
    assert_eq!(t.events_acked.load(Relaxed), generated.iter().sum::<u64>());
    let st = shared.state.lock().unwrap();
    assert_each_event_stored_once(&st, 200.., &generated);
    let malformed_seen: u64 = st.spots.values().map(|l| l.malformed).sum();
    assert!(malformed_seen > 0 && malformed_seen <= t.fault_malformed.load(Relaxed));
}

#[tokio::test]
async fn raw_tcp_streams_events_and_takes_acks_and_commands_from_the_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = config(&format!("http://{addr}"), 1, 300.0, Some(0.5));
    cfg.uplink.server = ServerAddr::raw_tcp(&addr.to_string()).unwrap();
    cfg.uplink.raw_tcp = true;
    let (run, _, _stop) = start(&cfg);
    let (mut sock, _) = listener.accept().await.unwrap();
    let update = Config {
        send_hits: Some(true),
        ..Config::default()
    };
    let mut command = Vec::new();
    spot_protocol::Encoder::new(Encoding::Json).encode(
        &Event::new(EventKind::Config(Action::Update, update)),
        &mut command,
    );
    sock.write_all(&command).await.unwrap();

    let mut decoder = Decoder::new(Encoding::Json, Limits::default());
    let mut events = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut last_ack = 0;
    loop {
        let n = sock.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        decoder.feed(&buf[..n]);
        while let Some(e) = decoder.next_event() {
            events.push(e.expect("well-formed event"));
        }
        let ack = seqs(&events).into_iter().max().unwrap_or(0);
        if ack > last_ack {
            last_ack = ack;
            let frame = format!(
                "[\"ack\",\"update\",{{\"seq\":{ack},\"time\":\"2026-01-01T00:00:00Z\"}}]\n\n"
            );
            sock.write_all(frame.as_bytes()).await.unwrap();
        }
    }
    let summary = run.await.unwrap();
    assert!(matches!(events[0].kind, EventKind::Spot(Action::Create, _)));
    assert!(matches!(
        events[1].kind,
        EventKind::Config(Action::Create, _)
    ));
    let generated = total(&summary, |s| &s.events_generated);
    assert_eq!(seqs(&events), (1..=generated).collect::<Vec<_>>());
    assert_eq!(total(&summary, |s| &s.events_acked), generated);
    assert_eq!(total(&summary, |s| &s.commands_applied), 1);
    assert!(events.iter().any(
        |e| matches!(&e.kind, EventKind::Config(Action::Update, c) if c.send_hits == Some(true))
    ));
    assert!(events.iter().any(|e| matches!(e.kind, EventKind::Hit(..))));
}

#[tokio::test]
async fn telnet_serves_the_raw_stream_with_online_messages() {
    let shared = Shared::default();
    let server = TestServer::start("127.0.0.1:0".parse().unwrap(), shared.clone()).await;
    let cfg = config(&server.url(), 1, 300.0, Some(0.6));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = fleet::prepare(&cfg, &stop_rx).unwrap();
    let bound = fleet::bind_telnet(&mut tasks, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let run = tokio::spawn(fleet::run(tasks, false));
    let mut client = tokio::net::TcpStream::connect(bound[0].1).await.unwrap();
    let mut decoder = Decoder::new(Encoding::Json, Limits::default());
    let mut events: Vec<Event> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let online =
        |e: &Event| matches!(&e.kind, EventKind::Spot(Action::Update, s) if s.online == Some(true));
    while events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Presence(..)))
        .count()
        < 20
        || !events.iter().any(online)
    {
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "telnet closed early");
        decoder.feed(&buf[..n]);
        while let Some(e) = decoder.next_event() {
            events.push(e.expect("well-formed"));
        }
    }
    assert!(matches!(events[0].kind, EventKind::Spot(Action::Create, _)));
    assert!(matches!(
        events[1].kind,
        EventKind::Config(Action::Create, _)
    ));
    let telnet_seqs = seqs(&events);
    assert!(
        telnet_seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, none skipped"
    );
    drop(stop_tx);
    let summary = run.await.unwrap();
    assert_eq!(total(&summary, |s| &s.telnet_clients), 1);
}

#[tokio::test]
async fn replay_sends_the_recorded_events_then_ends() {
    let shared = Shared::default();
    let server = TestServer::start("127.0.0.1:0".parse().unwrap(), shared.clone()).await;
    let recording = Arc::new(Recording::parse(TELNET_SPOT201));
    let mut cfg = config(&server.url(), 1, 0.0, None);
    cfg.replay = Some((recording.clone(), ReplayTiming::Rate));
    let (run, _, _stop) = start(&cfg);
    let summary = run.await.unwrap();
    assert_eq!(total(&summary, |s| &s.events_generated), 5);
    assert_eq!(total(&summary, |s| &s.events_acked), 5);
    let st = shared.state.lock().unwrap();
    let stored: Vec<Event> = st.spots[&200]
        .events
        .iter()
        .filter(|e| e.seq.is_some())
        .map(|e| Event {
            seq: None,
            ..e.clone()
        })
        .collect();
    assert_eq!(stored, recording.events);
}

#[tokio::test]
async fn protobuf_encoding_carries_events_and_commands() {
    for raw_tcp in [false, true] {
        let shared = Shared::default();
        let server = TestServer::start("127.0.0.1:0".parse().unwrap(), shared.clone()).await;
        let update = Config {
            send_hits: Some(true),
            ..Config::default()
        };
        shared.queue(200, Event::new(EventKind::Config(Action::Update, update)));
        let mut cfg = config(&server.url(), 1, 300.0, Some(0.5));
        cfg.uplink.encoding = Encoding::Protobuf;
        if raw_tcp {
            // The test server speaks HTTP only: raw TCP with protobuf is checked on the bytes.
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            cfg.uplink.server = ServerAddr::raw_tcp(&addr.to_string()).unwrap();
            cfg.uplink.raw_tcp = true;
            cfg.duration = Some(Duration::from_secs_f64(0.2));
            cfg.uplink.drain_ms = 0;
            let (run, _, _stop) = start(&cfg);
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut bytes = Vec::new();
            sock.read_to_end(&mut bytes).await.unwrap();
            run.await.unwrap();
            assert_eq!(
                bytes[0], 0,
                "a protobuf raw stream starts with one zero-length frame"
            );
            let mut decoder = Decoder::new(Encoding::Protobuf, Limits::default());
            decoder.feed(&bytes);
            decoder.finish();
            let events: Vec<Event> = std::iter::from_fn(|| decoder.next_event())
                .map(|e| e.expect("well-formed"))
                .collect();
            assert!(matches!(events[0].kind, EventKind::Spot(Action::Create, _)));
            assert!(seqs(&events).len() > 10);
            continue;
        }
        let (run, _, _stop) = start(&cfg);
        let summary = run.await.unwrap();
        let generated = total(&summary, |s| &s.events_generated);
        assert_eq!(total(&summary, |s| &s.events_acked), generated);
        assert_eq!(total(&summary, |s| &s.commands_applied), 1);
        let st = shared.state.lock().unwrap();
        assert_each_event_stored_once(&st, 200.., &[generated]);
        assert!(st.spots[&200]
            .events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Hit(..))));
    }
}

/// A backlog does not go out as one huge POST: each body carries at most `max_post_bytes` of
/// buffered events (the last one may overflow it), and the POST ends then, long before
/// `post_ms`, so that an overloaded server can take what one POST left in the socket
/// buffers before the spot's response timeout.
#[tokio::test]
async fn post_bodies_are_bounded_by_max_post_bytes() {
    const CAP: usize = 8 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(
        &format!("http://{}", listener.local_addr().unwrap()),
        1,
        2000.0,
        Some(0.3),
    );
    cfg.uplink.post_ms = 3_000;
    cfg.uplink.max_post_bytes = CAP;
    let (run, _, _stop) = start(&cfg);
    let (sock, _) = listener.accept().await.unwrap();
    let mut r = BufReader::new(sock);
    let mut seqs_seen = Vec::new();
    let mut posts = 0;
    while let Some((body, boundaries)) = read_raw_request(&mut r, 200).await {
        posts += 1;
        // One chunk per event (ChunkSplit::Event): the buffered events' sizes.
        let (mut start, mut event_bytes, mut last) = (0, 0, 0);
        for &end in &boundaries {
            let mut decoder = Decoder::new(Encoding::Json, Limits::default());
            decoder.feed(&body[start..end]);
            decoder.finish();
            let event = decoder.next_event().unwrap().expect("one event per chunk");
            if let Some(seq) = event.seq {
                seqs_seen.push(seq);
                event_bytes += end - start;
                last = end - start;
            }
            start = end;
        }
        assert!(
            event_bytes - last < CAP,
            "POST {posts}: {event_bytes} bytes of buffered events, cap {CAP}"
        );
        answer_ok(&mut r, seqs_seen.last().copied().unwrap_or(0)).await;
    }
    let summary = run.await.unwrap();
    let generated = total(&summary, |s| &s.events_generated);
    assert_eq!(generated, 600);
    assert_eq!(
        seqs_seen,
        (1..=generated).collect::<Vec<_>>(),
        "each event once, in order"
    );
    assert!(
        posts >= 10,
        "{posts} posts: full bodies end their POST before post_ms"
    );
}
