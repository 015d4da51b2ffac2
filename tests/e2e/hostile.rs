//! Hostile inputs against real processes: a compromised app in a meshed pod (any bytes, any
//! timing, any header spelling), a hostile peer holding a valid mesh certificate, and an
//! outsider. Every case asserts the precise refusal, that nothing forged reached the app, and
//! that the sidecar still serves everyone else afterwards.
//!
//! The apps behind the backend sidecar are written by others and report what they parsed
//! (`mesh::judges`): Python's lenient `http.server` and, where installed, Node's `http`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hush_proxy::{InboundConfig, Protocol};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::mesh::apps;
use crate::mesh::hostile::*;
use crate::mesh::judges::Judge;
use crate::mesh::sidecars::*;

/// One hostile input sent raw to the frontend's outbound listener: its name, its bytes, and
/// the start of the answer it must get (`""`: the sidecar closes without one).
struct Case {
    name: &'static str,
    bytes: String,
    answer: &'static str,
}

/// Sends each case on a connection of its own, checks the answer, then that no judge was told
/// a forged identity and that the mesh still serves.
async fn run_cases(mesh: &Mesh, judges: &[&Judge], cases: &[Case]) {
    for case in cases {
        let answer = send_raw(mesh.to_backend(), &[case.bytes.as_bytes()], Duration::ZERO).await;
        let first = answer.lines().next().unwrap_or("");
        assert!(
            first.starts_with(case.answer) && (case.answer.is_empty() == first.is_empty()),
            "{}: answered {first:?}, expected {:?}\n{answer}",
            case.name,
            case.answer
        );
        for judge in judges {
            assert_nothing_forged(judge, FRONTEND, case.name);
        }
    }
    assert_still_serving(mesh, judges[0]).await;
}

/// Requests an HTTP/1 server accepts but a strict request-line check would not, sent by the
/// frontend's app to its outbound listener: served as HTTP (and the identity is the sidecar's)
/// or refused by the sidecar's parser, never relayed as opaque bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_http1_from_the_caller_never_carries_a_forged_identity() {
    let judge = Judge::python();
    let mesh = mesh_in_front_of(&judge, MeshSpec::default()).await;
    let forged = format!("x-hush-peer-identity: {FORGED}");
    let cases = [
        Case {
            name: "bare LF line endings",
            bytes: format!("GET /lf HTTP/1.1\nHost: b\n{forged}\n\n"),
            answer: "HTTP/1.1 200 ",
        },
        Case {
            name: "leading CRLFs",
            bytes: format!("\r\n\r\nGET /lead HTTP/1.1\r\nHost: b\r\n{forged}\r\n\r\n"),
            answer: "HTTP/1.1 200 ",
        },
        Case {
            name: "a lower-case method",
            bytes: format!("get /lower HTTP/1.1\r\nHost: b\r\n{forged}\r\n\r\n"),
            answer: "HTTP/1.1 200 ",
        },
        Case {
            name: "tabs between the parts of the request line",
            bytes: format!("GET\t/tabs\tHTTP/1.1\r\nHost: b\r\n{forged}\r\n\r\n"),
            answer: "HTTP/1.1 400 ",
        },
        Case {
            name: "two spaces after the method",
            bytes: format!("GET  /spaces HTTP/1.1\r\nHost: b\r\n{forged}\r\n\r\n"),
            answer: "HTTP/1.1 400 ",
        },
        Case {
            name: "a leading space",
            bytes: format!(" GET /space HTTP/1.1\r\nHost: b\r\n{forged}\r\n\r\n"),
            answer: "HTTP/1.1 400 ",
        },
        Case {
            name: "a form feed between the parts",
            bytes: format!("GET\x0c/ff\x0cHTTP/1.1\r\nHost: b\r\n{forged}\r\n\r\n"),
            answer: "HTTP/1.1 400 ",
        },
        Case {
            name: "a lower-case version",
            bytes: format!("GET /v http/1.1\r\nHost: b\r\n{forged}\r\n\r\n"),
            answer: "HTTP/1.1 400 ",
        },
        Case {
            name: "HTTP/1.0",
            bytes: format!("GET /old HTTP/1.0\r\nHost: b\r\n{forged}\r\n\r\n"),
            answer: "HTTP/1.0 200 ",
        },
    ];
    run_cases(&mesh, &[&judge], &cases).await;
    // Each case the sidecar's parser took reached the app, as HTTP.
    assert_eq!(judge.count(), 4 + 1, "{:?}", judge.seen());
}

