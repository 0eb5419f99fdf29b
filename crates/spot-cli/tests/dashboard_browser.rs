//! The web dashboard in a real browser (issue 17): `spot serve` and `spot emulate` as
//! processes, headless chromium driven through chromedriver (WebDriver, `fantoccini`). It
//! checks what a person sees: signing in, the spots coming online, an item at its
//! location, a config change queued in the browser reaching the emulator and coming back in
//! the spot's config, a webhook created in the browser delivering, a read-only key offered
//! no actions, signing out. A screenshot of each page goes to `target/dashboard-shots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without
//! `chromedriver` on the `PATH` the test fails saying so.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use test_support::free_port;
use test_support::http::{get_json, key_for};
use test_support::process::{spawn_serve, wait_listening, KillOnDrop};

const SPOT: &str = env!("CARGO_BIN_EXE_spot");
/// How long a person would wait for the page to show something.
const PATIENCE: Duration = Duration::from_secs(30);

/// Starts chromedriver on a free port, or fails saying what to install.
fn chromedriver() -> (KillOnDrop, u16) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start chromedriver ({e}): the dashboard's browser test needs Debian's \
                 chromium and chromium-driver: apt-get install chromium chromium-driver \
                 (.ci/run installs them)"
            )
        });
    let child = KillOnDrop(child);
    wait_listening(port, "chromedriver");
    (child, port)
}

/// A headless chromium session at 1280x800.
async fn browser(driver_port: u16) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--window-size=1280,800"]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a chromium session through chromedriver")
}

/// Where the screenshots go: `<target>/dashboard-shots/`.
fn shots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    let dir = target.join("dashboard-shots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
}

