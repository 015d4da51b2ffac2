//! Trust bundles: the root certificates of one trust domain, and PEM reading and writing.

use rustls_pki_types::CertificateDer;

use crate::{
    spiffe_id::TrustDomain,
    svid::{SvidError, check_signing_cert},
};

const CERTIFICATE_LABEL: &str = "CERTIFICATE";

/// The root certificates of one trust domain.
///
/// Every root has passed [`check_signing_cert`](crate::check_signing_cert), and none names a
/// different trust domain in its URI SAN.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
}

/// Why a trust bundle or a PEM file of certificates was refused.
///
/// Certificates are numbered from 1, in the order they were given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The PEM text is malformed.
    #[error("PEM text cannot be read: {reason}")]
    Pem {
        /// What is wrong with the PEM framing or its base64.
        reason: String,
    },

    /// A PEM section holds something other than a certificate, such as a private key.
    #[error(
        "PEM section {index} is labelled {label:?}, not \"CERTIFICATE\"; \
         a trust bundle must hold only certificates"
    )]
    NotACertificate {
        /// The section's position, from 1.
        index: usize,
        /// The section's label, such as `PRIVATE KEY`.
        label: String,
    },

    /// The PEM text holds no certificate at all.
    #[error("no certificate found; expected one or more \"-----BEGIN CERTIFICATE-----\" sections")]
    NoCertificates,

    /// A trust bundle was built from an empty list of roots.
    #[error("trust bundle has no roots; it needs at least one CA certificate")]
    Empty,

    /// A certificate cannot serve as a root of trust.
    #[error("certificate {index} cannot be a trust bundle root: {error}")]
    InvalidRoot {
        /// The certificate's position, from 1.
        index: usize,
        /// What is wrong with it.
        error: SvidError,
    },

    /// A root names a different trust domain than the bundle's.
    #[error(
        "certificate {index} belongs to trust domain \"{found}\", \
         but the bundle is for \"{expected}\""
    )]
    WrongTrustDomain {
        /// The certificate's position, from 1.
        index: usize,
        /// The trust domain in the certificate's URI SAN.
        found: TrustDomain,
        /// The trust domain of the bundle.
        expected: TrustDomain,
    },

    /// No trust domain was given, and no root carries a SPIFFE ID to infer it from.
    #[error(
        "cannot tell the bundle's trust domain: no root has a SPIFFE ID URI SAN; \
         pass the trust domain explicitly"
    )]
    UnknownTrustDomain,
}

// === impl TrustBundle ===

impl TrustBundle {
    /// Builds a bundle of `roots` for `trust_domain`.
    ///
    /// Each root must be a valid signing certificate, and a root with a SPIFFE ID URI SAN must
    /// name `trust_domain`.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        Self::build(Some(trust_domain), roots)
    }

    /// Reads a bundle from PEM text holding only certificates.
    ///
    /// With `expected` set, every root naming a trust domain must name that one. Without it,
    /// the trust domain is taken from the roots' SPIFFE ID URI SANs, and at least one root
    /// must carry one.
    pub fn from_pem(pem: &[u8], expected: Option<&TrustDomain>) -> Result<Self, BundleError> {
        Self::build(expected.cloned(), parse_pem_certificates(pem)?)
    }

    /// Checks every root; without a trust domain, takes the first one a root names.
    fn build(
        trust_domain: Option<TrustDomain>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        let named = root_trust_domains(&roots)?;
        let trust_domain = match trust_domain {
            Some(trust_domain) => trust_domain,
            None => match named.first() {
                Some((_, trust_domain)) => trust_domain.clone(),
                None => return Err(BundleError::UnknownTrustDomain),
            },
        };
        for (index, found) in named {
            if found != trust_domain {
                return Err(BundleError::WrongTrustDomain {
                    index,
                    found,
                    expected: trust_domain,
                });
            }
        }
        Ok(Self {
            trust_domain,
            roots,
        })
    }

    /// The trust domain whose certificates these roots sign.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificates, in the order they were given.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as PEM text, one `CERTIFICATE` section each, with `\n` line endings.
    pub fn to_pem(&self) -> String {
        let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        self.roots
            .iter()
            .map(|root| {
                pem::encode_config(&pem::Pem::new(CERTIFICATE_LABEL, root.to_vec()), config)
            })
            .collect()
    }
}