/// Request smuggling shapes: framing a front-end and a back-end could read differently, and
/// header lines a lenient parser would join. Judged by two parsers (Python's and Node's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_never_carry_a_forged_identity() {
    let python = Judge::python();
    let node = Judge::node();
    let mut judges = vec![&python];
    judges.extend(node.as_ref());
    for judge in judges {
        let mesh = mesh_in_front_of(judge, MeshSpec::default()).await;
        let smuggled =
            format!("GET /smuggled HTTP/1.1\r\nHost: b\r\nx-hush-peer-identity: {FORGED}\r\n\r\n");
        let cases = [
            Case {
                name: "Content-Length and Transfer-Encoding",
                bytes: format!(
                    "POST /cl-te HTTP/1.1\r\nHost: b\r\nContent-Length: 6\r\n\
                     Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
                ),
                answer: "HTTP/1.1 200 ",
            },
            Case {
                name: "Transfer-Encoding then Content-Length",
                bytes: "POST /te-cl HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\
                        Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"
                    .into(),
                answer: "HTTP/1.1 200 ",
            },
            Case {
                name: "two different Content-Lengths",
                bytes: format!(
                    "POST /cl-cl HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\
                     Content-Length: {}\r\n\r\n{smuggled}",
                    smuggled.len()
                ),
                answer: "HTTP/1.1 400 ",
            },
            Case {
                name: "Transfer-Encoding: chunked, identity",
                bytes: format!(
                    "POST /te-list HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked, identity\r\n\
                     \r\n0\r\n\r\n{smuggled}"
                ),
                answer: "HTTP/1.1 400 ",
            },
            Case {
                name: "Transfer-Encoding: xchunked",
                bytes:
                    "POST /te-x HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
                        .into(),
                answer: "HTTP/1.1 400 ",
            },
            Case {
                name: "a space before the colon",
                bytes: format!(
                    "GET /colon HTTP/1.1\r\nHost: b\r\nx-hush-peer-identity : {FORGED}\r\n\r\n"
                ),
                answer: "HTTP/1.1 400 ",
            },
            Case {
                name: "an obs-fold continuation line",
                bytes: format!(
                    "GET /fold HTTP/1.1\r\nHost: b\r\nX-A: a\r\n x-hush-peer-identity: {FORGED}\r\n\r\n"
                ),
                answer: "HTTP/1.1 400 ",
            },
            Case {
                name: "a NUL in a header value",
                bytes: format!("GET /nul HTTP/1.1\r\nHost: b\r\nX-A: a\0{FORGED}\r\n\r\n"),
                answer: "HTTP/1.1 400 ",
            },
            Case {
                name: "a forged identity in the trailers of a chunked body",
                bytes: format!(
                    "POST /trailers HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\
                     Trailer: x-hush-peer-identity\r\n\r\n4\r\nbody\r\n0\r\n\
                     x-hush-peer-identity: {FORGED}\r\nX_Hush_Peer_Identity: {FORGED}\r\n\r\n"
                ),
                answer: "HTTP/1.1 200 ",
            },
            Case {
                name: "a second request pipelined behind the first",
                bytes: format!("GET /first HTTP/1.1\r\nHost: b\r\n\r\n{smuggled}"),
                answer: "HTTP/1.1 200 ",
            },
            Case {
                name: "an HTTP/2 upgrade (h2c) offer",
                bytes: format!(
                    "GET /h2c HTTP/1.1\r\nHost: b\r\nConnection: Upgrade, HTTP2-Settings\r\n\
                     Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\
                     x-hush-peer-identity: {FORGED}\r\n\r\n"
                ),
                answer: "HTTP/1.1 200 ",
            },
            Case {
                name: "the identity header named hop-by-hop",
                bytes: format!(
                    "GET /hop HTTP/1.1\r\nHost: b\r\nConnection: x-hush-peer-identity, \
                     x-forwarded-client-cert\r\nx-hush-peer-identity: {FORGED}\r\n\r\n"
                ),
                answer: "HTTP/1.1 200 ",
            },
        ];
        run_cases(&mesh, &[judge], &cases).await;
        // No upgrade offer other than WebSocket reaches an app.
        for request in judge.seen() {
            assert!(
                Judge::values_of(&request, "upgrade").is_empty()
                    && Judge::values_of(&request, "http2-settings").is_empty(),
                "{request}"
            );
        }
        let trailers = judge
            .seen()
            .into_iter()
            .find(|r| r["path"] == "/trailers")
            .expect("the chunked request reached the app");
        // (Python's http.server does not read chunked bodies.)
        if judge.name == "node" {
            assert_eq!(trailers["body"], "body", "{trailers}");
        }
    }
}

