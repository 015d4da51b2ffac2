//! One sidecar: its listeners, its identity, and how it starts and stops.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::HeaderValue;
use hush_identity::{TrustBundle, TrustDomain};
use hush_tls::{CredentialStore, ExpectedServer, TlsConfigError, TrustStore};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{Admin, LogControl};
use crate::capacity::ConnectionCap;
use crate::config::{ConfigError, ProxyConfig};
use crate::edge::{Edge, EdgeRoutes, EdgeServer};
use crate::headers::ProtectedHeaders;
use crate::http::{Forward, HttpVersion};
use crate::identity::{CaCertifier, IdentityManager, IdentityStatus, WorkloadFeed};
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::outbound::{OutboundShared, Route, Transparent, run_explicit};
use crate::policy::{PolicyEnforcer, PolicyLoadError};
use crate::serve::{Lifecycle, PerAddress, Throttle};
use crate::tls::{MeshConnector, Target, inbound_acceptor};
use crate::workload_api::{WorkloadApi, WorkloadSocket};

/// The sidecar could not start.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The trust bundle file is missing or unusable.
    #[error("cannot use the trust bundle {path}: {reason}")]
    Bundle {
        /// The file (`ca.trust_bundle`).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A listener could not be opened.
    #[error("cannot listen on {addr} ({field}): {source}")]
    Bind {
        /// The field, e.g. `inbound.listen`.
        field: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// The identity policy was refused.
    #[error(transparent)]
    Policy(#[from] PolicyLoadError),
    /// The Workload API's socket could not be made.
    #[error("{0}")]
    WorkloadApi(String),
}

/// Where a bound sidecar listens (port 0 in the configuration resolved to real ports).
#[derive(Clone, Debug)]
pub struct ProxyAddresses {
    /// The admin server.
    pub admin: SocketAddr,
    /// The inbound (mTLS) listener.
    pub inbound: Option<SocketAddr>,
    /// The explicit outbound listeners, in configuration order.
    pub outbound: Vec<SocketAddr>,
    /// The transparent listener.
    pub transparent: Option<SocketAddr>,
    /// The gateway's public listener.
    pub edge: Option<SocketAddr>,
}

/// A sidecar whose listeners are bound; [`Proxy::run`] starts it.
pub struct Proxy {
    config: ProxyConfig,
    trust: TrustStore,
    credentials: CredentialStore,
    metrics: Metrics,
    policy: Option<Arc<PolicyEnforcer>>,
    status: watch::Sender<IdentityStatus>,
    admin: TcpListener,
    inbound: Option<TcpListener>,
    outbound: Vec<TcpListener>,
    transparent: Option<TcpListener>,
    workload_api: Option<WorkloadSocket>,
    edge: Option<(TcpListener, Edge)>,
    shutdown_requested: CancellationToken,
    logging: Option<Arc<dyn LogControl>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addresses", &self.addresses())
            .field("trust", &self.trust)
            .finish()
    }
}

// === impl Proxy ===

impl Proxy {
    /// Loads the trust bundle, checks the configuration against it, and binds every listener.
    /// Nothing is accepted until [`Self::run`].
    pub async fn bind(config: ProxyConfig) -> Result<Self, ProxyError> {
        Self::bind_with(config, None).await
    }

    /// Like [`Self::bind`], taking an already-bound inbound listener (its address replaces
    /// `inbound.listen`). `hush up` uses this to wire sidecars that call each other before
    /// any of them runs.
    pub async fn bind_with(
        config: ProxyConfig,
        inbound: Option<std::net::TcpListener>,
    ) -> Result<Self, ProxyError> {
        let trust = TrustStore::new(load_trust_bundle(&config)?)?;
        let metrics = Metrics::new();
        let policy = load_policy_for(&config, trust.trust_domain(), &metrics)?.map(Arc::new);

        let admin = bind("admin.listen", config.admin.listen).await?;
        let inbound = match (inbound, &config.inbound) {
            (Some(prebound), Some(cfg)) => {
                let prebound = prebound
                    .set_nonblocking(true)
                    .and_then(|()| TcpListener::from_std(prebound))
                    .map_err(|source| ProxyError::Bind {
                        field: "inbound.listen".into(),
                        addr: cfg.listen,
                        source,
                    })?;
                Some(prebound)
            }
            (None, Some(cfg)) => Some(bind("inbound.listen", cfg.listen).await?),
            (_, None) => None,
        };
        let mut outbound = Vec::with_capacity(config.outbound.len());
        for (i, cfg) in config.outbound.iter().enumerate() {
            outbound.push(bind(&format!("outbound[{i}].listen"), cfg.listen).await?);
        }
        let transparent = match &config.transparent {
            Some(cfg) => Some(bind("transparent.listen", cfg.listen).await?),
            None => None,
        };
        let workload_api = match &config.workload_api {
            Some(api) => Some(
                WorkloadSocket::bind(&api.socket)
                    .map_err(|e| ProxyError::WorkloadApi(e.to_string()))?,
            ),
            None => None,
        };
        let (status, _) = watch::channel(IdentityStatus::default());
        Ok(Self {
            config,
            trust,
            credentials: CredentialStore::new(),
            metrics,
            policy,
            status,
            admin,
            inbound,
            outbound,
            transparent,
            workload_api,
            edge: None,
            shutdown_requested: CancellationToken::new(),
            logging: None,
        })
    }

    /// Makes this the gateway: `listener` takes public TLS as `edge` says, and each request
    /// goes to the mesh service its route names. The configuration's listeners may then be
    /// none at all (the gateway's `ProxyConfig` is built in code, not read from a file).
    #[must_use]
    pub fn with_edge(mut self, listener: TcpListener, edge: Edge) -> Self {
        self.edge = Some((listener, edge));
        self
    }

    /// Lets the admin port show and change the log filter (`GET`/`POST /logging`).
    #[must_use]
    pub fn with_log_control(mut self, logging: Arc<dyn LogControl>) -> Self {
        self.logging = Some(logging);
        self
    }

    /// The bound addresses.
    pub fn addresses(&self) -> ProxyAddresses {
        ProxyAddresses {
            admin: local_addr(&self.admin),
            inbound: self.inbound.as_ref().map(local_addr),
            outbound: self.outbound.iter().map(local_addr).collect(),
            transparent: self.transparent.as_ref().map(local_addr),
            edge: self.edge.as_ref().map(|(listener, _)| local_addr(listener)),
        }
    }

    /// The identity as it evolves: no certificate, then each certificate in turn.
    pub fn status(&self) -> watch::Receiver<IdentityStatus> {
        self.status.subscribe()
    }

    /// The metrics (also served at `/metrics`).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The trust domain of the mesh.
    pub fn trust_domain(&self) -> TrustDomain {
        self.trust.trust_domain()
    }

    /// The configuration in force.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The policy in force, in one line (`path (N policies, M rules; default allow)`).
    pub fn policy_summary(&self) -> Option<String> {
        self.policy.as_ref().map(|policy| policy.describe())
    }

    /// Obtains the workload certificate, then serves until `shutdown` completes or `POST
    /// /shutdown` is called; then drains: listeners close, HTTP connections finish their
    /// in-flight requests, and whatever is still open after `shutdown_grace` is closed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ProxyError> {
        let Self {
            config,
            trust,
            credentials,
            metrics,
            policy,
            status,
            admin,
            inbound,
            outbound,
            transparent,
            workload_api,
            edge,
            shutdown_requested,
            logging,
        } = self;
        let addresses = ProxyAddresses {
            admin: local_addr(&admin),
            inbound: inbound.as_ref().map(local_addr),
            outbound: outbound.iter().map(local_addr).collect(),
            transparent: transparent.as_ref().map(local_addr),
            edge: edge.as_ref().map(|(listener, _)| local_addr(listener)),
        };
        let listeners = usize::from(inbound.is_some())
            + outbound.len()
            + usize::from(transparent.is_some())
            + usize::from(edge.is_some());
        let cap = ConnectionCap::of(config.limits.max_connections, listeners);
        if listeners > 0 {
            info!("serving {cap}");
        }
        let lifecycle = Lifecycle::new(cap.connections);
        let background = CancellationToken::new();
        let status_rx = status.subscribe();

        let admin_server = Arc::new(Admin {
            metrics: metrics.clone(),
            logging,
            status: status_rx.clone(),
            trust: trust.clone(),
            draining: lifecycle.draining.clone(),
            shutdown_requested: shutdown_requested.clone(),
            policy: policy.clone(),
            probes: config.admin.probes.clone(),
            max_connections: config.admin.max_connections,
            header_timeout: config.limits.header_timeout,
        });
        let policy_task = policy
            .clone()
            .map(|policy| tokio::spawn(policy.watch(background.clone())));
        let admin_task = tokio::spawn(admin_server.run(admin, background.clone()));
        let mut identity = IdentityManager::new(
            config.ca.clone(),
            trust.clone(),
            credentials.clone(),
            status,
            metrics.clone(),
        );
        // The Workload API is served from the start: its streams wait for the app's first
        // SVID, so an app that starts before the sidecar has one is answered as soon as it is.
        let mut workload_task = None;
        if let Some(socket) = workload_api {
            let feed = WorkloadFeed::new(&trust);
            identity = identity.with_workload_feed(feed.clone());
            // JWT-SVIDs are minted by the CA for the certificate the sidecar holds.
            let minter = CaCertifier::new(&config.ca, trust.clone(), credentials.clone());
            let api = WorkloadApi::new(&feed, background.clone()).with_jwt_minter(Arc::new(minter));
            workload_task = Some(tokio::spawn(api.serve(socket)));
        }
        let identity_task = tokio::spawn(identity.run(background.clone()));

        tokio::pin!(shutdown);
        let mut first = status_rx.clone();
        let stop_early = tokio::select! {
            result = first.wait_for(|s| s.svid.is_some()) => result.is_err(),
            () = &mut shutdown => true,
            () = shutdown_requested.cancelled() => true,
        };
        let mut accept_loops = Vec::new();
        if !stop_early {
            let own_ports = own_ports(&addresses);
            let limits = config.limits.clone();
            if let (Some(listener), Some(cfg)) = (inbound, &config.inbound) {
                let server = Arc::new(Inbound {
                    acceptor: inbound_acceptor(&credentials, &trust)?,
                    app: cfg.app,
                    protocol: cfg.protocol,
                    limits: limits.clone(),
                    metrics: metrics.clone(),
                    status: status_rx.clone(),
                    lifecycle: lifecycle.clone(),
                    app_http1: Forward::app(cfg.app, HttpVersion::Http1, limits.connect_timeout),
                    app_http2: Forward::app(cfg.app, HttpVersion::Http2, limits.connect_timeout),
                    policy: policy.clone(),
                    trust_domain: trust.trust_domain(),
                    captured: cfg.captured,
                    captured_apps: Default::default(),
                    own_ports: own_ports.clone(),
                    protected: Arc::new(ProtectedHeaders::new(&cfg.protected_headers)),
                    handshakes: PerAddress::new(limits.max_handshakes_per_address),
                    refusals_log: Throttle::default(),
                    access_log: config.access_log,
                });
                accept_loops.push(tokio::spawn(server.run(listener)));
            }
            let shared = OutboundShared {
                limits: limits.clone(),
                metrics: metrics.clone(),
                lifecycle: lifecycle.clone(),
                status: status_rx.clone(),
                access_log: config.access_log,
            };
            for (listener, cfg) in outbound.into_iter().zip(&config.outbound) {
                let connector = MeshConnector::new(
                    &credentials,
                    &trust,
                    ExpectedServer::OneOf(cfg.identity.0.clone()),
                    limits.connect_timeout,
                    limits.handshake_timeout,
                )?;
                let route = Arc::new(Route::new(
                    Target::parse(&cfg.upstream),
                    connector,
                    cfg.protocol,
                    &metrics,
                ));
                accept_loops.push(tokio::spawn(run_explicit(listener, route, shared.clone())));
            }
            if let (Some(listener), Some(cfg)) = (transparent, &config.transparent) {
                let (credentials, trust) = (credentials.clone(), trust.clone());
                let make_connector = Box::new(move |expected: ExpectedServer| {
                    MeshConnector::new(
                        &credentials,
                        &trust,
                        expected,
                        limits.connect_timeout,
                        limits.handshake_timeout,
                    )
                    .map_err(|e| warn!(error = %e, "cannot configure TLS for a destination"))
                    .ok()
                });
                let server = Arc::new(Transparent::new(
                    cfg.clone(),
                    make_connector,
                    shared,
                    own_ports.clone(),
                ));
                accept_loops.push(tokio::spawn(server.run(listener)));
            }
            if let Some((listener, edge)) = edge {
                let limits = &config.limits;
                let routes = EdgeRoutes::new(
                    &edge.routes,
                    |expected| {
                        MeshConnector::new(
                            &credentials,
                            &trust,
                            expected,
                            limits.connect_timeout,
                            limits.handshake_timeout,
                        )
                    },
                    &metrics,
                )?;
                let server = Arc::new(EdgeServer {
                    acceptor: TlsAcceptor::from(edge.tls),
                    routes: Arc::new(routes),
                    hsts: edge
                        .hsts
                        .as_deref()
                        .and_then(|value| HeaderValue::from_str(value).ok()),
                    protected: Arc::new(EdgeServer::protected_headers()),
                    limits: limits.clone(),
                    metrics: metrics.clone(),
                    lifecycle: lifecycle.clone(),
                    status: status_rx.clone(),
                    handshakes: PerAddress::new(limits.max_handshakes_per_address),
                    access_log: config.access_log,
                });
                accept_loops.push(tokio::spawn(server.run(listener)));
            }
            tokio::select! {
                () = &mut shutdown => {}
                () = shutdown_requested.cancelled() => {}
            }
        }

        lifecycle.draining.cancel();
        for accept_loop in accept_loops {
            let _ = accept_loop.await;
        }
        // Said once it is true: every listener is closed.
        info!(grace = %humantime::format_duration(config.shutdown_grace), "draining: no new connections; in-flight requests may finish");
        lifecycle.tracker.close();
        if tokio::time::timeout(config.shutdown_grace, lifecycle.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                connections = lifecycle.tracker.len(),
                "closing connections still open after the shutdown grace period"
            );
            lifecycle.force_close.cancel();
            lifecycle.tracker.wait().await;
        }
        background.cancel();
        if let Some(mut workload_task) = workload_task {
            // Its streams end at once; an app that holds a connection open anyway is cut off.
            if tokio::time::timeout(config.shutdown_grace, &mut workload_task)
                .await
                .is_err()
            {
                workload_task.abort();
                let _ = workload_task.await;
            }
        }
        let _ = identity_task.await;
        let _ = admin_task.await;
        if let Some(policy_task) = policy_task {
            let _ = policy_task.await;
        }
        info!("sidecar stopped");
        Ok(())
    }
}

