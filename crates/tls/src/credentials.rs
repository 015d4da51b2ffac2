//! A certificate and key that can be replaced while connections are open.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate and key could not be installed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The chain was empty.
    #[error("the certificate chain is empty")]
    EmptyChain,
    /// The private key could not be loaded by the crypto provider.
    #[error("the private key cannot be used for signing: {0}")]
    BadKey(rustls::Error),
    /// The private key does not belong to the leaf certificate.
    #[error("the private key does not match the leaf certificate's public key")]
    KeyMismatch,
}

/// The certificate hush presents, swappable at any time.
///
/// Handshakes read the current value once, so a swap affects only handshakes that start after
/// it; established connections are untouched. Cloning shares the same store.
#[derive(Clone, Default)]
pub struct CredentialStore {
    current: Arc<ArcSwapOption<CertifiedKey>>,
}

// === impl CredentialStore ===

impl CredentialStore {
    /// An empty store: handshakes that need a certificate fail until [`Self::install`] is called.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the certificate (leaf first) and its private key.
    pub fn install(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), CredentialError> {
        if chain.is_empty() {
            return Err(CredentialError::EmptyChain);
        }
        let signing_key = crate::provider()
            .key_provider
            .load_private_key(key)
            .map_err(CredentialError::BadKey)?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            // Keys whose public half the provider cannot derive are accepted as they are.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => return Err(CredentialError::KeyMismatch),
        }
        self.current.store(Some(Arc::new(certified)));
        Ok(())
    }

    /// The certificate currently presented, if any.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material; the chain length is enough to tell states apart.
        let chain_len = self.current.load().as_ref().map(|c| c.cert.len());
        f.debug_struct("CredentialStore")
            .field("chain_len", &chain_len)
            .finish()
    }
}

impl ResolvesServerCert for CredentialStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for CredentialStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let current = self.current()?;
        current
            .key
            .choose_scheme(sigschemes)
            .is_some()
            .then_some(current)
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::PrivatePkcs8KeyDer;

    fn self_signed() -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }

    #[test]
    fn starts_empty_and_swaps() {
        let store = CredentialStore::new();
        assert!(store.current().is_none());
        let (cert, key) = self_signed();
        store.install(vec![cert.clone()], key).unwrap();
        assert_eq!(store.current().unwrap().cert[0], cert);
        let (cert2, key2) = self_signed();
        store.install(vec![cert2.clone()], key2).unwrap();
        assert_eq!(store.current().unwrap().cert[0], cert2);
    }

    #[test]
    fn rejects_mismatched_key_and_keeps_old() {
        let store = CredentialStore::new();
        let (cert, key) = self_signed();
        store.install(vec![cert.clone()], key).unwrap();
        let (_, other_key) = self_signed();
        let (cert2, _) = self_signed();
        let err = store.install(vec![cert2], other_key).unwrap_err();
        assert!(matches!(err, CredentialError::KeyMismatch), "{err}");
        assert_eq!(store.current().unwrap().cert[0], cert);
    }

    #[test]
    fn rejects_empty_chain() {
        let (_, key) = self_signed();
        let err = CredentialStore::new().install(vec![], key).unwrap_err();
        assert!(matches!(err, CredentialError::EmptyChain));
    }
}
