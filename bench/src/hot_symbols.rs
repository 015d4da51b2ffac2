//! `hush-bench hot-symbols`: lists the functions a sidecar runs while it starts and idles, for
//! the linker to place side by side at the start of the executable's code.
//!
//! Why: the kernel maps a file's cached pages around each page a process touches (fault-around,
//! 64 KiB), so a sidecar that runs 2.6 MB of functions scattered over 16 MB of code has most of
//! the code resident. Placed together, the same functions cost their own size.
//!
//! How: two sidecars start, get certificates from a CA on loopback and idle, each under
//! valgrind's callgrind, which records every function that ran; the names it reports that the
//! executable defines as functions are written, in callgrind's order, to the list that
//! `crates/cli/build.rs` hands to the linker for release builds. A name is an exact, mangled
//! symbol: names change with the toolchain, the dependencies' versions and some edits to hush
//! itself, so the list is made again after them (`hush-bench sidecar-memory` and `proxy` say
//! how much of it a build still matches; a stale name is skipped by the linker).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::memory::Node;

/// The list in the repository, as `crates/cli/build.rs` reads it.
pub(crate) const LIST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crates/cli/link/sidecar-hot-symbols.txt"
);

#[derive(Debug, clap::Args)]
pub(crate) struct HotSymbolsArgs {
    /// The release `hush` to profile (default: next to this binary). The names written are
    /// this build's.
    #[arg(long)]
    hush: Option<PathBuf>,
    /// Where to write the list (default: the repository's, which release builds link with).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Milliseconds each sidecar idles under callgrind, certificate in hand, before it stops:
    /// long enough for its periodic work (bundle polls, policy and certificate checks) to run,
    /// at callgrind's pace of about a fiftieth of native speed.
    #[arg(long, default_value_t = 60_000)]
    settle_ms: u64,
}

pub(crate) fn run(args: HotSymbolsArgs) -> Result<()> {
    let hush = match args.hush {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .context("no parent directory")?
            .join("hush"),
    };
    let hush = fs::canonicalize(&hush)
        .with_context(|| format!("cannot find {}: build it first", hush.display()))?;
    let valgrind = which("valgrind").context(
        "valgrind is not installed (apt-get install valgrind): its callgrind tool records \
         which functions run",
    )?;
    let profiles = tempfile::tempdir()?;
    let command: Vec<String> = vec![
        valgrind.display().to_string(),
        "--tool=callgrind".into(),
        // Symbol names as the linker knows them.
        "--demangle=no".into(),
        format!(
            "--callgrind-out-file={}/callgrind.%p",
            profiles.path().display()
        ),
        hush.display().to_string(),
        "proxy".into(),
    ];
    let mut node = Node::start(&hush)?;
    // Two, as on a node: the second starts while the first runs.
    let mut first = node.sidecar(&command)?;
    let mut second = node.sidecar(&command)?;
    std::thread::sleep(Duration::from_millis(args.settle_ms));
    // callgrind writes its profile when the program exits, SIGTERM included.
    first.terminate();
    second.terminate();
    drop(node);

    // In a fixed order, so that the same runs make the same list.
    let mut files: Vec<PathBuf> = fs::read_dir(profiles.path())?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let object = hush.display().to_string();
    let mut ran = Vec::new();
    for path in &files {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        ran.extend(functions_run(&text, &object));
    }
    if ran.is_empty() {
        bail!("callgrind recorded no function of {object}: did the sidecars start?");
    }
    let defined = text_symbols(&hush)?;
    let mut seen = HashSet::new();
    let hot: Vec<&str> = ran
        .iter()
        .map(String::as_str)
        .filter(|name| defined.contains(*name) && seen.insert(*name))
        .collect();

    let out = args.out.unwrap_or_else(|| PathBuf::from(LIST));
    let mut list = String::from(
        "# Functions a hush sidecar runs while it starts and idles, which release builds link\n\
         # side by side (crates/cli/build.rs; why: crates/cli/link/README.md).\n\
         # Written by `hush-bench hot-symbols`; regenerate it after a toolchain or dependency\n\
         # update, since the names are exact symbols of one build.\n",
    );
    for name in &hot {
        let _ = writeln!(list, "{name}");
    }
    fs::write(&out, list).with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "{} functions of {} ran in the idle sidecars, {} of them named in its symbol table; \
         written to {}",
        ran.iter().collect::<HashSet<_>>().len(),
        hush.display(),
        hot.len(),
        out.display()
    );
    Ok(())
}

