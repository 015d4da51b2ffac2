//! Checking issued certificates independently of hush: webpki builds and verifies the chain,
//! x509-parser reads the fields hush's own summary does not report.

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// What a verified chain must be good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server authentication (`id-kp-serverAuth`).
    ServerAuth,
    /// TLS client authentication (`id-kp-clientAuth`).
    ClientAuth,
}

/// Verifies `chain` (leaf first, then intermediates) up to one of `roots` with webpki, now,
/// for `usage`. Every signature on the path is checked; names are not (SPIFFE IDs are URI SANs,
/// which webpki does not match).
pub fn verify_chain(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    usage: Usage,
) -> Result<(), String> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| "the chain is empty".to_string())?;
    let anchors = roots
        .iter()
        .map(|root| webpki::anchor_from_trusted_cert(root).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a root cannot be a trust anchor: {e}"))?;
    let leaf = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("the leaf cannot be parsed by webpki: {e}"))?;
    let usage = match usage {
        Usage::ServerAuth => webpki::KeyUsage::server_auth(),
        Usage::ClientAuth => webpki::KeyUsage::client_auth(),
    };
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("the chain does not verify against the roots: {e}"))
}

/// Splits PEM text into DER certificates, in order. Panics on anything that is not a
/// `CERTIFICATE` block.
pub fn pem_certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("not PEM certificates ({e}):\n{pem}"))
}

/// The fields of a certificate that tests assert on, read with x509-parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Subject DN, as x509-parser prints it.
    pub subject: String,
    /// Issuer DN, as x509-parser prints it.
    pub issuer: String,
    /// The serial number's content octets.
    pub serial: Vec<u8>,
    /// NotBefore, Unix seconds.
    pub not_before: i64,
    /// NotAfter, Unix seconds.
    pub not_after: i64,
    /// The SubjectPublicKeyInfo, DER.
    pub public_key_info: Vec<u8>,
    /// Whether extendedKeyUsage lists serverAuth.
    pub eku_server_auth: bool,
    /// Whether extendedKeyUsage lists clientAuth.
    pub eku_client_auth: bool,
    /// Whether extendedKeyUsage lists any purpose besides serverAuth and clientAuth.
    pub eku_other: bool,
    /// Whether basicConstraints says CA=true.
    pub is_ca: bool,
    /// Whether keyUsage includes keyCertSign.
    pub key_cert_sign: bool,
}

impl CertFacts {
    /// Reads `der`; panics if it is not a certificate.
    pub fn from_der(der: &[u8]) -> Self {
        let (rest, cert) =
            X509Certificate::from_der(der).unwrap_or_else(|e| panic!("not a DER certificate: {e}"));
        assert!(rest.is_empty(), "trailing bytes after the certificate");
        let eku = cert
            .extended_key_usage()
            .expect("extendedKeyUsage is readable")
            .map(|e| e.value.clone());
        Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial().to_vec(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            public_key_info: cert.public_key().raw.to_vec(),
            eku_server_auth: eku.as_ref().is_some_and(|e| e.server_auth),
            eku_client_auth: eku.as_ref().is_some_and(|e| e.client_auth),
            eku_other: eku.as_ref().is_some_and(|e| {
                e.any
                    || e.code_signing
                    || e.email_protection
                    || e.time_stamping
                    || e.ocsp_signing
                    || !e.other.is_empty()
            }),
            is_ca: cert.is_ca(),
            key_cert_sign: cert
                .key_usage()
                .expect("keyUsage is readable")
                .is_some_and(|k| k.value.key_cert_sign()),
        }
    }
}
