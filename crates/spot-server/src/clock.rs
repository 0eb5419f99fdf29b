//! The server's one wall-clock read. Everything below the async layers (the domain, the
//! protocol) takes `now` as a parameter; the layers that drive them read it here. Also how
//! a duration goes into a log line ([`log_ms`]).

use std::time::{Duration, SystemTime};

use spot_protocol::Timestamp;

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    Timestamp::from_system_time(SystemTime::now()).as_millis()
}

/// `d` in milliseconds to whole microseconds, for log fields: `ms=0.004`, not
/// `ms=0.0040539999999999994`.
pub fn log_ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ms_keeps_whole_microseconds() {
        assert_eq!(log_ms(Duration::from_nanos(4_053_999)).to_string(), "4.053");
        assert_eq!(log_ms(Duration::from_nanos(4_054)).to_string(), "0.004");
        assert_eq!(log_ms(Duration::from_secs(2)).to_string(), "2000");
    }
}
