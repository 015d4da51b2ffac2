//! The SPIFFE Workload API a sidecar serves to its app, used by real third-party clients: the
//! Python `spiffe` package (py-spiffe 0.3.2, from PyPI) and the Rust `spiffe` crate (0.19). Each
//! takes the app's X.509-SVID from the frontend sidecar's socket, does its own mutual TLS with
//! it to the backend sidecar's inbound port (whose app echoes the identity it was told), and
//! follows a rotation: the CA's `--max-ttl 1m` makes the sidecar renew every half minute or so.
//!
//! The Python tests need `HUSH_SPIFFE_PYTHON`, a Python with `spiffe==0.3.2` (CI sets it to its
//! venv's Python, and `HUSH_REQUIRE_SPIFFE_PYTHON` so that they cannot be skipped); elsewhere,
//! without it, they say they were skipped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hush_identity::TrustBundle;
use hush_proxy::{ProxyConfig, WorkloadApiConfig};
use hush_test_support::http_request;
use hush_tls::{CredentialStore, SpiffeServerVerifier};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::Value;
use spiffe::{BundleSource, TrustDomain, X509Source};
use tokio::net::TcpStream;

use crate::mesh::sidecars::*;

/// The socket's name, next to each sidecar's configuration file (a relative path is read
/// relative to the file).
const SOCKET: &str = "workload.sock";

fn python() -> Option<PathBuf> {
    match std::env::var_os("HUSH_SPIFFE_PYTHON").filter(|p| !p.is_empty()) {
        Some(python) => Some(PathBuf::from(python)),
        // CI installs py-spiffe, so there the tests must run.
        None if std::env::var_os("HUSH_REQUIRE_SPIFFE_PYTHON").is_some() => {
            panic!("HUSH_REQUIRE_SPIFFE_PYTHON is set but HUSH_SPIFFE_PYTHON is not")
        }
        None => {
            eprintln!("skipped: no Python with spiffe==0.3.2 (set HUSH_SPIFFE_PYTHON)");
            None
        }
    }
}

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/workload_api_client.py")
}

/// The usual mesh, each sidecar serving the Workload API on `workload.sock` in its directory,
/// certificates of a minute.
async fn mesh() -> Mesh {
    Mesh::start(MeshSpec {
        ca_args: vec!["--max-ttl", "1m"],
        sidecars: edit(|config: &mut ProxyConfig| {
            config.workload_api = Some(WorkloadApiConfig::new(SOCKET));
        }),
        ..MeshSpec::default()
    })
    .await
}

fn socket_of(mesh: &Mesh, sidecar: &str) -> PathBuf {
    mesh.temp.path().join(sidecar).join(SOCKET)
}

/// The serial of the certificate the sidecar presents, from its admin port's `/certs`.
fn sidecar_serial(sidecar: &hush_test_support::ProxyProcess) -> String {
    let (status, body) = http_request(sidecar.admin(), "GET", "/certs");
    assert_eq!(status, 200, "{body}");
    let certs: Value = serde_json::from_str(&body).expect("/certs is JSON");
    certs["certificate"]["serial"]
        .as_str()
        .unwrap_or_else(|| panic!("no serial in {certs}"))
        .trim_start_matches('0')
        .to_string()
}

/// Runs the Python client; its JSON lines.
fn run_python(python: &Path, args: &[&str]) -> Vec<Value> {
    let output = std::process::Command::new(python)
        .arg(client_script())
        .args(args)
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the py-spiffe client failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_takes_the_apps_svid_calls_the_mesh_with_it_and_follows_a_rotation() {
    let Some(python) = python() else { return };
    let mesh = mesh().await;
    let socket = socket_of(&mesh, "frontend");
    let mode = std::fs::metadata(&socket).expect("the socket exists");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o666
    );
    let out = mesh.temp.path().join("py");
    std::fs::create_dir_all(&out).unwrap();
    let peer = mesh.backend.inbound().to_string();
    let python2 = python.clone();
    let args = [
        "x509".to_string(),
        socket.display().to_string(),
        out.display().to_string(),
        peer,
        BACKEND.to_string(),
    ];
    let lines = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_python(&python2, &args)
    })
    .await
    .unwrap();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["svid", "call", "rotated", "call"], "{lines:#?}");

    let svid = &lines[0];
    assert_eq!(svid["spiffe_id"], FRONTEND);
    assert_eq!(svid["chain"], 2, "leaf and intermediate: {svid}");
    assert_eq!(svid["roots"], 1);
    assert!(
        svid["key"].as_str().unwrap().ends_with(" secp256r1"),
        "a P-256 key: {svid}"
    );
    // Not the sidecar's own certificate (nor, so, its key).
    assert_ne!(
        svid["serial"].as_str().unwrap().trim_start_matches('0'),
        sidecar_serial(&mesh.frontend)
    );

    // The backend sidecar accepted the app's own mutual TLS and told its app who called.
    for call in [&lines[1], &lines[3]] {
        assert_eq!(call["status"], 200, "{call}");
        assert_eq!(call["body"]["path"], "/from-py-spiffe");
        assert_eq!(call["body"]["peer_identity"], serde_json::json!([FRONTEND]));
    }
    let rotated = &lines[2];
    assert_eq!(rotated["spiffe_id"], FRONTEND);
    assert_ne!(rotated["serial"], svid["serial"]);
    assert_eq!(rotated["same_key"], false, "a new key with every SVID");
}

