//! The REST API as a client of the vendor's API sees it (issue 16): a conformance test
//! driven by the table of the vendor's spec (`fixtures/vendor-api.json`) against a real
//! server fed by the emulator, the document `docs/api-compatibility.md` made from that table,
//! and one test per difference the issue lists, named after it. Each server test runs on
//! the embedded server and on a two-node cluster (written to node A, read from node B;
//! subscriptions, each node's own, on node A).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use serde_json::{json, Value};

on_backends! {
    #[tokio::test]
    every_documented_get_answers_the_documented_fields_and_parameters,
    unknown_query_parameters_are_a_400_naming_them_not_an_empty_200,
    id_only_returns_objects_with_reference_ids_not_an_array_of_strings,
    next_url_is_absolute_behind_a_proxy_and_url_next_stays_relative,
    following_next_url_under_sort_id_keeps_its_link_at_the_end_for_polling,
    count_and_count_current_are_in_the_envelope,
    resources_carry_url_and_a_url_beside_each_reference,
    events_offer_the_vendors_topic_object_payload_and_time_expire,
    locations_and_items_take_post_and_delete,
    get_modify_put_round_trips_and_a_changed_read_only_field_is_named,
    report_location_null_and_the_antenna_array_are_accepted,
    serial_number_stays_a_string_and_technology_uses_the_vendors_values,
    json_and_csv_suffixes_are_served,
    timeout_s_long_polls_until_a_result_exists_or_the_time_is_up,
    subscriptions_refuse_unknown_list_parameters,
    a_subscriptions_events_are_those_of_the_log_its_topic_filter_matches,
    the_vendors_subscription_fields_are_taken_or_refused_naming_them,
    an_item_list_round_trips_post_get_put_delete_and_survives_a_restart,
    an_items_sets_are_the_item_lists_it_is_in_and_filter_items,
    a_spot_list_takes_spots_by_id_or_serial_and_refuses_other_ids,
    a_store_only_subscription_keeps_its_events_without_a_target,
    a_subscription_round_trips_get_modify_put_and_a_changed_read_only_field_is_named,
    metadata_is_stored_on_items_and_locations_and_survives_a_restart,
}

/// The table of the vendor's spec.
fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/vendor-api.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("the fixture is JSON")
}

/// How this server stands to one thing of the spec: `works`, `differs` or `missing`, and
/// why.
fn status_of(resource: &Value, key: &str, kind: &str) -> (String, String) {
    let differs = &resource["differs"];
    let entry = differs
        .get(key)
        .or_else(|| differs.get(format!("{kind}:*")))
        .or_else(|| differs.get("*"))
        .and_then(Value::as_str)
        .unwrap_or("works");
    match entry.split_once(": ") {
        Some((status, why)) => (status.to_string(), why.to_string()),
        None => (entry.to_string(), String::new()),
    }
}

/// The list parameters of a resource: the common ones (but those it has not) and its own.
fn parameters(resource: &Value, fixture: &Value) -> Vec<String> {
    let without: Vec<&str> = resource["without"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let common = fixture["list_parameters"].as_array().unwrap();
    let listed = resource["list"].is_string();
    common
        .iter()
        .filter(|_| listed)
        .chain(resource["parameters"].as_array().unwrap())
        .filter_map(Value::as_str)
        .filter(|p| !without.contains(p))
        .map(str::to_string)
        .collect()
}

/// `docs/api-compatibility.md` as the fixture makes it.
fn compatibility_document(fixture: &Value) -> String {
    let mut out = String::new();
    out.push_str("# Compatibility with the vendor's REST API\n\n");
    out.push_str(
        "<!-- Made from crates/spot-server/tests/fixtures/vendor-api.json by the test \
         `the_compatibility_document_is_made_from_the_fixture` \
         (SPOT_WRITE_DOCS=1 cargo test -p spot-server --test vendor_api); \
         edit the fixture, not this file. -->\n\n",
    );
    out.push_str(&format!(
        "Reference: {}\n\n",
        fixture["source"].as_str().unwrap()
    ));
    out.push_str(
        "Every vendor path is served under `/api` here (`GET /items` is `GET /api/items`). \
         The conformance test (`every_documented_get_answers_the_documented_fields_and_\
         parameters`) checks each line marked `works` against a real server fed by the \
         emulator: each field present with its type, each parameter answered `200`; a \
         parameter marked `missing` must be a `400` saying so.\n\n## How this server answers\n\n",
    );
    for note in fixture["notes"].as_array().unwrap() {
        out.push_str(&format!("- {}\n", note.as_str().unwrap()));
    }
    for resource in fixture["resources"].as_array().unwrap() {
        let name = resource["name"].as_str().unwrap();
        out.push_str(&format!(
            "\n## {name}\n\n| what | name | here | why |\n|---|---|---|---|\n"
        ));
        let mut row = |what: &str, shown: String, key: &str, kind: &str| {
            let (status, why) = status_of(resource, key, kind);
            out.push_str(&format!("| {what} | {shown} | {status} | {why} |\n"));
        };
        for op in resource["operations"].as_array().unwrap() {
            let op = op.as_str().unwrap();
            let (method, path) = op.split_once(' ').unwrap();
            row("path", format!("`{method} /api{path}`"), op, "path");
        }
        for p in parameters(resource, fixture) {
            row(
                "parameter",
                format!("`{p}`"),
                &format!("param:{p}"),
                "param",
            );
        }
        for (field, kind) in resource["fields"].as_object().unwrap() {
            let shown = format!("`{field}` ({})", kind.as_str().unwrap());
            row("field", shown, &format!("field:{field}"), "field");
        }
        for (variant, fields) in resource["variants"].as_object().unwrap() {
            for (field, kind) in fields.as_object().unwrap() {
                let shown = format!("`{field}` ({}) with `{variant}`", kind.as_str().unwrap());
                row("field", shown, &format!("field:{field}"), "field");
            }
        }
    }
    out
}

#[test]
fn the_compatibility_document_is_made_from_the_fixture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/api-compatibility.md"
    );
    let made = compatibility_document(&fixture());
    if std::env::var_os("SPOT_WRITE_DOCS").is_some() {
        std::fs::write(path, &made).unwrap();
    }
    let written = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        written == made,
        "docs/api-compatibility.md is not what the fixture makes: run \
         SPOT_WRITE_DOCS=1 cargo test -p spot-server --test vendor_api"
    );
}

