//! The trust bundle and deny-list in force, replaceable while connections are open.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hush_identity::{DenyList, TrustBundle, TrustDomain};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

use crate::TlsConfigError;

/// The roots that verify peers, and the deny-list of certificates the CA has revoked, shared by
/// every verifier of a process and swappable at any time.
///
/// A sidecar starts from the bundle on disk and then follows the CA's: when the CA adds a root
/// (say, ahead of a root rotation), [`Self::replace`] makes every later handshake trust it, on
/// both the inbound and the outbound side, without rebuilding any TLS configuration; when it
/// revokes a certificate, [`Self::update`] makes every later handshake refuse it. Roots and
/// deny-list are swapped together, and handshakes read them once, so a swap never changes a
/// verification half-way. Cloning shares the same store.
#[derive(Clone)]
pub struct TrustStore {
    current: Arc<ArcSwap<Anchors>>,
}

/// One trust bundle and what webpki needs to verify against it, built once per bundle rather
/// than once per handshake, with the deny-list that goes with it.
#[derive(Clone)]
pub(crate) struct Anchors {
    pub(crate) bundle: TrustBundle,
    pub(crate) roots: Arc<RootCertStore>,
    /// webpki's client verifier, requiring a certificate.
    pub(crate) clients_required: Arc<dyn ClientCertVerifier>,
    /// webpki's client verifier, letting clients without a certificate through.
    pub(crate) clients_optional: Arc<dyn ClientCertVerifier>,
    /// Certificates refused although they chain to `roots`. Kept here rather than beside the
    /// roots so that a verification sees a bundle and a deny-list published together.
    pub(crate) deny: Arc<DenyList>,
    /// The trust domains this mesh federates with, each verified against its own roots only.
    /// Empty unless the CA federates (then a handshake reads the peer's SPIFFE ID first, to
    /// pick the roots of the domain it claims).
    pub(crate) federated: Arc<BTreeMap<TrustDomain, Arc<DomainAnchors>>>,
}

/// The roots of one federated trust domain and webpki's verifiers for them.
pub(crate) struct DomainAnchors {
    pub(crate) bundle: TrustBundle,
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) clients_required: Arc<dyn ClientCertVerifier>,
    pub(crate) clients_optional: Arc<dyn ClientCertVerifier>,
}

/// A new trust bundle was refused; the one in force stays.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TrustUpdateError {
    /// The new bundle is for another trust domain. A mesh never changes trust domain while it
    /// runs: that would make every identity it has checked mean something else.
    #[error("the new trust bundle is for trust domain {found}, but this mesh is {expected}")]
    OtherTrustDomain {
        /// The trust domain in force.
        expected: TrustDomain,
        /// The trust domain of the refused bundle.
        found: TrustDomain,
    },
    /// A federated bundle names the mesh's own trust domain, whose roots come from its own CA
    /// only.
    #[error("a federated bundle is for {0}, this mesh's own trust domain")]
    FederatedOwnDomain(TrustDomain),
    /// webpki cannot use the new roots.
    #[error(transparent)]
    Unusable(#[from] TlsConfigError),
}

// === impl TrustStore ===

