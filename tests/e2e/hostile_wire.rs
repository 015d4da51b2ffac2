//! Hostile inputs at the wire level, against real sidecars: TLS abuse on the inbound (mutual
//! TLS) port, HTTP/2 abuse from a hostile caller (plaintext HTTP/2 with prior knowledge to its
//! own sidecar's outbound listener) and from a hostile peer (HTTP/2 over mutual TLS straight to
//! the backend's inbound port, with a valid mesh certificate for the frontend's identity), and
//! slow clients.
//!
//! Each case asserts how it ends (the alert, the reset or GOAWAY and its code, the status and
//! its words, the closed connection, the metric with its step and reason), that nothing forged
//! reached the app, and that an ordinary request through the mesh still gets the caller's true
//! identity afterwards. HTTP/2 frames are written by hand (`mesh::h2raw`), hellos too
//! (`mesh::tlsraw`); the app behind the backend is Node's `http2` and `http` on one port, or
//! Python's `http.server`, which report every request they parsed (`mesh::judges`).
//!
//! ## TLS on the backend's inbound port (`handshake_timeout: 5s`, `max_handshakes_per_address: 4`)
//!
//! The last column is `hush_handshake_failures_total{direction="inbound",step=…,reason=…}`.
//!
//! | input | outcome | step / reason |
//! |---|---|---|
//! | garbage bytes | closed, nothing sent back | `hello` / `not_tls` |
//! | plaintext HTTP with a forged identity | `400`, "only accepts mutual TLS 1.3 … outbound listener" | `hello` / `plaintext_http` |
//! | a record of 2^14+257 bytes (TLS allows 2^14) | alert `UnexpectedMessage` (rustls reads records up to 2^14+2048 and refuses the message inside) | `hello` / `not_tls` |
//! | a record header announcing 65535 bytes | alert `DecodeError` | `hello` / `not_tls` |
//! | a ClientHello cut short, then the client's end closed | closed, nothing sent back | `connection` / `closed` |
//! | a ClientHello of four bytes of nonsense | alert `DecodeError` | `hello` / `not_tls` |
//! | a hand-made ClientHello offering TLS 1.2 only | alert `ProtocolVersion` | `hello` / `tls_version` |
//! | `openssl s_client -tls1_2` | openssl fails on "alert protocol version" | `hello` / `tls_version` |
//! | a TLS 1.3 hello whose only cipher suite is AES-128-CCM | alert `HandshakeFailure` | `hello` / `no_common_cipher` |
//! | a TLS 1.3 hello whose only group is P-256 | alert `HandshakeFailure` | `hello` / `no_common_group` |
//! | a valid mesh certificate, ALPN offering only `spdy/3` | alert `NoApplicationProtocol` | `hello` / `no_common_alpn` |
//! | no client certificate | alert `CertificateRequired` | `certificate chain` / `no_certificate` |
//! | a certificate of a foreign CA (same trust domain) | alert `UnknownCA` | `certificate chain` / `unknown_issuer` |
//! | an expired certificate of the mesh's CA | alert `CertificateExpired` | `validity` / `expired` |
//! | a certificate of the mesh's CA without a SPIFFE ID | alert `CertificateUnknown` | `SPIFFE ID` / `not_an_svid` |
//! | a certificate of the mesh's CA naming another trust domain | alert `CertificateUnknown` | `SPIFFE ID` / `foreign_trust_domain` |
//! | a ClientHello trickled a byte a second | closed before the hello is whole | `connection` / `timeout` |
//! | a 5th unfinished handshake from one address | closed at once; 127.0.0.2 still served | `hush_connections_refused_total{reason="handshakes_per_address"}` |
//! | a 3rd admin connection from one address (`admin.max_connections: 8`) | closed without an answer; 127.0.0.2 still gets `/ready` | logged |
//!
//! ## HTTP/2, from a hostile caller and from a hostile peer (`max_concurrent_streams: 4`)
//!
//! Every row runs twice, each time on a new connection: through the frontend's outbound
//! listener, and straight into the backend's inbound port. "Reset" is RST_STREAM on the
//! request's stream, "GOAWAY" the end of the connection with that code. Where the app must
//! see the request, an innocent header sent with the forged ones must reach it.
//!
//! | input | outcome |
//! |---|---|
//! | `x-hush-peer-identity` and `x-forwarded-client-cert` twice each | `200`; the app sees the true identity once |
//! | the identity headers in trailers (HEADERS after DATA), `_` spelling too | `200`; the app's trailers keep only the innocent one |
//! | `X-Hush-Peer-Identity` (upper case) | GOAWAY `PROTOCOL_ERROR`; the app sees nothing |
//! | `x_hush_peer_identity`, `x_forwarded_client_cert` | `200`; stripped |
//! | `x.hush.peer.identity`, `x.forwarded.client.cert` | `200`; stripped |
//! | `host` different from `:authority` | `400` "the request names two hosts: backend.shop in its target and admin.internal in its Host header"; the app sees nothing |
//! | `connection: keep-alive` | reset `PROTOCOL_ERROR` |
//! | `te: gzip` | reset `PROTOCOL_ERROR` |
//! | `transfer-encoding: chunked` | reset `PROTOCOL_ERROR` |
//! | no `:path` | reset `PROTOCOL_ERROR` |
//! | `:method` twice | reset `PROTOCOL_ERROR` |
//! | `:path` after a regular header | reset `PROTOCOL_ERROR` |
//! | `:status` in trailers | `200`: h2 drops the pseudo-header (RFC 9113 calls the request malformed); the app gets neither it nor the forged identity |
//! | an unknown pseudo-header `:hush` | GOAWAY `PROTOCOL_ERROR` |
//! | a forged `hush-orig-proto: HTTP/1.1` | `200`; the caller's marker is dropped (the app gets HTTP/2), a peer's is obeyed (HTTP/1.1); never passed on; true identity |
//! | rapid reset (CVE-2023-44487): 500 streams opened and reset in one write | GOAWAY `ENHANCE_YOUR_CALM`, closed |
//! | HEADERS, then 2,000 CONTINUATION frames that never end the block | GOAWAY `ENHANCE_YOUR_CALM` |
//! | `SETTINGS_HEADER_TABLE_SIZE` 2^32-1 | acknowledged; `200` |
//! | a dynamic table size update to 1 MiB (4 KiB allowed) | GOAWAY `PROTOCOL_ERROR` (h2's code; RFC 9113 says `COMPRESSION_ERROR`) |
//! | 10,000 SETTINGS frames, acknowledgements unread | all acknowledged; `200` on the same connection |
//! | 10,000 PINGs, acknowledgements unread | all acknowledged; `200` on the same connection |
//! | 6 streams open at once | the server's SETTINGS say 4; streams 5 and 6 reset `REFUSED_STREAM`, unseen by the app; the first 4 answered `200` |
//!
//! ## Slow clients
//!
//! | input | outcome |
//! |---|---|
//! | an HTTP/1 request head trickled to the outbound listener, a byte every 200 ms (`header_timeout: 1s`) | closed before the head is whole, unanswered; the app sees nothing |
//! | the same, from a peer over mutual TLS announcing `http/1.1` | the same |
//! | a keep-alive connection quiet for 2 s between two requests | both answered on the same connection |
//! | an admin connection that sends nothing | closed without an answer |
//! | an admin request head trickled a byte every 200 ms | closed before the head is whole, unanswered |
//! | an HTTP/2 connection to the outbound listener kept busy by PINGs alone (`idle_timeout: 3s`) | closed (the PINGs were answered meanwhile) |
//! | the same, from a peer on the inbound port | the same |
//! | a request line trickled a byte every 200 ms, through the outbound listener or from a peer announcing `hush/tcp` | cut off `header_timeout` after its first byte (`hush_connections_refused_total{reason="slow_first_line"}`), unseen by the app |

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hush_proxy::ProxyConfig;
use hush_test_support::{TestCa, TestLeaf, expired_leaf_from_ca_dir, leaf_from_ca_dir};
use hush_tls::hello::{ServerFirst, server_first};
use hush_tls::rustls;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::mesh::h2raw::{Conn, ErrorCode, Frame, Outcome, flag, setting};
use crate::mesh::hostile::*;
use crate::mesh::judges::Judge;
use crate::mesh::sidecars::*;
use crate::mesh::tlsraw::Hello;
use crate::mesh::{h2raw, tlsraw};

