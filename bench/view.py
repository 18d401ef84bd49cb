"""What one refusal costs the service, with the view (lockd.view) and without, in-process.

    .venv/bin/python -m bench.view [--runs 3] [--requests 20000] [--backends memory,sqlite]

For each backend, ``--runs`` times: a LockService with a view on the store's change feed
and one without it (``storage.view = false``), each asked ``--requests`` pre-reboots of a
full group, one after the other; microseconds per refusal, medians, and the ratio of the
two taken within each run. No HTTP: bench/throughput.py measures the whole request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lockd.groups import GroupSettings
from lockd.service import LockService
from lockd.store import open_store
from lockd.view import View, follow


async def per_refusal(url: str, with_view: bool, requests: int) -> float:
    store = open_store(url)
    await store.backend.open()
    view = View() if with_view else None
    service = LockService(store, GroupSettings(default_slots=1), view=view)
    feed = None
    try:
        if view is not None:
            feed = asyncio.create_task(follow(store.backend, store.layout.group_prefix(), view))
            while not view.connected:
                await asyncio.sleep(0.01)
        await service.pre_reboot("full", "holder")
        await service.pre_reboot("full", "waiter")  # fills the view (or warms the path)
        started = time.perf_counter()
        for _ in range(requests):
            await service.try_lock("full", "waiter")
        return (time.perf_counter() - started) / requests * 1e6
    finally:
        if feed is not None:
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed
        await store.backend.close()


@contextlib.contextmanager
def urls(name: str, tmp: Path) -> Iterator[Callable[[int], str]]:
    """A fresh store URL per run; redis-server and etcd started here (bench/servers.py)."""
    from bench.servers import EtcdServer, RedisServer

    if name == "redis":
        redis = RedisServer(tmp / "redis").start()
        try:
            yield lambda run: f"{redis.url}?prefix=r{run}:"
        finally:
            redis.stop()
    elif name in ("etcd", "etcd2"):
        etcd = EtcdServer(tmp / "etcd").start()
        try:
            yield lambda run: (f"etcd://{etcd.endpoint}?namespace=r{run}/" if name == "etcd"
                               else f"etcd2://{etcd.endpoint}?root=/r{run}")
        finally:
            etcd.stop()
    elif name == "sqlite":
        yield lambda run: f"sqlite://{tmp / f'{run}.db'}"
    else:
        yield lambda run: "memory://"


async def main(a: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="lockd-bench-view-") as tmp:
        for name in a.backends.split(","):
            without, with_, ratios = [], [], []
            with urls(name, Path(tmp)) as url:
                for run in range(a.runs):
                    off = await per_refusal(url(run), False, a.requests)
                    on = await per_refusal(url(run), True, a.requests)
                    without.append(off)
                    with_.append(on)
                    ratios.append(off / on)
            print(f"{name:<8} without view {statistics.median(without):8.1f} us/refusal   "
                  f"with view {statistics.median(with_):6.1f} us/refusal   "
                  f"{statistics.median(ratios):5.1f}x cheaper "
                  f"(runs: {', '.join(f'{r:.1f}' for r in ratios)})", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--backends", default="memory,sqlite,redis,etcd,etcd2",
                   help="comma-separated subset of memory,sqlite,redis,etcd,etcd2")
    asyncio.run(main(p.parse_args()))
