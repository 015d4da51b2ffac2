//! Durations as people write them: `500ms`, `10s`, `5m`, `1h`.
//!
//! Read with humantime (which also takes `1h 30m`, `2days`…); written in the largest unit that
//! states the value exactly, so what is written is what a person would have typed and reads
//! back to the same value.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// The units a duration is written in, largest first, with their length in nanoseconds. Days
/// are left out: `24h` reads more plainly in a certificate lifetime than `1d`.
const UNITS: [(&str, u128); 6] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// `duration` in the largest unit that divides it: 300 s is `5m`, 1.5 s is `1500ms`.
pub(crate) fn format(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    let (unit, size) = UNITS
        .iter()
        .find(|(_, size)| nanos.is_multiple_of(*size))
        .copied()
        .unwrap_or(("ns", 1));
    format!("{}{unit}", nanos / size)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration: {e} (examples: 500ms, 10s, 5m, 1h)"
        ))
    })
}

pub(crate) fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*duration))
}

/// The same format for a duration that may be absent.
pub(crate) mod optional {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }

    pub(crate) fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => super::serialize(duration, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per unit: the duration, how it is written, and it reads back the same.
    #[test]
    fn durations_are_written_as_typed_and_read_back() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(24 * 3600), "24h"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(250), "250us"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::new(3601, 1), "3601000000001ns"),
        ];
        for (duration, text) in cases {
            assert_eq!(format(duration), text, "{duration:?}");
            assert_eq!(humantime::parse_duration(text), Ok(duration), "{text}");
        }
    }
}
