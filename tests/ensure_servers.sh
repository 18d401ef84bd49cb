#!/usr/bin/env bash
# Makes sure the real servers the tests start (redis-server, etcd, haproxy) and the browser the
# status-page test drives (chromium) are installed. Installs them with apt when running as
# root on Debian/Ubuntu; otherwise says exactly what to install.
set -euo pipefail

declare -A pkg_for=( [redis-server]=redis-server [etcd]=etcd-server [chromium]=chromium
                     [haproxy]=haproxy )
missing=()
for cmd in redis-server etcd chromium haproxy; do
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
echo "(or put redis-server, etcd, chromium and haproxy on PATH). Without CI=true the tests that" >&2
echo "need a missing server are skipped; with CI=true they fail." >&2
[ "${CI:-}" = "true" ] && exit 1
exit 0
