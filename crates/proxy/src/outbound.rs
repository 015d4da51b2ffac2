//! The outbound side: plaintext from the local app, mutual TLS 1.3 to peer sidecars.
//!
//! An explicit listener forwards to one upstream that must prove one of the configured SPIFFE
//! IDs. The transparent listener takes connections that iptables redirected to it, reads their
//! original destination (`SO_ORIGINAL_DST`) and dials that, or passes destinations outside the
//! mesh through untouched. Either way, an upstream that is not who it must be is refused during
//! the handshake: the app gets a 502 that names the expected and the presented identity (HTTP),
//! or a closed connection (TCP), and the log says the same.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use hush_tls::ExpectedServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{Span, debug, warn};

use crate::access::{AccessLine, Exchange};
use crate::config::{AccessLog, Limits, Protocol, TransparentConfig};
use crate::connect::{dial_logged, session_facts};
use crate::detect::{Detected, Prefixed, sniff};
use crate::http::{Forward, HttpContext, HttpVersion, authority_of};
use crate::identity::IdentityStatus;
use crate::io::{Activity, Metered, relay_until_idle};
use crate::metrics::{Direction, Metrics, ProtocolLabel};
use crate::orig_dst::{is_local_address, original_destination};
use crate::serve::{Lifecycle, Throttle, accept_loop, canonical, serve_http};
use crate::tls::{MeshConnector, MeshProtocol, Target};
use crate::trace;

/// At most this many destinations keep a connection pool on the transparent listener; past
/// it, the pools are dropped and rebuilt on demand.
const MAX_TRANSPARENT_ROUTES: usize = 4096;

/// Everything a connection to one upstream needs, shared by the connections to it (and so
/// are its connection pools).
pub(crate) struct Route {
    target: Target,
    connector: MeshConnector,
    protocol: Protocol,
    http1: Forward,
    http2: Forward,
    /// For messages: `upstream 127.0.0.1:16006 (spiffe://…/backend)`.
    description: Arc<str>,
}

impl Route {
    pub(crate) fn new(
        target: Target,
        connector: MeshConnector,
        protocol: Protocol,
        metrics: &Metrics,
    ) -> Self {
        let expected = match &connector.expected {
            ExpectedServer::OneOf(ids) => ids
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            ExpectedServer::AnyInTrustDomain => "any identity of the trust domain".to_string(),
        };
        Self {
            http1: Forward::mesh(
                connector.clone(),
                target.clone(),
                HttpVersion::Http1,
                metrics.clone(),
            ),
            http2: Forward::mesh(
                connector.clone(),
                target.clone(),
                HttpVersion::Http2,
                metrics.clone(),
            ),
            description: format!("upstream {target} ({expected})").into(),
            target,
            connector,
            protocol,
        }
    }

    /// `upstream 127.0.0.1:16006 (spiffe://…/backend)`.
    pub(crate) fn description(&self) -> &Arc<str> {
        &self.description
    }

    /// The pooled forwarder of `version` to the upstream.
    pub(crate) fn forward(&self, version: HttpVersion) -> Forward {
        match version {
            HttpVersion::Http1 => self.http1.clone(),
            HttpVersion::Http2 => self.http2.clone(),
        }
    }
}

/// What every outbound connection shares.
#[derive(Clone)]
pub(crate) struct OutboundShared {
    pub(crate) limits: Limits,
    pub(crate) metrics: Metrics,
    pub(crate) lifecycle: Lifecycle,
    /// This sidecar's certificate, for the SPIFFE ID in spans and access lines.
    pub(crate) status: watch::Receiver<IdentityStatus>,
    pub(crate) access_log: AccessLog,
}

impl OutboundShared {
    fn local_id(&self) -> Arc<str> {
        self.status
            .borrow()
            .svid
            .as_ref()
            .map_or_else(|| Arc::from(""), |svid| Arc::from(svid.spiffe_id.as_str()))
    }
}

/// Serves an explicit outbound listener.
pub(crate) async fn run_explicit(listener: TcpListener, route: Arc<Route>, shared: OutboundShared) {
    let lifecycle = shared.lifecycle.clone();
    let metrics = shared.metrics.clone();
    accept_loop(
        "outbound",
        listener,
        lifecycle,
        move || metrics.connection_refused(Direction::Outbound, "max_connections"),
        move |tcp, peer| {
            let route = route.clone();
            let shared = shared.clone();
            async move {
                proxy_to(tcp, peer, &route, route.protocol, &shared).await;
            }
        },
    )
    .await;
}