/// The identity headers in every case and spelling an app server might read as them, and a
/// header the configuration protects: only the sidecar's values arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_in_every_spelling_are_replaced() {
    let judge = Judge::python();
    let mesh = mesh_in_front_of(
        &judge,
        MeshSpec {
            backend_inbound: edit(|i: &mut InboundConfig| {
                i.protected_headers = vec!["X-Auth-User".into()];
            }),
            ..MeshSpec::default()
        },
    )
    .await;
    let spellings = [
        "x-hush-peer-identity",
        "X-Hush-Peer-Identity",
        "X-HUSH-PEER-IDENTITY",
        "x_hush_peer_identity",
        "x.hush.peer.identity",
        "X-Forwarded-Client-Cert",
        "x_forwarded_client_cert",
        "x-auth-user",
        "X_AUTH_USER",
    ];
    let mut request = String::from("GET /spellings HTTP/1.1\r\nHost: b\r\n");
    for name in spellings {
        request.push_str(&format!("{name}: {FORGED}\r\n"));
        request.push_str(&format!("{name}: By=x;Hash=y;URI={FORGED}\r\n"));
    }
    request.push_str("\r\n");
    let cases = [Case {
        name: "every spelling, twice each",
        bytes: request,
        answer: "HTTP/1.1 200 ",
    }];
    run_cases(&mesh, &[&judge], &cases).await;
    let seen = judge
        .seen()
        .into_iter()
        .find(|r| r["path"] == "/spellings")
        .expect("the request reached the app");
    assert!(
        Judge::values_of(&seen, "x-auth-user").is_empty(),
        "a protected header reached the app: {seen}"
    );
    assert!(!seen.to_string().contains(FORGED), "{seen}");
}

