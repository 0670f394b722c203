//! Human-friendly durations: `500ms`, `10s`, `15m`, `1h`, `1h30m`, `2m30s500ms`.
//!
//! A duration is one or more `<digits><unit>` parts, units `h`, `m`, `s`, `ms`, each used at
//! most once and from largest to smallest. A bare integer in YAML means seconds; that case is
//! handled by the caller. [`format_duration`] writes the same syntax back.

use std::time::Duration;

/// The largest duration accepted anywhere in the configuration (365 days). It keeps
/// `Instant + Duration` arithmetic far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// What is wrong with a duration string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("it is empty")]
    Empty,
    #[error("a number must come before each unit")]
    MissingNumber,
    #[error("the number {0} has no unit (use h, m, s or ms)")]
    MissingUnit(u64),
    #[error("unknown unit {0:?} (use h, m, s or ms)")]
    UnknownUnit(String),
    #[error("units must go from largest to smallest, each at most once (as in \"1h30m\")")]
    OutOfOrder,
    #[error("it is longer than the maximum of 365 days")]
    TooLong,
}

/// Parses a duration string such as `"1h30m"`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total_ms: u64 = 0;
    // The rank of the last unit used: 4 = h, 3 = m, 2 = s, 1 = ms; the next must be smaller.
    let mut last_rank = u8::MAX;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::MissingNumber);
        }
        let (number, after) = rest.split_at(digits);
        let value: u64 = number.parse().map_err(|_| DurationError::TooLong)?;
        let unit_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphabetic())
            .count();
        let (unit, after) = after.split_at(unit_len);
        let (rank, unit_ms) = match unit {
            "h" => (4, 3_600_000),
            "m" => (3, 60_000),
            "s" => (2, 1_000),
            "ms" => (1, 1),
            "" if after.is_empty() => return Err(DurationError::MissingUnit(value)),
            "" => {
                return Err(DurationError::UnknownUnit(
                    after.chars().take(1).collect::<String>(),
                ))
            }
            other => return Err(DurationError::UnknownUnit(other.to_owned())),
        };
        if rank >= last_rank {
            return Err(DurationError::OutOfOrder);
        }
        last_rank = rank;
        total_ms = value
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or(DurationError::TooLong)?;
        rest = after;
    }
    let duration = Duration::from_millis(total_ms);
    if duration > MAX_DURATION {
        return Err(DurationError::TooLong);
    }
    Ok(duration)
}

/// Formats a duration in the syntax [`parse_duration`] reads, largest units first
/// (`"1h30m"`, `"500ms"`, `"0s"`). Sub-millisecond parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        let n = ms / size;
        ms %= size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(unit);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_durations() {
        let cases: &[(&str, u64)] = &[
            ("500ms", 500),
            ("10s", 10_000),
            ("15m", 900_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("2m30s500ms", 150_500),
            ("1h1ms", 3_600_001),
            ("0s", 0),
            ("90s", 90_000),
            ("8760h", 8760 * 3_600_000),
        ];
        for &(s, ms) in cases {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s:?}");
        }
    }

    #[test]
    fn rejects_bad_durations() {
        let cases: &[(&str, DurationError)] = &[
            ("", DurationError::Empty),
            ("s", DurationError::MissingNumber),
            ("h1", DurationError::MissingNumber),
            ("-1s", DurationError::MissingNumber),
            ("10", DurationError::MissingUnit(10)),
            ("1h30", DurationError::MissingUnit(30)),
            ("10x", DurationError::UnknownUnit("x".into())),
            ("10sec", DurationError::UnknownUnit("sec".into())),
            ("1d", DurationError::UnknownUnit("d".into())),
            ("1.5s", DurationError::UnknownUnit(".".into())),
            ("10 s", DurationError::UnknownUnit(" ".into())),
            ("30m1h", DurationError::OutOfOrder),
            ("1s1s", DurationError::OutOfOrder),
            ("8761h", DurationError::TooLong),
            ("99999999999999999999s", DurationError::TooLong),
            ("18446744073709551615h", DurationError::TooLong),
        ];
        for (s, err) in cases {
            assert_eq!(parse_duration(s).as_ref(), Err(err), "{s:?}");
        }
    }

    #[test]
    fn formats_round_trip() {
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (500, "500ms"),
            (10_000, "10s"),
            (900_000, "15m"),
            (3_600_000, "1h"),
            (5_400_000, "1h30m"),
            (150_500, "2m30s500ms"),
        ];
        for &(ms, s) in cases {
            let d = Duration::from_millis(ms);
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(s), Ok(d));
        }
    }
}
