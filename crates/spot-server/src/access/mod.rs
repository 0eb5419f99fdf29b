//! Access control: who may call the API ([`keys`]: API keys with roles), which spots may
//! stream in ([`admission`]), the rate limit on failed authentication ([`limiter`]), and
//! their storage (`<data>/access.db`, [`db`]). [`Access`] is the one handle: the server's
//! router asks it for every `/api` request and every ingest stream.
//!
//! The keys and enrolments in memory are a [`Snapshot`] behind a `watch` channel: a check
//! reads it without touching SQLite; a change through the API replaces it at once, a change
//! by `spot keys` / `spot spots` in another process within [`REFRESH_INTERVAL`] (the
//! server polls `PRAGMA data_version`). Streams that authenticated with a key follow the
//! channel and are closed when their key is revoked.

pub mod admission;
pub mod db;
pub mod keys;
pub mod limiter;

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

pub use admission::{AdmissionConfig, AdmissionMode, AdmissionRefusal, Admitted, Enrolments};
pub use db::{
    AccessDb, AccessError, AuditEntry, EnrolmentRecord, KeyRecord, SharedEnrolment, SharedKey,
};
pub use keys::{KeyRefusal, KeySet, Role};
pub use limiter::FailureLimit;

use admission::Admission;
use limiter::FailureLimiter;

/// How often the server looks for changes made to `access.db` by another process.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// Settings of access control.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Spot admission.
    pub admission: AdmissionConfig,
    /// `/metrics` without a key (`--metrics-public`).
    pub metrics_public: bool,
    /// Origins allowed to call the API from a browser (`--cors-origin`); none by default.
    pub cors_origins: Vec<String>,
    /// The rate limit on failed authentication.
    pub failure_limit: FailureLimit,
}

/// The keys and enrolments a check reads.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Active keys.
    pub keys: KeySet,
    /// Enrolled spots.
    pub enrolments: Enrolments,
}

/// Who made a request: the key's id and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's id.
    pub key_id: String,
    /// Its role.
    pub role: Role,
}

/// Why a request is refused before it reaches its route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No valid key (`401`).
    Unauthenticated(KeyRefusal),
    /// A valid key of too small a role (`403`).
    Forbidden {
        /// The key's role.
        have: Role,
        /// The role the route needs.
        need: Role,
    },
    /// Too many failed attempts from this address (`429`).
    Limited {
        /// When it may try again.
        retry_after: Duration,
    },
}

#[derive(Debug, Default)]
struct AccessMetrics {
    /// By [`KeyRefusal`]: missing, malformed, invalid.
    unauthenticated: [AtomicU64; 3],
    forbidden: AtomicU64,
    limited: AtomicU64,
    /// By [`AdmissionRefusal::as_str`]'s order.
    refused_spots: [AtomicU64; 5],
}

/// The access control of a running server (one per server, shared by its tasks).
#[derive(Debug)]
pub struct Access {
    config: AccessConfig,
    db: Mutex<AccessDb>,
    seen_version: Mutex<i64>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    admission: Mutex<Admission>,
    limiter: Mutex<FailureLimiter>,
    metrics: AccessMetrics,
}

impl Access {
    /// Opens `<dir>/access.db`; on a data directory without keys creates the first admin
    /// key and writes it to `<dir>/admin.key` (returned, so the caller says where it is).
    /// `spots` are the serials of the spots that exist (admitted in `open` mode).
    pub fn open(
        dir: &Path,
        config: AccessConfig,
        spots: impl IntoIterator<Item = String>,
        now: i64,
    ) -> Result<(Access, Option<std::path::PathBuf>), AccessError> {
        let mut db = AccessDb::open(dir)?;
        let bootstrapped = db.bootstrap(dir, now)?;
        let snapshot = load(&db)?;
        let version = db.data_version()?;
        let admission = Admission::new(config.admission.clone(), spots);
        let access = Access {
            db: Mutex::new(db),
            seen_version: Mutex::new(version),
            snapshot: watch::Sender::new(Arc::new(snapshot)),
            admission: Mutex::new(admission),
            limiter: Mutex::new(FailureLimiter::new(config.failure_limit)),
            metrics: AccessMetrics::default(),
            config,
        };
        Ok((access, bootstrapped))
    }

    /// The settings.
    pub fn config(&self) -> &AccessConfig {
        &self.config
    }