/// How long a case waits for something that must happen; never reached when all is well.
const BOUND: Duration = Duration::from_secs(30);

// === helpers ===

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all ours), so
/// that per-address caps can be tested from several clients on one machine.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .unwrap_or_else(|e| panic!("bind {from:?}: {e}"));
    socket
        .connect(to)
        .await
        .unwrap_or_else(|e| panic!("connect {to} from {from:?}: {e}"))
}

/// The backend's counter of failed inbound handshakes at `step` for `reason`.
fn handshake_failures(step: &str, reason: &str) -> String {
    format!(
        "hush_handshake_failures_total{{direction=\"inbound\",step=\"{step}\",reason=\"{reason}\"}}"
    )
}

/// Waits (bounded) until `series` of `proxy` has grown by one from `before`, and checks it
/// grew by exactly one.
fn counted_once(proxy: &hush_test_support::ProxyProcess, series: &str, before: f64, case: &str) {
    tokio::task::block_in_place(|| {
        wait_until(&format!("{case}: {series} to count it"), || {
            metric(&metrics_of(proxy), series) > before
        });
    });
    let now = metric(&metrics_of(proxy), series);
    assert_eq!(
        now,
        before + 1.0,
        "{case}: {series} went from {before} to {now}"
    );
}

/// Connects from 127.0.0.1, sends `bytes` (then closes its sending side if `then_close`), and
/// returns everything the sidecar sent before it closed.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8], then_close: bool) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    if then_close {
        tcp.shutdown().await.expect("shut down the sending side");
    }
    tlsraw::until_closed(&mut tcp, BOUND)
        .await
        .unwrap_or_else(|| panic!("the sidecar kept the connection open for {BOUND:?}"))
}

/// A TLS client with `leaf` (or none) and `alpn` against the backend's inbound port: the
/// rustls error it met, during the handshake or on the first read (TLS 1.3 refuses a client
/// certificate after the client's side of the handshake is done), or `None` if it was let in.
async fn tls_refusal(mesh: &Mesh, leaf: Option<TestLeaf>, alpn: &[&[u8]]) -> Option<rustls::Error> {
    let connector = peer_connector(mesh, leaf, alpn);
    let tcp = TcpStream::connect(mesh.backend.inbound())
        .await
        .expect("connect");
    let rustls_error = |e: std::io::Error| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned()
            .unwrap_or_else(|| panic!("not a TLS error: {e}"))
    };
    let mut tls = match peer_handshake(&connector, tcp).await {
        Ok(tls) => tls,
        Err(e) => return Some(rustls_error(e)),
    };
    let _ = tls
        .write_all(b"GET /let-in HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    match within(tls.read_to_end(&mut answer)).await {
        Ok(_) if answer.is_empty() => panic!("closed without an alert or an answer"),
        Ok(_) => None,
        Err(e) => Some(rustls_error(e)),
    }
}

/// The alert a server sent in the clear, by rustls' name for it.
fn alert_in(answer: &[u8]) -> String {
    match server_first(answer) {
        ServerFirst::Alert(name) => name,
        other => panic!("expected an alert, got {other:?} ({answer:02x?})"),
    }
}

