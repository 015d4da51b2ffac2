//! The CA's SPIFFE bundle endpoint: the trust domain's bundle, as JSON, to any HTTPS GET.
//!
//! Anyone may ask (the standard forbids client authentication), so what one client can hold is
//! bounded like the CA's own port: connections are capped in total (more wait in the kernel's
//! backlog) and per address (more are reset); each connection serves one request and lives at
//! most [`CONNECTION_LIFETIME`], handshake included; the request head is limited in time and
//! size, and a request body is never read. Every path answers the same bundle: the standard
//! leaves the path to the operator, so any URL the partner was given works.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hush_tls::{CredentialStore, rustls};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::server::ServeError;
use crate::server::limits::{PerAddress, REPORT_INTERVAL, RefusalKind, Refusals};
use crate::service::CaService;

/// The default `--bundle-refresh-hint`: the standard's recommended refresh interval.
pub const DEFAULT_BUNDLE_REFRESH_HINT: Duration = Duration::from_secs(5 * 60);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// The request head must arrive within this after the handshake.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed this long after it was accepted, whatever it is doing.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);
/// hyper's smallest read buffer; it bounds the request head.
const MAX_HEAD_BYTES: usize = 8192;
/// How often the https_web certificate files are read again.
const WEB_CERT_POLL: Duration = Duration::from_secs(10);

/// How the endpoint authenticates itself (the standard's endpoint profiles).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointProfile {
    /// `https_spiffe`: an X.509-SVID for `spiffe://<trust domain>/hush/bundle-endpoint`, issued
    /// by the CA to itself and renewed like its server certificate. TLS 1.3.
    HttpsSpiffe,
    /// `https_web`: a Web PKI certificate and key from PEM files, read again when they change.
    /// TLS 1.2 and 1.3.
    HttpsWeb {
        /// The certificate chain, leaf first.
        cert_file: PathBuf,
        /// Its private key.
        key_file: PathBuf,
    },
}

/// How the bundle endpoint serves.
#[derive(Clone, Debug)]
pub struct BundleEndpointOptions {
    /// The profile.
    pub profile: EndpointProfile,
    /// The bundle's `spiffe_refresh_hint`: how often partners should fetch it.
    pub refresh_hint: Duration,
    /// Connections from one address beyond this are reset at once.
    pub max_connections_per_ip: usize,
    /// Lifetime of the https_spiffe certificate; it is re-issued at half of it.
    pub certificate_lifetime: Duration,
}

/// The bundle endpoint, its certificate installed, ready to serve.
pub struct BundleEndpoint {
    service: CaService,
    options: BundleEndpointOptions,
    credentials: CredentialStore,
    tls: TlsAcceptor,
}

// === impl BundleEndpoint ===

