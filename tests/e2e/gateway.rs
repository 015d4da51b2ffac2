//! The edge gateway (`hush gateway`), end to end: a CA, a backend sidecar in front of the echo
//! app whose policy lets only the gateway in, and the gateway in front of it with a public
//! certificate from files. Third-party clients judge it: curl over TLS 1.2 and 1.3, HTTP/1.1
//! and HTTP/2; hand-written TLS 1.0 and 1.1 hellos; Python's `ssl` and `websockets` for wss
//! and grpcio for gRPC (when `HUSH_GATEWAY_PYTHON` names a Python that has them).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hush_config::{
    AcmeChallenge, AcmeConfig, CaConfig, CertificateConfig, CertificateFiles, GatewayConfig, Hsts,
    HttpConfig, HttpsConfig, RouteConfig, TlsProfile,
};
use hush_test_support::{
    CaProcess, GatewayProcess, Pebble, PebbleOptions, ProxyProcess, TestCa, http_request,
    mint_token,
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
    backend: ProxyProcess,
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
            backend,
            gateway,
            public_root,
            public_ca,
            cert,
            key,
        }
    }

    /// curl against the gateway, `shop.test` resolving to it; returns (stdout, stderr, ok).
    fn curl(&self, args: &[&str], path: &str) -> (String, String, bool) {
        self.curl_trusting(&self.public_root, args, path)
    }

    /// [`Self::curl`], trusting the roots in `roots`.
    fn curl_trusting(&self, roots: &Path, args: &[&str], path: &str) -> (String, String, bool) {
        let https = self.gateway.https();
        let resolve = format!("{HOST}:{}:127.0.0.1", https.port());
        let url = format!("https://{HOST}:{}{path}", https.port());
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--resolve", &resolve, "--cacert"])
            .arg(roots)
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
    // The test certificate lives an hour: well inside the 14 days warned about.
    assert!(
        edge.gateway
            .stderr()
            .contains("the certificate expires in 0 days; replace its files"),
        "{}",
        edge.gateway.stderr()
    );
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

/// A Python with `websockets` and `grpcio` (CI: its venv's, and `HUSH_REQUIRE_GATEWAY_PYTHON`
/// so the test cannot be skipped there).
fn python() -> Option<PathBuf> {
    match std::env::var_os("HUSH_GATEWAY_PYTHON").filter(|p| !p.is_empty()) {
        Some(python) => Some(PathBuf::from(python)),
        None if std::env::var_os("HUSH_REQUIRE_GATEWAY_PYTHON").is_some() => {
            panic!("HUSH_REQUIRE_GATEWAY_PYTHON is set but HUSH_GATEWAY_PYTHON is not")
        }
        None => {
            eprintln!("skipped: no Python with websockets and grpcio (set HUSH_GATEWAY_PYTHON)");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn python_ssl_websockets_and_grpc_pass_through_the_gateway() {
    let Some(python) = python() else { return };
    let edge = Edge::start(|_, _| {}).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/gateway_client.py");
    let output = tokio::task::spawn_blocking({
        let port = edge.gateway.https().port().to_string();
        let root = edge.public_root.clone();
        move || {
            Command::new(python)
                .arg(script)
                .arg(port)
                .arg(HOST)
                .arg(root)
                .output()
                .expect("python runs")
        }
    })
    .await
    .expect("the client finished");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}\ngateway:\n{}",
        String::from_utf8_lossy(&output.stderr),
        edge.gateway.stderr()
    );
    let seen: Value = serde_json::from_str(&stdout).expect("the client's JSON");
    for (name, version) in [("tls1.2", "TLSv1.2"), ("tls1.3", "TLSv1.3")] {
        let https = &seen[name]["https"];
        assert_eq!(https["tls"], version, "{seen}");
        assert_eq!(https["status"], 200, "{seen}");
        assert_eq!(https["hsts"], "max-age=31536000", "{seen}");
        assert_eq!(
            https["peer_identity"],
            serde_json::json!([GATEWAY]),
            "{seen}"
        );
        assert_eq!(
            https["x_forwarded_for"],
            serde_json::json!(["127.0.0.1"]),
            "{seen}"
        );
        assert_eq!(
            https["x_forwarded_proto"],
            serde_json::json!(["https"]),
            "{seen}"
        );
        assert_eq!(
            seen[name]["wss"]["echo"], "hello through the gateway",
            "{seen}"
        );
    }
    // HealthCheckResponse{status: SERVING}.
    assert_eq!(seen["grpc"]["health"], "0801", "{seen}");
}

// === ACME, against pebble ===

/// A free loopback port: pebble must be told the ports it validates on before the gateway
/// binds them.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A gateway whose certificate for `shop.test` comes from pebble by `challenge`; `None` when
/// pebble is not installed (and CI does not require it).
async fn acme_edge(
    challenge: AcmeChallenge,
    validity: Option<Duration>,
) -> Option<(Edge, Pebble, PathBuf)> {
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(PebbleOptions {
        http_port,
        tls_port,
        certificate_validity: validity,
    })?;
    let state = tempfile::tempdir().expect("temp dir").keep();
    let (directory, directory_ca) = (pebble.directory_url(), pebble.root_ca_pem().to_path_buf());
    let state_dir = state.join("acme");
    let edge = Edge::start(|config, _| {
        config.https.listen = SocketAddr::from(([127, 0, 0, 1], tls_port));
        config.http = Some(HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], http_port)),
            redirect_port: None,
        });
        config.certificates = vec![CertificateConfig {
            hosts: vec![HOST.into()],
            files: None,
            acme: true,
        }];
        config.acme = Some(AcmeConfig {
            directory,
            contact: vec!["mailto:ops@shop.test".into()],
            accept_terms_of_service: true,
            challenge,
            state_dir: state_dir.clone(),
            directory_ca: Some(directory_ca),
        });
    })
    .await;
    Some((edge, pebble, state_dir))
}

