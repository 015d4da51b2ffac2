//! `hush-bench gateway`: public TLS termination, hush gateway beside nginx.
//!
//! Both terminate TLS with the same certificate and key (ECDSA P-256, from a CA made for the
//! run) and forward HTTP/1.1 to the same app on loopback:
//!
//! * hush — client → `hush gateway` → mutual TLS 1.3 → backend sidecar → app;
//! * nginx — client → nginx (`proxy_pass` with upstream keep-alive) → app.
//!
//! The hush path has one hop more (into the mesh), whose cost is reported apart: the
//! gateway's own CPU, and the gateway's plus the sidecar's. Both servers run on one core (the
//! gateway with `--threads 1`, nginx with `worker_processes 1`), so their rates are per core.
//! Two loads, each for every server in turn, in interleaved rounds:
//!
//! * **new connections**: each of `--concurrency` clients connects, does a full TLS 1.3
//!   handshake (no resumption; X25519 and ECDSA P-256 on both sides, so both do the same
//!   cryptography), sends one request, reads the answer and closes — handshakes per second,
//!   and the server's CPU per handshake;
//! * **keep-alive**: `--connections` TLS connections, requests back to back on each —
//!   requests per second and CPU per request.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hush_config::{
    CaConfig, CertificateConfig, CertificateFiles, GatewayConfig, HttpsConfig, Identities,
    RouteConfig, TlsProfile,
};
use hush_test_support::{GatewayProcess, ProxyProcess, mint_token, write_sidecar_config};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::cpu_seconds;
use crate::peers::children_of;
use crate::proxy::{
    Spawned, free_port, http1_inbound, median, start_app, start_ca, wait_listening, which,
};
use crate::tls_load::{new_connections, read_response};

/// The public name both servers answer for.
const HOST: &str = "bench.example";

#[derive(Debug, clap::Args)]
pub(crate) struct GatewayArgs {
    /// Path of the `hush` binary (default: next to this one, e.g. target/release/hush).
    #[arg(long)]
    hush: Option<PathBuf>,
    /// Seconds of each load per server and round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Clients opening new connections at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Keep-alive connections for the request-rate runs.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Rounds over both servers, interleaved; the report gives the median and the range.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Threads of the gateway (and nginx worker processes).
    #[arg(long, default_value_t = 1)]
    threads: u16,
    /// First scan the gateway's listener with testssl.sh (its every check, trusting the run's
    /// public root) and list what it finds at LOW severity or above.
    #[arg(long)]
    testssl: bool,
    /// Only the testssl.sh scan, no load.
    #[arg(long, requires = "testssl")]
    scan_only: bool,
}

/// One server under load.
struct Server {
    name: &'static str,
    entry: SocketAddr,
    /// The processes whose CPU is the server's.
    pids: Vec<u32>,
    /// The processes of the hop into the mesh, reported apart.
    extra_pids: Vec<u32>,
}

#[derive(Default)]
struct Figures {
    handshakes: Vec<f64>,
    cpu_per_handshake: Vec<f64>,
    cpu_per_handshake_with_hop: Vec<f64>,
    requests: Vec<f64>,
    cpu_per_request: Vec<f64>,
    cpu_per_request_with_hop: Vec<f64>,
}

fn cpu_of(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|pid| cpu_seconds(*pid)).sum()
}