/// An HTTP/1.1 request over mutual TLS to the backend's inbound port from `from`, presenting
/// a valid certificate of the mesh for the frontend's identity; returns what came back.
async fn mtls_get_from(mesh: &Mesh, from: [u8; 4], path: &str) -> String {
    let leaf = leaf_from_ca_dir(&mesh.ca_dir, Some(FRONTEND));
    let connector = peer_connector(mesh, Some(leaf), &[b"http/1.1"]);
    let tcp = connect_from(from, mesh.backend.inbound()).await;
    let mut tls = peer_handshake(&connector, tcp)
        .await
        .expect("the handshake");
    let request = format!("GET {path} HTTP/1.1\r\nhost: backend.shop\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    within(tls.read_to_end(&mut answer))
        .await
        .expect("an answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The judge's report of the request for `path`, if it saw one.
fn report_of(judge: &Judge, path: &str) -> Option<Value> {
    judge.seen().into_iter().find(|r| r["path"] == path)
}

// === TLS on the inbound port ===

/// Bytes sent to the inbound port before (or instead of) a TLS handshake, how the sidecar must
/// end the connection, and the step and reason it must count it under.
struct RawCase {
    name: &'static str,
    bytes: Vec<u8>,
    /// Whether the client then closes its sending side.
    then_close: bool,
    /// The alert the sidecar answers with in the clear, by rustls' name; `None`: it closes the
    /// connection without a byte.
    alert: Option<&'static str>,
    counted: (&'static str, &'static str),
}

fn raw_cases() -> Vec<RawCase> {
    let mut oversized = tlsraw::record_header(tlsraw::HANDSHAKE, (1 << 14) + 257);
    oversized.extend_from_slice(&[0u8; (1 << 14) + 257]);
    let mut huge = tlsraw::record_header(tlsraw::HANDSHAKE, u16::MAX);
    huge.extend_from_slice(&[0u8; 512]);
    let mut cut_short = Hello::tls13().record();
    cut_short.truncate(60);
    let only_ccm = Hello {
        ciphers: vec![tlsraw::TLS_AES_128_CCM_SHA256],
        ..Hello::tls13()
    };
    let mut p256_point = vec![4];
    p256_point.extend_from_slice(&[7; 64]);
    let only_p256 = Hello {
        groups: vec![tlsraw::SECP256R1],
        key_share: Some((tlsraw::SECP256R1, p256_point)),
        ..Hello::tls13()
    };
    vec![
        RawCase {
            name: "garbage bytes",
            bytes: vec![0x00, 0xff, 0x13, 0x37, 0x42, 0x99, 0x01, 0x02],
            then_close: false,
            alert: None,
            counted: ("hello", "not_tls"),
        },
        // TLS allows 2^14 bytes of plaintext per record; rustls reads records up to TLS 1.2's
        // ciphertext limit (2^14 + 2048) and refuses the message inside (type 0).
        RawCase {
            name: "a record of 2^14+257 bytes",
            bytes: oversized,
            then_close: false,
            alert: Some("UnexpectedMessage"),
            counted: ("hello", "not_tls"),
        },
        RawCase {
            name: "a record header announcing 65535 bytes",
            bytes: huge,
            then_close: false,
            alert: Some("DecodeError"),
            counted: ("hello", "not_tls"),
        },
        RawCase {
            name: "a ClientHello cut short, then the client's end closed",
            bytes: cut_short,
            then_close: true,
            alert: None,
            counted: ("connection", "closed"),
        },
        RawCase {
            name: "a ClientHello of four bytes of nonsense",
            bytes: tlsraw::record(tlsraw::HANDSHAKE, &[1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef]),
            then_close: false,
            alert: Some("DecodeError"),
            counted: ("hello", "not_tls"),
        },
        RawCase {
            name: "a hand-made ClientHello offering TLS 1.2 only",
            bytes: Hello::tls12_only().record(),
            then_close: false,
            alert: Some("ProtocolVersion"),
            counted: ("hello", "tls_version"),
        },
        RawCase {
            name: "a TLS 1.3 hello with no cipher suite in common",
            bytes: only_ccm.record(),
            then_close: false,
            alert: Some("HandshakeFailure"),
            counted: ("hello", "no_common_cipher"),
        },
        RawCase {
            name: "a TLS 1.3 hello with no key-exchange group in common",
            bytes: only_p256.record(),
            then_close: false,
            alert: Some("HandshakeFailure"),
            counted: ("hello", "no_common_group"),
        },
    ]
}

/// A TLS 1.3 client refused for what it presents: the alert it receives, and the step and
/// reason the sidecar counts.
struct CertCase {
    name: &'static str,
    leaf: Option<TestLeaf>,
    alpn: &'static [u8],
    alert: rustls::AlertDescription,
    counted: (&'static str, &'static str),
}

fn cert_cases(mesh: &Mesh) -> Vec<CertCase> {
    use rustls::AlertDescription as A;
    let foreign = TestCa::new(TRUST_DOMAIN);
    vec![
        CertCase {
            name: "a valid certificate, offering only ALPN spdy/3",
            leaf: Some(leaf_from_ca_dir(&mesh.ca_dir, Some(FRONTEND))),
            alpn: b"spdy/3",
            alert: A::NoApplicationProtocol,
            counted: ("hello", "no_common_alpn"),
        },
        CertCase {
            name: "no client certificate",
            leaf: None,
            alpn: b"h2",
            alert: A::CertificateRequired,
            counted: ("certificate chain", "no_certificate"),
        },
        CertCase {
            name: "a certificate of a foreign CA",
            leaf: Some(foreign.leaf(FRONTEND)),
            alpn: b"h2",
            alert: A::UnknownCA,
            counted: ("certificate chain", "unknown_issuer"),
        },
        CertCase {
            name: "an expired certificate of the mesh's CA",
            leaf: Some(expired_leaf_from_ca_dir(&mesh.ca_dir, FRONTEND)),
            alpn: b"h2",
            alert: A::CertificateExpired,
            counted: ("validity", "expired"),
        },
        CertCase {
            name: "a certificate of the mesh's CA without a SPIFFE ID",
            leaf: Some(leaf_from_ca_dir(&mesh.ca_dir, None)),
            alpn: b"h2",
            alert: A::CertificateUnknown,
            counted: ("SPIFFE ID", "not_an_svid"),
        },
        CertCase {
            name: "a certificate of the mesh's CA naming another trust domain",
            leaf: Some(leaf_from_ca_dir(
                &mesh.ca_dir,
                Some("spiffe://evil.example/ns/shop/sa/frontend"),
            )),
            alpn: b"h2",
            alert: A::CertificateUnknown,
            counted: ("SPIFFE ID", "foreign_trust_domain"),
        },
    ]
}

/// Sends a TLS 1.3 hello a byte a second from 127.0.0.3 until the sidecar closes the
/// connection; returns how many bytes it sent, and how many the hello has.
async fn slowloris(inbound: SocketAddr) -> (usize, usize) {
    let hello = Hello::tls13().record();
    let mut tcp = connect_from([127, 0, 0, 3], inbound).await;
    for (sent, byte) in hello.iter().enumerate() {
        if tcp.write_all(&[*byte]).await.is_err() {
            return (sent, hello.len());
        }
        let mut one = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut one)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => return (sent + 1, hello.len()),
            Ok(Ok(_)) => panic!("the slowloris got an answer"),
        }
    }
    (hello.len(), hello.len())
}

/// Four unfinished handshakes from 127.0.0.5 take that address's slots
/// (`limits.max_handshakes_per_address: 4`): a fifth is closed at once and counted, while
/// 127.0.0.2 is still served.
async fn handshakes_per_address(mesh: &Mesh, judge: &Judge) {
    let (backend, inbound) = (&mesh.backend, mesh.backend.inbound());
    let open = "hush_connections_open{direction=\"inbound\"}";
    let refused =
        "hush_connections_refused_total{direction=\"inbound\",reason=\"handshakes_per_address\"}";
    let open_before = metric(&metrics_of(backend), open);
    let refused_before = metric(&metrics_of(backend), refused);
    let mut hoarders = Vec::new();
    for _ in 0..4 {
        let mut tcp = connect_from([127, 0, 0, 5], inbound).await;
        // The start of a hello: the handshake has begun and waits for the rest.
        tcp.write_all(&Hello::tls13().record()[..20])
            .await
            .expect("write");
        hoarders.push(tcp);
    }
    tokio::task::block_in_place(|| {
        wait_until("the four hoarders to be accepted", || {
            metric(&metrics_of(backend), open) >= open_before + 4.0
        });
    });
    let mut fifth = connect_from([127, 0, 0, 5], inbound).await;
    let _ = fifth.write_all(&Hello::tls13().record()).await;
    let answer = tlsraw::until_closed(&mut fifth, BOUND)
        .await
        .expect("the fifth connection is closed");
    assert!(answer.is_empty(), "the fifth got {answer:02x?}");
    counted_once(backend, refused, refused_before, "a fifth handshake");
    let answer = mtls_get_from(mesh, [127, 0, 0, 2], "/from-another-address").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    tokio::task::block_in_place(|| {
        wait_until("the app to report the request from 127.0.0.2", || {
            report_of(judge, "/from-another-address").is_some()
        });
    });
    let seen = report_of(judge, "/from-another-address").expect("the app saw it");
    assert_eq!(Judge::values_of(&seen, "x-hush-peer-identity"), [FRONTEND]);
    drop(hoarders);
}

/// The admin port serves an eighth of `admin.max_connections: 16` (2) from one address: a
/// third from 127.0.0.6 is closed without an answer, while 127.0.0.2 still gets `/ready`.
/// Every client gets one answer per connection, and a client that asks again and again
/// without reading the answers loses its connection after its life (`header_timeout` plus
/// the probes' 10 s), freeing its slot.
async fn admin_connections_per_address(mesh: &Mesh) {
    let admin = mesh.backend.admin();
    let held = [
        connect_from([127, 0, 0, 6], admin).await,
        connect_from([127, 0, 0, 6], admin).await,
    ];
    let mut third = connect_from([127, 0, 0, 6], admin).await;
    let _ = third
        .write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await;
    let answer = tlsraw::until_closed(&mut third, BOUND)
        .await
        .expect("the third admin connection is closed");
    assert!(
        answer.is_empty(),
        "the third admin connection was answered: {}",
        String::from_utf8_lossy(&answer)
    );
    let mut other = connect_from([127, 0, 0, 2], admin).await;
    other
        .write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = tlsraw::until_closed(&mut other, BOUND)
        .await
        .expect("an answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    mesh.backend
        .wait_for_log(&["refusing admin connections: too many open"], BOUND)
        .unwrap_or_else(|e| panic!("{e}"));
    drop(held);

    // One answer per connection, whatever the client asks for.
    let mut kept = connect_from([127, 0, 0, 7], admin).await;
    kept.write_all(
        b"GET /live HTTP/1.1\r\nhost: admin\r\n\r\nGET /live HTTP/1.1\r\nhost: admin\r\n\r\n",
    )
    .await
    .expect("write");
    let answer = tlsraw::until_closed(&mut kept, BOUND)
        .await
        .expect("closed after one answer");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 1, "{answer}");

    // Two clients that pipeline requests and never read: their slots come back.
    let stallers: Vec<TcpStream> = futures_util::future::join_all((0..2).map(|_| async {
        let mut staller = connect_from([127, 0, 0, 8], admin).await;
        let flood = b"GET /metrics HTTP/1.1\r\nhost: admin\r\n\r\n".repeat(2000);
        let _ = tokio::time::timeout(Duration::from_secs(2), staller.write_all(&flood)).await;
        staller
    }))
    .await;
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let mut again = connect_from([127, 0, 0, 8], admin).await;
        let _ = again
            .write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\n\r\n")
            .await;
        let answer = tlsraw::until_closed(&mut again, BOUND)
            .await
            .unwrap_or_default();
        if answer.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled admin connections kept their slots"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(stallers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_abuse_on_the_inbound_port_is_refused_at_the_right_step() {
    let judge = Judge::python();
    let mesh = mesh_in_front_of(
        &judge,
        MeshSpec {
            sidecars: edit(|c: &mut ProxyConfig| {
                c.limits.handshake_timeout = Duration::from_secs(5);
                c.limits.max_handshakes_per_address = 4;
                c.limits.header_timeout = Duration::from_secs(2);
                c.admin.max_connections = 16;
            }),
            ..MeshSpec::default()
        },
    )
    .await;
    let inbound = mesh.backend.inbound();
    let backend = &mesh.backend;

    // The slowloris runs while the other cases do, from an address of its own so that it
    // takes none of their handshake slots.
    let timeouts = handshake_failures("connection", "timeout");
    let timeouts_before = metric(&metrics_of(backend), &timeouts);
    let slowloris = tokio::spawn(slowloris(inbound));

    // The hand-made hellos are hellos: hush's own parser reads what they offer.
    let offered = hush_tls::hello::client_hello(&Hello::tls12_only().record()).expect("a hello");
    assert!(offered.versions.is_empty(), "{offered:?}");
    assert_eq!(offered.cipher_suites.len(), 2, "{offered:?}");

    for case in raw_cases() {
        let series = handshake_failures(case.counted.0, case.counted.1);
        let before = metric(&metrics_of(backend), &series);
        let answer = raw_exchange(inbound, &case.bytes, case.then_close).await;
        match case.alert {
            Some(alert) => assert_eq!(alert_in(&answer), alert, "{}", case.name),
            None => assert!(answer.is_empty(), "{}: answered {answer:02x?}", case.name),
        }
        counted_once(backend, &series, before, case.name);
        assert_still_serving(&mesh, &judge).await;
    }

    // Plaintext HTTP gets an answer that explains.
    let series = handshake_failures("hello", "plaintext_http");
    let before = metric(&metrics_of(backend), &series);
    let request =
        format!("GET / HTTP/1.1\r\nHost: backend\r\nx-hush-peer-identity: {FORGED}\r\n\r\n");
    let answer = raw_exchange(inbound, request.as_bytes(), false).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("this port only accepts mutual TLS 1.3 from other hush sidecars")
            && answer.contains("Send plaintext to your own sidecar's outbound listener"),
        "{answer}"
    );
    counted_once(backend, &series, before, "plaintext HTTP");
    assert_still_serving(&mesh, &judge).await;

    // The TLS 1.2 client operators would try.
    let series = handshake_failures("hello", "tls_version");
    let before = metric(&metrics_of(backend), &series);
    let output = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &inbound.to_string(), "-tls1_2"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client (the openssl command line) must be installed");
    let said = hush_test_support::describe_output(&output);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("alert protocol version"), "{said}");
    counted_once(backend, &series, before, "openssl -tls1_2");
    assert_still_serving(&mesh, &judge).await;

    for case in cert_cases(&mesh) {
        let series = handshake_failures(case.counted.0, case.counted.1);
        let before = metric(&metrics_of(backend), &series);
        let refusal = tls_refusal(&mesh, case.leaf, &[case.alpn]).await;
        assert_eq!(
            refusal,
            Some(rustls::Error::AlertReceived(case.alert)),
            "{}",
            case.name
        );
        counted_once(backend, &series, before, case.name);
        assert_still_serving(&mesh, &judge).await;
    }

    let (sent, whole) = within(slowloris).await.expect("the slowloris task");
    assert!(
        sent < whole,
        "the slowloris sent its whole hello ({sent} bytes)"
    );
    counted_once(backend, &timeouts, timeouts_before, "a slowloris hello");

    handshakes_per_address(&mesh, &judge).await;
    admin_connections_per_address(&mesh).await;

    assert_nothing_forged(&judge, FRONTEND, "TLS abuse");
    assert_still_serving(&mesh, &judge).await;
    assert!(!mesh.backend.stderr().contains("panicked"));
}

