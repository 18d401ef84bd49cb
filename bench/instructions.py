"""Instructions per request: lockd's hot paths and the bare handler, counted, not timed.

    .venv/bin/python -m bench.instructions [--backends memory,sqlite,redis,redis-cluster,etcd]
        [--scenarios relock,refuse,cycle] [--duration 20] [--idle 5] [--tree CHECKOUT]
        [--flags "--log-level warning"] [--json FILE]

On this shared 2-core machine requests/s, and even CPU time per request, move by +-15 %
between two measurements of the same server seconds apart (bench/RESULTS.md). The number of
instructions a server executes per request does not: two runs agreed within 0.6 %. So
this runs each server (the bare handler of bench/throughput.py, then lockd on each backend,
at its defaults but one slot per group and no admin listener) under valgrind's callgrind,
warms it up with wrk (bench/throughput.lua, 16 connections), zeroes callgrind's counters
(``callgrind_control -z``), runs wrk for ``--duration`` seconds, dumps the counters
(``callgrind_control -d``) and divides the instructions executed in between by the
requests wrk counted. The store servers run outside valgrind: only the server process's
own work is counted. Before its scenarios each server is left idle (``--idle``, 5 s) to
count the work it does by the clock (timers: the store's change feed, a Redis Cluster's
topology check), which is subtracted at that rate: under callgrind about 40 times fewer
requests share each second of it than at full speed. Timers slower than that (the 30 s
sweep) are missed or over-counted.

``bare / lockd`` is then what bench/throughput.py's ratio would be if every instruction
took the same time and the store's work cost nothing. What it leaves out:

- callgrind counts user-space instructions only. On ``memory://`` and for refusals
  answered from the view, the kernel's share of a request (reading and writing its
  socket) is the same for both servers, so a timed ratio sits closer to 1 than this one.
  A request that goes to the store makes system calls of its own, and the store server's
  work is not counted at all: there this ratio is kinder than a timed one.
- It is not what instructions cost: cache misses, branch mispredictions and the machine's
  other tenants are in the timed ratios and not here.
- Under callgrind the server runs about 40 times slower, so more requests are ready at each
  turn of its event loop: the loop's own work is shared by more requests, and requests to
  one group share a round trip more often (relock, where every connection asks one group).
  Refusals answered from the view, and ``cycle`` (a group per connection), batch nothing.

Needs valgrind (``callgrind``, ``callgrind_control``) and wrk; the stores as
bench/throughput.py does. ``callgrind_control`` reaches a server blocked in a system call
through ptrace, so it must be allowed to trace the server (root, or
``kernel.yama.ptrace_scope = 0``).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import throughput
from bench.procs import find_binary

SCENARIOS = ("relock", "refuse", "cycle")
BACKENDS = ("memory", "sqlite", "redis", "redis-cluster", "etcd")
#: Under valgrind Python starts in about 20-40 s on this machine.
START_TIMEOUT = 180.0
CONNECTIONS = 16
#: Seconds each server is left idle to count the work it does by the clock (idle_rate).
IDLE_S = 5.0
#: A server under callgrind writes its last dump as it exits.
STOP_TIMEOUT = 60.0


def callgrind(out_dir: Path) -> list[str]:
    """The command prefix that runs a server under callgrind, its dumps in ``out_dir``."""
    return [find_binary("valgrind", "valgrind"), "--tool=callgrind",
            f"--callgrind-out-file={out_dir}/callgrind.out.%p"]


def dumps(out_dir: Path, pid: int) -> set[Path]:
    """``pid``'s callgrind files in ``out_dir`` (``callgrind.out.PID`` and its numbered
    dumps), and no other pid's."""
    name = f"callgrind.out.{pid}"
    return {p for p in out_dir.iterdir() if p.name == name or p.name.startswith(name + ".")}


