//! A real nginx in front of cluster nodes, as `docs/cluster.md` configures it: a reverse
//! proxy on a free loopback port to an `upstream` of loopback ports, HTTP/1.1 upstream
//! connections kept alive, request and response bodies streamed (`proxy_request_buffering
//! off`, `proxy_buffering off`: a spot's long chunked POST reaches the node as it is sent),
//! read timeouts above a spot's POST length and no body size limit.
//!
//! nginx runs in the foreground (`daemon off`, a master and one worker) as a plain child
//! process with its config, pid file, error log and temp paths in its own temp directory,
//! so it needs nothing under `/var`; it is killed (master and worker) when dropped.

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's nginx (package `nginx`, installed by `.ci/run`).
pub const NGINX: &str = "/usr/sbin/nginx";

/// A running nginx proxying to loopback upstreams; killed when dropped.
pub struct Nginx {
    child: Child,
    /// The port nginx listens on (`127.0.0.1`).
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx on a free port, proxying every path to the upstream servers
    /// `127.0.0.1:PORT` for each of `upstreams` (round robin); returns once it accepts
    /// connections. Panics with its error log when it does not start within 10 s.
    pub fn start(upstreams: &[u16]) -> Self {
        assert!(
            !upstreams.is_empty(),
            "nginx needs at least one upstream port"
        );
        assert!(
            std::path::Path::new(NGINX).exists(),
            "{NGINX} is missing: install Debian's nginx (.ci/run does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("nginx")
            .tempdir()
            .expect("create nginx's temp dir");
        let port = crate::free_port();
        let d = dir.path().display();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p};\n"))
            .collect();
        // `user root`: as root, the worker would otherwise run as `nobody`, which cannot
        // enter the temp dir (ignored with a warning when not root). Every path nginx
        // writes is in the temp dir.
        let config = format!(
            "daemon off;
master_process on;
worker_processes 1;
user root root;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream spot {{
{servers}        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        client_body_timeout 600s;
        chunked_transfer_encoding on;
        location / {{
            proxy_pass http://spot;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
    }}
}}
"
        );
        let config_path = dir.path().join("nginx.conf");
        std::fs::write(&config_path, config).expect("write nginx.conf");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {NGINX}: {e}"));
        let mut nginx = Self { child, port, dir };
        nginx.wait_listening();
        nginx
    }

    /// The URL clients use: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What nginx has written to its error log so far (startup notices, upstream
    /// failures: "connect() failed (111: Connection refused) while connecting to
    /// upstream").
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.error_log_path()).unwrap_or_default()
    }

    fn error_log_path(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    /// Waits until nginx accepts connections; panics with its output if it exits first
    /// or 10 s pass.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.try_wait().expect("poll nginx") {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!(
                    "nginx exited ({status}) before listening on {}: {stderr}\nerror log:\n{}",
                    self.port,
                    self.error_log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {} within 10 s; error log:\n{}",
                self.port,
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker and exits (nginx's fast shutdown, not
        // waiting for open connections). A SIGKILLed master would leave its worker
        // serving on the inherited socket, so the worker is killed too when the master
        // does not exit in time.
        let workers = children_of(self.child.id());
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        for pid in workers {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes whose parent is `pid` (from `/proc/PID/task/*/children`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