// === HTTP/2 ===

/// A byte stream of either kind, so that one runner drives both targets.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Who speaks HTTP/2 to the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// The frontend's app, in plaintext to its sidecar's outbound listener.
    Caller,
    /// A peer with a valid certificate for the frontend's identity, over mutual TLS (ALPN
    /// `h2`) to the backend's inbound port.
    Peer,
}

/// The `limits.max_concurrent_streams` of the HTTP/2 meshes.
const MAX_STREAMS: u32 = 4;

async fn h2_mesh(judge: &Judge) -> Mesh {
    mesh_in_front_of(
        judge,
        MeshSpec {
            sidecars: edit(|c: &mut ProxyConfig| {
                c.limits.max_concurrent_streams = MAX_STREAMS as usize
            }),
            ..MeshSpec::default()
        },
    )
    .await
}

/// A new HTTP/2 connection from `side`, with the client's SETTINGS `settings`.
async fn h2_connection(mesh: &Mesh, side: Side, settings: &[(u16, u32)]) -> Conn<Box<dyn Io>> {
    let io: Box<dyn Io> = match side {
        Side::Caller => Box::new(
            TcpStream::connect(mesh.to_backend())
                .await
                .expect("connect"),
        ),
        Side::Peer => Box::new(hostile_peer(mesh, FRONTEND, b"h2").await),
    };
    Conn::open(io, settings).await.expect("the preface")
}