/// A request names its host once: a policy that judges one host while the app serves
/// another would be a way around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_names_one_host() {
    let judge = Judge::python();
    let mesh = mesh_in_front_of(&judge, MeshSpec::default()).await;
    let cases = [
        Case {
            name: "two Host headers",
            bytes: "GET /hosts HTTP/1.1\r\nHost: public\r\nHost: admin\r\n\r\n".into(),
            answer: "HTTP/1.1 400 ",
        },
        Case {
            // Through the outbound listener the target's authority names the hop; the app
            // gets the Host header alone.
            name: "an absolute target and another Host",
            bytes: "GET http://admin/abs HTTP/1.1\r\nHost: public\r\n\r\n".into(),
            answer: "HTTP/1.1 200 ",
        },
    ];
    run_cases(&mesh, &[&judge], &cases).await;

    // A peer's HTTP/1.1 request cannot claim to be one a sidecar carried for an HTTP/1.1
    // caller (the only kind allowed a target and a Host that differ): the marker is HTTP/2's.
    let mut tls = hostile_peer(&mesh, FRONTEND, b"http/1.1").await;
    let marked =
        "GET http://admin/marked HTTP/1.1\r\nHost: public\r\nhush-orig-proto: HTTP/1.1\r\n\r\n";
    let answer = exchange_raw(&mut tls, &[marked.as_bytes()], Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("names two hosts"), "{answer}");

    let seen = judge.seen();
    assert!(seen.iter().all(|r| r["path"] != "/hosts"), "{seen:?}");
    assert!(seen.iter().all(|r| r["path"] != "/marked"), "{seen:?}");
    let absolute = seen
        .iter()
        .find(|r| r["path"] == "/abs")
        .expect("the absolute-form request reached the app");
    assert_eq!(Judge::values_of(absolute, "host"), ["public"], "{absolute}");
}

/// A request whose first bytes arrive slowly (after protocol detection gave up waiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_start_never_carries_a_forged_identity() {
    let judge = Judge::python();
    let mesh = mesh_in_front_of(&judge, MeshSpec::default()).await;
    let rest = format!("P/1.1\r\nHost: b\r\nx-hush-peer-identity: {FORGED}\r\n\r\n");
    let answer = send_raw(
        mesh.to_backend(),
        &[b"GET /slow HTT", rest.as_bytes()],
        Duration::from_secs(1),
    )
    .await;
    eprintln!(
        "split after 1 s: {}",
        answer.lines().next().unwrap_or("(closed)")
    );
    // Nothing at all before the request: an HTTP client that opened its connection early.
    let late = format!("GET /late HTTP/1.1\r\nHost: b\r\nx-hush-peer-identity: {FORGED}\r\n\r\n");
    let silent = send_raw(
        mesh.to_backend(),
        &[b"", late.as_bytes()],
        Duration::from_secs(1),
    )
    .await;
    eprintln!(
        "silent for 1 s: {}",
        silent.lines().next().unwrap_or("(closed)")
    );
    assert_nothing_forged(&judge, FRONTEND, "slow start");
    assert_still_serving(&mesh, &judge).await;
}

/// A peer holding a valid certificate of the mesh announces opaque TCP with ALPN and sends
/// HTTP: the inbound side decides for itself what it parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_announcing_tcp_cannot_skip_the_http_handling() {
    let judge = Judge::python();
    let mesh = mesh_in_front_of(&judge, MeshSpec::default()).await;

    // HTTP/1.1, right away and after a silence longer than detection waits.
    let request =
        format!("GET /alpn HTTP/1.1\r\nHost: b\r\nx-hush-peer-identity: {FORGED}\r\n\r\n");
    for pause in [Duration::ZERO, Duration::from_secs(1)] {
        let mut tls = hostile_peer(&mesh, FRONTEND, b"hush/tcp").await;
        let answer = exchange_raw(&mut tls, &[b"", request.as_bytes()], pause).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{pause:?}: {answer}");
        assert_nothing_forged(&judge, FRONTEND, "ALPN hush/tcp, HTTP/1.1");
    }

    // HTTP/2 (a real client over the same announcement). The judge speaks HTTP/1.1 only;
    // the marker a sidecar puts on HTTP/1.1 requests it carries over HTTP/2 has the request
    // handed over as HTTP/1.1 (a peer may claim it as well as anything else).
    let tls = hostile_peer(&mesh, FRONTEND, b"hush/tcp").await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("an HTTP/2 connection");
    tokio::spawn(connection);
    let request = http::Request::get("http://backend/alpn-h2")
        .header("hush-orig-proto", "HTTP/1.1")
        .header("x-hush-peer-identity", FORGED)
        .header("x_hush_peer_identity", FORGED)
        .body(Empty::<Bytes>::new())
        .expect("a request");
    let response = within(sender.send_request(request))
        .await
        .expect("a response");
    assert_eq!(response.status(), 200);
    assert_nothing_forged(&judge, FRONTEND, "ALPN hush/tcp, HTTP/2");

    // ALPN http/1.1 with bare line feeds.
    let mut tls = hostile_peer(&mesh, FRONTEND, b"http/1.1").await;
    let bare = format!("GET /bare HTTP/1.1\nHost: b\nx-hush-peer-identity: {FORGED}\n\n");
    let answer = exchange_raw(&mut tls, &[bare.as_bytes()], Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_nothing_forged(&judge, FRONTEND, "ALPN http/1.1, bare LF");

    let paths: Vec<String> = judge
        .seen()
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(paths, ["/alpn", "/alpn", "/alpn-h2", "/bare"]);
    assert_still_serving(&mesh, &judge).await;
}

