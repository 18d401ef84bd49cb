#!/bin/bash
# lockd's CPU microseconds per request under wrk (bench/throughput.lua), which load on the
# other core moves less than requests/s: utime + stime of the server from /proc/PID/stat
# over the requests wrk counted. The server (lockd serve --backend memory:// at its
# defaults, one slot per group, or the harness's bare handler) on CPU 0, wrk on CPU 1.
#
#   bash bench/cpu_per_request.sh TREE|bare TAG MODE...    e.g. bash bench/cpu_per_request.sh . this refuse relock cycle
#
# TREE: a checkout whose lockd package to run (with this checkout's .venv); DUR=seconds.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
TREE=$1; TAG=$2; shift 2
OUT=$(mktemp -d)
PORT=$("$HERE/.venv/bin/python" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
if [ "$TREE" = bare ]; then
  cd "$HERE"; taskset -c 0 .venv/bin/python -m bench.throughput --serve-bare "$PORT" >"$OUT/server.log" 2>&1 &
else
  cd "$TREE"; taskset -c 0 "$HERE/.venv/bin/python" -m lockd serve --listen "127.0.0.1:$PORT" --no-admin \
    --default-slots 1 --backend memory:// 2>"$OUT/server.log" &
fi
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$OUT"' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.2; done
for g in relock full; do
  curl -s -o /dev/null -X POST -H 'fleet-lock-protocol: true' \
    -d "{\"client_params\":{\"id\":\"holder\",\"group\":\"p-$g\"}}" "http://127.0.0.1:$PORT/v1/pre-reboot"
done
cd "$HERE"
taskset -c 1 wrk -t16 -c16 -d1s -s bench/throughput.lua "http://127.0.0.1:$PORT" -- relock p- >/dev/null
TCK=$(getconf CLK_TCK)
for mode in "$@"; do
  c0=$(awk '{print $14+$15}' "/proc/$PID/stat")
  taskset -c 1 wrk -t16 -c16 -d"${DUR:-4}"s -s bench/throughput.lua "http://127.0.0.1:$PORT" -- "$mode" p- > "$OUT/wrk.txt"
  c1=$(awk '{print $14+$15}' "/proc/$PID/stat")
  n=$(grep -o "[0-9]* requests in" "$OUT/wrk.txt" | cut -d' ' -f1)
  rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt")
  echo "$TAG $mode rps=$rps cpu_us_per_req=$("$HERE/.venv/bin/python" -c "print(round(($c1-$c0)/$TCK*1e6/$n,1))")"
done