/// How a request stream must end.
#[derive(Debug)]
enum Expect {
    /// The app answers 200: it saw the request, with the true identity only.
    App,
    /// The sidecar answers with this status and these words; the app sees nothing.
    Refused(u16, &'static str),
    /// RST_STREAM with this code; the app sees nothing.
    Reset(ErrorCode),
    /// GOAWAY with this code; the app sees nothing.
    GoAway(ErrorCode),
}

fn matches(expect: &Expect, outcome: &Outcome) -> bool {
    match (expect, outcome) {
        (Expect::App, Outcome::Response(r)) => r.status == 200,
        (Expect::Refused(status, words), Outcome::Response(r)) => {
            r.status == *status && r.body.contains(words)
        }
        (Expect::Reset(code), Outcome::Reset(got)) => code == got,
        (Expect::GoAway(code), Outcome::GoAway { code: got, .. }) => code == got,
        _ => false,
    }
}

/// One hostile request on stream 1 of a new connection: its frames, how it must end, and
/// what the app must have seen of it when it reached the app.
struct H2Case {
    name: &'static str,
    frames: Vec<Frame>,
    expect: Expect,
    /// Checks the app's report of the request (only for [`Expect::App`]).
    app_saw: fn(&Value, Side) -> Result<(), String>,
}

impl H2Case {
    fn new(name: &'static str, frames: Vec<Frame>, expect: Expect) -> Self {
        Self {
            name,
            frames,
            expect,
            app_saw: |_, _| Ok(()),
        }
    }

    fn and_app_saw(self, app_saw: fn(&Value, Side) -> Result<(), String>) -> Self {
        Self { app_saw, ..self }
    }
}

fn end_headers(stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Frame {
    let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
    Frame::headers(stream, h2raw::block(fields), flags)
}

/// A GET on stream 1 for `path` with `extra` fields after the pseudo-headers.
fn get_with(path: &'static str, extra: &[(&'static str, &'static str)]) -> Vec<Frame> {
    let mut fields = h2raw::get(path, "backend.shop");
    fields.extend_from_slice(extra);
    vec![end_headers(1, &fields, true)]
}

/// A POST on stream 1 with a body, then trailers `trailers`.
fn post_with_trailers(path: &'static str, trailers: &[(&'static str, &'static str)]) -> Vec<Frame> {
    let fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "backend.shop"),
        (":path", path),
    ];
    vec![
        end_headers(1, &fields, false),
        Frame::data(1, b"a body", false),
        end_headers(1, trailers, true),
    ]
}

const XFCC_FORGED: &str = "By=spiffe://cluster.local/ns/shop/sa/backend;Hash=00;URI=spiffe://cluster.local/ns/ops/sa/admin";

/// A header that is nobody's business, sent with the forged ones: the app must still get it,
/// so the case shows the request arrived whole but for what was stripped.
const BENIGN: (&str, &str) = ("x-benign", "kept");

/// The app got the benign header (or trailer) exactly once.
fn got_benign(seen: &Value, _: Side) -> Result<(), String> {
    match Judge::values_of(seen, BENIGN.0).as_slice() {
        [value] if value == BENIGN.1 => Ok(()),
        other => Err(format!("the app got {} = {other:?}", BENIGN.0)),
    }
}

fn request_cases() -> Vec<H2Case> {
    use ErrorCode as E;
    vec![
        H2Case::new(
            "identity headers repeated",
            get_with(
                "/h2/repeated",
                &[
                    ("x-hush-peer-identity", FORGED),
                    ("x-hush-peer-identity", FORGED),
                    ("x-forwarded-client-cert", XFCC_FORGED),
                    ("x-forwarded-client-cert", XFCC_FORGED),
                    BENIGN,
                ],
            ),
            Expect::App,
        )
        .and_app_saw(got_benign),
        // Node's `http2` lists trailers with the headers (`rawTrailers`).
        H2Case::new(
            "identity headers in trailers",
            post_with_trailers(
                "/h2/trailers",
                &[
                    ("x-hush-peer-identity", FORGED),
                    ("x-forwarded-client-cert", XFCC_FORGED),
                    ("x_hush_peer_identity", FORGED),
                    BENIGN,
                ],
            ),
            Expect::App,
        )
        .and_app_saw(got_benign),
        // h2 refuses the whole header block, and with it the connection.
        H2Case::new(
            "an upper-case identity header",
            get_with("/h2/upper", &[("X-Hush-Peer-Identity", FORGED)]),
            Expect::GoAway(E::PROTOCOL_ERROR),
        ),
        H2Case::new(
            "identity headers with `_` for `-`",
            get_with(
                "/h2/underscores",
                &[
                    ("x_hush_peer_identity", FORGED),
                    ("x_forwarded_client_cert", XFCC_FORGED),
                    BENIGN,
                ],
            ),
            Expect::App,
        )
        .and_app_saw(got_benign),
        H2Case::new(
            "identity headers with `.` for `-`",
            get_with(
                "/h2/dots",
                &[
                    ("x.hush.peer.identity", FORGED),
                    ("x.forwarded.client.cert", XFCC_FORGED),
                    BENIGN,
                ],
            ),
            Expect::App,
        )
        .and_app_saw(got_benign),
        H2Case::new(
            "host different from :authority",
            get_with(
                "/h2/two-hosts",
                &[("host", "admin.internal"), ("x-hush-peer-identity", FORGED)],
            ),
            Expect::Refused(
                400,
                "the request names two hosts: backend.shop in its target and admin.internal in \
                 its Host header",
            ),
        ),
        H2Case::new(
            "connection: keep-alive",
            get_with("/h2/connection", &[("connection", "keep-alive")]),
            Expect::Reset(E::PROTOCOL_ERROR),
        ),
        H2Case::new(
            "te: gzip",
            get_with("/h2/te", &[("te", "gzip")]),
            Expect::Reset(E::PROTOCOL_ERROR),
        ),
        H2Case::new(
            "transfer-encoding: chunked",
            get_with("/h2/transfer-encoding", &[("transfer-encoding", "chunked")]),
            Expect::Reset(E::PROTOCOL_ERROR),
        ),
        H2Case::new(
            "no :path",
            vec![end_headers(
                1,
                &[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", "backend.shop"),
                    ("x-hush-peer-identity", FORGED),
                ],
                true,
            )],
            Expect::Reset(E::PROTOCOL_ERROR),
        ),
        H2Case::new(
            ":method twice",
            vec![end_headers(
                1,
                &[
                    (":method", "GET"),
                    (":method", "DELETE"),
                    (":scheme", "http"),
                    (":authority", "backend.shop"),
                    (":path", "/h2/two-methods"),
                ],
                true,
            )],
            Expect::Reset(E::PROTOCOL_ERROR),
        ),
        H2Case::new(
            "a pseudo-header after a regular one",
            vec![end_headers(
                1,
                &[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", "backend.shop"),
                    ("x-hush-peer-identity", FORGED),
                    (":path", "/h2/late-pseudo"),
                ],
                true,
            )],
            Expect::Reset(E::PROTOCOL_ERROR),
        ),
        // RFC 9113 (section 8.1) calls this malformed; h2 0.4 drops the pseudo-header from the
        // trailers instead, so hush never sees it and the app never gets it.
        H2Case::new(
            "a pseudo-header in trailers",
            post_with_trailers(
                "/h2/pseudo-trailer",
                &[(":status", "200"), ("x-hush-peer-identity", FORGED), BENIGN],
            ),
            Expect::App,
        )
        .and_app_saw(|seen, side| {
            got_benign(seen, side)?;
            match Judge::values_of(seen, ":status").as_slice() {
                [] => Ok(()),
                other => Err(format!("the app got :status {other:?} in trailers")),
            }
        }),
        H2Case::new(
            "an unknown pseudo-header",
            get_with("/h2/unknown-pseudo", &[(":hush", FORGED)]),
            Expect::GoAway(E::PROTOCOL_ERROR),
        ),
        // From the caller, the marker is the outbound side's own business and dropped (the
        // request stays HTTP/2); a peer's marker is obeyed (the app gets HTTP/1.1). Either way
        // the app sees the true identity only.
        H2Case::new(
            "a forged hush-orig-proto marker",
            get_with(
                "/h2/marker",
                &[
                    ("hush-orig-proto", "HTTP/1.1"),
                    ("x-hush-peer-identity", FORGED),
                    BENIGN,
                ],
            ),
            Expect::App,
        )
        .and_app_saw(|seen, side| {
            got_benign(seen, side)?;
            let expected = match side {
                Side::Caller => "HTTP/2",
                Side::Peer => "HTTP/1.1",
            };
            if seen["proto"] != expected {
                return Err(format!(
                    "the app got {} instead of {expected}",
                    seen["proto"]
                ));
            }
            match Judge::values_of(seen, "hush-orig-proto").as_slice() {
                [] => Ok(()),
                other => Err(format!("the app got the marker {other:?}")),
            }
        }),
    ]
}

