//! The attestation record: when and how a workload last proved its identity to the CA.
//!
//! A sidecar renews its certificate by presenting the current one, so without a record of the
//! original attestation one join token could keep an identity alive forever. The CA writes an
//! [`AttestationRecord`] into every workload certificate, in a non-critical extension it signs
//! like the rest of the certificate; renewals copy it, a fresh attestation replaces it. The CA
//! can then refuse renewals of an attestation that is too old, and the deny-list can revoke
//! every certificate descended from one attestation (its origin serial) or one join token.
//!
//! The extension's value is this DER structure:
//!
//! ```text
//! AttestationRecord ::= SEQUENCE {
//!     version       INTEGER (1),
//!     attestedAt    GeneralizedTime,          -- YYYYMMDDHHMMSSZ, whole seconds, UTC
//!     method        ENUMERATED { joinToken (0), kubernetesServiceAccount (1), unrecorded (2) },
//!     originSerial  OCTET STRING (SIZE (1..20)),
//!     tokenId       [0] IMPLICIT UTF8String (SIZE (1..128)) OPTIONAL }
//! ```

use std::borrow::Cow;
use std::fmt;

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};
use x509_parser::asn1_rs::{
    self, ASN1DateTime, ASN1TimeZone, Any, Class, Enumerated, FromDer, GeneralizedTime, Sequence,
    Tag, TaggedImplicit, ToDer, Utf8String,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::nom;

use crate::svid::{SvidError, parse_certificate};

/// The attestation extension's OID, `2.25.7737115200808529175`, as the arcs rcgen's
/// `CustomExtension::from_oid_content` takes.
///
/// The 2.25 arc needs no registration: its one sub-arc is a UUID read as an integer. A random
/// (version 4) UUID is a 128-bit integer, but rcgen writes OIDs from `u64` arcs only, and
/// x509-parser prints an arc of 64 bits or more as hex instead of digits. So this UUID is
/// `00000000-0000-0000-6b5f-c1483a77ad17`: 63 random bits under zeros. It cannot collide with
/// an OID made from a version-4 UUID, whose version bits lie in the upper half.
pub const ATTESTATION_OID_ARCS: &[u64] = &[2, 25, 7_737_115_200_808_529_175];

/// The same OID as the content octets of its DER encoding (without tag and length), which is
/// what x509-parser's `Oid::as_bytes` returns for an extension's OID.
pub const ATTESTATION_OID_ENCODED: &[u8] =
    &[0x69, 0xeb, 0xaf, 0xf0, 0xa9, 0x83, 0xd3, 0xde, 0xda, 0x17];

/// The only version of the record this code reads and writes.
const VERSION: u32 = 1;

/// RFC 5280 caps certificate serial numbers at 20 octets.
const MAX_ORIGIN_SERIAL_LEN: usize = 20;

/// Join token ids are 32 hex digits today; the cap leaves room and keeps certificates small.
pub(crate) const MAX_TOKEN_ID_LEN: usize = 128;

/// 9999-12-31T23:59:59Z, the last second a four-digit GeneralizedTime year can write.
const MAX_ATTESTED_AT: i64 = 253_402_300_799;

/// The context-specific tag of `tokenId`.
const TOKEN_ID_TAG: u32 = 0;

/// When and how a workload's identity was last attested, as a workload certificate carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestationRecord {
    /// When the CA attested the workload, in seconds since the Unix epoch (UTC). Whole seconds
    /// from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
    pub attested_at: i64,
    /// How the workload proved who it is.
    pub method: AttestationMethod,
    /// The serial number (big-endian bytes, 1 to 20 of them) of the certificate issued at that
    /// attestation. Renewals keep it, so it names the whole line of certificates renewed from
    /// one attestation.
    pub origin_serial: Vec<u8>,
    /// The id (never the secret) of the join token that was used, if one was: 1 to 128 bytes of
    /// UTF-8 without control characters.
    pub token_id: Option<String>,
}

