//! HTTP forwarding, shared by the inbound and outbound sides.
//!
//! A request arrives on a hyper server connection (HTTP/1.1 or HTTP/2, as detected) and leaves
//! through a pooled hyper client in the same protocol: HTTP/1.1 over keep-alive connections,
//! HTTP/2 multiplexed over one connection per destination. Hop-by-hop headers stop here;
//! upgrades (WebSocket and the like) become a byte tunnel once the far side answers 101.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hush_identity::check_leaf_svid;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, warn};

use crate::access::{AccessLine, Exchange, grpc_code_name};
use crate::config::AccessLog;
use crate::ending::{self, Ended, Ending, Watched};
use crate::headers::{IdentityHeaders, ProtectedHeaders, RequestBody};
use crate::io::Activity;
use crate::metrics::{Direction, Metrics, ProtocolLabel};
use crate::policy::{Caller, Judgement, PolicyEnforcer};
use crate::tls::{DialError, MeshConnector, MeshProtocol, Target};
use crate::trace::{self, SessionFacts};

/// Response bodies: what the far side sent, or a short answer of the sidecar's own.
pub(crate) type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Marks an HTTP/1.1 request that crosses the mesh on a multiplexed HTTP/2 connection, so the
/// receiving sidecar hands it to the app as HTTP/1.1 again.
pub(crate) const ORIGINAL_PROTOCOL_HEADER: &str = "hush-orig-proto";

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
        Self::App(client(version).build(AppConnector {
            addr,
            connect_timeout,
        }))
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
        Self::Mesh(client(version).build(MeshHttpConnector {
            inner: Arc::new(MeshHttpInner {
                connector,
                target,
                protocol,
                metrics,
            }),
        }))
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
    let Outcome {
        response,
        judgement,
        error,
    } = exchange(&ctx, request, &span)
        .instrument(span.clone())
        .await;
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

/// Why an exchange ended early when the sidecar closed it itself.
const CUT_OFF_AT_SHUTDOWN: &str =
    "the sidecar closed the connection: its shutdown grace period ran out first";

/// Finishes a request whose caller left before the response head: hyper drops the request's
/// future then (an HTTP/2 reset, a closed connection), and nothing after the `await` runs. It
/// is an abandoned exchange without a head; [`Finish`] tells it like any other.
struct Unanswered<'a> {
    ctx: &'a Arc<HttpContext>,
    span: &'a Span,
    recording: bool,
    method: &'a http::Method,
    uri: &'a Uri,
    started: Instant,
    armed: bool,
}

impl Unanswered<'_> {
    /// The response head is here; the body's end finishes the line.
    fn answered(mut self) {
        self.armed = false;
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        Finish {
            ctx: self.ctx.clone(),
            span: self.span.clone(),
            recording: self.recording,
            started: self.started,
            head: None,
            method: self.method.clone(),
            uri: self.uri.clone(),
            status: 0,
            head_grpc_status: None,
            upstream: None,
            judgement: None,
            error: None,
        }
        .done(Ended {
            ending: Ending::Abandoned,
            grpc_status: None,
        });
    }
}