/// Whether `value` has the fixture's type (`string`, `integer`, `boolean`, `object`,
/// `array`, `number`, `any`; `?`: or null).
fn has_type(value: Option<&Value>, kind: &str) -> bool {
    let (kind, nullable) = match kind.strip_suffix('?') {
        Some(kind) => (kind, true),
        None => (kind, false),
    };
    match value {
        None => false,
        Some(Value::Null) => nullable || kind == "any",
        Some(v) => match kind {
            "any" => true,
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            other => panic!("the fixture's type {other:?} is unknown"),
        },
    }
}

/// Feeds a server the emulator's spots for a moment (items appear, move, leave).
async fn feed(addr: std::net::SocketAddr) {
    use spot_emulator::buffer::BufferLimits;
    use spot_emulator::fleet::{self, FleetConfig};
    use spot_emulator::population::PopulationParams;
    use spot_emulator::uplink::{ServerAddr, UplinkConfig};
    let mut uplink = UplinkConfig::new(ServerAddr::parse(&format!("http://{addr}")).unwrap());
    uplink.post_ms = 100;
    uplink.tick_ms = 5;
    uplink.rate = 200.0;
    uplink.drain_ms = 10_000;
    let config = FleetConfig {
        uplink,
        spots: 2,
        first_serial: 700,
        duration: Some(Duration::from_millis(600)),
        seed: 16,
        population: PopulationParams::default(),
        buffer_dir: None,
        buffer_limits: BufferLimits::default(),
        replay: None,
    };
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = fleet::prepare(&config, &stop_rx).unwrap();
    let summary = fleet::run(tasks, false).await;
    assert!(summary.panics.is_empty(), "{:?}", summary.panics);
}

/// The id of the first document of a list.
async fn first_id(addr: std::net::SocketAddr, list: &str) -> String {
    let (status, v) = get(addr, &format!("{list}?limit=1")).await;
    assert_eq!(status, 200, "{list}: {v}");
    match &v["results"][0]["id"] {
        Value::String(id) => id.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("{list}: no document ({other})"),
    }
}

