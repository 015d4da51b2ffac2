//! A plain-data view of a certificate, for people to read.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use x509_parser::{
    certificate::X509Certificate, extensions::GeneralName, public_key::PublicKey,
    x509::SubjectPublicKeyInfo,
};

use crate::{
    spiffe_id::SpiffeId,
    svid::{SvidError, basic_constraints_ca, general_names, parse_certificate, uri_sans},
};

/// What a certificate says, in plain fields a CLI can print or serialize.
///
/// Building a summary checks nothing beyond the DER being a certificate: use
/// [`check_leaf_svid`](crate::check_leaf_svid) to judge it.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateSummary {
    /// The subject's distinguished name, such as `CN=workload`.
    pub subject: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// The serial number in lowercase hex, without colons or a leading sign byte.
    pub serial_hex: String,
    /// The start of the validity period, in Unix seconds.
    pub not_before: i64,
    /// The end of the validity period, in Unix seconds.
    pub not_after: i64,
    /// The URI SANs, in certificate order.
    pub uri_sans: Vec<String>,
    /// The DNS SANs, in certificate order.
    pub dns_sans: Vec<String>,
    /// The IP address SANs, in certificate order.
    pub ip_sans: Vec<String>,
    /// Whether basicConstraints says CA=true.
    pub is_ca: bool,
    /// The key type in words: `ECDSA P-256`, `Ed25519`, `RSA 2048`, or the OID when unknown.
    pub key_algorithm: String,
    /// The signature algorithm in words, such as `ECDSA with SHA-256`, or the OID when unknown.
    pub signature_algorithm: String,
    /// The SPIFFE ID, when the certificate has exactly one URI SAN and it is a SPIFFE ID.
    pub spiffe_id: Option<SpiffeId>,
    /// For a CA certificate, the ID a hush CA names it by
    /// ([`authority_id`](crate::authority_id)): what `hush ca authorities` lists and
    /// `hush ca taint` or `revoke` take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority_id: Option<String>,
}

// === impl CertificateSummary ===

impl CertificateSummary {
    /// Summarizes a DER-encoded certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, SvidError> {
        let cert = parse_certificate(der)?;

        let uri_sans: Vec<String> = uri_sans(&cert)?.into_iter().map(String::from).collect();
        let spiffe_id = match uri_sans.as_slice() {
            [uri] => SpiffeId::new(uri).ok(),
            _ => None,
        };
        let mut dns_sans = Vec::new();
        let mut ip_sans = Vec::new();
        for name in general_names(&cert)? {
            match name {
                GeneralName::DNSName(dns) => dns_sans.push((*dns).to_owned()),
                GeneralName::IPAddress(ip) => ip_sans.push(ip_to_string(ip)),
                _ => {}
            }
        }

        let is_ca = basic_constraints_ca(&cert)?.unwrap_or(false);
        Ok(Self {
            authority_id: is_ca.then(|| crate::authority_id_of_public_key(cert.public_key().raw)),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial_hex: serial_hex(cert.raw_serial()),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            uri_sans,
            dns_sans,
            ip_sans,
            is_ca,
            key_algorithm: key_algorithm(cert.public_key()),
            signature_algorithm: signature_algorithm(&cert),
            spiffe_id,
        })
    }
}

/// A serial number (big-endian bytes, as a certificate or an attestation record holds it) as
/// lowercase hex without the leading zero bytes DER adds to keep the integer positive (`00`
/// for zero). The deny-list keeps serials in this form too, so what `hush cert inspect` prints
/// is what an operator revokes.
pub fn serial_hex(raw: &[u8]) -> String {
    let significant = match raw.iter().position(|&b| b != 0) {
        Some(start) => &raw[start..],
        // Zero, however many bytes it is written with.
        None => &[0],
    };
    significant.iter().map(|b| format!("{b:02x}")).collect()
}