/// How a workload proved its identity to the CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttestationMethod {
    /// A join token minted by `hush ca token create` (`joinToken`, 0).
    JoinToken,
    /// A Kubernetes service-account token checked by TokenReview (`kubernetesServiceAccount`,
    /// 1).
    KubernetesServiceAccount,
    /// Not known (`unrecorded`, 2): the certificate was renewed from one issued before the CA
    /// wrote attestation records, which says only that its identity was attested no later
    /// than its notBefore. The CA writes that time as `attestedAt`, so that the line of
    /// renewals still has to attest again one day.
    Unrecorded,
}

/// Why an attestation record cannot be written or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// A field of the record is missing or is not the ASN.1 type it should be.
    #[error("attestation record's {field} cannot be read: {reason}")]
    Field {
        /// The field, as the ASN.1 module names it (`version`, `attestedAt`…).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The record is of a version this code does not know.
    #[error("attestation record is version {found}, but hush reads version 1 only")]
    UnsupportedVersion {
        /// The version the record says it is.
        found: u32,
    },

    /// The attestation method is not one hush knows.
    #[error(
        "attestation method {found} is unknown; hush knows 0 (join token), 1 (Kubernetes \
         service account) and 2 (unrecorded)"
    )]
    UnknownMethod {
        /// The ENUMERATED value found.
        found: u32,
    },

    /// `attestedAt` is not a GeneralizedTime of the form DER requires.
    #[error(
        "attestation time {found:?} is not a DER GeneralizedTime in whole seconds and UTC \
         (YYYYMMDDHHMMSSZ)"
    )]
    MalformedTime {
        /// The time's text, shown lossily if it is not ASCII.
        found: String,
    },

    /// The attestation time cannot be written as a GeneralizedTime, or is before 1970.
    #[error(
        "attestation time {found} (Unix seconds) is out of range; it must lie between \
         1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
    )]
    TimeOutOfRange {
        /// The time, in seconds since the Unix epoch.
        found: i64,
    },

    /// The origin serial is empty or longer than a certificate serial may be.
    #[error("attestation record's origin serial is {len} bytes long; it must be 1 to 20 bytes")]
    OriginSerialLength {
        /// Its length in bytes.
        len: usize,
    },

    /// The token id is empty or too long.
    #[error("attestation record's token id is {len} bytes long; it must be 1 to 128 bytes")]
    TokenIdLength {
        /// Its length in bytes.
        len: usize,
    },

    /// The token id holds a character that would break a log line.
    #[error("attestation record's token id holds a control character")]
    TokenIdControlCharacter,

    /// Bytes follow the record, or its last field.
    #[error("attestation record has {len} unexpected bytes after {after}")]
    TrailingData {
        /// How many bytes.
        len: usize,
        /// What they follow: the record, or its last field.
        after: &'static str,
    },

    /// The record reads, but its bytes are not the one DER encoding of what it says (a long
    /// length form, a fractional second, a constructed string…).
    #[error(
        "attestation record is not in canonical DER: it reads, but is not written as DER writes it"
    )]
    NotCanonical,

    /// The DER writer failed. It writes into memory, so this is a bug.
    #[error("attestation record cannot be written as DER: {reason}")]
    Encoding {
        /// What the writer reported.
        reason: String,
    },

    /// The certificate holding the record cannot be parsed.
    #[error("certificate cannot be searched for an attestation record: {0}")]
    Certificate(SvidError),

    /// The certificate carries the attestation extension more than once.
    #[error("certificate carries the attestation extension {count} times; it may carry it once")]
    DuplicateExtension {
        /// How many times.
        count: usize,
    },
}

// === impl AttestationRecord ===

