//! `hush inject`: the sidecar injector (mutating admission webhook).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hush_inject::InjectorConfig;
use hush_tls::CredentialStore;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::shutdown;

/// The largest AdmissionReview accepted; the API server's own request limit is 3 MiB.
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The line printed once the webhook accepts connections.
pub(crate) const READY_PREFIX: &str = "hush inject: serving AdmissionReview on ";

#[derive(Debug, Subcommand)]
pub(crate) enum InjectCommand {
    /// Serve the mutating admission webhook over TLS (POST /inject; GET /healthz).
    Serve(ServeArgs),
    /// Answer one AdmissionReview (JSON, from a file or stdin) the way the webhook would, and
    /// print the answer: to see what injection does to a pod, or to debug a webhook offline.
    Review(ReviewArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ReviewArgs {
    /// The injector's configuration (YAML: image, ca_address, …).
    #[arg(long, env = "HUSH_INJECT_CONFIG")]
    config: PathBuf,
    /// The AdmissionReview to answer (default: stdin).
    #[arg(long)]
    input: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The injector's configuration (YAML: image, ca_address, …).
    #[arg(long, env = "HUSH_INJECT_CONFIG")]
    config: PathBuf,
    /// The webhook's certificate chain (PEM), for the name the API server dials
    /// (`<service>.<namespace>.svc`).
    #[arg(long, env = "HUSH_INJECT_CERT")]
    cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long, env = "HUSH_INJECT_KEY")]
    key: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// How often --cert and --key are read again: a renewed certificate (cert-manager, a
    /// rotated Secret) is served without a restart.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    reload_interval: Duration,
    /// A review whose body has not arrived whole by then is answered 408: a client that
    /// trickles it cannot hold the webhook (the API server sends a review at once).
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    request_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog. The API server is the
    /// one client the webhook has, but anything in the cluster can reach its Service.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
}

pub(crate) async fn run(command: InjectCommand) -> Result<()> {
    match command {
        InjectCommand::Review(args) => review(&args),
        InjectCommand::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    if args.reload_interval.is_zero() {
        bail!("--reload-interval must be longer than 0s");
    }
    if args.request_timeout.is_zero() {
        bail!("--request-timeout must be longer than 0s");
    }
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(args.max_connections));
    let request_timeout = args.request_timeout;
    let config = Arc::new(load_config(&args.config)?);
    let certificate = WebhookCertificate {
        cert: args.cert.clone(),
        key: args.key.clone(),
    };
    let (loaded, contents) = certificate.load()?;
    let store = CredentialStore::new();
    store
        .install(loaded.0, loaded.1)
        .with_context(|| certificate.describe())?;
    let store = Arc::new(store);
    tokio::spawn(certificate.watch(store.clone(), contents, args.reload_interval));
    let tls = hush_tls::server_config(store, None, &[b"h2", b"http/1.1"])?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let shutdown = shutdown::signal();
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{READY_PREFIX}https://{}/inject",
            listener.local_addr()?
        )?;
        out.flush()?;
    }
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let failure = hush_tls::HandshakeFailure::from_io(&e);
                    debug!(%peer, "webhook handshake failed: {failure}");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |request| {
                let config = config.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        answer(request, &config, request_timeout).await,
                    )
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // A client that trickles its request head does not hold a connection for long.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT);
            let served = builder.serve_connection(TokioIo::new(tls), service).await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
    info!("hush inject stopped");
    Ok(())
}

/// The webhook's serving certificate and key files.
struct WebhookCertificate {
    cert: PathBuf,
    key: PathBuf,
}

type Credentials = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

impl WebhookCertificate {
    fn describe(&self) -> String {
        format!(
            "--cert {} and --key {}",
            self.cert.display(),
            self.key.display()
        )
    }

    /// Reads both files, as one run of bytes to compare with the next reading.
    fn read(&self) -> Result<(Vec<u8>, usize)> {
        let mut contents = std::fs::read(&self.cert)
            .with_context(|| format!("cannot read --cert {}", self.cert.display()))?;
        let cert_len = contents.len();
        contents.extend(
            std::fs::read(&self.key)
                .with_context(|| format!("cannot read --key {}", self.key.display()))?,
        );
        Ok((contents, cert_len))
    }