/// The path a case's request names, to find it in the judge's reports.
fn path_of(case: &H2Case) -> String {
    let mut decoder = h2raw::Decoder::default();
    let first = &case.frames[0];
    decoder
        .decode(&first.payload)
        .expect("the test's own block")
        .into_iter()
        .find(|(n, _)| n == ":path")
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// Runs every request case from `side`, then the connection-level abuse; returns the cases
/// that did not end as expected (the other checks panic at once).
async fn h2_abuse(mesh: &Mesh, judge: &Judge, side: Side) -> Vec<String> {
    let mut wrong = Vec::new();
    for case in request_cases() {
        let path = path_of(&case);
        let mut conn = h2_connection(mesh, side, &[]).await;
        conn.send(&case.frames).await.expect("send the case");
        let outcome = conn.outcome(1).await;
        if !matches(&case.expect, &outcome) {
            wrong.push(format!(
                "{side:?}, {}: expected {:?}, got {outcome:?}",
                case.name, case.expect
            ));
        }
        // The ordinary request after the case is reported after anything the case let through.
        assert_still_serving(mesh, judge).await;
        let seen = (!path.is_empty())
            .then(|| report_of(judge, &path))
            .flatten();
        match (&case.expect, seen) {
            (Expect::App, Some(seen)) => {
                if let Err(e) = (case.app_saw)(&seen, side) {
                    wrong.push(format!("{side:?}, {}: {e}: {seen}", case.name));
                }
            }
            (Expect::App, None) => {
                wrong.push(format!("{side:?}, {}: the app did not see it", case.name));
            }
            (_, Some(seen)) => {
                wrong.push(format!("{side:?}, {}: the app saw {seen}", case.name));
            }
            (_, None) => {}
        }
        assert_nothing_forged(judge, FRONTEND, &format!("{side:?}, {}", case.name));
    }
    wrong.extend(connection_abuse(mesh, judge, side).await);
    wrong
}

/// The abuse of a connection rather than of a request.
async fn connection_abuse(mesh: &Mesh, judge: &Judge, side: Side) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut check = |case: &str, ok: bool, what: String| {
        if !ok {
            wrong.push(format!("{side:?}, {case}: {what}"));
        }
    };

    // Rapid reset (CVE-2023-44487): streams opened and reset at once, hundreds of them.
    let mut conn = h2_connection(mesh, side, &[]).await;
    let mut frames = Vec::new();
    for i in 0..500u32 {
        let stream = 2 * i + 1;
        frames.push(end_headers(
            stream,
            &h2raw::get("/h2/rapid-reset", "backend.shop"),
            true,
        ));
        frames.push(Frame::rst_stream(stream, ErrorCode::CANCEL));
    }
    let _ = conn.send(&frames).await;
    let (_, closed) = conn.drain(Duration::from_secs(5)).await;
    let goaway = conn
        .seen
        .iter()
        .find(|f| f.kind == h2raw::kind::GOAWAY)
        .map(Frame::error_code);
    check(
        "rapid reset",
        goaway == Some(ErrorCode::ENHANCE_YOUR_CALM) && closed,
        format!("GOAWAY {goaway:?}, closed {closed}"),
    );
    assert_nothing_forged(judge, FRONTEND, "rapid reset");
    assert_still_serving(mesh, judge).await;

    // A CONTINUATION flood: a header block that never ends.
    let mut conn = h2_connection(mesh, side, &[]).await;
    let mut frames = vec![Frame::headers(
        1,
        h2raw::block(&h2raw::get("/h2/continuation", "backend.shop")),
        flag::END_STREAM,
    )];
    for i in 0..2000 {
        let name = format!("x-flood-{i}");
        frames.push(Frame::continuation(
            1,
            h2raw::literal(name.as_bytes(), FORGED.as_bytes()),
            false,
        ));
    }
    let _ = conn.send(&frames).await;
    let outcome = conn.outcome(1).await;
    check(
        "CONTINUATION flood",
        matches!(
            outcome,
            Outcome::GoAway {
                code: ErrorCode::ENHANCE_YOUR_CALM,
                ..
            }
        ),
        format!("{outcome:?}"),
    );
    assert_still_serving(mesh, judge).await;
    check(
        "CONTINUATION flood",
        report_of(judge, "/h2/continuation").is_none(),
        "the app saw the request".into(),
    );

    // The largest HPACK table a client can allow the server: acknowledged, and harmless.
    let mut conn = h2_connection(mesh, side, &[(setting::HEADER_TABLE_SIZE, u32::MAX)]).await;
    conn.send(&get_with(
        "/h2/huge-table",
        &[("x-hush-peer-identity", FORGED)],
    ))
    .await
    .expect("send");
    let outcome = conn.outcome(1).await;
    let acked = conn
        .seen
        .iter()
        .any(|f| f.kind == h2raw::kind::SETTINGS && f.has(flag::ACK));
    check(
        "SETTINGS_HEADER_TABLE_SIZE 2^32-1",
        acked && matches!(&outcome, Outcome::Response(r) if r.status == 200),
        format!("acked {acked}, {outcome:?}"),
    );
    assert_still_serving(mesh, judge).await;

    // A dynamic table size update beyond the 4,096 bytes the server allows.
    let mut conn = h2_connection(mesh, side, &[]).await;
    let mut block = h2raw::table_size_update(1 << 20);
    block.extend(h2raw::block(&h2raw::get(
        "/h2/table-update",
        "backend.shop",
    )));
    conn.send(&[Frame::headers(
        1,
        block,
        flag::END_HEADERS | flag::END_STREAM,
    )])
    .await
    .expect("send");
    let outcome = conn.outcome(1).await;
    check(
        "a dynamic table size update beyond the limit",
        matches!(
            outcome,
            Outcome::GoAway {
                code: ErrorCode::PROTOCOL_ERROR,
                ..
            }
        ),
        format!("{outcome:?}"),
    );
    assert_still_serving(mesh, judge).await;
    check(
        "a dynamic table size update beyond the limit",
        report_of(judge, "/h2/table-update").is_none(),
        "the app saw the request".into(),
    );

    // Floods of SETTINGS and PINGs whose acknowledgements the client does not read.
    for (case, frame) in [
        (
            "a SETTINGS flood",
            Frame::settings(&[(setting::INITIAL_WINDOW_SIZE, 65_535)]),
        ),
        ("a PING flood", Frame::ping(*b"hostile!")),
    ] {
        let mut conn = h2_connection(mesh, side, &[]).await;
        conn.answer_control = false;
        let flood = h2raw::wire(&vec![frame.clone(); 10_000]);
        // The server may stop reading while its acknowledgements pile up unread: that is
        // back-pressure, not a failure, so the write is bounded rather than required.
        let wrote = tokio::time::timeout(Duration::from_secs(10), conn.io.write_all(&flood))
            .await
            .is_ok_and(|r| r.is_ok());
        conn.answer_control = true;
        let path = if frame.kind == h2raw::kind::PING {
            "/h2/after-ping-flood"
        } else {
            "/h2/after-settings-flood"
        };
        let _ = conn.send(&get_with(path, &[])).await;
        let outcome = conn.outcome(1).await;
        let acks = conn
            .seen
            .iter()
            .filter(|f| f.kind == frame.kind && f.has(flag::ACK))
            .count();
        check(
            case,
            wrote && acks >= 10_000 && matches!(&outcome, Outcome::Response(r) if r.status == 200),
            format!("wrote all: {wrote}, {acks} acks, then {outcome:?}"),
        );
        assert_still_serving(mesh, judge).await;
    }

    // More concurrent streams than `limits.max_concurrent_streams`.
    let mut conn = h2_connection(mesh, side, &[]).await;
    let streams: Vec<u32> = (0..MAX_STREAMS + 2).map(|i| 2 * i + 1).collect();
    let paths: Vec<String> = streams.iter().map(|s| format!("/h2/stream-{s}")).collect();
    let mut frames = Vec::new();
    for (stream, path) in streams.iter().zip(&paths) {
        // No END_STREAM: each request's body is still to come, so each stream stays open.
        let fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "backend.shop"),
            (":path", path.as_str()),
        ];
        frames.push(end_headers(*stream, &fields, false));
    }
    conn.send(&frames).await.expect("send");
    let refused_a = conn.outcome(streams[MAX_STREAMS as usize]).await;
    let refused_b = conn.outcome(streams[MAX_STREAMS as usize + 1]).await;
    let advertised = conn
        .server_settings
        .first()
        .and_then(|s| {
            s.iter()
                .find(|(id, _)| *id == setting::MAX_CONCURRENT_STREAMS)
        })
        .map(|(_, v)| *v);
    check(
        "streams beyond the limit",
        advertised == Some(MAX_STREAMS)
            && matches!(refused_a, Outcome::Reset(ErrorCode::REFUSED_STREAM))
            && matches!(refused_b, Outcome::Reset(ErrorCode::REFUSED_STREAM)),
        format!("advertised {advertised:?}, then {refused_a:?} and {refused_b:?}"),
    );
    for stream in &streams[..MAX_STREAMS as usize] {
        conn.send(&[Frame::data(*stream, b"", true)])
            .await
            .expect("send");
        let outcome = conn.outcome(*stream).await;
        check(
            "streams within the limit",
            matches!(&outcome, Outcome::Response(r) if r.status == 200),
            format!("stream {stream}: {outcome:?}"),
        );
    }
    assert_still_serving(mesh, judge).await;
    for path in &paths[MAX_STREAMS as usize..] {
        check(
            "streams beyond the limit",
            report_of(judge, path).is_none(),
            format!("the app saw {path}"),
        );
    }
    assert_nothing_forged(judge, FRONTEND, &format!("{side:?}, connection abuse"));
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_abuse_from_a_hostile_caller() {
    let judge = Judge::node_h2();
    let mesh = h2_mesh(&judge).await;
    let wrong = h2_abuse(&mesh, &judge, Side::Caller).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(!mesh.frontend.stderr().contains("panicked"));
    assert!(!mesh.backend.stderr().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_abuse_from_a_hostile_peer() {
    let judge = Judge::node_h2();
    let mesh = h2_mesh(&judge).await;
    let wrong = h2_abuse(&mesh, &judge, Side::Peer).await;
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(!mesh.backend.stderr().contains("panicked"));
}

// === slow clients ===

/// Writes `bytes` one at a time, `pause` apart, until the server closes the connection;
/// returns how many were written by then (all of them if it never closed) and what came back.
async fn trickle<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    bytes: &[u8],
    pause: Duration,
) -> (usize, Vec<u8>) {
    let mut answer = Vec::new();
    for (sent, byte) in bytes.iter().enumerate() {
        if io.write_all(&[*byte]).await.is_err() {
            return (sent, answer);
        }
        let mut chunk = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + pause;
        loop {
            match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => return (sent + 1, answer),
                Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    }
    (bytes.len(), answer)
}

/// The pause between the bytes of a trickled head.
const TRICKLE: Duration = Duration::from_millis(200);

/// A request head with a forged identity, `padding` bytes of headers long: at a byte per
/// [`TRICKLE`], long enough that only a timeout can end it before it is whole.
fn trickled_head(path: &str, padding: usize) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: backend.shop\r\nx-hush-peer-identity: {FORGED}\r\n\
         x-padding: {}\r\n\r\n",
        "p".repeat(padding)
    )
}