/// Proxies one connection from the app to `route`, in its span.
async fn proxy_to(
    tcp: TcpStream,
    peer: SocketAddr,
    route: &Route,
    protocol: Protocol,
    shared: &OutboundShared,
) {
    // Not entered around the connection (see `Inbound::handle`).
    let span = trace::connection_span(Direction::Outbound, peer);
    proxy_connection(tcp, peer, route, protocol, shared, &span).await;
}

async fn proxy_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    route: &Route,
    protocol: Protocol,
    shared: &OutboundShared,
    span: &Span,
) {
    let started = Instant::now();
    let local_id = shared.local_id();
    if !span.is_disabled() {
        span.record("hush.local.spiffe_id", &*local_id);
        span.record("server.address", tracing::field::display(&route.target));
    }
    let metrics = &shared.metrics;
    let _open = metrics.open_connection(Direction::Outbound);
    let activity = Activity::new();
    let mut app = Metered::new(tcp, metrics.bytes(Direction::Outbound), activity.clone());
    let (detected, prefix) = match protocol {
        Protocol::Http1 => (Detected::Http1, BytesMut::new()),
        Protocol::Http2 => (Detected::Http2, BytesMut::new()),
        Protocol::Tcp => (Detected::Tcp, BytesMut::new()),
        Protocol::Detect => match sniff(&mut app, shared.limits.detect_timeout).await {
            Ok(sniffed) => {
                if sniffed.timed_out {
                    metrics.detect_timeout(Direction::Outbound);
                }
                (sniffed.protocol, sniffed.prefix)
            }
            Err(e) => {
                debug!(%peer, error = %e, "connection failed before its first bytes");
                return;
            }
        },
    };
    let mut app = Prefixed::new(prefix, app);
    let version = match detected {
        Detected::Http1 => HttpVersion::Http1,
        Detected::Http2 => HttpVersion::Http2,
        Detected::Tcp | Detected::NeedMore => {
            metrics.connection(Direction::Outbound, ProtocolLabel::Tcp);
            span.record("network.protocol.name", "tcp");
            let dialled = dial_logged(
                &route.connector,
                &route.target,
                MeshProtocol::Tcp,
                metrics,
                span,
            )
            .await;
            let (facts, bytes, error) = match dialled {
                Ok(mut upstream) => {
                    let facts = session_facts(&upstream);
                    facts.record(span);
                    let bytes = relay_until_idle(
                        &mut app,
                        &mut upstream,
                        &activity,
                        shared.limits.idle_timeout,
                        peer,
                    )
                    .await;
                    trace::record_bytes(span, bytes);
                    (Some(facts), Some(bytes), None)
                }
                // The reason is logged (and in the span); a TCP client only learns that the
                // connection closed.
                Err(error) => (None, None, Some(error.to_string())),
            };
            let line = AccessLine {
                direction: Direction::Outbound,
                client: peer,
                local_id: &local_id,
                peer_id: facts.as_ref().map(|f| &*f.peer_id),
                exchange: Exchange::Tcp { bytes },
                judgement: None,
                error: error.as_deref(),
                duration: started.elapsed(),
            };
            span.in_scope(|| line.write(shared.access_log));
            return;
        }
    };
    span.record("network.protocol.name", "http");
    metrics.connection(Direction::Outbound, version.label());
    let ctx = Arc::new(HttpContext {
        direction: Direction::Outbound,
        version,
        forward: match version {
            HttpVersion::Http1 => route.http1.clone(),
            HttpVersion::Http2 => route.http2.clone(),
        },
        translated: (version == HttpVersion::Http1).then(|| route.http2.clone()),
        destination: route.description.clone(),
        fallback_authority: match &route.target {
            Target::Addr(addr) => authority_of(*addr),
            Target::Name(name) => name
                .parse()
                .unwrap_or_else(|_| http::uri::Authority::from_static("localhost")),
        },
        identity: None,
        protected: None,
        authz: None,
        session: None,
        local_id,
        client: peer,
        access_log: shared.access_log,
        metrics: metrics.clone(),
        tunnels: TaskTracker::new(),
        activity: activity.clone(),
        idle_timeout: shared.limits.idle_timeout,
        force_close: shared.lifecycle.force_close.clone(),
        router: None,
        hsts: None,
    });
    serve_http(
        app,
        ctx,
        &shared.limits,
        activity,
        shared.lifecycle.draining.clone(),
    )
    .await;
}

/// The transparent listener: redirected connections, dialled at their original destination.
pub(crate) struct Transparent {
    pub(crate) config: TransparentConfig,
    pub(crate) make_connector: Box<dyn Fn(ExpectedServer) -> Option<MeshConnector> + Send + Sync>,
    pub(crate) shared: OutboundShared,
    /// The ports the sidecar itself listens on.
    own_ports: Vec<u16>,
    refusals_log: Throttle,
    routes: Mutex<HashMap<SocketAddr, Arc<Route>>>,
}

