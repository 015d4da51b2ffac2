//! Attestation: turning the caller's bearer token into a SPIFFE ID.
//!
//! * A hush join token (`hushjt.…`) stands for the SPIFFE ID it was minted for.
//! * Anything else is taken as a Kubernetes service-account JWT, checked by the API server
//!   (TokenReview, audience `hush-ca`), and mapped to `spiffe://<td>/ns/<namespace>/sa/<name>`.

mod k8s;

use hush_identity::{SpiffeId, TrustDomain};

use crate::tokens::{CheckedToken, JoinTokenStore, TokenError, is_join_token};

pub use self::k8s::{
    ServiceAccountIdentity, TokenReviewClient, TokenReviewConfig, TokenReviewError,
};

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestationKind {
    /// A hush join token.
    JoinToken,
    /// A Kubernetes service-account token, checked by TokenReview.
    K8sServiceAccount,
    /// A valid X.509-SVID of the trust domain, presented as the TLS client certificate: a
    /// workload renewing the identity it already holds.
    X509Svid,
}

impl AttestationKind {
    /// The name used in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JoinToken => "join_token",
            Self::K8sServiceAccount => "k8s_service_account",
            Self::X509Svid => "x509_svid",
        }
    }

    /// How a certificate's attestation record names this attestation; `None` for a renewal
    /// with a certificate, which attests nothing new and copies the record it presents.
    pub fn record_method(self) -> Option<hush_identity::AttestationMethod> {
        match self {
            Self::JoinToken => Some(hush_identity::AttestationMethod::JoinToken),
            Self::K8sServiceAccount => {
                Some(hush_identity::AttestationMethod::KubernetesServiceAccount)
            }
            Self::X509Svid => None,
        }
    }
}

/// A caller whose identity is established.
#[derive(Debug, Clone)]
pub struct Attested {
    /// Who the caller is.
    pub spiffe_id: SpiffeId,
    /// How that was established.
    pub kind: AttestationKind,
    /// The join token's public id, if a join token was used.
    pub token_id: Option<String>,
    /// A single-use token still to be consumed once the request succeeds.
    pending: Option<CheckedToken>,
}

impl Attested {
    /// A caller that proved `spiffe_id` with its current certificate in the TLS handshake.
    pub(crate) fn by_certificate(spiffe_id: SpiffeId) -> Self {
        Self {
            spiffe_id,
            kind: AttestationKind::X509Svid,
            token_id: None,
            pending: None,
        }
    }
}

/// The caller could not be attested.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// No `authorization` metadata.
    #[error(
        "missing `authorization: Bearer <token>` metadata: send a join token or a Kubernetes \
         service-account token (or, to renew, connect with your current certificate)"
    )]
    MissingToken,
    /// The `authorization` value is not a bearer token.
    #[error("the `authorization` metadata must be `Bearer <token>`")]
    NotBearer,
    /// The join token was refused.
    #[error(transparent)]
    JoinToken(#[from] TokenError),
    /// A non-join token arrived but Kubernetes attestation is off.
    #[error(
        "the token is not a hush join token, and Kubernetes service-account attestation is not enabled on this CA"
    )]
    KubernetesDisabled,
    /// TokenReview refused the token or could not be done.
    #[error(transparent)]
    Kubernetes(#[from] TokenReviewError),
    /// The service account's names do not make a valid SPIFFE ID.
    #[error("service account {namespace}/{name} does not map to a valid SPIFFE ID: {reason}")]
    BadServiceAccount {
        /// Namespace.
        namespace: String,
        /// Service-account name.
        name: String,
        /// Why.
        reason: String,
    },
}

impl AttestError {
    /// True when the caller's credentials were judged and refused; false when the CA could not
    /// judge them (its token store or the API server failed).
    pub fn is_rejection(&self) -> bool {
        match self {
            Self::JoinToken(e) => e.is_rejection(),
            Self::Kubernetes(e) => e.is_rejection(),
            Self::MissingToken
            | Self::NotBearer
            | Self::KubernetesDisabled
            | Self::BadServiceAccount { .. } => true,
        }
    }
}

