//! `spot serve` as a process: kill -9 loses no acknowledged event; SIGTERM finishes the
//! in-flight POST and exits 0; it runs without transparent huge pages.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use test_support::free_port;
use test_support::http::{chunk, get_json};
use test_support::process::spawn_serve;

const SPOT: &str = env!("CARGO_BIN_EXE_spot");

/// Sends SIGTERM to the server.
fn sigterm(server: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until nothing accepts connections on `port` any more (a stop began).
fn wait_until_not_accepting(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads one response (the server always sends Content-Length); returns (status, head, body).
fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut tmp)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            return Ok((status, head, buf[end + 4..end + 4 + len].to_vec()));
        }
        let n = stream.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

const HEAD: &str = "POST /api/spots/900/events/ HTTP/1.1\r\nHost: t\r\n\
                    Transfer-Encoding: chunked\r\nContent-Type: text/x-intellifi-events\r\n\r\n";

fn code(seq: u64) -> String {
    format!("{seq:024x}")
}

fn presence(seq: u64) -> String {
    format!(
        "[\"presence\",\"create\",{{\"item_code\":\"{}\",\"item_codetype\":\"EPC Gen2\",\
         \"proximity\":\"near\",\"seq\":{seq}}}]\n\n",
        code(seq)
    )
}

