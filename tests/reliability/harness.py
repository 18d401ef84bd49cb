"""The fault harness: K lockd replicas on one store, M FleetLock clients, faults on a seeded
schedule, and the recorded history checked afterwards.

    python -m tests.reliability.harness --backend redis --seed 7 --duration 60 \\
        --replicas 3 --clients 40 --report tests/reliability/REPORT.md

Every request's invocation, completion and answer is recorded from the clients' side
(bench.linearizability.HistoryRecorder) and then checked for:

- safety: linearizability of a counting semaphore with owned, recursive locks, per group;
  a request without a decided answer (timeout, reset, 503) may or may not have happened;
- durability: every acknowledged grant that no release may have ended is held at the end;
- liveness: once the last fault healed (plus the store's recovery grace), every client gets
  decided answers again within a bound.

Every replica runs a cooldown and stale marking, so its wall clock matters. Faults per
backend (``Cluster.faults``): SIGKILL and restart of a replica, and one replica's wall clock
jumping 3 hours ahead and back (libfaketime), everywhere; the store
restarted or hung (SIGSTOP/SIGCONT) on Redis; one etcd member lost, then a majority, on a
three-member cluster; on sqlite a replica killed mid-write and a foreign process holding the
write lock; and network faults between lockd and its store through the harness's own TCP
proxy (latency, drops, a black hole, resets mid-response). ``unshared`` is the negative
control: replicas on their own ``memory://`` stores, which must be reported unsafe.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.linearizability import HistoryRecorder, Operation, check, check_durability
from bench.procs import Lockd, MissingBinary, free_port
from bench.servers import EtcdCluster, RedisServer

HEADERS = {"fleet-lock-protocol": "true"}
BACKENDS = ("sqlite", "redis", "etcd", "unshared")
#: Where Debian's faketime package puts the library that moves a process's wall clock.
LIBFAKETIME = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
#: The policy every replica runs, so that wall-clock time matters to its decisions.
POLICY = ("--set", "lock.cooldown=300ms", "--set", "lock.stale_after=30s")


def libfaketime() -> Path:
    if not LIBFAKETIME:
        raise MissingBinary("libfaketime is not installed (apt-get install faketime; "
                            "`make test` does it)")
    return LIBFAKETIME[0]


@dataclass
class Options:
    backend: str = "sqlite"
    seed: int = 1
    duration: float = 20.0
    replicas: int = 3
    clients: int = 24
    groups: int = 2
    slots: int = 2
    #: A client gives up on a request after this long: its outcome is then unknown.
    request_timeout: float = 2.0
    #: After the last fault heals: time the store may take to recover, then the bound
    #: within which every client must be answered again.
    grace: float = 3.0
    liveness_bound: float = 8.0


@dataclass
class Fault:
    name: str
    inject: Callable[[], None]
    heal: Callable[[], None]
    length: float


@dataclass
class Report:
    backend: str
    seed: int
    duration: float
    replicas: int
    clients: int
    ops: int = 0
    grants: int = 0
    faults: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    undecided_groups: list[str] = field(default_factory=list)
    lost_holders: list[str] = field(default_factory=list)
    unavailable_during_faults: int = 0
    unknown: int = 0
    slowest_answer: float = 0.0
    liveness_gaps: dict[str, float] = field(default_factory=dict)
    liveness_ok: bool = True

    @property
    def ok(self) -> bool:
        return not self.violations and not self.lost_holders and self.liveness_ok

    def as_json(self) -> dict[str, Any]:
        doc = dict(vars(self))
        doc["ok"] = self.ok
        doc["slowest_liveness_gap"] = max(self.liveness_gaps.values(), default=0.0)
        doc.pop("liveness_gaps")
        return doc


class Cluster:
    """The store and the replicas of one run; every process started here is stopped here."""

    def __init__(self, opts: Options, workdir: Path) -> None:
        self.opts, self.workdir = opts, workdir
        self.replicas: list[Lockd] = []
        self.ports: list[tuple[int, int]] = []
        self.store: Any = None
        self.proxy: Any = None
        self._lock_holder: threading.Thread | None = None
        # Each replica's wall clock, moved at run time through libfaketime's timestamp file
        # (its monotonic clock is left alone: the event loop's timers keep working).
        self.clocks = [workdir / f"clock{i}" for i in range(opts.replicas)]

    # store

    def start(self) -> None:
        backend = self.opts.backend
        if backend == "redis":
            self.store = RedisServer(self.workdir / "redis").start()
            self.proxy = _proxy_to(self.store.port)
            url = f"redis://127.0.0.1:{self.proxy.port}/0?timeout=1"
        elif backend == "etcd":
            self.store = EtcdCluster(self.workdir / "etcd").start()
            url = f"etcd://{self.store.endpoints}?timeout=1"
        elif backend == "sqlite":
            url = f"sqlite://{self.workdir / 'shared.db'}?busy_timeout=1"
        elif backend == "unshared":
            url = "memory://"
        else:
            raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
        self.backend_url = url
        for i in range(self.opts.replicas):
            self.ports.append((free_port(), free_port()))
            self.replicas.append(self._replica(i))
            self.replicas[i].start()

    def _replica(self, i: int) -> Lockd:
        port, admin = self.ports[i]
        if not self.clocks[i].exists():
            self.clocks[i].write_text("+0\n")
        env = {
            "LD_PRELOAD": str(libfaketime()),
            "FAKETIME_TIMESTAMP_FILE": str(self.clocks[i]),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
        return Lockd(
            self.workdir, "--backend", self.backend_url, "--listen", f"127.0.0.1:{port}",
            "--admin-listen", f"127.0.0.1:{admin}", "--default-slots", str(self.opts.slots),
            "--set", "storage.timeout_s=1.5", "--log-level", "warning", *POLICY,
            env=env, name=f"replica{i}",
        )

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p, _ in self.ports]

    def stop(self) -> None:
        for r in self.replicas:
            r.stop()
        if self.proxy is not None:
            self.proxy.stop()
        if self.store is not None:
            self.store.stop()

    # faults

    def faults(self, rng: random.Random) -> list[Fault]:
        faults = [self._kill_replica(rng), self._clock_jump(rng)]
        if self.opts.backend == "redis":
            faults += [self._signal_store("redis hung (SIGSTOP)", signal.SIGSTOP, signal.SIGCONT),
                       Fault("redis restarted", self.store.stop, self.store.start, 1.0)]
            faults += [self._network(mode) for mode in ("latency", "drop", "blackhole",
                                                         "reset_mid_response")]
        elif self.opts.backend == "etcd":
            members = self.store.members
            faults += [
                Fault("etcd: one member lost", members[0].stop, lambda: members[0].start(), 2.0),
                Fault("etcd: majority lost", lambda: [m.stop() for m in members[:2]],
                      lambda: [m.start() for m in members[:2]], 2.0),
            ]
        elif self.opts.backend == "sqlite":
            faults += [self._kill_replica(rng, "replica killed mid-write"),
                       Fault("foreign process holds the write lock", self._hold_write_lock,
                             self._release_write_lock, 2.0)]
        return faults

    def _kill_replica(self, rng: random.Random, name: str = "replica SIGKILLed") -> Fault:
        i = rng.randrange(len(self.replicas))

        def inject() -> None:
            self.replicas[i].kill()

        def heal() -> None:
            self.replicas[i] = self._replica(i)
            self.replicas[i].start()

        return Fault(f"{name} (replica{i}), restarted", inject, heal, 1.5)

    def _clock_jump(self, rng: random.Random) -> Fault:
        """One replica's wall clock jumps 3 hours ahead, then back: grants it records are in
        the others' future, and its cooldown and stale marks see other replicas' past."""
        i = rng.randrange(len(self.replicas))
        clock = self.clocks[i]
        return Fault(f"replica{i}'s clock jumps +3h, then back", lambda: clock.write_text("+3h\n"),
                     lambda: clock.write_text("+0\n"), 2.0)

    def _signal_store(self, name: str, on: int, off: int) -> Fault:
        return Fault(name, lambda: self.store.proc.signal(on),
                     lambda: self.store.proc.signal(off), 2.0)

    def _network(self, mode: str) -> Fault:
        return Fault(f"network to the store: {mode}", lambda: _set_mode(self.proxy, mode),
                     lambda: _set_mode(self.proxy, "pass"), 1.5)

    def _hold_write_lock(self) -> None:
        started = threading.Event()
        self._release = threading.Event()

        def hold() -> None:
            conn = sqlite3.connect(self.workdir / "shared.db", timeout=5, isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            started.set()
            self._release.wait(10)
            conn.execute("ROLLBACK")
            conn.close()

        self._lock_holder = threading.Thread(target=hold, daemon=True)
        self._lock_holder.start()
        started.wait(5)

    def _release_write_lock(self) -> None:
        self._release.set()
        if self._lock_holder is not None:
            self._lock_holder.join(10)

    # the end state

    async def final_holders(self, session: aiohttp.ClientSession,
                            groups: list[str]) -> dict[str, list[str]]:
        """The holders every group has at the end, as a replica reads them from the store
        (unshared: the union over replicas, each its own store)."""
        found: dict[str, set[str]] = {g: set() for g in groups}
        replicas = self.ports if self.opts.backend == "unshared" else self.ports[:1]
        for _, admin in replicas:
            for g in groups:
                url = f"http://127.0.0.1:{admin}/api/v1/groups/{g}"
                for _ in range(20):  # the store may still be recovering
                    try:
                        async with session.get(url) as resp:
                            if resp.status == 404:
                                break
                            if resp.status == 200:
                                doc = await resp.json()
                                found[g].update(h["id"] for h in doc["holders"])
                                break
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    await asyncio.sleep(0.5)
                else:
                    raise RuntimeError(f"no replica answered for group {g} at the end")
        return {g: sorted(ids) for g, ids in found.items()}


def _proxy_to(port: int) -> Any:
    from tests.reliability.faultproxy import ThreadedProxy

    return ThreadedProxy("127.0.0.1", port).start()


def _set_mode(proxy: Any, mode: str) -> None:
    if mode == "latency":
        proxy.set_mode("latency", 0.4)
    else:
        proxy.set_mode(mode)


async def _clients(opts: Options, cluster: Cluster, rec: HistoryRecorder, deadline: float,
                   rng: random.Random, statuses: list[tuple[float, int | None]],
                   answers: dict[str, list[tuple[float, float]]]) -> None:
    groups = [f"g{i}" for i in range(opts.groups)]
    timeout = aiohttp.ClientTimeout(total=opts.request_timeout)

    async def post(session: aiohttp.ClientSession, client: str, op: str, group: str) -> int | None:
        kind = "lock" if op == "pre-reboot" else "unlock"
        url = rng.choice(cluster.urls) + f"/v1/{op}"
        token = rec.invoke(kind, group, client, process=client)
        started = time.monotonic()
        status: int | None = None
        try:
            body = {"client_params": {"id": client, "group": group}}
            async with session.post(url, json=body, headers=HEADERS) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            status = None
        finally:
            rec.complete_status(token, status)
        now = time.monotonic()
        statuses.append((started, status))
        if status is not None and status != 503:
            answers[client].append((started, now))
        return status

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        name = f"node{n}"
        while time.monotonic() < deadline:
            group = rng.choice(groups)
            while await post(session, name, "pre-reboot", group) != 200:
                if time.monotonic() >= deadline:
                    return
                await asyncio.sleep(rng.uniform(0.02, 0.1))
            await asyncio.sleep(rng.uniform(0.05, 0.3))  # "rebooting"
            # A node that reboots always comes back and says so until it is heard.
            while await post(session, name, "steady-state", group) != 200:
                await asyncio.sleep(rng.uniform(0.02, 0.1))
                if time.monotonic() >= deadline + 30:
                    return

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session, n) for n in range(opts.clients)))


async def _schedule(faults: list[Fault], rng: random.Random, start: float, opts: Options,
                    windows: list[tuple[float, float, str]]) -> None:
    """Each fault once, in a seeded order, spread over the first 70 % of the run."""
    rng.shuffle(faults)
    budget = opts.duration * 0.7
    gap = max(0.2, (budget - sum(f.length for f in faults)) / (len(faults) + 1))
    at = start + gap
    for fault in faults:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        begun = time.monotonic()
        await asyncio.to_thread(fault.inject)
        await asyncio.sleep(fault.length)
        await asyncio.to_thread(fault.heal)
        windows.append((begun, time.monotonic(), fault.name))
        at = time.monotonic() + gap


async def run(opts: Options, workdir: Path) -> Report:
    rng = random.Random(opts.seed)
    report = Report(opts.backend, opts.seed, opts.duration, opts.replicas, opts.clients)
    cluster = Cluster(opts, workdir)
    cluster.start()
    rec = HistoryRecorder()
    statuses: list[tuple[float, int | None]] = []
    answers: dict[str, list[tuple[float, float]]] = {f"node{n}": [] for n in range(opts.clients)}
    windows: list[tuple[float, float, str]] = []
    try:
        start = time.monotonic()
        deadline = start + opts.duration
        faults = cluster.faults(rng) if opts.backend != "unshared" else []
        await asyncio.gather(
            _clients(opts, cluster, rec, deadline, random.Random(opts.seed + 1), statuses,
                     answers),
            _schedule(faults, random.Random(opts.seed + 2), start, opts, windows),
        )
        groups = [f"g{i}" for i in range(opts.groups)]
        async with aiohttp.ClientSession() as session:
            final = await cluster.final_holders(session, groups)
    finally:
        cluster.stop()
    history = rec.history()
    _judge(report, opts, history, final, statuses, answers, windows, deadline)
    return report


def _judge(report: Report, opts: Options, history: list[Operation],
           final: dict[str, list[str]], statuses: list[tuple[float, int | None]],
           answers: dict[str, list[tuple[float, float]]],
           windows: list[tuple[float, float, str]], deadline: float) -> None:
    report.ops = len(history)
    report.grants = sum(op.kind == "lock" and op.result == "ok" for op in history)
    report.unknown = sum(op.result == "unknown" for op in history)
    report.faults = [name for _, _, name in windows]
    safety = check(history, opts.slots)
    for group, verdict in sorted(safety.groups.items()):
        if verdict.verdict == "violation":
            report.violations.append(f"{group}: {verdict.explain()}")
        elif verdict.verdict == "undecided":
            report.undecided_groups.append(group)
    durability = check_durability(history, final)
    report.lost_holders = [f"{op.group}/{op.node}" for op in durability.lost]
    report.unavailable_during_faults = sum(
        1 for t, s in statuses if s in (None, 503) and any(a <= t <= b for a, b, _ in windows)
    )
    report.slowest_answer = max(
        (op.complete - op.invoke for op in history if op.complete is not None), default=0.0
    )
    healed = max((b for _, b, _ in windows), default=0.0) + opts.grace
    for client, seen in answers.items():
        after = [done for sent, done in seen if sent >= healed]
        if healed >= deadline:
            continue  # no time left after the last fault: nothing to judge
        first = min(after, default=None)
        gap = (first - healed) if first is not None else deadline - healed
        report.liveness_gaps[client] = round(gap, 3)
        if first is None and deadline - healed > opts.liveness_bound:
            report.liveness_ok = False
        elif first is not None and gap > opts.liveness_bound:
            report.liveness_ok = False


def render(reports: list[Report], command: str) -> str:
    lines = [
        "# Fault harness report",
        "",
        "Regenerated by `tests/reliability/harness.py`; the command:",
        "",
        f"    {command}",
        "",
        "| backend | seed | s | replicas | clients | ops | grants | faults | violations | "
        "lost holders | undecided 503/no answer in faults | slowest answer (s) | live |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r.backend} | {r.seed} | {r.duration:g} | {r.replicas} | {r.clients} | {r.ops} | "
            f"{r.grants} | {len(r.faults)} | {len(r.violations)} | {len(r.lost_holders)} | "
            f"{r.unavailable_during_faults} | {r.slowest_answer:.2f} | "
            f"{'yes' if r.liveness_ok else 'NO'} |"
        )
    lines += ["", "Faults injected:", ""]
    for r in reports:
        lines.append(f"- {r.backend}: {'; '.join(r.faults) or 'none (negative control)'}")
    for r in reports:
        for v in r.violations:
            lines += ["", f"Violation on {r.backend}:", "", "```", v, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", action="append", choices=BACKENDS,
                   help="repeatable; default: sqlite, redis and etcd")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=20.0, help="seconds per backend")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--clients", type=int, default=24)
    p.add_argument("--report", type=Path, help="write the Markdown report here")
    p.add_argument("--json", action="store_true", help="print each report as JSON")
    args = p.parse_args(argv)
    import tempfile

    reports = []
    for backend in args.backend or ["sqlite", "redis", "etcd"]:
        opts = Options(backend=backend, seed=args.seed, duration=args.duration,
                       replicas=args.replicas, clients=args.clients)
        print(f"harness: {backend}: {opts.replicas} replicas, {opts.clients} clients, "
              f"{opts.duration:g} s, seed {opts.seed}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f"lockd-harness-{backend}-") as tmp:
            report = asyncio.run(run(opts, Path(tmp)))
        reports.append(report)
        print(json.dumps(report.as_json()) if args.json else
              f"harness: {backend}: {'OK' if report.ok else 'FAILED'}: {report.ops} ops, "
              f"{len(report.faults)} faults, {len(report.violations)} violations, "
              f"{len(report.lost_holders)} lost holders", flush=True)
    if args.report:
        command = "python -m tests.reliability.harness " + " ".join(argv or sys.argv[1:])
        args.report.write_text(render(reports, command.strip()))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
