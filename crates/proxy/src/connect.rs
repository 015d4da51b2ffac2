//! How the sidecar opens connections for HTTP: to its app in plaintext, and to a peer sidecar
//! with mutual TLS, counted and logged once per attempt.
//!
//! hyper's pooled clients dial through [`AppConnector`] and [`MeshHttpConnector`]; a mesh
//! connection is a [`MeshStream`], which hands every response that comes back over it what its
//! handshake settled ([`SessionFacts`]: the peer's SPIFFE ID, TLS version, cipher). The
//! outbound TCP relay dials with [`dial_logged`] directly.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hush_identity::check_leaf_svid;
use hush_tls::HandshakeStep;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tracing::{Span, info, warn};

use crate::bulk::ReadAhead;
use crate::metrics::{Direction, Metrics};
use crate::tls::{DialError, MeshConnector, MeshProtocol, Target};
use crate::trace::{self, SessionFacts};

/// The log target of a dial's outcome: dials are the outbound side's, and log filters
/// (`HUSH_LOG`, `POST /logging`) have named them so since before this module existed.
const DIAL_LOG: &str = "hush_proxy::outbound";

/// Dials an upstream, counting and logging the outcome: a refused upstream is logged once per
/// attempt, with the step that failed (for a wrong identity: expected and presented), and
/// written into `span` (the connection's, or the request's that needed the connection).
pub(crate) async fn dial_logged(
    connector: &MeshConnector,
    target: &Target,
    protocol: MeshProtocol,
    metrics: &Metrics,
    span: &Span,
) -> Result<TlsStream<ReadAhead<TcpStream>>, DialError> {
    match connector.dial(target, protocol).await {
        Ok((tls, handshake)) => {
            metrics.handshake(Direction::Outbound, handshake);
            Ok(tls)
        }
        Err(error) => {
            match &error {
                DialError::Handshake { failure, .. } => {
                    metrics.handshake_failure(Direction::Outbound, failure);
                    trace::record_handshake_failure(span, failure);
                    if failure.step == HandshakeStep::Connection {
                        info!(target: DIAL_LOG, "handshake with upstream {target} failed: {failure}");
                    } else {
                        warn!(target: DIAL_LOG, "refused upstream {target}: {failure}");
                    }
                }
                DialError::Connect { .. } => {
                    metrics.connect_failure(Direction::Outbound, "upstream");
                    trace::record_error(span, "connect", &error);
                    warn!(target: DIAL_LOG, "{error}");
                }
            }
            Err(error)
        }
    }
}

/// Dials the local app.
#[derive(Clone, Debug)]
pub(crate) struct AppConnector {
    addr: SocketAddr,
    connect_timeout: Duration,
}

impl AppConnector {
    pub(crate) fn new(addr: SocketAddr, connect_timeout: Duration) -> Self {
        Self {
            addr,
            connect_timeout,
        }
    }
}

impl tower::Service<Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let target = Target::Addr(self.addr);
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let tcp = target
                .connect(timeout)
                .await
                .map_err(|source| DialError::Connect {
                    target: format!("the app at {target}"),
                    source,
                })?;
            Ok(TokioIo::new(tcp))
        })
    }
}

/// Dials a peer sidecar with mutual TLS, whatever authority the request names.
#[derive(Clone)]
pub(crate) struct MeshHttpConnector {
    inner: Arc<MeshHttpInner>,
}

struct MeshHttpInner {
    connector: MeshConnector,
    target: Target,
    protocol: MeshProtocol,
    metrics: Metrics,
}

impl MeshHttpConnector {
    pub(crate) fn new(
        connector: MeshConnector,
        target: Target,
        protocol: MeshProtocol,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(MeshHttpInner {
                connector,
                target,
                protocol,
                metrics,
            }),
        }
    }
}

impl std::fmt::Debug for MeshHttpConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshHttpConnector")
            .field("target", &self.inner.target)
            .field("protocol", &self.inner.protocol)
            .finish()
    }
}

impl tower::Service<Uri> for MeshHttpConnector {
    type Response = TokioIo<MeshStream>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let inner = self.inner.clone();
        // hyper asks for a connection while polling the request that needs one: a failed dial
        // is that request's failure.
        let span = Span::current();
        Box::pin(async move {
            let tls = dial_logged(
                &inner.connector,
                &inner.target,
                inner.protocol,
                &inner.metrics,
                &span,
            )
            .await?;
            let facts = session_facts(&tls);
            Ok(TokioIo::new(MeshStream { tls, facts }))
        })
    }
}

/// What a finished client handshake settled; the verifier has checked the peer's SPIFFE ID.
pub(crate) fn session_facts(tls: &TlsStream<ReadAhead<TcpStream>>) -> SessionFacts {
    let (_, session) = tls.get_ref();
    let peer_id = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| check_leaf_svid(leaf).ok())
        .map_or_else(|| Arc::from("-"), |id| Arc::from(id.as_str()));
    SessionFacts::of(session, peer_id)
}

/// A mutual-TLS connection to a peer sidecar, as hyper's pool holds it.
#[derive(Debug)]
pub(crate) struct MeshStream {
    tls: TlsStream<ReadAhead<TcpStream>>,
    /// Handed to every response that comes back over this connection, for its span and
    /// access line.
    facts: SessionFacts,
}

impl Connection for MeshStream {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.facts.clone())
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}
