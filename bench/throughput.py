"""Raw requests/s of lockd's hot paths on every backend, against a bare aiohttp ceiling.

    .venv/bin/python -m bench.throughput [--runs 3] [--duration 5] [--backends memory,sqlite]
        [--workers 2] [--scenarios refuse] [--wrk-threads 1]

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
them back to back after the bare handler and ``bare-wN``, the bare handler as N processes
on one port (SO_REUSEPORT), the most N processes can do on this machine: the median of
the pairs' ratios N/1 is printed for lockd and for the bare handler side by side. Each of
these measurements also records CPU, per request and in cores busy: the server's (the
processes that answer: the bare processes, lockd's one worker, or a supervisor's
children), the supervisor's, the store server's, and wrk's own (the load generator shares
the cores); on Redis, the Redis commands per request (INFO commandstats).

``--wrk-threads T`` runs wrk with T threads for the connections (default one thread per
connection); cycle needs one connection per thread and refuses fewer.

Sharing the 2 cores: the server under test (and its redis-server or etcd) is pinned to
CPU 0 and wrk to CPU 1 with taskset; ``--server-cpus``/``--load-cpus`` change that.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import resource
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


def serve_bare(port: int, refuse: bool = False, reuse_port: bool = False) -> None:
    """Serve ``bare_app`` on ``port``; ``reuse_port`` (SO_REUSEPORT) lets several such
    processes share the port, the kernel spreading connections over them as it does over
    lockd's workers."""
    from aiohttp import web

    try:
        import uvloop  # lockd uses it when installed, so the ceiling does too

        loop_runner: Callable[..., Any] | None = uvloop.run
    except ImportError:
        loop_runner = None

    async def main() -> None:
        runner = web.AppRunner(bare_app(refuse), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, reuse_port=reuse_port or None).start()
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
    """The bare handler; ``processes`` > 1: that many processes on one port (SO_REUSEPORT),
    named ``bare-wN``, the ceiling of ``lockd serve --workers N`` on this machine."""

    def __init__(self, tmp: Path, cpus: str | None, processes: int = 1,
                 wrapper: tuple[str, ...] = (), start_timeout: float = 15.0,
                 stop_timeout: float = 10.0) -> None:
        """``wrapper``, ``start_timeout``, ``stop_timeout``: as :class:`LockdTarget`'s."""
        self.tmp, self.cpus, self.processes = tmp, cpus, processes
        self.wrapper, self.start_timeout = wrapper, start_timeout
        self.stop_timeout = stop_timeout
        self.name = "bare" if processes == 1 else f"bare-w{processes}"
        self.procs: list[Any] = []

    def start(self) -> str:
        """The processes' URL; on a failure every process started is stopped."""
        from bench.procs import Proc, free_port

        port = free_port()
        argv = [*self.wrapper, sys.executable, "-m", "bench.throughput", "--serve-bare",
                str(port)]
        if self.processes > 1:
            argv.append("--reuse-port")
        try:
            for i in range(self.processes):
                proc = Proc(argv, self.tmp / f"{self.name}-{i}.log", cwd=Path.cwd()).start()
                self.procs.append(proc)
                # Each one's own line, not a connection: once one listens, the port answers.
                _wait_for_line(proc, "bare listening on ", self.start_timeout)
                pin(proc.pid, self.cpus)
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop(self.stop_timeout)


