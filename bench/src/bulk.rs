//! `hush-bench bulk`: one TCP stream (iperf3) through a pair of mutual-TLS 1.3 proxies, side by
//! side: direct (no proxy), a hush sidecar pair relaying opaque TCP, and a pair of each byte
//! relay among the peers (stunnel4, haproxy in TCP mode, nginx's stream module).
//!
//! A last path chains two plaintext haproxy relays: the same hops with no encryption, the floor
//! under every pair on this machine.
//!
//! Each path carries `iperf3 -c` for `--seconds` to the same `iperf3 -s`, in rounds interleaved
//! across the paths: bytes per second as iperf3's receiver counts them (10⁹ bytes to the GB),
//! and the CPU the two proxies spent per GB carried, read from /proc.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use hush_config::Protocol;
use hush_test_support::{ProxyProcess, write_sidecar_config};

use crate::peers::{Certs, Peer, plain_relay, start_pairs};
use crate::proxy::{
    Spawned, free_port, inbound, median, outbound, start_ca, wait_listening, which,
};
use crate::{cpu_seconds, hush_binary};

const BACKEND_ID: &str = "spiffe://bench.local/ns/bench/sa/backend";
const FRONTEND_ID: &str = "spiffe://bench.local/ns/bench/sa/frontend";

#[derive(Debug, clap::Args)]
pub(crate) struct BulkArgs {
    /// Path of the `hush` binary (default: next to this one, e.g. target/release/hush).
    #[arg(long)]
    hush: Option<PathBuf>,
    /// Seconds of traffic per path and round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds over all paths, interleaved; the report gives the median and the range.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Parallel TCP streams (`iperf3 -P`).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Skip a peer that is not installed instead of failing (bench/run.sh installs them).
    #[arg(long)]
    allow_missing_peers: bool,
    /// Leave out the peers.
    #[arg(long)]
    hush_only: bool,
}

/// A path from the iperf3 client to the iperf3 server, and the processes that do its work.
struct Path {
    name: String,
    entry: SocketAddr,
    pids: Vec<u32>,
    /// A peer's mutual-TLS pair, which hush is compared with.
    peer: bool,
}

/// One path's rounds: bytes per second, and proxy CPU seconds per GB.
#[derive(Default)]
struct Rounds {
    rates: Vec<f64>,
    cpu_per_gb: Vec<f64>,
}

pub(crate) fn run(args: BulkArgs) -> Result<()> {
    let Some(iperf3) = which(&["iperf3"]) else {
        bail!("iperf3 is not installed (bench/run.sh installs it)");
    };
    let hush = hush_binary(args.hush.clone())?;
    let temp = tempfile::tempdir()?;
    let root = temp.path();

    let server_port = free_port()?;
    let mut server = Spawned::new(
        Command::new(&iperf3).args(["-s", "--bind", "127.0.0.1", "-p", &server_port.to_string()]),
        "iperf3 server",
    )?;
    wait_listening(&mut server, server_port)?;
    let target: SocketAddr = ([127, 0, 0, 1], server_port).into();

    let (ca, ca_dir) = start_ca(&hush, root);
    let backend_config = write_sidecar_config(
        &hush,
        &root.join("backend"),
        &ca_dir,
        ca.url(),
        BACKEND_ID,
        |c| {
            c.inbound = Some(inbound(target, Protocol::Tcp));
        },
    );
    let mut backend = ProxyProcess::start(&hush, &backend_config);
    let frontend_config = write_sidecar_config(
        &hush,
        &root.join("frontend"),
        &ca_dir,
        ca.url(),
        FRONTEND_ID,
        |c| c.outbound = vec![outbound(backend.inbound(), BACKEND_ID, Protocol::Tcp)],
    );
    let mut frontend = ProxyProcess::start(&hush, &frontend_config);

    let mut paths = vec![
        Path {
            name: "direct (no proxy)".to_string(),
            entry: target,
            pids: Vec::new(),
            peer: false,
        },
        Path {
            name: "hush sidecar pair (TCP)".to_string(),
            entry: frontend.outbound(0),
            pids: vec![frontend.process().pid(), backend.process().pid()],
            peer: false,
        },
    ];

    let mut peers = Vec::new();
    let mut plain = Vec::new();
    if !args.hush_only {
        let client_certs = Certs::issue(&hush, &ca, &ca_dir, &root.join("client"), FRONTEND_ID)?;
        let server_certs = Certs::issue(&hush, &ca, &ca_dir, &root.join("server"), BACKEND_ID)?;
        let relays = Peer::ALL.into_iter().filter(|p| p.relays_bytes());
        for pair in start_pairs(
            relays,
            root,
            &client_certs,
            &server_certs,
            target,
            args.allow_missing_peers,
        )? {
            paths.push(Path {
                name: format!("{} pair", pair.peer.name()),
                entry: pair.entry(),
                pids: pair.pids(),
                peer: true,
            });
            peers.push(pair);
        }
        if Peer::HaproxyTcp.installed() {
            // The floor under every pair: the same two hops, no encryption.
            let second = plain_relay(&root.join("plain-2"), target)?;
            let first = plain_relay(&root.join("plain-1"), second.addr)?;
            paths.push(Path {
                name: "haproxy (TCP mode) pair without TLS: the hops alone".to_string(),
                entry: first.addr,
                pids: [first.pids(), second.pids()].concat(),
                peer: false,
            });
            plain.extend([first, second]);
        }
    }

    let mut results: Vec<Rounds> = paths.iter().map(|_| Rounds::default()).collect();
    for round in 1..=args.rounds.max(1) {
        for (path, rounds) in paths.iter().zip(results.iter_mut()) {
            eprintln!("round {round}: {} …", path.name);
            let cpu = || -> Result<f64> { path.pids.iter().map(|p| cpu_seconds(*p)).sum() };
            let before = cpu()?;
            let bytes_per_second = iperf3_client(&iperf3, path.entry, &args)
                .with_context(|| format!("iperf3 through {}", path.name))?;
            let spent = cpu()? - before;
            let carried = bytes_per_second * args.seconds as f64;
            rounds.rates.push(bytes_per_second);
            if !path.pids.is_empty() {
                rounds.cpu_per_gb.push(spent / (carried / 1e9));
            }
        }
    }
    print!("{}", report(&args, &paths, &results));
    drop(peers);
    drop(plain);
    drop(frontend);
    drop(backend);
    drop(ca);
    server.stop();
    Ok(())
}

