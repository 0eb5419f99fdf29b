//! A real mosquitto for tests and benchmarks, started on a free port with its own config,
//! and real MQTT subscribers (rumqttc). The broker is a plain child process, usable from
//! synchronous tests too; the subscribers run on the caller's tokio runtime.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

const MOSQUITTO_PASSWD: &str = "/usr/bin/mosquitto_passwd";

/// A running mosquitto; killed when dropped, [`Broker::stop`] for a clean exit.
pub struct Broker {
    child: Child,
    /// The plain listener's port.
    pub port: u16,
}

/// Extra broker settings.
#[derive(Default)]
pub struct Options {
    /// Users and passwords (a `mosquitto_passwd` file); none: anonymous clients allowed.
    pub users: Vec<(String, String)>,
    /// A second listener with TLS: port, certificate chain and key (PEM files).
    pub tls: Option<(u16, PathBuf, PathBuf)>,
    /// For benchmarks: no persistence, no per-message log lines, and queues and
    /// in-flight windows towards subscribers large enough not to be the bound (mosquitto's
    /// default window is 20 QoS 1 messages per client).
    pub bench: bool,
    /// `set_tcp_nodelay true`: the broker writes to its clients without Nagle's algorithm.
    /// Without it a QoS 0 subscriber, which never sends anything back, gets each publish
    /// only when its delayed ACK releases the broker's held-back segment (up to 40 ms on
    /// Linux); QoS 1 subscribers hide this, their PUBACKs carry the ACKs.
    pub tcp_nodelay: bool,
}

impl Broker {
    /// Starts mosquitto on `port` with persistence in `dir`; returns once it is listening.
    pub fn start(dir: &Path, port: u16) -> Self {
        Self::start_with(dir, port, &Options::default())
    }

    /// Same as [`Broker::start`] with `options`.
    /// (`user root`: when started as root, mosquitto would otherwise switch to the user
    /// `mosquitto`, which cannot write the temp dir; ignored when not root.)
    pub fn start_with(dir: &Path, port: u16, options: &Options) -> Self {
        let config: PathBuf = dir.join("mosquitto.conf");
        let mut text = if options.bench {
            format!(
                "per_listener_settings false\npersistence false\nlog_dest stderr\n\
                 log_type error\nlog_type warning\nlog_type notice\nlog_type information\nuser root\n\
                 max_queued_messages 1000000\nmax_inflight_messages 1000\n\
                 listener {port} 127.0.0.1\n"
            )
        } else {
            // Deep queues: with mosquitto's default (1,000 QoS 1 messages per client) the
            // broker drops what a busy test subscriber has not taken yet, which reads as an
            // outlet losing events (a burst of resends after a kill -9 is thousands).
            format!(
                "per_listener_settings false\npersistence true\npersistence_location {}/\n\
                 log_dest stderr\nlog_type all\nuser root\nmax_queued_messages 1000000\n\
                 listener {port} 127.0.0.1\n",
                dir.display()
            )
        };
        if options.tcp_nodelay {
            text.push_str("set_tcp_nodelay true\n");
        }
        if options.users.is_empty() {
            text.push_str("allow_anonymous true\n");
        } else {
            let passwords = dir.join("passwords");
            for (i, (user, password)) in options.users.iter().enumerate() {
                let mut command = Command::new(MOSQUITTO_PASSWD);
                if i == 0 {
                    command.arg("-c");
                }
                let status = command
                    .arg("-b")
                    .arg(&passwords)
                    .arg(user)
                    .arg(password)
                    .status()
                    .expect("run mosquitto_passwd");
                assert!(status.success(), "mosquitto_passwd for {user}");
            }
            text.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                passwords.display()
            ));
        }
        if let Some((tls_port, cert, key)) = &options.tls {
            text.push_str(&format!(
                "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
                cert.display(),
                key.display()
            ));
        }
        std::fs::write(&config, text).expect("write config");
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosquitto");
        // stderr: unbuffered, unlike stdout into a pipe.
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains(" running") => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("read mosquitto log: {e}"),
                None => {
                    let _ = child.wait();
                    panic!("mosquitto exited before it was running");
                }
            }
        }
        // Keep draining the log so mosquitto never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, port }
    }

    /// The latency benchmarks' broker: on a free port with the [`Options::bench`] settings
    /// and [`Options::tcp_nodelay`] unless `MOSQUITTO_NODELAY=false` is in the environment.
    pub fn start_bench(dir: &Path) -> Self {
        let options = Options {
            bench: true,
            tcp_nodelay: std::env::var("MOSQUITTO_NODELAY").as_deref() != Ok("false"),
            ..Options::default()
        };
        Self::start_with(dir, crate::free_port(), &options)
    }

    /// CPU time mosquitto has used so far (user + system, from `/proc/PID/stat`).
    pub fn cpu_time(&self) -> Duration {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
        // After the ")" closing the command name: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
            .split(' ')
            .collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        let per_second = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(100);
        Duration::from_secs_f64(ticks as f64 / per_second as f64)
    }

    /// SIGTERM (mosquitto saves its persistence file) and wait for the exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        self.child.wait().expect("wait mosquitto");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // After `stop` the child is reaped already: both calls then fail harmlessly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real MQTT subscriber (persistent session) delivering (topic, payload, qos).
