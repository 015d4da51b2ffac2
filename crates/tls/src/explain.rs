//! TLS failures in plain words, named by the handshake step that failed.
//!
//! rustls reports what went wrong precisely, but in its own vocabulary (`InvalidCertificate(
//! UnknownIssuer)`, `PeerIncompatible(SupportedVersionsExtensionRequired)`), and prints the
//! errors of custom verifiers with `Debug`. Operators need to know *which step* of the
//! handshake failed — the hello, the certificate chain, its validity, the SPIFFE ID — and what
//! to do about it; dashboards need a short, stable reason to count by. [`HandshakeFailure`]
//! gives all three.

use std::fmt;
use std::time::{Duration, SystemTime};

use rustls::{AlertDescription, CertificateError, OtherError, PeerIncompatible};
use rustls_pki_types::UnixTime;

use self::FailureReason as R;
use crate::PeerIdentityError;

/// The step of a TLS handshake at which a connection failed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeStep {
    /// The hellos: the peer does not speak TLS at all, or not TLS 1.3, or shares no cipher
    /// suite, key-exchange group or application protocol with hush.
    Hello,
    /// The certificate chain: missing, issued by a CA outside the trust bundle, a bad
    /// signature, a certificate not meant for this use, or one the CA has revoked.
    CertificateChain,
    /// The certificate's validity period: expired, or not valid yet.
    Validity,
    /// The SPIFFE ID: not an X.509-SVID, another trust domain, or not the workload expected.
    SpiffeId,
    /// The connection itself: closed, reset or too slow before the handshake finished.
    Connection,
}

/// Why a TLS handshake failed, as a short, stable, lower-case label (`unknown_issuer`,
/// `expired`, `tls_version`…), fit for a metric label.
///
/// Not `#[non_exhaustive]` on purpose: whoever words these for people (`hush diagnose`'s hints)
/// matches every reason, so a new one does not compile until it is worded there too. The labels
/// are part of the sidecar's metrics (`reason="…"`): dashboards and alerts count by them, so a
/// label never changes once published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The handshake did not finish in time (`timeout`).
    Timeout,
    /// The peer closed the connection before the handshake finished (`closed`).
    Closed,
    /// The peer reset the connection during the handshake (`reset`).
    Reset,
    /// Another I/O error during the handshake (`io`).
    Io,
    /// The peer did not speak TLS: plaintext or garbage (`not_tls`).
    NotTls,
    /// The peer does not speak TLS 1.3 (`tls_version`).
    TlsVersion,
    /// No cipher suite in common (`no_common_cipher`).
    NoCommonCipher,
    /// No key-exchange group in common (`no_common_group`).
    NoCommonGroup,
    /// No signature scheme in common (`no_common_signature_scheme`).
    NoCommonSignatureScheme,
    /// Another incompatibility of the hellos (`incompatible`).
    Incompatible,
    /// No application protocol (ALPN) in common (`no_common_alpn`).
    NoCommonAlpn,
    /// The peer broke the TLS protocol (`misbehaved`).
    Misbehaved,
    /// A record could not be decrypted (`decrypt_error`).
    DecryptError,
    /// A TLS error hush has no better name for (`other`).
    Other,
    /// The peer presented no certificate (`no_certificate`).
    NoCertificate,
    /// The chain does not lead to a root of the trust bundle (`unknown_issuer`).
    UnknownIssuer,
    /// A signature in the chain does not verify (`bad_signature`).
    BadSignature,
    /// A certificate cannot be parsed (`bad_encoding`).
    BadEncoding,
    /// A certificate of the chain has expired (`expired`).
    Expired,
    /// A certificate of the chain is not valid yet (`not_yet_valid`).
    NotYetValid,
    /// The certificate's extended key usage does not allow this use (`wrong_usage`).
    WrongUsage,
    /// The certificate is not valid for the name asked for (`wrong_name`).
    WrongName,
    /// The certificate has been revoked: the mesh's CA put it on its deny-list (`hush ca
    /// revoke-identity`), by serial, SPIFFE ID or join token (`revoked`).
    Revoked,
    /// The certificate was refused for another reason (`invalid_certificate`).
    InvalidCertificate,
    /// The certificate breaks the X.509-SVID rules (`not_an_svid`).
    NotAnSvid,
    /// A valid workload, but not the one expected (`unexpected_identity`).
    UnexpectedIdentity,
    /// A SPIFFE ID of another trust domain (`foreign_trust_domain`).
    ForeignTrustDomain,
    /// The peer refused the handshake with an alert (`refused_by_peer`).
    RefusedByPeer,
}

