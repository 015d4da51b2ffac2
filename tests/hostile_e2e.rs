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
#[path = "mesh/judges.rs"]
mod judges;
#[path = "mesh/sidecars.rs"]
mod sidecars;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hush_test_support::{TestLeaf, leaf_from_ca_dir};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use judges::Judge;
use sidecars::*;

/// The identity a hostile caller claims.
const FORGED: &str = "spiffe://cluster.local/ns/ops/sa/admin";

/// A mesh whose backend app is `judge`.
async fn mesh_in_front_of(judge: &Judge, spec: MeshSpec) -> Mesh {
    Mesh::start(MeshSpec {
        app: Some(judge.addr),
        ..spec
    })
    .await
}

/// Every request the judge parsed carried exactly one identity header, the caller's true
/// one, and no copy of the other identity headers that was not the sidecar's.
fn assert_nothing_forged(judge: &Judge, true_identity: &str, case: &str) {
    for request in judge.seen() {
        let peer = Judge::values_of(&request, "x-hush-peer-identity");
        assert_eq!(
            peer,
            [true_identity],
            "{case}: the {} app was told {peer:?}: {request}",
            judge.name
        );
        let xfcc = Judge::values_of(&request, "x-forwarded-client-cert");
        assert!(
            xfcc.len() == 1 && !xfcc[0].contains(FORGED),
            "{case}: the {} app was told XFCC {xfcc:?}: {request}",
            judge.name
        );
    }
}

/// Sends `parts` on a new plaintext connection to `addr`, waiting `pause` between them, then
/// reads until the sidecar closes or 3 s pass; returns what came back.
async fn send_raw(addr: SocketAddr, parts: &[&[u8]], pause: Duration) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    exchange_raw(&mut tcp, parts, pause).await
}

async fn exchange_raw<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    parts: &[&[u8]],
    pause: Duration,
) -> String {
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        if io.write_all(part).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A mutual-TLS connection to the backend sidecar's inbound port as a hostile peer: a valid
/// certificate of the mesh for `identity`, announcing `alpn`.
async fn hostile_peer(
    mesh: &Mesh,
    identity: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let leaf: TestLeaf = leaf_from_ca_dir(&mesh.ca_dir, Some(identity));
    let verifier = hush_tls::SpiffeServerVerifier::new(
        &mesh.bundle(),
        vec![BACKEND.parse().expect("a SPIFFE ID")],
    )
    .expect("a verifier");
    let store = hush_tls::CredentialStore::new();
    store.install(leaf.chain, leaf.key).expect("a usable leaf");
    let config =
        hush_tls::client_config(verifier, Some(Arc::new(store)), &[alpn]).expect("a config");
    let tcp = TcpStream::connect(mesh.backend.inbound())
        .await
        .expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            ServerName::try_from("backend.invalid").expect("a name"),
            tcp,
        )
        .await
        .expect("the handshake")
}

/// The mesh still serves an ordinary request with the caller's true identity.
async fn assert_still_serving(mesh: &Mesh, judge: &Judge) {
    let before = judge.count();
    let (status, body) = get(mesh.to_backend(), "/still-serving", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(judge.count() > before);
    let last = judge.seen().pop().expect("a request");
    assert_eq!(
        Judge::values_of(&last, "x-hush-peer-identity"),
        [FRONTEND],
        "{last}"
    );
}

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
