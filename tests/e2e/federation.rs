//! SPIFFE federation end to end. The CA-level tests (`federation::ca_*`) run real `hush ca
//! serve` processes of two trust domains on loopback, each serving its SPIFFE bundle endpoint
//! and fetching the other's, and read what each hands to sidecars (`GetTrustBundle.federated`).
//! Hostile endpoints are played by small TLS servers in the test. Python reads the bundle
//! endpoint as a third party would.
//!
//! Readiness is the CA's own lines and bounded polls of its answers, never a sleep.
//!
//! The sidecar-level test (`federation::sidecars::*`) puts a mesh on each side and has each
//! mesh's sidecars call the other's.

mod sidecars;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hush_ca_client::{CaClient, FederatedBundle, federated_bundles};
use hush_identity::{SpiffeBundle, TrustBundle, TrustDomain};
use hush_test_support::{CaProcess, TestCa, describe_output, run_hush, run_hush_ok};
use rustls_pki_types::CertificateDer;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const HUSH: &str = env!("CARGO_BIN_EXE_hush");
const A: &str = "a.example";
const B: &str = "b.example";
/// The line `hush ca serve --bundle-endpoint-listen` prints before its readiness line.
const ENDPOINT_PREFIX: &str = "hush ca: SPIFFE bundle endpoint (";
/// How long a federated change may take to show: several refreshes at a 1 s hint, on a busy
/// machine.
const CONVERGE: Duration = Duration::from_secs(60);

// === Fixtures ===

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// `hush ca init` for `td` in `temp/name`.
fn init(temp: &TempDir, name: &str, td: &str) -> PathBuf {
    let dir = temp.path().join(name);
    run_hush_ok(
        HUSH,
        &["ca", "init", "--dir", path_str(&dir), "--trust-domain", td],
    );
    dir
}

fn bundle_of(dir: &Path) -> TrustBundle {
    let pem = run_hush_ok(HUSH, &["ca", "bundle", "--dir", path_str(dir)]);
    TrustBundle::from_pem(pem.as_bytes(), None).expect("`hush ca bundle` prints a trust bundle")
}

/// Writes the PEM bundle of the CA in `dir` to `temp/file`, as an operator hands it to a
/// partner out of band.
fn write_pem_bundle(temp: &TempDir, dir: &Path, file: &str) -> PathBuf {
    let path = temp.path().join(file);
    fs::write(&path, bundle_of(dir).to_pem()).expect("write the bundle");
    path
}

/// The bundle endpoint's URL from the CA's stdout.
pub(crate) fn endpoint_of(ca: &mut CaProcess) -> String {
    let line = ca
        .process()
        .stdout_lines()
        .iter()
        .find(|l| l.starts_with(ENDPOINT_PREFIX))
        .cloned()
        .expect("the CA printed its bundle endpoint before its readiness line");
    let url = line
        .rsplit(" on ")
        .next()
        .expect("the endpoint line ends with its URL");
    assert!(url.starts_with("https://127.0.0.1:"), "{line}");
    url.to_string()
}

fn address_of(url: &str) -> String {
    url.trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string()
}

fn spiffe_spec(td: &str, endpoint: &str, bundle: &Path) -> String {
    format!(
        "{td}={endpoint},endpoint-id=spiffe://{td}/hush/bundle-endpoint,bundle={}",
        path_str(bundle)
    )
}

