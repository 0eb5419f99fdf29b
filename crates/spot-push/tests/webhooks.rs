//! Webhooks: REST API over loopback, deliveries to a real local HTTP receiver, retries,
//! and a queue that survives a restart.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{json, Value};
use spot_push::webhook::{signature, WebhookConfig, WebhookStore, Webhooks};
use spot_push::{Hub, HubConfig, MemoryEventLog, Published};
use test_support::fixtures::{localhost_cert, localhost_key};
use tokio::sync::mpsc;

/// One request the receiver got.
#[derive(Debug)]
struct Received {
    headers: HeaderMap,
    body: String,
}

/// The receiver's `POST /hook`: every request to `tx`, 500 to the first `fail_first`.
fn hook_router(fail_first: usize, tx: mpsc::UnboundedSender<Received>) -> axum::Router {
    let failures = Arc::new(AtomicUsize::new(fail_first));
    axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let tx = tx.clone();
            let failures = failures.clone();
            async move {
                let _ = tx.send(Received { headers, body });
                let fail = failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if fail {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    )
}

/// A local HTTP receiver answering 500 to the first `fail_first` requests.
async fn receiver(fail_first: usize) -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = hook_router(fail_first, tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/hook"), rx)
}

/// A local HTTPS receiver with the self-signed `localhost` test certificate (rustls and
/// hyper): `https://localhost:<port>/hook`.
async fn https_receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (tx, rx) = mpsc::unbounded_channel();
    let router = hook_router(0, tx);
    let certs = CertificateDer::pem_file_iter(localhost_cert())
        .expect("cert file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(localhost_key()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                // A client refusing the certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let router = router.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            spot_push::call_router(&router, req).await,
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (format!("https://localhost:{port}/hook"), rx)
}

struct Setup {
    hub: Hub,
    log: Arc<MemoryEventLog>,
    webhooks: Arc<Webhooks>,
    api: String,
}

fn fast_config() -> WebhookConfig {
    WebhookConfig {
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
        ..WebhookConfig::default()
    }
}

async fn setup(store: WebhookStore, log: Arc<MemoryEventLog>) -> Setup {
    setup_with(store, log, fast_config()).await
}

async fn setup_with(store: WebhookStore, log: Arc<MemoryEventLog>, config: WebhookConfig) -> Setup {
    let hub = Hub::new(HubConfig::default());
    let webhooks = Webhooks::start(store, &hub, log.clone(), config).expect("start");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = webhooks.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Setup {
        hub,
        log,
        webhooks,
        api: format!("http://{addr}/api/subscriptions"),
    }
}

impl Setup {
    fn commit(&self, id: u64, topic: &str) {
        let event = Published::from_value(id, topic, &json!({ "n": id })).expect("event");
        self.log.append(event.clone());
        self.hub.publish(event);
    }

    async fn create(&self, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(&self.api)
            .body(body.to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 201);
        serde_json::from_str(&response.text().await.expect("body")).expect("json")
    }

    async fn get(&self, id: &Value) -> Value {
        let text = reqwest::get(format!("{}/{id}", self.api))
            .await
            .expect("get")
            .text()
            .await
            .expect("body");
        serde_json::from_str(&text).expect("json")
    }
}

async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).expect("json")
    };
    (status, value)
}