pub async fn subscriber(port: u16, filter: &str) -> mpsc::UnboundedReceiver<(String, Value, QoS)> {
    subscriber_as(port, filter, None).await
}

/// Same as [`subscriber`], logging in as `login` (user, password).
pub async fn subscriber_as(
    port: u16,
    filter: &str,
    login: Option<(&str, &str)>,
) -> mpsc::UnboundedReceiver<(String, Value, QoS)> {
    let mut options = MqttOptions::new("test-subscriber", "127.0.0.1", port);
    options.set_clean_session(false);
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, mut subscribed_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client; // keep the request channel open
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let payload = serde_json::from_slice(&p.payload).expect("json payload");
                    if tx.send((p.topic.clone(), payload, p.qos)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // The broker restarts in one test: reconnect.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    subscribed_rx.recv().await.expect("suback");
    rx
}

/// A real MQTT subscriber (persistent session, QoS 1) on `filter` for tests without an
/// async runtime of their own: each message, its topic with `prefix` taken off and its
/// payload, recorded as `record` makes it.
pub struct BlockingSubscriber<T> {
    /// What it recorded, in arrival order.
    pub received: crate::Received<T>,
    _runtime: tokio::runtime::Runtime,
}

impl<T: Send + 'static> BlockingSubscriber<T> {
    /// Subscribes (returns once the broker acknowledged the subscription).
    pub fn start(
        port: u16,
        filter: &str,
        prefix: &str,
        record: fn(&str, &Value) -> T,
    ) -> BlockingSubscriber<T> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut rx = runtime.block_on(subscriber(port, filter));
        let received: crate::Received<T> = Default::default();
        let sink = received.clone();
        let prefix = format!("{prefix}/");
        runtime.spawn(async move {
            while let Some((topic, payload, _)) = rx.recv().await {
                let topic = topic.strip_prefix(&prefix).unwrap_or(&topic);
                sink.0.lock().unwrap().push(record(topic, &payload));
                sink.1.notify_all();
            }
        });
        BlockingSubscriber {
            received,
            _runtime: runtime,
        }
    }

    /// Waits (at most `within`) until `done` holds for what was recorded.
    pub fn wait_until(&self, within: Duration, done: impl Fn(&[T]) -> bool) {
        crate::wait_until(&self.received, within, done);
    }
}

/// A lean subscriber for benchmarks: rumqttc's packet codec over one TCP stream, every
/// ready packet decoded per read and the acks of a read written at once. Calls `on_payload`
/// with each publish's payload. Returns once subscribed.
pub async fn lean_subscriber(
    port: u16,
    filter: &str,
    qos: QoS,
    mut on_payload: impl FnMut(&[u8]) + Send + 'static,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut out = bytes::BytesMut::new();
    Packet::Connect(rumqttc::Connect::new("lean-subscriber"))
        .write(&mut out, usize::MAX)
        .expect("encode");
    let mut subscribe = rumqttc::Subscribe::new(filter, qos);
    subscribe.pkid = 1;
    Packet::Subscribe(subscribe)
        .write(&mut out, usize::MAX)
        .expect("encode");
    stream.write_all(&out).await.expect("write");
    let mut incoming = bytes::BytesMut::with_capacity(1 << 20);
    'subscribing: loop {
        assert!(
            stream.read_buf(&mut incoming).await.expect("read") > 0,
            "broker closed the subscriber"
        );
        while let Ok(p) = Packet::read(&mut incoming, 1 << 20) {
            if matches!(p, Packet::SubAck(_)) {
                break 'subscribing;
            }
        }
    }
    tokio::spawn(async move {
        let mut acks = bytes::BytesMut::new();
        loop {
            while let Ok(p) = Packet::read(&mut incoming, 1 << 20) {
                if let Packet::Publish(p) = p {
                    on_payload(&p.payload);
                    if p.qos == QoS::AtLeastOnce {
                        Packet::PubAck(rumqttc::PubAck::new(p.pkid))
                            .write(&mut acks, usize::MAX)
                            .expect("encode");
                    }
                }
            }
            if !acks.is_empty() {
                if stream.write_all(&acks).await.is_err() {
                    return;
                }
                acks.clear();
            }
            match stream.read_buf(&mut incoming).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
}

/// The same with rumqttc's own client (`AsyncClient` and its event loop), as an
/// application would write it.
pub async fn client_subscriber(
    port: u16,
    filter: &str,
    qos: QoS,
    mut on_payload: impl FnMut(&[u8]) + Send + 'static,
) {
    let mut options = MqttOptions::new("client-subscriber", "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    client.subscribe(filter, qos).await.expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = eventloop.poll().await {
            break;
        }
    }
    tokio::spawn(async move {
        let _client = client; // keep the request channel open
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => on_payload(&p.payload),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("client subscriber: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
}
