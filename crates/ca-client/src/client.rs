//! A client for the CA, over TLS 1.3 verified against the trust bundle.

use std::sync::Arc;
use std::time::Duration;

use hush_identity::{JwtBundleError, JwtKeys};
use hush_proto::hush::ca::v1 as pb;
use hush_proto::hush::ca::v1::certificate_authority_client::CertificateAuthorityClient;
use hush_tls::CredentialStore;
use hush_tls::rustls::client::ResolvesClientCert;
use hyper_util::rt::TokioIo;
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The client could not be set up.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA address is not an `https://host:port` URL.
    #[error("CA address {address:?} is not valid: {reason} (expected https://host:port)")]
    BadAddress {
        /// What was given.
        address: String,
        /// What is wrong.
        reason: String,
    },
    /// The trust roots could not be used.
    #[error(transparent)]
    Tls(#[from] hush_tls::TlsConfigError),
}

/// Opens a gRPC channel to the CA at `address` (`https://host:port`), verifying the CA's server
/// certificate against `roots` for `host`. The connection is made on first use.
pub fn channel(address: &str, roots: &[CertificateDer<'static>]) -> Result<Channel, ClientError> {
    channel_with_identity(address, roots, None)
}

/// Like [`channel`], presenting the workload certificate in `identity` when the CA asks for one,
/// which is how a workload renews without a token.
pub fn channel_with_identity(
    address: &str,
    roots: &[CertificateDer<'static>],
    identity: Option<CredentialStore>,
) -> Result<Channel, ClientError> {
    let bad = |reason: &str| ClientError::BadAddress {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = address.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad(
            "the CA is only reachable over TLS, so the scheme must be https",
        ));
    }
    let host = uri.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
    let server_name = ServerName::try_from(host.clone()).map_err(|_| bad("invalid host name"))?;
    let identity = identity.map(|store| Arc::new(store) as Arc<dyn ResolvesClientCert>);
    let tls = TlsConnector::from(Arc::new(hush_tls::client_config_with_roots(
        roots,
        identity,
        &[hush_tls::ALPN_H2],
    )?));
    let endpoint = Endpoint::from(uri)
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30));
    let connector = tower::service_fn(move |_: Uri| {
        let tls = tls.clone();
        let server_name = server_name.clone();
        let host = host.clone();
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tls.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Adds `authorization: Bearer <token>` to a request, marked sensitive so that it never shows
/// up in debug output.
pub fn with_bearer<T>(message: T, token: &str) -> Result<tonic::Request<T>, tonic::Status> {
    let mut request = tonic::Request::new(message);
    let mut value: MetadataValue<_> = format!("Bearer {}", token.trim()).parse().map_err(|_| {
        tonic::Status::invalid_argument("the token contains characters not allowed in a header")
    })?;
    value.set_sensitive(true);
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// Adds the current span's W3C trace context (`traceparent`, `tracestate`) to a request, so the
/// CA's span of the issuance joins the caller's trace. Nothing when no trace is being recorded.
fn with_trace_context<T>(request: &mut tonic::Request<T>) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new()
            .inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
    }
}

/// Writes trace context into gRPC metadata.
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse::<MetadataValue<_>>(),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// A client of hush's own CA API.
#[derive(Debug, Clone)]
pub struct CaClient {
    inner: CertificateAuthorityClient<Channel>,
}

// === impl CaClient ===

impl CaClient {
    /// A client for the CA at `address`, trusting `roots`.
    pub fn new(address: &str, roots: &[CertificateDer<'static>]) -> Result<Self, ClientError> {
        Ok(Self {
            inner: CertificateAuthorityClient::new(channel(address, roots)?),
        })
    }

    /// A client that presents the workload certificate in `identity`, so it can [`Self::renew`].
    pub fn with_identity(
        address: &str,
        roots: &[CertificateDer<'static>],
        identity: CredentialStore,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            inner: CertificateAuthorityClient::new(channel_with_identity(
                address,
                roots,
                Some(identity),
            )?),
        })
    }

    /// Asks for a new certificate for the key of `csr`, proving identity with the current
    /// certificate (the client must have been made [`Self::with_identity`]). The new certificate
    /// names the same SPIFFE ID.
    pub async fn renew(
        &self,
        csr: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<pb::CertifyResponse, tonic::Status> {
        let mut request = tonic::Request::new(pb::CertifyRequest {
            csr,
            ttl_seconds: ttl_seconds(ttl),
        });
        with_trace_context(&mut request);
        Ok(self.inner.clone().certify(request).await?.into_inner())
    }

    /// Asks for a certificate for the key of `csr` (DER or PEM), proving identity with `token`.
    pub async fn certify(
        &self,
        token: &str,
        csr: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<pb::CertifyResponse, tonic::Status> {
        let mut request = with_bearer(
            pb::CertifyRequest {
                csr,
                ttl_seconds: ttl_seconds(ttl),
            },
            token,
        )?;
        with_trace_context(&mut request);
        Ok(self.inner.clone().certify(request).await?.into_inner())
    }

    /// Asks for a JWT-SVID for `audiences`, living `ttl` (`None`: the CA's default of 5
    /// minutes; the CA shortens what exceeds its `--jwt-max-ttl`). The CA signs it for the
    /// SPIFFE ID of the client certificate, so the client must have been made
    /// [`Self::with_identity`]; no token is sent.
    pub async fn mint_jwt_svid(
        &self,
        audiences: Vec<String>,
        ttl: Option<Duration>,
    ) -> Result<pb::MintJwtSvidResponse, tonic::Status> {
        let mut request = tonic::Request::new(pb::MintJwtSvidRequest {
            audience: audiences,
            ttl_seconds: ttl_seconds(ttl),
        });
        with_trace_context(&mut request);
        Ok(self
            .inner
            .clone()
            .mint_jwt_svid(request)
            .await?
            .into_inner())
    }

    /// Fetches the CA's trust bundle.
    pub async fn trust_bundle(&self) -> Result<pb::GetTrustBundleResponse, tonic::Status> {
        Ok(self
            .inner
            .clone()
            .get_trust_bundle(pb::GetTrustBundleRequest {})
            .await?
            .into_inner())
    }
}

/// The JWT keys of the trust domain in a `GetTrustBundle` answer (its `jwt_keys`, a JWK Set),
/// read and checked: `None` when the CA sent none (a CA older than JWT-SVIDs), an error when
/// they cannot be read, in which case the caller keeps the keys it has.
pub fn trust_bundle_jwt_keys(
    response: &pb::GetTrustBundleResponse,
) -> Result<Option<JwtKeys>, JwtBundleError> {
    if response.jwt_keys.is_empty() {
        return Ok(None);
    }
    JwtKeys::from_json(&response.jwt_keys).map(Some)
}

fn ttl_seconds(ttl: Option<Duration>) -> i64 {
    ttl.map_or(0, |t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_keys_are_read_from_the_bundle_answer() {
        let mut response = pb::GetTrustBundleResponse::default();
        assert_eq!(trust_bundle_jwt_keys(&response), Ok(None));
        response.jwt_keys = br#"{"keys": []}"#.to_vec();
        assert_eq!(
            trust_bundle_jwt_keys(&response),
            Ok(Some(JwtKeys::default()))
        );
        response.jwt_keys = br#"{"keys": [{"kty": "EC", "crv": "P-256"}]}"#.to_vec();
        assert!(matches!(
            trust_bundle_jwt_keys(&response),
            Err(JwtBundleError::MissingKeyId { index: 1 })
        ));
    }
}
