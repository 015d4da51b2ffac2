//! Hostile inputs against real processes: a compromised app in a meshed pod (any bytes, any
//! timing, any header spelling), a hostile peer holding a valid mesh certificate, and an
//! outsider. Every case asserts the precise refusal, that nothing forged reached the app, and
//! that the sidecar still serves everyone else afterwards.
//!
//! The apps behind the backend sidecar are written by others and report what they parsed
//! (`tests/mesh/judges.rs`): Python's lenient `http.server` and, where installed, Node's
//! `http`.

#[path = "mesh/apps.rs"]
mod apps;
#[path = "mesh/hostile.rs"]
mod hostile;
#[path = "mesh/judges.rs"]
mod judges;
#[path = "mesh/sidecars.rs"]
mod sidecars;

use std::time::Duration;

use hostile::*;
use judges::Judge;
use sidecars::*;

// === item 1: no byte sequence a caller sends makes a forged identity reach the app ===

/// Requests an HTTP/1 server accepts but a strict request-line check would not, sent by the
/// frontend's app to its outbound listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_http1_from_the_caller_never_carries_a_forged_identity() {
    let judge = Judge::python();
    let mesh = mesh_in_front_of(&judge, MeshSpec::default()).await;
    let forged = format!("x-hush-peer-identity: {FORGED}");
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "bare LF line endings",
            vec![format!("GET /lf HTTP/1.1\nHost: b\n{forged}\n\n")],
        ),
        (
            "leading CRLFs",
            vec![format!(
                "\r\n\r\nGET /lead HTTP/1.1\r\nHost: b\r\n{forged}\r\n\r\n"
            )],
        ),
        (
            "a lower-case method",
            vec![format!(
                "get /lower HTTP/1.1\r\nHost: b\r\n{forged}\r\n\r\n"
            )],
        ),
        (
            "tabs between the parts of the request line",
            vec![format!(
                "GET\t/tabs\tHTTP/1.1\r\nHost: b\r\n{forged}\r\n\r\n"
            )],
        ),
        (
            "two spaces after the method",
            vec![format!(
                "GET  /spaces HTTP/1.1\r\nHost: b\r\n{forged}\r\n\r\n"
            )],
        ),
        (
            "a leading space",
            vec![format!(
                " GET /space HTTP/1.1\r\nHost: b\r\n{forged}\r\n\r\n"
            )],
        ),
    ];
    for (case, parts) in &cases {
        let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        let answer = send_raw(mesh.to_backend(), &parts, Duration::ZERO).await;
        eprintln!("{case}: {}", answer.lines().next().unwrap_or("(closed)"));
        assert_nothing_forged(&judge, FRONTEND, case);
    }
    assert_still_serving(&mesh, &judge).await;
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
    let mut tls = hostile_peer(&mesh, FRONTEND, b"hush/tcp").await;
    let request =
        format!("GET /alpn HTTP/1.1\r\nHost: b\r\nx-hush-peer-identity: {FORGED}\r\n\r\n");
    let answer = exchange_raw(&mut tls, &[request.as_bytes()], Duration::ZERO).await;
    eprintln!(
        "hush/tcp + HTTP: {}",
        answer.lines().next().unwrap_or("(closed)")
    );
    assert_nothing_forged(&judge, FRONTEND, "ALPN hush/tcp");
    assert_still_serving(&mesh, &judge).await;
}