async fn every_documented_get_answers_the_documented_fields_and_parameters(backend: Backend) {
    let site = start_on(backend, |_| {}).await;
    let a = site.a();
    feed(a).await;
    let (status, v) = call(
        a,
        "POST",
        "/api/subscriptions",
        Some(json!({"topic_filter": "items/#", "target_url": "http://127.0.0.1:9/hook"})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    for lists in ["/api/sets/itemlists", "/api/sets/spotlists"] {
        let body = json!({"label": "dock", "metadata": {"x": 1}});
        let (status, v) = call(a, "POST", lists, Some(body)).await;
        assert_eq!(status, 201, "{lists}: {v}");
    }
    // Subscriptions are node A's own (webhooks.db); the rest is read from node B.
    let node = |path: &str| {
        if path
            .trim_start_matches("/api")
            .starts_with("/subscriptions")
        {
            site.a()
        } else {
            site.b()
        }
    };
    let mut ids = std::collections::HashMap::new();
    for (name, list) in [
        ("spot", "/api/spots"),
        ("location", "/api/locations"),
        ("item", "/api/items"),
        ("presence", "/api/presences"),
        ("event", "/api/events"),
        ("subscription", "/api/subscriptions"),
        ("itemlist", "/api/sets/itemlists"),
        ("spotlist", "/api/sets/spotlists"),
    ] {
        if name == "event" && !backend.has_events_log() {
            continue;
        }
        ids.insert(name, first_id(node(list), list).await);
    }
    let fill = |text: &str| {
        let mut text = text.to_string();
        for (name, id) in &ids {
            text = text.replace(&format!("{{{name}}}"), id);
        }
        text
    };
    let fixture = fixture();
    let mut checked = 0;
    for resource in fixture["resources"].as_array().unwrap() {
        let Some(list) = resource["list"].as_str() else {
            continue;
        };
        let name = resource["name"].as_str().unwrap();
        let addr = node(list);
        let one = fill(resource["one"].as_str().unwrap());
        // Every documented field, with its type, in a list's documents and a single one.
        let fields = |variant: Option<&str>| {
            let fields = match variant {
                Some(v) => &resource["variants"][v],
                None => &resource["fields"],
            };
            fields.as_object().unwrap().clone()
        };
        let mut variants: Vec<Option<&str>> = vec![None];
        variants.extend(
            resource["variants"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| Some(k.as_str())),
        );
        // Without the events log, no event to look at (its parameters are still checked).
        if name == "events" && !backend.has_events_log() {
            variants.clear();
        }
        for variant in variants {
            let query = variant.map(|v| format!("?{v}")).unwrap_or_default();
            let (status, page) = get(addr, &format!("/api{list}{query}")).await;
            assert_eq!(status, 200, "{name}{query}: {page}");
            let (status, single) = get(addr, &format!("/api{one}{query}")).await;
            assert_eq!(status, 200, "{one}{query}: {single}");
            let docs = page["results"].as_array().unwrap();
            assert!(!docs.is_empty(), "{name}: the emulator made none");
            for doc in docs.iter().take(3).chain([&single]) {
                for (field, kind) in fields(variant) {
                    let key = format!("field:{field}");
                    let (status, _) = status_of(resource, &key, "field");
                    let kind = kind.as_str().unwrap();
                    match status.as_str() {
                        "works" => assert!(
                            has_type(doc.get(&field), kind),
                            "{name}{query}: {field} is not {kind}: {doc}"
                        ),
                        "missing" => assert!(
                            doc.get(&field).is_none(),
                            "{name}: {field} is there: mark it in the fixture"
                        ),
                        _ => {}
                    }
                    checked += 1;
                }
            }
        }
        // Every documented parameter is answered (200), or refused saying so (400).
        for param in parameters(resource, &fixture) {
            let sample = fixture["samples"][&param]
                .as_str()
                .unwrap_or_else(|| panic!("no sample value for {param}"));
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair(&param, &fill(sample))
                .finish();
            let (status, v) = get(addr, &format!("/api{list}?{query}")).await;
            let (claim, _) = status_of(resource, &format!("param:{param}"), "param");
            let expected = if claim == "missing" { 400 } else { 200 };
            assert_eq!(status, expected, "{name}?{query} ({claim}): {v}");
            checked += 1;
        }
    }
    assert!(checked > 200, "{checked} checks");
    site.shutdown().await;
}

/// The request of [`call`] with more headers.
async fn call_with(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut send = client::<http_body_util::Full<Bytes>>(addr).await;
    let mut req = hyper::Request::builder()
        .uri(path)
        .header("x-api-key", admin_key(addr));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(http_body_util::Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn unknown_query_parameters_are_a_400_naming_them_not_an_empty_200(backend: Backend) {
    let site = seeded_on(backend, 3).await;
    let addr = site.b();
    for (path, param) in [
        ("/api/items?colour=red", "colour"),
        ("/api/items?location.label=x", "location.label"),
        ("/api/spots?sort=-colour", "sort"),
        ("/api/items?select=colour", "select"),
        ("/api/items/x?limit=3", "limit"),
        ("/api/presences?technology=rfid", "technology"),
    ] {
        let (status, v) = get(addr, path).await;
        assert_eq!(
            (status, v["parameter"].as_str()),
            (400, Some(param)),
            "{path}: {v}"
        );
    }
    // What the issue found read as filters now works.
    let (_, spot) = get(addr, "/api/spots/300").await;
    let location = spot["report_location"].as_str().unwrap().to_string();
    for (path, expected) in [
        (
            "/api/items?select=code_hex&results_only=true".to_string(),
            3,
        ),
        ("/api/items?timeout_s=0.1&results_only=true".into(), 3),
        (
            "/api/items?text=0000000000000001&results_only=true".into(),
            1,
        ),
        (
            "/api/items?text=-0000000000000001&results_only=true".into(),
            2,
        ),
        ("/api/items?metadata.x=1&results_only=true".into(), 0),
        (
            "/api/events?topic.resource_type=items&topic.action=created&results_only=true".into(),
            3,
        ),
        ("/api/items?code_hex=*02&results_only=true".into(), 1),
        (
            "/api/items?after_code=000000000000000000000000&results_only=true".into(),
            2,
        ),
        (
            format!("/api/items?location={location}&results_only=true"),
            3,
        ),
        ("/api/locations?label=*POT3*&results_only=true".into(), 1),
    ] {
        if path.starts_with("/api/events") && !backend.has_events_log() {
            continue;
        }
        let (status, v) = get(addr, &path).await;
        assert_eq!(status, 200, "{path}: {v}");
        assert_eq!(v.as_array().map(Vec::len), Some(expected), "{path}: {v}");
    }
    let (_, v) = get(addr, "/api/items?select=code_hex&results_only=true").await;
    let keys: Vec<&str> = v[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, ["id", "code_hex", "url"], "select keeps id and url");
    site.shutdown().await;
}

async fn id_only_returns_objects_with_reference_ids_not_an_array_of_strings(backend: Backend) {
    let site = seeded_on(backend, 2).await;
    let addr = site.b();
    let (_, v) = get(addr, "/api/presences?id_only=true&results_only=true").await;
    let first = &v[0];
    assert!(first.is_object(), "{v}");
    assert!(
        first["item_id"].is_string() && first["location_id"].is_string(),
        "{first}"
    );
    assert!(
        first.get("url").is_none() && first.get("item_url").is_none(),
        "{first}"
    );
    let (_, v) = get(addr, "/api/presences?results_only=true").await;
    let first = &v[0];
    assert!(first["url"]
        .as_str()
        .unwrap()
        .starts_with("http://test/api/presences/"));
    assert!(first.get("item_id").is_none(), "{first}");
    site.shutdown().await;
}

async fn next_url_is_absolute_behind_a_proxy_and_url_next_stays_relative(backend: Backend) {
    let site = seeded_on(backend, 3).await;
    let addr = site.b();
    let (_, v) = get(addr, "/api/items?limit=1").await;
    assert_eq!(
        v["next_url"].as_str().unwrap(),
        format!("http://test{}", v["url_next"].as_str().unwrap())
    );
    assert!(v["url_next"].as_str().unwrap().starts_with("/api/items?"));
    let proxied = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "brain.example, inner"),
        ("host", "10.0.0.1:8080"),
    ];
    let (_, v) = call_with(addr, "/api/items?limit=1", &proxied).await;
    let next = v["next_url"].as_str().unwrap();
    assert!(
        next.starts_with("https://brain.example/api/items?"),
        "{next}"
    );
    assert!(v["results"][0]["url"]
        .as_str()
        .unwrap()
        .starts_with("https://brain.example/api/items/"));
    let (_, v) = call_with(addr, "/api/items?limit=1", &[("host", "h:1")]).await;
    assert!(v["next_url"]
        .as_str()
        .unwrap()
        .starts_with("http://h:1/api/items?"));
    site.shutdown().await;
}

async fn following_next_url_under_sort_id_keeps_its_link_at_the_end_for_polling(backend: Backend) {
    let site = seeded_on(backend, 5).await;
    let (a, addr) = (site.a(), site.b());
    let mut path = "/api/items?sort=id&limit=2".to_string();
    let mut codes = Vec::new();
    let last = loop {
        let (_, page) = get(addr, &path).await;
        let results = page["results"].as_array().unwrap().clone();
        codes.extend(
            results
                .iter()
                .map(|i| i["code_hex"].as_str().unwrap().to_string()),
        );
        let next = page["next_url"]
            .as_str()
            .expect("a link, also at the end")
            .to_string();
        path = next.strip_prefix("http://test").unwrap().to_string();
        if results.is_empty() {
            assert!(page["url_next"].is_null(), "the old link ends");
            break path;
        }
    };
    let mut expected: Vec<String> = (0..5).map(|i| format!("{i:024x}")).collect();
    if site.is_cluster() {
        // In id order, which on a cluster is creation order only within a partition
        // (items made in the same millisecond by two partitions' owners interleave).
        codes.sort();
        expected.sort();
    }
    assert_eq!(codes, expected, "no repeats, no gaps");
    // A new item appears at the end of the followed list.
    let mut conn = Raw::connect(a).await;
    let body = presence("create", &format!("{:024x}", 99), "near", None);
    assert_eq!(conn.post("300", &[&body]).await.status, 200);
    let (_, page) = get(addr, &last).await;
    assert_eq!(page["results"][0]["code_hex"], format!("{:024x}", 99));
    assert_eq!(page["count"], 1);
    assert_eq!(page["count_current"], 1);
    site.shutdown().await;
}

async fn count_and_count_current_are_in_the_envelope(backend: Backend) {
    let site = seeded_on(backend, 5).await;
    let addr = site.b();
    let (_, v) = get(addr, "/api/items?limit=2").await;
    assert_eq!(
        (v["count"].clone(), v["count_current"].clone()),
        (json!(5), json!(2))
    );
    let (_, v) = get(addr, "/api/items?limit=2&code_hex=0*").await;
    assert_eq!(v["count"], Value::Null, "a pass over all only when asked");
    let (_, v) = get(addr, "/api/items?limit=2&code_hex=0*&count=true").await;
    assert_eq!(v["count"], 5);
    let (_, v) = get(addr, "/api/items?limit=2&code_hex=*0").await;
    assert_eq!(
        v["count"], 1,
        "known when the filter ran out before the page filled"
    );
    let (_, v) = get(addr, "/api/items?limit=2&sort=code_hex&is_present=true").await;
    assert_eq!(
        (v["count"].clone(), v["count_current"].clone()),
        (json!(5), json!(2))
    );
    site.shutdown().await;
}

async fn resources_carry_url_and_a_url_beside_each_reference(backend: Backend) {
    let site = seeded_on(backend, 1).await;
    let addr = site.b();
    let (_, spot) = get(addr, "/api/spots/300").await;
    let location = spot["report_location"].as_str().unwrap();
    let id = spot["id"].as_str().unwrap();
    assert_eq!(spot["url"], format!("http://test/api/spots/{id}"));
    assert_eq!(
        spot["report_location_url"],
        format!("http://test/api/locations/{location}")
    );
    let (_, items) = get(addr, "/api/items?results_only=true&populate=location").await;
    assert_eq!(
        items[0]["location"]["url"],
        format!("http://test/api/locations/{location}")
    );
    assert_eq!(items[0]["location_url"], items[0]["location"]["url"]);
    site.shutdown().await;
}

async fn events_offer_the_vendors_topic_object_payload_and_time_expire(backend: Backend) {
    let site = seeded_on(backend, 1).await;
    let addr = site.b();
    let (_, v) = get(
        addr,
        "/api/events?topic.resource_type=items&topic.action=created&results_only=true",
    )
    .await;
    let text = &v[0];
    assert!(
        text["topic"].as_str().unwrap().starts_with("items/"),
        "our text stays: {text}"
    );
    assert_eq!(text["payload"], text["data"]);
    assert!(text["time_expire"].is_string());
    let (_, v) = get(
        addr,
        "/api/events?topic.resource_type=items&topic.action=created&topic_format=object&results_only=true",
    )
    .await;
    let object = &v[0];
    assert_eq!(object["topic"]["resource_type"], "items");
    assert_eq!(object["topic"]["action"], "created");
    assert_eq!(object["topic_text"], text["topic"]);
    let id = object["topic"]["resource_id"].as_str().unwrap();
    assert_eq!(
        object["topic"]["resource_url"],
        format!("http://test/api/items/{id}")
    );
    let (_, v) = get(
        addr,
        &format!("/api/events?topic.resource={id}&results_only=true"),
    )
    .await;
    assert!(
        !v.as_array().unwrap().is_empty(),
        "topic.resource filters by the resource id"
    );
    site.shutdown().await;
}

async fn locations_and_items_take_post_and_delete(backend: Backend) {
    let site = seeded_on(backend, 1).await;
    let (a, addr) = (site.a(), site.b());
    let (status, location) = call(
        a,
        "POST",
        "/api/locations",
        Some(json!({"label": "dock 7"})),
    )
    .await;
    assert_eq!(status, 201, "{location}");
    assert_eq!(location["label"], "dock 7");
    let id = location["id"].as_str().unwrap().to_string();
    assert_eq!(
        location["resource"],
        json!({"id": id, "url": format!("http://test/api/locations/{id}")})
    );
    let (status, item) = call(
        a,
        "POST",
        "/api/items",
        Some(json!({"code_hex": "abc123", "technology": "rfid", "label": "pallet"})),
    )
    .await;
    assert_eq!(status, 201, "{item}");
    assert_eq!(
        (item["technology"].as_str(), item["is_present"].as_bool()),
        (Some("rfid"), Some(false))
    );
    let (status, _) = call(a, "POST", "/api/items", Some(json!({"code_hex": "abc123"}))).await;
    assert_eq!(status, 409, "one item per code and code type");
    let item_id = item["id"].as_str().unwrap();
    let (status, _) = call(a, "DELETE", &format!("/api/items/{item_id}"), None).await;
    assert_eq!(status, 200);
    let (status, _) = get(addr, &format!("/api/items/{item_id}")).await;
    assert_eq!(status, 404);
    let (status, _) = call(a, "DELETE", &format!("/api/locations/{id}"), None).await;
    assert_eq!(status, 200);
    // In use: the spot's location, a present item, a spot.
    let (_, spot) = get(addr, "/api/spots/300").await;
    let in_use = spot["report_location"].as_str().unwrap();
    let (status, v) = call(a, "DELETE", &format!("/api/locations/{in_use}"), None).await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("reports to"), "{v}");
    let present = first_id(addr, "/api/items").await;
    let (status, _) = call(a, "DELETE", &format!("/api/items/{present}"), None).await;
    assert_eq!(status, 409);
    let (status, _) = call(a, "DELETE", "/api/spots/300", None).await;
    assert_eq!(status, 405, "spots are not deleted");
    site.shutdown().await;
}

async fn get_modify_put_round_trips_and_a_changed_read_only_field_is_named(backend: Backend) {
    let site = seeded_on(backend, 1).await;
    let (a, addr) = (site.a(), site.b());
    for collection in ["spots", "locations", "items"] {
        let id = first_id(addr, &format!("/api/{collection}")).await;
        let path = format!("/api/{collection}/{id}");
        let (_, mut doc) = get(addr, &path).await;
        if collection == "spots" {
            doc["config_request"] = json!({"volume": 3});
        } else {
            doc["label"] = json!("renamed");
        }
        let (status, put) = call(a, "PUT", &path, Some(doc.clone())).await;
        assert_eq!(status, 200, "{collection}: {put}");
        let (_, now) = get(addr, &path).await;
        let mut answered = put.clone();
        answered.as_object_mut().unwrap().remove("resource");
        assert_eq!(answered, now, "{collection}: PUT answers what GET answers");
        doc["id"] = json!("0000000000000001");
        let (status, v) = call(a, "PUT", &path, Some(doc)).await;
        assert_eq!(
            (status, v["field"].as_str()),
            (400, Some("id")),
            "{collection}: {v}"
        );
    }
    site.shutdown().await;
}

async fn report_location_null_and_the_antenna_array_are_accepted(backend: Backend) {
    let site = seeded_on(backend, 1).await;
    let (a, addr) = (site.a(), site.b());
    let (_, spot) = get(addr, "/api/spots/300").await;
    let location = spot["report_location"].as_str().unwrap().to_string();
    let body = json!({"report_location": null, "antenna_report_locations": [
        {"antenna_number": 2, "report_location_id": location}]});
    let (status, v) = call(a, "PUT", "/api/spots/300", Some(body)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["report_location"], Value::Null);
    assert_eq!(v["antenna_report_locations"][0]["antenna_number"], 2);
    assert_eq!(
        v["antenna_report_locations"][0]["report_location"],
        location.as_str()
    );
    let (status, v) = call(
        a,
        "PUT",
        "/api/spots/300",
        Some(json!({"antenna_report_locations": [{"antenna_number": 1, "report_location": "nowhere"}]})),
    )
    .await;
    assert_eq!(
        (status, v["field"].as_str()),
        (400, Some("antenna_report_locations"))
    );
    // As `id_only` shows it.
    let body = json!({"report_location_id": location});
    let (status, v) = call(a, "PUT", "/api/spots/300", Some(body)).await;
    assert_eq!(
        (status, v["report_location"].as_str()),
        (200, Some(location.as_str())),
        "{v}"
    );
    site.shutdown().await;
}

async fn serial_number_stays_a_string_and_technology_uses_the_vendors_values(backend: Backend) {
    let site = seeded_on(backend, 1).await;
    let addr = site.b();
    let (_, spots) = get(addr, "/api/spots?serial_number=300&results_only=true").await;
    assert_eq!(spots[0]["serial_number"], "300");
    let (_, items) = get(
        addr,
        "/api/items?technology=rfid&protocol=epcgen2&results_only=true",
    )
    .await;
    assert_eq!(items[0]["technology"], "rfid");
    assert_eq!(items[0]["code_type"], "EPC Gen2");
    assert_eq!(items[0]["type"], "tag");
    site.shutdown().await;
}

async fn json_and_csv_suffixes_are_served(backend: Backend) {
    let site = seeded_on(backend, 2).await;
    let addr = site.b();
    let (status, v) = get(addr, "/api/items.json?results_only=true").await;
    assert_eq!((status, v.as_array().map(Vec::len)), (200, Some(2)));
    let id = v[0]["id"].as_str().unwrap();
    let (status, one) = get(addr, &format!("/api/items/{id}.json")).await;
    assert_eq!((status, one["id"].as_str()), (200, Some(id)));
    let mut send = client::<http_body_util::Full<Bytes>>(addr).await;
    let req = hyper::Request::builder()
        .uri("/api/items.csv?select=code_hex&sort=id")
        .header("host", "test")
        .header("x-api-key", admin_key(addr))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "id,code_hex,url");
    assert_eq!(lines.len(), 3, "{text}");
    // Both items, one a line (in id order: on a cluster not always creation order).
    for (i, code) in [0, 1].map(|i| format!("{i:024x}")).iter().enumerate() {
        assert!(
            lines[1..].iter().any(|l| l.contains(code)),
            "item {i}: {text}"
        );
    }
    site.shutdown().await;
}

