//! `hush-bench server`: one server accepting mutual TLS 1.3 — a hush sidecar's inbound listener
//! beside stunnel4, haproxy and nginx doing the same job (mutual TLS in, plaintext HTTP/1.1 to
//! the same app), all with certificates from the same hush CA (ECDSA P-256 chains).
//!
//! * **handshakes**: `--concurrency` clients each connect, complete a full mutual-TLS 1.3
//!   handshake (X25519, a client certificate, no resumption), send one request, read its
//!   answer and close — new connections per second, and the server's CPU per handshake;
//! * **memory per connection**: `--connections` mutual-TLS connections opened, one HTTP/1.1
//!   exchange on each, then held open — the server's resident memory before and after,
//!   divided by the number of connections.
//!
//! Handshake rounds are interleaved across the servers; memory is measured once per server
//! (it does not drift), each on a freshly started server.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hush_identity::{SpiffeId, TrustBundle};
use hush_test_support::{ProxyProcess, write_sidecar_config};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::peers::{Certs, Peer};
use crate::proxy::{http1_inbound, median, start_app, start_ca};
use crate::tls_load::{new_connections, read_response};
use crate::{cpu_seconds, hush_binary};

/// The SPIFFE IDs of the server under test and of the clients.
const SERVER_ID: &str = "spiffe://bench.local/ns/bench/sa/backend";
const CLIENT_ID: &str = "spiffe://bench.local/ns/bench/sa/frontend";

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Path of the `hush` binary (default: next to this one, e.g. target/release/hush).
    #[arg(long)]
    hush: Option<std::path::PathBuf>,
    /// Seconds of new connections per server and round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Clients opening connections at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Rounds of the handshake measurement, interleaved across servers.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connections held open for the memory measurement.
    #[arg(long, default_value_t = 4000)]
    connections: usize,
    /// Skip a peer that is not installed instead of failing (bench/run.sh installs them).
    #[arg(long)]
    allow_missing_peers: bool,
    /// Leave out the peers.
    #[arg(long)]
    hush_only: bool,
    /// Measure memory per connection only.
    #[arg(long)]
    memory_only: bool,
    /// Run the hush sidecar under this command, e.g. "heaptrack -o /tmp/sidecar" to see what
    /// its memory holds (its figures are then the wrapper's).
    #[arg(long, value_name = "COMMAND")]
    hush_wrapper: Option<String>,
}

/// A server under test.
struct Server {
    name: &'static str,
    entry: SocketAddr,
    pids: Vec<u32>,
    /// Keeps the server running.
    _process: Box<dyn std::any::Any>,
}

/// The peers measured beside hush.
const PEERS: [Peer; 3] = [Peer::Stunnel, Peer::HaproxyHttp, Peer::NginxHttp];

