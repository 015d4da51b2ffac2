//! hush's side-by-side benchmarks. Each prints its figures and the ratios between them, all
//! measured in the same run on the same machine.
//!
//! `hush-bench ca` — certificate issuance: the in-process ceiling (CSR verification + signing,
//! nothing else, on every core) against real issuance over gRPC + TLS 1.3 by `hush ca serve`
//! running as its own process, with concurrent clients.
//!
//! `hush-bench proxy` — HTTP/1.1 through a pair of hush sidecars against the same app direct
//! and through a pair of each peer (stunnel4; haproxy in HTTP and TCP mode; nginx as an HTTP
//! proxy and with its stream module), all doing mutual TLS 1.3: requests per second, CPU per
//! request, latency percentiles at a fixed rate, idle memory. `bench/proxy.sh` installs the
//! peers and runs it.
//!
//! `hush-bench bulk` — one TCP stream (iperf3) through a pair of hush sidecars and through a
//! pair of each byte relay among the peers: bytes per second and CPU per GB, beside the same
//! hops without encryption.
//!
//! `hush-bench server` — one server accepting mutual TLS: handshakes per second and per
//! CPU-second, memory per open connection. `bench/run.sh` runs `server`, `proxy`, `bulk` and
//! `ca` in one go.
//!
//! `hush-bench gateway` — public TLS termination: `hush gateway` beside nginx, new TLS
//! connections per second and keep-alive requests per second through each, CPU per unit.
//! `bench/gateway.sh` installs nginx and runs it.
//!
//! `hush-bench sidecar-memory` — the idle resident and private memory of one sidecar, for
//! several commands that run it (two builds, or two binaries) side by side.
//!
//! `hush-bench hot-symbols` — the functions an idle sidecar runs, written to the list release
//! builds link side by side (`crates/cli/link/README.md`).

mod bulk;
mod gateway;
mod hot_symbols;
mod load;
mod memory;
mod mtls;
mod otlp_sink;
mod peers;
mod proxy;
mod tls_load;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hush_ca::{
    Authority, CaDir, InitOptions, IssuancePolicy, JoinTokenStore, Lineage, VerifiedCsr,
};
use hush_ca_client::CaClient;
use hush_identity::{SpiffeId, TrustDomain};