/// What the end of an exchange needs to finish its span and write its access line.
struct Finish {
    ctx: Arc<HttpContext>,
    /// Kept open until the body ends, so the span covers the whole exchange.
    span: Span,
    recording: bool,
    started: Instant,
    /// From the request to the response head; `None` when the caller left before it (the
    /// status is then 0).
    head: Option<Duration>,
    method: http::Method,
    uri: Uri,
    status: u16,
    /// A trailers-only gRPC answer carries its status in the head.
    head_grpc_status: Option<i32>,
    upstream: Option<SessionFacts>,
    judgement: Option<Judgement>,
    error: Option<(&'static str, String)>,
}

impl Finish {
    fn done(mut self, ended: Ended) {
        let took = self.started.elapsed();
        let ctx = &self.ctx;
        let span = &self.span;
        let grpc_status = ended.grpc_status.or(self.head_grpc_status);
        let complete = ended.ending == Ending::Whole;
        match ended.ending {
            _ if self.error.is_some() => {}
            Ending::BrokeOff(reason) => {
                self.error = Some((
                    "response_body",
                    format!("the response from {} broke off: {reason}", ctx.destination),
                ));
            }
            // Not the caller's doing when the sidecar itself is closing what is left.
            Ending::Abandoned if ctx.force_close.is_cancelled() => {
                self.error = Some(("shutdown", CUT_OFF_AT_SHUTDOWN.to_owned()));
            }
            Ending::Abandoned | Ending::Whole => {}
        }
        let _entered = span.enter();
        if self.recording {
            // As integer attributes: tracing-opentelemetry writes unsigned values as text.
            if self.head.is_some() {
                span.record("http.response.status_code", i64::from(self.status));
            }
            if let Some(code) = grpc_status {
                span.record("rpc.grpc.status_code", i64::from(code));
            }
            if !complete {
                span.record("hush.response.complete", false);
            }
            if let Some(upstream) = &self.upstream {
                upstream.record(span);
            }
            if let Some(judgement) = &self.judgement {
                span.record("hush.policy.decision", judgement.verdict());
                if let Some(policy) = &judgement.policy {
                    span.record("hush.policy.name", &**policy);
                }
                if let Some(audit) = &judgement.audit {
                    span.record("hush.policy.audit", &**audit);
                }
            }
            match (&self.error, &self.judgement, grpc_status) {
                (Some((kind, message)), _, _) => trace::record_error(span, kind, message),
                (None, Some(judgement), _) if !judgement.allowed => {
                    let kind = if judgement.ambiguous_path {
                        "ambiguous_path"
                    } else {
                        "policy_denied"
                    };
                    trace::record_error(span, kind, &judgement.refusal());
                }
                _ if self.status >= 500 => {
                    trace::record_error(span, &self.status.to_string(), &"server error");
                }
                (_, _, Some(code)) if grpc_is_error(ctx.direction, code) => trace::record_error(
                    span,
                    &code.to_string(),
                    &format_args!("gRPC status {code} {}", grpc_code_name(code)),
                ),
                _ => {}
            }
        }
        // Inbound, the peer is the caller on this connection; outbound, whoever answered.
        let peer = match ctx.direction {
            Direction::Inbound => ctx.session.as_ref(),
            Direction::Outbound => self.upstream.as_ref(),
        };
        AccessLine {
            direction: ctx.direction,
            client: ctx.client,
            local_id: &ctx.local_id,
            peer_id: peer.map(|p| &*p.peer_id),
            exchange: Exchange::Http {
                method: self.method.as_str(),
                path: self.uri.path(),
                status: self.status,
                grpc_status,
                head: self.head,
                complete,
            },
            judgement: self.judgement.as_ref(),
            error: self.error.as_ref().map(|(_, message)| message.as_str()),
            duration: took,
        }
        .write(ctx.access_log);
    }
}

/// Whether a gRPC status marks the span as failed, as OpenTelemetry's conventions have it: a
/// client fails on every status but OK; a server only on those that are its own fault.
fn grpc_is_error(direction: Direction, code: i32) -> bool {
    match direction {
        Direction::Outbound => code != 0,
        // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
        Direction::Inbound => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

/// How one request went: the response, and what the access line and the span need.
struct Outcome {
    response: Response<ProxyBody>,
    judgement: Option<Judgement>,
    /// The sidecar could not deliver the request: `error.type`, and why in words.
    error: Option<(&'static str, String)>,
}

/// Forwards one request: headers for the hop, the policy (inbound), the trace context, then
/// the request itself.
async fn exchange(ctx: &HttpContext, mut request: Request<Incoming>, span: &Span) -> Outcome {
    let grpc = is_grpc(request.headers());
    let upgrading = ctx.version == HttpVersion::Http1 && is_upgrade(request.headers());
    remove_hop_by_hop(request.headers_mut(), upgrading);
    // Only a request that crossed the mesh as HTTP/2 can be one carried for an HTTP/1.1
    // caller; on any other the marker is a caller's claim, dropped without effect. CONNECT
    // names its host in its target and is never carried so.
    let marked = request
        .headers_mut()
        .remove(ORIGINAL_PROTOCOL_HEADER)
        .is_some()
        && request.version() == http::Version::HTTP_2
        && request.method() != http::Method::CONNECT;
    let checked = match ctx.direction {
        Direction::Inbound => one_host(&request, marked),
        Direction::Outbound => Ok(()),
    };
    if let Err(reason) = checked.and_then(|()| make_absolute(&mut request, &ctx.fallback_authority))
    {
        ctx.metrics.request(
            ctx.direction,
            ctx.version.label(),
            StatusCode::BAD_REQUEST.as_u16(),
        );
        return Outcome {
            response: error_response(StatusCode::BAD_REQUEST, grpc, &reason),
            judgement: None,
            error: Some(("bad_request", reason)),
        };
    }
    let mut forward = &ctx.forward;
    let mut translated = false;
    if let Some(other) = &ctx.translated {
        match ctx.direction {
            // Concurrent HTTP/1.1 requests share one HTTP/2 connection between the sidecars
            // instead of one TLS connection each: fewer handshakes, fewer wake-ups, and
            // several requests per write under load. Upgrades, CONNECT tunnels and HTTP/1.0
            // keep their protocol.
            Direction::Outbound
                if ctx.version == HttpVersion::Http1
                    && !upgrading
                    && request.method() != http::Method::CONNECT
                    && request.version() == http::Version::HTTP_11 =>
            {
                request.headers_mut().insert(
                    ORIGINAL_PROTOCOL_HEADER,
                    HeaderValue::from_static("HTTP/1.1"),
                );
                *request.version_mut() = http::Version::HTTP_2;
                // The Host header carries the authority to the app; the URI's authority names
                // the upstream, so every request to it shares one pooled connection.
                if !request.headers().contains_key(header::HOST)
                    && let Ok(host) = HeaderValue::from_str(
                        request.uri().authority().map_or("", Authority::as_str),
                    )
                {
                    request.headers_mut().insert(header::HOST, host);
                }
                set_authority(&mut request, &ctx.fallback_authority);
                forward = other;
                translated = true;
            }
            Direction::Inbound if marked && request.version() == http::Version::HTTP_2 => {
                *request.version_mut() = http::Version::HTTP_11;
                forward = other;
                translated = true;
            }
            _ => {}
        }
    }
    let mut judgement = None;
    if ctx.direction == Direction::Inbound {
        // Whatever the caller wrote in these headers is a claim, not a proof: only the
        // sidecar's own values reach the app.
        let headers = request.headers_mut();
        if let Some(protected) = &ctx.protected {
            protected.strip(headers);
        }
        if let Some(identity) = &ctx.identity {
            identity.insert(headers);
        }
        // Judged after the identity headers are the sidecar's own, so a `when` condition on
        // them sees the verified values.
        if let Some(authz) = &ctx.authz {
            let decided = authz.policy.check_request(
                &authz.caller,
                request.method().as_str(),
                request.uri().path(),
                request.headers(),
                request.uri().authority().map(Authority::as_str),
            );
            if !decided.allowed {
                let label = if marked {
                    ProtocolLabel::Http1
                } else {
                    ctx.version.label()
                };
                // A path the policy cannot judge is the request's fault, not a denial.
                let status = if decided.ambiguous_path {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::FORBIDDEN
                };
                ctx.metrics.request(ctx.direction, label, status.as_u16());
                let mut response = error_response(status, grpc, decided.refusal());
                if translated {
                    *response.version_mut() = http::Version::HTTP_2;
                }
                return Outcome {
                    response,
                    judgement: Some(decided),
                    error: None,
                };
            }
            judgement = Some(decided);
        }
    }
    // The next hop's span is this request's child.
    trace::propagate(span, request.headers_mut());
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));

    // Requests are counted by the protocol the app speaks, whatever crossed the mesh.
    let label = if translated {
        ProtocolLabel::Http1
    } else {
        ctx.version.label()
    };
    let request = request.map(|body| RequestBody::new(body, ctx.protected.clone()));
    match forward.request(request).await {
        Ok(mut response) => {
            if translated {
                *response.version_mut() = match ctx.direction {
                    Direction::Outbound => http::Version::HTTP_11,
                    Direction::Inbound => http::Version::HTTP_2,
                };
            }
            ctx.metrics
                .request(ctx.direction, label, response.status().as_u16());
            match client_upgrade {
                Some(client_upgrade) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    let server_upgrade = hyper::upgrade::on(&mut response);
                    let force_close = ctx.force_close.clone();
                    let (activity, idle, client) =
                        (ctx.activity.clone(), ctx.idle_timeout, ctx.client);
                    ctx.tunnels.spawn(async move {
                        tokio::select! {
                            () = tunnel(client_upgrade, server_upgrade, &activity, idle, client) => {}
                            () = force_close.cancelled() => {}
                        }
                    });
                }
                _ => remove_hop_by_hop(response.headers_mut(), false),
            }
            Outcome {
                response: response.map(Either::Left),
                judgement,
                error: None,
            }
        }
        Err(error) => {
            let (reason, kind) = describe_forward_error(&error, &ctx.destination);
            // A failed dial to an upstream was logged where it happened, once per attempt.
            if kind != "forward" && ctx.direction == Direction::Outbound {
                debug!(%reason, "request failed");
            } else {
                warn!(
                    direction = ctx.direction.as_str(),
                    "request failed: {reason}"
                );
            }
            ctx.metrics
                .request(ctx.direction, label, StatusCode::BAD_GATEWAY.as_u16());
            Outcome {
                response: error_response(StatusCode::BAD_GATEWAY, grpc, &reason),
                judgement,
                error: Some((kind, reason)),
            }
        }
    }
}

/// Relays an upgraded connection until both sides close or it idles out.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    server: hyper::upgrade::OnUpgrade,
    activity: &Activity,
    idle: Duration,
    peer: SocketAddr,
) {
    match tokio::join!(client, server) {
        (Ok(client), Ok(server)) => {
            let mut client = TokioIo::new(client);
            let mut server = TokioIo::new(server);
            let _ =
                crate::io::relay_until_idle(&mut client, &mut server, activity, idle, peer).await;
        }
        (Err(e), _) | (_, Err(e)) => debug!(error = %e, "upgrade did not complete"),
    }
}

