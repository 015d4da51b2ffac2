//! Serving the CA: TLS on a TCP listener, both gRPC services on one port.
//!
//! hush runs its own accept loop rather than tonic's TLS so that it can (a) bound the TLS
//! handshake with a timeout, (b) cap concurrent connections, and (c) rotate its own server
//! certificate, issued from its intermediate, without a restart.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hush_identity::{SpiffeId, TrustDomain};
use hush_tls::rustls;
use hush_tls::{ALPN_H2, CredentialStore, SpiffeClientVerifier, explain_io_error, peer_spiffe_id};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info, warn};

use crate::service::CaService;

/// How the CA serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// DNS names for the CA's server certificate besides `localhost`.
    pub dns_names: Vec<String>,
    /// IP addresses for the CA's server certificate besides 127.0.0.1.
    pub ips: Vec<IpAddr>,
    /// A client that has not finished its TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// Requests larger than this are refused with RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
    /// Connections beyond this wait in the kernel's backlog.
    pub max_connections: usize,
    /// A request not answered by then fails with CANCELLED (a stuck TokenReview, say).
    pub request_timeout: Duration,
    /// Lifetime of the CA's own server certificate; it is re-issued at half of it.
    pub server_cert_lifetime: Duration,
    /// After shutdown is asked for, in-flight requests get this long to finish; connections
    /// still open then (an idle or hung client) are closed.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            dns_names: Vec::new(),
            ips: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            max_request_bytes: 64 * 1024,
            max_connections: 4096,
            request_timeout: Duration::from_secs(30),
            server_cert_lifetime: Duration::from_secs(24 * 3600),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The CA could not start serving.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The server certificate could not be issued.
    #[error("cannot issue the CA's own server certificate: {0}")]
    ServerCertificate(String),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] hush_tls::TlsConfigError),
    /// The gRPC server failed.
    #[error("gRPC server error: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves both CA services on `listener` until `shutdown` completes.
pub async fn serve(
    service: CaService,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut dns_names = vec!["localhost".to_string()];
    dns_names.extend(options.dns_names.iter().cloned());
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    ips.extend(options.ips.iter().copied());

    let credentials = CredentialStore::new();
    install_server_certificate(&service, &credentials, &dns_names, &ips, &options)?;
    let rotation = tokio::spawn(rotate_server_certificate(
        service.clone(),
        credentials.clone(),
        dns_names,
        ips,
        options.clone(),
    ));

    // Client certificates are optional: a workload with a valid certificate of this trust
    // domain may present it instead of a token to renew it.
    let bundle = service.authority().bundle();
    let client_verifier = SpiffeClientVerifier::new(bundle, false)?;
    let tls = hush_tls::server_config(Arc::new(credentials), Some(client_verifier), &[ALPN_H2])?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let (conn_tx, conn_rx) = mpsc::channel(128);
    let accept = tokio::spawn(accept_loop(
        listener,
        acceptor,
        bundle.trust_domain().clone(),
        conn_tx,
        Arc::new(Semaphore::new(options.max_connections)),
        options.handshake_timeout,
    ));

    let limit = options.max_request_bytes;
    let graceful = Arc::new(Notify::new());
    let stop_serving = {
        let graceful = graceful.clone();
        async move { graceful.notified().await }
    };
    let server = tonic::transport::Server::builder()
        .timeout(options.request_timeout)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(1024))
        .layer(tower::util::MapResponseLayer::new(move |r| {
            oversize_is_resource_exhausted(r, limit)
        }))
        .add_service(service.hush_service().max_decoding_message_size(limit))
        .add_service(service.istio_service().max_decoding_message_size(limit))
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), stop_serving);
    tokio::pin!(server, shutdown);
    let result = tokio::select! {
        result = &mut server => result,
        () = &mut shutdown => {
            accept.abort();
            graceful.notify_one();
            match tokio::time::timeout(options.shutdown_grace, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    // Graceful shutdown waits for every connection to close; a hung client must
                    // not keep the CA alive, so what is left is dropped with the server future.
                    warn!(grace = ?options.shutdown_grace, "connections still open after the shutdown grace period; closing them");
                    Ok(())
                }
            }
        }
    };
    accept.abort();
    rotation.abort();
    Ok(result?)
}

fn install_server_certificate(
    service: &CaService,
    credentials: &CredentialStore,
    dns_names: &[String],
    ips: &[IpAddr],
    options: &ServeOptions,
) -> Result<(), ServeError> {
    let (chain, key) = service
        .authority()
        .issue_server_certificate(dns_names, ips, options.server_cert_lifetime)
        .map_err(|e| ServeError::ServerCertificate(e.to_string()))?;
    credentials
        .install(chain, key)
        .map_err(|e| ServeError::ServerCertificate(e.to_string()))
}

async fn rotate_server_certificate(
    service: CaService,
    credentials: CredentialStore,
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
    options: ServeOptions,
) {
    let period = options.server_cert_lifetime / 2;
    loop {
        tokio::time::sleep(period).await;
        match install_server_certificate(&service, &credentials, &dns_names, &ips, &options) {
            Ok(()) => info!("renewed the CA's server certificate"),
            Err(e) => {
                warn!(error = %e, "cannot renew the CA's server certificate; keeping the current one")
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    trust_domain: TrustDomain,
    connections: mpsc::Sender<Result<TlsConnection, io::Error>>,
    slots: Arc<Semaphore>,
    handshake_timeout: Duration,
) {
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Running out of file descriptors is temporary; back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        let trust_domain = trust_domain.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().ok();
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    // The verifier already checked the chain and the SVID rules.
                    let spiffe_id = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|leaf| peer_spiffe_id(leaf, &trust_domain).ok());
                    let conn = TlsConnection {
                        tls,
                        info: PeerInfo {
                            tcp: TcpConnectInfo {
                                local_addr: local,
                                remote_addr: Some(peer),
                            },
                            spiffe_id,
                        },
                        _permit: permit,
                    };
                    let _ = connections.send(Ok(conn)).await;
                }
                Ok(Err(e)) => {
                    // A client certificate that fails verification is someone trying to renew
                    // an identity they cannot prove: worth an operator's eye. Other failures
                    // (scanners, plaintext, aborted connections) stay at debug.
                    let bad_certificate = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
                    if bad_certificate {
                        let reason = explain_io_error(&e);
                        info!(%peer, %reason, "refused a client certificate");
                    } else {
                        debug!(%peer, error = %e, "TLS handshake with a client failed");
                    }
                }
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// tonic answers an oversized message with OUT_OF_RANGE; hush promises RESOURCE_EXHAUSTED with
/// a plain message, so the trailers-only error response is rewritten here.
fn oversize_is_resource_exhausted<B>(
    mut response: http::Response<B>,
    limit: usize,
) -> http::Response<B> {
    let headers = response.headers_mut();
    let is_oversize = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            // grpc-message is percent-encoded on the wire.
            .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
    if is_oversize {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        if let Ok(message) = http::HeaderValue::from_str(&format!(
            "request too large: the CA accepts requests of at most {limit} bytes"
        )) {
            headers.insert("grpc-message", message);
        }
    }
    response
}

/// What the CA knows about the other end of a connection; every request carries it as an
/// extension.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Addresses.
    pub tcp: TcpConnectInfo,
    /// The SPIFFE ID of a verified client certificate, if the client presented one.
    pub spiffe_id: Option<SpiffeId>,
}

/// An accepted TLS connection, holding its connection slot until it closes.
struct TlsConnection {
    tls: TlsStream<TcpStream>,
    info: PeerInfo,
    _permit: OwnedSemaphorePermit,
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}