#[tokio::test]
async fn rest_api_creates_reads_updates_lists_and_deletes() {
    let s = setup(
        WebhookStore::open_in_memory().expect("store"),
        Arc::new(MemoryEventLog::new(100)),
    )
    .await;
    let created = s
        .create(
            json!({"topic_filter": "items/#", "target_url": "http://127.0.0.1:9/x",
                       "description": "door", "secret": "k"}),
        )
        .await;
    assert_eq!(created["topic_filter"], "items/#");
    assert_eq!(created["has_secret"], true);
    assert!(created.get("secret").is_none(), "the secret is never shown");
    assert_eq!(created["delivered_count"], 0);
    assert!(created["time_created"]
        .as_str()
        .expect("time")
        .ends_with('Z'));
    let id = created["id"].clone();
    let url = format!("{}/{id}", s.api);
    let (status, updated) = call(
        reqwest::Method::PUT,
        &url,
        Some(json!({"target_retry": true, "database_hold_time_h": 2.5})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &updated["target_retry"],
            &updated["database_hold_time_h"],
            &updated["description"]
        ),
        (&json!(true), &json!(2.5), &json!("door"))
    );
    s.create(json!({"topic_filter": "#", "target_url": "http://127.0.0.1:9/y"}))
        .await;
    let (status, page) = call(reqwest::Method::GET, &format!("{}?limit=1", s.api), None).await;
    assert_eq!(status, 200);
    assert_eq!(page["results"].as_array().expect("results").len(), 1);
    assert_eq!(page["is_limited"], true);
    let next = page["url_next"].as_str().expect("url_next");
    assert!(next.contains(&format!("after_id={id}")), "{next}");

    let (status, error) = call(
        reqwest::Method::POST,
        &s.api,
        Some(json!({"topic_filter": "a/#/b", "target_url": "http://h/"})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error["error"]
        .as_str()
        .expect("error")
        .starts_with("topic_filter"));
    let (status, _) = call(reqwest::Method::POST, &s.api, Some(json!({"nope": 1}))).await;
    assert_eq!(status, 400, "unknown fields are refused");
    let (status, _) = call(reqwest::Method::DELETE, &url, None).await;
    assert_eq!(status, 204);
    let (status, _) = call(reqwest::Method::GET, &url, None).await;
    assert_eq!(status, 404);
    let (status, _) = call(reqwest::Method::PUT, &url, Some(json!({}))).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn deliveries_carry_the_envelope_idempotency_key_and_signature() {
    let (target, mut received) = receiver(0).await;
    let s = setup(
        WebhookStore::open_in_memory().expect("store"),
        Arc::new(MemoryEventLog::new(100)),
    )
    .await;
    s.commit(1, "items/1/created"); // before the subscription: not delivered
    let sub = s
        .create(json!({"topic_filter": "items/#", "target_url": target, "secret": "s3cret"}))
        .await;
    s.commit(2, "items/1/appeared");
    s.commit(3, "spots/1/connected/203");
    s.commit(4, "items/1/disappeared");
    let first = received.recv().await.expect("delivery");
    assert_eq!(
        serde_json::from_str::<Value>(&first.body).expect("json"),
        json!({"id": 2, "topic": "items/1/appeared", "payload": {"n": 2}})
    );
    assert_eq!(first.headers["idempotency-key"], "2");
    assert_eq!(first.headers["x-spot-topic"], "items/1/appeared");
    assert_eq!(first.headers["content-type"], "application/json");
    assert_eq!(
        first.headers["x-spot-signature-256"],
        signature("s3cret", first.body.as_bytes()).as_str()
    );
    let second = received.recv().await.expect("delivery");
    assert_eq!(second.headers["idempotency-key"], "4");
    s.commit(5, "items/9/created");
    assert_eq!(
        received.recv().await.expect("delivery").headers["idempotency-key"],
        "5"
    );
    // Deliveries are recorded before the next one is sent: 2 and 4 are counted by now.
    let shown = s.get(&sub["id"]).await;
    assert!(
        shown["delivered_count"].as_i64().expect("count") >= 2,
        "{shown}"
    );
    assert_eq!(shown["failed_count"], 0);
}

#[tokio::test]
async fn failed_deliveries_are_retried_in_order() {
    let (target, mut received) = receiver(2).await;
    let s = setup(
        WebhookStore::open_in_memory().expect("store"),
        Arc::new(MemoryEventLog::new(100)),
    )
    .await;
    let sub = s
        .create(json!({"topic_filter": "#", "target_url": target, "target_retry": true}))
        .await;
    for id in 1..=3 {
        s.commit(id, "items/1/created");
    }
    let mut keys = Vec::new();
    for _ in 0..5 {
        let r = received.recv().await.expect("delivery");
        keys.push(
            r.headers["idempotency-key"]
                .to_str()
                .expect("ascii")
                .to_owned(),
        );
    }
    assert_eq!(
        keys,
        ["1", "1", "1", "2", "3"],
        "retried, and later events wait"
    );
    let shown = s.get(&sub["id"]).await;
    assert_eq!(shown["failed_count"], 2);
    assert!(
        shown["last_error"]
            .as_str()
            .expect("error")
            .contains("HTTP 500"),
        "{shown}"
    );
}

#[tokio::test]
async fn without_retry_a_failed_delivery_is_given_up_and_counted() {
    let (target, mut received) = receiver(1).await;
    let s = setup(
        WebhookStore::open_in_memory().expect("store"),
        Arc::new(MemoryEventLog::new(100)),
    )
    .await;
    let sub = s
        .create(json!({"topic_filter": "#", "target_url": target}))
        .await;
    s.commit(1, "items/1/created");
    s.commit(2, "items/1/created");
    let keys: Vec<String> = [
        received.recv().await.expect("delivery"),
        received.recv().await.expect("delivery"),
    ]
    .iter()
    .map(|r| {
        r.headers["idempotency-key"]
            .to_str()
            .expect("ascii")
            .to_owned()
    })
    .collect();
    assert_eq!(keys, ["1", "2"]);
    let shown = s.get(&sub["id"]).await;
    assert_eq!(shown["failed_count"], 1);
}

/// Waits (bounded) until the store shows `queued` deliveries and a failed attempt.
async fn wait_queued(webhooks: &Webhooks, id: i64, queued: i64) {
    for _ in 0..2000 {
        let s = webhooks.store().get(id).expect("get").expect("exists");
        if s.queued_count == queued && s.failed_count > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("deliveries were not queued");
}

#[tokio::test]
async fn the_queue_survives_a_restart_and_events_missed_while_down_are_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("push.sqlite");
    let log = Arc::new(MemoryEventLog::new(100));
    // Target down: a port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}/hook", l.local_addr().expect("addr"))
    };
    let first = setup(WebhookStore::open(&db).expect("store"), log.clone()).await;
    let sub = first
        .create(json!({"topic_filter": "items/#", "target_url": dead, "target_retry": true}))
        .await;
    let id = sub["id"].as_i64().expect("id");
    for n in 1..=3 {
        first.commit(n, "items/1/created");
    }
    wait_queued(&first.webhooks, id, 3).await;
    first.webhooks.shutdown();
    drop(first);
    // While the server is down, event 4 is committed (in the log, never published).
    log.append(Published::from_value(4, "items/2/created", &json!({"n": 4})).expect("event"));

    let (target, mut received) = receiver(0).await;
    let second = setup(WebhookStore::open(&db).expect("reopen"), log.clone()).await;
    let (status, _) = call(
        reqwest::Method::PUT,
        &format!("{}/{id}", second.api),
        Some(json!({"target_url": target})),
    )
    .await;
    assert_eq!(status, 200);
    second.commit(5, "items/3/created");
    let mut keys = Vec::new();
    for _ in 0..5 {
        let r = received.recv().await.expect("delivery");
        keys.push(
            r.headers["idempotency-key"]
                .to_str()
                .expect("ascii")
                .to_owned(),
        );
    }
    assert_eq!(keys, ["1", "2", "3", "4", "5"]);
}

#[tokio::test]
async fn deliveries_older_than_the_hold_time_are_given_up_and_counted() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}/hook", l.local_addr().expect("addr"))
    };
    let s = setup(
        WebhookStore::open_in_memory().expect("store"),
        Arc::new(MemoryEventLog::new(100)),
    )
    .await;
    // 0.00001 h = 36 ms.
    let sub = s
        .create(
            json!({"topic_filter": "#", "target_url": dead, "target_retry": true,
                       "database_hold_time_h": 0.00001}),
        )
        .await;
    let id = sub["id"].as_i64().expect("id");
    s.commit(1, "items/1/created");
    for _ in 0..2000 {
        let shown = s.webhooks.store().get(id).expect("get").expect("exists");
        if shown.queued_count == 0
            && shown
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("event 1 given up"))
        {
            assert!(shown.failed_count >= 1, "the give-up is counted");
            assert_eq!(shown.delivered_count, 0);
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the delivery was never given up");
}

