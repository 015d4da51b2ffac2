//! The federated trust domains' bundles that `GetTrustBundle` carries, in hush's own types.

use hush_identity::{BundleError, TrustBundle, TrustDomain};
use hush_proto::hush::ca::v1 as pb;
use rustls_pki_types::CertificateDer;

/// The bundle of one trust domain the CA federates with, as the CA last fetched it.
#[derive(Clone, Debug)]
pub struct FederatedBundle {
    /// The federated trust domain.
    pub trust_domain: TrustDomain,
    /// Its X.509 roots, checked by the trust bundle rules for that trust domain (a root naming
    /// another trust domain refuses the entry).
    pub roots: TrustBundle,
    /// Its JWT-SVID keys, a JWK Set in JSON; empty when it publishes none.
    pub jwt_keys: Vec<u8>,
    /// The bundle's `spiffe_sequence` (0 when it had none).
    pub sequence: u64,
    /// When the CA fetched it (Unix seconds).
    pub fetched_at_unix: i64,
}

/// Why the federated bundles of a `GetTrustBundle` answer were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FederatedBundleError {
    /// An entry's trust domain is not a valid name.
    #[error("federated bundle {name:?}: not a trust domain name")]
    TrustDomain {
        /// What was sent.
        name: String,
    },
    /// An entry names the CA's own trust domain, which is never federated.
    #[error("federated bundle {0}: that is the CA's own trust domain")]
    OwnTrustDomain(TrustDomain),
    /// Two entries name the same trust domain.
    #[error("federated bundle {0} is sent twice")]
    Duplicate(TrustDomain),
    /// An entry's roots cannot be trusted for its trust domain.
    #[error("federated bundle {trust_domain}: {error}")]
    Roots {
        /// The entry's trust domain.
        trust_domain: TrustDomain,
        /// What the trust bundle rules refused.
        error: BundleError,
    },
}

/// The federated bundles of `response`, each checked; one that cannot be read refuses them all,
/// rather than trusting half of what the CA meant to say.
pub fn federated_bundles(
    response: &pb::GetTrustBundleResponse,
) -> Result<Vec<FederatedBundle>, FederatedBundleError> {
    let own = TrustDomain::new(&response.trust_domain).ok();
    let mut bundles: Vec<FederatedBundle> = Vec::with_capacity(response.federated.len());
    for sent in &response.federated {
        let trust_domain = TrustDomain::new(&sent.trust_domain).map_err(|_| {
            FederatedBundleError::TrustDomain {
                name: sent.trust_domain.chars().take(255).collect(),
            }
        })?;
        if own.as_ref() == Some(&trust_domain) {
            return Err(FederatedBundleError::OwnTrustDomain(trust_domain));
        }
        if bundles.iter().any(|b| b.trust_domain == trust_domain) {
            return Err(FederatedBundleError::Duplicate(trust_domain));
        }
        let roots = sent
            .roots
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect();
        let roots = TrustBundle::new(trust_domain.clone(), roots).map_err(|error| {
            FederatedBundleError::Roots {
                trust_domain: trust_domain.clone(),
                error,
            }
        })?;
        bundles.push(FederatedBundle {
            trust_domain,
            roots,
            jwt_keys: sent.jwt_keys.clone(),
            sequence: sent.sequence,
            fetched_at_unix: sent.fetched_at_unix,
        });
    }
    Ok(bundles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(td: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.subject_alt_names = vec![rcgen::SanType::URI(
            format!("spiffe://{td}").try_into().unwrap(),
        )];
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn response(federated: Vec<pb::FederatedBundle>) -> pb::GetTrustBundleResponse {
        pb::GetTrustBundleResponse {
            trust_domain: "own.example".into(),
            federated,
            ..Default::default()
        }
    }

    fn entry(td: &str, roots: Vec<Vec<u8>>) -> pb::FederatedBundle {
        pb::FederatedBundle {
            trust_domain: td.into(),
            roots,
            jwt_keys: b"{\"keys\":[]}".to_vec(),
            sequence: 4,
            fetched_at_unix: 1_700_000_000,
        }
    }

    #[test]
    fn reads_the_federated_bundles() {
        let bundles = federated_bundles(&response(vec![entry(
            "partner.example",
            vec![root("partner.example")],
        )]))
        .unwrap();
        assert_eq!(bundles.len(), 1);
        assert_eq!(bundles[0].trust_domain.as_str(), "partner.example");
        assert_eq!(bundles[0].roots.roots().len(), 1);
        assert_eq!(bundles[0].sequence, 4);
        assert_eq!(bundles[0].fetched_at_unix, 1_700_000_000);
        assert!(federated_bundles(&response(Vec::new())).unwrap().is_empty());
    }

    #[test]
    fn refuses_what_cannot_be_trusted() {
        let good = || entry("partner.example", vec![root("partner.example")]);
        let refuse = |entries| federated_bundles(&response(entries)).unwrap_err();
        assert!(matches!(
            refuse(vec![entry("partner.example", vec![root("other.example")])]),
            FederatedBundleError::Roots { .. }
        ));
        assert!(matches!(
            refuse(vec![entry("partner.example", Vec::new())]),
            FederatedBundleError::Roots { .. }
        ));
        assert!(matches!(
            refuse(vec![good(), good()]),
            FederatedBundleError::Duplicate(_)
        ));
        assert!(matches!(
            refuse(vec![entry("own.example", vec![root("own.example")])]),
            FederatedBundleError::OwnTrustDomain(_)
        ));
        assert!(matches!(
            refuse(vec![entry("Not A Domain", Vec::new())]),
            FederatedBundleError::TrustDomain { .. }
        ));
    }
}
