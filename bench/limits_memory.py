"""What one hit of the `limits` package's in-process (async memory) storage costs as the
number of limited keys grows, with the event loop running between hits as in a server.

    .venv/bin/python -m bench.limits_memory
"""

import asyncio
import time

from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter


async def main() -> None:
    item = parse("3000/minute")
    for n in (1, 10_000, 100_000):
        storage = MemoryStorage()
        limiter = SlidingWindowCounterRateLimiter(storage)
        for i in range(n):
            await limiter.hit(item, f"t{i}")
        await asyncio.sleep(0.05)
        started, hits = time.perf_counter(), 2000
        for i in range(hits):
            await limiter.hit(item, f"t{i % n}")
            await asyncio.sleep(0)  # the loop runs the storage's expiry task, as in lockd
        per_hit = (time.perf_counter() - started) / hits * 1e6
        print(f"{n:>7} keys: {per_hit:,.1f} us per hit")


if __name__ == "__main__":
    asyncio.run(main())
