//! The deny-list: certificates the mesh's CA has revoked.
//!
//! A revoked certificate still chains to the trust bundle and has not expired, so webpki
//! accepts it; every peer must refuse it too. The CA publishes a [`DenyList`] alongside the
//! bundle and the TLS verifiers ask [`DenyList::denies`] about each peer's leaf once its chain
//! has been verified. A certificate can be revoked three ways:
//!
//! * by **serial**: that certificate, and (through the attestation record's origin serial) every
//!   certificate renewed from it;
//! * by **SPIFFE ID**, for certificates issued before a time: every certificate the workload
//!   holds, while a workload that attests again afterwards gets a certificate that passes;
//! * by **join token id**: every certificate whose identity was attested with that token.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::certificate::X509Certificate;

use crate::attestation::{AttestationMethod, AttestationRecord, MAX_TOKEN_ID_LEN};
use crate::spiffe_id::SpiffeId;
use crate::summary::serial_hex;
use crate::svid::{parse_certificate, uri_sans};

/// RFC 5280 caps certificate serial numbers at 20 octets.
const MAX_SERIAL_LEN: usize = 20;

/// What the mesh's CA has revoked: serials, SPIFFE IDs up to a time, and join tokens.
///
/// Serials are kept as lower-case hex of the serial's big-endian bytes with the leading zero
/// bytes removed (`"00"` for zero). DER writes a positive serial whose first bit is set with an
/// extra `00` byte in front, and people copy serials with or without it; in this form both
/// name the same certificate. `hush cert inspect` prints serials the same way.
///
/// It serializes as `{"serials": [...], "spiffe_ids": [{"id": ..., "issued_before_unix":
/// ...}], "token_ids": [...]}`, each field optional; reading it applies the same checks and
/// normalization as the `deny_*` methods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DenyListFields", into = "DenyListFields")]
pub struct DenyList {
    serials: BTreeSet<String>,
    /// Each listed SPIFFE ID with the time (Unix seconds) before which its certificates are
    /// refused.
    spiffe_ids: BTreeMap<SpiffeId, i64>,
    token_ids: BTreeSet<String>,
    /// Revoked intermediates, by authority ID ([`crate::authority_id`]): a peer trusts roots,
    /// so a certificate under a revoked intermediate of a root still trusted verifies unless
    /// its chain is checked against this.
    authorities: BTreeSet<String>,
}

/// A SPIFFE ID whose certificates issued before a time are revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeniedId {
    /// The identity.
    pub id: SpiffeId,
    /// Certificates whose notBefore is earlier than this (Unix seconds) are refused; later ones
    /// pass. The CA back-dates notBefore a little for clock skew, so a certificate issued
    /// again right after the revocation must not be back-dated past this time, or it is
    /// refused as well.
    pub issued_before_unix: i64,
}

/// Why the deny-list refuses a certificate. Its `Display` is what logs and handshake failures
/// say.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denial {
    /// The certificate's own serial is listed.
    Serial {
        /// The serial, normalized as the list keeps it.
        serial: String,
    },
    /// The certificate was renewed from a certificate whose serial is listed.
    OriginSerial {
        /// The listed serial: the certificate issued when the identity was attested.
        origin: String,
        /// The refused certificate's own serial.
        serial: String,
    },
    /// The certificate's SPIFFE ID is revoked for certificates issued before a time, and this
    /// one is older.
    SpiffeId {
        /// The listed SPIFFE ID.
        id: SpiffeId,
        /// The revocation's cutoff, in Unix seconds.
        issued_before_unix: i64,
        /// The certificate's notBefore, in Unix seconds.
        not_before_unix: i64,
    },
    /// The certificate's identity was attested with a listed token.
    TokenId {
        /// The token's id (never its secret).
        token_id: String,
        /// How the attestation was made.
        method: AttestationMethod,
    },
    /// The certificate was issued under a revoked intermediate.
    Authority {
        /// The intermediate's authority ID.
        id: String,
    },
    /// The deny-list applies, but the certificate cannot be read well enough to check it, so
    /// it is refused rather than risk letting a revoked certificate through.
    Unreadable {
        /// What cannot be read.
        reason: String,
    },
}

