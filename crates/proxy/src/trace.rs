//! Spans of connections and requests, and W3C trace context across the mesh.
//!
//! Every connection gets a span (`inbound connection`, `outbound connection`) with what its
//! handshake settled: the peer's and our SPIFFE IDs, the TLS version, cipher suite and
//! key-exchange group, or the step that failed. Every HTTP request gets a span of its own
//! (`inbound request`, `outbound request`) that continues the `traceparent` the request
//! arrived with, and the request leaves with a `traceparent` naming that span as its parent:
//! app → client sidecar → server sidecar → app is one trace.
//!
//! The spans are exported only when the process installed a trace exporter; without one their
//! call sites are disabled, nothing here runs, and `traceparent` passes through untouched.
//! Attribute names follow the OpenTelemetry semantic conventions where one exists
//! (`http.request.method`, `tls.cipher`, …) and are `hush.*` otherwise.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use hush_tls::HandshakeFailure;
use hush_tls::rustls::{CommonState, ProtocolVersion};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::Direction;

/// What a TLS session between sidecars settled, for spans and access lines.
#[derive(Clone, Debug)]
pub(crate) struct SessionFacts {
    /// The peer's verified SPIFFE ID.
    pub(crate) peer_id: Arc<str>,
    /// `1.3`.
    pub(crate) version: &'static str,
    /// `TLS13_AES_128_GCM_SHA256`.
    pub(crate) cipher: &'static str,
    /// The key-exchange group: `X25519MLKEM768`, `X25519`, …
    pub(crate) group: &'static str,
}

impl SessionFacts {
    /// Reads the negotiated parameters of a finished handshake.
    pub(crate) fn of(session: &CommonState, peer_id: Arc<str>) -> Self {
        Self {
            peer_id,
            version: match session.protocol_version() {
                Some(ProtocolVersion::TLSv1_3) => "1.3",
                Some(ProtocolVersion::TLSv1_2) => "1.2",
                _ => "unknown",
            },
            cipher: session
                .negotiated_cipher_suite()
                .and_then(|suite| suite.suite().as_str())
                .unwrap_or("unknown"),
            group: session
                .negotiated_key_exchange_group()
                .and_then(|group| group.name().as_str())
                .unwrap_or("unknown"),
        }
    }

    /// Writes the facts into a connection or request span.
    pub(crate) fn record(&self, span: &Span) {
        if span.is_disabled() {
            return;
        }
        span.record("hush.peer.spiffe_id", &*self.peer_id);
        span.record("tls.protocol.version", self.version);
        span.record("tls.cipher", self.cipher);
        span.record("tls.curve", self.group);
    }
}

/// A span with the fields every hush span of the data plane may be given later: the
/// identities, the TLS facts and the error. tracing wants field names spelled out where the
/// span is made; this spells them once. The fields after the name are the span's own; `root`
/// makes a span with no parent.
macro_rules! mesh_span {
    (root, $name:literal, $($own:tt)*) => {
        mesh_span!(@ parent: None, $name, $($own)*)
    };
    ($name:literal, $($own:tt)*) => {
        mesh_span!(@ $name, $($own)*)
    };
    (@ $($name_and_own:tt)*) => {
        tracing::info_span!(
            target: "hush::proxy",
            $($name_and_own)*
            hush.local.spiffe_id = Empty,
            hush.peer.spiffe_id = Empty,
            tls.protocol.version = Empty,
            tls.cipher = Empty,
            tls.curve = Empty,
            error.type = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
        )
    };
}

/// A connection's span; `peer` is the address it came from.
pub(crate) fn connection_span(direction: Direction, peer: SocketAddr) -> Span {
    match direction {
        Direction::Inbound => mesh_span!(
            "inbound connection",
            otel.kind = "server",
            client.address = %peer.ip(),
            client.port = i64::from(peer.port()),
            network.protocol.name = Empty,
            hush.policy.decision = Empty,
            hush.policy.name = Empty,
            hush.bytes.received = Empty,
            hush.bytes.sent = Empty,
            hush.handshake.step = Empty,
        ),
        Direction::Outbound => mesh_span!(
            "outbound connection",
            otel.kind = "client",
            client.address = %peer.ip(),
            client.port = i64::from(peer.port()),
            server.address = Empty,
            network.protocol.name = Empty,
            hush.bytes.received = Empty,
            hush.bytes.sent = Empty,
            hush.handshake.step = Empty,
        ),
        Direction::Gateway => mesh_span!(
            "gateway connection",
            otel.kind = "server",
            client.address = %peer.ip(),
            client.port = i64::from(peer.port()),
            network.protocol.name = Empty,
            hush.bytes.received = Empty,
            hush.bytes.sent = Empty,
            hush.handshake.step = Empty,
        ),
    }
}

