//! One order: from the CA's authorizations to a certificate chain and its new key.
//!
//! The challenge answers go into the [`CertStore`] for the listeners to serve, and come out
//! again however the order ends (a guard clears them on drop, so an error, a timeout or a
//! shutdown mid-order leaves nothing behind).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hush_config::AcmeChallenge;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, Problem,
    RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tracing::debug;

use crate::certs::CertStore;

/// What an order brought: the chain in PEM as the CA sent it, and the new key in PEM.
pub(crate) struct Issued {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

/// Why an order failed, in words an operator can act on.
#[derive(Debug)]
pub(crate) enum OrderError {
    /// The CA answered a step with a problem document.
    Ca {
        step: &'static str,
        problem: Problem,
    },
    /// The CA could not be reached or did not answer a step in time.
    Unreachable { step: &'static str, error: String },
    /// The CA did not validate a host's challenge.
    Validation {
        host: String,
        challenge: &'static str,
        said: String,
    },
    /// The CA offered no challenge of the configured type for a host.
    NoChallenge {
        host: String,
        challenge: &'static str,
    },
    /// Something on our side (a key, a CSR, a PEM) failed.
    Local(String),
}

impl OrderError {
    /// Whether the CA no longer knows the account (a test CA restarted, an account
    /// deactivated): a new account is needed.
    pub(crate) fn account_is_gone(&self) -> bool {
        matches!(self, Self::Ca { problem, .. }
            if problem.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist")))
    }

    pub(crate) fn from_acme(step: &'static str, error: instant_acme::Error) -> Self {
        match error {
            instant_acme::Error::Api(problem) => Self::Ca { step, problem },
            other => Self::Unreachable {
                step,
                error: error_chain(&other),
            },
        }
    }
}

impl fmt::Display for OrderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ca { step, problem } => {
                write!(f, "the CA refused to {step}: {}", said(problem))
            }
            Self::Unreachable { step, error } => {
                write!(f, "could not {step}: {error}")
            }
            Self::Validation {
                host,
                challenge,
                said,
            } => write!(f, "the CA could not validate {host} by {challenge}: {said}"),
            Self::NoChallenge { host, challenge } => {
                write!(f, "the CA offers no {challenge} challenge for {host}")
            }
            Self::Local(e) => f.write_str(e),
        }
    }
}

/// What a problem document says, in plain words: its detail, its type without the URN
/// prefix, and each subproblem's host and detail.
pub(crate) fn said(problem: &Problem) -> String {
    let mut out = problem
        .detail
        .clone()
        .unwrap_or_else(|| "no detail given".to_string());
    if let Some(kind) = &problem.r#type {
        let short = kind.trim_start_matches("urn:ietf:params:acme:error:");
        out.push_str(&format!(" ({short})"));
    }
    for sub in &problem.subproblems {
        out.push_str("; ");
        if let Some(Identifier::Dns(host)) = &sub.identifier {
            out.push_str(&format!("{host}: "));
        }
        out.push_str(sub.detail.as_deref().unwrap_or("no detail given"));
    }
    out
}

/// An error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// The challenge answers this order put in the store, taken out again on drop.
struct Answers<'a> {
    store: &'a CertStore,
    tokens: Vec<String>,
    alpn_hosts: Vec<String>,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.store.clear_http01(token);
        }
        for host in &self.alpn_hosts {
            self.store.clear_alpn_challenge(host);
        }
    }
}

fn challenge_name(challenge: AcmeChallenge) -> &'static str {
    match challenge {
        AcmeChallenge::Http01 => "HTTP-01",
        AcmeChallenge::TlsAlpn01 => "TLS-ALPN-01",
    }
}

