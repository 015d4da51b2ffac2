//! `hush diagnose`: connect to a TLS port the way a sidecar would and tell the handshake as a
//! story, step by step, with the real values; when it fails, name the step and the reason in
//! one line, and say what to do.
//!
//! The steps: 1 the TCP connection; 2 the hellos (what this side offered, what the server
//! chose; read from the bytes on the wire, see [`hush_tls::hello`]); 3 the server's certificate chain and
//! its verification (chain, validity, SPIFFE ID); 4 whether the server asked for this side's
//! certificate, and whether it accepted it. Verification uses the same verifier as the sidecar,
//! wrapped to keep what it saw, and failures are worded by the same [`HandshakeFailure`].

mod recorder;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use hush_identity::{CertificateSummary, SpiffeId, TrustBundle};
use hush_tls::rustls::client::ResolvesClientCert;
use hush_tls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use hush_tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use hush_tls::rustls::sign::CertifiedKey;
use hush_tls::rustls::{self, DigitallySignedStruct, SignatureScheme};
use hush_tls::{CredentialStore, ExpectedServer, HandshakeFailure, HandshakeStep, TrustStore};
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use hush_tls::hello::{self, ServerFirst};

use self::recorder::Recorder;
use crate::check::span;
use crate::parse_duration;

/// How long to wait, after the handshake, for the server to refuse this side's certificate
/// (TLS 1.3 servers do that after the handshake) before taking its silence as acceptance.
const VERDICT_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
pub(crate) struct DiagnoseArgs {
    /// The address to check, HOST:PORT (usually a sidecar's inbound port).
    target: String,
    /// The trust bundle (PEM) to verify the server with; without it the chain is shown but not
    /// verified.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// A certificate chain (PEM) to present, as a sidecar presents its own.
    #[arg(long, requires = "key", conflicts_with = "token_file")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// A join token or service-account token: first get a certificate from --ca with it.
    #[arg(long, requires = "ca")]
    token_file: Option<PathBuf>,
    /// The CA to get a certificate from (with --token-file), `https://host:port`.
    #[arg(long, requires = "token_file")]
    ca: Option<String>,
    /// The SPIFFE ID the server must prove (default: any of the bundle's trust domain).
    #[arg(long)]
    expect_id: Option<String>,
    /// The TLS server name to send (default: the target's host).
    #[arg(long)]
    server_name: Option<String>,
    /// How long connecting, and then the handshake, may each take.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the report as JSON, for scripts.
    #[arg(long)]
    json: bool,
}

/// The whole story.
#[derive(Debug, Serialize)]
struct Report {
    target: String,
    /// No step failed (set from `failure` once the story is told).
    ok: bool,
    steps: Vec<Step>,
    /// The first step that failed, in one line, with what to do.
    failure: Option<Failure>,
}

#[derive(Debug, Serialize)]
struct Step {
    number: u8,
    name: &'static str,
    status: Status,
    lines: Vec<String>,
    #[serde(skip_serializing_if = "Value::is_null")]
    details: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Failed,
    Skipped,
}

#[derive(Debug, Serialize)]
struct Failure {
    step: u8,
    name: &'static str,
    reason: String,
    message: String,
    hint: String,
}

pub(crate) async fn run(args: DiagnoseArgs) -> Result<bool> {
    let setup = Setup::from_args(&args).await?;
    let mut report = diagnose(&args.target, &setup, args.timeout).await;
    report.ok = report.failure.is_none();
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        out.write_all(render(&report, &setup).as_bytes())?;
    }
    out.flush()?;
    Ok(report.ok)
}

/// What the checks need, read from the arguments before anything is dialled.
struct Setup {
    trust: Option<TrustStore>,
    expected: ExpectedServer,
    credentials: Option<(Arc<CredentialStore>, String)>,
    server_name: ServerName<'static>,
}