pub(crate) fn run(args: ServerArgs) -> Result<()> {
    let hush = hush_binary(args.hush.clone())?;
    let temp = tempfile::tempdir()?;
    let root = temp.path();
    let (mut app, app_addr) = start_app()?;
    let (ca, ca_dir) = start_ca(&hush, root);
    let server_certs = Certs::issue(&hush, &ca, &ca_dir, &root.join("server"), SERVER_ID)?;
    let client_certs = Certs::issue(&hush, &ca, &ca_dir, &root.join("client"), CLIENT_ID)?;
    let connector = connector(&client_certs)?;

    let peers: Vec<Peer> = if args.hush_only {
        Vec::new()
    } else {
        let missing: Vec<_> = PEERS.iter().filter(|p| !p.installed()).collect();
        if !missing.is_empty() && !args.allow_missing_peers {
            bail!("not installed: {missing:?} (bench/run.sh installs them)");
        }
        PEERS.into_iter().filter(|p| p.installed()).collect()
    };
    let mut generation = 0;
    let mut start = |which: Option<Peer>| -> Result<Server> {
        generation += 1;
        let dir = root.join(format!("server-{generation}"));
        Ok(match which {
            None => {
                let config = write_sidecar_config(&hush, &dir, &ca_dir, ca.url(), SERVER_ID, |c| {
                    c.inbound = Some(http1_inbound(app_addr));
                });
                let mut process = match &args.hush_wrapper {
                    Some(wrapper) => {
                        let words: Vec<&str> = wrapper.split_whitespace().collect();
                        ProxyProcess::start_wrapped(&words, &hush, &config)
                    }
                    None => ProxyProcess::start(&hush, &config),
                };
                Server {
                    name: "hush sidecar (inbound)",
                    entry: process.inbound(),
                    pids: vec![process.process().pid()],
                    _process: Box::new(process),
                }
            }
            Some(peer) => {
                let running = peer.server(&dir, &server_certs, app_addr)?;
                Server {
                    name: peer.name(),
                    entry: running.addr,
                    pids: running.pids(),
                    _process: Box::new(running),
                }
            }
        })
    };
    let arms: Vec<Option<Peer>> = std::iter::once(None)
        .chain(peers.iter().copied().map(Some))
        .collect();

    // The load generator takes one thread; the servers get the rest of the machine.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let mut memory = Vec::new();
    for &arm in &arms {
        let server = start(arm)?;
        eprintln!("memory: {} …", server.name);
        let per_connection =
            runtime.block_on(memory_per_connection(&server, &connector, args.connections))?;
        memory.push((server.name, per_connection));
    }

    let mut handshakes: Vec<(&'static str, Vec<f64>, Vec<f64>)> = Vec::new();
    if !args.memory_only {
        let servers: Vec<Server> = arms.iter().map(|&arm| start(arm)).collect::<Result<_>>()?;
        handshakes = servers
            .iter()
            .map(|s| (s.name, Vec::new(), Vec::new()))
            .collect();
        for round in 1..=args.rounds.max(1) {
            for (server, (_, rates, cpu)) in servers.iter().zip(handshakes.iter_mut()) {
                eprintln!("round {round}: handshakes, {} …", server.name);
                let before = cpu_of(&server.pids)?;
                let started = Instant::now();
                let done = runtime.block_on(new_connections(
                    server.entry,
                    connector.clone(),
                    "backend",
                    args.concurrency,
                    Duration::from_secs(args.seconds),
                ))?;
                let elapsed = started.elapsed().as_secs_f64();
                let spent = cpu_of(&server.pids)? - before;
                rates.push(done as f64 / elapsed);
                cpu.push(spent / done as f64);
            }
        }
    }
    print!("{}", report(&args, &memory, &handshakes));
    drop(ca);
    app.stop();
    Ok(())
}

fn cpu_of(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|pid| cpu_seconds(*pid)).sum()
}

/// Resident memory of `pids` together, in KiB.
fn resident_kib(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    }
    Ok(total)
}