impl AttestationRecord {
    /// The record as the DER value of the attestation extension.
    ///
    /// Refuses a record that [`Self::from_der`] would refuse (a time before 1970, an empty or
    /// oversized origin serial or token id), so that the CA never signs a certificate its peers
    /// cannot read.
    pub fn to_der(&self) -> Result<Vec<u8>, AttestationError> {
        self.check()?;
        let encoding = |e: asn1_rs::SerializeError| AttestationError::Encoding {
            reason: e.to_string(),
        };
        let mut content = Vec::new();
        VERSION.write_der(&mut content).map_err(encoding)?;
        generalized_time(self.attested_at)?
            .write_der(&mut content)
            .map_err(encoding)?;
        Enumerated(self.method.value())
            .write_der(&mut content)
            .map_err(encoding)?;
        self.origin_serial
            .as_slice()
            .write_der(&mut content)
            .map_err(encoding)?;
        if let Some(token_id) = &self.token_id {
            TaggedImplicit::<Utf8String<'_>, asn1_rs::Error, TOKEN_ID_TAG>::implicit(
                Utf8String::new(token_id),
            )
            .write_der(&mut content)
            .map_err(encoding)?;
        }
        Sequence::new(Cow::Owned(content))
            .to_der_vec()
            .map_err(encoding)
    }

    /// Reads the DER value of the attestation extension.
    ///
    /// Strict: the version must be 1, the method one hush knows, the fields within their sizes,
    /// nothing may follow the record, and the bytes must be the canonical DER encoding (a
    /// certificate is signed as written, so there is never a reason for another form).
    pub fn from_der(der: &[u8]) -> Result<Self, AttestationError> {
        let (rest, sequence) = Sequence::from_der(der).map_err(field("the record"))?;
        if !rest.is_empty() {
            return Err(AttestationError::TrailingData {
                len: rest.len(),
                after: "its end",
            });
        }
        let fields = sequence.content.as_ref();

        let (fields, version) = u32::from_der(fields).map_err(field("version"))?;
        if version != VERSION {
            return Err(AttestationError::UnsupportedVersion { found: version });
        }

        let (fields, time) = Any::from_der(fields).map_err(field("attestedAt"))?;
        if time.class() != Class::Universal || time.tag() != Tag::GeneralizedTime {
            return Err(AttestationError::Field {
                field: "attestedAt",
                reason: "it is not a GeneralizedTime".to_owned(),
            });
        }
        let attested_at = parse_generalized_time(time.data)?;

        let (fields, method) = Enumerated::from_der(fields).map_err(field("method"))?;
        let method = AttestationMethod::from_value(method.0)?;

        let (fields, origin_serial) = <&[u8]>::from_der(fields).map_err(field("originSerial"))?;

        let (fields, token_id) = if fields.is_empty() {
            (fields, None)
        } else {
            let (fields, token) = Any::from_der(fields).map_err(field("tokenId"))?;
            if token.class() != Class::ContextSpecific || token.tag() != Tag(TOKEN_ID_TAG) {
                return Err(AttestationError::Field {
                    field: "tokenId",
                    reason: "it is not tagged [0]".to_owned(),
                });
            }
            let token_id =
                std::str::from_utf8(token.data).map_err(|_| AttestationError::Field {
                    field: "tokenId",
                    reason: "it is not valid UTF-8".to_owned(),
                })?;
            (fields, Some(token_id.to_owned()))
        };
        if !fields.is_empty() {
            return Err(AttestationError::TrailingData {
                len: fields.len(),
                after: "its last field",
            });
        }

        let record = Self {
            attested_at,
            method,
            origin_serial: origin_serial.to_vec(),
            token_id,
        };
        // asn1-rs accepts some BER forms and does not check every DER rule on every type; the
        // one encoding of what was read settles it all at once.
        if record.to_der()? != der {
            return Err(AttestationError::NotCanonical);
        }
        Ok(record)
    }

    /// The record in the certificate `cert_der`, or `None` if it carries none (a certificate
    /// issued before hush wrote records, or by another CA).
    ///
    /// A record that cannot be read, or an extension present twice, is an error: a certificate
    /// is signed as a whole, so a broken record means a broken CA, not a record to skip.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Option<Self>, AttestationError> {
        let cert = parse_certificate(cert_der).map_err(AttestationError::Certificate)?;
        Self::of_parsed(&cert)
    }

    /// Like [`Self::of_certificate`], for a certificate already parsed.
    pub(crate) fn of_parsed(cert: &X509Certificate<'_>) -> Result<Option<Self>, AttestationError> {
        let mut found = cert
            .extensions()
            .iter()
            .filter(|ext| ext.oid.as_bytes() == ATTESTATION_OID_ENCODED);
        let Some(first) = found.next() else {
            return Ok(None);
        };
        let others = found.count();
        if others > 0 {
            return Err(AttestationError::DuplicateExtension { count: others + 1 });
        }
        Self::from_der(first.value).map(Some)
    }

    /// The rules both directions share, on the fields themselves.
    fn check(&self) -> Result<(), AttestationError> {
        if !(0..=MAX_ATTESTED_AT).contains(&self.attested_at) {
            return Err(AttestationError::TimeOutOfRange {
                found: self.attested_at,
            });
        }
        let len = self.origin_serial.len();
        if !(1..=MAX_ORIGIN_SERIAL_LEN).contains(&len) {
            return Err(AttestationError::OriginSerialLength { len });
        }
        if let Some(token_id) = &self.token_id {
            let len = token_id.len();
            if !(1..=MAX_TOKEN_ID_LEN).contains(&len) {
                return Err(AttestationError::TokenIdLength { len });
            }
            if token_id.chars().any(char::is_control) {
                return Err(AttestationError::TokenIdControlCharacter);
            }
        }
        Ok(())
    }
}

