//! The proxies hush is measured against — stunnel4, haproxy and nginx — as either end of a
//! mutual-TLS 1.3 hop, with certificates from the benchmark's hush CA (real X.509-SVIDs).
//!
//! A *server* end accepts mutual TLS on a free loopback port, checks the client's chain against
//! the trust bundle, and forwards plaintext to an address. A *client* end accepts plaintext on
//! a free loopback port and forwards it over mutual TLS to a server end. Each peer checks the
//! chain it is shown against the bundle, except nginx's client end: nginx checks a server's
//! certificate only together with a DNS name, and an X.509-SVID carries a SPIFFE ID (a URI)
//! instead, so that end checks nothing — it does less work than the others, never more. hush
//! checks the SPIFFE ID as well as the chain.

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
    /// haproxy in TCP mode: a byte relay.
    HaproxyTcp,
    /// nginx as an HTTP proxy (upstream keep-alive).
    NginxHttp,
    /// nginx's stream module: a byte relay.
    NginxStream,
}

/// Which end of a mutual-TLS hop a peer plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Mutual TLS in, plaintext out.
    Server,
    /// Plaintext in, mutual TLS out.
    Client,
}

/// Where nginx's stream module is when Debian builds it as a module (`libnginx-mod-stream`).
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

impl Peer {
    /// Every peer, HTTP proxies and byte relays.
    pub(crate) const ALL: [Peer; 5] = [
        Self::Stunnel,
        Self::HaproxyHttp,
        Self::HaproxyTcp,
        Self::NginxHttp,
        Self::NginxStream,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Stunnel => "stunnel4",
            Self::HaproxyHttp => "haproxy (HTTP mode)",
            Self::HaproxyTcp => "haproxy (TCP mode)",
            Self::NginxHttp => "nginx (HTTP proxy)",
            Self::NginxStream => "nginx (stream)",
        }
    }

    /// Whether the peer copies bytes without reading HTTP: it can carry any TCP traffic.
    pub(crate) fn relays_bytes(self) -> bool {
        matches!(self, Self::Stunnel | Self::HaproxyTcp | Self::NginxStream)
    }

    fn program(self) -> Option<PathBuf> {
        match self {
            Self::Stunnel => which(&["stunnel4", "stunnel"]),
            Self::HaproxyHttp | Self::HaproxyTcp => which(&["haproxy"]),
            Self::NginxHttp => which(&["nginx"]),
            Self::NginxStream => which(&["nginx"]).filter(|_| nginx_has_stream()),
        }
    }

    pub(crate) fn installed(self) -> bool {
        self.program().is_some()
    }

    /// Accepts mutual TLS 1.3 on a free loopback port and forwards plaintext to `to`.
    pub(crate) fn server(self, dir: &Path, certs: &Certs, to: SocketAddr) -> Result<Running> {
        self.start(End::Server, dir, certs, to)
    }

    /// Accepts plaintext on a free loopback port and forwards it over mutual TLS 1.3 to the
    /// server end at `to`.
    pub(crate) fn client(self, dir: &Path, certs: &Certs, to: SocketAddr) -> Result<Running> {
        self.start(End::Client, dir, certs, to)
    }

    fn start(self, end: End, dir: &Path, certs: &Certs, to: SocketAddr) -> Result<Running> {
        let Some(program) = self.program() else {
            bail!(
                "{} is not installed (bench/run.sh installs it)",
                self.name()
            );
        };
        fs::create_dir_all(dir)?;
        let port = free_port()?;
        let name = match end {
            End::Server => self.name(),
            End::Client => leak(format!("{} (client end)", self.name())),
        };
        let mut process = match self {
            Self::Stunnel => {
                let conf = dir.join("stunnel.conf");
                fs::write(&conf, stunnel_conf(end, certs, port, to))?;
                Spawned::new(Command::new(program).arg(&conf), name)?
            }
            Self::HaproxyHttp | Self::HaproxyTcp => {
                let conf = dir.join("haproxy.cfg");
                let mode = if self == Self::HaproxyHttp {
                    "http"
                } else {
                    "tcp"
                };
                fs::write(&conf, haproxy_conf(end, mode, certs, port, to))?;
                Spawned::new(Command::new(program).args(["-db", "-f"]).arg(&conf), name)?
            }
            Self::NginxHttp | Self::NginxStream => {
                let conf = dir.join("nginx.conf");
                let body = if self == Self::NginxHttp {
                    nginx_http(end, certs, port, to)
                } else {
                    nginx_stream(end, certs, port, to)
                };
                fs::write(&conf, nginx_conf(self, dir, &body))?;
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

/// haproxy relaying plaintext TCP from a free loopback port to `to`: two of these in a row
/// are a pair's hops without its encryption, what a pair costs before any cryptography.
pub(crate) fn plain_relay(dir: &Path, to: SocketAddr) -> Result<Running> {
    let Some(program) = which(&["haproxy"]) else {
        bail!("haproxy is not installed (bench/run.sh installs it)");
    };
    fs::create_dir_all(dir)?;
    let port = free_port()?;
    let conf = dir.join("haproxy.cfg");
    fs::write(
        &conf,
        format!(
            "global\n  nbthread 2\n  maxconn 9000\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n\
             frontend hop_in\n  bind 127.0.0.1:{port}\n  default_backend hop_out\n\
             backend hop_out\n  server next {to}\n"
        ),
    )?;
    let mut process = Spawned::new(
        Command::new(program).args(["-db", "-f"]).arg(&conf),
        "haproxy (plaintext relay)",
    )?;
    wait_listening(&mut process, port)?;
    Ok(Running {
        process,
        addr: ([127, 0, 0, 1], port).into(),
    })
}

/// A process name made once per peer started: a handful per run.
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

/// Whether this nginx has the stream module, built in or as Debian's module package.
fn nginx_has_stream() -> bool {
    Path::new(NGINX_STREAM_MODULE).exists()
        || Command::new(which(&["nginx"]).unwrap_or_default())
            .arg("-V")
            .output()
            .is_ok_and(|o| {
                let text = String::from_utf8_lossy(&o.stderr);
                text.contains("--with-stream ") || text.ends_with("--with-stream")
            })
}

/// A peer as a pair: a client end in front of a server end, mutual TLS 1.3 between them.
pub(crate) struct Pair {
    pub(crate) peer: Peer,
    pub(crate) client: Running,
    pub(crate) server: Running,
}

impl Pair {
    /// Where the pair takes plaintext in.
    pub(crate) fn entry(&self) -> SocketAddr {
        self.client.addr
    }

    /// The processes of both ends.
    pub(crate) fn pids(&self) -> Vec<u32> {
        [self.client.pids(), self.server.pids()].concat()
    }
}

/// A pair of each of `peers` in front of `to`, under `root`, the client ends with `client`'s
/// certificate and the server ends with `server`'s. A peer that is not installed is an error,
/// or, with `allow_missing`, left out with a line on stderr.
pub(crate) fn start_pairs(
    peers: impl IntoIterator<Item = Peer>,
    root: &Path,
    client: &Certs,
    server: &Certs,
    to: SocketAddr,
    allow_missing: bool,
) -> Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    for peer in peers {
        if !peer.installed() {
            if allow_missing {
                eprintln!("skipping {}: not installed", peer.name());
                continue;
            }
            bail!(
                "{} is not installed (bench/run.sh installs it)",
                peer.name()
            );
        }
        let dir = root.join(format!("peer-{peer:?}"));
        let server = peer.server(&dir.join("server"), server, to)?;
        let client = peer.client(&dir.join("client"), client, server.addr)?;
        pairs.push(Pair {
            peer,
            client,
            server,
        });
    }
    Ok(pairs)
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

fn stunnel_conf(end: End, certs: &Certs, port: u16, to: SocketAddr) -> String {
    let role = match end {
        End::Server => "requireCert = yes",
        End::Client => "client = yes",
    };
    format!(
        "foreground = yes\npid =\ndebug = 3\n[hop]\n{role}\naccept = 127.0.0.1:{port}\n\
         connect = {to}\ncert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\nsslVersion = TLSv1.3\n",
        certs.chain.display(),
        certs.key.display(),
        certs.bundle.display()
    )
}

fn haproxy_conf(end: End, mode: &str, certs: &Certs, port: u16, to: SocketAddr) -> String {
    // `verify required` with a CA file checks the chain; haproxy checks no name unless told.
    let tls = format!(
        "ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3",
        certs.combined.display(),
        certs.bundle.display()
    );
    let (bind, server) = match end {
        End::Server => (format!("127.0.0.1:{port} {tls}"), to.to_string()),
        End::Client => (format!("127.0.0.1:{port}"), format!("{to} {tls}")),
    };
    // Two threads, like the machine's cores; a connection cap above any the benchmark opens
    // (haproxy needs two descriptors per connection, within the machine's limit).
    format!(
        "global\n  nbthread 2\n  maxconn 9000\n\
         defaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n\
         frontend hop_in\n  bind {bind}\n  default_backend hop_out\n\
         backend hop_out\n{}  server next {server}\n",
        if mode == "http" {
            "  http-reuse always\n"
        } else {
            ""
        },
    )
}

/// nginx's main configuration around one `http` or `stream` block.
fn nginx_conf(peer: Peer, dir: &Path, body: &str) -> String {
    let module = if peer == Peer::NginxStream && Path::new(NGINX_STREAM_MODULE).exists() {
        format!("load_module {NGINX_STREAM_MODULE};\n")
    } else {
        String::new()
    };
    // Two workers, like the machine's cores.
    format!(
        "{module}daemon off;\nworker_processes 2;\nworker_rlimit_nofile 19000;\npid {}/nginx.pid;\n\
         error_log stderr warn;\nevents {{ worker_connections 9000; }}\n{body}",
        dir.display()
    )
}

/// The TLS directives of a listener that requires a client certificate from the bundle.
fn nginx_server_tls(certs: &Certs) -> String {
    format!(
        "ssl_certificate {}; ssl_certificate_key {}; ssl_client_certificate {}; \
         ssl_verify_client on; ssl_protocols TLSv1.3; ssl_session_tickets off;",
        certs.chain.display(),
        certs.key.display(),
        certs.bundle.display()
    )
}

/// The TLS directives of a connection to a server end: a client certificate, TLS 1.3, no
/// check of the server's certificate (see the module's documentation).
fn nginx_client_tls(certs: &Certs) -> String {
    format!(
        "proxy_ssl_certificate {}; proxy_ssl_certificate_key {}; proxy_ssl_protocols TLSv1.3; \
         proxy_ssl_verify off; proxy_ssl_session_reuse on;",
        certs.chain.display(),
        certs.key.display(),
    )
}

fn nginx_http(end: End, certs: &Certs, port: u16, to: SocketAddr) -> String {
    let (listen, scheme, client_tls) = match end {
        End::Server => (
            format!("{port} ssl; {}", nginx_server_tls(certs)),
            "http",
            String::new(),
        ),
        End::Client => (format!("{port};"), "https", nginx_client_tls(certs)),
    };
    format!(
        "http {{\n  access_log off;\n  keepalive_requests 10000000;\n  \
         upstream next {{ server {to}; keepalive 64; keepalive_requests 10000000; }}\n  \
         server {{ listen 127.0.0.1:{listen}\n    location / {{ proxy_pass {scheme}://next; \
         proxy_http_version 1.1; proxy_set_header Connection \"\"; {client_tls} }} }}\n}}\n"
    )
}

fn nginx_stream(end: End, certs: &Certs, port: u16, to: SocketAddr) -> String {
    let (listen, client_tls) = match end {
        End::Server => (
            format!("{port} ssl; {}", nginx_server_tls(certs)),
            String::new(),
        ),
        End::Client => (
            format!("{port};"),
            format!("proxy_ssl on; {}", nginx_client_tls(certs)),
        ),
    };
    format!(
        "stream {{\n  server {{ listen 127.0.0.1:{listen} proxy_pass {to}; {client_tls} }}\n}}\n"
    )
}
