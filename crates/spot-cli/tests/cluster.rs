//! Cluster mode (issue 18) with real processes on loopback: three clustered
//! `nats-server -js`, a fresh PostgreSQL database, two `spot serve --nats … --postgres …`
//! nodes (each with its own data directory, port, log file and `access.db`, so its own
//! first admin key) and nginx in front of both; `spot emulate --buffer` streams through
//! nginx. The oracle is `faults.rs`'s, read over REST from each node's read replica: every
//! generated event acknowledged, the highest stored sequence the last generated one, and
//! nothing stored twice beyond the `spot create` and `config create` of each connection.
//!
//! Scenarios, one at a time (two cores do not run two sites of six servers at once):
//! - two nodes behind nginx, one partition: every acknowledged event is stored once, and
//!   both replicas say so;
//! - two partitions, each owned by one node (`--prefer-partitions`), so that the
//!   emulator's items are merged across owners: partition 0's owner killed with SIGKILL
//!   mid-load, the other node takes it over (owner and position in `spot_partitions`
//!   move) within the lease TTL + 2 s, nothing acknowledged is lost, a command made for
//!   each spot just before the kill reaches it once, a push client
//!   (`spot tail`) of the killed node resumes on the other node after the last event it
//!   printed and, like the other node's own client, sees every event of the derived
//!   events log once and in order, and the killed node rejoins;
//! - two partitions: the `SPOT_IN` stream leader (one NATS server of three) killed
//!   mid-load: nothing lost;
//! - settings a node cannot run (`--partitions 65`, `--nats` without `--postgres`, a lease
//!   TTL under 1 s) end it with a non-zero exit naming the setting;
//! - a node given every NATS URL starts, and a node given one URL of three creates its
//!   streams with a replica on each of the three servers.
//!
//! Figures (events, takeover time, how long the position stood still) go to stderr as
//! `cluster: …` lines.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::free_port;
use test_support::http::{get_json, get_text, remember_key};
use test_support::mosquitto::{BlockingSubscriber, Broker};
use test_support::nats::NatsCluster;
use test_support::nginx::Nginx;
use test_support::postgres::TestDb;
use test_support::process::KillOnDrop;
use test_support::webhook::WebhookTarget;

const SPOT: &str = env!("CARGO_BIN_EXE_spot");

/// The lease TTL of the sites here: short, so that a takeover is quick to wait for.
const LEASE_TTL_SECS: u64 = 3;

/// How long a node may take to answer (it joins NATS and PostgreSQL first).
const NODE_START_DEADLINE: Duration = Duration::from_secs(30);

/// How long the replicas may take to show what the emulator had acknowledged.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(20);

/// One site at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `spot serve` cluster node: its name, port, data directory and log file, and its
/// process while it runs.
struct Node {
    name: String,
    port: u16,
    data: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    process: Option<KillOnDrop>,
}

impl Node {
    /// A node named `name` (its `--node-name`) with its files under `dir`; not started.
    fn new(dir: &Path, name: &str, cluster_args: &[String]) -> Node {
        Node {
            name: name.to_string(),
            port: free_port(),
            data: dir.join(format!("{name}-data")),
            log: dir.join(format!("{name}.log")),
            args: cluster_args.to_vec(),
            process: None,
        }
    }