pub(crate) fn run(args: GatewayArgs) -> Result<()> {
    let hush = crate::hush_binary(args.hush.clone())?;
    let Some(nginx) = which(&["nginx"]) else {
        bail!("nginx is not installed (bench/gateway.sh installs it)");
    };
    let temp = tempfile::tempdir()?;
    let root = temp.path();

    let (mut app, app_addr) = start_app()?;

    // The public certificate both servers present.
    let public = public_certificate(root)?;

    // The mesh: a CA, the backend's sidecar, the gateway.
    let (ca, ca_dir) = start_ca(&hush, root);
    let backend_id = "spiffe://bench.local/ns/bench/sa/backend";
    let backend_config = write_sidecar_config(
        &hush,
        &root.join("backend"),
        &ca_dir,
        ca.url(),
        backend_id,
        |c| c.inbound = Some(http1_inbound(app_addr)),
    );
    let mut backend = ProxyProcess::start(&hush, &backend_config);
    let gateway_dir = root.join("gateway");
    fs::create_dir_all(&gateway_dir)?;
    let token = mint_token(
        &hush,
        &ca_dir,
        "spiffe://bench.local/ns/edge/sa/gateway",
        &[],
    );
    fs::write(gateway_dir.join("token"), token)?;
    let mut config = GatewayConfig {
        ca: CaConfig::new(ca.url(), ca_dir.join("bundle.pem"), "token"),
        https: HttpsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            profile: TlsProfile::Intermediate,
            hsts: hush_config::Hsts::default(),
        },
        http: None,
        certificates: vec![CertificateConfig {
            hosts: vec![HOST.into()],
            files: Some(CertificateFiles {
                cert: public.chain.clone(),
                key: public.key.clone(),
            }),
            acme: false,
        }],
        acme: None,
        routes: vec![RouteConfig {
            host: "*".into(),
            path_prefix: "/".into(),
            upstream: backend.inbound().to_string(),
            identity: Identities(vec![backend_id.parse()?]),
        }],
        admin: hush_config::AdminConfig::default(),
        limits: hush_config::Limits::default(),
        access_log: hush_config::AccessLog::default(),
        tracing: hush_config::TracingConfig::default(),
        shutdown_grace: Duration::from_secs(1),
    };
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let config_path = gateway_dir.join("gateway.yaml");
    fs::write(&config_path, config.to_yaml()?)?;
    let threads = args.threads.to_string();
    let gateway = GatewayProcess::try_start(
        &hush,
        &config_path,
        &[
            ("HUSH_GATEWAY_THREADS", threads.as_str()),
            ("HUSH_LOG", "warn"),
        ],
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;

    // nginx: the same certificate, the same protocols, one worker per gateway thread.
    let nginx_port = free_port()?;
    let nginx_dir = root.join("nginx");
    fs::create_dir_all(nginx_dir.join("logs"))?;
    let nginx_conf = nginx_dir.join("nginx.conf");
    fs::write(
        &nginx_conf,
        format!(
            "worker_processes {threads};\ndaemon off;\nmaster_process on;\npid {pid};\nerror_log {dir}/logs/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
               fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
               keepalive_requests 1000000;\n\
               upstream app {{ server {app_addr}; keepalive 64; }}\n\
               server {{\n    listen 127.0.0.1:{nginx_port} ssl http2;\n    server_name {HOST};\n\
                 ssl_certificate {chain};\n    ssl_certificate_key {key};\n\
                 ssl_protocols TLSv1.2 TLSv1.3;\n\
                 add_header Strict-Transport-Security \"max-age=31536000\" always;\n\
                 location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
                   proxy_set_header Host $host; proxy_set_header X-Forwarded-For $remote_addr; proxy_set_header X-Forwarded-Proto https; }}\n\
               }}\n}}\n",
            pid = nginx_dir.join("nginx.pid").display(),
            dir = nginx_dir.display(),
            chain = public.chain.display(),
            key = public.key.display(),
        ),
    )?;
    let mut nginx_proc = Spawned::new(
        Command::new(&nginx)
            .arg("-p")
            .arg(&nginx_dir)
            .arg("-c")
            .arg(&nginx_conf),
        "nginx",
    )?;
    wait_listening(&mut nginx_proc, nginx_port)?;
    // The workers are the master's children; their CPU is what serves.
    let nginx_pids = children_of(nginx_proc.pid());

    let servers = [
        Server {
            name: "hush gateway",
            entry: gateway.https(),
            pids: vec![gateway.pid()],
            extra_pids: vec![backend.process().pid()],
        },
        Server {
            name: "nginx",
            entry: SocketAddr::from(([127, 0, 0, 1], nginx_port)),
            pids: nginx_pids,
            extra_pids: vec![],
        },
    ];

    if args.testssl {
        print!("{}", testssl(gateway.https(), &public.root_pem, root)?);
        if args.scan_only {
            return Ok(());
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let connector = TlsConnector::from(client_config(&public.root)?);
    let window = Duration::from_secs(args.seconds);
    let mut figures: Vec<Figures> = servers.iter().map(|_| Figures::default()).collect();
    for round in 0..args.rounds {
        for (server, figures) in servers.iter().zip(&mut figures) {
            eprintln!("round {}: {} — new connections", round + 1, server.name);
            let (cpu0, extra0) = (cpu_of(&server.pids)?, cpu_of(&server.extra_pids)?);
            let done = runtime.block_on(new_connections(
                server.entry,
                connector.clone(),
                HOST,
                args.concurrency,
                window,
            ))?;
            let (cpu, extra) = (
                cpu_of(&server.pids)? - cpu0,
                cpu_of(&server.extra_pids)? - extra0,
            );
            figures.handshakes.push(done as f64 / window.as_secs_f64());
            figures.cpu_per_handshake.push(cpu / done as f64);
            figures
                .cpu_per_handshake_with_hop
                .push((cpu + extra) / done as f64);

            eprintln!("round {}: {} — keep-alive", round + 1, server.name);
            let (cpu0, extra0) = (cpu_of(&server.pids)?, cpu_of(&server.extra_pids)?);
            let done = runtime.block_on(keep_alive(
                server.entry,
                connector.clone(),
                args.connections,
                window,
            ))?;
            let (cpu, extra) = (
                cpu_of(&server.pids)? - cpu0,
                cpu_of(&server.extra_pids)? - extra0,
            );
            figures.requests.push(done as f64 / window.as_secs_f64());
            figures.cpu_per_request.push(cpu / done as f64);
            figures
                .cpu_per_request_with_hop
                .push((cpu + extra) / done as f64);
        }
    }
    print!("{}", report(&args, &servers, &figures));
    drop(gateway);
    backend.terminate();
    nginx_proc.stop();
    app.stop();
    drop(ca);
    Ok(())
}

/// Runs testssl.sh against `entry` as [`HOST`], trusting `root_pem`, and lists its findings of
/// LOW severity or above (an empty list: nothing to fix).
fn testssl(entry: SocketAddr, root_pem: &Path, dir: &Path) -> Result<String> {
    let Some(testssl) = which(&["testssl", "testssl.sh"]) else {
        bail!("testssl.sh is not installed (bench/gateway.sh installs it)");
    };
    let json = dir.join("testssl.json");
    let started = Instant::now();
    let output = Command::new(&testssl)
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--ip",
            "127.0.0.1",
        ])
        .arg("--add-ca")
        .arg(root_pem)
        .arg("--jsonfile")
        .arg(&json)
        .arg(format!("{HOST}:{}", entry.port()))
        .output()
        .context("cannot run testssl.sh")?;
    let findings: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&json).with_context(|| {
            format!(
                "testssl.sh wrote no report: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })?)?;
    let mut out = String::new();
    let entries = findings.as_array().map(Vec::as_slice).unwrap_or_default();
    let serious: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|f| {
            matches!(
                f["severity"].as_str(),
                Some("LOW" | "MEDIUM" | "HIGH" | "CRITICAL" | "WARN" | "FATAL")
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "testssl.sh {} on the gateway's listener: {} checks in {:.0} s, {} at LOW severity or above",
        String::from_utf8_lossy(
            &Command::new(&testssl)
                .arg("--version")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()) && word.contains('.'))
        .unwrap_or("(version unknown)"),
        entries.len(),
        started.elapsed().as_secs_f64(),
        serious.len()
    );
    for finding in serious {
        let _ = writeln!(
            out,
            "  {} {}: {}",
            finding["severity"].as_str().unwrap_or(""),
            finding["id"].as_str().unwrap_or(""),
            finding["finding"].as_str().unwrap_or("")
        );
    }
    Ok(out)
}

/// The public CA's root, and a chain and key for [`HOST`], in PEM files under `root`.
struct PublicCertificate {
    root: CertificateDer<'static>,
    root_pem: PathBuf,
    chain: PathBuf,
    key: PathBuf,
}

fn public_certificate(dir: &Path) -> Result<PublicCertificate> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench public root");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    // Shaped like a public CA's: 90 days, a CRL to check (scanners count a certificate
    // without one, or of a decade, as findings of the certificate, not of the server).
    let mut leaf_params = rcgen::CertificateParams::new(vec![HOST.to_string()])?;
    let now = time::OffsetDateTime::now_utc();
    leaf_params.not_before = now - time::Duration::hours(1);
    leaf_params.not_after = now + time::Duration::days(90);
    leaf_params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
        uris: vec!["http://crl.bench.example/1.crl".to_string()],
    }];
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf = leaf_params.signed_by(&key, &ca)?;
    let chain = dir.join("public.pem");
    let key_path = dir.join("public.key");
    fs::write(&chain, format!("{}{}", leaf.pem(), ca.pem()))?;
    fs::write(&key_path, key.serialize_pem())?;
    let root_pem = dir.join("public-root.pem");
    fs::write(&root_pem, ca.pem())?;
    Ok(PublicCertificate {
        root: ca.der().clone(),
        root_pem,
        chain,
        key: key_path,
    })
}

