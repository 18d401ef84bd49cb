"""Instructions per request: lockd's hot paths and the bare handler, counted, not timed.

    .venv/bin/python -m bench.instructions [--backends memory,sqlite,redis,redis-cluster,etcd]
        [--scenarios relock,refuse,cycle] [--duration 20] [--tree CHECKOUT] [--json FILE]

On this shared 2-core machine requests/s, and even CPU time per request, move by +-15 %
between two measurements of the same server seconds apart (bench/RESULTS.md). The number of
instructions a server executes per request does not: two runs agree within about 0.5 %. So
this runs each server (the bare handler of bench/throughput.py, then lockd on each backend,
at its defaults but one slot per group and no admin listener) under valgrind's callgrind,
warms it up with wrk (bench/throughput.lua, 16 connections), zeroes callgrind's counters
(``callgrind_control -z``), runs wrk for ``--duration`` seconds, dumps the counters
(``callgrind_control -d``) and divides the instructions executed in between by the
requests wrk counted. The store servers run outside valgrind: only the server process's
own work is counted. Before its scenarios each server is left idle for 5 s to count the
work it does by the clock (timers: the store's change feed, a Redis Cluster's topology
check, the sweeps), which is subtracted at that rate: under callgrind about 50 times fewer
requests share each second of it than at full speed.

``bare / lockd`` is then what bench/throughput.py's ratio would be if every instruction
took the same time. What it leaves out, both ways:

- callgrind counts user-space instructions only. The kernel's share of a request (reading
  and writing its socket, the same calls for both servers) is left out, which moves a
  timed ratio closer to 1 than this one: this one is the stricter.
- It is not what instructions cost: cache misses, branch mispredictions and the machine's
  other tenants are in the timed ratios and not here.
- Under callgrind the server runs about 50 times slower, so more requests are ready at each
  turn of its event loop: the loop's own work is shared by more requests, and requests to
  one group share a round trip more often (relock, where every connection asks one group).
  Refusals answered from the view, and ``cycle`` (a group per connection), batch nothing.

Needs valgrind (``callgrind``, ``callgrind_control``) and wrk; the stores as
bench/throughput.py does.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import throughput
from bench.procs import Proc, find_binary, free_port

SCENARIOS = ("relock", "refuse", "cycle")
BACKENDS = ("memory", "sqlite", "redis", "redis-cluster", "etcd")
#: Under valgrind Python starts in about 20-40 s on this machine.
START_TIMEOUT = 180.0
CONNECTIONS = 16
#: Seconds each server is left idle to count the work it does by the clock (idle_rate).
IDLE_S = 5.0


def callgrind(out_dir: Path) -> list[str]:
    """The command prefix that runs a server under callgrind, its dumps in ``out_dir``."""
    return [find_binary("valgrind", "valgrind"), "--tool=callgrind",
            f"--callgrind-out-file={out_dir}/callgrind.out.%p"]


def dumped_instructions(out_dir: Path, pid: int) -> int:
    """The instructions (Ir) in ``pid``'s newest callgrind dump: its ``summary:`` line (or
    ``totals:``, which older versions write)."""
    dumps = sorted(out_dir.glob(f"callgrind.out.{pid}*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for pid {pid} in {out_dir}")
    text = dumps[-1].read_text(errors="replace")
    found = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if found is None:
        raise RuntimeError(f"no summary line in {dumps[-1]}")
    return int(found.group(1))


def _control(option: str, pid: int) -> None:
    subprocess.run([find_binary("callgrind_control", "valgrind"), option, str(pid)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def _dump(pid: int, out_dir: Path) -> int:
    """Dump ``pid``'s counters; the instructions since they were last zeroed."""
    before = {p.name for p in out_dir.glob(f"callgrind.out.{pid}*")}
    _control("-d", pid)
    deadline = time.monotonic() + 30
    while not {p.name for p in out_dir.glob(f"callgrind.out.{pid}*")} - before:
        if time.monotonic() > deadline:
            raise TimeoutError("callgrind did not dump")
        time.sleep(0.1)
    return dumped_instructions(out_dir, pid)


def idle_rate(pid: int, out_dir: Path, seconds: float) -> float:
    """Instructions per second of the server ``pid`` answering nothing: its timers (the
    store's change feed, a Redis Cluster's topology check, the sweeps)."""
    _control("-z", pid)
    started = time.monotonic()
    time.sleep(seconds)
    instructions = _dump(pid, out_dir)
    return instructions / (time.monotonic() - started)


def count(pid: int, out_dir: Path, url: str, mode: str, prefix: str, seconds: float,
          warmup: float, idle: float = 0.0) -> dict[str, Any]:
    """Instructions per request of the server ``pid`` (under callgrind) for one scenario.

    ``per_request`` leaves out the work the server does by the clock (``idle``
    instructions per second, :func:`idle_rate`): under callgrind about 50 times fewer
    requests share each second of it than at full speed, where it is next to nothing per
    request. ``per_request_raw`` keeps it."""
    throughput.wrk(url, mode, prefix, warmup, CONNECTIONS, None)
    _control("-z", pid)
    sample = throughput.wrk(url, mode, prefix, seconds, CONNECTIONS, None)
    instructions = _dump(pid, out_dir)
    requests = max(sample.requests, 1)
    by_the_clock = idle * (sample.wall_s or seconds)
    return {"requests": sample.requests, "non2xx": sample.non2xx, "errors": sample.errors,
            "instructions": instructions, "idle_per_s": round(idle),
            "per_request_raw": round(instructions / requests),
            "per_request": round(max(instructions - by_the_clock, 0) / requests)}


