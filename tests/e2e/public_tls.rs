//! `hush diagnose --public` and `hush check --gateway` against real public TLS servers on
//! loopback: `openssl s_server` playing a server broken in one way each, and nginx as a
//! well-configured one. Each test asserts the step that fails and its reason, the plain words
//! that matter, and the absence of the words that would mislead.
//!
//! | server | step / reason |
//! |---|---|
//! | nginx, full chain, TLS 1.2 and 1.3, h2 | every step ok; TLS 1.0 and 1.1 refused; no staple |
//! | `s_server` with an expired leaf (full chain) | 6 `expired`; the chain step passes |
//! | `s_server -cert leaf.pem` (no intermediate) | 4 `incomplete_chain`, naming the issuer |
//! | a certificate for other names | 5 `wrong_name`, naming what it covers |
//! | `s_server -tls1_2` | ok; TLS 1.3 refused, said as such |
//! | `s_server -min_protocol TLSv1` | ok with a warning at 3 for TLS 1.0 and 1.1 |
//! | `s_server -tls1` | 3 `tls_version`: neither 1.3 nor 1.2, only TLS 1.0 |
//! | plaintext HTTP on the port | 2 `plaintext_http` |
//! | `s_server -status_file resp.der` | 7 ok, the stapled response read as good |
//! | a certificate with 10 days left | 6, a warning (not a failure) |
//! | a self-signed certificate; a valid leaf under an expired intermediate | 4 `self_signed`, 4 `intermediate_expired` |
//! | nothing listening | 1 `refused` |

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hush_test_support::{CaProcess, HushProcess, describe_output};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::diagnose::{check, diagnose, failure, openssl_server};
use crate::mesh::sidecars::{HUSH, new_ca, path_str};

const DAY: i64 = 86_400;
const NGINX: &str = "/usr/sbin/nginx";

/// A public CA in a folder: a root, an intermediate, and leaves for DNS names, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    root: CertifiedIssuer<'static, KeyPair>,
    intermediate: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf's files: the leaf alone, the leaf and its intermediate, the key.
struct Leaf {
    alone: String,
    chain: String,
    key: String,
}

impl Pki {
    fn new() -> Self {
        let ca = |name: &str| {
            let mut params = CertificateParams::default();
            params
                .distinguished_name
                .push(DnType::OrganizationName, "hush tests");
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
            params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
            params
        };
        let root =
            CertifiedIssuer::self_signed(ca("public test root"), KeyPair::generate().expect("key"))
                .expect("root");
        let intermediate = CertifiedIssuer::signed_by(
            ca("public test intermediate"),
            KeyPair::generate().expect("key"),
            &root,
        )
        .expect("intermediate");
        let pki = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            root,
            intermediate,
        };
        std::fs::write(pki.path("root.pem"), pki.root.pem()).expect("root.pem");
        std::fs::write(pki.path("intermediate.pem"), pki.intermediate.pem()).expect("pem");
        std::fs::write(
            pki.path("intermediate.key"),
            pki.intermediate.key().serialize_pem(),
        )
        .expect("key");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn root(&self) -> String {
        path_str(&self.path("root.pem")).to_string()
    }

    /// The intermediate's PEM file: `openssl s_server` sends only the first certificate of
    /// `-cert`, and the rest of the chain from `-cert_chain`.
    fn intermediate(&self) -> String {
        path_str(&self.path("intermediate.pem")).to_string()
    }

    /// A leaf for `names` (DNS names or IP addresses), valid from `from` to `to` days from now.
    fn leaf(&self, stem: &str, names: &[&str], from: i64, to: i64) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().expect("a DNS name")),
            })
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = time::OffsetDateTime::now_utc() + time::Duration::seconds(from * DAY);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(to * DAY);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.intermediate).expect("a leaf");
        let write = |name: String, text: String| {
            let path = self.path(&name);
            std::fs::write(&path, text).expect("write");
            path_str(&path).to_string()
        };
        Leaf {
            alone: write(format!("{stem}.pem"), cert.pem()),
            chain: write(
                format!("{stem}-chain.pem"),
                format!("{}{}", cert.pem(), self.intermediate.pem()),
            ),
            key: write(format!("{stem}.key"), key.serialize_pem()),
        }
    }
}

