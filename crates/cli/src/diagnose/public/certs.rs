//! The public server's certificates, judged one question at a time: does the chain lead to a
//! trusted root (and if not, which certificate is at fault), does the leaf cover the name, how
//! long is it valid, and what does a stapled OCSP response say.
//!
//! The chain is verified by rustls-webpki (through rustls' `verify_server_cert_signed_by_trust_anchor`),
//! against Mozilla's roots (`webpki-roots`, compiled in) or `--ca-file`. Dates are a question of
//! their own: when the leaf is outside its validity, the chain is verified as of a moment
//! inside it, so that an expired certificate is reported as expired (step 6), not as a broken
//! chain, and a chain that is broken besides is still said to be.

use std::path::Path;

use anyhow::{Context, Result, bail};
use hush_identity::CertificateSummary;
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::diagnose::hints::PublicReason;
use crate::diagnose::report::{label, time_words};
use crate::times::span;

/// A certificate with less than this left is worth a warning (the gateway's own rule).
pub(crate) const EXPIRY_WARNING_DAYS: i64 = 14;

/// The roots the chain must lead to.
pub(crate) struct PublicTrust {
    store: RootCertStore,
    /// How the report names them.
    pub(crate) words: String,
}

impl PublicTrust {
    /// Mozilla's roots, as browsers trust them.
    pub(crate) fn mozilla() -> Self {
        Self {
            store: RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
            words: "Mozilla's root list (as browsers trust)".into(),
        }
    }

    /// The roots of a PEM file.
    pub(crate) fn from_file(path: &Path) -> Result<Self> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("cannot read --ca-file {}", path.display()))?;
        if certs.is_empty() {
            bail!("--ca-file {}: no certificate in the file", path.display());
        }
        let mut store = RootCertStore::empty();
        for cert in certs {
            store
                .add(cert)
                .with_context(|| format!("--ca-file {}", path.display()))?;
        }
        Ok(Self {
            store,
            words: format!("--ca-file {}", path.display()),
        })
    }

    /// Whether a root of this trust has the subject `name` (an X.509 Name, DER, with its tag).
    fn holds_name(&self, name: &[u8]) -> bool {
        let value = der_value(name).unwrap_or(name);
        self.store
            .roots
            .iter()
            .any(|anchor| anchor.subject.as_ref() == value)
    }
}

/// What the chain step found.
#[derive(Debug)]
pub(super) enum ChainVerdict {
    /// It leads to a trusted root; `as_of` is set when checked at another time than now (the
    /// leaf being out of its validity now).
    Trusted { as_of: Option<i64> },
    /// It does not: why, and the certificate at fault.
    Refused {
        reason: PublicReason,
        message: String,
    },
}

/// Verifies `chain` (leaf first, as sent) against `trust`, at `now` (Unix seconds).
pub(super) fn verify_chain(
    chain: &[CertificateDer<'static>],
    trust: &PublicTrust,
    now: i64,
) -> ChainVerdict {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return ChainVerdict::Refused {
            reason: PublicReason::NoCertificate,
            message: "the server presented no certificate".into(),
        };
    };
    let summaries: Vec<Option<CertificateSummary>> = chain
        .iter()
        .map(|c| CertificateSummary::from_der(c).ok())
        .collect();
    let Some(Some(leaf_summary)) = summaries.first() else {
        return ChainVerdict::Refused {
            reason: PublicReason::InvalidCertificate,
            message: "the server's certificate cannot be read as X.509".into(),
        };
    };
    // The leaf's own dates are the expiry step's: check the chain when the leaf is valid.
    let as_of = now.clamp(leaf_summary.not_before, leaf_summary.not_after);
    let result = verify_at(leaf, intermediates, trust, as_of);
    let error = match result {
        Ok(()) => {
            return ChainVerdict::Trusted {
                as_of: (as_of != now).then_some(as_of),
            };
        }
        Err(error) => error,
    };
    let (reason, message) = explain(chain, &summaries, trust, &error, as_of);
    ChainVerdict::Refused { reason, message }
}

