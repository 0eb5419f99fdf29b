//! The cluster harness against the real engines: three `nats-server -js` clustered over
//! routes (formed, one killed, restarted; the meta leader killed), PostgreSQL test
//! databases, and nginx streaming a chunked POST to an upstream.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use test_support::http::{chunk, dechunk, LAST_CHUNK};
use test_support::nats::NatsCluster;
use test_support::nginx::Nginx;
use test_support::postgres::TestDb;

/// Creates the stream `name` on subjects `<name>.>` with `replicas` through server `via`;
/// panics with JetStream's error.
fn create_stream(cluster: &NatsCluster, via: usize, name: &str, replicas: usize) -> Value {
    let config = json!({"name": name, "subjects": [format!("{name}.>")], "num_replicas": replicas});
    let reply = cluster
        .request_json(
            via,
            &format!("$JS.API.STREAM.CREATE.{name}"),
            config.to_string().as_bytes(),
        )
        .expect("stream create request");
    assert!(reply.get("error").is_none(), "create {name}: {reply}");
    reply
}

/// Publishes `payload` to `subject` through server `via` and returns JetStream's
/// acknowledgement (`{"stream":…,"seq":…}`); panics on an error reply.
fn publish(cluster: &NatsCluster, via: usize, subject: &str, payload: &[u8]) -> Value {
    let ack = cluster
        .request_json(via, subject, payload)
        .expect("publish request");
    assert!(ack.get("error").is_none(), "publish to {subject}: {ack}");
    ack
}

/// The number of messages in stream `name`, as server `via` reports it.
fn stream_messages(cluster: &NatsCluster, via: usize, name: &str) -> u64 {
    let info = cluster
        .request_json(via, &format!("$JS.API.STREAM.INFO.{name}"), b"")
        .expect("stream info request");
    info["state"]["messages"]
        .as_u64()
        .unwrap_or_else(|| panic!("stream info of {name}: {info}"))
}

