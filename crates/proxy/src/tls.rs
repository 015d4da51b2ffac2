//! The sidecar's TLS: one server configuration for inbound, client configurations for each
//! upstream, all following the same credentials and trust bundle.
//!
//! Nothing here is rebuilt when the certificate rotates or the bundle changes: the
//! configurations hold the [`CredentialStore`] and [`TrustStore`], which every new handshake
//! reads once. Live connections keep what they negotiated.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hush_tls::{
    ALPN_H2, CredentialStore, ExpectedServer, HandshakeFailure, SpiffeClientVerifier,
    SpiffeServerVerifier, TlsConfigError, TrustStore,
};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::bulk::ReadAhead;

/// ALPN id of HTTP/1.1.
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN id hush uses between sidecars for opaque TCP, so the receiving side skips detection
/// (which could only wait, for a server-first protocol).
pub(crate) const ALPN_TCP: &[u8] = b"hush/tcp";

/// What a connection between sidecars carries, as told by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MeshProtocol {
    Http1,
    Http2,
    Tcp,
}

impl MeshProtocol {
    fn alpn(self) -> &'static [u8] {
        match self {
            Self::Http1 => ALPN_HTTP1,
            Self::Http2 => ALPN_H2,
            Self::Tcp => ALPN_TCP,
        }
    }

    /// The protocol a peer sidecar announced, if it announced one hush knows.
    pub(crate) fn from_alpn(alpn: Option<&[u8]>) -> Option<Self> {
        match alpn? {
            ALPN_HTTP1 => Some(Self::Http1),
            ALPN_H2 => Some(Self::Http2),
            ALPN_TCP => Some(Self::Tcp),
            _ => None,
        }
    }
}

/// The inbound side's acceptor: mutual TLS 1.3, client certificates required and verified as
/// X.509-SVIDs of the trust domain.
pub(crate) fn inbound_acceptor(
    credentials: &CredentialStore,
    trust: &TrustStore,
) -> Result<TlsAcceptor, TlsConfigError> {
    let config = hush_tls::server_config(
        Arc::new(credentials.clone()),
        Some(SpiffeClientVerifier::with_trust(trust, true)),
        &[ALPN_H2, ALPN_HTTP1, ALPN_TCP],
    )?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Dials one upstream with mutual TLS and checks that it proves an expected identity.
#[derive(Clone)]
pub(crate) struct MeshConnector {
    http1: TlsConnector,
    http2: TlsConnector,
    tcp: TlsConnector,
    pub(crate) expected: ExpectedServer,
    connect_timeout: Duration,
    handshake_timeout: Duration,
}

/// Dialling an upstream failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// No TCP connection. `target` says what was dialled: `upstream 10.0.0.1:15006`, `the app
    /// at 127.0.0.1:8080`.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed, or the upstream is not who it must be.
    #[error("refused {target}: {failure}")]
    Handshake {
        target: String,
        failure: HandshakeFailure,
    },
}

impl MeshConnector {
    pub(crate) fn new(
        credentials: &CredentialStore,
        trust: &TrustStore,
        expected: ExpectedServer,
        connect_timeout: Duration,
        handshake_timeout: Duration,
    ) -> Result<Self, TlsConfigError> {
        let verifier = SpiffeServerVerifier::with_trust(trust, expected.clone())?;
        let connector = |protocol: MeshProtocol| -> Result<TlsConnector, TlsConfigError> {
            let config = hush_tls::client_config(
                verifier.clone(),
                Some(Arc::new(credentials.clone())),
                &[protocol.alpn()],
            )?;
            Ok(TlsConnector::from(Arc::new(config)))
        };
        Ok(Self {
            http1: connector(MeshProtocol::Http1)?,
            http2: connector(MeshProtocol::Http2)?,
            tcp: connector(MeshProtocol::Tcp)?,
            expected,
            connect_timeout,
            handshake_timeout,
        })
    }

    /// Connects to `target` (`host:port`) and completes the handshake, announcing `protocol`.
    /// Dials `target` and returns the connection with how long its TLS handshake took.
    pub(crate) async fn dial(
        &self,
        target: &Target,
        protocol: MeshProtocol,
    ) -> Result<(TlsStream<ReadAhead<TcpStream>>, Duration), DialError> {
        let tcp = target
            .connect(self.connect_timeout)
            .await
            .map_err(|source| DialError::Connect {
                target: format!("upstream {target}"),
                source,
            })?;
        let connector = match protocol {
            MeshProtocol::Http1 => &self.http1,
            MeshProtocol::Http2 => &self.http2,
            MeshProtocol::Tcp => &self.tcp,
        };
        // The verifier checks the SPIFFE ID, not this name; it only has to be well-formed.
        let name = ServerName::IpAddress(
            tcp.peer_addr()
                .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| a.ip())
                .into(),
        );
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(
            self.handshake_timeout,
            connector.connect(name, ReadAhead::new(tcp)),
        )
        .await
        {
            Ok(Ok(tls)) => Ok((tls, started.elapsed())),
            Ok(Err(e)) => Err(DialError::Handshake {
                target: format!("upstream {target}"),
                failure: HandshakeFailure::from_io(&e),
            }),
            Err(_) => Err(DialError::Handshake {
                target: format!("upstream {target}"),
                failure: HandshakeFailure::timed_out(self.handshake_timeout),
            }),
        }
    }
}

/// Where an outbound connection goes: a resolved address or a `host:port` to resolve on each
/// dial (so DNS changes are followed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Addr(SocketAddr),
    Name(String),
}

impl Target {
    pub(crate) fn parse(value: &str) -> Self {
        value
            .parse()
            .map_or_else(|_| Self::Name(value.to_string()), Self::Addr)
    }

    pub(crate) async fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        let attempt = async {
            match self {
                Self::Addr(addr) => TcpStream::connect(addr).await,
                Self::Name(name) => TcpStream::connect(name.as_str()).await,
            }
        };
        let tcp = tokio::time::timeout(timeout, attempt).await.map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {}", humantime::format_duration(timeout)),
            )
        })??;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(addr) => addr.fmt(f),
            Self::Name(name) => f.write_str(name),
        }
    }
}
