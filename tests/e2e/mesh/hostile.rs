//! What the hostile-input suites share: the forged identity, the checks that nothing forged
//! reached the app and that the mesh still serves, raw plaintext exchanges, and a hostile peer
//! holding a valid certificate of the mesh.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hush_test_support::{TestLeaf, leaf_from_ca_dir};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::mesh::judges::Judge;
use crate::mesh::sidecars::{BACKEND, FRONTEND, Mesh, MeshSpec, get};

/// The identity a hostile caller claims.
pub(crate) const FORGED: &str = "spiffe://cluster.local/ns/ops/sa/admin";

/// A mesh whose backend app is `judge`.
pub(crate) async fn mesh_in_front_of(judge: &Judge, spec: MeshSpec) -> Mesh {
    Mesh::start(MeshSpec {
        app: Some(judge.addr),
        ..spec
    })
    .await
}

/// No request the judge parsed carried an identity header that was not the sidecar's: at
/// most one `x-hush-peer-identity`, the caller's true one, and at most one XFCC, naming no
/// forged identity. (A request relayed as opaque bytes to a lenient parser carries none.)
pub(crate) fn assert_nothing_forged(judge: &Judge, true_identity: &str, case: &str) {
    for request in judge.seen() {
        let peer = Judge::values_of(&request, "x-hush-peer-identity");
        assert!(
            peer.len() <= 1 && peer.iter().all(|v| v == true_identity),
            "{case}: the {} app was told {peer:?}: {request}",
            judge.name
        );
        let xfcc = Judge::values_of(&request, "x-forwarded-client-cert");
        assert!(
            xfcc.len() <= 1 && xfcc.iter().all(|v| !v.contains(FORGED)),
            "{case}: the {} app was told XFCC {xfcc:?}: {request}",
            judge.name
        );
        assert!(
            !request.to_string().contains(FORGED),
            "{case}: the {} app saw the forged identity: {request}",
            judge.name
        );
    }
}

/// Sends `parts` on a new plaintext connection to `addr`, waiting `pause` between them, then
/// reads until the sidecar closes or 3 s pass; returns what came back.
pub(crate) async fn send_raw(addr: SocketAddr, parts: &[&[u8]], pause: Duration) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    exchange_raw(&mut tcp, parts, pause).await
}

pub(crate) async fn exchange_raw<S: AsyncRead + AsyncWrite + Unpin>(
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

/// A mutual-TLS client of the backend sidecar's inbound port, presenting `leaf` (or nothing)
/// and announcing `alpn`.
pub(crate) fn peer_connector(
    mesh: &Mesh,
    leaf: Option<TestLeaf>,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let verifier = hush_tls::SpiffeServerVerifier::new(
        &mesh.bundle(),
        vec![BACKEND.parse().expect("a SPIFFE ID")],
    )
    .expect("a verifier");
    let resolver = leaf.map(|leaf| {
        let store = hush_tls::CredentialStore::new();
        store.install(leaf.chain, leaf.key).expect("a usable leaf");
        Arc::new(store) as Arc<dyn hush_tls::rustls::client::ResolvesClientCert>
    });
    let config = hush_tls::client_config(verifier, resolver, alpn).expect("a config");
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Completes a TLS handshake with `connector` over `tcp` to the backend sidecar.
pub(crate) async fn peer_handshake(
    connector: &tokio_rustls::TlsConnector,
    tcp: TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    connector
        .connect(
            ServerName::try_from("backend.invalid").expect("a name"),
            tcp,
        )
        .await
}

/// A mutual-TLS connection to the backend sidecar's inbound port as a hostile peer: a valid
/// certificate of the mesh for `identity`, announcing `alpn`.
pub(crate) async fn hostile_peer(
    mesh: &Mesh,
    identity: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let leaf: TestLeaf = leaf_from_ca_dir(&mesh.ca_dir, Some(identity));
    // An empty `alpn` announces nothing.
    let protocols: &[&[u8]] = if alpn.is_empty() { &[] } else { &[alpn] };
    let connector = peer_connector(mesh, Some(leaf), protocols);
    let tcp = TcpStream::connect(mesh.backend.inbound())
        .await
        .expect("connect");
    peer_handshake(&connector, tcp)
        .await
        .expect("the handshake")
}

/// The mesh still serves an ordinary request with the caller's true identity.
pub(crate) async fn assert_still_serving(mesh: &Mesh, judge: &Judge) {
    let before = judge.count();
    let (status, body) = get(mesh.to_backend(), "/still-serving", &[]).await;
    assert_eq!(status, 200, "{body}");
    // The judge reports what it parsed on its own output, which may trail its answer.
    assert!(
        judge.wait_for_more_than(before, Duration::from_secs(20)),
        "the {} app never reported the request",
        judge.name
    );
    let last = judge.seen().pop().expect("a request");
    assert_eq!(
        Judge::values_of(&last, "x-hush-peer-identity"),
        [FRONTEND],
        "{last}"
    );
}