/// GET / through a TLS connection made with `client`.
async fn call_with(
    client: Arc<hush_tls::rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> (u16, Value) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("backend.invalid").expect("a value the test makes");
    let tls = within(tokio_rustls::TlsConnector::from(client).connect(name, tcp))
        .await
        .expect("the backend sidecar accepts the app's SVID");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let request = http::Request::get("/from-rust-spiffe")
        .header("host", "backend.shop")
        .body(Empty::<Bytes>::new())
        .expect("a value the test makes");
    let response = within(sender.send_request(request))
        .await
        .expect("a response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a value the test makes")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&body).expect("the echo app's JSON"),
    )
}

/// A rustls client presenting `svid` and trusting the roots of `source` for the backend.
fn client_for(svid: &spiffe::X509Svid, source: &X509Source) -> Arc<hush_tls::rustls::ClientConfig> {
    let trust_domain = TrustDomain::try_from(TRUST_DOMAIN).expect("a value the test makes");
    let bundle = source
        .bundle_for_trust_domain(&trust_domain)
        .expect("a value the test makes")
        .expect("the Workload API sent the trust domain's bundle");
    let roots: Vec<CertificateDer<'static>> = bundle
        .authorities()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let bundle = TrustBundle::new(TRUST_DOMAIN.parse().expect("a value the test makes"), roots)
        .expect("a value the test makes");
    let verifier = SpiffeServerVerifier::new(
        &bundle,
        vec![BACKEND.parse().expect("a value the test makes")],
    )
    .expect("a value the test makes");
    let identity = CredentialStore::new();
    identity
        .install(
            svid.cert_chain()
                .iter()
                .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                .collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                svid.private_key().as_bytes().to_vec(),
            )),
        )
        .expect("the SVID's key fits its certificate");
    Arc::new(
        hush_tls::client_config(verifier, Some(Arc::new(identity)), &[b"http/1.1"])
            .expect("a value the test makes"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_spiffe_crate_takes_the_apps_svid_calls_the_mesh_with_it_and_follows_a_rotation() {
    let mesh = mesh().await;
    let socket = socket_of(&mesh, "frontend");
    let source = within(
        X509Source::builder()
            .endpoint(format!("unix:{}", socket.display()))
            .build(),
    )
    .await
    .expect("an X509Source on the sidecar's socket");
    let first = source.svid().expect("an SVID");
    assert_eq!(first.spiffe_id().to_string(), FRONTEND);
    let (status, body) = call_with(client_for(&first, &source), mesh.backend.inbound()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["peer_identity"], serde_json::json!([FRONTEND]));

    let mut updates = source.updated();
    let second = tokio::time::timeout(PATIENCE, async {
        loop {
            updates.changed().await.expect("the source runs");
            let svid = source.svid().expect("an SVID");
            if svid.leaf().as_bytes() != first.leaf().as_bytes() {
                return svid;
            }
        }
    })
    .await
    .expect("a rotation within the patience");
    assert_eq!(second.spiffe_id().to_string(), FRONTEND);
    assert_ne!(
        second.private_key().as_bytes(),
        first.private_key().as_bytes(),
        "a new key with every SVID"
    );
    let (status, body) = call_with(client_for(&second, &source), mesh.backend.inbound()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["peer_identity"], serde_json::json!([FRONTEND]));
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_refused_without_the_header_and_removed_at_shutdown() {
    let mut mesh = mesh().await;
    let socket = socket_of(&mesh, "backend");
    // The Rust crate sends the header; a plain gRPC client that does not is refused.
    let path = socket.clone();
    let channel = tonic::transport::Endpoint::try_from("http://workload.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("connect to the socket");
    let mut client =
        hush_proto::spiffe::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
            channel,
        );
    let refused = client
        .fetch_x509svid(hush_proto::spiffe::workload::X509svidRequest {})
        .await
        .map(drop)
        .expect_err("no header, no SVID");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    mesh.backend.terminate();
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

/// The fenced block of `language` that follows `heading` in the README.
fn readme_block(heading: &str, language: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("the README");
    let section = readme
        .split_once(heading)
        .unwrap_or_else(|| panic!("the README has no {heading:?}"))
        .1;
    let block = section
        .split_once(&format!("```{language}\n"))
        .unwrap_or_else(|| panic!("no {language} block under {heading:?}"))
        .1;
    block
        .split_once("```")
        .expect("a closed block")
        .0
        .to_string()
}

/// The README's example, as written: its configuration line is one the sidecar reads, and its
/// Python runs against a sidecar with py-spiffe and says who the app is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_py_spiffe_example_runs() {
    let yaml = readme_block("## SPIFFE Workload API", "yaml");
    let value: serde_json::Value = serde_saphyr::from_str(&yaml).expect("YAML");
    let api: WorkloadApiConfig =
        serde_json::from_value(value["workload_api"].clone()).expect("a workload_api section");
    assert_eq!(api.socket, Path::new("/tmp/tour/workload.sock"));

    let Some(python) = python() else { return };
    let script = readme_block("## SPIFFE Workload API", "python");
    let mesh = mesh().await;
    let file = mesh.temp.path().join("readme.py");
    std::fs::write(&file, script).unwrap();
    let socket = socket_of(&mesh, "frontend");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(&file)
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix://{}", socket.display()),
            )
            .output()
            .expect("run the README's example")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout,
        format!("I am {FRONTEND}\nI trust 1 root(s) of {TRUST_DOMAIN}\n")
    );
}

/// A JWT-SVID through py-spiffe: JwtSource mints one for an audience (the sidecar asks the CA),
/// PyJWT checks it with the JWT bundle the Workload API handed out, and ValidateJWTSVID accepts
/// it for its audience and refuses it for another, in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_and_validates_a_jwt_svid() {
    let Some(python) = python() else { return };
    let mesh = mesh().await;
    let socket = socket_of(&mesh, "frontend").display().to_string();
    let lines =
        tokio::task::spawn_blocking(move || run_python(&python, &["jwt", &socket, "backend"]))
            .await
            .expect("the Python client ran");
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["jwt", "validated", "refused"], "{lines:#?}");
    assert_eq!(lines[0]["spiffe_id"], FRONTEND);
    assert_eq!(lines[0]["sub"], FRONTEND);
    assert_eq!(lines[0]["alg"], "ES256");
    assert_eq!(lines[1]["spiffe_id"], FRONTEND);
    let error = lines[2]["error"].as_str().unwrap();
    assert!(
        error.contains("INVALID_ARGUMENT") || error.contains("audience"),
        "{error}"
    );
}