fn verify_at(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    trust: &PublicTrust,
    at: i64,
) -> Result<(), rustls::Error> {
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(at).unwrap_or(0),
    ));
    verify_server_cert_signed_by_trust_anchor(
        &ParsedCertificate::try_from(leaf)?,
        &trust.store,
        intermediates,
        time,
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all,
    )
}

/// Why webpki refused the chain, told from the chain: which certificate, and what to do.
fn explain(
    chain: &[CertificateDer<'static>],
    summaries: &[Option<CertificateSummary>],
    trust: &PublicTrust,
    error: &rustls::Error,
    at: i64,
) -> (PublicReason, String) {
    let certs: Vec<&CertificateSummary> = summaries.iter().map_while(Option::as_ref).collect();
    let plain = (
        PublicReason::InvalidCertificate,
        format!("the chain was refused: {error}"),
    );
    let Some(leaf) = certs.first() else {
        return plain;
    };
    let rustls::Error::InvalidCertificate(cert_error) = error else {
        return plain;
    };
    match cert_error {
        CertificateError::UnknownIssuer => unknown_issuer(chain, &certs, trust),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            match certs[1..].iter().find(|c| c.not_after < at) {
                Some(expired) => (
                    PublicReason::IntermediateExpired,
                    format!(
                        "the intermediate certificate the server sent, {}, expired at {} ({} \
                         ago); the server's own certificate is still valid",
                        expired.subject,
                        time_words(expired.not_after),
                        span(at - expired.not_after)
                    ),
                ),
                None => plain,
            }
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            match certs[1..].iter().find(|c| c.not_before > at) {
                Some(early) => (
                    PublicReason::IntermediateNotYetValid,
                    format!(
                        "the intermediate certificate the server sent, {}, is not valid until \
                         {} (is a clock wrong?)",
                        early.subject,
                        time_words(early.not_before)
                    ),
                ),
                None => plain,
            }
        }
        CertificateError::BadSignature => (
            PublicReason::ChainMismatch,
            "the chain does not hold together: a certificate was not signed by the one sent as \
             its issuer (an intermediate from another or an older CA?)"
                .into(),
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => (
            PublicReason::WrongUsage,
            format!(
                "the server's certificate, {}, is not for TLS servers (its extended key usage \
                 lacks serverAuth)",
                label(leaf)
            ),
        ),
        _ if leaf.is_ca => (
            PublicReason::CaAsLeaf,
            format!(
                "the server presents a CA certificate as its own: {} (CA=true)",
                leaf.subject
            ),
        ),
        _ => plain,
    }
}

/// `UnknownIssuer`, told from where the chain, linked by name from the leaf up, stops.
fn unknown_issuer(
    chain: &[CertificateDer<'static>],
    certs: &[&CertificateSummary],
    trust: &PublicTrust,
) -> (PublicReason, String) {
    let mut path = vec![0usize];
    while let Some(&at) = path.last() {
        let cert = certs[at];
        if cert.subject == cert.issuer {
            break;
        }
        match (0..certs.len()).find(|i| !path.contains(i) && certs[*i].subject == cert.issuer) {
            Some(next) => path.push(next),
            None => break,
        }
    }
    let top_index = path.last().copied().unwrap_or(0);
    let top = certs[top_index];
    let issuer_known = chain
        .get(top_index)
        .and_then(|der| raw_issuer(der))
        .is_some_and(|issuer| trust.holds_name(&issuer));
    let trusted = &trust.words;
    if issuer_known {
        // The names reach a trusted root, yet webpki found no path: say no more than that.
        return (
            PublicReason::UnknownIssuer,
            format!(
                "the chain names {}, which {trusted} holds, but does not verify up to it (a \
                 root of the same name with another key?)",
                top.issuer
            ),
        );
    }
    match (path.len(), top.subject == top.issuer) {
        (1, true) => (
            PublicReason::SelfSigned,
            format!(
                "the server's certificate is self-signed ({}): no CA issued it, and {trusted} \
                 does not hold it",
                label(top)
            ),
        ),
        // The leaf alone, its issuer neither sent nor trusted: what a server that leaves out
        // its intermediate looks like (public CAs never issue from a root directly).
        (1, false) => (
            PublicReason::IncompleteChain,
            format!(
                "the chain is incomplete: the server sent {} issued by {}, but not that \
                 issuer's certificate (the intermediate), and {trusted} does not hold it either",
                label(top),
                top.issuer
            ),
        ),
        // Sent up to a CA certificate whose issuer is not trusted: another CA, or one more
        // certificate missing; the chain cannot tell which, so both are said.
        (_, false) => (
            PublicReason::UnknownIssuer,
            format!(
                "the chain goes up to {}, issued by {}, which {trusted} does not hold: a CA not \
                 trusted here (or a certificate missing between them)",
                top.subject, top.issuer
            ),
        ),
        (_, true) => (
            PublicReason::UnknownIssuer,
            format!(
                "the chain goes up to the root {}, which {trusted} does not hold: the \
                 certificate comes from a CA not trusted here",
                top.subject
            ),
        ),
    }
}

/// The issuer Name of a certificate, DER with its tag.
fn raw_issuer(der: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.issuer().as_raw().to_vec())
}

/// The value of a DER TLV (what webpki keeps of a Name in a trust anchor).
fn der_value(tlv: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = tlv.get(1..)?.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let bytes = rest.get(..count)?;
        let length = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (length, rest.get(count..)?)
    };
    rest.get(..length)
}

