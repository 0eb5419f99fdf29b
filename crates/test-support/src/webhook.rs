//! A webhook target on loopback (plain HTTP/1.1 with keep-alive, a thread per connection):
//! it records each delivery it answered `200` as the test's `record` makes it of the event
//! id (`X-Spot-Event-Id`) and the envelope (the JSON body). Made hanging, it accepts
//! requests and answers none until [`WebhookTarget::answer`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::Received;

/// The target; it stops with the test process.
pub struct WebhookTarget<T> {
    /// Its port on 127.0.0.1.
    pub port: u16,
    hang: Arc<(Mutex<bool>, Condvar)>,
    /// What it recorded, in the order it answered.
    pub received: Received<T>,
}

impl<T: Send + 'static> WebhookTarget<T> {
    /// Listens on a free port; `hanging`: answers nothing until [`WebhookTarget::answer`].
    pub fn start(hanging: bool, record: fn(u64, &Value) -> T) -> WebhookTarget<T> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hang = Arc::new((Mutex::new(hanging), Condvar::new()));
        let received: Received<T> = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let (h, r) = (hang.clone(), received.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (h, r) = (h.clone(), r.clone());
                std::thread::spawn(move || serve(stream, &h, &r, record));
            }
        });
        WebhookTarget {
            port,
            hang,
            received,
        }
    }

    /// `http://127.0.0.1:<port>/hook`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Answers the requests waiting and every later one.
    pub fn answer(&self) {
        *self.hang.0.lock().unwrap() = false;
        self.hang.1.notify_all();
    }

    /// Waits (at most `within`) until `done` holds for what was recorded.
    pub fn wait_until(&self, within: Duration, done: impl Fn(&[T]) -> bool) {
        crate::wait_until(&self.received, within, done);
    }
}

fn serve<T>(
    stream: TcpStream,
    hang: &(Mutex<bool>, Condvar),
    received: &(Mutex<Vec<T>>, Condvar),
    record: fn(u64, &Value) -> T,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let (mut length, mut event_id) = (0, 0);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if let Some(v) = lower.strip_prefix("x-spot-event-id:") {
                event_id = v.trim().parse().unwrap_or(0);
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut hanging = hang.0.lock().unwrap();
        while *hanging {
            hanging = hang.1.wait(hanging).unwrap();
        }
        drop(hanging);
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            // The server gave up on this delivery (its timeout): it sends it again.
            return;
        }
        let envelope: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        received.0.lock().unwrap().push(record(event_id, &envelope));
        received.1.notify_all();
    }
}