/// A free loopback port: bound, then released (nginx cannot listen on port 0).
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until `addr` takes TCP connections (polling, not a fixed sleep).
fn wait_for_port(addr: SocketAddr, server: &mut HushProcess) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            server.is_running(),
            "the server exited: {}",
            server.stderr()
        );
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx in the foreground, one process, everything in `dir`, with `servers` (server blocks).
fn nginx(dir: &Path, servers: &str) -> Option<HushProcess> {
    if !Path::new(NGINX).exists() {
        // CI installs nginx: there the well-configured server must be judged, not skipped.
        assert!(
            std::env::var_os("HUSH_REQUIRE_NGINX").is_none(),
            "HUSH_REQUIRE_NGINX is set but {NGINX} is missing"
        );
        eprintln!("SKIPPED: nginx is needed");
        return None;
    }
    let d = path_str(dir);
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n \
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         {servers}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf");
    Some(HushProcess::spawn(
        NGINX,
        &[
            "-p",
            d,
            "-c",
            path_str(&path),
            "-e",
            &format!("{d}/error.log"),
        ],
    ))
}

/// A TLS server block of nginx on `port` for `name`.
fn nginx_server(port: u16, name: &str, cert: &str, key: &str, body: &str) -> String {
    format!(
        " server {{\n  listen 127.0.0.1:{port} ssl http2;\n  server_name {name};\n  \
         ssl_certificate {cert};\n  ssl_certificate_key {key};\n  ssl_protocols TLSv1.2 TLSv1.3;\n  \
         location / {{ default_type application/json; return 200 '{body}'; }}\n }}\n"
    )
}

/// The lines of one step of a human report.
fn step(text: &str, number: u32) -> Vec<&str> {
    let start = format!("step {number}, ");
    let next = format!("step {}, ", number + 1);
    text.lines()
        .skip_while(|l| !l.starts_with(&start))
        .take_while(|l| {
            !l.starts_with(&next) && !l.starts_with("result") && !l.starts_with("warning")
        })
        .collect()
}

fn says(text: &str, words: &[&str]) {
    for w in words {
        assert!(text.contains(w), "{w:?} missing in:\n{text}");
    }
}