/// Whether the leaf covers `server_name`; `Err` names what it covers instead.
pub(super) fn name_match(
    leaf: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
) -> Result<String, String> {
    let summary = CertificateSummary::from_der(leaf).ok();
    let names = summary.map_or_else(Vec::new, |s| {
        s.dns_sans
            .into_iter()
            .map(|n| format!("DNS {n}"))
            .chain(s.ip_sans.into_iter().map(|ip| format!("IP {ip}")))
            .collect::<Vec<_>>()
    });
    let names = if names.is_empty() {
        "no DNS name or IP address".to_string()
    } else {
        names.join(", ")
    };
    let parsed = ParsedCertificate::try_from(leaf).map_err(|e| format!("{e}"))?;
    match verify_server_name(&parsed, server_name) {
        Ok(()) => Ok(names),
        Err(_) => Err(names),
    }
}

/// The leaf's dates at `now`: its verdict, in words.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Expiry {
    Valid { days_left: i64, words: String },
    Soon { days_left: i64, words: String },
    Expired(String),
    NotYetValid(String),
}

pub(super) fn expiry(leaf: &CertificateSummary, now: i64) -> Expiry {
    if now > leaf.not_after {
        return Expiry::Expired(format!(
            "the certificate expired at {} ({} ago)",
            time_words(leaf.not_after),
            span(now - leaf.not_after)
        ));
    }
    if now < leaf.not_before {
        return Expiry::NotYetValid(format!(
            "the certificate is not valid until {} (in {}; is this machine's clock behind?)",
            time_words(leaf.not_before),
            span(leaf.not_before - now)
        ));
    }
    let left = leaf.not_after - now;
    let days_left = left / 86_400;
    let words = format!(
        "valid until {} ({} left)",
        time_words(leaf.not_after),
        span(left)
    );
    if days_left < EXPIRY_WARNING_DAYS {
        Expiry::Soon { days_left, words }
    } else {
        Expiry::Valid { days_left, words }
    }
}

/// A stapled OCSP response, read as far as its verdict on the certificate.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Stapled {
    /// `successful`, or the error status the responder gave.
    pub(super) status: String,
    /// `good`, `revoked` or `unknown`, when the response is successful and readable.
    pub(super) cert_status: Option<&'static str>,
}