#[derive(Debug, Parser)]
#[command(name = "hush-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Certificate issuance: in-process ceiling vs. gRPC over TLS to `hush ca serve`.
    Ca(CaArgs),
    /// HTTP/1.1 through hush sidecars vs. direct, stunnel4, haproxy and nginx, side by side.
    Proxy(proxy::ProxyArgs),
    /// Public TLS termination: hush gateway vs. nginx, new connections and keep-alive.
    Gateway(gateway::GatewayArgs),
    /// One server accepting mutual TLS: hush's inbound vs. stunnel4, haproxy and nginx,
    /// handshakes per second and CPU-second, memory per open connection.
    Server(mtls::ServerArgs),
    /// One TCP stream (iperf3) through hush sidecars vs. direct, stunnel4, haproxy (TCP mode)
    /// and nginx (stream), side by side: bytes per second and CPU per GB.
    Bulk(bulk::BulkArgs),
    /// Idle memory of one sidecar (resident, file-backed, anonymous, private), per command.
    SidecarMemory(memory::SidecarMemoryArgs),
    /// List the functions an idle sidecar runs, for release builds to link together.
    HotSymbols(hot_symbols::HotSymbolsArgs),
    /// The app the proxy benchmark measures against (started by `proxy` itself).
    #[command(hide = true)]
    App {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// Closed-loop HTTP/1.1 load against one address, for profiling a single path.
    Load {
        /// Where to send `GET /bench`.
        target: std::net::SocketAddr,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
}

#[derive(Debug, clap::Args)]
struct CaArgs {
    /// Path of the `hush` binary (default: next to this one, e.g. target/release/hush).
    #[arg(long)]
    hush: Option<PathBuf>,
    /// Seconds to measure each side.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent requests in flight against the CA.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// TCP/TLS connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Threads for the in-process ceiling (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Measure only the in-process ceiling (for profiling the signing path).
    #[arg(long)]
    ceiling_only: bool,
}

fn main() -> Result<()> {
    match Cli::parse().bench {
        Bench::Ca(args) => ca(args),
        Bench::Proxy(args) => proxy::run(args),
        Bench::Gateway(args) => gateway::run(args),
        Bench::Server(args) => mtls::run(args),
        Bench::Bulk(args) => bulk::run(args),
        Bench::SidecarMemory(args) => memory::run(args),
        Bench::HotSymbols(args) => hot_symbols::run(args),
        Bench::App { listen } => load::serve_app(listen),
        Bench::Load {
            target,
            seconds,
            connections,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let result = runtime.block_on(load::throughput(
                target,
                connections,
                Duration::from_secs(seconds),
            ))?;
            println!(
                "{:.0} requests/s ({} requests)",
                result.rate, result.requests
            );
            Ok(())
        }
    }
}

/// Distinct CSRs, so that no layer can cache one answer.
fn make_csrs(n: usize) -> Result<Vec<Vec<u8>>> {
    (0..n)
        .map(|_| {
            let key = rcgen::KeyPair::generate()?;
            Ok(rcgen::CertificateParams::default()
                .serialize_request(&key)?
                .der()
                .to_vec())
        })
        .collect()
}

fn ca(args: CaArgs) -> Result<()> {
    let window = Duration::from_secs(args.seconds);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let temp = tempfile::tempdir()?;
    let dir = CaDir::new(temp.path().join("ca"));
    let trust_domain = TrustDomain::new("bench.local")?;
    dir.init(&InitOptions::new(trust_domain.clone()))?;
    let id = SpiffeId::from_segments(&trust_domain, &["ns", "bench", "sa", "client"])?;
    let csrs = Arc::new(make_csrs(256)?);

    // 1. The ceiling: exactly the work an issuance must do, on every core, no I/O.
    let authority = Arc::new(Authority::new(dir.load()?, IssuancePolicy::default())?);
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (authority, csrs, issued, stop, id) = (
                authority.clone(),
                csrs.clone(),
                issued.clone(),
                stop.clone(),
                id.clone(),
            );
            std::thread::spawn(move || -> Result<()> {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let csr = VerifiedCsr::parse(&csrs[i % csrs.len()])?;
                    // What a join-token issuance writes: a fresh attestation record.
                    let lineage = Lineage::Attested {
                        method: hush_identity::AttestationMethod::JoinToken,
                        token_id: None,
                    };
                    authority.issue(&csr, &id, None, &lineage, None)?;
                    issued.fetch_add(1, Ordering::Relaxed);
                    i += threads;
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(window);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    let ceiling = issued.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    if args.ceiling_only {
        println!("in-process ceiling (CSR verify + sign, {threads} threads): {ceiling:.0} certs/s");
        return Ok(());
    }

    // 2. The real thing: `hush ca serve` as its own process, gRPC over TLS 1.3.
    let hush = crate::hush_binary(args.hush.clone())?;
    let token = JoinTokenStore::new(dir.tokens_dir())
        .mint(&id, Duration::from_secs(3600), true)?
        .token;
    let mut server = CaServer::start(&hush, dir.path(), args.concurrency)?;
    // One client thread: the load generator shares the machine with the CA, so it should burn
    // as little CPU as it can, and cross-thread wake-ups cost more than they bring here.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bundle = dir.load_bundle()?;
    let server_cpu_before = cpu_seconds(server.child.id())?;
    let client_cpu_before = cpu_seconds(std::process::id())?;
    let grpc = runtime.block_on(load(&server.url, &bundle, &token, csrs, &args, window))?;
    let server_cpu = cpu_seconds(server.child.id())? - server_cpu_before;
    let client_cpu = cpu_seconds(std::process::id())? - client_cpu_before;
    server.stop();

    println!(
        "hush CA issuance, {threads} cores, {} s per side",
        args.seconds
    );
    println!("  in-process ceiling (CSR verify + sign, {threads} threads): {ceiling:>9.0} certs/s");
    println!(
        "  gRPC + TLS 1.3 to `hush ca serve` ({} in flight, {} connections): {:>9.0} certs/s  p50 {:.2} ms  p99 {:.2} ms  ({} requests, {} errors)",
        args.concurrency,
        args.connections,
        grpc.rate,
        grpc.p50_ms,
        grpc.p99_ms,
        grpc.requests,
        grpc.errors
    );
    let per_request = |cpu: f64| 1e6 * cpu / grpc.total as f64;
    println!(
        "  CPU per certificate: ceiling {:.0} µs; over gRPC {:.0} µs in the CA + {:.0} µs in the load client",
        1e6 * threads as f64 / ceiling,
        per_request(server_cpu),
        per_request(client_cpu)
    );
    println!(
        "  ratio gRPC / ceiling: {:.1} %",
        100.0 * grpc.rate / ceiling
    );
    Ok(())
}

struct LoadResult {
    rate: f64,
    /// Requests sent in the window, warm-up included, for CPU accounting.
    total: u64,
    p50_ms: f64,
    p99_ms: f64,
    requests: usize,
    errors: u64,
}

async fn load(
    url: &str,
    bundle: &hush_identity::TrustBundle,
    token: &str,
    csrs: Arc<Vec<Vec<u8>>>,
    args: &CaArgs,
    window: Duration,
) -> Result<LoadResult> {
    let clients = (0..args.connections.max(1))
        .map(|_| CaClient::new(url, bundle.roots()))
        .collect::<Result<Vec<_>, _>>()?;
    // Warm every connection up (TCP + TLS handshake) outside the measured window.
    for client in &clients {
        client
            .certify(token, csrs[0].clone(), None)
            .await
            .context("warm-up request failed")?;
    }
    let deadline = Instant::now() + window;
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|t| {
            let client = clients[t % clients.len()].clone();
            let (csrs, token, errors) = (csrs.clone(), token.to_string(), errors.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = t;
                while Instant::now() < deadline {
                    let begin = Instant::now();
                    match client
                        .certify(&token, csrs[i % csrs.len()].clone(), None)
                        .await
                    {
                        Ok(_) => latencies.push(begin.elapsed()),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += STRIDE;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if latencies.is_empty() {
        bail!("no request succeeded");
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
        latencies[i].as_secs_f64() * 1000.0
    };
    Ok(LoadResult {
        total: (latencies.len() + clients.len()) as u64 + errors.load(Ordering::Relaxed),
        rate: latencies.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        requests: latencies.len(),
        errors: errors.load(Ordering::Relaxed),
    })
}

/// Tasks walk the CSR pool with a prime stride so neighbours rarely send the same CSR.
const STRIDE: usize = 7;

/// User + system CPU seconds a process has used so far (from /proc/PID/stat).
/// The `hush` binary to measure: `path`, or the one next to this benchmark (e.g.
/// target/release/hush).
pub(crate) fn hush_binary(path: Option<PathBuf>) -> Result<PathBuf> {
    let hush = match path {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("no parent directory")?
            .join("hush"),
    };
    if !hush.exists() {
        bail!(
            "{} not found: build it first with `cargo build --release`",
            hush.display()
        );
    }
    Ok(hush)
}

pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .context("short /proc stat")?
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    Ok(ticks / 100.0)
}

/// `hush ca serve` on a free loopback port, stopped on drop.
struct CaServer {
    child: Child,
    url: String,
}

impl CaServer {
    fn start(hush: &PathBuf, dir: &std::path::Path, in_flight: usize) -> Result<Self> {
        let mut child = Command::new(hush)
            .args([
                "ca",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-level",
                "warn",
                // The load's join-token requests are all unauthenticated: the CA must not shed
                // the very load it is measured with.
                "--max-unauthenticated-requests",
                &in_flight.max(64).to_string(),
                "--dir",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build it with `cargo build --release`)",
                    hush.display()
                )
            })?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("https://"))
            .with_context(|| format!("unexpected first line from hush ca serve: {line:?}"))?
            .to_string();
        Ok(Self { child, url })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CaServer {
    fn drop(&mut self) {
        self.stop();
    }
}
