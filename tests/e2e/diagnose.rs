//! `hush diagnose` against real servers on loopback, one for each way a connection between
//! sidecars goes wrong: a healthy sidecar (with a real CA), an expired certificate, a foreign
//! CA, a wrong SPIFFE ID, a server that does not ask for a client certificate, a plaintext
//! port, and a TLS 1.2-only server (Python's `ssl`, since hush's own TLS has no 1.2). Each must
//! name the right step and reason, in words and in `--json`. And `hush check` on a sound
//! installation and on each broken part of one.
//!
//! Then every refusal a new user meets, tried as they would: against `openssl s_server` (the
//! usual judge of what a TLS server sends) and a hush sidecar. Each answer must be true: the
//! words that matter are asserted, and so is the absence of the misleading ones diagnose used to
//! say (a leaf sent without its intermediate is not "another CA").
//!
//! | server | step / reason |
//! |---|---|
//! | `s_server -cert leaf.pem` (no `-cert_chain`) | 3 `incomplete_chain`, naming the missing issuer |
//! | the full chain of another `hush ca init` (same names, other keys) | 3 `same_name_other_ca` |
//! | `s_server -cert intermediate.pem -key intermediate.key` | 3 `ca_as_leaf` |
//! | a certificate valid only in an hour (clock skew) | 3 `not_yet_valid`, this clock and the CA's |
//! | a certificate with DNS names only | 3 `not_an_svid`, naming the DNS names |
//! | an expired certificate, another trust domain, TLS 1.2 only | 3 `expired`, 3 `foreign_trust_domain`, 2 `tls_version` |
//! | `s_server -Verify` trusting another CA | 4 `refused_by_peer`; ours checks out against `--bundle` |
//! | a sidecar, and we send our leaf without its intermediate | 4 `refused_by_peer`; our chain is incomplete |
//! | `s_server -verify` (optional), no certificate of ours | 4 `no_credentials`, optional not required |
//! | a server hanging up after the handshake | 4 `closed_after_handshake`, not "may not speak TLS" |

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use base64::Engine as _;
use hush_test_support::{
    HushProcess, TestCa, TestLeaf, describe_output, dns_leaf_from_ca_dir, expired_leaf_from_ca_dir,
    leaf_from_ca_dir, mint_token, not_yet_valid_leaf_from_ca_dir, openssl_available,
};
use hush_tls::rustls;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::mesh::sidecars::{BACKEND, FRONTEND, HUSH, LoneBackend, new_ca, path_str};