/// Whether a trickled head was cut off before it was whole, unanswered, and unseen by the
/// app; `Err` says what happened instead.
fn cut_off(
    judge: &Judge,
    path: &str,
    head: &str,
    (sent, answer): (usize, Vec<u8>),
) -> Result<(), String> {
    let seen = report_of(judge, path);
    if sent < head.len() && answer.is_empty() && seen.is_none() {
        return Ok(());
    }
    Err(format!(
        "{sent} of {} bytes sent before the connection closed; answered {:?}; the app saw {}",
        head.len(),
        String::from_utf8_lossy(&answer),
        seen.map_or("nothing".into(), |s| s.to_string())
    ))
}

/// `limits.header_timeout` bounds a request head from its first byte; `idle_timeout` is left
/// at its default (an hour) so that only the header timeout can cut these heads short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off_and_quiet_keep_alive_is_not() {
    let judge = Judge::python();
    let mesh = mesh_in_front_of(
        &judge,
        MeshSpec {
            sidecars: edit(|c: &mut ProxyConfig| c.limits.header_timeout = Duration::from_secs(1)),
            ..MeshSpec::default()
        },
    )
    .await;

    // Through the outbound listener: detection gives up on the slow start and relays it to
    // the backend as TCP, whose inbound side serves it as HTTP once the request line shows it
    // is one, and times its head.
    let head = trickled_head("/trickled-out", 60);
    let mut tcp = TcpStream::connect(mesh.to_backend())
        .await
        .expect("connect");
    let cut = trickle(&mut tcp, head.as_bytes(), TRICKLE).await;
    if let Err(e) = cut_off(&judge, "/trickled-out", &head, cut) {
        panic!("through the outbound listener: {e}");
    }

    // From a peer, over mutual TLS, announcing HTTP/1.1.
    let head = trickled_head("/trickled-in", 60);
    let mut tls = hostile_peer(&mesh, FRONTEND, b"http/1.1").await;
    let cut = trickle(&mut tls, head.as_bytes(), TRICKLE).await;
    if let Err(e) = cut_off(&judge, "/trickled-in", &head, cut) {
        panic!("from a peer: {e}");
    }

    // A keep-alive connection that waits quietly between requests is not a slow head.
    let tcp = TcpStream::connect(mesh.to_backend())
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    for (i, path) in ["/first", "/second"].into_iter().enumerate() {
        if i > 0 {
            // Twice `header_timeout`, in silence.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let request = http::Request::get(path)
            .header("host", "backend.shop")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("a request");
        let response = within(sender.send_request(request))
            .await
            .unwrap_or_else(|e| panic!("{path} on the kept-alive connection: {e}"));
        assert_eq!(response.status(), 200, "{path}");
        // Read to the end, or the client cannot use the connection again.
        let body = within(response.into_body().collect())
            .await
            .expect("the body")
            .to_bytes();
        let seen = json(&String::from_utf8_lossy(&body));
        assert_eq!(seen["path"], path);
    }

    // The admin port: a client that sends nothing, and one that trickles its head.
    let admin = mesh.frontend.admin();
    let mut silent = TcpStream::connect(admin).await.expect("connect");
    let answer = tlsraw::until_closed(&mut silent, BOUND)
        .await
        .expect("a silent admin client is cut off");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let mut slow = TcpStream::connect(admin).await.expect("connect");
    let head =
        b"GET /ready HTTP/1.1\r\nhost: admin\r\nx-padding: pppppppppppppppppppppppppppppp\r\n\r\n";
    let (sent, answer) = trickle(&mut slow, head, TRICKLE).await;
    assert!(
        sent < head.len(),
        "the trickled admin head was never cut off"
    );
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let (status, body) = hush_test_support::http_request(admin, "GET", "/ready");
    assert_eq!(status, 200, "{body}");

    assert_nothing_forged(&judge, FRONTEND, "slow heads");
    assert_still_serving(&mesh, &judge).await;
}

