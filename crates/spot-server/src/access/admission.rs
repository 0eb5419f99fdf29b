//! Spot admission, sans-IO: which serials may open an ingest stream ([`AdmissionMode`]),
//! and the bound on how many spots exist. Time is passed in.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use super::keys::{hash_token, hashes_equal, TokenHash};

/// Who may stream events in (`--spot-admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdmissionMode {
    /// Any serial (the vendor's spots send nothing but their serial); the number of spots
    /// is bounded by `max_spots`.
    #[default]
    Open,
    /// Only enrolled serials (`POST /api/spots`, `spot spots enroll`, or a spot connecting
    /// during the enrolment window).
    Enrolled,
    /// As `Enrolled`, and each spot presents its own secret (HTTP Basic `serial:secret`;
    /// on raw TCP `spot_secret` in its first `spot create`).
    Secret,
}

impl AdmissionMode {
    /// The mode's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionMode::Open => "open",
            AdmissionMode::Enrolled => "enrolled",
            AdmissionMode::Secret => "secret",
        }
    }
}

impl fmt::Display for AdmissionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AdmissionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(AdmissionMode::Open),
            "enrolled" => Ok(AdmissionMode::Enrolled),
            "secret" => Ok(AdmissionMode::Secret),
            _ => Err(format!("{s:?} is not one of open, enrolled, secret")),
        }
    }
}

/// Settings of spot admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Who may connect.
    pub mode: AdmissionMode,
    /// Most spots the server keeps (default 10,000); a new serial beyond it is refused and
    /// creates nothing.
    pub max_spots: usize,
    /// Until this time (ms since the epoch) a new serial connecting is enrolled (in `secret`
    /// mode with the secret it presents: trust on first use).
    pub enroll_until: Option<i64>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            mode: AdmissionMode::Open,
            max_spots: 10_000,
            enroll_until: None,
        }
    }
}

/// The enrolled serials, each with the hash of its secret where it has one.
pub type Enrolments = HashMap<String, Option<TokenHash>>;

/// A stream that may go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// A serial admitted before (or enrolled).
    Known,
    /// A new serial, counted now.
    New,
    /// A new serial in the enrolment window: the caller stores the enrolment.
    Enroll {
        /// The hash of the secret it presented (`secret` mode).
        secret_hash: Option<TokenHash>,
    },
}

/// Why a spot's stream is refused. Nothing of it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionRefusal {
    /// `open` mode and `max_spots` spots exist.
    #[error("the server keeps at most {0} spots (--max-spots); this serial is new")]
    TooManySpots(usize),
    /// Not enrolled, and no enrolment window is open.
    #[error(
        "this serial is not enrolled (--spot-admission enrolled|secret): enrol it with \
         POST /api/spots or `spot spots enroll`, or open a window with --enroll-until"
    )]
    NotEnrolled,
    /// `secret` mode and no secret was presented.
    #[error("this server needs the spot's secret (HTTP Basic serial:secret)")]
    SecretMissing,
    /// `secret` mode and the secret is not this serial's.
    #[error("the secret presented is not this serial's")]
    SecretWrong,
    /// `secret` mode and the serial was enrolled without a secret.
    #[error("this serial was enrolled without a secret: enrol it again with a secret")]
    NoSecretEnrolled,
}

impl AdmissionRefusal {
    /// The label of the refusal in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionRefusal::TooManySpots(_) => "too_many_spots",
            AdmissionRefusal::NotEnrolled => "not_enrolled",
            AdmissionRefusal::SecretMissing => "secret_missing",
            AdmissionRefusal::SecretWrong => "secret_wrong",
            AdmissionRefusal::NoSecretEnrolled => "no_secret_enrolled",
        }
    }
}

/// The admission decisions' state: the serials admitted so far (the spots that exist,
/// bounded by `max_spots`) and the enrolments made by the window that the store has not
/// handed back yet.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    known: HashSet<String>,
    enrolled_here: Enrolments,
}