impl TrustStore {
    /// A store trusting `bundle`, with an empty deny-list.
    pub fn new(bundle: TrustBundle) -> Result<Self, TlsConfigError> {
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(Anchors::new(
                bundle,
                Arc::default(),
                Arc::default(),
            )?)),
        })
    }

    /// Trusts `bundle` from now on, keeping the deny-list in force. Returns whether the roots
    /// changed (replacing a bundle with the same roots is a no-op). A bundle of another trust
    /// domain, or one webpki cannot use, is refused and the current one stays.
    pub fn replace(&self, bundle: TrustBundle) -> Result<bool, TrustUpdateError> {
        self.swap(bundle, None)
    }

    /// Trusts `bundle` and refuses what `deny` lists from now on, both in one swap, so that no
    /// handshake sees the new roots with the old deny-list or the reverse. Returns whether
    /// either changed (the same roots and the same list are a no-op). A bundle of another trust
    /// domain, or one webpki cannot use, is refused, and the bundle and deny-list in force
    /// both stay.
    pub fn update(&self, bundle: TrustBundle, deny: DenyList) -> Result<bool, TrustUpdateError> {
        self.swap(bundle, Some(deny))
    }

    /// Swaps in `bundle` and `deny` (or the deny-list in force, for `None`) unless nothing
    /// changes.
    fn swap(&self, bundle: TrustBundle, deny: Option<DenyList>) -> Result<bool, TrustUpdateError> {
        let deny = deny.map(Arc::new);
        // Compare-and-swap rather than store: `replace` keeps the deny-list it read, and a
        // plain store could put back a list that a concurrent `update` had just replaced.
        loop {
            let current = self.current.load_full();
            if bundle.trust_domain() != current.bundle.trust_domain() {
                return Err(TrustUpdateError::OtherTrustDomain {
                    expected: current.bundle.trust_domain().clone(),
                    found: bundle.trust_domain().clone(),
                });
            }
            let same_roots = bundle.roots() == current.bundle.roots();
            let deny = match &deny {
                Some(deny) if **deny != *current.deny => deny.clone(),
                _ if same_roots => return Ok(false),
                _ => current.deny.clone(),
            };
            let next = if same_roots {
                // Only the deny-list changed: the roots' webpki verifiers are reused.
                Anchors {
                    deny,
                    ..Anchors::clone(&current)
                }
            } else {
                Anchors::new(bundle.clone(), deny, current.federated.clone())?
            };
            let previous = self.current.compare_and_swap(&current, Arc::new(next));
            if Arc::ptr_eq(&previous, &current) {
                return Ok(true);
            }
        }
    }

    /// Trusts exactly `bundles` as the federated trust domains from now on (the CA's
    /// `--federate-with`): a peer whose SPIFFE ID names one of them is verified against that
    /// domain's roots, and no other. A domain left out is no longer trusted. Returns whether
    /// anything changed. A bundle of the mesh's own trust domain, or one webpki cannot use, is
    /// refused, and the federated set in force stays.
    pub fn federate(&self, bundles: Vec<TrustBundle>) -> Result<bool, TrustUpdateError> {
        loop {
            let current = self.current.load_full();
            let own = current.bundle.trust_domain();
            if let Some(bundle) = bundles.iter().find(|b| b.trust_domain() == own) {
                return Err(TrustUpdateError::FederatedOwnDomain(
                    bundle.trust_domain().clone(),
                ));
            }
            let unchanged = bundles.len() == current.federated.len()
                && bundles.iter().all(|b| {
                    current
                        .federated
                        .get(b.trust_domain())
                        .is_some_and(|known| known.bundle.roots() == b.roots())
                });
            if unchanged {
                return Ok(false);
            }
            let mut federated = BTreeMap::new();
            for bundle in &bundles {
                // A domain whose roots did not change keeps its verifiers.
                let anchors = match current.federated.get(bundle.trust_domain()) {
                    Some(known) if known.bundle.roots() == bundle.roots() => known.clone(),
                    _ => Arc::new(DomainAnchors::new(bundle.clone())?),
                };
                federated.insert(bundle.trust_domain().clone(), anchors);
            }
            let next = Anchors {
                federated: Arc::new(federated),
                ..Anchors::clone(&current)
            };
            let previous = self.current.compare_and_swap(&current, Arc::new(next));
            if Arc::ptr_eq(&previous, &current) {
                return Ok(true);
            }
        }
    }

    /// The bundles of the federated trust domains in force, in trust-domain order.
    pub fn federated_bundles(&self) -> Vec<TrustBundle> {
        self.current
            .load()
            .federated
            .values()
            .map(|d| d.bundle.clone())
            .collect()
    }

    /// The deny-list in force.
    pub fn deny_list(&self) -> Arc<DenyList> {
        self.current.load().deny.clone()
    }

    /// The bundle in force.
    pub fn bundle(&self) -> TrustBundle {
        self.current.load().bundle.clone()
    }

    /// The trust domain, which never changes for the life of the store.
    pub fn trust_domain(&self) -> TrustDomain {
        self.current.load().bundle.trust_domain().clone()
    }

    pub(crate) fn anchors(&self) -> Arc<Anchors> {
        self.current.load_full()
    }
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let anchors = self.current.load();
        f.debug_struct("TrustStore")
            .field("trust_domain", anchors.bundle.trust_domain())
            .field("roots", &anchors.bundle.roots().len())
            .field("denied", &anchors.deny.len())
            .field("federated", &anchors.federated.keys().collect::<Vec<_>>())
            .finish()
    }
}

// === impl Anchors ===

impl Anchors {
    fn new(
        bundle: TrustBundle,
        deny: Arc<DenyList>,
        federated: Arc<BTreeMap<TrustDomain, Arc<DomainAnchors>>>,
    ) -> Result<Self, TlsConfigError> {
        let DomainAnchors {
            bundle,
            roots,
            clients_required,
            clients_optional,
        } = DomainAnchors::new(bundle)?;
        Ok(Self {
            clients_required,
            clients_optional,
            roots,
            bundle,
            deny,
            federated,
        })
    }
}

// === impl DomainAnchors ===

impl DomainAnchors {
    fn new(bundle: TrustBundle) -> Result<Self, TlsConfigError> {
        let roots = Arc::new(crate::config::root_store(bundle.roots())?);
        let client_verifier = |optional: bool| {
            let builder =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), crate::provider());
            let builder = if optional {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder
                .build()
                .map_err(|e| TlsConfigError::Verifier(e.to_string()))
        };
        Ok(Self {
            clients_required: client_verifier(false)?,
            clients_optional: client_verifier(true)?,
            roots,
            bundle,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
    use rustls_pki_types::CertificateDer;

    fn root(trust_domain: &str) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}").try_into().unwrap(),
        )];
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .clone()
    }

    fn bundle(trust_domain: &str, roots: Vec<CertificateDer<'static>>) -> TrustBundle {
        TrustBundle::new(TrustDomain::new(trust_domain).unwrap(), roots).unwrap()
    }

    #[test]
    fn replaces_roots_of_the_same_trust_domain_only() {
        let first = root("example.org");
        let store = TrustStore::new(bundle("example.org", vec![first.clone()])).unwrap();
        assert!(
            !store
                .replace(bundle("example.org", vec![first.clone()]))
                .unwrap(),
            "the same roots are not a change"
        );

        let second = root("example.org");
        let both = vec![first.clone(), second.clone()];
        assert!(store.replace(bundle("example.org", both.clone())).unwrap());
        assert_eq!(store.bundle().roots(), both.as_slice());

        let err = store
            .replace(bundle("evil.org", vec![root("evil.org")]))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("trust domain evil.org, but this mesh is example.org"),
            "{err}"
        );
        assert_eq!(
            store.bundle().roots(),
            both.as_slice(),
            "the old bundle stays"
        );
    }
}
