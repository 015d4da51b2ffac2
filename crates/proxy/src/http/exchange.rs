//! One request on its way through the sidecar: the hop's headers, the policy (inbound), the
//! protocol the mesh hop speaks, the trace context, the request itself, and the tunnel of an
//! upgrade the far side accepted.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{Span, debug, warn};

use super::answer::{describe_forward_error, error_response};
use super::rewrite::{
    authority_from_host, is_grpc, is_upgrade, make_absolute, one_host, remove_hop_by_hop,
    set_authority,
};
use super::{CARRIED_HTTP2, HttpContext, HttpVersion, ORIGINAL_PROTOCOL_HEADER, ProxyBody};
use crate::headers::{BodyEnd, RequestBody};
use crate::io::Activity;
use crate::metrics::{Direction, ProtocolLabel};
use crate::policy::Judgement;
use crate::trace;

/// The log target of forwarding, whichever file of the `http` module logs: what log filters
/// name.
const HTTP_LOG: &str = "hush_proxy::http";

/// The client's address, as the gateway saw it.
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
/// The scheme the client used (always `https` at the gateway).
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// How one request went: the response, and what the access line and the span need.
pub(super) struct Outcome {
    pub(super) response: Response<ProxyBody>,
    pub(super) judgement: Option<Judgement>,
    /// The sidecar could not deliver the request: `error.type`, and why in words.
    pub(super) error: Option<(&'static str, String)>,
}

/// Forwards one request: headers for the hop, the policy (inbound), the trace context, then
/// the request itself.
pub(super) async fn exchange(
    ctx: &HttpContext,
    mut request: Request<Incoming>,
    span: &Span,
) -> Outcome {
    let grpc = is_grpc(request.headers());
    let upgrading = ctx.version == HttpVersion::Http1 && is_upgrade(request.headers());
    remove_hop_by_hop(request.headers_mut(), upgrading);
    // Only a request that crossed the mesh as HTTP/2 can be one carried by a peer sidecar; on
    // any other the marker is a caller's claim, dropped without effect. CONNECT names its host
    // in its target and is never carried so. `HTTP/2`: an HTTP/2 request whose host travels in
    // its Host header (the gateway's, see below); anything else: one carried for an HTTP/1.1
    // caller.
    let mark = request.headers_mut().remove(ORIGINAL_PROTOCOL_HEADER);
    let carried = mark.is_some()
        && request.version() == http::Version::HTTP_2
        && request.method() != http::Method::CONNECT;
    let host_in_header = carried
        && mark
            .as_ref()
            .is_some_and(|m| m.as_bytes() == CARRIED_HTTP2.as_bytes());
    let marked = carried && !host_in_header;
    let checked = match ctx.direction {
        Direction::Inbound if host_in_header => {
            one_host(&request, true).and_then(|()| authority_from_host(&mut request))
        }
        Direction::Inbound => one_host(&request, marked),
        Direction::Gateway => one_host(&request, false),
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
            Direction::Outbound | Direction::Gateway
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
    // The gateway's HTTP/2 requests name whatever host the client asked for, and hyper's pool
    // keeps a connection per host: a client naming thousands of hosts (a `*` or wildcard
    // route) would make the gateway open as many mutual-TLS connections to one upstream. So
    // the target names the upstream, as for every HTTP/1.1 request, and the client's host
    // travels in Host, marked for the receiving sidecar to put back (`authority_from_host`).
    if ctx.direction == Direction::Gateway
        && !translated
        && ctx.version == HttpVersion::Http2
        && request.method() != http::Method::CONNECT
        && let Some(authority) = request.uri().authority().cloned()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(header::HOST, host);
        request.headers_mut().insert(
            ORIGINAL_PROTOCOL_HEADER,
            HeaderValue::from_static(CARRIED_HTTP2),
        );
        set_authority(&mut request, &ctx.fallback_authority);
    }
    let mut judgement = None;
    if ctx.direction == Direction::Gateway {
        // What a public client says about where it came from is a claim: the gateway is the
        // edge, so it states the client's address and scheme itself, once.
        let headers = request.headers_mut();
        if let Some(protected) = &ctx.protected {
            protected.strip(headers);
        }
        if let Ok(client) = HeaderValue::from_str(&ctx.client.ip().to_string()) {
            headers.insert(X_FORWARDED_FOR, client);
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    }
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
    let end = request.extensions_mut().remove::<BodyEnd>();
    let request = request.map(|body| RequestBody::new(body, ctx.protected.clone()).ending(end));
    match forward.request(request).await {
        Ok(mut response) => {
            if translated {
                *response.version_mut() = match ctx.direction {
                    Direction::Outbound | Direction::Gateway => http::Version::HTTP_11,
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
            if kind != "forward" && ctx.direction != Direction::Inbound {
                debug!(target: HTTP_LOG, %reason, "request failed");
            } else {
                warn!(
                    target: HTTP_LOG,
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
        (Err(e), _) | (_, Err(e)) => {
            debug!(target: HTTP_LOG, error = %e, "upgrade did not complete");
        }
    }
}
