//! Peer verification for SPIFFE identities.
//!
//! rustls (through webpki) checks that a certificate chains to a trusted root, is valid now and
//! is meant for the right use; it knows nothing of SPIFFE IDs. These verifiers let webpki do that
//! work and then require an X.509-SVID of the expected trust domain, so a certificate from the
//! right CA that is not a workload identity (the CA's own server certificate, say) is refused too.

use std::fmt;
use std::sync::Arc;

use hush_identity::{SpiffeId, TrustBundle, TrustDomain, check_leaf_svid};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{TlsConfigError, TrustStore};

/// Why a peer's certificate is not an acceptable SPIFFE identity.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    /// The certificate chains to a trusted root but breaks the X.509-SVID rules.
    #[error("the peer's certificate is not an X.509-SVID: {0}")]
    NotAnSvid(hush_identity::SvidError),
    /// The peer is a valid workload, but not one this connection may talk to.
    #[error(
        "expected {}, but the peer presented {presented}",
        expected_list(expected)
    )]
    UnexpectedIdentity {
        /// The identities the connection accepts.
        expected: Vec<SpiffeId>,
        /// What the peer presented.
        presented: SpiffeId,
    },
    /// The SPIFFE ID belongs to another trust domain.
    #[error("the peer's SPIFFE ID {id} is not in trust domain {expected}")]
    ForeignTrustDomain {
        /// What the peer presented.
        id: SpiffeId,
        /// What was expected.
        expected: TrustDomain,
    },
}

/// The SPIFFE ID of a peer whose chain was already verified, checked against the X.509-SVID
/// rules and the trust domain.
pub fn peer_spiffe_id(
    end_entity: &CertificateDer<'_>,
    trust_domain: &TrustDomain,
) -> Result<SpiffeId, PeerIdentityError> {
    let id = check_leaf_svid(end_entity).map_err(PeerIdentityError::NotAnSvid)?;
    if !id.is_member_of(trust_domain) {
        return Err(PeerIdentityError::ForeignTrustDomain {
            id,
            expected: trust_domain.clone(),
        });
    }
    Ok(id)
}

fn expected_list(ids: &[SpiffeId]) -> String {
    match ids {
        [one] => one.to_string(),
        many => {
            let names: Vec<&str> = many.iter().map(SpiffeId::as_str).collect();
            format!("one of {}", names.join(", "))
        }
    }
}

/// Which server identities an outbound connection accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectedServer {
    /// Exactly these SPIFFE IDs (at least one): the usual case, where configuration names the
    /// workload behind an address.
    OneOf(Vec<SpiffeId>),
    /// Any workload of the trust domain: for destinations nothing names, such as transparently
    /// captured traffic. The peer still proves a workload identity of this mesh, and its own
    /// policy decides whether to serve the caller.
    AnyInTrustDomain,
}

/// Verifies a server's certificate as an X.509-SVID naming one of the expected SPIFFE IDs.
///
/// Workload certificates carry no DNS names, so the usual host-name check cannot apply: the
/// chain is verified with webpki for server authentication, then the SPIFFE ID stands in for
/// the name. The TLS server name the client sends is ignored.
pub struct SpiffeServerVerifier {
    trust: TrustStore,
    expected: ExpectedServer,
    /// Taken from the provider once, not per handshake.
    algorithms: WebPkiSupportedAlgorithms,
}

// === impl SpiffeServerVerifier ===

impl SpiffeServerVerifier {
    /// A verifier trusting `bundle` and accepting a server that proves any of `expected`.
    pub fn new(bundle: &TrustBundle, expected: Vec<SpiffeId>) -> Result<Arc<Self>, TlsConfigError> {
        Self::with_trust(
            &TrustStore::new(bundle.clone())?,
            ExpectedServer::OneOf(expected),
        )
    }

