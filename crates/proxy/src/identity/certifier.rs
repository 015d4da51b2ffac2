//! The CA as the identity manager sees it: three calls, and why one failed.
//!
//! [`Certifier`] is what the manager needs of the CA, so that its timing and fallbacks (renew at
//! half-life, fall back to the token, back off, refresh the bundle) can be tested against a fake
//! CA in paused time. [`CaCertifier`] is the real one: the gRPC API through
//! [`hush_ca_client::CaClient`], each call bounded by [`CA_CALL_TIMEOUT`].

use std::collections::BTreeSet;
use std::time::Duration;

use hush_ca_client::{CaClient, ClientError};
use hush_identity::{DenyList, JwtKeys};
use hush_tls::{CredentialStore, TrustStore};
use rustls_pki_types::CertificateDer;

use crate::config::CaConfig;

/// The longest a single call to the CA may take.
const CA_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The calls the identity manager makes to the CA.
///
/// The futures are `Send` because the manager runs in a spawned task. The manager is generic
/// over this trait rather than holding a `dyn Certifier`: the sidecar links one implementation,
/// so nothing is gained by dynamic dispatch, and it would cost a boxed future per call.
pub(crate) trait Certifier: Send + Sync + 'static {
    /// A certificate for the key of `csr` (DER), proving identity with the certificate the
    /// sidecar holds now (mutual TLS). The CA issues it for the same SPIFFE ID.
    fn renew(&self, csr: Vec<u8>) -> impl Future<Output = Result<Issued, CaError>> + Send;

    /// A certificate for the key of `csr` (DER), proving identity with `token` (a join token or
    /// a service-account token).
    fn certify(
        &self,
        token: &str,
        csr: Vec<u8>,
    ) -> impl Future<Output = Result<Issued, CaError>> + Send;

    /// The CA's trust bundle: its roots, and what it says of its authorities.
    fn trust_bundle(&self) -> impl Future<Output = Result<BundleUpdate, CaError>> + Send;
}

/// What the CA's `GetTrustBundle` says. A CA older than authorities sends only the roots: the
/// rest is then empty, generation 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BundleUpdate {
    /// The roots to trust.
    pub(crate) roots: Vec<CertificateDer<'static>>,
    /// The CA's authorities generation; replicas can lag, so an older one is ignored.
    pub(crate) generation: u64,
    /// IDs of tainted authorities: a certificate issued under one is renewed now.
    pub(crate) tainted: BTreeSet<String>,
    /// Renewals forced by a taint wait a random time up to this first.
    pub(crate) renew_spread: Duration,
    /// The certificates the CA has revoked; `None` when it said nothing of them (a CA older
    /// than revocations, or a list that could not be read, which is logged).
    pub(crate) deny: Option<DenyList>,
    /// The generation of the CA's revocations; replicas can lag, so an older one is ignored.
    pub(crate) deny_generation: u64,
    /// The trust domain's JWT-SVID keys; `None` when the CA sent none (a CA older than
    /// JWT-SVIDs, or keys that could not be read, which is logged).
    pub(crate) jwt_keys: Option<JwtKeys>,
    /// The trust domains the CA federates with; `None` when what it sent cannot be read (which
    /// is logged, and the federated domains in force stay).
    pub(crate) federated: Option<Vec<FederatedDomain>>,
}

/// A trust domain the CA federates with, as it sent it (its roots checked as the mesh's own
/// are).
#[derive(Clone, Debug)]
pub(crate) struct FederatedDomain(pub(crate) hush_ca_client::FederatedBundle);

impl PartialEq for FederatedDomain {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        a.trust_domain == b.trust_domain
            && a.roots.roots() == b.roots.roots()
            && a.jwt_keys == b.jwt_keys
    }
}

impl Eq for FederatedDomain {}

/// A JWT-SVID as the CA minted it.
#[derive(Clone)]
pub(crate) struct MintedJwt {
    /// The compact JWS: a bearer credential, never logged.
    pub(crate) token: String,
    /// Its subject, as the CA says.
    pub(crate) spiffe_id: String,
    /// Its `iat` and `exp`, Unix seconds.
    pub(crate) issued_at: i64,
    pub(crate) expires_at: i64,
}

