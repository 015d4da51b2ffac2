//! Traces and access lines end to end: a CA and two sidecars as real processes export their
//! spans over OTLP/gRPC to a real receiver built on the official OpenTelemetry protobuf
//! definitions (`mesh/otlp_receiver.py`, Python with `opentelemetry-proto` and `grpcio`).
//!
//! The receiver needs `HUSH_OTLP_PYTHON` (CI sets it to its venv's Python, and
//! `HUSH_REQUIRE_OTLP` so that it cannot be skipped); elsewhere, without it, the tests that need
//! it say they were skipped.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hush_proxy::{
    AccessLog, InboundConfig, OutboundConfig, PolicyConfig, ProxyConfig, TracingConfig,
};
use hush_test_support::{CaProcess, ProxyProcess};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mesh::otlp::{ExportedSpan, OtlpReceiver};
use crate::mesh::sidecars::{
    BACKEND, FRONTEND, HUSH, Mesh, MeshSpec, edit, get, json, loopback, new_ca, sidecar_config,
    spiffe_id, within, write_configmap,
};
use crate::mesh::{apps, otlp, sidecars};

/// The trace the test's "app" is part of when it calls the frontend sidecar.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";
/// A second trace, for the request the policy denies.
const DENIED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// Spans leave in batches; this keeps the test from waiting the default five seconds.
const QUICK_BATCHES: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");
const DEADLINE: Duration = Duration::from_secs(60);

const POLICY: &str = "\
apiVersion: hush.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  action: DENY
  rules:
    - to: [{paths: [/admin*]}]
";

fn receiver() -> Option<OtlpReceiver> {
    match otlp::python() {
        Some(python) => Some(OtlpReceiver::start(&python)),
        // CI installs the receiver's packages, so there the test must run.
        None if std::env::var_os("HUSH_REQUIRE_OTLP").is_some() => {
            panic!("HUSH_REQUIRE_OTLP is set but HUSH_OTLP_PYTHON is not")
        }
        None => {
            eprintln!(
                "skipped: no Python with opentelemetry-proto and grpcio (set HUSH_OTLP_PYTHON)"
            );
            None
        }
    }
}