/// Extracts the token from an `authorization` header value.
pub(crate) fn bearer_token(header: Option<&str>) -> Result<&str, AttestError> {
    let value = header.ok_or(AttestError::MissingToken)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AttestError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AttestError::NotBearer);
    }
    Ok(token)
}

/// Attests callers for one trust domain.
#[derive(Debug, Clone)]
pub struct Attestor {
    trust_domain: TrustDomain,
    tokens: JoinTokenStore,
    kubernetes: Option<TokenReviewClient>,
}

// === impl Attestor ===

impl Attestor {
    /// An attestor accepting join tokens from `tokens` and, when given, Kubernetes tokens.
    pub fn new(
        trust_domain: TrustDomain,
        tokens: JoinTokenStore,
        kubernetes: Option<TokenReviewClient>,
    ) -> Self {
        Self {
            trust_domain,
            tokens,
            kubernetes,
        }
    }

    /// Establishes who presents `token`. A single-use join token is checked but not yet
    /// consumed: call [`Self::complete`] once the request has otherwise succeeded, so a typo in
    /// a CSR does not burn the token.
    pub async fn attest(&self, token: &str) -> Result<Attested, AttestError> {
        if is_join_token(token) {
            let checked = match self.tokens.check_cached(token) {
                Some(result) => result?,
                None => {
                    // Reading a token record is file I/O: keep it off the async workers.
                    let tokens = self.tokens.clone();
                    let token = token.to_string();
                    match tokio::task::spawn_blocking(move || tokens.check(&token)).await {
                        Ok(result) => result?,
                        Err(e) => {
                            return Err(AttestError::JoinToken(TokenError::Io {
                                path: self.tokens_dir(),
                                source: std::io::Error::other(e.to_string()),
                            }));
                        }
                    }
                }
            };
            return Ok(Attested {
                spiffe_id: checked.spiffe_id.clone(),
                kind: AttestationKind::JoinToken,
                token_id: Some(checked.id.clone()),
                pending: (!checked.reusable).then_some(checked),
            });
        }
        let client = self
            .kubernetes
            .as_ref()
            .ok_or(AttestError::KubernetesDisabled)?;
        let account = client.review(token).await?;
        let spiffe_id = SpiffeId::from_segments(
            &self.trust_domain,
            &["ns", &account.namespace, "sa", &account.name],
        )
        .map_err(|e| AttestError::BadServiceAccount {
            namespace: account.namespace.clone(),
            name: account.name.clone(),
            reason: e.to_string(),
        })?;
        Ok(Attested {
            spiffe_id,
            kind: AttestationKind::K8sServiceAccount,
            token_id: None,
            pending: None,
        })
    }

    /// Consumes a single-use join token. Fails if a concurrent request used it first.
    pub async fn complete(&self, attested: &Attested) -> Result<(), AttestError> {
        let Some(pending) = attested.pending.clone() else {
            return Ok(());
        };
        let tokens = self.tokens.clone();
        match tokio::task::spawn_blocking(move || tokens.consume(&pending)).await {
            Ok(result) => Ok(result?),
            Err(e) => Err(AttestError::JoinToken(TokenError::Io {
                path: self.tokens_dir(),
                source: std::io::Error::other(e.to_string()),
            })),
        }
    }

    fn tokens_dir(&self) -> std::path::PathBuf {
        self.tokens.dir().to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert!(matches!(bearer_token(None), Err(AttestError::MissingToken)));
        assert!(matches!(
            bearer_token(Some("Basic abc")),
            Err(AttestError::NotBearer)
        ));
        assert!(matches!(
            bearer_token(Some("Bearer ")),
            Err(AttestError::NotBearer)
        ));
        assert!(matches!(
            bearer_token(Some("token")),
            Err(AttestError::NotBearer)
        ));
        assert_eq!(bearer_token(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(Some("bearer  abc ")).unwrap(), "abc");
    }
}
