//! Link settings for release builds of `hush` that keep an idle sidecar's resident memory small
//! (the reasons and figures: `link/README.md`).

use std::env;
use std::path::Path;

fn main() {
    let hot = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/sidecar-hot-symbols.txt");
    println!("cargo:rerun-if-changed={}", hot.display());
    // Release only: tests and debug builds link as usual. x86_64 Linux only: there rustc links
    // with LLD (the default since Rust 1.90), which takes both options; elsewhere the system
    // linker may not.
    let release = env::var("PROFILE").is_ok_and(|profile| profile == "release");
    let x86_64_linux = env::var("TARGET").is_ok_and(|target| target == "x86_64-unknown-linux-gnu");
    if !(release && x86_64_linux) {
        return;
    }
    // The functions a sidecar runs while idle, side by side at the start of the code. A name
    // the build no longer has (after a toolchain or dependency update) is skipped, silently.
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        hot.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    // Relative relocations packed (RELR): the loader reads 6 KB at start instead of 520 KB.
    // Needs glibc 2.36 or later at run time (Debian 12, the image's base).
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
