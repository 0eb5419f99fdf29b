//! Event times: Unix milliseconds, parsed from and formatted to the ISO 8601 forms spots send.
//!
//! Accepted: `YYYY-MM-DDTHH:MM:SS` followed by 0–9 fraction digits (kept to the millisecond,
//! truncated beyond) and `Z`, `+HH:MM`, `-HH:MM` or `+HHMM`. A lower-case `t`/`z` or a space
//! instead of `T` is accepted too. Spots without a clock send 1970 dates: they are ordinary
//! values here. Formatting always gives UTC with `Z`, and milliseconds only when non-zero.

use std::fmt;

/// A point in time as Unix milliseconds (UTC). May be negative (before 1970).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Unix milliseconds.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// From Unix milliseconds.
    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// The Unix milliseconds of a wall-clock time the caller read (this crate never reads
    /// the clock): the one conversion every crate uses. Times before 1970 are negative.
    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        Timestamp(match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
        })
    }

    /// Parses an ISO 8601 date-time as spots send it; `None` if it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() < 19 {
            return None;
        }
        let year = digits(b, 0, 4)? as i64;
        let month = digits(b, 5, 2)?;
        let day = digits(b, 8, 2)?;
        let hour = digits(b, 11, 2)?;
        let minute = digits(b, 14, 2)?;
        let second = digits(b, 17, 2)?;
        if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return None;
        }
        if b[13] != b':' || b[16] != b':' {
            return None;
        }
        if !(1..=12).contains(&month)
            || day == 0
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return None;
        }
        let mut i = 19;
        let mut millis = 0i64;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                if i - start < 3 {
                    millis = millis * 10 + i64::from(b[i] - b'0');
                }
                i += 1;
            }
            let n = i - start;
            if n == 0 || n > 9 {
                return None;
            }
            for _ in n..3 {
                millis *= 10;
            }
        }
        let offset_minutes = match &b[i..] {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), rest @ ..] => {
                let (h, m) = match rest {
                    [_, _, b':', _, _] => (digits(rest, 0, 2)?, digits(rest, 3, 2)?),
                    [_, _, _, _] => (digits(rest, 0, 2)?, digits(rest, 2, 2)?),
                    [_, _] => (digits(rest, 0, 2)?, 0),
                    _ => return None,
                };
                if h > 23 || m > 59 {
                    return None;
                }
                let total = i64::from(h * 60 + m);
                if *sign == b'+' {
                    total
                } else {
                    -total
                }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let secs =
            days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_minutes * 60;
        Some(Timestamp(secs * 1000 + millis))
    }
}

impl Timestamp {
    /// Formats like `Display` into `buf` without the formatting machinery (hot paths format
    /// several times per event); `None` outside years 0000–9999, where `Display` applies.
    pub fn format_into(self, buf: &mut [u8; 24]) -> Option<&str> {
        let millis = self.0.rem_euclid(1000) as u32;
        let secs = self.0.div_euclid(1000);
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        if !(0..=9999).contains(&y) {
            return None;
        }
        let sod = secs.rem_euclid(86_400) as u32;
        // Two digits at a time, from a table.
        const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
            2021222324252627282930313233343536373839\
            4041424344454647484950515253545556575859\
            6061626364656667686970717273747576777879\
            8081828384858687888990919293949596979899";
        fn put(buf: &mut [u8; 24], at: usize, v: u32) {
            let i = v as usize * 2;
            buf[at] = PAIRS[i];
            buf[at + 1] = PAIRS[i + 1];
        }
        let y = y as u32;
        put(buf, 0, y / 100);
        put(buf, 2, y % 100);
        put(buf, 5, m);
        put(buf, 8, d);
        put(buf, 11, sod / 3600);
        put(buf, 14, sod / 60 % 60);
        put(buf, 17, sod % 60);
        let len = if millis == 0 {
            20
        } else {
            buf[19] = b'.';
            buf[20] = b'0' + (millis / 100) as u8;
            put(buf, 21, millis % 100);
            24
        };
        buf[4] = b'-';
        buf[7] = b'-';
        buf[10] = b'T';
        buf[13] = b':';
        buf[16] = b':';
        buf[len - 1] = b'Z';
        std::str::from_utf8(&buf[..len]).ok()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.format_into(&mut [0u8; 24]) {
            Some(text) => f.write_str(text),
            None => write_general(self.0, f),
        }
    }
}

