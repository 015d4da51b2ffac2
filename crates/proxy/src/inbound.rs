//! The inbound side: mutual TLS 1.3 from other sidecars, plaintext to the local app.
//!
//! Every connection is checked before a byte reaches the app: it must be TLS (plaintext HTTP
//! gets a 400 that says so), TLS 1.3, and present a certificate that chains to the trust
//! bundle, is valid now and carries a SPIFFE ID of the trust domain. Refusals are logged with
//! the failed step and counted by reason. For HTTP, the app then receives the caller's verified
//! identity in `x-hush-peer-identity` and `x-forwarded-client-cert`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use http::uri::Authority;
use hush_identity::check_leaf_svid;
use hush_tls::HandshakeFailure;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{Span, debug, info, warn};

use crate::access::{AccessLine, Exchange};
use crate::config::{AccessLog, Limits, Protocol};
use crate::detect::{Detected, Prefixed, detect, sniff};
use crate::http::{Authz, Forward, HttpContext, HttpVersion, IdentityHeaders};
use crate::identity::IdentityStatus;
use crate::io::{Activity, Metered, relay_until_idle};
use crate::metrics::{Direction, Metrics, ProtocolLabel};
use crate::orig_dst::original_destination;
use crate::policy::{Caller, Judgement, PolicyEnforcer};
use crate::serve::{Lifecycle, accept_loop, serve_http};
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
    /// Connections arrive redirected by iptables; see [`Self::app_for`].
    pub(crate) captured: bool,
    /// Forwarders to each app port captured connections were meant for.
    pub(crate) captured_apps: Mutex<HashMap<SocketAddr, (Forward, Forward)>>,
    pub(crate) access_log: AccessLog,
}

/// The most app ports a captured inbound listener keeps forwarders for; more are served with
/// forwarders made for the connection (a pod listens on a handful of ports).
const MAX_CAPTURED_APPS: usize = 256;

impl Inbound {
    pub(crate) async fn run(self: Arc<Self>, listener: TcpListener) {
        let limits = self.limits.clone();
        let lifecycle = self.lifecycle.clone();
        accept_loop("inbound", listener, &limits, lifecycle, move |tcp, peer| {
            let this = self.clone();
            async move {
                this.handle(tcp, peer).await;
            }
        })
        .await;
    }

