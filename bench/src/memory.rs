//! `hush-bench sidecar-memory`: the idle memory of one sidecar, for several ways of running it
//! (two builds, or two binaries), measured side by side in the same run.
//!
//! Each round starts, for each command in turn, two sidecars that get certificates from a real
//! CA (`hush ca serve` on loopback), lets them idle for `--settle-ms`, reads the second one's
//! memory from /proc and stops both. Two, because that is a node: sidecars of one image map the
//! same executable, so its pages are resident once for all of them. The RSS is then what one
//! sidecar maps (shared pages included, as `ps` and `top` count them) and the private part what
//! each further sidecar adds. The CA runs from a copy of `--hush`, so that it never shares pages
//! with a sidecar under test, and each executable is read once before the rounds, so that every
//! one starts from the same page cache: all of it cached, as on a node where it ran before.
//! Rounds alternate the commands, so that drift in the machine's state affects each alike.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hush_test_support::{CaProcess, HushProcess, ProxyProcess, run_hush_ok, write_sidecar_config};

use crate::proxy::{http1_inbound, http1_outbound};

#[derive(Debug, clap::Args)]
pub(crate) struct SidecarMemoryArgs {
    /// Commands that run a sidecar, each one argument, to which `--config FILE` is appended:
    /// e.g. "target/release/hush proxy" "/tmp/hush-before proxy". Default: the `hush` next to
    /// this binary, "proxy".
    #[arg(value_name = "COMMAND")]
    sidecars: Vec<String>,
    /// The `hush` that runs the CA and mints join tokens (default: next to this binary).
    #[arg(long)]
    hush: Option<PathBuf>,
    /// Rounds; each starts every sidecar once.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Milliseconds a sidecar idles, certificate in hand, before its memory is read.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
}

/// What /proc says of a process's memory, in KiB.
#[derive(Clone, Copy, Debug)]
struct Memory {
    /// VmRSS: every resident page.
    rss: u64,
    /// RssFile: resident pages of mapped files, mostly the executable's code and read-only data.
    file: u64,
    /// RssAnon: heap, stacks, and the pages of the executable that relocation wrote to.
    anon: u64,
    /// Private_Clean + Private_Dirty of smaps_rollup: pages no other process maps (the twin
    /// sidecar shares the executable's clean pages).
    private: u64,
}

impl Memory {
    fn of(pid: u32) -> Result<Self> {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
        let field = |text: &str, name: &str| -> Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}"))
        };
        Ok(Self {
            rss: field(&status, "VmRSS")?,
            file: field(&status, "RssFile")?,
            anon: field(&status, "RssAnon")?,
            private: field(&rollup, "Private_Clean")? + field(&rollup, "Private_Dirty")?,
        })
    }
}

/// One command's rounds.
struct Sidecar {
    command: Vec<String>,
    label: String,
    size: u64,
    /// Of the hot-symbol list release builds link with, the names this executable still
    /// defines, and all (see [`crate::hot_symbols`]); `None` where nm cannot read it.
    hot: Option<(usize, usize)>,
    samples: Vec<Memory>,
}

pub(crate) fn run(args: SidecarMemoryArgs) -> Result<()> {
    let here = std::env::current_exe()?
        .parent()
        .context("no parent directory")?
        .to_path_buf();
    let hush = args.hush.clone().unwrap_or_else(|| here.join("hush"));
    let commands = if args.sidecars.is_empty() {
        vec![format!("{} proxy", hush.display())]
    } else {
        args.sidecars.clone()
    };
    let mut sidecars = Vec::new();
    for label in commands {
        let command: Vec<String> = label.split_whitespace().map(String::from).collect();
        let program = command.first().context("an empty sidecar command")?;
        // Read whole: the page cache then holds all of it, for every command alike.
        let size = fs::read(program)
            .with_context(|| format!("cannot read {program}: build it first"))?
            .len() as u64;
        let hot = crate::hot_symbols::coverage(Path::new(program)).ok();
        sidecars.push(Sidecar {
            command,
            label,
            size,
            hot,
            samples: Vec::new(),
        });
    }

    let mut node = Node::start(&hush)?;
    for round in 1..=args.rounds.max(1) {
        for sidecar in &mut sidecars {
            eprintln!("round {round}: {} …", sidecar.label);
            let mut twin = node.sidecar(&sidecar.command)?;
            let mut measured = node.sidecar(&sidecar.command)?;
            std::thread::sleep(Duration::from_millis(args.settle_ms));
            sidecar.samples.push(Memory::of(measured.pid())?);
            measured.terminate();
            twin.terminate();
        }
    }
    drop(node);
    print!("{}", report(&sidecars, &args));
    Ok(())
}