/// The same with the Rust crate: JwtSource, validated locally against its JWT bundles and by
/// the sidecar's ValidateJWTSVID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_spiffe_crate_fetches_and_validates_a_jwt_svid() {
    let mesh = mesh().await;
    let endpoint = format!("unix:{}", socket_of(&mesh, "backend").display());
    let source = within(spiffe::JwtSource::builder().endpoint(&endpoint).build())
        .await
        .expect("a JwtSource on the sidecar's socket");
    let svid = within(source.fetch_jwt_svid(["frontend", "audit"]))
        .await
        .expect("a JWT-SVID");
    assert_eq!(svid.spiffe_id().to_string(), BACKEND);
    let checked = spiffe::JwtSvid::parse_and_validate(svid.token(), &source, &["audit"])
        .expect("valid with the bundle the Workload API handed out");
    assert_eq!(checked.spiffe_id().to_string(), BACKEND);
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint)
        .await
        .expect("a client");
    let validated = client
        .validate_jwt_token("frontend", svid.token())
        .await
        .expect("the sidecar validates it");
    assert_eq!(validated.spiffe_id().to_string(), BACKEND);
    assert!(
        client
            .validate_jwt_token("someone-else", svid.token())
            .await
            .is_err(),
        "another audience is refused"
    );
    source.shutdown().await;
}