async fn timeout_s_long_polls_until_a_result_exists_or_the_time_is_up(backend: Backend) {
    let site = seeded_on(backend, 1).await;
    let (a, addr) = (site.a(), site.b());
    let started = std::time::Instant::now();
    let (status, v) = get(
        addr,
        "/api/items?code_hex=ff*&timeout_s=0.3&results_only=true",
    )
    .await;
    assert_eq!((status, v), (200, json!([])));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "waited the time out"
    );
    let poll = tokio::spawn(async move {
        get(
            addr,
            "/api/items?code_hex=ff*&timeout_s=30&results_only=true",
        )
        .await
    });
    // Gives the poll a moment to start waiting (were it late, it would still find the
    // item at its first look: the test cannot fail for it). Nothing matches before the
    // item comes, so it has not answered.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!poll.is_finished());
    let started = std::time::Instant::now();
    let mut conn = Raw::connect(a).await;
    let body = presence("create", &format!("ff{:022x}", 1), "near", None);
    assert_eq!(conn.post("300", &[&body]).await.status, 200);
    let (status, v) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(v[0]["code_hex"], format!("ff{:022x}", 1));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "answered when the item came, not {waited:?} after"
    );
    site.shutdown().await;
}

async fn subscriptions_refuse_unknown_list_parameters(backend: Backend) {
    let site = seeded_on(backend, 0).await;
    // Subscriptions are the node's own (webhooks.db): all on node A.
    let addr = site.a();
    let (status, _) = get(addr, "/api/subscriptions?limit=5").await;
    assert_eq!(status, 200);
    let (status, v) = get(addr, "/api/subscriptions?topic_filter=x").await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("topic_filter"), "{v}");
    site.shutdown().await;
}