/// The sidecar's own answer: a short text for HTTP, a trailers-only status for gRPC (whose
/// clients read `grpc-status`, not the HTTP status).
pub(crate) fn error_response(status: StatusCode, grpc: bool, reason: &str) -> Response<ProxyBody> {
    let text = format!("hush: {reason}");
    let mut response = if grpc {
        let code = match status {
            // INVALID_ARGUMENT: the request itself cannot be taken as sent.
            StatusCode::BAD_REQUEST => "3",
            StatusCode::FORBIDDEN => "7",
            _ => "14",
        };
        let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from_static(code));
        if let Ok(message) = HeaderValue::from_str(&grpc_percent_encode(&text)) {
            headers.insert("grpc-message", message);
        }
        response
    } else {
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(text + "\n"))));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    response
        .headers_mut()
        .insert("x-hush-error", HeaderValue::from_static("1"));
    response
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII except `%` stays as it is.
fn grpc_percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether the request asks to switch to WebSocket, the one upgrade hush passes on. Any
/// other offer is dropped with the other hop-by-hop headers and the request goes on as a plain
/// one: after an `h2c` upgrade, say, the caller would speak HTTP/2 to the app through a byte
/// tunnel, with headers no sidecar ever read.
fn is_upgrade(headers: &HeaderMap) -> bool {
    let mut offers = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|offer| !offer.is_empty())
        .peekable();
    offers.peek().is_some()
        && offers.all(|offer| offer.eq_ignore_ascii_case(b"websocket"))
        && connection_tokens(headers).iter().any(|t| t == "upgrade")
}

