//! An in-memory CA for tests: a root and an intermediate made with rcgen, issuing SPIFFE
//! leaves, TLS server certificates, and leaves that break one X.509-SVID rule each.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// A certificate chain (leaf first, intermediate last; the root is not included) and the
/// leaf's private key.
#[derive(Debug)]
pub struct TestLeaf {
    /// Leaf, then intermediate.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key, PKCS#8.
    pub key: PrivateKeyDer<'static>,
}

/// A root and an intermediate for one trust domain, in memory.
#[derive(Debug)]
pub struct TestCa {
    trust_domain: String,
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
}

// === impl TestCa ===

impl TestCa {
    /// A new CA for `trust_domain` (such as `cluster.local`), with ECDSA P-256 keys.
    pub fn new(trust_domain: &str) -> Self {
        let root = CertifiedIssuer::self_signed(
            signing_params(trust_domain, "test root", BasicConstraints::Unconstrained),
            KeyPair::generate().expect("rcgen cannot generate a key"),
        )
        .expect("rcgen cannot make the test root");
        let intermediate = CertifiedIssuer::signed_by(
            signing_params(
                trust_domain,
                "test intermediate",
                BasicConstraints::Constrained(0),
            ),
            KeyPair::generate().expect("rcgen cannot generate a key"),
            &root,
        )
        .expect("rcgen cannot make the test intermediate");
        Self {
            trust_domain: trust_domain.to_string(),
            root,
            intermediate,
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate.
    pub fn root(&self) -> CertificateDer<'static> {
        self.root.der().clone()
    }

    /// The root certificate as PEM: the trust bundle.
    pub fn root_pem(&self) -> String {
        self.root.pem()
    }

    /// The intermediate certificate.
    pub fn intermediate(&self) -> CertificateDer<'static> {
        self.intermediate.der().clone()
    }

    /// A valid X.509-SVID leaf for `spiffe_id`, valid for an hour.
    pub fn leaf(&self, spiffe_id: &str) -> TestLeaf {
        self.issue(leaf_params(spiffe_id))
    }

    /// A leaf for `spiffe_id` whose validity ended an hour ago.
    pub fn expired_leaf(&self, spiffe_id: &str) -> TestLeaf {
        let mut params = leaf_params(spiffe_id);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(2);
        params.not_after = now - Duration::hours(1);
        self.issue(params)
    }

    /// A "leaf" for `spiffe_id` that says CA=true, which an X.509-SVID leaf must not.
    pub fn leaf_is_ca(&self, spiffe_id: &str) -> TestLeaf {
        let mut params = leaf_params(spiffe_id);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        self.issue(params)
    }

    /// A leaf with two URI SANs, which an X.509-SVID must not have.
    pub fn leaf_with_two_spiffe_ids(&self, first: &str, second: &str) -> TestLeaf {
        let mut params = leaf_params(first);
        params.subject_alt_names.push(uri(second));
        self.issue(params)
    }

    /// A leaf with no URI SAN at all: a certificate, but no SPIFFE identity.
    pub fn leaf_without_spiffe_id(&self) -> TestLeaf {
        let mut params = leaf_params("spiffe://unused/x");
        params.subject_alt_names.clear();
        self.issue(params)
    }

