//! Fault injection: what the emulator does wrong on purpose to test a server's robustness.
//! Each fault is parsed from a `--fault` spec and counted in the summary when it fires.
//!
//! | spec | effect |
//! |---|---|
//! | `cut-mid-chunk:P` | per POST, with probability P, the connection is closed in the middle of a chunk |
//! | `stall:P:MS` | per POST, with probability P, writing stops for MS milliseconds mid-POST |
//! | `burst:P:N` | per POST, with probability P, N new items arrive at once (N `presence create`s) |
//! | `malformed:P` | per event, with probability P, a malformed message (JSON only) goes before it |
//!
//! Clock faults are settings rather than events: `--clock-skew-ms` and `--no-clock`.

/// The faults of a run (all off by default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Probability per POST of cutting the connection mid-chunk.
    pub cut_mid_chunk: f64,
    /// Probability per POST of a stall, and its length in milliseconds.
    pub stall: Option<(f64, u64)>,
    /// Probability per POST of a burst, and its number of arrivals.
    pub burst: Option<(f64, u64)>,
    /// Probability per event of a malformed message before it.
    pub malformed: f64,
}

/// The bytes of an injected malformed JSON message: valid start, cut short, then the
/// message separator, so a receiver must report one bad message and resynchronise.
pub const MALFORMED_JSON: &[u8] = b"[\"presence\",\"create\",{\"item_code\":\"30f0\n\n";

/// Why a `--fault` spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultSpecError {
    /// A probability field is not a number in 0..1.
    #[error("{spec}: {value:?} is not a probability in 0..1")]
    NotProbability {
        /// The whole spec.
        spec: String,
        /// The field.
        value: String,
    },
    /// A count or duration field is not a whole number.
    #[error("{spec}: {value:?} is not a whole number")]
    NotWholeNumber {
        /// The whole spec.
        spec: String,
        /// The field.
        value: String,
    },
    /// The spec names no known fault, or has the wrong number of fields.
    #[error("{0}: unknown fault (cut-mid-chunk:P, stall:P:MS, burst:P:N, malformed:P)")]
    Unknown(String),
}

impl Faults {
    /// Adds one `--fault` spec (see the module docs).
    pub fn add(&mut self, spec: &str) -> Result<(), FaultSpecError> {
        let parts: Vec<&str> = spec.split(':').collect();
        let prob = |s: &str| match s.parse::<f64>() {
            Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
            _ => Err(FaultSpecError::NotProbability {
                spec: spec.to_string(),
                value: s.to_string(),
            }),
        };
        let count = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| FaultSpecError::NotWholeNumber {
                    spec: spec.to_string(),
                    value: s.to_string(),
                })
        };
        match parts.as_slice() {
            ["cut-mid-chunk", p] => self.cut_mid_chunk = prob(p)?,
            ["stall", p, ms] => self.stall = Some((prob(p)?, count(ms)?)),
            ["burst", p, n] => self.burst = Some((prob(p)?, count(n)?)),
            ["malformed", p] => self.malformed = prob(p)?,
            _ => return Err(FaultSpecError::Unknown(spec.to_string())),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let mut f = Faults::default();
        for spec in [
            "cut-mid-chunk:0.1",
            "stall:0.5:2000",
            "burst:1:5000",
            "malformed:0.001",
        ] {
            f.add(spec).unwrap();
        }
        assert_eq!(
            f,
            Faults {
                cut_mid_chunk: 0.1,
                stall: Some((0.5, 2000)),
                burst: Some((1.0, 5000)),
                malformed: 0.001
            }
        );
        assert!(f
            .add("cut-mid-chunk:2")
            .unwrap_err()
            .to_string()
            .contains("probability"));
        assert!(f
            .add("stall:0.1:soon")
            .unwrap_err()
            .to_string()
            .contains("whole number"));
        assert!(f
            .add("explode:1")
            .unwrap_err()
            .to_string()
            .contains("unknown fault"));
    }

    #[test]
    fn malformed_json_ends_with_the_separator_and_is_not_json() {
        assert!(MALFORMED_JSON.ends_with(b"\n\n"));
        assert!(serde_json::from_slice::<serde_json::Value>(MALFORMED_JSON).is_err());
    }
}