    /// Starts the process, its stderr (the log) appended to its log file.
    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open a node's log file");
        let child = Command::new(SPOT)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data")
            .arg(&self.data)
            .args(["--node-name", &self.name])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn spot serve");
        self.process = Some(KillOnDrop(child));
    }

    /// Waits until the node answers `/healthz` (it has joined the cluster) and remembers its
    /// admin key for REST; panics with its log if it exits or does not answer in time.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + NODE_START_DEADLINE;
        while !healthy(self.port) {
            let process = self.process.as_mut().expect("a started node");
            if let Some(status) = process.0.try_wait().expect("poll a node") {
                panic!(
                    "node {} exited ({status}) before it answered; log:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not answer within {NODE_START_DEADLINE:?}; log:\n{}",
                self.name,
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        remember_key(self.port, &self.data);
    }

    /// SIGKILL (a machine dying) and the exit reaped.
    fn kill9(&mut self) {
        let mut process = self.process.take().expect("kill a running node");
        process.0.kill().expect("SIGKILL a node");
        process.0.wait().expect("reap a node");
    }

    /// The last `lines` lines the node logged (all its runs).
    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// How many of the node's log lines contain `text`.
    fn log_count(&self, text: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(text))
            .count()
    }

    /// A counter from the node's `/metrics` (0 when absent).
    fn metric(&self, name: &str) -> f64 {
        get_text(self.port, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// Whether `GET /healthz` on `127.0.0.1:port` answers `200` within a second. Not a mere
/// TCP connect: a node binds its listener before it joins the cluster (connections wait in
/// the backlog meanwhile), and writes its admin key only after joining.
fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// A node's cluster flags: NATS at `nats_urls`, the database `db`, [`LEASE_TTL_SECS`].
fn cluster_args(nats_urls: &str, db: &TestDb) -> Vec<String> {
    [
        "--nats",
        nats_urls,
        "--postgres",
        db.url(),
        "--lease-ttl-secs",
        &LEASE_TTL_SECS.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A whole site: NATS ×3, the database, nodes `a` and `b`, nginx in front of both. Dropped
/// in this order: the proxy, the nodes, then the engines they use.
struct Site {
    nginx: Nginx,
    nodes: Vec<Node>,
    db: TestDb,
    nats: NatsCluster,
    dir: tempfile::TempDir,
}

impl Site {
    /// Starts everything with `partitions` partitions, node `a` preferring partition 0
    /// and `b` partition 1 (`--prefer-partitions`); both nodes are started at once (either
    /// may create the tables first).
    fn start(partitions: u32) -> Site {
        Self::start_with(partitions, &[])
    }

    /// [`Site::start`] with `extra` flags for both nodes.
    fn start_with(partitions: u32, extra: &[&str]) -> Site {
        let dir = tempfile::Builder::new()
            .prefix("spot-cluster")
            .tempdir()
            .expect("tempdir");
        let nats = NatsCluster::start(3);
        let db = TestDb::create();
        // Both nodes are given every NATS server.
        let mut nodes: Vec<Node> = ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut args = cluster_args(&nats.urls(), &db);
                let prefer = (i as u32 % partitions).to_string();
                args.extend(["--partitions".into(), partitions.to_string()]);
                args.extend(["--prefer-partitions".into(), prefer]);
                args.extend(extra.iter().map(|a| a.to_string()));
                Node::new(dir.path(), name, &args)
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_ready();
        }
        let nginx = Nginx::start(&nodes.iter().map(|n| n.port).collect::<Vec<_>>());
        let site = Site {
            nginx,
            nodes,
            db,
            nats,
            dir,
        };
        // Losing one server of three must leave a quorum of every stream's replicas.
        for stream in ["SPOT_IN", "SPOT_OUT", "KV_spot_leases"] {
            assert_eq!(
                site.stream_replicas(stream),
                3,
                "{stream} is not replicated on every NATS server of three{}",
                site.logs()
            );
        }
        site
    }

    /// How many servers hold a replica of `stream` (its leader included).
    fn stream_replicas(&self, stream: &str) -> usize {
        self.stream_info(stream, 0)["config"]["num_replicas"]
            .as_u64()
            .unwrap_or(0) as usize
    }

    /// JetStream's info on `stream`, asked through NATS server `via`.
    fn stream_info(&self, stream: &str, via: usize) -> Value {
        let info = self
            .nats
            .request_json(via, &format!("$JS.API.STREAM.INFO.{stream}"), b"")
            .unwrap_or_else(|e| panic!("{stream}'s info: {e}"));
        assert!(info.get("error").is_none(), "{stream}'s info: {info}");
        info
    }

    /// The servers that host `SPOT_IN`'s consumers (the owner's ordered consumer), asked
    /// through NATS server `via`: `"n0"`, or several comma-separated.
    fn consumer_hosts(&self, via: usize) -> String {
        let list = self
            .nats
            .request_json(via, "$JS.API.CONSUMER.LIST.SPOT_IN", b"")
            .unwrap_or_else(|e| panic!("SPOT_IN's consumers: {e}"));
        list["consumers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["cluster"]["leader"].as_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Partition 0's row: (owner, applied_seq); the owner empty before the first commit.
    fn partition(&self) -> (String, u64) {
        let row = self.db.psql(
            "SELECT coalesce(owner, ''), applied_seq FROM spot_partitions WHERE partition = 0",
        );
        let (owner, seq) = row
            .split_once('|')
            .unwrap_or_else(|| panic!("spot_partitions has no partition 0: {row:?}"));
        (owner.to_string(), seq.parse().expect("applied_seq"))
    }

    /// The last committer of each partition, in partition order.
    fn owners(&self) -> Vec<String> {
        let owners = self
            .db
            .psql("SELECT coalesce(owner, '') FROM spot_partitions ORDER BY partition");
        owners.lines().map(str::to_string).collect()
    }

    /// Kills (`kill -9`) the node holding the lease `key`; (its index, when).
    fn kill_lease_holder(&mut self, key: &str) -> (usize, Instant) {
        let holder = self.lease_holder_of(key);
        let Some(i) = self.nodes.iter().position(|n| n.name == holder) else {
            panic!("the lease {key} is held by {holder:?}{}", self.logs());
        };
        self.nodes[i].kill9();
        (i, Instant::now())
    }

    /// The whole derived events log as node `i` replays it from id 0 (`spot tail -j`, 3 s),
    /// one envelope a line.
    fn replayed_log(&self, i: usize) -> Vec<Value> {
        let out = self.dir.path().join(format!("tail-replay-{i}.jsonl"));
        let mut replay = tail(&self.nodes[i], 0, &out, Some(3));
        let _ = replay.0.wait();
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            // The last line may be cut where tail was stopped.
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .collect()
    }

    /// Who holds partition 0's lease (empty: nobody).
    fn lease_holder(&self) -> String {
        self.lease_holder_of("p0")
    }

    /// Who holds the lease `key` in the KV bucket `spot_leases` (empty: nobody), as a
    /// running NATS server tells (the key's last value).
    fn lease_holder_of(&self, key: &str) -> String {
        let via = (0..self.nats.len())
            .find(|&i| self.nats.is_running(i))
            .expect("a running NATS server");
        // The stream API, not the direct one: the bucket is made without direct reads.
        let reply = self
            .nats
            .request_json(
                via,
                "$JS.API.STREAM.MSG.GET.KV_spot_leases",
                format!(r#"{{"last_by_subj":"$KV.spot_leases.{key}"}}"#).as_bytes(),
            )
            .unwrap_or_else(|e| panic!("read the lease {key}: {e}"));
        let data = reply["message"]["data"].as_str().unwrap_or_default();
        use base64::Engine as _;
        let value = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap_or_else(|e| panic!("the lease {key} is not base64 ({e}): {reply}"));
        String::from_utf8_lossy(&value).into_owned()
    }

    /// Waits (`within` at most) until partition 0 has an owner that has committed past
    /// `applied_seq` `above`; that owner's node index and the position.
    fn wait_committed_above(&self, above: u64, within: Duration) -> (usize, u64) {
        let deadline = Instant::now() + within;
        loop {
            let (owner, seq) = self.partition();
            if seq > above {
                if let Some(i) = self.nodes.iter().position(|n| n.name == owner) {
                    return (i, seq);
                }
            }
            assert!(
                Instant::now() < deadline,
                "partition 0 not committed past {above} within {within:?} (owner {owner:?}, \
                 applied_seq {seq}){}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node's log tail, for a failure message.
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("\n--- node {} log tail:\n{}", n.name, n.log_tail(20)))
            .collect()
    }

    fn buffer(&self) -> PathBuf {
        self.dir.path().join("buffer")
    }
}

/// `spot emulate` through `url` with the on-disk buffer `buffer`: `spots` spots at `rate`
/// events a second each for `secs` seconds, retrying every 500 ms at most and delivering for
/// 30 s more at most; its JSON summary comes from [`summary`].
fn emulate(url: &str, buffer: &Path, spots: u32, rate: u32, secs: u32) -> KillOnDrop {
    let child = Command::new(SPOT)
        .args(["emulate", "-s", url, "-q", "--summary", "per-spot"])
        .args(["-n", &spots.to_string(), "-r", &rate.to_string()])
        .args(["-d", &secs.to_string(), "--drain-secs", "30"])
        .args(["--backoff-max-ms", "500", "--buffer"])
        .arg(buffer)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spot emulate");
    KillOnDrop(child)
}

/// Waits for the emulator: its exit code and summary.
fn summary(mut emulator: KillOnDrop) -> (i32, Value) {
    let mut out = String::new();
    if let Some(mut stdout) = emulator.0.stdout.take() {
        stdout.read_to_string(&mut out).expect("emulator output");
    }
    let status = emulator.0.wait().expect("emulator exit");
    let summary = serde_json::from_str(&out).unwrap_or(Value::Null);
    (status.code().unwrap_or(-1), summary)
}

/// The emulator's totals in one line.
fn totals(summary: &Value) -> String {
    let t = &summary["total"];
    format!(
        "{} generated, {} acked, {} resent, {} reconnects, {} responses not 2xx, errors {}",
        t["events_generated"],
        t["events_acked"],
        t["events_resent"],
        t["reconnects"],
        t["responses_not_2xx"],
        t["errors"]
    )
}

/// Each spot's `(event_counter, acked_seq)` by serial number.
type Counters = HashMap<String, (u64, u64)>;

/// Each spot's `(event_counter, acked_seq)` as node `port`'s REST API has them.
fn stored_counters(port: u16) -> Counters {
    let stored = get_json(port, "/api/spots?results_only=true&limit=10000");
    stored
        .as_array()
        .expect("a list of spots")
        .iter()
        .map(|s| {
            (
                s["serial_number"].as_str().unwrap_or("").to_string(),
                (
                    s["event_counter"].as_u64().unwrap_or(0),
                    s["acked_seq"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// `faults.rs`'s oracle, per spot of the emulator's summary, against `stored`: every
/// generated event acknowledged; the highest stored sequence the last generated one; the
/// stored events beyond those at most the `spot create` and `config create` that open each
/// connection (they carry no sequence, so are not deduplicated). A line for each spot that
/// fails it.
fn not_stored_as_acknowledged(stored: &Counters, summary: &Value) -> Vec<String> {
    let mut wrong = Vec::new();
    for spot in summary["per_spot"].as_array().into_iter().flatten() {
        let serial = spot["serial"].to_string().trim_matches('"').to_string();
        let (generated, acked) = (&spot["events_generated"], &spot["events_acked"]);
        let reconnects = spot["reconnects"].as_u64().unwrap_or(0);
        let (counter, highest) = stored.get(&serial).copied().unwrap_or((0, 0));
        let creates = counter.saturating_sub(highest);
        if acked != generated
            || Some(highest) != generated.as_u64()
            || !(2..=2 * (1 + reconnects)).contains(&creates)
        {
            wrong.push(format!(
                "spot {serial}: generated {generated} acked {acked} stored {counter} \
                 highest seq {highest} reconnects {reconnects}"
            ));
        }
    }
    wrong
}

/// Polls node `node`'s REST API (`CATCH_UP_DEADLINE` at most) until the oracle holds for
/// every spot of `summary`; the spots that still fail it, the counters last read and how
/// long the replica took.
fn wait_stored_as_acknowledged(node: &Node, summary: &Value) -> (Vec<String>, Counters, Duration) {
    let started = Instant::now();
    loop {
        let stored = stored_counters(node.port);
        let wrong = not_stored_as_acknowledged(&stored, summary);
        if wrong.is_empty() || started.elapsed() >= CATCH_UP_DEADLINE {
            return (wrong, stored, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks the oracle on each of `nodes` and that they all show the same counters; prints
/// a line per node.
fn assert_stored_as_acknowledged_on(site: &Site, nodes: &[usize], summary: &Value, exit: i32) {
    let spots = summary["per_spot"].as_array().map_or(0, Vec::len);
    assert!(
        exit == 0 && spots > 0,
        "the emulator exited {exit} with {spots} spots: {}{}",
        totals(summary),
        site.logs()
    );
    let mut seen: Option<(String, Counters)> = None;
    for &i in nodes {
        let node = &site.nodes[i];
        let (wrong, stored, took) = wait_stored_as_acknowledged(node, summary);
        eprintln!(
            "cluster: node {} REST: stored as acknowledged for {} of {spots} spots, \
             {} events stored; its replica caught up {:.2}s after the emulator ended",
            node.name,
            spots - wrong.len(),
            stored.values().map(|(c, _)| c).sum::<u64>(),
            took.as_secs_f64()
        );
        assert!(
            wrong.is_empty(),
            "node {}: {} of {spots} spots not stored as acknowledged, e.g. {}; emulator: \
             {}{}",
            node.name,
            wrong.len(),
            wrong[0],
            totals(summary),
            site.logs()
        );
        if let Some((other, theirs)) = &seen {
            assert_eq!(
                &stored, theirs,
                "nodes {} and {other} show different counters",
                node.name
            );
        }
        seen = Some((node.name.clone(), stored));
    }
}

#[test]
fn two_nodes_behind_nginx_store_every_acknowledged_event_once() {
    let _one = one_at_a_time();
    let site = Site::start(1);
    let started = Instant::now();
    let (exit, summary) = summary(emulate(&site.nginx.url(), &site.buffer(), 10, 20, 5));
    let run = started.elapsed();
    eprintln!(
        "cluster: two nodes behind nginx, 10 spots x 20 ev/s x 5 s: {} in {:.1}s",
        totals(&summary),
        run.as_secs_f64()
    );
    let posts: Vec<f64> = site
        .nodes
        .iter()
        .map(|n| n.metric("spot_posts_total"))
        .collect();
    eprintln!("cluster: POSTs per node (nginx round robin): {posts:?}");
    assert!(
        posts.iter().all(|&p| p > 0.0),
        "nginx did not spread the spots' POSTs over both nodes: {posts:?}"
    );
    assert_stored_as_acknowledged_on(&site, &[0, 1], &summary, exit);
}

#[test]
fn killing_the_partition_owner_mid_load_loses_nothing_and_another_node_takes_over_within_the_lease_ttl_plus_2s(
) {
    let _one = one_at_a_time();
    let mut site = Site::start(2);
    let emulator = emulate(&site.nginx.url(), &site.buffer(), 10, 20, 8);
    // A push client on each node: the one on the node to be killed resumes on the other.
    let outs: Vec<PathBuf> = (0..2)
        .map(|i| site.dir.path().join(format!("tail-{i}.jsonl")))
        .collect();
    let mut tails: Vec<KillOnDrop> = (0..2)
        .map(|i| tail(&site.nodes[i], 0, &outs[i], None))
        .collect();
    let load_started = Instant::now();
    // Under load for 2 s, with an owner that has committed.
    let (owner, _) = site.wait_committed_above(0, Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(2).saturating_sub(load_started.elapsed()));
    let lease = site.lease_holder();
    let (owner_now, seq_at_kill) = site.partition();
    assert_eq!(
        (lease.as_str(), owner_now.as_str()),
        (
            site.nodes[owner].name.as_str(),
            site.nodes[owner].name.as_str()
        ),
        "the lease holder and the last committer are the same node"
    );
    assert_eq!(
        site.owners(),
        ["a", "b"],
        "each node owns the partition it prefers, so items are merged across owners{}",
        site.logs()
    );
    let survivor = 1 - owner;
    // A command for every spot, committed (answered) just before the kill: each must
    // reach its spot once, through whichever node holds it afterwards.
    let serials: Vec<String> = stored_counters(site.nodes[survivor].port)
        .into_keys()
        .collect();
    assert_eq!(serials.len(), 10, "every spot has connected: {serials:?}");
    let request = serde_json::json!({ "config_request": { "hostname": "after-the-kill" } });
    for serial in &serials {
        let path = format!("/api/spots/{serial}");
        let (status, body) = send_json(site.nodes[survivor].port, "PUT", &path, &request);
        assert_eq!(status, 200, "PUT {path}: {body}");
    }
    site.nodes[owner].kill9();
    let killed_at = Instant::now();
    // The killed node's client goes on at the survivor, after the last event it printed.
    let _ = tails[owner].0.kill();
    let _ = tails[owner].0.wait();
    let before_kill = tailed_ids(&outs[owner]);
    let resumed_from = before_kill.last().copied().unwrap_or(0);
    let resumed_out = site.dir.path().join("tail-resumed.jsonl");
    let resumed = tail(&site.nodes[survivor], resumed_from, &resumed_out, None);
    let mut lease_taken = None;
    let takeover = loop {
        let elapsed = killed_at.elapsed();
        if lease_taken.is_none() && site.lease_holder() == site.nodes[survivor].name {
            lease_taken = Some(elapsed);
        }
        let (owner_now, seq) = site.partition();
        if owner_now == site.nodes[survivor].name && seq > seq_at_kill {
            break elapsed;
        }
        assert!(
            elapsed < Duration::from_secs(30),
            "node {} did not take partition 0 over within 30 s of node {}'s kill (owner \
             {owner_now:?}, applied_seq {seq}, at the kill {seq_at_kill}){}",
            site.nodes[survivor].name,
            site.nodes[owner].name,
            site.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!(
        "cluster: owner {} killed at applied_seq {seq_at_kill} ({:.1}s into the load); \
         {} took the lease after {} and committed after {:.2}s (lease TTL {LEASE_TTL_SECS} s, \
         bound {} s)",
        site.nodes[owner].name,
        (killed_at - load_started).as_secs_f64(),
        site.nodes[survivor].name,
        lease_taken.map_or("?".into(), |t| format!("{:.2}s", t.as_secs_f64())),
        takeover.as_secs_f64(),
        LEASE_TTL_SECS + 2
    );
    // The killed node comes back while the load goes on: it rejoins, and gets the
    // partition it prefers back.
    site.nodes[owner].spawn();
    site.nodes[owner].wait_ready();
    let restarted_at = Instant::now();
    let (exit, summary) = summary(emulator);
    eprintln!(
        "cluster: owner killed mid-load, 10 spots x 20 ev/s x 8 s: {} in {:.1}s",
        totals(&summary),
        load_started.elapsed().as_secs_f64()
    );
    assert!(
        takeover <= Duration::from_secs(LEASE_TTL_SECS + 2),
        "the takeover took {:.2}s, more than the lease TTL {LEASE_TTL_SECS} s + 2 s{}",
        takeover.as_secs_f64(),
        site.logs()
    );
    assert_stored_as_acknowledged_on(&site, &[survivor, owner], &summary, exit);
    // No command lost: each spot applied its one command, and says so in its config.
    for spot in summary["per_spot"].as_array().expect("per spot") {
        assert_eq!(
            spot["commands_applied"], 1,
            "spot {}: {spot}",
            spot["serial"]
        );
    }
    for node in [survivor, owner] {
        let spots = get_json(site.nodes[node].port, "/api/spots?results_only=true");
        for spot in spots.as_array().expect("spots") {
            assert_eq!(spot["config_request"], Value::Null, "handed over: {spot}");
            assert_eq!(
                spot["config"]["hostname"], "after-the-kill",
                "applied: {spot}"
            );
        }
    }
    // No gap: what the resumed client saw, joined to what it saw before the kill, is every
    // event of the survivor's whole log (replayed from id 0); so is what the survivor's own
    // client saw all along.
    let replay_out = site.dir.path().join("tail-replay.jsonl");
    let mut replay = tail(&site.nodes[survivor], 0, &replay_out, Some(3));
    let _ = replay.0.wait();
    let log = tailed_ids(&replay_out);
    let last = *log.last().expect("the log holds events");
    let deadline = Instant::now() + Duration::from_secs(10);
    while [&resumed_out, &outs[survivor]]
        .iter()
        .any(|out| tailed_ids(out).last().is_none_or(|&id| id < last))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(resumed);
    for t in &mut tails {
        let _ = t.0.kill();
        let _ = t.0.wait();
    }
    let up_to_last =
        |ids: Vec<u64>| -> Vec<u64> { ids.into_iter().filter(|&id| id <= last).collect() };
    let mut seen = before_kill.clone();
    seen.extend(tailed_ids(&resumed_out));
    let seen = up_to_last(seen);
    eprintln!(
        "cluster: push: {} events before the kill on {}, {} after resuming on {} from id \
         {resumed_from}; the log holds {} up to id {last}",
        before_kill.len(),
        site.nodes[owner].name,
        seen.len() - before_kill.len(),
        site.nodes[survivor].name,
        log.len()
    );
    assert!(
        log.len() > before_kill.len(),
        "events after the kill were seen"
    );
    assert_eq!(
        seen, log,
        "the resumed client saw every event once, in order"
    );
    let all_along = up_to_last(tailed_ids(&outs[survivor]));
    assert_eq!(
        all_along, log,
        "the survivor's own client saw every event once"
    );
    // The restarted node prefers partition 0: the survivor hands it back (it checks every
    // third of the TTL, then the restarted node takes it within TAKE_EVERY).
    let back_by = restarted_at + Duration::from_secs(3 * LEASE_TTL_SECS + 5);
    let owner_at_end = loop {
        let (owner_now, _) = site.partition();
        if owner_now == site.nodes[owner].name || Instant::now() > back_by {
            break owner_now;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "cluster: {:.1}s after the restart of {}: partition 0 owned by {owner_at_end}",
        restarted_at.elapsed().as_secs_f64(),
        site.nodes[owner].name
    );
    assert_eq!(
        owner_at_end,
        site.nodes[owner].name,
        "the partition went back to the node that prefers it{}",
        site.logs()
    );
    assert_eq!(
        site.owners(),
        ["a", "b"],
        "each partition with its preferring node"
    );
}

/// Each webhook subscription is delivered by one node at a time, from a position kept in
/// PostgreSQL: when the node that delivers it dies mid-load, another takes its lease within
/// the lease TTL + 2 s and goes on, and every event of the log reaches the target in order,
/// at most one twice (the one whose delivery the dead node had not recorded).
#[test]
fn killing_the_node_that_delivers_a_webhook_mid_load_loses_no_event_and_another_goes_on() {
    let _one = one_at_a_time();
    let mut site = Site::start(1);
    let target = WebhookTarget::start(false, |id, _| (id, Instant::now()));
    let (status, body) = send_json(
        site.nodes[0].port,
        "POST",
        "/api/subscriptions",
        &serde_json::json!({
            "topic_filter": "presences/#",
            "target_url": target.url(),
            "target_retry": true
        }),
    );
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).expect("JSON")["id"].clone();
    let emulator = emulate(&site.nginx.url(), &site.buffer(), 5, 20, 6);
    target.wait_until(Duration::from_secs(20), |r| r.len() >= 50);
    let (holder, killed_at) = site.kill_lease_holder(&format!("w{id}"));
    let survivor = 1 - holder;
    let (exit, summary) = summary(emulator);
    assert_stored_as_acknowledged_on(&site, &[survivor], &summary, exit);
    // The presences' events (what the subscription's filter matches).
    let log: Vec<u64> = site
        .replayed_log(survivor)
        .into_iter()
        .filter(|e| {
            e["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with("presences/"))
        })
        .filter_map(|e| e["id"].as_u64())
        .collect();
    let last = *log.last().expect("the log holds events");
    target.wait_until(Duration::from_secs(30), |r| {
        r.iter().any(|&(id, _)| id >= last)
    });
    let received: Vec<(u64, Instant)> = target.received.0.lock().unwrap().clone();
    let (before, after): (Vec<_>, Vec<_>) = received.iter().partition(|(_, at)| *at < killed_at);
    let ids = |part: &[&(u64, Instant)]| part.iter().map(|(id, _)| *id).collect::<Vec<u64>>();
    let (before, after) = (ids(&before), ids(&after));
    let takeover = received
        .iter()
        .find(|(_, at)| *at > killed_at)
        .map(|(_, at)| *at - killed_at);
    let twice: Vec<&u64> = after.iter().filter(|id| before.contains(id)).collect();
    eprintln!(
        "cluster: webhook delivered by {} killed after {} deliveries; {} delivered {} more, \
         the first {:.2}s after the kill; {} twice; the log holds {} events",
        site.nodes[holder].name,
        before.len(),
        site.nodes[survivor].name,
        after.len(),
        takeover.map_or(f64::NAN, |t| t.as_secs_f64()),
        twice.len(),
        log.len()
    );
    let increasing = |ids: &[u64]| ids.windows(2).all(|w| w[0] < w[1]);
    assert!(
        increasing(&before),
        "one node at a time, in order, before the kill: {before:?}"
    );
    assert!(
        increasing(&after),
        "one node at a time, in order, after the kill: {after:?}"
    );
    assert!(twice.len() <= 1, "delivered twice: {twice:?}");
    let mut all: Vec<u64> = before
        .iter()
        .chain(&after)
        .copied()
        .filter(|&id| id <= last)
        .collect();
    all.dedup();
    assert_eq!(
        all, log,
        "every event of the log reached the target, in order"
    );
    let takeover = takeover.expect("deliveries after the kill");
    assert!(
        takeover <= Duration::from_secs(LEASE_TTL_SECS + 2),
        "the next delivery came {:.2}s after the kill, more than the lease TTL {LEASE_TTL_SECS} s + 2 s{}",
        takeover.as_secs_f64(),
        site.logs()
    );
    let shown = get_json(
        site.nodes[survivor].port,
        &format!("/api/subscriptions/{id}"),
    );
    assert_eq!(shown["failed_count"], 0, "{shown}");
}

/// One node at a time publishes to the MQTT broker, from a position kept in PostgreSQL:
/// when it dies mid-load, another takes the outlet's lease within the lease TTL + 2 s and
/// publishes from the stored position. What the subscriber got before the kill is a run of
/// the log in order; what it got after is the rest of the log to its end, starting after
/// the first run's start (the position was carried over) and no later than where it
/// stopped (no gap; what was published since the last stored position comes twice).
#[test]
fn killing_the_node_that_publishes_to_mqtt_mid_load_loses_no_event_and_another_goes_on() {
    let _one = one_at_a_time();
    let broker_dir = tempfile::tempdir().expect("tempdir");
    let broker_port = free_port();
    let _broker = Broker::start(broker_dir.path(), broker_port);
    let subscriber = BlockingSubscriber::start(broker_port, "site/#", "site", |topic, payload| {
        ((topic.to_string(), payload.to_string()), Instant::now())
    });
    let mqtt = format!("mqtt://127.0.0.1:{broker_port}/site");
    let mut site = Site::start_with(1, &["--mqtt", &mqtt]);
    let emulator = emulate(&site.nginx.url(), &site.buffer(), 5, 20, 6);
    subscriber.wait_until(Duration::from_secs(20), |r| r.len() >= 200);
    // And the holder has stored a position past the cluster's first (the end of an empty
    // log), so the next one starts after it.
    let stored = || {
        site.db
            .psql("SELECT value FROM spot_cluster WHERE key = 'mqtt_position'")
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let first = stored();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored() == first {
        assert!(
            Instant::now() < deadline,
            "the MQTT position stayed {first}{}",
            site.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (holder, killed_at) = site.kill_lease_holder("mqtt");
    let survivor = 1 - holder;
    let (exit, summary) = summary(emulator);
    assert_stored_as_acknowledged_on(&site, &[survivor], &summary, exit);
    let log: Vec<(String, String)> = site
        .replayed_log(survivor)
        .into_iter()
        .map(|e| {
            let topic = e["topic"].as_str().expect("topic").to_string();
            (topic, e["payload"].to_string())
        })
        .collect();
    let last = log.last().expect("the log holds events").clone();
    subscriber.wait_until(Duration::from_secs(30), |r| {
        r.iter().any(|(k, _)| *k == last)
    });
    let received = subscriber.received.0.lock().unwrap().clone();
    let (before, after): (Vec<_>, Vec<_>) = received.iter().partition(|(_, at)| *at < killed_at);
    let keys = |part: &[&((String, String), Instant)]| -> Vec<(String, String)> {
        part.iter().map(|(k, _)| k.clone()).collect()
    };
    let (before, mut after) = (keys(&before), keys(&after));
    // Up to the log's last event (what came later is not in the replay).
    if let Some(end) = after.iter().rposition(|k| *k == last) {
        after.truncate(end + 1);
    }
    let takeover = received
        .iter()
        .find(|(_, at)| *at > killed_at)
        .map(|(_, at)| *at - killed_at);
    let started = (0..=log.len()).find(|&k| log[k..].starts_with(&before));
    let resumed = log.len().checked_sub(after.len());
    eprintln!(
        "cluster: MQTT published by {} killed after {} messages; {} published {} more, the \
         first {:.2}s after the kill, from log place {resumed:?} (the first run: places \
         {started:?} + {}); the log holds {} events",
        site.nodes[holder].name,
        before.len(),
        site.nodes[survivor].name,
        after.len(),
        takeover.map_or(f64::NAN, |t| t.as_secs_f64()),
        before.len(),
        log.len()
    );
    let started = started.expect("before the kill: a run of the log, in order");
    let resumed = resumed.expect("no more after the kill than the log holds");
    assert_eq!(
        log[resumed..],
        after[..],
        "after the kill: the rest of the log, in order"
    );
    assert!(
        resumed > started && resumed <= started + before.len(),
        "carried over, no gap: the second run starts at place {resumed}, the first ran \
         over places {started}..{}",
        started + before.len()
    );
    let takeover = takeover.expect("messages after the kill");
    assert!(
        takeover <= Duration::from_secs(LEASE_TTL_SECS + 2),
        "the next message came {:.2}s after the kill, more than the lease TTL {LEASE_TTL_SECS} s + 2 s{}",
        takeover.as_secs_f64(),
        site.logs()
    );
}

/// `spot tail` (JSON lines) against node `node` with its admin key, after event `after`,
/// its output to `out`; stopped after `secs` seconds when given.
fn tail(node: &Node, after: u64, out: &Path, secs: Option<u64>) -> KillOnDrop {
    let mut command = Command::new(SPOT);
    command
        .args([
            "tail",
            "-j",
            "--server",
            &format!("http://127.0.0.1:{}", node.port),
        ])
        .arg("--data")
        .arg(&node.data)
        .args([
            "--after-id",
            &after.to_string(),
            "--reconnect-delay-ms",
            "100",
        ]);
    if let Some(secs) = secs {
        command.args(["-W", &secs.to_string()]);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(File::create(out).expect("tail's output file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spot tail");
    KillOnDrop(child)
}

/// `method path` with a JSON body to `127.0.0.1:port` with the node's admin key; the
/// status and the body.
fn send_json(port: u16, method: &str, path: &str, body: &Value) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let key = test_support::http::key_for(port).expect("the node's key");
    let body = body.to_string();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nX-Api-Key: {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read response");
    let status = raw.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The event ids of a `spot tail -j` output file, in order.
fn tailed_ids(out: &Path) -> Vec<u64> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        // The last line may be cut where tail was stopped.
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|event| event["id"].as_u64())
        .collect()
}

/// The longest time a partition's position stood still, from samples (a healthy owner
/// commits at least its tick every second).
struct StillMeter {
    seq: u64,
    since: Instant,
    longest: Duration,
}

impl StillMeter {
    fn new(seq: u64) -> StillMeter {
        StillMeter {
            seq,
            since: Instant::now(),
            longest: Duration::ZERO,
        }
    }

    fn sample(&mut self, seq: u64) {
        self.longest = self.longest.max(self.since.elapsed());
        if seq != self.seq {
            self.seq = seq;
            self.since = Instant::now();
        }
    }
}

#[test]
fn killing_one_of_three_nats_servers_mid_load_loses_nothing() {
    let _one = one_at_a_time();
    let mut site = Site::start(2);
    let mut emulator = emulate(&site.nginx.url(), &site.buffer(), 10, 20, 8);
    let load_started = Instant::now();
    site.wait_committed_above(0, Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(2).saturating_sub(load_started.elapsed()));
    // The hardest of the three to lose: the leader of the input log's stream (publishes
    // wait for a new one). Where the owner reads it from (its ordered consumer, one
    // replica) is said too: the stage stalls while that consumer is gone.
    let info = site.stream_info("SPOT_IN", 0);
    let leader_name = info["cluster"]["leader"].as_str().unwrap_or("").to_string();
    let leader = (0..site.nats.len())
        .find(|&i| site.nats.name(i) == leader_name)
        .unwrap_or_else(|| panic!("SPOT_IN has no leader among the servers: {info}"));
    let consumers = site.consumer_hosts(0);
    let (_, seq_at_kill) = site.partition();
    site.nats.kill(leader);
    let killed_at = Instant::now();
    let survivor = (0..site.nats.len())
        .find(|&i| site.nats.is_running(i))
        .expect("two NATS servers still run");
    let mut still = StillMeter::new(seq_at_kill);
    while emulator.0.try_wait().expect("poll the emulator").is_none() {
        still.sample(site.partition().1);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (exit, summary) = summary(emulator);
    // Everything acknowledged is in SPOT_IN now: wait until the owner has applied it.
    let end_of_input = site.stream_info("SPOT_IN", survivor)["state"]["last_seq"]
        .as_u64()
        .expect("SPOT_IN's last sequence");
    let caught_up = loop {
        let (owner, seq) = site.partition();
        still.sample(seq);
        if seq >= end_of_input {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the owner {owner} has applied SPOT_IN up to {seq} of {end_of_input}, 60 s after \
             NATS server {leader_name} was killed{}",
            site.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "cluster: NATS server {leader_name} (SPOT_IN's leader; the owner's consumer on \
         {consumers}) killed at applied_seq {seq_at_kill}, {:.1}s into the load; the \
         position stood still {:.1}s at most; the owner had applied every \
         acknowledged event {:.1}s after the kill",
        (killed_at - load_started).as_secs_f64(),
        still.longest.as_secs_f64(),
        caught_up.as_secs_f64()
    );
    eprintln!(
        "cluster: one NATS server of three killed mid-load, 10 spots x 20 ev/s x 8 s: {} in \
         {:.1}s; publish attempts failed: {}",
        totals(&summary),
        load_started.elapsed().as_secs_f64(),
        site.nodes
            .iter()
            .map(|n| format!("{} {}", n.name, n.log_count("publish to SPOT_IN failed")))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert_stored_as_acknowledged_on(&site, &[0, 1], &summary, exit);
}

/// Runs `spot serve` on a fresh data directory with `args`; its exit code and stderr.
/// Panics if it is still running after 15 s (it should refuse at once).
fn serve_refusal(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr_path = dir.path().join("stderr");
    let mut child = KillOnDrop(
        Command::new(SPOT)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data")
            .arg(dir.path().join("data"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn spot serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("poll spot serve") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "spot serve {args:?} still runs after 15 s; it should have refused; stderr:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    (status.code(), stderr)
}

#[test]
fn a_cluster_node_refuses_settings_it_cannot_run() {
    // A reachable cluster: the refusals are not connection failures.
    let nats = NatsCluster::single();
    let db = TestDb::create();
    let url = nats.url(0);
    for (args, named) in [
        (
            vec!["--nats", &url, "--postgres", db.url(), "--partitions", "65"],
            "partitions",
        ),
        (vec!["--nats", &url], "postgres"),
        (
            vec![
                "--nats",
                &url,
                "--postgres",
                db.url(),
                "--lease-ttl-secs",
                "0.5",
            ],
            "lease",
        ),
    ] {
        let (code, stderr) = serve_refusal(&args);
        eprintln!(
            "cluster: spot serve {args:?} exited {code:?}: {}",
            stderr.trim()
        );
        assert!(
            code.is_some_and(|c| c != 0),
            "spot serve {args:?} exited {code:?}; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains(named),
            "spot serve {args:?}: the error does not name {named:?}:\n{stderr}"
        );
    }
}

#[test]
fn a_node_given_every_nats_url_joins_the_cluster() {
    let nats = NatsCluster::start(3);
    let db = TestDb::create();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(dir.path(), "a", &cluster_args(&nats.urls(), &db));
    node.spawn();
    node.wait_ready();
    let info = nats
        .request_json(0, "$JS.API.STREAM.INFO.SPOT_IN", b"")
        .expect("SPOT_IN's info");
    assert_eq!(info["config"]["num_replicas"], 3, "{info}");
}

#[test]
fn a_node_given_one_nats_url_of_three_replicates_its_streams_on_all_three() {
    let nats = NatsCluster::start(3);
    let db = TestDb::create();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = Node::new(dir.path(), "a", &cluster_args(&nats.url(0), &db));
    node.spawn();
    node.wait_ready();
    for stream in ["SPOT_IN", "SPOT_OUT", "KV_spot_leases"] {
        let info = nats
            .request_json(0, &format!("$JS.API.STREAM.INFO.{stream}"), b"")
            .expect("a stream's info");
        assert_eq!(info["config"]["num_replicas"], 3, "{stream}: {info}");
    }
}