    /// A TLS server certificate for `names` (DNS names or IP addresses), valid for an hour.
    pub fn server_certificate(&self, names: &[&str]) -> TestLeaf {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test server");
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    (*name)
                        .try_into()
                        .unwrap_or_else(|e| panic!("{name:?} is not a DNS name: {e}")),
                ),
            })
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params);
        self.issue(params)
    }

    /// A rustls TLS 1.3 server configuration presenting [`Self::server_certificate`] for
    /// `names`, offering `alpn`.
    pub fn rustls_server_config(
        &self,
        names: &[&str],
        alpn: &[&[u8]],
    ) -> Arc<rustls::ServerConfig> {
        let TestLeaf { chain, key } = self.server_certificate(names);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("aws-lc-rs supports TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("rustls accepts the test server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    fn issue(&self, params: CertificateParams) -> TestLeaf {
        let key = KeyPair::generate().expect("rcgen cannot generate a key");
        let cert = params
            .signed_by(&key, &self.intermediate)
            .expect("rcgen cannot sign the test leaf");
        TestLeaf {
            chain: vec![cert.der().clone(), self.intermediate()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// A leaf for `spiffe_id` whose validity ended an hour ago, signed by the intermediate of the
/// hush CA in `ca_dir` (its `intermediate.pem` and `intermediate.key`): a certificate the CA
/// really issued, only too old.
pub fn expired_leaf_from_ca_dir(ca_dir: &std::path::Path, spiffe_id: &str) -> TestLeaf {
    let mut params = leaf_params(spiffe_id);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(2);
    params.not_after = now - Duration::hours(1);
    sign_with_ca_dir(ca_dir, params)
}

/// A leaf for `spiffe_id` that becomes valid only in an hour, signed by the intermediate of the
/// hush CA in `ca_dir`: what a machine whose clock is an hour behind the CA's sees.
pub fn not_yet_valid_leaf_from_ca_dir(ca_dir: &std::path::Path, spiffe_id: &str) -> TestLeaf {
    let mut params = leaf_params(spiffe_id);
    let now = OffsetDateTime::now_utc();
    params.not_before = now + Duration::hours(1);
    params.not_after = now + Duration::hours(2);
    sign_with_ca_dir(ca_dir, params)
}

/// A host-name server certificate for the DNS `names`, with no URI SAN, signed by the
/// intermediate of the hush CA in `ca_dir`: a certificate from the mesh's CA that is not an
/// X.509-SVID.
pub fn dns_leaf_from_ca_dir(ca_dir: &std::path::Path, names: &[&str]) -> TestLeaf {
    let mut params = leaf_params("spiffe://unused/x");
    params.subject_alt_names = names
        .iter()
        .map(|name| {
            SanType::DnsName(
                (*name)
                    .try_into()
                    .unwrap_or_else(|e| panic!("{name:?} is not a DNS name: {e}")),
            )
        })
        .collect();
    sign_with_ca_dir(ca_dir, params)
}

/// A valid leaf signed by the intermediate of the hush CA in `ca_dir`, naming whatever URI
/// `spiffe_id` says (another trust domain, say), or no URI at all: what a stolen intermediate
/// key could mint, and what a verifier must still refuse.
pub fn leaf_from_ca_dir(ca_dir: &std::path::Path, spiffe_id: Option<&str>) -> TestLeaf {
    let mut params = leaf_params(spiffe_id.unwrap_or("spiffe://unused/x"));
    if spiffe_id.is_none() {
        params.subject_alt_names.clear();
    }
    sign_with_ca_dir(ca_dir, params)
}

fn sign_with_ca_dir(ca_dir: &std::path::Path, params: CertificateParams) -> TestLeaf {
    let read = |name: &str| {
        std::fs::read_to_string(ca_dir.join(name))
            .unwrap_or_else(|e| panic!("cannot read {name} in {}: {e}", ca_dir.display()))
    };
    let intermediate_pem = read("intermediate.pem");
    let key = KeyPair::from_pem(&read("intermediate.key")).expect("intermediate.key is a key");
    let intermediate = rcgen::Issuer::from_ca_cert_pem(&intermediate_pem, key)
        .expect("intermediate.pem is a CA certificate");
    let leaf_key = KeyPair::generate().expect("rcgen cannot generate a key");
    let cert = params
        .signed_by(&leaf_key, &intermediate)
        .expect("rcgen cannot sign the leaf");
    let intermediate_der =
        rustls_pki_types::pem::PemObject::from_pem_slice(intermediate_pem.as_bytes())
            .expect("intermediate.pem is PEM");
    TestLeaf {
        chain: vec![cert.der().clone(), intermediate_der],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

fn signing_params(
    trust_domain: &str,
    role: &str,
    constraints: BasicConstraints,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{role} ({trust_domain})"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![uri(&format!("spiffe://{trust_domain}"))];
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    params
}

fn leaf_params(spiffe_id: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri(spiffe_id)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    params
}

fn set_validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::hours(1);
}

fn uri(value: &str) -> SanType {
    SanType::URI(
        value
            .try_into()
            .unwrap_or_else(|e| panic!("{value:?} is not a URI: {e}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::{Usage, verify_chain};

    #[test]
    fn leaves_verify_and_broken_ones_do_not() {
        let ca = TestCa::new("test.example");
        let good = ca.leaf("spiffe://test.example/ns/a/sa/b");
        verify_chain(&good.chain, &[ca.root()], Usage::ClientAuth).unwrap();
        let expired = ca.expired_leaf("spiffe://test.example/ns/a/sa/b");
        assert!(verify_chain(&expired.chain, &[ca.root()], Usage::ClientAuth).is_err());
        let other = TestCa::new("test.example");
        assert!(verify_chain(&good.chain, &[other.root()], Usage::ClientAuth).is_err());
    }
}