/// Reads an OCSPResponse (RFC 6960, 4.2.1) up to the first SingleResponse's certStatus. The
/// response is not verified: this says what the server staples, not whether to trust it.
pub(super) fn read_ocsp(der: &[u8]) -> Option<Stapled> {
    let mut response = Der::new(der).sequence()?;
    let status = response.expect(0x0a)?; // responseStatus ENUMERATED
    let status = match status.first()? {
        0 => "successful",
        1 => "malformedRequest",
        2 => "internalError",
        3 => "tryLater",
        5 => "sigRequired",
        6 => "unauthorized",
        _ => "an unknown status",
    };
    let cert_status = (|| {
        // [0] EXPLICIT ResponseBytes
        let mut bytes = Der::new(response.expect(0xa0)?).sequence()?;
        bytes.expect(0x06)?; // responseType
        let basic = bytes.expect(0x04)?; // OCTET STRING holding a BasicOCSPResponse
        let mut basic = Der::new(basic).sequence()?;
        let mut data = Der::new(basic.expect(0x30)?); // tbsResponseData
        if data.peek() == Some(0xa0) {
            data.expect(0xa0)?; // version
        }
        data.next()?; // responderID
        data.expect(0x18)?; // producedAt
        let mut responses = Der::new(data.expect(0x30)?);
        let mut single = Der::new(responses.expect(0x30)?);
        single.expect(0x30)?; // certID
        match single.peek()? {
            0x80 => Some("good"),
            0xa1 => Some("revoked"),
            0x82 => Some("unknown"),
            _ => None,
        }
    })();
    Some(Stapled {
        status: status.into(),
        cert_status,
    })
}

/// A cursor over DER TLVs, failing (`None`) rather than reading past the end.
struct Der<'a> {
    bytes: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.first().copied()
    }

    /// The next TLV: its tag and value.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let tag = self.peek()?;
        let first = *self.bytes.get(1)?;
        let header = if first < 0x80 {
            2
        } else {
            2 + usize::from(first & 0x7f)
        };
        let value = der_value(self.bytes)?;
        self.bytes = self.bytes.get(header + value.len()..)?;
        Some((tag, value))
    }

    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (found, value) if found == tag => Some(value),
            _ => None,
        }
    }

    fn sequence(mut self) -> Option<Self> {
        self.expect(0x30).map(Der::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_values_are_read_with_short_and_long_lengths() {
        assert_eq!(der_value(&[0x30, 2, 5, 6]), Some(&[5u8, 6][..]));
        let mut long = vec![0x30, 0x81, 200];
        long.extend(vec![1u8; 200]);
        assert_eq!(der_value(&long).map(<[u8]>::len), Some(200));
        assert_eq!(der_value(&[0x30, 5, 1]), None, "a length past the end");
        assert_eq!(der_value(&[0x30]), None);
    }

    #[test]
    fn ocsp_error_statuses_are_read() {
        // OCSPResponse { responseStatus tryLater }
        let later = [0x30, 0x03, 0x0a, 0x01, 0x03];
        assert_eq!(
            read_ocsp(&later),
            Some(Stapled {
                status: "tryLater".into(),
                cert_status: None
            })
        );
        assert_eq!(read_ocsp(&[0x30, 0x03, 0x0a]), None);
        assert_eq!(read_ocsp(b"not DER"), None);
    }

    fn summary(not_before: i64, not_after: i64) -> CertificateSummary {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["shop.example.com".into()]).unwrap();
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let cert = params.self_signed(&key).unwrap();
        CertificateSummary::from_der(cert.der()).unwrap()
    }

    /// One row per situation of the leaf's dates, with the 14-day warning.
    #[test]
    fn expiry_warns_two_weeks_ahead_and_fails_outside_validity() {
        let now = 1_800_000_000;
        let day = 86_400;
        let leaf = |from: i64, to: i64| summary(now + from * day, now + to * day);
        assert!(matches!(
            expiry(&leaf(-10, 80), now),
            Expiry::Valid { days_left: 80, .. }
        ));
        assert!(matches!(
            expiry(&leaf(-10, 14), now),
            Expiry::Valid { days_left: 14, .. }
        ));
        assert!(matches!(
            expiry(&leaf(-10, 13), now),
            Expiry::Soon { days_left: 13, .. }
        ));
        let Expiry::Expired(words) = expiry(&leaf(-10, -2), now) else {
            panic!("expired");
        };
        assert!(words.contains("(2 d 0 h ago)"), "{words}");
        assert!(matches!(expiry(&leaf(1, 90), now), Expiry::NotYetValid(_)));
    }
}
