//! hush's rustls configurations.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::server::ResolvesServerCert;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::CertificateDer;

/// The ALPN protocol id of HTTP/2, which gRPC needs.
pub const ALPN_H2: &[u8] = b"h2";

/// A TLS configuration could not be built.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A root certificate was rejected by the trust store.
    #[error("root certificate {index} cannot be used as a trust anchor: {reason}")]
    BadRoot {
        /// 1-based position of the certificate.
        index: usize,
        /// Why rustls refused it.
        reason: String,
    },
    /// No root certificate was given.
    #[error("no root certificates were given: a TLS client needs at least one to verify servers")]
    NoRoots,
    /// The certificate verifier could not be built.
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(String),
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider hush uses everywhere: aws-lc-rs, TLS 1.3 AEAD suites only, key exchange
/// X25519MLKEM768 (preferred) then X25519.
///
/// P-256 key exchange is left out on purpose: every peer hush talks to (rustls, Go, BoringSSL,
/// OpenSSL 3) offers X25519.
pub fn provider() -> Arc<CryptoProvider> {
    let base = aws_lc_rs::default_provider();
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
            aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![
            aws_lc_rs::kx_group::X25519MLKEM768,
            aws_lc_rs::kx_group::X25519,
        ],
        ..base
    })
}

/// A TLS 1.3 server configuration that presents the certificate `resolver` chooses and, when a
/// `client_verifier` is given, requires and verifies client certificates.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsConfigError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Session tickets would let a resumed connection skip certificate verification against a
    // possibly rotated bundle; hush's connections are long-lived, so full handshakes cost little.
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A TLS 1.3 client configuration that verifies servers with `verifier` and, when a `resolver`
/// is given, presents a client certificate.
pub fn client_config(
    verifier: Arc<dyn ServerCertVerifier>,
    resolver: Option<Arc<dyn ResolvesClientCert>>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match resolver {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS 1.3 client configuration that verifies the server's DNS name or IP address with webpki
/// against `roots`, as for reaching the CA or a Kubernetes API server. With `client_cert`, the
/// client presents the certificate it resolves when the server asks for one.
pub fn client_config_with_roots(
    roots: &[CertificateDer<'static>],
    client_cert: Option<Arc<dyn ResolvesClientCert>>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(roots)?);
    let mut config = match client_cert {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The trust anchors for webpki, refusing an empty list or a root it cannot use.
pub(crate) fn root_store(
    roots: &[CertificateDer<'static>],
) -> Result<RootCertStore, TlsConfigError> {
    if roots.is_empty() {
        return Err(TlsConfigError::NoRoots);
    }
    let mut store = RootCertStore::empty();
    for (i, root) in roots.iter().enumerate() {
        store
            .add(root.clone())
            .map_err(|e| TlsConfigError::BadRoot {
                index: i + 1,
                reason: e.to_string(),
            })?;
    }
    Ok(store)
}