/// A client that does a full TLS 1.3 handshake every time, with X25519 (which both servers
/// support; offering the post-quantum hybrid would make hush do more work than nginx, which
/// lacks it), speaking HTTP/1.1.
fn client_config(root: &CertificateDer<'static>) -> Result<Arc<rustls::ClientConfig>> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

const REQUEST: &[u8] = b"GET /bench HTTP/1.1\r\nhost: bench.example\r\n\r\n";
/// Requests answered on `connections` kept-alive TLS connections in `window`.
async fn keep_alive(
    entry: SocketAddr,
    connector: TlsConnector,
    connections: usize,
    window: Duration,
) -> Result<u64> {
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        let tcp = TcpStream::connect(entry).await?;
        tcp.set_nodelay(true)?;
        let mut tls = connector.connect(ServerName::try_from(HOST)?, tcp).await?;
        let mut buf = Vec::new();
        tls.write_all(REQUEST).await?;
        read_response(&mut tls, &mut buf).await?;
        opened.push((tls, buf));
    }
    let deadline = Instant::now() + window;
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|(mut tls, mut buf)| {
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    tls.write_all(REQUEST).await?;
                    read_response(&mut tls, &mut buf).await?;
                    done += 1;
                }
                Ok::<_, anyhow::Error>(done)
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await??;
    }
    Ok(done)
}