/// The general form, for any year (`format_into` covers 0000–9999).
fn write_general(ms: i64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let secs = ms.div_euclid(1000);
    let ms = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    write!(
        f,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        y,
        m,
        d,
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )?;
    if ms != 0 {
        write!(f, ".{ms:03}")?;
    }
    f.write_str("Z")
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(at..at + n)? {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn system_times_convert_to_unix_millis_on_both_sides_of_1970() {
        use std::time::{Duration, UNIX_EPOCH};
        let after = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(
            super::Timestamp::from_system_time(after).0,
            1_700_000_000_123
        );
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(super::Timestamp::from_system_time(before).0, -1500);
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_forms_seen_in_captures() {
        assert_eq!(
            Timestamp::parse("2014-12-09T12:12:49.713Z"),
            Some(Timestamp(1_418_127_169_713))
        );
        assert_eq!(
            Timestamp::parse("2014-12-09T12:12:53Z"),
            Some(Timestamp(1_418_127_173_000))
        );
        // Two fraction digits are hundredths: .29 is 290 ms.
        assert_eq!(
            Timestamp::parse("2014-02-24T08:31:46.29Z"),
            Timestamp::parse("2014-02-24T08:31:46.290Z")
        );
        assert_eq!(
            Timestamp::parse("1970-01-01T00:00:00.0Z"),
            Some(Timestamp(0))
        );
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        assert_eq!(
            Timestamp::parse("2014-12-09T13:12:53+01:00"),
            Timestamp::parse("2014-12-09T12:12:53Z")
        );
        assert_eq!(
            Timestamp::parse("2014-12-09T11:42:53-0030"),
            Timestamp::parse("2014-12-09T12:12:53Z")
        );
    }

    #[test]
    fn rejects_what_is_not_a_date_time() {
        for s in [
            "",
            "2014-12-09",
            "2014-13-09T12:12:53Z",
            "2014-02-30T12:12:53Z",
            "2014-12-09T12:12:53",
            "2014-12-09T12:12:53.Z",
            "2014-12-09T12:12:53.1234567890Z",
            "2014-12-09T24:00:00Z",
            "2014-12-09T12:12:53Zjunk",
            "２０１４-12-09T12:12:53Z",
        ] {
            assert_eq!(Timestamp::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn formats_with_millis_only_when_non_zero() {
        assert_eq!(
            Timestamp(1_418_127_169_713).to_string(),
            "2014-12-09T12:12:49.713Z"
        );
        assert_eq!(
            Timestamp(1_418_127_173_000).to_string(),
            "2014-12-09T12:12:53Z"
        );
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999Z");
    }

    /// `write_general` through `Display`-like formatting, for comparing with `format_into`.
    struct General(i64);
    impl fmt::Display for General {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write_general(self.0, f)
        }
    }

    #[test]
    fn format_into_stops_outside_years_0000_to_9999() {
        let mut buf = [0u8; 24];
        assert_eq!(Timestamp(253_402_300_800_000).format_into(&mut buf), None);
        assert_eq!(Timestamp(-62_167_219_200_001).format_into(&mut buf), None);
        assert_eq!(
            Timestamp(253_402_300_800_000).to_string(),
            "10000-01-01T00:00:00Z"
        );
    }

    #[test]
    fn format_into_agrees_with_the_general_form_over_many_times() {
        let (low, high) = (-62_167_219_200_000i64, 253_402_300_800_000i64);
        let mut x = 0x853c_49e6_748f_ea9bu64;
        let mut buf = [0u8; 24];
        for _ in 0..200_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let base = low + (x % (high - low) as u64) as i64;
            // Every digit position rolls over somewhere near a day's end.
            let day_end = base - base.rem_euclid(86_400_000) + 86_399_990;
            for ms in [base, base - base.rem_euclid(1000), day_end] {
                if (low..high).contains(&ms) {
                    let general = General(ms).to_string();
                    assert_eq!(Timestamp(ms).format_into(&mut buf), Some(general.as_str()));
                }
            }
        }
    }

    proptest! {
        #[test]
        fn format_into_agrees_with_the_general_form(ms in -62_167_219_200_000i64..253_402_300_800_000) {
            let mut buf = [0u8; 24];
            let general = General(ms).to_string();
            prop_assert_eq!(Timestamp(ms).format_into(&mut buf), Some(general.as_str()));
        }

        #[test]
        fn format_then_parse_is_identity(ms in -62_135_596_800_000i64..253_402_300_799_999) {
            let t = Timestamp(ms);
            prop_assert_eq!(Timestamp::parse(&t.to_string()), Some(t));
        }
    }
}