def _wait_for_line(proc: Any, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        if proc.proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.proc.returncode}: {proc.output()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {text!r} after {timeout}s: {proc.output()[-2000:]}")
        time.sleep(0.05)


class LockdTarget(Target):
    """lockd on one backend, with its default settings plus ``extra`` flags; redis-server
    or etcd started beside it when needed.

    ``workers`` > 1: ``lockd serve --workers N``, named ``<backend>-wN``; the supervisor is
    started under ``taskset`` so that every worker it starts inherits the server CPUs.
    """

    def __init__(self, name: str, tmp: Path, cpus: str | None, extra: tuple[str, ...] = (),
                 tree: Path | None = None, workers: int = 1,
                 wrapper: tuple[str, ...] = (), start_timeout: float = 20.0,
                 stop_timeout: float = 10.0) -> None:
        """``wrapper``: a command lockd runs under (bench.instructions: valgrind), given
        ``start_timeout`` seconds to say it serves and ``stop_timeout`` to exit."""
        self.backend, self.extra, self.tree, self.workers = name, extra, tree, workers
        self.wrapper, self.start_timeout = wrapper, start_timeout
        self.stop_timeout = stop_timeout
        self.lockd: Any = None
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
        wrapper += self.wrapper
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
        self.lockd = Lockd(self.tmp, *args, tree=self.tree, wrapper=wrapper)
        self.lockd.start(self.start_timeout)
        pin(self.lockd.proc.pid, self.cpus)
        return self.lockd.url.rstrip("/")

    def stop(self) -> None:
        """Stop what started (a start that failed half-way included)."""
        try:
            if self.lockd is not None and self.lockd.proc is not None:
                self.lockd.proc.stop(self.stop_timeout)
        finally:
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
    #: CPU seconds wrk itself used (user + system), and the wall time of its run
    load_cpu_s: float | None = None
    wall_s: float | None = None


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
        cpus: str | None, script: Path = LUA, extra: tuple[str, ...] = (),
        threads: int | None = None) -> Sample:
    """One wrk run of ``script`` (default bench/throughput.lua) with the arguments
    ``mode prefix *extra``; ``threads`` wrk threads (default: one per connection).

    The sample carries wrk's own CPU time: the growth of this process's RUSAGE_CHILDREN
    over the run, which is wrk's alone (taskset execs it; nothing else is reaped meanwhile).
    """
    # wrk takes whole seconds only.
    argv = ["wrk", "-t", str(threads or conns), "-c", str(conns),
            "-d", f"{max(1, round(seconds))}s",
            "--latency", "-s", str(script), url, "--", mode, prefix, *extra]
    if cpus and shutil.which("taskset"):
        argv = ["taskset", "-c", cpus, *argv]
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    run = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    wall, after = time.monotonic() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise RuntimeError(f"wrk failed: {run.stderr or run.stdout}")
    sample = parse_wrk(run.stdout)
    sample.load_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sample.wall_s = wall
    return sample


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
    """relock and cycle answer 200 only; refuse answers 423 only (the bare handler, in one
    process or N: 200)."""
    if s.errors:
        return False
    if mode == "refuse" and not re.fullmatch(r"bare(-w\d+)?", target):
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
    #: with --workers: ``bare-wN`` requests/s over the one-process bare handler measured
    #: just before it, per backend (the pair taken before that backend's lockd pair)
    bare_worker_ratios: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: with --workers: per target, mode and run, the CPU of the server (``server``: the
    #: processes that answer, a supervisor's children; ``supervisor``; ``store``: its
    #: redis-server or etcd) and of wrk (``load``), each as us per request and cores busy
    cpu: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)


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
    machine moves both, and the ratio much less than either. With ``--workers N`` the bare
    handler as N processes on one port (``bare-wN``) stays up beside it.
    """
    res = Results()
    for run in range(1, a.runs + 1):
        with tempfile.TemporaryDirectory(prefix="lockd-bench-bare-") as bare_tmp:
            bare = Bare(Path(bare_tmp), a.server_cpus)
            bare_n = Bare(Path(bare_tmp), a.server_cpus, a.workers) if a.workers > 1 else None
            try:
                bare_url = bare.start()
                prefix = f"b{run}x{int(time.time()) % 100000}-"
                _prepare(bare_url, prefix, "bare")
                wrk(bare_url, "relock", prefix, a.warmup, a.connections, a.load_cpus,
                    threads=a.wrk_threads)
                if bare_n is not None:
                    wrk(bare_n.start(), "relock", prefix, a.warmup, a.connections,
                        a.load_cpus, threads=a.wrk_threads)
                rows = [(name, None, ()) for name in a.targets if name != "bare"]
                for name, tree, extra in rows + a.extra_rows:
                    if not available(name):
                        print(f"{name}: backend not available", flush=True)
                        continue
                    if bare_n is not None and name.removesuffix("-noview") != "memory" \
                            and tree is None and not extra:  # memory:// takes one worker
                        _measure_workers(a, res, run, name, bare, bare_n, prefix)
                    else:
                        _measure_backend(a, res, run, name, bare_url, prefix, extra, tree)
            finally:
                if bare_n is not None:
                    bare_n.stop()
                bare.stop()
    return res


def measure_cpu(a: argparse.Namespace, url: str, mode: str, prefix: str,
                groups: dict[str, list[int]]) -> tuple[Sample, dict[str, float]]:
    """One wrk run, with the CPU each group of processes (``server``, ``supervisor``,
    ``store``) and wrk (``load``) used over it: us per request and cores busy."""
    before = {k: cpu_seconds(pids) for k, pids in groups.items()}
    s = wrk(url, mode, prefix, a.duration, a.connections, a.load_cpus, threads=a.wrk_threads)
    used = {k: cpu_seconds(pids) - before[k] for k, pids in groups.items()}
    used["load"] = s.load_cpu_s or 0.0
    wall = s.wall_s or a.duration
    cpu: dict[str, float] = {}
    for k, seconds in used.items():
        cpu[f"{k}_us_per_request"] = 1e6 * seconds / max(1, s.requests)
        cpu[f"{k}_cores"] = seconds / wall
    return s, cpu


def cpu_line(name: str, cpu: dict[str, float]) -> str:
    parts = [f"{k}: {cpu[k + '_us_per_request']:.0f} us/request, {cpu[k + '_cores']:.2f} cores"
             for k in ("server", "supervisor", "store", "load") if k + "_cores" in cpu]
    return f"           {name:<13} CPU " + "; ".join(parts).replace("load:", "wrk:")


def _measure_cpu_and_report(a: argparse.Namespace, res: Results, run: int, name: str,
                            url: str, mode: str, prefix: str,
                            groups: dict[str, list[int]]) -> Sample:
    s, cpu = measure_cpu(a, url, mode, prefix, groups)
    _report(res, run, a.runs, name, mode, s)
    print(cpu_line(name, cpu), flush=True)
    res.cpu.setdefault(name, {}).setdefault(mode, []).append(cpu)
    return s


def lockd_groups(target: LockdTarget) -> dict[str, list[int]]:
    """The processes of a lockd target by role: one worker is ``server``; with
    ``--workers N`` the supervisor's children are ``server`` and it is ``supervisor``."""
    pid = target.lockd.proc.pid
    groups = {"server": process_tree(pid)}
    if target.workers > 1:
        groups = {"server": groups["server"][1:], "supervisor": [pid]}
    store = getattr(target.store, "proc", None)
    if store is not None:
        groups["store"] = [store.pid]
    elif target.store is not None and hasattr(target.store, "nodes"):
        groups["store"] = [node.proc.pid for node in target.store.nodes]
    return groups