    /// Where a connection's bytes go: the configured app, or for a connection iptables
    /// redirected here, the port the caller dialled on `127.0.0.1`.
    fn app_for(&self, tcp: &TcpStream) -> SocketAddr {
        if !self.captured {
            return self.app;
        }
        let local = tcp.local_addr().ok();
        match original_destination(tcp) {
            // Dialling the inbound port itself is not a redirection, and forwarding it to
            // that port on loopback would loop back here.
            Ok(dst) if Some(dst) != local && Some(dst.port()) != local.map(|l| l.port()) => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), dst.port())
            }
            _ => self.app,
        }
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
        let Some(tcp) = self.starts_with_tls(tcp, peer, span).await else {
            return;
        };
        let app = self.app_for(&tcp);
        let activity = Activity::new();
        let metered = Metered::new(
            tcp,
            self.metrics.bytes(Direction::Inbound),
            activity.clone(),
        );
        let handshake_started = Instant::now();
        let handshake =
            tokio::time::timeout(self.limits.handshake_timeout, self.acceptor.accept(metered))
                .await;
        let mut tls = match handshake {
            Ok(Ok(tls)) => tls,
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
        let announced = MeshProtocol::from_alpn(session.alpn_protocol());
        debug!(%peer, peer_id = %peer_id, ?announced, "inbound mTLS connection");
        let facts = SessionFacts::of(session, Arc::from(peer_id.as_str()));
        facts.record(span);

        // A hush sidecar announces what it sends; the configured protocol is for clients that
        // do not.
        let (protocol, prefix) = match (announced, self.protocol) {
            (Some(MeshProtocol::Http1), _) | (None, Protocol::Http1) => {
                (Detected::Http1, BytesMut::new())
            }
            (Some(MeshProtocol::Http2), _) | (None, Protocol::Http2) => {
                (Detected::Http2, BytesMut::new())
            }
            (Some(MeshProtocol::Tcp), _) | (None, Protocol::Tcp) => {
                (Detected::Tcp, BytesMut::new())
            }
            (None, Protocol::Detect) => match sniff(&mut tls, self.limits.detect_timeout).await {
                Ok(sniffed) => {
                    if sniffed.timed_out {
                        self.metrics.detect_timeout(Direction::Inbound);
                    }
                    (sniffed.protocol, sniffed.prefix)
                }
                Err(e) => {
                    debug!(%peer, error = %e, "connection failed before its first bytes");
                    return;
                }
            },
        };
        let mut io = Prefixed::new(prefix, tls);
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

        let version = match protocol {
            Detected::Http1 => HttpVersion::Http1,
            Detected::Http2 => HttpVersion::Http2,
            Detected::Tcp | Detected::NeedMore => {
                self.metrics
                    .connection(Direction::Inbound, ProtocolLabel::Tcp);
                span.record("network.protocol.name", "tcp");
                // A TCP connection is decided once, before a byte reaches the app.
                let judgement = authz
                    .as_ref()
                    .map(|authz| authz.policy.check_connection(&authz.caller));
                if let Some(judgement) = &judgement {
                    span.record("hush.policy.decision", judgement.verdict());
                    if let Some(policy) = &judgement.policy {
                        span.record("hush.policy.name", &**policy);
                    }
                }
                let (bytes, error) = if judgement.as_ref().is_none_or(|j| j.allowed) {
                    self.relay_to_app(io, app, peer, activity, span).await
                } else {
                    trace::record_error(
                        span,
                        "policy_denied",
                        &judgement.as_ref().map_or("denied", Judgement::refusal),
                    );
                    let _ = io.shutdown().await;
                    (None, None)
                };
                if let Some(bytes) = bytes {
                    trace::record_bytes(span, bytes);
                }
                let line = AccessLine {
                    direction: Direction::Inbound,
                    client: peer,
                    local_id: &own_id,
                    peer_id: Some(&facts.peer_id),
                    exchange: Exchange::Tcp { bytes },
                    judgement: judgement.as_ref(),
                    error: error.as_deref(),
                    duration: started.elapsed(),
                };
                span.in_scope(|| line.write(self.access_log));
                return;
            }
        };
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
            identity: IdentityHeaders::new(peer_id.as_str(), &own_id, &leaf),
            authz,
            session: Some(facts),
            local_id: own_id,
            client: peer,
            access_log: self.access_log,
            metrics: self.metrics.clone(),
            tracker: self.lifecycle.tracker.clone(),
            force_close: self.lifecycle.force_close.clone(),
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

    /// Relays a TCP connection to the app; returns the bytes moved each way, or why the app
    /// could not be reached.
    async fn relay_to_app<I>(
        &self,
        mut io: I,
        app_addr: SocketAddr,
        peer: SocketAddr,
        activity: Arc<Activity>,
        span: &Span,
    ) -> (Option<(u64, u64)>, Option<String>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut app = match Target::Addr(app_addr)
            .connect(self.limits.connect_timeout)
            .await
        {
            Ok(app) => app,
            Err(e) => {
                self.metrics.connect_failure(Direction::Inbound, "app");
                let error = format!("cannot connect to the app at {app_addr}: {e}");
                warn!(%peer, "{error}; closing the connection");
                trace::record_error(span, "connect", &error);
                return (None, Some(error));
            }
        };
        let bytes =
            relay_until_idle(&mut io, &mut app, &activity, self.limits.idle_timeout, peer).await;
        (Some(bytes), None)
    }

    /// Looks at the first byte without consuming it. Anything but a TLS handshake is refused
    /// here, plaintext HTTP with an answer that explains.
    async fn starts_with_tls(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        span: &Span,
    ) -> Option<TcpStream> {
        let mut first = [0u8; 16];
        let peeked =
            tokio::time::timeout(self.limits.handshake_timeout, tcp.peek(&mut first)).await;
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

pub(crate) fn authority_of(addr: SocketAddr) -> Authority {
    addr.to_string()
        .parse()
        .unwrap_or_else(|_| Authority::from_static("localhost"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_are_authorities() {
        assert_eq!(
            authority_of("127.0.0.1:8080".parse().unwrap()).as_str(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            authority_of("[::1]:80".parse().unwrap()).as_str(),
            "[::1]:80"
        );
    }

    #[test]
    fn the_plaintext_answer_says_what_to_do() {
        assert!(PLAINTEXT_REFUSAL.contains("mutual TLS"));
        assert!(PLAINTEXT_REFUSAL.contains("outbound listener"));
    }
}