// === impl AttestationMethod ===

impl AttestationMethod {
    /// The method's ENUMERATED value.
    fn value(self) -> u32 {
        match self {
            Self::JoinToken => 0,
            Self::KubernetesServiceAccount => 1,
            Self::Unrecorded => 2,
        }
    }

    fn from_value(value: u32) -> Result<Self, AttestationError> {
        match value {
            0 => Ok(Self::JoinToken),
            1 => Ok(Self::KubernetesServiceAccount),
            2 => Ok(Self::Unrecorded),
            found => Err(AttestationError::UnknownMethod { found }),
        }
    }
}

impl fmt::Display for AttestationMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::JoinToken => "join token",
            Self::KubernetesServiceAccount => "Kubernetes service account",
            Self::Unrecorded => "unrecorded method",
        })
    }
}

// === DER helpers ===

/// Maps an asn1-rs parse error to the field it happened in, in words.
fn field(name: &'static str) -> impl FnOnce(nom::Err<asn1_rs::Error>) -> AttestationError {
    move |error| AttestationError::Field {
        field: name,
        reason: match error {
            nom::Err::Incomplete(_) => "the data ends before it does".to_owned(),
            nom::Err::Error(e) | nom::Err::Failure(e) => describe(&e),
        },
    }
}

/// asn1-rs errors print as Rust values (`Unexpected Tag (expected: Some(Tag(10)) …`); the
/// common ones read better in words.
fn describe(error: &asn1_rs::Error) -> String {
    use asn1_rs::Error as E;
    match error {
        E::UnexpectedTag { .. } | E::UnexpectedClass { .. } => {
            "it is missing, or is another ASN.1 type".to_owned()
        }
        E::InvalidLength | E::Incomplete(_) => "its length does not match the data".to_owned(),
        E::IndefiniteLengthUnexpected | E::DerConstraintFailed(_) => {
            "it is not in DER form".to_owned()
        }
        E::IntegerNegative => "it is negative".to_owned(),
        E::IntegerTooLarge => "it is too large".to_owned(),
        E::ConstructExpected | E::ConstructUnexpected => {
            "it is constructed where it should be primitive, or the reverse".to_owned()
        }
        other => other.to_string(),
    }
}