fn range(values: &[f64], scale: f64, unit: &str) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min) * scale;
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max) * scale;
    format!("{:.0}{unit} ({min:.0} – {max:.0})", median(values) * scale)
}

fn report(args: &GatewayArgs, servers: &[Server], figures: &[Figures]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\npublic TLS 1.3 termination, {} thread(s)/worker(s) each, {} rounds of {} s, median (range)\n",
        args.threads, args.rounds, args.seconds
    );
    let _ = writeln!(
        out,
        "| server | new connections/s ({} clients) | CPU per handshake | handshakes per CPU-second | keep-alive req/s ({} connections) | CPU per request |",
        args.concurrency, args.connections
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (server, f) in servers.iter().zip(figures) {
        let per_cpu: Vec<f64> = f.cpu_per_handshake.iter().map(|c| 1.0 / c).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            server.name,
            range(&f.handshakes, 1.0, ""),
            range(&f.cpu_per_handshake, 1e6, " µs"),
            range(&per_cpu, 1.0, ""),
            range(&f.requests, 1.0, ""),
            range(&f.cpu_per_request, 1e6, " µs"),
        );
        if !server.extra_pids.is_empty() {
            let _ = writeln!(
                out,
                "| … with the mesh hop (gateway + backend sidecar) | | {} | | | {} |",
                range(&f.cpu_per_handshake_with_hop, 1e6, " µs"),
                range(&f.cpu_per_request_with_hop, 1e6, " µs"),
            );
        }
    }
    if let [hush, nginx] = figures {
        let per_cpu = |f: &Figures| {
            median(
                &f.cpu_per_handshake
                    .iter()
                    .map(|c| 1.0 / c)
                    .collect::<Vec<_>>(),
            )
        };
        let _ = writeln!(
            out,
            "\nhush / nginx: {:.2}× the new connections per second, {:.2}× the handshakes per CPU-second, \
             {:.2}× the keep-alive requests per second, {:.2}× the CPU per request ({:.2}× with the mesh hop)",
            median(&hush.handshakes) / median(&nginx.handshakes),
            per_cpu(hush) / per_cpu(nginx),
            median(&hush.requests) / median(&nginx.requests),
            median(&hush.cpu_per_request) / median(&nginx.cpu_per_request),
            median(&hush.cpu_per_request_with_hop) / median(&nginx.cpu_per_request),
        );
    }
    out
}
