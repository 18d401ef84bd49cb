"""Raw requests/s of lockd's hot paths on every backend, against a bare aiohttp ceiling.

    .venv/bin/python -m bench.throughput [--runs 3] [--duration 5] [--backends memory,sqlite]
        [--workers 2] [--scenarios refuse]

For each run, and inside it for lockd on each backend (``memory://``, the default sqlite,
``redis://``, ``etcd://`` and, when asked for, ``etcd2://`` and ``redis+cluster://`` (three
masters with a replica each) on servers it starts in a temporary directory), it measures
with wrk (``bench/throughput.lua``), each lockd measurement right after the same one on
the bare handler:

- ``relock``: the holder asks again (200, nothing written),
- ``refuse``: a waiter asks a full semaphore (423, nothing written),
- ``cycle``: grant then release on the connection's own group (200s, two writes).

The bare handler parses the same request (header check, JSON body) and answers 200 JSON:
what aiohttp alone can do on this machine, measured seconds before so that the ratio
lockd/bare is meaningful even on a noisy machine.

lockd runs as a user runs it: default settings (the log at ``info``), apart from one slot
per group and no admin listener. ``--extra-row "memory --log-level warning"`` adds a row of
lockd on that backend with those flags too (repeatable), measured in the same pairs;
``--extra-row "memory@../main"`` one of the ``lockd`` package of another checkout (say, a
branch's base), for a before/after taken in one run.

A backend named with ``-noview`` (``--backends sqlite,sqlite-noview``) runs lockd with
``storage.view = false``: every refusal reads the store, as before lockd.view existed.
``--scenarios refuse`` measures that scenario only.

``--workers N`` runs each backend but memory:// twice side by side, one worker and
``<backend>-wN`` (``lockd serve --workers N``), each on its own store server, and measures
them back to back after the bare handler: the median ratio of the pairs is printed, with
the CPU the lockd processes used (per request, and cores busy) and, on Redis, the Redis
commands per request (INFO commandstats).

Sharing the 2 cores: the server under test (and its redis-server or etcd) is pinned to
CPU 0 and wrk to CPU 1 with taskset; ``--server-cpus``/``--load-cpus`` change that.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LUA = HERE / "throughput.lua"
SCENARIOS = ("relock", "refuse", "cycle")
TARGETS = ("bare", "memory", "sqlite", "redis", "redis-cluster", "etcd", "etcd2")
#: Targets whose store needs a driver that may be missing.
OPTIONAL = {"redis": "backends.redis", "redis-cluster": "backends.redis_cluster",
            "etcd": "backends.etcd3", "etcd2": "backends.etcd2"}


# --- the bare ceiling ---------------------------------------------------------------------


def bare_app(refuse: bool = False) -> Any:
    """The least a FleetLock handler does: route, check the header, parse the body, answer.

    ``refuse`` answers every request 423 semaphore-full: a server that never lets a storm
    end, to measure how many requests/s one locust worker can drive.
    """
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        if request.headers.get("fleet-lock-protocol", "").lower() != "true":
            return web.json_response({"kind": "missing_protocol_header", "value": "-"},
                                     status=400)
        params = json.loads(await request.read())["client_params"]
        if not params["id"] or not params["group"]:
            return web.json_response({"kind": "invalid_body", "value": "-"}, status=400)
        if refuse:
            return web.json_response({"kind": "failed_lock_semaphore_full", "value": "-"},
                                     status=423)
        return web.json_response({"outcome": "granted"})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handle)
    return app


def serve_bare(port: int, refuse: bool = False) -> None:
    from aiohttp import web

    try:
        import uvloop  # lockd uses it when installed, so the ceiling does too

        loop_runner: Callable[..., Any] | None = uvloop.run
    except ImportError:
        loop_runner = None

    async def main() -> None:
        runner = web.AppRunner(bare_app(refuse), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(f"bare listening on http://127.0.0.1:{port}/", flush=True)
        while True:
            await __import__("asyncio").sleep(3600)

    (loop_runner or __import__("asyncio").run)(main())


# --- targets --------------------------------------------------------------------------------


def pin(pid: int, cpus: str | None) -> None:
    """Pin a running process and all its threads (the store servers start their own)."""
    if cpus and shutil.which("taskset"):
        subprocess.run(["taskset", "-a", "-c", "-p", cpus, str(pid)], check=True,
                       stdout=subprocess.DEVNULL)


class Target:
    """A server to measure: ``start()`` returns its base URL."""

    name: str

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Bare(Target):
    name = "bare"

    def __init__(self, tmp: Path, cpus: str | None) -> None:
        self.tmp, self.cpus = tmp, cpus

    def start(self) -> str:
        from bench.procs import Proc, free_port, wait_for_port

        port = free_port()
        self.proc = Proc([sys.executable, "-m", "bench.throughput", "--serve-bare", str(port)],
                         self.tmp / "bare.log", cwd=Path.cwd()).start()
        wait_for_port(port, proc=self.proc.proc)
        pin(self.proc.pid, self.cpus)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.proc.stop()


class LockdTarget(Target):
    """lockd on one backend, with its default settings plus ``extra`` flags; redis-server
    or etcd started beside it when needed.

    ``workers`` > 1: ``lockd serve --workers N``, named ``<backend>-wN``; the supervisor is
    started under ``taskset`` so that every worker it starts inherits the server CPUs.
    """

    def __init__(self, name: str, tmp: Path, cpus: str | None, extra: tuple[str, ...] = (),
                 tree: Path | None = None, workers: int = 1) -> None:
        self.backend, self.extra, self.tree, self.workers = name, extra, tree, workers
        base = name if workers == 1 else f"{name}-w{workers}"
        self.name = " ".join((f"{base}@{tree}" if tree else base, *extra))
        self.tmp, self.cpus = tmp / base, cpus
        self.store: Any = None

    def start(self) -> str:
        from bench.procs import Lockd

        args = ["--no-admin", "--default-slots", "1", *self.extra]
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        wrapper = ["taskset", "-c", self.cpus] if self.cpus and shutil.which("taskset") else []
        store = self.backend.removesuffix("-noview")
        if store != self.backend:
            args += ["--set", "storage.view=false"]
        if store == "memory":
            args += ["--backend", "memory://"]
        elif store == "sqlite":
            args += ["--state-dir", str(self.tmp / "state")]  # the default backend
        elif store == "redis":
            from bench.servers import RedisServer

            self.store = RedisServer(self.tmp / "redis").start()
            pin(self.store.proc.pid, self.cpus)
            args += ["--backend", self.store.url]
        elif store == "redis-cluster":
            from bench.servers import RedisClusterServer

            self.store = RedisClusterServer(self.tmp / "cluster").start()
            for node in self.store.nodes:
                pin(node.proc.pid, self.cpus)
            args += ["--backend", self.store.url]
        elif store == "etcd":
            from bench.servers import EtcdServer

            self.store = EtcdServer(self.tmp / "etcd").start()
            pin(self.store.proc.pid, self.cpus)
            args += ["--backend", f"etcd://{self.store.endpoint}"]
        elif store == "etcd2":  # locksmith's layout on the v2 API
            from bench.servers import EtcdServer

            self.store = EtcdServer(self.tmp / "etcd").start()
            pin(self.store.proc.pid, self.cpus)
            args += ["--backend", f"etcd2://{self.store.endpoint}"]
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.lockd = Lockd(self.tmp, *args, tree=self.tree, wrapper=wrapper).start()
        pin(self.lockd.proc.pid, self.cpus)
        return self.lockd.url.rstrip("/")

    def stop(self) -> None:
        self.lockd.stop()
        if self.store is not None:
            self.store.stop()


def available(name: str) -> bool:
    """Whether lockd can use this backend now (redis/etcd modules may still be missing)."""
    module = OPTIONAL.get(name.removesuffix("-noview"))
    if module is None:
        return True
    try:
        importlib.import_module(module)
    except Exception:  # a half-written module fails in any way; the bench goes on
        return False
    return True


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Sample:
    rps: float
    requests: int
    non2xx: int
    p50_ms: float | None
    p99_ms: float | None
    errors: int = 0


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def parse_wrk(out: str) -> Sample:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Sample(rps, requests, int(non2xx.group(1)) if non2xx else 0,
                  _ms(p50.group(1)) if p50 else None, _ms(p99.group(1)) if p99 else None,
                  sum(int(x) for x in errs.groups()) if errs else 0)


def wrk(url: str, mode: str, prefix: str, seconds: float, conns: int,
        cpus: str | None, script: Path = LUA, extra: tuple[str, ...] = ()) -> Sample:
    """One wrk run of ``script`` (default bench/throughput.lua) with the arguments
    ``mode prefix *extra``."""
    # wrk takes whole seconds only.
    argv = ["wrk", "-t", str(conns), "-c", str(conns), "-d", f"{max(1, round(seconds))}s",
            "--latency", "-s", str(script), url, "--", mode, prefix, *extra]
    if cpus and shutil.which("taskset"):
        argv = ["taskset", "-c", cpus, *argv]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if run.returncode != 0:
        raise RuntimeError(f"wrk failed: {run.stderr or run.stdout}")
    return parse_wrk(run.stdout)


def post(url: str, op: str, id_: str, group: str) -> int:
    body = json.dumps({"client_params": {"id": id_, "group": group}}).encode()
    req = urllib.request.Request(f"{url}/v1/{op}", data=body, method="POST",
                                 headers={"fleet-lock-protocol": "true"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def expected_ok(mode: str, target: str, s: Sample) -> bool:
    """relock and cycle answer 200 only; refuse answers 423 only (the bare handler: 200)."""
    if s.errors:
        return False
    if mode == "refuse" and target != "bare":
        return s.non2xx == s.requests
    return s.non2xx == 0


@dataclass
class Results:
    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)
    ratios: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    #: lockd-on-etcd cycle requests/s over the raw compare-and-set rate through etcd's JSON
    #: gateway (lockd's own path, bench/raw_etcd.py), per run
    raw_ratios: list[float] = field(default_factory=list)
    #: ``<backend>-wN`` requests/s over the same backend's one worker, per mode, per run
    worker_ratios: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: with --workers on Redis: Redis commands per request, per mode, per run
    store_commands: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)
    #: with --workers: CPU the target's lockd processes used, per request and in cores
    lockd_cpu: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)


def _report(res: Results, run: int, runs: int, name: str, mode: str, s: Sample) -> None:
    res.samples.setdefault(name, {}).setdefault(mode, []).append(s)
    ok = expected_ok(mode, name, s)
    if not ok:
        res.anomalies.append(f"run {run} {name} {mode}: {s.non2xx} non-2xx of {s.requests}, "
                             f"{s.errors} socket errors")
    p50 = f"{s.p50_ms:.2f}" if s.p50_ms is not None else "?"
    p99 = f"{s.p99_ms:.2f}" if s.p99_ms is not None else "?"
    print(f"run {run}/{runs}  {name:<13} {mode:<7} {s.rps:9.0f} req/s  p50 {p50} ms  "
          f"p99 {p99} ms{'' if ok else '  (unexpected statuses!)'}", flush=True)


def _prepare(url: str, prefix: str, name: str) -> None:
    for group in ("relock", "full"):
        status = post(url, "pre-reboot", "holder", prefix + group)
        if status != 200:
            raise RuntimeError(f"{name}: setup pre-reboot got {status}")


def measure(a: argparse.Namespace) -> Results:
    """Each lockd measurement is paired with a bare one taken just before it.

    The bare server stays up (idle, on the same CPU) for the whole run, so the ratio of a
    pair compares two measurements seconds apart: load from other processes on a shared
    machine moves both, and the ratio much less than either.
    """
    res = Results()
    for run in range(1, a.runs + 1):
        with tempfile.TemporaryDirectory(prefix="lockd-bench-bare-") as bare_tmp:
            bare = Bare(Path(bare_tmp), a.server_cpus)
            bare_url = bare.start()
            try:
                prefix = f"b{run}x{int(time.time()) % 100000}-"
                _prepare(bare_url, prefix, "bare")
                wrk(bare_url, "relock", prefix, a.warmup, a.connections, a.load_cpus)
                rows = [(name, None, ()) for name in a.targets if name != "bare"]
                for name, tree, extra in rows + a.extra_rows:
                    if not available(name):
                        print(f"{name}: backend not available", flush=True)
                        continue
                    if a.workers > 1 and name.removesuffix("-noview") != "memory" \
                            and tree is None and not extra:  # memory:// takes one worker
                        _measure_workers(a, res, run, name, bare_url, prefix)
                    else:
                        _measure_backend(a, res, run, name, bare_url, prefix, extra, tree)
            finally:
                bare.stop()
    return res


def _measure_workers(a: argparse.Namespace, res: Results, run: int, name: str,
                     bare_url: str, prefix: str) -> None:
    """One worker and ``--workers N`` side by side (each on its own store server), measured
    back to back after the bare handler: the ratio of a pair is seconds apart."""
    with tempfile.TemporaryDirectory(prefix=f"lockd-bench-{name}-") as tmp:
        targets = [LockdTarget(name, Path(tmp), a.server_cpus),
                   LockdTarget(name, Path(tmp), a.server_cpus, workers=a.workers)]
        started: list[LockdTarget] = []
        try:
            urls = []
            for target in targets:
                urls.append(target.start())
                started.append(target)
                _prepare(urls[-1], prefix, target.name)
                wrk(urls[-1], "relock", prefix, a.warmup, a.connections, a.load_cpus)
            for mode in a.scenarios:
                b = wrk(bare_url, mode, prefix, a.duration, a.connections, a.load_cpus)
                _report(res, run, a.runs, "bare", mode, b)
                pair = []
                for target, url in zip(targets, urls, strict=True):
                    before = store_commands(target)
                    procs = process_tree(target.lockd.proc.pid)
                    cpu0 = cpu_seconds(procs)
                    s = wrk(url, mode, prefix, a.duration, a.connections, a.load_cpus)
                    _report(res, run, a.runs, target.name, mode, s)
                    used = cpu_seconds(procs) - cpu0  # every lockd process of the target
                    print(f"           {target.name:<13} lockd CPU {1e6 * used / s.requests:.0f} "
                          f"us/request, {used / a.duration:.2f} cores busy", flush=True)
                    res.lockd_cpu.setdefault(target.name, {}).setdefault(mode, []).append(
                        {"us_per_request": 1e6 * used / s.requests,
                         "cores": used / a.duration})
                    if before is not None:  # how many requests share one store command
                        after = store_commands(target) or {}
                        per = {k: round((after[k] - before.get(k, 0)) / s.requests, 3)
                               for k in after if after[k] != before.get(k, 0) and k != "info"}
                        print(f"           {target.name:<13} redis commands per request: {per}",
                              flush=True)
                        res.store_commands.setdefault(target.name, {}).setdefault(
                            mode, []).append(per)
                    res.ratios.setdefault(target.name, {}).setdefault(mode, []).append(
                        s.rps / b.rps)
                    pair.append(s.rps)
                res.worker_ratios.setdefault(targets[1].name, {}).setdefault(mode, []).append(
                    pair[1] / pair[0])
        except Exception as exc:  # a store that cannot start is reported, not fatal
            print(f"{name}: could not measure workers: {exc}", flush=True)
        finally:
            for target in started:
                target.stop()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a supervisor and its workers)."""
    found = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            for child in fh.read().split():
                found += process_tree(int(child))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (/proc/PID/stat)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def store_commands(target: LockdTarget) -> dict[str, int] | None:
    """Redis' own count of each command it ran (INFO commandstats), or None off Redis."""
    port = getattr(target.store, "port", None)
    if target.backend != "redis" or port is None or not shutil.which("redis-cli"):
        return None
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"],
                         capture_output=True, text=True, timeout=30).stdout
    return {m[1]: int(m[2]) for m in re.finditer(r"cmdstat_(\w+):calls=(\d+)", out)}


