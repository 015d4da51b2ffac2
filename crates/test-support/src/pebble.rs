//! Pebble, Let's Encrypt's test ACME server, with its fake DNS server, for tests of ACME
//! clients.
//!
//! Debian's `pebble` package ships the two binaries and no configuration or certificates:
//! [`Pebble::start`] makes a root and a listener certificate for `127.0.0.1`/`localhost`
//! (rcgen), writes a configuration with free ports, and starts `pebble-challtestsrv` as
//! pebble's DNS (every name resolves to 127.0.0.1, so pebble validates challenges against
//! the test's own listeners on the `http_port` and `tls_port` it is given) and `pebble`. It
//! waits for the directory to answer, polling, never sleeping a fixed time. Pebble keeps its
//! accounts and its issuing CA in memory: [`Pebble::restart`] brings back a CA that knows
//! no account.
//!
//! When pebble is not installed, `start` says "skipped" on stderr and returns `None`, unless
//! `HUSH_REQUIRE_PEBBLE=1` is set (CI), where that is a failure.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tempfile::TempDir;

use crate::READY_TIMEOUT;

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";

/// What the test needs pebble to do.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// The port pebble connects to (on 127.0.0.1) to validate HTTP-01 challenges.
    pub http_port: u16,
    /// The port pebble connects to (on 127.0.0.1) to validate TLS-ALPN-01 challenges.
    pub tls_port: u16,
    /// The lifetime of the certificates pebble issues (whole seconds); default: pebble's
    /// (five years).
    pub certificate_validity: Option<Duration>,
}

/// A running pebble and its DNS server, stopped when dropped.
#[derive(Debug)]
pub struct Pebble {
    dir: TempDir,
    listen: SocketAddr,
    management: SocketAddr,
    root: PathBuf,
    config: PathBuf,
    dns: SocketAddr,
    pebble: Option<Child>,
    challtestsrv: Child,
}

impl Pebble {
    /// Whether pebble and pebble-challtestsrv are installed.
    pub fn installed() -> bool {
        Path::new(PEBBLE).exists() && Path::new(CHALLTESTSRV).exists()
    }

