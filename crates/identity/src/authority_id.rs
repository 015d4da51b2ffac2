//! The name hush gives a CA certificate.

use x509_parser::prelude::{FromDer, X509Certificate};

/// The ID of the CA certificate `certificate` (DER): the first 16 hex digits of the SHA-256 of
/// its SubjectPublicKeyInfo. Stable across re-issuance of the same key, short enough to type,
/// and computable for any certificate, with or without a key identifier extension. The CA
/// names its roots and intermediates this way, and sidecars recognise a tainted authority in
/// their chain by it. `None` when the bytes are not a certificate.
pub fn authority_id(certificate: &[u8]) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(certificate).ok()?;
    Some(authority_id_of_public_key(parsed.public_key().raw))
}

/// The ID of a SubjectPublicKeyInfo (DER), as [`authority_id`] computes it.
pub fn authority_id_of_public_key(spki: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_sixteen_hex_digits_of_the_public_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let first = params.self_signed(&key).unwrap();
        let again = params.self_signed(&key).unwrap();
        let id = authority_id(first.der()).unwrap();
        assert_eq!(id.len(), 16);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        // The same key re-certified keeps its name.
        assert_eq!(authority_id(again.der()), Some(id.clone()));
        assert_eq!(
            authority_id_of_public_key(&rcgen::PublicKeyData::subject_public_key_info(&key)),
            id
        );
        assert_eq!(authority_id(b"not a certificate"), None);
    }
}
