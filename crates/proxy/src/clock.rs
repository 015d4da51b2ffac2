//! Wall-clock seconds, as certificates, metrics and the admin routes state them.
//!
//! Certificates carry Unix seconds; `SystemTime` is what the rest of the sidecar holds. The
//! conversions saturate instead of failing: a time before 1970 or past `i64::MAX` seconds is
//! not worth an error path anywhere it is shown.

use std::time::{Duration, SystemTime};

/// Seconds since the Unix epoch (0 before it).
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The wall-clock time `unix` seconds after the epoch (the epoch itself for a negative value).
pub(crate) fn system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_trip_and_saturate() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(system_time(unix_seconds(t)), t);
        assert_eq!(system_time(-5), SystemTime::UNIX_EPOCH);
        assert_eq!(
            unix_seconds(SystemTime::UNIX_EPOCH - Duration::from_secs(5)),
            0
        );
    }
}