async fn a_subscriptions_events_are_those_of_the_log_its_topic_filter_matches(backend: Backend) {
    let site = seeded_on(backend, 2).await;
    // Subscriptions are the node's own (webhooks.db): all on node A.
    let addr = site.a();
    let body = json!({"topic_filter": "items/+/created", "target_url": "http://127.0.0.1:9/h"});
    let (status, sub) = call(addr, "POST", "/api/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{sub}");
    let id = sub["id"].as_i64().unwrap();
    let (status, page) = get(addr, &format!("/api/subscriptions/{id}/events?sort=id")).await;
    assert_eq!(status, 200, "{page}");
    let topics: Vec<&str> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics.len(), 2, "{topics:?}");
    assert!(topics
        .iter()
        .all(|t| t.starts_with("items/") && t.ends_with("/created")));
    assert!(page["next_url"]
        .as_str()
        .unwrap()
        .contains(&format!("/api/subscriptions/{id}/events?")));
    let (status, _) = get(addr, "/api/subscriptions/999/events").await;
    assert_eq!(status, 404);
    let (status, v) = get(addr, &format!("/api/subscriptions/{id}/events?colour=red")).await;
    assert_eq!((status, v["parameter"].as_str()), (400, Some("colour")));
    site.shutdown().await;
}

