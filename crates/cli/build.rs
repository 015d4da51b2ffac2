//! Link options for optimised builds of `hush` that keep an idle sidecar's resident memory
//! small (the reasons and figures: `link/README.md`). Each is tried on a throwaway program
//! first, with this build's compiler, target, linker and flags, and used only if that program
//! links and runs: a linker or C library without them costs memory, never the build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    let hot = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/sidecar-hot-symbols.txt");
    println!("cargo:rerun-if-changed={}", hot.display());
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    // PROFILE is "release" for the release profile and every profile that inherits from it
    // (`cargo test --release` included); the list names the release build's functions, and
    // elsewhere it would match nothing.
    let release = env::var("PROFILE").is_ok_and(|profile| profile == "release");
    let target = env::var("TARGET").unwrap_or_default();
    // The probe runs here, so only a build for this machine can try it; the list names
    // x86_64 Linux symbols.
    let native = env::var("HOST").is_ok_and(|host| host == target);
    if !(release && native && target == "x86_64-unknown-linux-gnu") {
        return;
    }
    let ordering = [
        "--symbol-ordering-file".to_string(),
        hot.display().to_string(),
        // A name this build does not have (the list is older than the toolchain or a
        // dependency) is skipped; `hush-bench sidecar-memory` says how many still match.
        "--no-warn-symbol-ordering".to_string(),
    ];
    // Relative relocations packed (RELR): the loader reads 6 KB at start instead of 520 KB.
    // The binary then needs glibc 2.36 or later where it runs.
    let packed = ["-z".to_string(), "pack-relative-relocs".to_string()];
    for (options, what) in [
        (&ordering[..], "the sidecar's hot functions side by side"),
        (&packed[..], "packed relocations"),
    ] {
        if links_and_runs(&target, options) {
            for option in options {
                // -Xlinker, one argument at a time: -Wl would split a path at its commas.
                println!("cargo:rustc-link-arg-bins=-Xlinker");
                println!("cargo:rustc-link-arg-bins={option}");
            }
        } else {
            println!(
                "cargo:warning=hush is linked without {what}: this linker or C library does not \
                 take `{}` (rustc links with LLD on x86_64 Linux since 1.90; packed relocations \
                 need glibc 2.36). An idle sidecar keeps more of its code resident.",
                options.join(" ")
            );
        }
    }
}

/// Whether an empty program linked with the linker `options` builds and runs, compiled the way
/// this build compiles `hush`.
fn links_and_runs(target: &str, options: &[String]) -> bool {
    let Some(out) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return false;
    };
    let source = out.join("probe.rs");
    let program = out.join("probe");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let mut rustc = Command::new(env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()));
    rustc.arg("--target").arg(target).arg("-o").arg(&program);
    // The flags and linker this build gives rustc: a linker chosen there is the one to try.
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    rustc.args(flags.split('\x1f').filter(|flag| !flag.is_empty()));
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        let mut flag = std::ffi::OsString::from("linker=");
        flag.push(linker);
        rustc.arg("-C").arg(flag);
    }
    for option in options {
        rustc
            .arg("-C")
            .arg("link-arg=-Xlinker")
            .arg("-C")
            .arg(format!("link-arg={option}"));
    }
    rustc.arg(&source);
    let quiet = |command: &mut Command| {
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    quiet(&mut rustc) && quiet(&mut Command::new(&program))
}
