"""Redis scan(prefix): the key index (ZRANGEBYLEX) against SCAN, on one redis-server with
100,000 other lockd keys and 20 keys under the prefix listed. Medians of 3 runs of 50 scans,
both measured in one run, seconds apart.

    .venv/bin/python -m bench.redis_index
"""

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from bench.servers import RedisServer
from lockd.backends import open_backend


async def main() -> None:
    server = RedisServer(Path(tempfile.mkdtemp()) / "r", appendonly=False).start()
    try:
        url = f"{server.url}?prefix=m:"
        b = open_backend(url)
        await b.open()
        raw = aioredis.Redis.from_url(server.url)
        names = [f"lockd/v1/tenants/{i:06x}.x" for i in range(100_000)]
        names += [f"lockd/v1/tenant-names/abc.{i}" for i in range(20)]
        for i in range(0, len(names), 5000):  # what cas.lua stores: the hash and its name
            async with raw.pipeline(transaction=False) as pipe:
                for n in names[i:i + 5000]:
                    pipe.hset(f"m:{{{n}}}", mapping={"value": b"{}", "ver": b"v"})
                    pipe.zadd("m:index", {n: 0})
                await pipe.execute()
        await raw.set("m:index:built", "1")
        await raw.aclose()
        scanning = open_backend(url)
        scanning.indexed = False  # type: ignore[attr-defined]  # the old SCAN path
        await scanning.open()

        async def timed(backend) -> float:
            t = time.perf_counter()
            for _ in range(50):
                assert len(await backend.scan("lockd/v1/tenant-names/abc.")) == 20
            return (time.perf_counter() - t) / 50
        idx, scn = [], []
        for _ in range(3):
            idx.append(await timed(b))
            scn.append(await timed(scanning))
        mi, ms = statistics.median(idx), statistics.median(scn)
        print(f"index: {mi * 1e3:.3f} ms/scan  SCAN: {ms * 1e3:.3f} ms/scan  "
              f"SCAN/index: {ms / mi:.0f}x")
        await b.close()
        await scanning.close()
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