/// The bundle the sidecar last took from the CA, kept in `ca.bundle_cache`, when it is there,
/// readable and of the bootstrap bundle's trust domain. After a root rotation it holds the new
/// root (and, once the old one is revoked, only that), where the bootstrap file — a pod
/// annotation frozen when the pod was made — may hold only the old one. Anything wrong with it
/// is said and the bootstrap bundle is used: the cache is an optimisation, never a reason not to
/// start.
fn cached_bundle(
    path: &std::path::Path,
    configured: &std::path::Path,
    bootstrap: &TrustBundle,
) -> Option<TrustBundle> {
    // An operator who changed the configured bundle since (dropping a compromised root, say)
    // means it: the cache is from before, so it yields.
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(cache), Some(configured_at)) = (modified(path), modified(configured))
        && configured_at > cache
    {
        info!(cache = %path.display(), "ca.trust_bundle changed after the cached bundle was written; starting from ca.trust_bundle");
        return None;
    }
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        // The first start of a pod: nothing cached yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(cache = %path.display(), error = %e, "cannot read the cached trust bundle; starting from ca.trust_bundle");
            return None;
        }
    };
    match TrustBundle::from_pem(&pem, Some(bootstrap.trust_domain())) {
        Ok(cached) => {
            info!(cache = %path.display(), roots = cached.roots().len(), "starting from the trust bundle last taken from the CA");
            Some(cached)
        }
        Err(e) => {
            warn!(cache = %path.display(), error = %e, "the cached trust bundle is unusable; starting from ca.trust_bundle");
            None
        }
    }
}

