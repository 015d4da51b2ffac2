//! The inbound side: mutual TLS 1.3 from other sidecars, plaintext to the local app.
//!
//! Every connection is checked before a byte reaches the app: it must be TLS (plaintext HTTP
//! gets a 400 that says so), TLS 1.3, and present a certificate that chains to the trust
//! bundle, is valid now and carries a SPIFFE ID of the trust domain. Refusals are logged with
//! the failed step and counted by reason. For HTTP, the app then receives the caller's verified
//! identity in `x-hush-peer-identity` and `x-forwarded-client-cert`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use hush_identity::{TrustDomain, check_leaf_svid};
use hush_tls::HandshakeFailure;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{Span, debug, info, warn};

use crate::access::{AccessLine, Exchange};
use crate::bulk::ReadAhead;
use crate::config::{AccessLog, Limits, Protocol};
use crate::detect::{Detected, FirstLine, Prefixed, detect, hold_first_line, sniff};
use crate::headers::{IdentityHeaders, ProtectedHeaders, Scanned};
use crate::http::{Authz, Forward, HttpContext, HttpVersion, authority_of};
use crate::identity::IdentityStatus;
use crate::io::{Activity, Metered, relay_until_idle};
use crate::metrics::{Direction, Metrics, ProtocolLabel};
use crate::orig_dst::{is_local_address, original_destination};
use crate::policy::{Caller, Judgement, PolicyEnforcer};
use crate::serve::{Lifecycle, PerAddress, Throttle, accept_loop, canonical, serve_http};
use crate::tls::{MeshProtocol, Target};
use crate::trace::{self, SessionFacts};

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The answer to plaintext HTTP on the mTLS port: people curl the wrong port, and a closed
/// connection would not tell them why.
const PLAINTEXT_REFUSAL: &str = "hush: this port only accepts mutual TLS 1.3 from other hush \
    sidecars. Send plaintext to your own sidecar's outbound listener instead.\n";

pub(crate) struct Inbound {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) app: SocketAddr,
    pub(crate) protocol: Protocol,
    pub(crate) limits: Limits,
    pub(crate) metrics: Metrics,
    pub(crate) status: watch::Receiver<IdentityStatus>,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) app_http1: Forward,
    pub(crate) app_http2: Forward,
    pub(crate) policy: Option<Arc<PolicyEnforcer>>,
    /// The mesh's trust domain: a peer of another (a federated one) is let in only by a policy
    /// that names it, so without a policy it is refused.
    pub(crate) trust_domain: TrustDomain,
    /// Connections arrive redirected by iptables; see [`Self::app_for`].
    pub(crate) captured: bool,
    /// Forwarders to each app port captured connections were meant for.
    pub(crate) captured_apps: Mutex<HashMap<SocketAddr, (Forward, Forward)>>,
    /// The ports the sidecar itself listens on: a captured connection is never forwarded to
    /// one of them.
    pub(crate) own_ports: Vec<u16>,
    /// Headers no caller may send the app.
    pub(crate) protected: Arc<ProtectedHeaders>,
    /// Handshakes in progress per client address.
    pub(crate) handshakes: Arc<PerAddress>,
    /// Refusals of captured connections before their handshake.
    pub(crate) refusals_log: Throttle,
    pub(crate) access_log: AccessLog,
}

/// The most app ports a captured inbound listener keeps forwarders for; more are served with
/// forwarders made for the connection (a pod listens on a handful of ports).
const MAX_CAPTURED_APPS: usize = 256;

/// How a connection's bytes are treated, decided before any reach the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Served by hyper in this version: every request is parsed, its identity headers are
    /// the sidecar's own.
    Http(HttpVersion),
    /// Detection by the first bytes (a client that announced nothing).
    Detect,
    /// Relayed as opaque TCP, with the client's first line held back until it is known not to
    /// be an HTTP request. `switch`: such a request is then served as HTTP (a port that may
    /// carry HTTP), rather than refused (a port declared `tcp`).
    Opaque { switch: bool },
}

