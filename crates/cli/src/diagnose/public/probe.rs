//! The public server, probed: one TCP connection, then handshakes as a browser would make
//! them (TLS 1.3 and 1.2 offered together), and one for each version apart, and hand-built
//! TLS 1.1 and 1.0 hellos (rustls cannot speak those). Nothing here judges; it records what
//! each attempt saw, for [`super`] to tell.
//!
//! Every handshake accepts whatever chain the server presents and keeps it, with any stapled
//! OCSP response: the chain is judged afterwards, certificate by certificate, so that a
//! refused chain still shows the versions and the name, and the failure can name the
//! certificate at fault rather than stop at the first error. Signatures over the handshake are
//! still verified, as rustls always does; nothing is ever sent after a handshake.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hush_tls::hello::{self, ServerFirst};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::legacy::{self, LegacyVersion};
use crate::diagnose::recorder::Recorder;

/// How the TCP connection went.
pub(super) enum Connect {
    /// Connected to this address, in this long.
    Connected { peer: String, took: Duration },
    /// Nothing listens (connection refused).
    Refused,
    /// Connecting failed otherwise; the error in words.
    Failed(String),
    /// No answer within the timeout.
    TimedOut,
}

/// What a rustls handshake agreed on, and what the server presented.
#[derive(Clone, Debug)]
pub(super) struct Agreed {
    pub(super) version: String,
    pub(super) suite: String,
    pub(super) group: String,
    pub(super) alpn: Option<String>,
    /// The chain as sent, leaf first.
    pub(super) chain: Vec<CertificateDer<'static>>,
    /// The stapled OCSP response, if any (empty: none).
    pub(super) ocsp: Vec<u8>,
}

/// One handshake attempt with rustls.
#[derive(Clone, Debug)]
pub(super) enum Attempt {
    /// The handshake finished.
    Agreed(Box<Agreed>),
    /// The server refused it with a TLS alert (its name, as rustls prints it).
    Alert(String),
    /// It failed otherwise; the error in words.
    Failed(String),
    /// No answer, or no end, within the timeout.
    TimedOut,
    /// The TCP connection for it failed.
    NoConnection(String),
}

/// Everything seen, from the TCP connection on.
pub(super) struct Observation {
    pub(super) connect: Connect,
    /// The first answer to the browser-like hello, read from the bytes on the wire.
    pub(super) first: ServerFirst,
    /// The browser-like handshake: TLS 1.3 and 1.2 offered.
    pub(super) main: Attempt,
    /// TLS 1.3 alone, then TLS 1.2 alone (absent when the server did not speak TLS).
    pub(super) tls13: Option<Attempt>,
    pub(super) tls12: Option<Attempt>,
    /// TLS 1.1, then TLS 1.0, by hand-built hellos.
    pub(super) legacy: Vec<(LegacyVersion, legacy::Answer)>,
}

/// Probes `target` with `server_name` as SNI (none for an IP address, as rustls does).
pub(super) async fn observe(
    target: &str,
    server_name: &ServerName<'static>,
    timeout: Duration,
) -> Observation {
    let started = Instant::now();
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let connect = if e.kind() == io::ErrorKind::ConnectionRefused {
                Connect::Refused
            } else {
                Connect::Failed(e.to_string())
            };
            return Observation::unconnected(connect);
        }
        Err(_) => return Observation::unconnected(Connect::TimedOut),
    };
    let connect = Connect::Connected {
        peer: tcp
            .peer_addr()
            .map_or_else(|_| target.to_string(), |p| p.to_string()),
        took: started.elapsed(),
    };
    let (stream, tape) = Recorder::new(tcp);
    let main = handshake(stream, server_name, &ALL_VERSIONS, timeout).await;
    let first = hello::server_first(&tape.received());
    let mut observation = Observation {
        connect,
        first,
        main,
        tls13: None,
        tls12: None,
        legacy: Vec::new(),
    };
    // A server that does not answer in TLS gets no more hellos: there is nothing to learn. An
    // answer in TLS records this parser does not read is still TLS, and asked on.
    if matches!(
        observation.first,
        ServerFirst::NotTls(_) | ServerFirst::Nothing
    ) {
        return observation;
    }
    observation.tls13 =
        Some(attempt(target, server_name, &[&rustls::version::TLS13], timeout).await);
    observation.tls12 =
        Some(attempt(target, server_name, &[&rustls::version::TLS12], timeout).await);
    let sni = match server_name {
        ServerName::DnsName(name) => Some(name.as_ref().to_string()),
        _ => None,
    };
    for version in [LegacyVersion::Tls11, LegacyVersion::Tls10] {
        let answer = legacy::probe(target, version, sni.as_deref(), timeout).await;
        observation.legacy.push((version, answer));
    }
    observation
}

