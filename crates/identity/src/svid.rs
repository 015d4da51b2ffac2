//! The X.509-SVID rules: what a SPIFFE leaf certificate and a signing (CA) certificate must
//! say, checked on the certificate alone. Chain building and signatures are the verifier's job.

use std::borrow::Cow;

use x509_parser::{
    certificate::X509Certificate,
    extensions::{GeneralName, KeyUsage, ParsedExtension},
    nom,
    oid_registry::{OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE},
    prelude::FromDer,
};

use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// Why a certificate is not a valid X.509-SVID leaf or signing certificate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The bytes are not a DER-encoded X.509 certificate.
    #[error("certificate cannot be parsed as DER X.509: {reason}")]
    Parse {
        /// What the parser reported.
        reason: String,
    },

    /// An extension hush needs is malformed or appears twice.
    #[error("certificate's {extension} extension cannot be read: {reason}")]
    Extension {
        /// The extension's name, such as `keyUsage`.
        extension: &'static str,
        /// What the parser reported.
        reason: String,
    },

    /// The certificate has no URI SAN, so it names no SPIFFE ID.
    #[error(
        "certificate has no URI SAN; an X.509-SVID must have exactly one, holding its SPIFFE ID"
    )]
    NoUriSan,

    /// The certificate has more than one URI SAN.
    #[error("certificate has {count} URI SANs; an X.509-SVID must have exactly one")]
    TooManyUriSans {
        /// How many URI SANs it has.
        count: usize,
    },

    /// The URI SAN is not a valid SPIFFE ID.
    #[error("certificate's URI SAN {uri:?} is not a valid SPIFFE ID: {error}")]
    InvalidSpiffeId {
        /// The URI SAN as found in the certificate.
        uri: String,
        /// Which SPIFFE-ID rule it breaks.
        error: SpiffeIdError,
    },

    /// A leaf certificate has no basicConstraints extension.
    #[error("leaf has no basicConstraints extension; an X.509-SVID leaf must say CA=false")]
    LeafWithoutBasicConstraints,

    /// A leaf certificate says it is a CA.
    #[error(
        "leaf certificate is a CA (basicConstraints CA=true); an X.509-SVID leaf must say CA=false"
    )]
    LeafIsCa,

    /// A signing certificate has no basicConstraints extension.
    #[error(
        "signing certificate has no basicConstraints extension; \
         a certificate that signs X.509-SVIDs must say CA=true"
    )]
    SigningWithoutBasicConstraints,

    /// A signing certificate says it is not a CA.
    #[error(
        "signing certificate is not a CA (basicConstraints CA=false); \
         a certificate that signs X.509-SVIDs must say CA=true"
    )]
    SigningNotCa,

    /// The certificate has no keyUsage extension.
    #[error("certificate has no keyUsage extension; an X.509-SVID must have one, marked critical")]
    NoKeyUsage,

    /// The keyUsage extension is present but not critical.
    #[error("keyUsage extension is not marked critical; an X.509-SVID must mark it critical")]
    KeyUsageNotCritical,

    /// A leaf's keyUsage lacks digitalSignature, so it cannot sign TLS handshakes.
    #[error(
        "leaf keyUsage does not include digitalSignature; \
         an X.509-SVID leaf needs it to sign TLS handshakes"
    )]
    LeafWithoutDigitalSignature,

    /// A leaf's keyUsage lets it sign certificates or CRLs.
    #[error(
        "leaf keyUsage includes {usage}; an X.509-SVID leaf must not sign certificates or CRLs"
    )]
    LeafCanSign {
        /// The forbidden usage: `keyCertSign` or `cRLSign`.
        usage: &'static str,
    },

    /// A signing certificate's keyUsage lacks keyCertSign.
    #[error(
        "signing certificate keyUsage does not include keyCertSign; \
         a CA needs it to sign certificates"
    )]
    SigningWithoutKeyCertSign,

    /// A leaf's SPIFFE ID names a whole trust domain instead of a workload.
    #[error(
        "leaf certificate's SPIFFE ID \"{id}\" has no path; \
         an X.509-SVID leaf must name a workload, like \"{id}/ns/default/sa/my-app\""
    )]
    LeafIdWithoutPath {
        /// The SPIFFE ID found in the URI SAN.
        id: SpiffeId,
    },

    /// A signing certificate's SPIFFE ID has a path.
    #[error(
        "signing certificate's SPIFFE ID \"{id}\" has a path; \
         a signing certificate may only name its trust domain, like \"spiffe://{}\"",
        id.trust_domain()
    )]
    SigningIdHasPath {
        /// The SPIFFE ID found in the URI SAN.
        id: SpiffeId,
    },
}