/// A port declared `tcp` never relays an HTTP request as opaque bytes: one from a peer that
/// announced opaque TCP (or nothing) is refused, and nothing of it reaches the app; one from a
/// sidecar that announced HTTP is served as HTTP, with the sidecar's identity headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_declared_tcp_never_relays_http() {
    let judge = Judge::python();
    let mesh = mesh_in_front_of(
        &judge,
        MeshSpec {
            backend_inbound: edit(|i: &mut InboundConfig| i.protocol = Protocol::Tcp),
            ..MeshSpec::default()
        },
    )
    .await;
    let request =
        format!("GET /opaque HTTP/1.1\r\nHost: b\r\nx-hush-peer-identity: {FORGED}\r\n\r\n");
    for alpn in [&b"hush/tcp"[..], b""] {
        let mut tls = hostile_peer(&mesh, FRONTEND, alpn).await;
        let answer = exchange_raw(&mut tls, &[request.as_bytes()], Duration::ZERO).await;
        assert_eq!(answer, "", "{}", String::from_utf8_lossy(alpn));
    }
    assert_eq!(judge.count(), 0, "{:?}", judge.seen());
    // Through the frontend's sidecar, which announces what it carries.
    let answer = send_raw(mesh.to_backend(), &[request.as_bytes()], Duration::ZERO).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(judge.count(), 1, "{:?}", judge.seen());
    assert_nothing_forged(&judge, FRONTEND, "a port declared tcp");
    let metrics = metrics_of(&mesh.backend);
    assert!(
        metric(
            &metrics,
            "hush_connections_refused_total{direction=\"inbound\",reason=\"http_on_opaque\"}"
        ) >= 2.0,
        "{metrics}"
    );
    // The refusal is logged as the connection closes, perhaps after the answer arrived.
    tokio::task::block_in_place(|| {
        mesh.backend
            .wait_for_log(
                &["the caller sent an HTTP request to a port declared `tcp`"],
                PATIENCE,
            )
            .unwrap_or_else(|e| panic!("{e}"))
    });
}

/// A server-first app (it speaks before the client, like SMTP or MySQL) behind the sidecar:
/// what the client sends after the greeting is relayed, unless it is an HTTP request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_after_a_server_first_greeting_is_refused() {
    let greeter = apps::start_greeter().await;
    let mesh = Mesh::start(MeshSpec {
        app: Some(greeter),
        ..MeshSpec::default()
    })
    .await;
    // An ordinary client of the server-first app: greeting, then its lines echoed.
    let mut tls = hostile_peer(&mesh, FRONTEND, b"hush/tcp").await;
    let answer = exchange_raw(&mut tls, &[b"hello\r\n"], Duration::ZERO).await;
    assert!(
        answer.starts_with(apps::GREETING) && answer.contains("echo: hello"),
        "{answer}"
    );
    // An HTTP request after the greeting: the app never sees it.
    let mut tls = hostile_peer(&mesh, FRONTEND, b"hush/tcp").await;
    let request = format!("GET / HTTP/1.1\r\nx-hush-peer-identity: {FORGED}\r\n\r\n");
    let answer = exchange_raw(&mut tls, &[request.as_bytes()], Duration::ZERO).await;
    assert!(answer.starts_with(apps::GREETING), "{answer}");
    assert!(
        !answer.contains("echo:"),
        "the app read the request: {answer}"
    );
    tokio::task::block_in_place(|| {
        mesh.backend
            .wait_for_log(
                &["the caller sent an HTTP request after the app had spoken first"],
                PATIENCE,
            )
            .unwrap_or_else(|e| panic!("{e}"))
    });
}

