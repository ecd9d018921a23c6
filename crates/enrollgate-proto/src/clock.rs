//! Time as an input: every rule that depends on "now" takes it as an argument, and the
//! daemon reads it from a [`Clock`] so tests can pin it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch. Token expiry and certificate validity are whole seconds.
pub type UnixTime = i64;

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// The current time in whole seconds since the epoch.
    fn unix_now(&self) -> UnixTime {
        to_unix(self.now())
    }
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that always answers the same instant (for tests and benchmarks).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub SystemTime);

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        self.0
    }
}

/// Converts a `SystemTime` to Unix seconds (negative before 1970).
pub fn to_unix(t: SystemTime) -> UnixTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Converts Unix seconds back to a `SystemTime`.
pub fn from_unix(t: UnixTime) -> SystemTime {
    if t >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(t.unsigned_abs())
    }
}

/// RFC 3339 text of a Unix time, as the API shows timestamps (`2026-11-28T14:15:25Z`).
/// Any value formats (a peer's JWT `exp` is any integer): times outside the years 0000 to
/// 9999 are clamped to them.
pub fn rfc3339(t: UnixTime) -> String {
    // 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    let t = t.clamp(-62_167_219_200, 253_402_300_799);
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => String::from("1970-01-01T00:00:00Z"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_round_trip() {
        for t in [0, 1, 1_700_000_000, -5] {
            assert_eq!(to_unix(from_unix(t)), t);
        }
    }

    #[test]
    fn rfc3339_is_utc_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_339_325), "2025-11-28T14:15:25Z");
    }

    #[test]
    fn regression_rfc3339_of_any_integer_does_not_panic() {
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(i64::MIN), "0000-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_800), "9999-12-31T23:59:59Z");
    }
}