/// Checks that `der` is an X.509-SVID leaf and returns its SPIFFE ID.
///
/// The leaf must have exactly one URI SAN holding a valid SPIFFE ID (DNS and IP SANs may sit
/// beside it), basicConstraints with CA=false, and a critical keyUsage with digitalSignature
/// and neither keyCertSign nor cRLSign.
///
/// This checks what the certificate says, not who signed it: verify the chain separately.
pub fn check_leaf_svid(der: &[u8]) -> Result<SpiffeId, SvidError> {
    let cert = parse_certificate(der)?;

    match basic_constraints_ca(&cert)? {
        None => return Err(SvidError::LeafWithoutBasicConstraints),
        Some(true) => return Err(SvidError::LeafIsCa),
        Some(false) => {}
    }

    let key_usage = critical_key_usage(&cert)?;
    check_leaf_key_usage(key_usage)?;

    match single_spiffe_id(&cert)? {
        Some(id) if id.path().is_empty() => Err(SvidError::LeafIdWithoutPath { id }),
        Some(id) => Ok(id),
        None => Err(SvidError::NoUriSan),
    }
}

/// Checks that `der` may sign X.509-SVIDs, and returns the trust domain ID it names, if any.
///
/// The certificate must have basicConstraints with CA=true and a critical keyUsage with
/// keyCertSign. A URI SAN is optional; if present there must be exactly one and it must be a
/// SPIFFE ID with an empty path, such as `spiffe://cluster.local`.
pub fn check_signing_cert(der: &[u8]) -> Result<Option<SpiffeId>, SvidError> {
    let cert = parse_certificate(der)?;

    match basic_constraints_ca(&cert)? {
        None => return Err(SvidError::SigningWithoutBasicConstraints),
        Some(false) => return Err(SvidError::SigningNotCa),
        Some(true) => {}
    }

    let key_usage = critical_key_usage(&cert)?;
    if !key_usage.key_cert_sign() {
        return Err(SvidError::SigningWithoutKeyCertSign);
    }

    let id = single_spiffe_id(&cert)?;
    if let Some(id) = &id
        && !id.path().is_empty()
    {
        return Err(SvidError::SigningIdHasPath { id: id.clone() });
    }
    Ok(id)
}

/// Parses one DER certificate, refusing trailing bytes.
pub(crate) fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(SvidError::Parse {
            reason: format!(
                "extra data after the end of the certificate ({} bytes)",
                rest.len()
            ),
        }),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(SvidError::Parse {
            reason: e.to_string(),
        }),
        Err(nom::Err::Incomplete(_)) => Err(SvidError::Parse {
            reason: "the data ends before the certificate does".to_owned(),
        }),
    }
}

/// The URI SANs of `cert`, in order. A URI SAN that is not valid UTF-8 is still counted (and
/// shown lossily) so that it cannot hide from the "exactly one" rule.
pub(crate) fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<Cow<'a, str>>, SvidError> {
    Ok(general_names(cert)?
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(Cow::Borrowed(*uri)),
            GeneralName::Invalid(tag, raw) if tag.0 == URI_SAN_TAG => {
                Some(String::from_utf8_lossy(raw))
            }
            _ => None,
        })
        .collect())
}

/// The context-specific tag of a uniformResourceIdentifier GeneralName (RFC 5280).
const URI_SAN_TAG: u32 = 6;

pub(crate) fn general_names<'a>(
    cert: &'a X509Certificate<'_>,
) -> Result<&'a [GeneralName<'a>], SvidError> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => Ok(&san.value.general_names),
        Ok(None) => Ok(&[]),
        Err(e) => Err(SvidError::Extension {
            extension: "subjectAltName",
            reason: e.to_string(),
        }),
    }
}

/// The one SPIFFE ID of `cert`: `None` with no URI SAN, an error with more than one or with
/// one that is not a SPIFFE ID.
fn single_spiffe_id(cert: &X509Certificate<'_>) -> Result<Option<SpiffeId>, SvidError> {
    let uris = uri_sans(cert)?;
    match uris.as_slice() {
        [] => Ok(None),
        [uri] => SpiffeId::new(uri)
            .map(Some)
            .map_err(|error| SvidError::InvalidSpiffeId {
                uri: uri.to_string(),
                error,
            }),
        _ => Err(SvidError::TooManyUriSans { count: uris.len() }),
    }
}

/// The CA flag of basicConstraints, or `None` when the extension is absent.
pub(crate) fn basic_constraints_ca(cert: &X509Certificate<'_>) -> Result<Option<bool>, SvidError> {
    const NAME: &str = "basicConstraints";
    match cert.basic_constraints() {
        Ok(Some(bc)) => Ok(Some(bc.value.ca)),
        // x509-parser reports a malformed basicConstraints as absent; look again so that a
        // broken extension is not mistaken for a missing one.
        Ok(None) => match cert.get_extension_unique(&OID_X509_EXT_BASIC_CONSTRAINTS) {
            Ok(Some(ext)) => Err(SvidError::Extension {
                extension: NAME,
                reason: parse_failure(ext.parsed_extension()),
            }),
            _ => Ok(None),
        },
        Err(e) => Err(SvidError::Extension {
            extension: NAME,
            reason: e.to_string(),
        }),
    }
}