impl Plan {
    /// What the peer announced with ALPN is only a hint: a peer holding a valid certificate can
    /// announce anything, so announcing opaque TCP never skips the HTTP handling, and a port
    /// declared `http1` or `http2` is never relayed as TCP.
    fn of(announced: Option<MeshProtocol>, configured: Protocol) -> Self {
        match (announced, configured) {
            (Some(MeshProtocol::Http1), _) => Self::Http(HttpVersion::Http1),
            (Some(MeshProtocol::Http2), _) => Self::Http(HttpVersion::Http2),
            (_, Protocol::Http1) => Self::Http(HttpVersion::Http1),
            (_, Protocol::Http2) => Self::Http(HttpVersion::Http2),
            (Some(MeshProtocol::Tcp), Protocol::Detect) => Self::Opaque { switch: true },
            (None, Protocol::Detect) => Self::Detect,
            (_, Protocol::Tcp) => Self::Opaque { switch: false },
        }
    }
}

/// Why a captured connection was not forwarded, for the log and the metric.
#[derive(Debug)]
struct NotForwarded {
    reason: &'static str,
    words: String,
}

impl Inbound {
    pub(crate) async fn run(self: Arc<Self>, listener: TcpListener) {
        let lifecycle = self.lifecycle.clone();
        let metrics = self.metrics.clone();
        let refused = move || metrics.connection_refused(Direction::Inbound, "max_connections");
        accept_loop("inbound", listener, lifecycle, refused, move |tcp, peer| {
            let this = self.clone();
            async move {
                this.handle(tcp, peer).await;
            }
        })
        .await;
    }

    /// Where a connection's bytes go: the configured app, or for a connection iptables
    /// redirected here, the port the caller dialled, at the address it dialled.
    ///
    /// Never on loopback: services a pod binds to `127.0.0.1` only (debug ports, local
    /// databases, this sidecar's own admin and outbound listeners) are not for the mesh. The
    /// sidecar dials the pod's own address instead, as the caller did, and never one of its own
    /// ports. A connection made to the inbound port itself (not redirected) goes to the
    /// configured app, at the address it arrived on if `app` names loopback.
    fn app_for(&self, tcp: &TcpStream) -> Result<SocketAddr, NotForwarded> {
        if !self.captured {
            return Ok(self.app);
        }
        let Ok(local) = tcp.local_addr().map(canonical) else {
            return Ok(self.app);
        };
        let direct = || {
            if self.app.ip().is_loopback() {
                SocketAddr::new(local.ip(), self.app.port())
            } else {
                self.app
            }
        };
        let dst = match original_destination(tcp).map(canonical) {
            Ok(dst) if dst.port() != local.port() => dst,
            // Not redirected: dialled at the inbound port itself.
            _ => return Ok(direct()),
        };
        if self.own_ports.contains(&dst.port()) {
            return Err(NotForwarded {
                reason: "own_port",
                words: format!(
                    "the caller dialled {dst}, one of the sidecar's own ports, which are not \
                     served to the mesh"
                ),
            });
        }
        if !is_pod_address(dst.ip(), local.ip()) {
            return Err(NotForwarded {
                reason: "not_local",
                words: format!(
                    "the caller dialled {dst}, which is not an address of this pod; the sidecar \
                     only forwards to its own pod"
                ),
            });
        }
        Ok(dst)
    }

    fn forwarders(&self, app: SocketAddr) -> (Forward, Forward) {
        if app == self.app {
            return (self.app_http1.clone(), self.app_http2.clone());
        }
        let timeout = self.limits.connect_timeout;
        let make = || {
            (
                Forward::app(app, HttpVersion::Http1, timeout),
                Forward::app(app, HttpVersion::Http2, timeout),
            )
        };
        let mut apps = self
            .captured_apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = apps.get(&app) {
            return found.clone();
        }
        let made = make();
        if apps.len() < MAX_CAPTURED_APPS {
            apps.insert(app, made.clone());
        }
        made
    }

    /// Serves one connection, writing what happens into its span. The span is not entered
    /// around the connection: that would cost two registry lookups per layer on every poll of
    /// a long-lived connection, and its requests have spans of their own.
    async fn handle(&self, tcp: TcpStream, peer: SocketAddr) {
        let span = trace::connection_span(Direction::Inbound, peer);
        self.serve_connection(tcp, peer, &span).await;
    }