impl std::fmt::Debug for MintedJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("MintedJwt")
            .field("spiffe_id", &self.spiffe_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What the CA sent for a certificate request. Nothing here is checked yet.
#[derive(Clone, Debug, Default)]
pub(crate) struct Issued {
    /// Leaf first, then intermediates.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The CA's roots, sent with every certificate (empty when it sent none).
    pub(crate) bundle: Vec<CertificateDer<'static>>,
}

/// Why a call to the CA failed.
///
/// The words are those of the sidecar's log lines and of `/ready`: a CA that cannot be reached
/// is said plainly (with the TLS step that failed, if it was TLS) instead of tonic's transport
/// message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaError {
    /// No request was sent: the client could not be set up (a bad address, unusable roots).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// No connection to the CA, or one that broke.
    #[error("cannot reach the CA at {address}: {source}")]
    Unreachable {
        /// The gRPC code the call ended with.
        code: tonic::Code,
        /// The CA's address, as configured.
        address: String,
        /// What the connection said.
        source: std::io::Error,
    },
    /// The TLS handshake with the CA failed.
    #[error(
        "TLS with the CA at {address}: {}",
        hush_tls::explain_tls_error(source)
    )]
    Tls {
        /// The gRPC code the call ended with.
        code: tonic::Code,
        /// The CA's address, as configured.
        address: String,
        /// What rustls said.
        source: hush_tls::rustls::Error,
    },
    /// The CA answered with an error (it refused, say), or the call ended without an answer
    /// (a timeout is `DeadlineExceeded`).
    #[error("{code:?}: {message}")]
    Status {
        /// The gRPC code.
        code: tonic::Code,
        /// The CA's words.
        message: String,
    },
}

// === impl CaError ===

impl CaError {
    /// The failure of a call to the CA at `address`, in the words above.
    pub(crate) fn from_status(address: &str, status: &tonic::Status) -> Self {
        use std::error::Error;
        let code = status.code();
        let mut source = status.source();
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                let address = address.to_string();
                return match io
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<hush_tls::rustls::Error>())
                {
                    Some(tls) => Self::Tls {
                        code,
                        address,
                        source: tls.clone(),
                    },
                    // io::Error is not Clone; one made of its kind and words prints the same.
                    None => Self::Unreachable {
                        code,
                        address,
                        source: std::io::Error::new(io.kind(), io.to_string()),
                    },
                };
            }
            source = cause.source();
        }
        Self::Status {
            code,
            message: status.message().to_string(),
        }
    }

    /// The gRPC code the call ended with; `None` when no request was sent.
    pub(crate) fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Client(_) => None,
            Self::Unreachable { code, .. } | Self::Tls { code, .. } | Self::Status { code, .. } => {
                Some(*code)
            }
        }
    }

    /// Whether the CA is down (or out of reach): then a token would not get through either.
    /// Not when the CA ended the handshake because it refused the certificate presented: a
    /// token would get through then.
    pub(crate) fn is_unavailable(&self) -> bool {
        self.code() == Some(tonic::Code::Unavailable) && !self.refused_our_certificate()
    }

    /// Whether the CA ended the TLS handshake refusing the client certificate presented (its
    /// root was revoked, say): renewal with it cannot work, but a token can.
    pub(crate) fn refused_our_certificate(&self) -> bool {
        use hush_tls::rustls::{AlertDescription, Error};
        matches!(
            self,
            Self::Tls {
                source: Error::AlertReceived(
                    AlertDescription::BadCertificate
                        | AlertDescription::UnknownCA
                        | AlertDescription::CertificateUnknown
                        | AlertDescription::CertificateRevoked
                        | AlertDescription::CertificateExpired
                        | AlertDescription::UnsupportedCertificate
                ),
                ..
            }
        )
    }
}

/// The hush CA, over its gRPC API.
///
/// Every call opens a fresh channel: a renewal must present the certificate installed now
/// (the TLS handshake reads the [`CredentialStore`] once), and the CA must be verified with the
/// roots trusted now.
pub(crate) struct CaCertifier {
    address: String,
    ttl: Option<Duration>,
    trust: TrustStore,
    credentials: CredentialStore,
}

// === impl CaCertifier ===

