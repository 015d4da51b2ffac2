# Sourced by the benchmark scripts: `install_missing PACKAGE:COMMAND...` installs, as root on
# Debian, each package whose command is not found (or, for a COMMAND that is an absolute path,
# whose file is missing), and stops the services the packages start (the benchmarks run their
# own servers).
install_missing() {
  local missing=() pair package command
  for pair in "$@"; do
    package=${pair%%:*}
    command=${pair#*:}
    case "$command" in
      /*) [ -e "$command" ] || missing+=("$package") ;;
      *) command -v "$command" >/dev/null 2>&1 || [ -x "/usr/sbin/$command" ] || missing+=("$package") ;;
    esac
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    for service in nginx haproxy; do
      service "$service" stop >/dev/null 2>&1 || true
    done
  else
    echo "missing ${missing[*]}: install them first" >&2
  fi
}