def _measure_backend(a: argparse.Namespace, res: Results, run: int, backend: str,
                     bare_url: str, prefix: str, extra: tuple[str, ...] = (),
                     tree: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix=f"lockd-bench-{backend}-") as tmp:
        target = LockdTarget(backend, Path(tmp), a.server_cpus, extra, tree)
        name = target.name
        try:
            url = target.start()
        except Exception as exc:  # a store that cannot start is reported, not fatal
            print(f"{name}: could not start: {exc}", flush=True)
            return
        try:
            _prepare(url, prefix, name)
            wrk(url, "relock", prefix, a.warmup, a.connections, a.load_cpus)
            for mode in a.scenarios:
                b = wrk(bare_url, mode, prefix, a.duration, a.connections, a.load_cpus)
                _report(res, run, a.runs, "bare", mode, b)
                s = wrk(url, mode, prefix, a.duration, a.connections, a.load_cpus)
                _report(res, run, a.runs, name, mode, s)
                res.ratios.setdefault(name, {}).setdefault(mode, []).append(s.rps / b.rps)
                if name == "etcd" and mode == "cycle":
                    raw = raw_etcd(target.store.endpoint, a.duration, a.connections,
                                   a.server_cpus)
                    print(f"run {run}/{a.runs}  etcd-raw compare-and-set {raw.rps:>8.0f} "
                          f"txn/s (lockd cycle: {s.rps / raw.rps:.2f} of it)", flush=True)
                    res.samples.setdefault("etcd-raw", {}).setdefault(mode, []).append(raw)
                    res.raw_ratios.append(s.rps / raw.rps)
        finally:
            target.stop()