/// A JWT-SVID fetched from one sidecar is validated by another sidecar's `ValidateJWTSVID` and
/// by the `spiffe` crate against the JWT bundles that other sidecar hands out; it is refused for
/// another audience, once tampered with, once expired (signed here with the CA's own JWT key, an
/// hour ago), and unsigned (`alg: none`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_svid_from_one_sidecar_is_judged_by_another() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let mesh = mesh().await;
    let frontend = format!("unix:{}", socket_of(&mesh, "frontend").display());
    let backend = format!("unix:{}", socket_of(&mesh, "backend").display());
    // A JwtSource waits until the sidecar has the app's identity.
    let at_frontend = within(spiffe::JwtSource::builder().endpoint(&frontend).build())
        .await
        .expect("a JwtSource on the frontend's socket");
    let svid = within(at_frontend.fetch_jwt_svid(["backend"]))
        .await
        .expect("a JWT-SVID from the frontend's sidecar");
    assert_eq!(svid.spiffe_id().to_string(), FRONTEND);
    let token = svid.token().to_string();

    // The other sidecar, and the crate with the other sidecar's bundles.
    let at_backend = spiffe::WorkloadApiClient::connect_to(&backend)
        .await
        .expect("a client of the backend's socket");
    let validated = at_backend
        .validate_jwt_token("backend", &token)
        .await
        .expect("the backend's sidecar validates it");
    assert_eq!(validated.spiffe_id().to_string(), FRONTEND);
    let source = within(spiffe::JwtSource::builder().endpoint(&backend).build())
        .await
        .expect("a JwtSource on the backend's socket");
    let checked = spiffe::JwtSvid::parse_and_validate(&token, &source, &["backend"])
        .expect("valid against the JWT bundles the backend's sidecar hands out");
    assert_eq!(checked.spiffe_id().to_string(), FRONTEND);

    let refused = |what: &'static str, token: String, audience: &'static str| {
        let client = at_backend.clone();
        async move {
            let error = client
                .validate_jwt_token(audience, &token)
                .await
                .expect_err(what);
            eprintln!("{what}: {error}");
            error.to_string()
        }
    };
    let said = refused("another audience", token.clone(), "payments").await;
    assert!(said.contains(r#"not for "payments""#), "{said}");
    assert!(
        spiffe::JwtSvid::parse_and_validate(&token, &source, &["payments"]).is_err(),
        "the crate refuses another audience too"
    );

    // Tampered: the claims say the backend, the signature is the frontend's token's.
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url claims"))
            .expect("JSON claims");
    claims["sub"] = Value::from(BACKEND);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let said = refused("tampered claims", forged.clone(), "backend").await;
    assert!(said.contains("signature does not verify"), "{said}");
    assert!(spiffe::JwtSvid::parse_and_validate(&forged, &source, &["backend"]).is_err());

    // Unsigned.
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    let said = refused("alg none", unsigned, "backend").await;
    assert!(said.contains("unsigned"), "{said}");

    // Expired: the CA's own JWT key signs a token that ended two minutes ago (past the leeway).
    let key_file = std::fs::read_dir(&mesh.ca_dir)
        .expect("the CA directory")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("jwt-") && name.ends_with(".key")
        })
        .expect("the CA's JWT key");
    let key = hush_identity::JwtSigningKey::from_pkcs8_pem(&std::fs::read(key_file).unwrap())
        .expect("a JWT signing key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expired = hush_identity::sign_jwt_svid(
        &key,
        &FRONTEND.parse().unwrap(),
        &["backend".to_string()],
        now - 3600,
        now - 120,
    )
    .expect("an expired token");
    let said = refused("expired", expired.clone(), "backend").await;
    assert!(said.contains("expired"), "{said}");
    assert!(spiffe::JwtSvid::parse_and_validate(&expired, &source, &["backend"]).is_err());
    // The same key, within its life: accepted, so the refusal above was the expiry.
    let fresh = hush_identity::sign_jwt_svid(
        &key,
        &FRONTEND.parse().unwrap(),
        &["backend".to_string()],
        now,
        now + 60,
    )
    .expect("a fresh token");
    at_backend
        .validate_jwt_token("backend", &fresh)
        .await
        .expect("the same key within its life");
    source.shutdown().await;
    at_frontend.shutdown().await;
}
