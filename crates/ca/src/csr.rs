//! Certificate signing requests: parsing and proof of possession.
//!
//! The CA trusts nothing in a CSR but its public key, and only after the CSR's signature proves
//! that the caller holds the matching private key. Names, extensions and attributes the CSR asks
//! for are ignored: the certificate carries the identity the CA attested.

use aws_lc_rs::signature::{self, VerificationAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA,
    OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// The smallest RSA modulus the CA signs for.
pub const MIN_RSA_BITS: usize = 2048;

/// The largest CSR the CA reads. Real CSRs are well under 2 KiB (RSA 4096 ≈ 1.7 KiB of DER).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why a CSR was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// The request carried no CSR at all.
    #[error("the request has no CSR")]
    Empty,
    /// The CSR is larger than the CA reads.
    #[error("the CSR is {0} bytes; the CA accepts at most {MAX_CSR_BYTES}")]
    TooLarge(usize),
    /// The PEM armour is broken or holds something other than a CSR.
    #[error("the CSR is not valid PEM: {0}")]
    Pem(String),
    /// The DER structure could not be parsed.
    #[error("the CSR is not a valid PKCS#10 request: {0}")]
    Der(String),
    /// The key type is not one the CA signs for.
    #[error(
        "unsupported key type {0}: use ECDSA P-256 or P-384, Ed25519, or RSA of at least {MIN_RSA_BITS} bits"
    )]
    UnsupportedKey(String),
    /// The RSA key is too small.
    #[error("weak key: RSA key of {0} bits; the CA requires at least {MIN_RSA_BITS}")]
    WeakKey(usize),
    /// The signature algorithm is not accepted (for example SHA-1).
    #[error("unsupported CSR signature algorithm {0}: sign the CSR with SHA-256 or stronger")]
    UnsupportedSignature(String),
    /// The signature does not verify with the CSR's own public key.
    #[error(
        "the CSR's signature does not verify with its public key (no proof of possession of the private key)"
    )]
    BadSignature,
}

/// The kinds of key the CA signs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA with the given modulus size in bits.
    Rsa(usize),
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Rsa(bits) => write!(f, "RSA {bits}"),
        }
    }
}

/// A CSR whose signature verified: only its public key is kept.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    kind: KeyKind,
    /// The subjectPublicKey BIT STRING contents (not the whole SubjectPublicKeyInfo).
    public_key: Vec<u8>,
}

// === impl VerifiedCsr ===

impl VerifiedCsr {
    /// Parses a CSR given as DER or PEM and checks its signature against its own public key.
    pub fn parse(input: &[u8]) -> Result<Self, CsrError> {
        if input.is_empty() {
            return Err(CsrError::Empty);
        }
        if input.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge(input.len()));
        }
        let trimmed = input.trim_ascii_start();
        if trimmed.starts_with(b"-----BEGIN") {
            let pem = pem_decode(trimmed)?;
            Self::parse_der(&pem)
        } else {
            Self::parse_der(input)
        }
    }

    fn parse_der(der: &[u8]) -> Result<Self, CsrError> {
        let (rest, csr) =
            X509CertificationRequest::from_der(der).map_err(|e| CsrError::Der(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Der(format!(
                "{} unexpected bytes after the request",
                rest.len()
            )));
        }
        let info = &csr.certification_request_info;
        let spki = &info.subject_pki;
        let kind = key_kind(spki)?;
        let public_key = spki.subject_public_key.data.to_vec();

        let algorithm = verification_algorithm(kind, &csr)?;
        signature::UnparsedPublicKey::new(algorithm, &public_key)
            .verify(info.raw, &csr.signature_value.data)
            .map_err(|_| CsrError::BadSignature)?;
        Ok(Self { kind, public_key })
    }

    /// The kind of key the CSR carries.
    pub fn key_kind(&self) -> KeyKind {
        self.kind
    }
}

/// rcgen writes the SubjectPublicKeyInfo of the certificate from this.
impl rcgen::PublicKeyData for VerifiedCsr {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        // Only the key's algorithm identifier is written from this, so one per key kind suffices.
        match self.kind {
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
            KeyKind::Rsa(_) => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

fn pem_decode(text: &[u8]) -> Result<Vec<u8>, CsrError> {
    let parsed = pem::parse(text).map_err(|e| CsrError::Pem(e.to_string()))?;
    match parsed.tag() {
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Ok(parsed.into_contents()),
        other => Err(CsrError::Pem(format!(
            "expected a CERTIFICATE REQUEST block, found {other}"
        ))),
    }
}

fn key_kind(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(KeyKind::EcdsaP256),
            Some(c) if c == OID_NIST_EC_P384 => Ok(KeyKind::EcdsaP384),
            Some(c) => Err(CsrError::UnsupportedKey(format!("EC on curve {c}"))),
            None => Err(CsrError::UnsupportedKey("EC with no named curve".into())),
        };
    }
    if *alg == OID_SIG_ED25519 {
        return Ok(KeyKind::Ed25519);
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => hush_identity::rsa_modulus_bits(rsa.modulus),
            _ => return Err(CsrError::Der("the RSA public key cannot be parsed".into())),
        };
        if bits < MIN_RSA_BITS {
            return Err(CsrError::WeakKey(bits));
        }
        return Ok(KeyKind::Rsa(bits));
    }
    Err(CsrError::UnsupportedKey(alg.to_id_string()))
}