/// What the CA at `ca` hands to sidecars of the federated domains.
async fn federated(ca: &CaProcess, roots: &[CertificateDer<'static>]) -> Vec<FederatedBundle> {
    let client = CaClient::new(ca.url(), roots).expect("a client for the CA");
    let response = tokio::time::timeout(Duration::from_secs(30), client.trust_bundle())
        .await
        .expect("the CA answers GetTrustBundle within 30 s")
        .expect("GetTrustBundle");
    federated_bundles(&response).expect("the CA's federated bundles read")
}

/// Polls `ca`'s federated bundle of `td` until `done` holds (bounded by [`CONVERGE`]).
async fn wait_for_federated(
    ca: &CaProcess,
    roots: &[CertificateDer<'static>],
    td: &str,
    what: &str,
    done: impl Fn(&FederatedBundle) -> bool,
) -> FederatedBundle {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let all = federated(ca, roots).await;
        if let Some(bundle) = all.iter().find(|b| b.trust_domain.as_str() == td)
            && done(bundle)
        {
            return bundle.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the CA of {} never got there; it hands out {all:?}\nits log:\n{}",
            ca.trust_domain(),
            ca.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until `ca` logged a line holding every one of `needles`; returns it. Async,
/// so that servers the test runs on its own runtime go on serving meanwhile.
async fn wait_for_log(ca: &CaProcess, needles: &[&str]) -> String {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let stderr = ca.stderr();
        if let Some(line) = stderr
            .lines()
            .find(|line| needles.iter().all(|n| line.contains(n)))
        {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the CA never logged {needles:?}; stderr:\n{stderr}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hush_ca_ok(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["ca"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--dir", path_str(dir)]);
    run_hush_ok(HUSH, &all)
}

// === Two CAs federating over https_spiffe ===

#[tokio::test]
async fn ca_two_trust_domains_federate_over_https_spiffe_and_follow_a_root_rotation() {
    let temp = tempfile::tempdir().expect("temp dir");
    let a_dir = init(&temp, "a", A);
    let b_dir = init(&temp, "b", B);
    let a_roots = bundle_of(&a_dir);
    let b_roots = bundle_of(&b_dir);
    // A's bundle as PEM, B's as SPIFFE bundle JSON: the two bootstrap formats.
    let a_bootstrap = write_pem_bundle(&temp, &a_dir, "a-bundle.pem");
    let b_bootstrap = temp.path().join("b-bundle.json");
    fs::write(
        &b_bootstrap,
        SpiffeBundle::new(b_roots.clone(), b"", None, None)
            .expect("a bundle")
            .to_json(),
    )
    .expect("write B's bundle");
    let serve = ["--bundle-refresh-hint", "1s", "--reload-interval", "1s"];

    // A first, to learn where its endpoint listens; then B, federating with A; then A again on
    // the same addresses, federating with B.
    let mut a = CaProcess::start(
        HUSH,
        &a_dir,
        &[&["--bundle-endpoint-listen", "127.0.0.1:0"], &serve[..]].concat(),
    );
    let a_endpoint = endpoint_of(&mut a);
    let a_listen = address_of(a.url());
    let mut b = CaProcess::start(
        HUSH,
        &b_dir,
        &[
            &[
                "--bundle-endpoint-listen",
                "127.0.0.1:0",
                "--federate-with",
                &spiffe_spec(A, &a_endpoint, &a_bootstrap),
            ],
            &serve[..],
        ]
        .concat(),
    );
    let b_endpoint = endpoint_of(&mut b);
    a.terminate();
    let a = CaProcess::start_on(
        HUSH,
        &a_dir,
        &a_listen,
        &[
            &[
                "--bundle-endpoint-listen",
                &address_of(&a_endpoint),
                "--federate-with",
                &spiffe_spec(B, &b_endpoint, &b_bootstrap),
            ],
            &serve[..],
        ]
        .concat(),
    );

    // Each hands the other's roots to its sidecars, apart from its own.
    let at_b = wait_for_federated(&b, b_roots.roots(), A, "B fetches A", |f| {
        f.roots.roots() == a_roots.roots()
    })
    .await;
    // A's JWT authority (made by `hush ca init`) travels with its roots, as a JWK Set.
    let keys = hush_identity::JwtKeys::from_json(&at_b.jwt_keys).expect("A's JWT keys");
    assert_eq!(keys.len(), 1, "A's one JWT authority");
    assert!(at_b.sequence >= 1);
    let at_a = wait_for_federated(&a, a_roots.roots(), B, "A fetches B", |f| {
        f.roots.roots() == b_roots.roots()
    })
    .await;
    assert_eq!(at_a.sequence, 1, "B's authorities generation");
    wait_for_log(
        &a,
        &["fetched the bundle of federated trust domain b.example"],
    )
    .await;

    // A rotates its root: the new root reaches B with a higher sequence.
    let old_root = hush_identity::authority_id(&a_roots.roots()[0]).expect("an authority ID");
    hush_ca_ok(&a_dir, &["rotate", "root"]);
    let published = wait_for_federated(&b, b_roots.roots(), A, "A's new root reaches B", |f| {
        f.roots.roots().len() == 2 && f.sequence > at_b.sequence
    })
    .await;
    // A signs under the new root, and its endpoint presents a certificate under it...
    hush_ca_ok(&a_dir, &["activate", "--force"]);
    wait_for_log(&a, &["renewed the bundle endpoint's certificate"]).await;
    // ...and drops the old one. B must still reach A: it verifies each fetch with the last
    // bundle it fetched, not with the bundle= file, which holds the old root alone.
    hush_ca_ok(&a_dir, &["revoke", "--authority", &old_root, "--force"]);
    let new_roots = bundle_of(&a_dir);
    assert_eq!(new_roots.roots().len(), 1);
    let rotated = wait_for_federated(&b, b_roots.roots(), A, "B keeps A's new root alone", |f| {
        f.roots.roots() == new_roots.roots()
    })
    .await;
    assert!(rotated.sequence > published.sequence);
    wait_for_log(
        &b,
        &[
            "the bundle of federated trust domain a.example changed",
            "roots_removed=1",
        ],
    )
    .await;
}

// === The endpoint as a third party reads it ===

/// Fetches the bundle endpoint with Python's `ssl` and `urllib`, verifying the endpoint's
/// certificate against the trust domain's PEM roots (its X.509-SVID names no host, so the
/// host name check is off), and checks the JSON against the standard. Prints the endpoint's
/// URI SAN and the roots' DER in base64, one a line.
const PYTHON_READER: &str = r#"
import base64, json, ssl, sys, urllib.request
url, cafile = sys.argv[1], sys.argv[2]
context = ssl.create_default_context(cafile=cafile)
context.check_hostname = False
with urllib.request.urlopen(url, context=context) as response:
    peer = response.fp.raw._sock.getpeercert()
    assert response.status == 200, response.status
    assert response.headers["Content-Type"] == "application/json", response.headers["Content-Type"]
    body = response.read()
bundle = json.loads(body.decode("utf-8"))
assert isinstance(bundle["spiffe_sequence"], int), bundle
assert bundle["spiffe_refresh_hint"] == 300, bundle
for key in bundle["keys"]:
    assert key["use"] in ("x509-svid", "jwt-svid"), key
    if key["use"] == "x509-svid":
        assert len(key["x5c"]) == 1 and "kid" not in key, key
        assert key["kty"] == "EC" and key["crv"] == "P-256", key
        print("root", base64.b64encode(base64.b64decode(key["x5c"][0], validate=True)).decode())
for kind, value in peer.get("subjectAltName", ()):
    print("san", kind, value)
"#;

#[tokio::test]
async fn ca_bundle_endpoint_serves_a_standard_spiffe_bundle() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = init(&temp, "a", A);
    let pem = write_pem_bundle(&temp, &dir, "a.pem");
    let mut a = CaProcess::start(HUSH, &dir, &["--bundle-endpoint-listen", "127.0.0.1:0"]);
    let endpoint = endpoint_of(&mut a);
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            PYTHON_READER,
            &format!("{endpoint}any/path"),
            path_str(&pem),
        ])
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{}", describe_output(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let root = base64_of(&bundle_of(&dir).roots()[0]);
    assert!(stdout.contains(&format!("root {root}")), "{stdout}");
    assert!(
        stdout.contains("san URI spiffe://a.example/hush/bundle-endpoint"),
        "the endpoint presents its X.509-SVID: {stdout}"
    );
    // Only GET and HEAD.
    let post = raw_request(
        &endpoint,
        "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(
        post.to_ascii_lowercase().contains("allow: get, head"),
        "{post}"
    );
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let text = base64_of(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn base64_of(der: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// Sends `request` over TLS to `endpoint` (any certificate) and returns what came back.
async fn raw_request(endpoint: &str, request: &str) -> String {
    try_raw_request(endpoint, request)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`raw_request`], saying what failed instead of panicking.
async fn try_raw_request(endpoint: &str, request: &str) -> Result<String, String> {
    let config = hush_tls::rustls::ClientConfig::builder_with_provider(Arc::new(
        hush_tls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyServer))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(address_of(endpoint))
        .await
        .map_err(|e| format!("connect to the endpoint: {e}"))?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().expect("a name"), tcp)
        .await
        .map_err(|e| format!("TLS with the endpoint: {e}"))?;
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut answer)).await;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Accepts any server certificate: for tests that only look at what the endpoint answers.
#[derive(Debug)]
struct AnyServer;

impl hush_tls::rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<hush_tls::rustls::client::danger::ServerCertVerified, hush_tls::rustls::Error> {
        Ok(hush_tls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &hush_tls::rustls::DigitallySignedStruct,
    ) -> Result<hush_tls::rustls::client::danger::HandshakeSignatureValid, hush_tls::rustls::Error>
    {
        Ok(hush_tls::rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &hush_tls::rustls::DigitallySignedStruct,
    ) -> Result<hush_tls::rustls::client::danger::HandshakeSignatureValid, hush_tls::rustls::Error>
    {
        Ok(hush_tls::rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<hush_tls::rustls::SignatureScheme> {
        hush_tls::rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// === https_web with a private Web CA ===

/// A Web PKI certificate for 127.0.0.1 from a private Web CA, written as PEM files; returns
/// (certificate, key, the Web CA's root).
fn web_certificate(temp: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let web_ca = TestCa::new("web.test");
    let cert = temp.path().join("web.pem");
    let key = temp.path().join("web.key");
    let root = temp.path().join("web-ca.pem");
    write_web_certificate(&web_ca, &cert, &key);
    fs::write(&root, web_ca.root_pem()).expect("write the Web CA");
    (cert, key, root)
}

/// Writes a certificate for 127.0.0.1 from `web_ca` and its key to `cert` and `key`.
fn write_web_certificate(web_ca: &TestCa, cert: &Path, key: &Path) {
    let leaf = web_ca.server_certificate(&["127.0.0.1"]);
    let chain: String = leaf
        .chain
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c))
        .collect();
    fs::write(cert, chain).expect("write the certificate");
    fs::write(key, pem_encode("PRIVATE KEY", leaf.key.secret_der())).expect("write the key");
}

#[tokio::test]
async fn ca_federates_over_https_web_with_a_private_web_ca() {
    let temp = tempfile::tempdir().expect("temp dir");
    let a_dir = init(&temp, "a", A);
    let b_dir = init(&temp, "b", B);
    let (cert, key, web_ca) = web_certificate(&temp);
    let mut a = CaProcess::start(
        HUSH,
        &a_dir,
        &[
            "--bundle-endpoint-listen",
            "127.0.0.1:0",
            "--bundle-endpoint-cert",
            path_str(&cert),
            "--bundle-endpoint-key",
            path_str(&key),
            "--bundle-refresh-hint",
            "1s",
        ],
    );
    let endpoint = endpoint_of(&mut a);
    assert!(
        a.process().stdout_lines()[0].contains("(https_web, "),
        "{:?}",
        a.process().stdout_lines()
    );
    let b = CaProcess::start(
        HUSH,
        &b_dir,
        &[
            "--federate-with",
            &format!("{A}={endpoint},ca-file={}", path_str(&web_ca)),
        ],
    );
    let a_roots = bundle_of(&a_dir);
    wait_for_federated(
        &b,
        bundle_of(&b_dir).roots(),
        A,
        "B fetches A over https_web",
        |f| f.roots.roots() == a_roots.roots(),
    )
    .await;
    // The Web profile speaks TLS 1.2 too, for partners that do not speak 1.3.
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import ssl,sys,urllib.request\n\
             c=ssl.create_default_context(cafile=sys.argv[2])\n\
             c.maximum_version=ssl.TLSVersion.TLSv1_2\n\
             r=urllib.request.urlopen(sys.argv[1],context=c)\n\
             print(r.status, r.fp.raw._sock.version())\n\
             r.read()",
            &endpoint,
            path_str(&web_ca),
        ])
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{}", describe_output(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "200 TLSv1.2"
    );

    // New files are read without a restart: a certificate from a Web CA that B does not
    // trust makes B's next fetches fail at TLS.
    write_web_certificate(&TestCa::new("other-web.test"), &cert, &key);
    wait_for_log(&a, &["bundle endpoint: loaded the changed certificate"]).await;
    let line = wait_for_log(
        &b,
        &[
            "cannot fetch the bundle of federated trust domain a.example",
            "step=\"tls\"",
        ],
    )
    .await;
    assert!(line.contains("keeping the bundle fetched at"), "{line}");
}

// === Refusals ===

#[tokio::test]
async fn ca_federation_refuses_an_endpoint_with_another_spiffe_id() {
    let temp = tempfile::tempdir().expect("temp dir");
    let a_dir = init(&temp, "a", A);
    let b_dir = init(&temp, "b", B);
    let a_bundle = write_pem_bundle(&temp, &a_dir, "a.pem");
    let mut a = CaProcess::start(HUSH, &a_dir, &["--bundle-endpoint-listen", "127.0.0.1:0"]);
    let endpoint = endpoint_of(&mut a);
    let b = CaProcess::start(
        HUSH,
        &b_dir,
        &[
            "--federate-with",
            &format!(
                "{A}={endpoint},endpoint-id=spiffe://{A}/somebody/else,bundle={}",
                path_str(&a_bundle)
            ),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let line = wait_for_log(
        &b,
        &["cannot fetch the bundle of federated trust domain a.example"],
    )
    .await;
    assert!(
        line.contains("step=\"tls\"") || line.contains("step=tls"),
        "{line}"
    );
    assert!(
        line.contains("spiffe://a.example/somebody/else"),
        "what was expected: {line}"
    );
    assert!(
        line.contains("spiffe://a.example/hush/bundle-endpoint"),
        "what the endpoint presented: {line}"
    );
    assert!(federated(&b, bundle_of(&b_dir).roots()).await.is_empty());
    let metrics = b.scrape();
    assert!(
        metrics.contains(
            "hush_ca_federation_fetch_failures_total{trust_domain=\"a.example\",step=\"tls\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn ca_federation_refuses_an_endpoint_serving_another_trust_domains_bundle() {
    let temp = tempfile::tempdir().expect("temp dir");
    let a_dir = init(&temp, "a", A);
    let b_dir = init(&temp, "b", B);
    let (cert, key, web_ca) = web_certificate(&temp);
    let mut a = CaProcess::start(
        HUSH,
        &a_dir,
        &[
            "--bundle-endpoint-listen",
            "127.0.0.1:0",
            "--bundle-endpoint-cert",
            path_str(&cert),
            "--bundle-endpoint-key",
            path_str(&key),
        ],
    );
    let endpoint = endpoint_of(&mut a);
    // B was told the endpoint is c.example's; it serves a.example's roots.
    let b = CaProcess::start(
        HUSH,
        &b_dir,
        &[
            "--federate-with",
            &format!("c.example={endpoint},ca-file={}", path_str(&web_ca)),
        ],
    );
    let line = wait_for_log(
        &b,
        &["cannot fetch the bundle of federated trust domain c.example"],
    )
    .await;
    assert!(
        line.contains(
            r#"belongs to trust domain \"a.example\", but the bundle is for \"c.example\""#
        ) || line.contains("belongs to trust domain \"a.example\""),
        "{line}"
    );
    assert!(federated(&b, bundle_of(&b_dir).roots()).await.is_empty());
}

#[test]
fn ca_federation_with_its_own_trust_domain_is_refused_at_start() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = init(&temp, "a", A);
    let output = run_hush(
        HUSH,
        &[
            "ca",
            "serve",
            "--dir",
            path_str(&dir),
            "--listen",
            "127.0.0.1:0",
            "--federate-with",
            "a.example=https://127.0.0.1:1/",
        ],
    );
    assert!(!output.status.success(), "{}", describe_output(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("this CA's own trust domain"), "{stderr}");
}

/// A token for a reserved ID that got past `hush ca token create` (minted by an older hush, or
/// a record edited on disk) is refused at issuance, with the reason.
#[tokio::test]
async fn ca_never_issues_a_reserved_identity_whatever_attested_it() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = init(&temp, "a", A);
    let token = hush_test_support::mint_token(HUSH, &dir, "spiffe://a.example/hushed", &[]);
    let records: Vec<PathBuf> = fs::read_dir(dir.join("tokens"))
        .expect("the tokens folder")
        .map(|entry| entry.expect("an entry").path())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = fs::read_to_string(&records[0]).expect("the token's record");
    assert!(record.contains("spiffe://a.example/hushed"), "{record}");
    fs::write(
        &records[0],
        record.replace(
            "spiffe://a.example/hushed",
            "spiffe://a.example/hush/bundle-endpoint",
        ),
    )
    .expect("rewrite the record");
    let a = CaProcess::start(HUSH, &dir, &[]);
    let client = CaClient::new(a.url(), bundle_of(&dir).roots()).expect("a client");
    let csr = hush_test_support::plain_csr(hush_test_support::CsrKeyKind::EcdsaP256).der;
    let refused = tokio::time::timeout(Duration::from_secs(30), client.certify(&token, csr, None))
        .await
        .expect("the CA answers within 30 s")
        .expect_err("a reserved identity is never issued");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("is reserved for hush's own components"),
        "{refused:?}"
    );
}

#[test]
fn ca_reserves_the_hush_path_for_its_own_components() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = init(&temp, "a", A);
    for id in [
        "spiffe://a.example/hush/bundle-endpoint",
        "spiffe://a.example/hush",
    ] {
        let output = run_hush(
            HUSH,
            &[
                "ca",
                "token",
                "create",
                "--dir",
                path_str(&dir),
                "--spiffe-id",
                id,
            ],
        );
        assert!(
            !output.status.success(),
            "{id}: {}",
            describe_output(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("reserved for hush's own components"),
            "{stderr}"
        );
    }
    run_hush_ok(
        HUSH,
        &[
            "ca",
            "token",
            "create",
            "--dir",
            path_str(&dir),
            "--spiffe-id",
            "spiffe://a.example/hushed",
        ],
    );
}

/// What the hostile endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hostile {
    /// A body that is not JSON.
    Garbage,
    /// A body far beyond any bundle, sent as fast as the CA reads.
    Huge,
    /// A valid bundle of the partner's trust domain whose sequence goes 5, then 3.
    Rollback,
}

/// A TLS server on 127.0.0.1 (certificate from `web_ca`) answering every request as `mode`
/// says; counts requests.
async fn hostile_endpoint(web_ca: &TestCa, mode: Hostile) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let acceptor =
        tokio_rustls::TlsAcceptor::from(web_ca.rustls_server_config(&["127.0.0.1"], &[]));
    let partner = TestCa::new("p.example");
    let count = Arc::new(AtomicU64::new(0));
    let served = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let n = served.fetch_add(1, Ordering::SeqCst);
            let bundle = SpiffeBundle::new(
                TrustBundle::new(
                    TrustDomain::new("p.example").expect("td"),
                    vec![partner.root()],
                )
                .expect("a bundle"),
                b"",
                Some(if n == 0 { 5 } else { 3 }),
                Some(Duration::from_secs(1)),
            )
            .expect("a bundle")
            .to_json();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = [0u8; 4096];
                let _ = tls.read(&mut head).await;
                match mode {
                    Hostile::Garbage => {
                        let body = b"<html>not a bundle</html>";
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        let _ = tls.write_all(head.as_bytes()).await;
                        let _ = tls.write_all(body).await;
                    }
                    Hostile::Huge => {
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                            .await;
                        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
                        // 64 MiB at most; the CA must stop reading long before.
                        for _ in 0..1024 {
                            if tls.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                    Hostile::Rollback => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            bundle.len()
                        );
                        let _ = tls.write_all(head.as_bytes()).await;
                        let _ = tls.write_all(&bundle).await;
                    }
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    (address, count)
}

#[tokio::test]
async fn ca_federation_survives_hostile_endpoints_and_keeps_the_last_good_bundle() {
    let temp = tempfile::tempdir().expect("temp dir");
    let b_dir = init(&temp, "b", B);
    let web_ca = TestCa::new("web.test");
    let ca_file = temp.path().join("web-ca.pem");
    fs::write(&ca_file, web_ca.root_pem()).expect("write the Web CA");
    let (garbage, _) = hostile_endpoint(&web_ca, Hostile::Garbage).await;
    let (huge, _) = hostile_endpoint(&web_ca, Hostile::Huge).await;
    let (rollback, served) = hostile_endpoint(&web_ca, Hostile::Rollback).await;
    let spec = |td: &str, address: SocketAddr| {
        format!("{td}=https://{address}/,ca-file={}", path_str(&ca_file))
    };
    let b = CaProcess::start(
        HUSH,
        &b_dir,
        &[
            "--federate-with",
            &spec("garbage.example", garbage),
            "--federate-with",
            &spec("huge.example", huge),
            "--federate-with",
            &spec("p.example", rollback),
        ],
    );
    let line = wait_for_log(
        &b,
        &["federated trust domain garbage.example", "step=\"parse\""],
    )
    .await;
    assert!(line.contains("not a SPIFFE bundle"), "{line}");
    let line = wait_for_log(&b, &["federated trust domain huge.example"]).await;
    assert!(line.contains("larger than 1048576 bytes"), "{line}");
    // The rollback endpoint's first bundle (sequence 5) is taken, the next (3) refused, and
    // the first kept.
    let line = wait_for_log(
        &b,
        &["federated trust domain p.example", "step=\"sequence\""],
    )
    .await;
    assert!(line.contains("spiffe_sequence 3 is lower than 5"), "{line}");
    assert!(served.load(Ordering::SeqCst) >= 2);
    let roots = bundle_of(&b_dir);
    let all = federated(&b, roots.roots()).await;
    assert_eq!(
        all.len(),
        1,
        "only p.example's bundle was ever good: {all:?}"
    );
    assert_eq!(all[0].trust_domain.as_str(), "p.example");
    assert_eq!(all[0].sequence, 5);
}

// === A hostile client of the endpoint ===

/// Reads from `stream` until the other end closes or resets it (bounded by [`CONVERGE`]).
async fn closed_by_peer(stream: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(CONVERGE, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn ca_bundle_endpoint_bounds_idle_and_crowding_clients() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = init(&temp, "a", A);
    let mut a = CaProcess::start(
        HUSH,
        &dir,
        &[
            "--bundle-endpoint-listen",
            "127.0.0.1:0",
            "--max-connections-per-ip",
            "3",
        ],
    );
    let endpoint = endpoint_of(&mut a);
    let address = address_of(&endpoint);
    // Three clients that never say anything hold every place of their address...
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect"),
        );
    }
    // ...so a fourth is turned away at once (the endpoint counts them as it accepts, in order).
    // The endpoint resets it, which a loaded machine may report to `connect` itself.
    let refused = match tokio::net::TcpStream::connect(&address).await {
        Ok(mut crowded) => closed_by_peer(&mut crowded).await,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(refused, "the fourth connection is refused");
    // While the three are still open: refused for the crowd, not for its own idleness.
    let mut buf = [0u8; 8];
    assert!(
        matches!(idle[0].try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the idle clients are still connected when the fourth is refused"
    );
    // The idle ones are closed by the endpoint, not kept for ever...
    for stream in &mut idle {
        assert!(closed_by_peer(stream).await, "an idle client is let go");
    }
    drop(idle);
    // ...and the bundle is served again, once the endpoint has counted them gone (it closes a
    // connection a moment before it gives its place back).
    let deadline = Instant::now() + CONVERGE;
    let answer = loop {
        match try_raw_request(&endpoint, "GET / HTTP/1.1\r\nhost: x\r\n\r\n").await {
            Ok(answer) => break answer,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet served again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the endpoint never served again: {e}"),
        }
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