/// Runs `hush diagnose ARGS… --json` and returns the report, with the human report of the same
/// run's arguments for the message checks.
pub(crate) fn diagnose(args: &[&str]) -> (Output, Value, String) {
    let json = Command::new(HUSH)
        .arg("diagnose")
        .args(args)
        .arg("--json")
        .output()
        .expect("run hush diagnose");
    let report: Value = serde_json::from_slice(&json.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{}", describe_output(&json)));
    let human = Command::new(HUSH)
        .arg("diagnose")
        .args(args)
        .output()
        .expect("run hush diagnose");
    assert_eq!(human.status.code(), json.status.code());
    let text = String::from_utf8_lossy(&human.stdout).into_owned();
    // Shown when a test fails (and with --nocapture).
    eprintln!("{text}");
    (json, report, text)
}

/// The step and reason the report names as the failure.
pub(crate) fn failure(report: &Value) -> (u64, String) {
    let failure = &report["failure"];
    (
        failure["step"]
            .as_u64()
            .unwrap_or_else(|| panic!("no failure in {report:#}")),
        failure["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// A TLS 1.3 server on loopback with `leaf`, asking for client certificates or not; it
/// completes handshakes and then holds each connection until the client leaves.
async fn tls_server(
    leaf: TestLeaf,
    client_auth: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> SocketAddr {
    let builder = rustls::ServerConfig::builder_with_provider(hush_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3");
    let builder = match client_auth {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(leaf.chain, leaf.key)
        .expect("a server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 1024];
                    while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    addr
}

/// DER as PEM text.
fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn bundle_of(ca_dir: &Path) -> String {
    path_str(&ca_dir.join("bundle.pem")).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_sidecar_is_told_step_by_step() {
    let LoneBackend {
        temp,
        ca_dir,
        ca,
        sidecar: backend,
        ..
    } = LoneBackend::start(&[]).await;
    let token = temp.path().join("frontend.token");
    std::fs::write(&token, mint_token(HUSH, &ca_dir, FRONTEND, &[])).expect("token");
    let target = backend.inbound().to_string();
    let bundle = bundle_of(&ca_dir);
    // A fresh token for each of the two runs (join tokens are single use).
    let token_again = temp.path().join("frontend-2.token");
    std::fs::write(&token_again, mint_token(HUSH, &ca_dir, FRONTEND, &[])).expect("token");

    let run = |token: &Path, json: bool| {
        let mut command = Command::new(HUSH);
        command.args([
            "diagnose",
            &target,
            "--bundle",
            &bundle,
            "--token-file",
            path_str(token),
            "--ca",
            ca.url(),
            "--expect-id",
            BACKEND,
        ]);
        if json {
            command.arg("--json");
        }
        command.output().expect("run hush diagnose")
    };
    let output = run(&token, false);
    assert!(output.status.success(), "{}", describe_output(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "step 1, connection: ok",
        "step 2, hello: ok",
        "we offered: TLS 1.3; cipher suites TLS13_AES_128_GCM_SHA256",
        "key shares X25519MLKEM768",
        "the server chose: TLS 1.3, TLS13_",
        "key exchange X25519MLKEM768, ALPN h2",
        "step 3, certificate verification: ok",
        &format!("1. {BACKEND} — issued by O=hush, CN=hush intermediate CA (cluster.local)"),
        "chain: ok, to a root of the bundle (trust domain cluster.local)",
        &format!("SPIFFE ID: ok, {BACKEND} (expected {BACKEND})"),
        "step 4, client certificate: ok",
        &format!("we presented {FRONTEND}"),
        "and it accepted it",
        "result: ok, mutual TLS works",
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }

    let output = run(&token_again, true);
    assert!(output.status.success(), "{}", describe_output(&output));
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["ok"], true);
    assert!(report["failure"].is_null());
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 4);
    assert!(steps.iter().all(|s| s["status"] == "ok"), "{report:#}");
    assert_eq!(steps[1]["details"]["chosen"]["group"], "X25519MLKEM768");
    assert_eq!(steps[1]["details"]["chosen"]["version"], "TLS 1.3");
    assert_eq!(steps[1]["details"]["offered"]["versions"][0], "TLS 1.3");
    assert_eq!(steps[2]["details"]["chain"][0]["spiffe_id"], BACKEND);
    assert!(
        steps[2]["details"]["chain"][0]["seconds_left"]
            .as_i64()
            .unwrap_or(0)
            > 0
    );

    // Another identity than the one there: step 3, by the SPIFFE ID.
    let (output, report, text) = diagnose(&[
        &target,
        "--bundle",
        &bundle,
        "--expect-id",
        "spiffe://cluster.local/ns/shop/sa/payments",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(failure(&report), (3, "unexpected_identity".to_string()));
    assert!(
        text.contains("result: FAILED at step 3, certificate verification:")
            && text.contains("spiffe://cluster.local/ns/shop/sa/payments")
            && text.contains(BACKEND),
        "{text}"
    );
    assert!(
        text.contains("hint: the server is another workload than expected"),
        "{text}"
    );

    // No identity of our own: the sidecar asks for one, and step 4 says so.
    let (_, report, _) = diagnose(&[&target, "--bundle", &bundle]);
    assert_eq!(failure(&report), (4, "no_credentials".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_fails_at_validity_with_how_long_ago() {
    let (_temp, ca_dir) = new_ca();
    let addr = tls_server(expired_leaf_from_ca_dir(&ca_dir, BACKEND), None).await;
    let (output, report, text) = diagnose(&[&addr.to_string(), "--bundle", &bundle_of(&ca_dir)]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(failure(&report), (3, "expired".to_string()));
    assert!(
        text.contains(
            "result: FAILED at step 3, certificate verification: the server's certificate \
             expired at"
        ) && text.contains(" ago)"),
        "{text}"
    );
    assert!(text.contains("(expired 1 h 0 min ago)"), "{text}");
    assert!(text.contains("validity: FAILED"), "{text}");
    assert!(
        text.contains("hint: the server's sidecar is not renewing its certificate"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_fails_at_the_chain() {
    let (_temp, ca_dir) = new_ca();
    let foreign = TestCa::new("cluster.local").leaf(BACKEND);
    let addr = tls_server(foreign, None).await;
    let (_, report, text) = diagnose(&[&addr.to_string(), "--bundle", &bundle_of(&ca_dir)]);
    assert_eq!(failure(&report), (3, "unknown_issuer".to_string()));
    assert!(text.contains("certificate chain: FAILED"), "{text}");
    assert!(text.contains("it was issued by another CA"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_ask_for_our_certificate_fails_at_step_4() {
    let (_temp, ca_dir) = new_ca();
    let addr = tls_server(leaf_from_ca_dir(&ca_dir, Some(BACKEND)), None).await;
    let (_, report, text) = diagnose(&[&addr.to_string(), "--bundle", &bundle_of(&ca_dir)]);
    assert_eq!(failure(&report), (4, "no_client_auth".to_string()));
    assert!(
        text.contains("step 3, certificate verification: ok"),
        "{text}"
    );
    assert!(
        text.contains("the server did not ask for a client certificate: it does not do mutual TLS"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_port_fails_at_the_hello_with_what_it_answered() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = [0u8; 2048];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let (_, report, text) = diagnose(&[&addr.to_string()]);
    assert_eq!(failure(&report), (2, "not_tls".to_string()));
    assert!(
        text.contains("the server answered in plaintext, not TLS: \"HTTP/1.1 400 Bad Request"),
        "{text}"
    );
    assert!(
        text.contains("hint: this port does not speak TLS"),
        "{text}"
    );

    // And a port where nothing listens: step 1.
    drop(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    let closed = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("address")
    };
    let (_, report, _) = diagnose(&[&closed.to_string()]);
    assert_eq!(failure(&report), (1, "refused".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_only_server_is_named_as_such() {
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("SKIPPED: /usr/bin/python3 is needed for a TLS 1.2 server");
        return;
    }
    let (temp, ca_dir) = new_ca();
    let leaf = leaf_from_ca_dir(&ca_dir, Some(BACKEND));
    let cert = temp.path().join("tls12.crt");
    let key = temp.path().join("tls12.key");
    let chain: String = leaf.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    std::fs::write(&cert, chain).expect("write the certificate");
    std::fs::write(&key, pem("PRIVATE KEY", leaf.key.secret_der())).expect("write the key");
    let script = r#"
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(8)
print(server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    try:
        tls = ctx.wrap_socket(conn, server_side=True)
        tls.close()
    except (ssl.SSLError, OSError):
        conn.close()
"#;
    let mut python = hush_test_support::HushProcess::spawn(
        "/usr/bin/python3",
        &["-c", script, path_str(&cert), path_str(&key)],
    );
    let port = python
        .wait_for_line(
            |l| l.trim().parse::<u16>().is_ok(),
            std::time::Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("the TLS 1.2 server did not start: {e}"));
    let target = format!("127.0.0.1:{}", port.trim());
    let (_, report, text) = diagnose(&[&target, "--bundle", &bundle_of(&ca_dir)]);
    assert_eq!(failure(&report), (2, "tls_version".to_string()), "{text}");
    assert!(
        text.contains("the server speaks TLS 1.2 only; hush sidecars speak TLS 1.3 only"),
        "{text}"
    );
    assert!(
        text.contains("the server answered with the alert ProtocolVersion"),
        "{text}"
    );
}

// === every refusal, as a new user meets it ===

/// What `hush diagnose` must say about one broken server: the step and reason it fails with,
/// words that must be there, and misleading words that must not.
struct Verdict<'a> {
    step: u64,
    reason: &'a str,
    says: &'a [&'a str],
    never: &'a [&'a str],
}

/// Runs `hush diagnose ARGS…` and checks its answer against `verdict`, in words and in `--json`.
fn assert_verdict(args: &[&str], verdict: &Verdict<'_>) {
    let (output, report, text) = diagnose(args);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert_eq!(
        failure(&report),
        (verdict.step, verdict.reason.to_string()),
        "{text}"
    );
    assert!(text.contains("\nhint: "), "no hint in:\n{text}");
    for words in verdict.says {
        assert!(text.contains(words), "{words:?} missing in:\n{text}");
    }
    for words in verdict.never {
        assert!(!text.contains(words), "{words:?} misleads in:\n{text}");
    }
}

/// Files for `openssl s_server` and `hush diagnose`: PEM certificates and keys in a folder.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        Self(tempfile::tempdir().expect("temp dir"))
    }

    /// Writes `certs` (PEM, in order) to `name` and returns its path.
    fn certs(&self, name: &str, certs: &[rustls::pki_types::CertificateDer<'_>]) -> String {
        let path = self.0.path().join(name);
        let text: String = certs.iter().map(|c| pem("CERTIFICATE", c)).collect();
        std::fs::write(&path, text).expect("write certificates");
        path_str(&path).to_string()
    }

    /// Writes `leaf`'s key to `name` and returns its path.
    fn key(&self, name: &str, leaf: &TestLeaf) -> String {
        let path = self.0.path().join(name);
        std::fs::write(&path, pem("PRIVATE KEY", leaf.key.secret_der())).expect("write the key");
        path_str(&path).to_string()
    }
}

/// `openssl s_server` on a free loopback port with `args`, and its address; `None` (the test
/// is skipped) without the `openssl` command. Its standard input is empty, so without `-rev`
/// (which echoes, and never reads its input) it closes each connection after the handshake.
pub(crate) fn openssl_server(args: &[&str]) -> Option<(HushProcess, String)> {
    if !openssl_available() {
        eprintln!("SKIPPED: the openssl command is needed");
        return None;
    }
    let mut full = vec!["s_server", "-accept", "127.0.0.1:0"];
    full.extend_from_slice(args);
    let mut server = HushProcess::spawn("openssl", &full);
    let line = server
        .wait_for_line(
            |l| l.starts_with("ACCEPT "),
            std::time::Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("openssl s_server did not start: {e}"));
    let addr = line.trim_start_matches("ACCEPT ").trim().to_string();
    Some((server, addr))
}

/// The name hush's CA gives its intermediate, as diagnose prints issuers.
const INTERMEDIATE: &str = "O=hush, CN=hush intermediate CA (cluster.local)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_sent_without_its_intermediate_is_an_incomplete_chain_naming_the_missing_issuer() {
    let (_temp, ca_dir) = new_ca();
    let bundle = bundle_of(&ca_dir);
    let files = Files::new();
    let leaf = leaf_from_ca_dir(&ca_dir, Some(BACKEND));
    let leaf_pem = files.certs("leaf.pem", &leaf.chain[..1]);
    let intermediate_pem = files.certs("intermediate.pem", &leaf.chain[1..]);
    let key = files.key("leaf.key", &leaf);
    let Some((_server, addr)) = openssl_server(&["-cert", &leaf_pem, "-key", &key, "-rev"]) else {
        return;
    };
    let incomplete = Verdict {
        step: 3,
        reason: "incomplete_chain",
        says: &[
            "the chain is incomplete",
            &format!(
                "the server sent {BACKEND} issued by {INTERMEDIATE}, but not {INTERMEDIATE}'s certificate"
            ),
            "-cert_chain",
        ],
        never: &["another CA"],
    };
    assert_verdict(&[&addr, "--bundle", &bundle], &incomplete);

    // The same certificate with its chain, as the hint says: the chain verifies.
    let Some((_server, addr)) = openssl_server(&[
        "-cert",
        &leaf_pem,
        "-cert_chain",
        &intermediate_pem,
        "-key",
        &key,
        "-rev",
    ]) else {
        return;
    };
    let (_, _, text) = diagnose(&[&addr, "--bundle", &bundle]);
    assert!(
        text.contains("step 3, certificate verification: ok"),
        "{text}"
    );

    // A leaf of another CA, alone: all that can be known is that its issuer is missing.
    let (_other_temp, other_ca) = new_ca();
    let foreign = leaf_from_ca_dir(&other_ca, Some(BACKEND));
    let foreign_pem = files.certs("foreign.pem", &foreign.chain[..1]);
    let foreign_key = files.key("foreign.key", &foreign);
    let Some((_server, addr)) =
        openssl_server(&["-cert", &foreign_pem, "-key", &foreign_key, "-rev"])
    else {
        return;
    };
    assert_verdict(&[&addr, "--bundle", &bundle], &incomplete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_chain_of_another_ca_with_the_same_names_is_another_ca() {
    let (_temp, ca_dir) = new_ca();
    // `hush ca init` again: the same names, other keys (another cluster, or `--force`).
    let (_other_temp, other_ca) = new_ca();
    let files = Files::new();
    let foreign = leaf_from_ca_dir(&other_ca, Some(BACKEND));
    let Some((_server, addr)) = openssl_server(&[
        "-cert",
        &files.certs("leaf.pem", &foreign.chain[..1]),
        "-cert_chain",
        &files.certs("intermediate.pem", &foreign.chain[1..]),
        "-key",
        &files.key("leaf.key", &foreign),
        "-rev",
    ]) else {
        return;
    };
    assert_verdict(
        &[&addr, "--bundle", &bundle_of(&ca_dir)],
        &Verdict {
            step: 3,
            reason: "same_name_other_ca",
            says: &[
                "issued by another CA with the same name",
                "O=hush, CN=hush root CA (cluster.local)",
                "hush ca init --force",
            ],
            never: &["incomplete"],
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_certificate_served_as_the_servers_own_is_named() {
    let (_temp, ca_dir) = new_ca();
    let intermediate = path_str(&ca_dir.join("intermediate.pem")).to_string();
    let key = path_str(&ca_dir.join("intermediate.key")).to_string();
    let Some((_server, addr)) = openssl_server(&["-cert", &intermediate, "-key", &key, "-rev"])
    else {
        return;
    };
    assert_verdict(
        &[&addr, "--bundle", &bundle_of(&ca_dir)],
        &Verdict {
            step: 3,
            reason: "ca_as_leaf",
            says: &[
                &format!(
                    "the server presents a CA certificate as its own: {INTERMEDIATE} (CA=true"
                ),
                "svid.pem",
            ],
            never: &["CaUsedAsEndEntity", "another CA"],
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_not_valid_yet_points_at_this_clock_and_the_cas() {
    let (_temp, ca_dir) = new_ca();
    let files = Files::new();
    let leaf = not_yet_valid_leaf_from_ca_dir(&ca_dir, BACKEND);
    let Some((_server, addr)) = openssl_server(&[
        "-cert",
        &files.certs("leaf.pem", &leaf.chain[..1]),
        "-cert_chain",
        &files.certs("intermediate.pem", &leaf.chain[1..]),
        "-key",
        &files.key("leaf.key", &leaf),
        "-rev",
    ]) else {
        return;
    };
    assert_verdict(
        &[&addr, "--bundle", &bundle_of(&ca_dir)],
        &Verdict {
            step: 3,
            reason: "not_yet_valid",
            says: &[
                "the server's certificate is not valid until",
                "this machine's clock is behind the clock of the CA",
            ],
            // The server's clock plays no part in our verdict.
            never: &["clocks of both machines"],
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_only_certificate_is_named_by_its_dns_names() {
    let (_temp, ca_dir) = new_ca();
    let files = Files::new();
    let leaf = dns_leaf_from_ca_dir(&ca_dir, &["backend.shop.svc.cluster.local"]);
    let Some((_server, addr)) = openssl_server(&[
        "-cert",
        &files.certs("leaf.pem", &leaf.chain[..1]),
        "-cert_chain",
        &files.certs("intermediate.pem", &leaf.chain[1..]),
        "-key",
        &files.key("leaf.key", &leaf),
        "-rev",
    ]) else {
        return;
    };
    assert_verdict(
        &[&addr, "--bundle", &bundle_of(&ca_dir)],
        &Verdict {
            step: 3,
            reason: "not_an_svid",
            says: &[
                "it names DNS backend.shop.svc.cluster.local and no SPIFFE ID",
                "hush identifies servers by SPIFFE ID, not by host name",
            ],
            never: &["another CA"],
        },
    );
}

/// Classes whose answers were already true, pinned against `openssl s_server`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_foreign_trust_domain_and_tls_1_2_servers_are_named_truly() {
    let (_temp, ca_dir) = new_ca();
    let bundle = bundle_of(&ca_dir);
    let files = Files::new();
    let cases: [(TestLeaf, &[&str], Verdict<'_>); 3] = [
        (
            expired_leaf_from_ca_dir(&ca_dir, BACKEND),
            &[],
            Verdict {
                step: 3,
                reason: "expired",
                says: &[
                    "the server's certificate expired at",
                    "an expired certificate cannot be renewed",
                ],
                never: &["another CA", "clock"],
            },
        ),
        (
            leaf_from_ca_dir(&ca_dir, Some("spiffe://other.example/ns/shop/sa/backend")),
            &[],
            Verdict {
                step: 3,
                reason: "foreign_trust_domain",
                says: &[
                    "spiffe://other.example/ns/shop/sa/backend is not in trust domain cluster.local",
                ],
                never: &["another CA"],
            },
        ),
        (
            leaf_from_ca_dir(&ca_dir, Some(BACKEND)),
            &["-tls1_2"],
            Verdict {
                step: 2,
                reason: "tls_version",
                says: &["the server speaks TLS 1.2 only"],
                never: &[],
            },
        ),
    ];
    for (leaf, extra, verdict) in cases {
        let mut args = vec![
            "-cert".to_string(),
            files.certs("leaf.pem", &leaf.chain[..1]),
            "-cert_chain".to_string(),
            files.certs("intermediate.pem", &leaf.chain[1..]),
            "-key".to_string(),
            files.key("leaf.key", &leaf),
            "-rev".to_string(),
        ];
        args.extend(extra.iter().map(ToString::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let Some((_server, addr)) = openssl_server(&args) else {
            return;
        };
        assert_verdict(&[&addr, "--bundle", &bundle], &verdict);
    }
}

/// `openssl s_server` presenting a valid chain of the CA in `ca_dir`, asking for client
/// certificates with `client_auth` (`-Verify 1 -verify_return_error -CAfile …`, say).
fn mutual_openssl_server(
    files: &Files,
    ca_dir: &Path,
    client_auth: &[&str],
) -> Option<(HushProcess, String)> {
    let leaf = leaf_from_ca_dir(ca_dir, Some(BACKEND));
    let leaf_pem = files.certs("server.pem", &leaf.chain[..1]);
    let chain_pem = files.certs("server-chain.pem", &leaf.chain[1..]);
    let key = files.key("server.key", &leaf);
    let mut args = vec!["-cert", &leaf_pem, "-cert_chain", &chain_pem, "-key", &key];
    args.extend_from_slice(client_auth);
    args.push("-rev");
    openssl_server(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_trusting_another_ca_refuses_ours_and_we_say_ours_checks_out() {
    let (_temp, ca_dir) = new_ca();
    let (_other_temp, other_ca) = new_ca();
    let files = Files::new();
    let other_bundle = bundle_of(&other_ca);
    let Some((_server, addr)) = mutual_openssl_server(
        &files,
        &ca_dir,
        &[
            "-Verify",
            "1",
            "-verify_return_error",
            "-CAfile",
            &other_bundle,
        ],
    ) else {
        return;
    };
    let ours = leaf_from_ca_dir(&ca_dir, Some(FRONTEND));
    assert_verdict(
        &[
            &addr,
            "--bundle",
            &bundle_of(&ca_dir),
            "--cert",
            &files.certs("ours.pem", &ours.chain),
            "--key",
            &files.key("ours.key", &ours),
        ],
        &Verdict {
            step: 4,
            reason: "refused_by_peer",
            says: &[
                "the server refused our certificate (alert UnknownCA)",
                "Our certificate verifies against --bundle here",
                "the server trusts other roots than --bundle's",
            ],
            never: &[],
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_refusing_our_leaf_sent_without_its_intermediate_is_told_why() {
    let LoneBackend {
        temp: _temp,
        ca_dir,
        ca: _ca,
        sidecar: backend,
        ..
    } = LoneBackend::start(&[]).await;
    let files = Files::new();
    let ours = leaf_from_ca_dir(&ca_dir, Some(FRONTEND));
    assert_verdict(
        &[
            &backend.inbound().to_string(),
            "--bundle",
            &bundle_of(&ca_dir),
            "--cert",
            &files.certs("ours.pem", &ours.chain[..1]),
            "--key",
            &files.key("ours.key", &ours),
        ],
        &Verdict {
            step: 4,
            reason: "refused_by_peer",
            says: &[
                "the server refused our certificate (alert UnknownCA)",
                &format!(
                    "our chain is incomplete: we sent {FRONTEND} issued by {INTERMEDIATE}, but not {INTERMEDIATE}'s certificate"
                ),
            ],
            never: &["another CA"],
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_asking_for_a_certificate_it_does_not_require_is_not_said_to_require_it() {
    let (_temp, ca_dir) = new_ca();
    let files = Files::new();
    let bundle = bundle_of(&ca_dir);
    // `-verify` (lower case): asked for, not required.
    let Some((_server, addr)) =
        mutual_openssl_server(&files, &ca_dir, &["-verify", "1", "-CAfile", &bundle])
    else {
        return;
    };
    assert_verdict(
        &[&addr, "--bundle", &bundle],
        &Verdict {
            step: 4,
            reason: "no_credentials",
            says: &["accepted the connection without one", "optional"],
            never: &["requires"],
        },
    );
    // `-Verify` (upper case): required, and refused with an alert.
    let Some((_server, addr)) = mutual_openssl_server(
        &files,
        &ca_dir,
        &["-Verify", "1", "-verify_return_error", "-CAfile", &bundle],
    ) else {
        return;
    };
    assert_verdict(
        &[&addr, "--bundle", &bundle],
        &Verdict {
            step: 4,
            reason: "no_credentials",
            says: &["the server requires a client certificate and we presented none"],
            never: &["optional"],
        },
    );
}

/// A TLS 1.3 server on loopback with `leaf` that requires a client certificate of `ca_dir`'s
/// bundle and, once the handshake is done, hangs up: with a TLS `close_notify` or, when
/// `close_notify` is false, by closing the socket alone.
async fn hanging_up_tls_server(leaf: TestLeaf, ca_dir: &Path, close_notify: bool) -> SocketAddr {
    let pem = std::fs::read(ca_dir.join("bundle.pem")).expect("bundle.pem");
    let bundle = hush_identity::TrustBundle::from_pem(&pem, None).expect("a bundle");
    let verifier = hush_tls::SpiffeClientVerifier::new(&bundle, true).expect("a verifier");
    let config = rustls::ServerConfig::builder_with_provider(hush_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(leaf.chain, leaf.key)
        .expect("a server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await
                    && close_notify
                {
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_hanging_up_after_the_handshake_is_not_suspected_of_not_speaking_tls() {
    let (_temp, ca_dir) = new_ca();
    let files = Files::new();
    let bundle = bundle_of(&ca_dir);
    let ours = leaf_from_ca_dir(&ca_dir, Some(FRONTEND));
    let cert = files.certs("ours.pem", &ours.chain);
    let key = files.key("ours.key", &ours);
    for close_notify in [true, false] {
        let leaf = leaf_from_ca_dir(&ca_dir, Some(BACKEND));
        let addr = hanging_up_tls_server(leaf, &ca_dir, close_notify)
            .await
            .to_string();
        assert_verdict(
            &[&addr, "--bundle", &bundle, "--cert", &cert, "--key", &key],
            &Verdict {
                step: 4,
                reason: "closed_after_handshake",
                says: &[
                    "closed the connection right after the handshake",
                    "cannot tell whether it accepted our certificate",
                ],
                never: &["may not speak TLS", "before the TLS handshake finished"],
            },
        );
    }
}

/// Runs `hush check ARGS… --json`; returns the exit code and each check's verdict by name.
pub(crate) fn check(args: &[&str]) -> (Option<i32>, Value) {
    let output = Command::new(HUSH)
        .arg("check")
        .args(args)
        .arg("--json")
        .output()
        .expect("run hush check");
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{}", describe_output(&output)));
    (output.status.code(), report)
}

fn verdict<'a>(report: &'a Value, name: &str) -> (&'a str, &'a str) {
    let check = report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {report:#}"));
    (
        check["verdict"].as_str().unwrap_or_default(),
        check["message"].as_str().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hush_check_passes_a_sound_installation_and_names_each_broken_part() {
    let LoneBackend {
        temp: _temp,
        ca_dir,
        mut ca,
        config,
        sidecar: backend,
    } = LoneBackend::start(&[]).await;
    let admin = backend.admin().to_string();
    let config_arg = path_str(&config).to_string();

    let (code, report) = check(&["--config", &config_arg, "--admin", &admin]);
    assert_eq!(code, Some(0), "{report:#}");
    for name in [
        "configuration",
        "trust bundle",
        "CA",
        "intermediate",
        "clocks",
        "policy",
        "token file",
    ] {
        assert_eq!(verdict(&report, name).0, "ok", "{name}: {report:#}");
    }
    let (certificate, message) = verdict(&report, "certificate");
    assert_eq!(certificate, "ok");
    assert!(
        message.starts_with(&format!("{BACKEND}: valid, ")),
        "{message}"
    );
    assert!(verdict(&report, "CA").1.ends_with("its bundle is this one"));
    let human = Command::new(HUSH)
        .args(["check", "--config", &config_arg, "--admin", &admin])
        .output()
        .expect("run hush check");
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("clocks         ok: this clock and the CA's agree"),
        "{text}"
    );
    assert!(text.ends_with("result: ok\n"), "{text}");

    // A certificate with less left than asked for is about to expire.
    let (code, report) = check(&[
        "--config",
        &config_arg,
        "--admin",
        &admin,
        "--expiry-warning",
        "48h",
    ]);
    assert_eq!(code, Some(0), "a warning does not fail the check");
    assert_eq!(verdict(&report, "certificate").0, "warning");

    // A broken policy file, named with its line and column.
    let dir = config.parent().expect("the sidecar's folder");
    std::fs::write(dir.join("broken-policy.yaml"), "apiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  action: ALLOW\n  rules: [{to: [{ports: [0]}]}]\n").expect("policy");
    let with_policy = dir.join("with-policy.yaml");
    std::fs::write(
        &with_policy,
        format!(
            "{}policy:\n  path: broken-policy.yaml\n",
            std::fs::read_to_string(&config).expect("config")
        ),
    )
    .expect("config");
    let (code, report) = check(&["--config", path_str(&with_policy), "--admin", &admin]);
    assert_eq!(code, Some(1));
    let (policy, message) = verdict(&report, "policy");
    assert_eq!(policy, "failed");
    assert!(message.contains("broken-policy.yaml:6:"), "{message}");

    // A bundle of another mesh: the CA cannot be trusted, so it cannot be checked.
    let (_other_temp, other_ca) = new_ca();
    let foreign = dir.join("foreign.yaml");
    std::fs::write(
        &foreign,
        std::fs::read_to_string(&config)
            .expect("config")
            .replace(&bundle_of(&ca_dir), &bundle_of(&other_ca)),
    )
    .expect("config");
    let (code, report) = check(&["--config", path_str(&foreign), "--admin", &admin]);
    assert_eq!(code, Some(1));
    assert_eq!(verdict(&report, "CA").0, "failed", "{report:#}");

    // The CA down: it fails, the clocks cannot be compared, and the sidecar still holds a
    // valid certificate.
    ca.terminate();
    let (code, report) = check(&["--config", &config_arg, "--admin", &admin]);
    assert_eq!(code, Some(1));
    assert_eq!(verdict(&report, "CA").0, "failed");
    assert_eq!(verdict(&report, "clocks").0, "skipped");
    assert_eq!(verdict(&report, "certificate").0, "ok");
}