fn ip_to_string(raw: &[u8]) -> String {
    match raw {
        &[a, b, c, d] => Ipv4Addr::new(a, b, c, d).to_string(),
        _ => match <[u8; 16]>::try_from(raw) {
            Ok(v6) => Ipv6Addr::from(v6).to_string(),
            // Not an address at all: show the bytes rather than hide the SAN.
            Err(_) => raw.iter().map(|b| format!("{b:02x}")).collect(),
        },
    }
}

fn key_algorithm(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let algorithm = spki.algorithm.algorithm.to_id_string();
    match algorithm.as_str() {
        // id-ecPublicKey: the curve is named in the parameters.
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => "ECDSA P-256".to_owned(),
                Some("1.3.132.0.34") => "ECDSA P-384".to_owned(),
                Some("1.3.132.0.35") => "ECDSA P-521".to_owned(),
                Some(other) => format!("ECDSA on curve {other}"),
                None => "ECDSA on an unnamed curve".to_owned(),
            }
        }
        "1.3.101.112" => "Ed25519".to_owned(),
        "1.3.101.113" => "Ed448".to_owned(),
        "1.2.840.113549.1.1.1" => match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa_modulus_bits(rsa.modulus)),
            _ => "RSA".to_owned(),
        },
        _ => algorithm,
    }
}

/// The bit length of an RSA modulus (big-endian, as in the key's DER). x509-parser's own
/// `key_size` assumes a leading zero byte and misreports some keys.
pub fn rsa_modulus_bits(modulus: &[u8]) -> usize {
    match modulus.iter().position(|&b| b != 0) {
        Some(first) => (modulus.len() - first) * 8 - modulus[first].leading_zeros() as usize,
        None => 0,
    }
}

fn signature_algorithm(cert: &X509Certificate<'_>) -> String {
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    let words = match oid.as_str() {
        "1.2.840.10045.4.3.2" => "ECDSA with SHA-256",
        "1.2.840.10045.4.3.3" => "ECDSA with SHA-384",
        "1.2.840.10045.4.3.4" => "ECDSA with SHA-512",
        "1.3.101.112" => "Ed25519",
        "1.3.101.113" => "Ed448",
        "1.2.840.113549.1.1.11" => "RSA PKCS#1 v1.5 with SHA-256",
        "1.2.840.113549.1.1.12" => "RSA PKCS#1 v1.5 with SHA-384",
        "1.2.840.113549.1.1.13" => "RSA PKCS#1 v1.5 with SHA-512",
        "1.2.840.113549.1.1.5" => "RSA PKCS#1 v1.5 with SHA-1",
        "1.2.840.113549.1.1.10" => "RSA-PSS",
        _ => return oid,
    };
    words.to_owned()
}

#[cfg(test)]
mod tests {
    use rcgen::{KeyPair, SanType, SerialNumber};

    use super::*;
    use crate::test_util::{TestCa, leaf_params, self_signed, signing_params, uri_san};