/// Orders a certificate for `hosts`, answering the CA's challenges with `challenge` through
/// `store`, and waiting at most `validation` for the CA to validate and issue.
pub(crate) async fn obtain(
    account: &Account,
    hosts: &[String],
    challenge: AcmeChallenge,
    store: &CertStore,
    validation: Duration,
) -> Result<Issued, OrderError> {
    let identifiers: Vec<Identifier> = hosts.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| OrderError::from_acme("create an order", e))?;
    let kind = match challenge {
        AcmeChallenge::Http01 => ChallengeType::Http01,
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    };
    let name = challenge_name(challenge);
    let mut answers = Answers {
        store,
        tokens: Vec::new(),
        alpn_hosts: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization =
            authorization.map_err(|e| OrderError::from_acme("fetch an authorization", e))?;
        let host = authorization.identifier().to_string();
        match authorization.status {
            // The CA still trusts an earlier validation of this host by this account.
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(OrderError::Validation {
                    host,
                    challenge: name,
                    said: format!("the authorization is {other:?}").to_lowercase(),
                });
            }
        }
        let Some(mut handle) = authorization.challenge(kind.clone()) else {
            return Err(OrderError::NoChallenge {
                host,
                challenge: name,
            });
        };
        let key_authorization = handle.key_authorization();
        match challenge {
            AcmeChallenge::Http01 => {
                store.set_http01(&handle.token, key_authorization.as_str());
                answers.tokens.push(handle.token.clone());
            }
            AcmeChallenge::TlsAlpn01 => {
                let key = alpn_challenge_key(&host, key_authorization.digest().as_ref())?;
                store.set_alpn_challenge(&host, key);
                answers.alpn_hosts.push(host.clone());
            }
        }
        debug!(host, challenge = name, "challenge answer in place");
        handle
            .set_ready()
            .await
            .map_err(|e| OrderError::from_acme("start validation", e))?;
    }

    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(validation);
    let status = order.poll_ready(&retries).await;
    let status = match status {
        Ok(status) => status,
        // The order itself failed (its `error`): say which host, from the authorizations.
        Err(instant_acme::Error::Api(problem)) => {
            return Err(why_invalid(&mut order, name)
                .await
                .unwrap_or(OrderError::Ca {
                    step: "validate the order",
                    problem,
                }));
        }
        Err(instant_acme::Error::Timeout(_)) => {
            return Err(OrderError::Unreachable {
                step: "get the hosts validated",
                error: format!(
                    "the order was not ready within {}",
                    humantime::format_duration(validation)
                ),
            });
        }
        Err(e) => return Err(OrderError::from_acme("poll the order", e)),
    };
    if status != OrderStatus::Ready {
        return Err(why_invalid(&mut order, name)
            .await
            .unwrap_or_else(|| OrderError::Local(format!("the order is {status:?}"))));
    }
    // Validation is over: stop answering before the certificate comes.
    drop(answers);

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| OrderError::Local(format!("cannot make a key: {e}")))?;
    let mut params = CertificateParams::new(hosts.to_vec())
        .map_err(|e| OrderError::Local(format!("cannot make a CSR: {e}")))?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| OrderError::Local(format!("cannot make a CSR: {e}")))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| OrderError::from_acme("finalize the order", e))?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| OrderError::from_acme("download the certificate", e))?;
    let chain = rustls_pki_types::pem::PemObject::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<CertificateDer<'static>>, _>>()
        .map_err(|e| OrderError::Local(format!("the CA's chain is unreadable: {e}")))?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    })
}

/// Which host's challenge failed, and what the CA said about it.
async fn why_invalid(
    order: &mut instant_acme::Order,
    challenge: &'static str,
) -> Option<OrderError> {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let Ok(state) = authorization.refresh().await else {
            continue;
        };
        if state.status == AuthorizationStatus::Valid {
            continue;
        }
        let host = state.identifier().to_string();
        let problem = state.challenges.iter().find_map(|c| c.error.as_ref());
        return Some(OrderError::Validation {
            host,
            challenge,
            said: problem.map_or_else(
                || format!("the authorization is {:?}", state.status).to_lowercase(),
                said,
            ),
        });
    }
    None
}

/// The TLS-ALPN-01 answer for `host` (RFC 8737 §3): a self-signed certificate naming only
/// `host`, with the critical acmeIdentifier extension holding the SHA-256 digest of the key
/// authorization, on a key of its own.
pub(crate) fn alpn_challenge_key(
    host: &str,
    digest: &[u8],
) -> Result<Arc<CertifiedKey>, OrderError> {
    let local = |e: rcgen::Error| {
        OrderError::Local(format!("cannot make the TLS-ALPN-01 certificate: {e}"))
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(local)?;
    let mut params = CertificateParams::new(vec![host.to_string()]).map_err(local)?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(local)?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    // Not `CertifiedKey::from_der`: its check that key and certificate match parses the
    // certificate with webpki, which refuses the critical acmeIdentifier extension.
    let signing_key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .map_err(|e| OrderError::Local(format!("cannot use the TLS-ALPN-01 key: {e}")))?;
    let certified = CertifiedKey::new(vec![cert.der().clone()], signing_key);
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alpn_certificate_names_the_host_and_carries_the_digest_critically() {
        let digest = [7u8; 32];
        let key = alpn_challenge_key("shop.example.com", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, ["DNSName(shop.example.com)"]);
        let acme = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("the acmeIdentifier extension");
        assert!(acme.critical);
        // An OCTET STRING of 32 bytes holding the digest.
        assert_eq!(&acme.value[..2], &[0x04, 0x20]);
        assert_eq!(&acme.value[2..], &digest);
    }

    #[test]
    fn problems_are_told_in_plain_words() {
        let problem: Problem = serde_json::from_value(serde_json::json!({
            "type": "urn:ietf:params:acme:error:rejectedIdentifier",
            "detail": "Error creating new order",
            "status": 400,
            "subproblems": [{
                "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                "detail": "the host is on a block list",
                "identifier": {"type": "dns", "value": "bad.example.com"}
            }]
        }))
        .unwrap();
        assert_eq!(
            said(&problem),
            "Error creating new order (rejectedIdentifier); bad.example.com: the host is on a block list"
        );
        let gone = OrderError::Ca {
            step: "create an order",
            problem: serde_json::from_value(serde_json::json!({
                "type": "urn:ietf:params:acme:error:accountDoesNotExist",
            }))
            .unwrap(),
        };
        assert!(gone.account_is_gone());
        assert_eq!(
            gone.to_string(),
            "the CA refused to create an order: no detail given (accountDoesNotExist)"
        );
    }
}