impl CaCertifier {
    /// The CA of `ca`, verified with `trust`; renewals present what `credentials` holds.
    pub(crate) fn new(ca: &CaConfig, trust: TrustStore, credentials: CredentialStore) -> Self {
        Self {
            address: ca.address.clone(),
            ttl: ca.certificate_ttl,
            trust,
            credentials,
        }
    }

    /// A JWT-SVID for the sidecar's identity and `audience`, asked for over mutual TLS with
    /// the certificate it holds now (the CA signs for that certificate's SPIFFE ID).
    pub(crate) async fn mint_jwt_svid(&self, audience: Vec<String>) -> Result<MintedJwt, CaError> {
        let client =
            CaClient::with_identity(&self.address, &self.roots(), self.credentials.clone())?;
        let response = call(client.mint_jwt_svid(audience, None))
            .await
            .map_err(|status| self.failed(&status))?;
        Ok(MintedJwt {
            token: response.token,
            spiffe_id: response.spiffe_id,
            issued_at: response.issued_at_unix,
            expires_at: response.expires_at_unix,
        })
    }

    fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.trust.bundle().roots().to_vec()
    }

    fn failed(&self, status: &tonic::Status) -> CaError {
        CaError::from_status(&self.address, status)
    }
}

impl Certifier for CaCertifier {
    async fn renew(&self, csr: Vec<u8>) -> Result<Issued, CaError> {
        let client =
            CaClient::with_identity(&self.address, &self.roots(), self.credentials.clone())?;
        let response = call(client.renew(csr, self.ttl))
            .await
            .map_err(|status| self.failed(&status))?;
        Ok(issued(response))
    }

    async fn certify(&self, token: &str, csr: Vec<u8>) -> Result<Issued, CaError> {
        let client = CaClient::new(&self.address, &self.roots())?;
        let response = call(client.certify(token, csr, self.ttl))
            .await
            .map_err(|status| self.failed(&status))?;
        Ok(issued(response))
    }

    async fn trust_bundle(&self) -> Result<BundleUpdate, CaError> {
        let client = CaClient::new(&self.address, &self.roots())?;
        let response = call(client.trust_bundle())
            .await
            .map_err(|status| self.failed(&status))?;
        let jwt_keys = hush_ca_client::trust_bundle_jwt_keys(&response).unwrap_or_else(|error| {
            tracing::warn!(%error, "the CA sent JWT keys that cannot be read; keeping the current ones");
            None
        });
        // Read before the response is taken apart below.
        let federated = hush_ca_client::federated_bundles(&response)
            .map(|bundles| bundles.into_iter().map(FederatedDomain).collect())
            .map_err(|error| {
                tracing::warn!(%error, "the CA sent federated bundles that cannot be read; keeping the current ones");
            })
            .ok();
        let deny = response.deny.map(deny_list).transpose().unwrap_or_else(|error| {
            tracing::warn!(%error, "the CA sent a deny-list that cannot be read; keeping the current one");
            None
        });
        Ok(BundleUpdate {
            jwt_keys,
            roots: certificates(response.roots),
            generation: response.generation,
            tainted: response.tainted_authorities.into_iter().collect(),
            renew_spread: Duration::from_secs(
                u64::try_from(response.renew_spread_seconds).unwrap_or_default(),
            ),
            deny,
            deny_generation: response.deny_generation,
            federated,
        })
    }
}

/// The deny-list as the CA sent it, every entry checked as the list checks its own: one the
/// sidecar cannot read refuses the whole list, rather than applying half of it.
fn deny_list(sent: hush_ca_client::proto::DenyList) -> Result<DenyList, String> {
    let mut deny = DenyList::new();
    for serial in &sent.serials {
        deny.deny_serial_hex(serial).map_err(|e| e.to_string())?;
    }
    for denied in sent.spiffe_ids {
        let id = denied
            .spiffe_id
            .parse()
            .map_err(|e| format!("{:?}: {e}", denied.spiffe_id))?;
        deny.deny_spiffe_id(id, denied.issued_before_unix);
    }
    for token_id in &sent.token_ids {
        deny.deny_token_id(token_id).map_err(|e| e.to_string())?;
    }
    for id in &sent.authorities {
        deny.deny_authority(id).map_err(|e| e.to_string())?;
    }
    Ok(deny)
}

