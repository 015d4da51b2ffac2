//! The line of certificates one attestation starts: what a new certificate records of its
//! attestation, what a renewal presents, and when a renewal must attest again.
//!
//! A workload attests with a token once and then renews with its current certificate. Each
//! certificate carries an [`AttestationRecord`] (decision 34): a token attestation starts a new
//! line (attested now, its own serial as the origin), a renewal copies the record of the
//! certificate it presents. Renewing with a certificate whose record is older than
//! `--reattest-after` is refused, so that one token cannot keep an identity alive for ever.

use std::time::Duration;

use hush_identity::{AttestationMethod, AttestationRecord, CertificateSummary, SpiffeId};

/// The default `--reattest-after`: a week, as the issue asks.
pub const DEFAULT_REATTEST_AFTER: Duration = Duration::from_secs(7 * 86_400);

/// What a new certificate records of how its identity was attested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lineage {
    /// Attested just now with a token: the certificate starts a line of its own (its own
    /// serial is the origin), attested at the CA's clock when it is signed.
    Attested {
        /// How the workload proved who it is.
        method: AttestationMethod,
        /// The join token's id, if one was used.
        token_id: Option<String>,
    },
    /// Renewed with a certificate: its record is copied unchanged.
    Renewed(AttestationRecord),
}

/// What a renewal presents, as far as revocation and re-attestation care: its serial, its
/// notBefore, and its attestation record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PresentedCertificate {
    /// Its serial, normalized as the deny-list keeps serials.
    pub(crate) serial: String,
    /// Its notBefore (Unix seconds).
    pub(crate) not_before: i64,
    /// Its attestation record, or the one it stands for if it carries none.
    pub(crate) record: AttestationRecord,
    /// Whether `record` was read from it (false: it carries none, see
    /// [`PresentedCertificate::read`]).
    pub(crate) recorded: bool,
}

// === impl PresentedCertificate ===

impl PresentedCertificate {
    /// Reads the leaf (DER) a renewal presents. A leaf without a record, issued before the CA
    /// wrote them, stands for one attested at its notBefore by an unrecorded method, with its
    /// own serial as the origin: its renewals inherit that time, so the line still has to
    /// attest again one `--reattest-after` after that certificate was issued, not never.
    pub(crate) fn read(leaf: &[u8]) -> Result<Self, String> {
        let summary = CertificateSummary::from_der(leaf).map_err(|e| e.to_string())?;
        let serial = summary.serial_hex;
        let (record, recorded) = match AttestationRecord::of_certificate(leaf) {
            Ok(Some(record)) => (record, true),
            Ok(None) => {
                let origin_serial = hex_bytes(&serial)
                    .ok_or_else(|| format!("its serial {serial} cannot be read back as bytes"))?;
                let record = AttestationRecord {
                    attested_at: summary.not_before.max(0),
                    method: AttestationMethod::Unrecorded,
                    origin_serial,
                    token_id: None,
                };
                (record, false)
            }
            Err(e) => return Err(e.to_string()),
        };
        Ok(Self {
            serial,
            not_before: summary.not_before,
            record,
            recorded,
        })
    }
}

/// Refuses a renewal with a certificate whose identity `id` was last attested at
/// `attested_at`, if that is more than `limit` before `now` (Unix seconds). A `limit` of zero
/// refuses every renewal with a certificate. The words say what to do.
pub(crate) fn check_reattestation(
    id: &SpiffeId,
    attested_at: i64,
    now: i64,
    limit: Duration,
) -> Result<(), String> {
    let age = now.saturating_sub(attested_at);
    let limit_seconds = i64::try_from(limit.as_secs()).unwrap_or(i64::MAX);
    let what_to_do = "present the token again (a sidecar does this by itself from \
                      ca.token_file; by hand: hush cert request --token-file F)";
    if limit.is_zero() {
        return Err(format!(
            "{id} was last attested {} ago, and this CA's --reattest-after 0s asks for the \
             token at every renewal: {what_to_do}",
            span(age)
        ));
    }
    if age > limit_seconds {
        return Err(format!(
            "{id} was last attested {} ago, more than this CA's --reattest-after {}: \
             {what_to_do}",
            span(age),
            flag_duration(limit)
        ));
    }
    Ok(())
}

/// A duration in its two largest units, as people say it (`7 d 3 h`, `2 min`, `5 s`).
fn span(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3_600 % 24, seconds / 60 % 60);
    if days > 0 {
        format!("{days} d {hours} h")
    } else if hours > 0 {
        format!("{hours} h {minutes} min")
    } else if minutes > 0 {
        format!("{minutes} min {} s", seconds % 60)
    } else {
        format!("{seconds} s")
    }
}

