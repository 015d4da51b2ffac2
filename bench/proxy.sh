#!/usr/bin/env bash
# The sidecar benchmark in one go: installs its peers (stunnel4, haproxy) when run as root on
# Debian, builds hush in release mode, and measures HTTP/1.1 through each proxy pair, all on
# loopback. Extra arguments go to `hush-bench proxy` (see `hush-bench proxy --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1 || missing+=(stunnel4)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing ${missing[*]}: install them, or pass --allow-missing-peers" >&2
  fi
fi

cargo build --release --locked -p hush -p hush-bench
exec ./target/release/hush-bench proxy "$@"
