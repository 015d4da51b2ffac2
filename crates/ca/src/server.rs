//! Serving the CA: TLS on a TCP listener, both gRPC services on one port.
//!
//! hush runs its own accept loop and serves each connection itself (hyper's HTTP/2 server with
//! tonic's routes as the service) rather than using tonic's server, so that it can bound what a
//! client without credentials can hold: the TLS handshake has a time limit; connections are
//! capped in total and per client address (handshakes included); a connection must send its
//! first request soon after the handshake and is closed once idle; and requests from clients
//! without a verified certificate are capped in flight, since each may start a TokenReview. The
//! CA's own server certificate is issued from its intermediate and rotated without a restart.

mod connection;
pub(crate) mod limits;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hush_identity::{SpiffeId, TrustDomain};
use hush_tls::rustls;
use hush_tls::{ALPN_H2, CredentialStore, explain_io_error, peer_spiffe_id};
use rustls_pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tonic::transport::server::TcpConnectInfo;
use tracing::{debug, info, warn};

use self::connection::{Shared, Timeouts};
use self::limits::{AddressSlot, PerAddress, REPORT_INTERVAL, RefusalKind, Refusals};
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
    /// A client must send its first request (the HTTP/2 preface and a request's headers) this
    /// soon after the TLS handshake, or the connection is closed.
    pub first_request_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 PINGs do not count
    /// as requests).
    pub idle_timeout: Duration,
    /// Requests larger than this are refused with RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
    /// Connections beyond this wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections from one IP address beyond this, TLS handshakes included, are refused (reset
    /// at once). Many sidecars may share one node address, so keep it generous.
    pub max_connections_per_ip: usize,
    /// Requests from clients without a verified client certificate (anything but a renewal)
    /// beyond this many in flight are answered UNAVAILABLE, to be retried.
    pub max_unauthenticated_requests: usize,
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
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_request_bytes: 64 * 1024,
            max_connections: 4096,
            max_connections_per_ip: 256,
            max_unauthenticated_requests: 64,
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
    /// A limit is set to a value that cannot work.
    #[error("invalid {option} {value}: {reason}")]
    InvalidOption {
        /// The [`ServeOptions`] field.
        option: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

// === impl ServeOptions ===

impl ServeOptions {
    /// Refuses limits that would make the CA refuse everything or never time out.
    pub fn validate(&self) -> Result<(), ServeError> {
        let counts = [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            (
                "max_unauthenticated_requests",
                self.max_unauthenticated_requests,
            ),
            ("max_request_bytes", self.max_request_bytes),
        ];
        for (option, value) in counts {
            let reason = match value {
                0 => "must be at least 1",
                // A semaphore's limit; far beyond what any machine could serve.
                v if v > Semaphore::MAX_PERMITS => "is too large",
                _ => continue,
            };
            return Err(ServeError::InvalidOption {
                option,
                value: value.to_string(),
                reason: reason.to_string(),
            });
        }
        let timeouts = [
            ("handshake_timeout", self.handshake_timeout),
            ("first_request_timeout", self.first_request_timeout),
            ("idle_timeout", self.idle_timeout),
            ("request_timeout", self.request_timeout),
        ];
        for (option, value) in timeouts {
            if value.is_zero() {
                return Err(ServeError::InvalidOption {
                    option,
                    value: "0s".to_string(),
                    reason: "must be more than zero".to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Serves both CA services on `listener` until `shutdown` completes.
pub async fn serve(
    service: CaService,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    options.validate()?;
    let mut dns_names = vec!["localhost".to_string()];
    dns_names.extend(options.dns_names.iter().cloned());
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    ips.extend(options.ips.iter().copied());

    let credentials = CredentialStore::new();
    install_server_certificate(&service, &credentials, &dns_names, &ips, &options)?;
    let rotation = tokio::spawn(rotate_server_certificate(
        service.clone(),
        credentials.clone(),
        dns_names.clone(),
        ips.clone(),
        options.clone(),
    ));

    // Client certificates are optional: a workload with a valid certificate of this trust
    // domain may present it instead of a token to renew it. The verifier follows the roots in
    // force, so a workload under a new root can renew as soon as the root is published, and
    // one under a revoked root cannot.
    let tls = hush_tls::server_config(
        Arc::new(credentials.clone()),
        Some(service.client_verifier()),
        &[ALPN_H2],
    )?;
    let following = tokio::spawn(follow_authorities(
        service.clone(),
        credentials,
        dns_names.clone(),
        ips.clone(),
        options.clone(),
    ));

    let limit = options.max_request_bytes;
    let routes = Routes::new(service.hush_service().max_decoding_message_size(limit))
        .add_service(service.istio_service().max_decoding_message_size(limit))
        .prepare();
    let graceful = CancellationToken::new();
    let shared = Arc::new(Shared {
        routes,
        http2: Shared::http2(),
        timeouts: Timeouts {
            first_request: options.first_request_timeout,
            idle: options.idle_timeout,
            request: options.request_timeout,
        },
        max_request_bytes: limit,
        unauthenticated: Arc::new(Semaphore::new(options.max_unauthenticated_requests)),
        max_unauthenticated: options.max_unauthenticated_requests,
        busy: Refusals::new(RefusalKind::UnauthenticatedRequests {
            limit: options.max_unauthenticated_requests,
        }),
        graceful: graceful.clone(),
    });
    let accept = Accept {
        tls: TlsAcceptor::from(Arc::new(tls)),
        trust_domain: service.trust_domain(),
        slots: Arc::new(Semaphore::new(options.max_connections)),
        per_address: PerAddress::new(options.max_connections_per_ip),
        crowded: Arc::new(Refusals::new(RefusalKind::ConnectionsPerAddress {
            limit: options.max_connections_per_ip,
        })),
        handshake_timeout: options.handshake_timeout,
        shared: shared.clone(),
        tracker: TaskTracker::new(),
        force_close: CancellationToken::new(),
    };
    // The tail of a refusal flood that stopped is reported too.
    let reports = tokio::spawn({
        let (crowded, shared) = (accept.crowded.clone(), shared.clone());
        async move {
            let mut tick = tokio::time::interval(REPORT_INTERVAL);
            loop {
                tick.tick().await;
                crowded.report_pending();
                shared.busy.report_pending();
            }
        }
    });

    tokio::select! {
        () = accept.run(listener) => {}
        () = shutdown => {}
    }
    // The listener is closed now: new clients are refused by the kernel.
    graceful.cancel();
    accept.tracker.close();
    if tokio::time::timeout(options.shutdown_grace, accept.tracker.wait())
        .await
        .is_err()
    {
        // Graceful shutdown waits for every client to acknowledge the GOAWAY; a hung client
        // must not keep the CA alive.
        warn!(grace = ?options.shutdown_grace, "connections still open after the shutdown grace period; closing them");
        accept.force_close.cancel();
        accept.tracker.wait().await;
    }
    rotation.abort();
    following.abort();
    reports.abort();
    accept.crowded.report_remaining();
    shared.busy.report_remaining();
    Ok(())
}

fn install_server_certificate(
    service: &CaService,
    credentials: &CredentialStore,
    dns_names: &[String],
    ips: &[IpAddr],
    options: &ServeOptions,
) -> Result<(), ServeError> {
    let (chain, key) = service
        .current()
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

/// Gives a newly activated intermediate its own server certificate at once, so that the CA
/// stops presenting a chain under an authority that is being retired.
async fn follow_authorities(
    service: CaService,
    credentials: CredentialStore,
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
    options: ServeOptions,
) {
    let mut changes = service.subscribe();
    let mut signing = service.current().intermediate_id().clone();
    while changes.changed().await.is_ok() {
        let current = service.current();
        if current.intermediate_id() != &signing {
            match install_server_certificate(&service, &credentials, &dns_names, &ips, &options) {
                Ok(()) => {
                    info!(intermediate = %current.intermediate_id(), "the CA's server certificate now comes from the new intermediate");
                    signing = current.intermediate_id().clone();
                }
                Err(e) => {
                    warn!(error = %e, "cannot issue the CA's server certificate from the new intermediate; keeping the current one")
                }
            }
        }
    }
}

/// The accept loop and what it hands to each connection.
struct Accept {
    tls: TlsAcceptor,
    trust_domain: TrustDomain,
    /// All connections, handshakes included.
    slots: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
    crowded: Arc<Refusals>,
    handshake_timeout: Duration,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    /// Cancelled when the shutdown grace has run out: every connection is dropped.
    force_close: CancellationToken,
}

impl Accept {
    async fn run(&self, listener: TcpListener) {
        loop {
            // Taken before accepting: beyond the cap, clients wait in the kernel's backlog.
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
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
            let Some(address_slot) = self.per_address.try_acquire(peer.ip()) else {
                // A reset rather than a close: the client learns at once, and the CA keeps no
                // TIME_WAIT state for a flood.
                let _ = tcp.set_zero_linger();
                drop(tcp);
                self.crowded.refuse(peer.ip());
                continue;
            };
            let held = Held {
                _permit: permit,
                _address_slot: address_slot,
            };
            let connection = self.connection(tcp, peer, held);
            let force_close = self.force_close.clone();
            self.tracker.spawn(async move {
                tokio::select! {
                    () = connection => {}
                    () = force_close.cancelled() => {}
                }
            });
        }
    }

    /// The TLS handshake, bounded, then the connection served until it ends.
    fn connection(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        held: Held,
    ) -> impl Future<Output = ()> + Send + 'static {
        let acceptor = self.tls.clone();
        let trust_domain = self.trust_domain.clone();
        let handshake_timeout = self.handshake_timeout;
        let shared = self.shared.clone();
        async move {
            let _held = held;
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().ok();
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp));
            let tls = tokio::select! {
                handshake = handshake => match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        log_handshake_failure(peer, &e);
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                // A connection the CA is about to close is not worth a handshake.
                () = shared.graceful.cancelled() => return,
            };
            // The verifier already checked the chain and the SVID rules.
            let spiffe_id = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| peer_spiffe_id(leaf, &trust_domain).ok());
            let certificates = match (&spiffe_id, tls.get_ref().1.peer_certificates()) {
                (Some(_), Some(chain)) => chain.iter().map(|c| c.clone().into_owned()).collect(),
                _ => Vec::new(),
            };
            let info = PeerInfo {
                tcp: TcpConnectInfo {
                    local_addr: local,
                    remote_addr: Some(peer),
                },
                spiffe_id,
                certificates: Arc::new(certificates),
            };
            connection::serve(tls, info, shared).await;
        }
    }
}

/// What a connection holds until it ends: its place under the global cap and its address's.
struct Held {
    _permit: OwnedSemaphorePermit,
    _address_slot: AddressSlot,
}

fn log_handshake_failure(peer: SocketAddr, e: &io::Error) {
    // A client certificate that fails verification is someone trying to renew an identity they
    // cannot prove: worth an operator's eye. Other failures (scanners, plaintext, aborted
    // connections) stay at debug.
    let bad_certificate = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
    if bad_certificate {
        let reason = explain_io_error(e);
        info!(%peer, %reason, "refused a client certificate");
    } else {
        debug!(%peer, error = %e, "TLS handshake with a client failed");
    }
}

/// What the CA knows about the other end of a connection; every request carries it as an
/// extension.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Addresses.
    pub tcp: TcpConnectInfo,
    /// The SPIFFE ID of a verified client certificate, if the client presented one.
    pub spiffe_id: Option<SpiffeId>,
    /// That certificate's chain, leaf first, as presented: a renewal checks it again against
    /// the roots in force, since a connection may outlive a root's revocation.
    pub certificates: Arc<Vec<CertificateDer<'static>>>,
}

// === impl PeerInfo ===

impl PeerInfo {
    /// The client's IP address.
    pub(crate) fn address(&self) -> Option<IpAddr> {
        self.tcp.remote_addr.map(|addr| addr.ip())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_refuse_everything_or_never_expire_are_refused() {
        assert!(ServeOptions::default().validate().is_ok());
        let zero_cap = ServeOptions {
            max_connections_per_ip: 0,
            ..ServeOptions::default()
        };
        assert_eq!(
            zero_cap.validate().unwrap_err().to_string(),
            "invalid max_connections_per_ip 0: must be at least 1"
        );
        let zero_idle = ServeOptions {
            idle_timeout: Duration::ZERO,
            ..ServeOptions::default()
        };
        assert_eq!(
            zero_idle.validate().unwrap_err().to_string(),
            "invalid idle_timeout 0s: must be more than zero"
        );
        let huge = ServeOptions {
            max_unauthenticated_requests: usize::MAX,
            ..ServeOptions::default()
        };
        assert!(
            huge.validate()
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
    }
}