def _measure_workers(a: argparse.Namespace, res: Results, run: int, name: str,
                     bare: Bare, bare_n: Bare, prefix: str) -> None:
    """One worker and ``--workers N`` side by side (each on its own store server), measured
    back to back after the bare handler and the bare handler as N processes: each N/1
    ratio is of two measurements seconds apart."""
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
                wrk(urls[-1], "relock", prefix, a.warmup, a.connections, a.load_cpus,
                    threads=a.wrk_threads)
            for mode in a.scenarios:
                b = _measure_cpu_and_report(a, res, run, "bare", bare.url, mode, prefix,
                                            {"server": bare.pids})
                bn = _measure_cpu_and_report(a, res, run, bare_n.name, bare_n.url, mode,
                                             prefix, {"server": bare_n.pids})
                res.bare_worker_ratios.setdefault(name, {}).setdefault(mode, []).append(
                    bn.rps / b.rps)
                res.ratios.setdefault(bare_n.name, {}).setdefault(mode, []).append(
                    bn.rps / b.rps)
                pair = []
                for target, url in zip(targets, urls, strict=True):
                    before = store_commands(target)
                    s = _measure_cpu_and_report(a, res, run, target.name, url, mode, prefix,
                                                lockd_groups(target))
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


def worker_summary(res: Results, workers: int) -> list[str]:
    """Per backend and mode: lockd's N/1 beside the bare handler's N/1 in the same runs."""
    lines = []
    for name, by_mode in res.worker_ratios.items():
        backend = name.rsplit(f"-w{workers}", 1)[0]
        for mode, ratios in by_mode.items():
            bare = res.bare_worker_ratios.get(backend, {}).get(mode, [])
            line = (f"{name} {mode}: {statistics.median(ratios):.2f}x one worker (median of "
                    f"{', '.join(f'{r:.2f}' for r in ratios)})")
            if bare:
                line += (f"; bare-w{workers}: {statistics.median(bare):.2f}x one bare process "
                         f"(median of {', '.join(f'{r:.2f}' for r in bare)})")
            lines.append(line)
    return lines


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
            target.stop()  # its store server, if that one did start
            return
        try:
            _prepare(url, prefix, name)
            wrk(url, "relock", prefix, a.warmup, a.connections, a.load_cpus,
                threads=a.wrk_threads)
            for mode in a.scenarios:
                b = wrk(bare_url, mode, prefix, a.duration, a.connections, a.load_cpus,
                        threads=a.wrk_threads)
                _report(res, run, a.runs, "bare", mode, b)
                s = wrk(url, mode, prefix, a.duration, a.connections, a.load_cpus,
                        threads=a.wrk_threads)
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
    p.add_argument("--reuse-port", action="store_true",
                   help="with --serve-bare: listen with SO_REUSEPORT (several processes on "
                        "one port)")
    p.add_argument("--runs", type=int, default=3, help="repeat everything; medians reported")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of warm-up per target (whole seconds)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections")
    p.add_argument("--wrk-threads", type=int, default=None, metavar="T",
                   help="wrk threads (default: one per connection); fewer than the "
                        "connections only without the cycle scenario")
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
        serve_bare(a.serve_bare, a.refuse, a.reuse_port)
        return 0
    a.scenarios = [m.strip() for m in a.scenarios.split(",") if m.strip() in SCENARIOS]
    threads = a.wrk_threads
    if threads is not None and not 1 <= threads <= a.connections:
        p.error(f"--wrk-threads must be 1..{a.connections} (the connections)")
    if threads is not None and threads < a.connections and "cycle" in a.scenarios:
        # bench/throughput.lua: a thread's connections would share its one group, and a
        # grant and its release could then reach the server out of order.
        p.error("--wrk-threads fewer than --connections cannot measure cycle "
                "(--scenarios relock,refuse)")
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
    print(f"throughput: {a.runs} run(s) x {a.duration:g}s per measurement, wrk "
          f"-t{a.wrk_threads or a.connections} -c{a.connections}; server on CPU {a.server_cpus}, "
          f"wrk on CPU {a.load_cpus}", flush=True)
    res = measure(a)
    print()
    print(f"medians of {a.runs} run(s); 'x bare' = median ratio to the bare handler measured "
          "just before")
    print(table(res))
    if res.raw_ratios:
        print(f"etcd: lockd's grant+release requests/s = {statistics.median(res.raw_ratios):.2f}"
              f" of the raw gateway compare-and-set rate (each such request is one transaction)")
    for line in worker_summary(res, a.workers):
        print(line)
    for line in res.anomalies:
        print("ANOMALY " + line)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({
        "runs": a.runs, "duration_s": a.duration, "connections": a.connections,
        "wrk_threads": a.wrk_threads or a.connections, "workers": a.workers,
        "server_cpus": a.server_cpus, "load_cpus": a.load_cpus,
        "samples": {n: {m: [s.__dict__ for s in ss] for m, ss in bm.items()}
                    for n, bm in res.samples.items()},
        "ratios": res.ratios, "worker_ratios": res.worker_ratios,
        "store_commands": res.store_commands, "cpu": res.cpu,
        "bare_worker_ratios": res.bare_worker_ratios,
        "anomalies": res.anomalies, "etcd_raw_ratios": res.raw_ratios,
    }, indent=2))
    return 1 if res.anomalies else 0


if __name__ == "__main__":
    raise SystemExit(main())