/// What one mutual-TLS connection that made one exchange costs the server while it stays open,
/// in bytes: resident memory after `count` such connections, less before, over `count`.
async fn memory_per_connection(
    server: &Server,
    connector: &TlsConnector,
    count: usize,
) -> Result<f64> {
    // One exchange first, so that pooled connections to the app and lazily built state are in
    // the "before" figure, as they would be on a server that has served before.
    drop(open(server.entry, connector).await?);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = resident_kib(&server.pids)?;
    let server_entry = server.entry;
    let mut held = Vec::with_capacity(count);
    // A few at a time, like clients arriving: a server's transient handshake memory is not
    // multiplied by the number of connections.
    while held.len() < count {
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..64.min(count - held.len()) {
            let connector = connector.clone();
            opening.spawn(async move { open(server_entry, &connector).await });
        }
        while let Some(connection) = opening.join_next().await {
            held.push(connection??);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = resident_kib(&server.pids)?;
    // Every connection must still be open: a server that closed some would look cheap.
    for connection in &mut held {
        connection.write_all(REQUEST).await?;
        connection.flush().await?;
    }
    let mut buf = Vec::new();
    for connection in &mut held {
        buf.clear();
        tokio::time::timeout(Duration::from_secs(10), read_response(connection, &mut buf))
            .await
            .context("a held connection does not answer")?
            .context("a held connection no longer answers")?;
    }
    drop(held);
    Ok(after.saturating_sub(before) as f64 * 1024.0 / count as f64)
}

const REQUEST: &[u8] = b"GET /bench HTTP/1.1\r\nhost: backend\r\n\r\n";

/// A mutual-TLS connection that has made one exchange and stays open.
async fn open(entry: SocketAddr, connector: &TlsConnector) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(entry).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector
        .connect(ServerName::try_from("backend")?, tcp)
        .await?;
    tls.write_all(REQUEST).await?;
    read_response(&mut tls, &mut Vec::new()).await?;
    Ok(tls)
}

/// The clients' TLS: TLS 1.3, X25519 only (which every server offers), the client's SVID, the
/// server's chain checked against the bundle and its SPIFFE ID pinned, no resumption.
fn connector(certs: &Certs) -> Result<TlsConnector> {
    let bundle_pem = std::fs::read(&certs.bundle)?;
    let bundle = TrustBundle::from_pem(&bundle_pem, None)?;
    let expected: SpiffeId = SERVER_ID.parse()?;
    let verifier = hush_tls::SpiffeServerVerifier::new(&bundle, vec![expected])?;
    let chain = CertificateDer::pem_file_iter(&certs.chain)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&certs.key)?;
    let mut provider = (*hush_tls::provider()).clone();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

fn report(
    args: &ServerArgs,
    memory: &[(&str, f64)],
    handshakes: &[(&str, Vec<f64>, Vec<f64>)],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nOne server accepting mutual TLS 1.3 (X25519, ECDSA P-256 chains from one CA), \
         forwarding HTTP/1.1 to the same app; loopback, {} cores\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        out,
        "memory per open connection after one exchange ({} connections):\n",
        args.connections
    );
    let _ = writeln!(out, "| server | KiB per connection |\n|---|---|");
    for (name, bytes) in memory {
        let _ = writeln!(out, "| {name} | {:.1} |", bytes / 1024.0);
    }
    let hush_memory = memory.first().map(|(_, b)| *b);
    let best_memory = memory.iter().skip(1).map(|(_, b)| *b).reduce(f64::min);
    if let (Some(h), Some(p)) = (hush_memory, best_memory) {
        let _ = writeln!(
            out,
            "\nhush / best peer, memory per connection: {:.2}×",
            h / p
        );
    }
    if handshakes.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nnew mutual-TLS connections (handshake + one request), {} clients, {} s, median of {} \
         interleaved rounds (range):\n",
        args.concurrency,
        args.seconds,
        args.rounds.max(1)
    );
    let _ = writeln!(
        out,
        "| server | connections/s | server CPU per handshake | handshakes per CPU-second |\n|---|---|---|---|"
    );
    let range = |values: &[f64], scale: f64| {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min) * scale;
        let max = values.iter().copied().fold(0.0, f64::max) * scale;
        format!("({min:.0}–{max:.0})")
    };
    for (name, rates, cpu) in handshakes {
        let per_cpu: Vec<f64> = cpu.iter().map(|c| 1.0 / c).collect();
        let _ = writeln!(
            out,
            "| {name} | {:.0} {} | {:.0} µs {} | {:.0} {} |",
            median(rates),
            range(rates, 1.0),
            median(cpu) * 1e6,
            range(cpu, 1e6),
            median(&per_cpu),
            range(&per_cpu, 1.0)
        );
    }
    if let Some((_, hush_rates, hush_cpu)) = handshakes.first() {
        let peers = &handshakes[1..];
        if let Some((name, rates, _)) = peers
            .iter()
            .max_by(|a, b| median(&a.1).total_cmp(&median(&b.1)))
        {
            let _ = writeln!(
                out,
                "\nhush / best peer ({name}): {:.2}× the connections per second",
                median(hush_rates) / median(rates)
            );
        }
        if let Some((name, _, cpu)) = peers
            .iter()
            .min_by(|a, b| median(&a.2).total_cmp(&median(&b.2)))
        {
            let _ = writeln!(
                out,
                "hush / best peer ({name}): {:.2}× the handshakes per CPU-second",
                median(cpu) / median(hush_cpu)
            );
        }
    }
    out
}