def _bare(out_dir: Path, tmp: Path) -> tuple[Proc, str]:
    port = free_port()
    argv = [*callgrind(out_dir), sys.executable, "-m", "bench.throughput", "--serve-bare",
            str(port)]
    proc = Proc(argv, tmp / "bare.log", cwd=Path.cwd()).start()
    throughput._wait_for_line(proc, "bare listening on ", START_TIMEOUT)
    return proc, f"http://127.0.0.1:{port}"


def measure(backends: list[str], scenarios: list[str], seconds: float, warmup: float,
            report: Callable[[str], None] = print, tree: Path | None = None,
            ) -> dict[str, dict[str, dict[str, Any]]]:
    """{server: {scenario: counts}}: the bare handler first, then lockd on each backend
    (the ``lockd`` package of the checkout ``tree``, this one's by default)."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    prefix = f"i{int(time.time()) % 100000}-"
    with tempfile.TemporaryDirectory(prefix="lockd-bench-instructions-") as tmp_dir:
        tmp = Path(tmp_dir)
        out = tmp / "callgrind"
        out.mkdir()
        proc, url = _bare(out, tmp)
        try:
            throughput._prepare(url, prefix, "bare")
            idle = idle_rate(proc.pid, out, IDLE_S)
            for mode in scenarios:
                results.setdefault("bare", {})[mode] = c = count(
                    proc.pid, out, url, mode, prefix, seconds, warmup, idle)
                report(f"bare     {mode:<7} {c['per_request']:>9,} instructions per request "
                       f"({c['requests']} requests; {c['idle_per_s']:,}/s idle)")
        finally:
            proc.stop(timeout=60)
        for backend in backends:
            if not throughput.available(backend):
                report(f"{backend}: backend not available")
                continue
            target = throughput.LockdTarget(backend, tmp / backend, None, tree=tree,
                                            wrapper=tuple(callgrind(out)),
                                            start_timeout=START_TIMEOUT)
            url = target.start()
            try:
                throughput._prepare(url, prefix, backend)
                pid = target.lockd.proc.pid
                idle = idle_rate(pid, out, IDLE_S)
                for mode in scenarios:
                    results.setdefault(backend, {})[mode] = c = count(
                        pid, out, url, mode, prefix, seconds, warmup, idle)
                    ratio = results["bare"][mode]["per_request"] / c["per_request"]
                    report(f"{backend:<8} {mode:<7} {c['per_request']:>9,} instructions per "
                           f"request ({c['requests']} requests; {c['idle_per_s']:,}/s idle, "
                           f"{c['per_request_raw']:,} with it), bare/lockd {ratio:.2f}")
            finally:
                target.stop()
    return results


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: instructions per request, and bare / lockd, per server and scenario."""
    modes = [m for m in SCENARIOS if m in results.get("bare", {})]
    lines = ["| server | " + " | ".join(modes) + " |", "| --- |" + " --- |" * len(modes)]
    for server, by_mode in results.items():
        cells = []
        for mode in modes:
            per = by_mode[mode]["per_request"]
            if server == "bare":
                cells.append(f"{per:,}")
            else:
                cells.append(f"{per:,} ({results['bare'][mode]['per_request'] / per:.2f})")
        lines.append(f"| {server} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="See the module docstring (bench/"
        "instructions.py) and bench/README.md for what the numbers leave out.")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma-separated, of " + ", ".join(BACKENDS) + " (default: all)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma-separated, of " + ", ".join(SCENARIOS) + " (default: all)")
    p.add_argument("--duration", type=float, default=20.0,
                   help="seconds of wrk per measurement, under callgrind (default: 20)")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="seconds of wrk before counting starts (default: 3)")
    p.add_argument("--tree", type=Path,
                   help="run the lockd package of this checkout (a before/after: one run "
                   "per checkout; the counts do not depend on the machine's load)")
    p.add_argument("--json", type=Path, help="also write the counts to this file")
    a = p.parse_args(argv)
    backends = [b for b in a.backends.split(",") if b]
    scenarios = [s for s in a.scenarios.split(",") if s]
    bad = [b for b in backends if b not in BACKENDS] + [s for s in scenarios
                                                        if s not in SCENARIOS]
    if bad:
        p.error(f"unknown backend or scenario: {', '.join(bad)}")
    if shutil.which("wrk") is None:
        p.error("wrk is not installed (Debian: apt-get install wrk)")
    results = measure(backends, scenarios, a.duration, a.warmup, tree=a.tree)
    print()
    print(table(results))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
