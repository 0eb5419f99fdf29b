//! The REST API over loopback: collections, single resources, PUTs, errors, paging; each
//! test on the embedded server and on a two-node cluster (written to node A, read from
//! node B), but those about the events kept in memory.

mod common;

use common::*;
use serde_json::{json, Value};

on_backends! {
    #[tokio::test]
    following_url_next_with_sort_id_lists_every_item_once,
    filters_results_only_and_id_only_shape_the_answer,
    errors_are_json_with_the_right_status,
    labels_and_custom_data_are_settable_and_logged_as_api_changes,
    state_survives_a_restart,
    the_derived_events_are_listed_again_after_a_restart,
    populate_replaces_ids_with_the_referenced_documents,
    one_router_serves_every_path_with_json_errors,
    an_item_seen_by_spots_of_two_partitions_is_where_the_nearest_sees_it,
    references_to_resources_of_another_partition_are_checked_as_on_one,
    a_deleted_item_leaves_the_item_lists_of_every_partition,
}

async fn following_url_next_with_sort_id_lists_every_item_once(backend: Backend) {
    let site = seeded_on(backend, 25).await;
    let addr = site.b();
    let mut path = "/api/items?sort=id&limit=10".to_string();
    let (mut codes, mut ids) = (Vec::new(), Vec::new());
    let mut pages = 0;
    loop {
        let (status, page) = get(addr, &path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for item in page["results"].as_array().unwrap() {
            codes.push(item["code_hex"].as_str().unwrap().to_string());
            ids.push(item["id"].as_str().unwrap().to_string());
        }
        match page["url_next"].as_str() {
            Some(next) => path = next.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in id order: {ids:?}");
    // Ids are in creation order on one partition; items made in the same millisecond by
    // two partitions' owners are in the order of their partitions' ids.
    if !site.is_cluster() {
        let expected: Vec<String> = (0..25).map(|i| format!("{i:024x}")).collect();
        assert_eq!(codes, expected);
    }
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), 25, "every item once");
    site.shutdown().await;
}

async fn filters_results_only_and_id_only_shape_the_answer(backend: Backend) {
    let site = seeded_on(backend, 3).await;
    let addr = site.b();
    let (_, ids) = get(addr, "/api/items?results_only=true&id_only=true").await;
    assert_eq!(ids.as_array().unwrap().len(), 3);
    assert!(ids[0]["id"].is_string(), "documents, with ids: {ids}");
    assert!(ids[0]["location_id"].is_string(), "{ids}");
    assert!(ids[0].get("url").is_none(), "{ids}");
    let (_, spots) = get(addr, "/api/spots?serial_number=300&results_only=true").await;
    assert_eq!(spots.as_array().unwrap().len(), 1);
    let (_, none) = get(addr, "/api/spots?serial_number=301&results_only=true").await;
    assert_eq!(none, json!([]));
    let item = ids[0]["id"].as_str().unwrap();
    let (_, presences) = get(addr, &format!("/api/presences?item={item}")).await;
    assert_eq!(presences["results"].as_array().unwrap().len(), 1);
    let (_, present) = get(addr, "/api/items?is_present=true&limit=2").await;
    assert_eq!(present["is_limited"], true);
    assert_eq!(present["limit"], 2);
    site.shutdown().await;
}

async fn errors_are_json_with_the_right_status(backend: Backend) {
    let site = seeded_on(backend, 1).await;
    let (addr, a) = (site.b(), site.a());
    let (status, v) = get(addr, "/api/things").await;
    assert_eq!((status, v["error"].is_string()), (404, true));
    let (status, _) = get(addr, "/api/items/ffffffffffffffff").await;
    assert_eq!(status, 404);
    let (status, v) = get(addr, "/api/items?limit=lots").await;
    assert_eq!(status, 400);
    assert_eq!(v["parameter"], "limit");
    let (status, _) = call(a, "DELETE", "/api/items", None).await;
    assert_eq!(status, 405);
    let (status, _) = call(a, "PUT", "/api/presences/x", Some(json!({}))).await;
    assert_eq!(status, 405);
    let (status, v) = call(
        a,
        "PUT",
        "/api/spots/300",
        Some(json!({"serial_number": "1"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["field"], "serial_number");
    let (status, v) = call(
        a,
        "PUT",
        "/api/spots/300",
        Some(json!({"report_location": "nowhere"})),
    )
    .await;
    assert_eq!(
        (status, v["field"].clone()),
        (400, json!("report_location"))
    );
    site.shutdown().await;
}

async fn labels_and_custom_data_are_settable_and_logged_as_api_changes(backend: Backend) {
    let site = seeded_on(backend, 1).await;
    let (addr, a) = (site.b(), site.a());
    let (_, spot) = get(addr, "/api/spots/300").await;
    let location = spot["report_location"].as_str().unwrap().to_string();
    let (status, v) = call(
        a,
        "PUT",
        &format!("/api/locations/{location}"),
        Some(json!({"label": "dock 1", "custom": {"floor": 2}})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["label"], "dock 1");
    let (_, items) = get(addr, "/api/items?results_only=true&id_only=true").await;
    let item = items[0]["id"].as_str().unwrap().to_string();
    let (status, v) = call(
        a,
        "PUT",
        &format!("/api/items/{item}"),
        Some(json!({"label": "pallet"})),
    )
    .await;
    assert_eq!((status, v["label"].clone()), (200, json!("pallet")));
    let (_, events) = get(addr, "/api/events?results_only=true&limit=2").await;
    let topics: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["topic"].as_str())
        .collect();
    assert_eq!(
        topics,
        vec![
            format!("items/{item}/updated/put"),
            format!("locations/{location}/updated/put")
        ]
    );
    let (_, one) = get(addr, &format!("/api/locations/{location}")).await;
    assert_eq!(one["custom"], json!({"floor": 2}));
    let (_, spots) = get(addr, "/api/spots?results_only=true").await;
    assert_eq!(spots[0]["is_online"], Value::Bool(true));
    site.shutdown().await;
}

async fn state_survives_a_restart(backend: Backend) {
    let mut site = seeded_on(backend, 2).await;
    // Every node comes back on another port.
    let path = "/api/items?sort=id&results_only=true&id_only=true";
    let (_, before) = get(site.b(), path).await;
    site.restart().await;
    let (_, after) = get(site.b(), path).await;
    assert_eq!(before, after);
    let (_, spot) = get(site.b(), "/api/spots/300").await;
    assert_eq!(spot["request_counter"], 1);
    assert_eq!(spot["event_counter"], 3);
    site.shutdown().await;
}

/// On a cluster, a node's `/api/events` reads the recent history from `SPOT_OUT` when it
/// starts.
async fn the_derived_events_are_listed_again_after_a_restart(backend: Backend) {
    let mut site = seeded_on(backend, 2).await;
    let path = "/api/events?sort=id&results_only=true&id_only=true&limit=1000";
    let (status, before) = get(site.b(), path).await;
    assert_eq!(status, 200, "{before}");
    assert!(
        before.as_array().is_some_and(|e| e.len() >= 4),
        "the seed's events: {before}"
    );
    site.restart().await;
    let (_, after) = get(site.b(), path).await;
    assert_eq!(before, after);
    site.shutdown().await;
}

async fn populate_replaces_ids_with_the_referenced_documents(backend: Backend) {
    let site = seeded_on(backend, 2).await;
    let addr = site.b();
    let (status, items) = get(addr, "/api/items?populate=location&results_only=true").await;
    assert_eq!(status, 200, "{items}");
    for item in items.as_array().unwrap() {
        assert_eq!(item["location"]["label"], "spot300", "{item}");
        assert!(item["location"]["id"].is_string());
    }
    let (_, presences) = get(
        addr,
        "/api/presences?populate=item,location&results_only=true&sort=id",
    )
    .await;
    // Item 0's (on a cluster, items of two partitions need not be in creation order).
    let first = presences
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["item"]["code_hex"] == format!("{:024x}", 0))
        .unwrap_or_else(|| panic!("item 0 populated in a presence: {presences}"));
    assert_eq!(first["location"]["label"], "spot300");
    let id = first["id"].as_str().unwrap();
    let (status, one) = get(addr, &format!("/api/presences/{id}?populate=item")).await;
    assert_eq!(status, 200);
    assert_eq!(one["item"], first["item"]);
    assert!(one["location"].is_string(), "only the named field: {one}");
    let (_, spot) = get(addr, "/api/spots/300?populate=report_location").await;
    assert_eq!(spot["report_location"]["label"], "spot300", "{spot}");
    for path in [
        "/api/items?populate=spot",
        "/api/locations?populate=location",
        "/api/presences/x?populate=bogus",
    ] {
        let (status, e) = get(addr, path).await;
        assert_eq!(status, 400, "{path}: {e}");
        assert_eq!(e["parameter"], "populate", "{path}: {e}");
    }
    site.shutdown().await;
}

/// Everything under the listener goes through one router: the REST routes, ingest, the
/// outlets' routes and `/metrics` keep their paths (a trailing `/` included), and what
/// matches none answers JSON with the right status.
async fn one_router_serves_every_path_with_json_errors(backend: Backend) {
    let site = seeded_on(backend, 1).await;
    let addr = site.b();
    let (status, v) = get(addr, "/api/spots/").await;
    assert_eq!(
        (status, v["results"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let (status, v) = get(addr, "/api/streams").await;
    assert_eq!((status, v["error"].is_string()), (404, true), "{v}");
    let (status, v) = call(addr, "POST", "/api/things/300/events", None).await;
    assert_eq!((status, v["error"].is_string()), (404, true), "{v}");
    let (status, v) = get(addr, "/api/spots/300/events/").await;
    assert_eq!((status, v["error"].is_string()), (405, true), "{v}");
    let (status, v) = call(addr, "DELETE", "/api/spots/300", None).await;
    assert_eq!((status, v["error"].is_string()), (405, true), "{v}");
    let (status, _) = get(addr, "/api/subscriptions").await;
    assert_eq!(status, 200, "the outlets' routes are merged in");
    let (status, _) = get(addr, "/metrics/").await;
    assert_eq!(status, 200);
    site.shutdown().await;
}

/// Issue 13 item 7: the derived events the REST API serves from memory are bounded by
/// `events_max_in_memory`, also when they are loaded again at a restart.
#[tokio::test]
async fn events_kept_in_memory_are_at_most_events_max_in_memory_also_after_a_restart() {
    let limits = spot_server::ServerLimits {
        events_max_in_memory: 5,
        ..spot_server::ServerLimits::default()
    };
    let (server, dir) = start(|c| c.limits = limits.clone()).await;
    let mut conn = Raw::connect(server.http_addr()).await;
    let mut body = spot_create(301, 1);
    for i in 0..20 {
        body.extend(presence("create", &format!("{i:024x}"), "near", None));
    }
    assert_eq!(conn.post("301", &[&body]).await.status, 200);
    let newest = |events: &Value| -> Vec<String> {
        let results = events["results"].as_array().expect("results");
        let ids = results
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string());
        ids.collect()
    };
    let (_, before) = get(server.http_addr(), "/api/events?limit=1000&sort=id").await;
    assert_eq!(newest(&before).len(), 5, "{before}");
    server.shutdown().await;
    let server = common::bind(spot_server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        sync: spot_server::Durability::Normal,
        limits,
        ..spot_server::ServerConfig::default()
    })
    .await
    .unwrap();
    let (_, after) = get(server.http_addr(), "/api/events?limit=1000&sort=id").await;
    assert_eq!(newest(&after), newest(&before), "the same newest five");
    server.shutdown().await;
}

/// The item merge across partitions: on the cluster, spots 300 and the other spot are
/// in partitions owned by different nodes, so one of them reports the item to the other
/// partition's owner ([`spot_server::domain::ItemReport`]), which merges both spots'
/// reports as the embedded server does.
/// A serial number whose spot is in another partition than spot 300's on the cluster.
fn serial_of_another_partition() -> u64 {
    use spot_server::partition::Partition;
    let count = PARTITIONS;
    (301..)
        .find(|s: &u64| Partition::of_key(&s.to_string(), count) != Partition::of_key("300", count))
        .unwrap()
}

async fn an_item_seen_by_spots_of_two_partitions_is_where_the_nearest_sees_it(backend: Backend) {
    let site = start_on(backend, |_| {}).await;
    let other = serial_of_another_partition();
    let code = "e20000000000000000000042";
    let post = |serial: u64, body: Vec<u8>| {
        let a = site.a();
        async move {
            let mut conn = Raw::connect(a).await;
            let resp = conn.post(&serial.to_string(), &[&body]).await;
            assert_eq!(resp.status, 200, "POST of spot {serial}");
        }
    };
    let mut body = spot_create(300, 1);
    body.extend(presence("create", code, "near", Some(1)));
    post(300, body).await;
    let mut body = spot_create(other, 1);
    body.extend(presence("create", code, "immediate", Some(1)));
    post(other, body).await;
    let addr = site.b();
    let item = |label: String, moves: u64, presences: usize| async move {
        let path = format!("/api/items?code_hex={code}&populate=location&results_only=true");
        let (status, items) = get(addr, &path).await;
        assert_eq!(status, 200, "{items}");
        let item = &items[0];
        assert_eq!(item["is_present"], true, "{items}");
        assert_eq!(item["location"]["label"], label.as_str(), "{items}");
        assert_eq!(item["move_count"], moves, "{items}");
        let id = item["id"].as_str().unwrap();
        let (_, at) = get(addr, &format!("/api/presences?item={id}&results_only=true")).await;
        assert_eq!(at.as_array().unwrap().len(), presences, "{at}");
    };
    // Immediate at the other spot beats near at spot 300.
    item(format!("spot{other}"), 1, 2).await;
    post(other, presence("delete", code, "immediate", Some(2))).await;
    item("spot300".to_string(), 2, 1).await;
    if site.is_cluster() {
        let owners = site.partition_owners();
        assert_eq!(
            owners,
            ["a", "b"],
            "each node owns the partition it prefers"
        );
    }
    site.shutdown().await;
}

/// On the cluster, locations and lists made through the API are partition 0's, spot 300
/// is in one partition and the other spot in the other: the owner of one partition
/// cannot see the other's resources, so the API node checks references on its replica.
async fn references_to_resources_of_another_partition_are_checked_as_on_one(backend: Backend) {
    let site = start_on(backend, |_| {}).await;
    let other = serial_of_another_partition();
    for serial in [300, other] {
        let mut conn = Raw::connect(site.a()).await;
        let resp = conn
            .post(&serial.to_string(), &[&spot_create(serial, 1)])
            .await;
        assert_eq!(resp.status, 200);
    }
    let (a, b) = (site.a(), site.b());
    let (status, location) =
        call(a, "POST", "/api/locations", Some(json!({"label": "dock"}))).await;
    assert_eq!(status, 201, "{location}");
    let location = location["id"].as_str().unwrap().to_string();
    for serial in [300, other] {
        let path = format!("/api/spots/{serial}");
        let body = json!({ "report_location": location });
        let (status, spot) = call(a, "PUT", &path, Some(body)).await;
        assert_eq!(
            status, 200,
            "spot {serial} reports to the new location: {spot}"
        );
        let (status, spot) = call(
            a,
            "PUT",
            &path,
            Some(json!({ "report_location": "0000000000000001" })),
        )
        .await;
        assert_eq!(status, 400, "spot {serial}: no such location: {spot}");
        assert!(spot.to_string().contains("report_location"), "{spot}");
    }
    let path = format!("/api/locations/{location}");
    let (status, refused) = call(a, "DELETE", &path, None).await;
    assert_eq!(status, 409, "the location is in use: {refused}");
    let (status, _) = get(b, &path).await;
    assert_eq!(status, 200, "still there");
    let (status, list) = call(
        a,
        "POST",
        "/api/sets/spotlists",
        Some(json!({"label": "both"})),
    )
    .await;
    assert_eq!(status, 201, "{list}");
    let list = list["id"].as_str().unwrap().to_string();
    let members = format!("/api/sets/spotlists/{list}/ids");
    let (status, added) = call(a, "POST", &members, Some(json!(["300", other.to_string()]))).await;
    assert_eq!(status, 200, "spots by serial, of both partitions: {added}");
    assert_eq!(added["total"], 2, "{added}");
    let (status, refused) = call(a, "POST", &members, Some(json!(["999999"]))).await;
    assert_eq!(status, 400, "no such spot: {refused}");
    let (_, ids) = get(b, &members).await;
    let (_, spot) = get(b, &format!("/api/spots/{other}")).await;
    assert!(
        ids.to_string().contains(spot["id"].as_str().unwrap()),
        "{ids}"
    );
    let (status, removed) = call(a, "DELETE", &format!("{members}/{other}"), None).await;
    assert_eq!(status, 200, "a member removed by serial: {removed}");
    assert_eq!(removed["total"], 1, "{removed}");
    site.shutdown().await;
}

/// On the cluster, item lists made through the API are partition 0's, and the item is
/// made in the other partition (its code's): its deletion reaches the list's partition as
/// a report.
async fn a_deleted_item_leaves_the_item_lists_of_every_partition(backend: Backend) {
    use spot_server::partition::Partition;
    let site = start_on(backend, |_| {}).await;
    let (a, b) = (site.a(), site.b());
    let code = (0..)
        .map(|i| format!("e2{i:022x}"))
        .find(|c| Partition::of_key(c, PARTITIONS) != 0)
        .unwrap();
    let (status, item) = call(a, "POST", "/api/items", Some(json!({ "code_hex": code }))).await;
    assert_eq!(status, 201, "{item}");
    let item = item["id"].as_str().unwrap().to_string();
    let (status, list) = call(a, "POST", "/api/sets/itemlists", Some(json!({}))).await;
    assert_eq!(status, 201, "{list}");
    let list = list["id"].as_str().unwrap().to_string();
    let members = format!("/api/sets/itemlists/{list}/ids");
    let (status, added) = call(a, "POST", &members, Some(json!([item]))).await;
    assert_eq!((status, &added["total"]), (200, &json!(1)), "{added}");
    let (_, sets) = get(b, &format!("/api/items/{item}")).await;
    assert_eq!(sets["sets"], json!([list]), "{sets}");
    let (status, deleted) = call(a, "DELETE", &format!("/api/items/{item}"), None).await;
    assert_eq!(status, 200, "{deleted}");
    // The report to the list's partition was stored before the deletion's commit: a
    // read waits until every partition applied what the input log held at its start.
    let (_, left) = get(b, &members).await;
    assert_eq!(left, json!([]), "the deleted item left the list");
    site.shutdown().await;
}