    async fn serve_connection(&self, tcp: TcpStream, peer: SocketAddr, span: &Span) {
        let started = Instant::now();
        let _open = self.metrics.open_connection(Direction::Inbound);
        // Until its handshake is done, a connection holds one of its address's slots.
        let Some(handshaking) = self.handshakes.take(peer.ip()) else {
            self.metrics
                .connection_refused(Direction::Inbound, "handshakes_per_address");
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
        // One deadline for the first byte and the handshake that follows it.
        let handshake_deadline = Instant::now() + self.limits.handshake_timeout;
        let Some(tcp) = Box::pin(self.starts_with_tls(tcp, peer, span, handshake_deadline)).await
        else {
            return;
        };
        let app = match self.app_for(&tcp) {
            Ok(app) => app,
            Err(refusal) => {
                self.metrics
                    .connection_refused(Direction::Inbound, refusal.reason);
                // Before any handshake: anyone can send these, so they are logged sparingly.
                if self.refusals_log.allows() {
                    warn!(%peer, "refused a captured connection: {} (such refusals are logged once every 10 s)", refusal.words);
                }
                trace::record_error(span, refusal.reason, &refusal.words);
                return;
            }
        };
        let activity = Activity::new();
        let metered = Metered::new(
            tcp,
            self.metrics.bytes(Direction::Inbound),
            activity.clone(),
        );
        let handshake_started = Instant::now();
        // Boxed, here and below: a task's future is as large as its largest state, and the
        // task keeps that size for as long as the connection lives. Boxing each phase keeps
        // an idle connection's task small, and the handshake's memory is freed when it ends.
        let handshake = tokio::time::timeout_at(
            handshake_deadline,
            Box::pin(self.acceptor.accept(ReadAhead::new(metered))),
        )
        .await;
        drop(handshaking);
        let mut tls = match handshake {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(e)) => return self.refused(peer, span, &HandshakeFailure::from_io(&e)),
            Err(_) => {
                return self.refused(
                    peer,
                    span,
                    &HandshakeFailure::timed_out(self.limits.handshake_timeout),
                );
            }
        };
        self.metrics
            .handshake(Direction::Inbound, handshake_started.elapsed());

        let (_, session) = tls.get_ref();
        // The verifier has checked the chain, the validity and the SPIFFE ID already.
        let Some(leaf) = session.peer_certificates().and_then(|c| c.first()).cloned() else {
            return self.refused(
                peer,
                span,
                &HandshakeFailure::from_tls(&hush_tls::rustls::Error::NoCertificatesPresented),
            );
        };
        let peer_id = match check_leaf_svid(&leaf) {
            Ok(id) => id,
            Err(e) => {
                warn!(%peer, error = %e, "a verified peer certificate has no SPIFFE ID");
                return;
            }
        };
        // A caller of a federated trust domain is let in only by a policy rule naming it: never
        // without a policy, nor while the sidecar's own identity (which the policy is narrowed
        // to, and which says what is foreign) is not known yet.
        let own_known = self.status.borrow().svid.is_some();
        if !peer_id.is_member_of(&self.trust_domain) && (self.policy.is_none() || !own_known) {
            self.metrics.foreign_refused();
            // A valid certificate of a partner's can be presented over and over: logged
            // sparingly.
            if self.refusals_log.allows() {
                let why = if self.policy.is_none() {
                    "this sidecar has no policy"
                } else {
                    "this sidecar does not know its own identity yet"
                };
                info!(
                    %peer,
                    %peer_id,
                    "refused a caller of trust domain {}: a caller of a federated trust domain \
                     is let in only by a policy rule naming it, and {why} (such refusals are \
                     logged once every 10 s)",
                    peer_id.trust_domain()
                );
            }
            return;
        }
        let announced = MeshProtocol::from_alpn(session.alpn_protocol());
        debug!(%peer, peer_id = %peer_id, ?announced, "inbound mTLS connection");
        let facts = SessionFacts::of(session, Arc::from(peer_id.as_str()));
        facts.record(span);
        let own_id: Arc<str> = self
            .status
            .borrow()
            .svid
            .as_ref()
            .map(|svid| Arc::from(svid.spiffe_id.as_str()))
            .unwrap_or_else(|| Arc::from(""));
        span.record("hush.local.spiffe_id", &*own_id);
        let authz = self.policy.as_ref().map(|policy| Authz {
            policy: policy.clone(),
            caller: Caller {
                peer: Arc::from(peer_id.as_str()),
                own: own_id.clone(),
                addr: peer,
                port: app.port(),
            },
        });
        let connection = Connection {
            peer,
            app,
            span,
            started,
            activity,
            facts,
            own_id,
            leaf,
            authz,
        };

        let plan = Plan::of(announced, self.protocol);
        let (version, prefix) = match plan {
            Plan::Http(version) => (version, BytesMut::new()),
            Plan::Detect => match sniff(&mut tls, self.limits.detect_timeout).await {
                Ok(sniffed) => {
                    if sniffed.timed_out {
                        self.metrics.detect_timeout(Direction::Inbound);
                    }
                    match sniffed.protocol {
                        Detected::Http1 => (HttpVersion::Http1, sniffed.prefix),
                        Detected::Http2 => (HttpVersion::Http2, sniffed.prefix),
                        // Its first line is not HTTP: nothing after it can be a request an
                        // HTTP/1 server reads.
                        Detected::Tcp if !sniffed.timed_out => {
                            let io = Prefixed::new(sniffed.prefix, tls);
                            return Box::pin(self.serve_tcp(io, connection, Held::Decided)).await;
                        }
                        // Silent so far: a server-first protocol, or an HTTP client that
                        // connected early. Its first line is held back when it comes.
                        Detected::Tcp | Detected::NeedMore => {
                            let io = Prefixed::new(sniffed.prefix, tls);
                            let held = Held::Undecided { switch: true };
                            return Box::pin(self.serve_tcp(io, connection, held)).await;
                        }
                    }
                }
                Err(e) => {
                    debug!(%peer, error = %e, "connection failed before its first bytes");
                    return;
                }
            },
            Plan::Opaque { switch } => {
                let io = Prefixed::new(BytesMut::new(), tls);
                let held = Held::Undecided { switch };
                return Box::pin(self.serve_tcp(io, connection, held)).await;
            }
        };
        Box::pin(self.serve_http(Prefixed::new(prefix, tls), version, connection)).await;
    }

