#!/usr/bin/env bash
# The gateway benchmark in one go: installs its peer (nginx) and testssl.sh when run as root on
# Debian, builds hush in release mode, and runs `hush-bench gateway`: public TLS termination by
# hush gateway beside nginx, on loopback. Extra arguments go to `hush-bench gateway` (see
# `hush-bench gateway --help`; `--testssl` also scans the gateway's listener with testssl.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/install.sh
install_missing nginx-light:nginx testssl.sh:testssl

cargo build --release --locked -p hush -p hush-bench
exec ./target/release/hush-bench gateway "$@"
