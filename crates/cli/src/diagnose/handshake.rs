//! The handshake, recorded: connect, shake hands the way a sidecar would, and keep what each
//! side did, for [`super::story`] to tell.
//!
//! Three witnesses stand around one real handshake: the socket is wrapped to keep the first
//! bytes each way ([`Recorder`]), from which [`hush_tls::hello`] reads the ClientHello and
//! ServerHello; the sidecar's own [`hush_tls::SpiffeServerVerifier`] is wrapped to keep the
//! chain it was shown and its verdict; the client-certificate resolver notes whether the server
//! asked. After the handshake, the server is given [`VERDICT_WAIT`] to refuse our certificate,
//! which TLS 1.3 servers do after the client has finished. Nothing here judges; it only records.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hush_tls::hello::{self, Offer, ServerFirst};
use hush_tls::rustls::client::ResolvesClientCert;
use hush_tls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use hush_tls::rustls::sign::CertifiedKey;
use hush_tls::rustls::{self, DigitallySignedStruct, SignatureScheme};
use hush_tls::{CredentialStore, HandshakeFailure};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::recorder::Recorder;
use super::setup::Setup;

/// How long to wait, after the handshake, for the server to refuse this side's certificate
/// (TLS 1.3 servers do that after the handshake) before taking its silence as acceptance.
const VERDICT_WAIT: Duration = Duration::from_secs(1);

/// What happened, from the TCP connection on.
pub(super) enum Connection {
    /// Nothing listens (connection refused).
    Refused,
    /// Connecting failed otherwise; the error in words.
    Failed(String),
    /// No answer within the timeout.
    TimedOut,
    /// Connected to `peer` in `took`; then the handshake.
    Connected {
        peer: String,
        took: Duration,
        tls: Box<Tls>,
    },
}

/// The TLS handshake, as the witnesses saw it.
pub(super) struct Tls {
    /// What we offered, read from our ClientHello.
    pub(super) offer: Option<Offer>,
    /// The first thing the server sent.
    pub(super) server_first: ServerFirst,
    /// The chain the server presented, if it got that far.
    pub(super) chain: Option<Vec<CertificateDer<'static>>>,
    /// The verifier's error on that chain (none: verified, or no bundle to verify with).
    pub(super) chain_error: Option<rustls::Error>,
    /// Whether the server asked for our certificate.
    pub(super) asked: bool,
    /// How the handshake ended.
    pub(super) outcome: Outcome,
}

/// How the handshake ended.
pub(super) enum Outcome {
    /// hush could not build its TLS client.
    Config(String),
    /// It did not finish within the timeout.
    TimedOut,
    /// It failed. `version` is the version the server chose when offered TLS 1.2 too, asked on
    /// a second connection when the server answered our hello with an alert.
    Failed {
        failure: HandshakeFailure,
        version: Option<String>,
    },
    /// It finished: what was negotiated, and what the server did next.
    Done { chosen: Chosen, after: After },
}

/// What the handshake settled, in the words of [`hush_tls::hello`].
pub(super) struct Chosen {
    pub(super) version: String,
    pub(super) suite: String,
    pub(super) group: String,
    pub(super) alpn: String,
}

/// What the server did in the [`VERDICT_WAIT`] after the handshake.
pub(super) enum After {
    /// It did not ask for our certificate: nothing to wait for.
    NotAsked,
    /// It kept the connection (silent, or sending data): it took our certificate, or our lack
    /// of one.
    Kept,
    /// It closed the connection cleanly (close_notify), without an alert.
    Closed,
    /// It sent an alert, or the connection broke.
    Failed(HandshakeFailure),
}

/// Connects to `target` and shakes hands, recording everything.
pub(super) async fn observe(target: &str, setup: &Setup, timeout: Duration) -> Connection {
    let started = Instant::now();
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Connection::Refused;
        }
        Ok(Err(e)) => return Connection::Failed(e.to_string()),
        Err(_) => return Connection::TimedOut,
    };
    let took = started.elapsed();
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| target.to_string(), |p| p.to_string());
    let tls = shake_hands(tcp, target, setup, timeout).await;
    Connection::Connected {
        peer,
        took,
        tls: Box::new(tls),
    }
}