    /// Follows the keys and enrolments (streams close when their key is revoked).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.subscribe()
    }

    /// Checks the key `token` presented by `peer` for a route that needs `need`.
    pub fn authorize(
        &self,
        token: Option<&str>,
        peer: IpAddr,
        need: Role,
        now: i64,
    ) -> Result<Caller, Denied> {
        let limiter = || self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(retry_after) = limiter().blocked(peer, now) {
            self.metrics.limited.fetch_add(1, Ordering::Relaxed);
            return Err(Denied::Limited { retry_after });
        }
        let snapshot = self.snapshot.borrow();
        match snapshot.keys.verify(token) {
            Ok((key_id, role)) if role >= need => Ok(Caller {
                key_id: key_id.to_string(),
                role,
            }),
            Ok((_, have)) => {
                self.metrics.forbidden.fetch_add(1, Ordering::Relaxed);
                Err(Denied::Forbidden { have, need })
            }
            Err(refusal) => {
                drop(snapshot);
                let slot = refusal as usize;
                self.metrics.unauthenticated[slot].fetch_add(1, Ordering::Relaxed);
                if refusal != KeyRefusal::Missing {
                    limiter().failed(peer, now);
                }
                Err(Denied::Unauthenticated(refusal))
            }
        }
    }

    /// Whether the spot `serial`, presenting `secret`, may stream at `now`. A spot the
    /// enrolment window admits ([`Admitted::Enroll`]) is admitted from now on; the caller
    /// stores its enrolment with [`Access::enrol_by_window`].
    pub fn admit(
        &self,
        serial: &str,
        secret: Option<&str>,
        now: i64,
    ) -> Result<Admitted, AdmissionRefusal> {
        let snapshot = self.snapshot.borrow().clone();
        let decision = self
            .admission
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(serial, secret, &snapshot.enrolments, now);
        if let Err(refusal) = &decision {
            let slot = REFUSALS.iter().position(|r| *r == refusal.as_str());
            self.metrics.refused_spots[slot.unwrap_or(0)].fetch_add(1, Ordering::Relaxed);
        }
        decision
    }

    /// Stores the enrolment of a spot the enrolment window admitted. Blocking (SQLite).
    pub fn enrol_by_window(&self, serial: &str, secret_hash: Option<keys::TokenHash>, now: i64) {
        match self.change(|db| db.enrol(serial, secret_hash, "window", now)) {
            Ok(_) => tracing::info!(spot = %serial, "spot enrolled by the enrolment window"),
            Err(e) => tracing::warn!(spot = %serial, "enrolment by the window not stored: {e}"),
        }
    }

    /// Runs `f` on the database, then reloads the snapshot (a change is in effect when this
    /// returns). Blocking.
    pub fn change<R>(
        &self,
        f: impl FnOnce(&mut AccessDb) -> Result<R, AccessError>,
    ) -> Result<R, AccessError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let result = f(&mut db)?;
        self.reload(&db)?;
        Ok(result)
    }

    /// Runs `f` on the database (reads). Blocking.
    pub fn read<R>(
        &self,
        f: impl FnOnce(&AccessDb) -> Result<R, AccessError>,
    ) -> Result<R, AccessError> {
        f(&self.db.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reloads the snapshot if another process changed `access.db`. Blocking.
    pub fn refresh(&self) -> Result<(), AccessError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let version = db.data_version()?;
        if *self.seen_version.lock().unwrap_or_else(|p| p.into_inner()) != version {
            self.reload(&db)?;
        }
        Ok(())
    }

    fn reload(&self, db: &AccessDb) -> Result<(), AccessError> {
        let snapshot = load(db)?;
        self.admission
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .settle(&snapshot.enrolments);
        *self.seen_version.lock().unwrap_or_else(|p| p.into_inner()) = db.data_version()?;
        self.snapshot.send_replace(Arc::new(snapshot));
        Ok(())
    }

    /// The `spot_auth_*` and `spot_admission_*` series of `/metrics`.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write as _;
        let m = &self.metrics;
        let mut out = String::new();
        out.push_str(
            "# HELP spot_auth_failures_total API requests refused for their key, by reason.\n\
             # TYPE spot_auth_failures_total counter\n",
        );
        for (reason, n) in [
            (KeyRefusal::Missing, &m.unauthenticated[0]),
            (KeyRefusal::Malformed, &m.unauthenticated[1]),
            (KeyRefusal::Invalid, &m.unauthenticated[2]),
        ] {
            let _ = writeln!(
                out,
                "spot_auth_failures_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "spot_auth_failures_total{{reason=\"forbidden\"}} {}\n\
             spot_auth_failures_total{{reason=\"rate_limited\"}} {}",
            m.forbidden.load(Ordering::Relaxed),
            m.limited.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP spot_admission_refused_total Spot streams refused by spot admission, by reason.\n\
             # TYPE spot_admission_refused_total counter\n",
        );
        for (reason, n) in REFUSALS.iter().zip(&m.refused_spots) {
            let _ = writeln!(
                out,
                "spot_admission_refused_total{{reason=\"{reason}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let snapshot = self.snapshot.borrow();
        let _ = writeln!(
            out,
            "# HELP spot_api_keys Active API keys.\n# TYPE spot_api_keys gauge\nspot_api_keys {}\n\
             # HELP spot_enrolled_spots Enrolled spots.\n# TYPE spot_enrolled_spots gauge\n\
             spot_enrolled_spots {}",
            snapshot.keys.len(),
            snapshot.enrolments.len()
        );
        out
    }
}

/// The labels of [`AdmissionRefusal`] in `/metrics`.
const REFUSALS: [&str; 5] = [
    "too_many_spots",
    "not_enrolled",
    "secret_missing",
    "secret_wrong",
    "no_secret_enrolled",
];

fn load(db: &AccessDb) -> Result<Snapshot, AccessError> {
    let mut keys = KeySet::default();
    for (id, role, hash) in db.active_keys()? {
        keys.insert(id, role, hash);
    }
    Ok(Snapshot {
        keys,
        enrolments: db.enrolments()?,
    })
}