impl Setup {
    async fn from_args(args: &DiagnoseArgs) -> Result<Self> {
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
            (Some(cert), Some(key), _, _) => Some(credentials_from_files(cert, key)?),
            (_, _, Some(token_file), Some(ca)) => {
                let Some(bundle) = &bundle else {
                    bail!("--token-file needs --bundle, to trust the CA at {ca}");
                };
                Some(credentials_from_ca(ca, token_file, bundle).await?)
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
}

fn host_of(target: &str) -> &str {
    let host = target.rsplit_once(':').map_or(target, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn credentials_from_files(cert: &PathBuf, key: &PathBuf) -> Result<(Arc<CredentialStore>, String)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("--cert {}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        bail!("--cert {}: no certificate in the file", cert.display());
    };
    let identity = describe_identity(leaf);
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("--key {}", key.display()))?;
    let store = CredentialStore::new();
    store
        .install(chain, key)
        .with_context(|| format!("--cert {} and --key", cert.display()))?;
    Ok((Arc::new(store), identity))
}

async fn credentials_from_ca(
    ca: &str,
    token_file: &PathBuf,
    bundle: &TrustBundle,
) -> Result<(Arc<CredentialStore>, String)> {
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read --token-file {}", token_file.display()))?;
    let key = rcgen::KeyPair::generate().context("cannot make a key pair")?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .context("cannot make a CSR")?;
    let client = hush_ca::CaClient::new(ca, bundle.roots())?;
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
        .install(chain, PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .context("the CA's certificate cannot be used")?;
    Ok((
        Arc::new(store),
        format!("{} (from the CA at {ca})", response.spiffe_id),
    ))
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

// === the handshake ===

/// Keeps what the server presented and what verification said about it.
#[derive(Debug)]
struct ChainWitness {
    verifier: Option<Arc<dyn ServerCertVerifier>>,
    seen: Mutex<Option<(Vec<CertificateDer<'static>>, Option<rustls::Error>)>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ChainWitness {
    /// The chain the server presented and the verifier's error, if it got that far.
    fn seen(&self) -> Option<(Vec<CertificateDer<'static>>, Option<rustls::Error>)> {
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

async fn diagnose(target: &str, setup: &Setup, timeout: Duration) -> Report {
    let mut report = Report {
        target: target.to_string(),
        ok: false,
        steps: Vec::new(),
        failure: None,
    };

    // Step 1: the connection.
    let started = Instant::now();
    let connected = tokio::time::timeout(timeout, TcpStream::connect(target)).await;
    let (reason, message) = match connected {
        Ok(Ok(tcp)) => {
            return finish(report, tcp, started, target, setup, timeout).await;
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => (
            "refused",
            format!("nothing listens on {target} (connection refused)"),
        ),
        Ok(Err(e)) => ("connect_error", format!("cannot connect to {target}: {e}")),
        Err(_) => (
            "timeout",
            format!(
                "no answer from {target} within {}",
                humantime::format_duration(timeout)
            ),
        ),
    };
    report.fail(1, "connection", reason, message, Vec::new());
    report
}

/// Steps 1 (passed) to 4, on a connected socket.
async fn finish(
    mut report: Report,
    tcp: TcpStream,
    started: Instant,
    target: &str,
    setup: &Setup,
    timeout: Duration,
) -> Report {
    let peer: Option<SocketAddr> = tcp.peer_addr().ok();
    report.pass(
        1,
        "connection",
        vec![format!(
            "connected to {} in {:.1} ms",
            peer.map_or_else(|| target.to_string(), |p| p.to_string()),
            started.elapsed().as_secs_f64() * 1000.0
        )],
        Value::Null,
    );

    // Steps 2 and 3 happen inside one handshake; the witnesses and the tape tell them apart.
    let provider = hush_tls::provider();
    let chain_witness = Arc::new(ChainWitness {
        verifier: match &setup.trust {
            Some(trust) => {
                hush_tls::SpiffeServerVerifier::with_trust(trust, setup.expected.clone())
                    .ok()
                    .map(|v| v as Arc<dyn ServerCertVerifier>)
            }
            None => None,
        },
        seen: Mutex::new(None),
        algorithms: provider.signature_verification_algorithms,
    });
    let ask_witness = Arc::new(AskWitness {
        credentials: setup.credentials.as_ref().map(|(store, _)| store.clone()),
        asked: AtomicBool::new(false),
    });
    let config = match hush_tls::client_config(
        chain_witness.clone(),
        Some(ask_witness.clone()),
        &[b"h2", b"http/1.1"],
    ) {
        Ok(config) => config,
        Err(e) => {
            report.fail(
                2,
                "hello",
                "config",
                format!("cannot build a TLS client: {e}"),
                Vec::new(),
            );
            return report;
        }
    };
    let (stream, tape) = Recorder::new(tcp);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = tokio::time::timeout(
        timeout,
        connector.connect(setup.server_name.clone(), stream),
    )
    .await;
    let offer = hello::client_hello(&tape.sent());
    let server_first = hello::server_first(&tape.received());
    let mut hello_lines = Vec::new();
    if let Some(offer) = &offer {
        hello_lines.push(format!(
            "we offered: {}; cipher suites {}; groups {}; key shares {}; ALPN {}",
            offer.versions.join(", "),
            offer.cipher_suites.join(", "),
            offer.groups.join(", "),
            offer.key_shares.join(", "),
            offer.alpn.join(", ")
        ));
    }
    let hello_details = json!({ "offered": offer });

    let mut tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            let failure = HandshakeFailure::from_io(&error);
            explain_failed_handshake(
                &mut report,
                target,
                setup,
                timeout,
                &failure,
                &server_first,
                hello_lines,
                hello_details,
                &chain_witness,
                &ask_witness,
            )
            .await;
            return report;
        }
        Err(_) => {
            let reason = match server_first {
                ServerFirst::Nothing => format!(
                    "the server did not answer our ClientHello within {}",
                    humantime::format_duration(timeout)
                ),
                _ => format!(
                    "the handshake did not finish within {}",
                    humantime::format_duration(timeout)
                ),
            };
            report.fail(2, "hello", "timeout", reason, hello_lines);
            return report;
        }
    };

    // The handshake finished: step 2 from what was negotiated.
    let (_, connection) = tls.get_ref();
    // The one version hush's TLS speaks, named as the hello parser names versions.
    let version = match connection.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        Some(other) => format!("{other:?}"),
        None => "?".to_string(),
    };
    let suite = connection
        .negotiated_cipher_suite()
        .map_or("?".to_string(), |s| format!("{:?}", s.suite()));
    let group = connection
        .negotiated_key_exchange_group()
        .map_or("?".to_string(), |g| format!("{:?}", g.name()));
    let alpn = connection.alpn_protocol().map_or("none".to_string(), |p| {
        String::from_utf8_lossy(p).into_owned()
    });
    hello_lines.push(format!(
        "the server chose: {version}, {suite}, key exchange {group}, ALPN {alpn}"
    ));
    let mut details = hello_details;
    details["chosen"] =
        json!({"version": version, "cipher_suite": suite, "group": group, "alpn": alpn});
    report.pass(2, "hello", hello_lines, details);

    // Step 3: the certificate chain, which verified (or was not checked).
    let verified = certificate_step(&mut report, setup, &chain_witness);

    // Step 4: this side's certificate.
    let asked = ask_witness.asked.load(Ordering::Relaxed);
    let ours = setup.credentials.as_ref().map(|(_, id)| id.clone());
    if !asked {
        report.fail(
            4,
            "client certificate",
            "no_client_auth",
            "the server did not ask for a client certificate: it does not do mutual TLS".into(),
            vec!["the server did not send a CertificateRequest".into()],
        );
        return report;
    }
    let Some(ours) = ours else {
        // The handshake finished on our side; the server refuses an empty certificate after.
        let lines = vec!["the server asked for our certificate; we had none to present".into()];
        report.fail(
            4,
            "client certificate",
            "no_credentials",
            "the server requires a client certificate and we presented none".into(),
            lines,
        );
        return report;
    };
    let mut buf = [0u8; 512];
    match tokio::time::timeout(VERDICT_WAIT, tls.read(&mut buf)).await {
        Ok(Err(error)) => {
            let failure = HandshakeFailure::from_io(&error);
            report.fail(
                4,
                "client certificate",
                failure.reason.as_str(),
                server_words(&failure.message),
                vec![format!(
                    "the server asked for our certificate; we presented {ours}"
                )],
            );
            return report;
        }
        Ok(Ok(0)) => {
            report.fail(
                4,
                "client certificate",
                "closed",
                "the server closed the connection right after the handshake, without a reason"
                    .into(),
                vec![format!(
                    "the server asked for our certificate; we presented {ours}"
                )],
            );
            return report;
        }
        _ => report.pass(
            4,
            "client certificate",
            vec![format!(
                "the server asked for our certificate; we presented {ours}, and it accepted it"
            )],
            Value::Null,
        ),
    }
    if !verified && report.failure.is_none() {
        report.failure = Some(Failure {
            step: 3,
            name: "certificate verification",
            reason: "not_verified".into(),
            message: "the server's certificate was not verified: no --bundle was given".into(),
            hint: hint("not_verified").into(),
        });
    }
    report
}

/// Step 3 after a finished handshake: returns whether the chain was verified.
fn certificate_step(report: &mut Report, setup: &Setup, witness: &ChainWitness) -> bool {
    let seen = witness.seen();
    let Some((chain, _)) = seen else {
        report.skip(
            3,
            "certificate verification",
            "the server presented no certificate",
        );
        return false;
    };
    let mut lines = describe_chain(&chain);
    let verified = setup.trust.is_some();
    if let Some(trust) = &setup.trust {
        lines.push(format!(
            "chain: ok, to a root of the bundle (trust domain {})",
            trust.bundle().trust_domain()
        ));
        if let Some(summary) = chain
            .first()
            .and_then(|c| CertificateSummary::from_der(c).ok())
        {
            lines.push(format!(
                "validity: ok, {} left",
                time_left(summary.not_after)
            ));
            let expected = match &setup.expected {
                ExpectedServer::OneOf(ids) => format!(
                    "expected {}",
                    ids.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
                ExpectedServer::AnyInTrustDomain => "any of the trust domain".into(),
            };
            lines.push(format!(
                "SPIFFE ID: ok, {} ({expected})",
                summary
                    .spiffe_id
                    .map_or_else(|| "?".into(), |id| id.to_string())
            ));
        }
    } else {
        lines.push("not verified: no --bundle given".into());
    }
    report.steps.push(Step {
        number: 3,
        name: "certificate verification",
        status: if verified {
            Status::Ok
        } else {
            Status::Skipped
        },
        lines,
        details: json!({ "chain": chain_details(&chain) }),
    });
    verified
}

#[allow(clippy::too_many_arguments)]
async fn explain_failed_handshake(
    report: &mut Report,
    target: &str,
    setup: &Setup,
    timeout: Duration,
    failure: &HandshakeFailure,
    server_first: &ServerFirst,
    mut hello_lines: Vec<String>,
    hello_details: Value,
    chain_witness: &ChainWitness,
    ask_witness: &AskWitness,
) {
    // Hello problems first: was it TLS at all, and which version?
    match server_first {
        ServerFirst::NotTls(text) => {
            report.fail(
                2,
                "hello",
                "not_tls",
                format!("the server answered in plaintext, not TLS: \"{text}\""),
                hello_lines,
            );
            return;
        }
        ServerFirst::Nothing => {
            report.fail(
                2,
                "hello",
                "closed",
                "the server closed the connection without answering our ClientHello".into(),
                hello_lines,
            );
            return;
        }
        ServerFirst::Alert(alert) => {
            hello_lines.push(format!("the server answered with the alert {alert}"));
            if let Some(version) = version_spoken(target, setup, timeout).await
                && version != "TLS 1.3"
            {
                hello_lines.push(format!(
                    "offered TLS 1.2 and 1.3 on a second connection, the server chose {version}"
                ));
                report.fail(
                    2,
                    "hello",
                    "tls_version",
                    format!("the server speaks {version} only; hush sidecars speak TLS 1.3 only"),
                    hello_lines,
                );
                return;
            }
        }
        ServerFirst::Hello(choice) => {
            hello_lines.push(format!(
                "the server chose: {}, {}, key exchange {}",
                choice.version,
                choice.cipher_suite,
                choice.group.as_deref().unwrap_or("?")
            ));
        }
        ServerFirst::Unreadable => {}
    }
    let seen = chain_witness.seen();
    // A refused hello (an alert before any certificate) ends the story at step 2.
    if failure.step == HandshakeStep::Hello && seen.is_none() {
        report.fail(
            2,
            "hello",
            failure.reason.as_str(),
            server_words(&failure.message),
            hello_lines,
        );
        return;
    }
    let mut details = hello_details;
    if let ServerFirst::Hello(choice) = server_first {
        details["chosen"] = json!(choice);
    }
    report.pass(2, "hello", hello_lines, details);

    // The chain: presented, then refused by the verifier?
    if let Some((chain, Some(error))) = seen {
        let explained = HandshakeFailure::from_tls(&error);
        let mut lines = describe_chain(&chain);
        lines.push(format!("{}: FAILED", explained.step));
        report.fail(
            3,
            "certificate verification",
            explained.reason.as_str(),
            server_words(&explained.message),
            lines,
        );
        if let Some(step) = report.steps.last_mut() {
            step.details = json!({ "chain": chain_details(&chain) });
        }
        return;
    }
    if let Some((chain, None)) = seen {
        let mut lines = describe_chain(&chain);
        lines.push("verified".into());
        report.steps.push(Step {
            number: 3,
            name: "certificate verification",
            status: Status::Ok,
            lines,
            details: json!({ "chain": chain_details(&chain) }),
        });
    }
    // Our certificate, refused during the handshake.
    let asked = ask_witness.asked.load(Ordering::Relaxed);
    let (reason, message) = if asked && setup.credentials.is_none() {
        (
            "no_credentials",
            "the server requires a client certificate and we presented none".to_string(),
        )
    } else {
        (failure.reason.as_str(), server_words(&failure.message))
    };
    report.fail(4, "client certificate", reason, message, Vec::new());
}

/// Which version the server speaks when TLS 1.2 is offered too, from a hand-made ClientHello
/// (hush's TLS has no 1.2 to offer): only the ServerHello is read, nothing more is sent.
async fn version_spoken(target: &str, setup: &Setup, timeout: Duration) -> Option<String> {
    use tokio::io::AsyncWriteExt;
    let server_name = match &setup.server_name {
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

// === words ===

impl Report {
    fn pass(&mut self, number: u8, name: &'static str, lines: Vec<String>, details: Value) {
        self.steps.push(Step {
            number,
            name,
            status: Status::Ok,
            lines,
            details,
        });
    }

    fn skip(&mut self, number: u8, name: &'static str, why: &str) {
        self.steps.push(Step {
            number,
            name,
            status: Status::Skipped,
            lines: vec![why.to_string()],
            details: Value::Null,
        });
    }

    fn fail(
        &mut self,
        number: u8,
        name: &'static str,
        reason: &str,
        message: String,
        lines: Vec<String>,
    ) {
        self.steps.push(Step {
            number,
            name,
            status: Status::Failed,
            lines,
            details: Value::Null,
        });
        if self.failure.is_none() {
            self.failure = Some(Failure {
                step: number,
                name,
                reason: reason.to_string(),
                message,
                hint: hint(reason).to_string(),
            });
        }
    }
}

/// In `hush diagnose` the peer is always the server.
fn server_words(message: &str) -> String {
    message
        .replace("the peer's", "the server's")
        .replace("the peer", "the server")
        .replace("this side's", "our")
        .replace("this side", "we")
}

fn hint(reason: &str) -> &'static str {
    match reason {
        "refused" => "is the sidecar running, and is this its inbound port?",
        "timeout" => "is a firewall dropping the packets, or the address wrong?",
        "not_tls" => {
            "this port does not speak TLS: is it the app's own port rather than its sidecar's \
             inbound port?"
        }
        "closed" => "the server hung up without a word: it may not speak TLS, or its log says why",
        "tls_version" => "upgrade the server's TLS to 1.3, or put a hush sidecar in front of it",
        "no_common_cipher" | "no_common_group" | "no_common_signature_scheme" => {
            "the server's TLS settings share nothing with hush's; it is not a hush sidecar"
        }
        "unknown_issuer" => {
            "the server's certificate comes from another CA: check that --bundle is this mesh's \
             bundle.pem and that the server's sidecar got its certificate from this mesh's CA"
        }
        "expired" => {
            "the server's sidecar is not renewing its certificate: check that it reaches its CA \
             (its log says why)"
        }
        "not_yet_valid" => "check the clocks of both machines",
        "unexpected_identity" => {
            "the server is another workload than expected: check the address and --expect-id"
        }
        "foreign_trust_domain" => {
            "the server belongs to another trust domain: check --bundle and the address"
        }
        "not_an_svid" => "the server's certificate has no SPIFFE ID: it is not a hush sidecar",
        "no_client_auth" => {
            "this is not a hush sidecar's inbound port (an app, or a TLS server that does not \
             check its clients?)"
        }
        "no_credentials" => {
            "present an identity as a sidecar would: --cert and --key, or --token-file with --ca"
        }
        "refused_by_peer" => {
            "the server's log says why: is our certificate from this mesh's CA, and is it still \
             valid?"
        }
        "not_verified" => "pass --bundle with this mesh's bundle.pem to verify the server",
        _ => "",
    }
}

fn describe_chain(chain: &[CertificateDer<'_>]) -> Vec<String> {
    let mut lines = vec![format!(
        "the server presented {} certificate{}:",
        chain.len(),
        if chain.len() == 1 { "" } else { "s" }
    )];
    for (index, cert) in chain.iter().enumerate() {
        let line = match CertificateSummary::from_der(cert) {
            Ok(summary) => format!(
                "  {}. {} — issued by {}; valid {} to {} ({})",
                index + 1,
                // A CA names its trust domain as a SPIFFE ID; its subject says more.
                match (&summary.spiffe_id, summary.is_ca) {
                    (Some(id), false) => id.to_string(),
                    _ => summary.subject.clone(),
                },
                summary.issuer,
                crate::ca::hush_ca_time(timestamp(summary.not_before)),
                crate::ca::hush_ca_time(timestamp(summary.not_after)),
                validity_words(summary.not_before, summary.not_after),
            ),
            Err(e) => format!("  {}. cannot be read: {e}", index + 1),
        };
        lines.push(line);
    }
    lines
}

fn chain_details(chain: &[CertificateDer<'_>]) -> Value {
    chain
        .iter()
        .map(|cert| match CertificateSummary::from_der(cert) {
            Ok(s) => json!({
                "subject": s.subject,
                "issuer": s.issuer,
                "spiffe_id": s.spiffe_id.map(|id| id.to_string()),
                "not_before": s.not_before,
                "not_after": s.not_after,
                "seconds_left": s.not_after - now(),
            }),
            Err(e) => json!({ "error": e.to_string() }),
        })
        .collect()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn timestamp(seconds: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn validity_words(not_before: i64, not_after: i64) -> String {
    let now = now();
    if now > not_after {
        format!("expired {} ago", span(now - not_after))
    } else if now < not_before {
        format!("not valid for {} more", span(not_before - now))
    } else {
        format!("{} left", span(not_after - now))
    }
}

fn time_left(not_after: i64) -> String {
    span((not_after - now()).max(0))
}

fn render(report: &Report, setup: &Setup) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hush diagnose {} ({})",
        report.target,
        match (&setup.trust, &setup.expected) {
            (None, _) => "no bundle: the server will not be verified".to_string(),
            (Some(_), ExpectedServer::OneOf(ids)) => format!(
                "expecting {}",
                ids.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
            (Some(trust), ExpectedServer::AnyInTrustDomain) => format!(
                "expecting any identity of trust domain {}",
                trust.bundle().trust_domain()
            ),
        }
    );
    for step in &report.steps {
        let status = match step.status {
            Status::Ok => "ok",
            Status::Failed => "FAILED",
            Status::Skipped => "not checked",
        };
        let _ = writeln!(out, "step {}, {}: {status}", step.number, step.name);
        for line in &step.lines {
            let _ = writeln!(out, "  {line}");
        }
    }
    match &report.failure {
        None => {
            let _ = writeln!(out, "result: ok, mutual TLS works");
        }
        Some(failure) => {
            let _ = writeln!(
                out,
                "result: FAILED at step {}, {}: {}",
                failure.step, failure.name, failure.message
            );
            if !failure.hint.is_empty() {
                let _ = writeln!(out, "hint: {}", failure.hint);
            }
        }
    }
    out
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

    #[test]
    fn every_reason_a_step_can_fail_with_has_a_hint() {
        for reason in [
            "refused",
            "timeout",
            "not_tls",
            "closed",
            "tls_version",
            "unknown_issuer",
            "expired",
            "unexpected_identity",
            "no_client_auth",
            "no_credentials",
            "refused_by_peer",
            "not_verified",
        ] {
            assert!(!hint(reason).is_empty(), "{reason}");
        }
    }
}
