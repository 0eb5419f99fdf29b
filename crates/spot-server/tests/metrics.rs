//! `/metrics` of a running server, read as Prometheus reads it: through a Prometheus
//! text-format parser, every series with its `# HELP` and `# TYPE`, the gauges counting what
//! is open now, and `HEAD` answered.

mod common;

use std::time::Duration;

use common::*;
use prometheus_parse::{Scrape, Value};
use spot_protocol::{Decoder, Encoding, EventKind, Limits};
use test_support::mosquitto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a spot's first events over raw TCP and waits for the ack of `seq` 1: the spot is
/// online and its connection counted.
async fn spot_over_tcp(tcp: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(tcp).await.expect("connect");
    let mut out = spot_create(700, 1);
    out.extend(presence(
        "create",
        "000000000000000000000700",
        "near",
        Some(1),
    ));
    stream.write_all(&out).await.expect("write");
    let mut decoder = Decoder::new(Encoding::Json, Limits::default());
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            while let Some(event) = decoder.next_event() {
                if let EventKind::Other(o) = event.expect("valid event").kind {
                    if o.resource_type == "ack" && o.object.get("seq") == Some(&1.into()) {
                        return;
                    }
                }
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "server closed the stream");
            decoder.feed(&buf[..n]);
        }
    })
    .await
    .expect("ack arrives");
    stream
}

/// The family a sample belongs to, and whether its type is known: the parser types a
/// histogram's buckets, not its `_sum` and `_count`.
fn family_of(scrape: &Scrape, sample: &prometheus_parse::Sample) -> (String, bool) {
    if let Value::Untyped(_) = sample.value {
        for suffix in ["_sum", "_count"] {
            if let Some(base) = sample.metric.strip_suffix(suffix) {
                let histogram = scrape
                    .samples
                    .iter()
                    .any(|s| s.metric == base && matches!(s.value, Value::Histogram(_)));
                if histogram {
                    return (base.to_string(), true);
                }
            }
        }
        return (sample.metric.clone(), false);
    }
    (sample.metric.clone(), true)
}

fn value(scrape: &Scrape, metric: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no series {metric} {label:?}"));
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => panic!("{metric} is not a single value"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_has_help_and_type_and_the_gauges_count_what_is_open() {
    let broker_dir = tempfile::tempdir().expect("tempdir");
    let port = test_support::free_port();
    let _broker = mosquitto::Broker::start(broker_dir.path(), port);
    let (server, _dir) = start(|config| {
        config.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
        let mut mqtt =
            spot_push::MqttConfig::from_url(&format!("mqtt://127.0.0.1:{port}/site")).expect("url");
        mqtt.client_id = "spot-server-metrics-test".into();
        config.push.mqtt = Some(mqtt);
    })
    .await;
    let addr = server.http_addr();
    let _tcp = spot_over_tcp(server.tcp_addr().expect("tcp listener")).await;

    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{addr}/metrics"))
        .header("x-api-key", admin_key(addr))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    let text = response.text().await.expect("text");
    let scrape =
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format");

    assert!(scrape.samples.len() > 20, "{text}");
    for sample in &scrape.samples {
        let (family, typed) = family_of(&scrape, sample);
        assert!(typed, "{} has no # TYPE:\n{text}", sample.metric);
        assert!(
            scrape.docs.contains_key(&family),
            "{family} has no # HELP:\n{text}"
        );
    }
    for family in [
        "spot_push_published_total",
        "spot_push_subscriptions",
        "spot_push_mqtt_connected",
        "spot_ack_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(scrape.docs.contains_key(family), "{family}:\n{text}");
    }
    assert_eq!(value(&scrape, "spot_spots_online", None), 1.0);
    assert_eq!(
        value(&scrape, "spot_connections_open", Some(("transport", "tcp"))),
        1.0
    );
    assert!(
        value(
            &scrape,
            "spot_connections_open",
            Some(("transport", "http"))
        ) >= 1.0,
        "the scrape's own connection is open"
    );
    assert_eq!(value(&scrape, "spot_pipeline_queued_events", None), 0.0);
    assert_eq!(
        value(
            &scrape,
            "spot_build_info",
            Some(("version", env!("CARGO_PKG_VERSION")))
        ),
        1.0
    );
    assert!(value(&scrape, "process_resident_memory_bytes", None) > 1e6);
    assert!(value(&scrape, "process_open_fds", None) >= 3.0);
    let started = value(&scrape, "process_start_time_seconds", None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now + 1.0 && started > now - 24.0 * 3600.0,
        "{started}"
    );

    let head = client
        .head(format!("http://{addr}/metrics"))
        .header("x-api-key", admin_key(addr))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 200);
    assert!(head.bytes().await.expect("body").is_empty());
    server.shutdown().await;
}