impl std::fmt::Debug for BundleEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleEndpoint")
            .field("options", &self.options)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl BundleEndpoint {
    /// Installs the endpoint's first certificate; fails when it cannot be had.
    pub fn new(service: CaService, options: BundleEndpointOptions) -> Result<Self, ServeError> {
        if options.refresh_hint.is_zero() {
            return Err(ServeError::InvalidOption {
                option: "bundle_refresh_hint",
                value: "0s".into(),
                reason: "must be more than zero".into(),
            });
        }
        let credentials = CredentialStore::new();
        let config = match &options.profile {
            EndpointProfile::HttpsSpiffe => {
                install_svid(&service, &credentials, options.certificate_lifetime)?;
                hush_tls::server_config(Arc::new(credentials.clone()), None, &[])?
            }
            EndpointProfile::HttpsWeb {
                cert_file,
                key_file,
            } => {
                let (chain, key) = read_web_certificate(cert_file, key_file)
                    .map_err(ServeError::ServerCertificate)?;
                credentials.install(chain, key).map_err(|e| {
                    ServeError::ServerCertificate(format!("{}: {e}", cert_file.display()))
                })?;
                rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| ServeError::ServerCertificate(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(credentials.clone()))
            }
        };
        Ok(Self {
            service,
            options,
            credentials,
            tls: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The profile, as the standard names it, with what the endpoint presents.
    pub fn describe(&self) -> String {
        match &self.options.profile {
            EndpointProfile::HttpsSpiffe => format!(
                "https_spiffe, {}",
                crate::authority::bundle_endpoint_id(&self.service.trust_domain())
            ),
            EndpointProfile::HttpsWeb { cert_file, .. } => {
                format!("https_web, {}", cert_file.display())
            }
        }
    }

    /// Serves on `listener` until the task is dropped, keeping the certificate fresh.
    pub async fn run(self, listener: TcpListener) {
        let renewal = match &self.options.profile {
            EndpointProfile::HttpsSpiffe => tokio::spawn(renew_svid(
                self.service.clone(),
                self.credentials.clone(),
                self.options.certificate_lifetime,
            )),
            EndpointProfile::HttpsWeb {
                cert_file,
                key_file,
            } => tokio::spawn(reload_web_certificate(
                self.credentials.clone(),
                cert_file.clone(),
                key_file.clone(),
            )),
        };
        // Aborts the renewal when this future is dropped.
        let _renewal = AbortOnDrop(renewal);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let per_address = PerAddress::new(self.options.max_connections_per_ip);
        let crowded = Arc::new(Refusals::new(RefusalKind::ConnectionsPerAddress {
            limit: self.options.max_connections_per_ip,
        }));
        let reports = AbortOnDrop(tokio::spawn({
            let crowded = crowded.clone();
            async move {
                let mut tick = tokio::time::interval(REPORT_INTERVAL);
                loop {
                    tick.tick().await;
                    crowded.report_pending();
                }
            }
        }));
        let _reports = reports;
        let shared = Arc::new(Answer {
            service: self.service.clone(),
            refresh_hint: self.options.refresh_hint,
        });
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "bundle endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(address_slot) = per_address.try_acquire(peer.ip()) else {
                let _ = tcp.set_zero_linger();
                drop(tcp);
                crowded.refuse(peer.ip());
                continue;
            };
            let (tls, shared) = (self.tls.clone(), shared.clone());
            tokio::spawn(async move {
                let _held = (permit, address_slot);
                if tokio::time::timeout(CONNECTION_LIFETIME, serve_one(tls, tcp, peer, shared))
                    .await
                    .is_err()
                {
                    debug!(%peer, "bundle endpoint: closed a connection that outlived its time");
                }
            });
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What every request is answered from.
struct Answer {
    service: CaService,
    refresh_hint: Duration,
}

async fn serve_one(tls: TlsAcceptor, tcp: TcpStream, peer: SocketAddr, answer: Arc<Answer>) {
    let _ = tcp.set_nodelay(true);
    let tls = match tls.accept(tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            debug!(%peer, error = %e, "bundle endpoint: TLS handshake failed");
            return;
        }
    };
    let service = service_fn(move |request: Request<Incoming>| {
        let response = answer.respond(&request, peer);
        async move { Ok::<_, Infallible>(response) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(false)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(e) = served {
        debug!(%peer, error = %e, "bundle endpoint: connection ended with an error");
    }
}

type Body = Full<Bytes>;

impl Answer {
    fn respond(&self, request: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let head = request.method() == Method::HEAD;
        if request.method() != Method::GET && !head {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "the SPIFFE bundle endpoint answers GET only\n",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match self.service.spiffe_bundle(self.refresh_hint) {
            Ok(bundle) => {
                let json = Bytes::from(bundle.to_json());
                debug!(%peer, path = request.uri().path(), bytes = json.len(), "bundle endpoint: served the bundle");
                // hyper sends a HEAD answer's headers (Content-Length included) without the body.
                let mut response = Response::new(Full::new(json));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(e) => {
                warn!(error = %e, "bundle endpoint: cannot make this CA's SPIFFE bundle");
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the CA cannot make its bundle now; see its log\n",
                )
            }
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn install_svid(
    service: &CaService,
    credentials: &CredentialStore,
    lifetime: Duration,
) -> Result<(), ServeError> {
    let (chain, key) = service
        .current()
        .authority()
        .issue_bundle_endpoint_certificate(lifetime)
        .map_err(|e| ServeError::ServerCertificate(format!("bundle endpoint: {e}")))?;
    credentials
        .install(chain, key)
        .map_err(|e| ServeError::ServerCertificate(format!("bundle endpoint: {e}")))
}

/// Renews the endpoint's X.509-SVID at half its life, and at once when another intermediate
/// signs, so that the endpoint never presents a chain under an authority being retired.
async fn renew_svid(service: CaService, credentials: CredentialStore, lifetime: Duration) {
    let mut changes = service.subscribe();
    let mut signing = service.current().intermediate_id().clone();
    let period = lifetime / 2;
    let mut next = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                if service.current().intermediate_id() == &signing {
                    continue;
                }
            }
        }
        match install_svid(&service, &credentials, lifetime) {
            Ok(()) => {
                signing = service.current().intermediate_id().clone();
                next = tokio::time::Instant::now() + period;
                info!(intermediate = %signing, "renewed the bundle endpoint's certificate");
            }
            Err(e) => {
                next = tokio::time::Instant::now() + Duration::from_secs(30);
                warn!(error = %e, "cannot renew the bundle endpoint's certificate; keeping the current one");
            }
        }
    }
}

/// Reads the https_web certificate files again whenever they change.
async fn reload_web_certificate(
    credentials: CredentialStore,
    cert_file: PathBuf,
    key_file: PathBuf,
) {
    let read = |cert: &PathBuf, key: &PathBuf| (std::fs::read(cert).ok(), std::fs::read(key).ok());
    let mut seen = read(&cert_file, &key_file);
    loop {
        tokio::time::sleep(WEB_CERT_POLL).await;
        let now = read(&cert_file, &key_file);
        if now == seen {
            continue;
        }
        seen = now;
        match read_web_certificate(&cert_file, &key_file)
            .and_then(|(chain, key)| credentials.install(chain, key).map_err(|e| e.to_string()))
        {
            Ok(()) => {
                info!(cert = %cert_file.display(), "bundle endpoint: loaded the changed certificate")
            }
            Err(e) => {
                warn!(cert = %cert_file.display(), error = %e, "bundle endpoint: cannot use the changed certificate files; keeping the current certificate")
            }
        }
    }
}

fn read_web_certificate(
    cert_file: &PathBuf,
    key_file: &PathBuf,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let pem = std::fs::read(cert_file)
        .map_err(|e| format!("cannot read {}: {e}", cert_file.display()))?;
    let chain = hush_identity::parse_pem_certificates(&pem)
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    let key_pem =
        std::fs::read(key_file).map_err(|e| format!("cannot read {}: {e}", key_file.display()))?;
    // Never the key's contents in a message.
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| format!("{} holds no PEM private key", key_file.display()))?;
    Ok((chain, key))
}