/// Reads the configuration's trust bundle (the one last taken from the CA, when
/// `ca.bundle_cache` holds it), and notes configured identities of other trust domains: what
/// `hush proxy --check` verifies, and the first thing a sidecar does.
pub fn load_trust_bundle(config: &ProxyConfig) -> Result<TrustBundle, ProxyError> {
    let bundle_path = &config.ca.trust_bundle;
    let unusable = |reason: String| ProxyError::Bundle {
        path: bundle_path.clone(),
        reason,
    };
    let pem = std::fs::read(bundle_path).map_err(|e| unusable(e.to_string()))?;
    let bootstrap = TrustBundle::from_pem(&pem, None).map_err(|e| unusable(e.to_string()))?;
    let bundle = match &config.ca.bundle_cache {
        Some(cache) => cached_bundle(cache, bundle_path, &bootstrap).unwrap_or(bootstrap),
        None => bootstrap,
    };
    // An identity of another trust domain is a federated peer: its handshakes succeed only
    // while the CA federates with that domain (`hush ca serve --federate-with`), which a
    // sidecar learns at run time. Said here, so a typo in a domain is not silent.
    let trust_domain = bundle.trust_domain();
    let pinned = config
        .outbound
        .iter()
        .enumerate()
        .map(|(i, o)| (format!("outbound[{i}].identity"), &o.identity.0))
        .chain(config.transparent.iter().flat_map(|t| {
            t.destinations.iter().enumerate().map(|(i, rule)| {
                (
                    format!("transparent.destinations[{i}].identity"),
                    &rule.identity.0,
                )
            })
        }));
    for (field, ids) in pinned {
        for id in ids.iter().filter(|id| !id.is_member_of(trust_domain)) {
            info!(
                field,
                %id,
                "{id} is of trust domain {}, not this mesh's {trust_domain}: it is reached only \
                 while the CA federates with {}",
                id.trust_domain(),
                id.trust_domain()
            );
        }
    }
    Ok(bundle)
}