/// Why a TLS handshake failed: the step, a short reason for metrics, and plain words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeFailure {
    /// The step that failed.
    pub step: HandshakeStep,
    /// A short, stable reason, fit for a metric label ([`FailureReason::as_str`]).
    pub reason: FailureReason,
    /// What happened and, where it helps, what to do, for a person.
    pub message: String,
}

// === impl HandshakeStep ===

impl HandshakeStep {
    /// The step's name as hush prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::CertificateChain => "certificate chain",
            Self::Validity => "validity",
            Self::SpiffeId => "SPIFFE ID",
            Self::Connection => "connection",
        }
    }
}

impl fmt::Display for HandshakeStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl FailureReason ===

impl FailureReason {
    /// Every reason, for tests and documentation tables.
    pub const ALL: [Self; 28] = [
        Self::Timeout,
        Self::Closed,
        Self::Reset,
        Self::Io,
        Self::NotTls,
        Self::TlsVersion,
        Self::NoCommonCipher,
        Self::NoCommonGroup,
        Self::NoCommonSignatureScheme,
        Self::Incompatible,
        Self::NoCommonAlpn,
        Self::Misbehaved,
        Self::DecryptError,
        Self::Other,
        Self::NoCertificate,
        Self::UnknownIssuer,
        Self::BadSignature,
        Self::BadEncoding,
        Self::Expired,
        Self::NotYetValid,
        Self::WrongUsage,
        Self::WrongName,
        Self::Revoked,
        Self::InvalidCertificate,
        Self::NotAnSvid,
        Self::UnexpectedIdentity,
        Self::ForeignTrustDomain,
        Self::RefusedByPeer,
    ];

    /// The label, as metrics, traces and `hush diagnose --json` print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Reset => "reset",
            Self::Io => "io",
            Self::NotTls => "not_tls",
            Self::TlsVersion => "tls_version",
            Self::NoCommonCipher => "no_common_cipher",
            Self::NoCommonGroup => "no_common_group",
            Self::NoCommonSignatureScheme => "no_common_signature_scheme",
            Self::Incompatible => "incompatible",
            Self::NoCommonAlpn => "no_common_alpn",
            Self::Misbehaved => "misbehaved",
            Self::DecryptError => "decrypt_error",
            Self::Other => "other",
            Self::NoCertificate => "no_certificate",
            Self::UnknownIssuer => "unknown_issuer",
            Self::BadSignature => "bad_signature",
            Self::BadEncoding => "bad_encoding",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongUsage => "wrong_usage",
            Self::WrongName => "wrong_name",
            Self::Revoked => "revoked",
            Self::InvalidCertificate => "invalid_certificate",
            Self::NotAnSvid => "not_an_svid",
            Self::UnexpectedIdentity => "unexpected_identity",
            Self::ForeignTrustDomain => "foreign_trust_domain",
            Self::RefusedByPeer => "refused_by_peer",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl HandshakeFailure ===

impl HandshakeFailure {
    fn new(step: HandshakeStep, reason: FailureReason, message: impl Into<String>) -> Self {
        Self {
            step,
            reason,
            message: message.into(),
        }
    }

    /// The handshake did not finish within `limit`.
    pub fn timed_out(limit: Duration) -> Self {
        Self::new(
            HandshakeStep::Connection,
            R::Timeout,
            format!(
                "the peer did not finish the TLS handshake within {}",
                humantime::format_duration(limit)
            ),
        )
    }

    /// Explains an I/O error from tokio-rustls (which wraps rustls' own errors).
    pub fn from_io(error: &std::io::Error) -> Self {
        if let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Self::from_tls(tls);
        }
        use std::io::ErrorKind;
        match error.kind() {
            ErrorKind::UnexpectedEof => Self::new(
                HandshakeStep::Connection,
                R::Closed,
                "the peer closed the connection before the TLS handshake finished",
            ),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => Self::new(
                HandshakeStep::Connection,
                R::Reset,
                "the peer reset the connection during the TLS handshake",
            ),
            ErrorKind::TimedOut => Self::new(
                HandshakeStep::Connection,
                R::Timeout,
                "the TLS handshake timed out",
            ),
            _ => Self::new(
                HandshakeStep::Connection,
                R::Io,
                format!("the connection failed during the TLS handshake: {error}"),
            ),
        }
    }

