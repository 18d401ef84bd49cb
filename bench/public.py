"""Public mode's cost per request: 1 tenant against 100,000, the HMAC, the limiter, and
self-hosted mode, on sqlite and on Redis, in one run.

    .venv/bin/python -m bench.public [--runs 3] [--duration 5] [--tenants 100000]
        [--stores sqlite,redis] [--targets one,many,nolimit,aside,memory,self]

Every request is the holder of a slot asking again (``pre-reboot``, a re-lock: 200, one
fresh read, nothing written), sent by wrk (``bench/public.lua``, zincati's headers), one
connection per wrk thread and a group per connection where the groups are few, so that no
two connections share a group's round trips. Per store (sqlite, the default; Redis), four
lockd processes are up at once, pinned to the server CPU, and each run measures them one
after the other, seconds apart:

- ``one``: public mode, one tenant (one group per connection), on a store holding only it;
- ``many``: public mode, ``--tenants`` tenants each holding the slot of its group ``g``
  (written straight into the store through lockd's own ``Keys`` and ``TenantLayout``,
  group documents and sealed names, the way lockd writes them after a grant), each request
  for a tenant drawn at random;
- ``nolimit``: ``one``'s store and requests, through ``bench.unlimited`` (lockd with the
  limiter's checks replaced by a no-op): the limiter's share of a request;
- ``aside`` (Redis only): ``one``'s store and requests, with ``[public] limits_url`` on a
  redis-server of its own without AOF (``--appendonly no``): the limiter's counters off the
  store's durable Redis;
- ``memory`` (Redis only): the same with ``limits_url = "memory://"`` (per process);
- ``self``: self-hosted mode, the same request at ``/v1/pre-reboot``.

``--targets`` measures a subset (without ``many`` the tenants are neither written nor
swept).

Ratios are taken within a run (``many``/``one``: flat if near 1; ``one``/``nolimit``: what
the limiter leaves; ``aside``/``nolimit``: what it leaves with its counters aside;
``aside``/``one``: what moving them gains; ``memory``/``nolimit``: counting in process;
``one``/``self``: what public mode leaves), and medians reported. The limiter counts
every request but in ``nolimit`` and ``self``, at rates that never bind (wrk is one
address and one tenant sends thousands of requests a second). Before the runs, each
many-tenant lockd has every tenant asked once (the sweep; its requests/s is the cold
figure: the first request of a group in a process reads once more, to learn the group
exists; an aiohttp client sends it, as wrk cannot stop after N requests). Then,
in-process: the HMACs and secret check a request costs, and the limiter's two checks per
request on memory, on the store's Redis (AOF, ``appendfsync always``) and on a Redis
without AOF.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.procs import Lockd
from bench.throughput import Sample, pin, post, wrk

HERE = Path(__file__).resolve().parent
LUA = HERE / "public.lua"
PEPPER = "bench-public-pepper-" + "p" * 32
#: A rate that never binds: the limiter counts, and never refuses.
UNBOUND = "1000000000/minute"
TARGETS = ("one", "many", "nolimit", "aside", "memory", "self")
#: Targets that need a Redis store: on sqlite the counters are in memory already.
REDIS_ONLY = ("aside", "memory")


def public_env(**extra: str) -> dict[str, str]:
    env = {"LOCKD_PUBLIC__ENABLED": "true", "LOCKD_PUBLIC__PEPPER": PEPPER, **extra}
    for key in ("IP_RATE", "TENANT_RATE", "IP_CREATE_RATE", "IP_MISS_RATE"):
        env[f"LOCKD_PUBLIC__{key}"] = UNBOUND
    return env


# --- the many-tenant store, written directly -------------------------------------------------


async def populate(url: str, tokens: list[str], concurrency: int = 64) -> None:
    """Each tenant holding the one slot of its group ``g``, as lockd stores it after a
    grant: the group document, its sealed name, and the tenants counter."""
    from lockd.semaphore import Semaphore, apply_config, lock
    from lockd.store import open_store
    from lockd.tenancy import COUNT_KEY, NAMES_PREFIX, Keys, TenantLayout

    backend = open_store(url).backend
    await backend.open()
    keys, layout = Keys(PEPPER.encode()), TenantLayout()
    held, _ = lock(apply_config(Semaphore.new(1), 1), "holder", time.time())
    document = layout.encode(held, None)

    async def one(token: str) -> None:
        group = keys.group(token, "g")
        for key, value in ((layout.key(group), document),
                           (NAMES_PREFIX + group, keys.seal(token, "g"))):
            if not (await backend.compare_and_set(key, value, None)).stored:
                raise RuntimeError(f"populate: {key} already exists")

    try:
        for start in range(0, len(tokens), concurrency):
            await asyncio.gather(*(one(t) for t in tokens[start:start + concurrency]))
        count = json.dumps({"tenants": len(tokens)}).encode()
        await backend.compare_and_set(COUNT_KEY, count, None)
    finally:
        await backend.close()


async def sweep(base: str, tokens: list[str], connections: int) -> float:
    """Every tenant's holder asks once, over ``connections`` connections (an aiohttp
    client: wrk cannot stop after a number of requests); requests/s. A lower bound of the
    cold rate where this client, not lockd, is the bottleneck."""
    import aiohttp

    body = json.dumps({"client_params": {"id": "holder", "group": "g"}}).encode()
    headers = {"fleet-lock-protocol": "true", "accept": "*/*"}
    bad: list[int] = []

    async def worker(session: aiohttp.ClientSession, share: list[str]) -> None:
        for token in share:
            async with session.post(f"{base}/t/{token}/v1/pre-reboot", data=body,
                                    headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    bad.append(resp.status)

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session, tokens[i::connections])
                               for i in range(connections)))
    if bad:
        raise RuntimeError(f"sweep of {base}: {len(bad)} answers were not 200: {bad[:5]}")
    return len(tokens) / (time.perf_counter() - started)


# --- the servers -------------------------------------------------------------------------------


class Stack:
    """One store kind's four lockd processes (and their redis-servers)."""

    def __init__(self, kind: str, tmp: Path, a: argparse.Namespace) -> None:
        self.kind, self.tmp, self.a = kind, tmp, a
        self.stores: dict[str, Any] = {}
        self.targets = [t for t in a.targets if kind == "redis" or t not in REDIS_ONLY]
        self.lockds: list[Lockd] = []
        self.urls: dict[str, str] = {}
        self.cold: dict[str, float] = {}

    def _redis(self, name: str, appendonly: bool = True) -> str:
        from bench.servers import RedisServer

        server = RedisServer(self.tmp / f"redis-{name}", appendonly=appendonly).start()
        pin(server.proc.pid, self.a.server_cpus)  # type: ignore[union-attr]
        self.stores[name] = server
        return server.url

    def _store_url(self, name: str) -> tuple[str, str]:
        """(lockd's URL, the URL to populate through) for store ``name``."""
        if self.kind == "sqlite":
            path = self.tmp / f"{name}.db"
            return f"sqlite://{path}", f"sqlite://{path}?synchronous=off"
        url = self._redis(name)
        return url, url

    def _lockd(self, name: str, url: str, env: dict[str, str], module: str = "lockd") -> None:
        server = Lockd(self.tmp, "--backend", url, "--no-admin", "--default-slots", "1",
                       "--log-level", "warning", env=env, name=name, module=module).start()
        self.lockds.append(server)
        pin(server.proc.pid, self.a.server_cpus)  # type: ignore[union-attr]
        self.urls[name] = server.url.rstrip("/")

    def start(self, tokens: list[str], tokens_file: Path) -> None:
        one_url, _ = self._store_url("one")
        if "many" in self.targets:
            many_url, many_fill = self._store_url("many")
            started = time.monotonic()
            asyncio.run(populate(many_fill, tokens))
            print(f"{self.kind}: {len(tokens)} tenants written in "
                  f"{time.monotonic() - started:.1f}s", flush=True)
            self._lockd("many", many_url, public_env())
        # ``one`` always runs: the set-up grants below go through it.
        self._lockd("one", one_url, public_env())
        if "nolimit" in self.targets:
            self._lockd("nolimit", one_url, public_env(), module="bench.unlimited")
        if "aside" in self.targets:
            limits_url = self._redis("limits", appendonly=False)
            self._lockd("aside", one_url, public_env(LOCKD_PUBLIC__LIMITS_URL=limits_url))
        if "memory" in self.targets:
            self._lockd("memory", one_url, public_env(LOCKD_PUBLIC__LIMITS_URL="memory://"))
        if "self" in self.targets:
            self_url = one_url.replace("one.db", "self.db") if self.kind == "sqlite" \
                else one_url + "?prefix=selfhosted:"
            self._lockd("self", self_url, {})
        self.token = tokens[0]
        for tid in range(self.a.connections):
            for base in (f"{self.urls['one']}/t/{self.token}", self.urls.get("self")):
                if base and post(base, "pre-reboot", "holder", f"g{tid}") != 200:
                    raise RuntimeError(f"{self.kind}: set-up grant refused at {base}")
        for name in [t for t in ("many",) if t in self.targets]:
            # Every tenant asked once: the cold pass, and warm caches for the runs.
            self.cold[name] = asyncio.run(sweep(self.urls[name], tokens, self.a.connections))
            print(f"{self.kind}: sweep of {len(tokens)} tenants through {name}: "
                  f"{self.cold[name]:.0f} req/s", flush=True)

    def wrk(self, name: str, mode: str, seconds: float, tokens_file: Path) -> Sample:
        source = str(tokens_file) if mode == "many" else self.token
        return wrk(self.urls[name], mode, source, seconds, self.a.connections,
                   self.a.load_cpus, script=LUA)

    def stop(self) -> None:
        for server in self.lockds:
            server.stop()
        for store in self.stores.values():
            store.stop()


