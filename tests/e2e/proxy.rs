//! End-to-end tests of the sidecar: a real `hush ca serve` and real `hush proxy` processes on
//! loopback (port 0 everywhere), real apps behind them, real clients in front.
//!
//! The usual mesh: the test is the frontend app; it talks plaintext to the frontend sidecar's
//! outbound listener, which dials the backend sidecar's inbound listener with mutual TLS and
//! requires the backend's SPIFFE ID; the backend sidecar forwards to the echo app.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hush_proxy::{CaConfig, InboundConfig, Protocol, ProxyConfig};
use hush_test_support::{
    CaProcess, ProxyProcess, TestCa, TestLeaf, describe_output, expired_leaf_from_ca_dir,
    http_request, leaf_from_ca_dir, run_hush, run_hush_ok, write_config,
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::mesh::apps;
use crate::mesh::promtool::assert_promtool_accepts;
use crate::mesh::sidecars::*;

// === 1. protocols through the mesh ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_reaches_the_app_with_the_callers_verified_identity() {
    let mesh = Mesh::start(MeshSpec::default()).await;
    assert_eq!(mesh.frontend.spiffe_id(), FRONTEND);
    assert_eq!(mesh.backend.spiffe_id(), BACKEND);

    // The caller tries to claim another identity; only the sidecar's verified one arrives.
    let (status, body) = get(
        mesh.to_backend(),
        "/api/orders",
        &[
            (
                "x-hush-peer-identity",
                "spiffe://cluster.local/ns/ops/sa/admin",
            ),
            (
                "x-forwarded-client-cert",
                "By=x;Hash=y;URI=spiffe://cluster.local/ns/ops/sa/admin",
            ),
            ("x-custom", "kept"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen = json(&body);
    assert_eq!(seen["path"], "/api/orders");
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(seen["host"], serde_json::json!(["backend.shop"]));
    assert_eq!(seen["custom"], serde_json::json!(["kept"]));
    assert_eq!(seen["peer_identity"], serde_json::json!([FRONTEND]));
    let xfcc = seen["xfcc"].as_array().expect("xfcc values");
    assert_eq!(xfcc.len(), 1, "exactly one XFCC header: {xfcc:?}");
    let xfcc = xfcc[0].as_str().unwrap();
    let fields: Vec<&str> = xfcc.split(';').collect();
    assert_eq!(fields.len(), 3, "{xfcc}");
    assert_eq!(fields[0], format!("By={BACKEND}"));
    let hash = fields[1].strip_prefix("Hash=").expect("Hash field");
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{xfcc}"
    );
    assert_eq!(fields[2], format!("URI={FRONTEND}"));

    // Several requests on one keep-alive connection, bodies included.
    let tcp = TcpStream::connect(mesh.to_backend()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    for i in 0..5 {
        let request = http::Request::post("/upload")
            .header("host", "backend")
            .body(http_body_util::Full::new(Bytes::from(vec![b'x'; 1000 * i])))
            .unwrap();
        within(sender.ready())
            .await
            .expect("the connection stays open");
        let response = within(sender.send_request(request)).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            json(&String::from_utf8_lossy(&body))["body_bytes"],
            1000 * i
        );
    }

    // A request head over limits.max_header_bytes (64 KiB) is refused by the sidecar.
    let mut tcp = TcpStream::connect(mesh.to_backend()).await.unwrap();
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: backend\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let _ = tcp.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = within(tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "an oversized head: {answer:?}"
    );

    let metrics = metrics_of(&mesh.backend);
    assert_eq!(
        metric(
            &metrics,
            "hush_requests_total{direction=\"inbound\",protocol=\"http1\",code=\"200\"}"
        ),
        6.0,
        "{metrics}"
    );
    // Between the sidecars, the HTTP/1.1 requests of both client connections (and both Host
    // names) shared one multiplexed HTTP/2 connection.
    assert_eq!(
        metric(
            &metrics,
            "hush_connections_total{direction=\"inbound\",protocol=\"http2\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_grpc_pass_through() {
    let mesh = Mesh::start(MeshSpec::default()).await;

    // HTTP/2 with prior knowledge, several streams on one connection.
    let tcp = TcpStream::connect(mesh.to_backend()).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let mut streams = Vec::new();
    for i in 0..10 {
        let mut sender = sender.clone();
        streams.push(tokio::spawn(async move {
            let request = http::Request::get(format!("http://backend.shop/stream/{i}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let response = within(sender.send_request(request)).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }));
    }
    for (i, stream) in streams.into_iter().enumerate() {
        let (status, body) = stream.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let seen = json(&body);
        assert_eq!(seen["version"], "HTTP/2.0");
        assert_eq!(seen["path"], format!("/stream/{i}"));
        assert_eq!(seen["peer_identity"], serde_json::json!([FRONTEND]));
    }

    // gRPC: a real tonic client and the standard health service.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.to_backend()))
        .unwrap()
        .connect()
        .await
        .expect("a gRPC channel through the mesh");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..3 {
        let reply = within(health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }))
        .await
        .expect("a gRPC answer");
        assert_eq!(
            reply.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    // An error status travels back in the trailers.
    let unknown = within(health.check(tonic_health::pb::HealthCheckRequest {
        service: "no.such.Service".into(),
    }))
    .await
    .expect_err("an unknown service is NOT_FOUND");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let metrics = metrics_of(&mesh.backend);
    assert!(
        metric(
            &metrics,
            "hush_connections_total{direction=\"inbound\",protocol=\"http2\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_passes_through_and_stays_open() {
    let mesh = Mesh::start(MeshSpec::default()).await;
    let (mut ws, response) = within(tokio_tungstenite::connect_async(format!(
        "ws://{}/ws",
        mesh.to_backend()
    )))
    .await
    .expect("a WebSocket through the mesh");
    assert_eq!(response.status(), 101);
    for i in 0..20 {
        ws.send(Message::text(format!("message {i}")))
            .await
            .unwrap();
        let echo = within(ws.next())
            .await
            .expect("an echo")
            .expect("a message");
        assert_eq!(echo.into_text().unwrap().as_str(), format!("message {i}"));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let echo = within(ws.next()).await.unwrap().unwrap();
    assert_eq!(echo.into_data().as_ref(), &[0u8, 1, 2, 255]);
    ws.close(None).await.unwrap();
}

/// An upgraded tunnel is still its connection: it holds the connection's slot while it is
/// open, and is closed after `limits.idle_timeout` without a byte, like any connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_and_holds_its_slot_until_then() {
    let mesh = Mesh::start(MeshSpec {
        sidecars: edit(|c: &mut ProxyConfig| c.limits.idle_timeout = Duration::from_secs(2)),
        ..MeshSpec::default()
    })
    .await;
    let (mut ws, _) = within(tokio_tungstenite::connect_async(format!(
        "ws://{}/ws",
        mesh.to_backend()
    )))
    .await
    .expect("a WebSocket through the mesh");
    ws.send(Message::text("hello")).await.unwrap();
    let echo = within(ws.next())
        .await
        .expect("an echo")
        .expect("a message");
    assert_eq!(echo.into_text().unwrap().as_str(), "hello");
    let open = |proxy: &ProxyProcess, direction: &str| {
        let series = format!("hush_connections_open{{direction=\"{direction}\"}}");
        tokio::task::block_in_place(|| metric(&metrics_of(proxy), &series))
    };
    assert!(
        open(&mesh.frontend, "outbound") >= 1.0,
        "the tunnel gave up its slot"
    );
    assert!(
        open(&mesh.backend, "inbound") >= 1.0,
        "the tunnel gave up its slot"
    );

    // Nothing moves: the sidecar closes the tunnel, and its slots come back.
    let end = within(ws.next()).await;
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
    tokio::task::block_in_place(|| {
        wait_until("the tunnel's slots to come back", || {
            open(&mesh.frontend, "outbound") == 0.0 && open(&mesh.backend, "inbound") == 0.0
        });
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_first_protocol_is_not_stalled_and_opaque_ports_skip_detection() {
    let greeter = apps::start_greeter().await;
    let mesh = Mesh::start(MeshSpec {
        app: Some(greeter),
        sidecars: edit(|c: &mut ProxyConfig| {
            c.limits.detect_timeout = Duration::from_millis(200);
            c.limits.idle_timeout = Duration::from_secs(2);
        }),
        more_outbound: vec![(BACKEND, Protocol::Tcp)],
        ..MeshSpec::default()
    })
    .await;

    // Through the detecting listener: the client says nothing, so detection gives up after
    // 200 ms and the greeting arrives.
    for listener in [mesh.to_backend(), mesh.frontend.outbound(1)] {
        let tcp = TcpStream::connect(listener).await.unwrap();
        let (read, mut write) = tcp.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = within(lines.next_line())
            .await
            .unwrap()
            .expect("a greeting");
        assert_eq!(greeting, apps::GREETING);
        write.write_all(b"hello\r\n").await.unwrap();
        let echo = within(lines.next_line()).await.unwrap().expect("an echo");
        assert_eq!(echo, "echo: hello");
        // Then nothing moves: the sidecar closes the idle connection.
        let end = within(lines.next_line()).await;
        assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    }
    let metrics = metrics_of(&mesh.frontend);
    assert_eq!(
        metric(
            &metrics,
            "hush_protocol_detect_timeouts_total{direction=\"outbound\"}"
        ),
        1.0,
        "only the detecting listener waited:\n{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "hush_connections_total{direction=\"outbound\",protocol=\"tcp\"}"
        ),
        2.0,
        "{metrics}"
    );
    // Between sidecars, ALPN said "TCP": the backend did not wait a second time.
    let backend = metrics_of(&mesh.backend);
    assert_eq!(
        metric(
            &backend,
            "hush_protocol_detect_timeouts_total{direction=\"inbound\"}"
        ),
        0.0,
        "{backend}"
    );
}

// === 2. refusals ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_valid_certificate_are_refused_with_the_reason() {
    let mesh = Mesh::start(MeshSpec::default()).await;
    let bundle = mesh.bundle();
    let inbound = mesh.backend.inbound();

    // (who, identity presented, the step and reason the backend must log and count)
    let foreign = TestCa::new(TRUST_DOMAIN);
    let cases: Vec<(&str, Option<TestLeaf>, &str, &str)> = vec![
        (
            "no certificate",
            None,
            "certificate chain failed",
            "no_certificate",
        ),
        (
            "a certificate from another CA",
            Some(foreign.leaf(FRONTEND)),
            "certificate chain failed",
            "unknown_issuer",
        ),
        (
            "an expired certificate from the mesh's own CA",
            Some(expired_leaf_from_ca_dir(&mesh.ca_dir, FRONTEND)),
            "validity failed",
            "expired",
        ),
        (
            "a certificate of the mesh's CA with no SPIFFE ID",
            Some(leaf_from_ca_dir(&mesh.ca_dir, None)),
            "SPIFFE ID failed",
            "not_an_svid",
        ),
        (
            "a certificate of the mesh's CA naming another trust domain",
            Some(leaf_from_ca_dir(
                &mesh.ca_dir,
                Some("spiffe://evil.example/ns/shop/sa/frontend"),
            )),
            "SPIFFE ID failed",
            "foreign_trust_domain",
        ),
    ];
    for (who, identity, words, reason) in cases {
        let series = format!(
            "hush_handshake_failures_total{{direction=\"inbound\",step=\"{}\",reason=\"{reason}\"}}",
            words.trim_end_matches(" failed")
        );
        let before = metric(&metrics_of(&mesh.backend), &series);
        let result = mtls_request(inbound, &bundle, identity).await;
        assert!(result.is_err(), "{who} was let in: {result:?}");
        // The refusal is counted once, under its step and reason.
        let backend = &mesh.backend;
        tokio::task::block_in_place(|| {
            wait_until(&format!("{who} to be counted as {reason}"), || {
                metric(&metrics_of(backend), &series) >= before + 1.0
            });
        });
        assert_eq!(metric(&metrics_of(backend), &series), before + 1.0, "{who}");
        // Everyone else is still served.
        let (status, _) = get(mesh.to_backend(), "/", &[]).await;
        assert_eq!(status, 200, "after {who}");
    }
    // And logged with the step in plain words.
    let log = mesh.backend.stderr();
    let refusals = log
        .lines()
        .filter(|l| l.contains("refused an inbound connection"))
        .count();
    assert_eq!(refusals, 5, "{log}");
    assert!(log.contains("unknown issuer"), "{log}");
    assert!(log.contains("the peer's certificate expired at"), "{log}");
    assert!(log.contains("presented no certificate"), "{log}");
    assert!(log.contains("not in trust domain cluster.local"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_upstream_identity_is_refused_for_http_and_tcp() {
    let impostor_expected = "spiffe://cluster.local/ns/shop/sa/payments";
    let mesh = Mesh::start(MeshSpec {
        more_outbound: vec![
            (impostor_expected, Protocol::Detect),
            (impostor_expected, Protocol::Tcp),
        ],
        ..MeshSpec::default()
    })
    .await;

    // HTTP: a 502 that says which identity was expected and which was presented.
    let (status, body) = get(mesh.frontend.outbound(1), "/", &[]).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(&format!(
            "SPIFFE ID failed: expected {impostor_expected}, but the peer presented {BACKEND}"
        )),
        "{body}"
    );
    mesh.frontend
        .wait_for_log(
            &["refused upstream", impostor_expected, BACKEND],
            Duration::from_secs(10),
        )
        .unwrap();

    // TCP: the connection is closed, nothing from the backend's app arrives.
    let mut tcp = TcpStream::connect(mesh.frontend.outbound(2)).await.unwrap();
    let _ = tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut received = Vec::new();
    let read = within(tcp.read_to_end(&mut received)).await;
    assert!(
        read.is_err() || received.is_empty(),
        "the app's answer leaked: {:?}",
        String::from_utf8_lossy(&received)
    );
    let metrics = metrics_of(&mesh.frontend);
    assert_eq!(
        metric(
            &metrics,
            "hush_handshake_failures_total{direction=\"outbound\",step=\"SPIFFE ID\",reason=\"unexpected_identity\"}"
        ),
        2.0,
        "{metrics}"
    );
    // The right identity still gets through.
    let (status, _) = get(mesh.to_backend(), "/", &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_plaintext_and_tls12_on_the_inbound_port_are_refused_cleanly() {
    let mesh = Mesh::start(MeshSpec {
        sidecars: edit(|c: &mut ProxyConfig| c.limits.handshake_timeout = Duration::from_secs(1)),
        ..MeshSpec::default()
    })
    .await;
    let inbound = mesh.backend.inbound();

    // A client that connects and says nothing does not keep its slot.
    let mut silent = TcpStream::connect(inbound).await.unwrap();
    let mut nothing = Vec::new();
    within(silent.read_to_end(&mut nothing))
        .await
        .expect("the sidecar closes a silent connection");
    assert!(nothing.is_empty());
    // Counted as a handshake that timed out (and logged only at debug level: scanners and
    // health checks do this all day).
    let backend = &mesh.backend;
    tokio::task::block_in_place(|| {
        wait_until("the silent client to be counted", || {
            metric(
                &metrics_of(backend),
                "hush_handshake_failures_total{direction=\"inbound\",step=\"connection\",reason=\"timeout\"}",
            ) == 1.0
        });
    });

    // Plaintext HTTP gets an answer that explains.
    let mut tcp = TcpStream::connect(inbound).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    within(tcp.read_to_string(&mut answer)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
    assert!(answer.contains("only accepts mutual TLS 1.3"), "{answer}");

    // Garbage is closed.
    let mut tcp = TcpStream::connect(inbound).await.unwrap();
    tcp.write_all(&[0x00, 0xff, 0x13, 0x37, 0x42, 0x99, 0x01, 0x02])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = within(tcp.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{rest:?}");

    // A TLS record that is not a handshake the server can parse.
    let mut tcp = TcpStream::connect(inbound).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = within(tcp.read_to_end(&mut rest)).await;

    // A client that speaks TLS 1.2 at most (openssl, as operators would try it).
    if hush_test_support::openssl_available() {
        let output = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &inbound.to_string(), "-tls1_2"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl s_client");
        assert!(!output.status.success(), "{}", describe_output(&output));
        mesh.backend
            .wait_for_log(
                &["refused an inbound connection", "TLS 1.3 only"],
                Duration::from_secs(10),
            )
            .unwrap();
    } else {
        eprintln!("skipped the TLS 1.2 client: openssl not installed");
    }

    mesh.backend
        .wait_for_log(&["plaintext HTTP"], Duration::from_secs(10))
        .unwrap();
    mesh.backend
        .wait_for_log(&["did not speak TLS"], Duration::from_secs(10))
        .unwrap();
    let metrics = metrics_of(&mesh.backend);
    for reason in ["plaintext_http", "not_tls"] {
        let series = format!(
            "hush_handshake_failures_total{{direction=\"inbound\",step=\"hello\",reason=\"{reason}\"}}"
        );
        assert!(metric(&metrics, &series) >= 1.0, "{series}\n{metrics}");
    }
    let (status, _) = get(mesh.to_backend(), "/", &[]).await;
    assert_eq!(status, 200, "the proxy keeps serving");
    assert!(!mesh.backend.stderr().contains("panicked"));
}

// === 3. identity over time ===

/// The serial of a sidecar's current certificate, from `/certs`.
fn serial_of(proxy: &ProxyProcess) -> String {
    let (status, body) = http_request(proxy.admin(), "GET", "/certs");
    assert_eq!(status, 200, "{body}");
    json(&body)["certificate"]["serial"]
        .as_str()
        .expect("a serial")
        .to_string()
}

fn renewals(proxy: &ProxyProcess, result: &str) -> f64 {
    metric(
        &metrics_of(proxy),
        &format!("hush_certificate_renewals_total{{result=\"{result}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_continuous_traffic_without_a_failed_request() {
    // One-minute certificates: each sidecar renews every 24 to 36 seconds.
    let mesh = Mesh::start(MeshSpec {
        ca_args: vec!["--max-ttl", "1m"],
        ..MeshSpec::default()
    })
    .await;
    let first_backend = serial_of(&mesh.backend);
    let first_frontend = serial_of(&mesh.frontend);

    // A WebSocket opened before any rotation must survive all of them.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", mesh.to_backend()))
        .await
        .expect("a WebSocket");

    // Traffic: new connections and keep-alive connections, all the time.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for keep_alive in [false, true] {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let addr = mesh.to_backend();
        clients.push(tokio::spawn(async move {
            let mut sender = None;
            while !stop.load(Ordering::Relaxed) {
                if sender.is_none() || !keep_alive {
                    let tcp = TcpStream::connect(addr).await.unwrap();
                    let (s, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                        .await
                        .unwrap();
                    tokio::spawn(connection);
                    sender = Some(s);
                }
                let Some(s) = sender.as_mut() else { continue };
                if s.ready().await.is_err() {
                    eprintln!("failed request: the keep-alive connection closed");
                    failed.fetch_add(1, Ordering::Relaxed);
                    sender = None;
                    continue;
                }
                let request = http::Request::get("/tick")
                    .header("host", "backend")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                match s.send_request(request).await {
                    Ok(response) if response.status() == 200 => {
                        let _ = response.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => {
                        let body = response.into_body().collect().await.map(|b| b.to_bytes());
                        eprintln!("failed request: {body:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("failed request: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    // Two renewals of the backend (the second proves itself with a renewed certificate) and
    // one of the frontend.
    let (backend, frontend) = (&mesh.backend, &mesh.frontend);
    tokio::task::block_in_place(|| {
        wait_until(
            "two renewals of the backend and one of the frontend",
            || renewals(backend, "ok") >= 3.0 && renewals(frontend, "ok") >= 2.0,
        );
    });
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    assert_ne!(serial_of(&mesh.backend), first_backend);
    assert_ne!(serial_of(&mesh.frontend), first_frontend);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during rotation"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "too little traffic to mean anything"
    );

    ws.send(Message::text("still here")).await.unwrap();
    let echo = within(ws.next()).await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "still here");

    // New connections use the renewed certificate: the backend's app sees the frontend's
    // new certificate hash.
    let (_, body) = get(mesh.to_backend(), "/", &[]).await;
    assert_eq!(json(&body)["peer_identity"], serde_json::json!([FRONTEND]));
    let log = mesh.backend.stderr();
    assert!(log.contains("renewed the workload certificate"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_keeps_serving_while_the_ca_is_down() {
    let mut mesh = Mesh::start(MeshSpec {
        ca_args: vec!["--max-ttl", "1m"],
        ..MeshSpec::default()
    })
    .await;
    let ca_listen = mesh.ca.url().trim_start_matches("https://").to_string();
    let status = mesh.ca.terminate();
    assert!(status.success());

    // Renewal attempts fail while the CA is away; traffic and readiness do not.
    let (backend, frontend) = (&mesh.backend, &mesh.frontend);
    tokio::task::block_in_place(|| {
        wait_until("a failed renewal", || renewals(backend, "error") >= 1.0);
    });
    for _ in 0..10 {
        let (status, body) = get(mesh.to_backend(), "/", &[]).await;
        assert_eq!(status, 200, "{body}");
    }
    let (ready, why) = http_request(backend.admin(), "GET", "/ready");
    assert_eq!(ready, 200, "{why}");
    mesh.backend
        .wait_for_log(
            &[
                "cannot renew the workload certificate; still serving with the current one",
                "which expires in",
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    let (_, certs) = http_request(backend.admin(), "GET", "/certs");
    assert!(
        json(&certs)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("renewal")),
        "{certs}"
    );

    // The CA comes back where it was; renewals succeed again, without a token.
    let restarted = CaProcess::start_on(HUSH, &mesh.ca_dir, &ca_listen, &["--max-ttl", "1m"]);
    let ok_before = renewals(backend, "ok");
    tokio::task::block_in_place(|| {
        wait_until("a renewal after the CA is back", || {
            renewals(backend, "ok") > ok_before && renewals(frontend, "ok") >= 2.0
        });
    });
    let (status, _) = get(mesh.to_backend(), "/", &[]).await;
    assert_eq!(status, 200);
    drop(restarted);
}

#[test]
fn a_sidecar_waits_for_the_ca_and_is_not_ready_until_then() {
    let (temp, ca_dir) = new_ca();
    // A free port for the CA, which starts only later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = sidecar_config(
        temp.path(),
        "backend",
        &format!("https://127.0.0.1:{port}"),
        &ca_dir,
        BACKEND,
        |c| {
            c.inbound = Some(InboundConfig::new(
                loopback(),
                "127.0.0.1:9".parse().unwrap(),
            ))
        },
    );
    let mut proxy =
        hush_test_support::HushProcess::spawn(HUSH, &["proxy", "--config", path_str(&config)]);
    let admin_line = proxy
        .wait_for_line(
            |l| l.starts_with("hush proxy: admin"),
            Duration::from_secs(30),
        )
        .unwrap();
    let admin: SocketAddr = admin_line
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let (live, _) = http_request(admin, "GET", "/live");
    assert_eq!(live, 200);
    let (ready, why) = http_request(admin, "GET", "/ready");
    assert_eq!(ready, 503);
    assert!(why.contains("waiting for the CA"), "{why}");

    // It says why, and keeps trying.
    wait_until("a failed attempt in the log", || {
        proxy
            .stderr()
            .contains(&format!("cannot reach the CA at https://127.0.0.1:{port}"))
    });
    let (ready, why) = http_request(admin, "GET", "/ready");
    assert_eq!(ready, 503);
    assert!(why.contains("cannot reach the CA"), "{why}");

    let _ca = CaProcess::start_on(HUSH, &ca_dir, &format!("127.0.0.1:{port}"), &[]);
    proxy
        .wait_for_line(|l| l.starts_with(ProxyProcess::READY_PREFIX), PATIENCE)
        .unwrap();
    let (ready, why) = http_request(admin, "GET", "/ready");
    assert_eq!(ready, 200, "{why}");
    assert!(why.contains(BACKEND), "{why}");
}

// === 3b. revocation and re-attestation ===

/// `hush ca revoke-identity --dir DIR ARGS…`; returns what it printed on stderr.
#[track_caller]
fn revoke_identity(ca_dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["ca", "revoke-identity", "--dir", path_str(ca_dir)];
    all.extend_from_slice(args);
    let out = run_hush(HUSH, &all);
    assert!(
        out.status.success(),
        "hush ca revoke-identity {args:?} failed:\n{}",
        describe_output(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One HTTP/1.1 request over `listener`, an opaque TCP outbound listener: a new mutual-TLS
/// connection to the peer sidecar each time. The response's first line, or why there is none.
async fn call_over_new_connection(listener: SocketAddr) -> Result<String, String> {
    let exchange = async {
        let mut tcp = TcpStream::connect(listener)
            .await
            .map_err(|e| e.to_string())?;
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        let _ = tcp.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response);
        match text.lines().next() {
            Some(line) if !line.is_empty() => Ok(line.to_string()),
            _ => Err("the connection closed without an answer".to_string()),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".to_string()))
}

/// Calls through `listener` until the answer is (`ok`) or is not (`!ok`) a 200.
async fn wait_for_calls(what: &str, listener: SocketAddr, ok: bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let answer = call_over_new_connection(listener).await;
        let passed = answer.as_deref().is_ok_and(|line| line.contains(" 200 "));
        if passed == ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}; last answer: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a sidecar's `/certs` says of its last failed attempt.
fn last_error(proxy: &ProxyProcess) -> Option<String> {
    let (_, body) = http_request(proxy.admin(), "GET", "/certs");
    json(&body)["last_error"].as_str().map(str::to_owned)
}

fn audit_of(ca_dir: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(ca_dir.join("audit.log"))
        .expect("the audit log")
        .lines()
        .map(json)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_identity_is_refused_by_the_ca_and_the_inbound_sidecar() {
    let mesh = Mesh::start(MeshSpec {
        ca_args: vec!["--reload-interval", "1s"],
        sidecars: edit(|c: &mut ProxyConfig| c.ca.bundle_refresh = Duration::from_secs(1)),
        more_outbound: vec![(BACKEND, Protocol::Tcp)],
        ..MeshSpec::default()
    })
    .await;
    let through = mesh.frontend.outbound(1);
    let revoked = "hush_handshake_failures_total{direction=\"inbound\",step=\"certificate \
                   chain\",reason=\"revoked\"}";
    assert_eq!(
        call_over_new_connection(through).await.as_deref(),
        Ok("HTTP/1.1 200 OK")
    );
    assert_eq!(metric(&metrics_of(&mesh.backend), revoked), 0.0);

    // 1. By SPIFFE ID: within a reload and a bundle refresh, the backend refuses new
    // connections from the frontend, and says why.
    let words = revoke_identity(
        &mesh.ca_dir,
        &[
            "--spiffe-id",
            FRONTEND,
            "--reason",
            "e2e: frontend compromised",
        ],
    );
    assert!(words.contains(&format!("revoked {FRONTEND}")), "{words}");
    wait_for_calls("the backend to refuse the frontend", through, false).await;
    let backend = &mesh.backend;
    tokio::task::block_in_place(|| {
        wait_until("a refusal counted as revoked", || {
            metric(&metrics_of(backend), revoked) >= 1.0
        });
    });
    backend
        .wait_for_log(
            &[
                "refused an inbound connection",
                "is revoked for certificates issued before",
            ],
            Duration::from_secs(10),
        )
        .unwrap();
    // The CA refuses the identity: with a new token…
    let client =
        hush_ca_client::CaClient::new(mesh.ca.url(), mesh.bundle().roots()).expect("a CA client");
    let token = hush_test_support::mint_token(HUSH, &mesh.ca_dir, FRONTEND, &[]);
    let refused = within(client.certify(
        &token,
        hush_test_support::plain_csr(hush_test_support::CsrKeyKind::EcdsaP256).der,
        None,
    ))
    .await
    .map(|issued| issued.serial)
    .expect_err("a revoked identity is not issued for");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().starts_with(&format!(
            "{FRONTEND} is revoked (hush ca revoke-identity on "
        )) && refused.message().contains("e2e: frontend compromised"),
        "{}",
        refused.message()
    );
    // …and the frontend's own renewal with its certificate: it renews at once on seeing its
    // certificate on the deny-list, and is told why.
    let frontend = &mesh.frontend;
    tokio::task::block_in_place(|| {
        wait_until("the frontend's renewal to be refused", || {
            last_error(frontend).is_some_and(|e| {
                e.contains("PermissionDenied") && e.contains("is revoked (hush ca revoke-identity")
            })
        });
    });
    assert_eq!(
        metric(
            &metrics_of(frontend),
            "hush_certificate_forced_renewals_total{reason=\"revoked\"}"
        ),
        1.0
    );

    // 2. Lifted, the identity attests again with a new token; the certificate it gets is
    // accepted, though issued seconds after the revocation (no back-dating past it).
    revoke_identity(&mesh.ca_dir, &["--spiffe-id", FRONTEND, "--lift"]);
    let token = hush_test_support::mint_token(HUSH, &mesh.ca_dir, FRONTEND, &[]);
    let token_id = token
        .split('.')
        .nth(1)
        .expect("hushjt.<id>.<secret>")
        .to_owned();
    fs::write(
        mesh.temp.path().join("frontend/token"),
        format!("{token}\n"),
    )
    .unwrap();
    wait_for_calls("the frontend to be accepted again", through, true).await;

    // 3. By the join token it attested with: refused again, and the CA refuses to renew.
    let before = metric(&metrics_of(backend), revoked);
    revoke_identity(&mesh.ca_dir, &["--join-token", &token_id]);
    wait_for_calls("the backend to refuse the frontend again", through, false).await;
    tokio::task::block_in_place(|| {
        wait_until("another refusal counted as revoked", || {
            metric(&metrics_of(backend), revoked) > before
        });
        wait_until("the frontend's renewal to be refused for its token", || {
            last_error(frontend).is_some_and(|e| {
                e.contains(&format!("join token {token_id}")) && e.contains("is revoked")
            })
        });
    });

    let audit = audit_of(&mesh.ca_dir);
    let events: Vec<&str> = audit.iter().filter_map(|l| l["event"].as_str()).collect();
    for event in [
        "identity_revoked",
        "identity_revocation_lifted",
        "revocations_loaded",
    ] {
        assert!(events.contains(&event), "no {event} in {events:?}");
    }
    let revocation = audit
        .iter()
        .find(|l| l["event"] == "identity_revoked")
        .unwrap();
    assert_eq!(revocation["spiffe_id"], FRONTEND);
    assert_eq!(revocation["reason"], "e2e: frontend compromised");
    assert!(
        revocation["actor"]
            .as_str()
            .is_some_and(|a| a.contains('@'))
    );
    assert!(
        audit.iter().any(|l| l["event"] == "refused"
            && l["code"] == "PermissionDenied"
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("is revoked"))),
        "no refusal for revocation in the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_past_the_reattestation_limit_need_the_token() {
    // One-minute certificates renewed at about half-life, attestations good for 5 s.
    let mesh = Mesh::start(MeshSpec {
        ca_args: vec!["--reattest-after", "5s", "--max-ttl", "1m"],
        ..MeshSpec::default()
    })
    .await;
    let first = serial_of(&mesh.backend);
    // The backend's single-use join token is spent; its file is emptied.
    let token_file = mesh.temp.path().join("backend/token");
    fs::write(&token_file, "").unwrap();

    // At half-life the CA refuses the renewal with the certificate and asks for the token,
    // which is not there: the sidecar says what to do, and keeps serving.
    let backend = &mesh.backend;
    let error = tokio::task::block_in_place(|| {
        let mut error = None;
        wait_until("a renewal refused for its old attestation", || {
            error = last_error(backend).filter(|e| e.contains("present the token again"));
            error.is_some()
        });
        error.unwrap()
    });
    assert!(
        error.contains(&format!("{BACKEND} was last attested "))
            && error.contains("more than this CA's --reattest-after 5s")
            && error.contains("ca.token_file")
            && error.contains("is empty"),
        "{error}"
    );
    assert_eq!(serial_of(backend), first);
    let (status, body) = get(mesh.to_backend(), "/", &[]).await;
    assert_eq!(status, 200, "{body}");

    // A new token: the next retry attests with it, and the line starts again.
    let token = hush_test_support::mint_token(HUSH, &mesh.ca_dir, BACKEND, &[]);
    fs::write(&token_file, format!("{token}\n")).unwrap();
    tokio::task::block_in_place(|| {
        wait_until("a certificate from the new token", || {
            serial_of(backend) != first && last_error(backend).is_none()
        });
    });
    let audit = audit_of(&mesh.ca_dir);
    let refusal = audit
        .iter()
        .find(|l| {
            l["event"] == "refused"
                && l["spiffe_id"] == BACKEND
                && l["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("--reattest-after 5s"))
        })
        .expect("the refusal is audited");
    assert_eq!(refusal["code"], "Unauthenticated");
    assert_eq!(refusal["attestation"], "x509_svid");
    assert!(refusal["renewed_from"].is_string(), "{refusal}");
    assert!(refusal["attested_at"].is_string(), "{refusal}");
    let reattested = audit
        .iter()
        .rev()
        .find(|l| l["event"] == "issued" && l["spiffe_id"] == BACKEND)
        .expect("an issuance");
    assert_eq!(reattested["attestation"], "join_token");
    assert_eq!(
        reattested["origin_serial"], reattested["serial"],
        "a token starts a new line: {reattested}"
    );
}

// === 4. operations ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_reports_and_shuts_down() {
    let mut mesh = Mesh::start(MeshSpec::default()).await;
    let admin = mesh.backend.admin();
    let (status, body) = http_request(admin, "GET", "/live");
    assert_eq!((status, body.as_str()), (200, "live\n"));
    let (status, body) = http_request(admin, "GET", "/ready");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with(&format!("ready: {BACKEND}")), "{body}");

    let (_, _) = get(mesh.to_backend(), "/", &[]).await;
    let metrics = metrics_of(&mesh.backend);
    for family in [
        "hush_connections_total",
        "hush_connections_open",
        "hush_requests_total",
        "hush_handshakes_total",
        "hush_bytes_total",
        "hush_certificate_expiry_timestamp_seconds",
        "hush_certificate_renewals_total",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    let expiry = metric(&metrics, "hush_certificate_expiry_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now + 3600.0, "{expiry}");

    let (status, body) = http_request(admin, "GET", "/certs");
    assert_eq!(status, 200);
    let certs = json(&body);
    assert_eq!(certs["ready"], true);
    assert_eq!(certs["spiffe_id"], BACKEND);
    assert_eq!(certs["certificate"]["chain"][0]["uri_sans"][0], BACKEND);
    assert_eq!(certs["trust_bundle"]["trust_domain"], TRUST_DOMAIN);

    let (status, _) = http_request(admin, "GET", "/nowhere");
    assert_eq!(status, 404);
    let (status, _) = http_request(admin, "GET", "/shutdown");
    assert_eq!(status, 405);

    // POST /shutdown drains and exits 0, as a Job's sidecar must.
    let (status, body) = http_request(mesh.frontend.admin(), "POST", "/shutdown");
    assert_eq!(status, 200, "{body}");
    let exit = mesh
        .frontend
        .process()
        .wait_exit(Duration::from_secs(15))
        .expect("the frontend exits after POST /shutdown");
    assert!(exit.success(), "{exit}");
    assert!(TcpStream::connect(mesh.to_backend()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_come_as_json_and_the_filter_changes_at_run_time() {
    let lone = LoneBackend::start(&[("HUSH_LOG_FORMAT", "json")]).await;
    let backend = &lone.sidecar;
    let admin = backend.admin();

    let (status, body) = http_request(admin, "GET", "/logging");
    assert_eq!((status, body.as_str()), (200, "info\n"));
    let (status, body) = http_request(admin, "POST", "/logging?filter=hush_proxy%3Ddebug%2Cinfo");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "log filter: hush_proxy=debug,info (was info)\n");
    // A filter that does not parse changes nothing.
    let (status, body) = http_request(admin, "POST", "/logging?filter=hush_proxy%3Dloud");
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("refused, hush_proxy=debug,info stays"),
        "{body}"
    );
    let (status, _) = http_request(admin, "POST", "/logging");
    assert_eq!(status, 400);
    let (status, body) = http_request(admin, "GET", "/logging");
    assert_eq!((status, body.as_str()), (200, "hush_proxy=debug,info\n"));

    backend
        .wait_for_log(
            &["log filter changed on the admin port"],
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let logs = backend.stderr();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let changed = lines
        .iter()
        .find(|l| l["message"] == "log filter changed on the admin port")
        .expect("the change is logged");
    assert_eq!(changed["level"], "INFO");
    assert_eq!(changed["from"], "info");
    assert_eq!(changed["to"], "hush_proxy=debug,info");
    assert!(changed["timestamp"].is_string());
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "obtained the workload certificate"
                && l["spiffe_id"] == BACKEND),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_speak_openmetrics_to_those_who_ask() {
    let mesh = Mesh::start(MeshSpec {
        backend_policy: Some(
            "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: api}\n\
             spec:\n  action: ALLOW\n  rules:\n    - to: [{paths: [\"/api/*\"]}]\n"
                .to_string(),
        ),
        ..MeshSpec::default()
    })
    .await;
    // Traffic that touches most families: requests, a denial, a refused handshake.
    let (status, _) = get(mesh.to_backend(), "/api/x", &[]).await;
    assert_eq!(status, 200);
    let (status, _) = get(mesh.to_backend(), "/admin", &[]).await;
    assert_eq!(status, 403);
    let mut plain = TcpStream::connect(mesh.backend.inbound()).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer).await;

    let text = metrics_of(&mesh.backend);
    assert!(
        text.contains("# TYPE hush_requests_total counter"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");
    assert!(text.contains("hush_policy_decisions_total{"), "{text}");

    // Prometheus itself asks for OpenMetrics.
    let admin = mesh.backend.admin();
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    tcp.write_all(
        b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n",
    )
    .await
    .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(
        response.contains("content-type: application/openmetrics-text"),
        "{response}"
    );
    assert!(
        response.contains("# TYPE hush_requests counter"),
        "{response}"
    );
    assert!(response.trim_end().ends_with("# EOF"), "{response}");

    assert_promtool_accepts(&text, mesh.temp.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let mut mesh = Mesh::start(MeshSpec {
        sidecars: edit(|c: &mut ProxyConfig| c.shutdown_grace = Duration::from_secs(10)),
        ..MeshSpec::default()
    })
    .await;
    let slow = tokio::spawn({
        let addr = mesh.to_backend();
        async move { get(addr, "/slow?ms=1500", &[]).await }
    });
    // The request is in flight at the app when the backend is told to stop.
    tokio::task::block_in_place(|| {
        wait_until("the slow request to reach the app", || {
            apps::slow_requests_started(mesh.app) > 0
        });
    });
    mesh.backend.process().send_sigterm();
    mesh.backend
        .wait_for_log(&["draining"], Duration::from_secs(10))
        .unwrap();
    let refused = TcpStream::connect(mesh.backend.inbound()).await;
    assert!(
        refused.is_err(),
        "the inbound listener is closed while draining"
    );

    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let exit = mesh
        .backend
        .process()
        .wait_exit(Duration::from_secs(15))
        .expect("the backend exits once drained");
    assert!(exit.success(), "{exit}");
    let _ = &mesh.temp;
}

#[test]
fn bad_configuration_is_refused_with_the_field_named() {
    let (temp, ca_dir) = new_ca();
    let bundle = ca_dir.join("bundle.pem");
    let cases: &[(&str, &[&str])] = &[
        (
            "inbound:\n  listen: 127.0.0.1:0\n  app: 127.0.0.1:9\n  protocl: tcp\n",
            &["unknown field", "protocl"],
        ),
        (
            "outbound:\n  - listen: 127.0.0.1:0\n    upstream: 127.0.0.1:1\n    identity: not-a-spiffe-id\n",
            &["not-a-spiffe-id"],
        ),
        ("inbound: [", &["sidecar.yaml"]),
        (
            "outbound:\n  - listen: 127.0.0.1:0\n    upstream: 127.0.0.1:1\n    identity: spiffe://cluster.local/x\npolicy:\n  path: policy.yaml\n",
            &["policy: policy decides who may call the app on the inbound listener"],
        ),
        (
            "inbound:\n  listen: 127.0.0.1:0\n  app: 127.0.0.1:9\npolicy:\n  path: no-such-policy\n",
            &["the policy at", "no-such-policy: cannot read"],
        ),
        (
            "inbound:\n  listen: 127.0.0.1:0\n  app: 127.0.0.1:9\npolicy:\n  path: broken-policy.yaml\n  default: maybe\n",
            &["unknown variant `maybe`"],
        ),
        (
            "inbound:\n  listen: 127.0.0.1:0\n  app: 127.0.0.1:9\npolicy:\n  path: broken-policy.yaml\n",
            &[
                "the policy at",
                "broken-policy.yaml:4:9: metadata.name \"Bad_Name\"",
            ],
        ),
    ];
    fs::write(
        temp.path().join("broken-policy.yaml"),
        "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: Bad_Name\nspec: {}\n",
    )
    .unwrap();
    for (body, words) in cases {
        let config = temp.path().join("sidecar.yaml");
        fs::write(
            &config,
            format!(
                "ca:\n  address: https://127.0.0.1:1\n  trust_bundle: {}\n  token_file: token\n{body}",
                bundle.display()
            ),
        )
        .unwrap();
        let output = run_hush(HUSH, &["proxy", "--config", path_str(&config)]);
        assert!(
            !output.status.success(),
            "{body}\n{}",
            describe_output(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        for word in *words {
            assert!(
                stderr.contains(word),
                "{body}\n=> {stderr}\n(missing {word:?})"
            );
        }
    }

    let good = temp.path().join("good.yaml");
    let mut config = ProxyConfig::new(CaConfig::new("https://127.0.0.1:1", &bundle, "token"));
    config.inbound = Some(InboundConfig::new(
        loopback(),
        "127.0.0.1:9".parse().unwrap(),
    ));
    write_config(&good, &config);
    let stdout = run_hush_ok(HUSH, &["proxy", "--config", path_str(&good), "--check"]);
    assert!(stdout.contains("the configuration is valid"), "{stdout}");
}

// === 5. the README's run command ===

#[test]
fn hush_up_starts_a_mesh_and_makes_a_call_through_it() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("up");
    let output = run_hush(HUSH, &["up", "--once", "--dir", path_str(&dir)]);
    assert!(output.status.success(), "{}", describe_output(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "a mesh of 3 services on loopback, trust domain cluster.local",
        "spiffe://cluster.local/ns/shop/sa/frontend",
        "spiffe://cluster.local/ns/shop/sa/inventory",
        "One call through the mesh: frontend → backend",
        "200 OK, and backend's app answered",
        "x-hush-peer-identity: spiffe://cluster.local/ns/shop/sa/frontend",
        "x-forwarded-client-cert: By=spiffe://cluster.local/ns/shop/sa/backend;Hash=",
        "400 Bad Request",
        "key exchange X25519MLKEM768",
        "presented none (alert CertificateRequired)",
        "SPIFFE ID failed: expected spiffe://cluster.local/ns/shop/sa/frontend, but the peer presented spiffe://cluster.local/ns/shop/sa/backend",
        "GET http://127.0.0.1:",
        "403 Forbidden: hush: denied: no ALLOW rule matched (policies: backend-api)",
    ] {
        assert!(stdout.contains(needle), "expected {needle:?} in:\n{stdout}");
    }
    // Every sidecar's identity came from the CA, which audited it.
    let audit = fs::read_to_string(dir.join("ca").join("audit.log")).unwrap();
    let issued = audit.lines().filter(|l| l.contains("\"issued\"")).count();
    assert_eq!(issued, 3, "{audit}");

    // A second run reuses the CA; a broken mesh file is refused with its field named.
    let again = run_hush(HUSH, &["up", "--once", "--dir", path_str(&dir)]);
    assert!(again.status.success(), "{}", describe_output(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("(reused;"));
    let bad = temp.path().join("mesh.yaml");
    fs::write(&bad, "services:\n  - name: a\n    calls: [nobody]\n").unwrap();
    let output = run_hush(HUSH, &["up", "--once", path_str(&bad)]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("services[0].calls: \"nobody\" is not a service of this mesh"),
        "{stderr}"
    );
}

#[test]
fn the_example_configurations_are_valid() {
    // As in the README's walk-through: the examples sit next to the bundle of a real CA.
    let (temp, ca_dir) = new_ca();
    let bundle = run_hush_ok(HUSH, &["ca", "bundle", "--dir", path_str(&ca_dir)]);
    fs::write(temp.path().join("bundle.pem"), bundle).unwrap();
    // The reference configuration's policy directory: the example policies.
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy");
    fs::create_dir(temp.path().join("policy")).unwrap();
    for entry in fs::read_dir(&policies).expect("examples/policy") {
        let path = entry.unwrap().path();
        fs::copy(
            &path,
            temp.path().join("policy").join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/proxy");
    let mut checked = 0;
    for entry in fs::read_dir(&examples).expect("examples/proxy") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let copy = temp.path().join(path.file_name().unwrap());
            fs::copy(&path, &copy).unwrap();
            let output = run_hush(HUSH, &["proxy", "--check", "--config", path_str(&copy)]);
            assert!(
                output.status.success(),
                "{}\n{}",
                path.display(),
                describe_output(&output)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "no examples found in {}", examples.display());
}