/// A caller the policy allows only some paths: its connection as a whole is denied, but an
/// HTTP client that is slow to start still gets each request judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http_client_under_a_path_policy_is_judged_per_request() {
    let judge = Judge::python();
    let mesh = mesh_in_front_of(
        &judge,
        MeshSpec {
            backend_policy: Some(format!(
                "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: paths}}\n\
                 spec:\n  rules:\n    - from: [{{principals: [\"{FRONTEND}\"]}}]\n      to: [{{paths: [\"/public\"]}}]\n"
            )),
            ..MeshSpec::default()
        },
    )
    .await;
    for (path, status) in [("/public", "HTTP/1.1 200 "), ("/private", "HTTP/1.1 403 ")] {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: b\r\nx-hush-peer-identity: {FORGED}\r\n\r\n");
        let mut tls = hostile_peer(&mesh, FRONTEND, b"hush/tcp").await;
        let answer = exchange_raw(&mut tls, &[request.as_bytes()], Duration::ZERO).await;
        assert!(answer.starts_with(status), "{path}: {answer}");
    }
    // Silent past the detection timeout, then the request: denied as a connection, so no
    // app byte reaches the caller, and the request is judged on its own.
    for alpn in [&b"hush/tcp"[..], b""] {
        let mut tls = hostile_peer(&mesh, FRONTEND, alpn).await;
        let request = "GET /public HTTP/1.1\r\nHost: b\r\n\r\n";
        let answer =
            exchange_raw(&mut tls, &[b"", request.as_bytes()], Duration::from_secs(1)).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }
    // Anything else, early or late, is refused without a byte of the app's.
    for pause in [Duration::ZERO, Duration::from_secs(1)] {
        let mut tls = hostile_peer(&mesh, FRONTEND, b"hush/tcp").await;
        let answer = exchange_raw(&mut tls, &[b"", b"\x00\x01binary"], pause).await;
        assert_eq!(answer, "", "{pause:?}");
    }
    assert_nothing_forged(&judge, FRONTEND, "path policy");
    let paths: Vec<String> = judge
        .seen()
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(paths, ["/public", "/public", "/public"]);
}

