//! PostgreSQL databases for the cluster-mode tests: [`TestDb::create`] makes a fresh,
//! uniquely named database and gives its URL (as `tokio-postgres` and `psql` take it); the
//! database is dropped (`WITH (FORCE)`) when the [`TestDb`] is dropped.
//!
//! The server is found once per test process: the machine's own PostgreSQL when one
//! answers (`127.0.0.1:5432` as `postgres`, else the socket in `/var/run/postgresql` as
//! `root` or `postgres`, trusted), else a private one made with `initdb` and started with
//! `pg_ctl` in a temp directory on a free loopback port with trust authentication (run as
//! the `postgres` user when the tests run as root, which `initdb` refuses). The private
//! server is stopped and its directory removed when the test process exits normally
//! (`atexit`); a test process killed outright leaves it running.
//!
//! `SPOT_TEST_POSTGRES=private` in the environment skips the machine's server and always
//! starts a private one (to try that path where a server runs).
//!
//! Everything goes through the `psql` command-line client: no database crate here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A fresh database on the tests' PostgreSQL server; dropped with it.
pub struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    /// Creates a database with a name no other test (of this or another process) uses,
    /// on the server found (or started) once per process. Panics saying what failed.
    pub fn create() -> Self {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "spot_test_{}_{}_{nanos}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let server = server();
        server.admin_psql(&format!("CREATE DATABASE {name}"));
        Self {
            url: format!("{}{name}", server.url_base),
            name,
        }
    }

    /// The database's URL, e.g. `postgres://postgres@127.0.0.1:5432/spot_test_…` (a Unix
    /// socket's directory is percent-encoded in the host part, as libpq and
    /// `tokio-postgres` read it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `sql` in this database with `psql` (stopping at the first error) and returns
    /// its output, unaligned and without headers (`-At`: one row a line, columns split by
    /// `|`), the last newline trimmed. Panics with psql's error when `sql` fails.
    pub fn psql(&self, sql: &str) -> String {
        run_psql(&server().psql, &self.url, sql)
            .unwrap_or_else(|e| panic!("psql in {}: {e}", self.name))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = run_psql(&server().psql, &server().admin_url(), &sql) {
            eprintln!("drop the test database {}: {e}", self.name);
        }
    }
}

/// The PostgreSQL server the process's test databases are made on.
struct Server {
    /// `postgres://USER@HOST:PORT/`: a database name completes it.
    url_base: String,
    /// The `psql` to run.
    psql: PathBuf,
}

impl Server {
    /// The URL of the server's `postgres` database, where databases are created.
    fn admin_url(&self) -> String {
        format!("{}postgres", self.url_base)
    }

    fn admin_psql(&self, sql: &str) -> String {
        run_psql(&self.psql, &self.admin_url(), sql)
            .unwrap_or_else(|e| panic!("psql on {}: {e}", self.admin_url()))
    }
}

/// A private server's data directory and `pg_ctl`, for stopping it at exit.
struct OwnServer {
    dir: PathBuf,
    pg_ctl: PathBuf,
    run_as: Option<String>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

static OWN_SERVER: OnceLock<OwnServer> = OnceLock::new();

/// The process's server: found or started on first use.
fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        let bin = bin_dir();
        let psql = which("psql")
            .or_else(|| bin.as_ref().map(|b| b.join("psql")))
            .expect("no psql: install PostgreSQL's client (.ci/run does)");
        let private = std::env::var("SPOT_TEST_POSTGRES").as_deref() == Ok("private");
        for url_base in [
            "postgres://postgres@127.0.0.1:5432/",
            "postgres://root@%2Fvar%2Frun%2Fpostgresql:5432/",
            "postgres://postgres@%2Fvar%2Frun%2Fpostgresql:5432/",
        ] {
            let admin = format!("{url_base}postgres");
            if !private && run_psql(&psql, &admin, "select 1").is_ok() {
                return Server {
                    url_base: url_base.to_string(),
                    psql,
                };
            }
        }
        let bin = bin.expect(
            "no PostgreSQL answers locally and no initdb was found (in /usr/local/bin or \
             /usr/lib/postgresql/*/bin): install PostgreSQL (.ci/run does)",
        );
        start_own_server(&bin, psql)
    })
}