    /// Serves the connection's requests with hyper: each reaches the app with the sidecar's
    /// identity headers and no one else's.
    async fn serve_http<I>(&self, io: I, version: HttpVersion, connection: Connection<'_>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            peer,
            app,
            span,
            activity,
            facts,
            own_id,
            leaf,
            authz,
            ..
        } = connection;
        span.record("network.protocol.name", "http");
        self.metrics.connection(Direction::Inbound, version.label());
        let (app_http1, app_http2) = self.forwarders(app);
        let ctx = Arc::new(HttpContext {
            direction: Direction::Inbound,
            version,
            forward: match version {
                HttpVersion::Http1 => app_http1.clone(),
                HttpVersion::Http2 => app_http2,
            },
            translated: (version == HttpVersion::Http2).then_some(app_http1),
            destination: format!("the app at {app}").into(),
            fallback_authority: authority_of(app),
            identity: IdentityHeaders::new(facts.peer_id.as_ref(), &own_id, &leaf),
            protected: Some(self.protected.clone()),
            authz,
            session: Some(facts),
            local_id: own_id,
            client: peer,
            access_log: self.access_log,
            metrics: self.metrics.clone(),
            tunnels: TaskTracker::new(),
            activity: activity.clone(),
            idle_timeout: self.limits.idle_timeout,
            force_close: self.lifecycle.force_close.clone(),
            router: None,
            hsts: None,
        });
        serve_http(
            io,
            ctx,
            &self.limits,
            activity,
            self.lifecycle.draining.clone(),
        )
        .await;
    }

    /// Serves a connection as opaque TCP, decided by policy once, before a byte reaches the
    /// app. Unless its first line is already known not to be HTTP (`held`), what the client
    /// sends is held back until it is: an HTTP request is then served as HTTP where the port
    /// allows, and refused where it does not.
    async fn serve_tcp<I>(&self, mut io: I, connection: Connection<'_>, held: Held)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let peer = connection.peer;
        // A TCP connection is decided once, before a byte reaches the app.
        let judgement = connection
            .authz
            .as_ref()
            .map(|authz| authz.policy.check_connection(&authz.caller));
        let denied = judgement.as_ref().is_some_and(|j| !j.allowed);
        let (bytes, error) = match held {
            Held::Undecided { switch: true } if denied => {
                // Nothing of the app's reaches a denied caller, not even a server-first
                // greeting. What it sends first decides: an HTTP client (one slow to start
                // included: it is given as long as a request head is) gets its requests
                // judged one by one, anything else is refused.
                if let Ok(sniffed) = sniff(&mut io, self.limits.header_timeout).await
                    && let Some(version) = http_version(sniffed.protocol)
                {
                    let io = Prefixed::new(sniffed.prefix, io);
                    return self.serve_http(io, version, connection).await;
                }
                let _ = io.shutdown().await;
                (None, None)
            }
            _ if denied => {
                let _ = io.shutdown().await;
                (None, None)
            }
            held => {
                let mut app = match self.connect_app(connection.app, peer).await {
                    Ok(app) => app,
                    Err(error) => {
                        let error = ("connect", error.as_str());
                        return self.tcp_line(&connection, judgement.as_ref(), None, Some(error));
                    }
                };
                let prefix = match held {
                    Held::Decided => BytesMut::new(),
                    Held::Undecided { switch, .. } => {
                        let idle = self.limits.idle_timeout;
                        let line = self.limits.header_timeout;
                        match hold_first_line(&mut io, &mut app, line, idle).await {
                            FirstLine::Opaque(prefix) => prefix,
                            FirstLine::Http(prefix, detected) if switch => {
                                drop(app);
                                let version = http_version(detected).unwrap_or(HttpVersion::Http1);
                                let io = Prefixed::new(prefix, io);
                                return self.serve_http(io, version, connection).await;
                            }
                            FirstLine::Http(..) | FirstLine::HttpAfterApp => {
                                let words = if switch {
                                    "the caller sent an HTTP request after the app had spoken \
                                     first; a connection relayed as opaque TCP never carries an \
                                     HTTP request to the app"
                                } else {
                                    "the caller sent an HTTP request to a port declared `tcp`; \
                                     hush relays only non-HTTP bytes there (declare the port \
                                     `detect` or `http1` to serve HTTP)"
                                };
                                let refusal = ("http_on_opaque", words);
                                return self
                                    .refuse_relay(io, &connection, judgement, refusal)
                                    .await;
                            }
                            FirstLine::TooSlow => {
                                let words = "the caller's first line was still not known to be \
                                             other than an HTTP request limits.header_timeout \
                                             after its first byte";
                                let refusal = ("slow_first_line", words);
                                return self
                                    .refuse_relay(io, &connection, judgement, refusal)
                                    .await;
                            }
                            FirstLine::Silent => {
                                // An idle connection, not an attack: closed without a word.
                                self.metrics
                                    .connection_refused(Direction::Inbound, "silent");
                                debug!(%peer, "closed a relayed connection on which nobody spoke");
                                return;
                            }
                            FirstLine::Gone => return,
                        }
                    }
                };
                // Whatever a lenient parser takes for a request, no line naming a protected
                // header crosses the relay.
                let scanner = Some(self.protected.scanner());
                let mut io = Scanned::new(Prefixed::new(prefix, io), scanner);
                let bytes = relay_until_idle(
                    &mut io,
                    &mut app,
                    &connection.activity,
                    self.limits.idle_timeout,
                    peer,
                )
                .await;
                if io.tripped() {
                    let words = "the caller sent a line naming an identity header on a \
                                 connection relayed as opaque TCP; only the sidecar tells the \
                                 app who is calling";
                    self.metrics
                        .connection_refused(Direction::Inbound, "forged_header");
                    warn!(%peer, "refused an inbound connection: {words}");
                    let error = ("forged_header", words);
                    return self.tcp_line(
                        &connection,
                        judgement.as_ref(),
                        Some(bytes),
                        Some(error),
                    );
                }
                (Some(bytes), None)
            }
        };
        self.tcp_line(&connection, judgement.as_ref(), bytes, error);
    }

    /// Refuses a connection whose first line cannot be relayed: `refusal` is the metric's
    /// reason and the words for the log, the span and the access line.
    async fn refuse_relay<I>(
        &self,
        mut io: I,
        connection: &Connection<'_>,
        judgement: Option<Judgement>,
        (reason, words): (&'static str, &str),
    ) where
        I: tokio::io::AsyncWrite + Unpin,
    {
        self.metrics.connection_refused(Direction::Inbound, reason);
        // The caller holds a valid identity: its refusals may be logged one by one.
        warn!(peer = %connection.peer, "refused an inbound connection: {words}");
        let _ = io.shutdown().await;
        self.tcp_line(connection, judgement.as_ref(), None, Some((reason, words)));
    }

    /// Counts, traces and logs a connection served as TCP.
    fn tcp_line(
        &self,
        connection: &Connection<'_>,
        judgement: Option<&Judgement>,
        bytes: Option<(u64, u64)>,
        error: Option<(&str, &str)>,
    ) {
        let span = connection.span;
        self.metrics
            .connection(Direction::Inbound, ProtocolLabel::Tcp);
        span.record("network.protocol.name", "tcp");
        if let Some(judgement) = judgement {
            span.record("hush.policy.decision", judgement.verdict());
            if let Some(policy) = &judgement.policy {
                span.record("hush.policy.name", &**policy);
            }
            if !judgement.allowed {
                trace::record_error(span, "policy_denied", &judgement.refusal());
            }
        }
        if let Some(bytes) = bytes {
            trace::record_bytes(span, bytes);
        }
        if let Some((kind, words)) = error {
            trace::record_error(span, kind, &words);
        }
        let line = AccessLine {
            direction: Direction::Inbound,
            client: connection.peer,
            local_id: &connection.own_id,
            peer_id: Some(&connection.facts.peer_id),
            exchange: Exchange::Tcp { bytes },
            judgement,
            error: error.map(|(_, words)| words),
            duration: connection.started.elapsed(),
        };
        span.in_scope(|| line.write(self.access_log));
    }

    /// Dials the app for a TCP connection; why it failed, in words, otherwise.
    async fn connect_app(
        &self,
        app_addr: SocketAddr,
        peer: SocketAddr,
    ) -> Result<TcpStream, String> {
        match Target::Addr(app_addr)
            .connect(self.limits.connect_timeout)
            .await
        {
            Ok(app) => Ok(app),
            Err(e) => {
                self.metrics.connect_failure(Direction::Inbound, "app");
                let error = format!("cannot connect to the app at {app_addr}: {e}");
                warn!(%peer, "{error}; closing the connection");
                Err(error)
            }
        }
    }

    /// Looks at the first byte without consuming it. Anything but a TLS handshake is refused
    /// here, plaintext HTTP with an answer that explains.
    async fn starts_with_tls(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        span: &Span,
        deadline: Instant,
    ) -> Option<TcpStream> {
        let mut first = [0u8; 16];
        let peeked = tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await;
        let n = match peeked {
            Ok(Ok(0)) => return None,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "connection failed before its first byte");
                return None;
            }
            Err(_) => {
                self.refused(
                    peer,
                    span,
                    &HandshakeFailure::timed_out(self.limits.handshake_timeout),
                );
                return None;
            }
        };
        if first[0] == TLS_HANDSHAKE_RECORD {
            return Some(tcp);
        }
        let looks_like_http = first[0].is_ascii_uppercase() && detect(&first[..n]) != Detected::Tcp;
        let (reason, what) = if looks_like_http {
            (
                "plaintext_http",
                "the peer sent plaintext HTTP to the mutual TLS port",
            )
        } else {
            (
                "not_tls",
                "the peer did not speak TLS (its first bytes are not a TLS handshake)",
            )
        };
        self.metrics.hello_refused(Direction::Inbound, reason);
        info!(%peer, "refused an inbound connection: hello failed: {what}");
        span.record("hush.handshake.step", "hello");
        trace::record_error(span, reason, &what);
        if looks_like_http {
            answer_plaintext_http(tcp).await;
        }
        None
    }

    fn refused(&self, peer: SocketAddr, span: &Span, failure: &HandshakeFailure) {
        self.metrics.handshake_failure(Direction::Inbound, failure);
        trace::record_handshake_failure(span, failure);
        // Connections closed half-way are routine (health checks, scanners); refusals of a
        // certificate or of a TLS version are what operators need to see.
        if failure.step == hush_tls::HandshakeStep::Connection {
            debug!(%peer, "inbound connection failed: {failure}");
        } else {
            info!(%peer, "refused an inbound connection: {failure}");
        }
    }
}

