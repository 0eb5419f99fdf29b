//! Server processes in tests: `spot serve` started and waited for, any child killed when
//! dropped (a failed assertion leaves no process behind). The `spot` binary's path is the
//! caller's `env!("CARGO_BIN_EXE_spot")`: Cargo gives it to spot-cli's tests only.

use std::ffi::OsStr;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::fixtures::{localhost_cert, localhost_key};

/// A child process, killed and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `program ARGS` with `stdin` piped in and its output captured (a command-line tool
/// as an integrator runs it: real process, real pipes).
pub fn run_with_stdin(program: impl AsRef<OsStr>, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the program");
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The child may exit before reading everything (e.g. on a bad flag).
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait for the program");
    writer.join().expect("stdin writer");
    output
}

/// Waits (30 s at most) until something accepts connections on `127.0.0.1:port`; panics
/// saying `what` did not start.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `spot serve` (the binary at `spot`) on `127.0.0.1:port` with the data folder
/// `data` plus `extra` arguments, output discarded, and waits until it accepts connections;
/// [`crate::http::get_text`] on `port` then sends its first admin key.
pub fn spawn_serve(spot: impl AsRef<OsStr>, data: &Path, port: u16, extra: &[&OsStr]) -> Child {
    let child = Command::new(spot)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spot serve");
    wait_listening(port, "spot serve");
    crate::http::remember_key(port, data);
    child
}

/// [`spawn_serve`] over HTTPS with the self-signed `localhost` test certificate
/// ([`crate::fixtures::localhost_cert`]).
pub fn spawn_serve_tls(spot: impl AsRef<OsStr>, data: &Path, port: u16) -> Child {
    let (cert, key) = (localhost_cert(), localhost_key());
    let tls: [&OsStr; 4] = [
        "--tls-cert".as_ref(),
        cert.as_ref(),
        "--tls-key".as_ref(),
        key.as_ref(),
    ];
    spawn_serve(spot, data, port, &tls)
}

/// The lines `child` writes to its stderr (which must be piped), as they come: a thread
/// forwards them until the stream ends or the receiver is dropped.
pub fn stderr_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
