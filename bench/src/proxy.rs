//! `hush-bench proxy`: HTTP/1.1 through a pair of mutual-TLS proxies, side by side.
//!
//! Every path ends at the same app and starts at the same load generator, all on loopback:
//!
//! * direct — load generator → app, plaintext: the floor.
//! * hush — → frontend sidecar (plaintext in) → mutual TLS 1.3 → backend sidecar → app.
//! * each peer — the same shape with two of its processes doing mutual TLS 1.3: stunnel4,
//!   haproxy in HTTP mode and in TCP mode, nginx as an HTTP proxy and with its stream module
//!   (see `peers`).
//!
//! The peers use certificates from the same hush CA (real X.509-SVIDs). They check the chain
//! at most; hush also checks the SPIFFE ID, so hush does at least the work they do. The report
//! compares hush with the best peer that reads HTTP, as hush's pair does, and with the best
//! byte relay, which reads nothing. Each path is
//! measured twice: closed-loop throughput, and latency at a fixed rate. CPU time of the two
//! proxies is read from /proc, for CPU per request.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hush_config::{AccessLog, Identities, InboundConfig, OutboundConfig, PolicyConfig, Protocol};
use hush_test_support::{CaProcess, ProxyProcess, run_hush_ok, write_sidecar_config};

use crate::cpu_seconds;
use crate::load::{self, Latency, Throughput};
use crate::peers::{Certs, Peer, plain_relay, start_pairs};

#[derive(Debug, clap::Args)]
pub(crate) struct ProxyArgs {
    /// Path of the `hush` binary (default: next to this one, e.g. target/release/hush).
    #[arg(long)]
    hush: Option<PathBuf>,
    /// Seconds of closed-loop load per path.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Keep-alive connections for the throughput runs.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Requests per second for the latency runs.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of fixed-rate load per path.
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Connections for the latency runs.
    #[arg(long, default_value_t = 8)]
    latency_connections: usize,
    /// Skip a peer that is not installed instead of failing (bench/proxy.sh installs them).
    #[arg(long)]
    allow_missing_peers: bool,
    /// Rounds over all paths, interleaved so that drift affects every path alike; the report
    /// gives the median and the range.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also measure what observability costs: a hush pair exporting every request's spans over
    /// OTLP (to a sink that answers and discards), one sampling 1 % of traces, and a pair
    /// writing every access line.
    #[arg(long)]
    observability: bool,
    /// Also measure a pair run by another hush binary (e.g. an earlier build), to compare
    /// versions in one run.
    #[arg(long, value_name = "PATH")]
    baseline_hush: Option<PathBuf>,
    /// Leave out the peers.
    #[arg(long)]
    hush_only: bool,
}

/// A path under test: where the load generator connects and which processes do the work.
struct Contender {
    name: String,
    entry: SocketAddr,
    pids: Vec<u32>,
    /// The peer running the pair, if it is not hush (or no proxy at all).
    peer: Option<Peer>,
}

/// One path's rounds.
struct Measured {
    name: String,
    peer: Option<Peer>,
    rates: Vec<f64>,
    cpu_per_request: Vec<Duration>,
    latencies: Vec<Latency>,
}

impl Measured {
    fn rate(&self) -> f64 {
        median(&self.rates)
    }

    fn cpu(&self) -> Option<Duration> {
        (!self.cpu_per_request.is_empty()).then(|| {
            Duration::from_secs_f64(median(
                &self
                    .cpu_per_request
                    .iter()
                    .map(Duration::as_secs_f64)
                    .collect::<Vec<_>>(),
            ))
        })
    }