/// The names of the functions of `object` (an executable's path, as the process mapped it) a
/// callgrind profile charged any cost to (its `fn=` blocks), in its order. callgrind names an
/// object or a function in full the first time it mentions it (`ob=(3) path`, `fn=(12) name`,
/// or as a callee's, `cob=`/`cfn=`) and by number after; a `fn=` belongs to the last `ob=`
/// before it; a name it marks as a recursion level (`name'2`) is the same function.
fn functions_run(profile: &str, object: &str) -> Vec<String> {
    let mut objects: HashMap<&str, &str> = HashMap::new();
    let mut functions: HashMap<&str, &str> = HashMap::new();
    let mut in_object = false;
    let mut names = Vec::new();
    for line in profile.lines() {
        let Some((key, spec)) = line.split_once("=(") else {
            continue;
        };
        let table = match key {
            "ob" | "cob" => &mut objects,
            "fn" | "cfn" => &mut functions,
            _ => continue,
        };
        let name = match spec.split_once(") ") {
            Some((id, name)) => {
                table.insert(id, name);
                Some(name)
            }
            None => table.get(spec.trim_end_matches(')')).copied(),
        };
        match (key, name) {
            ("ob", name) => in_object = name == Some(object),
            ("fn", Some(name)) if in_object => {
                let name = match name.rsplit_once('\'') {
                    Some((base, level)) if level.chars().all(|c| c.is_ascii_digit()) => base,
                    _ => name,
                };
                names.push(name.to_string());
            }
            _ => {}
        }
    }
    names
}

/// The functions `binary` defines, by symbol name (`nm`, from binutils).
fn text_symbols(binary: &Path) -> Result<HashSet<String>> {
    let output = Command::new("nm")
        .arg("--defined-only")
        .arg(binary)
        .output()
        .context("cannot run nm (apt-get install binutils)")?;
    if !output.status.success() {
        bail!(
            "nm {}: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_address, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            matches!(kind, "t" | "T" | "w" | "W").then(|| name.to_string())
        })
        .collect())
}

/// How many of the list's names `binary` defines, and how many it has: a build made after the
/// toolchain or a dependency changed matches fewer, and keeps fewer of them together.
pub(crate) fn coverage(binary: &Path) -> Result<(usize, usize)> {
    let list = fs::read_to_string(LIST).with_context(|| format!("cannot read {LIST}"))?;
    let listed: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let defined = text_symbols(binary)?;
    let present = listed.iter().filter(|n| defined.contains(**n)).count();
    Ok((present, listed.len()))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_are_found_by_object_whether_named_as_callee_or_by_recursion_level() {
        let profile = "\
version: 1
ob=(1) /bin/hush
fl=(1) src/main.rs
fn=(1) _ZN4hush4main17h0123456789abcdefE
3 10
cob=(2) /lib/libc.so.6
cfn=(2) memcpy
calls=1 0
3 5
cfn=(3) _ZN4core3fmt5write17hfedcba9876543210E
calls=1 0
3 5
fn=(3)
4 7
fn=(4) aws_lc_0_47_0_CBB_flush'2
5 1
ob=(2)
fn=(2)
6 1
fn=(5) strlen
6 1
ob=(1)
fn=(6) quoted'name
";
        assert_eq!(
            functions_run(profile, "/bin/hush"),
            [
                "_ZN4hush4main17h0123456789abcdefE",
                "_ZN4core3fmt5write17hfedcba9876543210E",
                "aws_lc_0_47_0_CBB_flush",
                "quoted'name"
            ]
        );
        assert_eq!(
            functions_run(profile, "/lib/libc.so.6"),
            ["memcpy", "strlen"]
        );
    }
}