/// An [`EventLog`] recording the ids it hands out (to see what a restart re-reads).
struct RecordingLog {
    inner: MemoryEventLog,
    read: std::sync::Mutex<Vec<u64>>,
}

impl spot_push::EventLog for RecordingLog {
    fn events_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> spot_push::BoxFuture<'_, Result<Vec<Published>, spot_push::LogError>> {
        Box::pin(async move {
            let events = self.inner.events_after(after_id, limit).await?;
            let mut read = self.read.lock().expect("lock");
            read.extend(events.iter().map(|e| e.id()));
            Ok(events)
        })
    }
}

fn webhook_outlet(hub: &Hub) -> spot_push::OutletStats {
    hub.stats()
        .outlets
        .into_iter()
        .find(|o| o.outlet == "webhooks")
        .expect("webhooks outlet")
}

/// A current-thread runtime: the dispatcher cannot run while the test publishes, so what
/// the hub queued for it is still there to be seen.
#[tokio::test]
async fn events_no_subscription_wants_are_not_queued_nor_reread_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("push.sqlite");
    let log = Arc::new(RecordingLog {
        inner: MemoryEventLog::new(10_000),
        read: Default::default(),
    });
    let config = WebhookConfig {
        cursor_checkpoint: Duration::from_millis(10),
        ..fast_config()
    };
    let commit = |hub: &Hub, id: u64, topic: &str| {
        let event = Published::from_value(id, topic, &json!({ "n": id })).expect("event");
        log.inner.append(event.clone());
        hub.publish(event);
    };
    // With no subscription at all, nothing reaches the dispatcher.
    let hub = Hub::new(HubConfig::default());
    let store = WebhookStore::open(&db).expect("store");
    let webhooks = Webhooks::start(store, &hub, log.clone(), config.clone()).expect("start");
    commit(&hub, 1, "spots/1/connected/203");
    let outlet = webhook_outlet(&hub);
    assert_eq!(
        (outlet.subscriptions, outlet.queued, outlet.dropped_total),
        (1, 0, 0),
        "nothing queued for the dispatcher"
    );
    webhooks.shutdown();
    drop(webhooks);
    // One subscription to `spots/#`: event 2 is queued and delivered (stored cursor 2),
    // then 998 `items` events nobody wants are not queued.
    let (target, mut received) = receiver(0).await;
    let store = WebhookStore::open(&db).expect("reopen");
    store
        .create(
            spot_push::webhook::SubscriptionInput {
                topic_filter: Some("spots/#".into()),
                target_url: Some(Some(target)),
                ..Default::default()
            },
            1,
        )
        .expect("subscription");
    let webhooks = Webhooks::start(store, &hub, log.clone(), config.clone()).expect("start");
    commit(&hub, 2, "spots/1/connected/203");
    let delivery = received.recv().await.expect("delivery");
    assert_eq!(delivery.headers["idempotency-key"], "2");
    for id in 3..=1000 {
        commit(&hub, id, "items/1/created");
    }
    assert_eq!(
        webhook_outlet(&hub).queued,
        0,
        "only wanted events are queued"
    );
    // Idle: the stored cursor moves past what nobody wanted.
    for _ in 0..2000 {
        if webhooks.store().cursor().expect("cursor") == Some(1000) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(webhooks.store().cursor().expect("cursor"), Some(1000));
    webhooks.shutdown();
    drop(webhooks);
    // Restart: the dispatcher starts after 1000 and reads nothing back from the log.
    let hub = Hub::new(HubConfig::default());
    let store = WebhookStore::open(&db).expect("reopen");
    let _webhooks = Webhooks::start(store, &hub, log.clone(), config).expect("restart");
    commit(&hub, 1001, "items/1/created");
    commit(&hub, 1002, "spots/1/disconnected/203");
    let delivery = received.recv().await.expect("delivery");
    assert_eq!(delivery.headers["idempotency-key"], "1002");
    let read = log.read.lock().expect("lock").clone();
    assert!(
        read.iter().all(|id| *id > 1000),
        "events before the restart were re-read from the log: {read:?}"
    );
}

