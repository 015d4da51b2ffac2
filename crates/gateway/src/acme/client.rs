//! The HTTPS client instant-acme speaks to the CA with: the roots we choose (the public web
//! PKI, or `directory_ca` for a private CA such as pebble), and a deadline on every request,
//! body included, so a CA that stalls fails the attempt instead of stalling the manager.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The largest response body accepted: ACME objects and certificate chains are a few KiB.
const MAX_BODY: usize = 1024 * 1024;

/// The TLS configuration for the CA: trusting the PEM roots in `directory_ca`, or the
/// webpki roots (Mozilla's) when there is none.
pub(crate) fn tls_config(directory_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match directory_ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{} holds no certificate", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    // TLS 1.2 and 1.3: a public CA is not ours to hold to the mesh's 1.3-only rule.
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An instant-acme HTTP client over hyper and rustls with a deadline per request.
pub(crate) struct TimedClient {
    client: Client<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    timeout: Duration,
}

impl TimedClient {
    pub(crate) fn new(tls: &Arc<rustls::ClientConfig>, timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((**tls).clone())
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            timeout,
        }
    }
}

impl HttpClient for TimedClient {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let timeout = self.timeout;
        let uri = req.uri().clone();
        let response = self.client.request(req);
        Box::pin(async move {
            // The body is read here, under the same deadline, rather than left to
            // instant-acme to read later without one.
            let exchange = async {
                let response = response
                    .await
                    .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_BODY)
                    .collect()
                    .await
                    .map_err(instant_acme::Error::Other)?
                    .to_bytes();
                Ok(BytesResponse {
                    parts,
                    body: Box::new(body),
                })
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(instant_acme::Error::Other(
                    format!(
                        "no answer from {uri} within {}",
                        humantime::format_duration(timeout)
                    )
                    .into(),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_ca_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = tls_config(Some(&empty)).unwrap_err();
        assert!(err.contains("holds no certificate"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = tls_config(Some(&missing)).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
        assert!(tls_config(None).is_ok());
    }

    #[tokio::test]
    async fn a_server_that_never_answers_fails_the_request_in_time() {
        // Accepts TCP connections and then says nothing: the TLS handshake stalls.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let client = TimedClient::new(&tls_config(None).unwrap(), Duration::from_millis(300));
        let request = http::Request::builder()
            .uri(format!("https://{addr}/directory"))
            .body(BodyWrapper::default())
            .unwrap();
        let started = std::time::Instant::now();
        let err = match client.request(request).await {
            Ok(_) => panic!("a silent server answered"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("no answer from"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
