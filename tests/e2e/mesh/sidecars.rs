//! The two-sidecar mesh the end-to-end tests build, and the clients they use on it.
//!
//! The test is the frontend app: it talks plaintext to the frontend sidecar's outbound
//! listener, which dials the backend sidecar's inbound listener with mutual TLS and requires the
//! backend's SPIFFE ID; the backend sidecar forwards to an app of the test's choosing.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hush_identity::TrustBundle;
use hush_proxy::{Identities, InboundConfig, OutboundConfig, PolicyConfig, Protocol, ProxyConfig};
use hush_test_support::{
    CaProcess, ProxyProcess, TestLeaf, http_request, run_hush_ok, write_sidecar_config,
};
use hush_tls::{CredentialStore, SpiffeServerVerifier};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::mesh::apps;

pub(crate) const HUSH: &str = env!("CARGO_BIN_EXE_hush");
pub(crate) const TRUST_DOMAIN: &str = "cluster.local";
pub(crate) const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
pub(crate) const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";
/// How long a test waits for something the mesh does by itself (a renewal, a log line).
pub(crate) const PATIENCE: Duration = Duration::from_secs(120);

// === the mesh ===

/// A CA, a backend sidecar in front of `app`, and a frontend sidecar whose first outbound
/// listener leads to the backend.
pub(crate) struct Mesh {
    pub(crate) temp: TempDir,
    /// The app behind the backend sidecar.
    pub(crate) app: SocketAddr,
    pub(crate) ca_dir: PathBuf,
    pub(crate) ca: CaProcess,
    pub(crate) backend: ProxyProcess,
    pub(crate) frontend: ProxyProcess,
}

/// What a test changes about the usual mesh.
#[derive(Default)]
pub(crate) struct MeshSpec {
    /// Extra `hush ca serve` arguments (`--max-ttl 1m`).
    pub(crate) ca_args: Vec<&'static str>,
    /// The app behind the backend sidecar (default: the echo app).
    pub(crate) app: Option<SocketAddr>,
    /// A change to the backend's `inbound` section (`protocol: tcp`).
    pub(crate) backend_inbound: Edit<InboundConfig>,
    /// A change to both sidecars' configurations, made after the mesh's own (`limits`,
    /// `admin.max_connections`, `shutdown_grace`…).
    pub(crate) sidecars: Edit<ProxyConfig>,
    /// Environment variables for both sidecars.
    pub(crate) sidecar_env: Vec<(&'static str, &'static str)>,
    /// More outbound listeners for the frontend, after the usual one: (identity, protocol).
    pub(crate) more_outbound: Vec<(&'static str, Protocol)>,
    /// Identity policy for the backend sidecar: the text of `policy/policy.yaml`, in a
    /// directory laid out as Kubernetes mounts a ConfigMap (see [`Mesh::edit_policy`]).
    pub(crate) backend_policy: Option<String>,
}

/// A change a test makes to a sidecar's configuration, or to one section of it.
pub(crate) struct Edit<T>(Box<dyn Fn(&mut T) + Send + Sync>);

/// The change `f` makes: `edit(|c: &mut ProxyConfig| c.limits.idle_timeout = …)`.
pub(crate) fn edit<T>(f: impl Fn(&mut T) + Send + Sync + 'static) -> Edit<T> {
    Edit(Box::new(f))
}

impl<T> Default for Edit<T> {
    /// No change.
    fn default() -> Self {
        edit(|_| {})
    }
}

impl<T> Edit<T> {
    fn apply(&self, value: &mut T) {
        (self.0)(value);
    }
}

impl Mesh {
    pub(crate) async fn start(spec: MeshSpec) -> Self {
        let app = match spec.app {
            Some(app) => app,
            None => apps::start_app().await,
        };
        let (temp, ca_dir) = new_ca();
        let ca = CaProcess::start(HUSH, &ca_dir, &spec.ca_args);
        if let Some(text) = &spec.backend_policy {
            write_configmap(&temp.path().join("policy"), "policy.yaml", text);
        }
        let backend_config = sidecar_config(
            temp.path(),
            "backend",
            ca.url(),
            &ca_dir,
            BACKEND,
            |config| {
                let mut inbound = InboundConfig::new(loopback(), app);
                spec.backend_inbound.apply(&mut inbound);
                config.inbound = Some(inbound);
                if spec.backend_policy.is_some() {
                    config.policy = Some(PolicyConfig::new("../policy"));
                }
                spec.sidecars.apply(config);
            },
        );
        let backend = ProxyProcess::try_start(HUSH, &backend_config, &spec.sidecar_env)
            .unwrap_or_else(|e| panic!("{e}"));
        let upstream = backend.inbound().to_string();
        let frontend_config = sidecar_config(
            temp.path(),
            "frontend",
            ca.url(),
            &ca_dir,
            FRONTEND,
            |config| {
                config.outbound = [(BACKEND, Protocol::Detect)]
                    .iter()
                    .chain(&spec.more_outbound)
                    .map(|&(identity, protocol)| OutboundConfig {
                        protocol,
                        ..OutboundConfig::new(loopback(), &upstream, spiffe_id(identity))
                    })
                    .collect();
                spec.sidecars.apply(config);
            },
        );
        let frontend = ProxyProcess::try_start(HUSH, &frontend_config, &spec.sidecar_env)
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            temp,
            app,
            ca_dir,
            ca,
            backend,
            frontend,
        }
    }

