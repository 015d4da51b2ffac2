//! The gateway's public listener: TLS from browsers and API clients, each request routed by
//! host and path prefix to a mesh service and sent there with mutual TLS.
//!
//! The TLS configuration (versions, suites, certificates by SNI) is the gateway's
//! ([`Edge::tls`]); what happens after the handshake is the sidecar's HTTP forwarding, with
//! the gateway's own identity towards the mesh: each route's upstream must prove the SPIFFE ID
//! the route pins, as an outbound listener's does. At this hop the gateway is the edge, so
//! what a client claims about where it came from (`X-Forwarded-*`, `Forwarded`, a trace
//! context, hush's identity headers) is dropped and the gateway states it itself.
//!
//! A route is chosen for a request only when every reading of its path an app server might
//! take ([`hush_policy::read_path`]) picks the same route: `/api/../admin` is refused rather
//! than sent to the `/api` service, which would serve its `/admin`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, StatusCode};
use hush_identity::SpiffeId;
use hush_tls::ExpectedServer;
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::bulk::ReadAhead;
use crate::config::{AccessLog, Limits, Protocol};
use crate::headers::ProtectedHeaders;
use crate::http::{HttpContext, HttpVersion, Router};
use crate::identity::IdentityStatus;
use crate::io::{Activity, Metered};
use crate::metrics::{Direction, Metrics};
use crate::outbound::Route;
use crate::serve::{Lifecycle, PerAddress, accept_loop, serve_http};
use crate::tls::{MeshConnector, Target};
use hush_tls::HandshakeFailure;

/// The ALPN protocol of ACME's TLS-ALPN-01 validation: such a handshake is the whole
/// exchange, and the connection closes after it.
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// What a client may not tell the mesh through the gateway: where it came from, which URL it
/// "really" asked for, and the trace it belongs to — the names proxies use for these, which
/// app frameworks believe (Spring's `X-Forwarded-Prefix`, Symfony's and IIS's
/// `X-Original-URL`, CDNs' client-address headers, Zipkin's and Jaeger's trace headers).
/// (The identity headers are always protected.)
const EDGE_PROTECTED: [&str; 29] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-uri",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "uber-trace-id",
];

/// One route into the mesh.
#[derive(Clone, Debug)]
pub struct EdgeRoute {
    /// `shop.example.com`, `*.example.com` (one label) or `*`.
    pub host: String,
    /// `/` or a prefix of whole segments, `/api`.
    pub path_prefix: String,
    /// The upstream sidecar's inbound address, `host:port`.
    pub upstream: String,
    /// The SPIFFE IDs the upstream may prove.
    pub identity: Vec<SpiffeId>,
}

/// The gateway's public listener, for [`crate::Proxy::with_edge`].
#[derive(Clone)]
pub struct Edge {
    /// Public TLS: versions, suites, ALPN (`h2`, `http/1.1`, and `acme-tls/1` when ACME's
    /// TLS-ALPN-01 is used) and the certificates, by SNI.
    pub tls: Arc<hush_tls::rustls::ServerConfig>,
    /// The routes, first match wins.
    pub routes: Vec<EdgeRoute>,
    /// `Strict-Transport-Security` on every response, if any.
    pub hsts: Option<String>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("routes", &self.routes)
            .field("hsts", &self.hsts)
            .finish_non_exhaustive()
    }
}

/// Which hosts a route serves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: one more label in front.
    Wildcard(String),
}

impl HostPattern {
    fn parse(host: &str) -> Self {
        let host = host.to_ascii_lowercase();
        if host == "*" {
            Self::Any
        } else if let Some(parent) = host.strip_prefix('*') {
            Self::Wildcard(parent.to_string())
        } else {
            Self::Exact(host)
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => name == host,
            Self::Wildcard(parent) => host
                .strip_suffix(parent.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

/// What a route serves: a host pattern and a path prefix.
#[derive(Debug)]
pub(crate) struct Matcher {
    host: HostPattern,
    prefix: String,
}

impl Matcher {
    /// The matcher of a route for `host` (exact, `*.parent`, `*`) and `prefix`.
    pub(crate) fn new(host: &str, prefix: &str) -> Self {
        Self {
            host: HostPattern::parse(host),
            prefix: prefix.to_string(),
        }
    }

    /// Whether a request for `host` (lowercase) at `path` is this route's.
    pub(crate) fn matches(&self, host: &str, path: &str) -> bool {
        self.host.matches(host) && under(&self.prefix, path)
    }
}

/// The index of the first route of `matchers` for `host` and `path`, or the status and
/// reason to answer with.
pub(crate) fn pick(
    matchers: &[Matcher],
    host: &str,
    path: &str,
) -> Result<usize, (StatusCode, String)> {
    let readings = hush_policy::read_path(path).map_err(|why| {
        (
            StatusCode::BAD_REQUEST,
            format!("the path {path:?} cannot be routed: {why}"),
        )
    })?;
    let choose = |reading: &str| matchers.iter().position(|m| m.matches(host, reading));
    let mut readings = readings.iter();
    let first = readings.next().and_then(choose);
    for other in readings {
        if choose(other) != first {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "the path {path:?} reads as {other:?} to some servers, which another route \
                     serves"
                ),
            ));
        }
    }
    first.ok_or_else(|| (StatusCode::NOT_FOUND, format!("no route for {host}{path}")))
}

struct RouteEntry {
    route: Arc<Route>,
    /// `upstream 10.0.0.7:15006 (spiffe://…/web)`, for messages.
    destination: Arc<str>,
    authority: Authority,
}

/// Whether `path` is under `prefix`, on whole segments.
fn under(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl std::fmt::Debug for RouteEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.destination)
    }
}

