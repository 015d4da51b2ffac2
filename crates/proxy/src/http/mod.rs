//! HTTP forwarding, shared by the inbound and outbound sides.
//!
//! A request arrives on a hyper server connection (HTTP/1.1 or HTTP/2, as detected) and leaves
//! through a pooled hyper client in the same protocol: HTTP/1.1 over keep-alive connections,
//! HTTP/2 multiplexed over one connection per destination. Hop-by-hop headers stop here;
//! upgrades (WebSocket and the like) become a byte tunnel once the far side answers 101.
//!
//! * this module — what a connection's requests share ([`HttpContext`]), where they go
//!   ([`Forward`]) and [`forward`], which hyper's server calls for each request;
//! * [`exchange`] — one request on its way: the hop's headers, the policy, the protocol the
//!   mesh hop speaks, the request itself and an upgrade's tunnel;
//! * [`rewrite`] — what a message loses or gains at the hop: hop-by-hop headers, one host,
//!   the absolute target hyper's client needs;
//! * [`answer`] — the sidecar's own answers, and why forwarding failed in words;
//! * [`finish`] — the end of an exchange: its span and its access line.
//!
//! The connectors the clients dial with live in [`crate::connect`].

mod answer;
mod exchange;
mod finish;
mod rewrite;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, STRICT_TRANSPORT_SECURITY};
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::exchange::{Outcome, exchange};
use self::finish::{Finish, Unanswered};
use crate::config::AccessLog;
use crate::connect::{AppConnector, MeshHttpConnector};
use crate::ending::{self, Watched};
use crate::headers::{IdentityHeaders, ProtectedHeaders, RequestBody};
use crate::io::Activity;
use crate::metrics::{Direction, Metrics, ProtocolLabel};
use crate::policy::{Caller, PolicyEnforcer};
use crate::tls::{MeshConnector, MeshProtocol, Target};
use crate::trace::{self, SessionFacts};

/// Response bodies: what the far side sent, or a short answer of the sidecar's own.
pub(crate) type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Marks an HTTP/1.1 request that crosses the mesh on a multiplexed HTTP/2 connection, so the
/// receiving sidecar hands it to the app as HTTP/1.1 again.
pub(crate) const ORIGINAL_PROTOCOL_HEADER: &str = "hush-orig-proto";

/// The marker's value on an HTTP/2 request whose host is carried in its Host header (the
/// gateway's): the receiving sidecar puts it back as the request's authority.
pub(crate) const CARRIED_HTTP2: &str = "HTTP/2";

/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// HTTP/1.1 or HTTP/2: a connection is forwarded in the protocol it arrived in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HttpVersion {
    Http1,
    Http2,
}

impl HttpVersion {
    pub(crate) fn label(self) -> ProtocolLabel {
        match self {
            Self::Http1 => ProtocolLabel::Http1,
            Self::Http2 => ProtocolLabel::Http2,
        }
    }
}

/// Where a connection's requests are sent.
#[derive(Clone, Debug)]
pub(crate) enum Forward {
    /// The local app, in plaintext.
    App(Client<AppConnector, RequestBody>),
    /// A peer sidecar, with mutual TLS.
    Mesh(Client<MeshHttpConnector, RequestBody>),
}

impl Forward {
    pub(crate) fn app(addr: SocketAddr, version: HttpVersion, connect_timeout: Duration) -> Self {
        Self::App(client(version).build(AppConnector::new(addr, connect_timeout)))
    }

    pub(crate) fn mesh(
        connector: MeshConnector,
        target: Target,
        version: HttpVersion,
        metrics: Metrics,
    ) -> Self {
        let protocol = match version {
            HttpVersion::Http1 => MeshProtocol::Http1,
            HttpVersion::Http2 => MeshProtocol::Http2,
        };
        Self::Mesh(
            client(version).build(MeshHttpConnector::new(connector, target, protocol, metrics)),
        )
    }

    fn request(&self, request: Request<RequestBody>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            Self::App(client) => client.request(request),
            Self::Mesh(client) => client.request(request),
        }
    }
}

fn client(version: HttpVersion) -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // Keep the Host header the client sent (it is only added when missing).
        .set_host(true);
    if version == HttpVersion::Http2 {
        builder.http2_only(true).timer(TokioTimer::new());
    }
    builder
}