fn never(text: &str, words: &[&str]) {
    for w in words {
        assert!(!text.contains(w), "{w:?} misleads in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_configured_nginx_passes_every_step() {
    let pki = Pki::new();
    let leaf = pki.leaf("shop", &["shop.example.com"], -1, 90);
    let port = free_port();
    let Some(mut server) = nginx(
        pki.dir.path(),
        &nginx_server(port, "shop.example.com", &leaf.chain, &leaf.key, "ok"),
    ) else {
        return;
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    wait_for_port(addr, &mut server);
    let target = addr.to_string();
    let (output, report, text) = diagnose(&[
        "--public",
        &target,
        "--server-name",
        "shop.example.com",
        "--ca-file",
        &pki.root(),
    ]);
    assert!(output.status.success(), "{}", describe_output(&output));
    assert_eq!(report["ok"], true);
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 7, "{report:#}");
    assert!(steps.iter().all(|s| s["status"] == "ok"), "{report:#}");
    assert_eq!(steps[1]["details"]["agreed"]["version"], "TLS 1.3");
    assert_eq!(steps[1]["details"]["agreed"]["alpn"], "h2");
    says(
        &text,
        &[
            "step 2, hello: ok",
            "the server answered with a ServerHello: TLS 1.3",
            "TLS 1.3: accepted (TLS13_",
            "TLS 1.2: accepted (TLS_ECDHE_ECDSA_WITH_",
            "TLS 1.1: refused",
            "TLS 1.0: refused",
            "1. CN=shop.example.com — issued by CN=public test intermediate, O=hush tests",
            "chain: ok, up to a root of --ca-file",
            "shop.example.com is covered: the certificate names DNS shop.example.com",
            "step 6, expiry: ok",
            "step 7, OCSP stapling: ok",
            "none stapled (we asked)",
            "result: ok, shop.example.com is served over TLS",
        ],
    );
    never(&text, &["WARNING", "FAILED", "ACCEPTED"]);

    // The same server without --ca-file: Mozilla's roots do not hold the test root.
    let (_, report, text) = diagnose(&["--public", &target, "--server-name", "shop.example.com"]);
    assert_eq!(failure(&report), (4, "unknown_issuer".into()), "{text}");
    says(
        &text,
        &[
            "the chain goes up to CN=public test intermediate, O=hush tests, issued by CN=public \
             test root, O=hush tests, which Mozilla's root list (as browsers trust) does not hold",
        ],
    );
    never(&text, &["incomplete"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_leaf_fails_at_expiry_and_not_at_the_chain() {
    let pki = Pki::new();
    let leaf = pki.leaf("expired", &["shop.example.com"], -30, -2);
    let intermediate = path_str(&pki.path("intermediate.pem")).to_string();
    let Some((_server, addr)) = openssl_server(&[
        "-cert",
        &leaf.alone,
        "-cert_chain",
        &intermediate,
        "-key",
        &leaf.key,
        "-rev",
    ]) else {
        return;
    };
    let (output, report, text) = diagnose(&[
        "--public",
        &addr,
        "--server-name",
        "shop.example.com",
        "--ca-file",
        &pki.root(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(failure(&report), (6, "expired".into()), "{text}");
    says(
        &text,
        &[
            "step 4, chain: ok",
            "when the certificate was valid: its dates are step 6's",
            "step 5, name: ok",
            "result: FAILED at step 6, expiry: the certificate expired at",
            "(2 d 0 h ago)",
            "hint: renew the certificate",
        ],
    );
    never(&text, &["step 7", "incomplete", "unknown issuer"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_without_its_intermediate_is_an_incomplete_chain_naming_the_issuer() {
    let pki = Pki::new();
    let leaf = pki.leaf("shop", &["shop.example.com"], -1, 90);
    let Some((_server, addr)) = openssl_server(&["-cert", &leaf.alone, "-key", &leaf.key, "-rev"])
    else {
        return;
    };
    let (_, report, text) = diagnose(&[
        "--public",
        &addr,
        "--server-name",
        "shop.example.com",
        "--ca-file",
        &pki.root(),
    ]);
    assert_eq!(failure(&report), (4, "incomplete_chain".into()), "{text}");
    says(
        &text,
        &[
            "the server presented 1 certificate:",
            "the chain is incomplete: the server sent CN=shop.example.com issued by CN=public \
             test intermediate, O=hush tests, but not that issuer's certificate",
            "hint: serve the full chain",
        ],
    );
    never(&text, &["step 5", "expired", "another CA"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_other_names_fails_at_the_name() {
    let pki = Pki::new();
    let leaf = pki.leaf("other", &["www.other.example", "other.example"], -1, 90);
    let Some((_server, addr)) = openssl_server(&[
        "-cert",
        &leaf.alone,
        "-cert_chain",
        &pki.intermediate(),
        "-key",
        &leaf.key,
        "-rev",
    ]) else {
        return;
    };
    let (_, report, text) = diagnose(&[
        "--public",
        &addr,
        "--server-name",
        "shop.example.com",
        "--ca-file",
        &pki.root(),
    ]);
    assert_eq!(failure(&report), (5, "wrong_name".into()), "{text}");
    says(
        &text,
        &[
            "step 4, chain: ok",
            "the certificate does not cover shop.example.com: it names DNS www.other.example, \
             DNS other.example",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_told_one_by_one_and_old_ones_are_a_warning() {
    let pki = Pki::new();
    let leaf = pki.leaf("shop", &["shop.example.com"], -1, 90);
    let args = |addr: &str| {
        vec![
            "--public".to_string(),
            addr.to_string(),
            "--server-name".into(),
            "shop.example.com".into(),
            "--ca-file".into(),
            pki.root(),
        ]
    };
    let run = |addr: &str| {
        let args = args(addr);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        diagnose(&args)
    };

    // TLS 1.2 only: fine, and said as it is.
    let Some((tls12, addr)) = openssl_server(&[
        "-cert",
        &leaf.alone,
        "-cert_chain",
        &pki.intermediate(),
        "-key",
        &leaf.key,
        "-tls1_2",
        "-rev",
    ]) else {
        return;
    };
    let (output, report, text) = run(&addr);
    assert!(output.status.success(), "{text}");
    assert!(report["failure"].is_null());
    let versions = step(&text, 3).join("\n");
    says(
        &versions,
        &[
            "step 3, versions: ok",
            "TLS 1.3: refused (alert ProtocolVersion)",
            "TLS 1.2: accepted",
            "no TLS 1.3: clients fall back to TLS 1.2",
        ],
    );
    says(&text, &["the handshake finished: TLS 1.2"]);
    drop(tls12);

    // Every version from TLS 1.0: a warning at step 3, and the story goes on.
    let Some((all, addr)) = openssl_server(&[
        "-cert",
        &leaf.alone,
        "-cert_chain",
        &pki.intermediate(),
        "-key",
        &leaf.key,
        "-min_protocol",
        "TLSv1",
        "-cipher",
        "DEFAULT:@SECLEVEL=0",
        "-rev",
    ]) else {
        return;
    };
    let (output, report, text) = run(&addr);
    assert!(output.status.success(), "a warning is no failure: {text}");
    assert_eq!(report["warnings"][0]["step"], 3, "{report:#}");
    says(
        &text,
        &[
            "step 3, versions: WARNING",
            "TLS 1.1: ACCEPTED: the server answered with a TLS 1.1 ServerHello",
            "TLS 1.0: ACCEPTED: the server answered with a TLS 1.0 ServerHello",
            "warning at step 3, versions: the server still accepts TLS 1.1 and TLS 1.0",
            "step 7, OCSP stapling: ok",
            "result: ok with 1 warning",
        ],
    );
    drop(all);

    // TLS 1.0 alone: neither modern version, and which one it takes.
    let Some((_old, addr)) = openssl_server(&[
        "-cert",
        &leaf.alone,
        "-cert_chain",
        &pki.intermediate(),
        "-key",
        &leaf.key,
        "-tls1",
        "-cipher",
        "DEFAULT:@SECLEVEL=0",
        "-rev",
    ]) else {
        return;
    };
    let (_, report, text) = run(&addr);
    assert_eq!(failure(&report), (3, "tls_version".into()), "{text}");
    says(
        &text,
        &[
            "step 2, hello: ok",
            "result: FAILED at step 3, versions: the server accepts neither TLS 1.3 nor TLS 1.2, \
             only TLS 1.0",
        ],
    );
}

/// A leaf valid now under an intermediate that expired yesterday, and the chain's files.
fn leaf_under_an_expired_intermediate(pki: &Pki) -> (String, String, String) {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "stale intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(400);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let stale = CertifiedIssuer::signed_by(params, KeyPair::generate().expect("key"), &pki.root)
        .expect("an intermediate");
    let mut params = CertificateParams::new(vec!["shop.example.com".to_string()]).expect("params");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(60);
    let key = KeyPair::generate().expect("key");
    let leaf = params.signed_by(&key, &stale).expect("a leaf");
    let write = |name: &str, text: String| {
        let path = pki.path(name);
        std::fs::write(&path, text).expect("write");
        path_str(&path).to_string()
    };
    (
        write("stale-leaf.pem", leaf.pem()),
        write("stale-intermediate.pem", stale.pem()),
        write("stale-leaf.key", key.serialize_pem()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_and_stale_intermediates_are_named_and_a_closed_port_is_step_1() {
    let pki = Pki::new();
    let run = |addr: &str| {
        diagnose(&[
            "--public",
            addr,
            "--server-name",
            "shop.example.com",
            "--ca-file",
            &pki.root(),
        ])
    };

    // Self-signed.
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["shop.example.com".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("a certificate");
    std::fs::write(pki.path("self.pem"), cert.pem()).expect("write");
    std::fs::write(pki.path("self.key"), key.serialize_pem()).expect("write");
    let Some((server, addr)) = openssl_server(&[
        "-cert",
        path_str(&pki.path("self.pem")),
        "-key",
        path_str(&pki.path("self.key")),
        "-rev",
    ]) else {
        return;
    };
    let (_, report, text) = run(&addr);
    assert_eq!(failure(&report), (4, "self_signed".into()), "{text}");
    says(&text, &["the server's certificate is self-signed"]);
    never(&text, &["incomplete"]);
    drop(server);

    // A valid leaf sent with an intermediate that has expired.
    let (leaf, stale, key) = leaf_under_an_expired_intermediate(&pki);
    let Some((_server, addr)) =
        openssl_server(&["-cert", &leaf, "-cert_chain", &stale, "-key", &key, "-rev"])
    else {
        return;
    };
    let (_, report, text) = run(&addr);
    assert_eq!(
        failure(&report),
        (4, "intermediate_expired".into()),
        "{text}"
    );
    says(
        &text,
        &[
            "the intermediate certificate the server sent, CN=stale intermediate, expired at",
            "the server's own certificate is still valid",
        ],
    );
    never(&text, &["step 6"]);

    // Nothing listens.
    let closed = format!("127.0.0.1:{}", free_port());
    let (_, report, text) = run(&closed);
    assert_eq!(failure(&report), (1, "refused".into()), "{text}");
    says(
        &text,
        &["hint: is the server running, and is this its HTTPS port"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_http_on_the_port_fails_at_the_hello() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = [0u8; 2048];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let (_, report, text) = diagnose(&["--public", &addr.to_string()]);
    assert_eq!(failure(&report), (2, "plaintext_http".into()), "{text}");
    says(
        &text,
        &[
            "the server answered in plaintext HTTP, not TLS: \"HTTP/1.1 400 Bad Request",
            "hint: this port serves plain HTTP",
        ],
    );
    never(&text, &["step 3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stapled_ocsp_response_is_read_and_a_near_expiry_is_a_warning() {
    let pki = Pki::new();
    // Ten days left: under the fortnight, a warning.
    let leaf = pki.leaf("soon", &["shop.example.com"], -80, 10);
    let dir = pki.dir.path();
    let serial = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in", &leaf.alone])
        .output()
        .expect("openssl x509");
    let serial = String::from_utf8_lossy(&serial.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_string();
    std::fs::write(
        dir.join("index.txt"),
        format!("V\t301231000000Z\t\t{serial}\tunknown\t/CN=shop.example.com\n"),
    )
    .expect("index.txt");
    let intermediate = path_str(&pki.path("intermediate.pem")).to_string();
    let response = path_str(&dir.join("ocsp.der")).to_string();
    let made = Command::new("openssl")
        .args([
            "ocsp",
            "-index",
            path_str(&dir.join("index.txt")),
            "-rsigner",
            &intermediate,
            "-rkey",
            path_str(&pki.path("intermediate.key")),
            "-CA",
            &intermediate,
            "-issuer",
            &intermediate,
            "-cert",
            &leaf.alone,
            "-respout",
            &response,
            "-ndays",
            "1",
        ])
        .output()
        .expect("openssl ocsp");
    if !made.status.success() || !Path::new(&response).exists() {
        eprintln!(
            "SKIPPED: openssl ocsp made no response: {}",
            describe_output(&made)
        );
        return;
    }
    let Some((_server, addr)) = openssl_server(&[
        "-cert",
        &leaf.alone,
        "-cert_chain",
        &pki.intermediate(),
        "-key",
        &leaf.key,
        "-status_file",
        &response,
        "-rev",
    ]) else {
        return;
    };
    let (output, report, text) = diagnose(&[
        "--public",
        &addr,
        "--server-name",
        "shop.example.com",
        "--ca-file",
        &pki.root(),
    ]);
    assert!(output.status.success(), "{text}");
    let ocsp = &report["steps"][6];
    assert_eq!(ocsp["details"]["stapled"], true, "{report:#}");
    assert_eq!(ocsp["details"]["cert_status"], "good");
    says(
        &text,
        &[
            "step 6, expiry: WARNING",
            "warning at step 6, expiry: the certificate expires in ",
            " days (a warning under 14 days)",
            "step 7, OCSP stapling: ok",
            "a stapled OCSP response came (",
            "status successful, the certificate is good",
            "result: ok with 1 warning",
        ],
    );
}

// === hush check --gateway ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hush_check_gateway_checks_each_certificate_acme_and_each_host_served() {
    let pki = Pki::new();
    let dir = pki.dir.path().to_path_buf();
    let shop = pki.leaf("shop", &["shop.example.com"], -1, 90);
    let blog = pki.leaf("blog", &["blog.example.com"], -1, 90);
    let acme_leaf = pki.leaf("acme", &["127.0.0.1"], -1, 90);
    // The "gateway": nginx serving shop with its full chain, blog without its intermediate,
    // and an ACME directory on a second port.
    let (public_port, acme_port) = (free_port(), free_port());
    let directory = r#"{"newNonce":"https://127.0.0.1/n","newAccount":"https://127.0.0.1/a","newOrder":"https://127.0.0.1/o"}"#;
    let servers = [
        nginx_server(
            public_port,
            "shop.example.com",
            &shop.chain,
            &shop.key,
            "ok",
        ),
        nginx_server(
            public_port,
            "blog.example.com",
            &blog.alone,
            &blog.key,
            "ok",
        ),
        nginx_server(
            acme_port,
            "127.0.0.1",
            &acme_leaf.chain,
            &acme_leaf.key,
            directory,
        ),
    ]
    .concat();
    let Some(mut server) = nginx(&dir, &servers) else {
        return;
    };
    for port in [public_port, acme_port] {
        wait_for_port(
            format!("127.0.0.1:{port}").parse().expect("address"),
            &mut server,
        );
    }

    // The mesh side: a real CA.
    let (_ca_temp, ca_dir) = new_ca();
    let ca = CaProcess::start(HUSH, &ca_dir, &[]);
    std::fs::write(dir.join("token"), "hushjt.placeholder").expect("token");
    let state = dir.join("acme-state");
    std::fs::create_dir(&state).expect("state dir");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let gateway = dir.join("gateway.yaml");
    let config = format!(
        "ca:\n  address: {ca}\n  trust_bundle: {bundle}\n  token_file: token\n\
         https:\n  listen: 127.0.0.1:{public_port}\n\
         certificates:\n\
         - hosts: [shop.example.com]\n  files: {{cert: shop-chain.pem, key: shop.key}}\n\
         - hosts: [blog.example.com]\n  files: {{cert: blog-chain.pem, key: blog.key}}\n\
         acme:\n  directory: https://127.0.0.1:{acme_port}/directory\n  \
         accept_terms_of_service: true\n  challenge: tls-alpn-01\n  state_dir: acme-state\n  \
         directory_ca: root.pem\n\
         routes:\n- host: shop.example.com\n  upstream: 127.0.0.1:1\n  \
         identity: spiffe://cluster.local/ns/shop/sa/web\n",
        ca = ca.url(),
        bundle = path_str(&ca_dir.join("bundle.pem")),
    );
    std::fs::write(&gateway, &config).expect("gateway.yaml");
    let gateway_arg = path_str(&gateway).to_string();
    let root = pki.root();

    let (code, report) = check(&["--gateway", &gateway_arg, "--ca-file", &root]);
    eprintln!("{report:#}");
    let find = |name: &str, subject: Option<&str>| -> (String, String) {
        let check = report["checks"]
            .as_array()
            .and_then(|checks| {
                checks.iter().find(|c| {
                    c["name"] == name && subject.is_none_or(|s| c["subject"].as_str() == Some(s))
                })
            })
            .unwrap_or_else(|| panic!("no {name} {subject:?} check in {report:#}"));
        (
            check["verdict"].as_str().unwrap_or_default().to_string(),
            check["message"].as_str().unwrap_or_default().to_string(),
        )
    };
    for name in [
        "configuration",
        "trust bundle",
        "CA",
        "token file",
        "ACME state",
        "ACME directory",
    ] {
        assert_eq!(find(name, None).0, "ok", "{name}: {report:#}");
    }
    let (verdict, message) = find("certificate", Some("certificates[0] shop.example.com"));
    assert_eq!(verdict, "ok", "{message}");
    assert!(
        message.contains("the key matches, it covers every host"),
        "{message}"
    );
    let (verdict, message) = find("public TLS", Some("shop.example.com"));
    assert_eq!(verdict, "ok", "{message}");
    assert!(
        message.starts_with("shop.example.com: TLS 1.3, TLS13_"),
        "{message}"
    );
    // blog's files are fine, but the gateway serves its leaf without the intermediate.
    assert_eq!(
        find("certificate", Some("certificates[1] blog.example.com")).0,
        "ok"
    );
    let (verdict, message) = find("public TLS", Some("blog.example.com"));
    assert_eq!(verdict, "failed", "{message}");
    assert!(
        message.starts_with("blog.example.com: step 4, chain: the chain is incomplete"),
        "{message}"
    );
    assert_eq!(code, Some(1), "a failed host fails the check");

    // A key that is not the certificate's, and an ACME state file others can read.
    std::fs::write(&gateway, config.replace("key: blog.key", "key: shop.key"))
        .expect("gateway.yaml");
    let key = state.join("account.key");
    std::fs::write(&key, "secret").expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (_, report) = check(&["--gateway", &gateway_arg, "--ca-file", &root]);
    let state_check = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "ACME state"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(state_check["verdict"], "warning", "{report:#}");
    let blog_files = report["checks"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["subject"] == "certificates[1] blog.example.com")
        })
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(blog_files["verdict"], "failed", "{report:#}");
    assert!(
        blog_files["message"]
            .as_str()
            .is_some_and(|m| m.contains("the private key does not belong to the first certificate")),
        "{report:#}"
    );

    // A field the gateway does not know: named, and nothing else is checked.
    std::fs::write(&gateway, config.replace("routes:", "route:")).expect("gateway.yaml");
    let (code, report) = check(&["--gateway", &gateway_arg]);
    assert_eq!(code, Some(1));
    assert_eq!(report["checks"].as_array().map(Vec::len), Some(1));
    assert!(
        report["checks"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("route")),
        "{report:#}"
    );

    // The human report, once, as the docs show it.
    std::fs::write(&gateway, &config).expect("gateway.yaml");
    let human = Command::new(HUSH)
        .args(["check", "--gateway", &gateway_arg, "--ca-file", &root])
        .output()
        .expect("run hush check");
    let text = String::from_utf8_lossy(&human.stdout);
    eprintln!("{text}");
    says(
        &text,
        &[
            "public TLS     ok: shop.example.com: TLS 1.3",
            "result: FAILED (public TLS)",
        ],
    );
}