    /// Replaces the backend's policy the way the kubelet updates a mounted ConfigMap: the
    /// new files go to a new hidden folder and the `..data` link is swapped in one rename.
    pub(crate) fn edit_policy(&self, text: impl AsRef<[u8]>) {
        write_configmap(&self.temp.path().join("policy"), "policy.yaml", text);
    }

    /// Removes every file of the backend's policy, as deleting its ConfigMap would.
    pub(crate) fn empty_policy(&self) {
        empty_configmap(&self.temp.path().join("policy"));
    }

    /// The frontend sidecar's usual outbound listener (to the backend).
    pub(crate) fn to_backend(&self) -> SocketAddr {
        self.frontend.outbound(0)
    }

    pub(crate) fn bundle(&self) -> TrustBundle {
        let pem = fs::read(self.ca_dir.join("bundle.pem")).expect("bundle.pem");
        TrustBundle::from_pem(&pem, None).expect("a bundle")
    }
}

/// A CA and one backend sidecar in front of the echo app, with nothing calling it yet: for
/// tests that dial the sidecar themselves.
pub(crate) struct LoneBackend {
    pub(crate) temp: TempDir,
    pub(crate) ca_dir: PathBuf,
    pub(crate) ca: CaProcess,
    /// The sidecar's configuration file.
    pub(crate) config: PathBuf,
    pub(crate) sidecar: ProxyProcess,
}

impl LoneBackend {
    /// Starts them; `env` goes to the sidecar's process (`HUSH_LOG_FORMAT`…).
    pub(crate) async fn start(env: &[(&str, &str)]) -> Self {
        let app = apps::start_app().await;
        let (temp, ca_dir) = new_ca();
        let ca = CaProcess::start(HUSH, &ca_dir, &[]);
        let config = sidecar_config(
            temp.path(),
            "backend",
            ca.url(),
            &ca_dir,
            BACKEND,
            |config| config.inbound = Some(InboundConfig::new(loopback(), app)),
        );
        let sidecar = ProxyProcess::try_start(HUSH, &config, env).unwrap_or_else(|e| panic!("{e}"));
        Self {
            temp,
            ca_dir,
            ca,
            config,
            sidecar,
        }
    }
}

/// Writes `name` into the ConfigMap-style directory `dir`: `dir/..<n>/name`, `dir/..data`
/// linking to the newest `..<n>`, and `dir/name` linking to `..data/name`.
pub(crate) fn write_configmap(dir: &Path, name: &str, text: impl AsRef<[u8]>) {
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicU64, Ordering};
    static VERSION: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(dir).expect("policy dir");
    let version = format!("..v{}", VERSION.fetch_add(1, Ordering::Relaxed));
    fs::create_dir(dir.join(&version)).expect("version dir");
    fs::write(dir.join(&version).join(name), text.as_ref()).expect("policy file");
    let staged = dir.join("..data_tmp");
    let _ = fs::remove_file(&staged);
    symlink(&version, &staged).expect("staged link");
    fs::rename(&staged, dir.join("..data")).expect("swap ..data");
    let link = dir.join(name);
    if fs::symlink_metadata(&link).is_err() {
        symlink(Path::new("..data").join(name), &link).expect("file link");
    }
}