async fn the_vendors_subscription_fields_are_taken_or_refused_naming_them(backend: Backend) {
    let site = seeded_on(backend, 0).await;
    // Subscriptions are the node's own (webhooks.db): all on node A.
    let addr = site.a();
    let base = json!({"topic_filter": "items/#", "target_url": "http://127.0.0.1:9/h"});
    let with = |field: &str, value: Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    let mut body = with("verify_target_certificate", json!(true));
    body["populate_events"] = json!(false);
    let (status, sub) = call(addr, "POST", "/api/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(
        (
            sub["verify_target_certificate"].as_bool(),
            sub["populate_events"].as_bool()
        ),
        (Some(true), Some(false))
    );
    for (field, value) in [
        ("verify_target_certificate", json!(false)),
        ("populate_events", json!(true)),
    ] {
        let (status, v) = call(addr, "POST", "/api/subscriptions", Some(with(field, value))).await;
        assert_eq!(status, 400, "{field}: {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{field}: {v}");
    }
    site.shutdown().await;
}

async fn an_item_list_round_trips_post_get_put_delete_and_survives_a_restart(backend: Backend) {
    let mut site = seeded_on(backend, 3).await;
    let (a, addr) = (site.a(), site.b());
    let body = json!({"label": "pallets", "custom": {"owner": "a"}, "metadata": {"site": "A"}});
    let (status, list) = call(a, "POST", "/api/sets/itemlists", Some(body)).await;
    assert_eq!(status, 201, "{list}");
    let id = list["id"].as_str().unwrap().to_string();
    let path = format!("/api/sets/itemlists/{id}");
    assert_eq!(list["resource"]["url"], format!("http://test{path}"));
    assert_eq!(list["list"], format!("http://test{path}/ids"));
    assert_eq!(
        (list["total"].as_u64(), list["label"].as_str()),
        (Some(0), Some("pallets"))
    );
    let (_, items) = get(addr, "/api/items?sort=id&results_only=true").await;
    let item_ids: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    let (status, v) = call(
        a,
        "POST",
        &format!("{path}/ids"),
        Some(json!(item_ids[..2])),
    )
    .await;
    assert_eq!(
        (status, &v),
        (200, &json!({"status": 200, "total": 2})),
        "{v}"
    );
    let (status, v) = call(a, "POST", &format!("{path}/ids"), Some(json!(["nope"]))).await;
    assert_eq!(status, 400, "an id of no item: {v}");
    assert!(v["error"].as_str().unwrap().contains("nope"), "{v}");
    // GET-modify-PUT.
    let (status, mut doc) = get(addr, &path).await;
    assert_eq!(status, 200, "{doc}");
    doc["label"] = json!("renamed");
    doc["metadata"] = json!({"site": "B"});
    let (status, put) = call(a, "PUT", &path, Some(doc.clone())).await;
    assert_eq!(status, 200, "{put}");
    let (_, now) = get(addr, &path).await;
    let mut answered = put.clone();
    answered.as_object_mut().unwrap().remove("resource");
    assert_eq!(answered, now, "PUT answers what GET answers");
    assert_eq!(
        (now["label"].as_str(), now["total"].as_u64()),
        (Some("renamed"), Some(2))
    );
    doc["id"] = json!("0000000000000001");
    let (status, v) = call(a, "PUT", &path, Some(doc)).await;
    assert_eq!((status, v["field"].as_str()), (400, Some("id")), "{v}");
    // The list's query language.
    let (status, page) = get(
        addr,
        "/api/sets/itemlists?label=*NAMED&total=2&select=label",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["results"].as_array().unwrap().len(), 1, "{page}");
    for (query, found) in [
        ("metadata=b", 1),
        ("metadata=zz", 0),
        ("metadata.site=B", 1),
    ] {
        let (_, page) = get(addr, &format!("/api/sets/itemlists?{query}")).await;
        let results = page["results"].as_array().unwrap();
        assert_eq!(results.len(), found, "{query}: {page}");
    }
    let (status, v) = get(addr, "/api/sets/itemlists?colour=red").await;
    assert_eq!((status, v["parameter"].as_str()), (400, Some("colour")));
    let (_, before) = get(addr, &path).await;
    let (_, members) = get(addr, &format!("{path}/ids")).await;
    assert_eq!(members, json!(item_ids[..2]));

    site.restart().await;
    let (a, addr) = (site.a(), site.b());
    let (status, after) = get(addr, &format!("{path}?id_only=true")).await;
    assert_eq!(status, 200, "{after}");
    let mut before = before;
    for field in ["url", "list"] {
        before.as_object_mut().unwrap().remove(field);
    }
    assert_eq!(after, before, "the list as it was before the restart");
    let (_, members) = get(addr, &format!("{path}/ids")).await;
    assert_eq!(members, json!(item_ids[..2]), "its members too");
    let (status, v) = call(a, "DELETE", &format!("{path}/ids/{}", item_ids[0]), None).await;
    assert_eq!(
        (status, &v),
        (200, &json!({"status": 200, "total": 1})),
        "{v}"
    );
    let (status, _) = call(a, "DELETE", &format!("{path}/ids/{}", item_ids[0]), None).await;
    assert_eq!(status, 404, "no longer a member");
    let (status, deleted) = call(a, "DELETE", &path, None).await;
    assert_eq!((status, deleted["label"].as_str()), (200, Some("renamed")));

    site.restart().await;
    let (status, _) = get(site.b(), &path).await;
    assert_eq!(status, 404, "the delete survives a restart too");
    site.shutdown().await;
}