/// Checks every root and returns the trust domains they name, with their 1-based positions.
fn root_trust_domains(
    roots: &[CertificateDer<'static>],
) -> Result<Vec<(usize, TrustDomain)>, BundleError> {
    let mut named = Vec::new();
    for (index, root) in (1..).zip(roots) {
        let id =
            check_signing_cert(root).map_err(|error| BundleError::InvalidRoot { index, error })?;
        if let Some(id) = id {
            named.push((index, id.trust_domain().clone()));
        }
    }
    Ok(named)
}

/// Reads the certificates from PEM text, in order.
///
/// Every section must be a `CERTIFICATE` (a private key or anything else is an error, so a key
/// pasted into the wrong file is caught), and there must be at least one. The certificates are
/// not parsed: that is left to whoever uses them.
pub fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    let sections = pem::parse_many(pem).map_err(|e| BundleError::Pem {
        reason: e.to_string(),
    })?;
    // The pem crate drops a last section that never ends instead of reporting it; count the
    // BEGIN markers so that a truncated file is an error, not a shorter bundle.
    let begins = count_occurrences(pem, b"-----BEGIN ");
    if begins != sections.len() {
        return Err(BundleError::Pem {
            reason: format!(
                "PEM section {} has no matching \"-----END\" line",
                sections.len() + 1
            ),
        });
    }
    if sections.is_empty() {
        return Err(BundleError::NoCertificates);
    }
    sections
        .into_iter()
        .zip(1..)
        .map(|(section, index)| {
            if section.tag() == CERTIFICATE_LABEL {
                Ok(CertificateDer::from(section.into_contents()))
            } else {
                Err(BundleError::NotACertificate {
                    index,
                    label: section.tag().to_owned(),
                })
            }
        })
        .collect()
}