/// The root of the certificates pebble issues (each start of pebble makes a new one).
fn pebble_issuer_root(pebble: &Pebble, into: &Path) -> PathBuf {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(pebble.root_ca_pem())
        .arg(format!("{}/roots/0", pebble.management_url()))
        .output()
        .expect("curl runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = into.join("pebble-issuer-root.pem");
    fs::write(&path, &output.stdout).expect("write pebble's root");
    path
}

/// Waits until the gateway serves a certificate that chains to `root`, and returns curl's
/// verbose lines about it.
fn wait_for_acme_certificate(edge: &Edge, root: &Path) -> String {
    let mut last = String::new();
    wait_until("the gateway serves a certificate from pebble", || {
        let (stdout, stderr, ok) = edge.curl_trusting(root, &["-v"], "/echo");
        last = format!("{stdout}\n{stderr}");
        ok
    });
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_is_obtained_by_acme_http_01_and_served() {
    let Some((edge, pebble, state_dir)) = acme_edge(AcmeChallenge::Http01, None).await else {
        return;
    };
    let root = pebble_issuer_root(&pebble, edge.temp.path());
    let verbose = wait_for_acme_certificate(&edge, &root);
    assert!(
        verbose.contains("issuer: CN=Pebble Intermediate"),
        "{verbose}"
    );
    let (stdout, stderr, ok) =
        edge.curl_trusting(&root, &["--tlsv1.2", "--tls-max", "1.2"], "/echo");
    assert!(ok, "{stderr}");
    assert_eq!(header(&echoed(&stdout), "peer_identity"), [GATEWAY]);
    // The account and the certificate are kept, readable by the gateway's user alone.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&state_dir), 0o700);
    let files: Vec<PathBuf> = fs::read_dir(&state_dir)
        .expect("the state directory")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "pem"))
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    let metrics = http_request(edge.gateway.admin(), "GET", "/metrics").1;
    assert!(
        metrics.contains("hush_gateway_certificate_expiry_timestamp_seconds{certificate=\"shop.test\",source=\"acme\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_is_obtained_by_acme_tls_alpn_01_and_served() {
    let Some((edge, pebble, _)) = acme_edge(AcmeChallenge::TlsAlpn01, None).await else {
        return;
    };
    let root = pebble_issuer_root(&pebble, edge.temp.path());
    wait_for_acme_certificate(&edge, &root);
    let (stdout, stderr, ok) = edge.curl_trusting(&root, &["--http2"], "/echo");
    assert!(ok, "{stderr}");
    assert_eq!(header(&echoed(&stdout), "peer_identity"), [GATEWAY]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acme_certificate_is_renewed_before_it_expires_and_served_through_an_outage() {
    // Pebble's certificates live 30 s: renewal comes at about 20 s.
    let Some((edge, mut pebble, _)) =
        acme_edge(AcmeChallenge::Http01, Some(Duration::from_secs(30))).await
    else {
        return;
    };
    let root = pebble_issuer_root(&pebble, edge.temp.path());
    let expire = |verbose: &str| {
        verbose
            .lines()
            .find(|l| l.contains("expire date:"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let first = expire(&wait_for_acme_certificate(&edge, &root));
    let mut renewed = String::new();
    wait_until("the gateway renews the certificate", || {
        let (_, stderr, ok) = edge.curl_trusting(&root, &["-v", "-o", "/dev/null"], "/echo");
        renewed = expire(&stderr);
        ok && renewed != first
    });
    // The CA goes away: the next renewal fails, and the certificate in service stays.
    pebble.stop();
    wait_until("the gateway reports the failed renewal", || {
        edge.gateway.stderr().contains("connection refused")
            || edge.gateway.stderr().contains("Connection refused")
    });
    let (_, stderr, ok) = edge.curl_trusting(&root, &["-v", "-o", "/dev/null"], "/echo");
    assert!(
        ok,
        "the served certificate was dropped during the outage: {stderr}"
    );
    assert_eq!(expire(&stderr), renewed);
}

#[tokio::test(flavor = "multi_thread")]
async fn hush_diagnose_and_hush_check_understand_the_gateway() {
    let edge = Edge::start(|_, _| {}).await;
    let https = edge.gateway.https().to_string();
    let diagnose = Command::new(HUSH)
        .args([
            "diagnose",
            "--public",
            &https,
            "--server-name",
            HOST,
            "--ca-file",
        ])
        .arg(&edge.public_root)
        .output()
        .expect("hush diagnose runs");
    let text = String::from_utf8_lossy(&diagnose.stdout);
    assert!(diagnose.status.success(), "{text}");
    for expected in [
        "TLS 1.3: accepted",
        "TLS 1.2: accepted (TLS_ECDHE_ECDSA_WITH",
        "TLS 1.1: refused",
        "TLS 1.0: refused",
        "step 4, chain: ok",
        "step 5, name: ok",
        // The test certificate lives an hour: under the 14 days warned about.
        "step 6, expiry: WARNING",
        "result: ok with 1 warning",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    let check = Command::new(HUSH)
        .args(["check", "--gateway"])
        .arg(edge.temp.path().join("gateway/gateway.yaml"))
        .args(["--https", &https, "--ca-file"])
        .arg(&edge.public_root)
        .output()
        .expect("hush check runs");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}");
    for expected in [
        "configuration  ok: valid: 1 certificate, 1 route",
        "CA             ok:",
        "the key matches, it covers every host",
        "public TLS     WARNING: shop.test: expiry",
        "result: ok",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    // `hush gateway --check` reads the same files without binding anything.
    let output = Command::new(HUSH)
        .args(["gateway", "--check", "--config"])
        .arg(edge.temp.path().join("gateway/gateway.yaml"))
        .output()
        .expect("hush gateway --check runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("certificate shop.test: from files"), "{text}");
}

// === hostile clients ===

/// A TLS connection to the gateway as `shop.test`, trusting the public root, offering `alpn`.
async fn tls_to(edge: &Edge, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(edge.public_ca.root()).expect("the public root");
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(edge.gateway.https())
        .await
        .expect("connect");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from(HOST).expect("a name"),
            tcp,
        )
        .await
        .expect("a TLS handshake")
}

/// Sends `request` as bytes on a new TLS connection and returns the response's head line.
async fn raw_request(edge: &Edge, request: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut tls = tls_to(edge, b"http/1.1").await;
    tls.write_all(request.as_bytes()).await.expect("send");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(20), tls.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_naming_two_hosts_are_refused_not_routed_by_either() {
    let edge = Edge::start(|_, _| {}).await;
    // The Host header names one host, the absolute target another.
    let line = raw_request(
        &edge,
        "GET https://other.test/echo HTTP/1.1\r\nhost: shop.test\r\n\r\n",
    )
    .await;
    assert!(line.starts_with("HTTP/1.1 400"), "{line}");
    // Two Host headers.
    let line = raw_request(
        &edge,
        "GET /echo HTTP/1.1\r\nhost: shop.test\r\nhost: other.test\r\n\r\n",
    )
    .await;
    assert!(line.starts_with("HTTP/1.1 400"), "{line}");
    // A tunnel through the gateway.
    let line = raw_request(
        &edge,
        "CONNECT shop.test:443 HTTP/1.1\r\nhost: shop.test:443\r\n\r\n",
    )
    .await;
    assert!(line.starts_with("HTTP/1.1 405"), "{line}");
    // One host, as sent by every client: served.
    let line = raw_request(&edge, "GET /echo HTTP/1.1\r\nhost: SHOP.test.\r\n\r\n").await;
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_handshakes_holds_few_slots_for_a_short_time() {
    let edge = Edge::start(|config, _| {
        config.limits.max_handshakes_per_address = 3;
        config.limits.handshake_timeout = Duration::from_secs(2);
    })
    .await;
    use tokio::io::AsyncReadExt;
    // Three connections that say nothing hold this address's three handshake slots...
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(
            TcpStream::connect(edge.gateway.https())
                .await
                .expect("connect"),
        );
    }
    // ... so a fourth is closed at once, before any byte is read from it.
    let mut fourth = TcpStream::connect(edge.gateway.https())
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(20), fourth.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    // The silent ones are dropped when their handshake time is up, and the slots come back.
    for mut conn in silent {
        let read = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
    let (stdout, stderr, ok) = edge.curl(&[], "/echo");
    assert!(ok, "{stderr}");
    assert_eq!(header(&echoed(&stdout), "peer_identity"), [GATEWAY]);
    let metrics = http_request(edge.gateway.admin(), "GET", "/metrics").1;
    assert!(
        metrics.contains("hush_connections_refused_total{direction=\"gateway\",reason=\"handshakes_per_address\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn many_hosts_from_one_client_share_one_connection_into_the_mesh() {
    use http_body_util::{BodyExt, Empty};
    let edge = Edge::start(|config, _| config.routes[0].host = "*".into()).await;
    let inbound_connections = || {
        crate::mesh::sidecars::metric(
            &crate::mesh::sidecars::metrics_of(&edge.backend),
            "hush_connections_total{direction=\"inbound\",protocol=\"http2\"}",
        )
    };
    let before = inbound_connections();
    // One HTTP/2 connection to the gateway, twenty host names on it.
    let tls = tls_to(&edge, b"h2").await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("an HTTP/2 connection");
    tokio::spawn(connection);
    for i in 0..20 {
        let authority = format!("h{i}.shop.test");
        let request = http::Request::get(format!("https://{authority}/echo"))
            .body(Empty::<bytes::Bytes>::new())
            .expect("a request");
        let response = sender.send_request(request).await.expect("a response");
        assert_eq!(response.status(), 200);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        let echo: Value = serde_json::from_slice(&body).expect("the echo app's JSON");
        // The app is told the host the client asked for, once, as HTTP/2 says it.
        assert_eq!(echo["authority"], authority, "{echo}");
        assert_eq!(echo["host"], serde_json::json!([]), "{echo}");
        assert_eq!(header(&echo, "peer_identity"), [GATEWAY]);
    }
    let opened = inbound_connections() - before;
    assert!(
        opened <= 1.0,
        "the gateway opened {opened} connections to the backend for one client's 20 hosts"
    );
}
