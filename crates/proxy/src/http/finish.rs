//! The end of an exchange: its span's last attributes and its access line, written when the
//! response body ends, breaks off, or the caller leaves before the head.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use tokio::time::Instant;
use tracing::Span;

use super::HttpContext;
use crate::access::{AccessLine, Exchange, grpc_code_name};
use crate::ending::{Ended, Ending};
use crate::metrics::Direction;
use crate::policy::Judgement;
use crate::trace::{self, SessionFacts};

/// Why an exchange ended early when the sidecar closed it itself.
const CUT_OFF_AT_SHUTDOWN: &str =
    "the sidecar closed the connection: its shutdown grace period ran out first";

/// Finishes a request whose caller left before the response head: hyper drops the request's
/// future then (an HTTP/2 reset, a closed connection), and nothing after the `await` runs. It
/// is an abandoned exchange without a head; [`Finish`] tells it like any other.
pub(super) struct Unanswered<'a> {
    pub(super) ctx: &'a Arc<HttpContext>,
    pub(super) span: &'a Span,
    pub(super) recording: bool,
    pub(super) method: &'a http::Method,
    pub(super) uri: &'a Uri,
    pub(super) started: Instant,
    pub(super) armed: bool,
}

impl Unanswered<'_> {
    /// The response head is here; the body's end finishes the line.
    pub(super) fn answered(mut self) {
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
pub(super) struct Finish {
    pub(super) ctx: Arc<HttpContext>,
    /// Kept open until the body ends, so the span covers the whole exchange.
    pub(super) span: Span,
    pub(super) recording: bool,
    pub(super) started: Instant,
    /// From the request to the response head; `None` when the caller left before it (the
    /// status is then 0).
    pub(super) head: Option<Duration>,
    pub(super) method: http::Method,
    pub(super) uri: Uri,
    pub(super) status: u16,
    /// A trailers-only gRPC answer carries its status in the head.
    pub(super) head_grpc_status: Option<i32>,
    pub(super) upstream: Option<SessionFacts>,
    pub(super) judgement: Option<Judgement>,
    pub(super) error: Option<(&'static str, String)>,
}

impl Finish {
    pub(super) fn done(mut self, ended: Ended) {
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
            Direction::Outbound | Direction::Gateway => self.upstream.as_ref(),
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
        Direction::Inbound | Direction::Gateway => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}