/// Empties the ConfigMap-style directory `dir` the way the kubelet does when every key is
/// removed (or the ConfigMap deleted, for an optional volume): a new, empty `..<n>` folder is
/// swapped in as `..data`, and the links to the old keys are removed.
pub(crate) fn empty_configmap(dir: &Path) {
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicU64, Ordering};
    static VERSION: AtomicU64 = AtomicU64::new(0);
    let version = format!("..empty{}", VERSION.fetch_add(1, Ordering::Relaxed));
    fs::create_dir(dir.join(&version)).expect("version dir");
    let staged = dir.join("..data_tmp");
    let _ = fs::remove_file(&staged);
    symlink(&version, &staged).expect("staged link");
    fs::rename(&staged, dir.join("..data")).expect("swap ..data");
    for entry in fs::read_dir(dir).expect("list the ConfigMap") {
        let entry = entry.expect("an entry");
        if !entry.file_name().to_string_lossy().starts_with('.') {
            fs::remove_file(entry.path()).expect("remove a key's link");
        }
    }
}

/// A temporary directory holding a new CA (`ca/`) for [`TRUST_DOMAIN`].
pub(crate) fn new_ca() -> (TempDir, PathBuf) {
    let temp = tempfile::tempdir().expect("temp dir");
    let ca_dir = temp.path().join("ca");
    run_hush_ok(
        HUSH,
        &[
            "ca",
            "init",
            "--dir",
            path_str(&ca_dir),
            "--trust-domain",
            TRUST_DOMAIN,
        ],
    );
    (temp, ca_dir)
}

/// Writes `NAME/sidecar.yaml` under `root`, with a fresh join token for `identity`, an admin
/// listener on a free port, and what `configure` sets.
pub(crate) fn sidecar_config(
    root: &Path,
    name: &str,
    ca_url: &str,
    ca_dir: &Path,
    identity: &str,
    configure: impl FnOnce(&mut ProxyConfig),
) -> PathBuf {
    write_sidecar_config(HUSH, &root.join(name), ca_dir, ca_url, identity, configure)
}

/// `127.0.0.1:0`: a listener on a free loopback port.
pub(crate) fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The SPIFFE ID `id`, which the test spells correctly.
pub(crate) fn spiffe_id(id: &str) -> Identities {
    Identities(vec![id.parse().expect("a SPIFFE ID")])
}

pub(crate) fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

// === clients ===

/// One HTTP/1.1 request on a new connection; returns (status, body).
pub(crate) async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    let mut request = http::Request::get(path).header("host", "backend.shop");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::<Bytes>::new()).expect("a request");
    let response = within(sender.send_request(request))
        .await
        .expect("a response");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub(crate) async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("no answer within 20 s")
}

pub(crate) fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The value of one sample in Prometheus text, 0 when absent.
pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub(crate) fn metrics_of(proxy: &ProxyProcess) -> String {
    let (status, body) = http_request(proxy.admin(), "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `condition` (bounded by [`PATIENCE`]) while the mesh does something by itself.
pub(crate) fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TLS client that requires the backend's identity and presents `identity` (or nothing).
/// Returns how the connection ended: Ok with the response's first line, or the error.
pub(crate) async fn mtls_request(
    addr: SocketAddr,
    bundle: &TrustBundle,
    identity: Option<TestLeaf>,
) -> Result<String, String> {
    let backend = BACKEND.parse().expect("a SPIFFE ID");
    let verifier = SpiffeServerVerifier::new(bundle, vec![backend]).expect("a verifier");
    let resolver = identity.map(|leaf| {
        let store = CredentialStore::new();
        store
            .install(leaf.chain, leaf.key)
            .expect("a usable test leaf");
        Arc::new(store) as Arc<dyn hush_tls::rustls::client::ResolvesClientCert>
    });
    let config = hush_tls::client_config(verifier, resolver, &[b"http/1.1"]).expect("a config");
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("backend.invalid").expect("a server name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| hush_tls::explain_io_error(&e))?;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| hush_tls::explain_io_error(&e))?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response)
        .await
        .map_err(|e| hush_tls::explain_io_error(&e))?;
    let text = String::from_utf8_lossy(&response);
    match text.lines().next() {
        Some(line) if !line.is_empty() => Ok(line.to_string()),
        _ => Err("the connection closed without an answer".to_string()),
    }
}
