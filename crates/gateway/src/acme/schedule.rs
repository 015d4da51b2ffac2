//! When to renew and when to try again: pure functions of the certificate's validity, the
//! number of failures, and a random draw, so the rules are tested without clocks or CAs.

use std::time::{Duration, SystemTime};

/// The share of a certificate's lifetime added at random to the renewal time, so that
/// replicas that do not share a state directory, and certificates issued together, do not
/// all come back to the CA at the same moment.
pub(crate) const RENEWAL_JITTER: f64 = 0.04;

/// The time to renew a certificate valid from `not_before` to `not_after`: at two thirds of
/// its lifetime, plus `draw` (in `[0, 1)`) times [`RENEWAL_JITTER`] of the lifetime. Two
/// thirds leaves a third of the lifetime (30 days for Let's Encrypt's 90) for retries
/// through a CA outage.
pub(crate) fn renewal_time(not_before: SystemTime, not_after: SystemTime, draw: f64) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let jitter = lifetime.mul_f64(RENEWAL_JITTER * draw.clamp(0.0, 1.0));
    not_before + lifetime * 2 / 3 + jitter
}

/// The wait before attempt `failures + 1`, after `failures` (at least one) failed in a row:
/// `min` doubling up to `max`, then shortened by up to a quarter by `draw` (in `[0, 1)`), so
/// replicas that failed together do not retry together.
pub(crate) fn backoff(failures: u32, min: Duration, max: Duration, draw: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(32);
    let full = min.saturating_mul(1u32 << doublings.min(31)).min(max);
    full.mul_f64(1.0 - 0.25 * draw.clamp(0.0, 1.0))
}

/// A uniform draw in `[0, 1)` from the system's random generator. Falls back to the middle
/// when the generator fails, which only loses the jitter.
pub(crate) fn draw() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    // 53 random bits: every value is exact in an f64.
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime_plus_a_few_percent() {
        let not_before = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let not_after = not_before + 90 * DAY;
        assert_eq!(
            renewal_time(not_before, not_after, 0.0),
            not_before + 60 * DAY
        );
        let latest = renewal_time(not_before, not_after, 0.999_999);
        assert!(latest > not_before + 60 * DAY);
        assert!(latest < not_before + 60 * DAY + 90 * DAY.mul_f64(RENEWAL_JITTER));
        // Random draws stay within the bounds and do not all fall on one time.
        let times: Vec<_> = (0..200)
            .map(|_| renewal_time(not_before, not_after, draw()))
            .collect();
        for t in &times {
            assert!(*t >= not_before + 60 * DAY, "{t:?}");
            assert!(*t < not_before + 60 * DAY + 90 * DAY.mul_f64(RENEWAL_JITTER));
        }
        let spread = times
            .iter()
            .max()
            .unwrap()
            .duration_since(*times.iter().min().unwrap())
            .unwrap();
        assert!(spread > DAY, "jitter spreads renewals: {spread:?}");
    }

    #[test]
    fn a_certificate_without_a_lifetime_is_due_at_its_start() {
        let t = SystemTime::UNIX_EPOCH + DAY;
        assert_eq!(renewal_time(t, t - DAY, 0.5), t);
    }

    #[test]
    fn backoff_doubles_from_the_minimum_to_the_cap_less_up_to_a_quarter() {
        let min = Duration::from_secs(30);
        let max = Duration::from_secs(3600);
        let full: Vec<_> = (1..=10).map(|n| backoff(n, min, max, 0.0)).collect();
        assert_eq!(
            full.iter().map(Duration::as_secs).collect::<Vec<_>>(),
            [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
        );
        assert_eq!(backoff(u32::MAX, min, max, 0.0), max);
        assert_eq!(backoff(1, min, max, 0.999_999).as_secs(), 22);
        for n in 1..20 {
            let d = backoff(n, min, max, draw());
            assert!(d <= max && d >= min.mul_f64(0.75), "{n}: {d:?}");
        }
    }

    #[test]
    fn draws_are_in_the_unit_interval() {
        for _ in 0..1000 {
            let d = draw();
            assert!((0.0..1.0).contains(&d));
        }
    }
}