/// A CA on loopback and what a sidecar needs from it: the setting every idle sidecar here runs
/// in. Dropping it stops the CA.
pub(crate) struct Node {
    /// First, so that it stops before its directory goes (fields drop in order).
    ca: CaProcess,
    /// Holds the copy of `hush`, the CA's directory and each sidecar's.
    temp: tempfile::TempDir,
    /// The copy that runs the CA and mints join tokens.
    hush: PathBuf,
    ca_dir: PathBuf,
    started: usize,
}

impl Node {
    /// Starts a CA from a copy of `hush`, which no sidecar under test maps.
    pub(crate) fn start(hush: &Path) -> Result<Self> {
        let temp = tempfile::tempdir()?;
        let copy = temp.path().join("hush-for-the-ca");
        fs::copy(hush, &copy).with_context(|| format!("cannot copy {}", hush.display()))?;
        let ca_dir = temp.path().join("ca");
        run_hush_ok(
            &copy,
            &[
                "ca",
                "init",
                "--dir",
                path_str(&ca_dir)?,
                "--trust-domain",
                "bench.local",
            ],
        );
        let ca = CaProcess::start(&copy, &ca_dir, &[]);
        Ok(Self {
            ca,
            temp,
            hush: copy,
            ca_dir,
            started: 0,
        })
    }

    /// Runs `command` (a program and its arguments, to which `--config FILE` is appended) as a
    /// sidecar with a certificate of its own, and returns once it is ready.
    pub(crate) fn sidecar(&mut self, command: &[String]) -> Result<HushProcess> {
        let identity = "spiffe://bench.local/ns/bench/sa/idle";
        // A pod's usual shape: an inbound listener in front of the app and an outbound one to
        // a peer. Neither is dialled while idle, so nothing needs to listen behind them.
        let nobody = SocketAddr::from(([127, 0, 0, 1], 9));
        self.started += 1;
        // A fresh directory each time: the join token is single-use.
        let config = write_sidecar_config(
            &self.hush,
            &self.temp.path().join(format!("sidecar-{}", self.started)),
            &self.ca_dir,
            self.ca.url(),
            identity,
            |c| {
                c.inbound = Some(http1_inbound(nobody));
                c.outbound = vec![http1_outbound(nobody, identity)];
            },
        );
        let (program, rest) = command.split_first().context("an empty sidecar command")?;
        let mut argv: Vec<&str> = rest.iter().map(String::as_str).collect();
        argv.extend(["--config", path_str(&config)?]);
        let mut process = HushProcess::spawn(program, &argv);
        process
            .wait_until_ready(ProxyProcess::READY_PREFIX)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(process)
    }
}

fn report(sidecars: &[Sidecar], args: &SidecarMemoryArgs) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nidle sidecar (certificate obtained, no traffic) beside a twin of the same command, {} ms \
         after ready; executable fully in the page cache; median of {} alternating rounds (range \
         in brackets), MiB\n",
        args.settle_ms,
        args.rounds.max(1)
    );
    let _ = writeln!(
        out,
        "| sidecar | executable | RSS | file-backed | anonymous | private (not shared with the twin) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for s in sidecars {
        let column = |pick: fn(&Memory) -> u64| {
            let mut values: Vec<u64> = s.samples.iter().map(pick).collect();
            values.sort_unstable();
            let mb = |kib: u64| kib as f64 / 1024.0;
            format!(
                "{:.1} ({:.1}–{:.1})",
                mb(values[values.len() / 2]),
                mb(values[0]),
                mb(values[values.len() - 1])
            )
        };
        let _ = writeln!(
            out,
            "| `{}` | {:.1} | {} | {} | {} | {} |",
            s.label,
            s.size as f64 / 1048576.0,
            column(|m| m.rss),
            column(|m| m.file),
            column(|m| m.anon),
            column(|m| m.private),
        );
    }
    for s in sidecars {
        if let Some((present, listed)) = s.hot {
            let _ = writeln!(
                out,
                "\n`{}`: {present} of the {listed} hot functions listed for the linker are in this \
                 executable (fewer after a toolchain or dependency update: `hush-bench hot-symbols` \
                 lists them again)",
                s.label
            );
        }
    }
    out
}

fn path_str(path: &Path) -> Result<&str> {
    match path.to_str() {
        Some(s) => Ok(s),
        None => bail!("{} is not UTF-8", path.display()),
    }
}