fn count_occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TestCa, leaf_params, self_signed, signing_params};

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn key_pem() -> String {
        rcgen::KeyPair::generate().unwrap().serialize_pem()
    }

    #[test]
    fn reads_a_bundle_and_writes_it_back() {
        let a = TestCa::new("spiffe://cluster.local");
        let b = TestCa::new(None);
        let pem = format!("{}{}", a.pem(), b.pem());

        let bundle = TrustBundle::from_pem(pem.as_bytes(), Some(&td("cluster.local"))).unwrap();
        assert_eq!(bundle.trust_domain(), &td("cluster.local"));
        assert_eq!(bundle.roots(), [a.der().clone(), b.der().clone()]);

        let again = TrustBundle::from_pem(bundle.to_pem().as_bytes(), None).unwrap();
        assert_eq!(again.roots(), bundle.roots());
        assert!(bundle.to_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(!bundle.to_pem().contains('\r'));
    }

    #[test]
    fn infers_the_trust_domain() {
        // The first root has no SPIFFE ID; the second names the trust domain.
        let pem = format!(
            "{}{}",
            TestCa::new(None).pem(),
            TestCa::new("spiffe://cluster.local").pem()
        );
        let bundle = TrustBundle::from_pem(pem.as_bytes(), None).unwrap();
        assert_eq!(bundle.trust_domain(), &td("cluster.local"));
        assert_eq!(bundle.roots().len(), 2);
    }

    #[test]
    fn cannot_infer_without_a_spiffe_id() {
        let pem = TestCa::new(None).pem();
        let err = TrustBundle::from_pem(pem.as_bytes(), None).unwrap_err();
        assert_eq!(err, BundleError::UnknownTrustDomain);
        assert!(err.to_string().contains("pass the trust domain explicitly"));
        // Given explicitly, the same root is fine.
        TrustBundle::from_pem(pem.as_bytes(), Some(&td("cluster.local"))).unwrap();
    }

    #[test]
    fn refuses_a_root_of_another_trust_domain() {
        let pem = format!(
            "{}{}",
            TestCa::new("spiffe://cluster.local").pem(),
            TestCa::new("spiffe://other.local").pem()
        );
        let expected = BundleError::WrongTrustDomain {
            index: 2,
            found: td("other.local"),
            expected: td("cluster.local"),
        };
        // Inferred from the first root...
        assert_eq!(
            TrustBundle::from_pem(pem.as_bytes(), None).unwrap_err(),
            expected
        );
        // ...or given.
        assert_eq!(
            TrustBundle::from_pem(pem.as_bytes(), Some(&td("cluster.local"))).unwrap_err(),
            expected
        );
        assert_eq!(
            expected.to_string(),
            "certificate 2 belongs to trust domain \"other.local\", but the bundle is for \
             \"cluster.local\""
        );
    }

    #[test]
    fn refuses_a_private_key() {
        let pem = format!(
            "{}{}",
            TestCa::new("spiffe://cluster.local").pem(),
            key_pem()
        );
        let err = TrustBundle::from_pem(pem.as_bytes(), None).unwrap_err();
        assert_eq!(
            err,
            BundleError::NotACertificate {
                index: 2,
                label: "PRIVATE KEY".to_owned()
            }
        );
        assert!(
            err.to_string()
                .ends_with("a trust bundle must hold only certificates"),
            "{err}"
        );
        // Labels rustls-pki-types does not know are caught too.
        let encrypted = key_pem().replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY");
        assert!(matches!(
            parse_pem_certificates(encrypted.as_bytes()),
            Err(BundleError::NotACertificate { index: 1, .. })
        ));
    }

    #[test]
    fn refuses_an_empty_bundle() {
        assert_eq!(
            TrustBundle::from_pem(b"", None).unwrap_err(),
            BundleError::NoCertificates
        );
        assert_eq!(
            TrustBundle::from_pem(b"just some text\n", Some(&td("a"))).unwrap_err(),
            BundleError::NoCertificates
        );
        assert_eq!(
            TrustBundle::new(td("a"), Vec::new()).unwrap_err(),
            BundleError::Empty
        );
    }

    #[test]
    fn refuses_a_root_that_cannot_sign() {
        let ca = TestCa::new("spiffe://cluster.local");
        let leaf = ca.sign(&leaf_params(&["spiffe://cluster.local/ns/x"]));
        let err = TrustBundle::new(td("cluster.local"), vec![ca.der().clone(), leaf]).unwrap_err();
        assert_eq!(
            err,
            BundleError::InvalidRoot {
                index: 2,
                error: SvidError::SigningNotCa
            }
        );
        assert!(
            err.to_string()
                .starts_with("certificate 2 cannot be a trust bundle root: ")
        );

        let mut params = signing_params(None);
        params.key_usages = vec![rcgen::KeyUsagePurpose::CrlSign];
        let err = TrustBundle::new(td("a"), vec![self_signed(&params)]).unwrap_err();
        assert_eq!(
            err,
            BundleError::InvalidRoot {
                index: 1,
                error: SvidError::SigningWithoutKeyCertSign
            }
        );
    }

    #[test]
    fn refuses_malformed_pem() {
        let whole = TestCa::new(None).pem();
        // Cut inside the last section: the END line is gone.
        let truncated = format!("{whole}{}", &whole[..whole.len() / 2]);
        assert_eq!(
            parse_pem_certificates(truncated.as_bytes()).unwrap_err(),
            BundleError::Pem {
                reason: "PEM section 2 has no matching \"-----END\" line".to_owned()
            }
        );
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_pem_certificates(bad_base64.as_bytes()),
            Err(BundleError::Pem { .. })
        ));
        // Well-formed PEM whose contents are not a certificate.
        let not_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            TrustBundle::from_pem(not_der.as_bytes(), None),
            Err(BundleError::InvalidRoot {
                index: 1,
                error: SvidError::Parse { .. }
            })
        ));
    }

    #[test]
    fn reads_a_chain_for_the_cli() {
        let ca = TestCa::new("spiffe://cluster.local");
        let leaf = ca.sign(&leaf_params(&["spiffe://cluster.local/ns/x"]));
        let leaf_pem = pem::encode(&pem::Pem::new("CERTIFICATE", leaf.to_vec()));
        // CRLF line endings and text around the sections, as openssl and editors leave them.
        let chain = format!("subject=CN=workload\r\n{leaf_pem}\r\n{}", ca.pem());
        let certs = parse_pem_certificates(chain.as_bytes()).unwrap();
        assert_eq!(certs, [leaf, ca.der().clone()]);
    }
}
