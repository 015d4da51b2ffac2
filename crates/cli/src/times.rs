//! Times and durations as the commands print them.

/// A UTC time to the second, RFC 3339 (`2026-11-26T23:21:22Z`).
pub(crate) fn utc_second(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A duration in its two largest units (`2 h 5 min`).
pub(crate) fn span(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3_600 % 24, seconds / 60 % 60);
    if days > 0 {
        format!("{days} d {hours} h")
    } else if hours > 0 {
        format!("{hours} h {minutes} min")
    } else if minutes > 0 {
        format!("{minutes} min")
    } else {
        format!("{seconds} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span(7), "7 s");
        assert_eq!(span(125), "2 min");
        assert_eq!(span(2 * 3600 + 5 * 60 + 9), "2 h 5 min");
        assert_eq!(span(3 * 86_400 + 4 * 3600), "3 d 4 h");
        assert_eq!(span(-5), "0 s");
    }
}