def dumped_instructions(path: Path) -> int:
    """The instructions (Ir) in a callgrind file: its ``summary:`` line (or ``totals:``,
    which older versions write)."""
    found = re.search(r"^(?:summary|totals):\s+(\d+)", path.read_text(errors="replace"), re.M)
    if found is None:
        raise RuntimeError(f"no summary line in {path}")
    return int(found.group(1))


def _control(option: str, pid: int) -> None:
    subprocess.run([find_binary("callgrind_control", "valgrind"), option, str(pid)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def _zero(pid: int) -> float:
    """Zero ``pid``'s counters; the time counting starts again."""
    _control("-z", pid)
    return time.monotonic()


def _dump(pid: int, out_dir: Path) -> tuple[int, float]:
    """Dump ``pid``'s counters: the instructions since they were zeroed, and the time the
    dump was taken (when callgrind_control returns)."""
    before = dumps(out_dir, pid)
    _control("-d", pid)
    taken = time.monotonic()
    deadline = taken + 30
    while not (new := dumps(out_dir, pid) - before):
        if time.monotonic() > deadline:
            raise TimeoutError(f"callgrind wrote no dump for pid {pid} in {out_dir}")
        time.sleep(0.1)
    if len(new) != 1:
        raise RuntimeError(f"one dump asked for, {len(new)} written: {sorted(new)}")
    return dumped_instructions(new.pop()), taken


def idle_rate(pid: int, out_dir: Path, seconds: float) -> float:
    """Instructions per second of the server ``pid`` answering nothing: its timers (the
    store's change feed, a Redis Cluster's topology check). Timers slower than
    ``seconds`` are missed, or counted at a multiple of their rate."""
    started = _zero(pid)
    time.sleep(seconds)
    instructions, taken = _dump(pid, out_dir)
    return instructions / (taken - started)


def count(pid: int, out_dir: Path, url: str, server: str, mode: str, prefix: str,
          seconds: float, warmup: float, idle: float) -> dict[str, Any]:
    """Instructions per request of the server ``pid`` (under callgrind) for one scenario.

    ``per_request`` leaves out the work the server does by the clock (``idle``
    instructions per second, :func:`idle_rate`, over the ``counted_s`` seconds between
    zeroing and dumping): under callgrind about 40 times fewer requests share each second
    of it than at full speed. ``per_request_raw`` keeps it. ``expected``: every answer
    had the scenario's status (bench.throughput.expected_ok)."""
    throughput.wrk(url, mode, prefix, warmup, CONNECTIONS, None)
    started = _zero(pid)
    sample = throughput.wrk(url, mode, prefix, seconds, CONNECTIONS, None)
    instructions, taken = _dump(pid, out_dir)
    if sample.requests == 0:
        raise RuntimeError(f"{server} {mode}: wrk made no request")
    counted_s = taken - started
    return {"requests": sample.requests, "non2xx": sample.non2xx, "errors": sample.errors,
            "expected": throughput.expected_ok(mode, server, sample),
            "instructions": instructions, "counted_s": counted_s, "idle_per_s": idle,
            "per_request_raw": round(instructions / sample.requests),
            "per_request": round(max(instructions - idle * counted_s, 0) / sample.requests)}


def _line(server: str, mode: str, c: dict[str, Any], bare: dict[str, Any] | None) -> str:
    line = (f"{server:<8} {mode:<7} {c['per_request']:>9,} instructions per request "
            f"({c['requests']} requests; {round(c['idle_per_s']):,}/s idle, "
            f"{c['per_request_raw']:,} with it)")
    if bare is not None:
        line += f", bare/lockd {ratio(bare, c)}"
    return line if c["expected"] else line + "  (unexpected statuses!)"


def ratio(bare: dict[str, Any], lockd: dict[str, Any]) -> str:
    return f"{bare['per_request'] / lockd['per_request']:.2f}" if lockd["per_request"] else "?"


def measure(backends: list[str], scenarios: list[str], seconds: float, warmup: float,
            idle_s: float = IDLE_S, report: Callable[[str], None] = print,
            tree: Path | None = None, flags: tuple[str, ...] = (),
            ) -> dict[str, dict[str, dict[str, Any]]]:
    """{server: {scenario: counts}}: the bare handler first, then lockd on each backend
    (the ``lockd`` package of the checkout ``tree``, this one's by default), with
    ``flags`` added to its command line. A backend that cannot be measured is reported
    and left out."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    prefix = f"i{int(time.time()) % 100000}-"
    with tempfile.TemporaryDirectory(prefix="lockd-bench-instructions-") as tmp_dir:
        tmp = Path(tmp_dir)
        out = tmp / "callgrind"
        out.mkdir()
        bare = throughput.Bare(tmp, None, wrapper=tuple(callgrind(out)),
                               start_timeout=START_TIMEOUT, stop_timeout=STOP_TIMEOUT)
        try:
            url = bare.start()
            throughput._prepare(url, prefix, "bare")
            (pid,) = bare.pids
            idle = idle_rate(pid, out, idle_s)
            for mode in scenarios:
                c = count(pid, out, url, "bare", mode, prefix, seconds, warmup, idle)
                results.setdefault("bare", {})[mode] = c
                report(_line("bare", mode, c, None))
        finally:
            bare.stop()
        for backend in backends:
            if not throughput.available(backend):
                report(f"{backend}: backend not available")
                continue
            target = throughput.LockdTarget(backend, tmp / backend, None, flags, tree=tree,
                                            wrapper=tuple(callgrind(out)),
                                            start_timeout=START_TIMEOUT,
                                            stop_timeout=STOP_TIMEOUT)
            try:
                url = target.start()
                if flags:
                    report(f"{backend}: lockd serve with {' '.join(target.lockd.args)}")
                throughput._prepare(url, prefix, backend)
                pid = target.lockd.proc.pid
                idle = idle_rate(pid, out, idle_s)
                for mode in scenarios:
                    c = count(pid, out, url, backend, mode, prefix, seconds, warmup, idle)
                    results.setdefault(backend, {})[mode] = c
                    report(_line(backend, mode, c, results["bare"][mode]))
            except Exception as exc:  # one store that fails is reported; the rest go on
                report(f"{backend}: could not measure: {exc}")
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
            c = by_mode.get(mode)
            if c is None:  # that store failed before this scenario
                cells.append("-")
            elif server == "bare":
                cells.append(f"{c['per_request']:,}")
            else:
                cells.append(f"{c['per_request']:,} ({ratio(results['bare'][mode], c)})")
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
    p.add_argument("--idle", type=float, default=IDLE_S,
                   help="seconds each server sits idle first, to count the work it does by "
                   f"the clock (default: {IDLE_S:g})")
    p.add_argument("--tree", type=Path,
                   help="run the lockd package of this checkout (a before/after: one run "
                   "per checkout; the counts do not depend on the machine's load)")
    p.add_argument("--flags", default="", metavar='"FLAG..."',
                   help='more flags for every lockd, e.g. "--log-level warning" (default: '
                   "none: lockd at its defaults)")
    p.add_argument("--json", type=Path, help="also write the counts to this file")
    a = p.parse_args(argv)
    backends = [b for b in a.backends.split(",") if b]
    scenarios = [s for s in a.scenarios.split(",") if s]
    bad = [b for b in backends if b not in BACKENDS] + [s for s in scenarios
                                                        if s not in SCENARIOS]
    if bad:
        p.error(f"unknown backend or scenario: {', '.join(bad)}")
    for tool, package in (("wrk", "wrk"), ("valgrind", "valgrind"),
                          ("callgrind_control", "valgrind")):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not installed (Debian: apt-get install {package})")
    results = measure(backends, scenarios, a.duration, a.warmup, a.idle, tree=a.tree,
                      flags=tuple(shlex.split(a.flags)))
    print()
    print(table(results))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