    fn latency(&self, pick: impl Fn(&Latency) -> Duration) -> Duration {
        Duration::from_secs_f64(median(
            &self
                .latencies
                .iter()
                .map(|l| pick(l).as_secs_f64())
                .collect::<Vec<_>>(),
        ))
    }
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) fn run(args: ProxyArgs) -> Result<()> {
    let hush = crate::hush_binary(args.hush.clone())?;
    let temp = tempfile::tempdir()?;
    let root = temp.path();

    // The app, as its own process.
    let (mut app, app_addr) = start_app()?;

    // The CA, and the hush pair.
    let (ca, ca_dir) = start_ca(&hush, root);
    let backend_id = "spiffe://bench.local/ns/bench/sa/backend";
    let frontend_id = "spiffe://bench.local/ns/bench/sa/frontend";
    let backend_config = write_sidecar_config(
        &hush,
        &root.join("backend"),
        &ca_dir,
        ca.url(),
        backend_id,
        |c| c.inbound = Some(http1_inbound(app_addr)),
    );
    let mut backend = ProxyProcess::start(&hush, &backend_config);
    // The same backend behind a sidecar that decides every request by a 1,000-rule policy, in
    // which the frontend is allowed by the very last rule.
    let policy_dir = root.join("policy");
    fs::create_dir_all(&policy_dir)?;
    fs::write(
        policy_dir.join("bench.yaml"),
        thousand_rule_policy(frontend_id, app_addr.port()),
    )?;
    let guarded_config = write_sidecar_config(
        &hush,
        &root.join("guarded"),
        &ca_dir,
        ca.url(),
        backend_id,
        |c| {
            c.inbound = Some(http1_inbound(app_addr));
            c.policy = Some(PolicyConfig::new(&policy_dir));
        },
    );
    let mut guarded = ProxyProcess::start(&hush, &guarded_config);
    let frontend_config = write_sidecar_config(
        &hush,
        &root.join("frontend"),
        &ca_dir,
        ca.url(),
        frontend_id,
        |c| {
            c.outbound = vec![
                http1_outbound(backend.inbound(), backend_id),
                http1_outbound(guarded.inbound(), backend_id),
            ];
        },
    );
    let mut frontend = ProxyProcess::start(&hush, &frontend_config);
    // Idle: certificates obtained, no traffic yet. The larger of the two is reported.
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_kib(frontend.process().pid())?.max(rss_kib(backend.process().pid())?);

    // More hush pairs, each a frontend and a backend of its own: what observability costs, and
    // another binary.
    let pair = |name: &str,
                bin: &Path,
                access_log: AccessLog,
                env: &[(&str, &str)]|
     -> Result<[ProxyProcess; 2]> {
        let backend_config = write_sidecar_config(
            bin,
            &root.join(format!("{name}-backend")),
            &ca_dir,
            ca.url(),
            backend_id,
            |c| {
                c.inbound = Some(http1_inbound(app_addr));
                c.access_log = access_log;
            },
        );
        let backend = ProxyProcess::try_start(bin, &backend_config, env)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let frontend_config = write_sidecar_config(
            bin,
            &root.join(format!("{name}-frontend")),
            &ca_dir,
            ca.url(),
            frontend_id,
            |c| {
                c.outbound = vec![http1_outbound(backend.inbound(), backend_id)];
                c.access_log = access_log;
            },
        );
        let frontend = ProxyProcess::try_start(bin, &frontend_config, env)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok([frontend, backend])
    };
    let mut more_pairs: Vec<(&'static str, [ProxyProcess; 2])> = Vec::new();
    let mut sink = None;
    if args.observability {
        let (addr, received) = crate::otlp_sink::start()?;
        let endpoint = format!("http://{addr}");
        more_pairs.push((
            "hush pair, spans exported (OTLP)",
            pair(
                "traced",
                &hush,
                AccessLog::default(),
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
            )?,
        ));
        more_pairs.push((
            "hush pair, spans exported, 1 % sampled",
            pair(
                "sampled",
                &hush,
                AccessLog::default(),
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
                ],
            )?,
        ));
        more_pairs.push((
            "hush pair, access_log: all",
            pair("logged", &hush, AccessLog::All, &[])?,
        ));
        sink = Some(received);
    }
    if let Some(baseline) = &args.baseline_hush {
        more_pairs.push((
            "hush pair, baseline binary",
            pair("baseline", baseline, AccessLog::default(), &[])?,
        ));
    }

    let mut paths = vec![
        Contender {
            name: "direct (no proxy)".to_string(),
            entry: app_addr,
            pids: vec![],
            peer: None,
        },
        Contender {
            name: "hush sidecar pair".to_string(),
            entry: frontend.outbound(0),
            pids: vec![frontend.process().pid(), backend.process().pid()],
            peer: None,
        },
        Contender {
            name: "hush pair, 1,000-rule policy".to_string(),
            entry: frontend.outbound(1),
            pids: vec![frontend.process().pid(), guarded.process().pid()],
            peer: None,
        },
    ];

    for (name, [frontend, backend]) in &mut more_pairs {
        paths.push(Contender {
            name: name.to_string(),
            entry: frontend.outbound(0),
            pids: vec![frontend.process().pid(), backend.process().pid()],
            peer: None,
        });
    }

    // The peers, each as a pair of its own (a client end and a server end) with certificates
    // from the same CA.
    let peer_certs = |name: &str, id: &str| {
        Certs::issue(&hush, &ca, &ca_dir, &root.join(format!("peer-{name}")), id)
    };
    let client_certs = peer_certs("client", frontend_id)?;
    let server_certs = peer_certs("server", backend_id)?;
    let peers = if args.hush_only {
        Vec::new()
    } else {
        start_pairs(
            Peer::ALL,
            root,
            &client_certs,
            &server_certs,
            app_addr,
            args.allow_missing_peers,
        )?
    };
    // Idle memory once every peer has settled.
    std::thread::sleep(Duration::from_millis(300));
    let mut peer_rss = Vec::new();
    for pair in &peers {
        peer_rss.push((pair.peer.name(), rss_kib_of(&pair.client.pids())?));
        paths.push(Contender {
            name: format!("{} pair", pair.peer.name()),
            entry: pair.entry(),
            pids: pair.pids(),
            peer: Some(pair.peer),
        });
    }

    // The hops without their cryptography or HTTP: two plaintext TCP relays in a row (haproxy,
    // two threads each, as its TLS pair) do the least any pair must do, so their rate is about
    // the ceiling of requests per second on this machine, and their added p99 the floor.
    let plain = if args.hush_only {
        None
    } else {
        match plain_relay(&root.join("plain-2"), app_addr)
            .and_then(|second| Ok((plain_relay(&root.join("plain-1"), second.addr)?, second)))
        {
            Ok(hops) => Some(hops),
            Err(e) if args.allow_missing_peers => {
                eprintln!("no plaintext relay pair: {e:#}");
                None
            }
            Err(e) => return Err(e),
        }
    };
    if let Some((first, second)) = &plain {
        paths.push(Contender {
            name: PLAINTEXT_HOPS.to_string(),
            entry: first.addr,
            pids: vec![first.process.pid(), second.process.pid()],
            peer: None,
        });
    }

    // One thread for the load generator, so the proxies get the rest of the machine.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut results: Vec<Measured> = paths
        .iter()
        .map(|path| Measured {
            name: path.name.clone(),
            peer: path.peer,
            rates: Vec::new(),
            cpu_per_request: Vec::new(),
            latencies: Vec::new(),
        })
        .collect();
    for round in 1..=args.rounds.max(1) {
        for (path, measured) in paths.iter().zip(results.iter_mut()) {
            eprintln!("round {round}: {} …", path.name);
            let cpu = || -> f64 {
                path.pids
                    .iter()
                    .map(|p| cpu_seconds(*p).unwrap_or(0.0))
                    .sum()
            };
            let cpu_before = cpu();
            let result = runtime
                .block_on(load::throughput(
                    path.entry,
                    args.connections,
                    Duration::from_secs(args.seconds),
                ))
                .with_context(|| format!("load through {}", path.name));
            let Throughput { rate, requests } = result?;
            let cpu_after = cpu();
            measured.rates.push(rate);
            if !path.pids.is_empty() {
                measured.cpu_per_request.push(Duration::from_secs_f64(
                    (cpu_after - cpu_before) / requests as f64,
                ));
            }
            measured.latencies.push(load::fixed_rate(
                path.entry,
                args.latency_connections,
                args.rate,
                Duration::from_secs(args.latency_seconds),
            )?);
        }
    }
    print!("{}", report(&results, &args, idle_rss, &peer_rss));
    // The idle figure depends on it (crates/cli/link/README.md).
    if let Ok((present, listed)) = crate::hot_symbols::coverage(&hush) {
        println!(
            "hush's idle functions linked side by side: {present} of the {listed} listed are in \
             this build"
        );
    }
    if let Some(sink) = sink {
        println!(
            "OTLP sink: {} exports, {} bytes of spans received",
            sink.exports.load(std::sync::atomic::Ordering::Relaxed),
            sink.bytes.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    drop(more_pairs);
    drop(plain);
    drop(peers);
    drop(frontend);
    drop(backend);
    drop(guarded);
    drop(ca);
    app.stop();
    Ok(())
}

/// 100 ALLOW policies of 10 rules each for callers other than the frontend (nine with an exact
/// principal, which the evaluator's index skips, and one with a namespace wildcard, which it
/// must try), the frontend allowed by the last rule of the last policy.
fn thousand_rule_policy(frontend_id: &str, port: u16) -> String {
    let mut text = String::new();
    for p in 0..100 {
        text.push_str(&format!(
            "---\napiVersion: hush.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: team-{p}\nspec:\n  rules:\n"
        ));
        for r in 0..10 {
            let principal = match (p, r) {
                (99, 9) => frontend_id.to_string(),
                (_, 9) => format!("spiffe://bench.local/ns/team{p}/*"),
                _ => format!("spiffe://bench.local/ns/team{p}/sa/svc{r}"),
            };
            let paths = if (p, r) == (99, 9) {
                "\"*\""
            } else {
                "\"/api/v1/*\", \"/healthz\""
            };
            text.push_str(&format!(
                "    - from: [{{principals: [\"{principal}\"]}}]\n      to: [{{ports: [{port}], methods: [GET, POST], paths: [{paths}]}}]\n"
            ));
        }
    }
    text
}

fn report(
    results: &[Measured],
    args: &ProxyArgs,
    idle_rss: Rss,
    peer_rss: &[(&str, Rss)],
) -> String {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "\nHTTP/1.1 keep-alive, loopback, {cores} cores shared by load generator, proxies and app; \
         median of {} interleaved rounds (range in brackets)\n\
         throughput: {} connections, {} s closed loop; latency: {} req/s over {} connections for {} s\n",
        args.rounds.max(1),
        args.connections,
        args.seconds,
        args.rate,
        args.latency_connections,
        args.latency_seconds
    );
    let _ = writeln!(
        out,
        "| path | req/s | vs direct | proxy CPU per request | p50 @ {r}/s | p99 @ {r}/s | p99.9 @ {r}/s | added p99 |",
        r = args.rate
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let direct = results.first();
    for (i, m) in results.iter().enumerate() {
        let vs = direct.map_or(0.0, |d| m.rate() / d.rate());
        let p99 = m.latency(|l| l.p99);
        let added = direct.map_or(Duration::ZERO, |d| p99.saturating_sub(d.latency(|l| l.p99)));
        let range = |values: &[f64], unit: f64| {
            let min = values.iter().copied().fold(f64::INFINITY, f64::min) * unit;
            let max = values.iter().copied().fold(0.0, f64::max) * unit;
            format!("({min:.0}–{max:.0})")
        };
        let cpu = m.cpu().map_or("–".to_string(), |c| {
            let values: Vec<f64> = m
                .cpu_per_request
                .iter()
                .map(Duration::as_secs_f64)
                .collect();
            format!("{:.0} µs {}", c.as_secs_f64() * 1e6, range(&values, 1e6))
        });
        let _ = writeln!(
            out,
            "| {} | {:.0} {} | {:.0} % | {} | {} | {} | {} | {} |",
            m.name,
            m.rate(),
            range(&m.rates, 1.0),
            100.0 * vs,
            cpu,
            micros(m.latency(|l| l.p50)),
            micros(p99),
            micros(m.latency(|l| l.p999)),
            if i == 0 {
                "–".to_string()
            } else {
                micros(added)
            },
        );
    }
    let direct_p99 = direct.map_or(Duration::ZERO, |d| d.latency(|l| l.p99));
    let added_p99 = |m: &Measured| m.latency(|l| l.p99).saturating_sub(direct_p99);
    let hush = results
        .iter()
        .find(|m| m.peer.is_none() && m.name.starts_with("hush"));
    // Like for like first: the peers that read HTTP, as hush's pair does (it must, to hand the
    // app the caller's identity); then the byte relays, which read nothing.
    for (kind, relays) in [("reads HTTP", false), ("relays bytes", true)] {
        let peers = || {
            results
                .iter()
                .filter(move |m| m.peer.is_some_and(|p| p.relays_bytes() == relays))
        };
        let Some(hush) = hush else { break };
        if let Some(peer) = peers().max_by(|a, b| a.rate().total_cmp(&b.rate())) {
            let _ = writeln!(
                out,
                "\nhush / best peer that {kind} ({}): {:.2}× the requests per second",
                peer.name,
                hush.rate() / peer.rate()
            );
        }
        if let Some(peer) = peers()
            .filter(|m| m.cpu().is_some())
            .min_by_key(|m| m.cpu())
            && let (Some(h), Some(p)) = (hush.cpu(), peer.cpu())
        {
            let _ = writeln!(
                out,
                "hush / best peer that {kind} ({}), CPU per request: {:.2}× ({:.0} µs vs {:.0} µs)",
                peer.name,
                h.as_secs_f64() / p.as_secs_f64(),
                h.as_secs_f64() * 1e6,
                p.as_secs_f64() * 1e6
            );
        }
        if let Some(peer) = peers().min_by_key(|m| added_p99(m)) {
            let _ = writeln!(
                out,
                "hush / best peer that {kind} ({}), added p99: {} vs {}",
                peer.name,
                micros(added_p99(hush)),
                micros(added_p99(peer))
            );
        }
    }
    if let Some(hops) = results.iter().find(|m| m.name == PLAINTEXT_HOPS) {
        let _ = writeln!(
            out,
            "\nabout the ceiling of any pair here, two plaintext hops (no TLS, no HTTP): {:.0} \
             req/s, added p99 {}",
            hops.rate(),
            micros(added_p99(hops))
        );
    }
    let _ = write!(out, "\nidle RSS of one proxy: hush {idle_rss}");
    for (name, rss) in peer_rss {
        let _ = write!(out, ", {name} {rss}");
    }
    let _ = writeln!(out);
    out
}

/// The path of two plaintext relays, in the table and in the ceiling line.
const PLAINTEXT_HOPS: &str = "plaintext hops (two haproxy TCP relays, no TLS)";

fn micros(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

/// A sidecar's inbound listener on a free loopback port in front of `app`, which speaks
/// HTTP/1.1: told, not detected, so detection is not what is measured.
pub(crate) fn http1_inbound(app: SocketAddr) -> InboundConfig {
    inbound(app, Protocol::Http1)
}

/// A sidecar's inbound listener on a free loopback port in front of `app`, which speaks
/// `protocol`.
pub(crate) fn inbound(app: SocketAddr, protocol: Protocol) -> InboundConfig {
    InboundConfig {
        protocol,
        ..InboundConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), app)
    }
}

/// An HTTP/1.1 outbound listener on a free loopback port to the sidecar at `upstream`, which
/// must prove `identity`.
pub(crate) fn http1_outbound(upstream: SocketAddr, identity: &str) -> OutboundConfig {
    outbound(upstream, identity, Protocol::Http1)
}

/// An outbound listener on a free loopback port, for `protocol`, to the sidecar at `upstream`,
/// which must prove `identity`.
pub(crate) fn outbound(upstream: SocketAddr, identity: &str, protocol: Protocol) -> OutboundConfig {
    let identity = identity
        .parse()
        .expect("the benchmark's SPIFFE IDs are valid");
    OutboundConfig {
        protocol,
        ..OutboundConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream.to_string(),
            Identities(vec![identity]),
        )
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

/// Resident memory of a process in KiB: all of it (VmRSS) and the part that is its own
/// (RssAnon; the rest is the executable and libraries mapped from the page cache, shared by
/// every process running the same files).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rss {
    total: u64,
    private: u64,
}

fn rss_kib(pid: u32) -> Result<Rss> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Rss {
        total: field("VmRSS:")?,
        private: field("RssAnon:")?,
    })
}