/// A request's span, continuing the trace its `traceparent` header names (a new trace when it
/// names none). It is a root of its own, never a child of its connection's span: requests
/// sharing a kept-alive connection belong to unrelated traces.
pub(crate) fn request_span<B>(direction: Direction, request: &http::Request<B>) -> Span {
    let protocol_version = match request.version() {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    };
    let span = match direction {
        Direction::Inbound => mesh_span!(
            root,
            "inbound request",
            otel.kind = "server",
            http.request.method = %request.method(),
            url.path = request.uri().path(),
            network.protocol.name = "http",
            network.protocol.version = protocol_version,
            http.response.status_code = Empty,
            rpc.grpc.status_code = Empty,
            hush.response.complete = Empty,
            hush.policy.decision = Empty,
            hush.policy.name = Empty,
            hush.policy.audit = Empty,
        ),
        Direction::Outbound => mesh_span!(
            root,
            "outbound request",
            otel.kind = "client",
            http.request.method = %request.method(),
            url.path = request.uri().path(),
            server.address = Empty,
            network.protocol.name = "http",
            network.protocol.version = protocol_version,
            http.response.status_code = Empty,
            rpc.grpc.status_code = Empty,
            hush.response.complete = Empty,
        ),
        Direction::Gateway => mesh_span!(
            root,
            "gateway request",
            otel.kind = "server",
            http.request.method = %request.method(),
            url.path = request.uri().path(),
            server.address = Empty,
            network.protocol.name = "http",
            network.protocol.version = protocol_version,
            http.response.status_code = Empty,
            rpc.grpc.status_code = Empty,
            hush.response.complete = Empty,
        ),
    };
    // A public client's trace context is its claim, not the mesh's: the gateway starts a
    // trace of its own, so nobody outside chooses trace IDs or forces sampling inside.
    if !span.is_disabled() && direction != Direction::Gateway {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        if parent.span().span_context().is_valid() {
            // Only fails when no OpenTelemetry layer is installed, and then the span is
            // disabled.
            let _ = span.set_parent(parent);
        }
    }
    span
}

/// Whether the span is being recorded: enabled, and kept by the sampler. Attributes of a span
/// the sampler dropped would be made only to be thrown away.
pub(crate) fn is_recording(span: &Span) -> bool {
    !span.is_disabled() && span.context().span().is_recording()
}

/// Replaces `traceparent` (and `tracestate`) with the span's own context, so the next hop's
/// span is its child. Without an exporter the headers stay as they came.
pub(crate) fn propagate(span: &Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }
}

/// Marks a span as failed: `kind` is a short machine-readable name (`error.type`), `message`
/// the sentence a person reads.
pub(crate) fn record_error(span: &Span, kind: &str, message: &dyn Display) {
    if span.is_disabled() {
        return;
    }
    span.record("error.type", kind);
    span.record("otel.status_code", "error");
    span.record("otel.status_description", tracing::field::display(message));
}

/// Writes the bytes a TCP connection carried into its span (as integers: tracing-opentelemetry
/// writes unsigned values as text).
pub(crate) fn record_bytes(span: &Span, (received, sent): (u64, u64)) {
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    span.record("hush.bytes.received", as_i64(received));
    span.record("hush.bytes.sent", as_i64(sent));
}

/// Marks a connection's span with the handshake step that failed and why.
pub(crate) fn record_handshake_failure(span: &Span, failure: &HandshakeFailure) {
    if span.is_disabled() {
        return;
    }
    span.record("hush.handshake.step", failure.step.as_str());
    record_error(span, failure.reason.as_str(), failure);
}