    /// Starts pebble for `options`. `None` (with "skipped" on stderr) when pebble is not
    /// installed and `HUSH_REQUIRE_PEBBLE` is not `1`.
    pub fn start(options: PebbleOptions) -> Option<Self> {
        if !Self::installed() {
            if std::env::var("HUSH_REQUIRE_PEBBLE").as_deref() == Ok("1") {
                panic!("HUSH_REQUIRE_PEBBLE=1 but {PEBBLE} or {CHALLTESTSRV} is missing");
            }
            eprintln!("skipped: pebble is not installed ({PEBBLE}, {CHALLTESTSRV})");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory for pebble");
        let (root, cert, key) = write_certificates(dir.path());
        // Held until all are chosen, so no two of them are the same port; released just
        // before the servers bind them.
        let mut held = Vec::new();
        let listen = free_tcp(&mut held);
        let management = free_tcp(&mut held);
        let dns = free_tcp_and_udp(&mut held);
        let dns_management = free_tcp(&mut held);
        drop(held);
        let challtestsrv = Command::new(CHALLTESTSRV)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-dns01", &dns.to_string()])
            .args(["-management", &dns_management.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file(dir.path(), "challtestsrv.log"))
            .stderr(log_file(dir.path(), "challtestsrv.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHALLTESTSRV}: {e}"));
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": cert,
                "privateKey": key,
                "httpPort": options.http_port,
                "tlsPort": options.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        if let Some(validity) = options.certificate_validity {
            config["pebble"]["certificateValidityPeriod"] = validity.as_secs().into();
        }
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).expect("pebble's configuration");
        let mut pebble = Self {
            dir,
            listen,
            management,
            root,
            config: config_path,
            dns,
            pebble: None,
            challtestsrv,
        };
        pebble.wait_for_port(dns_management, "pebble-challtestsrv");
        pebble.restart();
        Some(pebble)
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    /// The PEM file of the root that signed pebble's listener certificate (for the client's
    /// `directory_ca`). Not the root of the certificates pebble issues.
    pub fn root_ca_pem(&self) -> &Path {
        &self.root
    }

    /// The management interface (`/roots/0`, `/intermediates/0`, …).
    pub fn management_url(&self) -> String {
        format!("https://{}", self.management)
    }

    /// Stops pebble (the DNS server stays); its port refuses connections until
    /// [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts pebble again (stopping it first if it runs), on the same ports with the same
    /// configuration, and waits until its directory answers. Its accounts and issuing CA are
    /// new.
    pub fn restart(&mut self) {
        self.stop();
        let log = self.dir.path().join("pebble.log");
        let child = Command::new(PEBBLE)
            .arg("-config")
            .arg(&self.config)
            .arg("-dnsserver")
            .arg(self.dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            // Every order validates its challenges, so tests see the challenge answered.
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(append(&log))
            .stderr(append(&log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {PEBBLE}: {e}"));
        self.pebble = Some(child);
        self.wait_for_directory();
    }

    /// What pebble and its DNS server printed, for failure messages.
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- pebble ---\n{}\n--- pebble-challtestsrv ---\n{}",
            read("pebble.log"),
            read("challtestsrv.log")
        )
    }

    fn wait_for_port(&mut self, addr: SocketAddr, what: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = self.challtestsrv.try_wait() {
                panic!("{what} exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not listen on {addr}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for_directory(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match get(self.listen, &self.root, "/dir") {
                Ok(body) if body.contains("newOrder") => return,
                _ => {}
            }
            if let Some(Ok(Some(status))) = self.pebble.as_mut().map(Child::try_wait) {
                panic!("pebble exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "pebble's directory did not answer:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.challtestsrv.kill();
        let _ = self.challtestsrv.wait();
    }
}

/// A root, and a listener certificate and key it signed for 127.0.0.1 and localhost:
/// returns the paths of the root's PEM, the certificate's and the key's.
fn write_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let root_key = rcgen::KeyPair::generate().expect("a root key");
    let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("root");
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pebble listener test root");
    let root = root_params.self_signed(&root_key).expect("the root");
    let issuer = rcgen::Issuer::new(root_params, root_key);
    let key = rcgen::KeyPair::generate().expect("a listener key");
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("listener");
    let cert = params
        .signed_by(&key, &issuer)
        .expect("the listener certificate");
    let paths = (
        dir.join("root.pem"),
        dir.join("listener.pem"),
        dir.join("listener.key"),
    );
    std::fs::write(&paths.0, root.pem()).expect("root.pem");
    std::fs::write(&paths.1, cert.pem()).expect("listener.pem");
    std::fs::write(&paths.2, key.serialize_pem()).expect("listener.key");
    paths
}

/// A GET over HTTPS (HTTP/1.1, one request), trusting `root`: the body, or why not.
fn get(addr: SocketAddr, root: &Path, path: &str) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(root).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::IpAddress(addr.ip().into());
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let socket =
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(connection, socket);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    // Go closes without close_notify at times; what was read is enough.
    let _ = tls.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    if !response.starts_with("HTTP/1.1 200") {
        return Err(response);
    }
    Ok(response)
}

/// A free port, held in `held` until the caller releases it.
fn free_tcp(held: &mut Vec<TcpListener>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = listener.local_addr().expect("its address");
    held.push(listener);
    addr
}

/// A port free for both TCP and UDP (a DNS server listens on both).
fn free_tcp_and_udp(held: &mut Vec<TcpListener>) -> SocketAddr {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = tcp.local_addr().expect("its address");
        if UdpSocket::bind(addr).is_ok() {
            held.push(tcp);
            return addr;
        }
    }
    panic!("no port free for both TCP and UDP");
}

fn log_file(dir: &Path, name: &str) -> File {
    append(&dir.join(name))
}

fn append(path: &Path) -> File {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}