/// The routes, in order.
#[derive(Debug)]
pub(crate) struct EdgeRoutes {
    matchers: Vec<Matcher>,
    entries: Vec<RouteEntry>,
}

impl EdgeRoutes {
    pub(crate) fn new(
        routes: &[EdgeRoute],
        make_connector: impl Fn(ExpectedServer) -> Result<MeshConnector, hush_tls::TlsConfigError>,
        metrics: &Metrics,
    ) -> Result<Self, hush_tls::TlsConfigError> {
        let mut entries = Vec::with_capacity(routes.len());
        let mut matchers = Vec::with_capacity(routes.len());
        for route in routes {
            let connector = make_connector(ExpectedServer::OneOf(route.identity.clone()))?;
            let target = Target::parse(&route.upstream);
            let authority = route
                .upstream
                .parse()
                .unwrap_or_else(|_| Authority::from_static("localhost"));
            let route_to = Route::new(target, connector, Protocol::Detect, metrics);
            matchers.push(Matcher {
                host: HostPattern::parse(&route.host),
                prefix: route.path_prefix.clone(),
            });
            entries.push(RouteEntry {
                destination: route_to.description().clone(),
                route: Arc::new(route_to),
                authority,
            });
        }
        Ok(Self { matchers, entries })
    }
}

/// The host a request is for, lowercase, without port or trailing dot: from its target
/// (HTTP/2's `:authority`, HTTP/1's absolute form) or its Host header, which must agree.
fn request_host(request: &Request<Incoming>) -> Result<Option<String>, (StatusCode, String)> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err((
            StatusCode::BAD_REQUEST,
            "the request has more than one Host header".to_string(),
        ));
    }
    let from_header = match host_header {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|h| h.parse::<Authority>().ok())
                .ok_or_else(|| {
                    (
                        StatusCode::BAD_REQUEST,
                        "the Host header is not a valid host[:port]".to_string(),
                    )
                })?,
        ),
        None => None,
    };
    let authority = match (request.uri().authority(), from_header) {
        (Some(target), Some(header)) if !target.host().eq_ignore_ascii_case(header.host()) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "the request names two hosts: {target} in its target and {header} in its \
                     Host header"
                ),
            ));
        }
        (Some(target), _) => Some(target.clone()),
        (None, header) => header,
    };
    Ok(authority.map(|a| {
        let host = a.host().to_ascii_lowercase();
        match host.strip_suffix('.') {
            Some(stripped) => stripped.to_string(),
            None => host,
        }
    }))
}

/// One connection's view of the routes: each route's context is made the first time one of
/// the connection's requests takes it.
#[derive(Debug)]
struct ConnectionRouter {
    routes: Arc<EdgeRoutes>,
    /// The name the client asked for in its TLS hello, for requests that name no host
    /// (HTTP/1.0).
    server_name: Option<String>,
    contexts: Vec<OnceLock<Arc<HttpContext>>>,
}