/// Reads and validates the configuration's policy, if it names one: `hush proxy --check` and
/// start-up both refuse a policy with errors.
pub fn check_policy(
    config: &ProxyConfig,
    trust_domain: TrustDomain,
) -> Result<Option<String>, ProxyError> {
    Ok(load_policy_for(config, trust_domain, &Metrics::new())?.map(|p| p.describe()))
}

fn load_policy_for(
    config: &ProxyConfig,
    trust_domain: TrustDomain,
    metrics: &Metrics,
) -> Result<Option<PolicyEnforcer>, ProxyError> {
    let (Some(policy), Some(inbound)) = (&config.policy, &config.inbound) else {
        return Ok(None);
    };
    Ok(Some(PolicyEnforcer::load(
        policy,
        config.access_log,
        inbound.app,
        inbound.protocol,
        trust_domain,
        metrics.clone(),
    )?))
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
}

/// Every port the sidecar listens on, whatever address each was bound with.
fn own_ports(addresses: &ProxyAddresses) -> Vec<u16> {
    let mut ports: Vec<u16> = std::iter::once(addresses.admin)
        .chain(addresses.inbound)
        .chain(addresses.outbound.iter().copied())
        .chain(addresses.transparent)
        .map(|addr| addr.port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Binds a listener. `[::]` means every address of both families: one socket that takes
/// IPv4 connections too (as mapped addresses, which the accept loops turn back into IPv4),
/// whatever the system's `bindv6only` says; where the kernel has no IPv6 at all, every IPv4
/// address.
async fn bind(field: &str, addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    let failed = |source| ProxyError::Bind {
        field: field.to_string(),
        addr,
        source,
    };
    match addr {
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => match dual_stack(addr) {
            Ok(listener) => Ok(listener),
            Err(e) if e.raw_os_error() == Some(EAFNOSUPPORT) => {
                let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
                warn!(
                    field,
                    "the kernel has no IPv6; listening on {v4} instead of {addr}"
                );
                TcpListener::bind(v4).await.map_err(failed)
            }
            Err(e) => Err(failed(e)),
        },
        _ => TcpListener::bind(addr).await.map_err(failed),
    }
}

/// Linux's `EAFNOSUPPORT`: the address family (IPv6) is not supported.
const EAFNOSUPPORT: i32 = 97;

fn dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hush_test_support::TestCa;

    /// A configuration whose bootstrap bundle is `bootstrap`'s root and whose bundle cache
    /// holds `cached` (nothing when `None`).
    fn config(dir: &std::path::Path, bootstrap: &TestCa, cached: Option<&str>) -> ProxyConfig {
        let bundle = dir.join("bundle.pem");
        std::fs::write(&bundle, bootstrap.root_pem()).unwrap();
        let cache = dir.join("cache.pem");
        let _ = std::fs::remove_file(&cache);
        if let Some(pem) = cached {
            std::fs::write(&cache, pem).unwrap();
        }
        ProxyConfig::new(hush_config::CaConfig {
            bundle_cache: Some(cache),
            ..hush_config::CaConfig::new("https://ca:8443", bundle, dir.join("token"))
        })
    }

    #[test]
    fn a_sidecar_starts_from_the_bundle_it_last_took_from_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let old = TestCa::new("cluster.local");
        let new = TestCa::new("cluster.local");
        let roots = |config: &ProxyConfig| load_trust_bundle(config).unwrap().roots().to_vec();

        // Nothing cached yet: the bootstrap bundle.
        let first = config(dir.path(), &old, None);
        assert_eq!(
            roots(&first),
            TrustBundle::from_pem(old.root_pem().as_bytes(), None)
                .unwrap()
                .roots()
        );
        // Cached after a rotation: the new root, though the bootstrap still names the old one.
        let rotated = config(dir.path(), &old, Some(&new.root_pem()));
        assert_eq!(
            roots(&rotated),
            TrustBundle::from_pem(new.root_pem().as_bytes(), None)
                .unwrap()
                .roots()
        );
        // The configured bundle changed after the cache was written: the operator's word wins.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join("bundle.pem"), old.root_pem()).unwrap();
        assert_eq!(roots(&rotated), roots(&first));
        // A cache of another trust domain, or not a bundle at all, is passed over.
        let foreign = TestCa::new("elsewhere.example");
        for bad in [foreign.root_pem(), "not PEM".to_string()] {
            let config = config(dir.path(), &old, Some(&bad));
            assert_eq!(roots(&config), roots(&first), "{bad}");
        }
    }
}