/// Everything a connection's requests share.
#[derive(Clone, Debug)]
pub(crate) struct HttpContext {
    pub(crate) direction: Direction,
    pub(crate) version: HttpVersion,
    pub(crate) forward: Forward,
    /// The other protocol's forwarder, for requests that change protocol on the mesh hop.
    /// Outbound: the HTTP/2 forwarder that carries HTTP/1.1 requests to the peer sidecar,
    /// multiplexed. Inbound: the HTTP/1.1 forwarder that hands such requests to the app as the
    /// HTTP/1.1 they were.
    pub(crate) translated: Option<Forward>,
    /// Where requests go, for messages: `the app at 127.0.0.1:8080`.
    pub(crate) destination: Arc<str>,
    /// Authority for HTTP/1.0 requests that carry no Host header.
    pub(crate) fallback_authority: Authority,
    /// Inbound only: the caller's identity, for the app.
    pub(crate) identity: Option<IdentityHeaders>,
    /// Inbound only: the headers no caller may send the app (the identity headers among them).
    pub(crate) protected: Option<Arc<ProtectedHeaders>>,
    /// Inbound only, when a policy is configured: who calls, and the policy that decides.
    pub(crate) authz: Option<Authz>,
    /// Inbound only: what the caller's handshake settled.
    pub(crate) session: Option<SessionFacts>,
    /// This sidecar's SPIFFE ID when the connection arrived.
    pub(crate) local_id: Arc<str>,
    /// Where the connection came from.
    pub(crate) client: SocketAddr,
    pub(crate) access_log: AccessLog,
    pub(crate) metrics: Metrics,
    /// The connection's upgraded tunnels, which outlive their request: the connection is not
    /// done (and keeps its slot) until they are.
    pub(crate) tunnels: TaskTracker,
    /// When the connection last moved a byte: a tunnel is idle by the same measure.
    pub(crate) activity: Arc<Activity>,
    pub(crate) idle_timeout: Duration,
    pub(crate) force_close: CancellationToken,
    /// Gateway only: picks each request's route, and so the context it is forwarded in.
    pub(crate) router: Option<Arc<dyn Router>>,
    /// Gateway only: `Strict-Transport-Security` for every response.
    pub(crate) hsts: Option<HeaderValue>,
}

/// Chooses where a request goes when a connection's requests may go to different places
/// (the gateway's routes): the context it is forwarded in, or why it cannot be forwarded.
pub(crate) trait Router: Send + Sync + std::fmt::Debug {
    /// The context for `request`, derived from its connection's `base`; or the status and the
    /// reason in words to answer with.
    fn route(
        &self,
        base: &HttpContext,
        request: &Request<Incoming>,
    ) -> Result<Arc<HttpContext>, (StatusCode, String)>;
}

/// The policy deciding an inbound connection's requests, and its verified caller.
#[derive(Clone)]
pub(crate) struct Authz {
    pub(crate) policy: Arc<PolicyEnforcer>,
    pub(crate) caller: Caller,
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authz")
            .field("caller", &self.caller)
            .finish()
    }
}

/// Forwards one request and returns the response (or the sidecar's own error answer), in a
/// span of its own that continues the caller's trace. The span and the access line are
/// finished when the response body ends (see [`Finish`]).
pub(crate) async fn forward(
    ctx: Arc<HttpContext>,
    request: Request<Incoming>,
) -> Result<Response<Watched<ProxyBody>>, Infallible> {
    let started = Instant::now();
    let span = trace::request_span(ctx.direction, &request);
    let recording = trace::is_recording(&span);
    if recording {
        span.record("hush.local.spiffe_id", &*ctx.local_id);
        if let Some(session) = &ctx.session {
            session.record(&span);
        }
        if ctx.direction == Direction::Outbound {
            span.record("server.address", ctx.fallback_authority.as_str());
        }
    }
    let routed = ctx
        .router
        .as_ref()
        .map(|router| router.route(&ctx, &request));
    let method = request.method().clone();
    let uri = request.uri().clone();
    let unanswered = Unanswered {
        ctx: &ctx,
        span: &span,
        recording,
        method: &method,
        uri: &uri,
        started,
        armed: true,
    };
    let (ctx, outcome) = match routed {
        None => (ctx.clone(), None),
        Some(Ok(routed)) => {
            if recording {
                span.record("server.address", routed.fallback_authority.as_str());
            }
            (routed, None)
        }
        Some(Err((status, reason))) => {
            ctx.metrics
                .request(ctx.direction, ctx.version.label(), status.as_u16());
            let grpc = rewrite::is_grpc(request.headers());
            let outcome = Outcome {
                response: answer::error_response(status, grpc, &reason),
                judgement: None,
                error: Some(("no_route", reason)),
            };
            (ctx.clone(), Some(outcome))
        }
    };
    let Outcome {
        mut response,
        judgement,
        error,
    } = match outcome {
        Some(outcome) => outcome,
        None => {
            exchange(&ctx, request, &span)
                .instrument(span.clone())
                .await
        }
    };
    if let Some(hsts) = &ctx.hsts {
        response
            .headers_mut()
            .insert(STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    unanswered.answered();
    let head = started.elapsed();
    // Time to the response head: a stream's length says nothing about the mesh's latency.
    ctx.metrics.request_duration(ctx.direction, head);
    if ctx.access_log == AccessLog::Off && !recording {
        return Ok(response.map(Watched::unwatched));
    }
    let finish = Finish {
        status: response.status().as_u16(),
        head_grpc_status: ending::grpc_status(response.headers()),
        // Outbound, the peer is whoever answered on the pooled connection that carried it.
        upstream: response.extensions().get::<SessionFacts>().cloned(),
        ctx,
        span,
        recording,
        started,
        head: Some(head),
        method,
        uri,
        judgement,
        error,
    };
    Ok(response.map(|body| Watched::new(body, move |ended| finish.done(ended))))
}

/// A socket address as an HTTP authority: `127.0.0.1:8080`, `[::1]:80`.
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
}