    /// Explains a rustls error.
    pub fn from_tls(error: &rustls::Error) -> Self {
        use HandshakeStep::{CertificateChain, Hello};
        use rustls::Error as E;
        match error {
            E::InvalidCertificate(cert) => Self::from_certificate_error(cert),
            E::NoCertificatesPresented => Self::new(
                CertificateChain,
                R::NoCertificate,
                "the peer presented no certificate; connections between sidecars are mutual \
                 TLS, so both sides must prove a SPIFFE identity",
            ),
            E::InvalidMessage(_)
            | E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::PeerSentOversizedRecord => Self::new(
                Hello,
                R::NotTls,
                format!(
                    "the peer did not speak TLS ({error}): plaintext or garbage sent to a TLS \
                     port?"
                ),
            ),
            E::PeerIncompatible(incompatible) => Self::from_incompatible(incompatible),
            E::NoApplicationProtocol => Self::new(
                Hello,
                R::NoCommonAlpn,
                "the peer offered no application protocol (ALPN) that this side accepts",
            ),
            E::PeerMisbehaved(misbehaved) => Self::new(
                Hello,
                R::Misbehaved,
                format!("the peer broke the TLS protocol: {misbehaved:?}"),
            ),
            E::DecryptError => Self::new(
                Hello,
                R::DecryptError,
                "a TLS record could not be decrypted: the peer's keys do not match",
            ),
            E::AlertReceived(alert) => Self::from_alert(*alert),
            E::Other(OtherError(inner)) => match inner.downcast_ref::<PeerIdentityError>() {
                Some(identity) => Self::from_identity_error(identity),
                None => Self::new(Hello, R::Other, format!("TLS failed: {inner}")),
            },
            other => Self::new(Hello, R::Other, format!("TLS failed: {other}")),
        }
    }

