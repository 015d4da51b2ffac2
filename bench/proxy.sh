#!/usr/bin/env bash
# The sidecar benchmark in one go: installs its peers (stunnel4, haproxy, nginx with its stream
# module) when run as root on Debian, builds hush in release mode, and measures HTTP/1.1 through
# each proxy pair, all on loopback. Extra arguments go to `hush-bench proxy` (see `hush-bench proxy --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/install.sh
install_missing stunnel4:stunnel4 haproxy:haproxy nginx-light:nginx \
  libnginx-mod-stream:/usr/lib/nginx/modules/ngx_stream_module.so openssl:openssl

cargo build --release --locked -p hush -p hush-bench
exec ./target/release/hush-bench proxy "$@"