def raw_etcd(endpoint: str, seconds: float, conns: int, cpus: str | None) -> Sample:
    """The bare compare-and-set rate through etcd's JSON gateway (bench/raw_etcd.py, a bare
    aiohttp client), in place of lockd on the server CPU."""
    argv = [sys.executable, "-m", "bench.raw_etcd", endpoint, "--duration", str(seconds),
            "--connections", str(conns)]
    if cpus and shutil.which("taskset"):
        argv = ["taskset", "-c", cpus, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120)
    doc = json.loads(out.stdout)
    return Sample(rps=doc["rps"], requests=doc["requests"], non2xx=0, p50_ms=None,
                  p99_ms=None)


def table(res: Results) -> str:
    width = max([14, *(len(n) + 1 for n in res.samples)])
    head = f"{'target':<{width}}" + "".join(f"{m + ' req/s':>15}{'x bare':>8}" for m in SCENARIOS)
    lines = [head, "-" * len(head)]
    for name, by_mode in res.samples.items():
        row = f"{name:<{width}}"
        for mode in SCENARIOS:
            samples = by_mode.get(mode, [])
            rps = statistics.median(s.rps for s in samples) if samples else None
            ratios = res.ratios.get(name, {}).get(mode, [])
            ratio = "1.00" if name == "bare" else (
                f"{statistics.median(ratios):.2f}" if ratios else "-")
            row += f"{rps:>15.0f}" if rps is not None else f"{'-':>15}"
            row += f"{ratio:>8}"
        lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve-bare", type=int, metavar="PORT",
                   help="only serve the bare handler on this port (no measuring)")
    p.add_argument("--refuse", action="store_true",
                   help="with --serve-bare: answer every request 423 (a storm that never ends)")
    p.add_argument("--runs", type=int, default=3, help="repeat everything; medians reported")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of warm-up per target (whole seconds)")
    p.add_argument("--connections", type=int, default=16,
                   help="wrk threads = connections (one connection per thread)")
    p.add_argument("--backends", default="memory,sqlite,redis,etcd",
                   help="comma-separated subset of memory,sqlite,redis,redis-cluster,etcd,"
                        "etcd2, each also as NAME-noview")
    p.add_argument("--workers", type=int, default=1,
                   help="also measure each backend (but memory) with lockd serve --workers N, "
                   "right after its one worker, and report the ratio")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--extra-row", action="append", default=[],
                   metavar='"BACKEND[@CHECKOUT] FLAGS..."',
                   help="also measure lockd on BACKEND with these serve flags, e.g. "
                        '"memory --log-level warning", or the lockd of another checkout, '
                        '"memory@../main" (repeatable)')
    p.add_argument("--server-cpus", default="0", help="taskset CPUs for the server side")
    p.add_argument("--load-cpus", default="1", help="taskset CPUs for wrk")
    p.add_argument("--json", type=Path, default=Path("bench/out/throughput.json"))
    a = p.parse_args(argv)
    if a.serve_bare:
        serve_bare(a.serve_bare, a.refuse)
        return 0
    if not shutil.which("wrk"):
        print("bench.throughput needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        a.server_cpus = a.load_cpus = None
    a.targets = [b.strip() for b in a.backends.split(",") if b.strip()]
    a.extra_rows = []
    for row in a.extra_row:
        name, _, tree = row.split()[0].partition("@")
        if name.removesuffix("-noview") not in TARGETS[1:]:
            p.error(f"--extra-row: unknown backend {name}")
        if tree and not (Path(tree) / "lockd" / "__main__.py").is_file():
            p.error(f"--extra-row: {tree} has no lockd package")
        a.extra_rows.append((name, Path(tree) if tree else None, tuple(row.split()[1:])))
    a.scenarios = [m.strip() for m in a.scenarios.split(",") if m.strip() in SCENARIOS]
    print(f"throughput: {a.runs} run(s) x {a.duration:g}s per measurement, wrk "
          f"-t{a.connections} -c{a.connections}; server on CPU {a.server_cpus}, "
          f"wrk on CPU {a.load_cpus}", flush=True)
    res = measure(a)
    print()
    print(f"medians of {a.runs} run(s); 'x bare' = median ratio to the bare handler measured "
          "just before")
    print(table(res))
    if res.raw_ratios:
        print(f"etcd: lockd's grant+release requests/s = {statistics.median(res.raw_ratios):.2f}"
              f" of the raw gateway compare-and-set rate (each such request is one transaction)")
    for name, by_mode in res.worker_ratios.items():
        for mode, ratios in by_mode.items():
            print(f"{name} {mode}: {statistics.median(ratios):.2f}x one worker (median of "
                  f"{', '.join(f'{r:.2f}' for r in ratios)})")
    for line in res.anomalies:
        print("ANOMALY " + line)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({
        "runs": a.runs, "duration_s": a.duration, "connections": a.connections,
        "server_cpus": a.server_cpus, "load_cpus": a.load_cpus,
        "samples": {n: {m: [s.__dict__ for s in ss] for m, ss in bm.items()}
                    for n, bm in res.samples.items()},
        "ratios": res.ratios, "worker_ratios": res.worker_ratios,
        "store_commands": res.store_commands, "lockd_cpu": res.lockd_cpu,
        "anomalies": res.anomalies, "etcd_raw_ratios": res.raw_ratios,
    }, indent=2))
    return 1 if res.anomalies else 0


if __name__ == "__main__":
    raise SystemExit(main())