/// Waits until the text of the first element matching `css` satisfies `ok`; returns it.
/// Panics saying `what` a person did not see, with the text last seen.
async fn wait_text(client: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::from("(no such element)");
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await {
            if let Ok(text) = element.text().await {
                if ok(&text) {
                    return text;
                }
                last = text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "did not see {what} within {PATIENCE:?} ({css}: {last:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The element `css` once the page has rendered it: a view renders after its
/// navigation and its first fetch, so a person waits for the field to be there.
async fn element(client: &Client, css: &str) -> fantoccini::elements::Element {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match client.find(Locator::Css(css)).await {
            Ok(found) => return found,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{css} was not on the page within {PATIENCE:?}: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fill(client: &Client, css: &str, text: &str) {
    let field = element(client, css).await;
    field.clear().await.expect(css);
    field.send_keys(text).await.expect(css);
}

async fn click(client: &Client, css: &str) {
    element(client, css).await.click().await.expect(css);
}

async fn go(client: &Client, port: u16, hash: &str) {
    client
        .goto(&format!("http://127.0.0.1:{port}/{hash}"))
        .await
        .expect("navigates");
}

/// Waits until the server on `port` accepts `key` (`GET /api/whoami` answers `200`).
fn key_known(port: u16, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(
            stream,
            "GET /api/whoami HTTP/1.1\r\nHost: t\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n"
        )
        .expect("write request");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read response");
        if answer.starts_with("HTTP/1.1 200") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new key not accepted: {answer}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn sign_in(client: &Client, key: &str) {
    fill(client, "#api-key", key).await;
    click(client, "#signin button[type=submit]").await;
}

/// A webhook target: answers every POST `200` and sends its body to the channel.
fn webhook_receiver() -> (u16, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || answer_posts(stream, &tx));
        }
    });
    (port, rx)
}

/// Reads requests off one keep-alive connection, answering each `200`.
fn answer_posts(mut stream: TcpStream, tx: &mpsc::Sender<Value>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            let body: Vec<u8> = buf.drain(..end + 4 + len).skip(end + 4).collect();
            let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .is_err()
            {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sees_the_site_live_and_steers_a_spot_in_a_real_browser() {
    let (_driver, driver_port) = chromedriver();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = KillOnDrop(spawn_serve(SPOT, data.path(), port, &[]));
    let key = key_for(port).expect("the admin key");
    let client = browser(driver_port).await;

    // The page a browser gets at `/`, and its first render.
    go(&client, port, "").await;
    wait_text(&client, "#signin", "the sign-in form", |t| {
        t.contains("API key")
    })
    .await;
    let first_render = client
        .execute("return window.__spotDashboardReady", vec![])
        .await
        .unwrap();
    eprintln!("time to first render (navigation start to the sign-in form): {first_render} ms");
    screenshot(&client, "0-sign-in").await;
    sign_in(&client, "spot_nope_nope").await;
    wait_text(&client, "#signin .error", "a refused key said so", |t| {
        t.contains("refused")
    })
    .await;
    sign_in(&client, &key).await;
    wait_text(&client, "#whoami", "the signed-in key's role", |t| {
        t.contains("(admin)")
    })
    .await;

    // Two spots come online.
    let _emulator = KillOnDrop(
        Command::new(SPOT)
            .args(["emulate", "--server", &format!("http://127.0.0.1:{port}")])
            .args(["--spots", "2", "--rate", "5", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn spot emulate"),
    );
    let started = Instant::now();
    wait_text(&client, "#spots-online", "two spots online", |t| t == "2").await;
    eprintln!(
        "spots online on the overview {:?} after the emulator started",
        started.elapsed()
    );
    wait_text(
        &client,
        "#items-per-location tbody",
        "items per location",
        |t| t.contains("spot1"),
    )
    .await;
    wait_text(&client, "#ack-latency", "the ack latency", |t| {
        t.contains("ms")
    })
    .await;
    // The plot has samples: the spot events per second of the last one are shown.
    wait_text(&client, "#events-rate", "spot events per second", |t| {
        t.parse::<u64>().is_ok_and(|n| n > 0)
    })
    .await;
    screenshot(&client, "1-overview").await;

    go(&client, port, "#/spots").await;
    wait_text(
        &client,
        "#spots-table tr[data-serial='1']",
        "spot 1 online",
        |t| t.contains("online"),
    )
    .await;
    screenshot(&client, "2-spots").await;

    // An item present at spot 1's location, found by a prefix of its code.
    let spot1 = get_json(port, "/api/spots/1");
    let location = spot1["report_location"].as_str().unwrap().to_string();
    let items = get_json(
        port,
        &format!("/api/items?location={location}&is_present=true&limit=1"),
    );
    let code = items["results"][0]["code_hex"]
        .as_str()
        .unwrap()
        .to_string();
    go(&client, port, &format!("#/items?location={location}")).await;
    wait_text(
        &client,
        "table.items",
        "an item at spot 1's location",
        |t| t.contains(&code),
    )
    .await;
    fill(&client, "#item-search", &code[..code.len() - 2]).await;
    wait_text(
        &client,
        "#search-results",
        "the item found by code prefix",
        |t| t.contains(&code) && t.contains("spot1"),
    )
    .await;
    screenshot(&client, "3-items").await;

    // A config change queued in the browser reaches the emulator and comes back.
    let spot_id = spot1["id"].as_str().unwrap();
    let power = if spot1["config"]["rfid_power_dbm"] == json!(27) {
        "26"
    } else {
        "27"
    };
    go(&client, port, &format!("#/spots/{spot_id}")).await;
    fill(&client, "#config-key", "rfid_power_dbm").await;
    fill(&client, "#config-value", power).await;
    click(&client, "#config-form button[type=submit]").await;
    wait_text(&client, "#progress-config", "the change confirmed", |t| {
        t.contains("reports the new values")
    })
    .await;
    wait_text(
        &client,
        "#spot-config dd[data-key='rfid_power_dbm']",
        "the new value in the spot's config",
        |t| t == power,
    )
    .await;
    assert_eq!(
        get_json(port, "/api/spots/1")["config"]["rfid_power_dbm"].to_string(),
        power
    );
    // A u64 past 2^53 is shown with every digit, not as the nearest double.
    let seq_epoch = get_json(port, "/api/spots/1")["status"]["seq_epoch"].to_string();
    wait_text(
        &client,
        "#spot-status dd[data-key='seq_epoch']",
        "the spot's seq_epoch, every digit",
        |t| t == seq_epoch,
    )
    .await;
    screenshot(&client, "4-spot-detail").await;

    // A webhook created in the browser delivers.
    let (hook_port, deliveries) = webhook_receiver();
    go(&client, port, "#/subscriptions").await;
    fill(&client, "#sub-filter", "presences/#").await;
    fill(
        &client,
        "#sub-target",
        &format!("http://127.0.0.1:{hook_port}/hook"),
    )
    .await;
    click(&client, "#subscription-form button[type=submit]").await;
    let delivered = tokio::task::spawn_blocking(move || deliveries.recv_timeout(PATIENCE))
        .await
        .unwrap()
        .expect("a webhook delivery");
    assert!(
        delivered["topic"]
            .as_str()
            .unwrap()
            .starts_with("presences/"),
        "{delivered}"
    );
    wait_text(
        &client,
        "#subscriptions-table td.delivered",
        "deliveries counted",
        |t| t.replace(',', "").parse::<u64>().is_ok_and(|n| n >= 1),
    )
    .await;
    screenshot(&client, "5-subscriptions").await;

    go(&client, port, "#/events").await;
    wait_text(&client, "#live-events", "live events", |t| {
        t.contains("presences/")
    })
    .await;
    screenshot(&client, "6-live-events").await;

    // At phone width the overview still reads.
    client.set_window_size(390, 844).await.unwrap();
    go(&client, port, "#/overview").await;
    wait_text(
        &client,
        "#spots-online",
        "the overview at phone width",
        |t| t == "2",
    )
    .await;
    screenshot(&client, "7-overview-phone").await;
    client.set_window_size(1280, 800).await.unwrap();

    // Signing out forgets the key; a read-only key is offered no actions.
    click(&client, "#signout").await;
    wait_text(&client, "#signin", "the sign-in form again", |t| {
        t.contains("API key")
    })
    .await;
    let read_key = Command::new(SPOT)
        .args([
            "keys",
            "create",
            "--role",
            "read",
            "--label",
            "dashboard-test",
        ])
        .arg("--data")
        .arg(data.path())
        .output()
        .expect("spot keys create");
    assert!(read_key.status.success(), "{read_key:?}");
    let read_key = String::from_utf8(read_key.stdout).unwrap();
    // The server sees keys made by another process within its refresh interval: sign in
    // once it does (under load, a sign-in right away was refused now and then).
    key_known(port, read_key.trim());
    sign_in(&client, read_key.trim()).await;
    wait_text(&client, "#whoami", "the read key's role", |t| {
        t.contains("(read)")
    })
    .await;
    go(&client, port, &format!("#/spots/{spot_id}")).await;
    wait_text(&client, "main", "no actions for a read key", |t| {
        t.contains("read-only")
    })
    .await;
    assert!(client.find(Locator::Css("#config-form")).await.is_err());
    let nav = wait_text(&client, "header nav", "the pages", |t| t.contains("Spots")).await;
    assert!(!nav.contains("Subscriptions"), "{nav}");
    screenshot(&client, "8-read-only").await;
    client.close().await.unwrap();
}
