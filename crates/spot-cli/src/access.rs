//! `spot keys` (API keys) and `spot spots` (spot enrolment) on a server's data directory
//! (`<data>/access.db`), stopped or running (a running server picks a change up within a
//! second); and [`KeyArgs`], how the client commands find their API key.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use spot_server::access::db::{self, AccessDb, ADMIN_KEY_FILE};
use spot_server::access::Role;
use spot_server::clock::now_ms;

/// The data directory of `spot serve` when none is given.
const DEFAULT_DATA: &str = "spot-data";

/// The server's data directory (`--data`, `SPOT_DATA`, as for `spot serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// The server's data directory [default: spot-data].
    #[arg(long, env = "SPOT_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
}

impl DataArgs {
    fn open(&self) -> anyhow::Result<AccessDb> {
        let dir = self
            .data
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA));
        if !dir.is_dir() {
            anyhow::bail!(
                "{} is not a server data directory: give the one `spot serve --data` uses \
                 (--data or SPOT_DATA), or start the server once to create it",
                dir.display()
            );
        }
        Ok(AccessDb::open(&dir)?)
    }
}

/// `spot keys`.
#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Create an API key; prints the key (only this once) on stdout.
    Create {
        /// What it may do: read (GET, push streams), write (also changes and commands to
        /// spots), admin (also keys and webhook subscriptions).
        #[arg(long, short, value_parser = ["read", "write", "admin"])]
        role: String,
        /// What or who it is for.
        #[arg(long, short, default_value = "")]
        label: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List the keys (never their secrets), revoked ones included.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Revoke a key by its id (the 12 hex digits after `spot_`); a running server refuses it
    /// within a second and closes its open streams.
    Revoke {
        /// The key's id.
        id: String,
        #[command(flatten)]
        data: DataArgs,
    },
}

/// `spot spots`.
#[derive(clap::Subcommand, Debug)]
pub enum SpotsCommand {
    /// Enrol spots (for `--spot-admission enrolled|secret`). With `--secret`, prints one
    /// `SERIAL SECRET` line per spot on stdout (only this once), the format `spot emulate
    /// --spot-secrets` reads.
    Enroll {
        /// Serial numbers.
        #[arg(required = true)]
        serials: Vec<String>,
        /// Give each spot a new secret (replacing an older one).
        #[arg(long)]
        secret: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List the enrolled spots (never their secrets).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Remove enrolments; those spots are refused from the next stream they open.
    Unenroll {
        /// Serial numbers.
        #[arg(required = true)]
        serials: Vec<String>,
        #[command(flatten)]
        data: DataArgs,
    },
}

/// Runs `spot keys`.
pub fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Create { role, label, data } => {
            let role: Role = role.parse()?;
            let (record, token) = data.open()?.create_key(role, &label, "cli", now_ms())?;
            eprintln!(
                "created API key {} (role {}); it is shown only now:",
                record.id, record.role
            );
            println!("{token}");
        }
        KeysCommand::List { json, data } => {
            let keys = data.open()?.keys()?;
            let mut out = std::io::stdout().lock();
            if !json {
                writeln!(
                    out,
                    "{:<12}  {:<5}  {:<24}  {:<10}  {:<24}  label",
                    "id", "role", "created", "by", "revoked"
                )?;
            }
            for key in keys {
                let view = key.to_json();
                if json {
                    writeln!(out, "{view}")?;
                    continue;
                }
                let text = |field: &str| view[field].as_str().unwrap_or("-").to_string();
                writeln!(
                    out,
                    "{:<12}  {:<5}  {:<24}  {:<10}  {:<24}  {}",
                    key.id,
                    key.role,
                    text("time_created"),
                    key.created_by,
                    text("time_revoked"),
                    key.label
                )?;
            }
        }
        KeysCommand::Revoke { id, data } => {
            let record = data.open()?.revoke_key(&id, "cli", now_ms())?;
            eprintln!("API key {} ({}) is revoked", record.id, record.role);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `spot spots`.
pub fn spots(command: SpotsCommand) -> anyhow::Result<ExitCode> {
    match command {
        SpotsCommand::Enroll {
            serials,
            secret,
            data,
        } => {
            if let Some(bad) = serials
                .iter()
                .find(|s| !spot_server::ingest::valid_serial(s))
            {
                anyhow::bail!("bad serial {bad:?}: 1 to 64 letters, digits, '-' or '_'");
            }
            let mut db = data.open()?;
            for serial in serials {
                let new_secret = secret.then(db::new_spot_secret).transpose()?;
                let hash = new_secret.as_ref().map(|(_, hash)| *hash);
                let new = db.enrol(&serial, hash, "cli", now_ms())?;
                if let Some((text, _)) = new_secret {
                    println!("{serial} {text}");
                }
                let what = if new { "enrolled" } else { "enrolled again" };
                eprintln!("spot {serial} {what}");
            }
        }
        SpotsCommand::List { json, data } => {
            let mut out = std::io::stdout().lock();
            for e in data.open()?.enrolment_list()? {
                if json {
                    writeln!(out, "{}", e.to_json())?;
                } else {
                    let secret = if e.has_secret { "secret" } else { "-" };
                    writeln!(out, "{} {secret} {}", e.serial, e.enrolled_by)?;
                }
            }
        }
        SpotsCommand::Unenroll { serials, data } => {
            let mut db = data.open()?;
            for serial in serials {
                db.unenrol(&serial, "cli")?;
                eprintln!("spot {serial} is no longer enrolled");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How a client command (`spot tail`) finds its API key: `--key` / `SPOT_KEY`, else the
/// first admin key of a server data directory on this machine (`--data` / `SPOT_DATA`,
/// else `spot-data` when it has one).
#[derive(clap::Args, Debug, Clone)]
pub struct KeyArgs {
    /// The API key [env: SPOT_KEY]; without it, the first admin key of the server's data
    /// directory (`<data>/admin.key`) when there is one.
    #[arg(long, short = 'k', env = "SPOT_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The server's data directory whose `admin.key` to use [default: spot-data].
    #[arg(long, env = "SPOT_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
}

impl KeyArgs {
    /// The key to send, if any was found.
    pub fn resolve(&self) -> anyhow::Result<Option<String>> {
        if let Some(key) = &self.key {
            return Ok(Some(key.trim().to_string()));
        }
        let (dir, given) = match &self.data {
            Some(dir) => (dir.clone(), true),
            None => (PathBuf::from(DEFAULT_DATA), false),
        };
        let path = dir.join(ADMIN_KEY_FILE);
        match read_key(&path) {
            Ok(key) => Ok(Some(key)),
            Err(_) if !given => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn read_key(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading the API key from {} (the server writes it on its first start)",
            path.display()
        )
    })?;
    Ok(text.trim().to_string())
}
