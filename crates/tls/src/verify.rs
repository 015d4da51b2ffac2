//! Peer verification for SPIFFE identities.
//!
//! rustls (through webpki) checks that a certificate chains to a trusted root, is valid now and
//! is meant for the right use; it knows nothing of SPIFFE IDs. These verifiers let webpki do that
//! work, refuse a certificate the CA has revoked (the trust store's deny-list), and then require
//! an X.509-SVID of the expected trust domain, so a certificate from the right CA that is not a
//! workload identity (the CA's own server certificate, say) is refused too.

use std::fmt;
use std::sync::Arc;

use hush_identity::{Denial, SpiffeId, TrustBundle, TrustDomain, check_leaf_svid};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::trust::{Anchors, DomainAnchors};
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
    /// The certificate chains to a trusted root, but the mesh's CA has revoked it (`hush ca
    /// revoke-identity`): the trust store's deny-list names it.
    #[error("the peer's certificate is refused by this mesh's deny-list: {0}")]
    Revoked(Denial),
}

/// The SPIFFE ID of a peer whose chain was already verified, checked against the X.509-SVID
/// rules and the trust domain.
pub fn peer_spiffe_id(
    end_entity: &CertificateDer<'_>,
    trust_domain: &TrustDomain,
) -> Result<SpiffeId, PeerIdentityError> {
    let id = check_leaf_svid(end_entity).map_err(PeerIdentityError::NotAnSvid)?;
    member_of(id, trust_domain)
}

/// `id`, if it is of `trust_domain`.
fn member_of(id: SpiffeId, trust_domain: &TrustDomain) -> Result<SpiffeId, PeerIdentityError> {
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
        let presented = match route(&anchors, end_entity) {
            Route::Federated(domain, presented) => {
                verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &domain.roots,
                    intermediates,
                    now,
                    self.algorithms.all,
                )?;
                // Only a destination that names it may be a peer of another trust domain:
                // "any workload of the trust domain" means this mesh's.
                if self.expected == ExpectedServer::AnyInTrustDomain {
                    return Err(rejected(PeerIdentityError::ForeignTrustDomain {
                        id: presented,
                        expected: anchors.bundle.trust_domain().clone(),
                    }));
                }
                presented
            }
            Route::Own(read) => {
                verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &anchors.roots,
                    intermediates,
                    now,
                    self.algorithms.all,
                )?;
                refuse_denied(&anchors, end_entity, intermediates)?;
                own_peer(&anchors, end_entity, read)?
            }
        };
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

/// Whose roots verify a peer's certificate.
enum Route<'a> {
    /// Those of the federated trust domain its X.509-SVID names, and no others.
    Federated(&'a DomainAnchors, SpiffeId),
    /// The mesh's own, as before any federation: a certificate of a domain that is not
    /// federated fails there, as one of an unknown CA. Holds the SPIFFE ID when it was read
    /// already (only with federated domains in force), so it is not read twice.
    Own(Option<SpiffeId>),
}

/// Routes `end_entity` to the roots of the trust domain its SPIFFE ID names, when the mesh
/// federates with that domain.
///
/// The SPIFFE standard picks the bundle by the trust domain the SVID claims and verifies the
/// chain against that bundle alone, so a federated CA can never vouch for this mesh's own
/// identities, nor this mesh's CA for a federated domain's. The leaf is read before its chain is
/// verified only to choose the roots; nothing it says is believed until they verify it. Without
/// federated domains nothing is read here.
fn route<'a>(anchors: &'a Anchors, end_entity: &CertificateDer<'_>) -> Route<'a> {
    if anchors.federated.is_empty() {
        return Route::Own(None);
    }
    match check_leaf_svid(end_entity) {
        Ok(id) => match anchors.federated.get(id.trust_domain()) {
            Some(domain) => Route::Federated(domain, id),
            None => Route::Own(Some(id)),
        },
        Err(_) => Route::Own(None),
    }
}