impl Admission {
    /// Admission with the spots that exist already.
    pub fn new(config: AdmissionConfig, known: impl IntoIterator<Item = String>) -> Admission {
        Admission {
            config,
            known: known.into_iter().collect(),
            enrolled_here: Enrolments::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    /// Whether the spot `serial`, presenting `secret`, may stream at `now` (ms).
    pub fn check(
        &mut self,
        serial: &str,
        secret: Option<&str>,
        enrolments: &Enrolments,
        now: i64,
    ) -> Result<Admitted, AdmissionRefusal> {
        let mode = self.config.mode;
        if mode == AdmissionMode::Open {
            if self.known.contains(serial) {
                return Ok(Admitted::Known);
            }
            if self.known.len() >= self.config.max_spots {
                return Err(AdmissionRefusal::TooManySpots(self.config.max_spots));
            }
            self.known.insert(serial.to_string());
            return Ok(Admitted::New);
        }
        let enrolment = enrolments
            .get(serial)
            .or_else(|| self.enrolled_here.get(serial));
        if let Some(secret_hash) = enrolment {
            if mode == AdmissionMode::Secret {
                let expected = secret_hash.ok_or(AdmissionRefusal::NoSecretEnrolled)?;
                let secret = secret.ok_or(AdmissionRefusal::SecretMissing)?;
                if !hashes_equal(&expected, &hash_token(secret)) {
                    return Err(AdmissionRefusal::SecretWrong);
                }
            }
            self.known.insert(serial.to_string());
            return Ok(Admitted::Known);
        }
        let window_open = self.config.enroll_until.is_some_and(|until| now < until);
        if !window_open {
            return Err(AdmissionRefusal::NotEnrolled);
        }
        if self.known.len() >= self.config.max_spots {
            return Err(AdmissionRefusal::TooManySpots(self.config.max_spots));
        }
        let secret_hash = match mode {
            AdmissionMode::Secret => {
                Some(hash_token(secret.ok_or(AdmissionRefusal::SecretMissing)?))
            }
            _ => None,
        };
        self.known.insert(serial.to_string());
        self.enrolled_here.insert(serial.to_string(), secret_hash);
        Ok(Admitted::Enroll { secret_hash })
    }

    /// Forgets the window's enrolments that the store's enrolments now hold.
    pub fn settle(&mut self, enrolments: &Enrolments) {
        self.enrolled_here
            .retain(|serial, _| !enrolments.contains_key(serial));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(mode: AdmissionMode, max_spots: usize, enroll_until: Option<i64>) -> Admission {
        let config = AdmissionConfig {
            mode,
            max_spots,
            enroll_until,
        };
        Admission::new(config, ["old".to_string()])
    }

    #[test]
    fn open_admits_any_serial_up_to_max_spots_then_only_known_ones() {
        let mut a = admission(AdmissionMode::Open, 3, None);
        let none = Enrolments::new();
        assert_eq!(a.check("old", None, &none, 0), Ok(Admitted::Known));
        assert_eq!(a.check("a", None, &none, 0), Ok(Admitted::New));
        assert_eq!(a.check("b", None, &none, 0), Ok(Admitted::New));
        assert_eq!(
            a.check("c", None, &none, 0),
            Err(AdmissionRefusal::TooManySpots(3))
        );
        assert_eq!(a.check("a", None, &none, 0), Ok(Admitted::Known));
    }

    #[test]
    fn enrolled_admits_enrolled_serials_and_the_window_enrols_until_it_closes() {
        let mut enrolments = Enrolments::new();
        enrolments.insert("e".to_string(), None);
        let mut a = admission(AdmissionMode::Enrolled, 100, Some(1_000));
        assert_eq!(a.check("e", None, &enrolments, 5_000), Ok(Admitted::Known));
        assert_eq!(
            a.check("n", None, &enrolments, 999),
            Ok(Admitted::Enroll { secret_hash: None })
        );
        // Enrolled by the window: admitted after it closed, before the store says so.
        assert_eq!(a.check("n", None, &enrolments, 5_000), Ok(Admitted::Known));
        assert_eq!(
            a.check("m", None, &enrolments, 1_000),
            Err(AdmissionRefusal::NotEnrolled)
        );
        // A spot that exists but was never enrolled is refused too.
        assert_eq!(
            a.check("old", None, &enrolments, 5_000),
            Err(AdmissionRefusal::NotEnrolled)
        );
    }

    #[test]
    fn secret_binds_to_its_serial() {
        let mut enrolments = Enrolments::new();
        enrolments.insert("a".to_string(), Some(hash_token("sa")));
        enrolments.insert("b".to_string(), Some(hash_token("sb")));
        enrolments.insert("plain".to_string(), None);
        let mut a = admission(AdmissionMode::Secret, 100, None);
        assert_eq!(
            a.check("a", Some("sa"), &enrolments, 0),
            Ok(Admitted::Known)
        );
        assert_eq!(
            a.check("b", Some("sa"), &enrolments, 0),
            Err(AdmissionRefusal::SecretWrong)
        );
        assert_eq!(
            a.check("b", None, &enrolments, 0),
            Err(AdmissionRefusal::SecretMissing)
        );
        assert_eq!(
            a.check("plain", Some("x"), &enrolments, 0),
            Err(AdmissionRefusal::NoSecretEnrolled)
        );
        assert_eq!(
            a.check("z", Some("sz"), &enrolments, 0),
            Err(AdmissionRefusal::NotEnrolled)
        );
    }

    #[test]
    fn the_window_in_secret_mode_binds_the_first_secret_presented() {
        let none = Enrolments::new();
        let mut a = admission(AdmissionMode::Secret, 100, Some(1_000));
        assert_eq!(
            a.check("n", None, &none, 0),
            Err(AdmissionRefusal::SecretMissing)
        );
        assert_eq!(
            a.check("n", Some("first"), &none, 0),
            Ok(Admitted::Enroll {
                secret_hash: Some(hash_token("first"))
            })
        );
        assert_eq!(a.check("n", Some("first"), &none, 0), Ok(Admitted::Known));
        assert_eq!(
            a.check("n", Some("second"), &none, 0),
            Err(AdmissionRefusal::SecretWrong)
        );
    }
}