/// What an accepted, authenticated connection carries into the way it is served.
struct Connection<'a> {
    peer: SocketAddr,
    /// Where its bytes go.
    app: SocketAddr,
    span: &'a Span,
    started: Instant,
    activity: Arc<Activity>,
    facts: SessionFacts,
    own_id: Arc<str>,
    /// The caller's certificate, for the XFCC hash.
    leaf: CertificateDer<'static>,
    authz: Option<Authz>,
}

/// Whether the client's first line still has to be looked at before its bytes reach the app.
#[derive(Clone, Copy, Debug)]
enum Held {
    /// Detection has seen it, and it is not HTTP.
    Decided,
    /// Not seen yet. `switch`: an HTTP request may still be served as HTTP.
    Undecided { switch: bool },
}

fn http_version(detected: Detected) -> Option<HttpVersion> {
    match detected {
        Detected::Http1 => Some(HttpVersion::Http1),
        Detected::Http2 => Some(HttpVersion::Http2),
        Detected::Tcp | Detected::NeedMore => None,
    }
}

/// Whether a captured connection may be forwarded to `ip`, given that it arrived on `local`:
/// an address of the pod, never loopback (an IPv4-mapped one included, which `canonical`
/// has turned into IPv4), the unspecified address (which connects to loopback), multicast or
/// broadcast. A packet can carry such a destination only if someone crafted it; the kernel
/// would have redirected it all the same.
fn is_pod_address(ip: IpAddr, local: IpAddr) -> bool {
    let special = ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    !special && (ip == local || is_local_address(ip))
}

