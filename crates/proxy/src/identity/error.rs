//! Why one attempt to obtain or renew the workload certificate failed.
//!
//! The words are the sidecar's: they are logged (`cannot renew the workload certificate; …:
//! {error}`), shown on `/ready` and `/certs`, read by `hush check`, and looked for by the
//! end-to-end tests and the troubleshooting guide, so a variant's `Display` must not change
//! without them.

use std::path::PathBuf;

use hush_ca_client::ClientError;
use hush_identity::SvidError;
use hush_tls::{CredentialError, HandshakeFailure, TlsConfigError};

use super::certifier::CaError;

/// Why one attempt to get a certificate failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    /// No key pair could be made.
    #[error("cannot make a key pair: {0}")]
    KeyPair(#[source] rcgen::Error),
    /// No CSR could be made for the key.
    #[error("cannot make a CSR: {0}")]
    Csr(#[source] rcgen::Error),
    /// The token file could not be read.
    #[error("cannot read the token file {}: {source}", path.display())]
    TokenUnreadable {
        /// The configured `ca.token_file`.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token file holds nothing but white space.
    #[error("the token file {} is empty", path.display())]
    TokenEmpty {
        /// The configured `ca.token_file`.
        path: PathBuf,
    },
    /// The client for the CA could not be set up (a bad address, unusable roots).
    #[error(transparent)]
    Client(ClientError),
    /// The CA could not be reached for a renewal. The token was not tried: it would not get
    /// through either.
    #[error("renewal failed: {0}")]
    RenewalUnavailable(#[source] CaError),
    /// Attestation with the token failed: the CA refused it, or could not be reached.
    #[error("attestation with the token failed: {0}")]
    Token(#[source] CaError),
    /// The CA refused the renewal with the current certificate, and the token did not work
    /// either. Both causes are kept, the renewal's as the source.
    #[error("renewal with the current certificate failed: {renewal}; then {token}")]
    RenewalThenToken {
        /// Why the renewal failed.
        #[source]
        renewal: CaError,
        /// Why the token did not work (unreadable, refused, …).
        token: Box<AttemptError>,
    },
    /// The CA answered with no certificate.
    #[error("the CA sent an empty certificate chain")]
    EmptyChain,
    /// The verifier for what the CA sent could not be built.
    #[error(transparent)]
    Verifier(TlsConfigError),
    /// The name the verifier is given could not be made (it is a constant; this cannot happen).
    #[error("internal: {0}")]
    ServerName(#[source] rustls_pki_types::InvalidDnsNameError),
    /// The certificate names another workload than the one this sidecar is: the identity never
    /// changes while the sidecar runs.
    #[error("the certificate the CA sent does not check out: {}", failure.message)]
    WrongIdentity {
        /// The verifier's words (`failure.reason` is `UnexpectedIdentity`).
        failure: HandshakeFailure,
        /// What the verifier said.
        source: hush_tls::rustls::Error,
    },
    /// The certificate does not chain to the trust bundle, is not valid now, or is not an
    /// X.509-SVID of the trust domain.
    #[error("the certificate the CA sent does not check out: {}", failure.message)]
    Rejected {
        /// The step that failed and why.
        failure: HandshakeFailure,
        /// What the verifier said.
        source: hush_tls::rustls::Error,
    },
    /// The certificate could not be parsed.
    #[error("the CA's certificate cannot be read: {0}")]
    Unreadable(#[source] SvidError),
    /// The certificate carries no SPIFFE ID.
    #[error("the CA's certificate has no SPIFFE ID")]
    NoSpiffeId,
    /// The certificate cannot be presented with the key made for it.
    #[error("the CA's certificate cannot be used: {0}")]
    Unusable(#[source] CredentialError),
}

// === impl AttemptError ===

impl AttemptError {
    /// What the verifier refused, sorted into a wrong identity or any other failure.
    pub(crate) fn rejected(source: hush_tls::rustls::Error) -> Self {
        let failure = HandshakeFailure::from_tls(&source);
        if failure.reason == hush_tls::FailureReason::UnexpectedIdentity {
            Self::WrongIdentity { failure, source }
        } else {
            Self::Rejected { failure, source }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn both_causes_of_a_failed_fallback_are_kept() {
        let error = AttemptError::RenewalThenToken {
            renewal: CaError::Status {
                code: tonic::Code::PermissionDenied,
                message: "the certificate is revoked".into(),
            },
            token: Box::new(AttemptError::TokenEmpty {
                path: "/var/run/hush/token".into(),
            }),
        };
        assert_eq!(
            error.to_string(),
            "renewal with the current certificate failed: PermissionDenied: the certificate is \
             revoked; then the token file /var/run/hush/token is empty"
        );
        let source = error.source().expect("the renewal's failure is the source");
        assert_eq!(
            source.to_string(),
            "PermissionDenied: the certificate is revoked"
        );
        let AttemptError::RenewalThenToken { token, .. } = &error else {
            unreachable!()
        };
        assert!(matches!(**token, AttemptError::TokenEmpty { .. }));
    }

    #[test]
    fn an_unreadable_token_file_keeps_the_io_error() {
        let error = AttemptError::TokenUnreadable {
            path: "/nope".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(
            error
                .to_string()
                .starts_with("cannot read the token file /nope: ")
        );
        assert!(error.source().unwrap().is::<std::io::Error>());
    }
}