/// The keyUsage extension, which must be present and critical.
fn critical_key_usage<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a KeyUsage, SvidError> {
    let key_usage = cert.key_usage().map_err(|e| SvidError::Extension {
        extension: "keyUsage",
        reason: match cert.get_extension_unique(&OID_X509_EXT_KEY_USAGE) {
            Ok(Some(ext)) => parse_failure(ext.parsed_extension()),
            _ => e.to_string(),
        },
    })?;
    let Some(key_usage) = key_usage else {
        return Err(SvidError::NoKeyUsage);
    };
    if !key_usage.critical {
        return Err(SvidError::KeyUsageNotCritical);
    }
    Ok(key_usage.value)
}

/// The keyUsage rules for a leaf, apart from criticality.
fn check_leaf_key_usage(key_usage: &KeyUsage) -> Result<(), SvidError> {
    if !key_usage.digital_signature() {
        return Err(SvidError::LeafWithoutDigitalSignature);
    }
    if key_usage.key_cert_sign() {
        return Err(SvidError::LeafCanSign {
            usage: "keyCertSign",
        });
    }
    if key_usage.crl_sign() {
        return Err(SvidError::LeafCanSign { usage: "cRLSign" });
    }
    Ok(())
}

fn parse_failure(parsed: &ParsedExtension<'_>) -> String {
    match parsed.error() {
        Some(e) => e.to_string(),
        None => "it is malformed".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CustomExtension, IsCa, KeyUsagePurpose};

    use super::*;
    use crate::test_util::{
        TestCa, leaf_params, self_signed, signing_params, uri_san, with_key_usage,
    };

    const LEAF_ID: &str = "spiffe://cluster.local/ns/shop/sa/frontend";

    fn ca() -> TestCa {
        TestCa::new("spiffe://cluster.local")
    }

    #[test]
    fn good_leaf() {
        let mut params = leaf_params(&[LEAF_ID]);
        // DNS and IP SANs may sit beside the one URI SAN.
        params.subject_alt_names.push(rcgen::SanType::DnsName(
            "frontend.shop.svc".try_into().unwrap(),
        ));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([10, 0, 0, 1].into()));
        let der = ca().sign(&params);
        assert_eq!(check_leaf_svid(&der).unwrap().as_str(), LEAF_ID);
    }

    /// Each row: how to spoil a good leaf, and the error that must follow.
    #[test]
    fn bad_leaves() {
        type Spoil = fn(&mut rcgen::CertificateParams);
        let rows: [(&str, Spoil, SvidError); 11] = [
            (
                "a trust-domain ID, no path",
                |p| p.subject_alt_names = vec![uri_san("spiffe://cluster.local")],
                SvidError::LeafIdWithoutPath {
                    id: SpiffeId::new("spiffe://cluster.local").unwrap(),
                },
            ),
            (
                "no URI SAN",
                |p| p.subject_alt_names.clear(),
                SvidError::NoUriSan,
            ),
            (
                "two URI SANs",
                |p| {
                    p.subject_alt_names
                        .push(uri_san("spiffe://cluster.local/other"))
                },
                SvidError::TooManyUriSans { count: 2 },
            ),
            (
                "non-SPIFFE URI",
                |p| p.subject_alt_names = vec![uri_san("https://cluster.local/x")],
                SvidError::InvalidSpiffeId {
                    uri: "https://cluster.local/x".to_owned(),
                    error: SpiffeIdError::WrongScheme {
                        id: "https://cluster.local/x".to_owned(),
                    },
                },
            ),
            (
                "CA=true",
                |p| p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
                SvidError::LeafIsCa,
            ),
            (
                "no basicConstraints",
                |p| p.is_ca = IsCa::NoCa,
                SvidError::LeafWithoutBasicConstraints,
            ),
            (
                "no keyUsage",
                |p| p.key_usages.clear(),
                SvidError::NoKeyUsage,
            ),
            (
                "keyUsage not critical",
                |p| with_key_usage(p, &[KeyUsagePurpose::DigitalSignature], false),
                SvidError::KeyUsageNotCritical,
            ),
            (
                "no digitalSignature",
                |p| p.key_usages = vec![KeyUsagePurpose::KeyEncipherment],
                SvidError::LeafWithoutDigitalSignature,
            ),
            (
                "keyCertSign",
                |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign),
                SvidError::LeafCanSign {
                    usage: "keyCertSign",
                },
            ),
            (
                "cRLSign",
                |p| p.key_usages.push(KeyUsagePurpose::CrlSign),
                SvidError::LeafCanSign { usage: "cRLSign" },
            ),
        ];
        let ca = ca();
        for (name, spoil, expected) in rows {
            let mut params = leaf_params(&[LEAF_ID]);
            spoil(&mut params);
            let der = ca.sign(&params);
            assert_eq!(check_leaf_svid(&der), Err(expected), "leaf with {name}");
        }
    }

    #[test]
    fn good_signing_certs() {
        let with_id = self_signed(&signing_params(Some("spiffe://cluster.local")));
        assert_eq!(
            check_signing_cert(&with_id).unwrap().unwrap().as_str(),
            "spiffe://cluster.local"
        );
        let without_id = self_signed(&signing_params(None));
        assert_eq!(check_signing_cert(&without_id).unwrap(), None);
    }

    /// Each row: how to spoil a good signing certificate, and the error that must follow.
    #[test]
    fn bad_signing_certs() {
        type Spoil = fn(&mut rcgen::CertificateParams);
        let rows: [(&str, Spoil, SvidError); 7] = [
            (
                "CA=false",
                |p| p.is_ca = IsCa::ExplicitNoCa,
                SvidError::SigningNotCa,
            ),
            (
                "no basicConstraints",
                |p| p.is_ca = IsCa::NoCa,
                SvidError::SigningWithoutBasicConstraints,
            ),
            (
                "no keyCertSign",
                |p| p.key_usages = vec![KeyUsagePurpose::CrlSign],
                SvidError::SigningWithoutKeyCertSign,
            ),
            (
                "keyUsage not critical",
                |p| with_key_usage(p, &[KeyUsagePurpose::KeyCertSign], false),
                SvidError::KeyUsageNotCritical,
            ),
            (
                "no keyUsage",
                |p| p.key_usages.clear(),
                SvidError::NoKeyUsage,
            ),
            (
                "two URI SANs",
                |p| {
                    p.subject_alt_names = vec![
                        uri_san("spiffe://cluster.local"),
                        uri_san("spiffe://other.local"),
                    ]
                },
                SvidError::TooManyUriSans { count: 2 },
            ),
            (
                "a workload path",
                |p| p.subject_alt_names = vec![uri_san("spiffe://cluster.local/ns/x")],
                SvidError::SigningIdHasPath {
                    id: SpiffeId::new("spiffe://cluster.local/ns/x").unwrap(),
                },
            ),
        ];
        for (name, spoil, expected) in rows {
            let mut params = signing_params(None);
            spoil(&mut params);
            let der = self_signed(&params);
            assert_eq!(
                check_signing_cert(&der),
                Err(expected),
                "signing cert with {name}"
            );
        }
    }

    #[test]
    fn a_leaf_is_not_a_signing_cert_and_back() {
        let ca = ca();
        let leaf = ca.sign(&leaf_params(&[LEAF_ID]));
        assert_eq!(check_signing_cert(&leaf), Err(SvidError::SigningNotCa));
        assert_eq!(check_leaf_svid(ca.der()), Err(SvidError::LeafIsCa));
    }

    #[test]
    fn malformed_key_usage_is_not_called_missing() {
        let mut params = leaf_params(&[LEAF_ID]);
        params.key_usages.clear();
        // A keyUsage whose value is an INTEGER, not a BIT STRING.
        let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x02, 0x01, 0x05]);
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
        let der = ca().sign(&params);
        assert!(
            matches!(
                check_leaf_svid(&der),
                Err(SvidError::Extension {
                    extension: "keyUsage",
                    ..
                })
            ),
            "{:?}",
            check_leaf_svid(&der)
        );
    }

    #[test]
    fn garbage_is_a_parse_error() {
        let err = check_leaf_svid(b"not a certificate").unwrap_err();
        assert!(matches!(err, SvidError::Parse { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("certificate cannot be parsed"),
            "{err}"
        );

        let mut der = ca().sign(&leaf_params(&[LEAF_ID])).to_vec();
        der.push(0);
        assert_eq!(
            check_leaf_svid(&der),
            Err(SvidError::Parse {
                reason: "extra data after the end of the certificate (1 bytes)".to_owned()
            })
        );
    }

    #[test]
    fn messages_read_well() {
        assert_eq!(
            SvidError::TooManyUriSans { count: 2 }.to_string(),
            "certificate has 2 URI SANs; an X.509-SVID must have exactly one"
        );
        let id = SpiffeId::new("spiffe://cluster.local/ns/x").unwrap();
        assert_eq!(
            SvidError::SigningIdHasPath { id }.to_string(),
            "signing certificate's SPIFFE ID \"spiffe://cluster.local/ns/x\" has a path; a \
             signing certificate may only name its trust domain, like \"spiffe://cluster.local\""
        );
    }
}