/// The trace id of the current span, for log lines, when a trace is being recorded.
pub(crate) fn current_trace_id() -> Option<String> {
    let span = Span::current();
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Reads trace context from HTTP headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes trace context into HTTP headers.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::prelude::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn request(traceparent: Option<&str>) -> http::Request<()> {
        let mut builder = http::Request::builder().uri("http://backend/api?x=1");
        if let Some(tp) = traceparent {
            builder = builder
                .header("traceparent", tp)
                .header("tracestate", "vendor=1");
        }
        builder.body(()).unwrap()
    }

    /// Runs `f` under a subscriber that records spans into memory (with `sampler`), and
    /// returns what `f` returned and the spans that were finished.
    fn recorded<T>(
        sampler: opentelemetry_sdk::trace::Sampler,
        f: impl FnOnce() -> T,
    ) -> (T, Vec<opentelemetry_sdk::trace::SpanData>) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_sampler(sampler)
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let out = tracing::subscriber::with_default(subscriber, f);
        let _ = provider.force_flush();
        (out, exporter.get_finished_spans().unwrap())
    }

    /// The SDK's default sampler.
    fn parent_based() -> opentelemetry_sdk::trace::Sampler {
        opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::AlwaysOn,
        ))
    }

    #[test]
    fn without_an_exporter_nothing_is_touched() {
        // Logging only: spans may even be enabled, but no OpenTelemetry layer records them.
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            let span = request_span(Direction::Inbound, &request(Some(PARENT)));
            let mut headers = request(Some(PARENT)).headers().clone();
            propagate(&span, &mut headers);
            assert_eq!(headers["traceparent"], PARENT);
            assert_eq!(headers["tracestate"], "vendor=1");
            let _entered = span.enter();
            assert_eq!(current_trace_id(), None);
        });
    }

    #[test]
    fn a_request_continues_the_trace_it_arrived_with_and_passes_it_on() {
        let ((outgoing, fresh), spans) = recorded(parent_based(), || {
            let span = request_span(Direction::Inbound, &request(Some(PARENT)));
            let mut headers = HeaderMap::new();
            propagate(&span, &mut headers);
            drop(span);
            let root = request_span(Direction::Outbound, &request(None));
            let mut fresh = HeaderMap::new();
            propagate(&root, &mut fresh);
            (headers, fresh)
        });
        let inbound = spans.iter().find(|s| s.name == "inbound request").unwrap();
        assert_eq!(
            inbound.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(inbound.parent_span_id.to_string(), "00f067aa0ba902b7");
        let sent = outgoing["traceparent"].to_str().unwrap();
        assert_eq!(
            sent,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                inbound.span_context.span_id()
            )
        );
        assert_eq!(outgoing["tracestate"], "vendor=1");
        // No traceparent: a new trace, rooted at this request.
        let outbound = spans.iter().find(|s| s.name == "outbound request").unwrap();
        assert_ne!(
            outbound.span_context.trace_id(),
            inbound.span_context.trace_id()
        );
        assert!(
            fresh["traceparent"]
                .to_str()
                .unwrap()
                .contains(&outbound.span_context.trace_id().to_string())
        );
    }

    #[test]
    fn an_unsampled_request_is_not_recorded_and_says_so_downstream() {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let (sent, spans) = recorded(parent_based(), || {
            let span = request_span(Direction::Inbound, &request(Some(unsampled)));
            assert!(!is_recording(&span));
            let mut headers = HeaderMap::new();
            propagate(&span, &mut headers);
            headers
        });
        assert!(spans.is_empty());
        let traceparent = sent["traceparent"].to_str().unwrap();
        assert!(
            traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
                && traceparent.ends_with("-00"),
            "{traceparent}"
        );
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        let ((), spans) = recorded(parent_based(), || {
            let span = request_span(Direction::Inbound, &request(Some("00-zz-bad-01")));
            drop(span);
        });
        assert_eq!(spans.len(), 1);
        assert!(spans[0].span_context.is_valid());
        assert_eq!(
            spans[0].parent_span_id,
            opentelemetry::trace::SpanId::INVALID
        );
    }
}