/// `initdb` + `pg_ctl start` in a temp directory, on a free loopback port, trust
/// authentication, superuser `postgres`; stopped at process exit.
fn start_own_server(bin: &Path, psql: PathBuf) -> Server {
    let dir = tempfile::Builder::new()
        .prefix("pg-test")
        .tempdir()
        .expect("create the PostgreSQL temp dir")
        .keep();
    // initdb and postgres refuse to run as root: run them as a plain user who owns `dir`.
    let run_as = is_root().then(|| {
        let user = ["postgres", "nobody"]
            .into_iter()
            .find(|u| {
                Command::new("id")
                    .arg("-u")
                    .arg(u)
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("running as root and neither user postgres nor nobody exists");
        let status = Command::new("chown")
            .arg(user)
            .arg(&dir)
            .status()
            .expect("run chown");
        assert!(status.success(), "chown {user} {}", dir.display());
        user.to_string()
    });
    let as_user = |program: PathBuf| -> Command {
        match &run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    };
    let data = dir.join("data");
    let output = as_user(bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
        .output()
        .expect("run initdb");
    assert!(
        output.status.success(),
        "initdb in {}: {}",
        data.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let port = crate::free_port();
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
        dir.display()
    );
    let output = as_user(bin.join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("postgres.log"))
        .arg("-o")
        .arg(options)
        .args(["-w", "-t", "30", "start"])
        .output()
        .expect("run pg_ctl start");
    let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "pg_ctl start in {}: {}{}\nlog:\n{log}",
        data.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = OWN_SERVER.set(OwnServer {
        dir,
        pg_ctl: bin.join("pg_ctl"),
        run_as,
    });
    // SAFETY: C's `atexit` with an `extern "C" fn()` that does not unwind (every error in
    // it is ignored); the C library is linked into every Rust program on Linux.
    unsafe { atexit(stop_own_server) };
    let url_base = format!("postgres://postgres@127.0.0.1:{port}/");
    // `pg_ctl -w` waited for it to accept connections; check that a client gets in.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = run_psql(&psql, &format!("{url_base}postgres"), "select 1") {
        assert!(Instant::now() < deadline, "the private PostgreSQL: {e}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { url_base, psql }
}

extern "C" {
    /// C's `atexit(3)`: `f` runs when the process exits normally (`exit`, or `main`
    /// returning, as the test harness does).
    fn atexit(f: extern "C" fn()) -> std::ffi::c_int;
}

/// At process exit: stops the private server (immediately: its data is thrown away) and
/// removes its directory.
extern "C" fn stop_own_server() {
    let Some(own) = OWN_SERVER.get() else {
        return;
    };
    let data = own.dir.join("data");
    let mut command = match &own.run_as {
        Some(user) => {
            let mut command = Command::new("runuser");
            command.args(["-u", user, "--"]).arg(&own.pg_ctl);
            command
        }
        None => Command::new(&own.pg_ctl),
    };
    let _ = command
        .arg("-D")
        .arg(&data)
        .args(["-m", "immediate", "-w", "stop"])
        .output();
    let _ = std::fs::remove_dir_all(&own.dir);
}

/// `psql -d URL -c SQL`, never asking for a password, stopping at the first error: its
/// output (unaligned, no headers, the last newline trimmed), or its error output.
fn run_psql(psql: &Path, url: &str, sql: &str) -> Result<String, String> {
    let output = Command::new(psql)
        .args(["-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(url)
        .arg("-c")
        .arg(sql)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map_err(|e| format!("run {}: {e}", psql.display()))?;
    if output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        if text.ends_with('\n') {
            text.pop();
        }
        Ok(text)
    } else {
        Err(format!(
            "`{sql}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The directory holding `initdb` and `pg_ctl`: `/usr/local/bin`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> Option<PathBuf> {
    let local = Path::new("/usr/local/bin");
    if local.join("initdb").exists() && local.join("pg_ctl").exists() {
        return Some(local.to_path_buf());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// `program` found on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// Whether this process runs as root (from `/proc/self/status`, no libc call needed).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