/// A duration as the flag would be written (`7d`, `12h`, `90s`), so that the operator
/// recognises the value they set.
fn flag_duration(limit: Duration) -> String {
    let seconds = limit.as_secs();
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Bytes from the even-length lowercase hex a certificate summary prints.
fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType, SerialNumber};
    use time::OffsetDateTime;

    use super::*;

    const FRONTEND: &str = "spiffe://example.org/ns/shop/sa/frontend";
    /// 2025-06-15T15:06:40Z.
    const T0: i64 = 1_750_000_000;
    const WEEK: Duration = DEFAULT_REATTEST_AFTER;

    fn id() -> SpiffeId {
        FRONTEND.parse().unwrap()
    }

    /// Each row: how long ago the identity was attested, the limit, and the refusal's words
    /// (None: renewed).
    #[test]
    fn renewals_past_the_limit_are_refused_with_what_to_do() {
        let rows: [(i64, Duration, Option<&str>); 7] = [
            (0, WEEK, None),
            (7 * 86_400, WEEK, None),
            (
                7 * 86_400 + 1,
                WEEK,
                Some(
                    "spiffe://example.org/ns/shop/sa/frontend was last attested 7 d 0 h ago, \
                     more than this CA's --reattest-after 7d: present the token again (a \
                     sidecar does this by itself from ca.token_file; by hand: hush cert request \
                     --token-file F)",
                ),
            ),
            (
                7 * 86_400 + 3 * 3600,
                WEEK,
                Some("was last attested 7 d 3 h ago, more than this CA's --reattest-after 7d"),
            ),
            (
                6,
                Duration::from_secs(5),
                Some("was last attested 6 s ago, more than this CA's --reattest-after 5s"),
            ),
            (
                0,
                Duration::ZERO,
                Some(
                    "last attested 0 s ago, and this CA's --reattest-after 0s asks for the token at every renewal: present the token again",
                ),
            ),
            // A record from a clock ahead of the CA's: not refused for that.
            (-3600, WEEK, None),
        ];
        for (age, limit, expected) in rows {
            let verdict = check_reattestation(&id(), T0 - age, T0, limit);
            match (expected, verdict) {
                (None, Ok(())) => {}
                (Some(words), Err(refusal)) => {
                    assert!(refusal.contains(words), "{age} s, {limit:?}: {refusal}");
                }
                (expected, verdict) => {
                    panic!("{age} s, {limit:?}: expected {expected:?}, got {verdict:?}")
                }
            }
        }
    }

    #[test]
    fn durations_read_as_the_flag_and_as_people_say_them() {
        assert_eq!(flag_duration(WEEK), "7d");
        assert_eq!(flag_duration(Duration::from_secs(36 * 3600)), "36h");
        assert_eq!(flag_duration(Duration::from_secs(90)), "90s");
        assert_eq!(flag_duration(Duration::from_secs(600)), "10m");
        assert_eq!(span(125), "2 min 5 s");
        assert_eq!(span(3 * 3600 + 60), "3 h 1 min");
    }

    fn leaf(serial: &[u8], not_before: i64, record: Option<&AttestationRecord>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(FRONTEND.try_into().unwrap())];
        params.serial_number = Some(SerialNumber::from_slice(serial));
        params.not_before = OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = OffsetDateTime::from_unix_timestamp(not_before + 3600).unwrap();
        if let Some(record) = record {
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    hush_identity::ATTESTATION_OID_ARCS,
                    record.to_der().unwrap(),
                ));
        }
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn a_presented_certificate_gives_its_record_or_stands_for_one() {
        let record = AttestationRecord {
            attested_at: T0 - 86_400,
            method: AttestationMethod::JoinToken,
            origin_serial: vec![0x47, 0xb0],
            token_id: Some("0123456789abcdef".into()),
        };
        let renewed = PresentedCertificate::read(&leaf(&[0x55, 0x01], T0, Some(&record))).unwrap();
        assert_eq!(
            renewed,
            PresentedCertificate {
                serial: "5501".into(),
                not_before: T0,
                record,
                recorded: true,
            }
        );

        // Issued before records: attested at its notBefore, the origin of its own line.
        let legacy = PresentedCertificate::read(&leaf(&[0x00, 0x9a, 0x01], T0, None)).unwrap();
        assert_eq!(legacy.serial, "9a01");
        assert!(!legacy.recorded);
        assert_eq!(
            legacy.record,
            AttestationRecord {
                attested_at: T0,
                method: AttestationMethod::Unrecorded,
                origin_serial: vec![0x9a, 0x01],
                token_id: None,
            }
        );
        // Its record can be written into the next certificate, and reads back the same.
        let next =
            PresentedCertificate::read(&leaf(&[0x66], T0 + 60, Some(&legacy.record))).unwrap();
        assert_eq!(next.record, legacy.record);

        assert!(PresentedCertificate::read(b"not a certificate").is_err());
    }
}
