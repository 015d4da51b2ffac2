#!/usr/bin/env bash
# Every side-by-side benchmark in one go, on loopback: installs the peers (stunnel4, haproxy,
# nginx with its stream module) and iperf3 when run as root on Debian, builds hush in release
# mode, then runs
#   hush-bench server  one server accepting mutual TLS: handshakes, memory per connection
#   hush-bench proxy   HTTP/1.1 through a pair of proxies: requests/s, CPU, latency, idle memory
#   hush-bench bulk    one TCP stream (iperf3) through a pair of proxies: GB/s, CPU per GB
#   hush-bench ca      certificates issued per second over gRPC vs the in-process ceiling
# Extra arguments go to `hush-bench server`. docs/performance.md shows the latest output.
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/install.sh
install_missing stunnel4:stunnel4 haproxy:haproxy nginx-light:nginx \
  libnginx-mod-stream:/usr/lib/nginx/modules/ngx_stream_module.so iperf3:iperf3 openssl:openssl

# Thousands of connections held open at once need as many descriptors.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --locked -p hush -p hush-bench
./target/release/hush-bench server "$@"
./target/release/hush-bench proxy --allow-missing-peers
./target/release/hush-bench bulk --allow-missing-peers
./target/release/hush-bench ca