    /// A verifier that follows `trust` (so a refreshed bundle applies to the next handshake)
    /// and accepts the servers `expected` allows.
    pub fn with_trust(
        trust: &TrustStore,
        expected: ExpectedServer,
    ) -> Result<Arc<Self>, TlsConfigError> {
        if expected == ExpectedServer::OneOf(Vec::new()) {
            return Err(TlsConfigError::Verifier(
                "no SPIFFE ID to expect: a server must be pinned to at least one identity".into(),
            ));
        }
        Ok(Arc::new(Self {
            trust: trust.clone(),
            expected,
            algorithms: crate::provider().signature_verification_algorithms,
        }))
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("trust", &self.trust)
            .field("expected", &self.expected)
            .finish()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchors = self.trust.anchors();
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &anchors.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let presented =
            peer_spiffe_id(end_entity, anchors.bundle.trust_domain()).map_err(rejected)?;
        if let ExpectedServer::OneOf(expected) = &self.expected
            && !expected.contains(&presented)
        {
            return Err(rejected(PeerIdentityError::UnexpectedIdentity {
                expected: expected.clone(),
                presented,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A peer identity failure as the error rustls sends an alert for; [`crate::explain_tls_error`]
/// turns it back into words.
fn rejected(error: PeerIdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// Verifies client certificates as X.509-SVIDs of one trust domain.
pub struct SpiffeClientVerifier {
    trust: TrustStore,
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

// === impl SpiffeClientVerifier ===

impl SpiffeClientVerifier {
    /// A verifier trusting `bundle`. With `mandatory` false, clients without a certificate are
    /// let through (the application then decides what they may do).
    pub fn new(bundle: &TrustBundle, mandatory: bool) -> Result<Arc<Self>, TlsConfigError> {
        Ok(Self::with_trust(
            &TrustStore::new(bundle.clone())?,
            mandatory,
        ))
    }

    /// A verifier that follows `trust`, so a refreshed bundle applies to the next handshake.
    pub fn with_trust(trust: &TrustStore, mandatory: bool) -> Arc<Self> {
        Arc::new(Self {
            trust: trust.clone(),
            mandatory,
            algorithms: crate::provider().signature_verification_algorithms,
        })
    }
}

impl fmt::Debug for SpiffeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeClientVerifier")
            .field("trust", &self.trust)
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would have to outlive a bundle swap; they are optional in TLS 1.3, and
        // hush's clients present their one certificate whatever the hints say.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let anchors = self.trust.anchors();
        let webpki = if self.mandatory {
            &anchors.clients_required
        } else {
            &anchors.clients_optional
        };
        let verified = webpki.verify_client_cert(end_entity, intermediates, now)?;
        peer_spiffe_id(end_entity, anchors.bundle.trust_domain()).map_err(rejected)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CredentialStore, client_config, explain_io_error, server_config};
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };
    use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Ca {
        params: CertificateParams,
        key: KeyPair,
        root: CertificateDer<'static>,
    }

    fn ca(trust_domain: &str, name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}").try_into().unwrap(),
        )];
        let key = KeyPair::generate().unwrap();
        let root = params.self_signed(&key).unwrap().der().clone();
        Ca { params, key, root }
    }

    fn leaf(ca: &Ca, uri: Option<&str>) -> CredentialStore {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        }
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let store = CredentialStore::new();
        store
            .install(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        store
    }

    /// The server side of these tests only checks clients; its own certificate is taken on
    /// trust by this test-only verifier.
    #[derive(Debug)]
    struct AnyServer;

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            crate::provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// Runs a handshake plus one byte each way; returns the server's verdict.
    async fn handshake(
        trusted: &Ca,
        mandatory: bool,
        client: Option<CredentialStore>,
    ) -> Result<Option<SpiffeId>, String> {
        let bundle = TrustBundle::new(
            TrustDomain::new("example.org").unwrap(),
            vec![trusted.root.clone()],
        )
        .unwrap();
        let server_cert = leaf(trusted, Some("spiffe://example.org/server"));
        let server = server_config(
            Arc::new(server_cert),
            Some(SpiffeClientVerifier::new(&bundle, mandatory).unwrap()),
            &[],
        )
        .unwrap();
        let client = client_config(
            Arc::new(AnyServer),
            client.map(|c| Arc::new(c) as Arc<dyn rustls::client::ResolvesClientCert>),
            &[],
        )
        .unwrap();
        let (a, b) = tokio::io::duplex(16 * 1024);
        let server_side = tokio::spawn(async move {
            let mut tls = tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(a)
                .await
                .map_err(|e| explain_io_error(&e))?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            tls.write_all(b"y").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            let td = TrustDomain::new("example.org").unwrap();
            Ok::<_, String>(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|leaf| peer_spiffe_id(leaf, &td).unwrap()),
            )
        });
        let client_side = async move {
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(ServerName::try_from("example.org").unwrap(), b)
                .await?;
            tls.write_all(b"x").await?;
            tls.flush().await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            Ok::<_, std::io::Error>(())
        };
        let _ = client_side.await;
        server_side.await.unwrap()
    }

    #[tokio::test]
    async fn accepts_an_svid_of_the_trust_domain() {
        let trusted = ca("example.org", "trusted CA");
        let client = leaf(&trusted, Some("spiffe://example.org/ns/a/sa/b"));
        let id = handshake(&trusted, true, Some(client)).await.unwrap();
        assert_eq!(id.unwrap().as_str(), "spiffe://example.org/ns/a/sa/b");
    }

    #[tokio::test]
    async fn refuses_a_certificate_without_a_spiffe_id() {
        let trusted = ca("example.org", "trusted CA");
        let client = leaf(&trusted, None);
        let err = handshake(&trusted, true, Some(client)).await.unwrap_err();
        assert!(err.contains("not an X.509-SVID"), "{err}");
    }

    #[tokio::test]
    async fn refuses_another_trust_domain_and_another_ca() {
        let trusted = ca("example.org", "trusted CA");
        let foreign_id = leaf(&trusted, Some("spiffe://evil.org/ns/a/sa/b"));
        let err = handshake(&trusted, true, Some(foreign_id))
            .await
            .unwrap_err();
        assert!(err.contains("not in trust domain example.org"), "{err}");

        let other = ca("example.org", "someone else's CA");
        let foreign_ca = leaf(&other, Some("spiffe://example.org/ns/a/sa/b"));
        let err = handshake(&trusted, true, Some(foreign_ca))
            .await
            .unwrap_err();
        assert!(err.contains("unknown issuer"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_certificate_is_allowed_only_when_optional() {
        let trusted = ca("example.org", "trusted CA");
        assert_eq!(handshake(&trusted, false, None).await.unwrap(), None);
        let err = handshake(&trusted, true, None).await.unwrap_err();
        assert!(err.to_lowercase().contains("certificate"), "{err}");
    }

    /// A client pinned to `expected` dials a server presenting `server`; returns the client's
    /// verdict in words.
    async fn dial(trusted: &Ca, expected: &[&str], server: CredentialStore) -> Result<(), String> {
        let bundle = TrustBundle::new(
            TrustDomain::new("example.org").unwrap(),
            vec![trusted.root.clone()],
        )
        .unwrap();
        let expected = expected.iter().map(|id| id.parse().unwrap()).collect();
        let client = client_config(
            SpiffeServerVerifier::new(&bundle, expected).unwrap(),
            None,
            &[],
        )
        .unwrap();
        let server = server_config(Arc::new(server), None, &[]).unwrap();
        let (a, b) = tokio::io::duplex(16 * 1024);
        tokio::spawn(async move {
            if let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(a)
                .await
            {
                let _ = tls.write_all(b"y").await;
                let _ = tls.flush().await;
            }
        });
        // The name is irrelevant: the SPIFFE ID is what is checked.
        let name = ServerName::try_from("ignored.invalid").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, b)
            .await
            .map_err(|e| explain_io_error(&e))?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    #[tokio::test]
    async fn a_client_accepts_only_the_identities_it_expects() {
        let trusted = ca("example.org", "trusted CA");
        let backend = "spiffe://example.org/ns/shop/sa/backend";
        dial(&trusted, &[backend], leaf(&trusted, Some(backend)))
            .await
            .unwrap();
        dial(
            &trusted,
            &["spiffe://example.org/other", backend],
            leaf(&trusted, Some(backend)),
        )
        .await
        .unwrap();

        let err = dial(
            &trusted,
            &[backend],
            leaf(&trusted, Some("spiffe://example.org/ns/shop/sa/impostor")),
        )
        .await
        .unwrap_err();
        assert!(
            err.contains(&format!(
                "expected {backend}, but the peer presented spiffe://example.org/ns/shop/sa/impostor"
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_client_refuses_a_foreign_ca_and_a_non_svid() {
        let trusted = ca("example.org", "trusted CA");
        let other = ca("example.org", "someone else's CA");
        let backend = "spiffe://example.org/ns/shop/sa/backend";
        let err = dial(&trusted, &[backend], leaf(&other, Some(backend)))
            .await
            .unwrap_err();
        assert!(err.contains("unknown issuer"), "{err}");
        let err = dial(&trusted, &[backend], leaf(&trusted, None))
            .await
            .unwrap_err();
        assert!(err.contains("not an X.509-SVID"), "{err}");
    }

    /// One server configuration, built once; only the trust store behind it changes.
    #[tokio::test]
    async fn a_replaced_bundle_applies_to_the_next_handshake() {
        let td = TrustDomain::new("example.org").unwrap();
        let old = ca("example.org", "old CA");
        let new = ca("example.org", "new CA");
        let trust =
            crate::TrustStore::new(TrustBundle::new(td.clone(), vec![old.root.clone()]).unwrap())
                .unwrap();
        let server = Arc::new(
            server_config(
                Arc::new(leaf(&old, Some("spiffe://example.org/server"))),
                Some(SpiffeClientVerifier::with_trust(&trust, true)),
                &[],
            )
            .unwrap(),
        );
        let identity = leaf(&new, Some("spiffe://example.org/client"));
        let attempt = |server: Arc<rustls::ServerConfig>, identity: CredentialStore| async move {
            let client = client_config(
                Arc::new(AnyServer),
                Some(Arc::new(identity) as Arc<dyn rustls::client::ResolvesClientCert>),
                &[],
            )
            .unwrap();
            let (a, b) = tokio::io::duplex(16 * 1024);
            let accepted = tokio::spawn(async move {
                tokio_rustls::TlsAcceptor::from(server)
                    .accept(a)
                    .await
                    .map(|_| ())
                    .map_err(|e| explain_io_error(&e))
            });
            let name = ServerName::try_from("example.org").unwrap();
            let _ = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, b)
                .await;
            accepted.await.unwrap()
        };
        let refused = attempt(server.clone(), identity.clone()).await.unwrap_err();
        assert!(refused.contains("unknown issuer"), "{refused}");
        trust
            .replace(TrustBundle::new(td, vec![old.root.clone(), new.root.clone()]).unwrap())
            .unwrap();
        attempt(server, identity)
            .await
            .expect("the new root is trusted at once");
    }

    #[test]
    fn a_server_verifier_needs_an_identity_to_expect() {
        let trusted = ca("example.org", "trusted CA");
        let bundle = TrustBundle::new(
            TrustDomain::new("example.org").unwrap(),
            vec![trusted.root.clone()],
        )
        .unwrap();
        let err = SpiffeServerVerifier::new(&bundle, vec![]).unwrap_err();
        assert!(err.to_string().contains("at least one identity"), "{err}");
    }
}