/// Runs `iperf3 -c` through `entry` and returns the bytes per second its receiver counted.
fn iperf3_client(iperf3: &std::path::Path, entry: SocketAddr, args: &BulkArgs) -> Result<f64> {
    let output = Command::new(iperf3)
        .args([
            "-c",
            &entry.ip().to_string(),
            "-p",
            &entry.port().to_string(),
            "-J",
        ])
        .args([
            "-t",
            &args.seconds.to_string(),
            "-P",
            &args.streams.to_string(),
        ])
        .output()
        .context("cannot run iperf3")?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "iperf3 wrote no JSON: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if let Some(error) = report.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {error}");
    }
    let bits = report
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .context("no end.sum_received.bits_per_second in iperf3's report")?;
    Ok(bits / 8.0)
}

fn report(args: &BulkArgs, paths: &[Path], results: &[Rounds]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nOne TCP stream ({} × iperf3) through a pair of proxies doing mutual TLS 1.3, loopback, \
         {} cores shared by iperf3, the proxies and nothing else; {} s per path, median of {} \
         interleaved rounds (range)\n",
        args.streams,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.seconds,
        args.rounds.max(1)
    );
    let _ = writeln!(
        out,
        "| path | GB/s | vs direct | proxy CPU per GB (core-seconds) |\n|---|---|---|---|"
    );
    let range = |values: &[f64], scale: f64, digits: usize| {
        let min = values.iter().copied().fold(f64::INFINITY, f64::min) * scale;
        let max = values.iter().copied().fold(0.0, f64::max) * scale;
        format!("({min:.digits$}–{max:.digits$})")
    };
    let direct = results.first().map_or(0.0, |r| median(&r.rates));
    for (path, rounds) in paths.iter().zip(results) {
        let rate = median(&rounds.rates);
        let cpu = if rounds.cpu_per_gb.is_empty() {
            "–".to_string()
        } else {
            format!(
                "{:.2} {}",
                median(&rounds.cpu_per_gb),
                range(&rounds.cpu_per_gb, 1.0, 2)
            )
        };
        let _ = writeln!(
            out,
            "| {} | {:.2} {} | {:.0} % | {cpu} |",
            path.name,
            rate / 1e9,
            range(&rounds.rates, 1e-9, 2),
            100.0 * rate / direct
        );
    }
    let hush = results.get(1);
    let peers = results.iter().zip(paths).filter(|(_, path)| path.peer);
    let fastest = peers
        .clone()
        .max_by(|a, b| median(&a.0.rates).total_cmp(&median(&b.0.rates)));
    let thriftiest =
        peers.min_by(|a, b| median(&a.0.cpu_per_gb).total_cmp(&median(&b.0.cpu_per_gb)));
    if let (Some(hush), Some((peer, path))) = (hush, fastest) {
        let _ = writeln!(
            out,
            "\nhush / best peer ({}): {:.2}× the bytes per second",
            path.name,
            median(&hush.rates) / median(&peer.rates)
        );
    }
    if let (Some(hush), Some((peer, path))) = (hush, thriftiest) {
        let _ = writeln!(
            out,
            "hush / best peer ({}): {:.2}× the CPU per GB",
            path.name,
            median(&hush.cpu_per_gb) / median(&peer.cpu_per_gb)
        );
    }
    out
}