impl Router for ConnectionRouter {
    fn route(
        &self,
        base: &HttpContext,
        request: &Request<Incoming>,
    ) -> Result<Arc<HttpContext>, (StatusCode, String)> {
        // A tunnel would carry an outsider's bytes to an app unread: the gateway forwards
        // requests (and WebSocket upgrades), never a CONNECT.
        if request.method() == http::Method::CONNECT {
            return Err((
                StatusCode::METHOD_NOT_ALLOWED,
                "the gateway does not open tunnels (CONNECT)".to_string(),
            ));
        }
        let host = request_host(request)?
            .or_else(|| self.server_name.clone())
            .unwrap_or_default();
        let index = pick(&self.routes.matchers, &host, request.uri().path())?;
        let entry = &self.routes.entries[index];
        Ok(self.contexts[index]
            .get_or_init(|| {
                let http1 = entry.route.forward(HttpVersion::Http1);
                let http2 = entry.route.forward(HttpVersion::Http2);
                Arc::new(HttpContext {
                    forward: match base.version {
                        HttpVersion::Http1 => http1,
                        HttpVersion::Http2 => http2.clone(),
                    },
                    // HTTP/1.1 requests cross the mesh multiplexed on HTTP/2.
                    translated: (base.version == HttpVersion::Http1).then_some(http2),
                    destination: entry.destination.clone(),
                    fallback_authority: entry.authority.clone(),
                    router: None,
                    ..base.clone()
                })
            })
            .clone())
    }
}

/// The public listener.
pub(crate) struct EdgeServer {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) routes: Arc<EdgeRoutes>,
    pub(crate) hsts: Option<HeaderValue>,
    pub(crate) protected: Arc<ProtectedHeaders>,
    pub(crate) limits: Limits,
    pub(crate) metrics: Metrics,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) status: watch::Receiver<IdentityStatus>,
    pub(crate) handshakes: Arc<PerAddress>,
    pub(crate) access_log: AccessLog,
}

impl EdgeServer {
    /// The protected headers of the public listener.
    pub(crate) fn protected_headers() -> ProtectedHeaders {
        let names: Vec<String> = EDGE_PROTECTED.iter().map(|s| (*s).to_string()).collect();
        ProtectedHeaders::new(&names)
    }

    pub(crate) async fn run(self: Arc<Self>, listener: TcpListener) {
        let lifecycle = self.lifecycle.clone();
        let metrics = self.metrics.clone();
        let refused = move || metrics.connection_refused(Direction::Gateway, "max_connections");
        accept_loop("gateway", listener, lifecycle, refused, move |tcp, peer| {
            let server = self.clone();
            async move { server.handle(tcp, peer).await }
        })
        .await;
    }