    fn from_certificate_error(error: &CertificateError) -> Self {
        use CertificateError as C;
        use HandshakeStep::{CertificateChain, SpiffeId, Validity};
        match error {
            C::UnknownIssuer => Self::new(
                CertificateChain,
                R::UnknownIssuer,
                // From the error alone, a chain of another CA and a certificate sent without
                // its intermediate look alike; naming one would send the user after the wrong
                // problem (`hush diagnose` reads the chain and tells them apart).
                "the peer's certificate does not chain to this mesh's trust bundle (unknown \
                 issuer): it was issued by another CA, or sent without the intermediate that \
                 issued it",
            ),
            C::BadSignature => Self::new(
                CertificateChain,
                R::BadSignature,
                "a signature in the peer's certificate chain does not verify",
            ),
            C::BadEncoding => Self::new(
                CertificateChain,
                R::BadEncoding,
                "the peer's certificate cannot be parsed (bad encoding)",
            ),
            C::Expired => Self::new(Validity, R::Expired, "the peer's certificate has expired"),
            C::ExpiredContext { time, not_after } => Self::new(
                Validity,
                R::Expired,
                format!(
                    "the peer's certificate expired at {} ({} ago)",
                    rfc3339(*not_after),
                    elapsed(*not_after, *time)
                ),
            ),
            C::NotValidYet => Self::new(
                Validity,
                R::NotYetValid,
                "the peer's certificate is not valid yet (is a clock wrong?)",
            ),
            C::NotValidYetContext { time, not_before } => Self::new(
                Validity,
                R::NotYetValid,
                format!(
                    "the peer's certificate is not valid until {} (in {}; is a clock wrong?)",
                    rfc3339(*not_before),
                    elapsed(*time, *not_before)
                ),
            ),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => Self::new(
                CertificateChain,
                R::WrongUsage,
                "the peer's certificate is not meant for this use (its extended key usage \
                 lacks client or server authentication)",
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => Self::new(
                SpiffeId,
                R::WrongName,
                format!("the peer's certificate is not valid for the name asked for ({error})"),
            ),
            C::Revoked => Self::new(
                CertificateChain,
                R::Revoked,
                "the peer's certificate has been revoked",
            ),
            C::Other(OtherError(inner)) => match inner.downcast_ref::<PeerIdentityError>() {
                Some(identity) => Self::from_identity_error(identity),
                None => Self::new(
                    CertificateChain,
                    R::InvalidCertificate,
                    format!("the peer's certificate was refused: {inner}"),
                ),
            },
            other => Self::new(
                CertificateChain,
                R::InvalidCertificate,
                format!("the peer's certificate was refused: {other:?}"),
            ),
        }
    }

    fn from_identity_error(error: &PeerIdentityError) -> Self {
        use HandshakeStep::{CertificateChain, SpiffeId};
        let (step, reason) = match error {
            PeerIdentityError::NotAnSvid(_) => (SpiffeId, R::NotAnSvid),
            PeerIdentityError::UnexpectedIdentity { .. } => (SpiffeId, R::UnexpectedIdentity),
            PeerIdentityError::ForeignTrustDomain { .. } => (SpiffeId, R::ForeignTrustDomain),
            // Revocation belongs to the certificate, not to the name in it: a serial or a join
            // token is revoked whatever SPIFFE ID the certificate carries, and a revoked SPIFFE
            // ID only for certificates issued before a time. It is where rustls' own
            // `CertificateError::Revoked` lands too.
            PeerIdentityError::Revoked(_) => (CertificateChain, R::Revoked),
        };
        Self::new(step, reason, error.to_string())
    }

    fn from_incompatible(incompatible: &PeerIncompatible) -> Self {
        use HandshakeStep::Hello;
        use PeerIncompatible as P;
        match incompatible {
            P::SupportedVersionsExtensionRequired
            | P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled
            | P::ServerDoesNotSupportTls12Or13
            | P::ServerTlsVersionIsDisabledByOurConfig => Self::new(
                Hello,
                R::TlsVersion,
                "the peer does not offer TLS 1.3; hush speaks TLS 1.3 only",
            ),
            P::NoCipherSuitesInCommon => Self::new(
                Hello,
                R::NoCommonCipher,
                "no cipher suite in common; hush offers the TLS 1.3 AEAD suites only \
                 (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305)",
            ),
            P::NoKxGroupsInCommon
            | P::KeyShareExtensionRequired
            | P::NamedGroupsExtensionRequired => Self::new(
                Hello,
                R::NoCommonGroup,
                "no key-exchange group in common; hush offers X25519MLKEM768 and X25519",
            ),
            P::NoSignatureSchemesInCommon
            | P::NoCertificateRequestSignatureSchemesInCommon
            | P::SignatureAlgorithmsExtensionRequired => Self::new(
                Hello,
                R::NoCommonSignatureScheme,
                "no signature scheme in common",
            ),
            other => Self::new(
                Hello,
                R::Incompatible,
                format!("the peer's TLS is incompatible with hush's: {other:?}"),
            ),
        }
    }

    fn from_alert(alert: AlertDescription) -> Self {
        use AlertDescription as A;
        use HandshakeStep::{CertificateChain, Hello, Validity};
        let name = format!("{alert:?}");
        match alert {
            A::CertificateExpired => Self::new(
                Validity,
                R::RefusedByPeer,
                format!(
                    "the peer refused this side's certificate as expired (alert {name}); \
                     has this side's certificate been renewed?"
                ),
            ),
            A::CertificateRequired => Self::new(
                CertificateChain,
                R::RefusedByPeer,
                format!(
                    "the peer requires a certificate and this side presented none (alert {name})"
                ),
            ),
            A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied => Self::new(
                CertificateChain,
                R::RefusedByPeer,
                format!(
                    "the peer refused this side's certificate (alert {name}); its log says why"
                ),
            ),
            _ => Self::new(
                Hello,
                R::RefusedByPeer,
                format!("the peer ended the handshake (alert {name})"),
            ),
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.step, self.message)
    }
}

/// A TLS failure in plain words, naming the handshake step that failed.
pub fn explain_tls_error(error: &rustls::Error) -> String {
    HandshakeFailure::from_tls(error).to_string()
}

/// Like [`explain_tls_error`], for the I/O errors tokio-rustls returns.
pub fn explain_io_error(error: &std::io::Error) -> String {
    HandshakeFailure::from_io(error).to_string()
}

fn rfc3339(t: UnixTime) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(t.as_secs());
    humantime::format_rfc3339_seconds(at).to_string()
}

