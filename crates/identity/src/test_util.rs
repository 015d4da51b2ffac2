//! Real certificates made in memory with rcgen, for the unit tests of this crate.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CustomExtension, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;

/// A root CA that can sign test certificates.
pub(crate) struct TestCa {
    cert: Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A root CA whose one URI SAN is `id` (pass `None` for a root without a SPIFFE ID).
    pub(crate) fn new(id: impl Into<Option<&'static str>>) -> Self {
        let params = signing_params(id.into());
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    pub(crate) fn der(&self) -> &CertificateDer<'static> {
        self.cert.der()
    }

    pub(crate) fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Signs `params` over a fresh P-256 key.
    pub(crate) fn sign(&self, params: &CertificateParams) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        params.signed_by(&key, &self.issuer).unwrap().der().clone()
    }
}

/// The parameters of a good X.509-SVID leaf with these URI SANs.
pub(crate) fn leaf_params(uris: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "workload");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = uris.iter().map(|uri| uri_san(uri)).collect();
    params
}

/// The parameters of a good signing (CA) certificate, with an optional URI SAN.
pub(crate) fn signing_params(id: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "hush test root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = id.into_iter().map(uri_san).collect();
    params
}

/// Signs `params` with a fresh key of its own.
pub(crate) fn self_signed(params: &CertificateParams) -> CertificateDer<'static> {
    let key = KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().clone()
}

pub(crate) fn uri_san(uri: &str) -> SanType {
    SanType::URI(uri.try_into().unwrap())
}

/// Replaces the keyUsage of `params` with one written by hand, because rcgen always marks
/// its own keyUsage critical and the tests need one that is not.
pub(crate) fn with_key_usage(
    params: &mut CertificateParams,
    usages: &[KeyUsagePurpose],
    critical: bool,
) {
    params.key_usages.clear();
    // The first byte of the keyUsage BIT STRING: bit 0 (digitalSignature) is the most
    // significant bit.
    let bits = usages.iter().fold(0u8, |bits, usage| {
        bits | match usage {
            KeyUsagePurpose::DigitalSignature => 0x80,
            KeyUsagePurpose::KeyEncipherment => 0x20,
            KeyUsagePurpose::KeyCertSign => 0x04,
            KeyUsagePurpose::CrlSign => 0x02,
            other => panic!("with_key_usage does not know {other:?}"),
        }
    });
    // BIT STRING: tag, length, count of unused trailing bits, the bits.
    let unused = bits.trailing_zeros().min(7) as u8;
    let mut ext =
        CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x02, unused, bits]);
    ext.set_criticality(critical);
    params.custom_extensions.push(ext);
}
