//! The edge gateway (`hush gateway`), end to end: a CA, a backend sidecar in front of the echo
//! app whose policy lets only the gateway in, and the gateway in front of it with a public
//! certificate from files. Third-party clients judge it: curl over TLS 1.2 and 1.3, HTTP/1.1
//! and HTTP/2; hand-written TLS 1.0 and 1.1 hellos; Python's `ssl` and `websockets` for wss
//! and grpcio for gRPC (when `HUSH_GATEWAY_PYTHON` names a Python that has them).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hush_config::{
    CaConfig, CertificateConfig, CertificateFiles, GatewayConfig, Hsts, HttpConfig, HttpsConfig,
    RouteConfig, TlsProfile,
};
use hush_test_support::{
    CaProcess, GatewayProcess, ProxyProcess, TestCa, http_request, mint_token,
};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::mesh::apps;
use crate::mesh::sidecars::{
    BACKEND, HUSH, loopback, new_ca, sidecar_config, spiffe_id, wait_until, write_configmap,
};
use crate::mesh::tlsraw::{self, Hello};

const GATEWAY: &str = "spiffe://cluster.local/ns/edge/sa/gateway";
const HOST: &str = "shop.test";

/// Only the gateway may call the backend: the backend's policy sees the gateway's identity.
const BACKEND_POLICY: &str = "\
apiVersion: hush.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: only-the-gateway
spec:
  action: ALLOW
  rules:
    - from:
        - principals: [\"spiffe://cluster.local/ns/edge/sa/gateway\"]
";

/// A mesh with a gateway in front.
struct Edge {
    temp: TempDir,
    _ca: CaProcess,
    _backend: ProxyProcess,
    gateway: GatewayProcess,
    /// The public CA's root, which clients trust.
    public_root: PathBuf,
    public_ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
}

impl Edge {
    async fn start(configure: impl FnOnce(&mut GatewayConfig, &str)) -> Self {
        let app = apps::start_app().await;
        let (temp, ca_dir) = new_ca();
        let ca = CaProcess::start(HUSH, &ca_dir, &[]);
        write_configmap(&temp.path().join("policy"), "policy.yaml", BACKEND_POLICY);
        let backend_config = sidecar_config(
            temp.path(),
            "backend",
            ca.url(),
            &ca_dir,
            BACKEND,
            |config| {
                config.inbound = Some(hush_config::InboundConfig::new(loopback(), app));
                config.policy = Some(hush_config::PolicyConfig::new("../policy"));
            },
        );
        let backend = ProxyProcess::start(HUSH, &backend_config);
        let upstream = backend.inbound().to_string();

        let public_ca = TestCa::new("public.test");
        let public_root = temp.path().join("public-root.pem");
        fs::write(&public_root, public_ca.root_pem()).expect("write the public root");
        let (cert, key) = (temp.path().join("shop.pem"), temp.path().join("shop.key"));
        write_pair(&public_ca, &[HOST, "www.shop.test"], &cert, &key);

        let dir = temp.path().join("gateway");
        fs::create_dir_all(&dir).expect("gateway dir");
        let token = mint_token(HUSH, &ca_dir, GATEWAY, &[]);
        fs::write(dir.join("token"), format!("{token}\n")).expect("write the token");
        let mut config = GatewayConfig {
            ca: CaConfig::new(ca.url(), ca_dir.join("bundle.pem"), "token"),
            https: HttpsConfig {
                listen: loopback(),
                profile: TlsProfile::Intermediate,
                hsts: Hsts::default(),
            },
            http: Some(HttpConfig {
                listen: loopback(),
                redirect_port: None,
            }),
            certificates: vec![CertificateConfig {
                hosts: vec![HOST.into(), "www.shop.test".into()],
                files: Some(CertificateFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                acme: false,
            }],
            acme: None,
            routes: vec![RouteConfig {
                host: HOST.into(),
                path_prefix: "/".into(),
                upstream: upstream.clone(),
                identity: spiffe_id(BACKEND),
            }],
            admin: hush_config::AdminConfig::default(),
            limits: hush_config::Limits::default(),
            access_log: hush_config::AccessLog::default(),
            tracing: hush_config::TracingConfig::default(),
            shutdown_grace: Duration::from_secs(2),
        };
        config.admin.listen = loopback();
        configure(&mut config, &upstream);
        let path = dir.join("gateway.yaml");
        fs::write(&path, config.to_yaml().expect("gateway YAML")).expect("write gateway.yaml");
        let gateway =
            GatewayProcess::try_start(HUSH, &path, &[("HUSH_LOG", "info,hush_proxy=debug")])
                .unwrap_or_else(|e| panic!("{e}"));
        Self {
            temp,
            _ca: ca,
            _backend: backend,
            gateway,
            public_root,
            public_ca,
            cert,
            key,
        }
    }

    /// curl against the gateway, `shop.test` resolving to it; returns (stdout, stderr, ok).
    fn curl(&self, args: &[&str], path: &str) -> (String, String, bool) {
        let https = self.gateway.https();
        let resolve = format!("{HOST}:{}:127.0.0.1", https.port());
        let url = format!("https://{HOST}:{}{path}", https.port());
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--resolve", &resolve, "--cacert"])
            .arg(&self.public_root)
            .args(args)
            .arg(&url)
            .output()
            .expect("curl runs");
        (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
            output.status.success(),
        )
    }
}

/// Writes a public certificate for `names` and its key as PEM files.
pub(crate) fn write_pair(ca: &TestCa, names: &[&str], cert: &Path, key: &Path) {
    let leaf = ca.server_certificate(names);
    let mut pem = String::new();
    for der in &leaf.chain {
        pem.push_str(&pem_block("CERTIFICATE", der));
    }
    fs::write(cert, pem).expect("write the chain");
    fs::write(key, pem_block("PRIVATE KEY", leaf.key.secret_der())).expect("write the key");
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The echo app's view of the request, from curl's output (headers, blank line, body).
fn echoed(stdout: &str) -> Value {
    let body = stdout
        .rsplit_once("\r\n\r\n")
        .map_or(stdout, |(_, body)| body);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not the echo app's JSON ({e}): {stdout}"))
}

/// The values the app received of a header the echo app reports (`peer_identity`,
/// `x_forwarded_for`, …).
fn header<'a>(echo: &'a Value, key: &str) -> Vec<&'a str> {
    echo[key]
        .as_array()
        .map(|values| values.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// What the server sends first: its first record whole, or whatever came before it closed
/// or `patience` ran out.
async fn first_record(tcp: &mut TcpStream, patience: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if got.len() >= 5 {
            let len = usize::from(u16::from_be_bytes([got[3], got[4]]));
            if got.len() >= 5 + len {
                return got;
            }
        }
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => return got,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_reaches_a_mesh_service_over_tls_1_2_and_1_3_as_the_gateway() {
    let edge = Edge::start(|_, _| {}).await;
    assert_eq!(edge.gateway.spiffe_id(), GATEWAY);
    for (tls, http) in [
        (["--tlsv1.3", "--tls-max", "1.3"], "--http2"),
        (["--tlsv1.3", "--tls-max", "1.3"], "--http1.1"),
        (["--tlsv1.2", "--tls-max", "1.2"], "--http2"),
        (["--tlsv1.2", "--tls-max", "1.2"], "--http1.1"),
    ] {
        let case = format!("{} {http}", tls[0]);
        let (stdout, stderr, ok) = edge.curl(
            &[
                tls[0],
                tls[1],
                tls[2],
                http,
                "-v",
                "-i",
                // What a client says of itself is dropped at the edge.
                "-H",
                "x-forwarded-for: 203.0.113.9",
                "-H",
                "X-Forwarded-Proto: http",
                "-H",
                "x-hush-peer-identity: spiffe://cluster.local/ns/shop/sa/admin",
                "-H",
                "forwarded: for=203.0.113.9",
            ],
            "/echo?x=1",
        );
        assert!(ok, "{case}: curl failed: {stderr}");
        let version = if tls[0] == "--tlsv1.3" {
            "TLSv1.3"
        } else {
            "TLSv1.2"
        };
        assert!(
            stderr.contains(&format!("SSL connection using {version}")),
            "{case}: {stderr}"
        );
        let status_line = stdout.lines().next().unwrap_or_default();
        let expected = if http == "--http2" {
            "HTTP/2 200"
        } else {
            "HTTP/1.1 200"
        };
        assert!(status_line.starts_with(expected), "{case}: {status_line}");
        assert!(
            stdout
                .to_ascii_lowercase()
                .contains("strict-transport-security: max-age=31536000"),
            "{case}: no HSTS in {stdout}"
        );
        let echo = echoed(&stdout);
        assert_eq!(header(&echo, "peer_identity"), [GATEWAY], "{case}: {echo}");
        assert_eq!(
            header(&echo, "x_forwarded_for"),
            ["127.0.0.1"],
            "{case}: {echo}"
        );
        assert_eq!(
            header(&echo, "x_forwarded_proto"),
            ["https"],
            "{case}: {echo}"
        );
        assert!(header(&echo, "forwarded").is_empty(), "{case}: {echo}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_is_redirected_to_https_keeping_host_path_and_query() {
    let edge = Edge::start(|_, _| {}).await;
    let http = edge.gateway.http();
    let output = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20", "--resolve"])
        .arg(format!("{HOST}:{}:127.0.0.1", http.port()))
        .arg(format!("http://{HOST}:{}/cart?item=7", http.port()))
        .output()
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("HTTP/1.1 308"), "{stdout}");
    let location = format!(
        "location: https://{HOST}:{}/cart?item=7",
        edge.gateway.https().port()
    );
    assert!(stdout.to_ascii_lowercase().contains(&location), "{stdout}");
    // An ACME token nobody asked for is not answered.
    let (status, _) = http_request(http, "GET", "/.well-known/acme-challenge/nope");
    assert_eq!(status, 404);
}

/// A ClientHello of TLS 1.0 or 1.1 (legacy_version and record version set to it, CBC and GCM
/// suites offered, no supported_versions extension).
fn legacy_hello(version: u16) -> Vec<u8> {
    let hello = Hello {
        ciphers: vec![
            0xc013,
            0xc009,
            0x002f,
            tlsraw::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ],
        ..Hello::tls12_only()
    };
    let mut message = hello.message();
    message[4..6].copy_from_slice(&version.to_be_bytes());
    tlsraw::record(tlsraw::HANDSHAKE, &message)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_0_and_1_1_hellos_are_refused_with_a_protocol_version_alert() {
    let edge = Edge::start(|_, _| {}).await;
    for (name, version) in [("TLS 1.0", 0x0301u16), ("TLS 1.1", 0x0302)] {
        let mut tcp = TcpStream::connect(edge.gateway.https())
            .await
            .expect("connect");
        tcp.write_all(&legacy_hello(version))
            .await
            .expect("send the hello");
        let answer = first_record(&mut tcp, Duration::from_secs(10)).await;
        match hush_tls::hello::server_first(&answer) {
            hush_tls::hello::ServerFirst::Alert(alert) => {
                assert_eq!(alert, "ProtocolVersion", "{name}");
            }
            other => panic!("{name}: expected a protocol_version alert, got {other:?}"),
        }
    }
    // The same hello as TLS 1.2 is answered with a ServerHello: the refusal was the version.
    let mut tcp = TcpStream::connect(edge.gateway.https())
        .await
        .expect("connect");
    tcp.write_all(&legacy_hello(0x0303))
        .await
        .expect("send the hello");
    let answer = first_record(&mut tcp, Duration::from_secs(10)).await;
    let first = hush_tls::hello::server_first(&answer);
    assert!(
        matches!(first, hush_tls::hello::ServerFirst::Hello(_)),
        "TLS 1.2 with the same suites is accepted: {first:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_modern_profile_refuses_tls_1_2() {
    let edge = Edge::start(|config, _| config.https.profile = TlsProfile::Modern).await;
    let (_, stderr, ok) = edge.curl(&["--tlsv1.2", "--tls-max", "1.2"], "/echo");
    assert!(!ok, "TLS 1.2 was accepted by the modern profile");
    assert!(
        stderr.contains("alert protocol version") || stderr.contains("protocol version"),
        "{stderr}"
    );
    let (stdout, stderr, ok) = edge.curl(&["--tlsv1.3"], "/echo");
    assert!(ok, "{stderr}");
    assert_eq!(header(&echoed(&stdout), "peer_identity"), [GATEWAY]);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_routed_by_host_and_path_and_refused_where_no_route_serves() {
    let edge = Edge::start(|config, upstream| {
        // `/admin` goes to the same sidecar, but the route pins an identity it does not have.
        config.routes.insert(
            0,
            RouteConfig {
                host: HOST.into(),
                path_prefix: "/admin".into(),
                upstream: upstream.to_string(),
                identity: spiffe_id("spiffe://cluster.local/ns/shop/sa/admin"),
            },
        );
    })
    .await;
    let (stdout, stderr, ok) = edge.curl(&["-i"], "/admin/users");
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("HTTP/2 502"), "{stdout}");
    assert!(
        stdout.contains("spiffe://cluster.local/ns/shop/sa/admin"),
        "{stdout}"
    );
    // `/administrator` is not under `/admin`: the `/` route serves it.
    let (stdout, _, _) = edge.curl(&["-i"], "/administrator");
    assert!(stdout.starts_with("HTTP/2 200"), "{stdout}");
    // A path that climbs out of `/echo` into `/admin` for servers that resolve dot segments
    // is refused, not sent to the `/` route's service to be read as `/admin` there.
    let (stdout, _, _) = edge.curl(&["-i", "--path-as-is"], "/echo/%2e%2e/admin/users");
    assert!(stdout.starts_with("HTTP/2 400"), "{stdout}");
    // Another host on the same certificate has no route.
    let (stdout, _, _) = edge.curl(&["-i", "-H", "host: www.shop.test"], "/echo");
    assert!(
        stdout.starts_with("HTTP/2 404") || stdout.starts_with("HTTP/2 400"),
        "{stdout}"
    );
    // A name with no certificate is refused in the handshake.
    let https = edge.gateway.https();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--resolve"])
        .arg(format!("other.test:{}:127.0.0.1", https.port()))
        .arg("--cacert")
        .arg(&edge.public_root)
        .arg(format!("https://other.test:{}/", https.port()))
        .output()
        .expect("curl runs");
    assert!(!output.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_files_are_reloaded_and_a_broken_pair_keeps_the_one_served() {
    let edge = Edge::start(|_, _| {}).await;
    let served_serial = || {
        let (_, stderr, ok) = edge.curl(&["-v", "-o", "/dev/null"], "/echo");
        assert!(ok, "{stderr}");
        stderr
            .lines()
            .find(|l| l.contains("expire date:"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let before = served_serial();
    // A key that does not match the chain: refused, the old certificate stays.
    let other = edge.temp.path().join("other.key");
    write_pair(
        &edge.public_ca,
        &[HOST],
        &edge.temp.path().join("unused.pem"),
        &other,
    );
    fs::copy(&other, &edge.key).expect("replace the key");
    wait_until("the gateway refuses the mismatched pair", || {
        edge.gateway
            .stderr()
            .contains("cannot reload the certificate, still serving the one loaded before")
    });
    assert_eq!(served_serial(), before);
    // A whole new pair: served.
    write_pair(
        &edge.public_ca,
        &[HOST, "www.shop.test"],
        &edge.cert,
        &edge.key,
    );
    wait_until("the gateway reloads the new pair", || {
        edge.gateway
            .stderr()
            .matches("reloaded the certificate")
            .count()
            >= 1
    });
    let metrics = http_request(edge.gateway.admin(), "GET", "/metrics").1;
    assert!(
        metrics.contains("hush_gateway_certificate_expiry_timestamp_seconds{certificate=\"shop.test\",source=\"files\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hush_gateway_certificate_updates_total{certificate=\"shop.test\",source=\"files\",result=\"failed\"}"),
        "{metrics}"
    );
}
