//! Discoverability (issue 14 item 5): `/` and `/api` say where to go, `/healthz` and
//! `/readyz` say whether the server is alive and ready (and why not), and
//! `/api/openapi.json` lists exactly the routes the server serves. Real server, real HTTP
//! client (reqwest: a response is seen at its head, so the SSE stream is probed too).
//! `/healthz` and `/readyz` after a pipeline panic: the router's unit tests (the panic is
//! test-only); while commits fail: `full_disk.rs`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

/// Status, `Allow` header and body (JSON, `Null` when not JSON or not read) of `method
/// path`, with the admin key when `key`. A streaming answer (`text/event-stream`) is not
/// read past its head.
async fn probe(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: bool,
    body: &str,
) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("http://{addr}{path}"),
        )
        .header("content-type", "application/json")
        .body(body.to_string());
    if key {
        req = req.header("x-api-key", common::admin_key(addr));
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), req.send())
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let allow = resp
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_string());
    let streaming = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
    let json = if streaming {
        Value::Null
    } else {
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null)
    };
    (status, allow, json)
}

/// The OpenAPI document, fetched without a key.
async fn document(addr: SocketAddr) -> Value {
    let (status, _, doc) = probe(addr, "GET", "/api/openapi.json", false, "").await;
    assert_eq!(status, 200, "{doc}");
    doc
}

/// `path` with its parameters filled in.
fn instantiate(path: &str) -> String {
    path.replace("{collection}", "items")
        .replace("{serial}", "7")
        .replace("{id}", "1")
}

/// Whether the answer is the router's own `404` for an unknown path or a `405`.
fn not_routed(status: u16, body: &Value) -> bool {
    status == 405
        || (status == 404
            && body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("no such path")))
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes_the_server_serves() {
    let (server, _dir) = common::start(|_| {}).await;
    let addr = server.http_addr();
    let doc = document(addr).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = doc["paths"].as_object().expect("paths");
    let listed: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    // The routes a reader of router.rs and spot-push expects, each present.
    for path in [
        "/",
        "/api",
        "/api/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/spots/{serial}/events",
        "/api/spots",
        "/api/{collection}",
        "/api/{collection}/{id}",
        "/api/keys",
        "/api/keys/{id}",
        "/api/enrolments",
        "/api/ws",
        "/api/stream",
        "/api/subscriptions",
        "/api/subscriptions/{id}",
    ] {
        assert!(listed.contains(path), "{path} not in {listed:?}");
    }
    for (path, item) in paths {
        let concrete = instantiate(path);
        let documented: Vec<&str> = METHODS
            .into_iter()
            .filter(|m| item.get(*m).is_some())
            .collect();
        assert!(!documented.is_empty(), "{path}: no operation");
        for method in METHODS {
            let upper = method.to_uppercase();
            let body = if method == "post" || method == "put" {
                "{}"
            } else {
                ""
            };
            let (status, allow, answer) = probe(addr, &upper, &concrete, true, body).await;
            if documented.contains(&method) {
                // Served: the handler's answer (to these made-up arguments), not the
                // router's refusal nor a failure.
                assert!(
                    !not_routed(status, &answer),
                    "{upper} {concrete} is documented but not served: {status} {answer}"
                );
                assert!(status < 500, "{upper} {concrete}: {status} {answer}");
                let role = &item[method]["x-spot-role"];
                assert!(
                    ["public", "spot", "read", "write", "admin"]
                        .contains(&role.as_str().unwrap_or("")),
                    "{upper} {path}: x-spot-role {role}"
                );
            } else {
                // Not documented: refused by the router, naming the documented methods.
                assert_eq!(
                    status, 405,
                    "{upper} {concrete} is served but not documented"
                );
                let allowed: Vec<String> = documented.iter().map(|m| m.to_uppercase()).collect();
                assert_eq!(
                    allow.as_deref(),
                    Some(allowed.join(", ").as_str()),
                    "{upper} {concrete}"
                );
            }
        }
    }
    // A path outside the document is the router's 404, which points to the document.
    let (status, _, answer) = probe(addr, "GET", "/nothing/here", true, "").await;
    assert!(not_routed(status, &answer), "{status} {answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("/api/openapi.json"));
    server.shutdown().await;
}

#[tokio::test]
async fn healthz_and_readyz_need_no_key_and_say_ok() {
    let (server, _dir) = common::start(|_| {}).await;
    let addr = server.http_addr();
    for path in ["/healthz", "/readyz", "/readyz/"] {
        let (status, _, body) = probe(addr, "GET", path, false, "").await;
        assert_eq!(
            (status, &body),
            (200, &serde_json::json!({"ok": true})),
            "{path}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_root_and_api_indexes_link_to_what_is_served() {
    let (server, _dir) = common::start(|_| {}).await;
    let addr = server.http_addr();
    let doc = document(addr).await;
    let (status, _, root) = probe(addr, "GET", "/", false, "").await;
    assert_eq!(status, 200, "{root}");
    assert_eq!(root["name"], "spot");
    assert_eq!(root["version"], env!("CARGO_PKG_VERSION"));
    assert!(root["api_key"].as_str().unwrap().contains("admin.key"));
    let links = root["links"].as_object().unwrap();
    for name in ["api", "openapi", "healthz", "readyz", "metrics"] {
        let href = links[name].as_str().unwrap();
        assert!(
            doc["paths"].get(href).is_some(),
            "{name}: {href} not served"
        );
    }
    // `/api` needs a read key like the rest of /api.
    let (status, _, _) = probe(addr, "GET", "/api", false, "").await;
    assert_eq!(status, 401);
    let (status, _, api) = probe(addr, "GET", "/api/", true, "").await;
    assert_eq!(status, 200, "{api}");
    let names: Vec<&str> = api["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "spots",
            "locations",
            "items",
            "presences",
            "events",
            "itemlists",
            "spotlists",
            "subscriptions",
            "keys",
            "enrolments",
            "ws",
            "stream"
        ]
    );
    for c in api["collections"].as_array().unwrap() {
        let href = c["href"].as_str().unwrap();
        let (status, _, answer) = probe(addr, "GET", href, true, "").await;
        assert!(!not_routed(status, &answer), "{href}: {status} {answer}");
    }
    server.shutdown().await;
}