/// A deny-list entry was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DenyListError {
    /// A serial number is not hex, or is too long to be one.
    #[error(
        "{serial:?} is not a certificate serial number: {reason}; write it in hex, as `hush \
         cert inspect` prints it (colons are allowed)"
    )]
    Serial {
        /// The serial as given.
        serial: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A token id is empty, too long, or holds a control character.
    #[error("{token_id:?} is not a join token id: {reason}")]
    TokenId {
        /// The token id as given.
        token_id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An authority ID is not 16 lower-case hex digits.
    #[error(
        "{id:?} is not an authority ID: it is 16 lower-case hex digits, as `hush ca authorities` shows"
    )]
    Authority {
        /// The ID as given.
        id: String,
    },
}

// === impl DenyList ===

impl DenyList {
    /// An empty list, which denies nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the list denies nothing. Checking a certificate against an empty list costs
    /// nothing, not even parsing it.
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
            && self.spiffe_ids.is_empty()
            && self.token_ids.is_empty()
            && self.authorities.is_empty()
    }

    /// How many entries the list holds, of all kinds.
    pub fn len(&self) -> usize {
        self.serials.len() + self.spiffe_ids.len() + self.token_ids.len() + self.authorities.len()
    }

    /// Revokes every certificate issued under the intermediate whose authority ID is `id` (16
    /// lower-case hex digits).
    pub fn deny_authority(&mut self, id: &str) -> Result<(), DenyListError> {
        if id.len() != 16
            || !id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(DenyListError::Authority { id: id.to_owned() });
        }
        self.authorities.insert(id.to_owned());
        Ok(())
    }

    /// The revoked intermediates' authority IDs, in order.
    pub fn authorities(&self) -> impl Iterator<Item = &str> {
        self.authorities.iter().map(String::as_str)
    }

    /// Why a chain whose CA certificates (above the leaf) are `issuers` is revoked: one of them
    /// is a revoked intermediate. Cheap when no intermediate is listed.
    pub fn denies_issuers<C: AsRef<[u8]>>(&self, issuers: &[C]) -> Option<Denial> {
        if self.authorities.is_empty() {
            return None;
        }
        issuers
            .iter()
            .filter_map(|ca| crate::authority_id(ca.as_ref()))
            .find(|id| self.authorities.contains(id))
            .map(|id| Denial::Authority { id })
    }

    /// Revokes the certificate with this serial (big-endian bytes, with or without DER's
    /// leading zero byte), and every certificate renewed from it.
    pub fn deny_serial(&mut self, serial: &[u8]) -> Result<(), DenyListError> {
        let normalized = serial_hex(serial);
        if normalized.len() > 2 * MAX_SERIAL_LEN {
            return Err(DenyListError::Serial {
                serial: normalized,
                reason: "it is longer than 20 bytes",
            });
        }
        self.serials.insert(normalized);
        Ok(())
    }

    /// Like [`Self::deny_serial`], for a serial written in hex as people copy it: either case,
    /// with or without colons between the bytes or a leading `00`.
    pub fn deny_serial_hex(&mut self, serial: &str) -> Result<(), DenyListError> {
        let bytes = parse_serial_hex(serial).map_err(|reason| DenyListError::Serial {
            serial: serial.to_owned(),
            reason,
        })?;
        self.deny_serial(&bytes).map_err(|e| match e {
            DenyListError::Serial { reason, .. } => DenyListError::Serial {
                serial: serial.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// Revokes every certificate for `id` whose notBefore is earlier than
    /// `issued_before_unix`. Listing an ID again keeps the later of the two times, which
    /// revokes more.
    pub fn deny_spiffe_id(&mut self, id: SpiffeId, issued_before_unix: i64) {
        let cutoff = self.spiffe_ids.entry(id).or_insert(issued_before_unix);
        *cutoff = (*cutoff).max(issued_before_unix);
    }

    /// Revokes every certificate whose identity was attested with the token `token_id`
    /// (compared exactly).
    pub fn deny_token_id(&mut self, token_id: &str) -> Result<(), DenyListError> {
        let problem = if token_id.is_empty() {
            Some("it is empty")
        } else if token_id.len() > MAX_TOKEN_ID_LEN {
            Some("it is longer than 128 bytes")
        } else if token_id.chars().any(char::is_control) {
            Some("it holds a control character")
        } else {
            None
        };
        if let Some(reason) = problem {
            return Err(DenyListError::TokenId {
                token_id: token_id.to_owned(),
                reason,
            });
        }
        self.token_ids.insert(token_id.to_owned());
        Ok(())
    }

    /// The listed serials, normalized, in order.
    pub fn serials(&self) -> impl Iterator<Item = &str> {
        self.serials.iter().map(String::as_str)
    }

    /// The listed SPIFFE IDs with their cutoffs, in order of ID.
    pub fn spiffe_ids(&self) -> impl Iterator<Item = DeniedId> + '_ {
        self.spiffe_ids
            .iter()
            .map(|(id, &issued_before_unix)| DeniedId {
                id: id.clone(),
                issued_before_unix,
            })
    }

    /// The listed token ids, in order.
    pub fn token_ids(&self) -> impl Iterator<Item = &str> {
        self.token_ids.iter().map(String::as_str)
    }

    /// Why the leaf certificate `leaf_der` is revoked, or `None` if nothing denies it.
    ///
    /// A leaf is denied when its serial or its attestation record's origin serial is listed,
    /// when its SPIFFE ID (any URI SAN that is one) is listed and its notBefore is earlier than
    /// the cutoff, or when its attestation record's token id is listed. The chain is not
    /// checked here: call this once the verifier has checked it.
    pub fn denies(&self, leaf_der: &[u8]) -> Option<Denial> {
        if self.is_empty() {
            return None;
        }
        let cert = match parse_certificate(leaf_der) {
            Ok(cert) => cert,
            Err(error) => {
                return Some(Denial::Unreadable {
                    reason: error.to_string(),
                });
            }
        };
        let serial = serial_hex(cert.raw_serial());
        if self.serials.contains(&serial) {
            return Some(Denial::Serial { serial });
        }
        if let Some(denial) = self.denied_id(&cert) {
            return Some(denial);
        }
        self.denied_attestation(&cert, serial)
    }

    fn denied_id(&self, cert: &X509Certificate<'_>) -> Option<Denial> {
        if self.spiffe_ids.is_empty() {
            return None;
        }
        let uris = match uri_sans(cert) {
            Ok(uris) => uris,
            Err(error) => {
                return Some(Denial::Unreadable {
                    reason: error.to_string(),
                });
            }
        };
        let not_before_unix = cert.validity().not_before.timestamp();
        // Every URI SAN, not only the first: the X.509-SVID check refuses a certificate with
        // two, but the deny-list does not rely on running after it.
        uris.iter()
            .filter_map(|uri| SpiffeId::new(uri).ok())
            .find_map(|id| {
                let issued_before_unix = *self.spiffe_ids.get(&id)?;
                (not_before_unix < issued_before_unix).then_some(Denial::SpiffeId {
                    id,
                    issued_before_unix,
                    not_before_unix,
                })
            })
    }

    fn denied_attestation(&self, cert: &X509Certificate<'_>, serial: String) -> Option<Denial> {
        // Only serials and token ids are read from the record; without them there is nothing
        // it could reveal, and a broken record is none of the list's business.
        if self.serials.is_empty() && self.token_ids.is_empty() {
            return None;
        }
        let record = match AttestationRecord::of_parsed(cert) {
            Ok(Some(record)) => record,
            // Certificates issued before the CA wrote records carry none; they can still be
            // revoked by serial and by SPIFFE ID.
            Ok(None) => return None,
            // Fail closed. The record is signed with the rest of the certificate, so a
            // malformed one (or two of them) means the CA that signed it has a bug, and what
            // the record would have said (a revoked origin serial or token) cannot be ruled
            // out. Refusing it means a peer with such a certificate is cut off as soon as the
            // list names any serial or token, which surfaces the CA bug at once, in words, on
            // both sides; accepting it would let a revoked line of renewals through silently.
            Err(error) => {
                return Some(Denial::Unreadable {
                    reason: error.to_string(),
                });
            }
        };
        let origin = serial_hex(&record.origin_serial);
        if self.serials.contains(&origin) {
            return Some(Denial::OriginSerial { origin, serial });
        }
        let token_id = record.token_id?;
        self.token_ids
            .contains(&token_id)
            .then_some(Denial::TokenId {
                token_id,
                method: record.method,
            })
    }
}

/// A serial written in hex as people copy it (either case, with or without colons between the
/// bytes or a leading `00`) in the form a [`DenyList`] keeps it, for comparing with
/// [`crate::serial_hex`] of a certificate's serial.
pub fn normalize_serial_hex(serial: &str) -> Result<String, DenyListError> {
    let mut one = DenyList::new();
    one.deny_serial_hex(serial)?;
    Ok(one.serials.into_iter().next().unwrap_or_default())
}

/// Reads a serial written in hex, as `hush cert inspect` or openssl print it.
fn parse_serial_hex(text: &str) -> Result<Vec<u8>, &'static str> {
    let digits: Vec<u8> = text.bytes().filter(|&b| b != b':').collect();
    if digits.is_empty() {
        return Err("it is empty");
    }
    let nibbles = digits
        .iter()
        .map(|&b| {
            char::from(b)
                .to_digit(16)
                .and_then(|n| u8::try_from(n).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or("it holds a character that is not a hex digit")?;
    // An odd count of digits is a number whose first digit has no pair: pad it on the left,
    // as the number reads the same.
    let padded = if nibbles.len() % 2 == 1 {
        [&[0][..], &nibbles].concat()
    } else {
        nibbles
    };
    Ok(padded
        .chunks(2)
        .map(|pair| pair[0] << 4 | pair[1])
        .collect())
}

/// What a [`DenyList`] reads and writes: the same entries as lists, each optional.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyListFields {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    serials: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    spiffe_ids: Vec<DeniedId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    token_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    authorities: Vec<String>,
}

impl TryFrom<DenyListFields> for DenyList {
    type Error = DenyListError;

    fn try_from(fields: DenyListFields) -> Result<Self, Self::Error> {
        let mut list = Self::new();
        for serial in &fields.serials {
            list.deny_serial_hex(serial)?;
        }
        for denied in fields.spiffe_ids {
            list.deny_spiffe_id(denied.id, denied.issued_before_unix);
        }
        for token_id in &fields.token_ids {
            list.deny_token_id(token_id)?;
        }
        for id in &fields.authorities {
            list.deny_authority(id)?;
        }
        Ok(list)
    }
}

impl From<DenyList> for DenyListFields {
    fn from(list: DenyList) -> Self {
        Self {
            spiffe_ids: list.spiffe_ids().collect(),
            serials: list.serials.into_iter().collect(),
            token_ids: list.token_ids.into_iter().collect(),
            authorities: list.authorities.into_iter().collect(),
        }
    }
}

// === impl Denial ===

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Serial { serial } => write!(f, "serial {serial} is revoked"),
            Self::OriginSerial { origin, serial } => write!(
                f,
                "serial {origin} is revoked, and this certificate (serial {serial}) was renewed \
                 from it"
            ),
            Self::SpiffeId {
                id,
                issued_before_unix,
                not_before_unix,
            } => write!(
                f,
                "{id} is revoked for certificates issued before {}, and this one is valid from \
                 {}",
                rfc3339(*issued_before_unix),
                rfc3339(*not_before_unix)
            ),
            Self::TokenId {
                token_id,
                method: AttestationMethod::JoinToken,
            } => write!(f, "join token {token_id} is revoked"),
            Self::TokenId { token_id, method } => {
                write!(f, "token {token_id} ({method}) is revoked")
            }
            Self::Authority { id } => write!(
                f,
                "it was issued under intermediate {id}, which the CA revoked"
            ),
            Self::Unreadable { reason } => write!(
                f,
                "the certificate cannot be read to check it ({reason}), so it counts as revoked"
            ),
        }
    }
}