    #[test]
    fn summarizes_a_leaf() {
        let ca = TestCa::new("spiffe://cluster.local");
        let mut params = leaf_params(&["spiffe://cluster.local/ns/shop/sa/frontend"]);
        params.serial_number = Some(SerialNumber::from_slice(&[0x00, 0x9a, 0x01]));
        params.not_before = rcgen::date_time_ymd(2030, 1, 2);
        params.not_after = rcgen::date_time_ymd(2030, 1, 3);
        params
            .subject_alt_names
            .push(SanType::DnsName("frontend.shop".try_into().unwrap()));
        params
            .subject_alt_names
            .push(SanType::IpAddress([10, 0, 0, 1].into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress("fd00::1".parse().unwrap()));
        let summary = CertificateSummary::from_der(&ca.sign(&params)).unwrap();

        assert_eq!(summary.subject, "CN=workload");
        assert_eq!(summary.issuer, "CN=hush test root");
        assert_eq!(summary.serial_hex, "9a01");
        assert_eq!(summary.not_before, 1_893_542_400);
        assert_eq!(summary.not_after, 1_893_542_400 + 86_400);
        assert_eq!(
            summary.uri_sans,
            ["spiffe://cluster.local/ns/shop/sa/frontend"]
        );
        assert_eq!(summary.dns_sans, ["frontend.shop"]);
        assert_eq!(summary.ip_sans, ["10.0.0.1", "fd00::1"]);
        assert!(!summary.is_ca);
        assert_eq!(summary.key_algorithm, "ECDSA P-256");
        assert_eq!(summary.signature_algorithm, "ECDSA with SHA-256");
        assert_eq!(
            summary.spiffe_id.unwrap().as_str(),
            "spiffe://cluster.local/ns/shop/sa/frontend"
        );
    }

    #[test]
    fn summarizes_a_root() {
        let ca = TestCa::new("spiffe://cluster.local");
        let summary = CertificateSummary::from_der(ca.der()).unwrap();
        assert!(summary.is_ca);
        assert_eq!(summary.subject, summary.issuer);
        assert_eq!(
            summary.spiffe_id.unwrap().as_str(),
            "spiffe://cluster.local"
        );
    }

    #[test]
    fn spiffe_id_only_when_exactly_one_uri_san_parses() {
        let mut params = signing_params(None);
        let summary = CertificateSummary::from_der(&self_signed(&params)).unwrap();
        assert_eq!(summary.spiffe_id, None);

        params.subject_alt_names = vec![uri_san("https://example.com/")];
        let summary = CertificateSummary::from_der(&self_signed(&params)).unwrap();
        assert_eq!(summary.spiffe_id, None);
        assert_eq!(summary.uri_sans, ["https://example.com/"]);

        params.subject_alt_names = vec![uri_san("spiffe://a"), uri_san("spiffe://b")];
        let summary = CertificateSummary::from_der(&self_signed(&params)).unwrap();
        assert_eq!(summary.spiffe_id, None);
        assert_eq!(summary.uri_sans.len(), 2);
    }

    #[test]
    fn names_key_and_signature_algorithms() {
        let rows: [(&'static rcgen::SignatureAlgorithm, &str, &str); 4] = [
            (
                &rcgen::PKCS_ECDSA_P384_SHA384,
                "ECDSA P-384",
                "ECDSA with SHA-384",
            ),
            (
                &rcgen::PKCS_ECDSA_P256_SHA256,
                "ECDSA P-256",
                "ECDSA with SHA-256",
            ),
            (&rcgen::PKCS_ED25519, "Ed25519", "Ed25519"),
            (
                &rcgen::PKCS_RSA_SHA256,
                "RSA 2048",
                "RSA PKCS#1 v1.5 with SHA-256",
            ),
        ];
        for (alg, key, signature) in rows {
            let key_pair = if alg == &rcgen::PKCS_RSA_SHA256 {
                KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048).unwrap()
            } else {
                KeyPair::generate_for(alg).unwrap()
            };
            let cert = signing_params(None).self_signed(&key_pair).unwrap();
            let summary = CertificateSummary::from_der(cert.der()).unwrap();
            assert_eq!(summary.key_algorithm, key, "{alg:?}");
            assert_eq!(summary.signature_algorithm, signature, "{alg:?}");
        }
    }

    #[test]
    fn serializes_for_json_output() {
        let ca = TestCa::new("spiffe://cluster.local");
        let summary = CertificateSummary::from_der(ca.der()).unwrap();
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["spiffe_id"], "spiffe://cluster.local");
        assert_eq!(json["is_ca"], true);
    }

    #[test]
    fn helpers() {
        assert_eq!(serial_hex(&[0x00, 0x80]), "80");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[0x00, 0x00]), "00");
        assert_eq!(serial_hex(&[]), "00");
        assert_eq!(serial_hex(&[0x01, 0x00]), "0100");
        assert_eq!(rsa_modulus_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(rsa_modulus_bits(&[0x7f, 0x00]), 15);
        assert_eq!(ip_to_string(&[1, 2, 3]), "010203");
    }
}