/// What to do with a redirected connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Destination {
    /// Outside the mesh: plain TCP, untouched.
    Passthrough,
    /// A peer sidecar that must prove this.
    Mesh {
        expected: ExpectedServer,
        opaque: bool,
    },
}

impl Transparent {
    pub(crate) fn new(
        config: TransparentConfig,
        make_connector: Box<dyn Fn(ExpectedServer) -> Option<MeshConnector> + Send + Sync>,
        shared: OutboundShared,
        own_ports: Vec<u16>,
    ) -> Self {
        Self {
            config,
            make_connector,
            shared,
            own_ports,
            refusals_log: Throttle::default(),
            routes: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) async fn run(self: Arc<Self>, listener: TcpListener) {
        let lifecycle = self.shared.lifecycle.clone();
        let metrics = self.shared.metrics.clone();
        accept_loop(
            "transparent",
            listener,
            lifecycle,
            move || metrics.connection_refused(Direction::Outbound, "max_connections"),
            move |tcp, peer| {
                let this = self.clone();
                async move {
                    this.handle(tcp, peer).await;
                }
            },
        )
        .await;
    }

    /// Classifies a destination by the configuration: passthrough CIDRs and ports first, then
    /// the first destination rule that matches; anything else is a mesh peer of any identity.
    pub(crate) fn classify(config: &TransparentConfig, destination: SocketAddr) -> Destination {
        let passthrough = &config.passthrough;
        if passthrough.ports.contains(&destination.port())
            || passthrough
                .cidrs
                .iter()
                .any(|net| net.contains(&destination.ip()))
        {
            return Destination::Passthrough;
        }
        let expected = config
            .destinations
            .iter()
            .find(|rule| {
                rule.cidr.contains(&destination.ip())
                    && rule.port.is_none_or(|port| port == destination.port())
            })
            .map_or(ExpectedServer::AnyInTrustDomain, |rule| {
                ExpectedServer::OneOf(rule.identity.0.clone())
            });
        Destination::Mesh {
            expected,
            opaque: config.opaque_ports.contains(&destination.port()),
        }
    }

    async fn handle(&self, tcp: TcpStream, peer: SocketAddr) {
        let destination = match original_destination(&tcp) {
            Ok(destination) => destination,
            Err(e) => {
                warn!(%peer, error = %e, "cannot read the original destination of a redirected connection");
                return;
            }
        };
        if let Some(reason) = self.own_destination(&tcp, destination) {
            // Dialling one of the sidecar's own listeners would connect it to itself, again and
            // again, until every slot is taken.
            self.shared
                .metrics
                .connection_refused(Direction::Outbound, reason);
            if self.refusals_log.allows() {
                warn!(
                    %peer,
                    %destination,
                    "refused a connection to one of the sidecar's own listeners: the transparent \
                     listener only serves traffic redirected by iptables to other destinations \
                     (logged once every 10 s)"
                );
            }
            return;
        }
        match Self::classify(&self.config, destination) {
            Destination::Passthrough => self.pass_through(tcp, peer, destination).await,
            Destination::Mesh { expected, opaque } => {
                let Some(route) = self.route(destination, expected) else {
                    return;
                };
                let protocol = if opaque {
                    Protocol::Tcp
                } else {
                    Protocol::Detect
                };
                proxy_to(tcp, peer, &route, protocol, &self.shared).await;
            }
        }
    }

    fn own_destination(&self, tcp: &TcpStream, destination: SocketAddr) -> Option<&'static str> {
        let local = tcp.local_addr().ok().map(canonical)?;
        own_destination(local, destination, &self.own_ports, is_local_address)
    }

    fn route(&self, destination: SocketAddr, expected: ExpectedServer) -> Option<Arc<Route>> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(route) = routes.get(&destination)
            && route.connector.expected == expected
        {
            return Some(route.clone());
        }
        if routes.len() >= MAX_TRANSPARENT_ROUTES {
            routes.clear();
        }
        let connector = (self.make_connector)(expected)?;
        let route = Arc::new(Route::new(
            Target::Addr(destination),
            connector,
            Protocol::Detect,
            &self.shared.metrics,
        ));
        routes.insert(destination, route.clone());
        Some(route)
    }

    async fn pass_through(&self, tcp: TcpStream, peer: SocketAddr, destination: SocketAddr) {
        let metrics = &self.shared.metrics;
        let _open = metrics.open_connection(Direction::Outbound);
        metrics.connection(Direction::Outbound, ProtocolLabel::Passthrough);
        let activity = Activity::new();
        let mut app = Metered::new(tcp, metrics.bytes(Direction::Outbound), activity.clone());
        let mut upstream = match Target::Addr(destination)
            .connect(self.shared.limits.connect_timeout)
            .await
        {
            Ok(upstream) => upstream,
            Err(e) => {
                metrics.connect_failure(Direction::Outbound, "passthrough");
                debug!(%peer, error = %e, "passthrough destination unreachable");
                return;
            }
        };
        let idle = self.shared.limits.idle_timeout;
        let _ = relay_until_idle(&mut app, &mut upstream, &activity, idle, peer).await;
    }
}