#[test]
fn kill_9_then_restart_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = spawn_serve(SPOT, dir.path(), port, &[]);
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let acked = acked.clone();
        let stop = stop.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_nodelay(true)?;
            let mut seq = 0;
            let mut first = true;
            while !stop.load(Ordering::Relaxed) {
                let mut req = HEAD.as_bytes().to_vec();
                if first {
                    req.extend(chunk(
                        b"[\"spot\",\"create\",{\"spot_id\":900,\"seq_epoch\":77}]\n\n",
                    ));
                    first = false;
                }
                for _ in 0..50 {
                    seq += 1;
                    req.extend(chunk(presence(seq).as_bytes()));
                }
                req.extend_from_slice(b"0\r\n\r\n");
                s.write_all(&req)?;
                let (status, head, _) = read_response(&mut s)?;
                assert_eq!(status, 200);
                let ack: u64 = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-spot-ack:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("X-Spot-Ack");
                assert_eq!(ack, seq, "a 200 acknowledges the whole POST");
                acked.store(ack, Ordering::SeqCst);
            }
            Ok(())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) < 1_000 {
        assert!(Instant::now() < deadline, "no progress");
        assert!(!client.is_finished(), "client failed: {:?}", client.join());
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill().expect("kill -9"); // SIGKILL on Unix
    server.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let _ = client.join(); // it fails on the dead connection
    let last_ack = acked.load(Ordering::SeqCst);
    assert!(last_ack >= 1_000);

    let mut server = spawn_serve(SPOT, dir.path(), port, &[]);
    let spot = get_json(port, "/api/spots/900");
    assert!(
        spot["acked_seq"].as_u64().unwrap() >= last_ack,
        "stored {} < acknowledged {last_ack}",
        spot["acked_seq"]
    );
    // Rows are flushed every few seconds; what came after is rebuilt from the journal.
    assert!(
        spot["event_counter"].as_u64().unwrap() > last_ack,
        "event_counter {} counts the spot create and every acknowledged presence ({last_ack})",
        spot["event_counter"]
    );
    let items = get_json(
        port,
        "/api/items?limit=10000&results_only=true&sort=code_hex",
    );
    let codes: std::collections::HashSet<String> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code_hex"].as_str().unwrap().to_string())
        .collect();
    for seq in 1..=last_ack {
        assert!(codes.contains(&code(seq)), "acknowledged event {seq} lost");
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn sigterm_finishes_the_in_flight_post_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = spawn_serve(SPOT, dir.path(), port, &[]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(HEAD.as_bytes()).unwrap();
    s.write_all(&chunk(
        b"[\"spot\",\"create\",{\"spot_id\":900,\"seq_epoch\":1}]\n\n",
    ))
    .unwrap();
    s.write_all(&chunk(presence(1).as_bytes())).unwrap();
    // The POST is in flight once its first event is visible (a connection whose request
    // head was not read yet counts as idle and is simply closed).
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_json(port, "/api/presences")["results"]
        .as_array()
        .is_none_or(|r| r.is_empty())
    {
        assert!(Instant::now() < deadline, "POST not applied");
        std::thread::sleep(Duration::from_millis(5));
    }
    sigterm(&server);
    // Wait until the server stopped accepting, then finish the POST.
    wait_until_not_accepting(port);
    s.write_all(&chunk(presence(2).as_bytes())).unwrap();
    s.write_all(b"0\r\n\r\n").unwrap();
    let (status, head, _) = read_response(&mut s).unwrap();
    assert_eq!(status, 200);
    assert!(head.contains("x-spot-ack: 2"), "{head}");
    let exit = server.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

/// The reported bug: under load a SIGTERM left the process alive and a second instance took
/// the port (and would have shared the data directory). Now: the port closes at once, a
/// second instance on the same data refuses to start, the first exits 0 after the grace.
#[test]
fn sigterm_under_load_exits_0_after_the_grace_and_no_second_server_shares_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = spawn_serve(
        SPOT,
        dir.path(),
        port,
        &["--shutdown-grace".as_ref(), "3".as_ref()],
    );
    // Load: spots posting back to back, and one POST that never ends its body.
    let stop = Arc::new(AtomicBool::new(false));
    let posted = Arc::new(AtomicU64::new(0));
    let loaders: Vec<_> = (0..8u64)
        .map(|i| {
            let (stop, posted) = (stop.clone(), posted.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut s = TcpStream::connect(("127.0.0.1", port))?;
                let head = HEAD.replace("/900/", &format!("/{}/", 910 + i));
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut req = head.as_bytes().to_vec();
                    for _ in 0..20 {
                        seq += 1;
                        req.extend(chunk(presence(seq + 1000 * i).as_bytes()));
                    }
                    req.extend_from_slice(b"0\r\n\r\n");
                    s.write_all(&req)?;
                    read_response(&mut s)?;
                    posted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let mut held = TcpStream::connect(("127.0.0.1", port)).unwrap();
    held.write_all(HEAD.as_bytes()).unwrap();
    held.write_all(&chunk(presence(999_999).as_bytes()))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while posted.load(Ordering::Relaxed) < 40 {
        assert!(Instant::now() < deadline, "no load progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    sigterm(&server);
    wait_until_not_accepting(port);
    // The port is free, but the data directory is not.
    let mut second = Command::new(env!("CARGO_BIN_EXE_spot"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let second_status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            second.kill().unwrap();
            second.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Only meaningful while the first is still stopping (its grace is 3 s).
    if server.try_wait().unwrap().is_none() {
        let status = second_status.expect("a second server started and kept running");
        assert!(!status.success(), "a second server started");
        let mut stderr = String::new();
        second
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(stderr.contains("in use by another spot server"), "{stderr}");
    }
    stop.store(true, Ordering::Relaxed);
    let exit = server.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    for loader in loaders {
        let _ = loader.join();
    }
    let mut third = spawn_serve(SPOT, dir.path(), port, &[]);
    let items = get_json(port, "/api/items?results_only=true&limit=10000");
    assert!(items.as_array().unwrap().len() >= 40 * 20);
    third.kill().unwrap();
    third.wait().unwrap();
}

#[test]
fn an_environment_variable_beats_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let (file_port, env_port) = (free_port(), free_port());
    let config = dir.path().join("spot.toml");
    let data = dir.path().join("from-file");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{file_port}\"\ndata = {:?}\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_spot"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("SPOT_LISTEN", format!("127.0.0.1:{env_port}"))
        .env_remove("SPOT_DATA")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", env_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "not listening on the env address"
        );
        assert!(server.try_wait().unwrap().is_none(), "server exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(TcpStream::connect(("127.0.0.1", file_port)).is_err());
    // The port is bound before the data directory is opened: wait for the store.
    while !data.join("spot.db").exists() {
        assert!(Instant::now() < deadline, "data directory from the file");
        assert!(server.try_wait().unwrap().is_none(), "server exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

/// `spot serve --pull` against a real peer: `spot emulate --telnet`, whose own uplink points
/// at a dead address, so everything the server gets came through the pulled telnet stream.
/// The server starts first (its dials are refused until the emulator listens).
#[test]
fn serve_pulls_an_emulated_spots_telnet_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (port, telnet_port, dead_port) = (free_port(), free_port(), free_port());
    let mut server = Command::new(env!("CARGO_BIN_EXE_spot"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--pull", &format!("127.0.0.1:{telnet_port}"), "--data"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut emulator = Command::new(env!("CARGO_BIN_EXE_spot"))
        .args([
            "emulate",
            "--server",
            &format!("http://127.0.0.1:{dead_port}"),
        ])
        .args(["--telnet", &format!("127.0.0.1:{telnet_port}")])
        .args(["--spots", "1", "--first-serial", "77", "--rate", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no pulled events");
        assert!(emulator.try_wait().unwrap().is_none(), "emulator exited");
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            test_support::http::remember_key(port, dir.path());
            let spots = get_json(port, "/api/spots?serial_number=77&results_only=true");
            if spots[0]["event_counter"].as_u64().unwrap_or(0) >= 10 {
                assert_eq!(spots[0]["is_online"], true);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    emulator.kill().unwrap();
    emulator.wait().unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn a_second_sigterm_during_the_grace_period_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_spot"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--shutdown-grace", "3600", "--data"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    test_support::http::remember_key(port, dir.path());
    // A POST that never ends keeps the first stop waiting for the (hour-long) grace.
    let mut held = TcpStream::connect(("127.0.0.1", port)).unwrap();
    held.write_all(HEAD.as_bytes()).unwrap();
    held.write_all(&chunk(presence(1).as_bytes())).unwrap();
    while get_json(port, "/api/presences")["results"]
        .as_array()
        .is_none_or(|r| r.is_empty())
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    sigterm(&server);
    wait_until_not_accepting(port);
    assert!(
        server.try_wait().unwrap().is_none(),
        "waits for the held POST"
    );
    sigterm(&server);
    let exit = server.wait().unwrap();
    assert_eq!(exit.code(), Some(1), "a forced stop is not a clean exit");
}

/// `spot serve` runs without transparent huge pages (they bloated its resident set), unless
/// `MIMALLOC_ALLOW_THP` hands the choice to mimalloc.
#[cfg(target_os = "linux")]
#[test]
fn serve_runs_without_transparent_huge_pages_unless_mimalloc_is_asked() {
    let thp_enabled = |child: &std::process::Child| {
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_string())
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = spawn_serve(SPOT, dir.path(), port, &[]);
    let off = thp_enabled(&server);
    server.kill().unwrap();
    server.wait().unwrap();
    let Some(off) = off else {
        return; // a kernel without the THP_enabled line (before 5.0): nothing to check
    };
    assert_eq!(off, "0", "THP off by default");

    let port = free_port();
    let mut server = Command::new(SPOT)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.path())
        .env("MIMALLOC_ALLOW_THP", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    test_support::process::wait_listening(port, "spot serve");
    let on = thp_enabled(&server);
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(on.as_deref(), Some("1"), "left to mimalloc when asked");
}