/// A request line trickled a byte at a time, then the rest of its head at once: the head must
/// be whole within `header_timeout` of its first byte, request line included. Through the
/// outbound listener, detection gives up on the slow start and relays the connection as TCP;
/// a peer may announce `hush/tcp` itself. Either way the backend's inbound side holds the
/// first line back until it can tell it is HTTP, and that line too must decide within
/// `header_timeout` of its first byte (it was bounded only by `idle_timeout`, which each byte
/// resets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_line_is_cut_off_by_the_header_timeout() {
    let judge = Judge::python();
    let mesh = mesh_in_front_of(
        &judge,
        MeshSpec {
            sidecars: edit(|c: &mut ProxyConfig| c.limits.header_timeout = Duration::from_secs(1)),
            ..MeshSpec::default()
        },
    )
    .await;
    let outbound = TcpStream::connect(mesh.to_backend())
        .await
        .expect("connect");
    let peer = hostile_peer(&mesh, FRONTEND, b"hush/tcp").await;
    let (outbound, peer) = tokio::join!(
        trickle_request_line("outbound", outbound),
        trickle_request_line("peer", peer),
    );
    // Reported after anything the trickled requests got to the app.
    assert_still_serving(&mesh, &judge).await;
    let failures: Vec<String> = [
        ("through the outbound listener", outbound),
        ("from a peer announcing hush/tcp", peer),
    ]
    .into_iter()
    .filter_map(|(who, (path, head, cut))| {
        cut_off(&judge, &path, &head, cut)
            .err()
            .map(|e| format!("{who}: {e}"))
    })
    .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_nothing_forged(&judge, FRONTEND, "a trickled request line");
}

/// 11 s of request line at a byte per [`TRICKLE`], then the rest of the head at once; returns
/// the path, the head and how far it got.
async fn trickle_request_line<S: AsyncRead + AsyncWrite + Unpin>(
    name: &str,
    mut io: S,
) -> (String, String, (usize, Vec<u8>)) {
    let path = format!("/slow-line-{name}-{}", "a".repeat(40));
    let line = format!("GET {path} ");
    let rest = format!("HTTP/1.1\r\nHost: backend.shop\r\nx-hush-peer-identity: {FORGED}\r\n\r\n");
    let (sent, answer) = trickle(&mut io, line.as_bytes(), TRICKLE).await;
    let cut = if sent < line.len() {
        (sent, answer)
    } else {
        let more = exchange_raw(&mut io, &[rest.as_bytes()], Duration::ZERO).await;
        (line.len() + rest.len(), more.into_bytes())
    };
    (path, format!("{line}{rest}"), cut)
}

/// PINGs alone do not keep an HTTP/2 connection open (`limits.idle_timeout`), from a caller
/// or from a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_kept_busy_by_pings_alone_are_closed() {
    let judge = Judge::python();
    let mesh = mesh_in_front_of(
        &judge,
        MeshSpec {
            sidecars: edit(|c: &mut ProxyConfig| c.limits.idle_timeout = Duration::from_secs(3)),
            ..MeshSpec::default()
        },
    )
    .await;
    let pingers = [Side::Caller, Side::Peer].map(|side| {
        let mesh = &mesh;
        async move {
            let mut conn = h2_connection(mesh, side, &[]).await;
            let mut pongs = 0;
            let deadline = tokio::time::Instant::now() + BOUND;
            while tokio::time::Instant::now() < deadline {
                if conn.send(&[Frame::ping(*b"stayhere")]).await.is_err() {
                    break;
                }
                match conn.read(Duration::from_millis(250)).await {
                    h2raw::Read::Closed => break,
                    h2raw::Read::Frame(f) if f.kind == h2raw::kind::PING => pongs += 1,
                    _ => {}
                }
            }
            let closed = tokio::time::Instant::now() < deadline;
            (side, closed, pongs)
        }
    });
    for (side, closed, pongs) in futures_util::future::join_all(pingers).await {
        assert!(
            closed,
            "{side:?}: a connection kept busy by PINGs alone stayed open"
        );
        assert!(pongs > 1, "{side:?}: the PINGs were not answered ({pongs})");
    }
    assert_still_serving(&mesh, &judge).await;
}
