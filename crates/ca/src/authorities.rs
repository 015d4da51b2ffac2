//! The CA's authorities over its lifetime: every root and intermediate it has had, and the
//! state of each (the model behind `hush ca authorities`, `rotate`, `activate`, `taint` and
//! `revoke`).
//!
//! An authority is named by the first 16 hex digits of the SHA-256 of its public key
//! (SubjectPublicKeyInfo): stable across re-issuance of the same key, short enough to type, and
//! the same on every replica that reads the directory. A directory written before authorities
//! existed (one root, one intermediate, no manifest) is read as a manifest with both active.
//!
//! Work in progress: the model and its legacy reading only; the transitions come next.

use std::fmt;

use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The manifest's schema version.
pub const MANIFEST_VERSION: u32 = 1;

/// An authority's name: 16 lower-case hex digits of SHA-256 over its SubjectPublicKeyInfo.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuthorityId(String);

impl AuthorityId {
    /// The ID of the key `certificate` (DER) certifies.
    pub fn of_certificate(certificate: &[u8]) -> Result<Self, AuthoritiesError> {
        let (_, parsed) = X509Certificate::from_der(certificate)
            .map_err(|e| AuthoritiesError::Certificate(e.to_string()))?;
        Ok(Self::of_public_key(parsed.public_key().raw))
    }

    /// The ID of a SubjectPublicKeyInfo (DER).
    pub fn of_public_key(spki: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki);
        let hex: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self(hex)
    }

    /// The 16 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AuthorityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A root (self-signed, in the trust bundle) or an intermediate (signs workload certificates).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Self-signed; in the trust bundle.
    Root,
    /// Issued by a root; signs workload certificates.
    Intermediate,
}

/// Where an authority is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Staged: a root is already in the trust bundle; nothing is signed with it yet.
    Prepared,
    /// Signs (the one active intermediate, and its root).
    Active,
    /// Replaced by a successor; still trusted while certificates under it live.
    Old,
    /// Still trusted, but sidecars renew away from certificates under it at once.
    Tainted,
    /// Out of the trust bundle; its key is deleted.
    Revoked,
}

/// One authority as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityEntry {
    /// Its name.
    pub id: AuthorityId,
    /// Root or intermediate.
    pub kind: Kind,
    /// Where it is in its life.
    pub state: State,
    /// The certificate's file name in the CA directory.
    pub cert: String,
    /// The key's file name, while there is one (a root's key may live elsewhere).
    pub key: Option<String>,
    /// The issuing root of an intermediate.
    pub issuer: Option<AuthorityId>,
    /// When it was staged (Unix seconds).
    pub prepared_at: Option<i64>,
    /// When it began to sign (or, for a root, to be the active root).
    pub activated_at: Option<i64>,
    /// When a successor replaced it.
    pub retired_at: Option<i64>,
    /// When it was tainted.
    pub tainted_at: Option<i64>,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
}

/// Every authority of the CA, and the generation of this record (up by one on every change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// The trust domain every authority serves.
    pub trust_domain: String,
    /// Up by one on every change; a CA never goes back to a lower one.
    pub generation: u64,
    /// Every authority, in the order they were made.
    pub authorities: Vec<AuthorityEntry>,
}

/// Why authorities cannot be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum AuthoritiesError {
    /// A file that should hold a certificate does not.
    #[error("not an X.509 certificate: {0}")]
    Certificate(String),
}

impl Manifest {
    /// The manifest a directory written before authorities existed stands for: its root and
    /// its intermediate, both active, each activated when its certificate became valid.
    pub fn legacy(
        trust_domain: &str,
        root: &[u8],
        intermediate: &[u8],
    ) -> Result<Self, AuthoritiesError> {
        let parse = |der| {
            X509Certificate::from_der(der)
                .map(|(_, c)| c)
                .map_err(|e| AuthoritiesError::Certificate(e.to_string()))
        };
        // That the intermediate is the root's is checked where the pair is loaded to sign
        // (`Authority::new`, by signature); this only names them.
        let (root_cert, intermediate_cert) = (parse(root)?, parse(intermediate)?);
        let root_id = AuthorityId::of_public_key(root_cert.public_key().raw);
        let intermediate_id = AuthorityId::of_public_key(intermediate_cert.public_key().raw);
        let since = |c: &X509Certificate<'_>| Some(c.validity().not_before.timestamp());
        Ok(Self {
            version: MANIFEST_VERSION,
            trust_domain: trust_domain.to_owned(),
            generation: 0,
            authorities: vec![
                AuthorityEntry {
                    id: root_id.clone(),
                    kind: Kind::Root,
                    state: State::Active,
                    cert: "bundle.pem".into(),
                    key: None,
                    issuer: None,
                    prepared_at: since(&root_cert),
                    activated_at: since(&root_cert),
                    retired_at: None,
                    tainted_at: None,
                    revoked_at: None,
                },
                AuthorityEntry {
                    id: intermediate_id,
                    kind: Kind::Intermediate,
                    state: State::Active,
                    cert: "intermediate.pem".into(),
                    key: Some("intermediate.key".into()),
                    issuer: Some(root_id),
                    prepared_at: since(&intermediate_cert),
                    activated_at: since(&intermediate_cert),
                    retired_at: None,
                    tainted_at: None,
                    revoked_at: None,
                },
            ],
        })
    }

    /// The authority that signs workload certificates.
    pub fn active_intermediate(&self) -> Option<&AuthorityEntry> {
        self.authorities
            .iter()
            .find(|a| a.kind == Kind::Intermediate && a.state == State::Active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let root_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "root");
        let root = params.self_signed(&root_key).unwrap();
        let issuer = rcgen::Issuer::new(params, root_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "intermediate");
        let intermediate = params.signed_by(&key, &issuer).unwrap();
        (
            root.der().to_vec(),
            intermediate.der().to_vec(),
            rcgen::PublicKeyData::subject_public_key_info(&key),
        )
    }

    #[test]
    fn an_authority_is_named_by_its_public_key() {
        let (_, intermediate, spki) = ca();
        let id = AuthorityId::of_certificate(&intermediate).unwrap();
        assert_eq!(id, AuthorityId::of_public_key(&spki));
        assert_eq!(id.as_str().len(), 16);
        assert!(id.as_str().chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_directory_without_a_manifest_has_its_root_and_intermediate_active() {
        let (root, intermediate, _) = ca();
        let manifest = Manifest::legacy("cluster.local", &root, &intermediate).unwrap();
        let active = manifest.active_intermediate().unwrap();
        assert_eq!(
            active.issuer,
            Some(AuthorityId::of_certificate(&root).unwrap())
        );
        assert!(
            manifest
                .authorities
                .iter()
                .all(|a| a.state == State::Active)
        );
        let json = serde_json::to_string(&manifest).unwrap();
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, manifest);
        assert!(json.contains(r#""state":"active""#), "{json}");
    }
}