    /// Parses what [`Self::read`] read.
    fn parse(&self, contents: &[u8], cert_len: usize) -> Result<Credentials> {
        let (cert_pem, key_pem) = contents.split_at(cert_len);
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--cert {}", self.cert.display()))?;
        if chain.is_empty() {
            bail!("--cert {}: no certificate in the file", self.cert.display());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .with_context(|| format!("--key {}", self.key.display()))?;
        Ok((chain, key))
    }

    /// Reads and parses both files; also returns their bytes, to notice a change later.
    fn load(&self) -> Result<(Credentials, Vec<u8>)> {
        let (contents, cert_len) = self.read()?;
        Ok((self.parse(&contents, cert_len)?, contents))
    }

    /// Serves a renewed certificate from the next handshake on. Files are parsed only when
    /// their bytes changed, so a broken or half-written pair is reported once; the pair in use
    /// stays until a good one arrives.
    async fn watch(self, store: Arc<CredentialStore>, mut last_read: Vec<u8>, every: Duration) {
        // A file that cannot be read (mid-swap, removed) would fail the same way each time.
        let mut last_error = String::new();
        loop {
            tokio::time::sleep(every).await;
            let outcome = self.read().and_then(|(contents, cert_len)| {
                if contents == last_read {
                    return Ok(false);
                }
                last_read.clone_from(&contents);
                let (chain, key) = self.parse(&contents, cert_len)?;
                store.install(chain, key).with_context(|| self.describe())?;
                Ok(true)
            });
            match outcome {
                Ok(false) => {}
                Ok(true) => {
                    last_error.clear();
                    info!(
                        "serving the renewed webhook certificate from {}",
                        self.cert.display()
                    );
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    if message != last_error {
                        warn!("keeping the webhook certificate in use: {message}");
                        last_error = message;
                    }
                }
            }
        }
    }
}

async fn answer(
    request: Request<Incoming>,
    config: &InjectorConfig,
    timeout: Duration,
) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/inject") => {
            let read = Limited::new(request.into_body(), MAX_REVIEW_BYTES).collect();
            let body = match tokio::time::timeout(timeout, read).await {
                Ok(Ok(body)) => body.to_bytes(),
                Ok(Err(e)) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("hush inject: cannot read the AdmissionReview: {e}\n"),
                    );
                }
                Err(_) => {
                    return text(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "hush inject: the AdmissionReview did not arrive whole within {}\n",
                            humantime::format_duration(timeout)
                        ),
                    );
                }
            };
            let answer = hush_inject::review(&body, config);
            log_answer(&answer);
            let mut response = Response::new(Full::new(Bytes::from(answer)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".to_string()),
        (_, path) => text(
            StatusCode::NOT_FOUND,
            format!("no such page: {path}; the webhook is POST /inject\n"),
        ),
    }
}

/// One line per review: what was decided, and why when the pod was refused.
fn log_answer(answer: &[u8]) {
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(answer) else {
        return;
    };
    let response = &answer["response"];
    let uid = response["uid"].as_str().unwrap_or("");
    if response["allowed"] == false {
        let message = response["status"]["message"].as_str().unwrap_or("");
        warn!(uid, "refused a pod: {message}");
    } else if response["patch"].is_string() {
        info!(uid, "injected the sidecar into a pod");
    } else {
        debug!(uid, "left a pod alone");
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn load_config(path: &PathBuf) -> Result<InjectorConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the injector configuration {}", path.display()))?;
    InjectorConfig::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn review(args: &ReviewArgs) -> Result<()> {
    let config = load_config(&args.config)?;
    let body = match &args.input {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .context("cannot read the AdmissionReview from stdin")?;
            body
        }
    };
    let answer = hush_inject::review(&body, &config);
    let mut out = std::io::stdout().lock();
    out.write_all(&answer)?;
    out.write_all(b"\n")?;
    Ok(())
}
