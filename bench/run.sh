#!/usr/bin/env bash
# Every side-by-side benchmark in one go, on loopback: installs the peers (stunnel4, haproxy,
# nginx) when run as root on Debian, builds hush in release mode, then runs
#   hush-bench server  one server accepting mutual TLS: handshakes, memory per connection
#   hush-bench proxy   HTTP/1.1 through a pair of proxies: requests/s, CPU, latency
#   hush-bench ca      certificates issued per second over gRPC vs the in-process ceiling
# Extra arguments go to `hush-bench server`. docs/performance.md shows the latest output.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1 || missing+=(stunnel4)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # The packages start their services; the benchmarks start their own.
    for service in nginx haproxy; do
      service "$service" stop >/dev/null 2>&1 || true
    done
  else
    echo "missing ${missing[*]}: install them, or pass --allow-missing-peers" >&2
  fi
fi

# Thousands of connections held open at once need as many descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --locked -p hush -p hush-bench
./target/release/hush-bench server "$@"
./target/release/hush-bench proxy --allow-missing-peers
./target/release/hush-bench ca