    async fn handle(&self, tcp: TcpStream, peer: SocketAddr) {
        let _open = self.metrics.open_connection(Direction::Gateway);
        let Some(handshaking) = self.handshakes.take(peer.ip()) else {
            self.metrics
                .connection_refused(Direction::Gateway, "handshakes_per_address");
            if self.handshakes.log.allows() {
                warn!(
                    %peer,
                    limit = self.limits.max_handshakes_per_address,
                    "refusing connections from an address with too many TLS handshakes in \
                     progress (limits.max_handshakes_per_address; logged once every 10 s)"
                );
            }
            return;
        };
        let activity = Activity::new();
        let metered = Metered::new(
            tcp,
            self.metrics.bytes(Direction::Gateway),
            activity.clone(),
        );
        let started = Instant::now();
        let handshake = tokio::time::timeout(
            self.limits.handshake_timeout,
            self.acceptor.accept(ReadAhead::new(metered)),
        )
        .await;
        drop(handshaking);
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let failure = HandshakeFailure::from_io(&e);
                self.metrics.handshake_failure(Direction::Gateway, &failure);
                // Public clients fail handshakes all day (scanners, old clients, wrong names):
                // counted, and logged at debug level only.
                debug!(%peer, "public TLS handshake failed: {failure}");
                return;
            }
            Err(_) => {
                let failure = HandshakeFailure::timed_out(self.limits.handshake_timeout);
                self.metrics.handshake_failure(Direction::Gateway, &failure);
                return;
            }
        };
        self.metrics
            .handshake(Direction::Gateway, started.elapsed());
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol();
        if alpn == Some(ACME_TLS_ALPN) {
            // The ACME server has seen the challenge certificate: that was the whole exchange.
            return;
        }
        let version = if alpn == Some(b"h2") {
            HttpVersion::Http2
        } else {
            HttpVersion::Http1
        };
        let server_name = session.server_name().map(str::to_ascii_lowercase);
        self.metrics.connection(Direction::Gateway, version.label());
        let local_id: Arc<str> = self
            .status
            .borrow()
            .svid
            .as_ref()
            .map_or_else(|| Arc::from(""), |svid| Arc::from(svid.spiffe_id.as_str()));
        let router = ConnectionRouter {
            routes: self.routes.clone(),
            server_name: server_name.clone(),
            contexts: (0..self.routes.entries.len())
                .map(|_| OnceLock::new())
                .collect(),
        };
        let Some(first) = self.routes.entries.first() else {
            return;
        };
        let ctx = Arc::new(HttpContext {
            direction: Direction::Gateway,
            version,
            // Every request is routed (`router`); these stand only until it is.
            forward: first.route.forward(version),
            translated: None,
            destination: first.destination.clone(),
            fallback_authority: server_name
                .as_deref()
                .and_then(|name| name.parse().ok())
                .unwrap_or_else(|| Authority::from_static("localhost")),
            identity: None,
            protected: Some(self.protected.clone()),
            authz: None,
            session: None,
            local_id,
            client: peer,
            access_log: self.access_log,
            metrics: self.metrics.clone(),
            tunnels: TaskTracker::new(),
            activity: activity.clone(),
            idle_timeout: self.limits.idle_timeout,
            force_close: self.lifecycle.force_close.clone(),
            router: Some(Arc::new(router)),
            hsts: self.hsts.clone(),
        });
        serve_http(
            tls,
            ctx,
            &self.limits,
            activity,
            self.lifecycle.draining.clone(),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_whole_labels() {
        let exact = HostPattern::parse("Shop.Example.com");
        assert!(exact.matches("shop.example.com"));
        assert!(!exact.matches("www.shop.example.com"));
        let wildcard = HostPattern::parse("*.example.com");
        assert!(wildcard.matches("shop.example.com"));
        assert!(!wildcard.matches("example.com"));
        assert!(!wildcard.matches("a.shop.example.com"));
        assert!(!wildcard.matches("shopexample.com"));
        assert!(HostPattern::parse("*").matches("anything.test"));
    }

    fn matchers(routes: &[(&str, &str)]) -> Vec<Matcher> {
        routes
            .iter()
            .map(|(host, prefix)| Matcher {
                host: HostPattern::parse(host),
                prefix: (*prefix).to_string(),
            })
            .collect()
    }

    #[test]
    fn the_first_matching_route_takes_a_request_read_every_way() {
        let routes = matchers(&[
            ("shop.test", "/admin"),
            ("shop.test", "/"),
            ("*.shop.test", "/"),
        ]);
        assert_eq!(pick(&routes, "shop.test", "/admin/users"), Ok(0));
        assert_eq!(pick(&routes, "shop.test", "/administrator"), Ok(1));
        assert_eq!(pick(&routes, "api.shop.test", "/admin"), Ok(2));
        let (status, why) = pick(&routes, "other.test", "/").unwrap_err();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(why, "no route for other.test/");
        // Readings that leave `/echo` for `/admin` (resolved dot segments, an encoded dot,
        // a path parameter) would reach the `/` service's `/admin`: refused.
        for path in [
            "/echo/../admin/users",
            "/echo/%2e%2e/admin",
            "/admin/..;/echo",
        ] {
            let (status, why) = pick(&routes, "shop.test", path).unwrap_err();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {why}");
        }
        // Readings that all stay under one route are fine.
        assert_eq!(pick(&routes, "shop.test", "/admin/./users"), Ok(0));
        assert_eq!(pick(&routes, "shop.test", "/echo/../other"), Ok(1));
        // What no reading can be trusted for is refused outright.
        let (status, why) = pick(&routes, "shop.test", "/admin\\users").unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}");
    }

    #[test]
    fn what_a_client_says_of_where_it_came_from_is_removed_in_every_spelling() {
        let protected = EdgeServer::protected_headers();
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("x-forwarded-for", "203.0.113.9"),
            ("x_forwarded_for", "203.0.113.9"),
            ("x-forwarded-proto", "http"),
            ("x.forwarded.host", "evil.test"),
            ("forwarded", "for=203.0.113.9"),
            ("x-real-ip", "203.0.113.9"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            (
                "x-hush-peer-identity",
                "spiffe://cluster.local/ns/shop/sa/admin",
            ),
            ("x_forwarded_client_cert", "By=spiffe://x"),
            ("X-Forwarded-Prefix", "/evil"),
            ("x_original_url", "/internal"),
            ("True-Client-IP", "203.0.113.9"),
            ("x-b3-sampled", "1"),
            ("x-custom", "kept"),
        ] {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static(value),
            );
        }
        protected.strip(&mut headers);
        let left: Vec<&str> = headers.keys().map(http::HeaderName::as_str).collect();
        assert_eq!(left, ["x-custom"]);
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(under("/", "/anything"));
        assert!(under("/api", "/api"));
        assert!(under("/api", "/api/"));
        assert!(under("/api", "/api/v1"));
        assert!(!under("/api", "/apix"));
        assert!(!under("/api", "/"));
    }
}