/// Why `destination` is one of this sidecar's own listeners, if it is: a connection made to
/// the transparent port directly (not redirected: the kernel reports the listener's own
/// address, `local`), or one redirected on its way to any of the sidecar's ports at an
/// address of this pod, whatever address each listener was bound with (`0.0.0.0` in a pod).
fn own_destination(
    local: SocketAddr,
    destination: SocketAddr,
    own_ports: &[u16],
    is_local_address: impl Fn(std::net::IpAddr) -> bool,
) -> Option<&'static str> {
    if destination == local {
        return Some("not_redirected");
    }
    if !own_ports.contains(&destination.port()) {
        return None;
    }
    let ip = destination.ip();
    let ours = ip == local.ip() || ip.is_loopback() || ip.is_unspecified() || is_local_address(ip);
    ours.then_some("loop")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DestinationRule, Identities, Passthrough};

    /// One row per destination: the sidecar listens on 15001 (this listener), 15006 and
    /// 15000 on every address; the pod's address is 10.0.0.5.
    #[test]
    fn the_sidecars_own_listeners_are_never_dialled() {
        let local: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        let own = [15000, 15001, 15006];
        let pod = |ip: std::net::IpAddr| ip == std::net::IpAddr::from([10, 0, 0, 5]);
        let cases = [
            ("127.0.0.1:15001", Some("not_redirected")),
            ("10.0.0.5:15001", Some("loop")),
            ("10.0.0.5:15006", Some("loop")),
            ("10.0.0.5:15000", Some("loop")),
            ("127.0.0.2:15000", Some("loop")),
            ("0.0.0.0:15006", Some("loop")),
            ("10.0.0.5:8080", None),
            ("10.0.0.6:15001", None),
            ("10.0.0.6:15006", None),
        ];
        for (destination, expected) in cases {
            assert_eq!(
                own_destination(local, destination.parse().unwrap(), &own, pod),
                expected,
                "{destination}"
            );
        }
    }

    fn config() -> TransparentConfig {
        TransparentConfig {
            listen: "127.0.0.1:15001".parse().unwrap(),
            passthrough: Passthrough {
                cidrs: vec!["10.96.0.0/12".parse().unwrap()],
                ports: vec![53],
            },
            opaque_ports: vec![3306],
            destinations: vec![
                DestinationRule {
                    cidr: "10.1.2.0/24".parse().unwrap(),
                    port: Some(8080),
                    identity: Identities(vec!["spiffe://cluster.local/backend".parse().unwrap()]),
                },
                DestinationRule {
                    cidr: "10.1.0.0/16".parse().unwrap(),
                    port: None,
                    identity: Identities(vec!["spiffe://cluster.local/other".parse().unwrap()]),
                },
            ],
        }
    }

    /// One row per routing rule: destination, and what must happen to it.
    #[test]
    fn destinations_are_classified_by_the_first_matching_rule() {
        let backend =
            ExpectedServer::OneOf(vec!["spiffe://cluster.local/backend".parse().unwrap()]);
        let other = ExpectedServer::OneOf(vec!["spiffe://cluster.local/other".parse().unwrap()]);
        let cases = [
            ("10.100.0.1:443", Destination::Passthrough),
            ("10.1.2.3:53", Destination::Passthrough),
            (
                "10.1.2.3:8080",
                Destination::Mesh {
                    expected: backend,
                    opaque: false,
                },
            ),
            (
                "10.1.2.3:9090",
                Destination::Mesh {
                    expected: other.clone(),
                    opaque: false,
                },
            ),
            (
                "10.1.9.9:3306",
                Destination::Mesh {
                    expected: other,
                    opaque: true,
                },
            ),
            (
                "192.168.1.1:80",
                Destination::Mesh {
                    expected: ExpectedServer::AnyInTrustDomain,
                    opaque: false,
                },
            ),
        ];
        let config = config();
        for (destination, expected) in cases {
            assert_eq!(
                Transparent::classify(&config, destination.parse().unwrap()),
                expected,
                "{destination}"
            );
        }
    }
}
