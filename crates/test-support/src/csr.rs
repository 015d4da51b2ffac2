//! Certificate signing requests made with rcgen, good and deliberately bad.
//!
//! A CA must take nothing from a CSR but its public key, and only once the CSR's signature
//! proves the caller holds the private key. The fixtures here are named for the rule they
//! break, so a failing assertion reads as the rule that was not enforced.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};

/// The SPIFFE ID a forged CSR asks for: another trust domain's admin.
pub const FORGED_SPIFFE_ID: &str = "spiffe://evil.example/ns/kube-system/sa/admin";
/// The DNS name a forged CSR asks for.
pub const FORGED_DNS_NAME: &str = "evil.example";
/// The common name a forged CSR asks for.
pub const FORGED_CN: &str = "cluster-admin";

/// Key types rcgen can make CSRs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrKeyKind {
    /// ECDSA on NIST P-256 with SHA-256.
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

impl CsrKeyKind {
    /// Every kind, for table-driven tests.
    pub const ALL: [Self; 3] = [Self::EcdsaP256, Self::EcdsaP384, Self::Ed25519];

    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// How `hush cert inspect` and `hush_identity::CertificateSummary` name this key type.
    pub fn display_name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ECDSA P-256",
            Self::EcdsaP384 => "ECDSA P-384",
            Self::Ed25519 => "Ed25519",
        }
    }
}

/// A CSR and the key that signed it.
#[derive(Debug)]
pub struct TestCsr {
    /// The CSR, DER-encoded.
    pub der: Vec<u8>,
    /// The CSR, PEM-encoded (`CERTIFICATE REQUEST`).
    pub pem: String,
    /// The private key.
    pub key: KeyPair,
}

impl TestCsr {
    /// The SubjectPublicKeyInfo (DER) of the CSR's key: a certificate issued for this CSR must
    /// carry exactly these bytes.
    pub fn public_key_info(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }
}

fn make(kind: CsrKeyKind, params: &CertificateParams) -> TestCsr {
    let key = KeyPair::generate_for(kind.algorithm()).expect("rcgen cannot generate a key");
    let csr = params
        .serialize_request(&key)
        .expect("rcgen cannot serialize a CSR");
    TestCsr {
        der: csr.der().to_vec(),
        pem: csr.pem().expect("rcgen cannot PEM-encode a CSR"),
        key,
    }
}

/// A CSR that asks for nothing: no subject, no extensions.
pub fn plain_csr(kind: CsrKeyKind) -> TestCsr {
    make(kind, &CertificateParams::default())
}

/// A CSR that asks for everything a CA must refuse to copy: CN [`FORGED_CN`], the URI SAN
/// [`FORGED_SPIFFE_ID`], the DNS SAN [`FORGED_DNS_NAME`], an IP SAN, CA=true and keyCertSign.
/// Its signature is valid: only the names and extensions are lies.
pub fn forged_csr(kind: CsrKeyKind) -> TestCsr {
    make(kind, &forged_params())
}

fn forged_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, FORGED_CN);
    params.subject_alt_names = vec![
        SanType::URI(
            FORGED_SPIFFE_ID
                .try_into()
                .expect("the forged SPIFFE ID is a valid URI"),
        ),
        SanType::DnsName(
            FORGED_DNS_NAME
                .try_into()
                .expect("the forged DNS name is valid"),
        ),
        SanType::IpAddress(std::net::IpAddr::from([10, 0, 0, 1])),
    ];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A forged CSR whose signature no longer matches its content: one byte of the requested
/// common name was changed after signing, so the structure still parses but proof of
/// possession fails.
pub fn csr_altered_after_signing(kind: CsrKeyKind) -> Vec<u8> {
    let mut der = forged_csr(kind).der;
    let at = find(&der, FORGED_CN.as_bytes()).expect("the forged CN is in the CSR");
    der[at] ^= 0x20; // "cluster-admin" → "Cluster-admin"
    der
}

/// A CSR whose last byte (inside the signature value) is flipped.
pub fn csr_with_broken_signature(kind: CsrKeyKind) -> Vec<u8> {
    let mut der = plain_csr(kind).der;
    let last = der.len() - 1;
    der[last] ^= 0x01;
    der
}

/// A CSR signed by one key that carries another key's public key: someone asking for a
/// certificate over a key they do not hold. Returns the CSR and the public key info it claims.
pub fn csr_claiming_another_key(kind: CsrKeyKind) -> (Vec<u8>, Vec<u8>) {
    let signer = plain_csr(kind);
    let victim = KeyPair::generate_for(kind.algorithm()).expect("rcgen cannot generate a key");
    let ours = signer.public_key_info();
    let theirs = victim.subject_public_key_info();
    assert_eq!(ours.len(), theirs.len(), "keys of one kind encode alike");
    let mut der = signer.der;
    let at = find(&der, &ours).expect("the CSR carries its public key info");
    der[at..at + ours.len()].copy_from_slice(&theirs);
    (der, theirs)
}

/// Bytes that are not a CSR at all (nor DER).
pub fn garbage_csr() -> Vec<u8> {
    b"this is not a certificate signing request".to_vec()
}

/// No CSR.
pub fn empty_csr() -> Vec<u8> {
    Vec::new()
}

/// A DER SEQUENCE header followed by `len` bytes of padding: larger than any CSR.
pub fn oversized_csr(len: usize) -> Vec<u8> {
    let mut der = vec![0x30, 0x84];
    let body = u32::try_from(len).expect("oversized CSR length fits in u32");
    der.extend_from_slice(&body.to_be_bytes());
    der.resize(len + 6, 0x41);
    der
}

/// A PEM private key, pasted where the CSR should be.
pub fn private_key_pem_instead_of_csr() -> String {
    KeyPair::generate()
        .expect("rcgen cannot generate a key")
        .serialize_pem()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_differ_from_the_original_only_where_named() {
        for kind in CsrKeyKind::ALL {
            let altered = csr_altered_after_signing(kind);
            assert!(find(&altered, b"Cluster-admin").is_some());
            let (claiming, theirs) = csr_claiming_another_key(kind);
            assert!(find(&claiming, &theirs).is_some());
            assert!(!csr_with_broken_signature(kind).is_empty());
        }
        assert_eq!(oversized_csr(100).len(), 106);
    }
}