async fn an_items_sets_are_the_item_lists_it_is_in_and_filter_items(backend: Backend) {
    let site = seeded_on(backend, 2).await;
    let (a, addr) = (site.a(), site.b());
    let item = first_id(addr, "/api/items").await;
    let (_, doc) = get(addr, &format!("/api/items/{item}")).await;
    assert_eq!(doc["sets"], json!([]), "in no list");
    let mut lists = Vec::new();
    for label in ["a", "b"] {
        let body = json!({ "label": label });
        let (_, list) = call(a, "POST", "/api/sets/itemlists", Some(body)).await;
        let id = list["id"].as_str().unwrap().to_string();
        let path = format!("/api/sets/itemlists/{id}/ids");
        let (status, v) = call(a, "POST", &path, Some(json!([item]))).await;
        assert_eq!(status, 200, "{v}");
        lists.push(id);
    }
    let (_, doc) = get(addr, &format!("/api/items/{item}")).await;
    assert_eq!(doc["sets"], json!(lists), "{doc}");
    let (status, page) = get(
        addr,
        &format!("/api/items?sets={}&results_only=true", lists[1]),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let found: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, [item.as_str()], "only the item in the list");
    let path = format!("/api/sets/itemlists/{}", lists[0]);
    let (status, _) = call(a, "DELETE", &path, None).await;
    assert_eq!(status, 200);
    let (_, doc) = get(addr, &format!("/api/items/{item}")).await;
    assert_eq!(
        doc["sets"],
        json!([lists[1]]),
        "a deleted list is gone from its items"
    );
    site.shutdown().await;
}

async fn a_spot_list_takes_spots_by_id_or_serial_and_refuses_other_ids(backend: Backend) {
    let site = seeded_on(backend, 0).await;
    let (a, addr) = (site.a(), site.b());
    let spot = first_id(addr, "/api/spots").await;
    let (status, list) = call(a, "POST", "/api/sets/spotlists", Some(json!({}))).await;
    assert_eq!(status, 201, "{list}");
    let path = format!("/api/sets/spotlists/{}", list["id"].as_str().unwrap());
    let (status, v) = call(
        a,
        "POST",
        &format!("{path}/ids"),
        Some(json!(["300", spot])),
    )
    .await;
    assert_eq!(
        (status, &v),
        (200, &json!({"status": 200, "total": 1})),
        "one spot: {v}"
    );
    let (_, members) = get(addr, &format!("{path}/ids")).await;
    assert_eq!(members, json!([spot]));
    let (status, _) = call(a, "POST", &format!("{path}/ids"), Some(json!({"ids": []}))).await;
    assert_eq!(status, 400, "the body is an array");
    let (status, _) = call(a, "POST", &format!("{path}/ids"), Some(json!(["999"]))).await;
    assert_eq!(status, 400, "no such spot");
    let (status, _) = get(addr, "/api/sets/other").await;
    assert_eq!(status, 404);
    let (status, _) = get(addr, "/api/itemlists").await;
    assert_eq!(status, 404, "served under /api/sets only");
    site.shutdown().await;
}