@contextmanager
def stacks(a: argparse.Namespace, tokens: list[str], tokens_file: Path,
           tmp: Path) -> Iterator[dict[str, Stack]]:
    running: dict[str, Stack] = {}
    try:
        for kind in a.stores:
            running[kind] = Stack(kind, tmp / kind, a)
            running[kind].start(tokens, tokens_file)
        yield running
    finally:
        for stack in running.values():
            stack.stop()


# --- in-process micro-benchmarks ----------------------------------------------------------


def micro_hmac(tokens: list[str], n: int = 50_000) -> dict[str, float]:
    """µs per request of what Public.admit computes from a secret: the secret's check
    (``resolve``: pattern and checksum) and the HMACs (tenant hash for the tenant limit,
    service group name)."""
    from lockd.tenancy import Keys, resolve

    keys = Keys(PEPPER.encode())
    sample = tokens[:1000]

    def hmacs() -> None:
        for t in sample:
            keys.tenant(t)
            keys.group(t, "g")

    def check() -> None:
        for t in sample:
            resolve(f"/t/{t}", None, "g")

    def best(fn: Any) -> float:
        loops = max(1, n // len(sample))
        return min(timeit.repeat(fn, number=loops, repeat=3)) / (loops * len(sample)) * 1e6

    return {"hmac_us": best(hmacs), "resolve_us": best(check)}


async def _limiter_us(url: str, n: int) -> float:
    from lockd.ratelimit import Limits

    limits = Limits(url, create=UNBOUND, miss=UNBOUND, tenant=UNBOUND, ip=UNBOUND)
    for i in range(200):  # warm: connections open, scripts loaded
        await limits.check_ip("198.51.100.1")
        await limits.check_tenant(f"t{i}")
    started = time.perf_counter()
    for i in range(n):
        # What one ordinary request costs: its address, then its tenant.
        await limits.check_ip("198.51.100.1")
        await limits.check_tenant(f"t{i % 1000}")
    return (time.perf_counter() - started) / n * 1e6


def micro_limiter(redis_url: str | None, noaof_url: str | None = None) -> dict[str, float]:
    out = {"limiter_memory_us": asyncio.run(_limiter_us("memory://", 20_000))}
    if redis_url:
        out["limiter_redis_us"] = asyncio.run(_limiter_us(redis_url, 5_000))
    if noaof_url:
        out["limiter_redis_noaof_us"] = asyncio.run(_limiter_us(noaof_url, 5_000))
    return out


# --- the run -----------------------------------------------------------------------------------


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return "?"


def measure(a: argparse.Namespace, running: dict[str, Stack],
            tokens_file: Path) -> dict[str, Any]:
    samples: dict[str, dict[str, list[Sample]]] = {k: {} for k in running}
    ratios: dict[str, dict[str, list[float]]] = {k: {} for k in running}
    anomalies: list[str] = []
    for run in range(1, a.runs + 1):
        for kind, stack in running.items():
            got: dict[str, Sample] = {}
            for name in stack.targets:
                mode = {"nolimit": "one", "aside": "one", "memory": "one"}.get(name, name)
                s = stack.wrk(name, mode, a.duration, tokens_file)
                got[name] = s
                samples[kind].setdefault(name, []).append(s)
                if s.non2xx or s.errors:
                    anomalies.append(f"run {run} {kind} {name}: {s.non2xx} non-2xx of "
                                     f"{s.requests}, {s.errors} socket errors")
                print(f"run {run}/{a.runs}  {kind:<6} {name:<8} {s.rps:8.0f} req/s  "
                      f"p99 {s.p99_ms} ms", flush=True)
            for label, (x, y) in RATIOS.items():
                if x in got and y in got:
                    ratios[kind].setdefault(label, []).append(got[x].rps / got[y].rps)
    return {"samples": samples, "ratios": ratios, "anomalies": anomalies}


RATIOS = {
    "many/one": ("many", "one"),
    "one/nolimit": ("one", "nolimit"),
    "aside/nolimit": ("aside", "nolimit"),
    "aside/one": ("aside", "one"),
    "memory/nolimit": ("memory", "nolimit"),
    "one/self": ("one", "self"),
}


def table(result: dict[str, Any], running: dict[str, Stack]) -> str:
    lines = [f"{'store':<7}{'target':<9}{'req/s':>9}{'p99 ms':>9}{'µs/req':>9}",
             "-" * 43]
    for kind, by_name in result["samples"].items():
        for name in TARGETS:
            ss = by_name.get(name, [])
            if not ss:
                continue
            rps = statistics.median(s.rps for s in ss)
            p99 = statistics.median(s.p99_ms or float("nan") for s in ss)
            lines.append(f"{kind:<7}{name:<9}{rps:>9.0f}{p99:>9.2f}{1e6 / rps:>9.0f}")
        for name, rps in running[kind].cold.items():
            lines.append(f"{kind:<7}{'cold:' + name:<9}{rps:>9.0f}{'-':>9}{1e6 / rps:>9.0f}"
                         "  (the sweep, each tenant once)")
    lines.append("")
    lines.append("median ratios of requests/s within a run: " + ", ".join(RATIOS))
    for kind, by_label in result["ratios"].items():
        lines.append(f"{kind:<7}" + "  ".join(
            f"{label} {statistics.median(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})"
            for label, v in by_label.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="repeat the measurements; medians")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--tenants", type=int, default=100_000)
    p.add_argument("--connections", type=int, default=16,
                   help="wrk threads = connections (one connection per thread)")
    p.add_argument("--stores", default="sqlite,redis", help="comma-separated: sqlite,redis")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated subset of {','.join(TARGETS)} (one always runs)")
    p.add_argument("--server-cpus", default="0", help="taskset CPUs for lockd and its store")
    p.add_argument("--load-cpus", default="1", help="taskset CPUs for wrk")
    p.add_argument("--json", type=Path, default=Path("bench/out/public.json"))
    a = p.parse_args(argv)
    if not shutil.which("wrk"):
        print("bench.public needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        a.server_cpus = a.load_cpus = None
    a.stores = [s.strip() for s in a.stores.split(",") if s.strip()]
    wanted = {t.strip() for t in a.targets.split(",") if t.strip()} | {"one"}
    if wanted - set(TARGETS):
        p.error(f"--targets: unknown {', '.join(sorted(wanted - set(TARGETS)))}")
    a.targets = [t for t in TARGETS if t in wanted]
    # A SIGTERM (timeout, Ctrl-C from a wrapper) unwinds, so the servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.load_cpus and hasattr(os, "sched_setaffinity"):
        # The sweep's client and the micro-benchmarks run beside wrk, off the server CPU.
        os.sched_setaffinity(0, {int(c) for c in a.load_cpus.split(",")})
    from lockd.tenancy import new_token

    tokens = [new_token() for _ in range(a.tenants)]
    print(f"public: {a.runs} run(s) x {a.duration:g}s, {a.tenants} tenants, wrk "
          f"-t{a.connections} -c{a.connections}; server on CPU {a.server_cpus}, wrk on CPU "
          f"{a.load_cpus}; loadavg {loadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="lockd-bench-public-") as tmp_name:
        tmp = Path(tmp_name)
        tokens_file = tmp / "tokens.txt"
        tokens_file.write_text("\n".join(tokens) + "\n")
        with stacks(a, tokens, tokens_file, tmp) as running:
            result = measure(a, running, tokens_file)
            micro = micro_hmac(tokens)
            redis = running.get("redis")
            micro.update(micro_limiter(
                redis.stores["one"].url if redis else None,
                redis.stores["limits"].url if redis and "limits" in redis.stores else None))
    print()
    print(f"medians of {a.runs} run(s); loadavg at the end {loadavg()}")
    print(table(result, running))
    print("in-process, µs per request: " + ", ".join(f"{k} {v:.2f}" for k, v in micro.items()))
    for line in result["anomalies"]:
        print("ANOMALY " + line)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({
        "runs": a.runs, "duration_s": a.duration, "tenants": a.tenants,
        "connections": a.connections, "micro_us": micro, "ratios": result["ratios"],
        "samples": {k: {n: [s.__dict__ for s in ss] for n, ss in v.items()}
                    for k, v in result["samples"].items()},
        "cold_rps": {k: st.cold for k, st in running.items()},
        "anomalies": result["anomalies"],
    }, indent=2))
    return 1 if result["anomalies"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
