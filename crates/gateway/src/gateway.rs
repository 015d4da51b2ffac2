//! One gateway: its mesh identity and admin server (a sidecar's, from [`hush_proxy`]), its
//! public listener, the plaintext redirector, and the certificates kept fresh behind them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hush_config::{GatewayConfig, ProxyConfig};
use hush_proxy::{Edge, EdgeRoute, Metrics, Proxy, ProxyError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::acme::{AcmeError, AcmeEvent, AcmeManager, Stored};
use crate::certs::{CertStore, Served};
use crate::files::{FileCertificates, FilesError};
use crate::redirect::Redirector;

/// A certificate this close to its notAfter is warned about, once a day.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// The gateway could not start.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The mesh side (identity, admin server, trust bundle) could not start.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// A certificate from files cannot be served.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// ACME cannot start (its state directory, its roots).
    #[error(transparent)]
    Acme(#[from] AcmeError),
    /// Public TLS could not be configured.
    #[error("cannot configure public TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A listener could not be opened.
    #[error("cannot listen on {addr} ({field}): {source}")]
    Bind {
        /// `https.listen` or `http.listen`.
        field: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Where a bound gateway listens.
#[derive(Clone, Debug)]
pub struct GatewayAddresses {
    /// The admin server.
    pub admin: SocketAddr,
    /// The public TLS listener.
    pub https: SocketAddr,
    /// The plaintext redirector.
    pub http: Option<SocketAddr>,
}

/// A gateway whose listeners are bound and whose certificates are loaded; [`Gateway::run`]
/// starts it.
pub struct Gateway {
    config: GatewayConfig,
    proxy: Proxy,
    store: Arc<CertStore>,
    files: FileCertificates,
    acme: Option<AcmeManager>,
    http: Option<(TcpListener, Arc<Redirector>)>,
    addresses: GatewayAddresses,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

/// The sidecar part of a gateway's configuration: its identity, admin server and limits,
/// and no listener of a sidecar's.
fn mesh_config(config: &GatewayConfig) -> ProxyConfig {
    let mut mesh = ProxyConfig::new(config.ca.clone());
    mesh.admin = config.admin.clone();
    mesh.limits = config.limits.clone();
    mesh.access_log = config.access_log;
    mesh.tracing = config.tracing.clone();
    mesh.shutdown_grace = config.shutdown_grace;
    mesh
}

async fn bind(field: &'static str, addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind {
            field,
            addr,
            source,
        })
}

impl Gateway {
    /// Loads the certificates, checks the trust bundle, and binds every listener. Nothing is
    /// accepted until [`Self::run`].
    pub async fn bind(config: GatewayConfig) -> Result<Self, GatewayError> {
        let store = Arc::new(CertStore::new(&config.certificates));
        let proxy = Proxy::bind(mesh_config(&config)).await?;
        watch_expiry(&store, proxy.metrics());
        let files = FileCertificates::load(&config.certificates, store.clone())?;
        // What an earlier run (or another replica) obtained is served from the start; the
        // rest is ordered once the gateway runs.
        let acme = match &config.acme {
            Some(acme) if config.certificates.iter().any(|c| c.acme) => {
                let mut manager = AcmeManager::new(acme, &config.certificates, store.clone())?;
                // Replicas behind one load balancer answer each other's HTTP-01 validations.
                store
                    .share_challenges_in(acme.state_dir.join("challenges"))
                    .map_err(|source| AcmeError::StateDir {
                        path: acme.state_dir.join("challenges"),
                        source,
                    })?;
                for (name, stored) in manager.load_stored() {
                    if stored == Stored::Missing {
                        info!(certificate = %name, "no certificate stored yet: it will be ordered from {}", acme.directory);
                    }
                }
                Some(manager)
            }
            _ => None,
        };
        let acme_tls_alpn = config
            .acme
            .as_ref()
            .is_some_and(|acme| acme.challenge == hush_config::AcmeChallenge::TlsAlpn01);
        let tls =
            crate::profile::server_config(config.https.profile, store.clone(), acme_tls_alpn)?;
        let https = bind("https.listen", config.https.listen).await?;
        let https_addr = https.local_addr().unwrap_or(config.https.listen);
        let http = match &config.http {
            Some(http) => {
                let listener = bind("http.listen", http.listen).await?;
                let redirector = Redirector {
                    https_port: http.redirect_port.unwrap_or(https_addr.port()),
                    store: store.clone(),
                    header_timeout: config.limits.header_timeout,
                    // Redirects hold nothing but a request head: the memory-derived share of
                    // the HTTPS listener would be needlessly small for them.
                    max_connections: config.limits.max_connections.unwrap_or(10_000),
                };
                Some((listener, Arc::new(redirector)))
            }
            None => None,
        };
        let edge = Edge {
            tls: Arc::new(tls),
            routes: config
                .routes
                .iter()
                .map(|route| EdgeRoute {
                    host: route.host.clone(),
                    path_prefix: route.path_prefix.clone(),
                    upstream: route.upstream.clone(),
                    identity: route.identity.0.clone(),
                })
                .collect(),
            hsts: config.https.hsts.header_value(),
        };
        let proxy = proxy.with_edge(https, edge);
        let addresses = GatewayAddresses {
            admin: proxy.addresses().admin,
            https: https_addr,
            http: http
                .as_ref()
                .and_then(|(listener, _)| listener.local_addr().ok()),
        };
        Ok(Self {
            config,
            proxy,
            store,
            files,
            acme,
            http,
            addresses,
        })
    }

    /// Lets the admin port show and change the log filter.
    #[must_use]
    pub fn with_log_control(mut self, logging: Arc<dyn hush_proxy::LogControl>) -> Self {
        self.proxy = self.proxy.with_log_control(logging);
        self
    }

    /// The bound addresses.
    pub fn addresses(&self) -> &GatewayAddresses {
        &self.addresses
    }

    /// The configuration in force.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The mesh identity as it evolves.
    pub fn status(&self) -> tokio::sync::watch::Receiver<hush_proxy::IdentityStatus> {
        self.proxy.status()
    }

    /// The certificates served.
    pub fn certificates(&self) -> Arc<CertStore> {
        self.store.clone()
    }

    /// Serves until `shutdown`: the redirector and the certificates' upkeep at once, the
    /// public listener once the gateway holds its mesh identity (requests could go nowhere
    /// before).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let Self {
            proxy,
            store,
            files,
            acme,
            http,
            ..
        } = self;
        let background = CancellationToken::new();
        let metrics = proxy.metrics();
        let mut tasks = Vec::new();
        if let Some((listener, redirector)) = http {
            tasks.push(tokio::spawn(redirector.run(listener, background.clone())));
        }
        let stop = background.clone();
        tasks.push(tokio::spawn(async move {
            files
                .watch(stop, |name| {
                    metrics.gateway_certificate_update(name, "files", false);
                })
                .await;
        }));
        tasks.push(tokio::spawn(warn_daily(store, background.clone())));
        if let Some(acme) = acme {
            let mut events = acme.events();
            let metrics = proxy.metrics();
            let stop = background.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        event = events.recv() => match event {
                            Ok(AcmeEvent::Failed { name, .. } | AcmeEvent::StoredUnusable { name, .. }) => {
                                metrics.gateway_certificate_update(&name, "acme", false);
                            }
                            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                        () = stop.cancelled() => return,
                    }
                }
            }));
            tasks.push(tokio::spawn(acme.run(background.clone())));
        }
        let result = proxy.run(shutdown).await;
        background.cancel();
        for task in tasks {
            let _ = task.await;
        }
        result.map_err(GatewayError::from)
    }
}

