#!/usr/bin/env bash
# The gateway benchmark in one go: installs its peer (nginx) and testssl.sh when run as root on
# Debian, builds hush in release mode, and runs `hush-bench gateway`: public TLS termination by
# hush gateway beside nginx, on loopback. Extra arguments go to `hush-bench gateway` (see
# `hush-bench gateway --help`; `--testssl` also scans the gateway's listener with testssl.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v testssl >/dev/null 2>&1 || command -v testssl.sh >/dev/null 2>&1 || missing+=(testssl.sh)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # Debian starts the packaged nginx on port 80; the benchmark runs its own.
    if command -v service >/dev/null 2>&1; then service nginx stop >/dev/null 2>&1 || true; fi
  else
    echo "missing ${missing[*]}: install them first" >&2
  fi
fi

cargo build --release --locked -p hush -p hush-bench
exec ./target/release/hush-bench gateway "$@"
