//! The proxies hush is measured against — stunnel4, haproxy and nginx — as either end of a
//! mutual-TLS 1.3 hop, with certificates from the benchmark's hush CA (real X.509-SVIDs).
//!
//! A *server* end accepts mutual TLS on a free loopback port, checks the client's chain against
//! the trust bundle, and forwards plaintext to an address.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hush_test_support::{CaProcess, mint_token, run_hush_ok};

use crate::proxy::{Spawned, free_port, wait_listening, which};

/// A peer, and whether it parses HTTP or relays bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// stunnel4: a byte relay.
    Stunnel,
    /// haproxy in HTTP mode (parses requests, pools connections to the next hop).
    HaproxyHttp,
    /// nginx as an HTTP proxy (upstream keep-alive).
    NginxHttp,
}

impl Peer {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Stunnel => "stunnel4",
            Self::HaproxyHttp => "haproxy (HTTP mode)",
            Self::NginxHttp => "nginx (HTTP proxy)",
        }
    }

    fn program(self) -> Option<PathBuf> {
        match self {
            Self::Stunnel => which(&["stunnel4", "stunnel"]),
            Self::HaproxyHttp => which(&["haproxy"]),
            Self::NginxHttp => which(&["nginx"]),
        }
    }

    pub(crate) fn installed(self) -> bool {
        self.program().is_some()
    }

    /// Accepts mutual TLS 1.3 on a free loopback port and forwards plaintext to `to`.
    pub(crate) fn server(self, dir: &Path, certs: &Certs, to: SocketAddr) -> Result<Running> {
        let Some(program) = self.program() else {
            bail!(
                "{} is not installed (bench/run.sh installs it)",
                self.name()
            );
        };
        fs::create_dir_all(dir)?;
        let port = free_port()?;
        let name = self.name();
        let mut process = match self {
            Self::Stunnel => {
                let conf = dir.join("stunnel.conf");
                fs::write(&conf, stunnel_conf(certs, port, to))?;
                Spawned::new(Command::new(program).arg(&conf), name)?
            }
            Self::HaproxyHttp => {
                let conf = dir.join("haproxy.cfg");
                fs::write(&conf, haproxy_conf(certs, port, to))?;
                Spawned::new(Command::new(program).args(["-db", "-f"]).arg(&conf), name)?
            }
            Self::NginxHttp => {
                let conf = dir.join("nginx.conf");
                fs::write(&conf, nginx_conf(dir, certs, port, to))?;
                Spawned::new(
                    Command::new(program)
                        .args(["-e", "stderr", "-p"])
                        .arg(dir)
                        .arg("-c")
                        .arg(&conf),
                    name,
                )?
            }
        };
        wait_listening(&mut process, port)?;
        Ok(Running {
            process,
            addr: ([127, 0, 0, 1], port).into(),
        })
    }
}

/// A running peer.
pub(crate) struct Running {
    pub(crate) process: Spawned,
    pub(crate) addr: SocketAddr,
}

impl Running {
    /// The peer's processes: the one started and its children (nginx's workers).
    pub(crate) fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.process.pid()];
        pids.extend(children_of(self.process.pid()));
        pids
    }
}

/// The processes whose parent is `pid`. nginx forks its workers after it listens, so this
/// waits (bounded) for the first of them when there is none yet.
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let children: Vec<u32> = fs::read_to_string(&path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if !children.is_empty() || Instant::now() > deadline {
            return children;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A peer's certificate chain and key from the benchmark's CA, as PEM files: apart, and in one
/// file for haproxy.
pub(crate) struct Certs {
    pub(crate) chain: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) combined: PathBuf,
    pub(crate) bundle: PathBuf,
}

impl Certs {
    /// Asks the CA at `ca` for an X.509-SVID of `id`, written under `dir`.
    pub(crate) fn issue(
        hush: &Path,
        ca: &CaProcess,
        ca_dir: &Path,
        dir: &Path,
        id: &str,
    ) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let token = mint_token(hush, ca_dir, id, &[]);
        fs::write(dir.join("token"), token)?;
        let bundle = ca_dir.join("bundle.pem");
        run_hush_ok(
            hush,
            &[
                "cert",
                "request",
                "--ca",
                ca.url(),
                "--bundle",
                path_str(&bundle),
                "--token-file",
                path_str(&dir.join("token")),
                "--out-dir",
                path_str(dir),
            ],
        );
        let chain = dir.join("svid.pem");
        let key = dir.join("svid.key");
        let combined = dir.join("combined.pem");
        fs::write(
            &combined,
            format!(
                "{}{}",
                fs::read_to_string(&chain)?,
                fs::read_to_string(&key)?
            ),
        )?;
        Ok(Self {
            chain,
            key,
            combined,
            bundle,
        })
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

fn stunnel_conf(certs: &Certs, port: u16, to: SocketAddr) -> String {
    format!(
        "foreground = yes\npid =\ndebug = 3\n[hop]\nrequireCert = yes\naccept = 127.0.0.1:{port}\n\
         connect = {to}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nsslVersion = TLSv1.3\n",
        certs.chain.display(),
        certs.key.display(),
        certs.bundle.display()
    )
}

fn haproxy_conf(certs: &Certs, port: u16, to: SocketAddr) -> String {
    // Two threads, like the machine's cores; a connection cap above any the benchmark opens
    // (haproxy needs two descriptors per connection, within the machine's limit).
    format!(
        "global\n  nbthread 2\n  maxconn 9000\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  http-reuse always\n\
         frontend hop_in\n  bind 127.0.0.1:{port} ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3\n  default_backend hop_out\n\
         backend hop_out\n  server next {to}\n",
        certs.combined.display(),
        certs.bundle.display()
    )
}

fn nginx_conf(dir: &Path, certs: &Certs, port: u16, to: SocketAddr) -> String {
    // Two workers, like the machine's cores.
    format!(
        "daemon off;\nworker_processes 2;\nworker_rlimit_nofile 19000;\npid {}/nginx.pid;\n\
         error_log stderr warn;\nevents {{ worker_connections 9000; }}\n\
         http {{\n  access_log off;\n  upstream next {{ server {to}; keepalive 64; }}\n  \
         server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {}; \
         ssl_client_certificate {}; ssl_verify_client on; ssl_protocols TLSv1.3; \
         ssl_session_tickets off;\n    location / {{ proxy_pass http://next; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
        dir.display(),
        certs.chain.display(),
        certs.key.display(),
        certs.bundle.display()
    )
}