async fn a_store_only_subscription_keeps_its_events_without_a_target(backend: Backend) {
    let site = seeded_on(backend, 0).await;
    // Subscriptions are the node's own (webhooks.db): all on node A.
    let addr = site.a();
    let body = json!({"topic_filter": "items/#", "target_url": null, "custom": {"app": 7}});
    let (status, only) = call(addr, "POST", "/api/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{only}");
    assert_eq!(
        (&only["target_url"], &only["custom"]),
        (&Value::Null, &json!({"app": 7}))
    );
    let id = only["id"].as_i64().unwrap();
    let url = format!("http://test/api/subscriptions/{id}");
    assert_eq!(only["url"], url.as_str());
    assert_eq!(only["events_url"], format!("{url}/events"));
    // One with a target that takes nothing, to see the dispatcher has handled the events.
    let body = json!({"topic_filter": "items/#", "target_url": "http://127.0.0.1:9/h"});
    let (_, targeted) = call(addr, "POST", "/api/subscriptions", Some(body)).await;
    let targeted = targeted["id"].as_i64().unwrap();
    for code in ["a1", "a2"] {
        let body = json!({ "code_hex": code });
        let (status, _) = call(addr, "POST", "/api/items", Some(body)).await;
        assert_eq!(status, 201);
    }
    let handled = |s: &Value| {
        ["delivered_count", "failed_count", "queued_count"]
            .iter()
            .map(|f| s[f].as_i64().unwrap())
            .sum::<i64>()
    };
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (_, s) = get(addr, &format!("/api/subscriptions/{targeted}")).await;
            // Two events per item: created, and created through the API.
            if handled(&s) >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the targeted subscription got the events");
    let (_, only) = get(addr, &format!("/api/subscriptions/{id}")).await;
    assert_eq!(handled(&only), 0, "nothing queued or delivered: {only}");
    let events_url = only["events_url"]
        .as_str()
        .unwrap()
        .replace("http://test", "");
    let (status, page) = get(addr, &format!("{events_url}?sort=id")).await;
    assert_eq!(status, 200, "{page}");
    let topics: Vec<&str> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics.len(), 4, "its events are kept: {topics:?}");
    assert!(topics.iter().all(|t| t.starts_with("items/")), "{topics:?}");
    site.shutdown().await;
}

async fn a_subscription_round_trips_get_modify_put_and_a_changed_read_only_field_is_named(
    backend: Backend,
) {
    let site = seeded_on(backend, 0).await;
    // Subscriptions are the node's own (webhooks.db): all on node A.
    let addr = site.a();
    let body = json!({"topic_filter": "items/#", "target_url": "http://127.0.0.1:9/h"});
    let (_, sub) = call(addr, "POST", "/api/subscriptions", Some(body)).await;
    let path = format!("/api/subscriptions/{}", sub["id"]);
    let (_, mut doc) = get(addr, &path).await;
    doc["description"] = json!("dock doors");
    doc["custom"] = json!(["x"]);
    doc["target_url"] = Value::Null;
    let (status, put) = call(addr, "PUT", &path, Some(doc.clone())).await;
    assert_eq!(status, 200, "{put}");
    let (_, now) = get(addr, &path).await;
    assert_eq!(put, now, "PUT answers what GET answers");
    assert_eq!(
        (&now["description"], &now["custom"], &now["target_url"]),
        (&json!("dock doors"), &json!(["x"]), &Value::Null)
    );
    let mut doc = now.clone();
    doc["time_created"] = json!("2000-01-01T00:00:00Z");
    let (status, v) = call(addr, "PUT", &path, Some(doc)).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("time_created"), "{v}");
    site.shutdown().await;
}

async fn metadata_is_stored_on_items_and_locations_and_survives_a_restart(backend: Backend) {
    let mut site = seeded_on(backend, 1).await;
    let (a, addr) = (site.a(), site.b());
    let body = json!({"label": "dock", "metadata": {"floor": 2, "zone": "North"}});
    let (status, location) = call(a, "POST", "/api/locations", Some(body)).await;
    assert_eq!(status, 201, "{location}");
    assert_eq!(location["metadata"], json!({"floor": 2, "zone": "North"}));
    let location = format!("/api/locations/{}", location["id"].as_str().unwrap());
    let item = format!("/api/items/{}", first_id(addr, "/api/items").await);
    // GET-modify-PUT of the metadata.
    let (_, mut doc) = get(addr, &item).await;
    assert_eq!(doc["metadata"], json!({}), "none yet");
    doc["metadata"] = json!({"owner": "Ann"});
    let (status, put) = call(a, "PUT", &item, Some(doc)).await;
    assert_eq!(
        (status, &put["metadata"]),
        (200, &json!({"owner": "Ann"})),
        "{put}"
    );
    let (status, v) = call(a, "PUT", &item, Some(json!({"metadata": 3}))).await;
    assert_eq!(
        (status, v["field"].as_str()),
        (400, Some("metadata")),
        "{v}"
    );
    for (query, found) in [
        ("/api/items?metadata=ann", 1),
        ("/api/items?metadata.owner=Ann", 1),
        ("/api/items?metadata=bob", 0),
        ("/api/locations?metadata=north", 1),
        ("/api/locations?metadata.floor=2", 1),
    ] {
        let (status, page) = get(addr, query).await;
        assert_eq!(status, 200, "{query}: {page}");
        assert_eq!(
            page["results"].as_array().unwrap().len(),
            found,
            "{query}: {page}"
        );
    }

    site.restart().await;
    let (a, addr) = (site.a(), site.b());
    let (_, doc) = get(addr, &item).await;
    assert_eq!(doc["metadata"], json!({"owner": "Ann"}), "{doc}");
    let (_, doc) = get(addr, &location).await;
    assert_eq!(
        doc["metadata"],
        json!({"floor": 2, "zone": "North"}),
        "{doc}"
    );
    let (status, doc) = call(a, "PUT", &item, Some(json!({"metadata": null}))).await;
    assert_eq!(
        (status, &doc["metadata"]),
        (200, &json!({})),
        "cleared: {doc}"
    );

    site.restart().await;
    let (_, doc) = get(site.b(), &item).await;
    assert_eq!(doc["metadata"], json!({}), "cleared for good: {doc}");
    site.shutdown().await;
}