/// `at` as a DER GeneralizedTime: whole seconds, UTC.
fn generalized_time(at: i64) -> Result<GeneralizedTime, AttestationError> {
    let out_of_range = AttestationError::TimeOutOfRange { found: at };
    if !(0..=MAX_ATTESTED_AT).contains(&at) {
        return Err(out_of_range);
    }
    let t = OffsetDateTime::from_unix_timestamp(at).map_err(|_| out_of_range.clone())?;
    let year = u32::try_from(t.year()).map_err(|_| out_of_range)?;
    Ok(GeneralizedTime::new(ASN1DateTime::new(
        year,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        None,
        ASN1TimeZone::Z,
    )))
}

/// Reads the content of a GeneralizedTime in the one form DER allows for whole seconds:
/// exactly `YYYYMMDDHHMMSSZ`.
fn parse_generalized_time(text: &[u8]) -> Result<i64, AttestationError> {
    let malformed = || AttestationError::MalformedTime {
        found: String::from_utf8_lossy(text).into_owned(),
    };
    let [digits @ .., b'Z'] = text else {
        return Err(malformed());
    };
    if digits.len() != 14 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let number = |range: std::ops::Range<usize>| {
        digits[range]
            .iter()
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
    };
    let component = |range| u8::try_from(number(range)).map_err(|_| malformed());
    let year = i32::try_from(number(0..4)).map_err(|_| malformed())?;
    let month = Month::try_from(component(4..6)?).map_err(|_| malformed())?;
    let date = Date::from_calendar_date(year, month, component(6..8)?).map_err(|_| malformed())?;
    let time = Time::from_hms(component(8..10)?, component(10..12)?, component(12..14)?)
        .map_err(|_| malformed())?;
    let at = PrimitiveDateTime::new(date, time)
        .assume_utc()
        .unix_timestamp();
    if at < 0 {
        return Err(AttestationError::TimeOutOfRange { found: at });
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use rcgen::CustomExtension;
    use x509_parser::asn1_rs::Oid;

    use super::*;
    use crate::test_util::{TestCa, leaf_params};

    fn record() -> AttestationRecord {
        AttestationRecord {
            attested_at: 1_750_000_000,
            method: AttestationMethod::JoinToken,
            origin_serial: vec![0x47, 0xb0, 0x01, 0x02],
            token_id: Some("0123456789abcdef0123456789abcdef".to_owned()),
        }
    }

    /// A TLV with a short-form length.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag, u8::try_from(content.len()).unwrap()];
        out.extend_from_slice(content);
        out
    }

    /// The record's DER written by hand from its fields, so that the encoder is checked
    /// against the ASN.1 module, not against itself.
    fn by_hand(
        version: &[u8],
        time: &[u8],
        method: u8,
        serial: &[u8],
        token: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut content = tlv(0x02, version);
        content.extend(tlv(0x18, time));
        content.extend(tlv(0x0a, &[method]));
        content.extend(tlv(0x04, serial));
        if let Some(token) = token {
            content.extend(tlv(0x80, token));
        }
        tlv(0x30, &content)
    }

    #[test]
    fn the_oid_constants_agree() {
        let oid = Oid::from(ATTESTATION_OID_ARCS).unwrap();
        assert_eq!(oid.as_bytes(), ATTESTATION_OID_ENCODED);
        assert_eq!(oid.to_id_string(), "2.25.7737115200808529175");
    }

    #[test]
    fn round_trips() {
        let with_token = record();
        let der = with_token.to_der().unwrap();
        assert_eq!(
            der,
            by_hand(
                &[1],
                b"20250615150640Z",
                0,
                &[0x47, 0xb0, 0x01, 0x02],
                Some(b"0123456789abcdef0123456789abcdef"),
            )
        );
        assert_eq!(AttestationRecord::from_der(&der).unwrap(), with_token);

        let without_token = AttestationRecord {
            method: AttestationMethod::KubernetesServiceAccount,
            token_id: None,
            ..record()
        };
        let der = without_token.to_der().unwrap();
        assert_eq!(
            der,
            by_hand(&[1], b"20250615150640Z", 1, &[0x47, 0xb0, 0x01, 0x02], None)
        );
        assert_eq!(AttestationRecord::from_der(&der).unwrap(), without_token);

        let unrecorded = AttestationRecord {
            method: AttestationMethod::Unrecorded,
            token_id: None,
            ..record()
        };
        let der = unrecorded.to_der().unwrap();
        assert_eq!(
            der,
            by_hand(&[1], b"20250615150640Z", 2, &[0x47, 0xb0, 0x01, 0x02], None)
        );
        assert_eq!(AttestationRecord::from_der(&der).unwrap(), unrecorded);
    }

    #[test]
    fn the_largest_record_round_trips() {
        // 20 + 128 bytes push the record past 127 bytes: long-form lengths on both levels.
        let largest = AttestationRecord {
            origin_serial: vec![0xff; 20],
            token_id: Some("t".repeat(128)),
            attested_at: MAX_ATTESTED_AT,
            ..record()
        };
        let der = largest.to_der().unwrap();
        assert_eq!(&der[..3], &[0x30, 0x81, 0xb0]);
        assert_eq!(AttestationRecord::from_der(&der).unwrap(), largest);
    }

    /// X.509 switches from UTCTime to GeneralizedTime in 2050; the record uses GeneralizedTime
    /// throughout, and must be exact on either side of that line and at its own limits.
    #[test]
    fn generalized_time_edges() {
        let rows: [(i64, &[u8]); 6] = [
            (0, b"19700101000000Z"),
            (2_524_607_999, b"20491231235959Z"),
            (2_524_608_000, b"20500101000000Z"),
            (4_107_542_400, b"21000301000000Z"),
            (951_782_400, b"20000229000000Z"),
            (MAX_ATTESTED_AT, b"99991231235959Z"),
        ];
        for (at, text) in rows {
            let record = AttestationRecord {
                attested_at: at,
                ..record()
            };
            let der = record.to_der().unwrap();
            let expected = by_hand(
                &[1],
                text,
                0,
                &record.origin_serial,
                Some(record.token_id.as_deref().unwrap().as_bytes()),
            );
            assert_eq!(der, expected, "{at}");
            assert_eq!(AttestationRecord::from_der(&der).unwrap(), record, "{at}");
        }
        for at in [-1, MAX_ATTESTED_AT + 1, i64::MIN, i64::MAX] {
            let record = AttestationRecord {
                attested_at: at,
                ..record()
            };
            assert_eq!(
                record.to_der(),
                Err(AttestationError::TimeOutOfRange { found: at })
            );
        }
    }

    /// Each row: a record that must not be read, and the error that says why.
    #[test]
    fn malformed_records() {
        let serial: &[u8] = &[0x47, 0xb0];
        let time: &[u8] = b"20250615150640Z";
        let good = by_hand(&[1], time, 0, serial, Some(b"abc"));
        let with_trailing = [good.as_slice(), &[0x00]].concat();
        let long_length = {
            // The same record with its outer length in long form (0x81 n), which BER allows
            // and DER forbids.
            let mut der = vec![0x30, 0x81];
            der.extend_from_slice(&good[1..]);
            der
        };
        let extra_field = {
            let mut content = good[2..].to_vec();
            content.extend(tlv(0x05, &[]));
            tlv(0x30, &content)
        };
        let rows: Vec<(&str, Vec<u8>, AttestationError)> = vec![
            (
                "version 2",
                by_hand(&[2], time, 0, serial, None),
                AttestationError::UnsupportedVersion { found: 2 },
            ),
            (
                "version 0",
                by_hand(&[0], time, 0, serial, None),
                AttestationError::UnsupportedVersion { found: 0 },
            ),
            (
                "a negative version",
                by_hand(&[0xff], time, 0, serial, None),
                AttestationError::Field {
                    field: "version",
                    reason: "it is negative".to_owned(),
                },
            ),
            (
                "bytes after the record",
                with_trailing,
                AttestationError::TrailingData {
                    len: 1,
                    after: "its end",
                },
            ),
            (
                "a field after tokenId",
                extra_field,
                AttestationError::TrailingData {
                    len: 2,
                    after: "its last field",
                },
            ),
            (
                "method 3",
                by_hand(&[1], time, 3, serial, None),
                AttestationError::UnknownMethod { found: 3 },
            ),
            (
                "an empty origin serial",
                by_hand(&[1], time, 0, &[], None),
                AttestationError::OriginSerialLength { len: 0 },
            ),
            (
                "a 21-byte origin serial",
                by_hand(&[1], time, 0, &[0x01; 21], None),
                AttestationError::OriginSerialLength { len: 21 },
            ),
            (
                "an empty token id",
                by_hand(&[1], time, 0, serial, Some(b"")),
                AttestationError::TokenIdLength { len: 0 },
            ),
            (
                "a token id with a newline",
                by_hand(&[1], time, 0, serial, Some(b"abc\ndef")),
                AttestationError::TokenIdControlCharacter,
            ),
            (
                "a token id that is not UTF-8",
                by_hand(&[1], time, 0, serial, Some(&[0xff, 0xfe])),
                AttestationError::Field {
                    field: "tokenId",
                    reason: "it is not valid UTF-8".to_owned(),
                },
            ),
            (
                "a token id tagged [1]",
                {
                    let mut der = by_hand(&[1], time, 0, serial, Some(b"abc"));
                    let at = der.len() - 5;
                    der[at] = 0x81;
                    der
                },
                AttestationError::Field {
                    field: "tokenId",
                    reason: "it is not tagged [0]".to_owned(),
                },
            ),
            (
                "no seconds",
                by_hand(&[1], b"202506151506Z", 0, serial, None),
                AttestationError::MalformedTime {
                    found: "202506151506Z".to_owned(),
                },
            ),
            (
                "fractional seconds",
                by_hand(&[1], b"20250615150640.5Z", 0, serial, None),
                AttestationError::MalformedTime {
                    found: "20250615150640.5Z".to_owned(),
                },
            ),
            (
                "a local time",
                by_hand(&[1], b"20250615150640", 0, serial, None),
                AttestationError::MalformedTime {
                    found: "20250615150640".to_owned(),
                },
            ),
            (
                "an offset",
                by_hand(&[1], b"20250615150640+0100", 0, serial, None),
                AttestationError::MalformedTime {
                    found: "20250615150640+0100".to_owned(),
                },
            ),
            (
                "the 30th of February",
                by_hand(&[1], b"20250230000000Z", 0, serial, None),
                AttestationError::MalformedTime {
                    found: "20250230000000Z".to_owned(),
                },
            ),
            (
                "before 1970",
                by_hand(&[1], b"19691231235959Z", 0, serial, None),
                AttestationError::TimeOutOfRange { found: -1 },
            ),
            (
                "a UTCTime",
                {
                    let mut der = by_hand(&[1], b"250615150640Z", 0, serial, None);
                    der[5] = 0x17;
                    der
                },
                AttestationError::Field {
                    field: "attestedAt",
                    reason: "it is not a GeneralizedTime".to_owned(),
                },
            ),
            (
                "the method as an INTEGER",
                {
                    let mut der = by_hand(&[1], time, 0, serial, None);
                    der[22] = 0x02;
                    der
                },
                AttestationError::Field {
                    field: "method",
                    reason: "it is missing, or is another ASN.1 type".to_owned(),
                },
            ),
            (
                "no origin serial",
                {
                    let mut content = tlv(0x02, &[1]);
                    content.extend(tlv(0x18, time));
                    content.extend(tlv(0x0a, &[0]));
                    tlv(0x30, &content)
                },
                AttestationError::Field {
                    field: "originSerial",
                    reason: "the data ends before it does".to_owned(),
                },
            ),
            (
                "a version written in two bytes",
                by_hand(&[0x00, 0x01], time, 0, serial, None),
                AttestationError::Field {
                    field: "version",
                    reason: "it is not in DER form".to_owned(),
                },
            ),
            (
                "a long-form length",
                long_length,
                AttestationError::NotCanonical,
            ),
            (
                "not a SEQUENCE",
                tlv(0x04, b"x"),
                AttestationError::Field {
                    field: "the record",
                    reason: "it is missing, or is another ASN.1 type".to_owned(),
                },
            ),
            (
                "nothing",
                Vec::new(),
                AttestationError::Field {
                    field: "the record",
                    reason: "the data ends before it does".to_owned(),
                },
            ),
        ];
        AttestationRecord::from_der(&good).expect("the rows spoil a good record");
        for (name, der, expected) in rows {
            assert_eq!(
                AttestationRecord::from_der(&der),
                Err(expected),
                "a record with {name}: {der:02x?}"
            );
        }
    }

    #[test]
    fn oversized_fields_are_not_written() {
        let rows = [
            (
                AttestationRecord {
                    token_id: Some("t".repeat(129)),
                    ..record()
                },
                AttestationError::TokenIdLength { len: 129 },
            ),
            (
                AttestationRecord {
                    origin_serial: vec![1; 21],
                    ..record()
                },
                AttestationError::OriginSerialLength { len: 21 },
            ),
            (
                AttestationRecord {
                    origin_serial: Vec::new(),
                    ..record()
                },
                AttestationError::OriginSerialLength { len: 0 },
            ),
        ];
        for (record, expected) in rows {
            assert_eq!(record.to_der(), Err(expected));
        }
    }

    #[test]
    fn reads_the_record_of_a_certificate() {
        let ca = TestCa::new("spiffe://cluster.local");
        let mut params = leaf_params(&["spiffe://cluster.local/ns/shop/sa/frontend"]);
        assert_eq!(
            AttestationRecord::of_certificate(&ca.sign(&params)).unwrap(),
            None,
            "a certificate without the extension has no record"
        );

        let ext =
            CustomExtension::from_oid_content(ATTESTATION_OID_ARCS, record().to_der().unwrap());
        params.custom_extensions.push(ext.clone());
        let cert = ca.sign(&params);
        assert_eq!(
            AttestationRecord::of_certificate(&cert).unwrap(),
            Some(record())
        );
        // The extension is non-critical, so a verifier that does not know it accepts the
        // certificate: the record is for hush, not a condition on every peer.
        crate::check_leaf_svid(&cert).unwrap();

        params.custom_extensions.push(ext);
        assert_eq!(
            AttestationRecord::of_certificate(&ca.sign(&params)),
            Err(AttestationError::DuplicateExtension { count: 2 })
        );

        params.custom_extensions = vec![CustomExtension::from_oid_content(
            ATTESTATION_OID_ARCS,
            by_hand(&[2], b"20250615150640Z", 0, &[1], None),
        )];
        assert_eq!(
            AttestationRecord::of_certificate(&ca.sign(&params)),
            Err(AttestationError::UnsupportedVersion { found: 2 })
        );

        assert!(matches!(
            AttestationRecord::of_certificate(b"not a certificate"),
            Err(AttestationError::Certificate(SvidError::Parse { .. }))
        ));
    }

    #[test]
    fn messages_read_well() {
        assert_eq!(
            AttestationError::UnknownMethod { found: 7 }.to_string(),
            "attestation method 7 is unknown; hush knows 0 (join token), 1 (Kubernetes \
             service account) and 2 (unrecorded)"
        );
        assert_eq!(
            AttestationError::TokenIdLength { len: 129 }.to_string(),
            "attestation record's token id is 129 bytes long; it must be 1 to 128 bytes"
        );
        assert_eq!(AttestationMethod::JoinToken.to_string(), "join token");
    }
}