/// Publishes every certificate installed: its notAfter as a gauge, a count of updates, and a
/// warning when it is already close to expiry.
fn watch_expiry(store: &CertStore, metrics: Metrics) {
    store.observe(move |served: &Served| {
        let source = served.origin.as_str();
        metrics.gateway_certificate(&served.name, source, unix_seconds(served.not_after));
        metrics.gateway_certificate_update(&served.name, source, true);
        warn_if_expiring(served);
    });
}

/// Once a day, a warning for each certificate within [`EXPIRY_WARNING`] of its notAfter.
async fn warn_daily(store: Arc<CertStore>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(24 * 3600));
    // The first tick is at once; installing warned already.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        for (_, served) in store.all() {
            if let Some(served) = served {
                warn_if_expiring(&served);
            }
        }
    }
}

fn warn_if_expiring(served: &Served) {
    let left = served.remaining();
    if left < EXPIRY_WARNING {
        let days = left.as_secs() / 86_400;
        warn!(
            certificate = %served.name,
            source = served.origin.as_str(),
            expires = %humantime::format_rfc3339_seconds(served.not_after),
            "the certificate expires in {days} days; {}",
            match served.origin {
                crate::certs::Origin::Files => "replace its files (they are reloaded when they change)",
                crate::certs::Origin::Acme => "ACME renewal has not succeeded yet; see the acme messages",
            }
        );
    }
}

fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