/// Reads the request head (bounded in size and time) so that closing does not reset the
/// connection before the client has read the answer, then answers 400.
async fn answer_plaintext_http(mut tcp: TcpStream) {
    let read_head = async {
        let mut head = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read_head).await;
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\nx-hush-error: 1\r\n\r\n{PLAINTEXT_REFUSAL}",
        PLAINTEXT_REFUSAL.len()
    );
    let _ = tcp.write_all(response.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per destination a captured connection might name: only the pod's own
    /// addresses (here 10.0.0.5 and whatever this host has) are forwarded to.
    #[test]
    fn captured_connections_go_to_the_pods_own_addresses_only() {
        let pod: IpAddr = "10.0.0.5".parse().unwrap();
        let canonical_ip = |text: &str| text.parse::<IpAddr>().unwrap().to_canonical();
        for (destination, forwarded) in [
            ("10.0.0.5", true),
            ("127.0.0.1", false),
            ("127.0.0.2", false),
            ("::1", false),
            ("::ffff:127.0.0.1", false),
            ("0.0.0.0", false),
            ("::", false),
            ("::ffff:0.0.0.0", false),
            ("224.0.0.1", false),
            ("255.255.255.255", false),
            ("ff02::1", false),
            ("10.255.255.254", false),
        ] {
            assert_eq!(
                is_pod_address(canonical_ip(destination), pod),
                forwarded,
                "{destination}"
            );
        }
    }

    #[test]
    fn the_plaintext_answer_says_what_to_do() {
        assert!(PLAINTEXT_REFUSAL.contains("mutual TLS"));
        assert!(PLAINTEXT_REFUSAL.contains("outbound listener"));
    }
}