/// An inbound request names the host it is for once: a policy judging one host while the app
/// serves another would be a way around it. More than one Host header (RFC 9112 says to
/// refuse those), or a Host header that disagrees with the target's authority (HTTP/1's
/// absolute form, HTTP/2's `:authority`), is refused. A request a peer sidecar carried over
/// HTTP/2 for an HTTP/1.1 caller (`marked`) has the hop's address as its authority and the
/// caller's host in Host, which is what the app then sees alone.
fn one_host<B>(request: &Request<B>, marked: bool) -> Result<(), String> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("the request has more than one Host header".to_owned());
    }
    match (host, request.uri().authority()) {
        (Some(host), Some(authority))
            if !marked
                && !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
        {
            Err(format!(
                "the request names two hosts: {authority} in its target and {} in its Host header",
                String::from_utf8_lossy(host.as_bytes())
            ))
        }
        _ => Ok(()),
    }
}

/// Removes the headers that describe one hop (RFC 9110, section 7.6.1), including those the
/// Connection header names. An upgrade keeps `Connection: upgrade` and `Upgrade`.
fn remove_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    for token in connection_tokens(headers) {
        if upgrading && token == "upgrade" {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            headers.remove(name);
        }
    }
    for name in ["keep-alive", "proxy-connection", "http2-settings"] {
        headers.remove(name);
    }
    // A message with a Transfer-Encoding is framed by it, never by its Content-Length (RFC
    // 9112, section 6.3); passing both on would let the next parser pick the other one.
    if headers.remove(header::TRANSFER_ENCODING).is_some() {
        headers.remove(header::CONTENT_LENGTH);
    }
    // `te: trailers` is how gRPC says it understands trailers; any other TE is per hop.
    if headers
        .get(header::TE)
        .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// hyper's client needs `http://authority/path`; an HTTP/1 request usually carries only the