/// [`rss_kib`] of several processes (nginx's master and workers), added up as `ps` users
/// would: the pages they share are counted once per process.
fn rss_kib_of(pids: &[u32]) -> Result<Rss> {
    pids.iter().try_fold(
        Rss {
            total: 0,
            private: 0,
        },
        |sum, pid| {
            let one = rss_kib(*pid)?;
            Ok(Rss {
                total: sum.total + one.total,
                private: sum.private + one.private,
            })
        },
    )
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} MB ({:.1} MB private)",
            self.total as f64 / 1024.0,
            self.private as f64 / 1024.0
        )
    }
}

pub(crate) fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
    {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A free loopback port, for peers whose configuration needs a fixed one. (A benchmark on an
/// otherwise quiet machine; the tests never do this.)
pub(crate) fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_listening(process: &mut Spawned, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while StdStream::connect(("127.0.0.1", port)).is_err() {
        let exited = process.child.try_wait()?.is_some();
        if exited || Instant::now() > deadline {
            let log = std::env::temp_dir().join(format!(
                "hush-bench-{}.log",
                process.name.replace([' ', '(', ')'], "")
            ));
            bail!(
                "{} does not listen on port {port}; its log ({}):\n{}",
                process.name,
                log.display(),
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A CA of trust domain `bench.local` in `root/ca`, serving on a free loopback port.
pub(crate) fn start_ca(hush: &Path, root: &Path) -> (CaProcess, PathBuf) {
    let ca_dir = root.join("ca");
    run_hush_ok(
        hush,
        &[
            "ca",
            "init",
            "--dir",
            path_str(&ca_dir),
            "--trust-domain",
            "bench.local",
        ],
    );
    (CaProcess::start(hush, &ca_dir, &[]), ca_dir)
}

/// The benchmark's app (`hush-bench app`) as its own process on a free loopback port.
pub(crate) fn start_app() -> Result<(Spawned, SocketAddr)> {
    let mut app = Spawned::new(
        Command::new(std::env::current_exe()?).args(["app", "--listen", "127.0.0.1:0"]),
        "hush-bench app",
    )?;
    let addr = app
        .first_line()?
        .strip_prefix("listening on ")
        .context("unexpected first line from the app")?
        .parse()?;
    Ok((app, addr))
}

/// A child process, killed when dropped.
pub(crate) struct Spawned {
    child: Child,
    name: &'static str,
}

impl Spawned {
    pub(crate) fn new(command: &mut Command, name: &'static str) -> Result<Self> {
        // Peers report configuration errors on stderr: keep it for the error message.
        let log = std::env::temp_dir().join(format!(
            "hush-bench-{}.log",
            name.replace([' ', '(', ')'], "")
        ));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self { child, name })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn first_line(&mut self) -> Result<String> {
        let stdout = self.child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.is_empty() {
            bail!("{} exited before it was ready", self.name);
        }
        Ok(line.trim().to_string())
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}