#[test]
fn three_nats_servers_form_a_jetstream_cluster_ready_for_replicated_streams() {
    let cluster = NatsCluster::start(3);
    let urls = cluster.urls();
    assert_eq!(urls.split(',').count(), 3, "{urls}");
    assert_eq!(urls.split(',').next(), Some(cluster.url(0).as_str()));
    let leaders: Vec<String> = (0..3)
        .map(|i| {
            let jsz = cluster.jsz(i).expect("jsz");
            assert_eq!(jsz["meta_cluster"]["cluster_size"], 3, "{jsz}");
            jsz["meta_cluster"]["leader"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(leaders.iter().all(|l| *l == leaders[0]), "{leaders:?}");
    assert!(cluster.meta_leader().is_some());
    // Ready means ready: a stream replicated on all three servers is created at once.
    let created = create_stream(&cluster, 2, "READY", 3);
    assert_eq!(created["config"]["num_replicas"], 3, "{created}");
    assert_eq!(publish(&cluster, 1, "READY.a", b"x")["seq"], 1);
}

#[test]
fn a_killed_nats_server_leaves_the_others_answering_and_comes_back_on_restart() {
    let mut cluster = NatsCluster::start(3);
    create_stream(&cluster, 0, "KILL", 3);
    assert_eq!(publish(&cluster, 0, "KILL.a", b"before")["seq"], 1);

    cluster.kill(1);
    assert!(!cluster.is_running(1));
    assert!(
        TcpStream::connect(("127.0.0.1", cluster.client_port(1))).is_err(),
        "the killed server still accepts clients"
    );
    cluster.wait_js_ready();
    cluster.wait_stream_ready("KILL");
    // Two of three replicas are a quorum: the stream takes messages through either.
    assert_eq!(publish(&cluster, 0, "KILL.a", b"during")["seq"], 2);
    assert_eq!(publish(&cluster, 2, "KILL.a", b"during")["seq"], 3);

    cluster.restart(1);
    assert!(cluster.is_running(1));
    cluster.wait_stream_ready("KILL");
    // Same store: its replica holds what was published while it was down (its own count
    // of stored messages, not the stream leader's).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let jsz = cluster.jsz(1).expect("jsz of the restarted server");
        if jsz["messages"] == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not caught up: {jsz}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Same ports: clients reach it at the same URL.
    assert_eq!(publish(&cluster, 1, "KILL.a", b"after")["seq"], 4);
    assert_eq!(stream_messages(&cluster, 1, "KILL"), 4);
}

#[test]
fn killing_the_meta_leader_elects_another_among_the_running_servers() {
    let mut cluster = NatsCluster::start(3);
    create_stream(&cluster, 0, "LEADER", 3);
    let leader = cluster.meta_leader().expect("a meta leader");
    cluster.kill(leader);
    cluster.wait_js_ready();
    let next = cluster.meta_leader().expect("a new meta leader");
    assert_ne!(next, leader);
    assert!(cluster.is_running(next));
    cluster.wait_stream_ready("LEADER");
    let via = (leader + 1) % 3;
    assert_eq!(publish(&cluster, via, "LEADER.a", b"x")["seq"], 1);
}

#[test]
fn a_single_nats_server_runs_jetstream_standalone() {
    let cluster = NatsCluster::single();
    assert_eq!(cluster.len(), 1);
    assert_eq!(cluster.urls(), cluster.url(0));
    create_stream(&cluster, 0, "ONE", 1);
    assert_eq!(publish(&cluster, 0, "ONE.a", b"x")["seq"], 1);
}

#[test]
fn test_databases_are_fresh_separate_and_dropped() {
    let first = TestDb::create();
    let second = TestDb::create();
    assert_ne!(first.name(), second.name());
    for db in [&first, &second] {
        assert!(
            db.url().starts_with("postgres://") && db.url().ends_with(db.name()),
            "{}",
            db.url()
        );
        assert_eq!(db.psql("select current_database()"), db.name());
        assert_eq!(
            db.psql("select count(*) from pg_tables where schemaname = 'public'"),
            "0"
        );
    }
    first.psql("create table t (v int); insert into t values (1), (2)");
    assert_eq!(first.psql("select sum(v) from t"), "3");
    assert!(
        second
            .psql("select count(*) from pg_tables where tablename = 't'")
            .eq("0"),
        "a table of one test database shows in another"
    );
    // Dropping one removes its database even while a session is connected to it.
    let name = first.name().to_string();
    let mut held = std::process::Command::new("psql")
        .args(["-X", "-w", "-d", first.url(), "-c", "select pg_sleep(30)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while second.psql(&format!(
        "select count(*) from pg_stat_activity where datname = '{name}'"
    )) == "0"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the held session never began"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(first);
    let _ = held.kill();
    let _ = held.wait();
    assert_eq!(
        second.psql(&format!(
            "select count(*) from pg_database where datname = '{name}'"
        )),
        "0"
    );
}

/// An upstream that takes one request with a chunked body: it reports on `seen` once the
/// first chunk `first` has arrived, then, at the body's end, answers `200` with the body.
fn echo_upstream(first: &'static [u8]) -> (u16, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, seen) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        let mut reported = false;
        while !request.ends_with(LAST_CHUNK) {
            let n = stream.read(&mut buffer).expect("read the request");
            assert!(n > 0, "nginx closed before the body's end");
            request.extend_from_slice(&buffer[..n]);
            if !reported && request.windows(first.len()).any(|w| w == first) {
                reported = true;
                let _ = seen_tx.send(());
            }
        }
        let body = dechunk(&request).body;
        let mut response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(&body);
        stream.write_all(&response).expect("write the response");
    });
    (port, seen)
}

#[test]
fn nginx_streams_a_chunked_post_to_the_upstream_before_its_end() {
    let (upstream, first_chunk_seen) = echo_upstream(b"first-part");
    let nginx = Nginx::start(&[upstream]);
    let mut client = TcpStream::connect(("127.0.0.1", nginx.port)).expect("connect to nginx");
    let mut head = b"POST /spot HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\
                     Connection: close\r\n\r\n"
        .to_vec();
    head.extend_from_slice(&chunk(b"first-part"));
    client.write_all(&head).expect("write");
    // No request buffering: the upstream has the first chunk while the POST goes on.
    first_chunk_seen
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| {
            panic!(
                "nginx held the body back; error log:\n{}",
                nginx.error_log()
            )
        });
    let mut rest = chunk(b"-second-part");
    rest.extend_from_slice(LAST_CHUNK);
    client.write_all(&rest).expect("write");
    let mut response = Vec::new();
    client.read_to_end(&mut response).expect("read");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with("\r\n\r\nfirst-part-second-part"),
        "{response}"
    );
}

#[test]
fn nginx_answers_502_when_no_upstream_listens() {
    let nginx = Nginx::start(&[test_support::free_port()]);
    let mut client = TcpStream::connect(("127.0.0.1", nginx.port)).expect("connect to nginx");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    client.read_to_string(&mut response).expect("read");
    assert!(response.starts_with("HTTP/1.1 502"), "{response}");
    assert!(
        nginx.error_log().contains("Connection refused"),
        "{}",
        nginx.error_log()
    );
}

#[test]
fn a_dropped_nginx_leaves_no_process_listening() {
    let nginx = Nginx::start(&[test_support::free_port()]);
    let port = nginx.port;
    drop(nginx);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nginx (or its worker) still listens after drop"
    );
}