/// path, with the authority in its Host header.
fn make_absolute<B>(request: &mut Request<B>, fallback: &Authority) -> Result<(), String> {
    if request.uri().authority().is_some() && request.uri().scheme().is_some() {
        return Ok(());
    }
    let authority = match request.headers().get(header::HOST) {
        Some(host) => host
            .to_str()
            .ok()
            .and_then(|h| h.parse::<Authority>().ok())
            .ok_or_else(|| "the Host header is not a valid host[:port]".to_string())?,
        None => request
            .uri()
            .authority()
            .cloned()
            .unwrap_or_else(|| fallback.clone()),
    };
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *request.uri_mut() =
        Uri::from_parts(parts).map_err(|e| format!("the request target is not valid: {e}"))?;
    Ok(())
}

fn set_authority<B>(request: &mut Request<B>, authority: &Authority) {
    let mut parts = request.uri().clone().into_parts();
    parts.authority = Some(authority.clone());
    if let Ok(uri) = Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// Why forwarding failed, in words, and its `error.type`: the dial error when there is one
/// (`connect`: connection refused; `handshake`: handshake refused, wrong identity), else the
/// TLS error underneath, else the whole chain of causes (`forward`).
fn describe_forward_error(
    error: &hyper_util::client::legacy::Error,
    destination: &str,
) -> (String, &'static str) {
    let mut source: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(cause) = source {
        if let Some(dial) = cause.downcast_ref::<DialError>() {
            let kind = match dial {
                DialError::Connect { .. } => "connect",
                DialError::Handshake { .. } => "handshake",
            };
            return (dial.to_string(), kind);
        }
        if let Some(io) = cause.downcast_ref::<io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<hush_tls::rustls::Error>())
        {
            let failure = hush_tls::explain_io_error(io);
            return (
                format!("the connection to {destination} failed: {failure}"),
                "forward",
            );
        }
        source = cause.source();
    }
    (
        format!(
            "the connection to {destination} failed: {}",
            error_chain(error)
        ),
        "forward",
    )
}

/// An error and its causes, `outer: inner: innermost`, skipping repeats.
pub(crate) fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}

/// Dials the local app.
#[derive(Clone, Debug)]
pub(crate) struct AppConnector {
    addr: SocketAddr,
    connect_timeout: Duration,
}

impl tower::Service<Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let target = Target::Addr(self.addr);
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let tcp = target
                .connect(timeout)
                .await
                .map_err(|source| DialError::Connect {
                    target: format!("the app at {target}"),
                    source,
                })?;
            Ok(TokioIo::new(tcp))
        })
    }
}

/// Dials a peer sidecar with mutual TLS, whatever authority the request names.
#[derive(Clone)]
pub(crate) struct MeshHttpConnector {
    inner: Arc<MeshHttpInner>,
}