/// Hostile policy files, as whoever can edit the policy ConfigMap could write them: each is
/// refused with its reason, the last good policy stays in force, and the sidecar serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_policy_files_leave_the_last_good_policy_in_force() {
    const GOOD: &str = "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\n\
                        metadata: {name: public-only}\nspec:\n  rules:\n    - to: [{paths: [\"/public\"]}]\n";
    let judge = Judge::python();
    let mesh = mesh_in_front_of(
        &judge,
        MeshSpec {
            backend_policy: Some(GOOD.to_owned()),
            ..MeshSpec::default()
        },
    )
    .await;
    let head = "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: x}\n";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "brackets nested a hundred thousand deep",
            format!(
                "{head}spec:\n  rules: {}{}\n",
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
            .into_bytes(),
            "recursion limit exceeded",
        ),
        (
            "bytes that are not UTF-8",
            [head.as_bytes(), b"spec:\n  rules: [{to: [{paths: [\"/\xff\"]}]}]\n"].concat(),
            "is not UTF-8 text",
        ),
        (
            "more text than one file may hold",
            format!("{head}spec: {{}}\n# {}\n", "x".repeat(5 * 1024 * 1024)).into_bytes(),
            "more policy text than hush reads from one file",
        ),
        (
            "a selector of another trust domain",
            format!(
                "{head}spec:\n  selector: {{identities: [\"spiffe://evil.example/ns/x/sa/y\"]}}\n  rules: [{{}}]\n"
            )
            .into_bytes(),
            "evil.example",
        ),
        (
            "a tab where YAML wants spaces",
            format!("{head}spec:\n\trules: []\n").into_bytes(),
            "",
        ),
    ];
    for (refusals, (case, text, words)) in cases.iter().enumerate() {
        mesh.edit_policy(text);
        wait_until(case, || {
            metric(
                &metrics_of(&mesh.backend),
                "hush_policy_reloads_total{result=\"error\"}",
            ) == (refusals + 1) as f64
        });
        // The refusal is counted, then logged: wait for its line rather than read the log once.
        if !words.is_empty() {
            tokio::task::block_in_place(|| {
                mesh.backend
                    .wait_for_log(&[words], PATIENCE)
                    .unwrap_or_else(|e| panic!("{case}: {e}"))
            });
        }
        // The good policy still decides.
        assert_eq!(
            get(mesh.to_backend(), "/public", &[]).await.0,
            200,
            "{case}"
        );
        assert_eq!(
            get(mesh.to_backend(), "/private", &[]).await.0,
            403,
            "{case}"
        );
    }
    let paths: Vec<String> = judge
        .seen()
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(paths.iter().all(|p| p == "/public"), "{paths:?}");
}

/// Request lines only the most lenient parsers read, each followed by a forged identity:
/// Python's HTTP/0.9 `GET /x` (which still reads headers), control bytes before the method
/// (Netty skips them), a method that is not an HTTP token (wsgiref, the JDK's server). hush
/// relays them as opaque bytes, and the relay is cut at the colon of the identity header's
/// line: judged by Python, the JDK's server and Node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lines_only_lenient_servers_read_carry_no_forged_identity() {
    let python = Judge::python();
    let java = Judge::java();
    let node = Judge::node();
    let mut judges = vec![&python];
    judges.extend(java.as_ref());
    judges.extend(node.as_ref());
    for judge in judges {
        let mesh = mesh_in_front_of(judge, MeshSpec::default()).await;
        let forged = format!("X-Hush-Peer-Identity: {FORGED}");
        let lines = [
            ("HTTP/0.9 with headers", "GET /zero-nine".to_owned()),
            ("a NUL before the method", "\0GET /nul HTTP/1.1".to_owned()),
            (
                "control bytes before the method",
                "\x01\x1b[0mGET /ctl HTTP/1.1".to_owned(),
            ),
            (
                "a method that is not a token",
                "G{T /brace HTTP/1.1".to_owned(),
            ),
            ("an unknown protocol name", "GET /proto FOO/1.1".to_owned()),
        ];
        for (case, line) in &lines {
            for separator in ["\r\n", "\n", "\r"] {
                let request = format!("{line}\r\nHost: b{separator}{forged}\r\n\r\n");
                let answer =
                    send_raw(mesh.to_backend(), &[request.as_bytes()], Duration::ZERO).await;
                assert!(
                    !answer.contains(FORGED),
                    "{case}: the forged identity came back from the {} app: {answer}",
                    judge.name
                );
                assert_nothing_forged(judge, FRONTEND, case);
            }
        }
        let metrics = metrics_of(&mesh.backend);
        assert!(
            metric(
                &metrics,
                "hush_connections_refused_total{direction=\"inbound\",reason=\"forged_header\"}"
            ) >= 12.0,
            "{metrics}"
        );
        assert_still_serving(&mesh, judge).await;
    }
}