#[tokio::test]
async fn raw_spot_events_are_not_delivered_to_webhooks() {
    let (target, mut received) = receiver(0).await;
    let s = setup(
        WebhookStore::open_in_memory().expect("store"),
        Arc::new(MemoryEventLog::new(100)),
    )
    .await;
    s.create(json!({"topic_filter": "#", "target_url": target}))
        .await;
    let raw = Published::raw("spots/a/events/hit/create", "{}".into()).expect("raw");
    s.hub.publish(raw);
    assert_eq!(webhook_outlet(&s.hub).queued, 0, "not even queued");
    s.commit(1, "spots/a/connected/203");
    let delivery = received.recv().await.expect("delivery");
    assert_eq!(delivery.headers["idempotency-key"], "1");
}

#[tokio::test]
async fn https_targets_are_verified_and_a_ca_file_makes_a_private_certificate_trusted() {
    let (target, mut received) = https_receiver().await;
    // Public roots only: the test certificate is refused, the failure says why.
    let s = setup(
        WebhookStore::open_in_memory().expect("store"),
        Arc::new(MemoryEventLog::new(100)),
    )
    .await;
    let sub = s
        .create(json!({"topic_filter": "#", "target_url": target, "target_retry": false}))
        .await;
    s.commit(1, "items/1/created");
    let failed = loop {
        let shown = s.get(&sub["id"]).await;
        if shown["failed_count"] == 1 {
            break shown;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let error = failed["last_error"].as_str().expect("last_error");
    assert!(error.contains("certificate"), "{error}");
    assert_eq!(failed["delivered_count"], 0);
    s.webhooks.shutdown();

    // With the certificate as CA file (--webhook-ca-cert): delivered over HTTPS.
    let hub = Hub::new(HubConfig::default());
    let log = Arc::new(MemoryEventLog::new(100));
    let config = WebhookConfig {
        ca_cert: Some(localhost_cert()),
        ..fast_config()
    };
    let store = WebhookStore::open_in_memory().expect("store");
    store
        .create(
            spot_push::webhook::SubscriptionInput {
                topic_filter: Some("#".into()),
                target_url: Some(Some(target)),
                secret: Some("k".into()),
                ..Default::default()
            },
            0,
        )
        .expect("subscription");
    let _webhooks = Webhooks::start(store, &hub, log.clone(), config).expect("start");
    let event = Published::from_value(1, "items/1/created", &json!({"n": 1})).expect("event");
    log.append(event.clone());
    hub.publish(event);
    let delivery = received.recv().await.expect("delivery over HTTPS");
    assert_eq!(delivery.headers["idempotency-key"], "1");
    assert_eq!(
        delivery.headers["x-spot-signature-256"],
        signature("k", delivery.body.as_bytes()).as_str()
    );
    assert!(
        received.try_recv().is_err(),
        "the refused attempt never reached the target"
    );
}

#[test]
fn a_bad_ca_file_stops_the_start_naming_it() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let config = WebhookConfig {
        ca_cert: Some("/nonexistent/ca.pem".into()),
        ..fast_config()
    };
    let err = Webhooks::start(
        WebhookStore::open_in_memory().expect("store"),
        &Hub::new(HubConfig::default()),
        Arc::new(MemoryEventLog::new(10)),
        config,
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

/// Polls the subscription (bounded) until `done` holds for it; returns it.
async fn wait_for(s: &Setup, id: &Value, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..2000 {
        let shown = s.get(id).await;
        if done(&shown) {
            return shown;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("subscription {id} never got there: {}", s.get(id).await);
}

#[tokio::test]
async fn a_dead_target_overflows_its_bounded_queue_then_catches_up_from_the_events_log() {
    // The target answers 503 until `up`; then it takes every delivery.
    let up = Arc::new(AtomicBool::new(false));
    let (tx, mut received) = mpsc::unbounded_channel::<String>();
    let router = {
        let up = up.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap| {
                let (up, tx) = (up.clone(), tx.clone());
                async move {
                    if !up.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let key = headers["idempotency-key"].to_str().expect("ascii");
                    let _ = tx.send(key.to_owned());
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let s = setup_with(
        WebhookStore::open_in_memory().expect("store"),
        Arc::new(MemoryEventLog::new(1000)),
        WebhookConfig {
            max_queued_events: 5,
            ..fast_config()
        },
    )
    .await;
    let sub = s
        .create(json!({"topic_filter": "items/#", "target_url": target, "target_retry": true}))
        .await;
    assert_eq!(sub["state"], "active");
    for id in 1..=20 {
        s.commit(id, "items/1/created");
    }
    s.commit(21, "spots/1/connected/203"); // not wanted: neither queued nor counted
    let shown = wait_for(&s, &sub["id"], |v| v["not_queued_count"] == 15).await;
    assert_eq!(shown["state"], "overflowed", "{shown}");
    assert_eq!(
        shown["queued_count"], 5,
        "the queue stops at its bound: {shown}"
    );

    up.store(true, Ordering::SeqCst);
    let mut keys = Vec::new();
    for _ in 1..=20 {
        let next = tokio::time::timeout(Duration::from_secs(10), received.recv());
        keys.push(next.await.expect("in time").expect("delivery"));
    }
    let expected: Vec<String> = (1..=20).map(|n| n.to_string()).collect();
    assert_eq!(
        keys, expected,
        "the queue, then the rest from the log, in order, once"
    );
    // The last delivery's row is removed after its target answered: awaited too.
    let shown = wait_for(&s, &sub["id"], |v| {
        v["state"] == "active" && v["queued_count"] == 0
    })
    .await;
    assert_eq!(shown["delivered_count"], 20, "{shown}");
    s.commit(22, "items/2/created");
    assert_eq!(received.recv().await.expect("delivery"), "22");
}
