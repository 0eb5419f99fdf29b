//! Access control against a real server with real HTTP clients: who may call which route
//! (API keys, roles, the three ways to send a key), revocation (also of open streams and
//! by another process), the failed-authentication limit, the first admin key, spot
//! admission (open, enrolled, secret, the enrolment window, a flood of unknown serials) and
//! CORS.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use spot_server::access::{AccessDb, AdmissionMode, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A response: status, headers, JSON body (`Null` when not JSON).
struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Value,
}

/// One request from `from` (a loopback address of the client's own) with `headers`.
async fn request_from(
    from: [u8; 4],
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let stream = socket.connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "test");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let resp = send
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    if headers
        .get("content-type")
        .is_some_and(|t| t == "text/event-stream")
    {
        // A push stream does not end: its head is the answer.
        return Answer {
            status,
            headers,
            body: Value::Null,
        };
    }
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    request_from([127, 0, 0, 1], addr, method, path, headers, body).await
}

/// Creates a key of `role` with the admin key; returns (id, key).
async fn create_key(addr: SocketAddr, role: &str) -> (String, String) {
    let admin = admin_key(addr);
    let created = request(
        addr,
        "POST",
        "/api/keys",
        &[("x-api-key", &admin)],
        Some(json!({"role": role, "label": format!("test {role}")})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let key = created.body["key"].as_str().unwrap().to_string();
    (created.body["id"].as_str().unwrap().to_string(), key)
}

/// How a key is sent.
#[derive(Debug, Clone, Copy)]
enum Form {
    Header,
    Bearer,
    Query,
}

/// `method path` with `key` sent as `form`.
async fn call_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<(&str, Form)>,
    body: Option<Value>,
) -> Answer {
    let bearer;
    let (path, headers): (String, Vec<(&str, &str)>) = match key {
        None => (path.to_string(), vec![]),
        Some((k, Form::Header)) => (path.to_string(), vec![("x-api-key", k)]),
        Some((k, Form::Bearer)) => {
            bearer = format!("Bearer {k}");
            (path.to_string(), vec![("authorization", bearer.as_str())])
        }
        Some((k, Form::Query)) => {
            let sep = if path.contains('?') { '&' } else { '?' };
            (format!("{path}{sep}key={k}"), vec![])
        }
    };
    request(addr, method, &path, &headers, body).await
}

/// Every route × every kind of caller → allowed (neither 401 nor 403) or the refusal.
#[tokio::test]
async fn every_route_needs_the_role_the_table_says_with_any_of_the_three_key_forms() {
    let (server, _dir) = start(|c| {
        // This test makes many failures on purpose; the limit has its own test.
        c.access.failure_limit.burst = 1_000_000;
    })
    .await;
    let addr = server.http_addr();
    let (_, read) = create_key(addr, "read").await;
    let (_, write) = create_key(addr, "write").await;
    let (revoked_id, revoked) = create_key(addr, "admin").await;
    let admin = admin_key(addr);
    let gone = request(
        addr,
        "DELETE",
        &format!("/api/keys/{revoked_id}"),
        &[("x-api-key", &admin)],
        None,
    )
    .await;
    assert_eq!(gone.status, 200);
    // A spot, so that the per-resource routes have something to answer.
    let mut spot = Raw::connect(addr).await;
    assert_eq!(spot.post("42", &[&spot_create(42, 1)]).await.status, 200);

    use Role::*;
    let routes: &[(&str, &str, Option<Value>, Role)] = &[
        ("GET", "/api/spots", None, Read),
        ("GET", "/api/spots/42", None, Read),
        ("GET", "/api/locations", None, Read),
        ("GET", "/api/items", None, Read),
        ("GET", "/api/presences", None, Read),
        ("GET", "/api/events", None, Read),
        ("GET", "/api/enrolments", None, Read),
        ("GET", "/api/stream?topic_filter=nothing/here", None, Read),
        ("GET", "/metrics", None, Read),
        (
            "PUT",
            "/api/spots/42",
            Some(json!({"config_request": null})),
            Write,
        ),
        (
            "POST",
            "/api/spots",
            Some(json!({"serial_number": "77"})),
            Write,
        ),
        ("GET", "/api/keys", None, Admin),
        ("POST", "/api/keys", Some(json!({"role": "read"})), Admin),
        ("GET", "/api/subscriptions", None, Admin),
        (
            "POST",
            "/api/subscriptions",
            Some(json!({"topic_filter": "#", "target_url": "http://127.0.0.1:9/"})),
            Admin,
        ),
    ];
    let callers: [(&str, Option<&str>, Option<Role>); 5] = [
        ("no key", None, None),
        ("revoked", Some(&revoked), None),
        ("read", Some(&read), Some(Read)),
        ("write", Some(&write), Some(Write)),
        ("admin", Some(&admin), Some(Admin)),
    ];
    for (method, path, body, need) in routes {
        for (who, key, role) in &callers {
            for form in [Form::Header, Form::Bearer, Form::Query] {
                let a = call_with(addr, method, path, key.map(|k| (k, form)), body.clone()).await;
                let case = format!(
                    "{method} {path} as {who} ({form:?}): {} {}",
                    a.status, a.body
                );
                match role {
                    None => {
                        assert_eq!(a.status, 401, "{case}");
                        let challenge = a.headers["www-authenticate"].to_str().unwrap();
                        assert!(challenge.starts_with("Bearer"), "{case}");
                        assert!(a.body["error"].is_string(), "{case}");
                    }
                    Some(role) if role < need => {
                        assert_eq!(a.status, 403, "{case}");
                        assert!(
                            a.body["error"].as_str().unwrap().contains("needs"),
                            "{case}"
                        );
                    }
                    Some(_) => assert!(![401, 403].contains(&a.status), "{case}"),
                }
            }
        }
    }
    // The WebSocket: refused without a key, upgraded with a read key in the query.
    let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401)
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let ws = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws?key={read}")).await;
    assert!(ws.is_ok(), "{ws:?}");
    // Ingest is governed by spot admission, not keys (open by default).
    assert_eq!(spot.post("43", &[&spot_create(43, 1)]).await.status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn the_key_in_the_query_is_not_a_field_filter() {
    let (server, _dir) = start(|_| {}).await;
    let addr = server.http_addr();
    let mut spot = Raw::connect(addr).await;
    assert_eq!(spot.post("42", &[&spot_create(42, 1)]).await.status, 200);
    let admin = admin_key(addr);
    let listed = call_with(addr, "GET", "/api/spots", Some((&admin, Form::Query)), None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["results"].as_array().unwrap().len(), 1);
    // Nor echoed in the next-page link.
    let paged = call_with(
        addr,
        "GET",
        "/api/events?limit=1",
        Some((&admin, Form::Query)),
        None,
    )
    .await;
    let next = paged.body["url_next"].as_str().unwrap_or("");
    assert!(!next.contains(&admin), "{next}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_revoked_key_stops_working_at_once_and_its_open_streams_are_closed() {
    let (server, _dir) = start(|_| {}).await;
    let addr = server.http_addr();
    let (id, read) = create_key(addr, "read").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/ws?key={read}"))
        .await
        .unwrap();
    let sse = reqwest::Client::new()
        .get(format!("http://{addr}/api/stream"))
        .header("x-api-key", &read)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let admin = admin_key(addr);
    let revoked = request(
        addr,
        "DELETE",
        &format!("/api/keys/{id}"),
        &[("x-api-key", &admin)],
        None,
    )
    .await;
    assert_eq!(revoked.status, 200);
    assert!(revoked.body["time_revoked"].is_string());
    let get = call_with(addr, "GET", "/api/spots", Some((&read, Form::Header)), None).await;
    assert_eq!(get.status, 401);
    // The WebSocket gets a close frame 1008 (policy) naming the revocation.
    let close = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("closed within a second")
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("revoked"), "{}", close.reason);
    // The SSE stream ends with `event: closed`.
    let text = tokio::time::timeout(Duration::from_secs(1), sse.text())
        .await
        .expect("ended within a second")
        .unwrap();
    assert!(text.contains("event: closed"), "{text}");
    assert!(text.contains("revoked"), "{text}");
    // The audit: created and revoked, with the acting key's id (written by the server's
    // access watcher after the change: awaited).
    let started = std::time::Instant::now();
    let events = loop {
        let (_, events) = get_events(addr, &format!("keys/{id}")).await;
        if events.len() >= 2 || started.elapsed() > Duration::from_secs(2) {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let topics: Vec<&str> = events.iter().filter_map(|e| e["topic"].as_str()).collect();
    assert_eq!(
        topics,
        [format!("keys/{id}/created"), format!("keys/{id}/revoked")]
    );
    let admin_id = &admin["spot_".len().."spot_".len() + 12];
    assert_eq!(events[1]["data"]["actor"], *admin_id);
    assert_eq!(events[1]["data"]["revoked_by"], *admin_id);
    server.shutdown().await;
}

/// The derived events whose topic starts with `prefix`, oldest first.
async fn get_events(addr: SocketAddr, prefix: &str) -> (u16, Vec<Value>) {
    let (status, all) = get(addr, "/api/events?sort=id&results_only=true&limit=1000").await;
    let events = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["topic"].as_str().unwrap().starts_with(prefix))
        .cloned()
        .collect();
    (status, events)
}

#[tokio::test]
async fn a_key_revoked_by_another_process_stops_working_within_a_second() {
    let (server, dir) = start(|_| {}).await;
    let addr = server.http_addr();
    // `spot keys` in another process: its own connection to access.db.
    let mut db = AccessDb::open(dir.path()).unwrap();
    let (record, key) = db
        .create_key(Role::Read, "other process", "cli", 0)
        .unwrap();
    let started = std::time::Instant::now();
    while call_with(addr, "GET", "/api/spots", Some((&key, Form::Header)), None)
        .await
        .status
        != 200
    {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "new key not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.revoke_key(&record.id, "cli", 0).unwrap();
    let started = std::time::Instant::now();
    while call_with(addr, "GET", "/api/spots", Some((&key, Form::Header)), None)
        .await
        .status
        != 401
    {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "revocation not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its audit entries reach the events log, with `cli` as the actor.
    let started = std::time::Instant::now();
    loop {
        let (_, events) = get_events(addr, &format!("keys/{}", record.id)).await;
        if events.len() == 2 {
            assert_eq!(events[1]["data"]["actor"], "cli");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{events:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn repeated_bad_keys_are_slowed_down_but_a_good_key_from_another_address_is_not() {
    let (server, _dir) = start(|_| {}).await;
    let addr = server.http_addr();
    let bad = "spot_000000000000_guess";
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let a = request(addr, "GET", "/api/items", &[("x-api-key", bad)], None).await;
        statuses.push(a.status);
        if a.status == 429 {
            let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&retry), "{retry}");
        }
    }
    assert_eq!(&statuses[..10], &[401; 10]);
    assert_eq!(&statuses[10..], &[429, 429]);
    // Blocked means blocked: even the right key is not looked at from that address.
    let admin = admin_key(addr);
    let blocked = request(addr, "GET", "/api/items", &[("x-api-key", &admin)], None).await;
    assert_eq!(blocked.status, 429);
    // Another address is served.
    let other = request_from(
        [127, 0, 0, 2],
        addr,
        "GET",
        "/api/items",
        &[("x-api-key", &admin)],
        None,
    )
    .await;
    assert_eq!(other.status, 200);
    let (_, metrics) = get_text(addr, "/metrics", [127, 0, 0, 3]).await;
    assert!(
        metrics.contains("spot_auth_failures_total{reason=\"invalid\"} 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spot_auth_failures_total{reason=\"rate_limited\"} 3"),
        "{metrics}"
    );
    server.shutdown().await;
}

/// `GET path` with the admin key, from `from`; the body as text.
async fn get_text(addr: SocketAddr, path: &str, from: [u8; 4]) -> (u16, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let key = admin_key(addr);
    let head =
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let status = raw[9..12].parse().unwrap();
    (status, raw.split_once("\r\n\r\n").unwrap().1.to_string())
}

#[tokio::test]
async fn the_first_start_writes_an_admin_key_with_mode_0600_and_a_second_start_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = || spot_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        sync: spot_server::Durability::Normal,
        ..spot_server::ServerConfig::default()
    };
    let server = bind(config()).await.unwrap();
    let path = dir.path().join("admin.key");
    let key = std::fs::read_to_string(&path).unwrap();
    assert!(key.starts_with("spot_"), "{key}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let keys = call_with(
        server.http_addr(),
        "GET",
        "/api/keys",
        Some((key.trim(), Form::Header)),
        None,
    )
    .await;
    assert_eq!(keys.status, 200);
    assert_eq!(keys.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(keys.body["data"][0]["role"], "admin");
    assert!(
        !keys.body.to_string().contains(key.trim()),
        "listed with its secret"
    );
    server.shutdown().await;
    let again = bind(config()).await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), key);
    let keys = call_with(
        again.http_addr(),
        "GET",
        "/api/keys",
        Some((key.trim(), Form::Header)),
        None,
    )
    .await;
    assert_eq!(keys.body["data"].as_array().unwrap().len(), 1);
    again.shutdown().await;
}

/// A spot's empty POST (`Content-Length: 0`), optionally with Basic credentials.
fn empty_post(serial: &str, basic: Option<(&str, &str)>) -> String {
    use base64::Engine as _;
    let auth = basic.map_or_else(String::new, |(user, secret)| {
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        format!("Authorization: Basic {creds}\r\n")
    });
    format!(
        "POST /api/spots/{serial}/events/ HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

async fn post_status(addr: SocketAddr, serial: &str, basic: Option<(&str, &str)>) -> Resp {
    let mut conn = Raw::connect(addr).await;
    conn.send(empty_post(serial, basic).as_bytes()).await;
    conn.response().await.expect("an answer")
}

async fn spot_count(addr: SocketAddr) -> usize {
    let (_, spots) = get(addr, "/api/spots?results_only=true&limit=1000").await;
    spots.as_array().unwrap().len()
}

#[tokio::test]
async fn open_admission_bounds_the_number_of_spots() {
    let (server, _dir) = start(|c| c.access.admission.max_spots = 3).await;
    let addr = server.http_addr();
    for serial in ["1", "2", "3"] {
        assert_eq!(post_status(addr, serial, None).await.status, 200);
    }
    let refused = post_status(addr, "4", None).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["reason"], "too_many_spots");
    assert_eq!(post_status(addr, "2", None).await.status, 200);
    assert_eq!(spot_count(addr).await, 3);
    server.shutdown().await;
}

#[tokio::test]
async fn enrolled_admission_refuses_a_flood_of_unknown_serials_without_creating_state() {
    let (server, _dir) = start(|c| c.access.admission.mode = AdmissionMode::Enrolled).await;
    let addr = server.http_addr();
    let admin = admin_key(addr);
    let enrolled = request(
        addr,
        "POST",
        "/api/spots",
        &[("x-api-key", &admin)],
        Some(json!({"serial_number": "500"})),
    )
    .await;
    assert_eq!(enrolled.status, 201, "{}", enrolled.body);
    assert_eq!(enrolled.body["serial_number"], "500");
    assert!(enrolled.body.get("secret").is_none());
    assert_eq!(post_status(addr, "500", None).await.status, 200);
    // 20,000 unknown serials, pipelined 100 at a time on 4 connections.
    let flood = (0..4).map(|c| {
        tokio::spawn(async move {
            let mut conn = Raw::connect(addr).await;
            let mut refused = 0;
            for batch in 0..50 {
                let mut requests = String::new();
                for n in 0..100 {
                    requests.push_str(&empty_post(&format!("x{c}-{batch}-{n}"), None));
                }
                conn.send(requests.as_bytes()).await;
                for _ in 0..100 {
                    let resp = conn.response().await.expect("an answer");
                    assert_eq!(resp.status, 403);
                    refused += 1;
                }
            }
            refused
        })
    });
    let mut refused = 0;
    for task in flood {
        refused += task.await.unwrap();
    }
    assert_eq!(refused, 20_000);
    assert_eq!(spot_count(addr).await, 1);
    let (_, locations) = get(addr, "/api/locations?results_only=true").await;
    assert_eq!(locations.as_array().unwrap().len(), 1);
    let (_, events) = get_events(addr, "spots/").await;
    assert!(
        events.iter().all(|e| !e.to_string().contains("\"x")),
        "state created"
    );
    let metrics = get_text(addr, "/metrics", [127, 0, 0, 1]).await.1;
    assert!(
        metrics.contains("spot_admission_refused_total{reason=\"not_enrolled\"} 20000"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn secret_admission_binds_each_secret_to_its_serial() {
    let (server, _dir) = start(|c| {
        c.access.admission.mode = AdmissionMode::Secret;
        c.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let addr = server.http_addr();
    let admin = admin_key(addr);
    let mut secrets = Vec::new();
    for serial in ["600", "601"] {
        let a = request(
            addr,
            "POST",
            "/api/spots",
            &[("x-api-key", &admin)],
            Some(json!({"serial_number": serial, "secret": true})),
        )
        .await;
        assert_eq!(a.status, 201, "{}", a.body);
        secrets.push(a.body["secret"].as_str().unwrap().to_string());
    }
    let (s600, s601) = (secrets[0].as_str(), secrets[1].as_str());
    assert_eq!(
        post_status(addr, "600", Some(("600", s600))).await.status,
        200
    );
    let missing = post_status(addr, "600", None).await;
    assert_eq!(missing.status, 401);
    assert!(missing
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic"));
    // Spoofing: 601's secret on 600's URL, or 601's credentials on 600's URL.
    assert_eq!(
        post_status(addr, "600", Some(("600", s601))).await.status,
        403
    );
    assert_eq!(
        post_status(addr, "600", Some(("601", s601))).await.status,
        403
    );
    // Raw TCP: the secret in the spot create, taken out before anything is stored.
    let tcp = server.tcp_addr().unwrap();
    let create = |serial: u64, secret: Option<&str>| {
        let mut object = json!({"spot_id": serial, "version": "t", "seq_epoch": 1});
        if let Some(secret) = secret {
            object["spot_secret"] = secret.into();
        }
        let mut bytes = serde_json::to_vec(&json!(["spot", "create", object])).unwrap();
        bytes.extend_from_slice(b"\n\n");
        bytes
    };
    let mut good = TcpStream::connect(tcp).await.unwrap();
    good.write_all(&create(601, Some(s601))).await.unwrap();
    good.write_all(&presence("create", "0601", "near", Some(1)))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), good.read(&mut buf))
        .await
        .expect("an ack")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("\"ack\""));
    let (_, spot) = get(addr, "/api/spots/601").await;
    assert!(
        !spot.to_string().contains(s601),
        "the secret was stored: {spot}"
    );
    for secret in [None, Some(s600)] {
        let mut bad = TcpStream::connect(tcp).await.unwrap();
        bad.write_all(&create(601, secret)).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut buf))
            .await
            .expect("closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "refused spot got an answer");
    }
    let (_, events) = get_events(addr, "").await;
    assert!(!Value::Array(events).to_string().contains(s601));
    server.shutdown().await;
}

#[tokio::test]
async fn the_enrolment_window_enrols_new_serials_until_it_closes() {
    // Long enough for a start and two requests on a loaded machine (a 1.5 s window closed
    // before the first POST now and then).
    let until = spot_server::clock::now_ms() + 5_000;
    let (server, _dir) = start(|c| {
        c.access.admission.mode = AdmissionMode::Enrolled;
        c.access.admission.enroll_until = Some(until);
    })
    .await;
    let addr = server.http_addr();
    assert_eq!(post_status(addr, "700", None).await.status, 200);
    let (_, list) = get(addr, "/api/enrolments").await;
    assert_eq!(list["data"][0]["serial_number"], "700");
    assert_eq!(list["data"][0]["enrolled_by"], "window");
    // The window's end is the event awaited here.
    let left = until - spot_server::clock::now_ms();
    tokio::time::sleep(Duration::from_millis(left.max(0) as u64 + 50)).await;
    assert_eq!(post_status(addr, "701", None).await.status, 403);
    assert_eq!(post_status(addr, "700", None).await.status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn cors_is_off_by_default_and_answers_the_configured_origins() {
    let (server, _dir) = start(|_| {}).await;
    let preflight = [
        ("origin", "https://dash.example"),
        ("access-control-request-method", "GET"),
        ("access-control-request-headers", "x-api-key"),
    ];
    let a = request(
        server.http_addr(),
        "OPTIONS",
        "/api/items",
        &preflight,
        None,
    )
    .await;
    assert!(a.headers.get("access-control-allow-origin").is_none());
    server.shutdown().await;
    let (server, _dir) =
        start(|c| c.access.cors_origins = vec!["https://dash.example".into()]).await;
    let addr = server.http_addr();
    let a = request(addr, "OPTIONS", "/api/items", &preflight, None).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://dash.example"
    );
    let other = [
        ("origin", "https://evil.example"),
        ("access-control-request-method", "GET"),
    ];
    let a = request(addr, "OPTIONS", "/api/items", &other, None).await;
    assert!(a.headers.get("access-control-allow-origin").is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_public_serves_metrics_without_a_key_and_nothing_else() {
    let (server, _dir) = start(|c| c.access.metrics_public = true).await;
    let addr = server.http_addr();
    assert_eq!(
        request(addr, "GET", "/metrics", &[], None).await.status,
        200
    );
    assert_eq!(
        request(addr, "GET", "/api/spots", &[], None).await.status,
        401
    );
    server.shutdown().await;
}

/// Waits (10 s at most) until `GET /api/spots` with `key` through `addr` answers
/// `status`; what it answered last.
async fn wait_for_status(addr: SocketAddr, key: &str, status: u16) -> u16 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = call_with(addr, "GET", "/api/spots", Some((key, Form::Header)), None)
            .await
            .status;
        if got == status || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cluster's nodes share their API keys through PostgreSQL: a key made through node A
/// works on node B (so does A's first admin key), and a revocation through B ends it on A;
/// both are in the cluster's events log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_key_made_on_one_node_works_on_every_node_until_revoked_on_any() {
    let site = start_on(Backend::Cluster, |_| {}).await;
    let (a, b) = (site.a(), site.b());
    let (id, read) = create_key(a, "read").await;
    assert_eq!(
        wait_for_status(b, &read, 200).await,
        200,
        "A's new key on B"
    );
    assert_eq!(
        wait_for_status(b, &admin_key(a), 200).await,
        200,
        "A's first admin key on B"
    );
    let revoked = request(
        b,
        "DELETE",
        &format!("/api/keys/{id}"),
        &[("x-api-key", &admin_key(b))],
        None,
    )
    .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(
        wait_for_status(a, &read, 401).await,
        401,
        "revoked on A too"
    );
    let listed = request(a, "GET", "/api/keys", &[("x-api-key", &admin_key(a))], None).await;
    let key = listed.body["data"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["id"] == id.as_str()).cloned())
        .unwrap_or_else(|| panic!("the key listed on A: {}", listed.body));
    assert!(key["time_revoked"].is_string(), "{key}");
    // Each node's audit entries reach the cluster's events log, once: the creation by A,
    // the revocation by B (each node's watcher sends them after the change: awaited).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let (_, events) = get_events(a, &format!("keys/{id}")).await;
        if events.len() >= 2 || std::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let topics: Vec<&str> = events.iter().filter_map(|e| e["topic"].as_str()).collect();
    assert_eq!(
        topics,
        [format!("keys/{id}/created"), format!("keys/{id}/revoked")]
    );
    let (_, on_b) = get_events(b, &format!("keys/{id}")).await;
    assert_eq!(on_b, events, "the same events on B");
    site.shutdown().await;
}

/// A cluster's nodes share their spot enrolments: a spot enrolled through node A streams
/// in through node B, and once unenrolled on A (`spot spots unenroll`, another process on
/// A's data directory) it is refused on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_spot_enrolled_on_one_node_is_admitted_on_every_node_until_unenrolled() {
    let site = start_on(Backend::Cluster, |c| {
        c.access.admission.mode = AdmissionMode::Enrolled;
    })
    .await;
    let (a, b) = (site.a(), site.b());
    let enrolled = request(
        a,
        "POST",
        "/api/spots",
        &[("x-api-key", &admin_key(a))],
        Some(json!({"serial_number": "500"})),
    )
    .await;
    assert_eq!(enrolled.status, 201, "{}", enrolled.body);
    let wait_for = |status: u16| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = post_status(b, "500", None).await.status;
            if got == status || std::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(wait_for(200).await, 200, "enrolled on A, admitted on B");
    AccessDb::open(site.dir())
        .unwrap()
        .unenrol("500", "cli")
        .unwrap();
    assert_eq!(wait_for(403).await, 403, "unenrolled on A, refused on B");
    site.shutdown().await;
}