fn find<'a>(spans: &'a [ExportedSpan], name: &str, trace: &str) -> Option<&'a ExportedSpan> {
    spans.iter().find(|s| s.name == name && s.trace_id == trace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_sidecars_is_one_trace() {
    let Some(receiver) = receiver() else { return };
    let endpoint = receiver.endpoint();
    let app = apps::start_app().await;
    let (temp, ca_dir) = new_ca();
    // The CA takes the standard variable; the backend its configuration file; the frontend
    // the variable and a service name.
    let ca = CaProcess::try_start_with_env(
        HUSH,
        &ca_dir,
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), QUICK_BATCHES],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    write_configmap(&temp.path().join("policy"), "policy.yaml", POLICY);
    let backend_config = sidecar_config(temp.path(), "backend", ca.url(), &ca_dir, BACKEND, |c| {
        c.inbound = Some(InboundConfig::new(loopback(), app));
        c.policy = Some(PolicyConfig::new("../policy"));
        c.access_log = AccessLog::All;
        c.tracing = TracingConfig {
            otlp_endpoint: Some(endpoint.clone()),
            service_name: Some("backend-sidecar".into()),
        };
    });
    let backend = ProxyProcess::try_start(HUSH, &backend_config, &[QUICK_BATCHES])
        .unwrap_or_else(|e| panic!("{e}"));
    let frontend_config =
        sidecar_config(temp.path(), "frontend", ca.url(), &ca_dir, FRONTEND, |c| {
            c.outbound = vec![OutboundConfig::new(
                loopback(),
                backend.inbound().to_string(),
                spiffe_id(BACKEND),
            )];
        });
    let frontend = ProxyProcess::try_start(
        HUSH,
        &frontend_config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "frontend-sidecar"),
            QUICK_BATCHES,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let traceparent = format!("00-{TRACE}-{APP_SPAN}-01");
    let (status, body) = get(
        frontend.outbound(0),
        "/traced",
        &[("traceparent", &traceparent), ("tracestate", "shop=1")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = json(&body);
    let denied_parent = format!("00-{DENIED_TRACE}-{APP_SPAN}-01");
    let (status, body) = get(
        frontend.outbound(0),
        "/admin",
        &[("traceparent", &denied_parent)],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // No traceparent: the request starts a trace of its own.
    let (status, _) = get(frontend.outbound(0), "/fresh", &[]).await;
    assert_eq!(status, 200);
    // Plaintext on the mutual-TLS port: a refused connection has a span too.
    let mut plain = tokio::net::TcpStream::connect(backend.inbound())
        .await
        .unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut refusal = String::new();
    plain.read_to_string(&mut refusal).await.unwrap();
    assert!(refusal.starts_with("HTTP/1.1 400"), "{refusal}");

    let spans = receiver.wait_for(
        "both sidecars' request spans, the CA's issuances and the refused connection",
        DEADLINE,
        |spans| {
            find(spans, "outbound request", TRACE).is_some()
                && find(spans, "inbound request", TRACE).is_some()
                && find(spans, "inbound request", DENIED_TRACE).is_some()
                && spans.iter().any(|s| {
                    s.name == "outbound request" && s.attr_str("url.path") == Some("/fresh")
                })
                && spans
                    .iter()
                    .filter(|s| s.name == "issue certificate")
                    .count()
                    >= 2
                && spans
                    .iter()
                    .filter(|s| s.name == "obtain certificate")
                    .count()
                    >= 2
                && spans
                    .iter()
                    .any(|s| s.name == "inbound connection" && s.attr_str("error.type").is_some())
        },
    );

    // One trace: app → frontend sidecar → backend sidecar → app.
    let outbound = find(&spans, "outbound request", TRACE).unwrap();
    let inbound = find(&spans, "inbound request", TRACE).unwrap();
    assert_eq!(outbound.parent_span_id, APP_SPAN);
    assert_eq!(inbound.parent_span_id, outbound.span_id);
    let app_saw = seen["traceparent"][0].as_str().unwrap();
    assert_eq!(app_saw, format!("00-{TRACE}-{}-01", inbound.span_id));
    assert_eq!(seen["tracestate"][0], "shop=1");

    assert_eq!(outbound.service, "frontend-sidecar");
    assert_eq!(outbound.kind, "SPAN_KIND_CLIENT");
    assert_eq!(inbound.service, "backend-sidecar");
    assert_eq!(inbound.kind, "SPAN_KIND_SERVER");
    for (span, local, peer) in [(outbound, FRONTEND, BACKEND), (inbound, BACKEND, FRONTEND)] {
        assert_eq!(
            span.attr_str("hush.local.spiffe_id"),
            Some(local),
            "{span:?}"
        );
        assert_eq!(span.attr_str("hush.peer.spiffe_id"), Some(peer), "{span:?}");
        assert_eq!(
            span.attr_str("tls.protocol.version"),
            Some("1.3"),
            "{span:?}"
        );
        assert!(
            span.attr_str("tls.cipher")
                .is_some_and(|c| c.starts_with("TLS13_")),
            "{span:?}"
        );
        assert!(span.attr_str("tls.curve").is_some(), "{span:?}");
        assert_eq!(span.attr_str("http.request.method"), Some("GET"));
        assert_eq!(span.attr_str("url.path"), Some("/traced"));
        assert_eq!(span.attr("http.response.status_code"), Some(&200.into()));
        assert_eq!(span.status, "STATUS_CODE_UNSET", "{span:?}");
    }
    assert_eq!(inbound.attr_str("hush.policy.decision"), Some("allow"));

    // Without a traceparent, a new trace rooted at the frontend sidecar (not at the span of
    // the connection that carried it), continued by the backend.
    let fresh = spans
        .iter()
        .find(|s| s.name == "outbound request" && s.attr_str("url.path") == Some("/fresh"))
        .unwrap();
    assert_eq!(fresh.parent_span_id, "", "{fresh:?}");
    assert!(![TRACE, DENIED_TRACE].contains(&fresh.trace_id.as_str()));

    // The denied request: its own trace, marked as an error that names the policy.
    let denied = find(&spans, "inbound request", DENIED_TRACE).unwrap();
    assert_eq!(denied.attr_str("hush.policy.decision"), Some("deny"));
    assert_eq!(denied.attr_str("hush.policy.name"), Some("no-admin"));
    assert_eq!(denied.attr("http.response.status_code"), Some(&403.into()));
    assert_eq!(denied.status, "STATUS_CODE_ERROR");
    assert!(denied.status_message.contains("no-admin"), "{denied:?}");

    // The CA traced both issuances: how each caller proved itself, and who it is, as part of
    // the trace of the sidecar that asked.
    let named = |name: &str, id: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.attr_str("hush.spiffe_id") == Some(id))
            .unwrap_or_else(|| panic!("no {name} span for {id}"))
    };
    for (id, sidecar) in [(FRONTEND, "frontend-sidecar"), (BACKEND, "backend-sidecar")] {
        let issued = named("issue certificate", id);
        assert_eq!(issued.service, "hush-ca");
        assert_eq!(issued.kind, "SPAN_KIND_SERVER");
        assert_eq!(issued.attr_str("hush.attestation"), Some("join_token"));
        assert_eq!(issued.attr_str("hush.outcome"), Some("issued"));
        let asked = named("obtain certificate", id);
        assert_eq!(asked.service, sidecar);
        assert_eq!(asked.attr_str("hush.outcome"), Some("issued"));
        assert_eq!(issued.trace_id, asked.trace_id);
        assert_eq!(issued.parent_span_id, asked.span_id);
    }

    let refused = spans
        .iter()
        .find(|s| s.name == "inbound connection" && s.attr_str("error.type").is_some())
        .unwrap();
    assert_eq!(refused.attr_str("error.type"), Some("plaintext_http"));
    assert_eq!(refused.attr_str("hush.handshake.step"), Some("hello"));
    assert_eq!(refused.status, "STATUS_CODE_ERROR");

    // The access log: one line per request, with identities, decision, status, timing and
    // the trace it belongs to.
    let log = backend.stderr();
    let allowed_line = log
        .lines()
        .find(|l| l.contains("access: inbound GET /traced"))
        .unwrap_or_else(|| panic!("no access line for /traced:\n{log}"));
    assert!(allowed_line.contains(FRONTEND), "{allowed_line}");
    assert!(allowed_line.contains(": 200 in "), "{allowed_line}");
    assert!(allowed_line.contains(TRACE), "{allowed_line}");
    let denied_line = log
        .lines()
        .find(|l| l.contains("access: inbound GET /admin"))
        .unwrap_or_else(|| panic!("no access line for /admin:\n{log}"));
    assert!(denied_line.contains(": 403 in "), "{denied_line}");
    assert!(
        denied_line.contains("denied by DENY policy \"no-admin\""),
        "{denied_line}"
    );
    assert!(denied_line.contains(DENIED_TRACE), "{denied_line}");
    drop(frontend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_collector_traceparent_passes_through_untouched() {
    let mesh = Mesh::start(MeshSpec::default()).await;
    let traceparent = format!("00-{TRACE}-{APP_SPAN}-01");
    let (status, body) = get(
        mesh.to_backend(),
        "/plain",
        &[("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["traceparent"][0], traceparent.as_str());
    // The default access log writes nothing for an allowed request.
    let log = mesh.backend.stderr();
    assert!(!log.contains("access: "), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_reported_once_and_traffic_flows() {
    // A port nothing listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{closed}");
    let lone =
        sidecars::LoneBackend::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), QUICK_BATCHES])
            .await;
    // The span of obtaining the certificate was the first that could not be sent.
    let line = lone
        .sidecar
        .wait_for_log(
            &[&format!("cannot send spans to the collector at {endpoint}")],
            DEADLINE,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("Connection refused"), "{line}");
    // Requests still go through, and the failure is not repeated for every batch.
    let caller = hush_test_support::leaf_from_ca_dir(&lone.ca_dir, Some(FRONTEND));
    let pem = std::fs::read(lone.ca_dir.join("bundle.pem")).unwrap();
    let bundle = hush_identity::TrustBundle::from_pem(&pem, None).unwrap();
    let response = sidecars::mtls_request(lone.sidecar.inbound(), &bundle, Some(caller))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let later = lone.sidecar.stderr();
    assert_eq!(
        later.matches("cannot send spans").count(),
        1,
        "reported once:\n{later}"
    );
}

/// How long the streaming app waits between a response's first frame and its last.
const HOLD_MS: u64 = 300;

/// An HTTP/2 connection from the test's "app" to the frontend sidecar, so gRPC-style trailers
/// cross the mesh end to end.
async fn h2_client(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the frontend sidecar");
    let (client, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 handshake with the frontend sidecar");
    tokio::spawn(connection);
    client
}

fn stream_request(path_and_query: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://backend{path_and_query}"))
        .body(Empty::new())
        .expect("a request")
}

/// The JSON access line a sidecar wrote for `path`, waiting (bounded) for it.
fn access_line(sidecar: &ProxyProcess, path: &str) -> serde_json::Value {
    let needle = format!("\"path\":\"{path}\"");
    let line = sidecar
        .wait_for_log(&["access: ", &needle], DEADLINE)
        .unwrap_or_else(|e| panic!("{e}"));
    json(&line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_is_logged_and_traced_when_it_ends() {
    // The spans are checked where the receiver can run; the access lines everywhere.
    let receiver = receiver();
    let otlp_endpoint = receiver.as_ref().map(|receiver| receiver.endpoint());
    let mesh = Mesh::start(MeshSpec {
        sidecars: edit(move |c: &mut ProxyConfig| {
            c.access_log = AccessLog::All;
            c.tracing.otlp_endpoint.clone_from(&otlp_endpoint);
        }),
        sidecar_env: vec![QUICK_BATCHES, ("HUSH_LOG_FORMAT", "json")],
        ..MeshSpec::default()
    })
    .await;
    let mut client = h2_client(mesh.to_backend()).await;

    // A gRPC-style stream: the head and a frame, the last frame HOLD_MS later, trailers.
    let response = client
        .send_request(stream_request(&format!(
            "/trickle/grpc?ms={HOLD_MS}&grpc_status=14"
        )))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap();
    assert_eq!(
        body.trailers().and_then(|t| t.get("grpc-status")),
        Some(&http::HeaderValue::from_static("14"))
    );
    assert_eq!(body.to_bytes(), "first\nlast\n");

    // The app fails mid-body: the caller's stream is reset, not ended as if complete.
    let response = client
        .send_request(stream_request("/trickle/broken?break=1"))
        .await
        .unwrap();
    assert!(response.into_body().collect().await.is_err());

    // The caller reads the head and the first frame, then walks away.
    let response = client
        .send_request(stream_request("/trickle/abandoned?ms=600000"))
        .await
        .unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);

    // The caller gives up before the head, while the app is still thinking.
    let before = apps::slow_requests_started(mesh.app);
    let waiting = tokio::spawn(client.send_request(stream_request("/slow?ms=600000")));
    within(async {
        while apps::slow_requests_started(mesh.app) == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    waiting.abort();

    for (sidecar, direction) in [(&mesh.frontend, "outbound"), (&mesh.backend, "inbound")] {
        // The line is written when the body ends: its duration spans the app's wait, and
        // the gRPC status comes from the trailers.
        let grpc = access_line(sidecar, "/trickle/grpc");
        assert_eq!(grpc["direction"], direction, "{grpc}");
        assert_eq!(grpc["status"], 200, "{grpc}");
        assert_eq!(grpc["grpc_status"], 14, "{grpc}");
        assert_eq!(grpc["complete"], true, "{grpc}");
        let duration = grpc["duration_ms"].as_f64().unwrap();
        let head = grpc["response_head_ms"].as_f64().unwrap();
        assert!(duration >= HOLD_MS as f64, "{grpc}");
        assert!(head < duration, "{grpc}");
        let message = grpc["message"].as_str().unwrap();
        assert!(
            message.contains("200 (gRPC 14 UNAVAILABLE) in "),
            "{message}"
        );
        assert!(message.contains("(head after "), "{message}");

        let broken = access_line(sidecar, "/trickle/broken");
        assert_eq!(broken["complete"], false, "{broken}");
        let error = broken["error"].as_str().unwrap();
        assert!(error.contains("broke off"), "{broken}");

        let abandoned = access_line(sidecar, "/trickle/abandoned");
        assert_eq!(abandoned["complete"], false, "{abandoned}");
        assert_eq!(abandoned["error"], "-", "{abandoned}");
        let message = abandoned["message"].as_str().unwrap();
        assert!(
            message.contains("the caller left before the response ended"),
            "{message}"
        );

        let unanswered = access_line(sidecar, "/slow");
        assert_eq!(unanswered["status"], 0, "{unanswered}");
        assert_eq!(unanswered["complete"], false, "{unanswered}");
        assert!(unanswered.get("response_head_ms").is_none(), "{unanswered}");
        let message = unanswered["message"].as_str().unwrap();
        assert!(message.contains("no response in "), "{message}");
        assert!(
            message.contains("the caller left before the response head"),
            "{message}"
        );
    }
    // Where the app broke off, the backend names it.
    let broken = access_line(&mesh.backend, "/trickle/broken");
    assert!(
        broken["error"]
            .as_str()
            .unwrap()
            .contains("the response from the app at"),
        "{broken}"
    );

    let Some(receiver) = receiver else { return };
    let with_path = |spans: &[ExportedSpan], name: &str, path: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.attr_str("url.path") == Some(path))
            .cloned()
    };
    let spans = receiver.wait_for("the streams' request spans", DEADLINE, |spans| {
        [
            "/trickle/grpc",
            "/trickle/broken",
            "/trickle/abandoned",
            "/slow",
        ]
        .iter()
        .all(|path| {
            with_path(spans, "outbound request", path).is_some()
                && with_path(spans, "inbound request", path).is_some()
        })
    });
    for name in ["outbound request", "inbound request"] {
        let grpc = with_path(&spans, name, "/trickle/grpc").unwrap();
        assert_eq!(
            grpc.attr("rpc.grpc.status_code"),
            Some(&14.into()),
            "{grpc:?}"
        );
        // UNAVAILABLE is a failure for the client and for the server.
        assert_eq!(grpc.status, "STATUS_CODE_ERROR", "{grpc:?}");
        let lasted = grpc.end_unix_nano.saturating_sub(grpc.start_unix_nano);
        assert!(lasted >= HOLD_MS * 1_000_000, "{grpc:?}");

        let broken = with_path(&spans, name, "/trickle/broken").unwrap();
        assert_eq!(
            broken.attr_str("error.type"),
            Some("response_body"),
            "{broken:?}"
        );
        let abandoned = with_path(&spans, name, "/trickle/abandoned").unwrap();
        assert_eq!(
            abandoned.attr("hush.response.complete"),
            Some(&false.into()),
            "{abandoned:?}"
        );
        assert_eq!(abandoned.status, "STATUS_CODE_UNSET", "{abandoned:?}");
        let unanswered = with_path(&spans, name, "/slow").unwrap();
        assert_eq!(
            unanswered.attr("hush.response.complete"),
            Some(&false.into()),
            "{unanswered:?}"
        );
        assert_eq!(unanswered.attr("http.response.status_code"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_shutdown_grace_cuts_off_is_logged_as_cut_off() {
    // The default access log: only what failed, and this did.
    let mut mesh = Mesh::start(MeshSpec {
        sidecars: edit(|c: &mut ProxyConfig| c.shutdown_grace = Duration::from_secs(1)),
        sidecar_env: vec![("HUSH_LOG_FORMAT", "json")],
        ..MeshSpec::default()
    })
    .await;
    let mut client = h2_client(mesh.to_backend()).await;
    let response = client
        .send_request(stream_request("/trickle/endless?ms=600000"))
        .await
        .unwrap();
    let mut body = response.into_body();
    // The first frame has crossed both sidecars: the stream is in flight.
    body.frame().await.unwrap().unwrap();

    mesh.backend.process().send_sigterm();
    let exit = mesh
        .backend
        .process()
        .wait_exit(Duration::from_secs(15))
        .expect("the backend exits once its grace has run out");
    assert!(exit.success(), "{exit}");
    let cut = access_line(&mesh.backend, "/trickle/endless");
    assert_eq!(cut["complete"], false, "{cut}");
    let error = cut["error"].as_str().unwrap();
    assert!(error.contains("shutdown grace period ran out"), "{cut}");
    let message = cut["message"].as_str().unwrap();
    assert!(!message.contains("the caller left"), "{message}");
    drop(body);
}