fn issued(response: hush_ca_client::proto::CertifyResponse) -> Issued {
    Issued {
        chain: certificates(response.cert_chain),
        bundle: certificates(response.trust_bundle),
    }
}

fn certificates(ders: Vec<Vec<u8>>) -> Vec<CertificateDer<'static>> {
    ders.into_iter().map(CertificateDer::from).collect()
}

/// Bounds a call to the CA: a CA that accepts the connection and never answers must not hold up
/// renewals (each attempt would otherwise wait as long as the connection lives).
async fn call<T>(
    request: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(CA_CALL_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "the CA did not answer within {}",
                humantime::format_duration(CA_CALL_TIMEOUT)
            )))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_worded_as_before() {
        let refused = CaError::from_status(
            "https://ca.test:8443",
            &tonic::Status::permission_denied("the certificate is revoked"),
        );
        assert_eq!(
            refused.to_string(),
            "PermissionDenied: the certificate is revoked"
        );
        assert_eq!(refused.code(), Some(tonic::Code::PermissionDenied));
        assert!(!refused.is_unavailable());

        let mut down = tonic::Status::unavailable("tcp connect error");
        down.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let down = CaError::from_status("https://ca.test:8443", &down);
        assert_eq!(
            down.to_string(),
            format!(
                "cannot reach the CA at https://ca.test:8443: {}",
                std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
            )
        );
        assert!(down.is_unavailable());
        assert!(std::error::Error::source(&down).is_some());

        let mut tls = tonic::Status::unavailable("tls handshake eof");
        let alert = hush_tls::rustls::Error::AlertReceived(
            hush_tls::rustls::AlertDescription::HandshakeFailure,
        );
        tls.set_source(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            alert.clone(),
        )));
        let tls = CaError::from_status("https://ca.test:8443", &tls);
        assert_eq!(
            tls.to_string(),
            format!(
                "TLS with the CA at https://ca.test:8443: {}",
                hush_tls::explain_tls_error(&alert)
            )
        );
        assert!(tls.is_unavailable());

        // The CA refusing the certificate presented is not "the CA is down": a token may work.
        let mut refused = tonic::Status::unavailable("tls handshake eof");
        let alert = hush_tls::rustls::Error::AlertReceived(
            hush_tls::rustls::AlertDescription::BadCertificate,
        );
        refused.set_source(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            alert,
        )));
        let refused = CaError::from_status("https://ca.test:8443", &refused);
        assert!(refused.refused_our_certificate());
        assert!(!refused.is_unavailable());
    }

    #[test]
    fn a_deny_list_is_read_whole_or_not_at_all() {
        use hush_ca_client::proto;
        let sent = proto::DenyList {
            serials: vec!["47:B0".into()],
            spiffe_ids: vec![proto::DeniedId {
                spiffe_id: "spiffe://test.example/ns/shop/sa/frontend".into(),
                issued_before_unix: 1_900_000_000,
            }],
            token_ids: vec!["0123456789abcdef".into()],
            authorities: vec!["00112233445566ff".into()],
        };
        let deny = deny_list(sent.clone()).unwrap();
        assert_eq!(deny.len(), 4);
        assert_eq!(deny.authorities().collect::<Vec<_>>(), ["00112233445566ff"]);
        assert_eq!(deny.serials().collect::<Vec<_>>(), ["47b0"]);

        let bad_id = proto::DenyList {
            spiffe_ids: vec![proto::DeniedId {
                spiffe_id: "https://not.spiffe".into(),
                issued_before_unix: 1,
            }],
            ..sent.clone()
        };
        assert!(deny_list(bad_id).is_err());
        let bad_serial = proto::DenyList {
            serials: vec!["xyz".into()],
            ..sent.clone()
        };
        assert!(deny_list(bad_serial).is_err());
        let bad_authority = proto::DenyList {
            authorities: vec!["not an id".into()],
            ..sent
        };
        assert!(deny_list(bad_authority).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_ca_is_given_up_on() {
        let silent = call(std::future::pending::<Result<(), tonic::Status>>());
        let status = silent.await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            CaError::from_status("https://ca.test:8443", &status).to_string(),
            "DeadlineExceeded: the CA did not answer within 30s"
        );
    }
}