impl Observation {
    fn unconnected(connect: Connect) -> Self {
        Self {
            connect,
            first: ServerFirst::Nothing,
            main: Attempt::NoConnection(String::new()),
            tls13: None,
            tls12: None,
            legacy: Vec::new(),
        }
    }
}

static ALL_VERSIONS: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

/// A handshake on a new connection, offering `versions` only.
async fn attempt(
    target: &str,
    server_name: &ServerName<'static>,
    versions: &[&'static SupportedProtocolVersion],
    timeout: Duration,
) -> Attempt {
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => handshake(tcp, server_name, versions, timeout).await,
        Ok(Err(e)) => Attempt::NoConnection(e.to_string()),
        Err(_) => Attempt::NoConnection(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// rustls's own provider, with its TLS 1.2 suites: hush's mesh provider speaks TLS 1.3 only,
/// but a public server is asked what a browser would offer.
fn browser_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

async fn handshake<S>(
    stream: S,
    server_name: &ServerName<'static>,
    versions: &[&'static SupportedProtocolVersion],
    timeout: Duration,
) -> Attempt
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let provider = browser_provider();
    let collector = Arc::new(Collector {
        seen: Mutex::new(None),
        algorithms: provider.signature_verification_algorithms,
    });
    let config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
    {
        Ok(builder) => builder,
        Err(e) => return Attempt::Failed(format!("cannot build a TLS client: {e}")),
    };
    let mut config = config
        .dangerous()
        .with_custom_certificate_verifier(collector.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connecting = connector.connect(server_name.clone(), stream);
    let tls = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => return Attempt::TimedOut,
        Ok(Err(e)) => return failed(&e),
        Ok(Ok(tls)) => tls,
    };
    let (_, connection) = tls.get_ref();
    let (chain, ocsp) = collector
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .unwrap_or_default();
    Attempt::Agreed(Box::new(Agreed {
        version: match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".into(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".into(),
            Some(other) => format!("{other:?}"),
            None => "?".into(),
        },
        suite: connection
            .negotiated_cipher_suite()
            .map_or_else(|| "?".into(), |s| format!("{:?}", s.suite())),
        group: connection
            .negotiated_key_exchange_group()
            .map_or_else(|| "?".into(), |g| format!("{:?}", g.name())),
        alpn: connection
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        chain,
        ocsp,
    }))
}

/// A failed handshake, in words: the alert when the server sent one.
fn failed(error: &io::Error) -> Attempt {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match (tls, error.kind()) {
        (Some(rustls::Error::AlertReceived(alert)), _) => Attempt::Alert(format!("{alert:?}")),
        (Some(other), _) => Attempt::Failed(other.to_string()),
        (None, io::ErrorKind::UnexpectedEof) => {
            Attempt::Failed("the server closed the connection during the handshake".into())
        }
        (None, io::ErrorKind::ConnectionReset) => {
            Attempt::Failed("the server reset the connection during the handshake".into())
        }
        (None, _) => Attempt::Failed(error.to_string()),
    }
}

/// The chain and stapled OCSP response a server presented.
type Presented = (Vec<CertificateDer<'static>>, Vec<u8>);

/// Keeps the chain and OCSP response the server presented, and lets the handshake go on:
/// the chain is judged afterwards (see the module's doc).
#[derive(Debug)]
struct Collector {
    seen: Mutex<Option<Presented>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Collector {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((chain, ocsp_response.to_vec()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Reads from `tcp` until `decided` says what the bytes so far are, the server closes, or
/// `timeout` passes; returns what was read and whether the server closed.
pub(super) async fn read_answer(
    tcp: &mut TcpStream,
    timeout: Duration,
    decided: impl Fn(&[u8]) -> bool,
) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while received.len() < 32 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, true),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return (received, false),
        }
        if decided(&received) {
            break;
        }
    }
    (received, false)
}

/// Writes `bytes` to a new connection to `target`; the connection, or the error in words.
pub(super) async fn send_to(
    target: &str,
    bytes: &[u8],
    timeout: Duration,
) -> Result<TcpStream, String> {
    let mut tcp = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no answer to the TCP connection".into()),
    };
    tcp.write_all(bytes).await.map_err(|e| e.to_string())?;
    Ok(tcp)
}
