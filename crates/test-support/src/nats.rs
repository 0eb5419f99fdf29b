//! Real NATS servers with JetStream for the cluster-mode tests: `n` Debian `nats-server -js`
//! processes on free loopback ports, each with its own config file, store directory and
//! log file in one temp directory, clustered over routes (cluster `spotc`). Plain child
//! processes, usable from synchronous tests; a server can be killed (`SIGKILL`) and started
//! again on the same ports and store; all are killed when the [`NatsCluster`] is dropped.
//!
//! Readiness is read from each server's monitoring port over plain HTTP/1.0: `/healthz`
//! (which, with JetStream on, answers `200` only once the server is in contact with a
//! JetStream meta leader) and `/jsz` (`meta_cluster.leader` and the leader's view of its
//! peers), see [`NatsCluster::wait_js_ready`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Debian's `nats-server` (package `nats-server`, installed by `.ci/run`).
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// How long [`NatsCluster::start`] and [`NatsCluster::restart`] wait for JetStream, and
/// [`NatsCluster::wait_stream_ready`] for a stream.
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// How long [`NatsCluster::request`] waits for its reply.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One server of the cluster: its ports and files, and its process while it runs.
struct Server {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// `n` clustered `nats-server -js` processes on loopback; killed when dropped.
pub struct NatsCluster {
    servers: Vec<Server>,
    /// Configs, stores and logs; removed after the servers are killed.
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` servers (normally 3) named `n0`, `n1`, … with JetStream, clustered over
    /// routes when `n > 1` (a lone server runs standalone), and returns once every server
    /// answers and JetStream is ready ([`NatsCluster::wait_js_ready`]). Panics after 20 s
    /// with each unready server's state and log tail.
    pub fn start(n: usize) -> Self {
        assert!(n >= 1, "a NATS cluster of {n} servers");
        assert!(
            std::path::Path::new(NATS_SERVER).exists(),
            "{NATS_SERVER} is missing: install Debian's nats-server (.ci/run does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("nats-cluster")
            .tempdir()
            .expect("create the NATS cluster's temp dir");
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (crate::free_port(), crate::free_port(), crate::free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster, _)| format!("\"nats-route://127.0.0.1:{cluster}\""))
            .collect();
        let mut servers = Vec::with_capacity(n);
        for (i, &(client_port, cluster_port, monitor_port)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.path().join(format!("{name}-store"));
            let cluster = if n > 1 {
                format!(
                    "cluster {{\n  name: spotc\n  listen: \"127.0.0.1:{cluster_port}\"\n  \
                     routes: [{}]\n}}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let text = format!(
                "server_name: {name}\nlisten: \"127.0.0.1:{client_port}\"\n\
                 http: \"127.0.0.1:{monitor_port}\"\n\
                 jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  \
                 max_file_store: 1GB\n}}\n{cluster}",
                store.display()
            );
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config, text).expect("write a nats-server config");
            servers.push(Server {
                log: dir.path().join(format!("{name}.log")),
                name,
                client_port,
                monitor_port,
                config,
                child: None,
            });
        }
        let mut cluster = Self { servers, _dir: dir };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_js_ready();
        cluster
    }

    /// One standalone server with JetStream ([`NatsCluster::start`] with 1).
    pub fn single() -> Self {
        Self::start(1)
    }

    /// How many servers the cluster has (running or killed).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Never: a cluster has at least one server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Every server's client URL, comma-separated, as `spot serve --nats` takes them:
    /// `nats://127.0.0.1:p0,nats://127.0.0.1:p1,…`.
    pub fn urls(&self) -> String {
        (0..self.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Server `i`'s client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// Server `i`'s client port.
    pub fn client_port(&self, i: usize) -> u16 {
        self.servers[i].client_port
    }

    /// Server `i`'s monitoring (HTTP) port: `/varz`, `/jsz`, `/healthz`, …
    pub fn monitor_port(&self, i: usize) -> u16 {
        self.servers[i].monitor_port
    }

    /// Server `i`'s `server_name` (`n0`, `n1`, …).
    pub fn name(&self, i: usize) -> &str {
        &self.servers[i].name
    }

    /// Whether server `i` runs (was not killed, or was restarted since).
    pub fn is_running(&self, i: usize) -> bool {
        self.servers[i].child.is_some()
    }

    /// Kills server `i` with `SIGKILL` (no clean shutdown, as a machine dying) and reaps
    /// it; its ports and store stay for [`NatsCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        let mut child = self.servers[i]
            .child
            .take()
            .unwrap_or_else(|| panic!("kill nats server {i}: it is not running"));
        child.kill().expect("SIGKILL a nats-server");
        child.wait().expect("reap a nats-server");
    }

    /// Starts server `i` again (after [`NatsCluster::kill`]) with the same config, ports
    /// and store directory; returns once it and the cluster are JetStream-ready again.
    pub fn restart(&mut self, i: usize) {
        assert!(
            !self.is_running(i),
            "restart nats server {i}: it is still running (kill it first)"
        );
        self.spawn(i);
        self.wait_js_ready();
    }

    /// Waits (20 s at most) until JetStream can be used on every running server: each
    /// answers `/healthz` with `200`, and, clustered, each reports the same non-empty
    /// `meta_cluster.leader` in `/jsz`, that leader is a running server, and the leader
    /// sees every other running server as a current peer (so a stream with as many
    /// replicas as running servers can be created). Panics with each server's state and
    /// log tail when the deadline passes, or when a server has exited.
    pub fn wait_js_ready(&self) {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let problem = match self.js_problem() {
                None => return,
                Some(problem) => problem,
            };
            if Instant::now() >= deadline {
                panic!(
                    "NATS cluster not JetStream-ready after {READY_DEADLINE:?}: {problem}\n{}",
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (20 s at most) until the replicated stream `stream` has a leader among the
    /// running servers and every running server that holds a replica is current: after a
    /// [`NatsCluster::kill`], the meta group may be ready
    /// ([`NatsCluster::wait_js_ready`]) while the stream still elects a new leader and
    /// publishes to it go unanswered. Panics with the last stream info (or why there was
    /// none) when the deadline passes.
    pub fn wait_stream_ready(&self, stream: &str) {
        let deadline = Instant::now() + READY_DEADLINE;
        let subject = format!("$JS.API.STREAM.INFO.{stream}");
        loop {
            let problem = match (0..self.len()).find(|&i| self.is_running(i)) {
                None => "no server is running".to_string(),
                Some(via) => {
                    let port = self.servers[via].client_port;
                    match nats_request(port, &subject, b"", Duration::from_secs(1)) {
                        Err(e) => e,
                        Ok(reply) => match self.stream_problem(&reply) {
                            None => return,
                            Some(problem) => problem,
                        },
                    }
                }
            };
            if Instant::now() >= deadline {
                panic!("stream {stream} not ready after {READY_DEADLINE:?}: {problem}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Why a stream's info `reply` shows it not ready on the running servers, or `None`.
    fn stream_problem(&self, reply: &[u8]) -> Option<String> {
        let info: Value = match serde_json::from_slice(reply) {
            Ok(info) => info,
            Err(e) => return Some(format!("stream info is not JSON ({e})")),
        };
        if info.get("error").is_some() {
            return Some(format!("stream info: {info}"));
        }
        if self.len() == 1 {
            return None;
        }
        let cluster = &info["cluster"];
        let leader = cluster["leader"].as_str().unwrap_or("");
        let running = |name: &str| {
            self.servers
                .iter()
                .any(|s| s.name == name && s.child.is_some())
        };
        if !running(leader) {
            return Some(format!("no running stream leader: {cluster}"));
        }
        let replicas = cluster["replicas"].as_array().cloned().unwrap_or_default();
        for replica in &replicas {
            let name = replica["name"].as_str().unwrap_or("");
            if running(name) && replica["current"] != true {
                return Some(format!("replica {name} is not current: {cluster}"));
            }
        }
        None
    }

    /// The index of the server that is the JetStream meta leader now, as server 0 (or the
    /// first running one) reports it; `None` while there is none, or standalone.
    pub fn meta_leader(&self) -> Option<usize> {
        let asked = (0..self.len()).find(|&i| self.is_running(i))?;
        let jsz = self.jsz(asked).ok()?;
        let leader = jsz["meta_cluster"]["leader"].as_str()?;
        self.servers.iter().position(|s| s.name == leader)
    }

    /// Server `i`'s `/jsz` monitoring document (JetStream's state), or what went wrong
    /// reading it.
    pub fn jsz(&self, i: usize) -> Result<Value, String> {
        let (status, body) = monitor_get(self.servers[i].monitor_port, "/jsz")?;
        if status != 200 {
            return Err(format!("/jsz answered {status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("/jsz is not JSON ({e}): {body}"))
    }

    /// Sends `payload` to `subject` through server `i` as a NATS request (core protocol,
    /// no client crate) and returns the reply's payload, or what went wrong (no reply
    /// within 5 s, an `-ERR`). While nobody listens on `subject` (no responders) it asks
    /// again every 50 ms within those 5 s. For a synchronous test's look at JetStream: `$JS.API.…`
    /// calls (`$JS.API.STREAM.CREATE.<name>`, `$JS.API.STREAM.INFO.<name>`), or a publish
    /// to a stream's subject, answered with JetStream's acknowledgement.
    pub fn request(&self, i: usize, subject: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
        nats_request(
            self.servers[i].client_port,
            subject,
            payload,
            REQUEST_TIMEOUT,
        )
    }

    /// [`NatsCluster::request`] with a JSON reply, parsed.
    pub fn request_json(&self, i: usize, subject: &str, payload: &[u8]) -> Result<Value, String> {
        let reply = self.request(i, subject, payload)?;
        serde_json::from_slice(&reply).map_err(|e| {
            format!(
                "{subject}: the reply is not JSON ({e}): {}",
                String::from_utf8_lossy(&reply)
            )
        })
    }

    /// The last `lines` lines server `i` logged (all its runs).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.servers[i].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts server `i`'s process, its stderr (the log) appended to its log file.
    fn spawn(&mut self, i: usize) {
        let server = &mut self.servers[i];
        let log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&server.log)
            .expect("open a nats-server log file");
        let child = Command::new(NATS_SERVER)
            .arg("-js")
            .arg("-c")
            .arg(&server.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {NATS_SERVER} for {}: {e}", server.name));
        server.child = Some(child);
    }

    /// Why JetStream is not ready yet on the running servers, or `None` when it is.
    fn js_problem(&self) -> Option<String> {
        let running: Vec<usize> = (0..self.len()).filter(|&i| self.is_running(i)).collect();
        if running.is_empty() {
            return Some("no server is running".into());
        }
        let mut leaders = Vec::new();
        for &i in &running {
            let name = &self.servers[i].name;
            if self.has_exited(i) {
                return Some(format!("{name} has exited"));
            }
            match monitor_get(self.servers[i].monitor_port, "/healthz") {
                Ok((200, _)) => {}
                Ok((status, body)) => return Some(format!("{name} /healthz: {status} {body}")),
                Err(e) => return Some(format!("{name} /healthz: {e}")),
            }
            if self.len() == 1 {
                return None;
            }
            let jsz = match self.jsz(i) {
                Ok(jsz) => jsz,
                Err(e) => return Some(format!("{name} {e}")),
            };
            match jsz["meta_cluster"]["leader"].as_str() {
                Some(leader) if !leader.is_empty() => leaders.push((i, leader.to_string())),
                _ => return Some(format!("{name} knows no meta leader")),
            }
        }
        let leader = leaders[0].1.clone();
        if let Some((i, other)) = leaders.iter().find(|(_, l)| *l != leader) {
            return Some(format!(
                "{} says the meta leader is {other}, {} says {leader}",
                self.servers[*i].name, self.servers[leaders[0].0].name
            ));
        }
        let Some(leader_index) = running
            .iter()
            .copied()
            .find(|&i| self.servers[i].name == leader)
        else {
            return Some(format!("the meta leader {leader} is not running (stale)"));
        };
        let jsz = match self.jsz(leader_index) {
            Ok(jsz) => jsz,
            Err(e) => return Some(format!("{leader} {e}")),
        };
        let replicas = jsz["meta_cluster"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for &i in &running {
            let name = &self.servers[i].name;
            if i == leader_index {
                continue;
            }
            let current = replicas
                .iter()
                .any(|r| r["name"] == name.as_str() && r["current"] == true);
            if !current {
                return Some(format!(
                    "the meta leader {leader} does not see {name} current"
                ));
            }
        }
        None
    }

    /// Whether server `i`'s process has ended by itself (a zombie or gone: read from
    /// `/proc`, so that `&self` can tell).
    fn has_exited(&self, i: usize) -> bool {
        let Some(child) = &self.servers[i].child else {
            return false;
        };
        match std::fs::read_to_string(format!("/proc/{}/stat", child.id())) {
            // After the ")" closing the command name comes the state letter.
            Ok(stat) => stat[stat.rfind(')').map_or(0, |p| p + 2)..].starts_with('Z'),
            Err(_) => true,
        }
    }

    /// Each server's state and log tail, for a panic message.
    fn report(&self) -> String {
        let mut out = String::new();
        for (i, server) in self.servers.iter().enumerate() {
            let state = match &server.child {
                None => "killed",
                Some(_) if self.has_exited(i) => "exited by itself",
                Some(_) => "running",
            };
            out.push_str(&format!(
                "--- {} ({state}; client {}, monitor {}; {}), log tail:\n{}\n",
                server.name,
                server.client_port,
                server.monitor_port,
                server.config.display(),
                self.log_tail(i, 15)
            ));
        }
        out
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // `_dir` is removed after this, with every process gone.
    }
}

/// `GET path` on `127.0.0.1:port` over HTTP/1.0: the status code and the body, or what
/// went wrong (not listening yet, a timeout, a garbled answer).
fn monitor_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))
        .map_err(|e| format!("connect to monitor port {port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .map_err(|e| format!("write to monitor port {port}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read from monitor port {port}: {e}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("monitor port {port}: no header end in {raw:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("monitor port {port}: no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// One request over NATS's text protocol on `127.0.0.1:port`: `CONNECT` (with headers, so
/// that the server answers "no responders" at once), `SUB` to a reply inbox, `PUB` with
/// that reply subject; the first message on the inbox is the answer. A "no responders"
/// status (`503`: nobody subscribes to `subject` yet on this server, as just after a
/// stream is created elsewhere in the cluster) sends the request again 50 ms later, as
/// JetStream clients retry a publish, until `timeout`.
fn nats_request(
    port: u16,
    subject: &str,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connect to NATS on {port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let inbox = "_INBOX.test_support";
    let mut request = format!("PUB {subject} {inbox} {}\r\n", payload.len()).into_bytes();
    request.extend_from_slice(payload);
    request.extend_from_slice(b"\r\n");
    let mut out = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\
         \"no_responders\":true,\"name\":\"test-support\"}}\r\nSUB {inbox} 1\r\n"
    )
    .into_bytes();
    out.extend_from_slice(&request);
    let write = |stream: &mut TcpStream, bytes: &[u8]| {
        stream
            .write_all(bytes)
            .map_err(|e| format!("write to NATS on {port}: {e}"))
    };
    write(&mut stream, &out)?;
    let mut no_responders = false;
    let mut resend_at: Option<Instant> = None;
    let mut buffer: Vec<u8> = Vec::new();
    let mut read = [0u8; 16 * 1024];
    loop {
        // Take apart every whole protocol line (and message) received so far.
        while let Some(end) = buffer.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let message = line.strip_prefix("MSG ").map(|rest| (rest, false));
            let message = message.or(line.strip_prefix("HMSG ").map(|rest| (rest, true)));
            if let Some((rest, with_headers)) = message {
                // `MSG subject sid [reply] size`, `HMSG subject sid [reply] hsize size`.
                let numbers: Vec<usize> = rest
                    .split(' ')
                    .rev()
                    .take(if with_headers { 2 } else { 1 })
                    .map(|n| n.parse().unwrap_or(usize::MAX))
                    .collect();
                let (headers, size) = match numbers[..] {
                    [size] => (0, size),
                    [size, headers] => (headers, size),
                    _ => return Err(format!("NATS on {port}: bad message line {line:?}")),
                };
                if size == usize::MAX || headers > size {
                    return Err(format!("NATS on {port}: bad message line {line:?}"));
                }
                if buffer.len() < end + 2 + size + 2 {
                    break; // the message is not all here yet
                }
                let body = &buffer[end + 2..end + 2 + size];
                if headers > 0 && body.starts_with(b"NATS/1.0 503") {
                    no_responders = true;
                    resend_at = Some(Instant::now() + Duration::from_millis(50));
                    buffer.drain(..end + 2 + size + 2);
                    continue;
                }
                return Ok(body[headers..].to_vec());
            }
            if line.starts_with("-ERR") {
                return Err(format!("NATS on {port} ({subject}): {line}"));
            }
            if line == "PING" {
                write(&mut stream, b"PONG\r\n")?;
            }
            // INFO, PONG, +OK: nothing to do.
            buffer.drain(..end + 2);
        }
        if Instant::now() >= deadline {
            let why = if no_responders {
                "nobody listens on it (no responders)"
            } else {
                "no reply"
            };
            return Err(format!(
                "NATS on {port}: {subject}: {why} within {timeout:?}"
            ));
        }
        if resend_at.is_some_and(|at| Instant::now() >= at) {
            resend_at = None;
            write(&mut stream, &request)?;
        }
        match stream.read(&mut read) {
            Ok(0) => return Err(format!("NATS on {port} closed the connection ({subject})")),
            Ok(n) => buffer.extend_from_slice(&read[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("read from NATS on {port}: {e}")),
        }
    }
}