/// The SPIFFE ID of a peer whose chain the mesh's own roots verified: `read` when the leaf was
/// read already, else read now (with the X.509-SVID rules' error when it is not one).
fn own_peer(
    anchors: &Anchors,
    end_entity: &CertificateDer<'_>,
    read: Option<SpiffeId>,
) -> Result<SpiffeId, rustls::Error> {
    let trust_domain = anchors.bundle.trust_domain();
    match read {
        Some(id) => member_of(id, trust_domain),
        None => peer_spiffe_id(end_entity, trust_domain),
    }
    .map_err(rejected)
}

/// Refuses a leaf the deny-list names. Called once webpki has verified the chain, so only
/// certificates of this mesh's CA are looked up, and with the same anchors, so the deny-list
/// is the one published with the roots that verified it.
fn refuse_denied(
    anchors: &Anchors,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), rustls::Error> {
    // Peers trust roots: a revoked intermediate under a root still trusted is refused here.
    let denial = anchors
        .deny
        .denies_issuers(intermediates)
        .or_else(|| anchors.deny.denies(end_entity));
    match denial {
        Some(denial) => Err(rejected(PeerIdentityError::Revoked(denial))),
        None => Ok(()),
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
        let read = match route(&anchors, end_entity) {
            Route::Federated(domain, _) => {
                // The policy decides what a peer of another trust domain may do; its chain must
                // end at that domain's roots.
                let webpki = if self.mandatory {
                    &domain.clients_required
                } else {
                    &domain.clients_optional
                };
                return webpki.verify_client_cert(end_entity, intermediates, now);
            }
            Route::Own(read) => read,
        };
        let webpki = if self.mandatory {
            &anchors.clients_required
        } else {
            &anchors.clients_optional
        };
        let verified = webpki.verify_client_cert(end_entity, intermediates, now)?;
        refuse_denied(&anchors, end_entity, intermediates)?;
        own_peer(&anchors, end_entity, read)?;
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
    use crate::{
        CredentialStore, FailureReason, HandshakeFailure, HandshakeStep, client_config,
        explain_io_error, server_config,
    };
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
        leaf_with(ca, uri, |_| {})
    }

    /// A leaf like [`leaf`], after `customize` has had its say on the parameters.
    fn leaf_with(
        ca: &Ca,
        uri: Option<&str>,
        customize: impl FnOnce(&mut CertificateParams),
    ) -> CredentialStore {
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
        customize(&mut params);
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

    // === the deny-list ===

    const CLIENT: &str = "spiffe://example.org/ns/shop/sa/frontend";
    const SERVER: &str = "spiffe://example.org/ns/shop/sa/backend";

    /// A leaf for `uri` with this serial, valid from 2025-01-01T00:00:00Z.
    fn serial_leaf(ca: &Ca, uri: &str, serial: &[u8]) -> CredentialStore {
        leaf_with(ca, Some(uri), |params| {
            params.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
            params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        })
    }

    /// 2025-01-01T00:00:00Z, when [`serial_leaf`]'s certificates become valid.
    const NOT_BEFORE: i64 = 1_735_689_600;

    fn der_of(store: &CredentialStore) -> CertificateDer<'static> {
        store.current().unwrap().cert[0].clone()
    }

    fn trust_in(ca: &Ca) -> TrustStore {
        let td = TrustDomain::new("example.org").unwrap();
        TrustStore::new(TrustBundle::new(td, vec![ca.root.clone()]).unwrap()).unwrap()
    }

    fn denying(build: impl FnOnce(&mut hush_identity::DenyList)) -> hush_identity::DenyList {
        let mut list = hush_identity::DenyList::new();
        build(&mut list);
        list
    }

    /// What a server verifying client certificates with `trust` says of `client`.
    fn client_verdict(
        trust: &TrustStore,
        client: &CredentialStore,
    ) -> Result<(), HandshakeFailure> {
        SpiffeClientVerifier::with_trust(trust, true)
            .verify_client_cert(&der_of(client), &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| HandshakeFailure::from_tls(&e))
    }

    /// What a client pinned to SERVER, verifying with `trust`, says of `server`.
    fn server_verdict(
        trust: &TrustStore,
        server: &CredentialStore,
    ) -> Result<(), HandshakeFailure> {
        let expected = ExpectedServer::OneOf(vec![SERVER.parse().unwrap()]);
        server_verdict_for(trust, expected, server)
    }

    /// What a client pinned to `expected`, verifying with `trust`, says of `server`.
    fn server_verdict_for(
        trust: &TrustStore,
        expected: ExpectedServer,
        server: &CredentialStore,
    ) -> Result<(), HandshakeFailure> {
        SpiffeServerVerifier::with_trust(trust, expected)
            .unwrap()
            .verify_server_cert(
                &der_of(server),
                &[],
                &ServerName::try_from("ignored.invalid").unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|e| HandshakeFailure::from_tls(&e))
    }

    fn federated_bundle(ca: &Ca, trust_domain: &str) -> TrustBundle {
        TrustBundle::new(
            TrustDomain::new(trust_domain).unwrap(),
            vec![ca.root.clone()],
        )
        .unwrap()
    }

    /// A peer of a federated trust domain verifies against that domain's roots, both ways,
    /// and only once the store federates with it.
    #[test]
    fn a_federated_peer_verifies_against_its_own_domains_roots() {
        let own = ca("example.org", "own root");
        let partner = ca("partner.test", "partner root");
        let trust = trust_in(&own);
        let peer = leaf(&partner, Some("spiffe://partner.test/api"));
        let pinned = || ExpectedServer::OneOf(vec!["spiffe://partner.test/api".parse().unwrap()]);

        let before = client_verdict(&trust, &peer).expect_err("not federated yet");
        assert_eq!(before.step, HandshakeStep::CertificateChain, "{before}");
        server_verdict_for(&trust, pinned(), &peer).expect_err("not federated yet");

        assert!(
            trust
                .federate(vec![federated_bundle(&partner, "partner.test")])
                .unwrap()
        );
        client_verdict(&trust, &peer).expect("a federated client");
        server_verdict_for(&trust, pinned(), &peer).expect("a federated server");
        assert!(
            !trust
                .federate(vec![federated_bundle(&partner, "partner.test")])
                .unwrap(),
            "the same bundles are not a change"
        );
        // The mesh's own workloads still verify against the mesh's own roots.
        client_verdict(&trust, &leaf(&own, Some("spiffe://example.org/web"))).unwrap();

        // Dropped from the federation, it is refused again.
        assert!(trust.federate(Vec::new()).unwrap());
        client_verdict(&trust, &peer).expect_err("no longer federated");
    }

    /// Neither CA can vouch for the other's identities: the bundle is chosen by the trust
    /// domain the certificate claims, and only that bundle may verify it.
    #[test]
    fn a_ca_cannot_vouch_for_another_trust_domain() {
        let own = ca("example.org", "own root");
        let partner = ca("partner.test", "partner root");
        let trust = trust_in(&own);
        trust
            .federate(vec![federated_bundle(&partner, "partner.test")])
            .unwrap();

        // The partner's CA signs a certificate claiming one of this mesh's identities.
        let forged_own = leaf(&partner, Some(SERVER));
        let failure = client_verdict(&trust, &forged_own).expect_err("partner claims own id");
        assert_eq!(failure.step, HandshakeStep::CertificateChain, "{failure}");
        server_verdict(&trust, &forged_own).expect_err("partner claims own id");

        // This mesh's CA signs a certificate claiming a partner identity.
        let forged_partner = leaf(&own, Some("spiffe://partner.test/api"));
        let failure = client_verdict(&trust, &forged_partner).expect_err("own CA, partner id");
        assert_eq!(failure.step, HandshakeStep::CertificateChain, "{failure}");
        let pinned = ExpectedServer::OneOf(vec!["spiffe://partner.test/api".parse().unwrap()]);
        server_verdict_for(&trust, pinned, &forged_partner).expect_err("own CA, partner id");
    }

    /// A captured destination nothing names accepts this mesh's workloads only.
    #[test]
    fn any_workload_of_the_trust_domain_excludes_federated_peers() {
        let own = ca("example.org", "own root");
        let partner = ca("partner.test", "partner root");
        let trust = trust_in(&own);
        trust
            .federate(vec![federated_bundle(&partner, "partner.test")])
            .unwrap();
        let peer = leaf(&partner, Some("spiffe://partner.test/api"));
        let failure = server_verdict_for(&trust, ExpectedServer::AnyInTrustDomain, &peer)
            .expect_err("a federated server for an unnamed destination");
        assert_eq!(
            failure.reason,
            FailureReason::ForeignTrustDomain,
            "{failure}"
        );
        server_verdict_for(
            &trust,
            ExpectedServer::AnyInTrustDomain,
            &leaf(&own, Some("spiffe://example.org/db")),
        )
        .unwrap();
    }

    #[test]
    fn the_own_trust_domain_cannot_be_federated() {
        let own = ca("example.org", "own root");
        let impostor = ca("example.org", "impostor root");
        let trust = trust_in(&own);
        let err = trust
            .federate(vec![federated_bundle(&impostor, "example.org")])
            .unwrap_err();
        assert!(err.to_string().contains("own trust domain"), "{err}");
        assert!(trust.federated_bundles().is_empty());
        client_verdict(&trust, &leaf(&impostor, Some(SERVER))).expect_err("impostor");
    }

    fn assert_revoked(verdict: Result<(), HandshakeFailure>, words: &str) {
        let failure = verdict.expect_err("a revoked certificate is refused");
        assert_eq!(failure.reason, FailureReason::Revoked, "{failure}");
        assert_eq!(failure.reason.as_str(), "revoked");
        assert_eq!(failure.step, HandshakeStep::CertificateChain, "{failure}");
        assert!(failure.message.contains(words), "{failure}");
    }

    /// Peers trust roots: a certificate under a revoked intermediate of a root still trusted
    /// verifies, unless the deny-list names the intermediate.
    #[test]
    fn a_chain_through_a_revoked_intermediate_is_refused_both_ways() {
        let root = ca("example.org", "root");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let intermediate_der = params
            .signed_by(&key, &Issuer::from_params(&root.params, &root.key))
            .unwrap()
            .der()
            .clone();
        let intermediate = Ca {
            params,
            key,
            root: intermediate_der.clone(),
        };
        let client = der_of(&leaf(&intermediate, Some(CLIENT)));
        let server = der_of(&leaf(&intermediate, Some(SERVER)));
        let trust = trust_in(&root);
        let chain = [intermediate_der.clone()];
        let as_client = |trust: &TrustStore| {
            SpiffeClientVerifier::with_trust(trust, true)
                .verify_client_cert(&client, &chain, UnixTime::now())
                .map(|_| ())
                .map_err(|e| HandshakeFailure::from_tls(&e))
        };
        let as_server = |trust: &TrustStore| {
            SpiffeServerVerifier::with_trust(
                trust,
                ExpectedServer::OneOf(vec![SERVER.parse().unwrap()]),
            )
            .unwrap()
            .verify_server_cert(
                &server,
                &chain,
                &ServerName::try_from("ignored.invalid").unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|e| HandshakeFailure::from_tls(&e))
        };
        as_client(&trust).expect("the intermediate is not revoked yet");
        as_server(&trust).expect("the intermediate is not revoked yet");

        let id = hush_identity::authority_id(&intermediate_der).unwrap();
        trust
            .update(trust.bundle(), denying(|l| l.deny_authority(&id).unwrap()))
            .unwrap();
        let words = format!("issued under intermediate {id}, which the CA revoked");
        assert_revoked(as_client(&trust), &words);
        assert_revoked(as_server(&trust), &words);
    }

    #[test]
    fn a_client_whose_serial_is_denied_is_refused() {
        let trusted = ca("example.org", "trusted CA");
        let revoked = serial_leaf(&trusted, CLIENT, &[0x47, 0xb0]);
        // The first bit is set: DER writes this serial with a leading zero byte.
        let other = serial_leaf(&trusted, CLIENT, &[0x9a, 0x01]);
        let trust = trust_in(&trusted);
        client_verdict(&trust, &revoked).expect("an empty deny-list refuses nothing");

        trust
            .update(
                trust.bundle(),
                denying(|l| l.deny_serial_hex("47b0").unwrap()),
            )
            .unwrap();
        assert_revoked(
            client_verdict(&trust, &revoked),
            "the peer's certificate is refused by this mesh's deny-list: serial 47b0 is revoked",
        );
        client_verdict(&trust, &other).expect("another serial is accepted");

        trust
            .update(
                trust.bundle(),
                denying(|l| l.deny_serial_hex("009A01").unwrap()),
            )
            .unwrap();
        assert_revoked(client_verdict(&trust, &other), "serial 9a01 is revoked");
        client_verdict(&trust, &revoked).expect("no longer listed, accepted again");
    }

    #[test]
    fn a_server_whose_serial_is_denied_is_refused() {
        let trusted = ca("example.org", "trusted CA");
        let revoked = serial_leaf(&trusted, SERVER, &[0x47, 0xb0]);
        let other = serial_leaf(&trusted, SERVER, &[0x47, 0xb1]);
        let trust = trust_in(&trusted);
        server_verdict(&trust, &revoked).expect("an empty deny-list refuses nothing");

        trust
            .update(
                trust.bundle(),
                denying(|l| l.deny_serial(&[0x47, 0xb0]).unwrap()),
            )
            .unwrap();
        assert_revoked(server_verdict(&trust, &revoked), "serial 47b0 is revoked");
        server_verdict(&trust, &other).expect("another serial is accepted");
    }

    /// A SPIFFE ID is revoked for certificates issued before a time: the certificates it
    /// already has, not the one it gets when it attests again.
    #[test]
    fn a_denied_spiffe_id_refuses_certificates_issued_before_the_cutoff() {
        let trusted = ca("example.org", "trusted CA");
        let client = serial_leaf(&trusted, CLIENT, &[0x01]);
        let server = serial_leaf(&trusted, SERVER, &[0x02]);
        let trust = trust_in(&trusted);
        let deny_both = |cutoff: i64| {
            denying(|l| {
                l.deny_spiffe_id(CLIENT.parse().unwrap(), cutoff);
                l.deny_spiffe_id(SERVER.parse().unwrap(), cutoff);
            })
        };

        trust
            .update(trust.bundle(), deny_both(NOT_BEFORE + 60))
            .unwrap();
        assert_revoked(
            client_verdict(&trust, &client),
            &format!(
                "{CLIENT} is revoked for certificates issued before 2025-01-01T00:01:00Z, and \
                 this one is valid from 2025-01-01T00:00:00Z"
            ),
        );
        assert_revoked(server_verdict(&trust, &server), SERVER);

        trust.update(trust.bundle(), deny_both(NOT_BEFORE)).unwrap();
        client_verdict(&trust, &client).expect("issued at the cutoff, not before it");
        server_verdict(&trust, &server).expect("issued at the cutoff, not before it");
    }

    #[test]
    fn a_client_renewed_from_a_denied_serial_or_token_is_refused() {
        use hush_identity::{ATTESTATION_OID_ARCS, AttestationMethod, AttestationRecord};
        let trusted = ca("example.org", "trusted CA");
        let record = AttestationRecord {
            attested_at: NOT_BEFORE,
            method: AttestationMethod::JoinToken,
            origin_serial: vec![0x47, 0xb0],
            token_id: Some("0123456789abcdef".to_owned()),
        };
        let renewed = leaf_with(&trusted, Some(CLIENT), |params| {
            params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x55]));
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    ATTESTATION_OID_ARCS,
                    record.to_der().unwrap(),
                ));
        });
        let trust = trust_in(&trusted);
        trust
            .update(
                trust.bundle(),
                denying(|l| l.deny_serial_hex("47b0").unwrap()),
            )
            .unwrap();
        assert_revoked(
            client_verdict(&trust, &renewed),
            "serial 47b0 is revoked, and this certificate (serial 55) was renewed from it",
        );
        trust
            .update(
                trust.bundle(),
                denying(|l| l.deny_token_id("0123456789abcdef").unwrap()),
            )
            .unwrap();
        assert_revoked(
            client_verdict(&trust, &renewed),
            "join token 0123456789abcdef is revoked",
        );
    }

    /// The deny-list travels with the roots: a new list with the same roots is a change, it
    /// applies to verifiers built before it, and `replace` keeps it.
    #[test]
    fn update_swaps_the_deny_list_and_replace_keeps_it() {
        let trusted = ca("example.org", "trusted CA");
        let client = serial_leaf(&trusted, CLIENT, &[0x47, 0xb0]);
        let trust = trust_in(&trusted);
        let verifier = SpiffeClientVerifier::with_trust(&trust, true);
        let verify = || {
            verifier
                .verify_client_cert(&der_of(&client), &[], UnixTime::now())
                .map(|_| ())
        };
        verify().unwrap();

        let list = denying(|l| l.deny_serial_hex("47b0").unwrap());
        assert!(
            trust.update(trust.bundle(), list.clone()).unwrap(),
            "a new deny-list is a change, even with the same roots"
        );
        assert_eq!(*trust.deny_list(), list);
        assert!(
            verify().is_err(),
            "the verifier built earlier follows the store"
        );
        assert!(
            !trust.update(trust.bundle(), list.clone()).unwrap(),
            "the same roots and list are no change"
        );

        let newer = ca("example.org", "newer CA");
        let both = TrustBundle::new(
            TrustDomain::new("example.org").unwrap(),
            vec![trusted.root.clone(), newer.root.clone()],
        )
        .unwrap();
        assert!(trust.replace(both.clone()).unwrap());
        assert_eq!(*trust.deny_list(), list, "replace keeps the deny-list");
        assert!(verify().is_err());

        let foreign = ca("evil.org", "evil CA");
        let err = trust
            .update(
                TrustBundle::new(
                    TrustDomain::new("evil.org").unwrap(),
                    vec![foreign.root.clone()],
                )
                .unwrap(),
                hush_identity::DenyList::new(),
            )
            .unwrap_err();
        assert!(matches!(
            err,
            crate::TrustUpdateError::OtherTrustDomain { .. }
        ));
        assert_eq!(
            *trust.deny_list(),
            list,
            "a refused update changes neither the roots nor the deny-list"
        );
        assert_eq!(trust.bundle().roots(), both.roots());

        assert!(
            trust
                .update(trust.bundle(), hush_identity::DenyList::new())
                .unwrap()
        );
        verify().expect("an emptied deny-list refuses nothing");
    }

    /// Through a real handshake, as the sidecar sees it: the I/O error tokio-rustls returns
    /// explains itself as `revoked`, with the denial's words.
    #[tokio::test]
    async fn a_revoked_client_fails_the_handshake_as_revoked() {
        let trusted = ca("example.org", "trusted CA");
        let trust = trust_in(&trusted);
        trust
            .update(
                trust.bundle(),
                denying(|l| l.deny_serial_hex("47b0").unwrap()),
            )
            .unwrap();
        let server = server_config(
            Arc::new(leaf(&trusted, Some(SERVER))),
            Some(SpiffeClientVerifier::with_trust(&trust, true)),
            &[],
        )
        .unwrap();
        let client = client_config(
            Arc::new(AnyServer),
            Some(Arc::new(serial_leaf(&trusted, CLIENT, &[0x47, 0xb0]))
                as Arc<dyn rustls::client::ResolvesClientCert>),
            &[],
        )
        .unwrap();
        let (a, b) = tokio::io::duplex(16 * 1024);
        let accepted = tokio::spawn(async move {
            tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(a)
                .await
                .map(|_| ())
        });
        let _ = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("example.org").unwrap(), b)
            .await;
        let error = accepted.await.unwrap().unwrap_err();
        let failure = HandshakeFailure::from_io(&error);
        assert_eq!(failure.reason.as_str(), "revoked", "{failure}");
        assert_eq!(
            failure.to_string(),
            "certificate chain failed: the peer's certificate is refused by this mesh's \
             deny-list: serial 47b0 is revoked"
        );
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
