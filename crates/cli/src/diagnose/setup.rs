//! What the checks need, read from the arguments before anything is dialled: the bundle, the
//! identity the server must prove, and ours (from files, or from a CA with a token).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hush_identity::{CertificateSummary, SpiffeId, TrustBundle};
use hush_tls::{CredentialStore, ExpectedServer, TrustStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::DiagnoseArgs;
use super::report::expected_words;

/// What the checks need.
pub(super) struct Setup {
    pub(super) trust: Option<TrustStore>,
    pub(super) expected: ExpectedServer,
    pub(super) credentials: Option<Credentials>,
    pub(super) server_name: ServerName<'static>,
}

/// The identity we present, as a sidecar presents its own.
pub(super) struct Credentials {
    pub(super) store: Arc<CredentialStore>,
    /// The chain as it is sent, leaf first: checked here when the server refuses it.
    pub(super) chain: Vec<CertificateDer<'static>>,
    /// Who we are, in words: the SPIFFE ID, or the subject.
    pub(super) identity: String,
}

// === impl Setup ===

impl Setup {
    pub(super) async fn from_args(args: &DiagnoseArgs) -> Result<Self> {
        let bundle = match &args.bundle {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read --bundle {}", path.display()))?;
                Some(
                    TrustBundle::from_pem(&pem, None)
                        .with_context(|| format!("--bundle {}", path.display()))?,
                )
            }
            None => None,
        };
        let expected = match &args.expect_id {
            Some(id) => ExpectedServer::OneOf(vec![
                id.parse::<SpiffeId>()
                    .with_context(|| format!("invalid --expect-id {id:?}"))?,
            ]),
            None => ExpectedServer::AnyInTrustDomain,
        };
        let credentials = match (&args.cert, &args.key, &args.token_file, &args.ca) {
            (Some(cert), Some(key), _, _) => Some(Credentials::from_files(cert, key)?),
            (_, _, Some(token_file), Some(ca)) => {
                let Some(bundle) = &bundle else {
                    bail!("--token-file needs --bundle, to trust the CA at {ca}");
                };
                Some(Credentials::from_ca(ca, token_file, bundle).await?)
            }
            _ => None,
        };
        let host = args
            .server_name
            .clone()
            .unwrap_or_else(|| host_of(&args.target).to_string());
        let server_name = ServerName::try_from(host.clone())
            .with_context(|| format!("{host:?} cannot be sent as a TLS server name"))?;
        let trust = bundle
            .map(TrustStore::new)
            .transpose()
            .context("the trust bundle cannot be used")?;
        Ok(Self {
            trust,
            expected,
            credentials,
            server_name,
        })
    }

    /// What the server must prove, as the report's first line says it.
    pub(super) fn expectation(&self) -> String {
        match (&self.trust, expected_words(&self.expected)) {
            (None, _) => "no bundle: the server will not be verified".to_string(),
            (Some(_), Some(ids)) => format!("expecting {ids}"),
            (Some(trust), None) => format!(
                "expecting any identity of trust domain {}",
                trust.bundle().trust_domain()
            ),
        }
    }
}

// === impl Credentials ===

impl Credentials {
    fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("--cert {}", cert.display()))?;
        let Some(leaf) = chain.first() else {
            bail!("--cert {}: no certificate in the file", cert.display());
        };
        let identity = describe_identity(leaf);
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("--key {}", key.display()))?;
        let store = CredentialStore::new();
        store
            .install(chain.clone(), key)
            .with_context(|| format!("--cert {} and --key", cert.display()))?;
        Ok(Self {
            store: Arc::new(store),
            chain,
            identity,
        })
    }

    async fn from_ca(ca: &str, token_file: &Path, bundle: &TrustBundle) -> Result<Self> {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("cannot read --token-file {}", token_file.display()))?;
        let key = rcgen::KeyPair::generate().context("cannot make a key pair")?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .context("cannot make a CSR")?;
        let client = hush_ca_client::CaClient::new(ca, bundle.roots())?;
        let response = client
            .certify(
                token.trim(),
                csr.der().to_vec(),
                Some(Duration::from_secs(600)),
            )
            .await
            .map_err(|status| anyhow::anyhow!("the CA at {ca} refused: {}", status.message()))?;
        let chain: Vec<CertificateDer<'static>> = response
            .cert_chain
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let store = CredentialStore::new();
        store
            .install(
                chain.clone(),
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .context("the CA's certificate cannot be used")?;
        Ok(Self {
            store: Arc::new(store),
            chain,
            identity: format!("{} (from the CA at {ca})", response.spiffe_id),
        })
    }
}

pub(super) fn host_of(target: &str) -> &str {
    let host = target.rsplit_once(':').map_or(target, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn describe_identity(leaf: &CertificateDer<'_>) -> String {
    match CertificateSummary::from_der(leaf) {
        Ok(summary) => summary
            .spiffe_id
            .map(|id| id.to_string())
            .unwrap_or(summary.subject),
        Err(_) => "an unreadable certificate".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_taken_from_targets() {
        assert_eq!(host_of("127.0.0.1:15006"), "127.0.0.1");
        assert_eq!(host_of("[::1]:15006"), "::1");
        assert_eq!(host_of("backend.shop.svc:8080"), "backend.shop.svc");
    }
}
