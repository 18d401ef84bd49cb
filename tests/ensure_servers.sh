#!/usr/bin/env bash
# Makes sure the real servers the tests start (redis-server, etcd, haproxy, and prometheus and
# prometheus-alertmanager for the health-gate tests), the browser the status-page test drives
# (chromium), the tools tests/test_deploy.py runs on deploy/ (systemd-analyze, promtool),
# the load tools tests/test_bench_tls.py runs (wrk, ab) and valgrind (callgrind, for
# tests/test_bench_instructions.py) are installed. Installs them with apt when running as
# root on Debian/Ubuntu; otherwise says exactly what to install.
set -euo pipefail

# Binaries from Debian packages, unpacked rather than installed: the prometheus and
# prometheus-alertmanager packages would also install (and, where services start, run) a
# Prometheus server on :9090 and an Alertmanager on :9093. The tests start their own on free
# loopback ports.
ensure_unpacked() {  # PACKAGE BINARY...
  local package=$1 dir b
  shift
  local need=()
  for b in "$@"; do command -v "$b" >/dev/null 2>&1 || need+=("$b"); done
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need[*]} (from Debian's $package package, unpacked)" >&2
    dir=$(mktemp -d)
    (cd "$dir" && apt-get download -qq "$package" 2>/dev/null \
      || { apt-get update -qq && apt-get download -qq "$package"; })
    for b in "${need[@]}"; do
      dpkg-deb --fsys-tarfile "$dir/${package}"_*.deb | tar -x -C "$dir" "./usr/bin/$b"
      install -m 0755 "$dir/usr/bin/$b" "/usr/local/bin/$b"
    done
    rm -rf "$dir"
    return 0
  fi
  echo "the tests need ${need[*]} (Debian: the $package package)" >&2
  [ "${CI:-}" = "true" ] && exit 1
  return 0
}
ensure_unpacked prometheus promtool prometheus
ensure_unpacked prometheus-alertmanager prometheus-alertmanager

declare -A pkg_for=(
  [redis-server]=redis-server [etcd]=etcd-server [chromium]=chromium [systemd-analyze]=systemd
  [haproxy]=haproxy [faketime]=faketime [wrk]=wrk [ab]=apache2-utils [valgrind]=valgrind
)
missing=()
for cmd in redis-server etcd chromium systemd-analyze haproxy faketime wrk ab valgrind; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkg_for[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing test servers: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi

echo "The tests need these packages: ${missing[*]}" >&2
echo "Install them with: sudo apt-get install -y ${missing[*]}" >&2
echo "(or put redis-server, etcd, chromium, systemd-analyze, haproxy, faketime, wrk, ab and valgrind on PATH). Without CI=true the tests that" >&2
echo "need a missing server are skipped; with CI=true they fail." >&2
[ "${CI:-}" = "true" ] && exit 1
exit 0