/// A time as RFC 3339 in UTC, or as Unix seconds if it is beyond what RFC 3339 can write.
fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix} (Unix seconds)"))
}

#[cfg(test)]
mod authority_tests {
    use super::*;

    #[test]
    fn a_chain_under_a_revoked_intermediate_is_denied() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        let intermediate = params.self_signed(&key).unwrap();
        let id = crate::authority_id(intermediate.der()).unwrap();
        let mut list = DenyList::new();
        assert_eq!(list.denies_issuers(&[intermediate.der()]), None);
        list.deny_authority(&id).unwrap();
        assert!(!list.is_empty());
        let denial = list.denies_issuers(&[intermediate.der()]).unwrap();
        assert_eq!(denial, Denial::Authority { id: id.clone() });
        assert!(
            denial.to_string().contains("which the CA revoked"),
            "{denial}"
        );
        // It travels as JSON like every other entry.
        let json = serde_json::to_string(&list).unwrap();
        assert_eq!(serde_json::from_str::<DenyList>(&json).unwrap(), list);
        for bad in ["", "ABCDEF0123456789", "0123", "0123456789abcdeg"] {
            assert!(list.deny_authority(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, CustomExtension, SerialNumber};
    use rustls_pki_types::CertificateDer;

    use super::*;
    use crate::attestation::ATTESTATION_OID_ARCS;
    use crate::test_util::{TestCa, leaf_params};

    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
    const NOT_BEFORE: i64 = 1_750_000_000;
    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn id(text: &str) -> SpiffeId {
        text.parse().unwrap()
    }

    /// A leaf for FRONTEND valid from NOT_BEFORE, with this serial and attestation extension.
    fn leaf(serial: &[u8], extension: Option<Vec<u8>>) -> CertificateDer<'static> {
        let mut params: CertificateParams = leaf_params(&[FRONTEND]);
        params.serial_number = Some(SerialNumber::from_slice(serial));
        params.not_before = OffsetDateTime::from_unix_timestamp(NOT_BEFORE).unwrap();
        params.not_after = OffsetDateTime::from_unix_timestamp(NOT_BEFORE + 86_400).unwrap();
        if let Some(value) = extension {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    ATTESTATION_OID_ARCS,
                    value,
                ));
        }
        TestCa::new("spiffe://cluster.local").sign(&params)
    }

    fn attested(origin: &[u8], token_id: Option<&str>) -> Option<Vec<u8>> {
        let record = AttestationRecord {
            attested_at: NOT_BEFORE,
            method: AttestationMethod::JoinToken,
            origin_serial: origin.to_vec(),
            token_id: token_id.map(str::to_owned),
        };
        Some(record.to_der().unwrap())
    }

    fn list(build: impl FnOnce(&mut DenyList)) -> DenyList {
        let mut list = DenyList::new();
        build(&mut list);
        list
    }

    #[test]
    fn an_empty_list_denies_nothing_without_parsing() {
        let list = DenyList::new();
        assert!(list.is_empty());
        assert_eq!(list.len(), 0);
        // Garbage would be denied as unreadable if it were parsed.
        assert_eq!(list.denies(b"not a certificate"), None);
    }

    /// Each row: a deny-list, a certificate, and whether (and how) it is denied.
    #[test]
    fn denies_by_serial_origin_spiffe_id_and_token() {
        let plain = leaf(&[0x47, 0xb0], None);
        // The first bit is set, so DER writes the serial as 00 9a 01.
        let high_bit = leaf(&[0x9a, 0x01], None);
        let renewed = leaf(&[0x55, 0x01], attested(&[0x47, 0xb0], Some(TOKEN)));
        let rows: Vec<(&str, DenyList, &CertificateDer<'_>, Option<Denial>)> = vec![
            (
                "its serial",
                list(|l| l.deny_serial(&[0x47, 0xb0]).unwrap()),
                &plain,
                Some(Denial::Serial {
                    serial: "47b0".to_owned(),
                }),
            ),
            (
                "another serial",
                list(|l| l.deny_serial(&[0x47, 0xb1]).unwrap()),
                &plain,
                None,
            ),
            (
                "a serial with DER's leading zero, listed without it",
                list(|l| l.deny_serial_hex("9A:01").unwrap()),
                &high_bit,
                Some(Denial::Serial {
                    serial: "9a01".to_owned(),
                }),
            ),
            (
                "a serial with DER's leading zero, listed with it",
                list(|l| l.deny_serial(&[0x00, 0x9a, 0x01]).unwrap()),
                &high_bit,
                Some(Denial::Serial {
                    serial: "9a01".to_owned(),
                }),
            ),
            (
                "the serial it was renewed from",
                list(|l| l.deny_serial_hex("47b0").unwrap()),
                &renewed,
                Some(Denial::OriginSerial {
                    origin: "47b0".to_owned(),
                    serial: "5501".to_owned(),
                }),
            ),
            (
                "its SPIFFE ID, revoked after it was issued",
                list(|l| l.deny_spiffe_id(id(FRONTEND), NOT_BEFORE + 1)),
                &plain,
                Some(Denial::SpiffeId {
                    id: id(FRONTEND),
                    issued_before_unix: NOT_BEFORE + 1,
                    not_before_unix: NOT_BEFORE,
                }),
            ),
            (
                "its SPIFFE ID, revoked at the second it was issued",
                list(|l| l.deny_spiffe_id(id(FRONTEND), NOT_BEFORE)),
                &plain,
                None,
            ),
            (
                "its SPIFFE ID, revoked before it was issued",
                list(|l| l.deny_spiffe_id(id(FRONTEND), NOT_BEFORE - 3600)),
                &plain,
                None,
            ),
            (
                "another SPIFFE ID",
                list(|l| l.deny_spiffe_id(id("spiffe://cluster.local/x"), i64::MAX)),
                &plain,
                None,
            ),
            (
                "its join token",
                list(|l| l.deny_token_id(TOKEN).unwrap()),
                &renewed,
                Some(Denial::TokenId {
                    token_id: TOKEN.to_owned(),
                    method: AttestationMethod::JoinToken,
                }),
            ),
            (
                "another join token",
                list(|l| l.deny_token_id("feedface").unwrap()),
                &renewed,
                None,
            ),
            (
                "a join token, and a certificate without a record",
                list(|l| l.deny_token_id(TOKEN).unwrap()),
                &plain,
                None,
            ),
        ];
        for (name, list, cert, expected) in rows {
            assert_eq!(list.denies(cert), expected, "listing {name}");
        }
    }

    #[test]
    fn a_malformed_record_fails_closed_when_the_record_matters() {
        let mut bad = attested(&[0x47, 0xb0], None).unwrap();
        // Version 2.
        bad[4] = 2;
        let cert = leaf(&[0x55, 0x01], Some(bad));

        let by_token = list(|l| l.deny_token_id("feedface").unwrap());
        let denial = by_token.denies(&cert).expect("fails closed");
        assert!(matches!(denial, Denial::Unreadable { .. }), "{denial:?}");
        assert_eq!(
            denial.to_string(),
            "the certificate cannot be read to check it (attestation record is version 2, \
             but hush reads version 1 only), so it counts as revoked"
        );
        let by_serial = list(|l| l.deny_serial(&[0x01]).unwrap());
        assert!(matches!(
            by_serial.denies(&cert),
            Some(Denial::Unreadable { .. })
        ));

        // Only SPIFFE IDs listed: the record cannot change the answer, so it is not read.
        let by_id = list(|l| l.deny_spiffe_id(id("spiffe://cluster.local/x"), i64::MAX));
        assert_eq!(by_id.denies(&cert), None);
    }

    #[test]
    fn an_unreadable_certificate_fails_closed() {
        let by_serial = list(|l| l.deny_serial(&[0x01]).unwrap());
        assert!(matches!(
            by_serial.denies(b"not a certificate"),
            Some(Denial::Unreadable { .. })
        ));
    }

    #[test]
    fn serials_are_normalized() {
        let rows = [
            ("47b0", "47b0"),
            ("47:B0", "47b0"),
            ("0047b0", "47b0"),
            ("7b0", "07b0"),
            ("00", "00"),
            ("0", "00"),
            ("00:00", "00"),
            ("9a01", "9a01"),
        ];
        for (given, kept) in rows {
            let list = list(|l| l.deny_serial_hex(given).unwrap());
            assert_eq!(list.serials().collect::<Vec<_>>(), [kept], "{given}");
        }
        let bytes = list(|l| l.deny_serial(&[0x00, 0x00, 0x9a]).unwrap());
        assert_eq!(bytes.serials().collect::<Vec<_>>(), ["9a"]);
        assert_eq!(normalize_serial_hex("00:9A:01").unwrap(), "9a01");
        assert_eq!(
            normalize_serial_hex("00:9A:01").unwrap(),
            serial_hex(&[0x00, 0x9a, 0x01])
        );
        assert!(normalize_serial_hex("xyz").is_err());
    }

    #[test]
    fn bad_entries_are_refused() {
        let mut list = DenyList::new();
        for (serial, reason) in [
            ("", "it is empty"),
            (":", "it is empty"),
            ("47g0", "it holds a character that is not a hex digit"),
            ("0x47b0", "it holds a character that is not a hex digit"),
            (&"ab".repeat(21), "it is longer than 20 bytes"),
        ] {
            assert_eq!(
                list.deny_serial_hex(serial),
                Err(DenyListError::Serial {
                    serial: serial.to_owned(),
                    reason
                }),
                "{serial:?}"
            );
        }
        // 20 bytes after a sign byte is still a serial RFC 5280 allows.
        let twenty = format!("00{}", "ab".repeat(20));
        list.deny_serial_hex(&twenty).unwrap();

        for (token_id, reason) in [
            ("", "it is empty"),
            ("a\nb", "it holds a control character"),
            (&"t".repeat(129), "it is longer than 128 bytes"),
        ] {
            assert_eq!(
                list.deny_token_id(token_id),
                Err(DenyListError::TokenId {
                    token_id: token_id.to_owned(),
                    reason
                })
            );
        }
        assert_eq!(list.len(), 1);
        assert_eq!(
            DenyList::new()
                .deny_serial_hex("47g0")
                .unwrap_err()
                .to_string(),
            "\"47g0\" is not a certificate serial number: it holds a character that is not a \
             hex digit; write it in hex, as `hush cert inspect` prints it (colons are allowed)"
        );
    }

    #[test]
    fn a_spiffe_id_listed_twice_keeps_the_later_cutoff() {
        let mut list = DenyList::new();
        list.deny_spiffe_id(id(FRONTEND), 200);
        list.deny_spiffe_id(id(FRONTEND), 100);
        assert_eq!(
            list.spiffe_ids().collect::<Vec<_>>(),
            [DeniedId {
                id: id(FRONTEND),
                issued_before_unix: 200
            }]
        );
    }

    #[test]
    fn reads_and_writes_json() {
        let json = r#"{
            "serials": ["47:B0", "009a01"],
            "spiffe_ids": [{"id": "spiffe://cluster.local/ns/shop/sa/frontend",
                            "issued_before_unix": 1750000000}],
            "token_ids": ["0123456789abcdef0123456789abcdef"]
        }"#;
        let list: DenyList = serde_json::from_str(json).unwrap();
        assert_eq!(list.serials().collect::<Vec<_>>(), ["47b0", "9a01"]);
        assert_eq!(list.len(), 4);
        let written = serde_json::to_string(&list).unwrap();
        assert_eq!(
            written,
            concat!(
                r#"{"serials":["47b0","9a01"],"#,
                r#""spiffe_ids":[{"id":"spiffe://cluster.local/ns/shop/sa/frontend","#,
                r#""issued_before_unix":1750000000}],"#,
                r#""token_ids":["0123456789abcdef0123456789abcdef"]}"#,
            )
        );
        assert_eq!(serde_json::from_str::<DenyList>(&written).unwrap(), list);

        assert_eq!(serde_json::to_string(&DenyList::new()).unwrap(), "{}");
        assert!(serde_json::from_str::<DenyList>("{}").unwrap().is_empty());
        for bad in [
            r#"{"serials": ["xyz"]}"#,
            r#"{"token_ids": [""]}"#,
            r#"{"spiffe_ids": [{"id": "https://x", "issued_before_unix": 1}]}"#,
            r#"{"serial": ["47b0"]}"#,
        ] {
            assert!(serde_json::from_str::<DenyList>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn denials_read_well() {
        let rows = [
            (
                Denial::Serial {
                    serial: "47b0".to_owned(),
                },
                "serial 47b0 is revoked",
            ),
            (
                Denial::OriginSerial {
                    origin: "47b0".to_owned(),
                    serial: "5501".to_owned(),
                },
                "serial 47b0 is revoked, and this certificate (serial 5501) was renewed from it",
            ),
            (
                Denial::SpiffeId {
                    id: id(FRONTEND),
                    issued_before_unix: 1_750_000_060,
                    not_before_unix: 1_750_000_000,
                },
                "spiffe://cluster.local/ns/shop/sa/frontend is revoked for certificates issued \
                 before 2025-06-15T15:07:40Z, and this one is valid from 2025-06-15T15:06:40Z",
            ),
            (
                Denial::TokenId {
                    token_id: "0123".to_owned(),
                    method: AttestationMethod::JoinToken,
                },
                "join token 0123 is revoked",
            ),
            (
                Denial::TokenId {
                    token_id: "0123".to_owned(),
                    method: AttestationMethod::KubernetesServiceAccount,
                },
                "token 0123 (Kubernetes service account) is revoked",
            ),
        ];
        for (denial, words) in rows {
            assert_eq!(denial.to_string(), words);
        }
        assert_eq!(rfc3339(i64::MAX), "9223372036854775807 (Unix seconds)");
    }
}