async fn shake_hands(tcp: TcpStream, target: &str, setup: &Setup, timeout: Duration) -> Tls {
    let chain_witness = Arc::new(ChainWitness::new(setup));
    let ask_witness = Arc::new(AskWitness {
        credentials: setup.credentials.as_ref().map(|c| c.store.clone()),
        asked: AtomicBool::new(false),
    });
    let (stream, tape) = Recorder::new(tcp);
    let outcome = match hush_tls::client_config(
        chain_witness.clone(),
        Some(ask_witness.clone()),
        &[b"h2", b"http/1.1"],
    ) {
        Err(e) => Outcome::Config(e.to_string()),
        Ok(config) => {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let connecting = connector.connect(setup.server_name.clone(), stream);
            match tokio::time::timeout(timeout, connecting).await {
                Err(_) => Outcome::TimedOut,
                Ok(Ok(tls)) => {
                    let asked = ask_witness.asked.load(Ordering::Relaxed);
                    finished(tls, asked).await
                }
                Ok(Err(error)) => Outcome::Failed {
                    failure: HandshakeFailure::from_io(&error),
                    version: None,
                },
            }
        }
    };
    let server_first = hello::server_first(&tape.received());
    let outcome = match (outcome, &server_first) {
        // Refused at the hello: ask again offering TLS 1.2 too, only to name the version.
        (Outcome::Failed { failure, .. }, ServerFirst::Alert(_)) => Outcome::Failed {
            failure,
            version: version_spoken(target, &setup.server_name, timeout).await,
        },
        (outcome, _) => outcome,
    };
    let (chain, chain_error) = chain_witness.seen().unzip();
    Tls {
        offer: hello::client_hello(&tape.sent()),
        server_first,
        chain,
        chain_error: chain_error.flatten(),
        asked: ask_witness.asked.load(Ordering::Relaxed),
        outcome,
    }
}

/// After a finished handshake: what was chosen, and what the server did next.
async fn finished<S>(mut tls: tokio_rustls::client::TlsStream<S>, asked: bool) -> Outcome
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (_, connection) = tls.get_ref();
    // The one version hush's TLS speaks, named as the hello parser names versions.
    let version = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        Some(other) => format!("{other:?}"),
        None => "?".to_string(),
    };
    let chosen = Chosen {
        version,
        suite: connection
            .negotiated_cipher_suite()
            .map_or("?".to_string(), |s| format!("{:?}", s.suite())),
        group: connection
            .negotiated_key_exchange_group()
            .map_or("?".to_string(), |g| format!("{:?}", g.name())),
        alpn: connection.alpn_protocol().map_or("none".to_string(), |p| {
            String::from_utf8_lossy(p).into_owned()
        }),
    };
    if !asked {
        return Outcome::Done {
            chosen,
            after: After::NotAsked,
        };
    }
    let mut buf = [0u8; 512];
    let after = match tokio::time::timeout(VERDICT_WAIT, tls.read(&mut buf)).await {
        Ok(Err(error)) => After::Failed(HandshakeFailure::from_io(&error)),
        Ok(Ok(0)) => After::Closed,
        Ok(Ok(_)) | Err(_) => After::Kept,
    };
    Outcome::Done { chosen, after }
}

/// Which version the server speaks when TLS 1.2 is offered too, from a hand-made ClientHello
/// (hush's TLS has no 1.2 to offer): only the ServerHello is read, nothing more is sent.
async fn version_spoken(
    target: &str,
    server_name: &ServerName<'_>,
    timeout: Duration,
) -> Option<String> {
    let server_name = match server_name {
        ServerName::DnsName(name) => Some(name.as_ref().to_string()),
        _ => None,
    };
    let mut tcp = tokio::time::timeout(timeout, TcpStream::connect(target))
        .await
        .ok()?
        .ok()?;
    tcp.write_all(&hello::hello_offering_tls12(server_name.as_deref()))
        .await
        .ok()?;
    let mut received = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while received.len() < 16 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
            _ => break,
        }
        if let ServerFirst::Hello(choice) = hello::server_first(&received) {
            return Some(choice.version);
        }
    }
    None
}

// === the witnesses ===

/// The chain the server presented and the verifier's error, if any.
type Seen = (Vec<CertificateDer<'static>>, Option<rustls::Error>);

/// Keeps what the server presented and what verification said about it.
#[derive(Debug)]
struct ChainWitness {
    verifier: Option<Arc<dyn ServerCertVerifier>>,
    seen: Mutex<Option<Seen>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ChainWitness {
    fn new(setup: &Setup) -> Self {
        let verifier = setup.trust.as_ref().and_then(|trust| {
            hush_tls::SpiffeServerVerifier::with_trust(trust, setup.expected.clone())
                .ok()
                .map(|v| v as Arc<dyn ServerCertVerifier>)
        });
        Self {
            verifier,
            seen: Mutex::new(None),
            algorithms: hush_tls::provider().signature_verification_algorithms,
        }
    }

    /// The chain the server presented and the verifier's error, if it got that far.
    fn seen(&self) -> Option<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ServerCertVerifier for ChainWitness {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = match &self.verifier {
            Some(verifier) => verifier
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .err(),
            None => None,
        };
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((chain, verdict.clone()));
        match verdict {
            Some(error) => Err(error),
            None => Ok(ServerCertVerified::assertion()),
        }
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

/// Notes whether the server asked for this side's certificate.
#[derive(Debug)]
struct AskWitness {
    credentials: Option<Arc<CredentialStore>>,
    asked: AtomicBool,
}

impl ResolvesClientCert for AskWitness {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        self.credentials
            .as_ref()
            .and_then(|store| store.resolve(root_hint_subjects, sigschemes))
    }

    fn has_certs(&self) -> bool {
        // Always asked, so that a request for a certificate is noticed even without one.
        true
    }
}