fn verification_algorithm(
    kind: KeyKind,
    csr: &X509CertificationRequest<'_>,
) -> Result<&'static dyn VerificationAlgorithm, CsrError> {
    let sig = &csr.signature_algorithm.algorithm;
    let unsupported = || {
        let name = if *sig == OID_PKCS1_SHA1WITHRSA {
            "sha1WithRSAEncryption".to_string()
        } else {
            sig.to_id_string()
        };
        CsrError::UnsupportedSignature(format!("{name} for a {kind} key"))
    };
    Ok(match kind {
        KeyKind::EcdsaP256 if *sig == OID_SIG_ECDSA_WITH_SHA256 => {
            &signature::ECDSA_P256_SHA256_ASN1
        }
        KeyKind::EcdsaP256 if *sig == OID_SIG_ECDSA_WITH_SHA384 => {
            &signature::ECDSA_P256_SHA384_ASN1
        }
        KeyKind::EcdsaP384 if *sig == OID_SIG_ECDSA_WITH_SHA384 => {
            &signature::ECDSA_P384_SHA384_ASN1
        }
        KeyKind::EcdsaP384 if *sig == OID_SIG_ECDSA_WITH_SHA256 => {
            &signature::ECDSA_P384_SHA256_ASN1
        }
        KeyKind::Ed25519 if *sig == OID_SIG_ED25519 => &signature::ED25519,
        KeyKind::Rsa(_) if *sig == OID_PKCS1_SHA256WITHRSA => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        KeyKind::Rsa(_) if *sig == OID_PKCS1_SHA384WITHRSA => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        KeyKind::Rsa(_) if *sig == OID_PKCS1_SHA512WITHRSA => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        _ => return Err(unsupported()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(alg: &'static rcgen::SignatureAlgorithm) -> (rcgen::KeyPair, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["evil.example".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "admin");
        let csr = params.serialize_request(&key).unwrap();
        (key, csr.der().to_vec())
    }

    #[test]
    fn accepts_each_supported_key_kind() {
        let rows: [(&'static rcgen::SignatureAlgorithm, KeyKind); 3] = [
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeyKind::EcdsaP256),
            (&rcgen::PKCS_ECDSA_P384_SHA384, KeyKind::EcdsaP384),
            (&rcgen::PKCS_ED25519, KeyKind::Ed25519),
        ];
        for (alg, kind) in rows {
            let (_, der) = csr_for(alg);
            let csr = VerifiedCsr::parse(&der).unwrap();
            assert_eq!(csr.key_kind(), kind);
        }
    }

    #[test]
    fn accepts_pem() {
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let csr = VerifiedCsr::parse(pem.as_bytes()).unwrap();
        assert_eq!(csr.key_kind(), KeyKind::EcdsaP256);
        assert_eq!(
            rcgen::PublicKeyData::der_bytes(&csr),
            rcgen::PublicKeyData::der_bytes(&key)
        );
    }

    #[test]
    fn refuses_tampered_signature() {
        let (_, mut der) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        // The last byte belongs to the signature's S value.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        assert_eq!(
            VerifiedCsr::parse(&der).unwrap_err(),
            CsrError::BadSignature
        );
    }

    #[test]
    fn refuses_garbage_and_oversize_and_empty() {
        assert_eq!(VerifiedCsr::parse(b"").unwrap_err(), CsrError::Empty);
        assert!(matches!(
            VerifiedCsr::parse(b"\x30\x03\x02\x01").unwrap_err(),
            CsrError::Der(_)
        ));
        assert!(matches!(
            VerifiedCsr::parse(&vec![0x30; MAX_CSR_BYTES + 1]).unwrap_err(),
            CsrError::TooLarge(_)
        ));
        assert!(matches!(
            VerifiedCsr::parse(
                b"-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n"
            )
            .unwrap_err(),
            CsrError::Pem(_)
        ));
    }

    #[test]
    fn refuses_pem_of_the_wrong_kind() {
        let key = rcgen::KeyPair::generate().unwrap();
        let err = VerifiedCsr::parse(key.serialize_pem().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    }

    #[test]
    fn mutated_requests_never_panic_and_a_changed_key_never_verifies() {
        let (key, der) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let public = key.public_key_raw();
        let at = der
            .windows(public.len())
            .position(|w| w == public)
            .expect("the CSR holds the public key");
        for i in 0..der.len() {
            let _ = VerifiedCsr::parse(&der[..i]);
            for bit in [0x01u8, 0x80] {
                let mut mutated = der.clone();
                mutated[i] ^= bit;
                let result = VerifiedCsr::parse(&mutated);
                if (at..at + public.len()).contains(&i) {
                    assert!(result.is_err(), "flipping key byte {i} was accepted");
                }
            }
        }
    }

    #[test]
    fn refuses_trailing_bytes() {
        let (_, mut der) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        der.extend_from_slice(b"xx");
        assert!(matches!(
            VerifiedCsr::parse(&der).unwrap_err(),
            CsrError::Der(_)
        ));
    }
}