fn elapsed(from: UnixTime, to: UnixTime) -> String {
    let seconds = to.as_secs().saturating_sub(from.as_secs());
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use hush_identity::SpiffeId;

    fn identity_error(error: PeerIdentityError) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
    }

    #[test]
    fn each_failure_names_its_step_and_reason() {
        let backend: SpiffeId = "spiffe://example.org/backend".parse().unwrap();
        let impostor: SpiffeId = "spiffe://example.org/impostor".parse().unwrap();
        let cases: Vec<(rustls::Error, HandshakeStep, &str, &str)> = vec![
            (
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                HandshakeStep::Hello,
                "not_tls",
                "did not speak TLS",
            ),
            (
                rustls::Error::PeerIncompatible(
                    PeerIncompatible::SupportedVersionsExtensionRequired,
                ),
                HandshakeStep::Hello,
                "tls_version",
                "TLS 1.3 only",
            ),
            (
                rustls::Error::PeerIncompatible(PeerIncompatible::NoKxGroupsInCommon),
                HandshakeStep::Hello,
                "no_common_group",
                "X25519MLKEM768",
            ),
            (
                rustls::Error::NoCertificatesPresented,
                HandshakeStep::CertificateChain,
                "no_certificate",
                "presented no certificate",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                HandshakeStep::CertificateChain,
                "unknown_issuer",
                // Both causes, since the error cannot tell them apart.
                "issued by another CA, or sent without the intermediate that issued it",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                    time: UnixTime::since_unix_epoch(Duration::from_secs(1_800_003_600)),
                    not_after: UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000)),
                }),
                HandshakeStep::Validity,
                "expired",
                "expired at 2027-01-15T08:00:00Z (1h ago)",
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidYet),
                HandshakeStep::Validity,
                "not_yet_valid",
                "not valid yet",
            ),
            (
                identity_error(PeerIdentityError::UnexpectedIdentity {
                    expected: vec![backend.clone()],
                    presented: impostor,
                }),
                HandshakeStep::SpiffeId,
                "unexpected_identity",
                "expected spiffe://example.org/backend, but the peer presented \
                 spiffe://example.org/impostor",
            ),
            (
                identity_error(PeerIdentityError::ForeignTrustDomain {
                    id: "spiffe://evil.org/x".parse().unwrap(),
                    expected: backend.trust_domain().clone(),
                }),
                HandshakeStep::SpiffeId,
                "foreign_trust_domain",
                "not in trust domain example.org",
            ),
            (
                identity_error(PeerIdentityError::Revoked(hush_identity::Denial::Serial {
                    serial: "47b0".to_owned(),
                })),
                HandshakeStep::CertificateChain,
                "revoked",
                "refused by this mesh's deny-list: serial 47b0 is revoked",
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                HandshakeStep::CertificateChain,
                "refused_by_peer",
                "the peer refused this side's certificate",
            ),
        ];
        for (error, step, reason, words) in cases {
            let failure = HandshakeFailure::from_tls(&error);
            assert_eq!(failure.step, step, "{error:?}");
            assert_eq!(failure.reason.as_str(), reason, "{error:?}");
            let text = failure.to_string();
            assert!(text.starts_with(&format!("{step} failed: ")), "{text}");
            assert!(text.contains(words), "{text}");
        }
    }

    #[test]
    fn reason_labels_are_distinct_metric_labels() {
        let mut seen = std::collections::HashSet::new();
        for reason in FailureReason::ALL {
            let label = reason.as_str();
            assert!(seen.insert(label), "{label} twice");
            assert!(
                !label.is_empty() && label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
        }
    }

    #[test]
    fn io_errors_wrap_tls_errors_or_name_the_connection() {
        let wrapped = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        assert_eq!(
            HandshakeFailure::from_io(&wrapped).reason,
            FailureReason::NoCertificate
        );
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        let failure = HandshakeFailure::from_io(&eof);
        assert_eq!(
            (failure.step, failure.reason),
            (HandshakeStep::Connection, FailureReason::Closed)
        );
        let slow = HandshakeFailure::timed_out(Duration::from_secs(10));
        assert_eq!(
            slow.to_string(),
            "connection failed: the peer did not finish the TLS handshake within 10s"
        );
    }
}