struct MeshHttpInner {
    connector: MeshConnector,
    target: Target,
    protocol: MeshProtocol,
    metrics: Metrics,
}

impl std::fmt::Debug for MeshHttpConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshHttpConnector")
            .field("target", &self.inner.target)
            .field("protocol", &self.inner.protocol)
            .finish()
    }
}

impl tower::Service<Uri> for MeshHttpConnector {
    type Response = TokioIo<MeshStream>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let inner = self.inner.clone();
        // hyper asks for a connection while polling the request that needs one: a failed dial
        // is that request's failure.
        let span = Span::current();
        Box::pin(async move {
            let tls = crate::outbound::dial_logged(
                &inner.connector,
                &inner.target,
                inner.protocol,
                &inner.metrics,
                &span,
            )
            .await?;
            let facts = session_facts(&tls);
            Ok(TokioIo::new(MeshStream { tls, facts }))
        })
    }
}

/// What a finished client handshake settled; the verifier has checked the peer's SPIFFE ID.
pub(crate) fn session_facts(tls: &TlsStream<TcpStream>) -> SessionFacts {
    let (_, session) = tls.get_ref();
    let peer_id = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| check_leaf_svid(leaf).ok())
        .map_or_else(|| Arc::from("-"), |id| Arc::from(id.as_str()));
    SessionFacts::of(session, peer_id)
}

/// A mutual-TLS connection to a peer sidecar, as hyper's pool holds it.
#[derive(Debug)]
pub(crate) struct MeshStream {
    tls: TlsStream<TcpStream>,
    /// Handed to every response that comes back over this connection, for its span and
    /// access line.
    facts: SessionFacts,
}

impl Connection for MeshStream {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.facts.clone())
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_stop_here() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);

        let mut grpc = headers(&[("te", "trailers"), ("content-type", "application/grpc")]);
        remove_hop_by_hop(&mut grpc, false);
        assert_eq!(grpc.get("te").unwrap(), "trailers");
    }

    #[test]
    fn an_upgrade_keeps_its_headers() {
        let mut map = headers(&[
            ("connection", "Upgrade, x-hop"),
            ("upgrade", "websocket"),
            ("x-hop", "1"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade(&map));
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map.get("connection").unwrap(), "upgrade");
        assert_eq!(map.get("upgrade").unwrap(), "websocket");
        assert!(map.get("x-hop").is_none());
        assert!(map.get("sec-websocket-key").is_some());
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn requests_become_absolute() {
        let fallback: Authority = "127.0.0.1:8080".parse().unwrap();
        let mut with_host = Request::builder()
            .uri("/api?x=1")
            .header("host", "shop.local")
            .body(())
            .unwrap();
        make_absolute(&mut with_host, &fallback).unwrap();
        assert_eq!(with_host.uri(), "http://shop.local/api?x=1");

        let mut without_host = Request::builder().uri("/").body(()).unwrap();
        make_absolute(&mut without_host, &fallback).unwrap();
        assert_eq!(without_host.uri(), "http://127.0.0.1:8080/");

        let mut h2 = Request::builder()
            .uri("http://backend:80/rpc")
            .body(())
            .unwrap();
        make_absolute(&mut h2, &fallback).unwrap();
        assert_eq!(h2.uri(), "http://backend:80/rpc");

        let mut bad = Request::builder()
            .uri("/")
            .header("host", "a b")
            .body(())
            .unwrap();
        assert!(
            make_absolute(&mut bad, &fallback)
                .unwrap_err()
                .contains("Host")
        );
    }

    #[test]
    fn grpc_errors_are_trailers_only_statuses() {
        let response = error_response(
            StatusCode::BAD_GATEWAY,
            true,
            "refused 127.0.0.1:1: 100% wrong",
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(
            response.headers()["grpc-message"],
            "hush: refused 127.0.0.1:1: 100%25 wrong"
        );
        let plain = error_response(StatusCode::BAD_GATEWAY, false, "no app");
        assert_eq!(plain.status(), StatusCode::BAD_GATEWAY);
    }
}
